//! The relay's durable spool: accepted readings on disk until the upstream has
//! committed them.
//!
//! Records are appended to segment files (`<seq>.seg`, a new one every
//! [`SEGMENT_BYTES`]) as `length (u32 LE) | CRC-32 (u32 LE) | payload`, and the file is
//! fsync'd before the append returns, so a device hears 202 only for readings on disk.
//! The forwarder reads from the cursor (`cursor`: segment and offset of the first record
//! not yet committed upstream, with a CRC of its own), which moves only after the
//! upstream's 200 and is itself replaced atomically (written aside, fsync'd, renamed,
//! directory fsync'd).
//!
//! Opening checks every record from the cursor on, and reading checks them again (a
//! disk may rot while the spool is open). A bad record is never a reason to drop what
//! follows it: the bad bytes, up to the next intact record, are copied to
//! `damaged/<segment>-<offset>.bin` and overwritten in place by a padding record of the
//! same length (a payload starting with a 0 byte, which no JSON record does), so no
//! offset moves and the cursor stays valid; a repair cut short by a crash is simply done
//! again. Only when nothing intact follows is the segment cut there (at the end of the
//! last segment, that is a record torn by a crash: never acknowledged, since its fsync
//! had not returned). Nothing below the cursor is read, cut or rewritten. A cursor that
//! cannot be read sends everything still on disk again, and a cursor beyond its
//! segment's end (the file was cut short) moves appends to a new segment, so they never
//! land below it. A record may thus be forwarded twice: readings keep their ids, so the
//! upstream writes them once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A segment is closed and a new one started beyond this size.
pub(crate) const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// Bytes a record adds to its payload: length and CRC-32.
pub const RECORD_HEADER: u64 = 8;

/// The largest payload one record may hold.
pub(crate) const MAX_RECORD: u64 = 64 * 1024 * 1024;

/// Where bad regions are kept for inspection, inside the spool's directory.
const DAMAGED: &str = "damaged";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({used} of {max} bytes); nothing from this request was spooled")]
    Full { used: u64, max: u64 },
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool {0}: another process has it open (one relay or agent per spool)")]
    InUse(PathBuf),
    #[error("a spool record holds at most {max} bytes; this one has {len}; nothing was spooled")]
    TooLarge { len: u64, max: u64 },
    #[error("a spool record cannot be {0}; nothing was spooled")]
    Unfit(&'static str),
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

/// What the spool moved aside as damaged since it was opened (for a metric): the bad
/// regions, each holding at least one record that can no longer be read, and their
/// bytes. Torn tails cut at opening (never acknowledged) are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damaged {
    pub regions: u64,
    pub bytes: u64,
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
    damaged: Damaged,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + use<> {
    let path = path.to_owned();
    move |source| SpoolError::Io { path, source }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, holding at most `max_bytes` not yet
    /// forwarded, and checks (and mends) every record not yet forwarded.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
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
        let first = Position {
            segment: segments.first().copied().unwrap_or(1),
            offset: 0,
        };
        let mut cursor = match read_cursor(&dir.join("cursor"))? {
            None => first,
            // The head is never behind the cursor: a cursor past every segment is
            // damaged, not a reason to delete them all as forwarded.
            Some(saved) if segments.last().is_some_and(|&last| saved.segment > last) => {
                tracing::warn!(
                    cursor = ?saved,
                    "spool: the cursor names a segment that does not exist; sending again \
                     from the oldest segment (the upstream writes each reading once)"
                );
                first
            }
            Some(saved) => saved,
        };
        // Segments before the cursor are forwarded (removal may have been cut short).
        for &segment in segments.iter().filter(|&&s| s < cursor.segment) {
            remove_segment(dir, segment)?;
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

        let mut used = 0;
        let mut records = 0;
        let mut damaged = Damaged::default();
        let mut head_len = 0;
        let last = *segments.last().expect("at least one segment");
        for &segment in &segments {
            let path = segment_path(dir, segment);
            let len = segment_len(&path).map_err(io_err(&path))?;
            let from = if segment == cursor.segment {
                cursor.offset
            } else {
                0
            };
            if from > len {
                // Cut short under the cursor: what it held is gone. Appends must not
                // land below the cursor, so the next segment (a new one) goes on.
                tracing::warn!(
                    segment = %path.display(),
                    len,
                    cursor = from,
                    "spool: a segment is shorter than the cursor; going on from the next"
                );
                cursor = Position {
                    segment: segment + 1,
                    offset: 0,
                };
                // All it still holds is forwarded; gone, it leads the next opening on too.
                remove_segment(dir, segment)?;
                continue;
            }
            let scan = scan(dir, segment, from, len, segment == last)?;
            used += scan.end - from;
            records += scan.records;
            damaged.regions += scan.damaged.regions;
            damaged.bytes += scan.damaged.bytes;
            head_len = scan.end;
        }
        let (head_segment, head_len) = if cursor.segment > last {
            (cursor.segment, 0)
        } else {
            (last, head_len)
        };
        let head_path = segment_path(dir, head_segment);
        let head = open_head(dir, &head_path)?;
        Ok(Spool {
            _lock: lock,
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(State {
                head,
                head_segment,
                head_len,
                cursor,
                used,
                records,
                damaged,
            }),
        })
    }

    /// Appends one record and returns once it is on disk.
    pub fn append(&self, payload: &[u8]) -> Result<(), SpoolError> {
        self.append_all(&[payload])
    }

    /// Appends records with one write and one fsync (a relay's group commit), all or
    /// none, and returns once they are on disk. Each payload holds 1 to 64 MiB and
    /// does not start with a 0 byte (JSON never does).
    pub fn append_all(&self, payloads: &[&[u8]]) -> Result<(), SpoolError> {
        let size = encoded_size(payloads)?;
        let mut state = self.lock();
        if state.used + size > self.max_bytes {
            return Err(SpoolError::Full {
                used: state.used,
                max: self.max_bytes,
            });
        }
        self.append_locked(&mut state, payloads, size)
    }

    /// Bytes the spool may hold not yet forwarded.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where the spool lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What was moved aside as damaged since the spool was opened.
    pub fn damaged(&self) -> Damaged {
        self.lock().damaged
    }

    /// Up to `max_records` records (and about `max_bytes` of them) from the cursor on,
    /// without moving it. A bad record met on the way is moved aside (and counted) as
    /// at opening, and reading goes on after it.
    pub fn peek(&self, max_records: usize, max_bytes: u64) -> Result<Pending, SpoolError> {
        let mut position = self.lock().cursor;
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut mended = None;
        'segments: while records.len() < max_records && bytes < max_bytes {
            let (head_segment, end) = {
                let state = self.lock();
                (
                    state.head_segment,
                    self.segment_end(&state, position.segment)?,
                )
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
            let mut entries = Entries::open(&path, position.offset, end).map_err(io_err(&path))?;
            while records.len() < max_records && bytes < max_bytes {
                match entries.next().map_err(io_err(&path))? {
                    None => break,
                    Some(Entry::Record(payload)) => {
                        bytes += RECORD_HEADER + payload.len() as u64;
                        records.push(payload);
                    }
                    Some(Entry::Padding) => {}
                    Some(Entry::Bad) => {
                        // Mending either pads the region or cuts it off: meeting the same
                        // bad record twice means the disk does not keep what we write.
                        if mended == Some(position) {
                            return Err(SpoolError::Io {
                                path,
                                source: io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!(
                                        "the record at offset {} stays unreadable after mending",
                                        position.offset
                                    ),
                                ),
                            });
                        }
                        mended = Some(position);
                        self.mend(position)?;
                        continue 'segments;
                    }
                }
                position.offset = entries.at;
            }
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
        self.commit_locked(&mut state, end, records)
    }

    /// The upstream committed everything before `end` except the readings in `keep`,
    /// which must stay: appends them as new records (on disk) and only then moves the
    /// cursor. A crash between the two leaves both copies, which is safe: the upstream
    /// writes a reading once. Room is checked against what the spool holds once the
    /// commit is done, since the kept readings were already counted.
    pub fn commit_keeping(
        &self,
        end: Position,
        records: u64,
        keep: &[&[u8]],
    ) -> Result<(), SpoolError> {
        let size = encoded_size(keep)?;
        let mut state = self.lock();
        if end <= state.cursor {
            return Ok(());
        }
        let freed = self.bytes_between(&state, state.cursor, end)?;
        if state.used.saturating_sub(freed) + size > self.max_bytes {
            return Err(SpoolError::Full {
                used: state.used,
                max: self.max_bytes,
            });
        }
        if !keep.is_empty() {
            self.append_locked(&mut state, keep, size)?;
        }
        self.commit_locked(&mut state, end, records)
    }

    /// Bytes and records not yet committed upstream.
    pub fn backlog(&self) -> (u64, u64) {
        let state = self.lock();
        (state.used, state.records)
    }

    /// Writes already-checked records of `size` bytes at the head, fsync'd.
    fn append_locked(
        &self,
        state: &mut State,
        payloads: &[&[u8]],
        size: u64,
    ) -> Result<(), SpoolError> {
        if state.head_len > 0 && state.head_len + size > SEGMENT_BYTES {
            self.start_segment(state)?;
        }
        let mut records = Vec::with_capacity(size as usize);
        for payload in payloads {
            let len = u32::try_from(payload.len()).expect("checked by encoded_size");
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

    fn commit_locked(
        &self,
        state: &mut State,
        end: Position,
        records: u64,
    ) -> Result<(), SpoolError> {
        if end <= state.cursor {
            return Ok(());
        }
        let cursor_path = self.dir.join("cursor");
        let staged = self.dir.join("cursor.staged");
        let mut file = File::create(&staged).map_err(io_err(&staged))?;
        file.write_all(format_cursor(end).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&staged))?;
        fs::rename(&staged, &cursor_path).map_err(io_err(&cursor_path))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        let freed = self.bytes_between(state, state.cursor, end)?;
        for segment in state.cursor.segment..end.segment {
            remove_segment(&self.dir, segment)?;
        }
        state.cursor = end;
        if end
            >= (Position {
                segment: state.head_segment,
                offset: state.head_len,
            })
        {
            // Everything is forwarded: whatever a repair could only estimate is exact again.
            state.used = 0;
            state.records = 0;
        } else {
            state.used -= freed.min(state.used);
            state.records -= records.min(state.records);
        }
        Ok(())
    }

    /// Mends the bad record at `at`, met while reading (the disk rotted since opening):
    /// as at opening, the region is moved aside and padded, or cut when nothing intact
    /// follows it (appends wait meanwhile, so the head may be cut too).
    fn mend(&self, at: Position) -> Result<(), SpoolError> {
        let mut state = self.lock();
        if at < state.cursor {
            return Ok(());
        }
        let end = self.segment_end(&state, at.segment)?;
        let path = segment_path(&self.dir, at.segment);
        let bad = at.offset < end
            && matches!(
                Entries::open(&path, at.offset, end)
                    .and_then(|mut entries| entries.next())
                    .map_err(io_err(&path))?,
                Some(Entry::Bad)
            );
        if !bad {
            // Mended meanwhile by another reader.
            return Ok(());
        }
        let mended = mend(&self.dir, at.segment, at.offset, end).map_err(io_err(&path))?;
        if mended.cut {
            state.used -= (end - at.offset).min(state.used);
            if at.segment == state.head_segment {
                state.head_len = at.offset;
            }
        }
        // At least one record; the count is exact again once the spool is drained.
        state.records = state.records.saturating_sub(1);
        state.damaged.regions += 1;
        state.damaged.bytes += mended.bytes;
        mended.log(&path, at.offset, "reading");
        Ok(())
    }

    /// Where a segment's records end: the head's length, or the file's (0 if it is gone).
    fn segment_end(&self, state: &State, segment: u64) -> Result<u64, SpoolError> {
        if segment == state.head_segment {
            return Ok(state.head_len);
        }
        let path = segment_path(&self.dir, segment);
        segment_len(&path).map_err(io_err(&path))
    }

    fn bytes_between(
        &self,
        state: &State,
        from: Position,
        to: Position,
    ) -> Result<u64, SpoolError> {
        let mut bytes = 0;
        for segment in from.segment..=to.segment {
            let len = self.segment_end(state, segment)?;
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
            bytes += stop.min(len).saturating_sub(start);
        }
        Ok(bytes)
    }

    fn start_segment(&self, state: &mut State) -> Result<(), SpoolError> {
        let segment = state.head_segment + 1;
        state.head = open_head(&self.dir, &segment_path(&self.dir, segment))?;
        state.head_segment = segment;
        state.head_len = 0;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The bytes `payloads` take as records, or why they cannot be records.
fn encoded_size(payloads: &[&[u8]]) -> Result<u64, SpoolError> {
    let mut size = 0;
    for payload in payloads {
        let len = payload.len() as u64;
        if len > MAX_RECORD {
            return Err(SpoolError::TooLarge {
                len,
                max: MAX_RECORD,
            });
        }
        match payload.first() {
            None => return Err(SpoolError::Unfit("empty")),
            Some(0) => return Err(SpoolError::Unfit("a payload starting with a 0 byte")),
            Some(_) => {}
        }
        size += RECORD_HEADER + len;
    }
    Ok(size)
}

/// Opens a segment for appending (creating it, and syncing the directory).
fn open_head(dir: &Path, path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .and_then(|file| sync_dir(dir).map(|()| file))
        .map_err(io_err(path))
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// A segment's length; 0 for one that is gone (an operator may move a segment out).
fn segment_len(path: &Path) -> io::Result<u64> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err),
    }
}

fn remove_segment(dir: &Path, segment: u64) -> Result<(), SpoolError> {
    let path = segment_path(dir, segment);
    match fs::remove_file(&path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(err)),
        _ => Ok(()),
    }
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

/// `<segment> <offset> <crc32 of the two, hex>`: a flipped digit is caught, not obeyed.
fn format_cursor(at: Position) -> String {
    let text = format!("{} {}", at.segment, at.offset);
    format!("{text} {:08x}\n", crc32fast::hash(text.as_bytes()))
}

fn parse_cursor(text: &str) -> Option<Position> {
    let mut fields = text.split_ascii_whitespace();
    let (segment, offset) = (fields.next()?, fields.next()?);
    match (fields.next(), fields.next()) {
        // Written before cursors had a CRC.
        (None, _) => {}
        (Some(crc), None) => {
            let text = format!("{segment} {offset}");
            if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(text.as_bytes()) {
                return None;
            }
        }
        (Some(_), Some(_)) => return None,
    }
    Some(Position {
        segment: segment.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

/// The saved cursor; `None` when there is none yet, or when it is damaged (then the
/// spool is sent again from its oldest segment, which the upstream writes once).
fn read_cursor(path: &Path) -> Result<Option<Position>, SpoolError> {
    match fs::read(path) {
        Ok(bytes) => {
            let cursor = std::str::from_utf8(&bytes).ok().and_then(parse_cursor);
            if cursor.is_none() {
                tracing::warn!(
                    cursor = %path.display(),
                    "spool: the cursor is damaged; sending again from the oldest segment \
                     (the upstream writes each reading once)"
                );
            }
            Ok(cursor)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SpoolError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What a segment holds at a position.
enum Entry {
    Record(Vec<u8>),
    /// A region moved aside: skipped, not a record.
    Padding,
    /// Not a whole, intact record: torn by a crash, rotten, or zeros.
    Bad,
}

/// A segment's entries from an offset up to an end.
struct Entries {
    reader: BufReader<File>,
    /// Where the next entry starts (on `Entry::Bad`, where the bad one does).
    at: u64,
    end: u64,
}

impl Entries {
    fn open(path: &Path, at: u64, end: u64) -> io::Result<Entries> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(at))?;
        Ok(Entries {
            reader: BufReader::new(file),
            at,
            end,
        })
    }

    /// The next entry, `None` at the end. After `Entry::Bad` the reader is done.
    fn next(&mut self) -> io::Result<Option<Entry>> {
        if self.at >= self.end {
            return Ok(None);
        }
        let mut header = [0; RECORD_HEADER as usize];
        if self.end - self.at < RECORD_HEADER + 1 || !read_fully(&mut self.reader, &mut header)? {
            return Ok(Some(Entry::Bad));
        }
        let Some((len, crc)) = plausible(&header, self.at, self.end) else {
            return Ok(Some(Entry::Bad));
        };
        let mut payload = vec![0; len as usize];
        if !read_fully(&mut self.reader, &mut payload)? || crc32fast::hash(&payload) != crc {
            return Ok(Some(Entry::Bad));
        }
        self.at += RECORD_HEADER + len;
        Ok(Some(if payload[0] == 0 {
            Entry::Padding
        } else {
            Entry::Record(payload)
        }))
    }
}

/// Fills `buf`; `false` if the file ends first.
fn read_fully(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(err) => Err(err),
    }
}

/// The length and CRC of a header at `at` that could start a record ending by `end`.
/// A length of 0 never does, so zeros are never taken for records.
fn plausible(header: &[u8], at: u64, end: u64) -> Option<(u64, u32)> {
    let len = u64::from(u32::from_le_bytes(header[..4].try_into().ok()?));
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    ((1..=MAX_RECORD).contains(&len) && at + RECORD_HEADER + len <= end).then_some((len, crc))
}

/// What the records of a segment held at opening.
struct Scan {
    /// Where its records end (a cut tail removed).
    end: u64,
    records: u64,
    damaged: Damaged,
}

/// Checks a segment's records from `from` to `end` at opening, mending bad regions.
fn scan(dir: &Path, segment: u64, from: u64, end: u64, head: bool) -> Result<Scan, SpoolError> {
    let path = segment_path(dir, segment);
    let mut scan = Scan {
        end,
        records: 0,
        damaged: Damaged::default(),
    };
    let mut at = from;
    if at >= end {
        // Nothing to check (a new spool's head does not exist yet).
        return Ok(scan);
    }
    'regions: loop {
        let mut entries = Entries::open(&path, at, scan.end).map_err(io_err(&path))?;
        loop {
            match entries.next().map_err(io_err(&path))? {
                None => return Ok(scan),
                Some(Entry::Record(_)) => scan.records += 1,
                Some(Entry::Padding) => {}
                Some(Entry::Bad) => {
                    at = entries.at;
                    let mended = mend(dir, segment, at, scan.end).map_err(io_err(&path))?;
                    if head && mended.cut {
                        mended.log(&path, at, "opening: a record torn by a crash");
                    } else {
                        scan.damaged.regions += 1;
                        scan.damaged.bytes += mended.bytes;
                        mended.log(&path, at, "opening");
                    }
                    if mended.cut {
                        scan.end = at;
                        return Ok(scan);
                    }
                    at += mended.bytes;
                    continue 'regions;
                }
            }
        }
    }
}

/// What mending a bad region did.
struct Mended {
    /// The region's bytes, from the bad record to the next intact one or the end.
    bytes: u64,
    /// Nothing intact followed: the segment now ends where the region began.
    cut: bool,
    /// Where its bytes were kept (`None`: all zeros, nothing to keep).
    kept: Option<PathBuf>,
}

impl Mended {
    fn log(&self, segment: &Path, at: u64, when: &str) {
        let kept = self.kept.as_ref().map_or_else(
            || "nothing (all zeros)".to_owned(),
            |p| p.display().to_string(),
        );
        let how = if self.cut { "cut off" } else { "padded" };
        tracing::warn!(
            segment = %segment.display(),
            offset = at,
            bytes = self.bytes,
            kept = %kept,
            "spool: a damaged region was moved aside and {how} ({when}); the records after it are kept"
        );
    }
}

/// Mends the bad record at `at` of a segment whose records end at `end`: the region up
/// to the next intact record is copied to `damaged/` and overwritten by padding; when
/// nothing intact follows, it is copied and the segment cut there. A repair cut short
/// by a crash is done again on the next opening: the first copy, of the original bytes,
/// is kept.
fn mend(dir: &Path, segment: u64, at: u64, end: u64) -> io::Result<Mended> {
    let path = segment_path(dir, segment);
    let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
    // A bad record held at least one byte, so the next one starts past its header.
    let next = next_intact(&mut file, at + RECORD_HEADER + 1, end)?;
    let stop = next.unwrap_or(end);
    let kept = keep_aside(dir, segment, at, &mut file, stop)?;
    match next {
        Some(_) => write_padding(&mut file, at, stop - at)?,
        None => file.set_len(at)?,
    }
    file.sync_all()?;
    Ok(Mended {
        bytes: stop - at,
        cut: next.is_none(),
        kept,
    })
}

/// Where the first intact record at or after `from` starts, if one does before `end`.
fn next_intact(file: &mut File, from: u64, end: u64) -> io::Result<Option<u64>> {
    const WINDOW: usize = 64 * 1024;
    let header = RECORD_HEADER as usize;
    let mut window = vec![0; WINDOW];
    let mut start = from;
    while start + RECORD_HEADER < end {
        let len = (end - start).min(WINDOW as u64) as usize;
        file.seek(SeekFrom::Start(start))?;
        if !read_fully(file, &mut window[..len])? {
            return Ok(None);
        }
        for i in 0..=len - header {
            let at = start + i as u64;
            let Some((size, crc)) = plausible(&window[i..i + header], at, end) else {
                continue;
            };
            let mut payload = vec![0; size as usize];
            file.seek(SeekFrom::Start(at + RECORD_HEADER))?;
            if read_fully(file, &mut payload)? && crc32fast::hash(&payload) == crc {
                return Ok(Some(at));
            }
        }
        // The next window starts at the first offset whose header this one cut.
        start += (len - header + 1) as u64;
    }
    Ok(None)
}

/// Copies `at..stop` of a segment to `damaged/<segment>-<offset>.bin` (written aside,
/// fsync'd, renamed) unless it is all zeros or an earlier repair kept it already.
fn keep_aside(
    dir: &Path,
    segment: u64,
    at: u64,
    file: &mut File,
    stop: u64,
) -> io::Result<Option<PathBuf>> {
    let damaged = dir.join(DAMAGED);
    let name = format!("{segment:020}-{at:020}.bin");
    let kept = damaged.join(&name);
    if kept.exists() {
        return Ok(Some(kept));
    }
    fs::create_dir_all(&damaged)?;
    let staged = damaged.join(format!("{name}.partial"));
    let mut out = File::create(&staged)?;
    file.seek(SeekFrom::Start(at))?;
    let mut region = Read::take(&mut *file, stop - at);
    let mut chunk = vec![0; 64 * 1024];
    let mut zeros = true;
    loop {
        let n = region.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        zeros &= chunk[..n].iter().all(|&b| b == 0);
        out.write_all(&chunk[..n])?;
    }
    if zeros {
        drop(out);
        fs::remove_file(&staged)?;
        return Ok(None);
    }
    out.sync_all()?;
    fs::rename(&staged, &kept)?;
    sync_dir(&damaged)?;
    sync_dir(dir)?;
    Ok(Some(kept))
}

/// Overwrites `total` bytes at `at` with padding records (payloads of zeros), each
/// written payload first and header last.
fn write_padding(file: &mut File, at: u64, total: u64) -> io::Result<()> {
    let zeros = vec![0; 64 * 1024];
    let mut pos = at;
    let mut left = total;
    while left > 0 {
        let mut size = left.min(RECORD_HEADER + MAX_RECORD);
        if left > size && left - size <= RECORD_HEADER {
            // Leave room for a whole padding record after this one.
            size -= RECORD_HEADER + 1;
        }
        let len = size - RECORD_HEADER;
        let mut crc = crc32fast::Hasher::new();
        file.seek(SeekFrom::Start(pos + RECORD_HEADER))?;
        let mut written = 0;
        while written < len {
            let n = (len - written).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            crc.update(&zeros[..n]);
            written += n as u64;
        }
        file.seek(SeekFrom::Start(pos))?;
        let len32 = u32::try_from(len).expect("at most MAX_RECORD");
        file.write_all(&len32.to_le_bytes())?;
        file.write_all(&crc.finalize().to_le_bytes())?;
        pos += size;
        left -= size;
    }
    Ok(())
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

    /// A spool in `dir` holding `payloads`, closed again.
    fn spooled(dir: &Path, payloads: &[&str]) {
        let spool = Spool::open(dir, 1 << 30).unwrap();
        for payload in payloads {
            spool.append(payload.as_bytes()).unwrap();
        }
    }

    /// Where each record of a segment starts, as written (before any damage).
    fn record_starts(dir: &Path, segment: u64) -> Vec<u64> {
        let bytes = fs::read(segment_path(dir, segment)).unwrap();
        let mut starts = Vec::new();
        let mut at = 0;
        while at + RECORD_HEADER as usize <= bytes.len() {
            starts.push(at as u64);
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            at += RECORD_HEADER as usize + len as usize;
        }
        starts
    }

    /// Flips a byte of a segment, `offset` bytes into the record that starts at `record`.
    fn flip(dir: &Path, segment: u64, record: u64, offset: u64) {
        let path = segment_path(dir, segment);
        let mut bytes = fs::read(&path).unwrap();
        bytes[(record + offset) as usize] ^= 0x20;
        fs::write(&path, bytes).unwrap();
    }

    /// The files in `damaged/`, by name.
    fn damaged_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let Ok(entries) = fs::read_dir(dir.join(DAMAGED)) else {
            return Vec::new();
        };
        let mut files: Vec<(String, Vec<u8>)> = entries
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, fs::read(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    /// The bytes of a segment from `from` to `to`.
    fn segment_bytes(dir: &Path, segment: u64, from: u64, to: u64) -> Vec<u8> {
        fs::read(segment_path(dir, segment)).unwrap()[from as usize..to as usize].to_vec()
    }

    const FIVE: [&str; 5] = ["rec-1", "rec-2", "rec-3", "rec-4", "rec-5"];

    #[test]
    fn a_bad_record_in_the_head_is_moved_aside_and_every_record_after_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        spooled(dir.path(), &FIVE);
        let starts = record_starts(dir.path(), 1);
        flip(dir.path(), 1, starts[2], RECORD_HEADER + 2);
        let bad = segment_bytes(dir.path(), 1, starts[2], starts[3]);

        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(
            spool.damaged(),
            Damaged {
                regions: 1,
                bytes: RECORD_HEADER + 5
            }
        );
        assert_eq!(spool.backlog().1, 4);
        spool.append(b"rec-6").unwrap();
        assert_eq!(drain(&spool), ["rec-1", "rec-2", "rec-4", "rec-5", "rec-6"]);
        let name = format!("{:020}-{:020}.bin", 1, starts[2]);
        assert_eq!(damaged_files(dir.path()), [(name, bad)]);
    }

    #[test]
    fn bad_records_in_an_older_segment_are_moved_aside_and_it_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let big = |c: u8| vec![c; (SEGMENT_BYTES / 3) as usize];
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        for c in b'a'..=b'e' {
            spool.append(&big(c)).unwrap();
        }
        drop(spool);
        // Two records a segment: a b | c d | e.
        assert_eq!(segments(dir.path()).unwrap(), [1, 2, 3]);
        // One with an intact record after it, one at an older segment's end.
        flip(dir.path(), 1, 0, RECORD_HEADER + 100);
        let second = record_starts(dir.path(), 2)[1];
        flip(dir.path(), 2, second, 1);

        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.damaged().regions, 2);
        assert_eq!(spool.backlog().1, 3);
        let firsts: Vec<u8> = spool
            .peek(usize::MAX, u64::MAX)
            .unwrap()
            .records
            .iter()
            .map(|r| r[0])
            .collect();
        assert_eq!(firsts, b"bce");
        let kept: Vec<String> = damaged_files(dir.path()).into_iter().map(|f| f.0).collect();
        assert_eq!(
            kept,
            [
                format!("{:020}-{:020}.bin", 1, 0),
                format!("{:020}-{:020}.bin", 2, second)
            ]
        );
        drop(spool);
        // Mended for good: a second opening finds nothing more.
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.damaged(), Damaged::default());
        assert_eq!(spool.backlog().1, 3);
    }

    #[test]
    fn a_bad_record_below_the_cursor_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        spooled(dir.path(), &FIVE[..4]);
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        let pending = spool.peek(2, u64::MAX).unwrap();
        spool.commit(pending.end, 2).unwrap();
        drop(spool);
        let starts = record_starts(dir.path(), 1);
        flip(dir.path(), 1, starts[0], RECORD_HEADER);

        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.damaged(), Damaged::default());
        spool.append(b"rec-5").unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(drain(&spool), ["rec-3", "rec-4", "rec-5"]);
        assert!(damaged_files(dir.path()).is_empty());
    }

    #[test]
    fn a_segment_cut_short_under_the_cursor_sends_appends_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        spooled(dir.path(), &FIVE[..4]);
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        let pending = spool.peek(3, u64::MAX).unwrap();
        spool.commit(pending.end, 3).unwrap();
        drop(spool);
        // The disk loses the segment's end, the pending record and part of one before.
        let starts = record_starts(dir.path(), 1);
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .unwrap();
        file.set_len(starts[1] + 3).unwrap();
        drop(file);

        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.backlog(), (0, 0));
        spool.append(b"rec-5").unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(drain(&spool), ["rec-5"]);
        assert_eq!(segments(dir.path()).unwrap(), [2]);
    }

    #[test]
    fn a_damaged_cursor_sends_everything_on_disk_again() {
        let dir = tempfile::tempdir().unwrap();
        spooled(dir.path(), &FIVE[..3]);
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        let pending = spool.peek(2, u64::MAX).unwrap();
        spool.commit(pending.end, 2).unwrap();
        drop(spool);
        let cursor = dir.path().join("cursor");
        let saved = fs::read_to_string(&cursor).unwrap();
        assert_eq!(parse_cursor(&saved), Some(pending.end));

        // A flipped digit that still parses: it must not delete segments as forwarded.
        fs::write(&cursor, saved.replacen('1', "9", 1)).unwrap();
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(drain(&spool), ["rec-1", "rec-2", "rec-3"]);
        drop(spool);

        spooled(dir.path(), &["rec-4"]);
        fs::write(&cursor, b"\xff garbage").unwrap();
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(drain(&spool), ["rec-1", "rec-2", "rec-3", "rec-4"]);
    }

    #[test]
    fn zeros_are_never_records() {
        let dir = tempfile::tempdir().unwrap();
        spooled(dir.path(), &FIVE[..3]);
        let path = segment_path(dir.path(), 1);
        let starts = record_starts(dir.path(), 1);
        // The middle record zeroed, and a zero-filled tail (a crash after the file grew).
        let mut bytes = fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes[starts[1] as usize..starts[2] as usize].fill(0);
        bytes.extend_from_slice(&[0; 4096]);
        fs::write(&path, bytes).unwrap();

        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), whole as u64);
        // The zeroed record is counted; the tail was never acknowledged.
        assert_eq!(
            spool.damaged(),
            Damaged {
                regions: 1,
                bytes: starts[2] - starts[1]
            }
        );
        assert_eq!(drain(&spool), ["rec-1", "rec-3"]);
        assert!(
            damaged_files(dir.path()).is_empty(),
            "zeros hold nothing to keep"
        );
    }

    #[test]
    fn a_repair_cut_short_by_a_crash_is_done_again_and_keeps_the_original_bytes() {
        let dir = tempfile::tempdir().unwrap();
        spooled(dir.path(), &FIVE);
        let starts = record_starts(dir.path(), 1);
        flip(dir.path(), 1, starts[2], RECORD_HEADER + 1);
        let path = segment_path(dir.path(), 1);
        let damaged = fs::read(&path).unwrap();
        let bad = damaged[starts[2] as usize..starts[3] as usize].to_vec();

        drop(Spool::open(dir.path(), 1 << 30).unwrap());
        // The crash: the padding's payload written, its header not yet.
        let mut torn = fs::read(&path).unwrap();
        let header = starts[2] as usize..(starts[2] + RECORD_HEADER) as usize;
        torn[header.clone()].copy_from_slice(&damaged[header]);
        fs::write(&path, &torn).unwrap();
        let partial = dir.path().join(DAMAGED).join("leftover.partial");
        fs::write(&partial, b"a copy cut short").unwrap();

        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.damaged().regions, 1);
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.damaged(), Damaged::default(), "nothing left to mend");
        assert_eq!(drain(&spool), ["rec-1", "rec-2", "rec-4", "rec-5"]);
        let kept = damaged_files(dir.path());
        let name = format!("{:020}-{:020}.bin", 1, starts[2]);
        assert!(kept.contains(&(name, bad)), "{kept:?}");
    }

    #[test]
    fn records_that_rot_while_the_spool_is_open_are_moved_aside_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        for payload in FIVE {
            spool.append(payload.as_bytes()).unwrap();
        }
        let starts = record_starts(dir.path(), 1);
        flip(dir.path(), 1, starts[1], RECORD_HEADER);
        // The last record too: nothing intact after it, so the head is cut there.
        flip(dir.path(), 1, starts[4], RECORD_HEADER);

        let pending = spool.peek(usize::MAX, u64::MAX).unwrap();
        let texts: Vec<&[u8]> = pending.records.iter().map(Vec::as_slice).collect();
        assert_eq!(texts, [&b"rec-1"[..], b"rec-3", b"rec-4"]);
        assert_eq!(spool.damaged().regions, 2);
        assert_eq!(damaged_files(dir.path()).len(), 2);
        spool.commit(pending.end, 3).unwrap();
        assert_eq!(spool.backlog(), (0, 0));
        spool.append(b"rec-6").unwrap();
        assert_eq!(drain(&spool), ["rec-6"]);
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.damaged(), Damaged::default());
        assert!(drain(&spool).is_empty());
    }

    #[test]
    fn payloads_that_cannot_be_records_are_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), u64::MAX).unwrap();
        let huge = vec![b'x'; MAX_RECORD as usize + 1];
        assert!(matches!(
            spool.append_all(&[b"fine", &huge]),
            Err(SpoolError::TooLarge { len, max: MAX_RECORD }) if len == MAX_RECORD + 1
        ));
        assert!(matches!(spool.append(b""), Err(SpoolError::Unfit(_))));
        assert!(matches!(spool.append(b"\0pad"), Err(SpoolError::Unfit(_))));
        assert_eq!(spool.backlog(), (0, 0), "all or none");
    }

    #[test]
    fn commit_keeping_keeps_some_readings_even_when_the_spool_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let max = 3 * (RECORD_HEADER + 5);
        let spool = Spool::open(dir.path(), max).unwrap();
        spool.append_all(&[b"rec-1", b"rec-2", b"rec-3"]).unwrap();
        assert!(matches!(spool.append(b"k"), Err(SpoolError::Full { .. })));
        let pending = spool.peek(usize::MAX, u64::MAX).unwrap();
        spool.commit_keeping(pending.end, 3, &[b"rec-2"]).unwrap();
        assert_eq!(spool.backlog(), (RECORD_HEADER + 5, 1));
        // The same commit again (a retry) keeps nothing twice.
        spool.commit_keeping(pending.end, 3, &[b"rec-2"]).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), max).unwrap();
        assert_eq!(drain(&spool), ["rec-2"]);

        // Room is what the spool holds once the commit is done.
        spool.append_all(&[b"rec-4", b"rec-5"]).unwrap();
        let first = spool.peek(1, u64::MAX).unwrap();
        let too_much = [&b"rec-4"[..], b"rec-4", b"rec-4"];
        assert!(matches!(
            spool.commit_keeping(first.end, 1, &too_much),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(drain(&spool), ["rec-4", "rec-5"]);
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
        assert_eq!(spool.backlog(), (RECORD_HEADER + 3, 1));
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
        let spool = Spool::open(dir.path(), 2 * (RECORD_HEADER + 4)).unwrap();
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
        let spool = Spool::open(dir.path(), 3 * (RECORD_HEADER + 4)).unwrap();
        spool.append_all(&[b"aaaa", b"bbbb"]).unwrap();
        assert_eq!(spool.backlog(), (2 * (RECORD_HEADER + 4), 2));
        // Two more do not fit: neither is written.
        assert!(matches!(
            spool.append_all(&[b"cccc", b"dddd"]),
            Err(SpoolError::Full { .. })
        ));
        drop(spool);
        let spool = Spool::open(dir.path(), 3 * (RECORD_HEADER + 4)).unwrap();
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
