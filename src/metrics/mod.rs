//! Numbers for Prometheus. [`Metrics`] holds what the request path counts, in atomics (no
//! lock, no allocation), and [`Process`] what `/proc` says of the process; a scrape reads
//! them together with what the rest of the service already keeps (the sink's write
//! counters, the connection cap's) and writes them out (`http::exposition`). Off unless
//! `METRICS_PORT` is set, and then the request path counts nothing: `App::metrics` is `None`.
//!
//! Label values are bounded: a route is one of the three or `other`, never the raw path; a
//! method one of those the routes take or `other`; a status one the service answers with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::Method;

mod process;

use crate::histogram::Snapshot;
use crate::histogram::{DURATION_BOUNDS_US, Histogram};
pub(crate) use process::Process;

/// The routes as labels; anything else is `other`.
const ROUTES: [&str; 4] = ["/", "/health", "/events", "other"];
/// The methods as labels.
const METHODS: [&str; 4] = ["GET", "HEAD", "POST", "other"];
/// The statuses the service answers with (those to heads the HTTP parser refused included,
/// as route and method `other`); any other is counted as `other`.
const STATUSES: [u16; 15] = [
    200, 201, 400, 404, 405, 408, 413, 414, 415, 422, 431, 500, 501, 503, 0,
];

/// What the request path counts.
pub(crate) struct Metrics {
    /// Requests by route, method and status.
    requests: Box<[AtomicU64]>,
    /// Request durations by route.
    durations: [Histogram; ROUTES.len()],
    /// Time from an event's record being handed to the sink to its acknowledgement.
    event_writes: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let series = ROUTES.len() * METHODS.len() * STATUSES.len();
        Metrics {
            requests: (0..series).map(|_| AtomicU64::new(0)).collect(),
            durations: std::array::from_fn(|_| Histogram::new(&DURATION_BOUNDS_US)),
            event_writes: Histogram::new(&DURATION_BOUNDS_US),
        }
    }

    /// Counts a request to `path` answered with `status` after `duration`.
    pub(crate) fn request(&self, method: &Method, path: &str, status: u16, duration: Duration) {
        let route = match path {
            "/" => 0,
            "/health" => 1,
            "/events" => 2,
            _ => 3,
        };
        let method = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            _ => 3,
        };
        let series = (route * METHODS.len() + method) * STATUSES.len() + status_index(status);
        self.requests[series].fetch_add(1, Ordering::Relaxed);
        self.durations[route].observe_micros(duration);
    }

    /// Counts a request whose head the HTTP parser refused, answered with `status`: route and
    /// method `other` (none could be read), and no duration (the service did no work for it).
    pub(crate) fn unparsed(&self, status: u16) {
        let other = (ROUTES.len() - 1) * METHODS.len() + METHODS.len() - 1;
        self.requests[other * STATUSES.len() + status_index(status)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Every series of requests: route, method, code (`None`: one not in the list) and count.
    pub(crate) fn requests(
        &self,
    ) -> impl Iterator<Item = (&'static str, &'static str, Option<u16>, u64)> + '_ {
        let series = ROUTES.iter().flat_map(|r| {
            METHODS.iter().flat_map(move |m| {
                STATUSES
                    .iter()
                    .map(move |&s| (*r, *m, (s != 0).then_some(s)))
            })
        });
        series
            .zip(self.requests.iter())
            .map(|((r, m, s), n)| (r, m, s, n.load(Ordering::Relaxed)))
    }

    /// Each route's request durations.
    pub(crate) fn durations(&self) -> impl Iterator<Item = (&'static str, Snapshot)> + '_ {
        ROUTES
            .iter()
            .copied()
            .zip(self.durations.iter().map(Histogram::snapshot))
    }

    /// The event write times.
    pub(crate) fn event_writes(&self) -> Snapshot {
        self.event_writes.snapshot()
    }

    /// Counts an event acknowledged `wait` after its record was handed to the sink.
    pub(crate) fn event_written(&self, wait: Duration) {
        self.event_writes.observe_micros(wait);
    }
}

/// Where `status` is in [`STATUSES`]: its own place, or the last (`other`).
fn status_index(status: u16) -> usize {
    STATUSES[..STATUSES.len() - 1]
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() - 1)
}
