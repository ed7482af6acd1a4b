//! `api`: a minimal HTTP/1.1 microservice built to be deployed behind a load balancer. It
//! serves service information, a health probe and one functional endpoint (`POST /events`),
//! writes JSON-lines logs to a file, and shuts down gracefully as PID 1 in a container.
//!
//! # Layout
//!
//! - [`config`]: settings from environment variables and flags, and their validation.
//! - [`logging`]: the log file sink (buffered access records, durable event records) and the
//!   fern logger for diagnostics.
//! - [`server`]: the accept loop, connection limits, timeouts and the graceful drain.
//! - [`routes`]: the router, the handlers and the per-request envelope (ids, access records).
//! - [`body`], [`error`]: response bodies, the bounded body reader, and HTTP errors as JSON.
//! - [`health`]: the `/health` handler and the `--healthcheck` probe.
//! - [`shutdown`]: SIGTERM/SIGINT into a shutdown request, SIGHUP into a log reopen.
//! - [`ids`]: request and event identifiers.

pub mod body;
pub mod config;
pub mod error;
pub mod health;
pub mod ids;
pub mod logging;
pub mod routes;
pub mod server;
pub mod shutdown;

pub use server::run;
