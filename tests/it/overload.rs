//! Overload: more connections than MAX_CONNECTIONS, held by clients that do no work or by
//! keep-alive clients that do. New clients must still be served, without closing a
//! connection that has a request in progress, and without losing a request the service has
//! begun to read. Nothing here asserts a timing: a new client is answered while the
//! connections that hold the cap keep holding it (the latency is the benchmark's,
//! `scripts/overload-bench.sh`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::kit::{self, Conn, HANG, Next};
use crate::support::{self, Api, TempDir};

const CAP: usize = 32;

/// The binary with MAX_CONNECTIONS=CAP and timeouts long enough that no timeout frees a slot
/// during a test: only eviction can.
struct Capped {
    addr: SocketAddr,
    pid: u32,
    log: PathBuf,
    /// The sockets it holds before any client comes (its listeners).
    base_sockets: usize,
    _api: Api,
    _dir: TempDir,
}

impl Capped {
    fn start() -> Capped {
        let dir = TempDir::new();
        let log = dir.0.join("api.log");
        let api = Api::start(support::api_command(
            &dir.0,
            &log,
            &[
                ("MAX_CONNECTIONS", &CAP.to_string()),
                ("HEADER_TIMEOUT", "60s"),
                ("BODY_TIMEOUT", "60s"),
                ("IDLE_TIMEOUT", "60s"),
            ],
        ));
        let pid = api.pid();
        Capped {
            addr: api.addr,
            pid,
            log,
            base_sockets: support::fds(pid).1,
            _api: api,
            _dir: dir,
        }
    }

    /// The client connections it holds now.
    fn held(&self) -> usize {
        support::fds(self.pid).1 - self.base_sockets
    }

    /// Waits until the clients (`who`) hold the cap.
    async fn until_full(&self, who: &str) {
        let full = support::eventually(HANG, || self.held() >= CAP).await;
        assert!(full, "the {who} did not fill the cap");
    }

    /// Five new clients, 200 ms apart, each answered 200 on GET /health (`when` says while
    /// what); returns the most connections it held in the meantime.
    async fn answers_new_clients(&self, when: &str) -> usize {
        let mut held = 0;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                kit::health_status(self.addr, HANG).await,
                Some(200),
                "a new client's GET /health {when}"
            );
            held = held.max(self.held());
        }
        held
    }
}

/// What the keep-alive clients of a test saw.
#[derive(Default, Debug)]
struct Seen {
    /// Request ids answered 200 (GET) or 201 (POST), and which were POSTs.
    answered: Vec<(String, bool)>,
    /// Ids of requests sent on a connection that the server closed before any byte of their
    /// answer; each was sent again, under a new id, on a new connection.
    retried: Vec<String>,
    /// Connections found closed by the server while idle, before a request was sent on them.
    found_closed: usize,
    /// Answers that closed their connection (`Connection: close`).
    closing_answers: usize,
    /// Anything else: an error status, an answer cut short, no answer in time.
    failed: Vec<String>,
}

impl Seen {
    /// What all the clients saw, once each has finished.
    async fn join(mut clients: JoinSet<Seen>) -> Seen {
        let mut seen = Seen::default();
        while let Some(s) = clients.join_next().await {
            let s = s.expect("a keep-alive client does not panic");
            seen.answered.extend(s.answered);
            seen.retried.extend(s.retried);
            seen.found_closed += s.found_closed;
            seen.closing_answers += s.closing_answers;
            seen.failed.extend(s.failed);
        }
        seen
    }

    /// What the test's clients did, for its output.
    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} answered, {} found closed before reuse, {} closing answers, {} retried",
            self.answered.len(),
            self.found_closed,
            self.closing_answers,
            self.retried.len()
        );
    }
}

/// Whether the server has closed `conn` while it sat idle: it reads as closed without
/// blocking. HTTP clients check this before they reuse a pooled connection.
fn closed_while_idle(conn: &Conn<TcpStream>) -> bool {
    let mut byte = [0u8; 1];
    !matches!(conn.io.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A keep-alive client: requests one after the other, `pause` apart, until `stop` is set or
/// `max` have been answered: GET /health, and with `post` every other one POST /events, each
/// with its own `X-Request-Id` (`name-N`). Like common HTTP clients it reuses its connection,
/// checks that an idle one is still open before sending on it, reconnects after an answer that
/// closes, and sends a request again on a new connection when the server closed the old one
/// before any byte of the answer (RFC 9112 section 9.3.1; for a POST that is safe here only
/// because the test then proves the service never read it).
async fn keep_alive_client(
    addr: SocketAddr,
    name: String,
    pause: Duration,
    post: bool,
    max: usize,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut conn: Option<Conn<TcpStream>> = None;
    let mut n = 0;
    while seen.answered.len() < max && !stop.load(Ordering::Relaxed) && seen.failed.is_empty() {
        let id = format!("{name}-{n}");
        n += 1;
        let is_post = post && n % 2 == 0;
        let request = if is_post {
            let body = format!(r#"{{"type":"keep.alive","data":"{id}"}}"#);
            kit::event_request(&body, &format!("X-Request-Id: {id}\r\n"))
        } else {
            format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: {id}\r\n\r\n").into_bytes()
        };
        let reused = conn.is_some();
        let mut c = match conn.take() {
            Some(c) if closed_while_idle(&c) => {
                seen.found_closed += 1;
                Conn::open(addr).await.expect("the backlog takes it")
            }
            Some(c) => c,
            None => Conn::open(addr).await.expect("the backlog takes it"),
        };
        let next = match c.io.write_all(&request).await {
            Ok(()) => c.next(HANG).await,
            Err(_) => Next::Closed,
        };
        match next {
            Next::Response(r) if r.status == if is_post { 201 } else { 200 } => {
                seen.answered.push((id, is_post));
                if r.header("connection") == Some("close") {
                    seen.closing_answers += 1;
                } else {
                    conn = Some(c);
                }
            }
            // Closed before any byte of an answer, on a connection that had served before.
            Next::Closed if reused => seen.retried.push(id),
            other => seen.failed.push(format!("{id}: {}", other.token())),
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    seen
}

/// The access records by request id, once every id in `expected` has one (access records
/// reach the file within a fraction of a second).
async fn access_by_id(log: &Path, expected: &[(String, bool)]) -> HashMap<String, usize> {
    let count = || {
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for r in support::read_records(log) {
            if r["msg"] == "access"
                && let Some(id) = r["request_id"].as_str()
            {
                *by_id.entry(id.to_string()).or_default() += 1;
            }
        }
        by_id
    };
    support::eventually(Duration::from_secs(10), || {
        let by_id = count();
        expected.iter().all(|(id, _)| by_id.contains_key(id))
    })
    .await;
    count()
}

/// What the log must say of the keep-alive clients' requests: every answered one has exactly
/// one access record (and an answered POST one event record), and no retried one has any: the
/// service had not read a byte of it, so sending it again was safe even for a POST.
async fn check_against_log(log: &Path, seen: &Seen) {
    let access = access_by_id(log, &seen.answered).await;
    for (id, _) in &seen.answered {
        assert_eq!(access.get(id), Some(&1), "access records of answered {id}");
    }
    for id in &seen.retried {
        assert_eq!(
            access.get(id),
            None,
            "the retried {id} was read by the service"
        );
    }
    let events = support::event_counts(&support::read_records(log), "request_id");
    for (id, post) in &seen.answered {
        assert_eq!(
            events.get(id).copied().unwrap_or(0),
            usize::from(*post),
            "{id}"
        );
    }
    for id in &seen.retried {
        assert_eq!(events.get(id), None, "the retried {id} was stored");
    }
}

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
    let api = Capped::start();
    let addr = api.addr;

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
    let held = api.held();
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
        support::read_records(&api.log).iter().any(summary)
    })
    .await;
    assert!(logged, "no summary of the pressure in the log");
    let summaries: Vec<Value> = support::read_records(&api.log)
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

/// An upstream's keep-alive pool larger than the cap, each connection busy every few tens of
/// milliseconds, so that none is ever idle long: a new client is still answered while the
/// pool keeps working (connections between requests are evicted, whatever their age). The
/// pool's requests all succeed: an evicted connection is found closed before reuse, or
/// answers a request that raced the eviction with `Connection: close`, or, when the request
/// was still on its way, closes before the service read any of it and the client sends it
/// again; the log proves no retried request was read. The service never holds more than one
/// connection beyond the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_pool_larger_than_the_cap_does_not_lock_new_clients_out() {
    let api = Capped::start();
    let addr = api.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let mut pool = JoinSet::new();
    for i in 0..CAP + CAP / 4 {
        let stop = Arc::clone(&stop);
        pool.spawn(keep_alive_client(
            addr,
            format!("pool{i}"),
            Duration::from_millis(30),
            i % 4 == 0,
            2000,
            stop,
        ));
    }
    // Once the cap is reached, the pool holds it; new clients come while it works.
    api.until_full("pool").await;
    let held = api.answers_new_clients("while the pool works").await;
    let posted = kit::post_event(addr, r#"{"type":"pool.newcomer"}"#).await;
    assert_eq!(posted.status, 201, "a new client's POST /events");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = Seen::join(pool).await;
    seen.report("pool");
    assert!(seen.failed.is_empty(), "failed: {:?}", seen.failed);
    assert!(
        held <= CAP + 1,
        "{held} connections held with a cap of {CAP}"
    );
    check_against_log(&api.log, &seen).await;
    let info = kit::get(addr, "/").await.json();
    assert!(
        info["connections"]["evicted_idle"].as_u64() >= Some(5),
        "{info}"
    );
}

/// Keep-alive clients that each send one request and then park hold every slot, all of them
/// served moments ago: new clients are answered, each in the place of the connection idle
/// longest, which is closed cleanly between requests; the others stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_keep_alive_clients_make_room_longest_idle_first() {
    let api = Capped::start();
    let addr = api.addr;

    let mut parked = Vec::new();
    for _ in 0..CAP {
        let mut c = Conn::open(addr).await.unwrap();
        assert_eq!(c.roundtrip(kit::HEALTH).await.token(), "200");
        parked.push(c);
        // Apart by more than the millisecond in which the service notes when each went idle.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    const NEW: usize = 8;
    let mut newcomers = Vec::new();
    for _ in 0..NEW {
        // Each newcomer parks too, so the cap stays full.
        let mut c = Conn::open(addr).await.unwrap();
        assert_eq!(
            c.roundtrip(kit::HEALTH).await.token(),
            "200",
            "a new client at the cap"
        );
        newcomers.push(c);
    }
    for (i, c) in parked.iter_mut().enumerate() {
        if i < NEW {
            assert!(
                c.closes_within(HANG).await,
                "parked connection {i} was not closed"
            );
        } else {
            assert!(!closed_while_idle(c), "parked connection {i} was closed");
        }
    }
    let info = kit::get(addr, "/").await.json();
    assert_eq!(info["connections"]["evicted_idle"], NEW + 1, "{info}");
}

/// More keep-alive clients than slots, each sending one request, parking, and reconnecting as
/// soon as it is evicted to send one request again, so that they keep evicting each other:
/// new clients are answered while they do, and the flood's own requests all succeed (each is
/// sent on a new connection, which is never closed before its first request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_reconnecting_as_they_are_evicted_do_not_lock_new_clients_out() {
    let api = Capped::start();
    let addr = api.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = JoinSet::new();
    for i in 0..CAP + CAP / 4 {
        let stop = Arc::clone(&stop);
        flood.spawn(async move {
            let (mut answered, mut failed) = (0, Vec::new());
            for round in 0..500 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut c = Conn::open(addr).await.expect("the backlog takes it");
                let request = format!(
                    "GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: park{i}-{round}\r\n\r\n"
                );
                match c.roundtrip(request.as_bytes()).await {
                    Next::Response(r) if r.status == 200 => answered += 1,
                    other => failed.push(format!("park{i}-{round}: {}", other.token())),
                }
                // Parked until evicted (or the test ends).
                while !stop.load(Ordering::Relaxed) && !closed_while_idle(&c) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (answered, failed)
        });
    }
    api.until_full("flood").await;
    api.answers_new_clients("while the flood reconnects").await;
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut failed) = (0, Vec::new());
    while let Some(r) = flood.join_next().await {
        let (a, f) = r.expect("a flood client does not panic");
        answered += a;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "flood requests failed: {failed:?}");
    eprintln!("reconnecting flood: {answered} requests");
    assert!(
        answered > 2 * CAP,
        "the flood did not keep reconnecting: {answered} requests"
    );
}

/// Keep-alive clients doing back-to-back requests (GET and POST) while a parked flood holds
/// the cap and new clients arrive: no request the service began to read fails, every retried
/// request is one the service never read (the log says so), and every answered POST is
/// stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_clients_lose_no_request_while_a_flood_holds_the_cap() {
    let api = Capped::start();
    let addr = api.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let mut honest = JoinSet::new();
    for i in 0..4 {
        honest.spawn(keep_alive_client(
            addr,
            format!("honest{i}"),
            Duration::ZERO,
            true,
            20_000,
            Arc::clone(&stop),
        ));
    }
    // The flood: parked keep-alive connections, twice the cap, opened as fast as they go.
    let (flood_stop, flood_stopped) = watch::channel(());
    let mut flood = JoinSet::new();
    for _ in 0..2 * CAP {
        let mut stopped = flood_stopped.clone();
        flood.spawn(async move {
            let mut c = Conn::open(addr).await.expect("the backlog takes it");
            if c.io.write_all(kit::HEALTH).await.is_ok() {
                tokio::select! {
                    _ = c.until_eof(HANG * 6) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
    }
    api.until_full("flood").await;
    api.answers_new_clients("while the flood holds the cap")
        .await;
    stop.store(true, Ordering::Relaxed);
    let seen = Seen::join(honest).await;
    let _ = flood_stop.send(());
    while flood.join_next().await.is_some() {}
    seen.report("back to back");
    assert!(seen.failed.is_empty(), "failed: {:?}", seen.failed);
    check_against_log(&api.log, &seen).await;
}
