//! The network log (DESIGN §7): every decision of a project's proxy, one JSON line each, in
//! `AISTACK_HOME/logs/network-<project>.jsonl`.
//!
//! Writing: [`NetworkLog`] hands entries to a writer thread over a bounded channel, so
//! recording never blocks a proxy connection; when the channel is full the entry is dropped
//! and counted (the writer warns with the count). The writer flushes after each batch it
//! drains, so a reader following the file sees lines promptly, and rotates by size: when a
//! line would take the file past its limit, `network-<project>.jsonl` becomes
//! `network-<project>.jsonl.1` (replacing the older one) and a new file starts. Open one
//! [`NetworkLog`] per file and clone it: two writers of one file would rotate it twice.
//!
//! Reading: [`read`] returns the rotated file's entries and then the current file's, and
//! [`Follower`] returns what was appended since it last looked, across rotations. Both skip a
//! torn last line (a writer killed mid-line) and lines that are not entries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::policy::Decision;

/// The size past which the log rotates, unless [`NetworkLog::open`] is given another.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// How often a [`Follower`] looks for new lines in [`Follower::next`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Entries waiting for the writer at most; more are dropped.
const CHANNEL_CAPACITY: usize = 4096;

/// How long the writer rests after a batch; `--follow` sees a line within about this.
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// [`Entry::decision`] of an allowed request.
pub const ALLOW: &str = "allow";
/// [`Entry::decision`] of a denied request.
pub const DENY: &str = "deny";

/// One proxy decision: one line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When the request arrived: RFC 3339, UTC, milliseconds ([`Entry::now_time`]).
    pub time: String,
    /// Which listener took the request: the network policy's name (a sandbox's, later).
    pub source: String,
    /// The request method: `GET`, `CONNECT`, ….
    pub method: String,
    /// The destination host in canonical form, as the client named it.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The address dialled (or the one that decided a denial); none when nothing resolved.
    pub address: Option<IpAddr>,
    /// What decided: `allow *.example.com`, `block list 127.0.0.0/8 (127.0.0.1)`,
    /// `default deny`, ….
    pub rule: String,
    /// [`ALLOW`] or [`DENY`].
    pub decision: String,
    /// The HTTP status the client got: 200 for an established CONNECT, 403 when denied, 502
    /// when the upstream failed, ….
    pub status: u16,
    /// Bytes from the client to the upstream.
    pub bytes_up: u64,
    /// Bytes from the upstream to the client.
    pub bytes_down: u64,
    /// Whether the proxy intercepted TLS (to inject credentials).
    pub intercepted: bool,
    /// Why the exchange failed, briefly (`upstream reset`); absent when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Entry {
    /// Now, as [`Entry::time`] has it: `2026-12-02T04:30:00.123Z`.
    pub fn now_time() -> String {
        Entry::time_at(SystemTime::now())
    }

    /// `time` as [`Entry::time`] has it.
    pub fn time_at(time: SystemTime) -> String {
        humantime::format_rfc3339_millis(time).to_string()
    }

    /// Whether the request was allowed.
    pub fn allowed(&self) -> bool {
        self.decision == ALLOW
    }
}

/// [`Entry::decision`] for a policy decision.
pub fn decision(decision: Decision) -> &'static str {
    match decision {
        Decision::Allow => ALLOW,
        Decision::Deny => DENY,
    }
}

/// The log file of `project` in the logs directory: `network-<project>.jsonl`.
pub fn path(logs_dir: &Path, project: &str) -> PathBuf {
    logs_dir.join(format!("network-{project}.jsonl"))
}

/// The rotated file beside `path`: `<path>.1`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

enum Message {
    Entry(Box<Entry>),
    Flush(oneshot::Sender<()>),
}

/// The writing end of a network log; clones share one writer.
#[derive(Debug, Clone)]
pub struct NetworkLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    sender: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

impl NetworkLog {
    /// Opens (creating it and its directory) the log at `path` for appending, rotating it
    /// past `max_bytes`, and starts its writer thread, which ends when the last clone is
    /// dropped.
    pub fn open(path: PathBuf, max_bytes: u64) -> io::Result<NetworkLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        let mut size = file.metadata()?.len();
        // A writer killed mid-line left a torn line: end it, so the next entry stays whole.
        if size > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, size - 1)?;
            if last[0] != b'\n' {
                (&file).write_all(b"\n")?;
                size += 1;
            }
        }
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            path: path.clone(),
            max_bytes,
            file: Some(BufWriter::new(file)),
            size,
            dropped: Arc::clone(&dropped),
            reported: 0,
        };
        std::thread::Builder::new()
            .name("aistack-netlog".to_owned())
            .spawn(move || writer.run(receiver))?;
        Ok(NetworkLog {
            inner: Arc::new(Inner {
                path,
                sender,
                dropped,
            }),
        })
    }

    /// Records one decision; never waits. When the writer is this far behind the entry is
    /// dropped (and counted in [`NetworkLog::dropped`]).
    pub fn record(&self, entry: Entry) {
        if self
            .inner
            .sender
            .try_send(Message::Entry(Box::new(entry)))
            .is_err()
        {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every entry recorded before this call is written and flushed.
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.sender.send(Message::Flush(reply)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Entries dropped since the log was opened because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // Readable too, to look at the last byte of an existing file.
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    max_bytes: u64,
    /// None after an error, until it reopens.
    file: Option<BufWriter<File>>,
    size: u64,
    dropped: Arc<AtomicU64>,
    /// `dropped` when last warned about.
    reported: u64,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Message>) {
        let mut replies = Vec::new();
        while let Some(first) = receiver.blocking_recv() {
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Entry(entry) => self.write(&entry),
                    Message::Flush(reply) => replies.push(reply),
                }
                next = receiver.try_recv().ok();
            }
            self.flush();
            self.report_drops();
            for reply in replies.drain(..) {
                let _ = reply.send(());
            }
            // Entries recorded meanwhile queue up for the next batch without waking this
            // thread: the wake-up is a system call on the path of every proxied response.
            std::thread::sleep(BATCH_INTERVAL);
        }
        self.flush();
        self.report_drops();
    }

    fn write(&mut self, entry: &Entry) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "Cannot encode a network log entry: {e}"
                );
                return;
            }
        };
        line.push(b'\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate();
        }
        if self.file.is_none() {
            match open_append(&self.path) {
                Ok(file) => {
                    self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(BufWriter::new(file));
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "Cannot open the network log: {e}");
                    return;
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        match file.write_all(&line) {
            Ok(()) => self.size += len,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "Cannot write the network log: {e}");
                // Reopen for the next entry rather than append after a partial write.
                self.file = None;
            }
        }
    }

    /// Moves the file to `.1` and starts a new one. A failed rename keeps appending to the
    /// old file (and tries again after another `max_bytes`) rather than losing entries.
    fn rotate(&mut self) {
        self.flush();
        let old = rotated(&self.path);
        if let Err(e) = fs::rename(&self.path, &old) {
            tracing::warn!(path = %self.path.display(), "Cannot rotate the network log: {e}");
            self.size = 0;
            return;
        }
        self.file = None;
        match open_append(&self.path) {
            Ok(file) => {
                self.file = Some(BufWriter::new(file));
                self.size = 0;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "Cannot open the network log: {e}");
            }
        }
    }

    fn flush(&mut self) {
        if let Some(file) = self.file.as_mut()
            && let Err(e) = file.flush()
        {
            tracing::warn!(path = %self.path.display(), "Cannot write the network log: {e}");
            self.file = None;
        }
    }

    fn report_drops(&mut self) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > self.reported {
            tracing::warn!(
                path = %self.path.display(),
                "Dropped {} network log entries: the writer fell behind",
                dropped - self.reported
            );
            self.reported = dropped;
        }
    }
}

/// Every entry of the log at `path`: its rotated `.1` file's, then its own, in order.
/// `NotFound` when neither file exists.
pub fn read(path: &Path) -> io::Result<Vec<Entry>> {
    let mut follower = Follower::new(path.to_owned());
    let entries = follower.poll()?;
    if !follower.found() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network log at `{}`", path.display()),
        ));
    }
    Ok(entries)
}

/// Reads a log as it grows: each [`Follower::poll`] returns the entries appended since the
/// last one. The first returns everything, the rotated `.1` file first. A rotation (the path
/// names another file) finishes the old file and continues at the start of the new one; a
/// truncation starts the file over. A line is returned once its newline is written.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    started: bool,
    current: Option<Open>,
    /// Bytes of the current file after its last newline.
    pending: Vec<u8>,
    found: bool,
}

#[derive(Debug)]
struct Open {
    file: File,
    id: (u64, u64),
    pos: u64,
}

impl Open {
    fn new(file: File) -> io::Result<Open> {
        let meta = file.metadata()?;
        Ok(Open {
            file,
            id: (meta.dev(), meta.ino()),
            pos: 0,
        })
    }
}

fn open_existing(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Follower {
    /// A follower of the log at `path`, from its beginning; no I/O until the first poll.
    pub fn new(path: PathBuf) -> Follower {
        Follower {
            path,
            started: false,
            current: None,
            pending: Vec::new(),
            found: false,
        }
    }

    /// Whether a log file (current or rotated) has been seen yet.
    pub fn found(&self) -> bool {
        self.found
    }

    /// The entries appended since the last poll (none while there is no file).
    pub fn poll(&mut self) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        if !self.started {
            self.started = true;
            // The current file first: if it rotates before `.1` is opened, `.1` is that same
            // file, read once through this handle.
            self.current = open_existing(&self.path)?.map(Open::new).transpose()?;
            if let Some(mut old) = open_existing(&rotated(&self.path))?
                .map(Open::new)
                .transpose()?
                && self.current.as_ref().is_none_or(|c| c.id != old.id)
            {
                self.found = true;
                let mut pending = Vec::new();
                read_new(&mut old, &mut pending, &mut entries)?;
            }
        }
        if self.current.is_none() {
            self.current = open_existing(&self.path)?.map(Open::new).transpose()?;
        }
        let Some(current) = self.current.as_mut() else {
            return Ok(entries);
        };
        self.found = true;
        read_new(current, &mut self.pending, &mut entries)?;
        match fs::metadata(&self.path) {
            // Rotated, and the new file not created yet: wait for it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(meta) if (meta.dev(), meta.ino()) != current.id => {
                // Rotated: what the writer added to the old file before renaming it, then the
                // new file from its start. A torn line in the old file stays torn.
                read_new(current, &mut self.pending, &mut entries)?;
                self.pending.clear();
                self.current = open_existing(&self.path)?.map(Open::new).transpose()?;
                if let Some(current) = self.current.as_mut() {
                    read_new(current, &mut self.pending, &mut entries)?;
                }
            }
            Ok(meta) if meta.len() < current.pos => {
                current.file.seek(SeekFrom::Start(0))?;
                current.pos = 0;
                self.pending.clear();
                read_new(current, &mut self.pending, &mut entries)?;
            }
            Ok(_) => {}
        }
        Ok(entries)
    }

    /// Waits for new entries, polling every [`POLL_INTERVAL`].
    pub async fn next(&mut self) -> io::Result<Vec<Entry>> {
        loop {
            let entries = self.poll()?;
            if !entries.is_empty() {
                return Ok(entries);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// Reads `open` to its end, parsing the complete lines; the rest stays in `pending`.
fn read_new(open: &mut Open, pending: &mut Vec<u8>, entries: &mut Vec<Entry>) -> io::Result<()> {
    let start = pending.len();
    let read = open.file.read_to_end(pending)?;
    open.pos += read as u64;
    let Some(end) = pending[start..].iter().rposition(|b| *b == b'\n') else {
        return Ok(());
    };
    let end = start + end + 1;
    entries.extend(
        pending[..end]
            .split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .filter_map(|line| serde_json::from_slice::<Entry>(line).ok()),
    );
    pending.drain(..end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry {
            time: format!("2026-12-02T04:30:{:02}.{:03}Z", n / 1000 % 60, n % 1000),
            source: "agents".to_owned(),
            method: "CONNECT".to_owned(),
            host: format!("host{n}.example.com"),
            port: 443,
            address: Some("93.184.216.34".parse().unwrap()),
            rule: "allow *.example.com".to_owned(),
            decision: ALLOW.to_owned(),
            status: 200,
            bytes_up: n,
            bytes_down: 2 * n,
            intercepted: false,
            error: None,
        }
    }

    fn numbers(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.bytes_up).collect()
    }

    #[test]
    fn the_path_names_the_project() {
        assert_eq!(
            path(Path::new("/h/logs"), "demo"),
            PathBuf::from("/h/logs/network-demo.jsonl")
        );
        assert_eq!(
            rotated(Path::new("/h/logs/network-demo.jsonl")),
            PathBuf::from("/h/logs/network-demo.jsonl.1")
        );
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_185_800_123);
        assert_eq!(Entry::time_at(t), "2026-12-02T04:30:00.123Z");
        assert_eq!(Entry::now_time().len(), "2026-12-02T04:30:00.123Z".len());
        assert_eq!(decision(Decision::Allow), "allow");
        assert_eq!(decision(Decision::Deny), "deny");
    }

    #[tokio::test]
    async fn each_entry_is_one_json_line_with_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(&dir.path().join("logs"), "demo");
        let log = NetworkLog::open(file.clone(), DEFAULT_MAX_BYTES).unwrap();
        log.record(entry(1));
        let mut denied = entry(2);
        denied.address = None;
        denied.decision = DENY.to_owned();
        denied.rule = "default deny".to_owned();
        denied.status = 403;
        denied.error = Some("upstream reset".to_owned());
        log.record(denied.clone());
        log.flush().await;
        let text = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            r#"{"time":"2026-12-02T04:30:00.001Z","source":"agents","method":"CONNECT","host":"host1.example.com","port":443,"address":"93.184.216.34","rule":"allow *.example.com","decision":"allow","status":200,"bytes_up":1,"bytes_down":2,"intercepted":false}"#
        );
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["address"], serde_json::Value::Null);
        assert_eq!(second["error"], "upstream reset");
        assert_eq!(read(&file).unwrap(), vec![entry(1), denied]);
        assert_eq!(log.dropped(), 0);
    }

    #[tokio::test]
    async fn rotation_keeps_the_newest_entries_in_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "demo");
        let line_len = serde_json::to_vec(&entry(100)).unwrap().len() as u64 + 1;
        // Room for three lines of entries 100..=999 (all the same length).
        let log = NetworkLog::open(file.clone(), 3 * line_len + 1).unwrap();
        for n in 100..105 {
            log.record(entry(n));
        }
        log.flush().await;
        let current = read_lines(&file);
        let old = read_lines(&rotated(&file));
        assert_eq!(old.len(), 3, "the full file moved to `.1`");
        assert_eq!(current.len(), 2);
        assert!(fs::metadata(&file).unwrap().len() <= 3 * line_len + 1);
        assert_eq!(
            numbers(&read(&file).unwrap()),
            vec![100, 101, 102, 103, 104]
        );
        // The next rotation replaces the older `.1`.
        for n in 105..109 {
            log.record(entry(n));
        }
        log.flush().await;
        assert_eq!(
            numbers(&read(&file).unwrap()),
            vec![103, 104, 105, 106, 107, 108]
        );
    }

    fn read_lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn a_reopened_log_appends_and_ends_a_torn_line_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "demo");
        let whole = serde_json::to_string(&entry(1)).unwrap();
        fs::write(&file, format!("{whole}\n{}", &whole[..20])).unwrap();
        assert_eq!(
            numbers(&read(&file).unwrap()),
            vec![1],
            "the torn line is skipped"
        );
        let log = NetworkLog::open(file.clone(), DEFAULT_MAX_BYTES).unwrap();
        log.record(entry(2));
        log.flush().await;
        assert_eq!(numbers(&read(&file).unwrap()), vec![1, 2]);
    }

    #[test]
    fn reading_skips_a_torn_last_line_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "demo");
        assert_eq!(read(&file).unwrap_err().kind(), io::ErrorKind::NotFound);
        let line = |n| serde_json::to_string(&entry(n)).unwrap();
        fs::write(rotated(&file), format!("{}\n{}", line(1), &line(2)[..30])).unwrap();
        assert_eq!(numbers(&read(&file).unwrap()), vec![1], "only `.1` exists");
        fs::write(
            &file,
            format!("{}\nnot json\n\n{}\n{}", line(3), line(4), &line(5)[..10]),
        )
        .unwrap();
        assert_eq!(numbers(&read(&file).unwrap()), vec![1, 3, 4]);
    }

    #[tokio::test]
    async fn the_follower_sees_appended_lines_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "demo");
        let mut follower = Follower::new(file.clone());
        assert!(follower.poll().unwrap().is_empty());
        assert!(!follower.found());
        let line_len = serde_json::to_vec(&entry(100)).unwrap().len() as u64 + 1;
        let log = NetworkLog::open(file.clone(), 3 * line_len).unwrap();
        log.record(entry(100));
        log.flush().await;
        assert_eq!(numbers(&follower.next().await.unwrap()), vec![100]);
        assert!(follower.found());
        assert!(follower.poll().unwrap().is_empty());
        // A line appears only once whole.
        let torn = serde_json::to_string(&entry(200)).unwrap();
        let mut raw = OpenOptions::new().append(true).open(&file).unwrap();
        raw.write_all(&torn.as_bytes()[..15]).unwrap();
        assert!(follower.poll().unwrap().is_empty());
        raw.write_all(format!("{}\n", &torn[15..]).as_bytes())
            .unwrap();
        assert_eq!(numbers(&follower.poll().unwrap()), vec![200]);
        // The file fills up, 103 rotates it, and 104 follows 103 in the new file.
        for n in 101..105 {
            log.record(entry(n));
        }
        log.flush().await;
        assert!(rotated(&file).exists());
        assert_eq!(numbers(&follower.poll().unwrap()), vec![101, 102, 103, 104]);
        log.record(entry(105));
        log.flush().await;
        assert_eq!(numbers(&follower.poll().unwrap()), vec![105]);
        // A truncated file starts over.
        fs::write(
            &file,
            format!("{}\n", serde_json::to_string(&entry(300)).unwrap()),
        )
        .unwrap();
        assert_eq!(numbers(&follower.poll().unwrap()), vec![300]);
    }

    #[tokio::test]
    async fn a_new_follower_reads_the_rotated_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "demo");
        let line_len = serde_json::to_vec(&entry(100)).unwrap().len() as u64 + 1;
        let log = NetworkLog::open(file.clone(), 2 * line_len).unwrap();
        for n in 100..103 {
            log.record(entry(n));
        }
        log.flush().await;
        let mut follower = Follower::new(file.clone());
        assert_eq!(numbers(&follower.poll().unwrap()), vec![100, 101, 102]);
        assert!(follower.poll().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_full_channel_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "demo");
        let log = NetworkLog::open(file.clone(), DEFAULT_MAX_BYTES).unwrap();
        let total = 3 * CHANNEL_CAPACITY as u64;
        for n in 0..total {
            log.record(entry(n));
        }
        log.flush().await;
        let written = read(&file).unwrap().len() as u64;
        assert_eq!(written + log.dropped(), total);
    }
}
