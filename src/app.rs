//! [`App`], the state every connection of one server shares: the configuration, the log
//! sink, the id generator, and the counters `GET /` reports.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use time::OffsetDateTime;

use crate::config::Config;
use crate::ids::IdGen;
use crate::logging::Sink;

/// State shared by every connection of one server.
pub struct App {
    pub cfg: Config,
    pub sink: Sink,
    pub ids: IdGen,
    pub(crate) hostname: String,
    pub(crate) started_at: OffsetDateTime,
    pub(crate) started: Instant,
    /// Requests answered, for `GET /`.
    pub(crate) requests: AtomicU64,
    /// Events acknowledged with a 201, for `GET /`.
    pub(crate) events: AtomicU64,
}

impl App {
    pub fn new(cfg: Config, sink: Sink) -> App {
        App {
            cfg,
            sink,
            ids: IdGen::new(),
            hostname: hostname(),
            started_at: OffsetDateTime::now_utc(),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }
}

/// The kernel's hostname (the container id under Docker); no libc call needed.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
