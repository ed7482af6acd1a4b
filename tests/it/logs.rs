use std::time::Duration;

use serde_json::Value;

use crate::kit::*;
use crate::routes::is_rfc3339_millis;
use crate::support::*;

fn access_for<'a>(records: &'a [Value], request_id: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["msg"] == "access" && r["request_id"] == request_id)
        .unwrap_or_else(|| panic!("an access record for {request_id} in {records:?}"))
}

/// Each request leaves one access record with every documented field.
#[tokio::test]
async fn access_record_has_all_fields() {
    let srv = start_server().await;
    let r = request(
        srv.addr,
        "GET",
        "/health",
        &[("X-Request-Id", "req-1"), ("User-Agent", "probe/1")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let records = srv.records().await;
    let a = access_for(&records, "req-1");
    assert!(is_rfc3339_millis(a["ts"].as_str().unwrap()), "{a}");
    assert_eq!(a["level"], "info");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/health");
    assert_eq!(a["status"], 200);
    assert_eq!(a["bytes"], 15);
    assert!(a["duration_us"].is_u64());
    assert_eq!(a["client"], "127.0.0.1");
    assert_eq!(a["user_agent"], "probe/1");
    assert_eq!(records.iter().filter(|r| r["msg"] == "access").count(), 1);
}

/// Newlines, quotes, control characters and invalid UTF-8 from the client cannot break a
/// line or forge a record.
#[tokio::test]
async fn hostile_input_cannot_forge_records() {
    let srv = start_server().await;
    let forged = "\\n{\\\"level\\\":\\\"error\\\",\\\"msg\\\":\\\"forged\\\"}\\u001b[31m\\u0000";
    let body = format!(r#"{{"type":"x","data":{{"s":"{forged}"}}}}"#);
    assert_eq!(post_event(srv.addr, &body).await.status, 201);
    // obs-text bytes in a header value are legal HTTP but not UTF-8.
    let raw =
        b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\nUser-Agent: a\xff\xfe\"}\r\n\r\n"
            .to_vec();
    assert_eq!(send_raw(srv.addr, &raw).await.unwrap().status, 200);
    let records = srv.records().await;
    assert!(records.iter().all(|r| r["msg"] != "forged"));
    let event = records.iter().find(|r| r["msg"] == "event").unwrap();
    assert_eq!(
        event["data"]["s"],
        "\n{\"level\":\"error\",\"msg\":\"forged\"}\u{1b}[31m\u{0}"
    );
    let ua = records.iter().find(|r| r["path"] == "/health").unwrap();
    assert_eq!(ua["user_agent"], "a\u{fffd}\u{fffd}\"}");
}

/// The event record is in the file when the 201 arrives (no flush in between), with the id,
/// type, data and request id of the answer.
#[tokio::test]
async fn event_is_on_disk_before_201() {
    let srv = start_server().await;
    let r = request(
        srv.addr,
        "POST",
        "/events",
        &[
            ("Content-Type", "application/json"),
            ("X-Request-Id", "ev-1"),
        ],
        br#"{"type":"order.paid","data":{"amount":12.5,"items":[1,2]}}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let id = r.json()["id"].clone();
    // Read the file directly: the sink is not flushed first.
    let records = read_records(&srv.log);
    let ev = records
        .iter()
        .find(|r| r["msg"] == "event")
        .expect("the event record is written");
    assert_eq!(ev["id"], id);
    assert_eq!(ev["type"], "order.paid");
    assert_eq!(ev["request_id"], "ev-1");
    assert_eq!(ev["data"], serde_json::json!({"amount":12.5,"items":[1,2]}));
    assert_eq!(ev["ts"], r.json()["received_at"]);
}

/// Buffered access records reach the file without any flush request, within about a second.
#[tokio::test]
async fn access_records_reach_the_file_unprompted() {
    let srv = start_server().await;
    get(srv.addr, "/health").await;
    let found = eventually(Duration::from_secs(5), || {
        read_records(&srv.log).iter().any(|r| r["msg"] == "access")
    })
    .await;
    assert!(found, "the access record was written without a flush");
}

/// When the log cannot be written, events get 503 (never 201) and `/health` turns 503, both
/// with the short reason "disk full" (not the path or the OS error); once writes succeed again (here: a reopen onto a good file), health recovers.
#[tokio::test]
async fn unwritable_log_is_503_and_recovers() {
    let srv = start_server().await;
    // Point the log path at /dev/full (every write fails with ENOSPC) and reopen.
    let good = srv.log.with_extension("good");
    std::fs::rename(&srv.log, &good).unwrap();
    std::os::unix::fs::symlink("/dev/full", &srv.log).unwrap();
    srv.sink.reopen().await.unwrap();
    let r = post_event(srv.addr, r#"{"type":"lost"}"#).await;
    assert_eq!(r.status, 503);
    // A short stable reason: no path, no OS wording.
    assert_eq!(r.json()["error"], "log file not writable: disk full");
    let h = get(srv.addr, "/health").await;
    assert_eq!(h.status, 503);
    let v = h.json();
    assert_eq!(v["status"], "unavailable");
    assert_eq!(v["reason"], "log file not writable: disk full");

    // Space returns: the path is a normal file again.
    std::fs::remove_file(&srv.log).unwrap();
    srv.sink.reopen().await.unwrap();
    let recovered = eventually(Duration::from_secs(5), || srv.sink.failure().is_none()).await;
    assert!(recovered, "health recovers once a write succeeds");
    assert_eq!(get(srv.addr, "/health").await.status, 200);
    assert_eq!(post_event(srv.addr, r#"{"type":"kept"}"#).await.status, 201);
    let records = srv.records().await;
    assert!(
        records
            .iter()
            .any(|r| r["msg"] == "log file writable again")
    );
    assert!(records.iter().any(|r| r["type"] == "kept"));
    let all: Vec<Value> = read_records(&good).into_iter().chain(records).collect();
    assert!(
        !all.iter().any(|r| r["type"] == "lost"),
        "a refused event left no record"
    );
}

/// Probes are access-logged at debug, not info: `--healthcheck`'s (`api-healthcheck/…`) of
/// `/health`, and the kubelet's (`kube-probe/…`) of `/` and `/health`; the kubelet's agent on
/// any other request is logged as usual, so it cannot hide anything.
#[tokio::test]
async fn probe_requests_are_quiet_unless_debug() {
    for (level, healthchecks, kubelet_probes) in [("info", 0, 0), ("debug", 1, 3)] {
        let srv = start_server_with(&[("LOG_LEVEL", level)]).await;
        let ua = [("User-Agent", "api-healthcheck/0.1.0")];
        assert_eq!(
            request(srv.addr, "GET", "/health", &ua, b"").await.status,
            200
        );
        let kube = [("User-Agent", "kube-probe/1.32")];
        for (method, path, status) in [
            ("GET", "/health", 200),
            ("GET", "/", 200),
            ("HEAD", "/", 200),
            ("GET", "/nope", 404),
        ] {
            assert_eq!(
                request(srv.addr, method, path, &kube, b"").await.status,
                status
            );
        }
        let posted = request(
            srv.addr,
            "POST",
            "/events",
            &[
                ("User-Agent", "kube-probe/1.32"),
                ("Content-Type", "application/json"),
            ],
            br#"{"type":"probe.post"}"#,
        )
        .await;
        assert_eq!(posted.status, 201);

        let records = srv.records().await;
        let probes = records
            .iter()
            .filter(|r| r["user_agent"] == "api-healthcheck/0.1.0")
            .count();
        assert_eq!(probes, healthchecks, "LOG_LEVEL={level}");
        let access: Vec<&Value> = records
            .iter()
            .filter(|r| r["msg"] == "access" && r["user_agent"] == "kube-probe/1.32")
            .collect();
        let on_probe_routes = access
            .iter()
            .filter(|r| r["path"] == "/" || r["path"] == "/health")
            .count();
        assert_eq!(
            on_probe_routes, kubelet_probes,
            "LOG_LEVEL={level}: {access:?}"
        );
        assert!(access.iter().any(|r| r["path"] == "/nope"), "{level}");
        assert!(access.iter().any(|r| r["path"] == "/events"), "{level}");
    }
}

/// LOG_LEVEL=off drops access records but still writes event records (they are the data).
#[tokio::test]
async fn events_are_written_at_any_level() {
    let srv = start_server_with(&[("LOG_LEVEL", "off")]).await;
    get(srv.addr, "/health").await;
    assert_eq!(post_event(srv.addr, r#"{"type":"a"}"#).await.status, 201);
    let records = srv.records().await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["msg"], "event");
}

/// SIGHUP after logrotate's rename sends later records to a new file at the path, and no
/// record is lost across the two files.
#[test]
fn sighup_reopens_after_rename() {
    let dir = TempDir::new();
    let mut p = spawn_api(&dir.0, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = dir.0.join("logs/api.log");
    let rotated = dir.0.join("logs/api.log.1");
    rt.block_on(async {
        for _ in 0..20 {
            assert_eq!(post_event(p.addr, r#"{"type":"before"}"#).await.status, 201);
        }
    });
    std::fs::rename(&log, &rotated).unwrap();
    // Until the signal, records still go to the renamed file (same inode).
    rt.block_on(async {
        assert_eq!(
            post_event(p.addr, r#"{"type":"between"}"#).await.status,
            201
        )
    });
    p.signal("HUP");
    let reopened = rt.block_on(eventually(Duration::from_secs(5), || log.exists()));
    assert!(reopened, "SIGHUP created a new file at the path");
    rt.block_on(async {
        for _ in 0..20 {
            assert_eq!(post_event(p.addr, r#"{"type":"after"}"#).await.status, 201);
        }
    });
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let old = read_records(&rotated);
    let new = read_records(&log);
    let count = |recs: &[Value], t: &str| recs.iter().filter(|r| r["type"] == t).count();
    assert_eq!(
        (
            count(&old, "before"),
            count(&old, "between"),
            count(&old, "after")
        ),
        (20, 1, 0)
    );
    assert_eq!((count(&new, "before"), count(&new, "after")), (0, 20));
    let access = old
        .iter()
        .chain(&new)
        .filter(|r| r["msg"] == "access")
        .count();
    assert_eq!(
        access, 41,
        "every request's access record survived the rotation"
    );
}

/// Several processes appending to one file concurrently leave only whole lines, and every
/// acknowledged event is there exactly once.
#[test]
fn concurrent_processes_never_tear_lines() {
    let dir = TempDir::new();
    let procs: Vec<Api> = (0..3).map(|_| spawn_api(&dir.0, &[])).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids = rt.block_on(async {
        let mut tasks = Vec::new();
        for p in &procs {
            for worker in 0..4 {
                let addr = p.addr;
                tasks.push(tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for i in 0..150 {
                        let body = format!(
                            r#"{{"type":"w{worker}","data":{{"i":{i},"pad":"{}"}}}}"#,
                            "p".repeat(i * 7)
                        );
                        let r = post_event(addr, &body).await;
                        assert_eq!(r.status, 201);
                        ids.push(r.json()["id"].as_str().unwrap().to_string());
                    }
                    ids
                }));
            }
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    for mut p in procs {
        p.signal("TERM");
        assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    }
    let records = read_records(&dir.0.join("logs/api.log"));
    let events: Vec<&str> = records
        .iter()
        .filter(|r| r["msg"] == "event")
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(events.len(), ids.len());
    let unique: std::collections::HashSet<&str> = events.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "ids are unique across processes");
    assert!(ids.iter().all(|id| unique.contains(id.as_str())));
}
