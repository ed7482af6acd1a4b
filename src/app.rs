//! [`App`], the state every connection of one server shares: the configuration, the log
//! sink, the id generator, the counters `GET /` reports, and whether the server is draining.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use time::OffsetDateTime;

use crate::config::{self, Config};
use crate::ids::IdGen;
use crate::logging::Sink;

/// State shared by every connection of one server.
pub struct App {
    pub cfg: Config,
    pub sink: Sink,
    pub ids: IdGen,
    pub(crate) hostname: &'static str,
    pub(crate) started_at: OffsetDateTime,
    pub(crate) started: Instant,
    /// Requests answered, for `GET /`.
    pub(crate) requests: AtomicU64,
    /// Events acknowledged with a 201, for `GET /`.
    pub(crate) events: AtomicU64,
    /// Set at the first shutdown request: `/health` answers 503 and answers close their
    /// connection, so load balancers and keep-alive clients move to other replicas.
    draining: AtomicBool,
}

impl App {
    pub fn new(cfg: Config, sink: Sink) -> App {
        App {
            cfg,
            sink,
            ids: IdGen::new(),
            hostname: config::hostname(),
            started_at: OffsetDateTime::now_utc(),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            events: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// Marks the server as draining (see [`App::draining`]); there is no way back.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown has been requested. Relaxed: an answer racing the request may go
    /// either way, and nothing else is published through this flag.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
