//! What the log's writer thread counts and measures, in one place: bytes written, failed
//! writes, events per write and sync times, rotations and deletions since start (counters
//! and histograms), and the disk headroom as last measured (gauges). The writer thread
//! stores, anyone reads: `GET /` and the metrics read them without touching the disk, so a
//! stalled volume cannot hold up the liveness probe or a scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::file::REASONS;
use crate::histogram::{COUNT_BOUNDS, DURATION_BOUNDS_US, Histogram};

/// Stands for "not measured" (no volume figures from a file system that gives none).
const UNKNOWN: u64 = u64::MAX;

/// The log's counters and gauges, updated by the writer thread.
pub struct LogStats {
    /// Files rotated because the next records would have taken them past `LOG_MAX_BYTES`.
    pub rotations: AtomicU64,
    /// Files deleted by `LOG_KEEP` or `LOG_MAX_AGE`, and the bytes they held.
    pub deleted_files: AtomicU64,
    pub deleted_bytes: AtomicU64,
    /// The current file's size.
    pub(super) file_bytes: AtomicU64,
    /// This log file's rotated files in its directory, and their bytes.
    pub(super) rotated_files: AtomicU64,
    pub(super) rotated_bytes: AtomicU64,
    /// The log volume's bytes free to this process, and its size (`statvfs`).
    pub(super) volume_free: AtomicU64,
    pub(super) volume_total: AtomicU64,
    /// Bytes that reached the file.
    pub(crate) written_bytes: AtomicU64,
    /// Failed write (or sync) attempts by kind, in the order of [`LogStats::FAILURE_KINDS`];
    /// while the file fails, each retry counts.
    pub(crate) failures: [AtomicU64; REASONS.len()],
    /// Event records per write that carried any: how many events share one write, and with
    /// `EVENT_SYNC=data` one sync.
    pub(crate) batch_events: Histogram,
    /// How long each `fdatasync` of a batch took, in microseconds (`EVENT_SYNC=data`).
    pub(crate) sync_us: Histogram,
}

/// [`LogStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSnapshot {
    pub rotations: u64,
    pub deleted_files: u64,
    pub deleted_bytes: u64,
    pub file_bytes: u64,
    pub rotated_files: u64,
    pub rotated_bytes: u64,
    /// `None` where the file system did not say.
    pub volume_free: Option<u64>,
    pub volume_total: Option<u64>,
}

impl Default for LogStats {
    fn default() -> LogStats {
        LogStats {
            rotations: AtomicU64::new(0),
            deleted_files: AtomicU64::new(0),
            deleted_bytes: AtomicU64::new(0),
            file_bytes: AtomicU64::new(0),
            rotated_files: AtomicU64::new(0),
            rotated_bytes: AtomicU64::new(0),
            volume_free: AtomicU64::new(UNKNOWN),
            volume_total: AtomicU64::new(UNKNOWN),
            written_bytes: AtomicU64::new(0),
            failures: Default::default(),
            batch_events: Histogram::new(&COUNT_BOUNDS),
            sync_us: Histogram::new(&DURATION_BOUNDS_US),
        }
    }
}

impl LogStats {
    /// The kinds of failed write, as labels, in the order of [`LogStats::failures`].
    pub(crate) const FAILURE_KINDS: [&str; REASONS.len()] = {
        let mut kinds = [""; REASONS.len()];
        let mut i = 0;
        while i < REASONS.len() {
            kinds[i] = REASONS[i].0;
            i += 1;
        }
        kinds
    };

    /// Counts a write that failed with `e`.
    pub(super) fn failed(&self, e: &std::io::Error) {
        self.failures[super::file::reason(e)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a sync of a batch that took `took`.
    pub(super) fn synced(&self, took: Duration) {
        self.sync_us.observe_micros(took);
    }

    pub fn snapshot(&self) -> LogSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let known = |n: u64| (n != UNKNOWN).then_some(n);
        LogSnapshot {
            rotations: get(&self.rotations),
            deleted_files: get(&self.deleted_files),
            deleted_bytes: get(&self.deleted_bytes),
            file_bytes: get(&self.file_bytes),
            rotated_files: get(&self.rotated_files),
            rotated_bytes: get(&self.rotated_bytes),
            volume_free: known(get(&self.volume_free)),
            volume_total: known(get(&self.volume_total)),
        }
    }

    /// Records the volume's free and total bytes, or that they are unknown.
    pub(super) fn volume(&self, free_total: Option<(u64, u64)>) {
        let (free, total) = free_total.unwrap_or((UNKNOWN, UNKNOWN));
        self.volume_free.store(free, Ordering::Relaxed);
        self.volume_total.store(total, Ordering::Relaxed);
    }

    /// Records this log file's rotated files as counted in the directory.
    pub(super) fn rotated(&self, files: u64, bytes: u64) {
        self.rotated_files.store(files, Ordering::Relaxed);
        self.rotated_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(super) fn deleted(&self, bytes: u64) {
        self.deleted_files.fetch_add(1, Ordering::Relaxed);
        self.deleted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}
