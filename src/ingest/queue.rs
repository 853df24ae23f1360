//! The bounded write queue between request handlers and the batch writer.
//!
//! Capacity is counted twice: in rows (one per metric, the unit of statement
//! size) and in the bytes the queued rows take in memory, so that a fleet sending
//! long names and strings cannot grow the process past its budget. A request takes
//! all its room at once or none: when the queue is full it is refused (503)
//! instead of growing without bound.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::table::TableRow;

/// Told to a waiting request once its rows are committed.
pub type Committed = oneshot::Receiver<()>;

/// Rows of one request on their way to the writer.
pub struct Submission {
    pub rows: Vec<TableRow>,
    /// Dropped unsent if the rows are never committed (the process ends first).
    pub committed: Option<oneshot::Sender<()>>,
    /// Held until the rows are committed, then dropped: the room returns to the queue.
    pub _room: QueueRoom,
}

/// Room held in the queue, given back when dropped (once the rows are committed).
pub struct QueueRoom {
    rows: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the write queue is full")]
    Full,
    #[error("the gateway is shutting down")]
    Closed,
}

/// How much the queue holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCapacity {
    pub rows: usize,
    /// Of rows in memory, as [`TableRow::queued_bytes`] counts them.
    pub bytes: usize,
}

#[derive(Clone)]
pub struct IngestQueue {
    sender: mpsc::UnboundedSender<Submission>,
    rows: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    capacity: QueueCapacity,
}

impl IngestQueue {
    /// An empty queue, and its receiving end for the writer.
    pub fn new(capacity: QueueCapacity) -> (IngestQueue, mpsc::UnboundedReceiver<Submission>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        // A semaphore holds at most `MAX_PERMITS`; no real budget comes near it.
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        let queue = IngestQueue {
            sender,
            rows: permits(capacity.rows),
            bytes: permits(capacity.bytes),
            capacity,
        };
        (queue, receiver)
    }

    /// Claims room for `rows`, so that nothing else is spent (rate limits) on a
    /// request the queue would refuse anyway.
    pub fn reserve(&self, rows: &[TableRow]) -> Result<Reservation, QueueError> {
        self.reserve_for(rows)
    }

    /// [`IngestQueue::reserve`] for rows that are not in one slice.
    pub fn reserve_for<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a TableRow>,
    ) -> Result<Reservation, QueueError> {
        let (count, bytes) = rows.into_iter().fold((0, 0), |(count, bytes), row| {
            (count + 1, bytes + row.queued_bytes())
        });
        let take = |semaphore: &Arc<Semaphore>, n: usize| {
            let n = u32::try_from(n).map_err(|_| QueueError::Full)?;
            semaphore
                .clone()
                .try_acquire_many_owned(n)
                .map_err(|_| QueueError::Full)
        };
        let room = QueueRoom {
            rows: take(&self.rows, count)?,
            bytes: take(&self.bytes, bytes)?,
        };
        Ok(Reservation {
            room,
            sender: self.sender.clone(),
        })
    }

    /// Queues the rows; with `wait_for_commit` the receiver resolves once they are in the table.
    #[cfg(test)]
    pub(crate) fn submit(
        &self,
        rows: Vec<TableRow>,
        wait_for_commit: bool,
    ) -> Result<Option<Committed>, QueueError> {
        self.reserve(&rows)?.submit(rows, wait_for_commit)
    }

    /// Rows queued and not yet committed.
    pub fn depth(&self) -> usize {
        self.capacity.rows.min(Semaphore::MAX_PERMITS) - self.rows.available_permits()
    }

    /// Bytes of the rows queued and not yet committed.
    pub fn depth_bytes(&self) -> usize {
        self.capacity.bytes.min(Semaphore::MAX_PERMITS) - self.bytes.available_permits()
    }
}

/// Room claimed in the queue; dropped unused, the room is given back.
pub struct Reservation {
    room: QueueRoom,
    sender: mpsc::UnboundedSender<Submission>,
}

impl Reservation {
    /// Gives back the room reserved beyond what `rows` take: some of the rows it was
    /// reserved for will not be queued after all.
    pub fn keep_only(&mut self, rows: &[TableRow]) {
        let bytes: usize = rows.iter().map(TableRow::queued_bytes).sum();
        let release = |permit: &mut OwnedSemaphorePermit, keep: usize| {
            let excess = permit.num_permits().saturating_sub(keep);
            drop(permit.split(excess));
        };
        release(&mut self.room.rows, rows.len());
        release(&mut self.room.bytes, bytes);
    }

    /// Queues `rows`, the rows room was reserved for.
    pub fn submit(
        self,
        rows: Vec<TableRow>,
        wait_for_commit: bool,
    ) -> Result<Option<Committed>, QueueError> {
        debug_assert!(rows.len() <= self.room.rows.num_permits());
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
                _room: self.room,
            })
            .map_err(|_| QueueError::Closed)?;
        Ok(receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: &str) -> TableRow {
        TableRow {
            device_id: "d".into(),
            reading_id: "r".into(),
            ts_us: 0,
            metric: metric.to_owned(),
            value: Some(1.0),
            value_str: None,
        }
    }

    #[test]
    fn room_not_needed_after_all_is_given_back_at_once() {
        let rows: Vec<TableRow> = ["a", "b", "c", "d"].map(row).into();
        let bytes: usize = rows.iter().map(TableRow::queued_bytes).sum();
        let (queue, mut receiver) = IngestQueue::new(QueueCapacity {
            rows: 5,
            bytes: bytes * 2,
        });
        let mut reservation = queue.reserve_for(&rows).unwrap();
        assert_eq!((queue.depth(), queue.depth_bytes()), (4, bytes));
        assert!(matches!(queue.reserve(&rows[..2]), Err(QueueError::Full)));

        // Only one of the four rows is queued after all: three rows' room is free again.
        let kept = vec![row("a")];
        reservation.keep_only(&kept);
        assert_eq!(
            (queue.depth(), queue.depth_bytes()),
            (1, kept[0].queued_bytes())
        );
        assert!(queue.reserve(&rows[..3]).is_ok());
        reservation.submit(kept, false).unwrap();
        let submission = receiver.try_recv().unwrap();
        assert_eq!(submission.rows.len(), 1);
        assert_eq!(queue.depth(), 1, "held until the rows are committed");
        drop(submission);
        assert_eq!((queue.depth(), queue.depth_bytes()), (0, 0));
    }
}
