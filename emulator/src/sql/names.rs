//! Table names as the engine resolves them, and looking a table up by one.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Ident, ObjectName};

pub(super) const INFORMATION_SCHEMA: &str = "information_schema";

/// A fully qualified, normalized table name.
pub(crate) struct TableName {
    pub catalog: String,
    pub schema: String,
    pub table: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.catalog, self.schema, self.table)
    }
}

/// Looks a table up in the catalog.
pub(super) async fn table(
    ctx: &SessionContext,
    name: &TableName,
) -> Option<Arc<dyn TableProvider>> {
    let schema = ctx.catalog(&name.catalog)?.schema(&name.schema)?;
    schema.table(&name.table).await.ok().flatten()
}

/// Unquoted identifiers are case-insensitive: DataFusion folds them to lower case, and so do we.
pub(super) fn normalize(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The column an INSERT column list names (its last part).
pub(super) fn column_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .map(normalize)
        .unwrap_or_default()
}
