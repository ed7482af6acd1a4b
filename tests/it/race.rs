//! The Kubernetes race without Kubernetes: replicas behind a round-robin TCP forwarder that,
//! like the endpoints controller and kube-proxy, stops sending a replica new connections only
//! a while after that replica got SIGTERM, and never retries. The replicas are restarted one
//! by one under GET and POST load.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::kit::{Client, Outcome};
use crate::support::*;

/// Longest one request may take before the load counts it as failed.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(5);

/// The backends a forwarder sends new connections to, in turn.
#[derive(Default)]
struct Pool {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
}

impl Pool {
    fn pick(&self) -> SocketAddr {
        let backends = self.backends.lock().unwrap();
        backends[self.next.fetch_add(1, Ordering::Relaxed) % backends.len()]
    }

    fn add(&self, addr: SocketAddr) {
        self.backends.lock().unwrap().push(addr);
    }

    fn remove(&self, addr: SocketAddr) {
        self.backends.lock().unwrap().retain(|a| *a != addr);
    }
}

/// An L4 balancer: each client connection is piped to the next backend. A backend that
/// refuses is not retried: the client's connection just closes, as with kube-proxy.
async fn forward(listener: TcpListener, pool: Arc<Pool>) {
    while let Ok((mut client, _)) = listener.accept().await {
        let backend = pool.pick();
        tokio::spawn(async move {
            if let Ok(mut upstream) = TcpStream::connect(backend).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failures: Mutex<HashMap<String, u64>>,
    /// Ids of the events answered 201.
    acknowledged: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: &str) {
        *self.failures.lock().unwrap().entry(why.into()).or_default() += 1;
    }

    fn failed(&self) -> u64 {
        self.failures.lock().unwrap().values().sum()
    }
}

/// Most requests one run may send, whatever the time: the load is bounded in count too.
const MAX_REQUESTS: u64 = 100_000;

/// One client of the load: GET / or POST /events, keep-alive or a connection per request,
/// with a short pause between requests: the race needs new connections during the lag, not
/// a flood on a shared machine.
async fn load(
    addr: SocketAddr,
    post: bool,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    t: Arc<Tally>,
) {
    let mut client = Client::new(addr, keep_alive, REQUEST_LIMIT);
    while !stop.load(Ordering::Relaxed) && t.requests.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
    {
        let outcome = if post {
            client.send("/events", Some(r#"{"type":"race"}"#)).await
        } else {
            client.send("/", None).await
        };
        match outcome {
            Outcome::Answered {
                status: 201, body, ..
            } if post => {
                let answer: serde_json::Value = serde_json::from_slice(&body).expect("201 is JSON");
                let id = answer["id"]
                    .as_str()
                    .expect("201 names the event")
                    .to_string();
                t.acknowledged.lock().unwrap().push(id);
            }
            Outcome::Answered { status: 200, .. } if !post => {}
            Outcome::Answered { status, .. } => t.fail(&format!("status {status}")),
            Outcome::Failed(why) => t.fail(why),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many replicas run at once, as in the Kubernetes manifests.
const REPLICAS: usize = 3;

/// Like the endpoints controller: how long after a replica's SIGTERM the forwarder still
/// sends it new connections.
const ENDPOINTS_LAG: Duration = Duration::from_secs(1);

/// Starts replica `slot`, appending to its slot's log file across restarts.
fn replica(dir: &Path, slot: usize, drain_delay: &str) -> Api {
    let log = dir.join(format!("logs/api-{slot}.log"));
    Api::start(api_command(dir, &log, &[("DRAIN_DELAY", drain_delay)]))
}

/// The figures of one run.
struct Figures {
    requests: u64,
    failed: u64,
    failures: HashMap<String, u64>,
    acknowledged: Vec<String>,
    /// How many times each event id appears in the replicas' log files.
    logged: HashMap<String, usize>,
}

/// Runs `REPLICAS` replicas behind the forwarder under load and restarts each in turn the way a
/// rolling update does: the new one starts, the old one gets SIGTERM and leaves the pool
/// `ENDPOINTS_LAG` later. Every replica must exit 0.
fn rolling_restart(drain_delay: &str) -> Figures {
    let dir = TempDir::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = Arc::new(Pool::default());
    let mut replicas: Vec<Api> = (0..REPLICAS)
        .map(|slot| replica(&dir.0, slot, drain_delay))
        .collect();
    for r in &replicas {
        pool.add(r.addr);
    }
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let front = listener.local_addr().unwrap();
    rt.spawn(forward(listener, Arc::clone(&pool)));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = [(false, true), (true, true), (false, false), (true, false)]
        .iter()
        .cycle()
        .take(8)
        .map(|&(post, keep_alive)| {
            rt.spawn(load(
                front,
                post,
                keep_alive,
                Arc::clone(&stop),
                Arc::clone(&tally),
            ))
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    for (slot, running) in replicas.iter_mut().enumerate() {
        let new = replica(&dir.0, slot, drain_delay);
        pool.add(new.addr);
        let mut old = std::mem::replace(running, new);
        old.signal("TERM");
        std::thread::sleep(ENDPOINTS_LAG);
        pool.remove(old.addr);
        assert_eq!(
            old.wait_exit(Duration::from_secs(30)),
            Some(0),
            "{}",
            old.stderr()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        rt.block_on(c).unwrap();
    }
    for mut r in replicas {
        r.signal("TERM");
        assert_eq!(
            r.wait_exit(Duration::from_secs(30)),
            Some(0),
            "{}",
            r.stderr()
        );
    }

    let records: Vec<serde_json::Value> = (0..REPLICAS)
        .flat_map(|slot| read_records(&dir.0.join(format!("logs/api-{slot}.log"))))
        .collect();
    let logged = event_counts(&records, "id");
    let figures = Figures {
        requests: tally.requests.load(Ordering::Relaxed).min(MAX_REQUESTS),
        failed: tally.failed(),
        failures: tally.failures.lock().unwrap().clone(),
        acknowledged: tally.acknowledged.lock().unwrap().clone(),
        logged,
    };
    eprintln!(
        "race, DRAIN_DELAY={drain_delay}: {} requests, {} failed {:?}, {} events acknowledged, {} logged",
        figures.requests,
        figures.failed,
        figures.failures,
        figures.acknowledged.len(),
        figures.logged.len()
    );
    figures
}

/// Every acknowledged event is in the logs exactly once, and no event is logged twice.
fn assert_events_exactly_once(f: &Figures) {
    assert!(!f.acknowledged.is_empty(), "the load posted events");
    assert_exactly_once(&f.acknowledged, &f.logged);
}

/// With DRAIN_DELAY=0 the rolling restart fails requests: the test can see the race.
#[test]
fn race_without_drain_delay_fails_requests() {
    let f = rolling_restart("0");
    assert!(
        f.failed > 0,
        "no request failed: the race was not reproduced"
    );
    assert_events_exactly_once(&f);
}

/// With a DRAIN_DELAY longer than the balancer's lag, the rolling restart fails no request
/// and every acknowledged event is in the logs exactly once.
#[test]
fn race_with_drain_delay_fails_nothing() {
    let f = rolling_restart("2s");
    assert_eq!(f.failed, 0, "failures: {:?}", f.failures);
    assert_events_exactly_once(&f);
    assert_eq!(
        f.logged.len(),
        f.acknowledged.len(),
        "every logged event was acknowledged"
    );
}
