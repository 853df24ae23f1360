//! Statements by id, each with its phase (PENDING → RUNNING → SUCCEEDED | FAILED |
//! CANCELED), its cancel signal and, once finished, its result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::ErrorReply;
use crate::results::ResultSet;
use crate::sql::SqlError;

/// Databricks keeps a finished statement's result for an hour; the emulator then
/// forgets the statement (its id answers 404), so a long-running emulator does not
/// hold every result it ever produced.
const RETENTION: Duration = Duration::from_secs(60 * 60);

#[derive(Default)]
pub(crate) struct StatementStore {
    statements: Mutex<HashMap<String, Arc<Statement>>>,
}

impl StatementStore {
    pub(crate) fn insert(&self, statement: Arc<Statement>) {
        let mut statements = self
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        statements.retain(|_, kept| {
            kept.finished_at
                .get()
                .is_none_or(|finished| finished.elapsed() < RETENTION)
        });
        statements.insert(statement.id.clone(), statement);
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<Statement>, ErrorReply> {
        let statements = self
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        statements
            .get(id)
            .cloned()
            .ok_or_else(|| ErrorReply::not_found(format!("Statement {id} does not exist.")))
    }
}

pub(crate) struct Statement {
    pub id: String,
    pub inline: bool,
    pub phase: watch::Sender<Phase>,
    pub cancel: watch::Sender<bool>,
    pub finished_at: OnceLock<Instant>,
}

#[derive(Clone)]
pub(crate) enum Phase {
    Pending,
    Running,
    Succeeded(Arc<ResultSet>),
    Failed(SqlError),
    Canceled,
}

impl Phase {
    pub(crate) fn is_terminal(&self) -> bool {
        !matches!(self, Phase::Pending | Phase::Running)
    }

    pub(crate) fn state(&self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Running => "RUNNING",
            Phase::Succeeded(_) => "SUCCEEDED",
            Phase::Failed(_) => "FAILED",
            Phase::Canceled => "CANCELED",
        }
    }
}

impl Statement {
    pub(crate) async fn finished(&self) {
        // The sender lives in `self`, so waiting cannot fail.
        let _ = self.phase.subscribe().wait_for(Phase::is_terminal).await;
    }

    /// Waits until the statement has finished or `timeout` has passed; true if it finished.
    pub(crate) async fn wait(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.finished()).await.is_ok()
    }
}
