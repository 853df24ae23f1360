//! Databricks' generators and table-valued functions, rewritten into what DataFusion plans, with
//! the column names Databricks gives them.
//!
//! In a select list, an un-aliased `explode(a)` or `explode_outer(a)` becomes
//! `unnest(a) AS col` (`unnest_outer`), and `posexplode(a)` becomes
//! `unnest(__positions(a)) AS pos, unnest(a) AS col`; `AS (x, y)` names the columns instead.
//! In FROM, `range(end)` / `range(start, end [, step [, numParts]])` becomes
//! `(SELECT value AS id FROM range(...))` (DataFusion's `range` has the same bounds but calls its
//! column `value`), and `explode(a)`, `explode_outer(a)`, `posexplode(a)` and
//! `posexplode_outer(a)` become the select-list forms over no table, so `AS t(x)` works as on
//! Databricks. Exploding a MAP is not supported: the emulator has no MAP values to explode.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::utils::take_function_args;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, Query, Select,
    SelectItem, SetExpr, Statement, TableAlias, TableFactor, VisitMut, VisitorMut,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::parser::Parser;

use super::SqlError;
use super::dialect::Databricks;

/// The function behind `posexplode`'s positions.
const POSITIONS: &str = "__positions";

pub(super) fn functions() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(Positions::new())]
}

/// Rewrites the generators and table-valued functions in `node`.
pub(super) fn rewrite<N: VisitMut>(node: &mut N) -> Result<(), SqlError> {
    match node.visit(&mut Rewriter) {
        ControlFlow::Break(err) => Err(*err),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Rewriter;

impl VisitorMut for Rewriter {
    type Break = Box<SqlError>;

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<Self::Break> {
        let mut projection = Vec::with_capacity(select.projection.len());
        for item in std::mem::take(&mut select.projection) {
            match expand(item) {
                Ok(items) => projection.extend(items),
                Err(err) => return ControlFlow::Break(Box::new(err)),
            }
        }
        select.projection = projection;
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Self::Break> {
        let (name, args, alias, lateral) = match factor {
            TableFactor::Table {
                name,
                args: Some(args),
                alias,
                ..
            } => (name, &mut args.args, alias, false),
            TableFactor::Function {
                lateral,
                name,
                args,
                alias,
                ..
            } => (name, args, alias, *lateral),
            _ => return ControlFlow::Continue(()),
        };
        let Some(function) = Generator::named(name) else {
            return ControlFlow::Continue(());
        };
        let args = std::mem::take(args);
        let subquery = match function {
            Generator::Range => range(args),
            generator => {
                let items = generator.items(argument(&generator, args), None);
                items.map(|items| {
                    let mut query = template("SELECT 1");
                    if let SetExpr::Select(select) = query.body.as_mut() {
                        select.projection = items;
                    }
                    query
                })
            }
        };
        // Un-aliased, the columns are qualified by the function's name, so two functions in one
        // FROM clause keep theirs apart.
        let alias = alias.take().unwrap_or_else(|| TableAlias {
            explicit: true,
            name: Ident::new(function.name()),
            columns: Vec::new(),
            at: None,
        });
        match subquery {
            Ok(subquery) => {
                *factor = TableFactor::Derived {
                    lateral,
                    subquery,
                    alias: Some(alias),
                    sample: None,
                };
                ControlFlow::Continue(())
            }
            Err(err) => ControlFlow::Break(Box::new(err)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Generator {
    Explode { outer: bool },
    PosExplode { outer: bool },
    Range,
}

impl Generator {
    fn named(name: &ObjectName) -> Option<Self> {
        let [part] = name.0.as_slice() else {
            return None;
        };
        let name = part.as_ident()?.value.to_ascii_lowercase();
        Some(match name.as_str() {
            "explode" => Generator::Explode { outer: false },
            "explode_outer" => Generator::Explode { outer: true },
            "posexplode" => Generator::PosExplode { outer: false },
            "posexplode_outer" => Generator::PosExplode { outer: true },
            "range" => Generator::Range,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Generator::Explode { outer: false } => "explode",
            Generator::Explode { outer: true } => "explode_outer",
            Generator::PosExplode { outer: false } => "posexplode",
            Generator::PosExplode { outer: true } => "posexplode_outer",
            Generator::Range => "range",
        }
    }

    /// The select items that produce this generator's columns over `arg`, named `aliases`
    /// or Databricks' default names.
    fn items(
        self,
        arg: Result<Expr, SqlError>,
        aliases: Option<Vec<Ident>>,
    ) -> Result<Vec<SelectItem>, SqlError> {
        let arg = arg?;
        let (outer, columns): (bool, Vec<(&str, String)>) = match self {
            Generator::Explode { outer } => (outer, vec![("col", "__arg".to_string())]),
            Generator::PosExplode { outer } => (
                outer,
                vec![
                    ("pos", format!("{POSITIONS}(__arg)")),
                    ("col", "__arg".to_string()),
                ],
            ),
            Generator::Range => unreachable!("range is not a select-list generator"),
        };
        let names = match aliases {
            None => columns.iter().map(|(name, _)| quoted(name)).collect(),
            Some(aliases) if aliases.len() == columns.len() => aliases,
            Some(aliases) => {
                return Err(SqlError::new(
                    "UDTF_ALIAS_NUMBER_MISMATCH",
                    "42802",
                    format!(
                        "The number of aliases supplied in the AS clause does not match the \
                         number of columns output by the UDTF. Expected {} aliases, but got {}. \
                         Please ensure that the number of aliases provided matches the number \
                         of columns output by the UDTF.",
                        columns.len(),
                        aliases
                            .iter()
                            .map(|a| a.value.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        };
        let unnest = if outer { "unnest_outer" } else { "unnest" };
        Ok(columns
            .iter()
            .zip(names)
            .map(|((_, value), alias)| {
                let mut expr = template_expr(&format!("{unnest}({value})"));
                substitute(&mut expr, &arg);
                SelectItem::ExprWithAlias { expr, alias }
            })
            .collect())
    }
}

/// A select item calling a generator un-aliased, or with `AS (a, b)`, becomes its columns;
/// everything else stays.
fn expand(item: SelectItem) -> Result<Vec<SelectItem>, SqlError> {
    let (expr, aliases) = match item {
        SelectItem::UnnamedExpr(expr) => (expr, None),
        SelectItem::ExprWithAliases { expr, aliases } => (expr, Some(aliases)),
        // `posexplode(a) AS x` names two columns with one alias.
        SelectItem::ExprWithAlias { expr, alias }
            if generator_call(&expr).is_some_and(|g| matches!(g, Generator::PosExplode { .. })) =>
        {
            (expr, Some(vec![alias]))
        }
        item => return Ok(vec![item]),
    };
    let Some(generator) = generator_call(&expr) else {
        return match aliases {
            None => Ok(vec![SelectItem::UnnamedExpr(expr)]),
            Some(aliases) => Ok(vec![SelectItem::ExprWithAliases { expr, aliases }]),
        };
    };
    let Expr::Function(function) = expr else {
        unreachable!("generator_call matched a function");
    };
    let args = match function.args {
        FunctionArguments::List(list) => list.args,
        _ => Vec::new(),
    };
    generator.items(argument(&generator, args), aliases)
}

fn generator_call(expr: &Expr) -> Option<Generator> {
    let Expr::Function(function) = expr else {
        return None;
    };
    Generator::named(&function.name).filter(|g| *g != Generator::Range && function.over.is_none())
}

/// The one argument of a generator.
fn argument(generator: &Generator, args: Vec<FunctionArg>) -> Result<Expr, SqlError> {
    let mut exprs = expressions(args)?;
    if exprs.len() != 1 {
        return Err(wrong_arguments(generator.name(), "1", exprs.len()));
    }
    Ok(exprs.remove(0))
}

fn expressions(args: Vec<FunctionArg>) -> Result<Vec<Expr>, SqlError> {
    args.into_iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr))
            | FunctionArg::Named {
                arg: FunctionArgExpr::Expr(expr),
                ..
            } => Ok(expr),
            other => Err(SqlError::syntax(format!("unexpected argument {other}"))),
        })
        .collect()
}

fn wrong_arguments(function: &str, expected: &str, actual: usize) -> SqlError {
    SqlError::new(
        "WRONG_NUM_ARGS.WITHOUT_SUGGESTION",
        "42605",
        format!(
            "The `{function}` requires {expected} parameters but the actual number is {actual}."
        ),
    )
}

/// `range(end)` / `range(start, end [, step [, numParts]])`; numParts only spreads the work
/// across partitions on Databricks.
fn range(args: Vec<FunctionArg>) -> Result<Box<Query>, SqlError> {
    let mut exprs = expressions(args)?;
    if !(1..=4).contains(&exprs.len()) {
        return Err(wrong_arguments("range", "[1, 2, 3, 4]", exprs.len()));
    }
    exprs.truncate(3);
    let placeholders: Vec<String> = (0..exprs.len()).map(|i| format!("__arg{i}")).collect();
    let mut query = template(&format!(
        "SELECT value AS id FROM range({})",
        placeholders.join(", ")
    ));
    let _ = visit_expressions_mut(query.as_mut(), |expr| {
        if let Expr::Identifier(ident) = expr
            && let Some(i) = ident
                .value
                .strip_prefix("__arg")
                .and_then(|i| i.parse::<usize>().ok())
        {
            *expr = exprs[i].clone();
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(query)
}

/// Replaces the identifier `__arg` in `expr` with `arg`.
fn substitute(expr: &mut Expr, arg: &Expr) {
    let _ = visit_expressions_mut(expr, |e| {
        if matches!(e, Expr::Identifier(ident) if ident.value == "__arg") {
            *e = arg.clone();
        }
        ControlFlow::<()>::Continue(())
    });
}

fn quoted(name: &str) -> Ident {
    Ident::with_quote('`', name)
}

/// A query parsed from a template, since sqlparser's nodes have no constructors.
fn template(sql: &str) -> Box<Query> {
    match Parser::parse_sql(&Databricks, sql)
        .expect("the template parses")
        .remove(0)
    {
        Statement::Query(query) => query,
        _ => unreachable!("the template is a query"),
    }
}

fn template_expr(sql: &str) -> Expr {
    Parser::new(&Databricks)
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_expr())
        .expect("the template parses")
}

/// `__positions(array)`: `[0, 1, ..., n - 1]` as INT for an array of n elements, NULL for NULL,
/// the positions `posexplode` numbers elements with.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Positions {
    signature: Signature,
}

impl Positions {
    fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Positions {
    fn name(&self) -> &str {
        POSITIONS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)] => {
                Ok(DataType::new_list(DataType::Int32, false))
            }
            [DataType::Null] => Ok(DataType::new_list(DataType::Int32, false)),
            [other] => plan_err!("posexplode takes an ARRAY, not {other}"),
            _ => plan_err!("posexplode takes one argument"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [array] = take_function_args(POSITIONS, args.args)?;
        let array = array.into_array(rows)?;
        let lengths: Vec<Option<usize>> = match array.data_type() {
            DataType::List(_) => list_lengths(array.as_list::<i32>()),
            DataType::LargeList(_) => list_lengths(array.as_list::<i64>()),
            DataType::FixedSizeList(_, size) => {
                let list = array.as_fixed_size_list();
                (0..list.len())
                    .map(|i| list.is_valid(i).then_some(*size as usize))
                    .collect()
            }
            _ => vec![None; array.len()],
        };
        let values: Int32Array = lengths
            .iter()
            .flat_map(|n| 0..n.unwrap_or(0) as i32)
            .collect();
        let offsets = OffsetBuffer::from_lengths(lengths.iter().map(|n| n.unwrap_or(0)));
        let nulls = lengths.iter().map(Option::is_some).collect::<Vec<_>>();
        let positions = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Int32, false)),
            offsets,
            Arc::new(values),
            Some(nulls.into()),
        )?;
        Ok(ColumnarValue::Array(Arc::new(positions) as ArrayRef))
    }
}

fn list_lengths<O: datafusion::arrow::array::OffsetSizeTrait>(
    list: &datafusion::arrow::array::GenericListArray<O>,
) -> Vec<Option<usize>> {
    (0..list.len())
        .map(|i| list.is_valid(i).then(|| list.value_length(i).as_usize()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> Result<String, SqlError> {
        let mut statements = Parser::parse_sql(&Databricks, sql).unwrap();
        rewrite(&mut statements)?;
        Ok(statements[0].to_string())
    }

    #[test]
    fn select_list_generators_get_their_columns() {
        assert_eq!(
            rewritten(
                "SELECT explode(xs), posexplode_outer(ys) AS (p, v), explode(zs) AS z FROM t"
            )
            .unwrap(),
            "SELECT unnest(xs) AS `col`, unnest_outer(__positions(ys)) AS p, unnest_outer(ys) AS v, \
             explode(zs) AS z FROM t"
        );
    }

    #[test]
    fn table_valued_functions_become_subqueries() {
        assert_eq!(
            rewritten("SELECT * FROM range(1, 10, 2, 4) AS r(n), explode(array(1)) AS e").unwrap(),
            "SELECT * FROM (SELECT value AS id FROM range(1, 10, 2)) AS r (n), \
             (SELECT unnest(array(1)) AS `col`) AS e"
        );
        assert_eq!(
            rewritten("SELECT range.id FROM range(3)").unwrap(),
            "SELECT range.id FROM (SELECT value AS id FROM range(3)) AS range"
        );
    }

    #[test]
    fn alias_counts_must_match() {
        let err = rewritten("SELECT posexplode(xs) AS p FROM t").unwrap_err();
        assert_eq!(err.class, Some("UDTF_ALIAS_NUMBER_MISMATCH"));
        let err = rewritten("SELECT * FROM range()").unwrap_err();
        assert_eq!(err.class, Some("WRONG_NUM_ARGS.WITHOUT_SUGGESTION"));
    }
}
