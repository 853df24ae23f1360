//! The read side of the table: what dashboards ask (`params`), the statements that
//! answer it (`crate::table::reads`), running them and decoding the results (`reader`) into the JSON
//! the read API returns (`answers`).

mod answers;
mod gate;
mod params;
mod reader;

pub(crate) use answers::{DeviceList, Latest, Series};
pub(crate) use gate::{ReadGate, ReadsBusy};
pub(crate) use params::{
    Described, LatestParams, LatestQuery, ParamError, SeriesParams, SeriesQuery,
};
pub(crate) use reader::TableReader;
