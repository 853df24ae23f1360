//! Persistence under `--data-dir`: one directory per catalog and schema, one Arrow IPC file per
//! table (`<dir>/<catalog>/<schema>/<table>.arrow`). A table's file is rewritten after each
//! successful write to it (temp file + rename, so a crash leaves the old or the new version);
//! DDL re-syncs the directory tree with the catalog. Everything is loaded at start.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Registers every persisted catalog, schema and table in `ctx`.
    pub fn load(&self, ctx: &SessionContext) -> io::Result<()> {
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
                        let table = read_table(&path)?;
                        let name = path
                            .file_stem()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned();
                        schema
                            .register_table(name, Arc::new(table))
                            .map_err(io::Error::other)?;
                    }
                }
                catalog
                    .register_schema(&file_name(&schema_dir), schema)
                    .map_err(io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Writes the current contents of `table`.
    pub async fn save_table(&self, ctx: &SessionContext, name: &TableName) -> io::Result<()> {
        let Some(provider) = super::table(ctx, name).await else {
            return Ok(());
        };
        let Some(table) = provider.downcast_ref::<MemTable>() else {
            return Ok(());
        };
        let mut batches = Vec::new();
        for partition in &table.batches {
            batches.extend(partition.read().await.iter().cloned());
        }
        let dir = self
            .root
            .join(safe(&name.catalog)?)
            .join(safe(&name.schema)?);
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.{EXTENSION}", safe(&name.table)?));
        write_table(&path, &provider.schema(), &batches)
    }

    /// Makes the directory tree match the catalog: creates what exists, removes what was dropped.
    pub async fn sync(&self, ctx: &SessionContext) -> io::Result<()> {
        for catalog_dir in subdirectories(&self.root)? {
            let Some(catalog) = ctx.catalog(&file_name(&catalog_dir)) else {
                fs::remove_dir_all(&catalog_dir)?;
                continue;
            };
            for schema_dir in subdirectories(&catalog_dir)? {
                let Some(schema) = catalog.schema(&file_name(&schema_dir)) else {
                    fs::remove_dir_all(&schema_dir)?;
                    continue;
                };
                for entry in fs::read_dir(&schema_dir)? {
                    let path = entry?.path();
                    let stem = path
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    if !schema.table_exist(&stem) {
                        fs::remove_file(&path)?;
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

fn read_table(path: &Path) -> io::Result<MemTable> {
    let reader = FileReader::try_new(File::open(path)?, None).map_err(io::Error::other)?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<RecordBatch>, _>>()
        .map_err(io::Error::other)?;
    MemTable::try_new(schema, vec![batches]).map_err(io::Error::other)
}

fn write_table(
    path: &Path,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> io::Result<()> {
    let temp = path.with_extension("tmp");
    let mut writer = FileWriter::try_new(File::create(&temp)?, schema).map_err(io::Error::other)?;
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
