//! The relay's durable spool: accepted readings on disk until the upstream has
//! committed them.
//!
//! Records are appended to segment files (`<seq>.seg`, a new one every
//! [`SEGMENT_BYTES`]) as `length (u32 LE) | CRC-32 (u32 LE) | payload`, and the file is
//! fsync'd before the append returns, so a device hears 202 only for readings on disk.
//! The forwarder reads from the cursor (`cursor`: segment and offset of the first record
//! not yet committed upstream), which moves only after the upstream's 200 and is itself
//! replaced atomically (written aside, fsync'd, renamed, directory fsync'd).
//!
//! After a crash (`kill -9` included) the spool opens at the cursor; a record torn at
//! the end of the last segment (never acknowledged: its fsync had not returned) is cut
//! off. A record may be forwarded twice (committed upstream, the cursor not yet moved):
//! readings keep their ids, so the upstream writes them once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A segment is closed and a new one started beyond this size.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// Bytes of a record's header: length and CRC-32.
const HEADER: u64 = 8;

/// The largest payload one record may hold.
const MAX_RECORD: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({used} of {max} bytes); nothing from this request was spooled")]
    Full { used: u64, max: u64 },
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool {0}: another process has it open (one relay or agent per spool)")]
    InUse(PathBuf),
}

/// Where a record starts: its segment and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Records read from the cursor on, and where the next one starts.
pub struct Pending {
    pub records: Vec<Vec<u8>>,
    pub end: Position,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Held locked while the spool is open, so that two processes never share it.
    _lock: File,
}

struct State {
    /// The segment being appended to, and its length.
    head: File,
    head_segment: u64,
    head_len: u64,
    /// The first record not yet committed upstream.
    cursor: Position,
    /// Bytes from the cursor to the end: what the spool still holds.
    used: u64,
    records: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, holding at most `max_bytes` not yet
    /// forwarded.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| SpoolError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::InUse(dir.to_owned())),
            Err(fs::TryLockError::Error(source)) => {
                return Err(SpoolError::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        let mut segments = segments(dir).map_err(io_err(dir))?;
        let cursor_path = dir.join("cursor");
        let mut cursor = match fs::read_to_string(&cursor_path) {
            Ok(text) => parse_cursor(&text).ok_or_else(|| SpoolError::Io {
                path: cursor_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, "not \"<segment> <offset>\""),
            })?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Position {
                segment: segments.first().copied().unwrap_or(1),
                offset: 0,
            },
            Err(source) => {
                return Err(SpoolError::Io {
                    path: cursor_path,
                    source,
                });
            }
        };
        // Segments before the cursor are forwarded (removal may have been cut short).
        for &segment in segments.iter().filter(|&&s| s < cursor.segment) {
            let path = segment_path(dir, segment);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        segments.retain(|&s| s >= cursor.segment);
        match segments.first() {
            None => {
                segments.push(cursor.segment);
                cursor.offset = 0;
            }
            // The cursor's segment was forwarded whole and removed: start at the next.
            Some(&first) if first > cursor.segment => {
                cursor = Position {
                    segment: first,
                    offset: 0,
                }
            }
            Some(_) => {}
        }
        let head_segment = *segments.last().expect("at least one segment");
        let head_path = segment_path(dir, head_segment);
        let mut head = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&head_path)
            .map_err(io_err(&head_path))?;
        // Keep the whole records of the head segment; a torn one at its end is cut off.
        let whole = valid_prefix(&mut head).map_err(io_err(&head_path))?;
        head.set_len(whole).map_err(io_err(&head_path))?;
        head.sync_all().map_err(io_err(&head_path))?;
        sync_dir(dir).map_err(io_err(dir))?;

        let mut used = 0;
        let mut records = 0;
        for &segment in &segments {
            let path = segment_path(dir, segment);
            let len = if segment == head_segment {
                whole
            } else {
                fs::metadata(&path).map_err(io_err(&path))?.len()
            };
            let from = if segment == cursor.segment {
                cursor.offset.min(len)
            } else {
                0
            };
            used += len - from;
            records += count_records(&path, from, len).map_err(io_err(&path))?;
        }
        Ok(Spool {
            _lock: lock,
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(State {
                head,
                head_segment,
                head_len: whole,
                cursor,
                used,
                records,
            }),
        })
    }

    /// Appends one record and returns once it is on disk.
    pub fn append(&self, payload: &[u8]) -> Result<(), SpoolError> {
        self.append_all(&[payload])
    }

    /// Appends records with one write and one fsync (a relay's group commit), all or
    /// none, and returns once they are on disk.
    pub fn append_all(&self, payloads: &[&[u8]]) -> Result<(), SpoolError> {
        let size: u64 = payloads
            .iter()
            .map(|payload| HEADER + payload.len() as u64)
            .sum();
        let mut state = self.lock();
        if state.used + size > self.max_bytes {
            return Err(SpoolError::Full {
                used: state.used,
                max: self.max_bytes,
            });
        }
        if state.head_len > 0 && state.head_len + size > SEGMENT_BYTES {
            self.start_segment(&mut state)?;
        }
        let mut records = Vec::with_capacity(size as usize);
        for payload in payloads {
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|&len| len <= MAX_RECORD)
                .expect("request bodies are capped far below a record's limit");
            records.extend_from_slice(&len.to_le_bytes());
            records.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            records.extend_from_slice(payload);
        }
        let path = segment_path(&self.dir, state.head_segment);
        let written = state
            .head
            .write_all(&records)
            .and_then(|()| state.head.sync_data());
        if let Err(source) = written {
            // Whatever part landed is cut off, so the next record starts clean.
            let _ = state.head.set_len(state.head_len);
            return Err(SpoolError::Io { path, source });
        }
        state.head_len += size;
        state.used += size;
        state.records += payloads.len() as u64;
        Ok(())
    }

    /// Bytes the spool may hold not yet forwarded.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where the spool lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Up to `max_records` records (and about `max_bytes` of them) from the cursor on,
    /// without moving it.
    pub fn peek(&self, max_records: usize, max_bytes: u64) -> Result<Pending, SpoolError> {
        let (mut position, head_segment, head_len) = {
            let state = self.lock();
            (state.cursor, state.head_segment, state.head_len)
        };
        let mut records = Vec::new();
        let mut bytes = 0;
        while records.len() < max_records && bytes < max_bytes {
            let end = if position.segment == head_segment {
                head_len
            } else {
                let path = segment_path(&self.dir, position.segment);
                fs::metadata(&path)
                    .map_err(|source| SpoolError::Io { path, source })?
                    .len()
            };
            if position.offset >= end {
                if position.segment >= head_segment {
                    break;
                }
                position = Position {
                    segment: position.segment + 1,
                    offset: 0,
                };
                continue;
            }
            let path = segment_path(&self.dir, position.segment);
            let read = read_records(
                &path,
                position.offset,
                end,
                max_records - records.len(),
                max_bytes - bytes,
            );
            let (read, next) = read.map_err(|source| SpoolError::Io { path, source })?;
            bytes += next - position.offset;
            records.extend(read);
            position.offset = next;
        }
        Ok(Pending {
            records,
            end: position,
        })
    }

    /// The upstream committed everything before `end`: moves the cursor there (on disk
    /// first) and removes the segments it left behind.
    pub fn commit(&self, end: Position, records: u64) -> Result<(), SpoolError> {
        let mut state = self.lock();
        if end <= state.cursor {
            return Ok(());
        }
        let cursor_path = self.dir.join("cursor");
        let staged = self.dir.join("cursor.staged");
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| SpoolError::Io { path, source }
        };
        let mut file = File::create(&staged).map_err(io_err(&staged))?;
        file.write_all(format!("{} {}\n", end.segment, end.offset).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&staged))?;
        fs::rename(&staged, &cursor_path).map_err(io_err(&cursor_path))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        let freed = self.bytes_between(&state, state.cursor, end)?;
        for segment in state.cursor.segment..end.segment {
            let path = segment_path(&self.dir, segment);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        state.cursor = end;
        state.used -= freed.min(state.used);
        state.records -= records.min(state.records);
        Ok(())
    }

    /// The upstream took everything before `end` but the `keep` records: appends those
    /// again, then moves the cursor. A crash in between leaves both copies (the upstream
    /// writes a reading once).
    pub fn commit_keeping(
        &self,
        end: Position,
        records: u64,
        keep: &[&[u8]],
    ) -> Result<(), SpoolError> {
        if !keep.is_empty() {
            self.append_all(keep)?;
        }
        self.commit(end, records)
    }

    /// Bytes and records not yet committed upstream.
    pub fn backlog(&self) -> (u64, u64) {
        let state = self.lock();
        (state.used, state.records)
    }

    fn bytes_between(
        &self,
        state: &State,
        from: Position,
        to: Position,
    ) -> Result<u64, SpoolError> {
        let mut bytes = 0;
        for segment in from.segment..=to.segment {
            let len = if segment == state.head_segment {
                state.head_len
            } else {
                let path = segment_path(&self.dir, segment);
                fs::metadata(&path)
                    .map_err(|source| SpoolError::Io { path, source })?
                    .len()
            };
            let start = if segment == from.segment {
                from.offset
            } else {
                0
            };
            let stop = if segment == to.segment {
                to.offset
            } else {
                len
            };
            bytes += stop.saturating_sub(start);
        }
        Ok(bytes)
    }

    fn start_segment(&self, state: &mut State) -> Result<(), SpoolError> {
        let segment = state.head_segment + 1;
        let path = segment_path(&self.dir, segment);
        let head = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .and_then(|file| sync_dir(&self.dir).map(|()| file))
            .map_err(|source| SpoolError::Io { path, source })?;
        state.head = head;
        state.head_segment = segment;
        state.head_len = 0;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// The segment numbers in `dir`, in order.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(number) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
            found.push(number);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn parse_cursor(text: &str) -> Option<Position> {
    let (segment, offset) = text.trim().split_once(' ')?;
    Some(Position {
        segment: segment.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One record at the reader's position: `Ok(None)` at a clean end, `Err` for a torn or
/// corrupt record.
fn next_record(reader: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0; HEADER as usize];
    match reader.read_exact(&mut header[..1]) {
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    reader.read_exact(&mut header[1..])?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record too long",
        ));
    }
    let mut payload = vec![0; len as usize];
    reader.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "checksum mismatch",
        ));
    }
    Ok(Some(payload))
}

/// The length of the file's longest prefix of whole, intact records.
fn valid_prefix(file: &mut File) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(&mut *file);
    let mut whole = 0;
    loop {
        match next_record(&mut reader) {
            Ok(Some(payload)) => whole += HEADER + payload.len() as u64,
            Ok(None) => return Ok(whole),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
            {
                tracing::warn!(at = whole, "spool: cutting off a record torn by a crash");
                return Ok(whole);
            }
            Err(err) => return Err(err),
        }
    }
}

fn count_records(path: &Path, from: u64, to: u64) -> io::Result<u64> {
    let (records, _) = read_records(path, from, to, usize::MAX, u64::MAX)?;
    Ok(records.len() as u64)
}

/// Records of `path` from `from` up to `to`, at most `max_records` and about
/// `max_bytes`; returns them and where the next one starts.
fn read_records(
    path: &Path,
    from: u64,
    to: u64,
    max_records: usize,
    max_bytes: u64,
) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(file).take(to - from);
    let mut records = Vec::new();
    let mut at = from;
    while records.len() < max_records && at - from < max_bytes && at < to {
        let Some(payload) = next_record(&mut reader)? else {
            break;
        };
        at += HEADER + payload.len() as u64;
        records.push(payload);
    }
    Ok((records, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(spool: &Spool) -> Vec<String> {
        let pending = spool.peek(usize::MAX, u64::MAX).unwrap();
        let texts = pending
            .records
            .iter()
            .map(|r| String::from_utf8(r.clone()).unwrap())
            .collect();
        spool
            .commit(pending.end, pending.records.len() as u64)
            .unwrap();
        texts
    }

    #[test]
    fn records_survive_a_reopen_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(b"one").unwrap();
        spool.append(b"two").unwrap();
        let pending = spool.peek(1, u64::MAX).unwrap();
        assert_eq!(pending.records, [b"one".to_vec()]);
        spool.commit(pending.end, 1).unwrap();
        drop(spool);

        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.backlog(), (HEADER + 3, 1));
        assert_eq!(drain(&spool), ["two"]);
        assert_eq!(spool.backlog(), (0, 0));
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(drain(&spool).is_empty());
    }

    #[test]
    fn a_torn_record_at_the_end_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(b"whole").unwrap();
        drop(spool);
        let head = segments(dir.path()).unwrap()[0];
        let mut file = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), head))
            .unwrap();
        // A crash in the middle of an append: a header and part of the payload.
        file.write_all(&10u32.to_le_bytes()).unwrap();
        file.write_all(&[1, 2, 3, 4, 5, 6]).unwrap();
        drop(file);

        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(b"after").unwrap();
        assert_eq!(drain(&spool), ["whole", "after"]);
    }

    #[test]
    fn a_full_spool_refuses_and_frees_room_as_records_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 2 * (HEADER + 4)).unwrap();
        spool.append(b"aaaa").unwrap();
        spool.append(b"bbbb").unwrap();
        assert!(matches!(
            spool.append(b"cccc"),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(drain(&spool), ["aaaa", "bbbb"]);
        spool.append(b"cccc").unwrap();
        assert_eq!(drain(&spool), ["cccc"]);
    }

    #[test]
    fn a_spool_is_open_in_one_place_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(dir.path(), 1024).unwrap();
        assert!(matches!(
            Spool::open(dir.path(), 1024),
            Err(SpoolError::InUse(_))
        ));
        drop(first);
        Spool::open(dir.path(), 1024).unwrap();
    }

    #[test]
    fn records_appended_together_land_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 3 * (HEADER + 4)).unwrap();
        spool.append_all(&[b"aaaa", b"bbbb"]).unwrap();
        assert_eq!(spool.backlog(), (2 * (HEADER + 4), 2));
        // Two more do not fit: neither is written.
        assert!(matches!(
            spool.append_all(&[b"cccc", b"dddd"]),
            Err(SpoolError::Full { .. })
        ));
        drop(spool);
        let spool = Spool::open(dir.path(), 3 * (HEADER + 4)).unwrap();
        assert_eq!(drain(&spool), ["aaaa", "bbbb"]);
    }

    #[test]
    fn segments_roll_over_and_forwarded_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64 * SEGMENT_BYTES).unwrap();
        let big = vec![b'x'; (SEGMENT_BYTES / 3) as usize];
        for _ in 0..7 {
            spool.append(&big).unwrap();
        }
        assert!(segments(dir.path()).unwrap().len() >= 3);
        let pending = spool.peek(4, u64::MAX).unwrap();
        assert_eq!(pending.records.len(), 4);
        spool.commit(pending.end, 4).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 64 * SEGMENT_BYTES).unwrap();
        assert_eq!(spool.backlog().1, 3);
        assert_eq!(drain(&spool).len(), 3);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }
}
