//! Device readings on their way in, bottom-up: why a reading is refused
//! (`rejection`), the body as it arrives (`body`: size caps, gzip, JSON or NDJSON
//! split into readings without building nested values), one reading checked and
//! turned into table rows (`reading`), the devices a site relay's readings name
//! (`relayed`), a whole request (`request`), the bounded
//! queue between handlers and the writer (`queue`), the batch writer with its
//! retries and dead-lettering (`writer`) and the statements it runs (`sink`).

mod body;
mod queue;
mod reading;
mod rejection;
mod relayed;
mod request;
mod sink;
mod writer;

pub(crate) use body::{BodyCaps, BodyError, BodyFormat, Encoding, decode};
pub(crate) use queue::{
    IngestQueue, QueueCapacity, QueueError, Reservation, Submission, Unwritten,
};
pub(crate) use reading::is_name_char;
pub(crate) use rejection::{RejectReason, excerpt};
pub(crate) use relayed::RelayedDevices;
pub(crate) use request::{
    ParsedRequest, RejectedReading, notes_on, parse_relayed_request, parse_request,
};
pub(crate) use sink::StatementSink;
pub(crate) use writer::{BatchSettings, Writer};
