//! `GET /`: who this replica is and how it is doing, its log's headroom included. Also the
//! liveness probe: it answers whenever the server does, draining or not, log writable or not,
//! and touches no disk (the log's figures are those its writer thread last measured).

use std::sync::atomic::Ordering;
use std::time::Instant;

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::ROUTES;
use super::body::{self, Body};
use crate::app::App;
use crate::config;
use crate::logging::json;

/// `GET /`: who this is and how it is doing.
pub(super) fn get(app: &App) -> Response<Body> {
    let cap = app.cap.snapshot(Instant::now());
    let started_at = json::timestamp(app.started_at);
    let log = app.sink.stats().snapshot();
    let routes: Vec<Value> = ROUTES
        .iter()
        .map(|(m, p, d)| json!({ "methods": m, "path": p, "description": d }))
        .collect();
    body::json(
        StatusCode::OK,
        &json!({
            "service": env!("CARGO_PKG_NAME"),
            "version": env!("CARGO_PKG_VERSION"),
            "hostname": config::hostname(),
            "started_at": String::from_utf8_lossy(&started_at),
            "uptime_seconds": app.started.elapsed().as_secs(),
            "requests_served": app.requests.load(Ordering::Relaxed) + 1,
            "requests_unparsed": app.unparsed.load(Ordering::Relaxed),
            "events_accepted": app.events.load(Ordering::Relaxed),
            "connections": {
                "max": app.cfg.max_connections,
                "at_cap_ms": cap.at_cap.as_millis() as u64,
                "evicted_idle": cap.evicted_idle,
                "evicted_head": cap.evicted_head,
            },
            "log": {
                "file": app.cfg.log_file.display().to_string(),
                "bytes": log.file_bytes,
                "rotated_files": log.rotated_files,
                "rotated_bytes": log.rotated_bytes,
                "rotations": log.rotations,
                "deleted_files": log.deleted_files,
                "volume_free_bytes": log.volume_free,
                "volume_total_bytes": log.volume_total,
            },
            "routes": routes,
        }),
    )
}
