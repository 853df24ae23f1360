//! `lakegate send`, the device agent: readings as NDJSON from files or stdin, sent to
//! the gateway in batches with the device's key, each batch retried until the
//! gateway commits it (readings keep their identity, so a batch sent twice is
//! written once). With a spool, every reading is on disk before anything is sent,
//! and what the upstream has not committed by the deadline stays for the next run.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::time::Instant;

use lakegate_databricks as databricks;

use crate::forward::{Forwarded, Pacing, forward_next};
use crate::spool::{Spool, SpoolError};
use crate::upstream::{Refused, Upstream};

/// Readings per upstream request (the gateway takes 1,000 by default).
pub const DEFAULT_BATCH: usize = 500;

pub struct SendOptions {
    pub upstream: String,
    pub key: SecretString,
    /// Where readings wait on disk until committed upstream.
    pub spool: Option<(PathBuf, u64)>,
    /// The workspace whose OAuth tokens the Apps proxy in front of the gateway takes.
    pub workspace: Option<databricks::Config>,
    pub batch: usize,
    /// How long to keep trying before giving up (without a spool) or leaving the rest
    /// spooled for the next run.
    pub deadline: Duration,
    /// NDJSON files; none means stdin.
    pub inputs: Vec<PathBuf>,
}

/// What a run did, for the summary and the exit status.
#[derive(Debug, Default)]
pub struct SendReport {
    pub read: usize,
    /// Input lines that are not readings, with why.
    pub skipped: Vec<String>,
    pub committed: usize,
    /// Readings the gateway refused for good, with why.
    pub refused: Vec<String>,
    /// Readings neither committed nor spooled (no spool, or it was full).
    pub undelivered: usize,
    /// Readings still in the spool, to go on the next run.
    pub spooled: u64,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
}

impl SendReport {
    /// 0: everything committed (or safely spooled); 1: some input was refused or not a
    /// reading; 3: some readings are neither committed nor spooled.
    pub fn exit_code(&self) -> u8 {
        if self.undelivered > 0 {
            3
        } else if !self.skipped.is_empty() || !self.refused.is_empty() {
            1
        } else {
            0
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// An input file that cannot be opened: nothing was sent.
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl SendError {
    /// 2 for input that cannot be read before anything is sent (bad options, as for a
    /// wrong flag); 3 otherwise, as readings may be neither committed nor spooled.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendError::Input(_) => 2,
            SendError::Setup(_) | SendError::Spool(_) => 3,
        }
    }
}

/// How long a reading waits for others to fill its batch.
const LINGER: Duration = Duration::from_secs(1);

/// Input lines longer than this are refused unread: a reading is far smaller (the
/// gateway takes 1 MiB a request by default), and memory stays bounded.
const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// A batch is handed on once its input lines reach this many bytes, whatever its count.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of readings in one spooled record, about (a bigger reading is a record alone).
const RECORD_BYTES: usize = 1024 * 1024;

pub async fn send(options: SendOptions) -> Result<SendReport, SendError> {
    let upstream = Upstream::new(&options.upstream, options.key, options.workspace.as_ref())
        .map_err(|err| SendError::Setup(format!("upstream: {err}")))?;
    let spool = match &options.spool {
        Some((dir, max_bytes)) => Some(Arc::new(Spool::open(dir, *max_bytes)?)),
        None => None,
    };
    let mut report = SendReport::default();
    let mut places = Places::default();
    let mut pacing = Pacing::default();
    let mut lines = Inputs::new(&options.inputs)?.spawn();
    let mut batch = Vec::with_capacity(options.batch);
    let mut batch_bytes = 0;
    let mut linger_until = None;
    loop {
        let next = match linger_until {
            Some(until) => tokio::time::timeout_at(until, lines.recv()).await,
            None => Ok(lines.recv().await),
        };
        let full_or_due = match next {
            Ok(Some(Input::Line(line))) => {
                if let Some(readings) = readings_of(&line.text, &line.place, &mut report) {
                    report.read += readings.len();
                    let place: Arc<str> = line.place.into();
                    for reading in &readings {
                        places.remember(reading, &place);
                    }
                    batch.extend(readings);
                    batch_bytes += line.text.len();
                    linger_until.get_or_insert_with(|| Instant::now() + LINGER);
                }
                batch.len() >= options.batch || batch_bytes >= BATCH_BYTES
            }
            Ok(Some(Input::Skipped(why))) => {
                report.skipped.push(why);
                false
            }
            Ok(Some(Input::Failed(why))) => return Err(SendError::Setup(why)),
            Ok(None) => break,
            Err(_) => true,
        };
        if full_or_due {
            linger_until = None;
            batch_bytes = 0;
            let deadline = Instant::now() + options.deadline;
            let sent = (&upstream, spool.as_ref(), deadline);
            take(sent, &mut batch, &mut report, &mut places).await?;
            if let Some(spool) = &spool {
                // Forward what is spooled while the input goes on, without waiting.
                drain(
                    &upstream,
                    spool,
                    options.batch,
                    None,
                    &mut pacing,
                    &mut report,
                    &mut places,
                )
                .await?;
            }
        }
    }
    let deadline = Instant::now() + options.deadline;
    let sent = (&upstream, spool.as_ref(), deadline);
    take(sent, &mut batch, &mut report, &mut places).await?;
    if let Some(spool) = &spool {
        drain(
            &upstream,
            spool,
            options.batch,
            Some(deadline),
            &mut pacing,
            &mut report,
            &mut places,
        )
        .await?;
        report.spooled = spool.backlog().1;
        let damaged = spool.damaged();
        if damaged.regions > 0 {
            report.refused.push(format!(
                "{} damaged spool region(s) ({} bytes) could not be read; kept in {}",
                damaged.regions,
                damaged.bytes,
                spool.dir().join("damaged").display()
            ));
        }
    }
    Ok(report)
}

/// Hands a batch on: to the spool, or straight upstream.
async fn take(
    (upstream, spool, deadline): (&Upstream, Option<&Arc<Spool>>, Instant),
    batch: &mut Vec<Value>,
    report: &mut SendReport,
    places: &mut Places,
) -> Result<(), SendError> {
    if batch.is_empty() {
        return Ok(());
    }
    let readings = std::mem::take(batch);
    if let Some(spool) = spool {
        let records = spool_records(&readings);
        let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        return match spool.append_all(&payloads) {
            Ok(()) => Ok(()),
            Err(SpoolError::Full { used, max }) => {
                report.undelivered += readings.len();
                places.forget_all(&readings, &[]);
                report.stopped.get_or_insert(format!(
                    "the spool is full ({used} of {max} bytes); readings were not taken"
                ));
                Ok(())
            }
            Err(err) => Err(err.into()),
        };
    }
    let settled = upstream.deliver_retrying(&readings, Some(deadline)).await;
    if !settled.left.is_empty() {
        report.undelivered += settled.left.len();
        report.stopped = settled.why.clone();
    }
    // Every reading here is settled: committed, refused, or given up on.
    let named = record(
        report,
        &readings,
        settled.refused,
        settled.left.len(),
        places,
    );
    places.forget_all(&readings, &named);
    Ok(())
}

/// A batch as spool records: JSON arrays of readings, each about `RECORD_BYTES` at most.
fn spool_records(readings: &[Value]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    for reading in readings {
        let json = serde_json::to_vec(reading).expect("JSON values serialize");
        if !record.is_empty() && record.len() + json.len() + 2 > RECORD_BYTES {
            record.push(b']');
            records.push(std::mem::take(&mut record));
        }
        record.push(if record.is_empty() { b'[' } else { b',' });
        record.extend_from_slice(&json);
    }
    if !record.is_empty() {
        record.push(b']');
        records.push(record);
    }
    records
}

/// Sends what the spool holds, oldest first, until it is empty or (with a deadline)
/// the deadline passes; without one, until the upstream does not take a batch at once.
async fn drain(
    upstream: &Upstream,
    spool: &Arc<Spool>,
    batch: usize,
    deadline: Option<Instant>,
    pacing: &mut Pacing,
    report: &mut SendReport,
    places: &mut Places,
) -> Result<(), SendError> {
    loop {
        match forward_next(upstream, spool, batch, 1, deadline, pacing).await? {
            Forwarded::Nothing => return Ok(()),
            Forwarded::Batch {
                readings,
                refused,
                left,
                unreadable,
                ..
            } => {
                let named = record(report, &readings, refused, left, places);
                // Which readings were left (to go again) is not said: the batch's places
                // stay, within MAX_PLACES, so that a left one refused later is named.
                if left == 0 {
                    places.forget_all(&readings, &named);
                }
                // A bug, said once per record.
                for _ in 0..unreadable {
                    report
                        .refused
                        .push("a spooled record is not a reading".to_owned());
                }
            }
            // Over the device's rate: again when the upstream said, within the deadline.
            Forwarded::NotTaken {
                why,
                retry_after,
                rate_limited: true,
            } => {
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                match deadline {
                    Some(deadline) if Instant::now() + wait <= deadline => {
                        tokio::time::sleep(wait).await;
                    }
                    Some(_) => {
                        report.stopped = Some(why);
                        return Ok(());
                    }
                    None => return Ok(()),
                }
            }
            Forwarded::NotTaken { why, .. } => {
                // Still spooled: the next attempt (or the next run) sends it.
                if deadline.is_some() {
                    report.stopped = Some(why);
                }
                return Ok(());
            }
        }
    }
}

/// Counts a batch's outcome: taken but for the `refused` (for good) and `left` ones.
/// Returns the indices of the refused readings, whose places are taken to name them.
fn record(
    report: &mut SendReport,
    readings: &[Value],
    refused: Vec<Refused>,
    left: usize,
    places: &mut Places,
) -> Vec<usize> {
    report.committed += readings.len().saturating_sub(refused.len() + left);
    let mut named = Vec::with_capacity(refused.len());
    for refusal in refused {
        let Some(reading) = readings.get(refusal.index) else {
            report
                .refused
                .push(format!("reading: {}: {}", refusal.reason, refusal.message));
            continue;
        };
        named.push(refusal.index);
        let place = places
            .take(reading)
            .map_or_else(String::new, |place| format!("{place}: "));
        report.refused.push(format!(
            "{place}reading {}: {}: {}",
            describe(reading),
            refusal.reason,
            refusal.message
        ));
    }
    named
}

/// Where this run's readings came from (file and line), to name a refused one. Spooled
/// readings come back as JSON alone, so a reading is found by its content; identical
/// readings take their places in input order.
#[derive(Default)]
struct Places {
    by_content: HashMap<u64, VecDeque<Arc<str>>>,
    count: usize,
}

/// Most readings whose places are kept: beyond that (an upstream down during a long
/// backfill) a refused reading is named by its id alone, and memory stays bounded.
const MAX_PLACES: usize = 100_000;

impl Places {
    fn key(reading: &Value) -> u64 {
        let json = serde_json::to_vec(reading).expect("JSON values serialize");
        let mut hasher = DefaultHasher::new();
        json.hash(&mut hasher);
        hasher.finish()
    }

    fn remember(&mut self, reading: &Value, place: &Arc<str>) {
        if self.count < MAX_PLACES {
            let places = self.by_content.entry(Self::key(reading)).or_default();
            places.push_back(Arc::clone(place));
            self.count += 1;
        }
    }

    fn take(&mut self, reading: &Value) -> Option<Arc<str>> {
        let key = Self::key(reading);
        let places = self.by_content.get_mut(&key)?;
        let place = places.pop_front();
        if places.is_empty() {
            self.by_content.remove(&key);
        }
        self.count -= usize::from(place.is_some());
        place
    }

    /// Forgets the places of settled readings but the `named` ones, already taken.
    fn forget_all(&mut self, readings: &[Value], named: &[usize]) {
        for (index, reading) in readings.iter().enumerate() {
            if !named.contains(&index) {
                self.take(reading);
            }
        }
    }
}

/// A reading named for a person: its id, else its timestamp.
fn describe(reading: &Value) -> String {
    match (&reading["id"], &reading["ts"]) {
        (Value::String(id), _) => format!("id {id:?}"),
        (_, Value::Null) => "(no id, no ts)".to_owned(),
        (_, ts) => format!("at ts {ts}"),
    }
}

/// The readings on one input line: an object, or an array of objects.
fn readings_of(text: &str, place: &str, report: &mut SendReport) -> Option<Vec<Value>> {
    let skip = |report: &mut SendReport, why: &str| {
        report.skipped.push(format!("{place}: {why}"));
        None
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(reading)) => Some(vec![Value::Object(reading)]),
        Ok(Value::Array(items)) if items.iter().all(Value::is_object) => Some(items),
        Ok(_) => skip(report, "not a JSON object (or an array of objects)"),
        Err(err) => skip(report, &format!("not JSON: {err}")),
    }
}

/// One input line and where it came from.
struct Line {
    text: String,
    place: String,
}

/// What the input thread hands over.
enum Input {
    Line(Line),
    Skipped(String),
    Failed(String),
}

/// The input files one after the other, or stdin.
struct Inputs {
    sources: Vec<(String, Box<dyn BufRead + Send>)>,
    line_no: usize,
}

impl Inputs {
    fn new(paths: &[PathBuf]) -> Result<Inputs, SendError> {
        let mut sources: Vec<(String, Box<dyn BufRead + Send>)> = Vec::new();
        if paths.is_empty() {
            let stdin = std::io::BufReader::new(std::io::stdin());
            sources.push(("stdin".into(), Box::new(stdin)));
        }
        for path in paths {
            let file = std::fs::File::open(path)
                .map_err(|err| SendError::Input(format!("{}: {err}", path.display())))?;
            let reader = std::io::BufReader::new(file);
            sources.push((path.display().to_string(), Box::new(reader)));
        }
        sources.reverse();
        Ok(Inputs {
            sources,
            line_no: 0,
        })
    }

    /// Reads on a thread of its own (stdin blocks), handing lines over as they come:
    /// a device piping readings in is served as it writes them.
    fn spawn(mut self) -> tokio::sync::mpsc::Receiver<Input> {
        let (sender, receiver) = tokio::sync::mpsc::channel(1024);
        std::thread::spawn(move || {
            while let Some(input) = self.next_input() {
                if sender.blocking_send(input).is_err() {
                    return;
                }
            }
        });
        receiver
    }

    /// The next non-blank line, a line that is not UTF-8 or too long, or a read error;
    /// `None` at the end.
    fn next_input(&mut self) -> Option<Input> {
        loop {
            let (name, source) = self.sources.last_mut()?;
            let mut bytes = Vec::new();
            // One byte past the cap tells a line too long, without holding all of it.
            let cap = MAX_LINE_BYTES as u64 + 1;
            let read = Read::take(&mut *source, cap).read_until(b'\n', &mut bytes);
            let too_long = bytes.len() > MAX_LINE_BYTES && bytes.last() != Some(&b'\n');
            let read = match read {
                Ok(n) if too_long => source.skip_until(b'\n').map(|rest| n + rest),
                other => other,
            };
            match read {
                Ok(0) => {
                    self.sources.pop();
                    self.line_no = 0;
                    continue;
                }
                Ok(_) => {}
                Err(err) => {
                    let why = format!("reading {name}: {err}");
                    self.sources.clear();
                    return Some(Input::Failed(why));
                }
            }
            self.line_no += 1;
            let place = format!("{name} line {}", self.line_no);
            if too_long {
                return Some(Input::Skipped(format!(
                    "{place}: longer than {MAX_LINE_BYTES} bytes; not read"
                )));
            }
            return match String::from_utf8(bytes) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => Some(Input::Line(Line { text, place })),
                Err(_) => Some(Input::Skipped(format!("{place}: not UTF-8"))),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_readings_or_reported() {
        let mut report = SendReport::default();
        let one = readings_of(r#"{"ts": 1, "metrics": {"t": 1}}"#, "l1", &mut report);
        assert_eq!(one.unwrap().len(), 1);
        let two = readings_of(r#"[{"id": "a"}, {"id": "b"}]"#, "l2", &mut report);
        assert_eq!(two.unwrap().len(), 2);
        assert!(readings_of("[1, 2]", "l3", &mut report).is_none());
        assert!(readings_of("{broken", "l4", &mut report).is_none());
        assert_eq!(report.skipped.len(), 2);
        assert!(
            report.skipped[1].starts_with("l4: not JSON"),
            "{:?}",
            report.skipped
        );
        assert_eq!(report.exit_code(), 1);
    }

    #[test]
    fn a_line_too_long_is_refused_by_number_and_the_next_line_read() {
        let mut input = b"{\"id\": \"a\"}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend_from_slice(b"\n{\"id\": \"c\"}\n");
        // Exactly at the cap: still a line.
        input.extend(std::iter::repeat_n(b' ', MAX_LINE_BYTES - 12));
        input.extend_from_slice(b"{\"id\": \"d\"}\n");
        let mut inputs = Inputs {
            sources: vec![("mem".into(), Box::new(std::io::Cursor::new(input)))],
            line_no: 0,
        };
        let mut seen = Vec::new();
        while let Some(input) = inputs.next_input() {
            seen.push(match input {
                Input::Line(line) => format!("{}: {}", line.place, line.text.trim()),
                Input::Skipped(why) | Input::Failed(why) => why,
            });
        }
        assert_eq!(
            seen,
            [
                "mem line 1: {\"id\": \"a\"}".to_owned(),
                format!("mem line 2: longer than {MAX_LINE_BYTES} bytes; not read"),
                "mem line 3: {\"id\": \"c\"}".to_owned(),
                "mem line 4: {\"id\": \"d\"}".to_owned(),
            ]
        );
    }

    #[test]
    fn a_batch_is_spooled_as_records_of_bounded_size() {
        let readings: Vec<Value> = (0..300)
            .map(|n| serde_json::json!({"id": format!("r-{n}"), "note": "x".repeat(10_000)}))
            .collect();
        let records = spool_records(&readings);
        assert!(records.len() > 1);
        let mut back = Vec::new();
        for record in &records {
            assert!(record.len() <= RECORD_BYTES, "{}", record.len());
            let Value::Array(part) = serde_json::from_slice(record).unwrap() else {
                panic!("a record is an array of readings");
            };
            back.extend(part);
        }
        assert_eq!(back, readings);
        let alone = serde_json::json!({"note": "y".repeat(RECORD_BYTES)});
        assert_eq!(spool_records(std::slice::from_ref(&alone)).len(), 1);
    }

    #[test]
    fn exit_codes_put_lost_readings_first() {
        let mut report = SendReport::default();
        assert_eq!(report.exit_code(), 0);
        report.refused.push("x".into());
        assert_eq!(report.exit_code(), 1);
        report.undelivered = 1;
        assert_eq!(report.exit_code(), 3);
    }

    #[test]
    fn places_name_identical_readings_in_input_order_and_stay_bounded() {
        let reading = serde_json::json!({"ts": 1, "metrics": {"t": 1}});
        let mut places = Places::default();
        places.remember(&reading, &"f line 1".into());
        places.remember(&reading, &"f line 2".into());
        // Back from a spool: the same content, another value.
        let again: Value = serde_json::from_slice(&serde_json::to_vec(&reading).unwrap()).unwrap();
        assert_eq!(places.take(&again).as_deref(), Some("f line 1"));
        places.forget_all(std::slice::from_ref(&reading), &[]);
        assert_eq!(places.take(&reading), None);
        assert_eq!(places.count, 0);
        for n in 0..MAX_PLACES + 5 {
            places.remember(&serde_json::json!({ "n": n }), &"f".into());
        }
        assert_eq!(places.count, MAX_PLACES);
    }
}
