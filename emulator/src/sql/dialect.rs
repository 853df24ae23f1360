//! The SQL dialect the engine parses: sqlparser's Databricks dialect plus the `div` operator
//! (`7 div 2`), which sqlparser only reads for MySQL and Spark. Every other question goes to
//! [`DatabricksDialect`], and the parser takes this dialect for it (`dialect()`), so its
//! Databricks-specific rules apply unchanged.

use std::any::TypeId;

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr};
use datafusion::sql::sqlparser::dialect::{DatabricksDialect, Dialect};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Databricks;

const INNER: DatabricksDialect = DatabricksDialect;

impl Dialect for Databricks {
    fn dialect(&self) -> TypeId {
        TypeId::of::<DatabricksDialect>()
    }

    /// `a div b`, with the precedence of `*` and `/` (sqlparser already ranks `DIV` there), so
    /// `7 div 2 + 1` is `(7 div 2) + 1`.
    fn parse_infix(
        &self,
        parser: &mut Parser,
        expr: &Expr,
        precedence: u8,
    ) -> Option<Result<Expr, ParserError>> {
        if !parser.parse_keyword(Keyword::DIV) {
            return INNER.parse_infix(parser, expr, precedence);
        }
        Some(
            parser
                .parse_subexpr(precedence)
                .map(|right| Expr::BinaryOp {
                    left: Box::new(expr.clone()),
                    op: BinaryOperator::MyIntegerDivide,
                    right: Box::new(right),
                }),
        )
    }

    // What follows delegates every method DatabricksDialect overrides.

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        INNER.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        INNER.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        INNER.is_identifier_part(ch)
    }

    fn supports_numeric_prefix(&self) -> bool {
        INNER.supports_numeric_prefix()
    }

    fn supports_filter_during_aggregation(&self) -> bool {
        INNER.supports_filter_during_aggregation()
    }

    fn supports_group_by_expr(&self) -> bool {
        INNER.supports_group_by_expr()
    }

    fn supports_table_versioning(&self) -> bool {
        INNER.supports_table_versioning()
    }

    fn supports_lambda_functions(&self) -> bool {
        INNER.supports_lambda_functions()
    }

    fn supports_select_wildcard_except(&self) -> bool {
        INNER.supports_select_wildcard_except()
    }

    fn require_interval_qualifier(&self) -> bool {
        INNER.require_interval_qualifier()
    }

    fn supports_struct_literal(&self) -> bool {
        INNER.supports_struct_literal()
    }

    fn supports_nested_comments(&self) -> bool {
        INNER.supports_nested_comments()
    }

    fn supports_group_by_with_modifier(&self) -> bool {
        INNER.supports_group_by_with_modifier()
    }

    fn supports_values_as_table_factor(&self) -> bool {
        INNER.supports_values_as_table_factor()
    }

    fn supports_optimize_table(&self) -> bool {
        INNER.supports_optimize_table()
    }

    fn supports_bang_not_operator(&self) -> bool {
        INNER.supports_bang_not_operator()
    }

    fn supports_cte_without_as(&self) -> bool {
        INNER.supports_cte_without_as()
    }

    fn supports_select_item_multi_column_alias(&self) -> bool {
        INNER.supports_select_item_multi_column_alias()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr, Statement};

    use super::*;

    fn parse(dialect: &dyn Dialect, sql: &str) -> String {
        match Parser::parse_sql(dialect, sql) {
            Ok(statements) => format!("{statements:?}"),
            Err(err) => panic!("{sql}: {err}"),
        }
    }

    #[test]
    fn parses_what_the_databricks_dialect_parses_the_same_way() {
        for sql in [
            "SELECT `a b`, x:y, count(*) FILTER (WHERE a > 1) FROM t GROUP BY ALL",
            "SELECT * EXCEPT (a) FROM t VERSION AS OF 3",
            "SELECT transform(xs, x -> x + 1), INTERVAL 1 HOUR, 1a FROM t",
            "SELECT e AS (a, b) FROM VALUES (1, 2) AS v(a, b) /* /* nested */ */",
            "WITH c (SELECT !true) SELECT * FROM c",
            "SELECT STRUCT(1 AS a), \"text\" FROM t",
        ] {
            assert_eq!(
                parse(&Databricks, sql),
                parse(&DatabricksDialect, sql),
                "{sql}"
            );
        }
    }

    fn first_item(sql: &str) -> Expr {
        let Ok(mut statements) = Parser::parse_sql(&Databricks, sql) else {
            panic!("{sql} parses");
        };
        let Statement::Query(query) = statements.remove(0) else {
            panic!("a query");
        };
        let SetExpr::Select(select) = *query.body else {
            panic!("a SELECT");
        };
        match select.projection.into_iter().next() {
            Some(SelectItem::UnnamedExpr(expr)) => expr,
            other => panic!("{other:?}"),
        }
    }

    fn is_div(expr: &Expr) -> bool {
        matches!(
            expr,
            Expr::BinaryOp {
                op: BinaryOperator::MyIntegerDivide,
                ..
            }
        )
    }

    #[test]
    fn div_is_a_left_associative_operator_as_tight_as_division() {
        let Expr::BinaryOp { left, op, .. } = first_item("SELECT 7 div 2 + 1") else {
            panic!("a binary operation");
        };
        assert_eq!(op, BinaryOperator::Plus);
        assert!(is_div(&left));
        let Expr::BinaryOp { left, op, right } = first_item("SELECT 8 DIV 2 div 2") else {
            panic!("a binary operation");
        };
        assert_eq!(op, BinaryOperator::MyIntegerDivide);
        assert!(is_div(&left) && !is_div(&right));
        assert!(matches!(first_item("SELECT div(1, 2)"), Expr::Function(_)));
    }
}
