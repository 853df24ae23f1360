//! The Zerobus service over a real socket, driven by a tonic client generated from the same
//! proto: streams, JSON records, acknowledgements, rows seen through the Statement Execution
//! API, table-scoped tokens, error statuses and the injected faults.

mod common;

use std::time::{Duration, Instant};

use common::Workspace;
use lakegate_emulator::proto::zerobus::ephemeral_stream_request::Payload as In;
use lakegate_emulator::proto::zerobus::ephemeral_stream_response::Payload as Out;
use lakegate_emulator::proto::zerobus::ingest_record_batch_request::Batch;
use lakegate_emulator::proto::zerobus::ingest_record_request::Record;
use lakegate_emulator::proto::zerobus::zerobus_client::ZerobusClient;
use lakegate_emulator::proto::zerobus::{
    CreateIngestStreamRequest, EphemeralStreamRequest, EphemeralStreamResponse,
    IngestRecordBatchRequest, IngestRecordRequest, JsonRecordBatch, ProtoEncodedRecordBatch,
    RecordType,
};
use lakegate_emulator::{EmulatorConfig, Faults, ZerobusFaults};
use lakegate_testkit::{SP_ID, SP_SECRET, emulator_config};
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

const TABLE: &str = "main.zb.readings";
const WAIT: Duration = Duration::from_secs(30);

async fn workspace(faults: ZerobusFaults) -> Workspace {
    let config = EmulatorConfig {
        zerobus: Some("127.0.0.1:0".parse().unwrap()),
        faults: Faults {
            zerobus: faults,
            ..Faults::default()
        },
        ..emulator_config()
    };
    let ws = Workspace::start(config).await;
    ws.sql("CREATE SCHEMA IF NOT EXISTS main.zb").await;
    ws.sql(&format!(
        "CREATE TABLE {TABLE} (device_id STRING NOT NULL, value DOUBLE, ts TIMESTAMP)"
    ))
    .await;
    ws
}

/// A token as the Zerobus SDKs request it, scoped to `table`.
async fn zerobus_token(ws: &Workspace, table: &str) -> String {
    let (catalog, rest) = table.split_once('.').unwrap();
    let schema = rest.split('.').next().unwrap();
    let details = json!([
        {"type": "unity_catalog_privileges", "privileges": ["USE CATALOG"],
         "object_type": "CATALOG", "object_full_path": catalog},
        {"type": "unity_catalog_privileges", "privileges": ["USE SCHEMA"],
         "object_type": "SCHEMA", "object_full_path": format!("{catalog}.{schema}")},
        {"type": "unity_catalog_privileges", "privileges": ["SELECT", "MODIFY"],
         "object_type": "TABLE", "object_full_path": table},
    ]);
    let response = ws
        .http
        .post(ws.url("/oidc/v1/token"))
        .basic_auth(SP_ID, Some(SP_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "all-apis"),
            (
                "resource",
                "api://databricks/workspaces/127/zerobusDirectWriteApi",
            ),
            ("authorization_details", &details.to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// An open EphemeralStream: what the client sends, and what the server answers.
struct Stream {
    send: mpsc::Sender<EphemeralStreamRequest>,
    replies: Streaming<EphemeralStreamResponse>,
}

impl Stream {
    /// Opens a stream with `token` and sends `create_stream` for `table` (JSON records).
    async fn open(ws: &Workspace, token: &str, table: &str) -> Result<Stream, Status> {
        let create = CreateIngestStreamRequest {
            table_name: Some(table.to_owned()),
            descriptor_proto: None,
            record_type: Some(RecordType::Json as i32),
        };
        Stream::create(ws, token, create).await
    }

    /// Opens a stream with `token` and sends `create`.
    async fn create(
        ws: &Workspace,
        token: &str,
        create: CreateIngestStreamRequest,
    ) -> Result<Stream, Status> {
        let table = create.table_name.clone().unwrap();
        let addr = ws.emulator.zerobus_addr().unwrap();
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (send, outgoing) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
            .metadata_mut()
            .insert("x-databricks-zerobus-table-name", table.parse().unwrap());
        send.send(message(In::CreateStream(create))).await.unwrap();
        let replies = ZerobusClient::new(channel)
            .ephemeral_stream(request)
            .await?
            .into_inner();
        let mut stream = Stream { send, replies };
        match stream.next().await? {
            Out::CreateStreamResponse(created) => assert!(created.stream_id.is_some()),
            other => panic!("expected the stream's creation, got {other:?}"),
        }
        Ok(stream)
    }

    async fn record(&self, offset: i64, record: serde_json::Value) {
        let request = In::IngestRecord(IngestRecordRequest {
            offset_id: Some(offset),
            record: Some(Record::JsonRecord(record.to_string())),
        });
        self.send.send(message(request)).await.unwrap();
    }

    async fn proto_batch(&self, offset: i64, records: Vec<Vec<u8>>) {
        let request = In::IngestRecordBatch(IngestRecordBatchRequest {
            offset_id: Some(offset),
            batch: Some(Batch::ProtoEncodedBatch(ProtoEncodedRecordBatch {
                records,
            })),
        });
        self.send.send(message(request)).await.unwrap();
    }

    async fn batch(&self, offset: i64, records: &[serde_json::Value]) {
        let request = In::IngestRecordBatch(IngestRecordBatchRequest {
            offset_id: Some(offset),
            batch: Some(Batch::JsonBatch(JsonRecordBatch {
                records: records.iter().map(ToString::to_string).collect(),
            })),
        });
        self.send.send(message(request)).await.unwrap();
    }

    /// The next message from the server, or the status that ended the stream.
    async fn next(&mut self) -> Result<Out, Status> {
        let reply = tokio::time::timeout(WAIT, self.replies.message())
            .await
            .expect("the server answers within 30 s")?;
        Ok(reply.expect("the stream goes on").payload.unwrap())
    }

    /// Waits for the acknowledgement of `offset`.
    async fn acked(&mut self, offset: i64) {
        match self.next().await {
            Ok(Out::IngestRecordResponse(ack)) => {
                assert_eq!(ack.durability_ack_up_to_offset, Some(offset));
            }
            other => panic!("expected the ack of offset {offset}, got {other:?}"),
        }
    }

    /// The status ending the stream, skipping acknowledgements.
    async fn ended(&mut self) -> Status {
        loop {
            match self.next().await {
                Err(status) => return status,
                Ok(Out::IngestRecordResponse(_)) => {}
                Ok(other) => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn message(payload: In) -> EphemeralStreamRequest {
    EphemeralStreamRequest {
        payload: Some(payload),
    }
}

fn reading(device: &str, value: f64) -> serde_json::Value {
    json!({"device_id": device, "value": value, "ts": "2026-01-02T03:04:05.123456Z"})
}

async fn rows(ws: &Workspace) -> Vec<serde_json::Value> {
    let body = ws
        .sql(&format!(
            "SELECT device_id, value, ts FROM {TABLE} ORDER BY device_id"
        ))
        .await;
    body["result"]["data_array"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn json_records_land_in_the_table_and_are_acknowledged_by_offset() {
    let ws = workspace(ZerobusFaults::default()).await;
    let token = zerobus_token(&ws, TABLE).await;
    let mut stream = Stream::open(&ws, &token, TABLE).await.unwrap();
    stream.record(0, reading("a", 1.5)).await;
    stream.acked(0).await;
    // Epoch microseconds are a TIMESTAMP too; a missing field is NULL.
    stream
        .batch(
            1,
            &[
                json!({"device_id": "b", "value": 2, "ts": 1_767_323_045_123_456_i64}),
                json!({"DEVICE_ID": "c"}),
            ],
        )
        .await;
    stream.acked(1).await;
    let rows = rows(&ws).await;
    assert_eq!(
        rows,
        vec![
            json!(["a", "1.5", "2026-01-02T03:04:05.123Z"]),
            json!(["b", "2.0", "2026-01-02T03:04:05.123Z"]),
            json!(["c", null, null]),
        ],
        "{rows:?}"
    );
    // Offsets restart at 0 on every stream.
    drop(stream);
    let mut again = Stream::open(&ws, &token, TABLE).await.unwrap();
    again.record(0, reading("d", 4.0)).await;
    again.acked(0).await;
}

#[tokio::test]
async fn errors_are_grpc_statuses() {
    let ws = workspace(ZerobusFaults::default()).await;
    let token = zerobus_token(&ws, TABLE).await;
    let no_token = Stream::open(&ws, "not-a-token", TABLE).await.err().unwrap();
    assert_eq!(no_token.code(), Code::Unauthenticated, "{no_token:?}");

    let other = zerobus_token(&ws, "main.zb.other").await;
    let denied = Stream::open(&ws, &other, TABLE).await.err().unwrap();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // An ordinary (unscoped) workspace token is no Zerobus token either.
    let unscoped = Stream::open(&ws, &ws.token, TABLE).await.err().unwrap();
    assert_eq!(unscoped.code(), Code::PermissionDenied, "{unscoped:?}");

    let missing = zerobus_token(&ws, "main.zb.missing").await;
    let not_found = Stream::open(&ws, &missing, "main.zb.missing")
        .await
        .err()
        .unwrap();
    assert_eq!(not_found.code(), Code::NotFound, "{not_found:?}");

    for bad in [
        json!({"device_id": "x", "value": "not a number"}),
        json!({"device_id": "x", "colour": "red"}),
        json!({"value": 1.0}),
    ] {
        let mut stream = Stream::open(&ws, &token, TABLE).await.unwrap();
        stream.batch(0, &[reading("ok", 1.0), bad.clone()]).await;
        let status = stream.ended().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
    }
    // A refused batch writes none of its records.
    assert!(rows(&ws).await.is_empty());
}

#[tokio::test]
async fn the_server_closes_a_stream_with_a_signal_then_error_6002() {
    let ws = workspace(ZerobusFaults {
        stream_lifetime: Some(Duration::from_millis(500)),
        close_grace: Duration::from_millis(500),
        ..ZerobusFaults::default()
    })
    .await;
    let token = zerobus_token(&ws, TABLE).await;
    let mut stream = Stream::open(&ws, &token, TABLE).await.unwrap();
    match stream.next().await {
        Ok(Out::CloseStreamSignal(signal)) => {
            assert_eq!(signal.duration.unwrap().nanos, 500_000_000);
        }
        other => panic!("expected a close signal, got {other:?}"),
    }
    // Records sent in the grace period are still written and acknowledged.
    stream.record(0, reading("late", 1.0)).await;
    stream.acked(0).await;
    let status = stream.ended().await;
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("Error Code: 6002"), "{status:?}");
    assert_eq!(rows(&ws).await.len(), 1);
    let stats = ws.emulator.stats();
    assert_eq!((stats.zerobus_streams, stats.zerobus_timeouts), (1, 1));
}

#[tokio::test]
async fn a_lost_acknowledgement_leaves_the_rows_written_and_the_stream_broken() {
    let ws = workspace(ZerobusFaults {
        lost_acks: 1,
        ..ZerobusFaults::default()
    })
    .await;
    let token = zerobus_token(&ws, TABLE).await;
    let mut stream = Stream::open(&ws, &token, TABLE).await.unwrap();
    stream.record(0, reading("dup", 1.0)).await;
    let status = stream.ended().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The client re-sends on a new stream, as the SDKs do: the row is now in twice.
    let mut again = Stream::open(&ws, &token, TABLE).await.unwrap();
    again.record(0, reading("dup", 1.0)).await;
    again.acked(0).await;
    assert_eq!(rows(&ws).await.len(), 2);
    let stats = ws.emulator.stats();
    assert_eq!((stats.zerobus_records, stats.zerobus_lost_acks), (2, 1));
}

#[tokio::test]
async fn throttling_refuses_with_resource_exhausted_before_writing() {
    let ws = workspace(ZerobusFaults::default()).await;
    let token = zerobus_token(&ws, TABLE).await;
    let mut stream = Stream::open(&ws, &token, TABLE).await.unwrap();
    ws.emulator.set_faults(Faults {
        zerobus: ZerobusFaults {
            throttle_share: 1.0,
            ..ZerobusFaults::default()
        },
        ..Faults::default()
    });
    stream.record(0, reading("t", 1.0)).await;
    let status = stream.ended().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(rows(&ws).await.is_empty());
    assert_eq!(ws.emulator.stats().zerobus_throttled, 1);
}

#[tokio::test]
async fn acknowledgements_wait_for_the_durability_latency() {
    let latency = Duration::from_millis(400);
    let ws = workspace(ZerobusFaults {
        durability_latency: latency,
        ..ZerobusFaults::default()
    })
    .await;
    let token = zerobus_token(&ws, TABLE).await;
    let mut stream = Stream::open(&ws, &token, TABLE).await.unwrap();
    let sent = Instant::now();
    stream.record(0, reading("slow", 1.0)).await;
    stream.record(1, reading("slower", 1.0)).await;
    stream.acked(0).await;
    assert!(sent.elapsed() >= latency, "{:?}", sent.elapsed());
    stream.acked(1).await;
}

/// A PROTO record of the readings table, as an SDK user's generated type would be.
#[derive(Clone, PartialEq, prost::Message)]
struct Reading {
    #[prost(string, optional, tag = "1")]
    device_id: Option<String>,
    #[prost(double, optional, tag = "2")]
    value: Option<f64>,
    /// Microseconds since the epoch, as Zerobus maps TIMESTAMP to protobuf.
    #[prost(int64, optional, tag = "3")]
    ts: Option<i64>,
}

/// [`Reading`]'s descriptor, as the SDKs send it in `create_stream`.
fn reading_descriptor() -> Vec<u8> {
    let field = |name: &str, number, kind: Type| FieldDescriptorProto {
        name: Some(name.to_owned()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(kind as i32),
        ..FieldDescriptorProto::default()
    };
    DescriptorProto {
        name: Some("Reading".to_owned()),
        field: vec![
            field("device_id", 1, Type::String),
            field("value", 2, Type::Double),
            field("ts", 3, Type::Int64),
        ],
        ..DescriptorProto::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn proto_records_are_decoded_with_the_streams_descriptor() {
    let ws = workspace(ZerobusFaults::default()).await;
    let token = zerobus_token(&ws, TABLE).await;
    let create = CreateIngestStreamRequest {
        table_name: Some(TABLE.to_owned()),
        descriptor_proto: Some(reading_descriptor()),
        record_type: Some(RecordType::Proto as i32),
    };
    let mut stream = Stream::create(&ws, &token, create.clone()).await.unwrap();
    let reading = |device: &str| Reading {
        device_id: Some(device.to_owned()),
        value: Some(2.5),
        ts: Some(1_767_323_045_123_456),
    };
    stream
        .proto_batch(
            0,
            vec![reading("p1").encode_to_vec(), reading("p2").encode_to_vec()],
        )
        .await;
    stream.acked(0).await;
    assert_eq!(
        rows(&ws).await,
        vec![
            json!(["p1", "2.5", "2026-01-02T03:04:05.123Z"]),
            json!(["p2", "2.5", "2026-01-02T03:04:05.123Z"]),
        ]
    );
    // Bytes that are no Reading, and a Reading without its NOT NULL device, are refused.
    for bad in [vec![0xff, 0xff, 0xff], Reading::default().encode_to_vec()] {
        let mut stream = Stream::create(&ws, &token, create.clone()).await.unwrap();
        stream.proto_batch(0, vec![bad]).await;
        assert_eq!(stream.ended().await.code(), Code::InvalidArgument);
    }
    // A descriptor that is no DescriptorProto refuses the stream.
    let broken = CreateIngestStreamRequest {
        descriptor_proto: Some(vec![0xff; 4]),
        ..create
    };
    let refused = Stream::create(&ws, &token, broken).await.err().unwrap();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}
