//! Named parameter markers (`:name`) bound by rewriting the parsed statement: each marker becomes
//! a string literal (STRING) or `CAST('<value>' AS <type>)`, and a missing value becomes
//! `CAST(NULL AS <type>)`. Values never pass through the SQL text, so they cannot inject SQL.

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::arrow::array::StringArray;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::sql::sqlparser::ast::{self, CastKind, Expr, Value, visit_expressions_mut};
use serde::Deserialize;

use super::{SqlError, types};

/// One entry of the request's `parameters` list.
#[derive(Clone, Debug, Deserialize)]
pub struct Parameter {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    /// A SQL type name; Databricks defaults to STRING.
    #[serde(default, rename = "type")]
    pub type_name: Option<String>,
}

/// Replaces every parameter marker in `node` with its bound value.
pub fn bind<N: ast::VisitMut>(node: &mut N, parameters: &[Parameter]) -> Result<(), SqlError> {
    let mut bound = HashMap::with_capacity(parameters.len());
    for parameter in parameters {
        bound.insert(parameter.name.as_str(), bound_expr(parameter)?);
    }
    let flow = visit_expressions_mut(node, |expr| {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(marker) = &value.value
        {
            let name = marker.strip_prefix(':').unwrap_or(marker);
            match bound.get(name) {
                Some(replacement) if marker.starts_with(':') => *expr = replacement.clone(),
                _ => return ControlFlow::Break(unbound(marker)),
            }
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(err) => Err(err),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn unbound(marker: &str) -> SqlError {
    SqlError::new(
        "UNBOUND_SQL_PARAMETER",
        "42P02",
        format!(
            "Found the unbound parameter: {}. Please fix `args` and provide a mapping of the parameter to either a SQL literal or collection constructor functions such as `map()`, `array()`, `struct()`.",
            marker.trim_start_matches(':')
        ),
    )
}

fn bound_expr(parameter: &Parameter) -> Result<Expr, SqlError> {
    let type_text = parameter.type_name.as_deref().unwrap_or("STRING");
    let data_type = types::parse(type_text).map_err(|detail| {
        SqlError::new(
            "INVALID_PARAMETER_VALUE",
            "22023",
            format!(
                "The type '{type_text}' of parameter :{} is not supported: {detail}",
                parameter.name
            ),
        )
    })?;
    let arrow_type = types::arrow_type(&data_type)?;
    let literal = match &parameter.value {
        None => Value::Null,
        Some(value) => {
            check_value(value, &arrow_type).map_err(|_| {
                SqlError::new(
                    "CAST_INVALID_INPUT",
                    "22018",
                    format!(
                        "The value '{value}' of the type \"STRING\" cannot be cast to \"{}\" because it is malformed (parameter :{}).",
                        types::column_type(&arrow_type).text,
                        parameter.name
                    ),
                )
            })?;
            Value::SingleQuotedString(value.clone())
        }
    };
    let literal = Expr::value(literal);
    if arrow_type == datafusion::arrow::datatypes::DataType::Utf8 && parameter.value.is_some() {
        return Ok(literal);
    }
    Ok(Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(literal),
        data_type: types::engine_type(&data_type).unwrap_or(data_type),
        array: false,
        format: None,
    })
}

/// Casts the value the way the engine will, so a bad value fails with a message that names the
/// parameter instead of a bare cast error.
fn check_value(value: &str, arrow_type: &datafusion::arrow::datatypes::DataType) -> Result<(), ()> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(&StringArray::from(vec![value]), arrow_type, &options)
        .map(drop)
        .map_err(drop)
}
