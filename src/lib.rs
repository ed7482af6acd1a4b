//! `api`: a minimal HTTP/1.1 microservice built to be deployed behind a load balancer. It
//! serves service information, a health probe and one functional endpoint (`POST /events`),
//! writes JSON-lines logs to a file, and shuts down gracefully as PID 1 in a container.
//!
//! # Layout
//!
//! In the order a request meets them; a module uses only those below it (`main.rs` wires
//! the top ones together).
//!
//! - `server`: the listener, the accept loop, admission at the connection cap (evicting
//!   idle and slow connections), each connection's guarded socket, and the shutdown phases.
//! - `http`: the one router (`match` over method and path) and a file per handler (`info`,
//!   `health`, `events`), the envelope every request passes through (request id, head checks,
//!   client address, access record), the body's framing and coding fields, errors as JSON
//!   answers, the answer to a head hyper could not parse, and bodies; apart from the router,
//!   `GET /metrics` of the metrics listener and the exposition it writes.
//! - [`App`]: the state every connection shares (settings, log sink, ids, counters, the
//!   shutdown phase).
//! - [`shutdown`]: shutdown requests and the one state of its phases; `signals` turns
//!   SIGTERM/SIGINT into requests and SIGHUP into a log reopen.
//! - `metrics`: what the request path counts for Prometheus, and what `/proc` says.
//! - [`logging`]: the log file's sink (writer thread, group commit, rotation and retention),
//!   the file, the access and event record formats, the JSON writer, what the writer counts,
//!   and fern for diagnostics.
//! - `histogram`: a histogram kept in atomics, for the metrics and the log writer.
//! - `rawjson`: the request body scanner (checks, minifies, refuses duplicate keys; never
//!   re-encodes).
//! - `ids`: request and event identifiers.
//! - `healthcheck` and `prepare`: the one-shot commands `--healthcheck` and `--prepare-logs`
//!   (the envelope knows the health check's `User-Agent`).
//! - [`config`]: settings from the environment and flags, their parsing and validation.

mod app;
pub mod config;
mod healthcheck;
mod histogram;
mod http;
mod ids;
pub mod logging;
mod metrics;
mod prepare;
mod rawjson;
mod server;
pub mod shutdown;
mod signals;

pub use app::App;
pub use healthcheck::probe;
pub use prepare::prepare_dir;
pub use server::{listen, listen_metrics, run, serve_metrics};
pub use signals::listen as listen_for_signals;

/// Locks `m`, ignoring poisoning: every critical section in this crate leaves its data
/// consistent, so a panic elsewhere while holding a lock is no reason to fail here too.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
