//! The log file and the one background thread that writes it.
//!
//! *Access* records and diagnostics are buffered and reach the file within [`FLUSH_INTERVAL`];
//! a request never waits for the disk. *Event* records are durable: [`Sink::append_durable`]
//! resolves only after the `write(2)` that carried the record returned, so `POST /events` can
//! acknowledge honestly. Events that arrive together share one write (group commit): the first
//! of a batch spawns a task that yields once, so that every request ready on the runtime adds
//! its record, and then wakes the writer thread. Writes never run on the runtime, so a stalled
//! disk holds up the events waiting for it, not `/health` or the other routes.
//!
//! With `EVENT_SYNC=data` a batch carrying events is also `fdatasync`ed before any of them
//! is answered: one sync for the whole batch, and while it runs the next batch gathers, so
//! the cost of a sync is shared by every event that arrives during it.
//!
//! Every batch is one `write` on a file opened with `O_APPEND`, so replicas appending to the
//! same bind-mounted file never interleave inside a line. A failed write marks the sink
//! unhealthy (read by `/health`) until a later write succeeds; the background thread retries
//! with a notice record every [`FLUSH_INTERVAL`], so health recovers by itself once space
//! returns.
//!
//! With `LOG_MAX_BYTES` the thread also rotates the file (`rotate`) where the next records
//! would take it past that size: at a record boundary, so every record is whole in exactly
//! one file, and with `EVENT_SYNC=data` no record in the new file is acknowledged before the
//! directory holding both names is synced. Between writes it runs its chores ([`Upkeep`]):
//! retention, measuring the volume for `GET /`, and marking an idle file as alive. What it
//! counts is in [`LogStats`].

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::access::{Access, AccessFormat};
use super::event::{self, EventRecord};
use super::file::{
    self, Hold, TakeError, Taken, held_error, open_error, public_reason, write_batch,
};
use super::json::{Line, json_str};
use super::rotate::{self, Names, NotRotated};
use super::stats::LogStats;
use super::stderr;
use crate::config::{self, Config, EventSync, LogRotation};
use crate::lock;

/// Longest time a buffered record waits before the background thread writes it.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Buffered bytes that make the background thread write at once instead of at the interval.
/// Larger writes cost less per byte, but a kill -9 can stop a large write part-way, at a page
/// boundary, leaving a torn line; this size keeps that window small (docs/performance.md).
const FLUSH_BYTES: usize = 32 * 1024;

/// How often the volume's free space and the file's size are measured for `GET /`.
const MEASURE_EVERY: Duration = Duration::from_secs(10);

/// After a rotation that failed, how long the writer appends to the full file before it
/// tries again.
const ROTATE_RETRY: Duration = Duration::from_secs(10);

/// Appends JSON lines to the log file; cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Sink(Arc<Shared>);

struct Shared {
    path: PathBuf,
    /// The file's name and its kin's, for rotation and retention.
    names: Names,
    rotation: LogRotation,
    /// How this process holds the file: exclusively if it rotates it.
    hold: Hold,
    stats: LogStats,
    /// The replica's name, for the `host` field of every record: as text, and as a JSON
    /// string for the event records, which copy it rather than escape it each time.
    host: &'static str,
    host_json: Box<[u8]>,
    sync: EventSync,
    /// `LOG_LEVEL`, for the writer thread's own records.
    level: LevelFilter,
    access: bool,
    debug: bool,
    pending: Mutex<Pending>,
    /// Wakes the background thread (first buffered record, reopen, close).
    wake: Condvar,
    /// Held for the whole of a write, so batches reach the file in the order they were taken.
    output: Mutex<Output>,
    /// Why the last write failed, while no later write has succeeded.
    failure: Mutex<Option<Failure>>,
    failed: AtomicBool,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
}

type Ack = oneshot::Sender<Result<(), NotWritten>>;
type ReopenAck = oneshot::Sender<Result<(), String>>;

/// Why an append was not acknowledged, in words fit for a client: no path, uid or OS text
/// (the full error went to stderr and the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotWritten(pub &'static str);

impl std::fmt::Display for NotWritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A failed write: the client's reason and the operator's.
#[derive(Clone)]
struct Failure {
    public: &'static str,
    detail: String,
}

struct Pending {
    buf: Vec<u8>,
    /// How access records are written into `buf`.
    access: AccessFormat,
    /// Durable appends waiting for the write that carries `buf[..end]`.
    acks: Vec<(usize, Ack)>,
    /// How many of them carry a record (the rest are flushes).
    events: u64,
    /// A task will ask the writer thread to write `buf` at once (it holds durable records).
    commit_scheduled: bool,
    flush_now: bool,
    /// Reopen requests, answered once the file at the path is open.
    reopen: Vec<ReopenAck>,
    /// The ticker asks for the chores between writes ([`Upkeep`]).
    upkeep: bool,
    closing: bool,
}

struct Output {
    file: File,
    /// The buffer being written; swapped with `Pending::buf` so neither side reallocates.
    batch: Vec<u8>,
    /// Records that could not be written while the file was failing.
    unwritten: u64,
    /// The file's size: as measured, plus what this process wrote since.
    size: u64,
    /// Whether this process wrote to the file since the last retention pass.
    wrote: bool,
    /// A rotation that failed is not tried again before this.
    rotate_after: Option<Instant>,
    /// The directory has a new entry (a rotation) not yet synced: with `EVENT_SYNC=data`, no
    /// event is acknowledged before it is.
    dir_unsynced: bool,
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
    /// Opens (creating if needed) `cfg.log_file` and its directory, locks it (exclusively if
    /// `LOG_MAX_BYTES` has this process rotate it, else shared), and starts the background
    /// thread. `LOG_LEVEL` decides whether access records (info) and health-probe records
    /// (debug) are kept; `EVENT_SYNC`, whether event records are synced to the disk before
    /// they are acknowledged. Every record names the replica that wrote it: `host`, the
    /// [`config::hostname`].
    pub fn open(cfg: &Config) -> Result<Sink, OpenError> {
        let path = &cfg.log_file;
        let hold = if cfg.log_rotation.enabled() {
            Hold::Exclusive
        } else {
            Hold::Shared
        };
        let Taken { file, unlocked } = match file::take(path, cfg.event_sync, hold) {
            Ok(taken) => taken,
            Err(TakeError::Io(e)) => return Err(OpenError(open_error(path, &e))),
            Err(TakeError::Held) => return Err(OpenError(held_error(path, hold))),
        };
        let names = Names::new(path, &cfg.log_rotation.pattern);
        let host = config::hostname();
        let mut notices = Vec::new();
        match &unlocked {
            // Only a process that holds the file alone may undo a rotation cut short.
            None if hold == Hold::Exclusive => rotate::repair(&names),
            None => {}
            Some(e) => {
                let msg = format!(
                    "cannot lock log file {}: {e}; nothing stops a second process from writing it, so give each process its own LOG_FILE",
                    path.display()
                );
                let mut line = Line::start(&mut notices, Level::Warn, &msg);
                line.str("host", host);
                line.finish();
                stderr::to_stderr(String::from_utf8_lossy(&notices).trim_end());
            }
        }
        let size = file.metadata().map_or(0, |m| m.len());
        let mut host_json = Vec::new();
        json_str(&mut host_json, host);
        let stats = LogStats::default();
        stats.file_bytes.store(size, Ordering::Relaxed);
        stats.volume(file::volume(&file));
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            names,
            rotation: cfg.log_rotation.clone(),
            hold,
            stats,
            host,
            pending: Mutex::new(Pending {
                flush_now: false,
                buf: notices,
                access: AccessFormat::new(&host_json),
                acks: Vec::new(),
                events: 0,
                commit_scheduled: false,
                reopen: Vec::new(),
                // The first pass counts what is in the directory and deletes what is due.
                upkeep: true,
                closing: false,
            }),
            host_json: host_json.into(),
            sync: cfg.event_sync,
            level: cfg.log_level,
            access: cfg.log_level >= LevelFilter::Info,
            debug: cfg.log_level >= LevelFilter::Debug,
            wake: Condvar::new(),
            output: Mutex::new(Output {
                file,
                batch: Vec::with_capacity(FLUSH_BYTES * 2),
                unwritten: 0,
                size,
                wrote: false,
                rotate_after: None,
                dir_unsynced: false,
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
        let tick = Upkeep::new(&shared.rotation).tick;
        let weak = Arc::downgrade(&shared);
        thread::Builder::new()
            .name("log-upkeep".into())
            .spawn(move || ticker(&weak, tick))
            .map_err(|e| OpenError(format!("cannot start the log upkeep thread: {e}")))?;
        Ok(Sink(shared))
    }

    /// The log's counters (rotations, deletions) and its disk headroom as last measured.
    pub fn stats(&self) -> &LogStats {
        &self.0.stats
    }

    /// The replica's name, which every record carries as `host`.
    pub(crate) fn host(&self) -> &'static str {
        self.0.host
    }

    /// Whether records of `level` are kept (access records are info, probe records debug).
    pub(crate) fn enabled(&self, level: Level) -> bool {
        match level {
            Level::Error | Level::Warn => true,
            Level::Info => self.0.access,
            Level::Debug | Level::Trace => self.0.debug,
        }
    }

    /// Why the log cannot be written (the client's words), if the last write failed and none
    /// succeeded since.
    pub fn failure(&self) -> Option<&'static str> {
        if !self.0.failed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.0.failure).as_ref().map(|f| f.public)
    }

    /// Buffers one access record, formatted on the caller's thread.
    pub(crate) fn access(&self, level: Level, a: &Access<'_>) {
        let mut p = lock(&self.0.pending);
        let was_empty = p.buf.is_empty();
        let Pending { buf, access, .. } = &mut *p;
        access.write(buf, level, a);
        self.appended(p, was_empty);
    }

    /// Appends the record of an event and resolves once it is in the file, as
    /// [`Sink::append_durable`] does.
    pub(crate) async fn append_event(&self, r: &EventRecord<'_>) -> Result<(), NotWritten> {
        let mut record = Vec::with_capacity(256 + r.data.map_or(0, <[u8]>::len));
        event::write(&mut record, &self.0.host_json, r);
        self.append_durable(&record).await
    }

    /// Buffers a line that is already formatted (fern's output), adding the newline.
    pub(super) fn raw(&self, line: &std::fmt::Arguments<'_>) {
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
    /// carrying it, and everything buffered before it, has returned (and, with
    /// `EVENT_SYNC=data`, been synced). `Err` says why not. Must be called within a tokio
    /// runtime.
    pub(crate) async fn append_durable(&self, line: &[u8]) -> Result<(), NotWritten> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut p = lock(&self.0.pending);
            if p.closing {
                return Err(NotWritten("the service is shutting down"));
            }
            p.buf.extend_from_slice(line);
            let end = p.buf.len();
            p.acks.push((end, tx));
            p.events += u64::from(!line.is_empty());
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
            .unwrap_or(Err(NotWritten("the log writer stopped")))
    }

    /// Writes everything buffered so far; resolves when it is in the file.
    pub async fn flush(&self) -> Result<(), NotWritten> {
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

impl Shared {
    /// A record of the writer thread's own (a rotation, a deletion, a failure of either): to
    /// stderr and into the file, formatted as `log` records are. Written here rather than
    /// through `log`: they concern this file, and the first come before the logger is set.
    fn note(&self, level: Level, msg: &str, fields: impl FnOnce(&mut Line<'_>)) {
        if level > self.level {
            return;
        }
        let mut rec = Vec::with_capacity(256);
        let mut line = Line::start(&mut rec, level, msg);
        line.str("host", self.host);
        fields(&mut line);
        line.finish();
        stderr::to_stderr(String::from_utf8_lossy(&rec).trim_end());
        // The writer thread itself writes it next.
        lock(&self.pending).buf.extend_from_slice(&rec);
    }
}

/// The background thread: writes buffered records at most [`FLUSH_INTERVAL`] after they
/// arrive, retries while the file is failing, reopens on request, runs its [`Upkeep`] between
/// writes, and writes the rest on close.
fn writer_loop(shared: &Shared) {
    let mut upkeep = Upkeep::new(&shared.rotation);
    loop {
        let (reopen, chores, closing) = {
            let mut p = lock(&shared.pending);
            loop {
                if p.flush_now || !p.reopen.is_empty() || p.upkeep || p.closing {
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
            (
                std::mem::take(&mut p.reopen),
                std::mem::take(&mut p.upkeep),
                p.closing,
            )
        };
        let mut out = commit(shared);
        if !reopen.is_empty() {
            let result = reopen_file(shared, &mut out);
            for ack in reopen {
                let _ = ack.send(result.clone());
            }
        }
        if closing {
            // The last write may have rotated, and so left a record of it behind.
            drop(out);
            for _ in 0..2 {
                if lock(&shared.pending).buf.is_empty() {
                    break;
                }
                drop(commit(shared));
            }
            return;
        }
        if chores {
            upkeep.run(shared, &mut out);
        }
    }
}

/// Asks the writer thread for its chores every `tick`, so that no write has to look at the
/// clock; ends with the sink.
fn ticker(shared: &std::sync::Weak<Shared>, tick: Duration) {
    loop {
        thread::sleep(tick);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut p = lock(&shared.pending);
        if p.closing {
            return;
        }
        p.upkeep = true;
        drop(p);
        shared.wake.notify_one();
    }
}

/// Opens the file at the path anew (after a rename by logrotate, or a delete), unless it is
/// the file in use. On failure the writer keeps writing to the old file: a record there beats
/// a record lost.
fn reopen_file(shared: &Shared, out: &mut Output) -> Result<(), String> {
    if file::same_file(&out.file, &shared.path) {
        return Ok(());
    }
    let msg = match file::take(&shared.path, shared.sync, shared.hold) {
        Ok(Taken { file, unlocked }) => {
            if let Some(e) = unlocked {
                shared.note(Level::Warn, "cannot lock log file", |l| {
                    l.str("path", &shared.path.display().to_string())
                        .str("error", &e.to_string());
                });
            }
            out.size = file.metadata().map_or(0, |m| m.len());
            out.file = file;
            // A rotation waiting for this reopen may go ahead.
            out.rotate_after = None;
            shared.stats.file_bytes.store(out.size, Ordering::Relaxed);
            return Ok(());
        }
        Err(TakeError::Io(e)) => open_error(&shared.path, &e),
        Err(TakeError::Held) => held_error(&shared.path, shared.hold),
    };
    stderr::record(Level::Error, &msg);
    Err(msg)
}

/// The writer thread's chores between writes, each on its own period, counted in the ticks
/// of the ticker thread (so no chore reads the clock either): retention every `LOG_MAX_AGE`/8,
/// within 1 s to 5 min (and after every rotation, which runs it itself), marking an idle file
/// alive on the same period, and measuring the file and its volume every [`MEASURE_EVERY`].
/// Ticks that come while the writer is busy count once.
struct Upkeep {
    tick: Duration,
    ticks: u64,
    sweep_every: u64,
    measure_every: u64,
}

impl Upkeep {
    fn new(rotation: &LogRotation) -> Upkeep {
        let sweep = rotation.max_age.map_or(Duration::from_secs(300), |age| {
            (age / 8).clamp(Duration::from_secs(1), Duration::from_secs(300))
        });
        let tick = sweep.min(MEASURE_EVERY);
        let ticks =
            |period: Duration| (period.as_secs_f64() / tick.as_secs_f64()).round().max(1.0) as u64;
        Upkeep {
            tick,
            // The first pass, asked for at start, does everything: it counts what is there.
            ticks: 0,
            sweep_every: ticks(sweep),
            measure_every: ticks(MEASURE_EVERY),
        }
    }

    fn run(&mut self, shared: &Shared, out: &mut Output) {
        let (sweep, measure) = (
            self.ticks.is_multiple_of(self.sweep_every),
            self.ticks.is_multiple_of(self.measure_every),
        );
        self.ticks += 1;
        if sweep {
            // Another replica's sweep deletes what has not been written for LOG_MAX_AGE: a
            // file idle since the last pass shows it is alive by its time (its lock says so
            // too, where locks work).
            if !out.wrote {
                let _ = file::touch(&out.file);
            }
            out.wrote = false;
            retain(shared);
        }
        if sweep || measure {
            if let Ok(meta) = out.file.metadata() {
                out.size = meta.len();
            }
            let stats = &shared.stats;
            stats.file_bytes.store(out.size, Ordering::Relaxed);
            stats.volume(file::volume(&out.file));
        }
    }
}

/// Deletes what `LOG_KEEP` and `LOG_MAX_AGE` no longer keep, logs each deletion, and counts
/// the rotated files left.
fn retain(shared: &Shared) {
    let r = &shared.rotation;
    if !r.enabled() && r.max_age.is_none() {
        // Neither is on (the default): the directory is left alone, not even listed.
        return;
    }
    let keep = r.enabled().then_some(r.keep);
    let done = rotate::retain(&shared.names, keep, r.max_age);
    for d in &done.deleted {
        shared.stats.deleted(d.bytes);
        shared.note(Level::Info, "log file deleted", |l| {
            l.str("file", &d.path.display().to_string())
                .u64("bytes", d.bytes)
                .str("reason", d.reason)
                .u64("idle_s", d.idle.as_secs());
        });
    }
    for why in &done.failed {
        shared.note(Level::Warn, "log retention failed", |l| {
            l.str("error", why);
        });
    }
    shared.stats.rotated(done.rotated_files, done.rotated_bytes);
}

/// Takes everything buffered and writes it in one `write`, then answers the durable appends
/// it carried. Returns the output, still locked, for a reopen to follow without a gap.
/// Runs on the writer thread only.
fn commit(shared: &Shared) -> MutexGuard<'_, Output> {
    let mut out = lock(&shared.output);
    let out_ref = &mut *out;
    let (acks, events) = {
        let mut p = lock(&shared.pending);
        std::mem::swap(&mut p.buf, &mut out_ref.batch);
        p.commit_scheduled = false;
        p.flush_now = false;
        (std::mem::take(&mut p.acks), std::mem::take(&mut p.events))
    };
    let failing = shared.failed.load(Ordering::Acquire);
    if out_ref.batch.is_empty() && acks.is_empty() && !failing {
        return out;
    }

    // While failing, lead every attempt with a notice, so that an idle service still probes
    // the disk and its health recovers once a write goes through.
    let mut offset = 0;
    if failing {
        let reason = lock(&shared.failure)
            .as_ref()
            .map(|f| f.detail.clone())
            .unwrap_or_default();
        let mut notice = Vec::with_capacity(256);
        let mut line = Line::start(&mut notice, Level::Warn, "log file writable again");
        line.str("host", shared.host)
            .str("previous_error", &reason)
            .u64("unwritten_records", out_ref.unwritten);
        line.finish();
        offset = notice.len();
        out_ref.batch.splice(0..0, notice);
    }

    let (mut written, mut error, mut failed_to) = write_out(shared, out_ref);
    if failed_to == "sync" {
        written = offset;
    }
    if error.is_none() && shared.sync == EventSync::Data && !acks.is_empty() {
        // A failed sync is a failed write: nothing in the batch is acknowledged. The pages
        // are in the file as far as readers can tell, but whether they reach the disk is
        // unknown (the kernel may drop them and clear the error).
        let began = Instant::now();
        let synced = out_ref.file.sync_data().and_then(|()| {
            if out_ref.dir_unsynced {
                file::sync_dir(file::parent(&shared.path))?;
                out_ref.dir_unsynced = false;
            }
            Ok(())
        });
        shared.stats.synced(began.elapsed());
        if let Err(e) = synced {
            (written, error, failed_to) = (offset, Some(e), "sync");
        }
    }
    // The health state changes before any answer goes out: a client told 503 that then asks
    // /health must hear 503 too.
    let public = error.as_ref().map(public_reason);
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
            shared.stats.failed(e);
            let unwritten_part = &out_ref.batch[written.max(offset)..];
            out_ref.unwritten += unwritten_part.iter().filter(|&&b| b == b'\n').count() as u64;
            let detail = format!("cannot {failed_to} {}: {e}", shared.path.display());
            if !failing {
                // stderr directly: the file is what failed.
                stderr::record(Level::Error, &detail);
            }
            *lock(&shared.failure) = Some(Failure {
                public: public_reason(e),
                detail,
            });
            shared.failed.store(true, Ordering::Release);
        }
    }
    if events > 0 {
        shared.stats.batch_events.observe(events);
    }
    for (end, ack) in acks {
        let result = if end + offset <= written {
            Ok(())
        } else {
            // No error: an earlier record of the same write failed.
            Err(NotWritten(public.unwrap_or("log file not writable")))
        };
        let _ = ack.send(result);
    }
    out_ref.batch.clear();
    out
}

/// Writes the batch to the file: in one `write`, unless rotation is on and the batch would
/// take the file past `LOG_MAX_BYTES`, in which case the records that fit go first, then the
/// file is rotated, and so on. Returns the bytes written, the error that stopped it, and
/// what failed (`write`, or the `sync` of a full file before its rotation in data mode,
/// which leaves nothing of the batch acknowledgeable).
fn write_out(shared: &Shared, out: &mut Output) -> (usize, Option<io::Error>, &'static str) {
    let max = shared.rotation.max_bytes;
    let mut done = 0;
    while done < out.batch.len() {
        let rest = &out.batch[done..];
        // Rotation off, room enough, or a failed rotation waiting for its retry: all of it.
        let take = if max == 0
            || rest.len() as u64 <= max.saturating_sub(out.size)
            || out.rotate_after.is_some_and(|t| Instant::now() < t)
        {
            rest.len()
        } else {
            fit(rest, max.saturating_sub(out.size), out.size == 0)
        };
        if take == 0 {
            if let Err(e) = rotate_now(shared, out) {
                return (0, Some(e), "sync");
            }
            continue;
        }
        let (n, error) = write_batch(&mut out.file, &out.batch[done..done + take]);
        done += n;
        out.size += n as u64;
        if error.is_some() {
            return (done, error, "write");
        }
    }
    if done > 0 {
        out.wrote = true;
        shared.stats.file_bytes.store(out.size, Ordering::Relaxed);
        shared
            .stats
            .written_bytes
            .fetch_add(done as u64, Ordering::Relaxed);
    }
    (done, None, "write")
}

/// How much of `rest` (whole records) goes into a file with `room` bytes left: all of it if it
/// fits, else the records that fit; 0 means the file must be rotated first. An empty file
/// takes at least one record, however large.
fn fit(rest: &[u8], room: u64, empty: bool) -> usize {
    if rest.len() as u64 <= room {
        return rest.len();
    }
    // room < rest.len(), so it fits in a usize.
    match rest[..room as usize].iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if empty => rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1),
        None => 0,
    }
}

/// Rotates the full file and continues in a new one. A rotation that cannot happen (the file
/// at the path is not this process's any more, or renaming failed) is logged and retried
/// after [`ROTATE_RETRY`]; meanwhile records go to the full file. `Err` only when, in data
/// mode, the full file could not be synced.
fn rotate_now(shared: &Shared, out: &mut Output) -> io::Result<()> {
    let path = &shared.path;
    let now = Instant::now();
    let regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
    if !regular || !file::same_file(&out.file, path) {
        out.rotate_after = Some(now + ROTATE_RETRY);
        shared.note(
            Level::Warn,
            "log file not rotated: the path is not a regular file, or not the file this process writes (renamed or deleted by hand: SIGHUP reopens it)",
            |l| {
                l.str("path", &path.display().to_string());
            },
        );
        return Ok(());
    }
    if shared.sync == EventSync::Data {
        // The batch's records already in the full file are acknowledged with the rest.
        out.file.sync_data()?;
    }
    match rotate::rotate(&shared.names, shared.sync, OffsetDateTime::now_utc()) {
        Ok(r) => {
            let bytes = out.size;
            // The full file closes here, and its lock with it.
            out.file = r.file;
            out.size = 0;
            out.dir_unsynced = true;
            out.rotate_after = None;
            shared.stats.rotations.fetch_add(1, Ordering::Relaxed);
            shared.note(Level::Info, "log file rotated", |l| {
                l.str("file", &shared.names.path(&r.name).display().to_string())
                    .u64("bytes", bytes)
                    .str("reason", "LOG_MAX_BYTES")
                    .u64("max_bytes", shared.rotation.max_bytes);
            });
            // Before the rest of the batch: the directory never holds more than LOG_KEEP
            // rotated files and a live one with anything in it.
            retain(shared);
            shared.stats.volume(file::volume(&out.file));
        }
        Err(NotRotated::Failed(e)) => {
            out.rotate_after = Some(now + ROTATE_RETRY);
            shared.note(
                Level::Error,
                "log file rotation failed; writing on to the full file",
                |l| {
                    l.str("path", &path.display().to_string())
                        .str("error", &e.to_string());
                },
            );
        }
        Err(NotRotated::PathTaken(name)) => {
            // Not this process's path any more: the check above keeps it from rotating until
            // a SIGHUP reopens the path (which a lock held elsewhere refuses).
            out.rotate_after = Some(now + ROTATE_RETRY);
            out.dir_unsynced = true;
            shared.note(
                Level::Error,
                "another process created the log file's path during its rotation; writing on to the full file under its rotated name",
                |l| {
                    l.str("path", &path.display().to_string())
                        .str("file", &shared.names.path(&name).display().to_string());
                },
            );
        }
    }
    Ok(())
}
