//! The Zerobus Ingest service (`databricks.zerobus.Zerobus/EphemeralStream`) over gRPC, writing
//! into the engine's tables, so the Statement Execution API reads what it ingests.
//!
//! A stream: the server answers its response headers at once (the Python SDK waits for them
//! before sending anything); the first message must create the stream (table, record type),
//! the rest carry records, each message with an offset (restarting at 0 on every stream) that
//! the server acknowledges cumulatively once the message's rows are written (plus the
//! injected durability latency). Every outgoing message, and the status ending the stream,
//! goes through one ordered queue ([`Outgoing`]), so an acknowledgement is never overtaken.

// tonic's Status is the protocol's error and goes straight onto the wire; boxing it gains nothing.
#![allow(clippy::result_large_err)]

mod records;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::zerobus::ephemeral_stream_request::Payload as In;
use crate::proto::zerobus::ephemeral_stream_response::Payload as Out;
use crate::proto::zerobus::ingest_record_batch_request::Batch;
use crate::proto::zerobus::ingest_record_request::Record;
use crate::proto::zerobus::zerobus_server::{Zerobus, ZerobusServer};
use crate::proto::zerobus::{
    CloseStreamSignal, CreateIngestStreamRequest, CreateIngestStreamResponse,
    EphemeralStreamRequest, EphemeralStreamResponse, IngestRecordResponse, RecordType,
};
use crate::state::App;
use crate::stats::bump;
use records::{Format, Records};

/// The gRPC service over the emulator's state.
pub(crate) fn service(app: Arc<App>) -> ZerobusServer<Service> {
    ZerobusServer::new(Service { app })
}

pub(crate) struct Service {
    app: Arc<App>,
}

type Reply = Result<EphemeralStreamResponse, Status>;

#[tonic::async_trait]
impl Zerobus for Service {
    type EphemeralStreamStream = ReceiverStream<Reply>;

    async fn ephemeral_stream(
        &self,
        request: Request<Streaming<EphemeralStreamRequest>>,
    ) -> Result<Response<Self::EphemeralStreamStream>, Status> {
        let metadata = request.metadata();
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("No bearer token was sent."))?;
        let grant = self
            .app
            .tokens
            .lookup(token.trim())
            .ok_or_else(|| Status::unauthenticated("Invalid or expired access token."))?;
        let header_table = metadata
            .get("x-databricks-zerobus-table-name")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (replies, outgoing) = mpsc::channel(64);
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(send_in_order(queued, replies));
        let stream = StreamTask {
            app: Arc::clone(&self.app),
            scope: grant.zerobus_table,
            header_table,
            queue,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(outgoing)))
    }
}

/// What the stream sends, in order.
enum Outgoing {
    /// Sent once `due` has passed.
    Message {
        reply: EphemeralStreamResponse,
        due: Instant,
    },
    /// Ends the stream (after everything queued before it).
    End(Status),
}

async fn send_in_order(
    mut queued: mpsc::UnboundedReceiver<Outgoing>,
    replies: mpsc::Sender<Reply>,
) {
    while let Some(item) = queued.recv().await {
        match item {
            Outgoing::Message { reply, due } => {
                sleep_until(due).await;
                if replies.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
            Outgoing::End(status) => {
                let _ = replies.send(Err(status)).await;
                return;
            }
        }
    }
}

struct StreamTask {
    app: Arc<App>,
    /// The table the token may write, if it was issued for Zerobus.
    scope: Option<String>,
    header_table: Option<String>,
    queue: mpsc::UnboundedSender<Outgoing>,
}

impl StreamTask {
    async fn run(self, mut incoming: Streaming<EphemeralStreamRequest>) {
        let status = match self.serve(&mut incoming).await {
            Ok(()) => return,
            Err(status) => status,
        };
        let _ = self.queue.send(Outgoing::End(status));
    }

    /// Serves the stream until it ends; `Err` is the status that ends it.
    async fn serve(&self, incoming: &mut Streaming<EphemeralStreamRequest>) -> Result<(), Status> {
        let Some(first) = incoming.message().await? else {
            return Ok(());
        };
        let Some(In::CreateStream(create)) = first.payload else {
            return Err(Status::invalid_argument(
                "The first message of a stream must be create_stream.",
            ));
        };
        self.throttle()?;
        let (table, format) = self.open(&create).await?;
        bump(&self.app.stats.zerobus_streams);
        self.send(
            Out::CreateStreamResponse(CreateIngestStreamResponse {
                stream_id: Some(uuid::Uuid::new_v4().to_string()),
            }),
            Instant::now(),
        );
        let faults = self.app.faults.zerobus();
        // When the server signals the close, and when it ends the stream.
        let mut signal_at = faults.stream_lifetime.map(|life| Instant::now() + life);
        let mut end_at: Option<Instant> = None;
        let mut last_offset: Option<i64> = None;
        loop {
            let message = tokio::select! {
                message = incoming.message() => message?,
                () = sleep_until(signal_at.unwrap_or_else(far)), if signal_at.is_some() => {
                    signal_at = None;
                    end_at = Some(Instant::now() + faults.close_grace);
                    self.send(Out::CloseStreamSignal(CloseStreamSignal {
                        duration: Some(prost_types_duration(faults.close_grace)),
                    }), Instant::now());
                    continue;
                }
                () = sleep_until(end_at.unwrap_or_else(far)), if end_at.is_some() => {
                    bump(&self.app.stats.zerobus_timeouts);
                    return Err(Status::unavailable(
                        "Stream timeout reached. Please recreate the stream. Error Code: 6002",
                    ));
                }
            };
            let Some(message) = message else {
                return Ok(());
            };
            let (offset, records) = match message.payload {
                Some(In::IngestRecord(request)) => (
                    request.offset_id,
                    match request.record {
                        Some(Record::JsonRecord(json)) => Records::Json(vec![json]),
                        Some(Record::ProtoEncodedRecord(proto)) => Records::Proto(vec![proto]),
                        None => Records::Json(Vec::new()),
                    },
                ),
                Some(In::IngestRecordBatch(request)) => (
                    request.offset_id,
                    match request.batch {
                        Some(Batch::JsonBatch(batch)) => Records::Json(batch.records),
                        Some(Batch::ProtoEncodedBatch(batch)) => Records::Proto(batch.records),
                        None => Records::Json(Vec::new()),
                    },
                ),
                Some(In::CreateStream(_)) | None => {
                    return Err(Status::invalid_argument(
                        "A stream is created once, by its first message.",
                    ));
                }
            };
            let offset =
                offset.ok_or_else(|| Status::invalid_argument("offset_id is required."))?;
            if last_offset.is_some_and(|last| offset <= last) || offset < 0 {
                return Err(Status::invalid_argument(format!(
                    "offset_id {offset} does not follow the stream's last offset."
                )));
            }
            self.throttle()?;
            let written =
                records::write(&self.app.engine, &self.app.faults, &table, &format, records)
                    .await?;
            self.app
                .stats
                .zerobus_records
                .fetch_add(written, std::sync::atomic::Ordering::Relaxed);
            if self.app.faults.take_lost_ack() {
                bump(&self.app.stats.zerobus_lost_acks);
                return Err(Status::unavailable(
                    "The connection to the stream was lost (injected).",
                ));
            }
            last_offset = Some(offset);
            let durable_at = Instant::now() + self.app.faults.zerobus().durability_latency;
            self.send(
                Out::IngestRecordResponse(IngestRecordResponse {
                    durability_ack_up_to_offset: Some(offset),
                }),
                durable_at,
            );
        }
    }

    /// Checks the create request and the token's scope; the table to write and how its
    /// records are encoded.
    async fn open(&self, create: &CreateIngestStreamRequest) -> Result<(String, Format), Status> {
        let table = create
            .table_name
            .clone()
            .filter(|name| name.split('.').count() == 3)
            .ok_or_else(|| Status::invalid_argument("table_name must be catalog.schema.table."))?;
        if self
            .header_table
            .as_deref()
            .is_some_and(|header| !header.eq_ignore_ascii_case(&table))
        {
            return Err(Status::invalid_argument(
                "x-databricks-zerobus-table-name does not match the stream's table_name.",
            ));
        }
        if !self
            .scope
            .as_deref()
            .is_some_and(|scope| scope.eq_ignore_ascii_case(&table))
        {
            return Err(Status::permission_denied(format!(
                "The token does not grant Zerobus writes into '{table}'."
            )));
        }
        // Unset means PROTO, for older clients.
        let record_type = create.record_type.unwrap_or(RecordType::Proto as i32);
        let format = match RecordType::try_from(record_type) {
            Ok(RecordType::Json) => Format::Json,
            Ok(RecordType::Proto) => {
                Format::proto(create.descriptor_proto.as_deref().unwrap_or_default())?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "record_type must be JSON or PROTO.",
                ));
            }
        };
        if self.app.engine.columns(&table).await.is_none() {
            return Err(records::table_not_found(&table));
        }
        Ok((table, format))
    }

    fn throttle(&self) -> Result<(), Status> {
        let share = self.app.faults.zerobus().throttle_share;
        if share > 0.0 && rand::random_bool(share.clamp(0.0, 1.0)) {
            bump(&self.app.stats.zerobus_throttled);
            return Err(Status::resource_exhausted(
                "Too many requests: the stream is throttled (injected).",
            ));
        }
        Ok(())
    }

    fn send(&self, payload: Out, due: Instant) {
        let reply = EphemeralStreamResponse {
            payload: Some(payload),
        };
        let _ = self.queue.send(Outgoing::Message { reply, due });
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

fn prost_types_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}
