//! Databricks SQL types: from SQL type names to Arrow (tables, parameters), from Databricks
//! spellings to the ones DataFusion's planner knows, and from Arrow back to the
//! `type_name`/`type_text` pair of a result manifest.
//!
//! TIMESTAMP is Databricks' instant type (timestamp with local time zone): the emulator keeps it
//! as UTC microseconds, `Timestamp(Microsecond, "UTC")`; TIMESTAMP_NTZ is the same without zone.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ArrayElemTypeDef, ExactNumberInfo, TimezoneInfo};
use datafusion::sql::sqlparser::dialect::DatabricksDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::SqlError;

/// The time zone the engine runs in and stores TIMESTAMP values in.
pub(super) const UTC: &str = "UTC";

pub(super) fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC)))
}

/// The Arrow type a Databricks column or parameter of this SQL type holds.
pub(super) fn arrow_type(data_type: &ast::DataType) -> Result<DataType, SqlError> {
    use ast::DataType as T;
    Ok(match data_type {
        T::String(_) | T::Varchar(_) | T::Text | T::Char(_) | T::Character(_) => DataType::Utf8,
        T::BigInt(_) | T::Int64 => DataType::Int64,
        T::Int(_) | T::Integer(_) | T::Int32 => DataType::Int32,
        T::SmallInt(_) => DataType::Int16,
        T::TinyInt(_) => DataType::Int8,
        T::Double(_) | T::DoublePrecision | T::Float64 => DataType::Float64,
        T::Float(_) | T::Real => DataType::Float32,
        T::Boolean | T::Bool => DataType::Boolean,
        T::Date => DataType::Date32,
        T::Timestamp(_, _) => timestamp(),
        T::TimestampNtz(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        T::Binary(_) => DataType::Binary,
        T::Decimal(info) | T::Numeric(info) | T::Dec(info) => {
            let (precision, scale) = match *info {
                ExactNumberInfo::None => (10, 0),
                ExactNumberInfo::Precision(p) => (p, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => (p, s),
            };
            if !(1..=38).contains(&precision) || scale < 0 || scale as u64 > precision {
                return Err(SqlError::new(
                    "DECIMAL_PRECISION_EXCEEDS_MAX_PRECISION",
                    "22003",
                    format!("DECIMAL({precision},{scale}) is not a valid decimal type."),
                ));
            }
            DataType::Decimal128(precision as u8, scale as i8)
        }
        T::Custom(name, _) => match name.to_string().to_uppercase().as_str() {
            "LONG" => DataType::Int64,
            "SHORT" => DataType::Int16,
            "BYTE" => DataType::Int8,
            _ => return Err(unsupported_type(data_type)),
        },
        _ => return Err(unsupported_type(data_type)),
    })
}

/// Like [`arrow_type`], plus `ARRAY<...>` and `STRUCT<...>` (all nullable, as Spark makes them),
/// for the values `from_json` produces; tables and parameters stay scalar.
pub(super) fn nested_arrow_type(data_type: &ast::DataType) -> Result<DataType, SqlError> {
    use ast::DataType as T;
    Ok(match data_type {
        T::Array(ArrayElemTypeDef::AngleBracket(item)) => {
            DataType::new_list(nested_arrow_type(item)?, true)
        }
        T::Struct(fields, _) => DataType::Struct(
            fields
                .iter()
                .map(|field| {
                    let name = field
                        .field_name
                        .as_ref()
                        .ok_or_else(|| unsupported_type(data_type))?;
                    Ok(Field::new(
                        &name.value,
                        nested_arrow_type(&field.field_type)?,
                        true,
                    ))
                })
                .collect::<Result<Fields, SqlError>>()?,
        ),
        _ => arrow_type(data_type)?,
    })
}

/// Parses a type in Databricks' SQL spelling, e.g. `DECIMAL(10,2)` or `ARRAY<STRUCT<a: INT>>`.
pub(super) fn parse(text: &str) -> Result<ast::DataType, String> {
    let mut parser = Parser::new(&DatabricksDialect {})
        .try_with_sql(text)
        .map_err(|e| e.to_string())?;
    let data_type = parser.parse_data_type().map_err(|e| e.to_string())?;
    match parser.peek_token().token {
        Token::EOF => Ok(data_type),
        other => Err(format!("unexpected '{other}'")),
    }
}

fn unsupported_type(data_type: &ast::DataType) -> SqlError {
    SqlError::new(
        "UNSUPPORTED_DATATYPE",
        "0A000",
        format!("Unsupported data type \"{data_type}\" (the emulator supports scalar types only)."),
    )
}

/// Rewrites a Databricks type spelling into one DataFusion's planner maps to the same Arrow type
/// as [`arrow_type`]; `None` when DataFusion already understands it.
pub(super) fn engine_type(data_type: &ast::DataType) -> Option<ast::DataType> {
    use ast::DataType as T;
    match data_type {
        // DataFusion reads a plain TIMESTAMP as zone-less nanoseconds; Databricks means an instant.
        T::Timestamp(_, tz) if *tz != TimezoneInfo::WithTimeZone || !is_micros(data_type) => {
            Some(T::Timestamp(Some(6), TimezoneInfo::WithTimeZone))
        }
        T::TimestampNtz(_) => Some(T::Timestamp(Some(6), TimezoneInfo::None)),
        T::Custom(..) => match arrow_type(data_type).ok()? {
            DataType::Int64 => Some(T::BigInt(None)),
            DataType::Int16 => Some(T::SmallInt(None)),
            DataType::Int8 => Some(T::TinyInt(None)),
            _ => None,
        },
        _ => None,
    }
}

fn is_micros(data_type: &ast::DataType) -> bool {
    matches!(data_type, ast::DataType::Timestamp(Some(6), _))
}

/// A result column's type as the manifest describes it.
pub(crate) struct ColumnType {
    pub name: &'static str,
    pub text: String,
    pub precision: Option<u8>,
    pub scale: Option<i8>,
}

impl ColumnType {
    fn simple(name: &'static str, text: &str) -> Self {
        Self {
            name,
            text: text.to_string(),
            precision: None,
            scale: None,
        }
    }
}

/// Maps an Arrow type to Databricks' `type_name` (the `ColumnInfoTypeName` enum) and `type_text`.
pub(crate) fn column_type(data_type: &DataType) -> ColumnType {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            ColumnType::simple("STRING", "STRING")
        }
        DataType::Int8 => ColumnType::simple("BYTE", "TINYINT"),
        DataType::Int16 | DataType::UInt8 => ColumnType::simple("SHORT", "SMALLINT"),
        DataType::Int32 | DataType::UInt16 => ColumnType::simple("INT", "INT"),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => {
            ColumnType::simple("LONG", "BIGINT")
        }
        DataType::Float16 | DataType::Float32 => ColumnType::simple("FLOAT", "FLOAT"),
        DataType::Float64 => ColumnType::simple("DOUBLE", "DOUBLE"),
        DataType::Boolean => ColumnType::simple("BOOLEAN", "BOOLEAN"),
        DataType::Date32 | DataType::Date64 => ColumnType::simple("DATE", "DATE"),
        DataType::Timestamp(_, Some(_)) => ColumnType::simple("TIMESTAMP", "TIMESTAMP"),
        DataType::Timestamp(_, None) => ColumnType::simple("TIMESTAMP", "TIMESTAMP_NTZ"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            ColumnType::simple("BINARY", "BINARY")
        }
        DataType::Null => ColumnType::simple("NULL", "VOID"),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => ColumnType {
            name: "DECIMAL",
            text: format!("DECIMAL({p},{s})"),
            precision: Some(*p),
            scale: Some(*s),
        },
        DataType::List(item)
        | DataType::LargeList(item)
        | DataType::ListView(item)
        | DataType::FixedSizeList(item, _) => ColumnType {
            name: "ARRAY",
            text: format!("ARRAY<{}>", column_type(item.data_type()).text),
            precision: None,
            scale: None,
        },
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields
                .iter()
                .map(|f| format!("{}: {}", f.name(), column_type(f.data_type()).text))
                .collect();
            ColumnType {
                name: "STRUCT",
                text: format!("STRUCT<{}>", inner.join(", ")),
                precision: None,
                scale: None,
            }
        }
        DataType::Map(..) => ColumnType::simple("MAP", "MAP"),
        DataType::Interval(_) | DataType::Duration(_) => ColumnType::simple("INTERVAL", "INTERVAL"),
        _ => ColumnType::simple("STRING", "STRING"),
    }
}
