//! [`App`], the state every connection of one server shares: the configuration, the log
//! sink, the id generator, the counters `GET /` reports, and how far a shutdown has gone.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::config::Config;
use crate::ids::IdGen;
use crate::logging::Sink;
use crate::metrics::Metrics;
use crate::shutdown::Phases;

/// State shared by every connection of one server.
pub struct App {
    pub(crate) cfg: Config,
    pub(crate) sink: Sink,
    pub(crate) ids: IdGen,
    pub(crate) started_at: OffsetDateTime,
    pub(crate) started: Instant,
    /// Requests answered, for `GET /`.
    pub(crate) requests: AtomicU64,
    /// Heads the HTTP parser refused, answered by `http::unparsed` (not in `requests`).
    pub(crate) unparsed: AtomicU64,
    /// Events acknowledged with a 201, for `GET /`.
    pub(crate) events: AtomicU64,
    /// How far a shutdown has gone: from its first request on, `/health` answers 503 and
    /// answers close their connection, so load balancers and keep-alive clients move on.
    pub(crate) phases: Phases,
    /// What happened at the connection cap, for `GET /`, the log and the metrics.
    pub(crate) cap: CapCounters,
    /// What the request path counts for Prometheus, if the metrics listener is on.
    pub(crate) metrics: Option<Metrics>,
}

/// Time spent with every connection slot taken, and connections closed to make room.
#[derive(Default)]
pub(crate) struct CapCounters {
    /// Idle connections evicted: kept alive between requests, or new and silent.
    pub(crate) evicted_idle: AtomicU64,
    /// Connections evicted part-way through a request head.
    pub(crate) evicted_head: AtomicU64,
    /// Connections holding a slot now.
    pub(crate) open: AtomicU64,
    at_cap: Mutex<AtCap>,
}

#[derive(Default)]
struct AtCap {
    /// Since when every slot is taken, if it is now.
    since: Option<Instant>,
    /// Time at the cap before `since`.
    before: Duration,
}

/// [`CapCounters`] at one moment.
pub(crate) struct CapSnapshot {
    pub(crate) at_cap: Duration,
    pub(crate) reached: bool,
    pub(crate) evicted_idle: u64,
    pub(crate) evicted_head: u64,
    pub(crate) open: u64,
}

impl CapCounters {
    /// Every slot is taken from `now` on.
    pub(crate) fn reached(&self, now: Instant) {
        self.lock().since.get_or_insert(now);
    }

    /// A slot is free again from `now` on.
    pub(crate) fn left(&self, now: Instant) {
        let mut t = self.lock();
        if let Some(since) = t.since.take() {
            t.before += now.saturating_duration_since(since);
        }
    }

    pub(crate) fn snapshot(&self, now: Instant) -> CapSnapshot {
        let t = self.lock();
        let current = t.since.map(|s| now.saturating_duration_since(s));
        CapSnapshot {
            at_cap: t.before + current.unwrap_or_default(),
            reached: current.is_some(),
            evicted_idle: self.evicted_idle.load(Ordering::Relaxed),
            evicted_head: self.evicted_head.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AtCap> {
        crate::lock(&self.at_cap)
    }
}

impl App {
    /// The state of a server configured by `cfg` that logs to `sink`.
    pub fn new(cfg: Config, sink: Sink) -> App {
        let cfg_metrics = cfg.metrics_port.is_some();
        App {
            cfg,
            sink,
            ids: IdGen::new(),
            started_at: OffsetDateTime::now_utc(),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
            events: AtomicU64::new(0),
            phases: Phases::default(),
            cap: CapCounters::default(),
            metrics: cfg_metrics.then(Metrics::new),
        }
    }
}
