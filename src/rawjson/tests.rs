//! The scanner against hand-written cases, and against serde_json on generated documents:
//! random values written with random whitespace, escapes and number spellings, and random
//! corruptions of them.

use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn min(s: &str) -> String {
    let doc = scan(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    String::from_utf8(doc.text.into_owned()).unwrap()
}

fn syntax(s: &[u8]) -> String {
    match scan(s) {
        Err(e @ Error::Syntax { .. }) => e.to_string(),
        other => panic!(
            "{:?}: expected a syntax error, got {other:?}",
            String::from_utf8_lossy(s)
        ),
    }
}

fn dup(s: &str) -> String {
    match scan(s.as_bytes()) {
        Err(Error::DuplicateKey(path)) => path,
        other => panic!("{s:?}: expected a duplicate key, got {other:?}"),
    }
}

/// Whitespace goes; numbers, escapes, key order and the characters inside strings stay.
#[test]
fn minifies_without_rewriting() {
    assert_eq!(
        min(
            " {\n \"b\" : [ 1e-99999 , -0.0E+01 ,\t18446744073709551616123 ] ,\r\n \"a\":\"x \\u0041\\/\\n é\u{2028}\" } \n"
        ),
        r#"{"b":[1e-99999,-0.0E+01,18446744073709551616123],"a":"x \u0041\/\n é"#.to_string()
            + "\u{2028}\"}"
    );
    assert_eq!(min("[]"), "[]");
    assert_eq!(min(" [ { } , [ ] ] "), "[{},[]]");
    assert_eq!(min("\"a b\""), "\"a b\"");
    assert_eq!(min("0"), "0");
    assert_eq!(min(" true"), "true");
    // Without whitespace the text is the input itself, not a copy.
    assert!(matches!(
        scan(br#"{"a":1}"#).unwrap().text,
        Cow::Borrowed(_)
    ));
}

/// The top-level object's members come back in order, keys decoded, values as spans of the
/// minified text.
#[test]
fn top_level_members() {
    let doc =
        scan(br#" { "type" : "t" , "d\u0061ta" : { "k" : [ 1 , 2 ] } , "z":null } "#).unwrap();
    let members: Vec<(String, String)> = doc
        .members
        .iter()
        .map(|m| {
            let value = String::from_utf8(doc.text[m.value.clone()].to_vec()).unwrap();
            (m.key().into_owned(), value)
        })
        .collect();
    assert_eq!(
        members,
        [
            ("type".into(), "\"t\"".into()),
            ("data".into(), r#"{"k":[1,2]}"#.into()),
            ("z".into(), "null".into())
        ]
    );
    assert!(doc.members[1].key_is("data") && !doc.members[1].key_is("dat"));
    assert!(doc.members[0].key_is("type") && !doc.members[0].key_is("data"));
    assert!(scan(b"[1,{\"a\":1}]").unwrap().members.is_empty());
}

/// Every kind of malformed text is refused with what was wrong and where.
#[test]
fn syntax_errors_say_what_and_where() {
    assert_eq!(
        syntax(br#"{"type":"a",}"#),
        "trailing comma at line 1 column 13"
    );
    assert_eq!(syntax(b"[1,\n2,]"), "trailing comma at line 2 column 3");
    assert_eq!(
        syntax(b""),
        "end of body where a value was expected at line 1 column 1"
    );
    assert_eq!(
        syntax(b" \r\n\t"),
        "end of body where a value was expected at line 2 column 2"
    );
    assert_eq!(
        syntax(b"{\"a\":1"),
        "end of body inside an object at line 1 column 7"
    );
    assert_eq!(
        syntax(b"[1"),
        "end of body inside an array at line 1 column 3"
    );
    assert_eq!(
        syntax(b"\"abc"),
        "end of body inside a string at line 1 column 5"
    );
    assert_eq!(
        syntax(b"{\"a\" 1}"),
        "expected `:` after a key at line 1 column 6"
    );
    assert_eq!(syntax(b"{a:1}"), "expected a string key at line 1 column 2");
    assert_eq!(
        syntax(b"{'a':1}"),
        "expected a string key at line 1 column 2"
    );
    assert_eq!(
        syntax(b"[1 2]"),
        "expected `,` or `]` after a value at line 1 column 4"
    );
    assert_eq!(
        syntax(b"{\"a\":1 \"b\":2}"),
        "expected `,` or `}` after a value at line 1 column 8"
    );
    assert_eq!(
        syntax(b"{} x"),
        "trailing characters after the JSON value at line 1 column 4"
    );
    assert_eq!(
        syntax(b"{}{}"),
        "trailing characters after the JSON value at line 1 column 3"
    );
    assert_eq!(
        syntax(b"01"),
        "invalid number: a leading zero at line 1 column 2"
    );
    assert_eq!(syntax(b"-"), "invalid number at line 1 column 2");
    assert_eq!(
        syntax(b"1."),
        "invalid number: expected a digit at line 1 column 3"
    );
    assert_eq!(
        syntax(b"1e+"),
        "invalid number: expected a digit at line 1 column 4"
    );
    assert_eq!(syntax(b"+1"), "expected a value at line 1 column 1");
    assert_eq!(syntax(b"NaN"), "expected a value at line 1 column 1");
    assert_eq!(
        syntax(b"0x10"),
        "trailing characters after the JSON value at line 1 column 2"
    );
    assert_eq!(syntax(b"tru"), "expected a value at line 1 column 1");
    assert_eq!(syntax(b"nul1"), "expected a value at line 1 column 1");
    assert_eq!(
        syntax(b"\"a\nb\""),
        "control character (U+0000 to U+001F) in a string at line 1 column 3"
    );
    assert_eq!(syntax(b"\"\\x\""), "invalid escape at line 1 column 3");
    assert_eq!(
        syntax(b"\"\\u12\""),
        "expected four hex digits after \\u at line 1 column 4"
    );
    assert_eq!(
        syntax(b"\"\\ud800\""),
        "lone leading surrogate in a \\u escape at line 1 column 2"
    );
    assert_eq!(
        syntax(b"\"\\ud800\\u0041\""),
        "lone leading surrogate in a \\u escape at line 1 column 2"
    );
    assert_eq!(
        syntax(b"\"\\udc00\\ud800\""),
        "lone trailing surrogate in a \\u escape at line 1 column 2"
    );
    assert_eq!(syntax(b"\"\xff\""), "invalid UTF-8 at line 1 column 2");
    assert_eq!(syntax(b"\"\xc0\xaf\""), "invalid UTF-8 at line 1 column 2");
    assert_eq!(
        syntax(b"\xef\xbb\xbf{}"),
        "expected a value at line 1 column 1"
    );
    assert_eq!(
        syntax(b"{\"a\":1} /* c */"),
        "trailing characters after the JSON value at line 1 column 9"
    );
    assert_eq!(min("\"\\ud834\\udd1e\""), "\"\\ud834\\udd1e\"");
}

/// Nesting is bounded, and deep input costs no stack (the scanner does not recurse).
#[test]
fn nesting_is_bounded() {
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert_eq!(min(&ok), ok);
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert_eq!(
        syntax(deep.as_bytes()),
        "nesting deeper than 128 levels at line 1 column 129"
    );
    let objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert!(syntax(objects.as_bytes()).starts_with("nesting deeper"));
}

/// A repeated key is refused with its path, wherever it is, compared decoded; the same key
/// in different objects is fine.
#[test]
fn duplicate_keys_name_their_path() {
    assert_eq!(dup(r#"{"type":"a","type":"b"}"#), "type");
    assert_eq!(
        dup(r#"{"type":"t","data":{"user":{"id":1,"name":"x","id":2}}}"#),
        "data.user.id"
    );
    assert_eq!(
        dup(r#"{"data":{"items":[{"id":1},{"id":1,"id":2}]}}"#),
        "data.items[1].id"
    );
    assert_eq!(dup(r#"[{"a":{}},{"b":[0,{"x":1,"x":1}]}]"#), "[1].b[1].x");
    assert_eq!(dup(r#"{"a":1,"\u0061":2}"#), "a");
    assert_eq!(dup(r#"{"a b":{"":1,"":2}}"#), r#"["a b"][""]"#);
    assert_eq!(dup(r#"{"x":{"k":1},"y":{"k":1,"k":1}}"#), "y.k");
    // Found in the inner object first, since it closes first.
    assert_eq!(dup(r#"{"a":1,"a":{"b":1,"b":2}}"#), "a.b");
    assert!(scan(br#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":1}]}"#).is_ok());
    // Many keys take the sorting path; the first repeat in document order is named.
    let many: Vec<String> = (0..1000).map(|i| format!("\"k{i}\":1")).collect();
    let body = format!("{{{},\"k500\":2,\"k7\":3}}", many.join(","));
    assert_eq!(dup(&body), "k500");
    assert!(scan(format!("{{{}}}", many.join(",")).as_bytes()).is_ok());
    // Malformed JSON is the more basic problem, and wins.
    assert!(syntax(br#"{"a":1,"a":2"#).starts_with("end of body"));
}

/// `decode` turns every escape into its character.
#[test]
fn decode_escapes() {
    assert_eq!(
        decode(br#"a\"\\\/\b\f\n\r\t\u0041\u00e9\ud834\udd1e z"#),
        "a\"\\/\u{8}\u{c}\n\r\tAé\u{1d11e} z"
    );
}

// ---- generated documents ------------------------------------------------------------------

/// A JSON value, with the choices of how to write it: whitespace, escapes, number spelling.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    /// Written as it is: generated in every JSON spelling, including far beyond f64.
    Number(String),
    /// The characters, and for each, whether to write it as a `\u` escape.
    Str(Vec<(char, u8)>),
    Array(Vec<Json>),
    /// Keys are distinct.
    Object(Vec<(Vec<(char, u8)>, Json)>),
}

fn number() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop_oneof![Just("0".to_string()), "[1-9][0-9]{0,30}".prop_map(|s| s)],
        proptest::option::of("[0-9]{1,20}"),
        proptest::option::of(("[eE]", "[+-]?", "[0-9]{1,6}")),
    )
        .prop_map(|(neg, int, frac, exp)| {
            let mut s = if neg { "-".to_string() } else { String::new() };
            s.push_str(&int);
            if let Some(f) = frac {
                s.push('.');
                s.push_str(&f);
            }
            if let Some((e, sign, d)) = exp {
                s.push_str(&e);
                s.push_str(&sign);
                s.push_str(&d);
            }
            s
        })
}

fn chars() -> impl Strategy<Value = Vec<(char, u8)>> {
    let ch = prop_oneof![
        3 => proptest::char::range('a', 'e'),
        1 => proptest::char::range('\0', '\u{7f}'),
        1 => any::<char>(),
    ];
    proptest::collection::vec((ch, 0..4u8), 0..6)
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number().prop_map(Json::Number),
        chars().prop_map(Json::Str),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::vec((chars(), inner), 0..6).prop_map(|members| {
                let mut seen = std::collections::HashSet::new();
                Json::Object(
                    members
                        .into_iter()
                        .filter(|(k, _)| seen.insert(k.iter().map(|c| c.0).collect::<String>()))
                        .collect(),
                )
            }),
        ]
    })
}

/// Writes `v`; with `ws`, puts whitespace (taken in turn from it) between every token.
fn write(v: &Json, out: &mut String, ws: &mut dyn FnMut() -> &'static str) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(n),
        Json::Str(s) => write_str(s, out),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(ws());
                    out.push(',');
                }
                out.push_str(ws());
                write(item, out, ws);
                out.push_str(ws());
            }
            out.push(']');
        }
        Json::Object(members) => {
            out.push('{');
            for (i, (k, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws());
                write_str(k, out);
                out.push_str(ws());
                out.push(':');
                out.push_str(ws());
                write(item, out, ws);
                out.push_str(ws());
            }
            out.push('}');
        }
    }
}

/// A string, each character raw, as a `\u` escape (a surrogate pair beyond the BMP) or a
/// short escape, as chosen; characters that JSON requires escaped always are.
fn write_str(s: &[(char, u8)], out: &mut String) {
    out.push('"');
    for &(c, how) in s {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '/' if how == 2 => Some("\\/"),
            _ => None,
        };
        match (short, how) {
            (Some(e), _) if how != 1 => out.push_str(e),
            _ if how == 1 || c < ' ' || c == '"' || c == '\\' => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            _ => out.push(c),
        }
    }
    out.push('"');
}

const WS: [&str; 6] = ["", " ", "\n", "\t", "\r\n  ", ""];

fn written(v: &Json, ws: &[u8]) -> (String, String) {
    let mut plain = String::new();
    write(v, &mut plain, &mut || "");
    let mut spaced = String::new();
    let mut i = 0;
    spaced.push_str(WS[usize::from(ws[0]) % WS.len()]);
    write(v, &mut spaced, &mut || {
        i += 1;
        WS[usize::from(ws[i % ws.len()]) % WS.len()]
    });
    spaced.push_str(WS[usize::from(ws[ws.len() - 1]) % WS.len()]);
    (plain, spaced)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any value, written with any whitespace and escapes: the scanner keeps it, its text is
    /// exactly the same writing without the whitespace, and serde_json reads the same value
    /// from both (tests build serde_json with `arbitrary_precision`, so numbers of any size
    /// are read, and compared as written).
    #[test]
    fn minified_text_is_the_reference_minification(v in json(), ws in proptest::collection::vec(any::<u8>(), 1..32)) {
        let (plain, spaced) = written(&v, &ws);
        let doc = scan(spaced.as_bytes()).map_err(|e| TestCaseError::fail(format!("{spaced:?}: {e}")))?;
        prop_assert_eq!(std::str::from_utf8(&doc.text).unwrap(), plain.as_str());
        let sent: Value = serde_json::from_str(&spaced).unwrap();
        let stored: Value = serde_json::from_slice(&doc.text).unwrap();
        prop_assert_eq!(sent, stored);
    }

    /// Corrupted documents (a byte deleted, inserted, replaced or doubled, mostly at the
    /// punctuation and digits): the scanner accepts exactly what serde_json accepts, apart from
    /// the duplicate keys (and over-long numbers) serde_json lets through; and whatever it
    /// accepts, it returns as one line.
    #[test]
    fn agrees_with_serde_on_corrupted_text(
        v in json(),
        ws in proptest::collection::vec(any::<u8>(), 1..8),
        edits in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>(), 0..4u8, prop::sample::select(&b"{}[]\":,\\ 01-e.tnux\x01\xff"[..])), 1..4),
    ) {
        let (_, spaced) = written(&v, &ws);
        let mut text = spaced.into_bytes();
        for (anywhere, at, op, byte) in edits {
            let punctuation: Vec<usize> = (0..text.len()).filter(|&i| b"{}[],:\"\\0123456789".contains(&text[i])).collect();
            let i = if anywhere || punctuation.is_empty() {
                at.index(text.len() + 1)
            } else {
                punctuation[at.index(punctuation.len())]
            };
            match op {
                0 if i < text.len() => { text.remove(i); }
                1 if i < text.len() => text[i] = byte,
                2 if i < text.len() => text.insert(i, text[i]),
                _ => text.insert(i, byte),
            }
        }
        let ours = scan(&text);
        let serde = serde_json::from_slice::<Value>(&text);
        match (&ours, &serde) {
            (Ok(doc), _) => {
                prop_assert!(serde.is_ok(), "{:?}: serde refuses: {:?}", String::from_utf8_lossy(&text), serde);
                prop_assert!(!doc.text.contains(&b'\n'));
            }
            (Err(Error::DuplicateKey(_) | Error::LongNumber { .. }), Ok(_)) => {}
            (Err(ours @ (Error::DuplicateKey(_) | Error::LongNumber { .. })), Err(e)) => {
                prop_assert!(false, "{:?}: {} for us, malformed for serde: {}", String::from_utf8_lossy(&text), ours, e);
            }
            (Err(e @ Error::Syntax { .. }), Ok(_)) => {
                prop_assert!(false, "{:?}: serde accepts, we refuse: {}", String::from_utf8_lossy(&text), e);
            }
            (Err(Error::Syntax { .. }), Err(_)) => {}
        }
    }
}

/// Numbers up to MAX_NUMBER characters are kept as sent; a longer one is refused, where it
/// starts, once the whole text is known to be JSON (a body that is also malformed gets the
/// syntax error).
#[test]
fn numbers_are_bounded_in_length() {
    let at_limit = format!("-{}.{}e+{}", "9".repeat(MAX_NUMBER - 7), "5", "12");
    assert_eq!(at_limit.len(), MAX_NUMBER);
    let body = format!(r#"{{"a":[1,{at_limit}]}}"#);
    assert_eq!(min(&body), body);
    let long = format!("1{}", "0".repeat(MAX_NUMBER));
    let body = format!("{{\n \"a\": [1, {long}, {long}]}}");
    match scan(body.as_bytes()) {
        Err(e @ Error::LongNumber { .. }) => assert_eq!(
            e.to_string(),
            "number longer than 1000 characters at line 2 column 11"
        ),
        other => panic!("expected a long number, got {other:?}"),
    }
    assert!(syntax(format!("[{long},]").as_bytes()).starts_with("trailing comma"));
}
