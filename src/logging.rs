//! The log file: one JSON object per line, written by one background thread.
//!
//! Three kinds of record share the file. *Access* records (one per request) are buffered and
//! reach the file within [`FLUSH_INTERVAL`]; a request never waits for the disk. *Event*
//! records are durable: [`Sink::append_durable`] resolves only after the `write(2)` that
//! carried the record returned, so `POST /events` can acknowledge honestly. Events that arrive
//! together share one write (group commit): the first of a batch spawns a task that yields
//! once, so that every request ready on the runtime adds its record, and then wakes the writer
//! thread. Writes never run on the runtime, so a stalled disk holds up the events waiting for
//! it, not `/health` or the other routes. *Diagnostics* (startup, warnings, errors) go through
//! `log` and fern, which copies them to stderr for `docker logs` and into the buffer here.
//!
//! Every batch is one `write` on a file opened with `O_APPEND`, so replicas appending to the
//! same bind-mounted file never interleave inside a line. A failed write marks the sink
//! unhealthy (read by `/health`) until a later write succeeds; the background thread retries
//! with a notice record every [`FLUSH_INTERVAL`], so health recovers by itself once space
//! returns.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::ids::RequestId;

/// Longest time a buffered record waits before the background thread writes it.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Buffered bytes that make the background thread write at once instead of at the interval.
/// Larger writes are cheaper per byte (at 50,000 requests/s the writer thread took 2.4% of
/// the process's CPU with 32 KiB, 1.05% with 256 KiB; perf), but a kill -9 can stop a
/// large write part-way, at a page boundary, leaving a torn line: with 256 KiB the fault
/// suite's kill -9 test (8 kills a run) found one in 2 of 14 runs, with 32 KiB none in 60 kills.
const FLUSH_BYTES: usize = 32 * 1024;

/// Appends JSON lines to the log file; cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Sink(Arc<Shared>);

struct Shared {
    path: PathBuf,
    access: bool,
    debug: bool,
    pending: Mutex<Pending>,
    /// Wakes the background thread (first buffered record, reopen, close).
    wake: Condvar,
    /// Held for the whole of a write, so batches reach the file in the order they were taken.
    output: Mutex<Output>,
    /// Why the last write failed, while no later write has succeeded.
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
}

type Ack = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// The date and time of day of the last access record, formatted.
    clock: Clock,
    /// Durable appends waiting for the write that carries `buf[..end]`.
    acks: Vec<(usize, Ack)>,
    /// A task will ask the writer thread to write `buf` at once (it holds durable records).
    commit_scheduled: bool,
    flush_now: bool,
    /// Reopen requests, answered once the file at the path is open.
    reopen: Vec<Ack>,
    closing: bool,
}

struct Output {
    file: File,
    /// The buffer being written; swapped with `Pending::buf` so neither side reallocates.
    batch: Vec<u8>,
    /// Records that could not be written while the file was failing.
    unwritten: u64,
}

/// The log file could not be opened for append; the message says what to do.
#[derive(Debug)]
pub struct OpenError(String);

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenError {}

impl Sink {
    /// Opens (creating if needed) `path` and its directory, and starts the background thread.
    /// `level` decides whether access records (info) and health-probe records (debug) are kept.
    pub fn open(path: &Path, level: LevelFilter) -> Result<Sink, OpenError> {
        let file = open_append(path).map_err(|e| open_error(path, &e))?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            access: level >= LevelFilter::Info,
            debug: level >= LevelFilter::Debug,
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            output: Mutex::new(Output {
                file,
                batch: Vec::with_capacity(FLUSH_BYTES * 2),
                unwritten: 0,
            }),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            writer: Mutex::new(None),
        });
        let worker = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer_loop(&worker))
            .map_err(|e| OpenError(format!("cannot start the log writer thread: {e}")))?;
        *lock(&shared.writer) = Some(handle);
        Ok(Sink(shared))
    }

    /// Whether records of `level` are kept (access records are info, probe records debug).
    pub fn enabled(&self, level: Level) -> bool {
        match level {
            Level::Error | Level::Warn => true,
            Level::Info => self.0.access,
            Level::Debug | Level::Trace => self.0.debug,
        }
    }

    /// Why the log cannot be written, if the last write failed and none succeeded since.
    pub fn failure(&self) -> Option<String> {
        if !self.0.failed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.0.failure).clone()
    }

    /// Buffers one access record. This runs for every request, so rather than build it with
    /// [`Line`], it writes through a stack buffer (`Rec`) with constant field names, reuses
    /// the formatted date and time within a second, takes the wall-clock time from the
    /// request's own monotonic reading (`Clock`), and escapes only what needs it: the request
    /// id is proven safe by its type, and the method, path and user agent are copied whole
    /// unless they hold a byte JSON must escape. Measured with callgrind at opt-level "s",
    /// logging's share of `GET /health` went from about 2,260 to about 1,290 instructions
    /// (and from about 5,400 at first).
    pub fn access(&self, level: Level, a: &Access<'_>) {
        let mut p = lock(&self.0.pending);
        let was_empty = p.buf.is_empty();
        let Pending { buf, clock, .. } = &mut *p;
        let now = clock.since_epoch(a.at);
        access_record(buf, clock, now, level, a);
        self.appended(p, was_empty);
    }

    /// Buffers a line that is already formatted (fern's output), adding the newline.
    fn raw(&self, line: &std::fmt::Arguments<'_>) {
        let mut p = lock(&self.0.pending);
        let was_empty = p.buf.is_empty();
        // Writing into a Vec cannot fail.
        let _ = p.buf.write_fmt(*line);
        p.buf.push(b'\n');
        self.appended(p, was_empty);
    }

    /// After a buffered (not durable) append: wakes the writer thread if it sleeps without a
    /// timeout (the buffer was empty, so this record starts its interval) or if the buffer
    /// is full enough to write at once.
    fn appended(&self, mut p: MutexGuard<'_, Pending>, was_empty: bool) {
        let full = p.buf.len() >= FLUSH_BYTES && !p.flush_now;
        p.flush_now |= full;
        drop(p);
        if was_empty || full {
            self.0.wake.notify_one();
        }
    }

    /// Appends `line` (a whole record ending in `\n`, or nothing) and resolves once the write
    /// carrying it, and everything buffered before it, has returned. `Err` says why not.
    /// Must be called within a tokio runtime.
    pub async fn append_durable(&self, line: &[u8]) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut p = lock(&self.0.pending);
            if p.closing {
                return Err("the log is closed: the service is shutting down".into());
            }
            p.buf.extend_from_slice(line);
            let end = p.buf.len();
            p.acks.push((end, tx));
            !std::mem::replace(&mut p.commit_scheduled, true)
        };
        if lead {
            // Let the requests that are ready now add their records, then hand the batch to
            // the writer thread. A task of its own, so the batch goes even if this request is
            // dropped (its client went away) meanwhile. Were the writer woken here, it would
            // preempt the runtime on a shared core and write batches of one.
            let shared = Arc::clone(&self.0);
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                lock(&shared.pending).flush_now = true;
                shared.wake.notify_one();
            });
        }
        rx.await
            .unwrap_or_else(|_| Err("the log writer stopped before writing the record".into()))
    }

    /// Writes everything buffered so far; resolves when it is in the file.
    pub async fn flush(&self) -> Result<(), String> {
        self.append_durable(b"").await
    }

    /// Writes what is buffered to the current file, then opens the path anew (SIGHUP, after
    /// logrotate renamed the file). Resolves once the new file is in use, or says why not.
    pub async fn reopen(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        lock(&self.0.pending).reopen.push(tx);
        self.0.wake.notify_one();
        rx.await
            .unwrap_or_else(|_| Err("the log writer stopped before reopening".into()))
    }

    /// Writes everything buffered and stops the background thread. Later records are dropped.
    pub fn close(&self) {
        lock(&self.0.pending).closing = true;
        self.0.wake.notify_one();
        if let Some(handle) = lock(&self.0.writer).take() {
            let _ = handle.join();
        }
    }
}

/// The fields of one access record.
pub struct Access<'a> {
    /// An HTTP method: a token (RFC 9110), as hyper's parser guarantees.
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Body bytes of the answer.
    pub bytes: u64,
    /// When the answer was ready: the record's timestamp.
    pub at: Instant,
    /// Time to produce the answer.
    pub duration_us: u64,
    /// Needs no escaping (see [`RequestId`]).
    pub request_id: RequestId<'a>,
    pub client: IpAddr,
    pub user_agent: &'a [u8],
}

/// Appends one access record to `buf` (see [`Sink::access`]).
fn access_record(
    buf: &mut Vec<u8>,
    clock: &mut Clock,
    now: Duration,
    level: Level,
    a: &Access<'_>,
) {
    let mut rec = Rec::new(buf);
    rec.put(b"{\"ts\":\"");
    clock.write(&mut rec, now);
    rec.put(match level {
        Level::Debug | Level::Trace => b"\",\"level\":\"debug\",\"msg\":\"access\",\"method\":",
        _ => b"\",\"level\":\"info\",\"msg\":\"access\",\"method\":",
    });
    json_bytes(&mut rec, a.method.as_bytes());
    rec.put(b",\"path\":");
    json_str(&mut rec, a.path);
    rec.put(b",\"status\":");
    rec.digits(u64::from(a.status), 3); // StatusCode is 100..=999
    rec.put(b",\"bytes\":");
    rec.u64(a.bytes);
    rec.put(b",\"duration_us\":");
    rec.u64(a.duration_us);
    rec.put(b",\"request_id\":\"");
    rec.put(a.request_id.as_bytes());
    rec.put(b"\",\"client\":\"");
    rec.ip(a.client);
    rec.put(b"\",\"user_agent\":");
    json_bytes(&mut rec, a.user_agent);
    rec.put(b"}\n");
    rec.finish();
}

/// Wall-clock time for access records, read from the system clock at most once a second:
/// records carry a monotonic [`Instant`] (which the request read anyway) and are placed
/// relative to the last reading. Also the `YYYY-MM-DDTHH:MM:SS` of the last formatted second.
struct Clock {
    /// A monotonic instant and the wall-clock time read right after it.
    base: Option<(Instant, Duration)>,
    secs: u64,
    text: [u8; 19],
}

impl Default for Clock {
    fn default() -> Clock {
        Clock {
            base: None,
            secs: u64::MAX,
            text: [0; 19],
        }
    }
}

impl Clock {
    /// The wall-clock time (since the Unix epoch) of `at`. Within a second of the last
    /// reading it is derived from that reading, so it is off by the clocks' drift over at
    /// most a second; an `at` before the reading (another worker's earlier request) gets
    /// the reading's time.
    fn since_epoch(&mut self, at: Instant) -> Duration {
        let since_base = self
            .base
            .map(|(base, wall)| (at.saturating_duration_since(base), wall));
        match since_base {
            Some((since, wall)) if since < Duration::from_secs(1) => wall + since,
            _ => {
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                self.base = Some((at, wall));
                wall
            }
        }
    }

    /// Writes `since_epoch` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn write(&mut self, out: &mut Rec<'_>, since_epoch: Duration) {
        let secs = since_epoch.as_secs();
        if secs != self.secs {
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let mut text = Vec::with_capacity(24);
            write_timestamp(&mut text, t);
            self.text.copy_from_slice(&text[..19]);
            self.secs = secs;
        }
        out.put(&self.text);
        out.put(b".");
        out.digits(u64::from(since_epoch.subsec_millis()), 3);
        out.put(b"Z");
    }
}

/// The decimal text of 0..=255 followed by a dot, and its length: IPv4 octets from a table,
/// where dividing each by ten was most of an access record's address field.
const OCTETS: [([u8; 4], usize); 256] = {
    let mut table = [([0; 4], 0); 256];
    let mut i = 0;
    while i < 256 {
        let d = [
            b'0' + (i / 100) as u8,
            b'0' + (i / 10 % 10) as u8,
            b'0' + (i % 10) as u8,
        ];
        table[i] = match i {
            0..=9 => ([d[2], b'.', 0, 0], 2),
            10..=99 => ([d[1], d[2], b'.', 0], 3),
            _ => ([d[0], d[1], d[2], b'.'], 4),
        };
        i += 1;
    }
    table
};

/// Where the escapers write: a `Vec`, or a [`Rec`] in front of one.
trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Stack room for one record: an access record with ordinary path and user agent fits.
const REC_BUF: usize = 512;

/// Formats a record through a stack buffer and appends it to the `Vec` in one copy at the
/// end (in more, if it outgrows the buffer). Writing here is a bounds check and a copy;
/// pushing to a `Vec` is a call with a capacity check each time (at opt-level "s" those are
/// not inlined), which made up most of the access record's cost.
struct Rec<'a> {
    out: &'a mut Vec<u8>,
    buf: [u8; REC_BUF],
    len: usize,
}

impl<'a> Rec<'a> {
    fn new(out: &'a mut Vec<u8>) -> Rec<'a> {
        Rec {
            out,
            buf: [0; REC_BUF],
            len: 0,
        }
    }

    /// Moves what is buffered to the `Vec`.
    fn spill(&mut self) {
        self.out.extend_from_slice(&self.buf[..self.len]);
        self.len = 0;
    }

    /// Makes room for `bytes`, or appends them directly if they could never fit.
    #[cold]
    fn spill_for(&mut self, bytes: &[u8]) {
        self.spill();
        if bytes.len() > REC_BUF {
            self.out.extend_from_slice(bytes);
        }
    }

    fn finish(mut self) {
        self.spill();
    }

    /// The last `width` (at most 20) decimal digits of `n`, zero-padded.
    fn digits(&mut self, mut n: u64, width: usize) {
        if REC_BUF - self.len < 20 {
            self.spill();
        }
        let end = self.len + width;
        for d in self.buf[self.len..end].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.len = end;
    }

    fn u64(&mut self, n: u64) {
        // Most numbers here are short (a size, microseconds): compare before taking a log.
        let width = match n {
            0..=9 => 1,
            10..=99 => 2,
            100..=999 => 3,
            1000..=9999 => 4,
            _ => n.ilog10() as usize + 1,
        };
        self.digits(n, width);
    }

    /// An address in its usual text form (which never needs JSON escaping).
    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                // Each octet as four bytes from the table, then one copy of the used part.
                let mut text = [0; 16];
                let mut len = 0;
                for octet in v4.octets() {
                    let (digits, n) = OCTETS[usize::from(octet)];
                    text[len..len + 4].copy_from_slice(&digits);
                    len += n;
                }
                self.put(&text[..len - 1]); // without the last dot
            }
            IpAddr::V6(v6) => {
                // Writing to a Rec cannot fail.
                let _ = write!(self, "{v6}");
            }
        }
    }
}

impl Out for Rec<'_> {
    // Always inlined: most calls copy a constant field name, which then compiles to a few
    // moves instead of a call to memcpy (opt-level "s" would not inline this by itself).
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        if bytes.len() > REC_BUF - self.len {
            self.spill_for(bytes);
            if bytes.len() > REC_BUF {
                return;
            }
        }
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }
}

impl std::fmt::Write for Rec<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.put(s.as_bytes());
        Ok(())
    }
}

/// Locks `m`, ignoring poisoning: every critical section here leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The background thread: writes buffered records at most [`FLUSH_INTERVAL`] after they
/// arrive, retries while the file is failing, reopens on request, and writes the rest on close.
fn writer_loop(shared: &Shared) {
    loop {
        let (reopen, closing) = {
            let mut p = lock(&shared.pending);
            loop {
                if p.flush_now || !p.reopen.is_empty() || p.closing {
                    break;
                }
                let failing = shared.failed.load(Ordering::Acquire);
                if p.buf.is_empty() && !failing {
                    p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                let (guard, timeout) = shared
                    .wake
                    .wait_timeout(p, FLUSH_INTERVAL)
                    .unwrap_or_else(|e| e.into_inner());
                p = guard;
                if timeout.timed_out() {
                    break;
                }
            }
            (std::mem::take(&mut p.reopen), p.closing)
        };
        let mut out = commit(shared);
        if !reopen.is_empty() {
            let result = match open_append(&shared.path) {
                Ok(f) => {
                    out.file = f;
                    Ok(())
                }
                Err(e) => {
                    // Keep writing to the old file: a record there beats a record lost.
                    let msg = open_error(&shared.path, &e).to_string();
                    to_stderr(&diagnostic_line(Level::Error, &msg));
                    Err(msg)
                }
            };
            for ack in reopen {
                let _ = ack.send(result.clone());
            }
        }
        if closing {
            return;
        }
    }
}

/// Takes everything buffered and writes it in one `write`, then answers the durable appends
/// it carried. Returns the output, still locked, for a reopen to follow without a gap.
/// Runs on the writer thread only.
fn commit(shared: &Shared) -> MutexGuard<'_, Output> {
    let mut out = lock(&shared.output);
    let out_ref = &mut *out;
    let acks = {
        let mut p = lock(&shared.pending);
        std::mem::swap(&mut p.buf, &mut out_ref.batch);
        p.commit_scheduled = false;
        p.flush_now = false;
        std::mem::take(&mut p.acks)
    };
    let failing = shared.failed.load(Ordering::Acquire);
    if out_ref.batch.is_empty() && acks.is_empty() && !failing {
        return out;
    }

    // While failing, lead every attempt with a notice, so that an idle service still probes
    // the disk and its health recovers once a write goes through.
    let mut offset = 0;
    if failing {
        let reason = lock(&shared.failure).clone().unwrap_or_default();
        let mut notice = Vec::with_capacity(256);
        let mut line = Line::start(&mut notice, Level::Warn, "log file writable again");
        line.str("previous_error", &reason)
            .u64("unwritten_records", out_ref.unwritten);
        line.finish();
        offset = notice.len();
        out_ref.batch.splice(0..0, notice);
    }

    let (written, error) = write_batch(&mut out_ref.file, &out_ref.batch);
    // The health state changes before any answer goes out: a client told 503 that then asks
    // /health must hear 503 too.
    match &error {
        None => {
            if failing {
                shared.failed.store(false, Ordering::Release);
                *lock(&shared.failure) = None;
                out_ref.unwritten = 0;
                log::warn!("log file {} is writable again", shared.path.display());
            }
        }
        Some(e) => {
            let unwritten_part = &out_ref.batch[written.max(offset)..];
            out_ref.unwritten += unwritten_part.iter().filter(|&&b| b == b'\n').count() as u64;
            let reason = format!("cannot write {}: {e}", shared.path.display());
            if !failing {
                // stderr directly: the file is what failed.
                to_stderr(&diagnostic_line(Level::Error, &reason));
            }
            *lock(&shared.failure) = Some(reason);
            shared.failed.store(true, Ordering::Release);
        }
    }
    for (end, ack) in acks {
        let result = if end + offset <= written {
            Ok(())
        } else {
            Err(format!(
                "cannot write {}: {}",
                shared.path.display(),
                describe(&error)
            ))
        };
        let _ = ack.send(result);
    }
    out_ref.batch.clear();
    out
}

fn describe(error: &Option<io::Error>) -> String {
    match error {
        Some(e) => e.to_string(),
        None => "an earlier record in the same write failed".into(),
    }
}

/// Writes `buf` with as few `write` calls as the kernel allows (one, unless the disk fills).
/// Returns how many bytes reached the file, and the error that stopped it. A line cut short by
/// a failure is truncated away, so that the file never holds a torn record.
fn write_batch(file: &mut File, buf: &[u8]) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < buf.len() {
        match file.write(&buf[done..]) {
            Ok(0) => return cut_torn_line(file, buf, done, io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return cut_torn_line(file, buf, done, e),
        }
    }
    (done, None)
}

fn cut_torn_line(file: &File, buf: &[u8], done: usize, e: io::Error) -> (usize, Option<io::Error>) {
    let whole = buf[..done]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let torn = (done - whole) as u64;
    if torn > 0 {
        // Another process appending in this instant would lose its tail too; a full disk
        // leaves no better choice, and without this the file would hold half a line.
        if let Ok(meta) = file.metadata() {
            let _ = file.set_len(meta.len().saturating_sub(torn));
        }
    }
    (whole, Some(e))
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)?;
    // A file whose last line was cut short (a crash or power loss mid-write, by an older
    // writer) gets a newline first, so our first record is not glued onto the fragment.
    let meta = file.metadata()?;
    if meta.is_file() && meta.len() > 0 {
        let mut last = [0u8; 1];
        let read = File::open(path).and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut last, meta.len() - 1)
        });
        if read.is_ok() && last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

/// The uid this process runs as, read from procfs (no libc needed; `/proc/self` belongs to it).
pub fn current_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn open_error(path: &Path, e: &io::Error) -> OpenError {
    let uid = current_uid().map_or_else(|| "unknown".to_string(), |u| u.to_string());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Absolute, so that inside a container it reads `/app/logs`, the mount point.
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let hint = match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => format!(
            "make {} writable by uid {uid} (if it is a mounted host directory, on the host: `sudo chown {uid} <that directory>`; or run `api --prepare-logs {uid}:{uid}` as root, as compose's log-init does), or set LOG_FILE to a writable path",
            dir.display(),
        ),
        _ => "check the path, or set LOG_FILE to a writable file".to_string(),
    };
    OpenError(format!(
        "cannot open log file {} for appending as uid {uid}: {e}; {hint}",
        path.display()
    ))
}

/// `--prepare-logs UID:GID`: creates the log directory and hands it (and an existing log
/// file) to `uid:gid`, readable by everyone, so the unprivileged service can write and the
/// host user can read. Meant for a one-shot root container before the service starts.
pub fn prepare_dir(path: &Path, uid: u32, gid: u32) -> Result<String, String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |what: &str, p: &Path, e: io::Error| format!("cannot {what} {}: {e}", p.display());
    fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
    // Running as root on a directory others could write to: never follow a planted symlink,
    // which would hand its target to `uid`.
    let refuse_links = |p: &Path| match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(format!(
            "refusing to prepare {}: it is a symbolic link",
            p.display()
        )),
        _ => Ok(()),
    };
    refuse_links(dir)?;
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(|e| fail("chown", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| fail("chmod", dir, e))?;
    if fs::symlink_metadata(path).is_ok() {
        refuse_links(path)?;
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| fail("chown", path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))
            .map_err(|e| fail("chmod", path, e))?;
    }
    Ok(format!(
        "log directory {} ready for {uid}:{gid}",
        dir.display()
    ))
}

/// Builds one JSON record in a buffer: `{"ts":…,"level":…,"msg":…` then fields, then `}\n`.
/// Strings go through `json_str`, so no input can break the line or add a field.
pub struct Line<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Line<'a> {
    /// Starts a record stamped now.
    pub fn start(buf: &'a mut Vec<u8>, level: Level, msg: &str) -> Line<'a> {
        Line::start_at(buf, OffsetDateTime::now_utc(), level, msg)
    }

    /// Starts a record stamped `ts`.
    pub fn start_at(buf: &'a mut Vec<u8>, ts: OffsetDateTime, level: Level, msg: &str) -> Line<'a> {
        buf.extend_from_slice(b"{\"ts\":\"");
        write_timestamp(buf, ts);
        buf.extend_from_slice(b"\",\"level\":\"");
        buf.extend_from_slice(level_name(level).as_bytes());
        buf.extend_from_slice(b"\",\"msg\":");
        json_str(buf, msg);
        Line { buf }
    }

    /// Adds a string field.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        json_str(self.buf, value);
        self
    }

    /// Adds a string field from bytes that may not be UTF-8 (invalid sequences become U+FFFD).
    pub fn bytes(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.key(key);
        json_bytes(self.buf, value);
        self
    }

    /// Adds a number field.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let mut rec = Rec::new(self.buf);
        rec.u64(value);
        rec.finish();
        self
    }

    /// Adds an IP address as a string field.
    pub fn ip(&mut self, key: &str, ip: IpAddr) -> &mut Self {
        self.key(key);
        push_ip(self.buf, ip);
        self
    }

    /// Adds a field whose value is already-serialised JSON.
    pub fn json(&mut self, key: &str, value: &serde_json::Value) -> &mut Self {
        self.key(key);
        serde_json::to_writer(&mut *self.buf, value).expect("a Value always serialises into a Vec");
        self
    }

    /// Keys are the service's own identifiers, never client input: written without escaping.
    fn key(&mut self, key: &str) {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// Closes the record and its line.
    pub fn finish(self) {
        self.buf.extend_from_slice(b"}\n");
    }
}

/// What a byte needs in a JSON string: [`ESCAPE`] for `"`, `\\` and the controls below 0x20;
/// [`TOKEN`] for the printable ASCII that may appear in a token; 0 for the rest (space, DEL,
/// UTF-8 sequences), copied as they are. A table: per-byte comparisons cost twice as much.
static CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            0..=0x1f | b'"' | b'\\' => ESCAPE,
            0x21..=0x7e => TOKEN,
            _ => 0,
        };
        b += 1;
    }
    table
};
const ESCAPE: u8 = 1;
const TOKEN: u8 = 2;

/// Writes `s` as a JSON string. RFC 8259 requires escaping only `"`, `\\` and the control
/// characters below U+0020; runs of other bytes are copied whole. (serde_json's escaper, which
/// this replaces on the per-request path, cost several times more per record.)
fn json_str(buf: &mut impl Out, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    buf.put(b"\"");
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if CLASS[usize::from(b)] != ESCAPE {
            continue;
        }
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
        };
        buf.put(&bytes[start..i]);
        buf.put(escape);
        start = i + 1;
    }
    buf.put(&bytes[start..]);
    buf.put(b"\"");
}

/// [`json_str`] for bytes that may not be UTF-8 (invalid sequences become U+FFFD).
fn json_bytes(buf: &mut impl Out, value: &[u8]) {
    // Printable ASCII, the usual user agent, needs one look rather than a UTF-8 check and
    // then an escape scan.
    if value
        .iter()
        .all(|&b| CLASS[usize::from(b)] == TOKEN || b == b' ')
    {
        buf.put(b"\"");
        buf.put(value);
        buf.put(b"\"");
        return;
    }
    match std::str::from_utf8(value) {
        Ok(s) => json_str(buf, s),
        Err(_) => json_str(buf, &String::from_utf8_lossy(value)),
    }
}

/// Writes an IP address as a JSON string (its text never needs escaping).
fn push_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    let mut rec = Rec::new(buf);
    rec.put(b"\"");
    rec.ip(ip);
    rec.put(b"\"");
    rec.finish();
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// RFC 3339 in UTC with milliseconds: `2026-11-26T05:20:15.123Z`. Digits by hand (through
/// [`Rec`]): this runs for every event record and answer, and `write!` costs several times more.
pub fn write_timestamp(buf: &mut Vec<u8>, t: OffsetDateTime) {
    let (h, mi, s, ms) = t.to_hms_milli();
    let year = u32::try_from(t.year()).unwrap_or(0).min(9999);
    let mut rec = Rec::new(buf);
    rec.digits(u64::from(year), 4);
    rec.put(b"-");
    rec.digits(u64::from(u8::from(t.month())), 2);
    rec.put(b"-");
    rec.digits(u64::from(t.day()), 2);
    rec.put(b"T");
    rec.digits(u64::from(h), 2);
    rec.put(b":");
    rec.digits(u64::from(mi), 2);
    rec.put(b":");
    rec.digits(u64::from(s), 2);
    rec.put(b".");
    rec.digits(u64::from(ms), 3);
    rec.put(b"Z");
    rec.finish();
}

/// A timestamp as a string (for JSON answers such as `received_at`).
pub fn timestamp(t: OffsetDateTime) -> String {
    let mut buf = Vec::with_capacity(24);
    write_timestamp(&mut buf, t);
    String::from_utf8(buf).expect("a timestamp is ASCII")
}

/// Writes one line to stderr, ignoring failure: `eprintln!` panics when stderr is a closed
/// pipe, and a diagnostic must never take down the code reporting it.
pub fn to_stderr(line: &str) {
    let mut err = io::stderr().lock();
    let _ = err
        .write_all(line.as_bytes())
        .and_then(|()| err.write_all(b"\n"));
}

/// A diagnostic record without fields, for stderr when the sink itself is the problem.
fn diagnostic_line(level: Level, msg: &str) -> String {
    let mut buf = Vec::with_capacity(128);
    Line::start(&mut buf, level, msg).finish();
    buf.pop();
    String::from_utf8(buf).expect("records are UTF-8")
}

/// Installs the global logger: diagnostics at `level` go to stderr and into `sink`, as JSON
/// lines. Key-value pairs given to `log` macros become fields.
pub fn init(level: LevelFilter, sink: &Sink) -> Result<(), log::SetLoggerError> {
    let file = sink.clone();
    fern::Dispatch::new()
        .level(level)
        .format(|out, message, record| {
            let mut buf = Vec::with_capacity(256);
            let mut line = Line::start(&mut buf, record.level(), &message.to_string());
            let mut fields = Fields(&mut line);
            let _ = record.key_values().visit(&mut fields);
            line.finish();
            buf.pop();
            out.finish(format_args!("{}", String::from_utf8_lossy(&buf)))
        })
        // Not fern's own stderr output: when stderr is gone (its reader closed the pipe), fern
        // falls back to stderr once more and then panics, in whatever thread was logging.
        .chain(fern::Output::call(|record| {
            to_stderr(&record.args().to_string())
        }))
        .chain(fern::Output::call(move |record| file.raw(record.args())))
        .apply()
}

struct Fields<'a, 'b>(&'a mut Line<'b>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_, '_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        match value.to_u64() {
            Some(n) => self.0.u64(key.as_str(), n),
            None => {
                let mut s = String::new();
                let _ = write!(s, "{value}");
                self.0.str(key.as_str(), &s)
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_stay_on_one_line() {
        let mut buf = Vec::new();
        let mut line = Line::start(&mut buf, Level::Info, "m");
        line.str("a", "x\n{\"level\":\"error\"}\r\u{1b}[31m\u{0}")
            .bytes("b", b"\xff\xfe")
            .u64("n", 0)
            .u64("m", u64::MAX)
            .ip("v4", [10, 0, 0, 255].into())
            .ip("v6", IpAddr::V6(1.into()));
        line.finish();
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["a"], "x\n{\"level\":\"error\"}\r\u{1b}[31m\u{0}");
        assert_eq!(v["b"], "\u{fffd}\u{fffd}");
        assert_eq!(v["level"], "info");
        assert_eq!(
            (v["n"].as_u64(), v["m"].as_u64()),
            (Some(0), Some(u64::MAX))
        );
        let all: String = (0u8..=0x7f).map(char::from).chain("é€😀".chars()).collect();
        let mut buf = Vec::new();
        json_str(&mut buf, &all);
        assert_eq!(serde_json::from_slice::<String>(&buf).unwrap(), all);
        assert_eq!(
            (v["v4"].as_str(), v["v6"].as_str()),
            (Some("10.0.0.255"), Some("::1"))
        );
    }

    /// Access records come out whole and as given, from the longest numbers and address to
    /// paths and user agents that outgrow [`Rec`]'s stack buffer.
    #[test]
    fn longest_access_record_is_whole() {
        let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let mut buf = Vec::new();
        let mut clock = Clock::default();
        let a = Access {
            method: "PROPPATCH",
            path: "/a\"b",
            status: 599,
            bytes: u64::MAX,
            at: Instant::now(),
            duration_us: u64::MAX,
            request_id: RequestId::given(b"id-1").unwrap(),
            client: v6,
            user_agent: b"ua\xff",
        };
        let now = Duration::new(1_764_134_415, 7_000_000);
        access_record(&mut buf, &mut clock, now, Level::Debug, &a);
        access_record(&mut buf, &mut clock, now, Level::Info, &a);
        let lines: Vec<serde_json::Value> = buf
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let v = &lines[0];
        assert_eq!(v["ts"], "2025-11-26T05:20:15.007Z");
        assert_eq!(
            (v["level"].as_str(), lines[1]["level"].as_str()),
            (Some("debug"), Some("info"))
        );
        assert_eq!(v["msg"], "access");
        assert_eq!(v["method"], "PROPPATCH");
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["status"], 599);
        assert_eq!(
            (v["bytes"].as_u64(), v["duration_us"].as_u64()),
            (Some(u64::MAX), Some(u64::MAX))
        );
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["client"], v6.to_string());
        assert_eq!(v["user_agent"], "ua\u{fffd}");

        let path = format!("/{}", "\"x".repeat(REC_BUF));
        let ua = "u".repeat(REC_BUF * 3);
        let long = Access {
            path: &path,
            user_agent: ua.as_bytes(),
            client: [10, 1, 2, 3].into(),
            ..a
        };
        let mut buf = Vec::new();
        access_record(&mut buf, &mut clock, now, Level::Info, &long);
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            (v["path"].as_str(), v["user_agent"].as_str()),
            (Some(&*path), Some(&*ua))
        );
        assert_eq!(
            (v["client"].as_str(), v["status"].as_u64()),
            (Some("10.1.2.3"), Some(599))
        );
    }

    /// The table-driven IPv4 text matches the standard library's, octet values of every width.
    #[test]
    fn ipv4_text_matches_std() {
        for octet in 0..=255u8 {
            for ip in [[octet, 0, 9, 10], [255, 99, 100, octet]] {
                let ip = IpAddr::from(ip);
                let mut buf = Vec::new();
                push_ip(&mut buf, ip);
                assert_eq!(buf, format!("\"{ip}\"").into_bytes());
            }
        }
    }

    /// Record times follow the monotonic clock from one reading of the wall clock, and a
    /// reading over a second old is replaced.
    #[test]
    fn clock_reads_the_wall_clock_once_a_second() {
        let wall = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let mut clock = Clock::default();
        let t0 = Instant::now();
        let first = clock.since_epoch(t0);
        assert!(wall().abs_diff(first) < Duration::from_millis(100));
        let later = t0 + Duration::from_millis(300);
        assert_eq!(clock.since_epoch(later), first + Duration::from_millis(300));
        // Earlier than the reading: the reading's time, not a new reading.
        assert_eq!(clock.since_epoch(t0 - Duration::from_millis(5)), first);
        assert_eq!(clock.base.map(|b| b.0), Some(t0));
        let much_later = t0 + Duration::from_millis(1500);
        clock.since_epoch(much_later);
        assert_eq!(clock.base.map(|b| b.0), Some(much_later), "not read again");
    }

    #[test]
    fn timestamp_is_rfc3339_utc_millis() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_764_134_415_123_456_789).unwrap();
        assert_eq!(timestamp(t), "2025-11-26T05:20:15.123Z");
    }
}
