use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::kit::{self, Conn, HANG};
use crate::support::{TempDir, spawn_api, start_server_with};

/// The samples of one exposition, by series (`name{labels}`), failing the test on a line
/// that is neither a comment nor `series value`.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("line {l:?}"));
            let value = value.parse().unwrap_or_else(|_| panic!("value in {l:?}"));
            (series.to_string(), value)
        })
        .collect()
}

/// `GET /metrics` on the metrics listener at `addr`, with `Accept: accept`.
async fn scrape(addr: SocketAddr, accept: &str) -> kit::Resp {
    kit::request(addr, "GET", "/metrics", &[("Accept", accept)], b"").await
}

/// The samples of one text-format scrape of `addr` (see [`samples`]).
async fn scrape_samples(addr: SocketAddr) -> HashMap<String, f64> {
    samples(&String::from_utf8(scrape(addr, "text/plain").await.body).unwrap())
}

/// Every answered request is counted once, by route, method and code, and its duration is in
/// its route's histogram; events accepted and the event write histogram agree with the 201s.
#[tokio::test]
async fn counters_are_exact() {
    let srv = start_server_with(&[("METRICS_PORT", "0")]).await;
    let metrics = srv.metrics.expect("the metrics listener is on");
    for _ in 0..7 {
        assert_eq!(kit::get(srv.addr, "/health").await.status, 200);
    }
    for i in 0..5 {
        let r = kit::post_event(srv.addr, &format!(r#"{{"type":"m","data":{i}}}"#)).await;
        assert_eq!(r.status, 201);
    }
    assert_eq!(kit::post_event(srv.addr, "{").await.status, 400);
    assert_eq!(kit::get(srv.addr, "/metrics").await.status, 404);
    assert_eq!(kit::get(srv.addr, "/a/b?c").await.status, 404);
    let r = kit::request(srv.addr, "DELETE", "/health", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(
        kit::request(srv.addr, "HEAD", "/", &[], b"").await.status,
        200
    );

    let r = scrape(metrics, "text/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let s = samples(&String::from_utf8(r.body).unwrap());
    let req = |route: &str, method: &str, code: &str| {
        let key =
            format!(r#"http_requests_total{{route="{route}",method="{method}",code="{code}"}}"#);
        s.get(&key).copied().unwrap_or(0.0)
    };
    assert_eq!(req("/health", "GET", "200"), 7.0);
    assert_eq!(req("/events", "POST", "201"), 5.0);
    assert_eq!(req("/events", "POST", "400"), 1.0);
    assert_eq!(
        req("other", "GET", "404"),
        2.0,
        "raw paths never become labels"
    );
    assert_eq!(req("/health", "other", "405"), 1.0);
    assert_eq!(req("/", "HEAD", "200"), 1.0);
    let total: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("http_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 17.0);
    let count =
        |route: &str| s[&format!(r#"http_request_duration_seconds_count{{route="{route}"}}"#)];
    assert_eq!(
        (
            count("/health"),
            count("/events"),
            count("/"),
            count("other")
        ),
        (8.0, 6.0, 1.0, 2.0)
    );
    let inf = s[r#"http_request_duration_seconds_bucket{route="/health",le="+Inf"}"#];
    assert_eq!(inf, 8.0);
    assert_eq!(s["api_events_accepted_total"], 5.0);
    assert_eq!(s["api_event_write_duration_seconds_count"], 5.0);
    assert_eq!(s["api_log_ready"], 1.0);
    assert_eq!(s["api_draining"], 0.0);
    assert_eq!(s[r#"api_build_info{version="0.1.0"}"#], 1.0);
    assert!(s["api_log_file_bytes"] > 0.0);
    assert!(s["process_resident_memory_bytes"] > 0.0);
    assert!(s["process_open_fds"] > 0.0);
}

/// A scraper that prefers OpenMetrics, as Prometheus does, gets it: its content type, counter
/// families named without `_total`, the build info as an info family, and `# EOF` last.
#[tokio::test]
async fn openmetrics_when_asked() {
    let srv = start_server_with(&[("METRICS_PORT", "0")]).await;
    let metrics = srv.metrics.unwrap();
    kit::get(srv.addr, "/health").await;
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let r = scrape(metrics, accept).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE http_requests counter\n"));
    assert!(text.contains("# TYPE api_build info\n"));
    let s = samples(&text);
    assert_eq!(
        s[r#"http_requests_total{route="/health",method="GET",code="200"}"#],
        1.0
    );
}

/// The metrics port answers GET /metrics 200 and HEAD /metrics 200 with an empty body, 404
/// elsewhere and 405 with `Allow: GET, HEAD` to other methods; the binary started with
/// METRICS_PORT logs "metrics listening", started without it does not, and its API port
/// answers /metrics 404.
#[tokio::test]
async fn metrics_port_serves_only_metrics() {
    let srv = start_server_with(&[("METRICS_PORT", "0")]).await;
    let metrics = srv.metrics.unwrap();
    assert_eq!(kit::get(metrics, "/metrics").await.status, 200);
    let head = kit::request(metrics, "HEAD", "/metrics", &[], b"").await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(kit::get(metrics, "/").await.status, 404);
    assert_eq!(kit::get(metrics, "/health").await.status, 404);
    let r = kit::request(metrics, "POST", "/metrics", &[], b"").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));

    for (env, listens) in [(&[("METRICS_PORT", "0")][..], true), (&[][..], false)] {
        let dir = TempDir::new();
        let mut api = spawn_api(&dir.0, env);
        assert_eq!(kit::get(api.addr, "/metrics").await.status, 404);
        api.signal("TERM");
        assert_eq!(api.wait_exit(HANG), Some(0));
        let logged = api.stderr().lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|r| r["msg"] == "metrics listening")
        });
        assert_eq!(logged, listens, "METRICS_PORT set: {listens}");
    }
}

/// With every API slot held by connections that cannot be evicted (slow bodies in progress),
/// the metrics port still answers, and says so: the cap, the open connections equal to it,
/// and, after a while at the cap, more than zero seconds at the cap. Holding every metrics
/// slot in turn does not stop the API.
#[tokio::test]
async fn metrics_and_api_do_not_share_slots() {
    let srv = start_server_with(&[
        ("METRICS_PORT", "0"),
        ("MAX_CONNECTIONS", "2"),
        ("BODY_TIMEOUT", "30s"),
    ])
    .await;
    let metrics = srv.metrics.unwrap();
    // Two POSTs whose bodies never finish: requests in progress, never evicted.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(kit::partial_post(srv.addr, r#"{"type":"held"}"#).await);
    }
    // Scraped while the API is full; the two connections are open once their heads are in.
    let mut open = 0.0;
    for _ in 0..200 {
        let s = scrape_samples(metrics).await;
        assert_eq!(s["api_connections_max"], 2.0);
        open = s["api_connections_open"];
        if open == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 2.0, "the API's slots are all held");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = scrape_samples(metrics).await;
    assert_eq!(s["api_connections_open"], 2.0, "the slots are still held");
    assert!(
        s["api_connections_at_cap_seconds_total"] > 0.0,
        "time at the cap is counted while the slots are held"
    );
    drop(held);

    // Now the other way round: every metrics slot held by silent connections.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(metrics).await.unwrap());
    }
    let r = tokio::time::timeout(HANG, kit::get(srv.addr, "/health")).await;
    assert_eq!(r.expect("the API answers").status, 200);
}

/// The log's metrics follow its writes: bytes written equal the file's size, every event is
/// in the events-per-write histogram, each sync is timed with EVENT_SYNC=data, and the
/// rotation counters move as the file rotates.
#[tokio::test]
async fn log_metrics_follow_the_file() {
    let srv = start_server_with(&[
        ("METRICS_PORT", "0"),
        ("EVENT_SYNC", "data"),
        ("LOG_MAX_BYTES", "64KiB"),
        ("LOG_KEEP", "2"),
    ])
    .await;
    let metrics = srv.metrics.unwrap();
    let pad = "p".repeat(2000);
    for i in 0..60 {
        let r = kit::post_event(srv.addr, &format!(r#"{{"type":"m","data":"{i}{pad}"}}"#)).await;
        assert_eq!(r.status, 201);
    }
    srv.records().await; // everything buffered is in a file
    let s = scrape_samples(metrics).await;
    assert_eq!(s["api_log_batch_events_sum"], 60.0);
    assert!(s["api_log_batch_events_count"] >= 1.0);
    assert!(s["api_event_sync_duration_seconds_count"] >= 1.0);
    let rotations = s["api_log_rotations_total"];
    assert!(rotations >= 1.0, "60 records of 2 KiB rotate a 64 KiB file");
    assert_eq!(s["api_log_deleted_files_total"], (rotations - 2.0).max(0.0));
    let dir = srv.log.parent().unwrap();
    let on_disk: u64 = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let deleted = s["api_log_deleted_bytes_total"];
    assert_eq!(s["api_log_written_bytes_total"], on_disk as f64 + deleted);
    assert_eq!(
        s["api_log_file_bytes"],
        std::fs::metadata(&srv.log).unwrap().len() as f64
    );
    assert!(s["api_log_volume_size_bytes"] >= s["api_log_volume_free_bytes"]);
    assert!(s["api_log_volume_free_bytes"] > 0.0);
}

/// A full disk shows in the metrics as the alerts read it: the log not ready, failed writes
/// counted as `disk_full`, and the refused events as 503s of `/events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_shows_in_the_metrics() {
    let dir = crate::support::TempDir::new();
    let mnt = dir.0.join("small");
    let _fs = crate::crash::Tmpfs::mount(&mnt, "size=64k,mode=0755");
    std::fs::write(mnt.join("filler"), vec![0u8; 60 * 1024]).expect("the filler fits");
    let log = mnt.join("api.log");
    let srv =
        start_server_with(&[("METRICS_PORT", "0"), ("LOG_FILE", log.to_str().unwrap())]).await;
    let metrics = srv.metrics.unwrap();
    let pad = "f".repeat(3000);
    let mut refused = 0;
    for i in 0..100 {
        let r = kit::post_event(srv.addr, &format!(r#"{{"type":"full","data":"{i}{pad}"}}"#)).await;
        if r.status == 503 {
            refused += 1;
            break;
        }
        assert_eq!(r.status, 201);
    }
    assert_eq!(refused, 1, "the disk fills within 100 events of 3 KiB");
    let s = scrape_samples(metrics).await;
    assert_eq!(s["api_log_ready"], 0.0);
    assert!(s[r#"api_log_write_failures_total{reason="disk_full"}"#] >= 1.0);
    assert_eq!(s[r#"api_log_write_failures_total{reason="other"}"#], 0.0);
    let refused_key = r#"http_requests_total{route="/events",method="POST",code="503"}"#;
    assert_eq!(s[refused_key], 1.0);
}

/// The metrics port's sockets are guarded as the API's: a keep-alive scraper scrapes again on
/// its connection, and a head that never ends is cut at HEADER_TIMEOUT.
#[tokio::test]
async fn metrics_connections_are_guarded() {
    let srv = start_server_with(&[("METRICS_PORT", "0"), ("HEADER_TIMEOUT", "1s")]).await;
    let metrics = srv.metrics.unwrap();
    let mut scraper = Conn::open(metrics).await.unwrap();
    for _ in 0..3 {
        let r = scraper
            .roundtrip(b"GET /metrics HTTP/1.1\r\nHost: p\r\n\r\n")
            .await
            .response()
            .expect("an answer on the kept-alive connection");
        assert_eq!(r.status, 200);
    }
    let mut slow = Conn::open(metrics).await.unwrap();
    slow.io
        .write_all(b"GET /metrics HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert!(slow.closes_within(HANG).await, "a slow head is cut");
}
