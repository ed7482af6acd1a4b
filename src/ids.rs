//! Identifiers for requests and events: 32 hex digits, time-ordered and unique without
//! coordination. The layout is 48 bits of Unix milliseconds, 48 random bits drawn once per
//! process, and a 32-bit per-process sequence: restarts differ in time and randomness, and
//! replicas writing one log file differ in randomness. The milliseconds are the wall clock's
//! at the process's start, counted on by the monotonic clock to the instant the caller gives
//! (its request's arrival, which it read anyway): no clock reading of their own per id, and
//! a process's ids never go back in time when the wall clock is stepped. [`RequestId`] is the
//! id a request's records carry: the client's `X-Request-Id` if it is safe, else a generated
//! one.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Hands out ids; one per process (or per server in tests).
pub(crate) struct IdGen {
    node: u64,
    seq: AtomicU32,
    /// A monotonic instant and the Unix milliseconds read right after it.
    origin: (Instant, u64),
}

impl IdGen {
    pub(crate) fn new() -> IdGen {
        let seed = random_u64();
        let origin = Instant::now();
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        IdGen {
            node: seed & 0xffff_ffff_ffff,
            seq: AtomicU32::new((seed >> 48) as u32),
            origin: (origin, ms),
        }
    }

    /// A new id for something that happened at `at`, e.g. `019ac1f2e3a47c1d9b0e55aa0000002a`.
    pub(crate) fn next(&self, at: Instant) -> Id {
        let (origin, origin_ms) = self.origin;
        let ms = origin_ms + at.saturating_duration_since(origin).as_millis() as u64;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let value =
            u128::from(ms & 0xffff_ffff_ffff) << 80 | u128::from(self.node) << 32 | u128::from(seq);
        // Two digits per byte from a table, into a fixed array: this runs once or twice per
        // request, and a digit at a time costs a shift, a mask and a load each.
        let mut hex = [0; 32];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(value.to_be_bytes()) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        Id(hex)
    }
}

/// Every byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    table
};

/// One id: 32 lowercase hex digits, kept inline (no allocation).
#[cfg_attr(test, derive(PartialEq, Eq, Hash))]
pub(crate) struct Id([u8; 32]);

impl Id {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    #[cfg(test)]
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("an id is hex digits")
    }
}

/// A request id as records carry it: a client's `X-Request-Id` that passed [`RequestId::given`],
/// or a generated [`Id`]. Either way it is 1-128 characters of `A-Z a-z 0-9 - _ . : / + = @`,
/// none of which JSON escapes: the type is the proof, so the access record of every request
/// copies the id without looking at it again.
#[derive(Clone, Copy)]
pub(crate) struct RequestId<'a>(&'a [u8]);

impl<'a> RequestId<'a> {
    /// A client-supplied id, if it is 1-128 characters of `A-Z a-z 0-9 - _ . : / + = @`.
    pub(crate) fn given(v: &'a [u8]) -> Option<RequestId<'a>> {
        let safe = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b);
        ((1..=128).contains(&v.len()) && v.iter().all(safe)).then_some(RequestId(v))
    }

    pub(crate) fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

impl<'a> From<&'a Id> for RequestId<'a> {
    fn from(id: &'a Id) -> RequestId<'a> {
        RequestId(&id.0)
    }
}

/// 64 random bits from the kernel; if `/dev/urandom` is missing (an odd sandbox), from the
/// standard library's randomly keyed hasher mixed with the pid and the clock.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok()
    {
        return u64::from_le_bytes(bytes);
    }
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client ids are bounded, and nothing accepted needs escaping in JSON or breaks a line.
    #[test]
    fn given_request_ids_are_bounded_and_safe() {
        let ok = |v: &[u8]| RequestId::given(v).is_some();
        assert!(ok(b"abc-123_x.y:z/+=@"));
        assert!(ok(&[b'a'; 128]));
        assert!(!ok(b""));
        assert!(!ok(&[b'a'; 129]));
        assert!(!ok(b"a b"));
        for b in 0..=255u8 {
            if ok(&[b]) {
                assert!(
                    (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\',
                    "byte {b:#x}"
                );
            }
        }
    }

    #[test]
    fn ids_are_unique_and_hex() {
        let a = IdGen::new();
        let b = IdGen::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(a.next(Instant::now())));
            assert!(seen.insert(b.next(Instant::now())));
        }
        let id = a.next(Instant::now());
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
        // The sequence is the last 8 digits and counts up by one.
        let next = a.next(Instant::now());
        let seq = |id: &Id| u32::from_str_radix(&id.as_str()[24..], 16).unwrap();
        assert_eq!(seq(&next), seq(&id).wrapping_add(1));
        assert_eq!(
            id.as_str()[12..24],
            next.as_str()[12..24],
            "node bits are per process"
        );
        // The first 12 digits are the Unix time in milliseconds.
        let ms = u64::from_str_radix(&id.as_str()[..12], 16).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now.abs_diff(ms) < 60_000, "id time {ms}, now {now}");
    }
}
