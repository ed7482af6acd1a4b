//! Overload: more connections than MAX_CONNECTIONS, held by clients that do no work. New
//! clients must still be served, without closing a connection that has a request in progress.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::kit::{self, Conn, HANG, Next};
use crate::support::{self, Api, TempDir};

const CAP: usize = 32;

/// Trickles a request head that never ends, one byte every 100 ms, until the server closes the
/// connection (true) or `stop` changes (false).
async fn loris(addr: SocketAddr, mut stop: watch::Receiver<()>) -> bool {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("the backlog takes it");
    let head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: y";
    let mut bytes = head.iter().copied().cycle();
    // The first byte at once, the rest one per period.
    let first = bytes.next().expect("the head has bytes");
    if stream.write_all(&[first]).await.is_err() {
        return true;
    }
    let stop = async move {
        let _ = stop.changed().await;
    };
    kit::trickle(&mut stream, Duration::from_millis(100), bytes, stop).await
}

/// Twice MAX_CONNECTIONS=32 held by idle keep-alive and slowloris connections: a new client's
/// GET /health and POST /events are answered, a slow POST body in progress (the oldest
/// connection) is not closed and gets its 201, the idle connections are closed cleanly
/// between requests, the service never holds more than one connection beyond the cap, and
/// GET / and the log count the evictions by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_make_room_for_new_clients() {
    let dir = TempDir::new();
    let log = dir.0.join("api.log");
    let api = Api::start(support::api_command(
        &dir.0,
        &log,
        &[
            ("MAX_CONNECTIONS", &CAP.to_string()),
            // Long enough that no timeout frees a slot during the test: only eviction can.
            ("HEADER_TIMEOUT", "60s"),
            ("BODY_TIMEOUT", "60s"),
        ],
    ));
    let (addr, pid) = (api.addr, api.pid());
    let base_sockets = support::fds(pid).1;

    // The oldest connection: a POST whose body arrives slowly.
    let body = r#"{"type":"slow.body","data":{"pad":"................"}}"#;
    let (early, rest) = body.as_bytes().split_at(10);
    let mut slow_post = Conn::open(addr).await.unwrap();
    let mut head = kit::event_request(body, "");
    head.truncate(head.len() - body.len());
    slow_post.io.write_all(&head).await.unwrap();
    slow_post.io.write_all(early).await.unwrap();

    // The first wave fills the cap: 16 idle keep-alive connections and 15 slowloris.
    let mut idle = Vec::new();
    for _ in 0..16 {
        let mut c = Conn::open(addr).await.unwrap();
        assert_eq!(c.roundtrip(kit::HEALTH).await.token(), "200");
        idle.push(c);
    }
    let (stop, stopped) = watch::channel(());
    let mut lorises = JoinSet::new();
    for _ in 0..CAP - 1 - idle.len() {
        lorises.spawn(loris(addr, stopped.clone()));
    }
    // Let the idle ones pass the window in which a kept-alive connection counts as working.
    for byte in &rest[..5] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        slow_post.io.write_all(&[*byte]).await.unwrap();
    }

    // The second wave: as many again, all slowloris.
    for _ in 0..CAP {
        lorises.spawn(loris(addr, stopped.clone()));
    }
    assert_eq!(
        kit::health_status(addr, HANG).await,
        Some(200),
        "a new client's GET /health at the cap"
    );
    let posted = kit::post_event(addr, r#"{"type":"at.cap"}"#).await;
    assert_eq!(posted.status, 201, "a new client's POST /events at the cap");
    let held = support::fds(pid).1 - base_sockets;
    assert!(
        held <= CAP + 1,
        "{held} connections held with a cap of {CAP}"
    );

    for (i, c) in idle.iter_mut().enumerate() {
        assert!(
            c.closes_within(HANG).await,
            "idle connection {i} was not closed cleanly"
        );
    }
    slow_post.io.write_all(&rest[5..]).await.unwrap();
    match slow_post.next(HANG).await {
        Next::Response(r) => assert_eq!(r.status, 201, "the slow POST"),
        other => panic!("the slow POST in progress got {}", other.token()),
    }

    let info = kit::get(addr, "/").await.json();
    let counted = &info["connections"];
    assert_eq!(counted["max"], CAP, "{info}");
    assert_eq!(counted["evicted_idle"], 16, "{info}");
    assert!(counted["evicted_head"].as_u64() >= Some(16), "{info}");
    assert!(counted["at_cap_ms"].as_u64() > Some(0), "{info}");

    let _ = stop.send(());
    let mut evicted = 0;
    while let Some(closed) = lorises.join_next().await {
        evicted += usize::from(closed.unwrap());
    }
    assert!(evicted >= CAP / 2, "only {evicted} slowloris closed");

    // The summary line comes once per period while the cap is reached, not per eviction.
    let summary = |r: &Value| r["msg"] == "connection cap reached";
    let logged = support::eventually(Duration::from_secs(30), || {
        support::read_records(&log).iter().any(summary)
    })
    .await;
    assert!(logged, "no summary of the pressure in the log");
    let summaries: Vec<Value> = support::read_records(&log)
        .into_iter()
        .filter(summary)
        .collect();
    let s = &summaries[0];
    assert_eq!(s["level"], "warn");
    assert_eq!(s["max_connections"], CAP);
    assert!(s["evicted_idle"].as_u64() >= Some(1), "{s}");
    assert!(s["evicted_head"].as_u64() >= Some(1), "{s}");
    assert!(summaries.len() < 5, "one line per period: {summaries:?}");
}
