//! The integration tests: one crate, one module per area, all over real sockets and files.

/// The raw-socket client and process helpers of the fault tests.
mod kit;
mod support;

/// Slow, vanishing and flooding clients.
mod abuse;
/// kill -9, SIGTERM under load, full disks.
mod crash;
/// Hostile input over raw TCP, from the case table in tests/data/.
mod hostile;
/// Body, head and time limits.
mod limits;
/// Log records: format, escaping, durability, rotation, concurrent writers.
mod logs;
/// Past the connection cap: who makes room for new clients.
mod overload;
/// The binary: configuration errors, signals, `--healthcheck`.
mod process;
/// Routes, statuses, bodies and headers.
mod routes;
