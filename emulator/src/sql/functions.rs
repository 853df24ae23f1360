//! Databricks functions DataFusion lacks: `from_json`, `timestamp_millis`, `timestamp_micros`,
//! `unix_seconds`, `unix_millis` and `unix_micros` as UDFs, and `explode`, which is DataFusion's
//! `unnest` under another name.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, StructArray};
use datafusion::arrow::array::{new_empty_array, new_null_array};
use datafusion::arrow::compute::kernels::numeric::mul;
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::Decoder;
use datafusion::common::types::logical_string;
use datafusion::common::utils::take_function_args;
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_datafusion_err, plan_err};
use datafusion::logical_expr::{
    Coercion, ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, TypeSignature, TypeSignatureClass, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{self, Ident, ObjectNamePart};

use super::{SqlError, types};

pub(super) fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(FromJson::new()));
    ctx.register_udf(ScalarUDF::from(TimestampFrom::new(
        "timestamp_millis",
        1_000,
    )));
    ctx.register_udf(ScalarUDF::from(TimestampFrom::new("timestamp_micros", 1)));
    ctx.register_udf(ScalarUDF::from(UnixTime::new("unix_seconds", 1_000_000)));
    ctx.register_udf(ScalarUDF::from(UnixTime::new("unix_millis", 1_000)));
    ctx.register_udf(ScalarUDF::from(UnixTime::new("unix_micros", 1)));
}

/// Renames a call to a Databricks function that DataFusion knows by another name, turns
/// `from_json`'s options map into the one option the emulator implements, the parse mode, and
/// `unix_timestamp()` into the current time's.
pub(super) fn rename(function: &mut ast::Function) {
    let [part] = function.name.0.as_mut_slice() else {
        return;
    };
    let Some(name) = part.as_ident().map(|name| name.value.to_ascii_lowercase()) else {
        return;
    };
    match name.as_str() {
        "explode" => *part = ObjectNamePart::Identifier(Ident::new("unnest")),
        "explode_outer" => *part = ObjectNamePart::Identifier(Ident::new("unnest_outer")),
        "array" => *part = ObjectNamePart::Identifier(Ident::new("make_array")),
        "unix_timestamp" => current_unix_timestamp(function),
        "from_json" => options_to_mode(function),
        _ => {}
    }
}

/// `unix_timestamp()`, without arguments, is `unix_seconds(current_timestamp())`: the statement's
/// start in whole seconds.
fn current_unix_timestamp(function: &mut ast::Function) {
    let no_arguments = match &function.args {
        ast::FunctionArguments::None => true,
        ast::FunctionArguments::List(list) => list.args.is_empty(),
        ast::FunctionArguments::Subquery(_) => false,
    };
    if !no_arguments {
        return;
    }
    let now = ast::Function {
        name: ast::ObjectName::from(vec![Ident::new("current_timestamp")]),
        uses_odbc_syntax: false,
        parameters: ast::FunctionArguments::None,
        args: ast::FunctionArguments::None,
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    };
    function.name = ast::ObjectName::from(vec![Ident::new("unix_seconds")]);
    function.args = ast::FunctionArguments::List(ast::FunctionArgumentList {
        duplicate_treatment: None,
        args: vec![ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
            ast::Expr::Function(now),
        ))],
        clauses: Vec::new(),
    });
}

/// `from_json(json, schema, map('mode', 'FAILFAST', ...))` becomes
/// `from_json(json, schema, 'FAILFAST')` (other options are ignored; no `mode` means
/// PERMISSIVE). A third argument that is not a `map` of string literals is left for the
/// function's signature to refuse.
fn options_to_mode(function: &mut ast::Function) {
    let ast::FunctionArguments::List(list) = &mut function.args else {
        return;
    };
    let Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(options))) = list.args.get_mut(2)
    else {
        return;
    };
    let ast::Expr::Function(map) = options else {
        return;
    };
    if !map
        .name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .is_some_and(|n| n.value.eq_ignore_ascii_case("map"))
    {
        return;
    }
    let ast::FunctionArguments::List(entries) = &map.args else {
        return;
    };
    let literals: Option<Vec<String>> = entries
        .args
        .iter()
        .map(|arg| match arg {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Value(value))) => {
                match &value.value {
                    ast::Value::SingleQuotedString(text) | ast::Value::DoubleQuotedString(text) => {
                        Some(text.clone())
                    }
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    let Some(literals) = literals.filter(|l| l.len() % 2 == 0) else {
        return;
    };
    let mode = literals
        .chunks(2)
        .find(|pair| pair[0].eq_ignore_ascii_case("mode"))
        .map_or_else(|| "PERMISSIVE".to_owned(), |pair| pair[1].clone());
    *options = ast::Expr::value(ast::Value::SingleQuotedString(mode));
}

/// How `from_json` treats input it cannot parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParseMode {
    /// Spark's default: NULL (a struct of NULLs for a STRUCT schema).
    Permissive,
    /// The statement fails.
    FailFast,
}

impl ParseMode {
    fn parse(text: Option<&str>) -> Result<Self> {
        match text.map(str::to_ascii_uppercase).as_deref() {
            None | Some("PERMISSIVE") => Ok(ParseMode::Permissive),
            Some("FAILFAST") => Ok(ParseMode::FailFast),
            Some(other) => plan_err!(
                "[PARSE_MODE_UNSUPPORTED] The function from_json doesn't support the {other} mode. \
                 Acceptable modes are PERMISSIVE and FAILFAST."
            ),
        }
    }
}

/// `from_json(json, schema [, options])`: the schema is a literal in Databricks' type syntax
/// (`ARRAY<STRUCT<a: INT, b STRING>>`, `STRUCT<...>`, or a bare `a INT, b STRING`), and it fixes
/// the result type. Malformed input is handled as Spark's default PERMISSIVE mode does: NULL,
/// or for a STRUCT schema a struct whose fields are all NULL; with `map('mode', 'FAILFAST')`
/// the statement fails with `MALFORMED_RECORD_IN_PARSING` instead.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FromJson {
    signature: Signature,
}

impl FromJson {
    fn new() -> Self {
        let string = || Coercion::new_exact(TypeSignatureClass::Native(logical_string()));
        Self {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Coercible(vec![string(), string()]),
                    TypeSignature::Coercible(vec![string(), string(), string()]),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for FromJson {
    fn name(&self) -> &str {
        "from_json"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("from_json derives its type from the schema argument")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let (schema, mode) = match args.scalar_arguments {
            [_, schema] => (*schema, None),
            [_, schema, mode] => (*schema, Some(*mode)),
            _ => return plan_err!("from_json takes 2 or 3 arguments"),
        };
        let Some(schema) = schema.and_then(|s| s.try_as_str().flatten()) else {
            return plan_err!("the schema of from_json must be a string literal");
        };
        if let Some(mode) = mode {
            let Some(mode) = mode.and_then(|m| m.try_as_str().flatten()) else {
                return plan_err!("the options of from_json must be a map of string literals");
            };
            ParseMode::parse(Some(mode))?;
        }
        // Spark also takes a schema as a bare field list.
        let parsed = types::parse(schema).or_else(|_| types::parse(&format!("STRUCT<{schema}>")));
        let data_type = parsed
            .map_err(|err| plan_datafusion_err!("invalid from_json schema '{schema}': {err}"))
            .and_then(|t| {
                types::nested_arrow_type(&t).map_err(|err| plan_datafusion_err!("{}", err.detail))
            })?;
        Ok(Arc::new(Field::new(self.name(), data_type, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let target = args.return_field.data_type().clone();
        let mut args = args.args.into_iter();
        let json = args
            .next()
            .expect("the signature requires the JSON argument");
        let mode = match args.nth(1) {
            Some(ColumnarValue::Scalar(mode)) => ParseMode::parse(mode.try_as_str().flatten())?,
            Some(ColumnarValue::Array(_)) => {
                return plan_err!("the options of from_json must be a map of string literals");
            }
            None => ParseMode::Permissive,
        };
        map_values(json, |array| decode_json(array, &target, mode))
    }
}

/// Applies `f` to a column, or to a scalar as a one-row column so it stays a scalar.
fn map_values(
    value: ColumnarValue,
    f: impl Fn(&ArrayRef) -> Result<ArrayRef>,
) -> Result<ColumnarValue> {
    Ok(match value {
        ColumnarValue::Array(array) => ColumnarValue::Array(f(&array)?),
        ColumnarValue::Scalar(scalar) => {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&f(&scalar.to_array()?)?, 0)?)
        }
    })
}

/// Decodes each string as `{"v": <string>}` with arrow-json, so any JSON value (array, object,
/// scalar) maps onto the schema's type.
fn decode_json(array: &ArrayRef, target: &DataType, mode: ParseMode) -> Result<ArrayRef> {
    if array.is_empty() {
        return Ok(new_empty_array(target));
    }
    let schema = Arc::new(Schema::new(vec![Field::new("v", target.clone(), true)]));
    let strings = cast(array, &DataType::Utf8)?;
    let mut decoder = fresh_decoder(&schema)?;
    let mut values = Vec::with_capacity(strings.len());
    for text in strings.as_string::<i32>() {
        let value = match text.map(|text| decode_one(&mut decoder, text)) {
            None => new_null_array(target, 1),
            Some(Ok(Some(value))) => value,
            Some(Ok(None)) if mode == ParseMode::FailFast => return Err(malformed_record()),
            Some(Ok(None)) => malformed(target),
            Some(Err(_)) if mode == ParseMode::FailFast => return Err(malformed_record()),
            Some(Err(_)) => {
                // A decoder that failed midway holds a partial record.
                decoder = fresh_decoder(&schema)?;
                malformed(target)
            }
        };
        values.push(value);
    }
    let values: Vec<&dyn Array> = values.iter().map(|v| v.as_ref()).collect();
    Ok(concat(&values)?)
}

/// Databricks' error for malformed input in FAILFAST mode.
fn malformed_record() -> DataFusionError {
    DataFusionError::External(Box::new(SqlError::new(
        "MALFORMED_RECORD_IN_PARSING.WITHOUT_SUGGESTION",
        "22023",
        "Malformed records are detected in record parsing: [null]. Parse Mode: FAILFAST. \
         To process malformed records as null result, try setting the option 'mode' as \
         'PERMISSIVE'.",
    )))
}

fn fresh_decoder(schema: &SchemaRef) -> Result<Decoder> {
    Ok(ReaderBuilder::new(Arc::clone(schema)).build_decoder()?)
}

/// One value, or `None` when the text held something other than exactly one JSON value.
fn decode_one(
    decoder: &mut Decoder,
    text: &str,
) -> Result<Option<ArrayRef>, datafusion::arrow::error::ArrowError> {
    let wrapped = format!("{{\"v\": {text}}}");
    decoder.decode(wrapped.as_bytes())?;
    Ok(decoder
        .flush()?
        .filter(|batch| batch.num_rows() == 1)
        .map(|batch| Arc::clone(batch.column(0))))
}

fn malformed(target: &DataType) -> ArrayRef {
    match target {
        DataType::Struct(fields) => Arc::new(StructArray::new(
            fields.clone(),
            fields
                .iter()
                .map(|f| new_null_array(f.data_type(), 1))
                .collect(),
            None,
        )),
        _ => new_null_array(target, 1),
    }
}

/// `timestamp_millis(n)` and `timestamp_micros(n)`: the instant `n` units after the epoch.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TimestampFrom {
    name: &'static str,
    micros_per_unit: i64,
    signature: Signature,
}

impl TimestampFrom {
    fn new(name: &'static str, micros_per_unit: i64) -> Self {
        Self {
            name,
            micros_per_unit,
            signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TimestampFrom {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(types::timestamp())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [count] = take_function_args(self.name, args.args)?;
        let factor = Int64Array::new_scalar(self.micros_per_unit);
        // `mul` fails on overflow, as Spark does.
        map_values(count, |count| {
            Ok(cast(&mul(count, &factor)?, &types::timestamp())?)
        })
    }
}

/// `unix_seconds(ts)`, `unix_millis(ts)` and `unix_micros(ts)`: whole units since the epoch as a
/// BIGINT, rounded down (Spark's `floorDiv`, so instants before 1970 round away from zero).
#[derive(Debug, PartialEq, Eq, Hash)]
struct UnixTime {
    name: &'static str,
    micros_per_unit: i64,
    signature: Signature,
}

impl UnixTime {
    fn new(name: &'static str, micros_per_unit: i64) -> Self {
        Self {
            name,
            micros_per_unit,
            signature: Signature::coercible(
                vec![Coercion::new_exact(TypeSignatureClass::Timestamp)],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for UnixTime {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [ts] = take_function_args(self.name, args.args)?;
        map_values(ts, |ts| {
            // Any timestamp unit or zone reads as UTC microseconds first.
            let micros = cast(&cast(ts, &types::timestamp())?, &DataType::Int64)?;
            let units = micros
                .as_primitive::<Int64Type>()
                .unary::<_, Int64Type>(|us| us.div_euclid(self.micros_per_unit));
            Ok(Arc::new(units) as ArrayRef)
        })
    }
}
