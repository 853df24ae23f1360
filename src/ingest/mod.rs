//! Device readings on their way in, bottom-up: why a reading is refused
//! (`rejection`), the body as it arrives (`body`: size caps, gzip, JSON or NDJSON
//! split into readings without building nested values, or InfluxDB line protocol
//! turned into the same readings by `line_protocol`), one reading checked and
//! turned into table rows (`reading`), the devices a site relay's readings name
//! (`relayed`), a whole request (`request`), admission of a sender's request
//! (`intake`: what it may queue, or an `IntakeRefusal`), the bounded
//! queue between handlers and the writer (`queue`), the batch writer with its
//! retries and dead-lettering (`writer`) and the two sinks it writes through: MERGE
//! statements on a warehouse (`sink`) or Zerobus Ingest streams (`zerobus`).

mod body;
mod intake;
mod line_protocol;
mod queue;
mod reading;
mod rejection;
mod relayed;
mod request;
mod sink;
mod writer;
mod zerobus;

pub(crate) use body::{BodyCaps, BodyError, BodyFormat, Encoding, decode};
pub(crate) use intake::{Intake, IntakeRefusal, Taken};
pub(crate) use line_protocol::{Precision, point_lines};
pub(crate) use queue::{
    IngestQueue, Lane, QueueCapacity, QueueError, Reservation, Submission, Unwritten,
};
pub(crate) use rejection::{RejectReason, excerpt};
pub(crate) use request::{RejectedReading, notes_on};
pub(crate) use sink::StatementSink;
pub(crate) use writer::{BatchSettings, BatchSink, Writer};
pub(crate) use zerobus::{LayoutCheck, ZerobusService, ZerobusSink};
