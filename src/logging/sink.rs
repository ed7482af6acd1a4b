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

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use log::{Level, LevelFilter};
use tokio::sync::oneshot;

use super::access::{Access, AccessFormat};
use super::event::{self, EventRecord};
use super::file::{open_append, open_error, public_reason, write_batch};
use super::json::{Line, json_str};
use super::stderr;
use crate::config::{self, EventSync};
use crate::lock;

/// Longest time a buffered record waits before the background thread writes it.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Buffered bytes that make the background thread write at once instead of at the interval.
/// Larger writes cost less per byte, but a kill -9 can stop a large write part-way, at a page
/// boundary, leaving a torn line; this size keeps that window small (docs/performance.md).
const FLUSH_BYTES: usize = 32 * 1024;

/// Appends JSON lines to the log file; cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Sink(Arc<Shared>);

struct Shared {
    path: PathBuf,
    /// The replica's name, for the `host` field of every record: as text, and as a JSON
    /// string for the event records, which copy it rather than escape it each time.
    host: &'static str,
    host_json: Box<[u8]>,
    sync: EventSync,
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
    /// A task will ask the writer thread to write `buf` at once (it holds durable records).
    commit_scheduled: bool,
    flush_now: bool,
    /// Reopen requests, answered once the file at the path is open.
    reopen: Vec<ReopenAck>,
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
    /// `level` decides whether access records (info) and health-probe records (debug) are kept;
    /// `sync`, whether event records are synced to the disk before they are acknowledged.
    /// Every record names the replica that wrote it: `host`, the [`config::hostname`].
    pub fn open(path: &Path, level: LevelFilter, sync: EventSync) -> Result<Sink, OpenError> {
        let file = open_append(path, sync).map_err(|e| OpenError(open_error(path, &e)))?;
        let host = config::hostname();
        let mut host_json = Vec::new();
        json_str(&mut host_json, host);
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            host,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                access: AccessFormat::new(&host_json),
                acks: Vec::new(),
                commit_scheduled: false,
                flush_now: false,
                reopen: Vec::new(),
                closing: false,
            }),
            host_json: host_json.into(),
            sync,
            access: level >= LevelFilter::Info,
            debug: level >= LevelFilter::Debug,
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
            let result = match open_append(&shared.path, shared.sync) {
                Ok(f) => {
                    out.file = f;
                    Ok(())
                }
                Err(e) => {
                    // Keep writing to the old file: a record there beats a record lost.
                    let msg = open_error(&shared.path, &e);
                    stderr::record(Level::Error, &msg);
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

    let (mut written, mut error) = write_batch(&mut out_ref.file, &out_ref.batch);
    let mut failed_to = "write";
    if error.is_none() && shared.sync == EventSync::Data && !acks.is_empty() {
        // A failed sync is a failed write: nothing in the batch is acknowledged. The pages
        // are in the file as far as readers can tell, but whether they reach the disk is
        // unknown (the kernel may drop them and clear the error).
        if let Err(e) = out_ref.file.sync_data() {
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
