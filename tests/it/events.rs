//! `POST /events` end to end: data stored as sent, duplicate keys refused, the headers every
//! answer carries, `EVENT_SYNC=data` proven by the syscalls, and generated hostile bodies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;

use crate::kit::{self, HANG, Resp};
use crate::support::{self, Api, TempDir};

/// The log's lines as text, so a test sees the bytes as stored, not a parse of them.
fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(str::to_string).collect()
}

/// The event record with request id `rid`, as text.
async fn event_line(srv: &support::TestServer, rid: &str) -> String {
    srv.sink.flush().await.expect("the test log is writable");
    let tag = format!("\"request_id\":\"{rid}\"");
    let found: Vec<String> = lines(&srv.log)
        .into_iter()
        .filter(|l| l.contains("\"msg\":\"event\"") && l.contains(&tag))
        .collect();
    assert_eq!(found.len(), 1, "one event record for {rid}: {found:?}");
    found.into_iter().next().unwrap()
}

async fn post_with_id(addr: std::net::SocketAddr, rid: &str, body: &[u8]) -> Resp {
    kit::request(
        addr,
        "POST",
        "/events",
        &[("Content-Type", "application/json"), ("X-Request-Id", rid)],
        body,
    )
    .await
}

/// `data` reaches the log as the client wrote it, minus whitespace: numbers beyond any float
/// (huge, tiny, long integers, `-0.0E+01`), string escapes, and key order are untouched.
#[tokio::test]
async fn data_is_stored_exactly_as_sent() {
    let srv = support::start_server().await;
    let body = "{ \"type\" : \"exact\",\n  \"data\" : {\n    \"z\" : 1e-99999, \"a\" : 18446744073709551616123,\n    \"m\" : [ -0.0E+01 , 1.50, 1e999999 ],\n    \"s\" : \"tab\\there \\u00e9\\/\\ud83d\\ude00 \u{e9} \u{2028}\",\n    \"n\" : { } , \"l\" : [ ] , \"t\" : true , \"f\" : false , \"0\" : null\n  }\n}\n";
    let r = post_with_id(srv.addr, "exact-1", body.as_bytes()).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let line = event_line(&srv, "exact-1").await;
    let stored = "{\"z\":1e-99999,\"a\":18446744073709551616123,\"m\":[-0.0E+01,1.50,1e999999],\"s\":\"tab\\there \\u00e9\\/\\ud83d\\ude00 \u{e9} \u{2028}\",\"n\":{},\"l\":[],\"t\":true,\"f\":false,\"0\":null}";
    assert!(
        line.ends_with(&format!(",\"data\":{stored}}}")),
        "stored as sent: {line}"
    );
    // Scalars as data, and no data at all.
    for (n, data) in ["1e400", "\"\\u0000\"", "null", "[]"].iter().enumerate() {
        let rid = format!("scalar-{n}");
        let body = format!("{{\"type\":\"exact\",\"data\":  {data} }}");
        assert_eq!(
            post_with_id(srv.addr, &rid, body.as_bytes()).await.status,
            201
        );
        let line = event_line(&srv, &rid).await;
        assert!(line.ends_with(&format!(",\"data\":{data}}}")), "{line}");
    }
    assert_eq!(
        post_with_id(srv.addr, "no-data", br#"{"type":"exact"}"#)
            .await
            .status,
        201
    );
    assert!(!event_line(&srv, "no-data").await.contains("\"data\""));
}

/// A key that appears twice in one object, at any depth and however it is escaped, is a 422
/// naming its path; nothing is stored.
#[tokio::test]
async fn duplicate_keys_are_422_naming_the_path() {
    let srv = support::start_server().await;
    let cases = [
        (r#"{"type":"a","type":"b"}"#, "type"),
        (r#"{"type":"t","data":1,"data":2}"#, "data"),
        (
            r#"{"type":"t","data":{"user":{"id":1,"id":2}}}"#,
            "data.user.id",
        ),
        (
            r#"{"type":"t","data":{"user":{"id":1,"\u0069d":2}}}"#,
            "data.user.id",
        ),
        (
            r#"{"type":"t","data":{"items":[{"k":1},{"k":1,"k":2}]}}"#,
            "data.items[1].k",
        ),
        (
            r#"{"type":"t","data":{"a b":{"x":1,"x":1}}}"#,
            r#"data["a b"].x"#,
        ),
    ];
    for (body, path) in cases {
        let r = kit::post_event(srv.addr, body).await;
        assert_eq!(r.status, 422, "{body}");
        assert_eq!(
            r.json()["error"],
            format!("duplicate key {path}: a key may appear only once in an object"),
            "{body}"
        );
    }
    let records = srv.records().await;
    assert!(
        !records.iter().any(|r| r["msg"] == "event"),
        "nothing stored"
    );
    // The same key in different objects is no duplicate.
    let ok = r#"{"type":"t","data":{"id":1,"user":{"id":2},"list":[{"id":3},{"id":4}]}}"#;
    assert_eq!(kit::post_event(srv.addr, ok).await.status, 201);
}

/// A POST retried on another replica with its `X-Request-Id`: one request_id, two event ids.
#[tokio::test]
async fn retried_post_keeps_its_request_id_under_a_new_event_id() {
    let replicas = [support::start_server().await, support::start_server().await];
    let body = br#"{"type":"order","data":{"n":1}}"#;
    let mut ids = Vec::new();
    for srv in &replicas {
        let r = post_with_id(srv.addr, "client-retry-1", body).await;
        assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
        let line = event_line(srv, "client-retry-1").await;
        let rec: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            rec["id"],
            r.json()["id"],
            "the 201 names the stored record: {line}"
        );
        ids.push(rec["id"].as_str().expect("an event id").to_string());
    }
    assert_ne!(ids[0], ids[1], "each write is its own event");
}

/// Invalid UTF-8 and lone surrogate escapes are a 400 that says what and where.
#[tokio::test]
async fn bad_text_is_400_with_line_and_column() {
    let srv = support::start_server().await;
    let cases: [(&[u8], &str); 5] = [
        (
            b"{\"type\":\"t\",\n\"data\":\"\xff\"}",
            "invalid UTF-8 at line 2 column 9",
        ),
        (
            br#"{"type":"t","data":"\ud800"}"#,
            "lone leading surrogate in a \\u escape at line 1 column 21",
        ),
        (
            br#"{"type":"t","data":"\udc00\ud800"}"#,
            "lone trailing surrogate in a \\u escape at line 1 column 21",
        ),
        (br#"{"type":"a",}"#, "trailing comma at line 1 column 13"),
        (
            b"{\"type\":\"t\",\"data\":01}",
            "invalid number: a leading zero at line 1 column 21",
        ),
    ];
    for (body, message) in cases {
        let r = post_with_id(srv.addr, "bad", body).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(r.json()["error"], format!("malformed JSON: {message}"));
    }
}

/// The answer to `request`, sent on a connection of its own: `status`, naming `error`.
async fn refused(addr: std::net::SocketAddr, request: &[u8], status: u16, error: &str) -> Resp {
    let r = kit::send_raw(addr, request).await.expect("an answer");
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.json()["error"], error);
    r
}

/// The refusals the body's header fields and numbers earn name what was refused: a content
/// coding (415 with `Accept-Encoding: identity`, which a 415 for the media type lacks), a
/// transfer coding (501, closing), `chunked` twice and `Content-Type` twice (400), and a
/// number longer than 1000 characters (422, where it starts). Nothing is stored.
#[tokio::test]
async fn codings_repeated_fields_and_long_numbers_are_refused_by_name() {
    let srv = support::start_server().await;
    let event = r#"{"type":"t"}"#;
    let post = |fields: &str, body: &str| {
        format!("POST /events HTTP/1.1\r\nHost: t\r\n{fields}\r\n{body}").into_bytes()
    };
    let json = "Content-Type: application/json\r\n";
    let gzip = post(
        &format!("{json}Content-Encoding: gzip\r\nContent-Length: 12\r\n"),
        event,
    );
    let r = refused(
        srv.addr,
        &gzip,
        415,
        "content coding \"gzip\" is not supported; send the body without Content-Encoding",
    )
    .await;
    assert_eq!(r.header("accept-encoding"), Some("identity"));
    let text = post("Content-Type: text/plain\r\nContent-Length: 12\r\n", event);
    let r = kit::send_raw(srv.addr, &text).await.expect("an answer");
    assert_eq!(r.status, 415);
    assert_eq!(r.header("accept-encoding"), None, "a media type 415");

    let chunked = "c\r\n{\"type\":\"t\"}\r\n0\r\n\r\n";
    let mut conn = kit::Conn::open(srv.addr).await.unwrap();
    let te = post(
        &format!("{json}Transfer-Encoding: br, chunked\r\n"),
        chunked,
    );
    let r = conn.roundtrip(&te).await.response().expect("an answer");
    assert_eq!(r.status, 501);
    assert_eq!(
        r.json()["error"],
        "transfer coding \"br\" is not supported; send the body chunked or with a Content-Length"
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(conn.closes_within(HANG).await, "the 501 closes");
    let twice = post(
        &format!("{json}Transfer-Encoding: chunked, chunked\r\n"),
        chunked,
    );
    refused(
        srv.addr,
        &twice,
        400,
        "the chunked transfer coding is applied more than once",
    )
    .await;
    let two_types = post(
        &format!("{json}Content-Type: text/plain\r\nContent-Length: 12\r\n"),
        event,
    );
    refused(
        srv.addr,
        &two_types,
        400,
        "Content-Type is given more than once",
    )
    .await;

    let long = format!("{{\"type\":\"t\",\"data\":[1,{}]}}", "7".repeat(1001));
    let r = kit::post_event(srv.addr, &long).await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.json()["error"],
        "number longer than 1000 characters at line 1 column 23"
    );
    let records = srv.records().await;
    assert!(
        !records.iter().any(|r| r["msg"] == "event"),
        "nothing stored"
    );
}

/// Every answer, from every route and every error, says `Cache-Control: no-store` and
/// `X-Content-Type-Options: nosniff`.
#[tokio::test]
async fn every_response_says_no_store_and_nosniff() {
    let srv = support::start_server_with(&[("MAX_BODY_BYTES", "64")]).await;
    let json = [("Content-Type", "application/json")];
    let answers = [
        kit::get(srv.addr, "/").await,
        kit::get(srv.addr, "/health").await,
        kit::request(srv.addr, "HEAD", "/health", &[], b"").await,
        kit::post_event(srv.addr, r#"{"type":"t"}"#).await,
        kit::post_event(srv.addr, r#"{"type":"t""#).await,
        kit::post_event(srv.addr, r#"{"type":1}"#).await,
        kit::post_event(srv.addr, &format!(r#"{{"type":"{}"}}"#, "x".repeat(80))).await,
        kit::request(srv.addr, "POST", "/events", &[], br#"{"type":"t"}"#).await,
        kit::request(srv.addr, "DELETE", "/health", &json, b"").await,
        kit::get(srv.addr, "/nope").await,
    ];
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 201, 400, 422, 413, 415, 405, 404]);
    for r in &answers {
        assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    }
}

// ---- EVENT_SYNC=data, seen in the syscalls ------------------------------------------------

/// strace for the test named `test`, or `None` after a note that it did not run: under
/// `CI=true` a missing strace fails the test instead.
pub(crate) fn strace(test: &str) -> Option<&'static str> {
    let found = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("strace");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "strace is required in CI (apt-get install strace); {test} cannot run without it"
    );
    eprintln!("NOTE: strace not installed; {test} did NOT RUN");
    None
}

/// The binary under strace, set up as [`support::api_command`] sets it up.
pub(crate) struct Traced {
    pub(crate) api: Api,
    trace: PathBuf,
}

impl Traced {
    /// Starts the binary in `dir` under strace, which follows every thread, shows strings
    /// up to `strsize` bytes, no signals, and only the syscalls `syscalls` (comma-separated).
    pub(crate) fn start(
        strace: &str,
        strsize: usize,
        syscalls: &str,
        dir: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Traced {
        let trace = dir.join("trace");
        let mut cmd = std::process::Command::new(strace);
        cmd.args([
            "-f",
            "-qq",
            "-s",
            &strsize.to_string(),
            "-e",
            "signal=none",
            "-e",
        ])
        .arg(format!("trace={syscalls}"))
        .arg("-o")
        .arg(&trace)
        .args(support::api_argv());
        support::serve_in(&mut cmd, dir, log, env);
        Traced {
            api: Api::start(cmd),
            trace,
        }
    }

    /// Stops the binary, which must exit 0, and returns the trace: one line per syscall, of
    /// every thread, in the order they completed or began.
    pub(crate) fn stop(mut self) -> Vec<String> {
        // SIGTERM to the api itself (strace would only detach it), then strace exits with it.
        let pid = child_of(self.api.pid());
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(killed.success());
        assert_eq!(self.api.wait_exit(HANG), Some(0), "{}", self.api.stderr());
        std::fs::read_to_string(&self.trace)
            .expect("strace wrote its trace")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The pid of the one child of `pid` (the api under strace).
fn child_of(pid: u32) -> u32 {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let text = std::fs::read_to_string(&path).expect("procfs lists children");
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{path} names no child"))
}

/// One event posted to the binary under strace in `mode`; returns the trace.
async fn trace_one_event(strace: &str, mode: &str) -> Vec<String> {
    let dir = TempDir::new();
    let traced = Traced::start(
        strace,
        4096,
        "write,writev,pwrite64,sendto,sendmsg,fsync,fdatasync,sync_file_range",
        &dir.0,
        &dir.0.join("logs/api.log"),
        &[("EVENT_SYNC", mode)],
    );
    let r = post_with_id(
        traced.api.addr,
        "traced-event",
        br#"{"type":"traced","data":{"mark":"syscall-order"}}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    traced.stop()
}

/// Where in `trace` a syscall matching `what` ends: its own line if it completed at once,
/// else the line where strace reports it resumed.
pub(crate) fn ends_at(trace: &[String], start: usize) -> usize {
    let line = &trace[start];
    if !line.ends_with("<unfinished ...>") {
        return start;
    }
    let pid = line.split_whitespace().next().unwrap_or("");
    let call = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.split('(').next())
        .unwrap_or("");
    trace[start..]
        .iter()
        .position(|l| l.starts_with(&format!("{pid} <... {call} resumed>")))
        .map(|i| start + i)
        .unwrap_or_else(|| panic!("no resumption of {line}"))
}

/// With `EVENT_SYNC=data` the syscalls come in the promised order: the `write` carrying the
/// event record, then an `fdatasync` of that file that succeeds, and only then the `201` on
/// the socket. With `none` the same trace shows no sync at all (so the check can tell the
/// modes apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_sync_data_writes_then_syncs_then_answers() {
    let Some(strace) = strace("event_sync_data_writes_then_syncs_then_answers") else {
        return;
    };
    for mode in ["data", "none"] {
        let trace = trace_one_event(strace, mode).await;
        let find = |from: usize, pred: &dyn Fn(&str) -> bool, what: &str| {
            trace[from..]
                .iter()
                .position(|l| pred(l))
                .map(|i| from + i)
                .unwrap_or_else(|| {
                    panic!("{mode}: no {what} after line {from}:\n{}", trace.join("\n"))
                })
        };
        let write = find(
            0,
            &|l| l.contains(" write(") && l.contains("syscall-order"),
            "write of the event record",
        );
        // `write(7, "...` : the log file's descriptor.
        let fd = trace[write]
            .split("write(")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .expect("write names its fd")
            .to_string();
        let write_done = ends_at(&trace, write);
        let answer = find(
            write,
            &|l| l.contains("HTTP/1.1 201 Created") && !l.contains("resumed>"),
            "201 on the socket",
        );
        let syncs: Vec<usize> = (0..trace.len())
            .filter(|&i| {
                trace[i].contains(&format!("fdatasync({fd}"))
                    || trace[i].contains(&format!("fsync({fd}"))
            })
            .collect();
        if mode == "none" {
            assert!(syncs.is_empty(), "none: no sync of the log: {syncs:?}");
            assert!(write_done < answer);
            continue;
        }
        let sync = *syncs
            .iter()
            .find(|&&i| i > write_done && trace[i].contains("fdatasync("))
            .unwrap_or_else(|| {
                panic!(
                    "data: no fdatasync({fd}) after the write:\n{}",
                    trace.join("\n")
                )
            });
        let sync_done = ends_at(&trace, sync);
        assert!(
            trace[sync_done].ends_with("= 0"),
            "the sync succeeded: {}",
            trace[sync_done]
        );
        assert!(
            write_done < sync && sync_done < answer,
            "data: write (line {write}-{write_done}), fdatasync (line {sync}-{sync_done}), \
             201 (line {answer}):\n{}",
            trace.join("\n")
        );
    }
}

/// kill -9 under load with `EVENT_SYNC=data`: every event that got a 201 is in the log once,
/// and a kill tears at most the line it cut short (the `none` case is crash.rs's kill -9 test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_event_sync_data_loses_no_acknowledged_event() {
    let dir = TempDir::new();
    let log = dir.0.join("logs/api.log");
    let mut acked = Vec::new();
    for round in 0..3u64 {
        let mut api = support::spawn_api(&dir.0, &[("EVENT_SYNC", "data")]);
        let addr = api.addr;
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..8 {
            clients.spawn(async move {
                let mut ok = Vec::new();
                for n in 0..400 {
                    let rid = format!("k{round}-c{c}-n{n}");
                    let body = format!(
                        r#"{{"type":"kill.data","data":{{"n":{n},"pad":"{}"}}}}"#,
                        "x".repeat(n % 300)
                    );
                    let sent = tokio::time::timeout(
                        HANG,
                        crate::kit::send_raw(
                            addr,
                            &crate::kit::event_request(
                                &body,
                                &format!("X-Request-Id: {rid}\r\nConnection: close\r\n"),
                            ),
                        ),
                    )
                    .await;
                    match sent {
                        Ok(Some(r)) if r.status == 201 => ok.push(rid),
                        _ => break,
                    }
                }
                ok
            });
        }
        // The load window is a span of time: an emulated binary needs it longer.
        let window = Duration::from_millis(150 + 70 * round) * support::time_factor();
        tokio::time::sleep(window).await;
        api.signal("KILL");
        assert_eq!(api.wait_exit(HANG), None);
        while let Some(r) = clients.join_next().await {
            acked.extend(r.unwrap());
        }
    }
    assert!(
        acked.len() > 50,
        "load reached the server: {} acks",
        acked.len()
    );
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    let mut records = Vec::new();
    let mut torn = 0;
    for line in text.lines() {
        // A kill can cut a write short (see crash.rs): its last line torn, none of its
        // events answered; the acknowledged ones are all checked below.
        match serde_json::from_str::<Value>(line) {
            Ok(rec) => records.push(rec),
            Err(_) => torn += 1,
        }
    }
    assert!(torn <= 3, "more torn lines ({torn}) than kills (3)");
    // The clients chose the request ids, so those are what the log is searched for.
    support::assert_exactly_once(&acked, &support::event_counts(&records, "request_id"));
}

// ---- generated hostile bodies --------------------------------------------------------------

/// Bodies: JSON-ish fragments glued together, valid events with bytes changed, and raw bytes.
fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"type\"",
        "\"data\"",
        "\"t\"",
        "\"a.b\"",
        "1",
        "-0",
        "1e999",
        "null",
        "true",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\n\"",
        "\"\u{2028}\"",
        " ",
        "\n",
        "\"x\"",
        "\"type\":\"t\"",
        "\"data\":",
    ]);
    let glued = prop::collection::vec(fragment, 0..24).prop_map(|f| f.concat().into_bytes());
    let edited = (
        prop::collection::vec(any::<u8>(), 0..4),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(bytes, at)| {
            let mut body = br#"{"type":"t","data":{"k":[1,"v",{"x":null}]}}"#.to_vec();
            let i = at.index(body.len());
            body.splice(i..i + 1.min(body.len() - i), bytes);
            body
        });
    prop_oneof![
        glued,
        edited,
        valid_event(),
        prop::collection::vec(any::<u8>(), 0..64)
    ]
}

/// Events whose `data` is random JSON written with spaces, escapes and numbers of any size;
/// keys are short, so some objects repeat one.
fn valid_event() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just("1e400".to_string()),
        Just("-0.0E-0".to_string()),
        Just("\"\\ud83d\\ude00\\u0000\"".to_string()),
        Just("null".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let data = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[ {} ]", v.join(" ,"))),
            prop::collection::vec(
                (prop::sample::select(vec!["a", "b", "c", "d\\u0065"]), inner),
                0..4
            )
            .prop_map(|m| {
                let members: Vec<String> =
                    m.iter().map(|(k, v)| format!("\"{k}\" :\n{v}")).collect();
                format!("{{{}}}", members.join(", "))
            }),
        ]
    });
    data.prop_map(|d| format!("{{\"type\":\"gen\", \"data\": {d} }}").into_bytes())
}

/// Generated hostile bodies, each on its own connection: every answer is a 4xx with a JSON
/// `error`, or a 201 whose record is exactly one line of JSON holding `data` as sent.
/// Bounded (200 cases) so it runs in seconds.
#[test]
fn generated_bodies_get_a_json_4xx_or_a_faithful_record() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let srv = rt.block_on(support::start_server());
    let n = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let outcome = runner.run(&hostile_body(), |body| {
        let rid = format!(
            "gen-{}",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let r = rt.block_on(post_with_id(srv.addr, &rid, &body));
        let shown = String::from_utf8_lossy(&body).into_owned();
        if r.status == 201 {
            let line = rt.block_on(event_line(&srv, &rid));
            let rec: Value = serde_json::from_str(&line)
                .map_err(|e| TestCaseError::fail(format!("{shown:?}: record {line:?}: {e}")))?;
            let sent: Value = serde_json::from_slice(&body).map_err(|e| {
                TestCaseError::fail(format!("201 for what serde refuses: {shown:?}: {e}"))
            })?;
            prop_assert_eq!(&rec["data"], &sent["data"], "{:?}", shown);
            prop_assert_eq!(&rec["type"], &sent["type"]);
        } else {
            prop_assert!(
                (400..500).contains(&r.status),
                "{} for {:?}",
                r.status,
                shown
            );
            let v: Value = serde_json::from_slice(&r.body)
                .map_err(|e| TestCaseError::fail(format!("{shown:?}: body not JSON: {e}")))?;
            prop_assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{:?}",
                v
            );
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // read_records fails on any line of the log that is not whole JSON.
    let records = rt.block_on(srv.records());
    let events = records.iter().filter(|r| r["msg"] == "event").count();
    assert!(events > 0, "some generated bodies were events");
}
