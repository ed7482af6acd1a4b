//! `api`: a minimal HTTP/1.1 microservice built to be deployed behind a load balancer. It
//! serves service information, a health probe and one functional endpoint (`POST /events`),
//! writes JSON-lines logs to a file, and shuts down gracefully as PID 1 in a container.
//!
//! # Layout
//!
//! A request flows down this list, and no module uses one above it (`main.rs` uses them all).
//!
//! - [`server`]: the listener (dual-stack by default), the accept loop, the connection cap and
//!   the graceful shutdown; `server::drain` keeps serving for the drain delay,
//!   `server::admission` decides who gets a slot at the cap (evicting idle and slow
//!   connections), and `server::conn` wraps each socket with the header, idle and write
//!   timeouts.
//! - [`shutdown`]: SIGTERM/SIGINT into a shutdown request, SIGHUP into a log reopen.
//! - [`routes`]: the router and the per-request envelope (request id, head checks, client
//!   address, access record).
//! - [`events`]: `POST /events`, the bounded body reader and the event record.
//! - [`health`]: `/health` (readiness), and the `--healthcheck` probe.
//! - [`app`]: the state connections share (configuration, sink, ids, counters, draining).
//! - [`error`], [`body`]: HTTP errors as JSON answers, and the response body type.
//! - [`logging`]: the log file's sink (buffered access records, durable event records, the
//!   writer thread) and the fern logger for diagnostics.
//! - [`rawjson`]: the JSON scanner for request bodies (checks, minifies, refuses duplicate
//!   keys; never re-encodes).
//! - [`json`]: the one JSON writer (escaping, numbers, timestamps, log lines).
//! - [`ids`]: request and event identifiers.
//! - [`config`]: settings from environment variables and flags, and their validation; the
//!   hostname that names this replica.
//! - [`prepare`]: `--prepare-logs`, run as root before the service starts.

pub mod app;
pub mod body;
pub mod config;
pub mod error;
pub mod events;
pub mod health;
pub mod ids;
pub mod json;
pub mod logging;
pub mod prepare;
pub mod rawjson;
pub mod routes;
pub mod server;
pub mod shutdown;

pub use server::run;

/// Locks `m`, ignoring poisoning: every critical section in this crate leaves its data
/// consistent, so a panic elsewhere while holding a lock is no reason to fail here too.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
