//! The bounded write queue between request handlers and the batch writers: one lane
//! per writer, a device's rows always in the same lane (so they stay in order and one
//! reading is never written by two writers at once).
//!
//! Capacity is counted twice: in rows (one per metric, the unit of statement
//! size) and in the bytes the queued rows take in memory, so that a fleet sending
//! long names and strings cannot grow the process past its budget. A request takes
//! all its room at once or none: when the queue is full it is refused (503)
//! instead of growing without bound.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::table::TableRow;

/// Told to a waiting request once its rows are committed, or why they never will be.
pub(super) type Committed = oneshot::Receiver<Result<(), Unwritten>>;

/// Why queued rows will not be written after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unwritten {
    /// A relay's spool has no room for them (room is checked against the records as they
    /// will be written, which only the spooler knows): this request alone is refused.
    NoRoom,
}

/// Rows of one request (those of one lane) on their way to a writer.
pub(crate) struct Submission {
    pub rows: Vec<TableRow>,
    /// Told when the rows are committed; the request hears once every lane's part is.
    pub completion: Option<Arc<Completion>>,
    /// Held until the rows are committed, then dropped: the room returns to the queue.
    pub _room: QueueRoom,
}

/// The commit of a request whose rows went to several lanes.
pub(crate) struct Completion {
    parts_left: AtomicUsize,
    /// Dropped unsent if some part is never committed (the process ends first).
    committed: Mutex<Option<oneshot::Sender<Result<(), Unwritten>>>>,
}

impl Completion {
    /// One part is committed; the request hears when the last one is.
    pub(crate) fn part_committed(&self) {
        if self.parts_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tell(Ok(()));
        }
    }

    /// One part will not be written: the request hears why at once.
    pub(crate) fn part_unwritten(&self, why: Unwritten) {
        self.tell(Err(why));
    }

    fn tell(&self, outcome: Result<(), Unwritten>) {
        let sender = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The request may have stopped waiting; its rows are settled all the same.
        let _ = sender.map(|sender| sender.send(outcome));
    }
}

/// Room held in the queue, given back when dropped (once the rows are committed).
pub(crate) struct QueueRoom {
    rows: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
}

impl QueueRoom {
    /// Splits off the room of `rows` rows taking `bytes` bytes.
    fn split(&mut self, rows: usize, bytes: usize) -> QueueRoom {
        QueueRoom {
            rows: self.rows.split(rows).expect("the room holds every row"),
            bytes: self.bytes.split(bytes).expect("the room holds every byte"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueueError {
    #[error("the write queue is full")]
    Full,
    #[error("the gateway is shutting down")]
    Closed,
}

/// How much the queue holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueCapacity {
    pub rows: usize,
    /// Of rows in memory, as [`TableRow::queued_bytes`] counts them.
    pub bytes: usize,
}

#[derive(Clone)]
pub(crate) struct IngestQueue {
    lanes: Arc<[mpsc::UnboundedSender<Submission>]>,
    rows: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    capacity: QueueCapacity,
}

/// A lane's receiving end: what one writer takes its submissions from.
pub(crate) type Lane = mpsc::UnboundedReceiver<Submission>;

impl IngestQueue {
    /// An empty queue of `lanes` lanes, and their receiving ends, one per writer.
    pub(crate) fn new(capacity: QueueCapacity, lanes: usize) -> (IngestQueue, Vec<Lane>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..lanes.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        // A semaphore holds at most `MAX_PERMITS`; no real budget comes near it.
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        let queue = IngestQueue {
            lanes: Arc::from(senders),
            rows: permits(capacity.rows),
            bytes: permits(capacity.bytes),
            capacity,
        };
        (queue, receivers)
    }

    /// Claims room for `rows`, so that nothing else is spent (rate limits) on a
    /// request the queue would refuse anyway.
    pub(crate) fn reserve(&self, rows: &[TableRow]) -> Result<Reservation, QueueError> {
        self.reserve_for(rows)
    }

    /// [`IngestQueue::reserve`] for rows that are not in one slice.
    pub(crate) fn reserve_for<'a>(
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
            lanes: self.lanes.clone(),
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
    pub(crate) fn depth(&self) -> usize {
        self.capacity.rows.min(Semaphore::MAX_PERMITS) - self.rows.available_permits()
    }

    /// Bytes of the rows queued and not yet committed.
    pub(crate) fn depth_bytes(&self) -> usize {
        self.capacity.bytes.min(Semaphore::MAX_PERMITS) - self.bytes.available_permits()
    }
}

/// Room claimed in the queue; dropped unused, the room is given back.
pub(crate) struct Reservation {
    room: QueueRoom,
    lanes: Arc<[mpsc::UnboundedSender<Submission>]>,
}

/// The lane of a device's rows.
fn lane_of(device_id: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    device_id.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

impl Reservation {
    /// Gives back the room reserved beyond what `rows` take: some of the rows it was
    /// reserved for will not be queued after all.
    pub(crate) fn keep_only(&mut self, rows: &[TableRow]) {
        let bytes: usize = rows.iter().map(TableRow::queued_bytes).sum();
        let release = |permit: &mut OwnedSemaphorePermit, keep: usize| {
            let excess = permit.num_permits().saturating_sub(keep);
            drop(permit.split(excess));
        };
        release(&mut self.room.rows, rows.len());
        release(&mut self.room.bytes, bytes);
    }

    /// Queues `rows`, the rows room was reserved for, each in its device's lane.
    pub(crate) fn submit(
        self,
        rows: Vec<TableRow>,
        wait_for_commit: bool,
    ) -> Result<Option<Committed>, QueueError> {
        let Reservation { room, lanes } = self;
        debug_assert!(rows.len() <= room.rows.num_permits());
        let mut room = Some(room);
        let mut parts: Vec<Vec<TableRow>> = vec![Vec::new(); lanes.len()];
        for row in rows {
            parts[lane_of(&row.device_id, lanes.len())].push(row);
        }
        let parts: Vec<(usize, Vec<TableRow>)> = parts
            .into_iter()
            .enumerate()
            .filter(|(_, rows)| !rows.is_empty())
            .collect();
        let (completion, receiver) = match wait_for_commit {
            true => {
                let (sender, receiver) = oneshot::channel();
                let completion = Completion {
                    parts_left: AtomicUsize::new(parts.len()),
                    committed: Mutex::new(Some(sender)),
                };
                (Some(Arc::new(completion)), Some(receiver))
            }
            false => (None, None),
        };
        let last = parts.len().saturating_sub(1);
        for (n, (lane, rows)) in parts.into_iter().enumerate() {
            // Each part carries its share of the room; the last one takes what is left.
            let part_room = match room.as_mut() {
                Some(_) if n == last => room.take(),
                Some(whole) => {
                    let part_bytes = rows.iter().map(TableRow::queued_bytes).sum();
                    Some(whole.split(rows.len(), part_bytes))
                }
                None => None,
            }
            .expect("one part of the room for each lane's rows");
            lanes[lane]
                .send(Submission {
                    rows,
                    completion: completion.clone(),
                    _room: part_room,
                })
                .map_err(|_| QueueError::Closed)?;
        }
        Ok(receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_of(device: &str, reading: &str) -> TableRow {
        TableRow {
            device_id: device.into(),
            reading_id: reading.into(),
            ts_us: 1,
            metric: "t".into(),
            value: Some(1.0),
            value_str: None,
        }
    }

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

    #[tokio::test]
    async fn a_request_over_several_lanes_is_committed_when_every_part_is() {
        let capacity = QueueCapacity {
            rows: 100,
            bytes: 1 << 20,
        };
        let (queue, mut lanes) = IngestQueue::new(capacity, 4);
        let rows: Vec<TableRow> = (0..16)
            .map(|n| row_of(&format!("device-{}", n % 8), &format!("r-{n}")))
            .collect();
        let committed = queue.submit(rows, true).unwrap().unwrap();
        assert_eq!(queue.depth(), 16);

        let mut parts = Vec::new();
        for lane in &mut lanes {
            while let Ok(part) = lane.try_recv() {
                parts.push(part);
            }
        }
        assert!(parts.len() > 1, "eight devices spread over the lanes");
        assert_eq!(parts.iter().map(|p| p.rows.len()).sum::<usize>(), 16);
        // A device's rows are all in one lane.
        for part in &parts {
            for row in &part.rows {
                assert_eq!(
                    lane_of(&row.device_id, 4),
                    lane_of(&part.rows[0].device_id, 4)
                );
            }
        }
        let mut committed = std::pin::pin!(committed);
        for part in parts.drain(1..) {
            part.completion.as_ref().unwrap().part_committed();
        }
        assert!(
            futures::poll!(&mut committed).is_pending(),
            "one part is still out"
        );
        let last = parts.pop().unwrap();
        last.completion.as_ref().unwrap().part_committed();
        committed.await.unwrap().unwrap();
        assert!(queue.depth() > 0, "the last part still holds its room");
        drop(last);
        assert_eq!(queue.depth(), 0);
        assert_eq!(queue.depth_bytes(), 0);
    }

    #[test]
    fn room_not_needed_after_all_is_given_back_at_once() {
        let rows: Vec<TableRow> = ["a", "b", "c", "d"].map(row).into();
        let bytes: usize = rows.iter().map(TableRow::queued_bytes).sum();
        let (queue, mut lanes) = IngestQueue::new(
            QueueCapacity {
                rows: 5,
                bytes: bytes * 2,
            },
            1,
        );
        let receiver = &mut lanes[0];
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
