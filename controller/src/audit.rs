//! The append-only, hash-chained audit log (schema: docs/audit/SCHEMA.md).
//!
//! One JSON object per line in `<dir>/audit.log`, rotated by size to `audit.log.1` (newest) ..
//! `audit.log.<keep>`. Every event carries `seq` and `prev_hash`, the HMAC-SHA256 of the previous
//! event's canonical form, so editing, deleting or reordering a line breaks the chain even across
//! rotated files. An event is written with one `write` and `fdatasync`ed before `append` returns, so
//! an acknowledged event survives a `kill -9` and a crash can at worst leave one unacknowledged torn
//! tail, which the next start moves aside.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const LOG_FILE: &str = "audit.log";
/// `prev_hash` of the very first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Label used to derive the audit key from the bearer token when `AUDIT_HMAC_KEY` is unset.
pub const DERIVED_KEY_LABEL: &[u8] = b"aibox-audit-hmac-v1";

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {path} line {line} is not a valid event ({reason}); run `controller audit verify`")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("audit log is not writable: {0}")]
    Unavailable(String),
    #[error("audit log does not match its head anchor ({0}); events were removed or edited. Run `controller audit verify --expect-head SEQ:HASH` with the anchor from {HEAD_FILE}, and move {HEAD_FILE} aside to start anyway")]
    HeadMismatch(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub use aibox_wire::audit::{AuditEvent, AuditHead, INTENT, INTENT_SEQ};

/// The head anchor beside the log: `<seq>:<hash>` of the newest event written, fixed width.
pub const HEAD_FILE: &str = "audit.head";

/// The canonical form: compact JSON, fields in schema order, metadata keys sorted.
#[allow(
    clippy::expect_used,
    reason = "strings, numbers and a JSON object with string keys: serialising cannot fail"
)]
pub fn canonical(event: &AuditEvent) -> String {
    serde_json::to_string(event).expect("an AuditEvent always serializes")
}

/// What a caller asks to record; `seq`, `ts` and `prev_hash` are assigned by the log.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub action: String,
    pub resource: String,
    pub actor: String,
    pub result: String,
    pub correlation_id: String,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub key: Vec<u8>,
    pub max_bytes: u64,
    pub keep: usize,
    /// How often the running controller compares the log with its head anchor.
    pub check_interval: std::time::Duration,
}

/// The key used when `AUDIT_HMAC_KEY` is not set: HMAC-SHA256(token, "aibox-audit-hmac-v1").
#[allow(clippy::expect_used, reason = "HMAC takes keys of any length")]
pub fn derive_key(token: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("hmac takes any key size");
    mac.update(DERIVED_KEY_LABEL);
    mac.finalize().into_bytes().to_vec()
}

#[allow(clippy::expect_used, reason = "HMAC takes keys of any length")]
pub fn event_hash(key: &[u8], event: &AuditEvent) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key size");
    mac.update(canonical(event).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn now_ts() -> String {
    let now = OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

/// Why a log whose newest event is `found` cannot be the log anchored at `anchor`.
pub fn head_mismatch(anchor: &AuditHead, found: &AuditHead) -> Option<String> {
    if found.seq < anchor.seq {
        Some(format!(
            "the log ends at seq {} but its head anchor is seq {}: {} event(s) missing from the end",
            found.seq,
            anchor.seq,
            anchor.seq - found.seq
        ))
    } else if found.seq == anchor.seq && found.hash != anchor.hash {
        Some(format!(
            "event seq {} does not hash to the anchor's hash (it was edited or replaced)",
            anchor.seq
        ))
    } else {
        None
    }
}

fn read_head(dir: &Path) -> Option<AuditHead> {
    let text = fs::read_to_string(dir.join(HEAD_FILE)).ok()?;
    AuditHead::parse_arg(&text)
}

/// Overwrites the anchor in place (fixed width, one write). Not fsynced: the log line it follows
/// is, so after a crash the anchor can only lag the log, which the checks allow.
fn store_head(dir: &Path, head: &AuditHead) {
    use std::os::unix::fs::FileExt;
    let line = format!("{:020}:{}\n", head.seq, head.hash);
    let path = dir.join(HEAD_FILE);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .and_then(|f| f.write_all_at(line.as_bytes(), 0));
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "could not update the audit head anchor");
    }
}

/// `audit.log.N` paths that exist, oldest (highest N) first, then `audit.log`.
fn log_files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("audit.log.")
            .and_then(|s| s.parse::<u64>().ok())
        {
            rotated.push((n, entry.path()));
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let current = dir.join(LOG_FILE);
    if current.exists() {
        files.push(current);
    }
    Ok(files)
}

fn read_all(path: &Path) -> Result<Vec<u8>, AuditError> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(io_err(path))?;
    Ok(buf)
}

/// Complete (newline-terminated) lines; a trailing fragment is a write still in progress or torn.
fn complete_lines(buf: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    buf[..end].split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

fn parse_event(line: &[u8]) -> Result<AuditEvent, String> {
    serde_json::from_slice::<AuditEvent>(line).map_err(|e| e.to_string())
}

struct Writer {
    file: Option<File>,
    size: u64,
    last_seq: u64,
    /// `prev_hash` for the next event.
    last_hash: String,
    failed: Option<String>,
}

pub struct AuditLog {
    cfg: AuditConfig,
    writer: Mutex<Writer>,
}

impl AuditLog {
    /// Opens (creating if needed) the log, moving a torn tail aside and finding the chain head.
    pub fn open(cfg: AuditConfig) -> Result<AuditLog, AuditError> {
        fs::create_dir_all(&cfg.dir).map_err(io_err(&cfg.dir))?;
        let writer = Self::recover(&cfg)?;
        Ok(AuditLog {
            cfg,
            writer: Mutex::new(writer),
        })
    }

    fn current_path(cfg: &AuditConfig) -> PathBuf {
        cfg.dir.join(LOG_FILE)
    }

    fn recover(cfg: &AuditConfig) -> Result<Writer, AuditError> {
        let path = Self::current_path(cfg);
        if let Ok(meta) = fs::metadata(&path) {
            if !meta.is_file() {
                return Err(AuditError::Unavailable(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let buf = read_all(&path)?;
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < buf.len() {
            // A write that never completed, so never acknowledged: keep it for forensics, outside the chain.
            let torn = cfg.dir.join(format!(
                "audit.torn.{}",
                OffsetDateTime::now_utc().unix_timestamp_nanos()
            ));
            fs::write(&torn, &buf[complete..]).map_err(io_err(&torn))?;
            file.set_len(complete as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            tracing::warn!(moved_to = %torn.display(), bytes = buf.len() - complete, "audit log had a torn last line; moved it aside");
        }
        let mut head: Option<AuditEvent> = None;
        for file_path in log_files(&cfg.dir)?.iter().rev() {
            let data = if *file_path == path {
                buf[..complete].to_vec()
            } else {
                read_all(file_path)?
            };
            let lines: Vec<&[u8]> = complete_lines(&data).collect();
            if let Some(last) = lines.last() {
                let event = parse_event(last).map_err(|reason| AuditError::Corrupt {
                    path: file_path.clone(),
                    line: lines.len(),
                    reason,
                })?;
                head = Some(event);
                break;
            }
        }
        let (last_seq, last_hash) = match head {
            Some(ev) => (ev.seq, event_hash(&cfg.key, &ev)),
            None => (0, GENESIS_HASH.to_string()),
        };
        // The anchor is written after each event, so it may lag the log but never lead it.
        if let Some(anchor) = read_head(&cfg.dir) {
            let found = AuditHead {
                seq: last_seq,
                hash: last_hash.clone(),
            };
            if let Some(why) = head_mismatch(&anchor, &found) {
                return Err(AuditError::HeadMismatch(why));
            }
        }
        Ok(Writer {
            file: Some(file),
            size: complete as u64,
            last_seq,
            last_hash,
            failed: None,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave a half-applied state worth refusing over:
        // the on-disk log is re-read on recovery anyway.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a failed write, proves the log works again by writing an `audit_recovered` event
    /// (which also records the failure); until that succeeds every action is refused.
    fn heal(&self, w: &mut Writer) -> Result<(), AuditError> {
        let Some(reason) = w.failed.clone() else {
            return Ok(());
        };
        let refused =
            |e: AuditError| AuditError::Unavailable(format!("{reason}; still failing: {e}"));
        *w = Self::recover(&self.cfg).map_err(refused)?;
        let mut metadata = Map::new();
        metadata.insert("error".into(), Value::String(reason.clone()));
        let notice = NewEvent {
            action: "audit_recovered".into(),
            resource: LOG_FILE.into(),
            actor: "controller".into(),
            result: "ok".into(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            metadata,
        };
        if let Err(e) = self.write_event(w, notice) {
            w.failed = Some(reason.clone());
            return Err(refused(e));
        }
        tracing::warn!(after = %reason, "audit log writable again");
        Ok(())
    }

    /// Whether an action may go ahead: the log must be writable (fail closed).
    pub fn ready(&self) -> Result<(), AuditError> {
        let mut w = self.lock();
        self.heal(&mut w)
    }

    /// Appends one event; returns only once it is on disk.
    pub fn append(&self, new: NewEvent) -> Result<AuditEvent, AuditError> {
        let mut w = self.lock();
        self.heal(&mut w)?;
        self.write_event(&mut w, new)
            .inspect_err(|e| w.failed = Some(e.to_string()))
    }

    fn write_event(&self, w: &mut Writer, new: NewEvent) -> Result<AuditEvent, AuditError> {
        let event = AuditEvent {
            seq: w.last_seq + 1,
            ts: now_ts(),
            action: new.action,
            resource: new.resource,
            actor: new.actor,
            result: new.result,
            correlation_id: new.correlation_id,
            metadata: new.metadata,
            prev_hash: w.last_hash.clone(),
        };
        let mut line = canonical(&event);
        line.push('\n');
        self.write_line(w, line.as_bytes())?;
        w.last_seq = event.seq;
        w.last_hash = event_hash(&self.cfg.key, &event);
        store_head(
            &self.cfg.dir,
            &AuditHead {
                seq: w.last_seq,
                hash: w.last_hash.clone(),
            },
        );
        Ok(event)
    }

    fn write_line(&self, w: &mut Writer, line: &[u8]) -> Result<(), AuditError> {
        if w.size > 0 && w.size + line.len() as u64 > self.cfg.max_bytes {
            self.rotate(w)?;
        }
        let path = Self::current_path(&self.cfg);
        let file = w
            .file
            .as_mut()
            .ok_or_else(|| AuditError::Unavailable("audit log is closed".into()))?;
        let written = file.write_all(line).and_then(|_| file.sync_data());
        if let Err(e) = written {
            // Never leave a partial line behind: cut back to the last complete event.
            let _ = file.set_len(w.size);
            return Err(io_err(&path)(e));
        }
        w.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&self, w: &mut Writer) -> Result<(), AuditError> {
        let dir = &self.cfg.dir;
        let current = Self::current_path(&self.cfg);
        if let Some(f) = w.file.take() {
            f.sync_all().map_err(io_err(&current))?;
        }
        let numbered = |n: usize| dir.join(format!("{LOG_FILE}.{n}"));
        let oldest = numbered(self.cfg.keep);
        if oldest.exists() {
            fs::remove_file(&oldest).map_err(io_err(&oldest))?;
        }
        for n in (1..self.cfg.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                fs::rename(&from, numbered(n + 1)).map_err(io_err(&from))?;
            }
        }
        fs::rename(&current, numbered(1)).map_err(io_err(&current))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)
            .map_err(io_err(&current))?;
        // Make the renames and the new file durable before events land in it.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        w.file = Some(file);
        w.size = 0;
        Ok(())
    }

    /// Open handles on every log file (oldest first) under the writer lock, so a concurrent
    /// rotation cannot make a reader skip or repeat a file.
    fn snapshot(&self) -> Result<Vec<(PathBuf, File)>, AuditError> {
        let _w = self.lock();
        log_files(&self.cfg.dir)?
            .into_iter()
            .map(|p| File::open(&p).map(|f| (p.clone(), f)).map_err(io_err(&p)))
            .collect()
    }

    /// Newest-first events matching `filter`, at most `limit`; each with its stored line.
    pub fn query(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<(AuditEvent, String)>, AuditError> {
        let mut out = Vec::new();
        for (path, mut file) in self.snapshot()?.into_iter().rev() {
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).map_err(io_err(&path))?;
            for line in complete_lines(&buf).rev() {
                let Ok(event) = parse_event(line) else {
                    continue;
                };
                if let Some(since) = filter.since {
                    match OffsetDateTime::parse(&event.ts, &Rfc3339) {
                        Ok(ts) if ts >= since => {}
                        // Newest first: everything further back is older still.
                        _ => return Ok(out),
                    }
                }
                if filter.matches(&event) {
                    out.push((event, String::from_utf8_lossy(line).into_owned()));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The newest event written: the anchor a shortened log is caught against.
    pub fn head(&self) -> AuditHead {
        let w = self.lock();
        AuditHead {
            seq: w.last_seq,
            hash: w.last_hash.clone(),
        }
    }

    /// Compares the newest event on disk with the head this process wrote; `Some(why)` when the
    /// log was cut short or its last event edited behind the controller's back.
    pub fn self_check(&self) -> Result<Option<String>, AuditError> {
        let w = self.lock();
        let anchor = AuditHead {
            seq: w.last_seq,
            hash: w.last_hash.clone(),
        };
        let mut found = AuditHead {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        };
        for path in log_files(&self.cfg.dir)?.iter().rev() {
            let buf = read_all(path)?;
            let last = complete_lines(&buf).next_back().map(<[u8]>::to_vec);
            if let Some(last) = last {
                match parse_event(&last) {
                    Ok(ev) => {
                        found = AuditHead {
                            seq: ev.seq,
                            hash: event_hash(&self.cfg.key, &ev),
                        }
                    }
                    Err(e) => {
                        return Ok(Some(format!(
                            "the last line of {} is not an event: {e}",
                            path.display()
                        )))
                    }
                }
                break;
            }
        }
        Ok(head_mismatch(&anchor, &found))
    }

    /// Intent events that no outcome event names (by `metadata.intent_seq`), oldest first: actions
    /// whose outcome was never written because the process stopped mid-action.
    pub fn open_intents(&self) -> Result<Vec<AuditEvent>, AuditError> {
        let mut open = std::collections::BTreeMap::new();
        for (path, mut file) in self.snapshot()? {
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).map_err(io_err(&path))?;
            for line in complete_lines(&buf) {
                // Most lines are neither; skip parsing them.
                let text = String::from_utf8_lossy(line);
                if !text.contains("\"result\":\"intent\"") && !text.contains(INTENT_SEQ) {
                    continue;
                }
                let Ok(event) = parse_event(line) else {
                    continue;
                };
                if event.result == INTENT {
                    open.insert(event.seq, event);
                } else if let Some(seq) = event.metadata.get(INTENT_SEQ).and_then(Value::as_u64) {
                    open.remove(&seq);
                }
            }
        }
        Ok(open.into_values().collect())
    }

    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        let files = self
            .snapshot()?
            .into_iter()
            .map(|(path, mut f)| {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).map_err(io_err(&path))?;
                Ok((path, buf))
            })
            .collect::<Result<Vec<_>, AuditError>>()?;
        Ok(verify_files(&self.cfg.key, &files))
    }
}

#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub since: Option<OffsetDateTime>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub actor: Option<String>,
}

impl AuditFilter {
    fn matches(&self, e: &AuditEvent) -> bool {
        self.action.as_ref().is_none_or(|a| *a == e.action)
            && self.resource.as_ref().is_none_or(|r| *r == e.resource)
            && self.actor.as_ref().is_none_or(|a| *a == e.actor)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BrokenLink {
    /// The seq of the event where the chain breaks, when the line could be read.
    pub seq: Option<u64>,
    pub file: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub events: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub head_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken: Option<BrokenLink>,
}

/// Whether the log in `dir` can be the log anchored at `expected`: it must reach seq
/// `expected.seq` and that event must hash to `expected.hash`. `Some(why)` when not.
pub fn head_in_dir(
    dir: &Path,
    key: &[u8],
    expected: &AuditHead,
) -> Result<Option<String>, AuditError> {
    let mut last = AuditHead {
        seq: 0,
        hash: GENESIS_HASH.to_string(),
    };
    for path in log_files(dir)? {
        let buf = read_all(&path)?;
        for line in complete_lines(&buf) {
            let Ok(event) = parse_event(line) else {
                continue;
            };
            let found = AuditHead {
                seq: event.seq,
                hash: event_hash(key, &event),
            };
            if found.seq == expected.seq {
                return Ok(head_mismatch(expected, &found));
            }
            last = found;
        }
    }
    Ok(head_mismatch(expected, &last).or_else(|| {
        (expected.seq > 0).then(|| format!("no event with seq {} in the log", expected.seq))
    }))
}

/// Verifies the chain in a directory (used by `controller audit verify`, without a running server).
pub fn verify_dir(dir: &Path, key: &[u8]) -> Result<VerifyReport, AuditError> {
    let files = log_files(dir)?
        .into_iter()
        .map(|p| read_all(&p).map(|b| (p, b)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(verify_files(key, &files))
}

/// Walks files oldest to newest and reports the first event whose link to its predecessor fails.
pub fn verify_files(key: &[u8], files: &[(PathBuf, Vec<u8>)]) -> VerifyReport {
    let mut report = VerifyReport {
        ok: true,
        events: 0,
        first_seq: None,
        last_seq: None,
        head_hash: None,
        note: None,
        broken: None,
    };
    let mut prev: Option<(u64, String)> = None;
    for (path, buf) in files {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fail = |seq: Option<u64>, line: usize, reason: String, report: &mut VerifyReport| {
            report.ok = false;
            report.broken = Some(BrokenLink {
                seq,
                file: file.clone(),
                line,
                reason,
            });
        };
        if !buf.is_empty() && buf.last() != Some(&b'\n') {
            let line = buf.iter().filter(|b| **b == b'\n').count() + 1;
            fail(
                None,
                line,
                "incomplete last line (torn write)".into(),
                &mut report,
            );
            return report;
        }
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
            let line_no = i + 1;
            if buf.is_empty() {
                break;
            }
            if raw.is_empty() {
                fail(None, line_no, "empty line".into(), &mut report);
                return report;
            }
            let event = match parse_event(raw) {
                Ok(e) => e,
                Err(reason) => {
                    fail(
                        None,
                        line_no,
                        format!("not a valid event: {reason}"),
                        &mut report,
                    );
                    return report;
                }
            };
            match &prev {
                None => {
                    if event.seq == 1 {
                        if event.prev_hash != GENESIS_HASH {
                            fail(
                                Some(1),
                                line_no,
                                "first event does not start the chain".into(),
                                &mut report,
                            );
                            return report;
                        }
                    } else {
                        report.note = Some(format!(
                            "history before seq {} was rotated away; the chain is anchored at that event",
                            event.seq
                        ));
                    }
                    report.first_seq = Some(event.seq);
                }
                Some((prev_seq, prev_hash)) => {
                    if event.seq != prev_seq + 1 {
                        fail(
                            Some(event.seq),
                            line_no,
                            format!(
                                "expected seq {} after seq {prev_seq}, found seq {} (event missing or reordered)",
                                prev_seq + 1,
                                event.seq
                            ),
                            &mut report,
                        );
                        return report;
                    }
                    if event.prev_hash != *prev_hash {
                        fail(
                            Some(event.seq),
                            line_no,
                            format!("prev_hash does not match event seq {prev_seq} (that event was altered)"),
                            &mut report,
                        );
                        return report;
                    }
                }
            }
            let hash = event_hash(key, &event);
            report.events += 1;
            report.last_seq = Some(event.seq);
            report.head_hash = Some(hash.clone());
            prev = Some((event.seq, hash));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            let p = std::env::temp_dir().join(format!("controller-audit-{}", uuid::Uuid::new_v4()));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn cfg(dir: &Path, max_bytes: u64, keep: usize) -> AuditConfig {
        AuditConfig {
            dir: dir.to_path_buf(),
            key: b"test-key".to_vec(),
            max_bytes,
            keep,
            check_interval: std::time::Duration::from_secs(60),
        }
    }

    fn ev(action: &str, resource: &str) -> NewEvent {
        NewEvent {
            action: action.into(),
            resource: resource.into(),
            actor: "cli".into(),
            result: "ok".into(),
            correlation_id: "c-1".into(),
            metadata: Map::new(),
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn chain_links_each_event_to_the_previous() {
        let t = TempDir::new();
        let log = AuditLog::open(cfg(&t.0, 1 << 20, 3)).unwrap();
        let a = log.append(ev("start", "web")).unwrap();
        let b = log.append(ev("stop", "web")).unwrap();
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.prev_hash, GENESIS_HASH);
        assert_eq!(b.prev_hash, event_hash(b"test-key", &a));
        assert!(a.ts.ends_with('Z') && a.ts.len() == 24, "{}", a.ts);
        let report = log.verify().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.events, 2);
        // The chain continues after a restart.
        drop(log);
        let log = AuditLog::open(cfg(&t.0, 1 << 20, 3)).unwrap();
        let c = log.append(ev("restart", "web")).unwrap();
        assert_eq!(c.seq, 3);
        assert_eq!(c.prev_hash, event_hash(b"test-key", &b));
        assert!(verify_dir(&t.0, b"test-key").unwrap().ok);
        assert!(
            !verify_dir(&t.0, b"other-key").unwrap().ok,
            "a different key must not verify"
        );
    }

    fn tampered(mutate: impl FnOnce(&mut Vec<String>)) -> VerifyReport {
        let t = TempDir::new();
        let log = AuditLog::open(cfg(&t.0, 1 << 20, 3)).unwrap();
        for i in 0..5 {
            log.append(ev("restart", &format!("svc{i}"))).unwrap();
        }
        let path = t.0.join(LOG_FILE);
        let mut l = lines(&path);
        mutate(&mut l);
        fs::write(&path, l.join("\n") + "\n").unwrap();
        verify_dir(&t.0, b"test-key").unwrap()
    }

    #[test]
    fn edit_delete_and_reorder_are_detected() {
        let edited = tampered(|l| l[2] = l[2].replace("svc2", "svcX"));
        let b = edited.broken.unwrap();
        assert_eq!((b.seq, b.line), (Some(4), 4), "{}", b.reason);
        let deleted = tampered(|l| {
            l.remove(2);
        });
        let b = deleted.broken.unwrap();
        assert_eq!((b.seq, b.line), (Some(4), 3), "{}", b.reason);
        assert!(b.reason.contains("expected seq 3"), "{}", b.reason);
        let reordered = tampered(|l| l.swap(1, 2));
        assert_eq!(reordered.broken.unwrap().seq, Some(3));
        let garbage = tampered(|l| l[1] = "{not json".into());
        assert_eq!(garbage.broken.unwrap().line, 2);
    }

    #[test]
    fn torn_tail_is_moved_aside_on_open() {
        let t = TempDir::new();
        let log = AuditLog::open(cfg(&t.0, 1 << 20, 3)).unwrap();
        log.append(ev("start", "a")).unwrap();
        drop(log);
        let path = t.0.join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"ts\":\"20").unwrap();
        assert!(!verify_dir(&t.0, b"test-key").unwrap().ok);
        let log = AuditLog::open(cfg(&t.0, 1 << 20, 3)).unwrap();
        assert_eq!(log.append(ev("stop", "a")).unwrap().seq, 2);
        assert!(verify_dir(&t.0, b"test-key").unwrap().ok);
        let torn: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("audit.torn."))
            .collect();
        assert_eq!(torn.len(), 1);
    }

    #[test]
    fn rotation_under_concurrent_writers_keeps_every_event_and_the_chain() {
        let t = TempDir::new();
        let log = Arc::new(AuditLog::open(cfg(&t.0, 2048, 100)).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| log.append(ev("logs", &format!("w{w}-{i}"))).unwrap().seq)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        seqs.sort();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        let files = log_files(&t.0).unwrap();
        assert!(files.len() > 5, "expected rotation, got {files:?}");
        for f in &files {
            assert!(
                fs::metadata(f).unwrap().len() <= 2048,
                "{f:?} exceeds max_bytes"
            );
        }
        let report = log.verify().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(
            (report.events, report.first_seq, report.last_seq),
            (200, Some(1), Some(200))
        );
        let newest = log.query(&AuditFilter::default(), 1000).unwrap();
        assert_eq!(newest.len(), 200);
        assert_eq!(newest[0].0.seq, 200);
    }

    #[test]
    fn keep_drops_oldest_files_and_verify_anchors_at_the_first_kept_event() {
        let t = TempDir::new();
        let log = AuditLog::open(cfg(&t.0, 1024, 2)).unwrap();
        for i in 0..60 {
            log.append(ev("start", &format!("s{i}"))).unwrap();
        }
        assert!(!t.0.join("audit.log.3").exists());
        assert!(t.0.join("audit.log.2").exists());
        let report = verify_dir(&t.0, b"test-key").unwrap();
        assert!(report.ok, "{report:?}");
        assert!(report.first_seq.unwrap() > 1);
        assert_eq!(report.last_seq, Some(60));
        assert!(report.note.unwrap().contains("rotated away"));
        // Deleting a whole middle file is a missing link.
        fs::remove_file(t.0.join("audit.log.1")).unwrap();
        assert!(!verify_dir(&t.0, b"test-key").unwrap().ok);
    }

    #[test]
    fn failed_write_leaves_no_partial_line_and_refuses_until_reopened() {
        let t = TempDir::new();
        let log = AuditLog::open(cfg(&t.0, 1 << 20, 3)).unwrap();
        log.append(ev("start", "a")).unwrap();
        {
            let mut w = log.lock();
            w.file = Some(OpenOptions::new().write(true).open("/dev/full").unwrap());
        }
        assert!(log.append(ev("stop", "a")).is_err());
        // The next call reopens the real file and records the failure before anything else.
        log.ready().unwrap();
        assert_eq!(log.append(ev("stop", "a")).unwrap().seq, 3);
        let events: Vec<AuditEvent> = lines(&t.0.join(LOG_FILE))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events[1].action, "audit_recovered");
        assert!(events[1].metadata["error"]
            .as_str()
            .unwrap()
            .contains("No space"));
        assert!(verify_dir(&t.0, b"test-key").unwrap().ok);
    }

    #[test]
    fn refuses_while_rotation_keeps_failing() {
        let t = TempDir::new();
        let log = AuditLog::open(cfg(&t.0, 1024, 1)).unwrap();
        let mut big = ev("start", "a");
        big.metadata
            .insert("pad".into(), Value::String("x".repeat(1000)));
        log.append(big).unwrap();
        // Rotation must delete audit.log.1, which it cannot when that is a directory.
        fs::create_dir(t.0.join("audit.log.1")).unwrap();
        assert!(log.append(ev("stop", "a")).is_err());
        assert!(
            log.ready().is_err(),
            "must refuse while the log cannot be written"
        );
        assert!(log.append(ev("stop", "a")).is_err());
        fs::remove_dir(t.0.join("audit.log.1")).unwrap();
        log.ready().unwrap();
        let next = log.append(ev("stop", "a")).unwrap();
        assert_eq!(next.seq, 3, "seq 2 is the audit_recovered event");
        assert!(verify_dir(&t.0, b"test-key").unwrap().ok);
    }

    #[test]
    fn query_filters_and_since() {
        let t = TempDir::new();
        let log = AuditLog::open(cfg(&t.0, 1 << 20, 3)).unwrap();
        log.append(ev("start", "a")).unwrap();
        log.append(ev("logs", "b")).unwrap();
        log.append(ev("start", "b")).unwrap();
        let f = AuditFilter {
            action: Some("start".into()),
            ..Default::default()
        };
        let got: Vec<u64> = log.query(&f, 10).unwrap().iter().map(|e| e.0.seq).collect();
        assert_eq!(got, vec![3, 1]);
        let future = AuditFilter {
            since: Some(OffsetDateTime::now_utc() + time::Duration::hours(1)),
            ..Default::default()
        };
        assert!(log.query(&future, 10).unwrap().is_empty());
        assert_eq!(log.query(&AuditFilter::default(), 2).unwrap().len(), 2);
    }
}
