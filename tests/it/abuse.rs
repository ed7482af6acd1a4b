//! Resource abuse: clients that trickle heads or bodies, floods past the connection cap,
//! clients that vanish mid-request, and running out of file descriptors. The service must keep
//! serving others, close what it should, and hold on to nothing afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::kit::{self, Conn, HANG, Next};
use crate::support::{self, Api, TempDir};

/// How a slowloris client behaves.
#[derive(Clone, Copy, Debug)]
enum Loris {
    /// Starts a head and trickles one more byte of it every 50 ms, forever.
    Trickle,
    /// Connects and sends nothing.
    Silent,
    /// Sends one whole request, reads the answer, then trickles the next head.
    SecondHead,
}

/// Runs one slowloris client for at most [`HANG`]; returns how long after its head began the
/// server closed the connection, or `Err` if it never did.
async fn loris(addr: SocketAddr, kind: Loris) -> Result<Duration, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    if let Loris::SecondHead = kind {
        let mut conn = Conn::new(stream);
        match conn.roundtrip(kit::HEALTH).await {
            Next::Response(r) if r.status == 200 => {}
            other => return Err(format!("first request: {}", other.token())),
        }
        stream = conn.io;
    }
    let start = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: t\r\n";
    // The head never ends: after the request line, one more header byte each time. A silent
    // client has none to send.
    let silent = matches!(kind, Loris::Silent);
    let bytes = (0..).take_while(|_| !silent).map(|sent: usize| {
        if sent < head.len() {
            head[sent]
        } else {
            b"X-Slow: y\r\n"[sent % 11]
        }
    });
    let stop = tokio::time::sleep(HANG);
    if kit::trickle(&mut stream, Duration::from_millis(50), bytes, stop).await {
        Ok(start.elapsed())
    } else {
        Err(format!("{kind:?}: still open after {HANG:?}"))
    }
}

/// Slowloris: 150 connections that trickle head bytes (or send nothing, or trickle a second
/// head on a kept-alive connection) are each closed at the 1 s header timeout, although they
/// keep sending, while `/health` answers every probe from other connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_timeout_while_health_answers() {
    let server = support::start_server_with(&[("HEADER_TIMEOUT", "1s")]).await;
    let addr = server.addr;
    let kinds = [Loris::Trickle, Loris::Silent, Loris::SecondHead];
    let mut lorises = JoinSet::new();
    for i in 0..150 {
        lorises.spawn(loris(addr, kinds[i % 3]));
    }

    // Probes while they trickle: new connections, and one kept-alive connection. The kept one
    // asks first: until its first head it is a silent new connection, which the 1 s header
    // timeout would rightly close if a slow first probe (a busy machine) came before it.
    let mut kept = Conn::open(addr).await.unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..40 {
        let t = Instant::now();
        let status = if i % 2 == 1 {
            kit::health_status(addr, HANG).await
        } else {
            kept.roundtrip(kit::HEALTH)
                .await
                .response()
                .map(|r| r.status)
        };
        assert_eq!(status, Some(200), "probe {i} during the slowloris");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(worst < Duration::from_secs(5), "a probe took {worst:?}");

    let mut closed_after = Vec::new();
    while let Some(res) = lorises.join_next().await {
        closed_after.push(
            res.unwrap()
                .unwrap_or_else(|e| panic!("slowloris not cut: {e}")),
        );
    }
    let (min, max) = (
        closed_after.iter().min().unwrap(),
        closed_after.iter().max().unwrap(),
    );
    eprintln!("slowloris: 150 connections closed after {min:?} to {max:?}; worst probe {worst:?}");
    // Not before the timeout (give or take the connect), and not long after it.
    assert!(
        *min >= Duration::from_millis(500),
        "closed after only {min:?}"
    );
    assert!(*max < Duration::from_secs(8), "closed only after {max:?}");
    assert!(!server.task.is_finished());
}

/// A flood of 200 connections past MAX_CONNECTIONS=8 while every slot has a request in
/// progress (a POST whose body trickles in), so that none can be evicted: the binary never
/// holds more than 8 accepted connections, the 8 requests in progress are served, the excess
/// wait (unanswered, not dropped) and are all answered once the holders leave, the binary
/// then holding at most one connection beyond the cap; afterwards no socket is left open and
/// memory has not grown by more than a few MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_cap_waits_and_the_cap_holds() {
    let dir = TempDir::new();
    let log = dir.0.join("api.log");
    let api = Api::start(support::api_command(
        &dir.0,
        &log,
        &[("MAX_CONNECTIONS", "8"), ("HEADER_TIMEOUT", "20s")],
    ));
    let (addr, pid) = (api.addr, api.pid());
    for _ in 0..20 {
        assert_eq!(kit::health_status(addr, HANG).await, Some(200));
    }
    let base_sockets = settle_sockets(pid, None).await;
    let base_rss = support::status_field(pid, "VmRSS");

    let body = r#"{"type":"held","data":"......................"}"#;
    let mut holders = Vec::new();
    for _ in 0..8 {
        holders.push(kit::partial_post(addr, body).await);
    }
    let mut flood = JoinSet::new();
    for _ in 0..200 {
        flood.spawn(async move {
            let mut c = Conn::open(addr)
                .await
                .expect("the backlog takes the connection");
            c.io.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            c.next(Duration::from_secs(30)).await.token()
        });
    }
    // While the holders' bodies trickle in: the flood waits, the cap holds.
    let mut peak = 0;
    for round in 1..=10 {
        for h in holders.iter_mut() {
            h.io.write_all(&body.as_bytes()[round..=round])
                .await
                .unwrap();
        }
        peak = peak.max(support::fds(pid).1 - base_sockets);
        assert!(
            peak <= 8,
            "round {round}: {peak} connections accepted with a cap of 8"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        flood.try_join_next().is_none(),
        "a flood connection was answered past the cap"
    );
    for (i, h) in holders.iter_mut().enumerate() {
        h.io.write_all(&body.as_bytes()[11..]).await.unwrap();
        assert_eq!(h.next(HANG).await.token(), "201", "holder {i}");
    }

    drop(holders);
    // While the backlog drains, sample the accepted connections until the flood is done.
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(30) {
            peak = peak.max(support::fds(pid).1.saturating_sub(base_sockets));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        peak
    });
    let mut answered = 0;
    while let Some(token) = flood.join_next().await {
        assert_eq!(
            token.unwrap(),
            "200",
            "a flood connection after the holders left"
        );
        answered += 1;
    }
    done.store(true, Ordering::Relaxed);
    let drain_peak = sampler.await.unwrap();
    assert_eq!(answered, 200);
    assert!(
        drain_peak <= 9,
        "{drain_peak} connections accepted with a cap of 8"
    );
    let after = settle_sockets(pid, Some(base_sockets)).await;
    let rss = support::status_field(pid, "VmRSS");
    eprintln!(
        "flood: 200 answered; peak accepted {peak} while held, {drain_peak} while draining; sockets {base_sockets} -> {after}; \
         RSS {base_rss} -> {rss} KiB"
    );
    assert!(
        rss < base_rss + 16 * 1024,
        "RSS grew from {base_rss} to {rss} KiB"
    );
    assert_eq!(kit::health_status(addr, HANG).await, Some(200));
}

/// Waits until the socket count of `pid` stops changing (or reaches `target`); returns it.
async fn settle_sockets(pid: u32, target: Option<usize>) -> usize {
    let start = Instant::now();
    let mut last = support::fds(pid).1;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = support::fds(pid).1;
        let done = match target {
            Some(t) => now <= t,
            None => now == last,
        };
        if done || start.elapsed() > HANG {
            if let Some(t) = target {
                assert!(
                    now <= t,
                    "{now} sockets open, {t} before: connections leaked"
                );
            }
            return now;
        }
        last = now;
    }
}

/// Slow bodies: 40 senders that trickle a body (one byte every 100 ms, never stalling, some
/// chunked) each get a 408 with `Connection: close` at the 1 s body timeout and are closed,
/// while 40 ordinary events sent meanwhile get 201; none of the slow bodies becomes an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_while_others_are_served() {
    let server = support::start_server_with(&[("BODY_TIMEOUT", "1s")]).await;
    let addr = server.addr;
    let mut slow = JoinSet::new();
    for i in 0..40 {
        slow.spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (rd, mut wr) = stream.into_split();
            let chunked = i % 4 == 0;
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                "Content-Length: 200".to_string()
            };
            let head = format!(
                "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 {framing}\r\n\r\n"
            );
            wr.write_all(head.as_bytes()).await.unwrap();
            let trickle = tokio::spawn(async move {
                let body = b"{\"type\":\"slow.body\",\"data\":\""
                    .iter()
                    .chain([b'x'; 170].iter());
                for &b in body {
                    let piece = if chunked {
                        vec![b'1', b'\r', b'\n', b, b'\r', b'\n']
                    } else {
                        vec![b]
                    };
                    if wr.write_all(&piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let mut conn = Conn::new(rd);
            let start = Instant::now();
            let first = conn.next(HANG).await;
            let took = start.elapsed();
            let closed = conn.closes_within(HANG).await;
            trickle.abort();
            match first {
                Next::Response(r) => (
                    r.status,
                    r.header("connection").map(str::to_string),
                    closed,
                    took,
                ),
                other => panic!("slow body {i}: {}", other.token()),
            }
        });
    }
    let mut fast = JoinSet::new();
    for i in 0..40 {
        fast.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            kit::post_event(addr, r#"{"type":"fast.event"}"#)
                .await
                .status
        });
    }
    while let Some(status) = fast.join_next().await {
        assert_eq!(
            status.unwrap(),
            201,
            "an ordinary event beside the slow bodies"
        );
    }
    while let Some(res) = slow.join_next().await {
        let (status, connection, closed, took) = res.unwrap();
        assert_eq!(status, 408, "a slow body");
        assert_eq!(connection.as_deref(), Some("close"));
        assert!(closed, "the connection closes after the 408");
        assert!(
            took >= Duration::from_millis(900),
            "408 after only {took:?}"
        );
    }
    let records = server.records().await;
    let types: Vec<&str> = records
        .iter()
        .filter(|r| r["msg"] == "event")
        .filter_map(|r| r["type"].as_str())
        .collect();
    assert_eq!(types.iter().filter(|t| **t == "fast.event").count(), 40);
    assert!(!types.contains(&"slow.body"), "a slow body became an event");
    let timeouts = records
        .iter()
        .filter(|r| r["msg"] == "access" && r["status"] == 408)
        .count();
    assert_eq!(timeouts, 40, "one access record per 408");
}

/// How a client vanishes.
#[derive(Clone, Copy, Debug)]
enum Vanish {
    ConnectOnly,
    HalfHead,
    HalfHeadReset,
    HalfBody,
    HalfBodyReset,
    WholeRequestUnread,
    PipelinedUnread,
    SilentReset,
}

const VANISH: [Vanish; 8] = [
    Vanish::ConnectOnly,
    Vanish::HalfHead,
    Vanish::HalfHeadReset,
    Vanish::HalfBody,
    Vanish::HalfBodyReset,
    Vanish::WholeRequestUnread,
    Vanish::PipelinedUnread,
    Vanish::SilentReset,
];

async fn vanish(addr: SocketAddr, how: Vanish, n: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = format!(r#"{{"type":"vanish.half","data":"{n:0>100}"}}"#);
    let post = |body_part: &str| {
        format!(
            "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body_part}",
            body.len()
        )
    };
    let bytes = match how {
        Vanish::ConnectOnly | Vanish::SilentReset => String::new(),
        Vanish::HalfHead | Vanish::HalfHeadReset => {
            "POST /events HTTP/1.1\r\nHost: t\r\nCont".into()
        }
        Vanish::HalfBody | Vanish::HalfBodyReset => post(&body[..body.len() / 2]),
        Vanish::WholeRequestUnread => {
            String::from_utf8(kit::event_request(r#"{"type":"vanish.whole"}"#, "")).unwrap()
        }
        Vanish::PipelinedUnread => String::from_utf8(kit::HEALTH.repeat(20)).unwrap(),
    };
    let _ = s.write_all(bytes.as_bytes()).await;
    // Let the server start on it, so that it vanishes mid-request rather than before.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if matches!(
        how,
        Vanish::HalfHeadReset | Vanish::HalfBodyReset | Vanish::SilentReset
    ) {
        s.set_zero_linger().unwrap();
    }
    drop(s);
}

/// 400 clients that vanish in eight ways (before, inside and after a request; with FIN and with
/// RST) leave nothing behind in the binary: its sockets and threads return to the baseline,
/// memory stays within a few MiB of it, no half-sent event is recorded, and it still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanishing_clients_leave_nothing_behind() {
    let dir = TempDir::new();
    let log = dir.0.join("api.log");
    let mut api = Api::start(support::api_command(
        &dir.0,
        &log,
        &[("HEADER_TIMEOUT", "2s"), ("BODY_TIMEOUT", "2s")],
    ));
    let (addr, pid) = (api.addr, api.pid());
    for _ in 0..50 {
        assert_eq!(
            kit::post_event(addr, r#"{"type":"warm"}"#).await.status,
            201
        );
    }
    let base_sockets = settle_sockets(pid, None).await;
    let base_threads = support::status_field(pid, "Threads");
    let base_rss = support::status_field(pid, "VmRSS");

    for round in 0..5 {
        let mut set = JoinSet::new();
        for i in 0..80 {
            let n = round * 80 + i;
            set.spawn(vanish(addr, VANISH[n % VANISH.len()], n));
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }
    // Every connection is gone within the timeouts (2 s), plus margin.
    let after = settle_sockets(pid, Some(base_sockets)).await;
    let threads = support::status_field(pid, "Threads");
    let rss = support::status_field(pid, "VmRSS");
    eprintln!(
        "vanish: 400 clients; sockets {base_sockets} -> {after}; threads {base_threads} -> \
         {threads}; RSS {base_rss} -> {rss} KiB"
    );
    assert!(
        threads <= base_threads,
        "threads grew from {base_threads} to {threads}"
    );
    assert!(
        rss < base_rss + 16 * 1024,
        "RSS grew from {base_rss} to {rss} KiB"
    );
    assert_eq!(
        kit::post_event(addr, r#"{"type":"after"}"#).await.status,
        201
    );

    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0));
    let records = support::read_records(&log);
    let half = records
        .iter()
        .filter(|r| r["msg"] == "event" && r["type"] == "vanish.half")
        .count();
    assert_eq!(half, 0, "an event whose body never arrived was recorded");
    assert!(records.iter().any(|r| r["type"] == "after"));
}

/// Out of file descriptors: with RLIMIT_NOFILE squeezed to 24 more than it has open and 60
/// clients holding connections, accept fails with EMFILE; the server backs off instead of
/// spinning (well under half a core over 2 s), warns in its log, and once the clients leave it
/// accepts and answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_does_not_spin_and_recovers() {
    let dir = TempDir::new();
    let log = dir.0.join("api.log");
    let mut api = Api::start(support::api_command(
        &dir.0,
        &log,
        &[("HEADER_TIMEOUT", "30s"), ("IDLE_TIMEOUT", "30s")],
    ));
    let (addr, pid) = (api.addr, api.pid());
    assert_eq!(kit::health_status(addr, HANG).await, Some(200));
    let limit = support::fds(pid).0 + 24;
    let ok = std::process::Command::new("prlimit")
        .args([format!("--pid={pid}"), format!("--nofile={limit}:{limit}")])
        .status()
        .expect("prlimit(1) runs");
    assert!(ok.success(), "prlimit --pid {pid} --nofile={limit}");

    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Give it time to fill its table, then measure CPU use while it is full.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        support::fds(pid).0 >= limit - 1,
        "the descriptor table did not fill"
    );
    let cpu0 = support::cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = support::cpu_time(pid) - cpu0;
    eprintln!("emfile: {used:?} of CPU in 2 s with a full descriptor table");
    assert!(
        used < Duration::from_secs(1),
        "{used:?} of CPU in 2 s: the accept loop spins"
    );

    drop(held);
    let mut answered = false;
    for _ in 0..100 {
        if kit::health_status(addr, Duration::from_secs(2)).await == Some(200) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "no answer after the descriptors came back");
    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0));
    let records = support::read_records(&log);
    assert!(
        records.iter().any(
            |r| r["level"] == "warn" && r["msg"].as_str().is_some_and(|m| m.contains("accept"))
        ),
        "no warning about failing accepts"
    );
}

/// A client that pipelines requests but never reads the answers (a slow reader) is dropped
/// once the server has been unable to write to it for a while: it cannot hold a connection
/// slot, or a shutdown drain, forever. With MAX_CONNECTIONS=1, a second client waits for that
/// slot and must be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped() {
    let server = support::start_server_with(&[
        ("MAX_CONNECTIONS", "1"),
        ("HEADER_TIMEOUT", "1s"),
        ("BODY_TIMEOUT", "1s"),
        ("IDLE_TIMEOUT", "2s"),
    ])
    .await;
    let addr = server.addr;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (_rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let reqs = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(5000);
        let _ = wr.write_all(&reqs).await;
        // Keep the connection open and silent: it neither reads nor closes.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(wr);
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The only slot is taken; this client waits until the silent reader is dropped.
    let t = Instant::now();
    // The server works through the pipelined requests before its writes stall: under
    // emulation that takes longer.
    let limit = Duration::from_secs(20) * support::time_factor();
    let status = kit::health_status(addr, limit).await;
    writer.abort();
    assert_eq!(
        status,
        Some(200),
        "no answer in {limit:?}: the non-reading client holds the slot"
    );
    eprintln!(
        "slow reader: dropped; the next client was served after {:?}",
        t.elapsed()
    );
}
