//! The access record: one JSON line per request, formatted on the request's own task into
//! the sink's buffer. It runs for every request, so it is written through `Rec` with
//! constant field names, copies its constant text whole ([`AccessFormat`]), reuses the
//! formatted date and time within a second, takes the wall-clock time from the request's own
//! monotonic reading ([`Clock`]), and escapes only what needs it: the request id is proven
//! safe by its type, and the method, path and user agent are copied whole unless they hold a
//! byte JSON must escape.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::Method;
use log::Level;
use time::OffsetDateTime;

use super::json::{Out, Rec, json_bytes, json_str, timestamp};
use crate::ids::RequestId;

/// The fields of one access record.
pub(crate) struct Access<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    /// Body bytes of the answer.
    pub(crate) bytes: u64,
    /// When the answer was ready: the record's timestamp.
    pub(crate) at: Instant,
    /// Time to produce the answer.
    pub(crate) duration_us: u64,
    /// Needs no escaping (see [`RequestId`]).
    pub(crate) request_id: RequestId<'a>,
    pub(crate) client: IpAddr,
    pub(crate) user_agent: &'a [u8],
}

/// What the access records of one sink share: the clock, and the constant text of a record
/// at info and at debug level (see [`middle`]).
pub(super) struct AccessFormat {
    clock: Clock,
    info: Box<[u8]>,
    debug: Box<[u8]>,
}

impl AccessFormat {
    /// The format of records naming the replica `host` (a JSON string).
    pub(super) fn new(host: &[u8]) -> AccessFormat {
        AccessFormat {
            clock: Clock::default(),
            info: middle(Level::Info, host),
            debug: middle(Level::Debug, host),
        }
    }

    /// Appends the record of `a` at `level` to `buf`.
    pub(super) fn write(&mut self, buf: &mut Vec<u8>, level: Level, a: &Access<'_>) {
        let now = self.clock.since_epoch(a.at);
        let middle = match level {
            Level::Debug | Level::Trace => &self.debug,
            _ => &self.info,
        };
        access_record(buf, &mut self.clock, now, middle, a);
    }
}

/// Appends one access record to `buf` (see the module's doc). `middle` is the record's
/// constant text from the timestamp's `Z` to the method's opening quote (see [`middle`]).
fn access_record(
    buf: &mut Vec<u8>,
    clock: &mut Clock,
    now: Duration,
    middle: &[u8],
    a: &Access<'_>,
) {
    let mut rec = Rec::new(buf);
    clock.write(&mut rec, now);
    rec.put(middle);
    // A method is a token (RFC 9110), which has no byte JSON escapes.
    rec.put(a.method.as_str().as_bytes());
    rec.put(b"\",\"path\":");
    json_str(&mut rec, a.path);
    rec.put(b",\"status\":");
    rec.digits(u64::from(a.status), 3); // StatusCode is 100..=999
    rec.put(b",\"bytes\":");
    rec.u64(a.bytes);
    rec.put(b",\"duration_us\":");
    rec.u64(a.duration_us);
    super::request_fields(&mut rec, a.request_id, a.client);
    rec.put(b",\"user_agent\":");
    json_bytes(&mut rec, a.user_agent);
    rec.put(b"}\n");
}

/// The text of an access record of `level` between the timestamp's milliseconds and the
/// method, `host` (the replica's name as a JSON string) included: made once, so that a record
/// copies it whole rather than in pieces.
fn middle(level: Level, host: &[u8]) -> Box<[u8]> {
    let level: &[u8] = match level {
        Level::Debug | Level::Trace => b"debug",
        _ => b"info",
    };
    [
        b"Z\",\"level\":\"",
        level,
        b"\",\"msg\":\"access\",\"host\":",
        host,
        b",\"method\":\"",
    ]
    .concat()
    .into()
}

/// Wall-clock time for access records, read from the system clock at most once a second:
/// records carry a monotonic [`Instant`] (which the request read anyway) and are placed
/// relative to the last reading. Also the record's opening up to the last formatted
/// second, `{"ts":"YYYY-MM-DDTHH:MM:SS.`.
struct Clock {
    /// A monotonic instant and the wall-clock time read right after it.
    base: Option<(Instant, Duration)>,
    secs: u64,
    text: [u8; 27],
}

impl Default for Clock {
    fn default() -> Clock {
        Clock {
            base: None,
            secs: u64::MAX,
            text: *b"{\"ts\":\"0000-00-00T00:00:00.",
        }
    }
}

impl Clock {
    /// The wall-clock time (since the Unix epoch) of `at`. Within a second of the last
    /// reading it is derived from that reading, so it is off by the clocks' drift over at
    /// most a second; an `at` before the reading (another worker's earlier request) gets
    /// the reading's time.
    fn since_epoch(&mut self, at: Instant) -> Duration {
        let since_base = self
            .base
            .map(|(base, wall)| (at.saturating_duration_since(base), wall));
        match since_base {
            Some((since, wall)) if since < Duration::from_secs(1) => wall + since,
            _ => {
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                self.base = Some((at, wall));
                wall
            }
        }
    }

    /// Opens a record stamped `since_epoch`: `{"ts":"YYYY-MM-DDTHH:MM:SS.mmm`.
    fn write(&mut self, out: &mut Rec<'_>, since_epoch: Duration) {
        let secs = since_epoch.as_secs();
        if secs != self.secs {
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            self.text[7..26].copy_from_slice(&timestamp(t)[..19]);
            self.secs = secs;
        }
        out.put(&self.text);
        out.digits(u64::from(since_epoch.subsec_millis()), 3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Access records come out whole and as given, from the longest numbers and address to
    /// paths and user agents of a few kilobytes.
    #[test]
    fn longest_access_record_is_whole() {
        let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let mut buf = Vec::new();
        let mut clock = Clock::default();
        let a = Access {
            method: &Method::from_bytes(b"PROPPATCH").unwrap(),
            path: "/a\"b",
            status: 599,
            bytes: u64::MAX,
            at: Instant::now(),
            duration_us: u64::MAX,
            request_id: RequestId::given(b"id-1").unwrap(),
            client: v6,
            user_agent: b"ua\xff",
        };
        let now = Duration::new(1_764_134_415, 7_000_000);
        let host = br#""web-1""#;
        let (debug, info) = (middle(Level::Debug, host), middle(Level::Info, host));
        access_record(&mut buf, &mut clock, now, &debug, &a);
        access_record(&mut buf, &mut clock, now, &info, &a);
        let lines: Vec<serde_json::Value> = buf
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let v = &lines[0];
        assert_eq!(v["ts"], "2025-11-26T05:20:15.007Z");
        assert_eq!(
            (v["level"].as_str(), lines[1]["level"].as_str()),
            (Some("debug"), Some("info"))
        );
        assert_eq!(v["msg"], "access");
        assert_eq!(v["host"], "web-1");
        assert_eq!(v["method"], "PROPPATCH");
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["status"], 599);
        assert_eq!(
            (v["bytes"].as_u64(), v["duration_us"].as_u64()),
            (Some(u64::MAX), Some(u64::MAX))
        );
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["client"], v6.to_string());
        assert_eq!(v["user_agent"], "ua\u{fffd}");

        let path = format!("/{}", "\"x".repeat(512));
        let ua = "u".repeat(1536);
        let long = Access {
            path: &path,
            user_agent: ua.as_bytes(),
            client: [10, 1, 2, 3].into(),
            ..a
        };
        let mut buf = Vec::new();
        access_record(&mut buf, &mut clock, now, &info, &long);
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            (v["path"].as_str(), v["user_agent"].as_str()),
            (Some(&*path), Some(&*ua))
        );
        assert_eq!(
            (v["client"].as_str(), v["status"].as_u64()),
            (Some("10.1.2.3"), Some(599))
        );
    }

    /// Record times follow the monotonic clock from one reading of the wall clock, and a
    /// reading over a second old is replaced.
    #[test]
    fn clock_reads_the_wall_clock_once_a_second() {
        let wall = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let mut clock = Clock::default();
        let t0 = Instant::now();
        let first = clock.since_epoch(t0);
        assert!(wall().abs_diff(first) < Duration::from_millis(100));
        let later = t0 + Duration::from_millis(300);
        assert_eq!(clock.since_epoch(later), first + Duration::from_millis(300));
        // Earlier than the reading: the reading's time, not a new reading.
        assert_eq!(clock.since_epoch(t0 - Duration::from_millis(5)), first);
        assert_eq!(clock.base.map(|b| b.0), Some(t0));
        let much_later = t0 + Duration::from_millis(1500);
        clock.since_epoch(much_later);
        assert_eq!(clock.base.map(|b| b.0), Some(much_later), "not read again");
    }
}
