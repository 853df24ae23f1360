//! The SQL engine: Databricks SQL on DataFusion.
//!
//! A statement is parsed with sqlparser's Databricks dialect plus `div` ([`dialect`], and [`ddl`]
//! for the Delta clauses sqlparser lacks), an insert-only MERGE becomes an INSERT ([`merge`]),
//! generators and table-valued functions become what DataFusion plans ([`generators`]),
//! un-aliased result columns get Databricks' names ([`naming`]), its parameters are bound in the
//! syntax tree ([`params`]), Databricks type spellings and function names are rewritten for
//! DataFusion ([`types`], [`functions`], which also adds Databricks-only functions), and the tree
//! goes to DataFusion's planner directly, never back through SQL text. Where a DataFusion
//! built-in means something else, a Databricks one replaces it: division ([`arithmetic`]) and
//! the functions that take Spark's datetime patterns ([`datetime`]). Tables are
//! in-memory Arrow tables that accept INSERT; NOT NULL columns are enforced by DataFusion's insert
//! path. Writes read concurrently and commit one at a time under one lock, where Delta's
//! optimistic concurrency is modelled ([`commit`]), and with a data directory are persisted by
//! [`store`].

mod arithmetic;
mod commit;
mod datetime;
mod ddl;
mod dialect;
mod error;
mod functions;
mod generators;
mod merge;
mod names;
mod naming;
mod output;
mod params;
mod store;
mod types;
mod versions;

use std::io;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, TableProvider,
};
use datafusion::datasource::MemTable;
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as EngineStatement;
use datafusion::sql::sqlparser::ast::{
    self, Expr, Ident, ObjectName, Statement, visit_expressions_mut, visit_relations,
};
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Tokenizer;

pub(crate) use error::SqlError;
pub(crate) use names::TableName;
use names::{INFORMATION_SCHEMA, column_name, normalize, table};
pub(crate) use output::Output;
pub(crate) use params::Parameter;
pub(crate) use types::column_type;

pub(crate) const DEFAULT_CATALOG: &str = "main";
pub(crate) const DEFAULT_SCHEMA: &str = "default";

/// A statement as the Statement Execution API receives it.
pub(crate) struct Request<'a> {
    pub statement: &'a str,
    pub parameters: &'a [Parameter],
    pub catalog: Option<&'a str>,
    pub schema: Option<&'a str>,
}

pub(crate) struct Engine {
    ctx: SessionContext,
    store: Option<store::Store>,
    writes: tokio::sync::Mutex<()>,
    versions: versions::Versions,
}

/// A parsed and bound statement, ready to run.
pub(crate) struct Prepared {
    kind: Kind,
    state: SessionState,
}

enum Kind {
    CreateTable(Box<ddl::CreateTable>),
    CreateCatalog {
        name: String,
        if_not_exists: bool,
    },
    /// A MERGE that deletes, run whole under the write lock.
    Rewrite(Box<merge::Rewrite>),
    Sql {
        statement: Box<Statement>,
        effect: Effect,
        counts: Option<Counts>,
        /// Whether an INSERT (or MERGE) reads the table it writes.
        reads_target: bool,
        /// What a MERGE reads of its target; see [`versions::ReadRange`].
        range: Option<Box<versions::ReadRange>>,
    },
}

/// The row counts Databricks answers a DML statement with.
#[derive(Clone, Copy)]
enum Counts {
    Insert,
    Merge,
}

/// What a successful statement changed, i.e. what to persist.
enum Effect {
    None,
    Table(TableName),
    Catalog,
}

impl Engine {
    /// An engine with the `main.default` schema, plus whatever `data_dir` holds.
    pub(crate) fn open(data_dir: Option<&Path>) -> io::Result<Self> {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA)
            .with_information_schema(true)
            .set_str("datafusion.execution.time_zone", types::UTC);
        let mut ctx = SessionContext::new_with_config(config);
        functions::register(&ctx);
        for function in arithmetic::functions()
            .into_iter()
            .chain(generators::functions())
            .chain(datetime::functions())
        {
            ctx.register_udf(function);
        }
        ctx.register_expr_planner(Arc::new(arithmetic::Operators::new()))
            .expect("registering a planner cannot fail");
        let store = data_dir.map(store::Store::new).transpose()?;
        if let Some(store) = &store {
            store.load(&ctx)?;
        }
        Ok(Self {
            ctx,
            store,
            writes: tokio::sync::Mutex::new(()),
            versions: versions::Versions::default(),
        })
    }

    /// Parses the statement and binds its parameters.
    pub(crate) fn prepare(&self, request: &Request<'_>) -> Result<Prepared, SqlError> {
        let mut state = self.ctx.state();
        let options = state.config_mut().options_mut();
        if let Some(catalog) = request.catalog.filter(|c| !c.is_empty()) {
            options.catalog.default_catalog = catalog.to_string();
        }
        if let Some(schema) = request.schema.filter(|s| !s.is_empty()) {
            options.catalog.default_schema = schema.to_string();
        }
        let kind = match ddl::parse(request.statement)? {
            Some(ddl::Ddl::CreateTable(mut create)) => {
                if let Some(query) = &mut create.query {
                    databricks_dialect(query.as_mut())?;
                    bind(query.as_mut(), request.parameters, &mut state)?;
                }
                Kind::CreateTable(Box::new(create))
            }
            Some(ddl::Ddl::CreateCatalog {
                name,
                if_not_exists,
            }) => Kind::CreateCatalog {
                name: normalize(last_part(&name)?),
                if_not_exists,
            },
            None => {
                let mut statements = parse(request.statement)?;
                if statements.len() != 1 {
                    return Err(SqlError::syntax("exactly one statement is expected"));
                }
                let (mut statement, counts, mut range) = match statements.remove(0) {
                    Statement::Merge(merge) if merge::deletes(&merge) => {
                        let mut rewrite =
                            merge::to_rewrite(merge, |name| table_columns(name, &state))?;
                        databricks_dialect(rewrite.kept.as_mut())?;
                        bind(rewrite.kept.as_mut(), request.parameters, &mut state)?;
                        if let Some(insert) = &mut rewrite.insert {
                            databricks_dialect(insert)?;
                            bind(insert, request.parameters, &mut state)?;
                        }
                        let kind = Kind::Rewrite(Box::new(rewrite));
                        return Ok(Prepared { kind, state });
                    }
                    Statement::Merge(merge) => {
                        let range = merge::read_range(&merge);
                        (
                            merge::to_insert(merge, |name| table_columns(name, &state))?,
                            Some(Counts::Merge),
                            range,
                        )
                    }
                    insert @ Statement::Insert(_) => (insert, Some(Counts::Insert), None),
                    statement => (statement, None, None),
                };
                databricks_dialect(&mut statement)?;
                bind(&mut statement, request.parameters, &mut state)?;
                if let Some((_, predicate)) = &mut range {
                    bind(predicate, request.parameters, &mut state)?;
                }
                let effect = effect(&statement, &state)?;
                let reads_target = reads_target(&statement, &effect, &state);
                Kind::Sql {
                    statement: Box::new(statement),
                    effect,
                    counts,
                    reads_target,
                    range: range.map(|(qualifier, predicate)| {
                        Box::new(versions::ReadRange::Rows {
                            qualifier,
                            predicate: Box::new(predicate),
                        })
                    }),
                }
            }
        };
        Ok(Prepared { kind, state })
    }

    /// Runs a prepared statement, a write without conflicts. Dropping the future cancels a
    /// read; a write is short and callers let it finish (see [`Prepared::is_read_only`]).
    /// The statement runner calls [`Engine::stage`] and [`Engine::commit`] for writes instead.
    pub(crate) async fn run(&self, prepared: Prepared) -> Result<Output, SqlError> {
        if prepared.is_read_only() {
            let Prepared {
                kind: Kind::Sql { statement, .. },
                state,
            } = prepared
            else {
                unreachable!("read-only statements are SQL");
            };
            return execute(&state, *statement).await;
        }
        let staged = self.stage(prepared).await?;
        self.commit(staged, crate::config::WriteConflicts::Off)
            .await
    }

    /// Runs a statement whole under the write lock (DDL).
    async fn run_serial(&self, prepared: Prepared) -> Result<Output, SqlError> {
        let Prepared { kind, state } = prepared;
        let _write = self.writes.lock().await;
        let (output, effect) = match kind {
            Kind::CreateTable(create) => {
                let name = resolve(&create.name, &state)?;
                create_table(&state, *create, &name).await?;
                (Output::empty(), Effect::Table(name))
            }
            Kind::CreateCatalog {
                name,
                if_not_exists,
            } => {
                create_catalog(&self.ctx, &name, if_not_exists)?;
                (Output::empty(), Effect::Catalog)
            }
            Kind::Rewrite(rewrite) => {
                let name = resolve(&rewrite.target, &state)?;
                let (deleted, inserted) = self.rewrite(&state, *rewrite, &name).await?;
                let output = count_output(&[
                    ("num_affected_rows", deleted + inserted),
                    ("num_updated_rows", 0),
                    ("num_deleted_rows", deleted),
                    ("num_inserted_rows", inserted),
                ]);
                (output, Effect::Table(name))
            }
            Kind::Sql {
                statement,
                effect,
                counts,
                ..
            } => {
                // Checked under the write lock, so two `IF NOT EXISTS` at once create one view.
                let Some(statement) = view_to_create(*statement, &state)? else {
                    return Ok(Output::empty());
                };
                let insert_columns = match &statement {
                    Statement::Insert(insert) => insert.columns.iter().map(column_name).collect(),
                    _ => Vec::new(),
                };
                let output = execute(&state, statement)
                    .await
                    .map_err(|err| name_not_null_column(err, &effect, &insert_columns, &state))?;
                match counts {
                    Some(counts) => (counts.output(&output), effect),
                    None => (output, effect),
                }
            }
        };
        if let Effect::Table(table) = &effect {
            self.versions.bump(table, "WRITE");
        }
        self.persist(&effect).await?;
        Ok(output)
    }

    /// The columns of the table `catalog.schema.table` (unquoted, so any case) with their
    /// Databricks type text; `None` if there is no such table.
    pub(crate) async fn columns(&self, name: &str) -> Option<Vec<(String, String)>> {
        let mut parts = name.split('.').map(str::to_lowercase);
        let (catalog, schema, table_part) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let name = TableName {
            catalog,
            schema,
            table: table_part,
        };
        let provider = table(&self.ctx, &name).await?;
        Some(
            provider
                .schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), column_type(f.data_type()).text))
                .collect(),
        )
    }

    async fn persist(&self, effect: &Effect) -> Result<(), SqlError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let result = match effect {
            Effect::None => Ok(()),
            Effect::Table(name) => store.save_table(&self.ctx, name).await,
            Effect::Catalog => store.sync(&self.ctx).await,
        };
        result.map_err(|err| SqlError {
            class: None,
            sql_state: None,
            detail: format!("persisting failed: {err}"),
        })
    }
}

impl Prepared {
    /// The table an INSERT (or MERGE) writes, as `catalog.schema.table`.
    pub(crate) fn written_table(&self) -> Option<String> {
        match &self.kind {
            Kind::Sql {
                statement,
                effect: Effect::Table(name),
                ..
            } if matches!(statement.as_ref(), Statement::Insert(_)) => Some(name.to_string()),
            _ => None,
        }
    }

    /// Whether the statement only reads, so cancelling it midway leaves nothing half done.
    pub(crate) fn is_read_only(&self) -> bool {
        matches!(
            self.kind,
            Kind::Sql {
                effect: Effect::None,
                ..
            }
        )
    }
}

/// Parses statements, first spelling out the MERGE forms sqlparser lacks.
fn parse(sql: &str) -> Result<Vec<Statement>, SqlError> {
    let dialect = dialect::Databricks;
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(ParserError::from)?;
    Ok(Parser::new(&dialect)
        .with_tokens_with_locations(merge::spell_out_stars(tokens))
        .parse_statements()?)
}

/// Rewrites what Databricks SQL means differently from DataFusion: generators and table-valued
/// functions, and the names of un-aliased result columns.
fn databricks_dialect<N: ast::VisitMut>(node: &mut N) -> Result<(), SqlError> {
    generators::rewrite(node)?;
    naming::name_columns(node);
    Ok(())
}

/// Binds the parameters and rewrites Databricks spellings of types and functions.
fn bind<N: ast::VisitMut>(
    node: &mut N,
    parameters: &[Parameter],
    state: &mut SessionState,
) -> Result<(), SqlError> {
    params::bind(node, parameters, state)?;
    let _ = visit_expressions_mut(node, |expr| {
        let data_type = match expr {
            Expr::Cast { data_type, .. } => data_type,
            Expr::TypedString(typed) => &mut typed.data_type,
            Expr::Function(function) => {
                functions::rename(function);
                return ControlFlow::<()>::Continue(());
            }
            _ => return ControlFlow::<()>::Continue(()),
        };
        if let Some(engine_type) = types::engine_type(data_type) {
            *data_type = engine_type;
        }
        ControlFlow::Continue(())
    });
    Ok(())
}

async fn execute(state: &SessionState, statement: Statement) -> Result<Output, SqlError> {
    let plan = state
        .statement_to_plan(EngineStatement::Statement(Box::new(statement)))
        .await?;
    let frame = SessionContext::new_with_state(state.clone())
        .execute_logical_plan(plan)
        .await?;
    // The schema of the physical plan, which (unlike the unanalyzed logical plan's) has the
    // types coercion settled on, e.g. DOUBLE for a UNION of BIGINT and DOUBLE.
    let task = Arc::new(frame.task_ctx());
    let physical = frame.create_physical_plan().await?;
    let schema = physical.schema();
    let batches = datafusion::physical_plan::collect(physical, task).await?;
    naming::unmark(Output { schema, batches })
        .map_err(|err| SqlError::from(datafusion::error::DataFusionError::from(err)))
}

/// Whether an INSERT's query reads the table it inserts into.
fn reads_target(statement: &Statement, effect: &Effect, state: &SessionState) -> bool {
    let (Statement::Insert(insert), Effect::Table(target)) = (statement, effect) else {
        return false;
    };
    let Some(source) = &insert.source else {
        return false;
    };
    let target = target.to_string();
    visit_relations(source.as_ref(), |name| {
        match resolve(name, state).is_ok_and(|name| name.to_string() == target) {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    })
    .is_break()
}

fn effect(statement: &Statement, state: &SessionState) -> Result<Effect, SqlError> {
    Ok(match statement {
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowFunctions { .. } => Effect::None,
        Statement::Insert(insert) => match &insert.table {
            ast::TableObject::TableName(name) => Effect::Table(resolve(name, state)?),
            _ => Effect::Catalog,
        },
        _ => Effect::Catalog,
    })
}

impl Counts {
    /// Turns DataFusion's inserted-row count into Databricks' result row; the emulator's DML
    /// only inserts, so nothing is updated or deleted.
    fn output(self, insert: &Output) -> Output {
        let inserted = insert
            .batches
            .iter()
            .filter_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .map(|a| a.values().iter().sum::<u64>())
            })
            .sum::<u64>() as i64;
        match self {
            Counts::Insert => count_output(&[
                ("num_affected_rows", inserted),
                ("num_inserted_rows", inserted),
            ]),
            Counts::Merge => count_output(&[
                ("num_affected_rows", inserted),
                ("num_updated_rows", 0),
                ("num_deleted_rows", 0),
                ("num_inserted_rows", inserted),
            ]),
        }
    }
}

/// The one row of counts Databricks answers a DML statement with.
fn count_output(counts: &[(&str, i64)]) -> Output {
    let schema = Arc::new(Schema::new(
        counts
            .iter()
            .map(|(name, _)| Field::new(*name, DataType::Int64, false))
            .collect::<Vec<_>>(),
    ));
    let columns = counts
        .iter()
        .map(|(_, count)| Arc::new(Int64Array::from(vec![*count])) as Arc<dyn Array>)
        .collect();
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).expect("one Int64 per field");
    Output {
        schema,
        batches: vec![batch],
    }
}

/// DataFusion reports a NULL in a NOT NULL column by position (`Invalid batch column at '1'`)
/// or by the name of the VALUES column (`Column 'column2' is declared as non-nullable`).
fn name_not_null_column(
    err: SqlError,
    effect: &Effect,
    insert_columns: &[String],
    state: &SessionState,
) -> SqlError {
    let between_quotes = |prefix: &str| {
        err.detail
            .find(prefix)
            .and_then(|at| err.detail[at + prefix.len()..].split('\'').next())
    };
    let position = if let Some(index) = between_quotes("Invalid batch column at '") {
        index.parse::<usize>().ok()
    } else if let Some(name) =
        between_quotes("Column '").filter(|_| err.detail.contains("declared as non-nullable"))
    {
        name.strip_prefix("column")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
    } else {
        return err;
    };
    let Effect::Table(table) = effect else {
        return err;
    };
    let column = position.and_then(|i| match insert_columns.get(i) {
        Some(name) => Some(name.clone()),
        None if insert_columns.is_empty() => {
            table_now(state, table).map(|t| t.schema().field(i).name().clone())
        }
        None => None,
    });
    SqlError::new(
        "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",
        "23502",
        format!(
            "NOT NULL constraint violated for column: {}.",
            column.as_deref().unwrap_or("?")
        ),
    )
}

/// A `CREATE VIEW` as Databricks runs it, which DataFusion plans only in part: `IF NOT
/// EXISTS` is a no-op (`None`) when the name is taken, a taken name is refused without it,
/// and `OR REPLACE` replaces views only, never a table. Other statements pass unchanged.
/// Views are not persisted with the data directory; lakegate recreates its view at start.
fn view_to_create(
    statement: Statement,
    state: &SessionState,
) -> Result<Option<Statement>, SqlError> {
    let Statement::CreateView(mut view) = statement else {
        return Ok(Some(statement));
    };
    if view.or_replace && view.if_not_exists {
        return Err(SqlError::syntax(
            "CREATE OR REPLACE VIEW cannot be combined with IF NOT EXISTS",
        ));
    }
    let name = resolve(&view.name, state)?;
    let quoted = name.to_string().replace('.', "`.`");
    if let Some(existing) = table_now(state, &name) {
        if view.if_not_exists {
            return Ok(None);
        }
        if !view.or_replace {
            return Err(SqlError::new(
                "TABLE_OR_VIEW_ALREADY_EXISTS",
                "42P07",
                format!("Cannot create table or view `{quoted}` because it already exists."),
            ));
        }
        if existing.table_type() != datafusion::datasource::TableType::View {
            return Err(SqlError::new(
                "EXPECT_VIEW_NOT_TABLE.NO_ALTERNATIVE",
                "42809",
                format!(
                    "The command CREATE OR REPLACE VIEW expects a view but `{quoted}` is a table."
                ),
            ));
        }
    }
    view.if_not_exists = false;
    Ok(Some(Statement::CreateView(view)))
}

async fn create_table(
    state: &SessionState,
    create: ddl::CreateTable,
    name: &TableName,
) -> Result<(), SqlError> {
    let catalog = state.catalog_list().catalog(&name.catalog).ok_or_else(|| {
        SqlError::new(
            "NO_SUCH_CATALOG_EXCEPTION",
            "42704",
            format!("Catalog '{}' was not found.", name.catalog),
        )
    })?;
    let schema = catalog.schema(&name.schema).ok_or_else(|| {
        SqlError::new(
            "SCHEMA_NOT_FOUND",
            "42704",
            format!(
                "The schema `{}`.`{}` cannot be found.",
                name.catalog, name.schema
            ),
        )
    })?;
    if schema.table_exist(&name.table) {
        if create.if_not_exists {
            return Ok(());
        }
        if !create.or_replace {
            return Err(SqlError::new(
                "TABLE_OR_VIEW_ALREADY_EXISTS",
                "42P07",
                format!(
                    "Cannot create table or view `{}` because it already exists.",
                    name.to_string().replace('.', "`.`")
                ),
            ));
        }
    }
    let (table_schema, batches) = match create.query {
        Some(query) => {
            let output = execute(state, Statement::Query(query)).await?;
            (output.schema, output.batches)
        }
        None => (Arc::new(Schema::new(columns(&create.columns)?)), Vec::new()),
    };
    let table = MemTable::try_new(table_schema, vec![batches])?;
    schema.register_table(name.table.clone(), Arc::new(table))?;
    Ok(())
}

fn columns(definitions: &[ast::ColumnDef]) -> Result<Vec<Field>, SqlError> {
    definitions
        .iter()
        .map(|column| {
            let not_null = column
                .options
                .iter()
                .any(|o| matches!(o.option, ast::ColumnOption::NotNull));
            Ok(Field::new(
                normalize(&column.name),
                types::arrow_type(&column.data_type)?,
                !not_null,
            ))
        })
        .collect()
}

fn create_catalog(ctx: &SessionContext, name: &str, if_not_exists: bool) -> Result<(), SqlError> {
    if ctx.catalog(name).is_some() {
        return if if_not_exists {
            Ok(())
        } else {
            Err(SqlError::new(
                "CATALOG_ALREADY_EXISTS",
                "42P04",
                format!("Cannot create catalog `{name}` because it already exists."),
            ))
        };
    }
    // Databricks creates every catalog with a `default` schema.
    let catalog = MemoryCatalogProvider::new();
    catalog.register_schema(DEFAULT_SCHEMA, Arc::new(MemorySchemaProvider::new()))?;
    ctx.register_catalog(name, Arc::new(catalog));
    Ok(())
}

/// The column names of a table, for `INSERT *`.
fn table_columns(name: &ObjectName, state: &SessionState) -> Result<Vec<String>, SqlError> {
    let name = resolve(name, state)?;
    let table =
        table_now(state, &name).ok_or_else(|| SqlError::table_not_found(&name.to_string()))?;
    Ok(table
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect())
}

fn table_now(state: &SessionState, name: &TableName) -> Option<Arc<dyn TableProvider>> {
    let schema = state
        .catalog_list()
        .catalog(&name.catalog)?
        .schema(&name.schema)?;
    // Memory schemas answer without awaiting anything, so one poll suffices.
    futures_util::FutureExt::now_or_never(schema.table(&name.table))?
        .ok()
        .flatten()
}

/// Resolves a one-, two- or three-part name against the session's default catalog and schema.
fn resolve(name: &ObjectName, state: &SessionState) -> Result<TableName, SqlError> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| {
            part.as_ident()
                .map(normalize)
                .ok_or_else(|| SqlError::syntax(format!("invalid name {name}")))
        })
        .collect::<Result<_, _>>()?;
    let defaults = &state.config_options().catalog;
    let (catalog, schema, table) = match parts.as_slice() {
        [table] => (
            defaults.default_catalog.clone(),
            defaults.default_schema.clone(),
            table.clone(),
        ),
        [schema, table] => (
            defaults.default_catalog.clone(),
            schema.clone(),
            table.clone(),
        ),
        [catalog, schema, table] => (catalog.clone(), schema.clone(), table.clone()),
        _ => return Err(SqlError::syntax(format!("invalid table name {name}"))),
    };
    Ok(TableName {
        catalog,
        schema,
        table,
    })
}

fn last_part(name: &ObjectName) -> Result<&Ident, SqlError> {
    match name.0.as_slice() {
        [part] => part
            .as_ident()
            .ok_or_else(|| SqlError::syntax(format!("invalid name {name}"))),
        _ => Err(SqlError::syntax(format!("invalid catalog name {name}"))),
    }
}
