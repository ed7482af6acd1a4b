//! The writer thread's chores between writes: retention (`LOG_KEEP`, `LOG_MAX_AGE`), marking
//! an idle file as alive so that other replicas' retention leaves it, and measuring the file
//! and its volume for `GET /` and the metrics. A ticker thread asks for them, so that the
//! writer's loop keeps no schedule of its own.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use log::Level;

use super::file;
use super::rotate;
use super::shared::{Output, Shared};
use crate::config::LogRotation;
use crate::lock;

/// How often the volume's free space and the file's size are measured for `GET /`.
const MEASURE_EVERY: Duration = Duration::from_secs(10);

/// Asks the writer thread for its chores every `tick`; ends with the sink.
pub(super) fn ticker(shared: &std::sync::Weak<Shared>, tick: Duration) {
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

/// The writer thread's chores between writes, each on its own period, counted in the ticks
/// of the ticker thread: retention every `LOG_MAX_AGE`/8 within the bounds in [`Upkeep::new`]
/// (and after every rotation, which runs it itself), marking an idle file alive on the same
/// period, and measuring the file and its volume every [`MEASURE_EVERY`]. Ticks that come
/// while the writer is busy count once.
pub(super) struct Upkeep {
    tick: Duration,
    ticks: u64,
    sweep_every: u64,
    measure_every: u64,
}

impl Upkeep {
    pub(super) fn new(rotation: &LogRotation) -> Upkeep {
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

    /// How often the ticker thread asks for the chores.
    pub(super) fn tick(&self) -> Duration {
        self.tick
    }

    pub(super) fn run(&mut self, shared: &Shared, out: &mut Output) {
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
pub(super) fn retain(shared: &Shared) {
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
