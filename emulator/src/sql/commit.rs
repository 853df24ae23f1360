//! Writes in two phases, as Delta's optimistic concurrency runs them.
//!
//! 1. **Read** ([`Engine::stage`]): an INSERT (a MERGE is one, see `merge.rs`) notes the version
//!    of its target it starts reading at, then computes the rows it would insert, without the
//!    write lock: any number of writes read at once.
//! 2. **Validate and commit** ([`Engine::commit`]), one write at a time under the write lock: if
//!    the target changed since the write read it, what the write read is checked against the
//!    rows committed since, by the [`WriteConflicts`] mode in force; the write then fails with
//!    `DELTA_CONCURRENT_APPEND` (SQLSTATE 2D521), or appends its rows. The check and the append
//!    are one step, so a MERGE never inserts a row another commit inserted after it read.
//!
//! The statement runner spends the injected latency and cost between the two, so writes
//! overlap in time. DDL and writes that read no table of their own run whole at commit.
//!
//! Tables are append-only in-memory tables, so what was committed since a read is the batches
//! appended to each partition since; a table replaced (CREATE OR REPLACE, DROP and CREATE) is
//! a new table object.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as EngineStatement;
use datafusion::sql::sqlparser::ast::{Expr, Ident, SetExpr, Statement};

use super::versions::{ReadRange, TableVersion};
use super::{
    Counts, Effect, Engine, Kind, Output, Prepared, SqlError, TableName, execute,
    name_not_null_column, normalize, table,
};
use crate::config::WriteConflicts;

const CONFLICT_SQL_STATE: &str = "2D521";
const CONFLICT_DOCS: &str = "https://docs.databricks.com/aws/en/optimizations/isolation-level";

/// A write that has read: what it will commit. See [`Engine::stage`].
pub(crate) struct Staged {
    inner: Inner,
}

enum Inner {
    /// Runs whole at commit, under the write lock (DDL).
    Serial(Box<Prepared>),
    Insert(Box<StagedInsert>),
}

struct StagedInsert {
    state: SessionState,
    /// The INSERT, bound, to plan again if it must read again at commit.
    statement: Statement,
    /// The INSERT as planned when it read.
    dml: DmlStatement,
    schema: SchemaRef,
    rows: Vec<RecordBatch>,
    row_count: usize,
    table: TableName,
    counts: Option<Counts>,
    insert_columns: Vec<String>,
    /// What it read of its own target; `None` for a blind append.
    read: Option<TargetRead>,
}

struct TargetRead {
    snapshot: Snapshot,
    range: ReadRange,
}

/// A table as a write started reading it.
struct Snapshot {
    provider: Option<Arc<dyn TableProvider>>,
    /// Batches in each partition.
    batches: Vec<usize>,
    version: TableVersion,
}

impl Staged {
    /// Rows the write will insert, as it read them (0 for DDL).
    pub(crate) fn rows(&self) -> usize {
        match &self.inner {
            Inner::Serial(_) => 0,
            Inner::Insert(insert) => insert.row_count,
        }
    }
}

impl Engine {
    /// The read phase of a write: the rows an INSERT (or MERGE) would insert, and the version
    /// of its target it read. Other statements are kept to run whole at commit.
    pub(crate) async fn stage(&self, prepared: Prepared) -> Result<Staged, SqlError> {
        let Prepared { kind, state } = prepared;
        let Kind::Sql {
            statement,
            effect: Effect::Table(table),
            counts,
            reads_target,
            range,
        } = kind
        else {
            return Ok(Staged {
                inner: Inner::Serial(Box::new(Prepared { kind, state })),
            });
        };
        let Statement::Insert(insert) = statement.as_ref() else {
            let kind = Kind::Sql {
                statement,
                effect: Effect::Table(table),
                counts,
                reads_target,
                range,
            };
            return Ok(Staged {
                inner: Inner::Serial(Box::new(Prepared { kind, state })),
            });
        };
        let insert_columns: Vec<String> = insert.columns.iter().map(super::column_name).collect();
        let effect = Effect::Table(table);
        let read = match reads_target {
            true => Some(TargetRead {
                snapshot: self.snapshot(effect_table(&effect)).await,
                range: range.map_or(ReadRange::Whole, |range| *range),
            }),
            false => None,
        };
        let not_null = |err| name_not_null_column(err, &effect, &insert_columns, &state);
        let (dml, schema, rows) = read_rows(&state, &statement).await.map_err(not_null)?;
        let Effect::Table(table) = effect else {
            unreachable!("matched above");
        };
        Ok(Staged {
            inner: Inner::Insert(Box::new(StagedInsert {
                row_count: rows.iter().map(RecordBatch::num_rows).sum(),
                state,
                statement: *statement,
                dml,
                schema,
                rows,
                table,
                counts,
                insert_columns,
                read,
            })),
        })
    }

    /// The validate-and-commit phase: one write at a time, failing with
    /// `DELTA_CONCURRENT_APPEND` when `conflicts` says what was committed since it read
    /// conflicts with what it read.
    pub(crate) async fn commit(
        &self,
        staged: Staged,
        conflicts: WriteConflicts,
    ) -> Result<Output, SqlError> {
        let insert = match staged.inner {
            Inner::Serial(prepared) => return self.run_serial(*prepared).await,
            Inner::Insert(insert) => insert,
        };
        let _write = self.writes.lock().await;
        let effect = Effect::Table(TableName {
            catalog: insert.table.catalog.clone(),
            schema: insert.table.schema.clone(),
            table: insert.table.table.clone(),
        });
        let output = self
            .validate_and_insert(&insert, conflicts)
            .await
            .map_err(|err| {
                name_not_null_column(err, &effect, &insert.insert_columns, &insert.state)
            })?;
        let operation = match insert.counts {
            Some(Counts::Merge) => "MERGE",
            _ => "WRITE",
        };
        self.versions.bump(&insert.table, operation);
        self.persist(&effect).await?;
        Ok(match insert.counts {
            Some(counts) => counts.output(&output),
            None => output,
        })
    }

    async fn validate_and_insert(
        &self,
        insert: &StagedInsert,
        conflicts: WriteConflicts,
    ) -> Result<Output, SqlError> {
        let staged = || {
            append(
                &insert.state,
                &insert.dml,
                &insert.schema,
                insert.rows.clone(),
            )
        };
        let Some(read) = &insert.read else {
            // A blind append conflicts with nothing.
            return staged().await;
        };
        let now = self.versions.get(&insert.table);
        let current = table(&self.ctx, &insert.table).await;
        let replaced = !same_table(&read.snapshot.provider, &current);
        if now.version == read.snapshot.version.version && !replaced {
            return staged().await;
        }
        let conflict = |class, hint| conflict(class, &insert.table, now, hint);
        match conflicts {
            // Read again, under the lock: the old, serialized behaviour.
            WriteConflicts::Off => execute(&insert.state, insert.statement.clone()).await,
            WriteConflicts::FileLevel if now.rewritten > read.snapshot.version.version => {
                Err(conflict(
                    "DELTA_CONCURRENT_DELETE_READ",
                    "This transaction attempted to read one or more files that were deleted \
                     by a concurrent update. Please try the operation again.",
                ))
            }
            _ if replaced => Err(conflict(
                "DELTA_CONCURRENT_APPEND.WHOLE_TABLE_REPLACE",
                "The concurrent operation replaced all data in the table. Please retry the \
                 operation.",
            )),
            WriteConflicts::RowLevel => {
                // Insert-only writes: rows committed since can only take rows away from what
                // this write inserts, and do so exactly when its read matches them.
                let (dml, schema, rows) = read_rows(&insert.state, &insert.statement).await?;
                let row_count: usize = rows.iter().map(RecordBatch::num_rows).sum();
                if row_count != insert.row_count {
                    return Err(conflict(
                        "DELTA_CONCURRENT_APPEND.ROW_LEVEL_CHANGES",
                        "The concurrent operation modified the same rows that this \
                         transaction attempted to modify. Please retry the operation.",
                    ));
                }
                append(&insert.state, &dml, &schema, rows).await
            }
            WriteConflicts::FileLevel => {
                let added = added_since(current.as_ref(), &read.snapshot).await;
                if added.iter().all(|batch| batch.num_rows() == 0) {
                    return staged().await;
                }
                match &read.range {
                    ReadRange::Whole => Err(conflict(
                        "DELTA_CONCURRENT_APPEND.WHOLE_TABLE_READ",
                        "This transaction attempted to read the entire table and conflicted \
                         with concurrent changes. Consider adding filters to the query to \
                         narrow the data scope, or retry the operation.",
                    )),
                    ReadRange::Rows {
                        qualifier,
                        predicate,
                    } => {
                        let schema = current.as_ref().map(|t| t.schema());
                        let read_added = match schema {
                            Some(schema) => {
                                any_row_matches(&insert.state, schema, added, qualifier, predicate)
                                    .await
                            }
                            None => true,
                        };
                        if read_added {
                            Err(conflict(
                                "DELTA_CONCURRENT_APPEND.NO_HINT",
                                "Files were added to the range this transaction read. Please \
                                 retry the operation.",
                            ))
                        } else {
                            // Rows outside the read range cannot match its condition.
                            staged().await
                        }
                    }
                }
            }
        }
    }

    /// A MERGE that deletes, on the table `name` (see [`rewrite_table`]); under the write
    /// lock. Returns the rows deleted and inserted.
    pub(super) async fn rewrite(
        &self,
        state: &SessionState,
        rewrite: super::merge::Rewrite,
        name: &TableName,
    ) -> Result<(i64, i64), SqlError> {
        let counts = rewrite_table(state, rewrite, name).await?;
        self.versions.rewritten(name);
        if let Some(store) = &self.store {
            store.rewritten(name);
        }
        Ok(counts)
    }

    async fn snapshot(&self, name: &TableName) -> Snapshot {
        // Under the lock, so that the version and the batches are of one commit.
        let _write = self.writes.lock().await;
        let provider = table(&self.ctx, name).await;
        let mut batches = Vec::new();
        if let Some(table) = provider.as_ref().and_then(|p| p.downcast_ref::<MemTable>()) {
            for partition in &table.batches {
                batches.push(partition.read().await.len());
            }
        }
        Snapshot {
            provider,
            batches,
            version: self.versions.get(name),
        }
    }
}

fn effect_table(effect: &Effect) -> &TableName {
    match effect {
        Effect::Table(table) => table,
        _ => unreachable!("a staged insert writes a table"),
    }
}

fn same_table(
    before: &Option<Arc<dyn TableProvider>>,
    now: &Option<Arc<dyn TableProvider>>,
) -> bool {
    match (before, now) {
        (Some(before), Some(now)) => Arc::ptr_eq(before, now),
        (None, None) => true,
        _ => false,
    }
}

fn conflict(class: &'static str, table: &TableName, version: TableVersion, hint: &str) -> SqlError {
    let operation = if version.operation.is_empty() {
        "WRITE"
    } else {
        version.operation
    };
    SqlError::new(
        class,
        CONFLICT_SQL_STATE,
        format!(
            "Transaction conflict detected. A concurrent {operation} added data to table \
             {table} committed at version {}. {hint} Refer to {CONFLICT_DOCS} for more \
             information.",
            version.version
        ),
    )
}

/// Plans the INSERT and runs its query: the rows it would insert now.
async fn read_rows(
    state: &SessionState,
    statement: &Statement,
) -> Result<(DmlStatement, SchemaRef, Vec<RecordBatch>), SqlError> {
    let plan = state
        .statement_to_plan(EngineStatement::Statement(Box::new(statement.clone())))
        .await?;
    let LogicalPlan::Dml(dml) = plan else {
        return Err(SqlError::unsupported("this INSERT is not supported"));
    };
    let frame = SessionContext::new_with_state(state.clone())
        .execute_logical_plan(dml.input.as_ref().clone())
        .await?;
    let task = Arc::new(frame.task_ctx());
    let physical = frame.create_physical_plan().await?;
    let schema = physical.schema();
    let rows = datafusion::physical_plan::collect(physical, task).await?;
    Ok((dml, schema, rows))
}

/// Appends rows read earlier through the INSERT's own plan, which enforces NOT NULL.
async fn append(
    state: &SessionState,
    dml: &DmlStatement,
    schema: &SchemaRef,
    rows: Vec<RecordBatch>,
) -> Result<Output, SqlError> {
    let source = MemTable::try_new(Arc::clone(schema), vec![rows])?;
    let scan =
        LogicalPlanBuilder::scan("staged", provider_as_source(Arc::new(source)), None)?.build()?;
    let mut dml = dml.clone();
    dml.input = Arc::new(scan);
    let frame = SessionContext::new_with_state(state.clone())
        .execute_logical_plan(LogicalPlan::Dml(dml))
        .await?;
    let task = Arc::new(frame.task_ctx());
    let physical = frame.create_physical_plan().await?;
    let schema = physical.schema();
    let batches = datafusion::physical_plan::collect(physical, task).await?;
    Ok(Output { schema, batches })
}

/// Runs a MERGE that deletes on the table `name` as it is: the rows it inserts and the rows
/// it keeps are both read first, then the kept rows replace the table's in place (the
/// table object stays, so views over it see the change) and the inserted ones are appended.
/// Returns the rows deleted and inserted. Called under the write lock.
async fn rewrite_table(
    state: &SessionState,
    rewrite: super::merge::Rewrite,
    name: &TableName,
) -> Result<(i64, i64), SqlError> {
    let provider = super::table_now(state, name)
        .ok_or_else(|| SqlError::table_not_found(&name.to_string()))?;
    let Some(table) = provider.downcast_ref::<MemTable>() else {
        return Err(SqlError::unsupported("MERGE ... DELETE into a view"));
    };
    let inserted = match &rewrite.insert {
        Some(insert) => Some(read_rows(state, insert).await?),
        None => None,
    };
    let kept = execute(state, Statement::Query(rewrite.kept)).await?;
    let schema = table.schema();
    let mut kept = kept
        .batches
        .into_iter()
        .map(|batch| RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(datafusion::error::DataFusionError::from)?;
    let rows = |batches: &[RecordBatch]| batches.iter().map(RecordBatch::num_rows).sum::<usize>();
    let kept_rows = rows(&kept);
    let mut partitions = Vec::with_capacity(table.batches.len());
    for partition in &table.batches {
        partitions.push(partition.write().await);
    }
    let mut before = 0;
    for (index, partition) in partitions.iter_mut().enumerate() {
        before += rows(partition);
        **partition = match index {
            0 => std::mem::take(&mut kept),
            _ => Vec::new(),
        };
    }
    drop(partitions);
    let inserted = match inserted {
        Some((dml, schema, rows_in)) => {
            let count = rows(&rows_in);
            append(state, &dml, &schema, rows_in).await?;
            count
        }
        None => 0,
    };
    Ok(((before - kept_rows) as i64, inserted as i64))
}

/// The batches appended to `table` since `snapshot`.
async fn added_since(
    table: Option<&Arc<dyn TableProvider>>,
    snapshot: &Snapshot,
) -> Vec<RecordBatch> {
    let Some(table) = table.and_then(|t| t.downcast_ref::<MemTable>()) else {
        return Vec::new();
    };
    let mut added = Vec::new();
    for (index, partition) in table.batches.iter().enumerate() {
        let seen = snapshot.batches.get(index).copied().unwrap_or(0);
        added.extend(partition.read().await.iter().skip(seen).cloned());
    }
    added
}

/// Whether any of `rows` (of a table with `schema`) satisfies `predicate`, its columns named
/// `qualifier.column`. A predicate the engine cannot evaluate counts as matching.
async fn any_row_matches(
    state: &SessionState,
    schema: SchemaRef,
    rows: Vec<RecordBatch>,
    qualifier: &Ident,
    predicate: &Expr,
) -> bool {
    match rows_matching(state, schema, rows, qualifier, predicate).await {
        Ok(matched) => matched,
        Err(err) => {
            tracing::warn!(error = %err, "cannot evaluate a write's read range; assuming a conflict");
            true
        }
    }
}

async fn rows_matching(
    state: &SessionState,
    schema: SchemaRef,
    rows: Vec<RecordBatch>,
    qualifier: &Ident,
    predicate: &Expr,
) -> Result<bool, SqlError> {
    // The added rows, alone in a catalog of their own, under the session's functions. Batches
    // keep the schema of the insert that wrote them, which may differ in nullability.
    let rows = rows
        .into_iter()
        .map(|batch| RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(datafusion::error::DataFusionError::from)?;
    let added = MemorySchemaProvider::new();
    added.register_table(
        "added".to_string(),
        Arc::new(MemTable::try_new(schema, vec![rows])?),
    )?;
    let catalog = MemoryCatalogProvider::new();
    catalog.register_schema("s", Arc::new(added))?;
    let catalogs = MemoryCatalogProviderList::new();
    catalogs.register_catalog("c".to_string(), Arc::new(catalog));
    let scratch = SessionStateBuilder::new_from_existing(state.clone())
        .with_catalog_list(Arc::new(catalogs))
        .build();
    let alias = normalize(qualifier).replace('`', "``");
    let mut statements = super::parse(&format!(
        "SELECT TRUE FROM c.s.added AS `{alias}` WHERE TRUE LIMIT 1"
    ))?;
    let Statement::Query(mut query) = statements.remove(0) else {
        unreachable!("the template is a query");
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        unreachable!("the template is a SELECT");
    };
    select.selection = Some(predicate.clone());
    let output = execute(&scratch, Statement::Query(query)).await?;
    Ok(output.batches.iter().any(|batch| batch.num_rows() > 0))
}
