//! The log's front: [`Sink`], which every connection holds. *Access* records and diagnostics
//! are buffered and reach the file within the writer's flush interval; a request never waits
//! for the disk. *Event* records are durable: [`Sink::append_durable`] resolves only after the
//! `write(2)` that carried the record returned (and, with `EVENT_SYNC=data`, was synced), so
//! `POST /events` can acknowledge honestly. Events that arrive together share one write
//! (group commit): the first of a batch spawns a task that yields once, so that every request
//! ready on the runtime adds its record, and then wakes the writer thread (`writer`). Writes
//! never run on the runtime, so a stalled disk holds up the events waiting for it, not
//! `/health` or the other routes.
//!
//! Every batch is one `write` on a file opened with `O_APPEND`, so replicas appending to the
//! same bind-mounted file never interleave inside a line. What the log counts is in
//! [`LogStats`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use log::Level;
use tokio::sync::oneshot;

use super::access::{Access, AccessFormat};
use super::event::{self, EventRecord};
use super::file::{self, Hold, Taken};
use super::json::{Line, json_str};
use super::rotate::{self, Names};
use super::shared::{FLUSH_BYTES, NotWritten, Output, Pending, Shared};
use super::stats::LogStats;
use super::stderr;
use super::upkeep::{Upkeep, ticker};
use super::writer::writer_loop;
use crate::config::{self, Config};
use crate::lock;

/// Appends JSON lines to the log file; cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Sink(Arc<Shared>);

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
    /// `config::hostname`.
    pub fn open(cfg: &Config) -> Result<Sink, OpenError> {
        let path = &cfg.log_file;
        let hold = if cfg.log_rotation.enabled() {
            Hold::Exclusive
        } else {
            Hold::Shared
        };
        let Taken {
            file,
            unlocked,
            size,
        } = file::take(path, cfg.event_sync, hold).map_err(|e| OpenError(e.message(path, hold)))?;
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
        let upkeep = Upkeep::new(&shared.rotation);
        let tick = upkeep.tick();
        let worker = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer_loop(&worker, upkeep))
            .map_err(|e| OpenError(format!("cannot start the log writer thread: {e}")))?;
        *lock(&shared.writer) = Some(handle);
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
    pub(super) fn host(&self) -> &'static str {
        self.0.host
    }

    /// Whether records of `level` are kept (access records are info, probe records debug).
    pub(crate) fn enabled(&self, level: Level) -> bool {
        match level {
            Level::Error | Level::Warn => true,
            Level::Info | Level::Debug | Level::Trace => level <= self.0.level,
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
