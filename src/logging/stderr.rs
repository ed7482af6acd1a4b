//! stderr, the second destination of diagnostics: `docker logs` reads it, and it is where a
//! failure of the log file itself is reported.

use std::io::{self, Write};

use log::Level;

use super::json::Line;

/// Writes one line to stderr, ignoring failure: `eprintln!` panics when stderr is a closed
/// pipe, and a diagnostic must never take down the code reporting it.
pub fn to_stderr(line: &str) {
    let mut err = io::stderr().lock();
    let _ = err
        .write_all(line.as_bytes())
        .and_then(|()| err.write_all(b"\n"));
}

/// Writes a diagnostic record without fields to stderr only, for when the log file is the
/// problem.
pub(super) fn record(level: Level, msg: &str) {
    let mut buf = Vec::with_capacity(128);
    Line::start(&mut buf, level, msg).finish();
    buf.pop();
    to_stderr(&String::from_utf8_lossy(&buf));
}
