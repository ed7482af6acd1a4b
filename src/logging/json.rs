//! The project's one JSON writer: string escaping, numbers, addresses and timestamps written
//! by hand into byte buffers, and [`Line`], which builds one diagnostic record. Every log
//! record and the `201` answer come through here; `serde_json` is kept for the rare answers
//! built as trees (`GET /`, error bodies). Request bodies are read by [`crate::rawjson`].
//!
//! Every string from a client goes through `json_str` or `json_bytes`, so no input can
//! break a line or add a field.

use std::fmt::Write as _;
use std::net::IpAddr;

use log::Level;
use time::OffsetDateTime;

/// The two decimal digits of 0..=99: numbers are written two digits at a time, which halves
/// the divisions.
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut table = [[0; 2]; 100];
    let mut i = 0;
    while i < 100 {
        table[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    table
};

/// Writes the last `out.len()` decimal digits of `n` into `out`, zero-padded.
fn decimal(out: &mut [u8], mut n: u64) {
    let mut end = out.len();
    while end >= 2 {
        out[end - 2..end].copy_from_slice(&DIGIT_PAIRS[(n % 100) as usize]);
        n /= 100;
        end -= 2;
    }
    if end == 1 {
        out[0] = b'0' + (n % 10) as u8;
    }
}

/// Where the escapers write: a `Vec`, or a [`Rec`] over one.
pub(crate) trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Formats a record straight into the `Vec`, which its owner sizes for its records: each
/// piece is an inlined capacity check and copy, and a constant field name a few moves.
pub(crate) struct Rec<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Rec<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Rec<'a> {
        Rec { out }
    }

    /// The last `width` (at most 20) decimal digits of `n`, zero-padded.
    pub(crate) fn digits(&mut self, n: u64, width: usize) {
        let mut text = [0; 20];
        decimal(&mut text[..width], n);
        self.put_first(&text, width);
    }

    /// The first `len` bytes of `text`, copied as all `N` and then cut back: a copy of a size
    /// known when compiling is a few moves, where one of a size known only at run time is a
    /// call to `memcpy`, which musl's copies byte by byte at both ends.
    #[inline(always)]
    pub(crate) fn put_first<const N: usize>(&mut self, text: &[u8; N], len: usize) {
        debug_assert!(len <= N);
        self.out.extend_from_slice(text);
        self.out.truncate(self.out.len() - (N - len));
    }

    pub(crate) fn u64(&mut self, n: u64) {
        // Most numbers here are short (a size, microseconds): compare before taking a log.
        let width = match n {
            0..=9 => 1,
            10..=99 => 2,
            100..=999 => 3,
            1000..=9999 => 4,
            _ => n.ilog10() as usize + 1,
        };
        self.digits(n, width);
    }

    /// An address in its usual text form (which never needs JSON escaping).
    pub(crate) fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                // Into a fixed array, then one copy of the used part (see `put_first`).
                let mut text = [0; 16];
                let mut len = 0;
                for octet in v4.octets() {
                    let [tens, ones] = DIGIT_PAIRS[usize::from(octet % 100)];
                    if octet >= 100 {
                        text[len] = b'0' + octet / 100;
                        len += 1;
                    }
                    if octet >= 10 {
                        text[len] = tens;
                        len += 1;
                    }
                    text[len] = ones;
                    text[len + 1] = b'.';
                    len += 2;
                }
                self.put_first(&text, len - 1); // without the last dot
            }
            IpAddr::V6(v6) => {
                // Writing to a Rec cannot fail.
                let _ = write!(self, "{v6}");
            }
        }
    }
}

impl Out for Rec<'_> {
    // Always inlined: most calls copy a constant field name, which then compiles to a few
    // moves instead of a call to memcpy.
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
}

impl std::fmt::Write for Rec<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.put(s.as_bytes());
        Ok(())
    }
}

/// Builds one JSON record in a buffer: `{"ts":…,"level":…,"msg":…` then fields, then `}\n`.
/// Strings go through `json_str`, so no input can break the line or add a field.
pub(crate) struct Line<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Line<'a> {
    /// Starts a record stamped now.
    pub(crate) fn start(buf: &'a mut Vec<u8>, level: Level, msg: &str) -> Line<'a> {
        buf.extend_from_slice(b"{\"ts\":\"");
        buf.extend_from_slice(&timestamp(OffsetDateTime::now_utc()));
        buf.extend_from_slice(b"\",\"level\":\"");
        buf.extend_from_slice(level_name(level).as_bytes());
        buf.extend_from_slice(b"\",\"msg\":");
        json_str(buf, msg);
        Line { buf }
    }

    /// Adds a string field.
    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        json_str(self.buf, value);
        self
    }

    /// Adds a number field.
    pub(crate) fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let mut rec = Rec::new(self.buf);
        rec.u64(value);
        self
    }

    /// Keys are the service's own identifiers, never client input: written without escaping.
    fn key(&mut self, key: &str) {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// Closes the record and its line.
    pub(crate) fn finish(self) {
        self.buf.extend_from_slice(b"}\n");
    }
}

/// What a byte needs in a JSON string: [`ESCAPE`] for `"`, `\\` and the controls below 0x20;
/// [`TOKEN`] for the printable ASCII that may appear in a token; 0 for the rest (space, DEL,
/// UTF-8 sequences), copied as they are. A table, so each byte is one lookup rather than a
/// chain of comparisons.
static CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            0..=0x1f | b'"' | b'\\' => ESCAPE,
            0x21..=0x7e => TOKEN,
            _ => 0,
        };
        b += 1;
    }
    table
};
const ESCAPE: u8 = 1;
const TOKEN: u8 = 2;

/// Writes `s` as a JSON string. RFC 8259 requires escaping only `"`, `\\` and the control
/// characters below U+0020; runs of other bytes are copied whole. Inline: most strings need
/// no escape, and then it is one look and one copy.
#[inline]
pub(crate) fn json_str(buf: &mut impl Out, s: &str) {
    let bytes = s.as_bytes();
    buf.put(b"\"");
    if bytes.iter().all(|&b| CLASS[usize::from(b)] != ESCAPE) {
        buf.put(bytes);
    } else {
        escape(buf, bytes);
    }
    buf.put(b"\"");
}

/// The inside of a JSON string for `bytes`, which hold something to escape.
#[inline(never)]
fn escape(buf: &mut impl Out, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if CLASS[usize::from(b)] != ESCAPE {
            continue;
        }
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
        };
        buf.put(&bytes[start..i]);
        buf.put(escape);
        start = i + 1;
    }
    buf.put(&bytes[start..]);
}

/// [`json_str`] for bytes that may not be UTF-8 (invalid sequences become U+FFFD).
pub(crate) fn json_bytes(buf: &mut impl Out, value: &[u8]) {
    // Printable ASCII, the usual user agent, needs one look rather than a UTF-8 check and
    // then an escape scan.
    if value
        .iter()
        .all(|&b| CLASS[usize::from(b)] == TOKEN || b == b' ')
    {
        buf.put(b"\"");
        buf.put(value);
        buf.put(b"\"");
        return;
    }
    match std::str::from_utf8(value) {
        Ok(s) => json_str(buf, s),
        Err(_) => json_str(buf, &String::from_utf8_lossy(value)),
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// The length of a [`timestamp`].
pub(crate) const TIMESTAMP_LEN: usize = 24;

/// The one timestamp format of records and answers: RFC 3339 in UTC with milliseconds,
/// `2026-11-26T05:20:15.123Z`, as a fixed-size array.
pub(crate) fn timestamp(t: OffsetDateTime) -> [u8; TIMESTAMP_LEN] {
    let (year, month, day) = t.to_calendar_date();
    let (h, mi, s, ms) = t.to_hms_milli();
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let year = u32::try_from(year).unwrap_or(0).min(9999);
    for (at, width, n) in [
        (0, 4, year),
        (5, 2, u32::from(u8::from(month))),
        (8, 2, u32::from(day)),
        (11, 2, u32::from(h)),
        (14, 2, u32::from(mi)),
        (17, 2, u32::from(s)),
        (20, 3, u32::from(ms)),
    ] {
        let mut n = n;
        for d in text[at..at + width].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_stay_on_one_line() {
        let mut buf = Vec::new();
        let mut line = Line::start(&mut buf, Level::Info, "m");
        line.str("a", "x\n{\"level\":\"error\"}\r\u{1b}[31m\u{0}")
            .u64("n", 0)
            .u64("m", u64::MAX);
        line.finish();
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["a"], "x\n{\"level\":\"error\"}\r\u{1b}[31m\u{0}");
        assert_eq!(v["level"], "info");
        assert_eq!(
            (v["n"].as_u64(), v["m"].as_u64()),
            (Some(0), Some(u64::MAX))
        );
        let all: String = (0u8..=0x7f).map(char::from).chain("é€😀".chars()).collect();
        let mut buf = Vec::new();
        json_str(&mut buf, &all);
        assert_eq!(serde_json::from_slice::<String>(&buf).unwrap(), all);
        // Bytes that are not UTF-8 become U+FFFD.
        let mut buf = Vec::new();
        json_bytes(&mut buf, b"\xff\xfe");
        assert_eq!(
            serde_json::from_slice::<String>(&buf).unwrap(),
            "\u{fffd}\u{fffd}"
        );
    }

    /// Numbers of every width come out as `Display` writes them, and fixed widths zero-padded.
    #[test]
    fn numbers_match_std() {
        let mut values = vec![0, u64::MAX];
        for p in 0..20 {
            let n = 10u64.pow(p);
            values.extend([n - 1, n, n + 1, n + n / 3]);
        }
        for n in values {
            let mut buf = Vec::new();
            Rec::new(&mut buf).u64(n);
            assert_eq!(buf, n.to_string().into_bytes());
        }
        let mut buf = Vec::new();
        let mut rec = Rec::new(&mut buf);
        rec.digits(7, 3);
        rec.digits(1234, 3);
        rec.digits(42, 2);
        assert_eq!(buf, b"00723442");
    }

    /// The IPv4 text matches the standard library's, octet values of every width.
    #[test]
    fn ipv4_text_matches_std() {
        for octet in 0..=255u8 {
            for ip in [[octet, 0, 9, 10], [255, 99, 100, octet]] {
                let ip = IpAddr::from(ip);
                let mut buf = Vec::new();
                Rec::new(&mut buf).ip(ip);
                assert_eq!(buf, ip.to_string().into_bytes());
            }
        }
    }

    #[test]
    fn timestamp_is_rfc3339_utc_millis() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_764_134_415_123_456_789).unwrap();
        assert_eq!(&timestamp(t), b"2025-11-26T05:20:15.123Z");
        let t = OffsetDateTime::from_unix_timestamp_nanos(946_684_799_009_000_000).unwrap();
        assert_eq!(&timestamp(t), b"1999-12-31T23:59:59.009Z");
        assert_eq!(
            &timestamp(OffsetDateTime::UNIX_EPOCH),
            b"1970-01-01T00:00:00.000Z"
        );
    }
}
