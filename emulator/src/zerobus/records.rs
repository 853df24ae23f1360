//! Records into table rows: one INSERT per message, so a batch is all or nothing.
//!
//! A JSON record is one JSON object, a PROTO record one message of the stream's descriptor
//! (turned into the same object, by proto field name). Fields name columns (any case); a
//! missing field or `null` is NULL. Values are bound as typed parameters, so the engine's casts decide what a
//! column accepts: strings for every type (TIMESTAMP as `2024-01-01T00:00:00Z` or
//! `2024-01-01 00:00:00`), numbers and booleans for their types, and, as Zerobus' JSON mapping
//! does, an integer for a TIMESTAMP (microseconds since the epoch) or a DATE (days since it).

// tonic's Status is the protocol's error and goes straight onto the wire; boxing it gains nothing.
#![allow(clippy::result_large_err)]

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};
use tonic::Status;

use crate::sql::{Engine, Parameter, Request, SqlError};
use crate::state::FaultState;

/// How a stream's records are encoded.
pub(super) enum Format {
    Json,
    Proto(MessageDescriptor),
}

/// A message's records, as they came.
pub(super) enum Records {
    Json(Vec<String>),
    Proto(Vec<Vec<u8>>),
}

impl Format {
    /// The PROTO format of a stream whose `descriptor_proto` is one message's
    /// `DescriptorProto` (with its nested types), as the SDKs send it.
    pub(super) fn proto(descriptor: &[u8]) -> Result<Format, Status> {
        let refuse =
            |why: String| Status::invalid_argument(format!("Invalid descriptor_proto: {why}"));
        let message = prost_types::DescriptorProto::decode(descriptor)
            .map_err(|err| refuse(err.to_string()))?;
        let name = message
            .name
            .clone()
            .ok_or_else(|| refuse("the message has no name".to_owned()))?;
        let file = prost_types::FileDescriptorProto {
            name: Some("record.proto".to_owned()),
            syntax: Some("proto2".to_owned()),
            message_type: vec![message],
            ..Default::default()
        };
        let pool = DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet {
            file: vec![file],
        })
        .map_err(|err| refuse(err.to_string()))?;
        let message = pool
            .get_message_by_name(&name)
            .ok_or_else(|| refuse(format!("no message {name}")))?;
        Ok(Format::Proto(message))
    }

    /// The records as JSON objects, refusing records of the other format.
    fn objects(&self, records: Records) -> Result<Vec<Map<String, Value>>, Status> {
        match (self, records) {
            (Format::Json, Records::Json(records)) => records
                .iter()
                .enumerate()
                .map(|(index, record)| parse_object(record).map_err(|why| invalid(index, &why)))
                .collect(),
            (Format::Proto(descriptor), Records::Proto(records)) => records
                .iter()
                .enumerate()
                .map(|(index, record)| {
                    proto_object(descriptor, record).map_err(|why| invalid(index, &why))
                })
                .collect(),
            _ => Err(Status::invalid_argument(
                "The records are not of the stream's record_type.",
            )),
        }
    }
}

/// Writes `records` into `table` as one statement, or refuses them all; how many it wrote.
/// The `reject_rows` fault refuses a message carrying its marker in the table, as the
/// service refuses a record the table does not take.
pub(super) async fn write(
    engine: &Engine,
    faults: &FaultState,
    table: &str,
    format: &Format,
    records: Records,
) -> Result<u64, Status> {
    let columns = engine
        .columns(table)
        .await
        .ok_or_else(|| table_not_found(table))?;
    let objects = format.objects(records)?;
    // Every cell as the text of its column's type, cast on the engine as a typed
    // parameter would be: the whole message travels as one JSON parameter (as the SQL
    // sink's batches do), which the engine expands with `from_json`; a statement with a
    // parameter per cell would cost more to plan than to run.
    let mut cells = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        if let Some(unknown) = object.keys().find(|field| {
            !columns
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(field))
        }) {
            return Err(invalid(index, &format!("no column named {unknown:?}")));
        }
        let mut row = Map::with_capacity(columns.len());
        for (position, (name, type_text)) in columns.iter().enumerate() {
            let value = object
                .iter()
                .find(|(field, _)| field.eq_ignore_ascii_case(name))
                .map(|(_, value)| value);
            let text = value
                .map(|v| text_of(v, type_text))
                .transpose()
                .map_err(|why| invalid(index, &format!("column {name}: {why}")))?
                .flatten();
            row.insert(
                format!("c{position}"),
                text.map_or(Value::Null, Value::String),
            );
        }
        cells.push(Value::Object(row));
    }
    let column_list: Vec<String> = columns.iter().map(|(name, _)| quote(name)).collect();
    let casts: Vec<String> = (columns.iter().enumerate())
        .map(|(position, (_, type_text))| format!("CAST(r.c{position} AS {type_text})"))
        .collect();
    let fields: Vec<String> = (0..columns.len())
        .map(|position| format!("c{position}: STRING"))
        .collect();
    let target: Vec<String> = table.split('.').map(quote).collect();
    let statement = format!(
        "INSERT INTO {} ({}) SELECT {} FROM (SELECT explode(from_json(:rows, \
         'ARRAY<STRUCT<{}>>', map('mode', 'FAILFAST'))) AS r)",
        target.join("."),
        column_list.join(", "),
        casts.join(", "),
        fields.join(", ")
    );
    let texts = (cells.iter())
        .flat_map(|row| row.as_object().into_iter().flat_map(|row| row.values()))
        .filter_map(Value::as_str);
    if faults.rejects_rows(table, texts) {
        return Err(Status::invalid_argument(
            "Record does not fit the table: a value breaks a constraint (injected).",
        ));
    }
    let parameters = [Parameter {
        name: "rows".to_owned(),
        value: Some(Value::Array(cells).to_string()),
        type_name: Some("STRING".to_owned()),
    }];
    let request = Request {
        statement: &statement,
        parameters: &parameters,
        catalog: None,
        schema: None,
    };
    let refused =
        |err: SqlError| Status::invalid_argument(format!("Record does not fit the table: {err}"));
    engine
        .run(engine.prepare(&request).map_err(refused)?)
        .await
        .map_err(refused)?;
    Ok(u64::try_from(objects.len()).unwrap_or(u64::MAX))
}

pub(super) fn table_not_found(table: &str) -> Status {
    Status::not_found(format!("Table '{table}' does not exist."))
}

/// A PROTO record as the JSON object of its set fields, by proto field name, 64-bit
/// integers as numbers.
fn proto_object(
    descriptor: &MessageDescriptor,
    record: &[u8],
) -> Result<Map<String, Value>, String> {
    let message = DynamicMessage::decode(descriptor.clone(), record)
        .map_err(|err| format!("not a {}: {err}", descriptor.name()))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    match message.serialize_with_options(serde_json::value::Serializer, &options) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("the message is not an object".to_owned()),
        Err(err) => Err(err.to_string()),
    }
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
