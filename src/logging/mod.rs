//! Logging: one file of JSON lines, written by one background thread, with two ways in.
//!
//! - Diagnostics (startup, warnings, errors) go through `log` and fern, which formats them as
//!   JSON records and sends them to stderr (for `docker logs`) and into the [`Sink`].
//! - Access and event records, the per-request path, skip `log` and fern: they are formatted
//!   straight into the sink's buffer (`Sink::access`) or handed over whole and waited for
//!   (`Sink::append_event`), which a logger's fire-and-forget interface cannot express.
//!
//! Files: `sink` is what connections call (buffer a record, wait for an event's write);
//! `shared` is the state it shares with the writer thread; `writer` is that thread (group
//! commit, sync, failures, rotation) and `upkeep` its chores between writes; `file` opens,
//! locks, writes and syncs the file and words its failures; `rotate` names, rotates and
//! deletes files (`LOG_MAX_BYTES`, `LOG_KEEP`, `LOG_MAX_AGE`); `stats` holds what the writer
//! counts and measures; `access` and `event` are the two record formats; `json` is the JSON
//! writer they (and every other record) are written with; `stderr` writes to stderr.

use std::fmt::Write as _;
use std::net::IpAddr;

use log::LevelFilter;

use crate::ids::RequestId;

mod access;
mod event;
mod file;
pub(crate) mod json;
mod rotate;
mod shared;
mod sink;
mod stats;
mod stderr;
mod upkeep;
mod writer;

use json::Line;

pub(crate) use access::Access;
pub(crate) use event::EventRecord;
pub use shared::NotWritten;
pub use sink::{OpenError, Sink};
pub use stats::LogStats;
pub use stderr::to_stderr;

/// The fields that tie a record to its request, as the access and the event record both
/// write them: `,"request_id":"…","client":"…"`.
fn request_fields(rec: &mut json::Rec<'_>, request_id: RequestId<'_>, client: IpAddr) {
    use json::Out;
    rec.put(b",\"request_id\":\"");
    rec.put(request_id.as_bytes());
    rec.put(b"\",\"client\":\"");
    rec.ip(client);
    rec.put(b"\"");
}

/// Installs the global logger: diagnostics at `level` go to stderr and into `sink`, as JSON
/// lines. Key-value pairs given to `log` macros become fields.
pub fn init(level: LevelFilter, sink: &Sink) -> Result<(), log::SetLoggerError> {
    let file = sink.clone();
    let host = sink.host();
    fern::Dispatch::new()
        .level(level)
        .format(move |out, message, record| {
            let mut buf = Vec::with_capacity(256);
            let mut line = Line::start(&mut buf, record.level(), &message.to_string());
            line.str("host", host);
            let mut fields = Fields(&mut line);
            let _ = record.key_values().visit(&mut fields);
            line.finish();
            buf.pop();
            out.finish(format_args!("{}", String::from_utf8_lossy(&buf)))
        })
        // Not fern's own stderr output: when stderr is gone (its reader closed the pipe), fern
        // falls back to stderr once more and then panics, in whatever thread was logging.
        .chain(fern::Output::call(|record| {
            to_stderr(&record.args().to_string())
        }))
        .chain(fern::Output::call(move |record| file.raw(record.args())))
        .apply()
}

/// Writes a `log` record's key-value pairs as fields: numbers as numbers, the rest as strings.
struct Fields<'a, 'b>(&'a mut Line<'b>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_, '_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        match value.to_u64() {
            Some(n) => self.0.u64(key.as_str(), n),
            None => {
                let mut s = String::new();
                let _ = write!(s, "{value}");
                self.0.str(key.as_str(), &s)
            }
        };
        Ok(())
    }
}
