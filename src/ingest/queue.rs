//! The bounded write queue between request handlers and the batch writer.
//!
//! Capacity is counted in rows (one per metric), the unit that costs memory
//! and statement size. A request takes all its permits at once or none: when
//! the queue is full it is refused (503) instead of growing without bound.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::reading::{MetricValue, Reading};

/// One table row: a reading's metric. Field names are the JSON the batch
/// statement expands with `from_json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub device_id: Arc<str>,
    pub reading_id: Arc<str>,
    /// Microseconds since the epoch, so that no timestamp format is parsed on the warehouse.
    pub ts_us: i64,
    pub metric: String,
    pub value: Option<f64>,
    pub value_str: Option<String>,
}

impl Row {
    /// One row per metric; booleans become 1.0 / 0.0 in `value`, strings go to `value_str`.
    pub fn from_reading(device_id: &Arc<str>, reading: Reading) -> impl Iterator<Item = Row> {
        let reading_id: Arc<str> = reading.reading_id.into();
        let ts_us = reading.ts.timestamp_micros();
        let device_id = device_id.clone();
        reading.metrics.into_iter().map(move |(metric, value)| {
            let (value, value_str) = match value {
                MetricValue::Number(number) => (Some(number), None),
                MetricValue::Bool(flag) => (Some(if flag { 1.0 } else { 0.0 }), None),
                MetricValue::Text(text) => (None, Some(text)),
            };
            Row {
                device_id: device_id.clone(),
                reading_id: reading_id.clone(),
                ts_us,
                metric,
                value,
                value_str,
            }
        })
    }
}

/// Told to a waiting request once its rows are committed.
pub type Committed = oneshot::Receiver<()>;

/// Rows of one request on their way to the writer.
pub struct Submission {
    pub rows: Vec<Row>,
    /// Dropped unsent if the rows are never committed (the process ends first).
    pub committed: Option<oneshot::Sender<()>>,
    /// Returned to the queue when the rows are committed.
    pub permit: OwnedSemaphorePermit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the write queue is full")]
    Full,
    #[error("the gateway is shutting down")]
    Closed,
}

#[derive(Clone)]
pub struct IngestQueue {
    sender: mpsc::UnboundedSender<Submission>,
    capacity: Arc<Semaphore>,
    max_rows: usize,
}

impl IngestQueue {
    /// A queue of at most `max_rows` rows, and its receiving end for the writer.
    pub fn new(max_rows: usize) -> (IngestQueue, mpsc::UnboundedReceiver<Submission>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queue = IngestQueue {
            sender,
            capacity: Arc::new(Semaphore::new(max_rows)),
            max_rows,
        };
        (queue, receiver)
    }

    /// Claims room for `rows` rows, so that nothing else is spent (rate limits) on a
    /// request the queue would refuse anyway.
    pub fn reserve(&self, rows: usize) -> Result<Reservation, QueueError> {
        let wanted = u32::try_from(rows).map_err(|_| QueueError::Full)?;
        let permit = self
            .capacity
            .clone()
            .try_acquire_many_owned(wanted)
            .map_err(|_| QueueError::Full)?;
        Ok(Reservation {
            permit,
            sender: self.sender.clone(),
        })
    }

    /// Queues the rows; with `wait_for_commit` the receiver resolves once they are in the table.
    pub fn submit(
        &self,
        rows: Vec<Row>,
        wait_for_commit: bool,
    ) -> Result<Option<Committed>, QueueError> {
        self.reserve(rows.len())?.submit(rows, wait_for_commit)
    }

    /// Rows queued and not yet committed.
    pub fn depth(&self) -> usize {
        self.max_rows - self.capacity.available_permits()
    }
}

/// Room claimed in the queue; dropped unused, the room is given back.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    sender: mpsc::UnboundedSender<Submission>,
}

impl Reservation {
    /// Queues `rows` (at most as many as were reserved).
    pub fn submit(
        self,
        rows: Vec<Row>,
        wait_for_commit: bool,
    ) -> Result<Option<Committed>, QueueError> {
        debug_assert!(rows.len() <= self.permit.num_permits());
        let (committed, receiver) = match wait_for_commit {
            true => {
                let (sender, receiver) = oneshot::channel();
                (Some(sender), Some(receiver))
            }
            false => (None, None),
        };
        self.sender
            .send(Submission {
                rows,
                committed,
                permit: self.permit,
            })
            .map_err(|_| QueueError::Closed)?;
        Ok(receiver)
    }
}
