//! `MERGE INTO` in its insert-only form, the exactly-once append:
//!
//! ```sql
//! MERGE INTO target [AS t] USING source [AS s] ON <on>
//! WHEN NOT MATCHED [AND <cond>] THEN INSERT (cols) VALUES (values) | INSERT *
//! ```
//!
//! becomes `INSERT INTO target (cols) SELECT values FROM source [AS s] WHERE [<cond> AND]
//! NOT EXISTS (SELECT TRUE FROM target [AS t] WHERE <on>)`. The engine validates it at commit,
//! under its write lock, against what was committed since it read (`commit.rs`), so the check and
//! the insert are one atomic step, as Delta's conflict detection makes them: concurrent MERGEs
//! never duplicate a row. [`read_range`] is the part of the target a MERGE reads whatever its
//! source holds: the ON condition's conjuncts on the target alone. As on Databricks, source rows that duplicate each
//! other are all inserted.
//!
//! A MERGE that deletes (`WHEN MATCHED THEN DELETE`, with at most one insert clause) is a
//! [`Rewrite`]: the target's rows no source row matches are kept, and the source rows that
//! match no target row (both as the target was before) are inserted, in one step under the
//! write lock. Other clauses (UPDATE, conditional DELETE, WHEN NOT MATCHED BY SOURCE) fail.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Ident, Merge, MergeAction, MergeClause, MergeClauseKind, MergeInsertExpr,
    MergeInsertKind, ObjectName, Query, SelectItem, SetExpr, Statement, TableFactor, TableObject,
    Value, Values, WildcardAdditionalOptions, visit_expressions,
};
use datafusion::sql::sqlparser::dialect::DatabricksDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::SqlError;

/// sqlparser lacks Databricks' `INSERT *` and `UPDATE SET *`, so they are spelled with a column
/// named `*`, which no real table has: `INSERT VALUES (`*`)` and `UPDATE SET `*` = `*``.
pub(super) fn spell_out_stars(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut spelled: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    for token in tokens {
        match (token.token == Token::Mul)
            .then(|| star_spelling(&spelled))
            .flatten()
        {
            Some(replacement) => spelled.extend(
                replacement
                    .into_iter()
                    .map(|t| TokenWithSpan::new(t, token.span)),
            ),
            None => spelled.push(token),
        }
    }
    spelled
}

/// What a `*` following `before` stands for, when it is a MERGE action's.
fn star_spelling(before: &[TokenWithSpan]) -> Option<Vec<Token>> {
    let mut keywords = before
        .iter()
        .rev()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .map(|t| match &t.token {
            Token::Word(word) => word.keyword,
            _ => Keyword::NoKeyword,
        });
    match (keywords.next(), keywords.next()) {
        (Some(Keyword::INSERT), Some(Keyword::THEN)) => Some(vec![
            Token::make_keyword("VALUES"),
            Token::LParen,
            star(),
            Token::RParen,
        ]),
        (Some(Keyword::SET), Some(Keyword::UPDATE)) => Some(vec![star(), Token::Eq, star()]),
        _ => None,
    }
}

fn star() -> Token {
    Token::make_word("*", Some('`'))
}

fn is_star(expr: &Expr) -> bool {
    matches!(expr, Expr::Identifier(ident) if ident.value == "*" && ident.quote_style == Some('`'))
}

/// Rewrites an insert-only MERGE into the equivalent INSERT; `target_columns` lists the target
/// table's columns, for `INSERT *`.
pub(super) fn to_insert(
    merge: Merge,
    target_columns: impl FnOnce(&ObjectName) -> Result<Vec<String>, SqlError>,
) -> Result<Statement, SqlError> {
    if merge.output.is_some() {
        return Err(unsupported("MERGE ... OUTPUT"));
    }
    let TableFactor::Table { name: target, .. } = &merge.table else {
        return Err(SqlError::syntax("MERGE INTO expects a table name"));
    };
    let (condition, insert) = only_insert(merge.clauses)?;
    let (columns, row) = insert_values(insert, || target_columns(target))?;
    let absent = Expr::Exists {
        subquery: select(
            vec![SelectItem::UnnamedExpr(Expr::value(Value::Boolean(true)))],
            merge.table.clone(),
            *merge.on,
        ),
        negated: true,
    };
    let selection = match condition {
        Some(condition) => Expr::BinaryOp {
            left: Box::new(Expr::Nested(Box::new(condition))),
            op: BinaryOperator::And,
            right: Box::new(absent),
        },
        None => absent,
    };
    let Statement::Insert(mut insert_into) = template("INSERT INTO t SELECT 1").remove(0) else {
        unreachable!("the template is an INSERT");
    };
    insert_into.table = TableObject::TableName(target.clone());
    insert_into.columns = columns;
    insert_into.source = Some(select(
        row.into_iter().map(SelectItem::UnnamedExpr).collect(),
        merge.source,
        selection,
    ));
    Ok(Statement::Insert(insert_into))
}

/// A MERGE that deletes the target rows it matches: see the module's documentation.
pub(super) struct Rewrite {
    pub(super) target: ObjectName,
    /// `SELECT * FROM target WHERE NOT EXISTS (matching source row)`: what stays.
    pub(super) kept: Box<Query>,
    /// The insert clause as [`to_insert`] makes it; `None` without one.
    pub(super) insert: Option<Statement>,
}

/// Whether the MERGE has a `WHEN MATCHED THEN DELETE` clause.
pub(super) fn deletes(merge: &Merge) -> bool {
    (merge.clauses.iter()).any(|clause| matches!(clause.action, MergeAction::Delete { .. }))
}

/// A deleting MERGE as a [`Rewrite`]: one unconditional `WHEN MATCHED THEN DELETE`, and at
/// most one `WHEN NOT MATCHED THEN INSERT`.
pub(super) fn to_rewrite(
    mut merge: Merge,
    target_columns: impl FnOnce(&ObjectName) -> Result<Vec<String>, SqlError>,
) -> Result<Rewrite, SqlError> {
    let unsupported = |what: &str| {
        SqlError::unsupported(format!(
            "{what} is not supported by the emulator: a MERGE that deletes supports only \
             WHEN MATCHED THEN DELETE and WHEN NOT MATCHED THEN INSERT."
        ))
    };
    if merge.output.is_some() {
        return Err(unsupported("MERGE ... OUTPUT"));
    }
    let TableFactor::Table { name: target, .. } = &merge.table else {
        return Err(SqlError::syntax("MERGE INTO expects a table name"));
    };
    let target = target.clone();
    let mut deletes = 0;
    let mut inserts = Vec::new();
    for clause in std::mem::take(&mut merge.clauses) {
        match (&clause.clause_kind, &clause.action, &clause.predicate) {
            (MergeClauseKind::Matched, MergeAction::Delete { .. }, None) => deletes += 1,
            (
                MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget,
                MergeAction::Insert(_),
                _,
            ) => inserts.push(clause),
            (kind, _, _) => return Err(unsupported(&format!("this WHEN {kind} clause"))),
        }
    }
    if deletes != 1 || inserts.len() > 1 {
        return Err(unsupported("more than one DELETE or INSERT clause"));
    }
    let matched = Expr::Exists {
        subquery: select(
            vec![SelectItem::UnnamedExpr(Expr::value(Value::Boolean(true)))],
            merge.source.clone(),
            (*merge.on).clone(),
        ),
        negated: true,
    };
    let kept = select(
        vec![SelectItem::Wildcard(WildcardAdditionalOptions::default())],
        merge.table.clone(),
        matched,
    );
    let insert = match inserts.pop() {
        Some(clause) => {
            merge.clauses = vec![clause];
            Some(to_insert(merge, target_columns)?)
        }
        None => None,
    };
    Ok(Rewrite {
        target,
        kept,
        insert,
    })
}

/// The target's qualifier in the ON condition (its alias, else its last name part) and the ON
/// condition's conjuncts that refer to the target's columns alone, `qualifier.column`; `None`
/// when there are none, i.e. the MERGE reads the whole target. Conjuncts with unqualified
/// columns or subqueries are left out, which only widens the range.
pub(super) fn read_range(merge: &Merge) -> Option<(Ident, Expr)> {
    let TableFactor::Table { name, alias, .. } = &merge.table else {
        return None;
    };
    let qualifier = match alias {
        Some(alias) => alias.name.clone(),
        None => name.0.last()?.as_ident()?.clone(),
    };
    let mut conjuncts = Vec::new();
    split_conjunction(&merge.on, &mut conjuncts);
    conjuncts
        .into_iter()
        .filter(|conjunct| refers_only_to(conjunct, &qualifier))
        .cloned()
        .reduce(|left, right| Expr::BinaryOp {
            left: Box::new(left),
            op: BinaryOperator::And,
            right: Box::new(right),
        })
        .map(|range| (qualifier, range))
}

fn split_conjunction<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_conjunction(left, out);
            split_conjunction(right, out);
        }
        Expr::Nested(inner) => split_conjunction(inner, out),
        other => out.push(other),
    }
}

/// Whether `expr` names at least one column and only columns `qualifier.column`.
fn refers_only_to(expr: &Expr, qualifier: &Ident) -> bool {
    let same = |a: &Ident, b: &Ident| super::normalize(a) == super::normalize(b);
    let mut columns = 0;
    let flow = visit_expressions(expr, |e| match e {
        Expr::CompoundIdentifier(parts) if parts.len() == 2 && same(&parts[0], qualifier) => {
            columns += 1;
            ControlFlow::Continue(())
        }
        Expr::Identifier(_)
        | Expr::CompoundIdentifier(_)
        | Expr::Subquery(_)
        | Expr::Exists { .. }
        | Expr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    flow.is_continue() && columns > 0
}

/// The one `WHEN NOT MATCHED [AND <condition>] THEN INSERT` clause, with its condition.
fn only_insert(clauses: Vec<MergeClause>) -> Result<(Option<Expr>, MergeInsertExpr), SqlError> {
    let mut inserts = Vec::with_capacity(1);
    for clause in clauses {
        let kind = clause.clause_kind;
        let action = match clause.action {
            MergeAction::Insert(insert)
                if matches!(
                    kind,
                    MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget
                ) && insert.insert_predicate.is_none() =>
            {
                inserts.push((clause.predicate, insert));
                continue;
            }
            MergeAction::Insert(_) => "INSERT ... WHERE",
            MergeAction::Update(_) => "UPDATE",
            MergeAction::Delete { .. } => "DELETE",
        };
        return Err(unsupported(&format!("WHEN {kind} THEN {action}")));
    }
    match <[_; 1]>::try_from(inserts) {
        Ok([only]) => Ok(only),
        Err(inserts) => Err(unsupported(&format!(
            "A MERGE with {} WHEN NOT MATCHED clauses",
            inserts.len()
        ))),
    }
}

/// The INSERT's column names (unqualified) and values, with `INSERT *` taking each target column
/// from the source column of the same name.
fn insert_values(
    insert: MergeInsertExpr,
    target_columns: impl FnOnce() -> Result<Vec<String>, SqlError>,
) -> Result<(Vec<ObjectName>, Vec<Expr>), SqlError> {
    let MergeInsertKind::Values(Values { mut rows, .. }) = insert.kind else {
        return Err(SqlError::syntax("INSERT in MERGE expects VALUES or *"));
    };
    if rows.len() != 1 {
        return Err(SqlError::syntax(
            "INSERT in MERGE expects one row of VALUES",
        ));
    }
    let row = rows.remove(0).content;
    if insert.columns.is_empty() && matches!(row.as_slice(), [only] if is_star(only)) {
        let names: Vec<Ident> = target_columns()?
            .into_iter()
            .map(|name| Ident::with_quote('`', name))
            .collect();
        let row = names.iter().cloned().map(Expr::Identifier).collect();
        let columns = names
            .into_iter()
            .map(|n| ObjectName::from(vec![n]))
            .collect();
        return Ok((columns, row));
    }
    let columns = insert
        .columns
        .into_iter()
        .map(|name| ObjectName(name.0.into_iter().last().into_iter().collect()))
        .collect();
    Ok((columns, row))
}

/// `SELECT <projection> FROM <from> WHERE <selection>`, built from a parsed template since
/// sqlparser's nodes have no constructors.
pub(super) fn select(
    projection: Vec<SelectItem>,
    from: TableFactor,
    selection: Expr,
) -> Box<Query> {
    let Statement::Query(mut query) = template("SELECT 1 FROM t WHERE TRUE").remove(0) else {
        unreachable!("the template is a query");
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        unreachable!("the template is a SELECT");
    };
    select.projection = projection;
    select.from[0].relation = from;
    select.selection = Some(selection);
    query
}

fn template(sql: &str) -> Vec<Statement> {
    Parser::parse_sql(&DatabricksDialect {}, sql).expect("the template parses")
}

fn unsupported(what: &str) -> SqlError {
    SqlError::unsupported(format!(
        "{what} is not supported by the emulator: MERGE supports only \
         WHEN NOT MATCHED [AND <condition>] THEN INSERT."
    ))
}
