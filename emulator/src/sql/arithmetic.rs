//! Databricks division where DataFusion's differs. `/` between integers, floating-point numbers
//! or strings holding numbers divides as DOUBLE (`7 / 2` is 3.5; DECIMAL and INTERVAL operands
//! keep DataFusion's division); `a div b` (and `div(a, b)`) is the integral part of the quotient
//! as a BIGINT. Both fail with DIVIDE_BY_ZERO on a zero divisor, as Databricks SQL does in its
//! default ANSI mode, while `try_divide` answers NULL. A NULL operand gives NULL, even over zero.
//! `%` of floating-point numbers fails the same way (integers already do in DataFusion).
//! `floor` and `ceil` round a DOUBLE to a BIGINT (so `floor(7 / 2)` is 3, not 3.0) and a
//! DECIMAL(p, s) to a DECIMAL(p - s + 1, 0), as Databricks does.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Float64Array, Int64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type};
use datafusion::common::utils::take_function_args;
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue, plan_err};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;

use super::SqlError;

/// The UDFs to register next to [`Operators`].
pub(super) fn functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(Divide::new(DIVIDE, Op::Quotient, false)),
        ScalarUDF::from(Divide::new(REMAINDER, Op::Remainder, false)),
        ScalarUDF::from(Divide::new("try_divide", Op::Quotient, true)),
        ScalarUDF::from(IntegralDivide::new()),
        ScalarUDF::from(Round::new(false)),
        ScalarUDF::from(Round::new(true)),
    ]
}

/// The function `/` becomes when it divides as DOUBLE; named like an internal, since
/// Databricks has no such function.
const DIVIDE: &str = "__databricks_divide";

/// Likewise for `%` of floating-point numbers.
const REMAINDER: &str = "__databricks_remainder";

/// Plans `/`, `div` and `%` the Databricks way.
#[derive(Debug)]
pub(super) struct Operators {
    divide: Arc<ScalarUDF>,
    remainder: Arc<ScalarUDF>,
    div: Arc<ScalarUDF>,
}

impl Operators {
    pub(super) fn new() -> Self {
        Self {
            divide: Arc::new(ScalarUDF::from(Divide::new(DIVIDE, Op::Quotient, false))),
            remainder: Arc::new(ScalarUDF::from(Divide::new(
                REMAINDER,
                Op::Remainder,
                false,
            ))),
            div: Arc::new(ScalarUDF::from(IntegralDivide::new())),
        }
    }
}

impl ExprPlanner for Operators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let function = match expr.op {
            BinaryOperator::Divide if divides_as_double(&expr, schema, false) => &self.divide,
            BinaryOperator::Modulo if divides_as_double(&expr, schema, true) => &self.remainder,
            BinaryOperator::MyIntegerDivide => &self.div,
            _ => return Ok(PlannerResult::Original(expr)),
        };
        Ok(PlannerResult::Planned(
            function.call(vec![expr.left, expr.right]),
        ))
    }
}

/// Whether Databricks divides these operands as DOUBLE (rather than as DECIMAL or INTERVAL);
/// `not_integral`: only when one of them is not an integer (`%` of integers is integral).
fn divides_as_double(expr: &RawBinaryExpr, schema: &DFSchema, not_integral: bool) -> bool {
    let (Ok(left), Ok(right)) = (expr.left.get_type(schema), expr.right.get_type(schema)) else {
        return false;
    };
    let integral = |t: &DataType| t.is_integer() || t.is_null();
    as_double(&left) && as_double(&right) && !(not_integral && integral(&left) && integral(&right))
}

/// Integers, floating-point numbers, strings (cast, so a non-number fails) and NULL.
fn as_double(data_type: &DataType) -> bool {
    data_type.is_integer()
        || data_type.is_floating()
        || matches!(
            data_type,
            DataType::Null | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
}

fn divide_by_zero() -> DataFusionError {
    DataFusionError::External(Box::new(SqlError::divide_by_zero()))
}

fn overflow() -> DataFusionError {
    DataFusionError::External(Box::new(SqlError::new(
        "ARITHMETIC_OVERFLOW",
        "22003",
        "Overflow in integral divide. Use `try_divide` to tolerate overflow and return NULL \
         instead. If necessary set \"ansi_mode\" to \"false\" to bypass this error.",
    )))
}

/// Runs `f` over two arguments as arrays; a result from two scalars is a scalar again.
fn binary(
    name: &str,
    args: ScalarFunctionArgs,
    f: impl Fn(&ArrayRef, &ArrayRef) -> Result<ArrayRef>,
) -> Result<ColumnarValue> {
    let rows = args.number_rows;
    let [left, right] = take_function_args(name, args.args)?;
    let scalars = matches!(
        (&left, &right),
        (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_))
    );
    let result = f(&left.into_array(rows)?, &right.into_array(rows)?)?;
    Ok(if scalars && result.len() == 1 {
        ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?)
    } else {
        ColumnarValue::Array(result)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Quotient,
    Remainder,
}

/// `/` as DOUBLE division, or `%` of DOUBLEs (the sign of the dividend, as in Java);
/// `null_on_zero`: `try_divide`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Divide {
    name: &'static str,
    op: Op,
    null_on_zero: bool,
    signature: Signature,
}

impl Divide {
    fn new(name: &'static str, op: Op, null_on_zero: bool) -> Self {
        Self {
            name,
            op,
            null_on_zero,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Divide {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// DataFusion's spelling of the operator, for the names of nested expressions.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        let operator = match self.name {
            DIVIDE => "/",
            REMAINDER => "%",
            _ => {
                let args: Vec<String> = args.iter().map(|a| a.schema_name().to_string()).collect();
                return Ok(format!("{}({})", self.name, args.join(",")));
            }
        };
        let [left, right] = take_function_args(self.name, args)?;
        Ok(format!(
            "{} {operator} {}",
            left.schema_name(),
            right.schema_name()
        ))
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        // try_divide also takes DECIMALs, which it divides as DOUBLE.
        let accepted = |t: &DataType| {
            as_double(t) || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
        };
        match arg_types {
            [a, b] if accepted(a) && accepted(b) => Ok(vec![DataType::Float64; 2]),
            _ => plan_err!(
                "{} takes two numbers, not {}",
                self.name,
                arg_types
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        binary(self.name, args, |left, right| {
            let left = left.as_primitive::<Float64Type>();
            let right = right.as_primitive::<Float64Type>();
            let quotients = left
                .iter()
                .zip(right.iter())
                .map(|pair| match pair {
                    // -0.0 matches too.
                    (Some(_), Some(0.0)) => {
                        if self.null_on_zero {
                            Ok(None)
                        } else {
                            Err(divide_by_zero())
                        }
                    }
                    (Some(dividend), Some(divisor)) => Ok(Some(match self.op {
                        Op::Quotient => dividend / divisor,
                        Op::Remainder => dividend % divisor,
                    })),
                    _ => Ok(None),
                })
                .collect::<Result<Float64Array>>()?;
            Ok(Arc::new(quotients) as ArrayRef)
        })
    }
}

/// `a div b`: the quotient truncated toward zero, as a BIGINT. Integers and strings divide as
/// BIGINT, DECIMALs exactly (both at the larger scale, which cancels out), floating-point
/// numbers as DOUBLE.
#[derive(Debug, PartialEq, Eq, Hash)]
struct IntegralDivide {
    signature: Signature,
}

impl IntegralDivide {
    fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for IntegralDivide {
    fn name(&self) -> &str {
        "div"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        let [left, right] = take_function_args(self.name(), args)?;
        Ok(format!(
            "{} DIV {}",
            left.schema_name(),
            right.schema_name()
        ))
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [a, b] = arg_types else {
            return plan_err!("div takes two arguments");
        };
        for t in [a, b] {
            if !(as_double(t) || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))) {
                return plan_err!("div takes numbers, not {t}");
            }
        }
        let scale = |t: &DataType| match t {
            DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => Some(*s),
            _ => None,
        };
        let common = if a.is_floating() || b.is_floating() {
            DataType::Float64
        } else if let Some(s) = scale(a).max(scale(b)) {
            DataType::Decimal128(38, s.max(0))
        } else {
            DataType::Int64
        };
        Ok(vec![common.clone(), common])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        binary("div", args, |left, right| {
            let quotients: Int64Array = match left.data_type() {
                DataType::Int64 => integral_quotients(
                    left.as_primitive::<Int64Type>().iter(),
                    right.as_primitive::<Int64Type>().iter(),
                    |a, b| a.checked_div(b),
                )?,
                DataType::Decimal128(..) => integral_quotients(
                    left.as_primitive::<Decimal128Type>().iter(),
                    right.as_primitive::<Decimal128Type>().iter(),
                    |a, b| a.checked_div(b).and_then(|q| i64::try_from(q).ok()),
                )?,
                _ => {
                    let left = cast(left, &DataType::Float64)?;
                    let right = cast(right, &DataType::Float64)?;
                    integral_quotients(
                        left.as_primitive::<Float64Type>().iter(),
                        right.as_primitive::<Float64Type>().iter(),
                        |a, b| {
                            let q = (a / b).trunc();
                            // The range check also refuses NaN.
                            (q >= i64::MIN as f64 && q < i64::MAX as f64).then_some(q as i64)
                        },
                    )?
                }
            };
            Ok(Arc::new(quotients) as ArrayRef)
        })
    }
}

/// Divides pairwise with `divide`, which answers `None` on overflow.
fn integral_quotients<T: Default + PartialEq + Copy>(
    left: impl Iterator<Item = Option<T>>,
    right: impl Iterator<Item = Option<T>>,
    divide: impl Fn(T, T) -> Option<i64>,
) -> Result<Int64Array> {
    left.zip(right)
        .map(|pair| match pair {
            (Some(_), Some(divisor)) if divisor == T::default() => Err(divide_by_zero()),
            (Some(dividend), Some(divisor)) => {
                divide(dividend, divisor).map(Some).ok_or_else(overflow)
            }
            _ => Ok(None),
        })
        .collect()
}

/// `floor(x)` and `ceil(x)` (alias `ceiling`): integers stay BIGINT, a DOUBLE (or FLOAT, or a
/// STRING holding a number) rounds to a BIGINT, saturating like Spark's conversion, and a
/// DECIMAL(p, s) rounds to a DECIMAL(p - s + 1, 0).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Round {
    up: bool,
    aliases: Vec<String>,
    signature: Signature,
}

impl Round {
    fn new(up: bool) -> Self {
        Self {
            up,
            aliases: if up {
                vec!["ceiling".to_string()]
            } else {
                Vec::new()
            },
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Round {
    fn name(&self) -> &str {
        if self.up { "ceil" } else { "floor" }
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        Ok(vec![match arg_types {
            [t] if t.is_integer() || t.is_null() => DataType::Int64,
            [DataType::Decimal128(p, s)] => DataType::Decimal128(*p, *s),
            [DataType::Decimal256(_, s)] => DataType::Decimal128(38, *s),
            [t] if as_double(t) => DataType::Float64,
            [t] => return plan_err!("{} takes a number, not {t}", self.name()),
            _ => return plan_err!("{} takes one argument", self.name()),
        }])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(match arg_types {
            [DataType::Decimal128(p, s)] => {
                let digits = (i16::from(*p) - i16::from(*s) + 1).clamp(1, 38);
                DataType::Decimal128(digits as u8, 0)
            }
            _ => DataType::Int64,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let target = args.return_field.data_type().clone();
        let rows = args.number_rows;
        let [value] = take_function_args(self.name(), args.args)?;
        let scalar = matches!(value, ColumnarValue::Scalar(_));
        let array = value.into_array(rows)?;
        let up = self.up;
        let result: ArrayRef = match array.data_type() {
            DataType::Int64 => array,
            DataType::Float64 => Arc::new(
                array
                    .as_primitive::<Float64Type>()
                    .unary::<_, Int64Type>(|x| if up { x.ceil() } else { x.floor() } as i64),
            ),
            DataType::Decimal128(_, scale) => {
                let unit = 10_i128.pow(u32::from(scale.unsigned_abs()));
                let rounded: Decimal128Array = array.as_primitive::<Decimal128Type>().unary(|x| {
                    if up {
                        -((-x).div_euclid(unit))
                    } else {
                        x.div_euclid(unit)
                    }
                });
                Arc::new(rounded.with_data_type(target))
            }
            other => return plan_err!("{} takes a number, not {other}", self.name()),
        };
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?)
        } else {
            ColumnarValue::Array(result)
        })
    }
}
