//! Named parameter markers (`:name`) bound by rewriting the parsed statement: each marker becomes
//! a string literal (STRING) or `CAST('<value>' AS <type>)`, and a missing value becomes
//! `CAST(NULL AS <type>)`. Values never pass through the SQL text, so they cannot inject SQL.
//!
//! A long STRING value (a batch of rows as one JSON document) becomes a call to a function of
//! the statement's own that returns it, [`ParameterValue`]: DataFusion names expressions by
//! their text and hashes and copies those names while planning, so a literal of megabytes
//! would cost that much at every step (it made a 25,000-row MERGE take seconds).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::StringArray;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{
    self, CastKind, Expr, Function, FunctionArgumentList, FunctionArguments, Ident, ObjectName,
    Value, visit_expressions_mut,
};
use serde::Deserialize;

use super::{SqlError, types};

/// One entry of the request's `parameters` list.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Parameter {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    /// A SQL type name; Databricks defaults to STRING.
    #[serde(default, rename = "type")]
    pub type_name: Option<String>,
}

/// STRING values longer than this are bound as a [`ParameterValue`] call, not a literal.
const INLINE_MAX_BYTES: usize = 1024;

/// Replaces every parameter marker in `node` with its bound value; registers in `state` the
/// functions that return long values.
pub(super) fn bind<N: ast::VisitMut>(
    node: &mut N,
    parameters: &[Parameter],
    state: &mut SessionState,
) -> Result<(), SqlError> {
    let mut bound = HashMap::with_capacity(parameters.len());
    for parameter in parameters {
        let expr = match &parameter.value {
            Some(value) if value.len() > INLINE_MAX_BYTES && is_string(parameter) => {
                let name = ParameterValue::name_of(&parameter.name);
                // Bound once per statement (its MERGE read range binds the same values).
                if state.udf(&name).is_err() {
                    let function = ParameterValue::new(name.clone(), value);
                    state.register_udf(Arc::new(ScalarUDF::from(function)))?;
                }
                ParameterValue::call(&name)
            }
            _ => bound_expr(parameter)?,
        };
        bound.insert(parameter.name.as_str(), expr);
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

fn is_string(parameter: &Parameter) -> bool {
    parameter
        .type_name
        .as_deref()
        .is_none_or(|name| name.trim().eq_ignore_ascii_case("STRING"))
}

/// A zero-argument function returning one parameter's value, named after the parameter.
/// `Volatile`, so that DataFusion does not fold it into a literal while planning (it folds
/// `Stable` functions too, once per statement).
#[derive(Debug)]
struct ParameterValue {
    name: String,
    value: Arc<str>,
    signature: Signature,
}

impl ParameterValue {
    fn name_of(parameter: &str) -> String {
        format!("__parameter_{parameter}")
    }

    fn new(name: String, value: &str) -> Self {
        Self {
            name,
            value: Arc::from(value),
            signature: Signature::exact(vec![], Volatility::Volatile),
        }
    }

    /// A call of the function named `name`.
    fn call(name: &str) -> Expr {
        Expr::Function(Function {
            name: ObjectName::from(vec![Ident::with_quote('`', name)]),
            uses_odbc_syntax: false,
            parameters: FunctionArguments::None,
            args: FunctionArguments::List(FunctionArgumentList {
                duplicate_treatment: None,
                args: vec![],
                clauses: vec![],
            }),
            filter: None,
            null_treatment: None,
            over: None,
            within_group: vec![],
        })
    }
}

// By name and identity: hashing or comparing the value itself would cost its length.
impl PartialEq for ParameterValue {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.value, &other.value)
    }
}

impl Eq for ParameterValue {}

impl Hash for ParameterValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for ParameterValue {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            self.value.to_string(),
        ))))
    }
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
