//! Persistence under `--data-dir`: one directory per catalog and schema, and per table an Arrow
//! IPC file of its rows (`<dir>/<catalog>/<schema>/<table>.arrow`, the base) followed by
//! segments (`<table>.arrow-<seq>`), each the rows one write appended. Tables only grow, so a
//! write adds a segment of its own rows instead of rewriting the table; every
//! [`MAX_SEGMENTS`] writes, or when a table is replaced, the base is rewritten whole and
//! records in its footer the last segment it holds (`upto`); older segments are then
//! deleted, and ignored if a crash left them. Every file is written to a temp file, synced
//! and renamed, so a crash leaves the old or the new version. DDL re-syncs the directory tree
//! with the catalog. Everything is loaded at start.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::{INFORMATION_SCHEMA, TableName};

const EXTENSION: &str = "arrow";
/// Segments a table may have before its base is rewritten.
const MAX_SEGMENTS: u64 = 64;
/// The base's footer entry naming the last segment it holds.
const UPTO: &str = "lakegate.upto";

pub(super) struct Store {
    root: PathBuf,
    /// What is on disk of each table, by `catalog.schema.table`.
    saved: Mutex<HashMap<String, Saved>>,
}

/// What is on disk of one table.
struct Saved {
    /// The table object it was saved from: another one (a replaced table) is saved whole.
    provider: Arc<dyn datafusion::catalog::TableProvider>,
    /// Batches saved, per partition.
    batches: Vec<usize>,
    /// Segments since the base was written.
    segments: u64,
    /// The last segment's number (or the base's `upto`).
    last: u64,
}

impl Store {
    pub(super) fn new(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_path_buf(),
            saved: Mutex::new(HashMap::new()),
        })
    }

    fn saved(&self) -> std::sync::MutexGuard<'_, HashMap<String, Saved>> {
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the tables whose `catalog.schema.table` starts with `prefix`.
    fn forget(&self, prefix: &str) {
        self.saved().retain(|key, _| !key.starts_with(prefix));
    }

    /// Registers every persisted catalog, schema and table in `ctx`.
    pub(super) fn load(&self, ctx: &SessionContext) -> io::Result<()> {
        for catalog_dir in subdirectories(&self.root)? {
            let catalog_name = file_name(&catalog_dir);
            let catalog = match ctx.catalog(&catalog_name) {
                Some(catalog) => catalog,
                None => {
                    let catalog: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
                    ctx.register_catalog(&catalog_name, Arc::clone(&catalog));
                    catalog
                }
            };
            for schema_dir in subdirectories(&catalog_dir)? {
                let schema: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                for entry in fs::read_dir(&schema_dir)? {
                    let path = entry?.path();
                    if path.extension().is_some_and(|e| e == EXTENSION) {
                        let saved = read_table(&path)?;
                        let name = path
                            .file_stem()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned();
                        let key = format!("{catalog_name}.{}.{name}", file_name(&schema_dir));
                        schema
                            .register_table(name, Arc::clone(&saved.provider))
                            .map_err(io::Error::other)?;
                        self.saved().insert(key, saved);
                    }
                }
                catalog
                    .register_schema(&file_name(&schema_dir), schema)
                    .map_err(io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Saves what was written to `table` since it was last saved: the new rows as a
    /// segment, or the whole table when it is new, was replaced, or has
    /// [`MAX_SEGMENTS`] segments.
    pub(super) async fn save_table(
        &self,
        ctx: &SessionContext,
        name: &TableName,
    ) -> io::Result<()> {
        let Some(provider) = super::table(ctx, name).await else {
            return Ok(());
        };
        let Some(table) = provider.downcast_ref::<MemTable>() else {
            return Ok(());
        };
        let mut partitions = Vec::with_capacity(table.batches.len());
        for partition in &table.batches {
            partitions.push(partition.read().await.clone());
        }
        let counts: Vec<usize> = partitions.iter().map(Vec::len).collect();
        let dir = self
            .root
            .join(safe(&name.catalog)?)
            .join(safe(&name.schema)?);
        fs::create_dir_all(&dir)?;
        let base = dir.join(format!("{}.{EXTENSION}", safe(&name.table)?));
        let key = name.to_string();
        let mut saved = self.saved();
        let appended = saved.get(&key).filter(|saved| {
            Arc::ptr_eq(&saved.provider, &provider)
                && saved.segments < MAX_SEGMENTS
                && saved.batches.len() == counts.len()
                && saved
                    .batches
                    .iter()
                    .zip(&counts)
                    .all(|(was, now)| was <= now)
        });
        let schema = provider.schema();
        match appended {
            Some(known) => {
                let rows: Vec<RecordBatch> = partitions
                    .iter()
                    .zip(&known.batches)
                    .flat_map(|(batches, was)| batches[*was..].iter().cloned())
                    .collect();
                // A write that added no rows (a MERGE of rows all there) adds no segment.
                let (segments, last) = match rows.iter().all(|batch| batch.num_rows() == 0) {
                    true => (known.segments, known.last),
                    false => (known.segments + 1, known.last + 1),
                };
                if last != known.last {
                    write_file(&segment_path(&base, last), &schema, &rows, &[])?;
                }
                saved.insert(
                    key,
                    Saved {
                        provider: Arc::clone(&provider),
                        batches: counts,
                        segments,
                        last,
                    },
                );
            }
            None => {
                let upto = saved.get(&key).map_or(0, |known| known.last);
                let rows: Vec<RecordBatch> = partitions.into_iter().flatten().collect();
                write_file(&base, &schema, &rows, &[(UPTO, upto.to_string())])?;
                remove_segments(&base, upto)?;
                saved.insert(
                    key,
                    Saved {
                        provider: Arc::clone(&provider),
                        batches: counts,
                        segments: 0,
                        last: upto,
                    },
                );
            }
        }
        Ok(())
    }

    /// Marks a table whose rows were rewritten (not only appended) for its next save to write
    /// its base whole, taking in (and deleting) the segments saved so far.
    pub(super) fn rewritten(&self, name: &TableName) {
        if let Some(saved) = self.saved().get_mut(&name.to_string()) {
            saved.segments = MAX_SEGMENTS;
        }
    }

    /// Makes the directory tree match the catalog: creates what exists, removes what was dropped.
    pub(super) async fn sync(&self, ctx: &SessionContext) -> io::Result<()> {
        for catalog_dir in subdirectories(&self.root)? {
            let catalog_name = file_name(&catalog_dir);
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                fs::remove_dir_all(&catalog_dir)?;
                self.forget(&format!("{catalog_name}."));
                continue;
            };
            for schema_dir in subdirectories(&catalog_dir)? {
                let schema_name = file_name(&schema_dir);
                let Some(schema) = catalog.schema(&schema_name) else {
                    fs::remove_dir_all(&schema_dir)?;
                    self.forget(&format!("{catalog_name}.{schema_name}."));
                    continue;
                };
                for entry in fs::read_dir(&schema_dir)? {
                    let path = entry?.path();
                    // A base's and its segments' stem is the table's name.
                    let stem = path
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    if !schema.table_exist(&stem) {
                        fs::remove_file(&path)?;
                        self.saved()
                            .remove(&format!("{catalog_name}.{schema_name}.{stem}"));
                    }
                }
            }
        }
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                if schema_name != INFORMATION_SCHEMA {
                    fs::create_dir_all(
                        self.root
                            .join(safe(&catalog_name)?)
                            .join(safe(&schema_name)?),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A table read from its base and the segments written after it, as saved.
fn read_table(base: &Path) -> io::Result<Saved> {
    let reader = FileReader::try_new(File::open(base)?, None).map_err(io::Error::other)?;
    let schema = reader.schema();
    let upto: u64 = reader
        .custom_metadata()
        .get(UPTO)
        .and_then(|upto| upto.parse().ok())
        .unwrap_or(0);
    let mut batches = reader
        .collect::<Result<Vec<RecordBatch>, _>>()
        .map_err(io::Error::other)?;
    let mut last = upto;
    let mut segments = 0;
    for (seq, path) in segments_of(base)? {
        if seq <= upto {
            continue;
        }
        let reader = FileReader::try_new(File::open(&path)?, None).map_err(io::Error::other)?;
        for batch in reader {
            let batch = batch.map_err(io::Error::other)?;
            // Segments keep the schema of the write that made them (nullability may differ).
            batches.push(
                RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec())
                    .map_err(io::Error::other)?,
            );
        }
        last = seq;
        segments += 1;
    }
    let count = batches.len();
    let table = MemTable::try_new(schema, vec![batches]).map_err(io::Error::other)?;
    Ok(Saved {
        provider: Arc::new(table),
        batches: vec![count],
        segments,
        last,
    })
}

/// `<table>.arrow-<seq>`, the segment after the base at `base`.
fn segment_path(base: &Path, seq: u64) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!("-{seq:010}"));
    PathBuf::from(name)
}

/// The segments of the table whose base is at `base`, by number.
fn segments_of(base: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let Some(dir) = base.parent() else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}-", file_name(base));
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = file_name(&path)
            .strip_prefix(&prefix)
            .and_then(|seq| seq.parse::<u64>().ok());
        if let Some(seq) = seq {
            segments.push((seq, path));
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Deletes the segments the base holds (numbered up to `upto`).
fn remove_segments(base: &Path, upto: u64) -> io::Result<()> {
    for (seq, path) in segments_of(base)? {
        if seq <= upto {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn write_file(
    path: &Path,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    metadata: &[(&str, String)],
) -> io::Result<()> {
    let temp = path.with_extension("tmp");
    let mut writer = FileWriter::try_new(File::create(&temp)?, schema).map_err(io::Error::other)?;
    for (key, value) in metadata {
        writer.write_metadata(*key, value.clone());
    }
    for batch in batches {
        writer.write(batch).map_err(io::Error::other)?;
    }
    writer.into_inner().map_err(io::Error::other)?.sync_all()?;
    fs::rename(temp, path)
}

fn subdirectories(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Refuses names that are not a plain file name (quoted identifiers may contain anything).
fn safe(name: &str) -> io::Result<&str> {
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if plain {
        Ok(name)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the name `{name}` cannot be persisted"),
        ))
    }
}
