//! JSON records into table rows: one INSERT per message, so a batch is all or nothing.
//!
//! Each record is one JSON object whose fields name columns (any case); a missing field or
//! `null` is NULL. Values are bound as typed parameters, so the engine's casts decide what a
//! column accepts: strings for every type (TIMESTAMP as `2024-01-01T00:00:00Z` or
//! `2024-01-01 00:00:00`), numbers and booleans for their types, and, as Zerobus' JSON mapping
//! does, an integer for a TIMESTAMP (microseconds since the epoch) or a DATE (days since it).

// tonic's Status is the protocol's error and goes straight onto the wire; boxing it gains nothing.
#![allow(clippy::result_large_err)]

use serde_json::{Map, Value};
use tonic::Status;

use crate::sql::{Engine, Parameter, Request};

/// Writes `records` into `table` as one statement, or refuses them all.
pub(super) async fn write_json(
    engine: &Engine,
    table: &str,
    records: &[String],
) -> Result<(), Status> {
    let columns = engine
        .columns(table)
        .await
        .ok_or_else(|| table_not_found(table))?;
    let mut parameters = Vec::with_capacity(records.len() * columns.len());
    let mut rows = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let object = parse_object(record).map_err(|why| invalid(index, &why))?;
        if let Some(unknown) = object.keys().find(|field| {
            !columns
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(field))
        }) {
            return Err(invalid(index, &format!("no column named {unknown:?}")));
        }
        let mut markers = Vec::with_capacity(columns.len());
        for (position, (name, type_text)) in columns.iter().enumerate() {
            let value = object
                .iter()
                .find(|(field, _)| field.eq_ignore_ascii_case(name))
                .map(|(_, value)| value);
            let marker = format!("r{index}c{position}");
            parameters.push(Parameter {
                name: marker.clone(),
                value: value
                    .map(|v| text_of(v, type_text))
                    .transpose()
                    .map_err(|why| invalid(index, &format!("column {name}: {why}")))?
                    .flatten(),
                type_name: Some(type_text.clone()),
            });
            markers.push(format!(":{marker}"));
        }
        rows.push(format!("({})", markers.join(", ")));
    }
    let column_list: Vec<String> = columns.iter().map(|(name, _)| quote(name)).collect();
    let target: Vec<String> = table.split('.').map(quote).collect();
    let statement = format!(
        "INSERT INTO {} ({}) VALUES {}",
        target.join("."),
        column_list.join(", "),
        rows.join(", ")
    );
    let request = Request {
        statement: &statement,
        parameters: &parameters,
        catalog: None,
        schema: None,
    };
    let prepared = engine
        .prepare(&request)
        .map_err(|err| Status::invalid_argument(format!("Record does not fit the table: {err}")))?;
    engine
        .run(prepared)
        .await
        .map_err(|err| Status::invalid_argument(format!("Record does not fit the table: {err}")))?;
    Ok(())
}

pub(super) fn table_not_found(table: &str) -> Status {
    Status::not_found(format!("Table '{table}' does not exist."))
}

fn parse_object(record: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(record) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("a record must be a JSON object".to_owned()),
        Err(err) => Err(format!("not JSON: {err}")),
    }
}

/// A JSON value as the text of a parameter of the column's type; `None` for NULL.
fn text_of(value: &Value, type_text: &str) -> Result<Option<String>, String> {
    Ok(match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => match (type_text, number.as_i64()) {
            ("TIMESTAMP" | "TIMESTAMP_NTZ", Some(micros)) => Some(
                chrono::DateTime::from_timestamp_micros(micros)
                    .ok_or("timestamp out of range")?
                    .format("%Y-%m-%d %H:%M:%S%.6f")
                    .to_string(),
            ),
            ("DATE", Some(days)) => Some(
                chrono::DateTime::from_timestamp(days.saturating_mul(86_400), 0)
                    .ok_or("date out of range")?
                    .format("%Y-%m-%d")
                    .to_string(),
            ),
            _ => Some(number.to_string()),
        },
        Value::Array(_) | Value::Object(_) => {
            return Err("nested values are not supported by the emulator".to_owned());
        }
    })
}

fn invalid(index: usize, why: &str) -> Status {
    Status::invalid_argument(format!("Record {index} of the message is invalid: {why}"))
}

fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}
