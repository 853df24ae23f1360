//! The last commit into each table, and what a write read of its target: what
//! optimistic concurrency compares at commit (`commit.rs`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use datafusion::sql::sqlparser::ast::{Expr, Ident};

use super::names::TableName;

/// What part of its target a write reads, i.e. what concurrent appends it conflicts with.
#[derive(Clone)]
pub(super) enum ReadRange {
    /// Every row (an INSERT ... SELECT from its target, a MERGE without a condition on the
    /// target alone).
    Whole,
    /// Rows for which `predicate` holds, its columns named `qualifier.column`.
    Rows {
        qualifier: Ident,
        predicate: Box<Expr>,
    },
}

/// The last commit into each table, by its `catalog.schema.table`.
#[derive(Default)]
pub(super) struct Versions {
    tables: Mutex<HashMap<String, TableVersion>>,
}

#[derive(Clone, Copy, Default)]
pub(super) struct TableVersion {
    pub(super) version: u64,
    /// Delta's name for the operation that committed it (`MERGE`, `WRITE`, ...).
    pub(super) operation: &'static str,
    /// The version whose commit last removed rows (a MERGE that deletes), 0 if none: a
    /// write that read before it cannot tell what was appended since by counting batches.
    pub(super) rewritten: u64,
}

impl Versions {
    pub(super) fn get(&self, table: &TableName) -> TableVersion {
        self.lock()
            .get(&table.to_string())
            .copied()
            .unwrap_or_default()
    }

    /// Counts a commit into `table`; called under the write lock.
    pub(super) fn bump(&self, table: &TableName, operation: &'static str) {
        let mut tables = self.lock();
        let entry = tables.entry(table.to_string()).or_default();
        entry.version += 1;
        entry.operation = operation;
    }

    /// Marks the last commit into `table` as one that removed rows; under the write lock.
    pub(super) fn rewritten(&self, table: &TableName) {
        let mut tables = self.lock();
        let entry = tables.entry(table.to_string()).or_default();
        entry.rewritten = entry.version + 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TableVersion>> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
