//! Keys: compared decoded (so `"a"` and `"\u0061"` are one key), checked for repeats within
//! an object, written into a path for the error message, and decoding itself.

use std::borrow::Cow;
use std::ops::Range;

/// Objects with more keys than this are checked for duplicates by sorting, not pairwise, so a
/// body of thousands of keys costs n log n comparisons, not n².
const PAIRWISE_KEYS: usize = 16;

/// A key as an input span between its quotes.
pub(super) struct Key {
    pub(super) raw: Range<usize>,
    pub(super) escaped: bool,
}

/// The index in `keys` of the first key (in document order) that repeats an earlier one.
pub(super) fn duplicate(input: &[u8], keys: &[Key]) -> Option<usize> {
    if keys.len() <= PAIRWISE_KEYS {
        return (1..keys.len())
            .find(|&j| (0..j).any(|i| key_bytes(input, &keys[i]) == key_bytes(input, &keys[j])));
    }
    let mut sorted: Vec<(Cow<'_, [u8]>, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (key_bytes(input, k), i))
        .collect();
    sorted.sort_unstable();
    sorted
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[1].1)
        .min()
}

/// A key's decoded bytes (its raw bytes when it has no escapes).
fn key_bytes<'a>(input: &'a [u8], key: &Key) -> Cow<'a, [u8]> {
    let raw = &input[key.raw.clone()];
    if key.escaped {
        Cow::Owned(decode(raw).into_bytes())
    } else {
        Cow::Borrowed(raw)
    }
}

/// A key, decoded (borrowed from the input when it has no escapes).
pub(super) fn key_text<'a>(input: &'a [u8], key: &Key) -> Cow<'a, str> {
    let raw = &input[key.raw.clone()];
    if key.escaped {
        Cow::Owned(decode(raw))
    } else {
        // The input was checked to be UTF-8 as a whole, and a span between quotes starts
        // and ends on character boundaries.
        String::from_utf8_lossy(raw)
    }
}

pub(super) fn push_path_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&serde_json::to_string(key).expect("a str serialises"));
        path.push(']');
    }
}

/// Decodes the text between a string's quotes, already checked by the scanner.
pub(crate) fn decode(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.iter().position(|&b| b == b'\\') {
        out.push_str(&String::from_utf8_lossy(&rest[..i]));
        let hex = |at: usize| {
            rest.get(at..at + 4)
                .and_then(|h| u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
                .unwrap_or(0xFFFD)
        };
        let (c, used) = match rest.get(i + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => {
                let unit = hex(i + 2);
                if (0xD800..=0xDBFF).contains(&unit) {
                    let low = hex(i + 8);
                    let c = 0x10000 + ((unit - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3FF);
                    (char::from_u32(c).unwrap_or('\u{FFFD}'), 12)
                } else {
                    (char::from_u32(unit).unwrap_or('\u{FFFD}'), 6)
                }
            }
            _ => ('\u{FFFD}', 2),
        };
        out.push(c);
        rest = rest.get(i + used..).unwrap_or_default();
    }
    out.push_str(&String::from_utf8_lossy(rest));
    out
}
