//! The state the log's two sides share: the request side (the [`Sink`](super::Sink)'s
//! methods, which buffer records and wait for acknowledgements) and the writer thread
//! (`writer`, `upkeep`), which takes the buffer, writes it and answers. Everything that
//! crosses between them is here: `pending` (what the request side adds), `output` (the file
//! and what the writer knows about it), the failure the writer last met (read by `/health`),
//! and the counters in `stats`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter};
use tokio::sync::oneshot;

use super::access::AccessFormat;
use super::file::Hold;
use super::json::Line;
use super::rotate::Names;
use super::stats::LogStats;
use super::stderr;
use crate::config::{EventSync, LogRotation};
use crate::lock;

/// Longest time a buffered record waits before the background thread writes it.
pub(super) const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Buffered bytes that make the background thread write at once instead of at the interval.
/// Larger writes cost less per byte, but a kill -9 can stop a large write part-way, at a page
/// boundary, leaving a torn line; this size keeps that window small (docs/performance.md).
pub(super) const FLUSH_BYTES: usize = 32 * 1024;

/// One sink's state, held by every clone of it and by its writer thread.
pub(super) struct Shared {
    pub(super) path: PathBuf,
    /// The file's name and its kin's, for rotation and retention.
    pub(super) names: Names,
    pub(super) rotation: LogRotation,
    /// How this process holds the file: exclusively if it rotates it.
    pub(super) hold: Hold,
    pub(super) stats: LogStats,
    /// The replica's name, for the `host` field of every record: as text, and as a JSON
    /// string for the event records, which copy it rather than escape it each time.
    pub(super) host: &'static str,
    pub(super) host_json: Box<[u8]>,
    pub(super) sync: EventSync,
    /// `LOG_LEVEL`: which access records are kept, and the writer thread's own records.
    pub(super) level: LevelFilter,
    pub(super) pending: Mutex<Pending>,
    /// Wakes the background thread (first buffered record, reopen, close).
    pub(super) wake: Condvar,
    /// Held for the whole of a write, so batches reach the file in the order they were taken.
    pub(super) output: Mutex<Output>,
    /// Why the last write failed, while no later write has succeeded.
    pub(super) failure: Mutex<Option<Failure>>,
    pub(super) failed: AtomicBool,
    pub(super) writer: Mutex<Option<thread::JoinHandle<()>>>,
}

pub(super) type Ack = oneshot::Sender<Result<(), NotWritten>>;

pub(super) type ReopenAck = oneshot::Sender<Result<(), String>>;

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
pub(super) struct Failure {
    pub(super) public: &'static str,
    pub(super) detail: String,
}

pub(super) struct Pending {
    pub(super) buf: Vec<u8>,
    /// How access records are written into `buf`.
    pub(super) access: AccessFormat,
    /// Durable appends waiting for the write that carries `buf[..end]`.
    pub(super) acks: Vec<(usize, Ack)>,
    /// How many of them carry a record (the rest are flushes).
    pub(super) events: u64,
    /// A task will ask the writer thread to write `buf` at once (it holds durable records).
    pub(super) commit_scheduled: bool,
    pub(super) flush_now: bool,
    /// Reopen requests, answered once the file at the path is open.
    pub(super) reopen: Vec<ReopenAck>,
    /// The ticker asks for the chores between writes (`upkeep::Upkeep`).
    pub(super) upkeep: bool,
    pub(super) closing: bool,
}

pub(super) struct Output {
    pub(super) file: File,
    /// The buffer being written; swapped with `Pending::buf` so neither side reallocates.
    pub(super) batch: Vec<u8>,
    /// Records that could not be written while the file was failing.
    pub(super) unwritten: u64,
    /// The file's size: as measured, plus what this process wrote since.
    pub(super) size: u64,
    /// Whether this process wrote to the file since the last retention pass.
    pub(super) wrote: bool,
    /// A rotation that failed is not tried again before this.
    pub(super) rotate_after: Option<Instant>,
    /// The directory has a new entry (a rotation) not yet synced: with `EVENT_SYNC=data`, no
    /// event is acknowledged before it is.
    pub(super) dir_unsynced: bool,
}

impl Shared {
    /// A record of the writer thread's own (a rotation, a deletion, a failure of either): to
    /// stderr and into the file, formatted as `log` records are. Written here rather than
    /// through `log`: they concern this file, and the first come before the logger is set.
    pub(super) fn note(&self, level: Level, msg: &str, fields: impl FnOnce(&mut Line<'_>)) {
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
