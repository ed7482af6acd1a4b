use serde_json::Value;

use crate::kit::*;
use crate::support::*;

/// An RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-26T05:20:15.123Z`.
pub fn is_rfc3339_millis(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

fn is_id(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// `GET /` describes the service: name, version, hostname, start time, uptime, counters, routes.
#[tokio::test]
async fn index_describes_the_service() {
    let srv = start_server().await;
    let r = get(srv.addr, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["service"], "api");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(!v["hostname"].as_str().unwrap().is_empty());
    assert!(is_rfc3339_millis(v["started_at"].as_str().unwrap()), "{v}");
    assert!(v["uptime_seconds"].is_u64());
    assert_eq!(v["requests_served"], 1);
    assert_eq!(v["events_accepted"], 0);
    let paths: Vec<&str> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/", "/health", "/events"]);
}

/// `GET /health` answers exactly `{"status":"ok"}` as application/json.
#[tokio::test]
async fn health_body_is_exact() {
    let srv = start_server().await;
    let r = get(srv.addr, "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, br#"{"status":"ok"}"#);
}

/// HEAD works wherever GET does, with the GET's length and no body.
#[tokio::test]
async fn head_mirrors_get() {
    let srv = start_server().await;
    for path in ["/", "/health"] {
        let r = request(srv.addr, "HEAD", path, &[], b"").await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.is_empty(), "{path}");
        assert!(
            r.header("content-length").is_some_and(|l| l != "0"),
            "{path}"
        );
    }
}

/// `POST /events` answers 201 with a fresh id, the type and an RFC 3339 `received_at`, and
/// the index counts it.
#[tokio::test]
async fn event_is_created() {
    let srv = start_server().await;
    let r = post_event(srv.addr, r#"{"type":"user.signup","data":{"plan":"pro"}}"#).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let v = r.json();
    assert!(is_id(&v["id"]), "{v}");
    assert_eq!(v["type"], "user.signup");
    assert!(is_rfc3339_millis(v["received_at"].as_str().unwrap()), "{v}");
    let again = post_event(srv.addr, r#"{"type":"user.signup"}"#)
        .await
        .json();
    assert_ne!(again["id"], v["id"]);
    assert_eq!(get(srv.addr, "/").await.json()["events_accepted"], 2);
}

/// A `charset` parameter on the JSON content type is accepted.
#[tokio::test]
async fn json_content_type_parameters_are_allowed() {
    let srv = start_server().await;
    let ct = [("Content-Type", "Application/JSON; charset=utf-8")];
    let r = request(srv.addr, "POST", "/events", &ct, br#"{"type":"a"}"#).await;
    assert_eq!(r.status, 201);
}

/// Unknown paths get a JSON 404; known paths with the wrong method a JSON 405 with `Allow`.
#[tokio::test]
async fn not_found_and_method_not_allowed() {
    let srv = start_server().await;
    let r = get(srv.addr, "/nope").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    for (method, path, allow) in [
        ("DELETE", "/health", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
        ("GET", "/events", "POST"),
    ] {
        let r = request(srv.addr, method, path, &[], b"").await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        assert!(r.json()["error"].as_str().unwrap().contains(allow));
    }
}

/// Malformed JSON is a 400 that says where; no record is written.
#[tokio::test]
async fn malformed_json_is_400_with_position() {
    let srv = start_server().await;
    let r = post_event(srv.addr, "{\"type\": \"a\",}").await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("line 1 column"), "{msg}");
    assert!(!srv.records().await.iter().any(|r| r["msg"] == "event"));
}

/// A body that is not declared as JSON is a 415, whatever it holds.
#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let srv = start_server().await;
    for headers in [
        &[("Content-Type", "text/plain")][..],
        &[][..],
        &[("Content-Type", "application/jsonx")][..],
    ] {
        let r = request(srv.addr, "POST", "/events", headers, br#"{"type":"a"}"#).await;
        assert_eq!(r.status, 415, "{headers:?}");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("application/json")
        );
    }
}

/// Valid JSON of the wrong shape is a 422 naming the field.
#[tokio::test]
async fn wrong_shape_is_422_naming_the_field() {
    let srv = start_server().await;
    let cases = [
        (r#"[1,2]"#, "JSON object"),
        (r#"{"data":1}"#, "\"type\" is required"),
        (r#"{"type":7}"#, "\"type\" must be a string"),
        (r#"{"type":""}"#, "\"type\" must be 1-64"),
        (r#"{"type":"has space"}"#, "\"type\" must be 1-64"),
        (r#"{"type":"a","extra":true}"#, "\"extra\""),
    ];
    for (body, needle) in cases {
        let r = post_event(srv.addr, body).await;
        assert_eq!(r.status, 422, "{body}");
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let long = format!(r#"{{"type":"{}"}}"#, "a".repeat(64));
    assert_eq!(post_event(srv.addr, &long).await.status, 201);
}

/// A valid incoming `X-Request-Id` is kept; a missing or unsafe one is replaced by a new id.
#[tokio::test]
async fn request_id_round_trip() {
    let srv = start_server().await;
    let r = request(
        srv.addr,
        "GET",
        "/health",
        &[("X-Request-Id", "abc-123.x:y_z")],
        b"",
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123.x:y_z"));
    let r = get(srv.addr, "/health").await;
    assert!(is_id(&Value::from(r.header("x-request-id").unwrap())));
    let hostile = "x".repeat(129);
    for bad in [hostile.as_str(), "a b", "a\"b"] {
        let r = request(srv.addr, "GET", "/health", &[("X-Request-Id", bad)], b"").await;
        let id = r.header("x-request-id").unwrap();
        assert!(is_id(&Value::from(id)), "{bad:?} replaced, got {id}");
    }
    // Errors carry it too.
    let r = request(
        srv.addr,
        "GET",
        "/nope",
        &[("X-Request-Id", "trace-404")],
        b"",
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("trace-404"));
}

/// Several requests share one keep-alive connection.
#[tokio::test]
async fn keep_alive_serves_many_requests() {
    let srv = start_server().await;
    let mut s = Conn::open(srv.addr).await.unwrap();
    for _ in 0..5 {
        let r = s
            .roundtrip(HEALTH)
            .await
            .response()
            .expect("an answer on the same connection");
        assert_eq!(r.status, 200);
    }
}
