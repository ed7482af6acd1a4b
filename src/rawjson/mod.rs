//! A single-pass JSON scanner for request bodies: it checks that the text is one RFC 8259
//! value, drops the insignificant whitespace, refuses duplicate keys (naming their path), and
//! hands back the top-level object's members as spans of the result. Nothing is decoded and
//! re-encoded, so numbers, key order and string escapes stay exactly as the client wrote
//! them: a parsed tree (serde_json's `Value`) loses digits beyond an f64 and rewrites escapes.
//!
//! Duplicate keys are refused because parsers disagree on which value wins: a record one
//! reader takes as `a` another would take as `b`. Keys are compared decoded, so `"a"` and
//! `"\u0061"` are the same key. Numbers longer than [`MAX_NUMBER`] are refused too: kept
//! exactly, they would be records that common readers of the log cannot read.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::ops::Range;

mod keys;

pub(crate) use keys::decode;
use keys::{Key, duplicate, key_text, push_path_key};

/// Deepest nesting accepted, counting the outermost value: serde_json's limit, so that any
/// body accepted here is one a consumer reading the log with serde_json can read too.
const MAX_DEPTH: usize = 128;

/// Longest number accepted, in characters as written (sign, digits, point, exponent), so that
/// every number the log holds is one common readers take by default: Python's `json` refuses
/// integers of over 4,300 digits unless told otherwise. No quantity a client sends needs more
/// than a fraction of this (a 128-bit integer has 39 digits).
const MAX_NUMBER: usize = 1000;

/// A scanned document: the text without insignificant whitespace, and the members of the
/// top-level value if it is an object.
#[derive(Debug)]
pub(crate) struct Doc<'a> {
    /// The minified text; borrowed from the input when there was no whitespace to remove.
    pub(crate) text: Cow<'a, [u8]>,
    /// The top-level object's members in document order (empty for any other value).
    pub(crate) members: Vec<Member<'a>>,
}

/// One member of the top-level object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member<'a> {
    /// The key's text between its quotes, as sent.
    raw_key: &'a [u8],
    key_escaped: bool,
    /// The value's span in [`Doc::text`].
    pub(crate) value: Range<usize>,
}

impl<'a> Member<'a> {
    /// Whether the key, decoded, is `name` (without decoding when it has no escapes).
    pub(crate) fn key_is(&self, name: &str) -> bool {
        if self.key_escaped {
            decode(self.raw_key) == name
        } else {
            self.raw_key == name.as_bytes()
        }
    }

    /// The key, decoded.
    pub(crate) fn key(&self) -> Cow<'a, str> {
        if self.key_escaped {
            Cow::Owned(decode(self.raw_key))
        } else {
            // The input was checked to be UTF-8 as a whole, and a span between quotes starts
            // and ends on character boundaries, so nothing is lost here.
            String::from_utf8_lossy(self.raw_key)
        }
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Error {
    /// Not JSON: what was wrong, and where (1-based line and byte column).
    Syntax {
        what: &'static str,
        line: usize,
        column: usize,
    },
    /// Well-formed, but a key appears twice in one object: the path of the second one, such
    /// as `data.user.id` or `data.items[2].id`.
    DuplicateKey(String),
    /// Well-formed, but a number is longer than [`MAX_NUMBER`]: where it starts.
    LongNumber { line: usize, column: usize },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Syntax { what, line, column } => {
                write!(f, "{what} at line {line} column {column}")
            }
            Error::DuplicateKey(path) => write!(f, "duplicate key {path}"),
            Error::LongNumber { line, column } => write!(
                f,
                "number longer than {MAX_NUMBER} characters at line {line} column {column}"
            ),
        }
    }
}

/// Scans `input` as one JSON value with optional whitespace around it.
pub(crate) fn scan(input: &[u8]) -> Result<Doc<'_>, Error> {
    if let Err(e) = std::str::from_utf8(input) {
        return Err(syntax_at(input, e.valid_up_to(), "invalid UTF-8"));
    }
    let (stack, keys) = SCRATCH.take();
    let mut s = Scanner {
        input,
        pos: 0,
        out: Vec::new(),
        copied_to: 0,
        stack,
        keys,
        // An event has two.
        members: Vec::with_capacity(2),
        member_start: None,
        duplicate: None,
        long_number: None,
    };
    let result = s.document();
    let (mut stack, mut keys) = (std::mem::take(&mut s.stack), std::mem::take(&mut s.keys));
    if keys.capacity() <= SCRATCH_KEYS {
        stack.clear();
        keys.clear();
        SCRATCH.set((stack, keys));
    }
    result?;
    if let Some(path) = s.duplicate {
        return Err(Error::DuplicateKey(path));
    }
    if let Some(at) = s.long_number {
        let (line, column) = line_column(input, at);
        return Err(Error::LongNumber { line, column });
    }
    let text = if s.out.is_empty() {
        Cow::Borrowed(&input[s.copied_to..s.pos])
    } else {
        s.out.extend_from_slice(&input[s.copied_to..s.pos]);
        Cow::Owned(s.out)
    };
    Ok(Doc {
        text,
        members: s.members,
    })
}

/// Keys a kept scratch list may have room for; a hostile body's longer list is dropped.
const SCRATCH_KEYS: usize = 1024;

thread_local! {
    /// The container stack and key list of the last scan on this thread, kept for the next:
    /// allocating them afresh cost more than scanning a typical event.
    static SCRATCH: Cell<(Vec<Frame>, Vec<Key>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// The bytes that end a run of plain string content: the quote, the backslash, and the
/// control characters a string may not hold. A table: three comparisons per byte cost more.
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// An open container.
enum Frame {
    /// `keys` is where this object's keys start in `Scanner::keys`; the last of them is the
    /// one whose value is being read.
    Object { keys: usize },
    /// The index of the element being read.
    Array { index: usize },
}

struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
    /// The minified text up to input position `copied_to`; empty until whitespace inside the
    /// value is dropped (until then the result is a slice of the input).
    out: Vec<u8>,
    copied_to: usize,
    stack: Vec<Frame>,
    /// The keys of every open object, innermost last.
    keys: Vec<Key>,
    members: Vec<Member<'a>>,
    /// Where the value of the current top-level member starts in the output.
    member_start: Option<usize>,
    /// The path of the first duplicate key; reported once the whole text is known to be JSON,
    /// so a body that is both gets the more basic answer.
    duplicate: Option<String>,
    /// Where the first number longer than [`MAX_NUMBER`] starts; reported as `duplicate` is.
    long_number: Option<usize>,
}

impl Scanner<'_> {
    /// The whole input: one value, whitespace around it. Containers are kept on a stack of
    /// their own rather than by recursion, so nesting costs heap, not the task's stack.
    fn document(&mut self) -> Result<(), Error> {
        self.skip_ws();
        loop {
            // A value starts here.
            if self.stack.len() == 1 && matches!(self.stack[0], Frame::Object { .. }) {
                self.member_start = Some(self.out_pos());
            }
            match self.peek() {
                Some(b'{') => {
                    self.open(Frame::Object {
                        keys: self.keys.len(),
                    })?;
                    if self.peek() != Some(b'}') {
                        self.member_key()?;
                        continue;
                    }
                    self.pos += 1;
                    self.stack.pop();
                }
                Some(b'[') => {
                    self.open(Frame::Array { index: 0 })?;
                    if self.peek() != Some(b']') {
                        continue;
                    }
                    self.pos += 1;
                    self.stack.pop();
                }
                _ => self.scalar()?,
            }
            if self.after_value()? {
                return Ok(());
            }
        }
    }

    /// After a value: closes the containers it ends, up to one with a further member or
    /// element (then `pos` is at that value: false) or to the end of the document (true).
    fn after_value(&mut self) -> Result<bool, Error> {
        loop {
            if self.stack.len() == 1
                && let Some(start) = self.member_start.take()
            {
                // Nested objects' keys are gone once closed: the last is this member's.
                let key = self.keys.last().expect("a member has a key");
                self.members.push(Member {
                    raw_key: &self.input[key.raw.clone()],
                    key_escaped: key.escaped,
                    value: start..self.out_pos(),
                });
            }
            self.skip_ws();
            match self.stack.last() {
                None if self.pos == self.input.len() => return Ok(true),
                None => return Err(self.error("trailing characters after the JSON value")),
                Some(Frame::Object { .. }) => match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if self.peek() == Some(b'}') {
                            return Err(self.error("trailing comma"));
                        }
                        self.member_key()?;
                        return Ok(false);
                    }
                    Some(b'}') => {
                        self.pos += 1;
                        self.close_object();
                    }
                    None => return Err(self.error("end of body inside an object")),
                    Some(_) => return Err(self.error("expected `,` or `}` after a value")),
                },
                Some(Frame::Array { .. }) => match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if let Some(Frame::Array { index }) = self.stack.last_mut() {
                            *index += 1;
                        }
                        self.skip_ws();
                        if self.peek() == Some(b']') {
                            return Err(self.error("trailing comma"));
                        }
                        return Ok(false);
                    }
                    Some(b']') => {
                        self.pos += 1;
                        self.stack.pop();
                    }
                    None => return Err(self.error("end of body inside an array")),
                    Some(_) => return Err(self.error("expected `,` or `]` after a value")),
                },
            }
        }
    }

    /// A string, number or literal at `pos`.
    fn scalar(&mut self) -> Result<(), Error> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            None => Err(self.error("end of body where a value was expected")),
            Some(_) => Err(self.error("expected a value")),
        }
    }

    fn open(&mut self, frame: Frame) -> Result<(), Error> {
        if self.stack.len() == MAX_DEPTH {
            return Err(self.error("nesting deeper than 128 levels"));
        }
        self.pos += 1;
        self.stack.push(frame);
        self.skip_ws();
        Ok(())
    }

    /// Reads `"key"` and the colon after it, leaving `pos` at the value.
    fn member_key(&mut self) -> Result<(), Error> {
        if self.peek() != Some(b'"') {
            return Err(self.error(match self.peek() {
                None => "end of body where a key was expected",
                Some(_) => "expected a string key",
            }));
        }
        let start = self.pos + 1;
        let escaped = self.string()?;
        self.keys.push(Key {
            raw: start..self.pos - 1,
            escaped,
        });
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.error("expected `:` after a key"));
        }
        self.pos += 1;
        self.skip_ws();
        Ok(())
    }

    /// Closes the innermost object, checking its keys for a duplicate.
    fn close_object(&mut self) {
        let Some(Frame::Object { keys }) = self.stack.pop() else {
            unreachable!("close_object is called with an object open");
        };
        if self.duplicate.is_none()
            && let Some(i) = duplicate(self.input, &self.keys[keys..])
        {
            self.duplicate = Some(self.path_to(keys, keys + i));
        }
        self.keys.truncate(keys);
    }

    /// The path of key `dup` of the object just closed, whose keys start at `closed`: the
    /// open containers' current keys and indices, then the key. Identifier-like keys are
    /// joined with dots, others quoted in brackets: `data.user.id`, `data["a b"][3].id`.
    fn path_to(&self, closed: usize, dup: usize) -> String {
        let mut path = String::new();
        for (n, frame) in self.stack.iter().enumerate() {
            match frame {
                Frame::Object { .. } => {
                    // This object's current key is its last: the last before the keys of the
                    // next object inside it.
                    let end = self.stack[n + 1..]
                        .iter()
                        .find_map(|f| match f {
                            Frame::Object { keys } => Some(*keys),
                            Frame::Array { .. } => None,
                        })
                        .unwrap_or(closed);
                    push_path_key(&mut path, &key_text(self.input, &self.keys[end - 1]));
                }
                Frame::Array { index } => path.push_str(&format!("[{index}]")),
            }
        }
        push_path_key(&mut path, &key_text(self.input, &self.keys[dup]));
        path
    }

    /// Reads a string starting at its opening quote; returns whether it holds escapes.
    fn string(&mut self) -> Result<bool, Error> {
        self.pos += 1;
        let mut escaped = false;
        loop {
            let rest = &self.input[self.pos..];
            let run = rest
                .iter()
                .position(|&b| STRING_STOP[usize::from(b)])
                .unwrap_or(rest.len());
            self.pos += run;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => {
                    return Err(self.error("control character (U+0000 to U+001F) in a string"));
                }
                None => return Err(self.error("end of body inside a string")),
            }
        }
    }

    /// Reads one escape starting at its backslash. A `\u` escape of a UTF-16 surrogate must
    /// be a high one followed by a low one: a lone surrogate is no character.
    fn escape(&mut self) -> Result<(), Error> {
        match self.input.get(self.pos + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 2;
                Ok(())
            }
            Some(b'u') => {
                let unit = self.hex4(self.pos + 2)?;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = if self.input[self.pos + 6..].starts_with(b"\\u") {
                            Some(self.hex4(self.pos + 8)?)
                        } else {
                            None
                        };
                        if !low.is_some_and(|l| (0xDC00..=0xDFFF).contains(&l)) {
                            return Err(self.error("lone leading surrogate in a \\u escape"));
                        }
                        self.pos += 12;
                    }
                    0xDC00..=0xDFFF => {
                        return Err(self.error("lone trailing surrogate in a \\u escape"));
                    }
                    _ => self.pos += 6,
                }
                Ok(())
            }
            None => Err(self.error("end of body inside a string")),
            Some(_) => {
                self.pos += 1;
                Err(self.error("invalid escape"))
            }
        }
    }

    /// The four hex digits at `at`, as a number.
    fn hex4(&mut self, at: usize) -> Result<u32, Error> {
        let digits = self.input.get(at..at + 4);
        let value = digits.and_then(|d| {
            d.iter()
                .try_fold(0, |acc, &b| Some(acc * 16 + char::from(b).to_digit(16)?))
        });
        value.ok_or_else(|| {
            self.pos = at;
            self.error("expected four hex digits after \\u")
        })
    }

    /// Reads `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, noting the first one
    /// longer than [`MAX_NUMBER`].
    fn number(&mut self) -> Result<(), Error> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(self.error("invalid number: a leading zero"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.required_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.required_digits()?;
        }
        if self.pos - start > MAX_NUMBER && self.long_number.is_none() {
            self.long_number = Some(start);
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), Error> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.error("invalid number: expected a digit"));
        }
        self.digits();
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), Error> {
        if self.input[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    /// Skips whitespace, copying the text before it to the output. Called between all tokens
    /// and mostly finding none, so that case is inlined and the rest is not.
    #[inline(always)]
    fn skip_ws(&mut self) {
        if let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.drop_ws();
        }
    }

    #[inline(never)]
    fn drop_ws(&mut self) {
        let start = self.pos;
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
        if self.pos > start {
            self.out
                .extend_from_slice(&self.input[self.copied_to..start]);
            self.copied_to = self.pos;
        }
    }

    /// Where input position `pos` lands in the output (`pos` must not be inside whitespace
    /// already dropped).
    fn out_pos(&self) -> usize {
        self.out.len() + self.pos - self.copied_to
    }

    fn error(&self, what: &'static str) -> Error {
        syntax_at(self.input, self.pos, what)
    }
}

/// A syntax error at byte `pos` of `input`, with its line and column.
fn syntax_at(input: &[u8], pos: usize, what: &'static str) -> Error {
    let (line, column) = line_column(input, pos);
    Error::Syntax { what, line, column }
}

/// The 1-based line and byte column of byte `pos` of `input`.
fn line_column(input: &[u8], pos: usize) -> (usize, usize) {
    let before = &input[..pos.min(input.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (
        before.iter().filter(|&&b| b == b'\n').count() + 1,
        pos - line_start + 1,
    )
}

#[cfg(test)]
mod tests;
