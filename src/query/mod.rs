//! The read side of the table: what dashboards ask (`params`), the statements that
//! answer it (`crate::table::reads`), running them and decoding the results (`reader`) into the JSON
//! the read API returns (`answers`).

mod answers;
mod params;
mod reader;

pub use answers::{DeviceList, DeviceSummary, Latest, LatestReading, Point, Series, StoredValue};
pub use params::{Bucket, LatestParams, LatestQuery, ParamError, SeriesParams, SeriesQuery};
pub use reader::TableReader;
