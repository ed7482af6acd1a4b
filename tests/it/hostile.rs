//! Hostile input over raw TCP. The cases live in `tests/data/hostile.txt` (its header
//! documents the format); one test sends each of them on a fresh connection and checks the
//! statuses that come back (or that the server closes), that nothing is a 5xx but a 501 (an unsupported transfer coding), and then that
//! the server is still healthy and its log is still one valid, unforged JSON record per line.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::kit::{self, Conn, Next, Resp};
use crate::support;

/// The table, next to the test sources.
const TABLE: &str = include_str!("../data/hostile.txt");

/// Cases sent at once; each holds one connection, well below the server's cap.
const PARALLEL: usize = 16;

/// One row of the table.
#[derive(Debug, Clone)]
struct Case {
    line: usize,
    name: String,
    /// Acceptable outcomes; each is a sequence of statuses, possibly ending in `close`.
    expect: Vec<Vec<String>>,
    bytes: Vec<u8>,
}

impl Case {
    fn category(&self) -> &str {
        self.name.split('.').next().unwrap_or("")
    }
}

/// Parses the table; panics with the line number on any malformed row.
fn parse_table(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut names = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let mut parts = raw.splitn(3, ' ');
        let (Some(name), Some(expect), Some(request)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("hostile.txt:{line}: expected `name expect request`: {raw:?}");
        };
        assert!(
            name.contains('.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)),
            "hostile.txt:{line}: bad name {name:?}"
        );
        assert!(
            names.insert(name.to_string()),
            "hostile.txt:{line}: duplicate name {name}"
        );
        let expect: Vec<Vec<String>> = expect
            .split('|')
            .map(|alt| alt.split(',').map(str::to_string).collect())
            .collect();
        for alt in &expect {
            for (j, tok) in alt.iter().enumerate() {
                let ok = (tok == "close" && j == alt.len() - 1)
                    || tok.parse::<u16>().is_ok_and(|s| (100..600).contains(&s));
                assert!(ok, "hostile.txt:{line}: bad expectation {tok:?}");
            }
        }
        let bytes = expand(request, line);
        cases.push(Case {
            line,
            name: name.to_string(),
            expect,
            bytes,
        });
    }
    cases
}

/// Expands one request field: the `@json:` shorthand, `\` escapes, `{{N*TEXT}}` repeats (which
/// nest) and the `{{CL}}` body length.
fn expand(field: &str, line: usize) -> Vec<u8> {
    let template = match field.strip_prefix("@json:") {
        Some(body) => format!(
            "POST /events HTTP/1.1\\r\\nHost: t\\r\\nContent-Type: application/json\\r\\n\
             Content-Length: {{{{CL}}}}\\r\\nConnection: close\\r\\n\\r\\n{body}"
        ),
        None => field.to_string(),
    };
    let mut out = render(&template, line, true);
    if let Some(at) = out.windows(CL_MARK.len()).position(|w| w == CL_MARK) {
        out.drain(at..at + CL_MARK.len());
        let head_end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("hostile.txt:{line}: {{{{CL}}}} without a blank line"))
            + 4;
        let len = (out.len() - head_end).to_string();
        out.splice(at..at, len.into_bytes());
        assert!(
            !out.windows(CL_MARK.len()).any(|w| w == CL_MARK),
            "hostile.txt:{line}: one {{{{CL}}}} per case"
        );
    }
    out
}

/// Stands for `{{CL}}` until the length is known.
const CL_MARK: &[u8] = b"\x00<CL>\x00";

/// Renders escapes and macros; `{{CL}}` only at the top level.
fn render(s: &str, line: usize, top: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let Some(after) = rest.strip_prefix("{{") else {
            let next = rest.find("{{").unwrap_or(rest.len());
            out.extend_from_slice(&unescape(&rest[..next], line));
            rest = &rest[next..];
            continue;
        };
        // The matching `}}`, counting nested `{{`.
        let (mut depth, mut i) = (1, 0);
        while depth > 0 {
            assert!(i < after.len(), "hostile.txt:{line}: unclosed {{{{");
            if after[i..].starts_with("{{") {
                depth += 1;
                i += 2;
            } else if after[i..].starts_with("}}") {
                depth -= 1;
                i += 2;
            } else {
                i += after[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        let inner = &after[..i - 2];
        if inner == "CL" && top {
            out.extend_from_slice(CL_MARK);
        } else {
            let (n, text) = inner
                .split_once('*')
                .unwrap_or_else(|| panic!("hostile.txt:{line}: bad macro {inner:?}"));
            let n: usize = n
                .parse()
                .unwrap_or_else(|_| panic!("hostile.txt:{line}: bad count {n:?}"));
            out.extend_from_slice(&render(text, line, false).repeat(n));
        }
        rest = &after[i..];
    }
    out
}

/// `\r \n \t \0 \\ \xHH`; any other character stands for its UTF-8 bytes.
fn unescape(s: &str, line: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let b = u8::from_str_radix(&hex, 16)
                    .unwrap_or_else(|_| panic!("hostile.txt:{line}: bad \\x{hex}"));
                out.push(b);
            }
            other => panic!("hostile.txt:{line}: unknown escape \\{other:?}"),
        }
    }
    out
}

/// What one case produced.
struct Outcome {
    case: Case,
    got: Vec<String>,
    responses: Vec<Resp>,
}

/// Sends one case on a new connection and reads as many outcomes as its longest alternative
/// needs (stopping at a close). The writer runs beside the reader, so a server that answers
/// before taking the whole request never deadlocks the test.
async fn run_case(addr: std::net::SocketAddr, case: Case) -> Outcome {
    let stream = TcpStream::connect(addr).await.expect("the server accepts");
    stream.set_nodelay(true).unwrap();
    let (rd, mut wr) = stream.into_split();
    let bytes = case.bytes.clone();
    let writer = tokio::spawn(async move {
        // The server may refuse and close before it has read everything.
        let _ = wr.write_all(&bytes).await;
        // Keep the write half open: a half-close would read as a vanished client.
        tokio::time::sleep(kit::HANG).await;
        drop(wr);
    });
    let mut conn = Conn::new(rd);
    let want = case.expect.iter().map(Vec::len).max().unwrap_or(1);
    let mut got = Vec::new();
    let mut responses = Vec::new();
    while got.len() < want {
        // A HEAD answer carries a Content-Length but no body (only the first in a case).
        let next = if got.is_empty() && case.bytes.starts_with(b"HEAD ") {
            conn.next_head(kit::HANG).await
        } else {
            conn.next(kit::HANG).await
        };
        got.push(next.token());
        match next {
            Next::Response(r) => responses.push(r),
            Next::Closed | Next::Truncated | Next::TimedOut => break,
        }
    }
    writer.abort();
    Outcome {
        case,
        got,
        responses,
    }
}

/// Whether `got` satisfies one of the case's alternatives: the alternative is a prefix of
/// what was read (reading stops at a close, so an alternative ending in `close` is exact).
fn matches(case: &Case, got: &[String]) -> bool {
    case.expect
        .iter()
        .any(|alt| got.len() >= alt.len() && got[..alt.len()] == alt[..])
}

/// A request id the server may send back: 1-128 of `A-Z a-z 0-9 - _ . : / + = @`.
fn safe_request_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// Runs `cases` against a fresh server; returns the failures (one line each) and what the
/// log must now account for.
async fn run_cases(cases: Vec<Case>) -> (Vec<String>, support::TestServer, Tally) {
    let server = support::start_server_with(&[
        ("HEADER_TIMEOUT", "1s"),
        ("BODY_TIMEOUT", "1s"),
        // Believe X-Forwarded-For from loopback, so hostile values reach the parser.
        ("TRUSTED_PROXIES", "127.0.0.0/8"),
    ])
    .await;
    let addr = server.addr;
    let gate = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = Vec::new();
    for case in cases {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let out = run_case(addr, case).await;
            drop(permit);
            out
        }));
    }
    let mut failures = Vec::new();
    let mut tally = Tally::default();
    for task in tasks {
        let out = task.await.expect("a case task does not panic");
        let Outcome {
            case,
            got,
            responses,
        } = out;
        let label = format!("{} (hostile.txt:{})", case.name, case.line);
        if !matches(&case, &got) {
            let want: Vec<String> = case.expect.iter().map(|a| a.join(",")).collect();
            failures.push(format!(
                "{label}: expected {}, got {}",
                want.join(" | "),
                got.join(",")
            ));
        }
        for r in &responses {
            // 501 refuses a transfer coding; any other 5xx is a failure of the service.
            if r.status >= 500 && r.status != 501 {
                let body = String::from_utf8_lossy(&r.body);
                failures.push(format!("{label}: a {} answer: {body}", r.status));
            }
            if r.status < 200 {
                continue;
            }
            // Every answer carries the service's headers, hyper's answers to heads it cannot
            // parse included (the service sends its own in their place).
            let Some(id) = r.header("x-request-id") else {
                failures.push(format!(
                    "{label}: a {} answer without a request id",
                    r.status
                ));
                continue;
            };
            if r.header("cache-control") != Some("no-store")
                || r.header("x-content-type-options") != Some("nosniff")
            {
                failures.push(format!(
                    "{label}: a {} answer without no-store and nosniff",
                    r.status
                ));
            }
            tally.service += 1;
            if !safe_request_id(id) {
                failures.push(format!(
                    "{label}: an unsafe request id {id:?} in the answer"
                ));
            }
            if r.body.is_empty() {
                // HEAD.
                continue;
            }
            let Ok(body) = serde_json::from_slice::<Value>(&r.body) else {
                failures.push(format!("{label}: a {} answer that is not JSON", r.status));
                continue;
            };
            if r.status >= 400 && !body["error"].is_string() {
                failures.push(format!(
                    "{label}: {} without an \"error\": {body}",
                    r.status
                ));
            }
            let reason = body["error"].as_str().unwrap_or_default();
            if reason.starts_with("malformed request head")
                || reason.ends_with("or with more than 100 header fields")
            {
                tally.unparsed += 1;
                if r.header("connection") != Some("close") {
                    failures.push(format!("{label}: the parser's {} does not close", r.status));
                }
            }
            if r.status == 201 {
                tally
                    .acked
                    .push(body["id"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    (failures, server, tally)
}

/// What the responses say the log must hold.
#[derive(Default)]
struct Tally {
    /// Answers from the service (they carry a request id): each has one access record.
    service: usize,
    /// Of those, answers to heads the HTTP parser refused: counted in `GET /`, and logged at
    /// debug only, so without an access record.
    unparsed: usize,
    /// Event ids acknowledged with 201.
    acked: Vec<String>,
}

/// The log after hostile input: every line is one JSON record written by the service (no
/// forged record, no stray field), one access record per answer to a routed request (not to
/// a head the parser refused), one event record per 201.
fn check_log(records: &[Value], tally: &Tally) -> Vec<String> {
    let mut failures = Vec::new();
    let mut access = 0;
    let mut events = Vec::new();
    for r in records {
        let Some(obj) = r.as_object() else {
            failures.push(format!("a record that is not an object: {r}"));
            continue;
        };
        let ts_ok = obj["ts"]
            .as_str()
            .is_some_and(|t| t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T');
        let level_ok = matches!(obj["level"].as_str(), Some("info" | "warn"));
        let allowed: &[&str] = match obj["msg"].as_str() {
            Some("access") => {
                access += 1;
                if obj["client"]
                    .as_str()
                    .is_none_or(|c| c.parse::<IpAddr>().is_err())
                {
                    failures.push(format!("an access record whose client is not an IP: {r}"));
                }
                if !obj["request_id"].as_str().is_some_and(safe_request_id) {
                    failures.push(format!("an unsafe request id in the log: {r}"));
                }
                if obj["status"].as_u64().is_none_or(|s| s >= 500 && s != 501) {
                    failures.push(format!("a 5xx or missing status in the log: {r}"));
                }
                &[
                    "ts",
                    "level",
                    "msg",
                    "host",
                    "method",
                    "path",
                    "status",
                    "bytes",
                    "duration_us",
                    "request_id",
                    "client",
                    "user_agent",
                ]
            }
            Some("event") => {
                events.push(obj["id"].as_str().unwrap_or_default().to_string());
                &[
                    "ts",
                    "level",
                    "msg",
                    "host",
                    "id",
                    "type",
                    "request_id",
                    "client",
                    "data",
                ]
            }
            _ => {
                failures.push(format!("a record the service did not write: {r}"));
                continue;
            }
        };
        if !ts_ok || !level_ok {
            failures.push(format!("a record with a bad ts or level: {r}"));
        }
        if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            failures.push(format!("a record with a stray field {k:?}: {r}"));
        }
    }
    if access != tally.service - tally.unparsed {
        failures.push(format!(
            "{} routed answers but {access} access records",
            tally.service - tally.unparsed
        ));
    }
    let mut logged: Vec<&String> = events.iter().collect();
    logged.sort();
    let mut acked: Vec<&String> = tally.acked.iter().collect();
    acked.sort();
    if logged != acked {
        failures.push(format!(
            "{} events acknowledged, {} event records, and they differ",
            acked.len(),
            logged.len()
        ));
    }
    failures
}

/// The table parses and is big enough: at least 200 cases, and at least 5 in each of the 18
/// categories listed here; and its expansion writes escapes, repeats and the computed
/// `Content-Length` as meant.
#[test]
fn the_case_table_covers_every_category() {
    let cases = parse_table(TABLE);
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        *per.entry(c.category()).or_default() += 1;
    }
    eprintln!(
        "hostile cases per category: {per:?} (total {})",
        cases.len()
    );
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    for cat in [
        "reqline", "lf", "ctl", "utf8", "cl", "te", "chunk", "body", "hdr", "expect", "http10",
        "pipe", "json", "ctype", "ce", "rid", "xff", "inject",
    ] {
        assert!(
            per.get(cat).is_some_and(|&n| n >= 5),
            "category {cat} has fewer than 5 cases"
        );
    }
    // The expansion itself: escapes, repeats, and the computed Content-Length.
    let sample = expand(
        r"POST / HTTP/1.1\r\nContent-Length: {{CL}}\r\n\r\n\x00{{3*ab}}\\",
        0,
    );
    assert_eq!(
        sample,
        b"POST / HTTP/1.1\r\nContent-Length: 8\r\n\r\n\x00ababab\\"
    );
}

/// Every hostile case gets its expected status (or connection close), none gets a 5xx but 501, the
/// server survives, `/health` is 200 afterwards, and the log holds only valid, unforged JSON
/// records: one access record per routed request, one event record per 201; `GET /` counts
/// the heads the parser refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_expected_answers() {
    let cases = parse_table(TABLE);
    let total = cases.len();
    let (mut failures, server, mut tally) = run_cases(cases).await;

    assert!(
        !server.task.is_finished(),
        "the server task ended during the batch"
    );
    assert_eq!(
        kit::health_status(server.addr, kit::HANG).await,
        Some(200),
        "/health after the batch"
    );
    let info = kit::get(server.addr, "/").await.json();
    if info["requests_unparsed"] != tally.unparsed {
        failures.push(format!(
            "GET / counts {} unparsed heads, the answers {}",
            info["requests_unparsed"], tally.unparsed
        ));
    }
    assert!(
        tally.unparsed >= 40,
        "only {} unparsed heads",
        tally.unparsed
    );
    tally.service += 2;
    let records = server.records().await;
    failures.extend(check_log(&records, &tally));
    eprintln!(
        "hostile: {total} cases, {} service answers, {} of them to heads the parser refused, {} events, {} log records",
        tally.service,
        tally.unparsed,
        tally.acked.len(),
        records.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
