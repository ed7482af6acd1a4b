use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kit::*;
use crate::support::*;

/// Waits for the server to close `s`; true if it did within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A declared `Content-Length` over the limit is refused up front with a JSON 413, before any
/// body byte is sent.
#[tokio::test]
async fn declared_body_over_limit_is_413() {
    let srv = start_server_with(&[("MAX_BODY_BYTES", "100")]).await;
    let head = b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n";
    let r = send_raw(srv.addr, head)
        .await
        .expect("an answer without the body");
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().unwrap().contains("100 bytes"));
    assert_eq!(r.header("connection"), Some("close"));
}

/// A chunked body that grows past the limit is cut off with a JSON 413 while streaming.
#[tokio::test]
async fn streamed_body_over_limit_is_413() {
    let srv = start_server_with(&[("MAX_BODY_BYTES", "100")]).await;
    let mut raw = b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        raw.extend_from_slice(b"28\r\n");
        raw.extend_from_slice(&[b' '; 40]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = send_raw(srv.addr, &raw).await.expect("an answer");
    assert_eq!(r.status, 413);
    // Exactly at the limit is fine.
    let body = format!(r#"{{"type":"a","data":"{}"}}"#, "x".repeat(100 - 22));
    assert_eq!(body.len(), 100);
    assert_eq!(post_event(srv.addr, &body).await.status, 201);
}

/// A request head over MAX_HEADER_BYTES gets a JSON 431; one far over hyper's buffer, or
/// with over 100 fields, still gets a 431.
#[tokio::test]
async fn oversized_head_is_431() {
    let srv = start_server_with(&[("MAX_HEADER_BYTES", "4096")]).await;
    let big = "v".repeat(6000);
    let r = request(srv.addr, "GET", "/health", &[("X-Big", &big)], b"").await;
    assert_eq!(r.status, 431);
    assert!(r.json()["error"].as_str().unwrap().contains("4096"));
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Huge: {}\r\n\r\n",
        "v".repeat(64 * 1024)
    );
    let r = send_raw(srv.addr, huge.as_bytes())
        .await
        .expect("an answer");
    assert_eq!(r.status, 431);
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Over 100 fields: hyper's parser refuses them itself, without a body.
    let r = request(srv.addr, "GET", "/health", &many, b"").await;
    assert_eq!(r.status, 431);
}

/// A body that stops arriving gets a JSON 408 after BODY_TIMEOUT.
#[tokio::test]
async fn slow_body_is_408() {
    let srv = start_server_with(&[("BODY_TIMEOUT", "300ms")]).await;
    let mut s = Conn::open(srv.addr).await.unwrap();
    s.io.write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"ty").await.unwrap();
    let r = s.next(HANG).await.response().expect("a 408 answer");
    assert_eq!(r.status, 408);
    assert!(r.json()["error"].as_str().unwrap().contains("in time"));
}

/// A client trickling its request head is dropped at HEADER_TIMEOUT, while other clients are
/// served meanwhile.
#[tokio::test]
async fn slow_head_is_dropped() {
    let srv = start_server_with(&[("HEADER_TIMEOUT", "500ms")]).await;
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X-A: b\r\n").await.is_err() {
                return true;
            }
        }
        false
    };
    let served = async { get(srv.addr, "/health").await.status };
    let (dropped, status) = tokio::join!(trickle, served);
    assert_eq!(status, 200);
    assert!(
        dropped || closed_within(&mut slow, Duration::from_secs(2)).await,
        "the slow client was dropped"
    );
}

/// A connection that sends nothing is closed at HEADER_TIMEOUT too.
#[tokio::test]
async fn silent_connection_is_dropped() {
    let srv = start_server_with(&[("HEADER_TIMEOUT", "300ms")]).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
}

/// An idle keep-alive connection is closed after IDLE_TIMEOUT counted from its last request,
/// not at the shorter HEADER_TIMEOUT, nor IDLE_TIMEOUT after it opened.
#[tokio::test]
async fn idle_keep_alive_is_closed_after_idle_timeout() {
    let srv = start_server_with(&[("HEADER_TIMEOUT", "200ms"), ("IDLE_TIMEOUT", "1500ms")]).await;
    let mut s = Conn::open(srv.addr).await.unwrap();
    let opened = Instant::now();
    // Requests 1 s apart: well past the header timeout, and, from the third on, past
    // IDLE_TIMEOUT since the connection opened, but never idle for that long.
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        s.io.write_all(HEALTH).await.unwrap();
        let resp = s.next(HANG).await.response();
        assert_eq!(
            resp.unwrap_or_else(|| panic!("closed before request {i}, idle for 1 s"))
                .status,
            200
        );
    }
    assert!(opened.elapsed() > Duration::from_millis(1500));
    // ...and closed once idle for IDLE_TIMEOUT, not before.
    let idle = Instant::now();
    assert!(closed_within(&mut s.io, Duration::from_secs(10)).await);
    assert!(
        idle.elapsed() >= Duration::from_millis(1000),
        "closed after {:?} idle, before IDLE_TIMEOUT",
        idle.elapsed()
    );
}

/// Past MAX_CONNECTIONS, with a request in progress on every connection (none can be
/// evicted), a new client waits until a slot frees, then is served.
#[tokio::test]
async fn connection_cap_makes_clients_wait() {
    let srv = start_server_with(&[("MAX_CONNECTIONS", "2")]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(partial_post(srv.addr, r#"{"type":"held"}"#).await);
    }
    let waiting = tokio::spawn(async move { get(srv.addr, "/health").await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the third client waits while two requests are in progress"
    );
    drop(held);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}
