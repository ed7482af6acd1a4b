//! The log's writer thread: it waits for records (at most [`FLUSH_INTERVAL`] after the first,
//! or at once for a batch of events or a full buffer), takes the whole buffer and writes it in
//! one `write`, syncs it with `EVENT_SYNC=data`, and only then answers the events it carried
//! (group commit). A failed write marks the log unhealthy until a later write succeeds; while
//! failing, the thread retries every [`FLUSH_INTERVAL`] with a notice record, so health
//! recovers by itself once space returns.
//!
//! With `LOG_MAX_BYTES` it rotates the file where the next records would take it past that
//! size: at a record boundary, so every record is whole in exactly one file, and with
//! `EVENT_SYNC=data` no record in the new file is acknowledged before the directory holding
//! both names is synced. Between writes it runs its chores (`upkeep`).

use std::io;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::Level;
use time::OffsetDateTime;

use super::file::{self, Taken, public_reason, write_batch};
use super::json::Line;
use super::rotate::{self, NotRotated};
use super::shared::{FLUSH_INTERVAL, Failure, NotWritten, Output, Shared};
use super::stderr;
use super::upkeep::{Upkeep, retain};
use crate::config::EventSync;
use crate::lock;

/// After a rotation that failed, how long the writer appends to the full file before it
/// tries again.
const ROTATE_RETRY: Duration = Duration::from_secs(10);

/// The background thread: writes buffered records at most [`FLUSH_INTERVAL`] after they
/// arrive, retries while the file is failing, reopens on request, runs its [`Upkeep`] between
/// writes, and writes the rest on close.
pub(super) fn writer_loop(shared: &Shared, mut upkeep: Upkeep) {
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

/// Opens the file at the path anew (after a rename by logrotate, or a delete), unless it is
/// the file in use. On failure the writer keeps writing to the old file: a record there beats
/// a record lost.
fn reopen_file(shared: &Shared, out: &mut Output) -> Result<(), String> {
    if file::same_file(&out.file, &shared.path) {
        return Ok(());
    }
    let msg = match file::take(&shared.path, shared.sync, shared.hold) {
        Ok(Taken {
            file,
            unlocked,
            size,
        }) => {
            if let Some(e) = unlocked {
                shared.note(Level::Warn, "cannot lock log file", |l| {
                    l.str("path", &shared.path.display().to_string())
                        .str("error", &e.to_string());
                });
            }
            out.size = size;
            out.file = file;
            // A rotation waiting for this reopen may go ahead.
            out.rotate_after = None;
            shared.stats.file_bytes.store(out.size, Ordering::Relaxed);
            return Ok(());
        }
        Err(e) => e.message(&shared.path, shared.hold),
    };
    stderr::record(Level::Error, &msg);
    Err(msg)
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
    let mut failed = None;
    while done < out.batch.len() {
        let rest = &out.batch[done..];
        // Rotation off, or a failed rotation waiting for its retry: all of it.
        let take = if max == 0 || out.rotate_after.is_some_and(|t| Instant::now() < t) {
            rest.len()
        } else {
            fit(rest, max.saturating_sub(out.size), out.size == 0)
        };
        if take == 0 {
            if let Err(e) = rotate_now(shared, out) {
                failed = Some((e, "sync"));
                break;
            }
            continue;
        }
        let (n, error) = write_batch(&mut out.file, &out.batch[done..done + take]);
        done += n;
        out.size += n as u64;
        if let Some(e) = error {
            failed = Some((e, "write"));
            break;
        }
    }
    // What reached the file counts, whether or not the batch went whole.
    if done > 0 {
        out.wrote = true;
        shared.stats.file_bytes.store(out.size, Ordering::Relaxed);
        shared
            .stats
            .written_bytes
            .fetch_add(done as u64, Ordering::Relaxed);
    }
    match failed {
        None => (done, None, "write"),
        Some((e, what)) => (done, Some(e), what),
    }
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
