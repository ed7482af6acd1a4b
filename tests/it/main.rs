//! The integration tests: one crate, one module per area, all over real sockets and files.

/// The HTTP/1.1 client over raw sockets.
mod kit;
/// The service under test, in process or as a child, and what it leaves behind.
mod support;

/// Slow, vanishing and flooding clients.
mod abuse;
/// kill -9, SIGTERM under load, full disks.
mod crash;
/// POST /events: exact storage, duplicate keys, EVENT_SYNC, generated bodies.
mod events;
/// Hostile input over raw TCP, from the case table in tests/data/.
mod hostile;
/// Body, head and time limits.
mod limits;
/// Log records: format, escaping, durability, rotation, concurrent writers.
mod logs;
/// The metrics listener: exact counters, both exposition formats, its own cap.
mod metrics;
/// Past the connection cap: who makes room for new clients.
mod overload;
/// The binary: configuration errors, signals, `--healthcheck`.
mod process;
/// A rolling restart behind a balancer that lags, with and without DRAIN_DELAY.
mod race;
/// Running as one of several replicas: drain delay, readiness vs liveness, dual stack,
/// per-replica log files.
mod replicas;
/// The log's own rotation and retention: under load, kill -9, a small volume, replicas.
mod rotation;
/// Routes, statuses, bodies and headers.
mod routes;
