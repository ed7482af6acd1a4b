//! Crashes, signals, full disks and files: kill -9 and SIGTERM under sustained load, a log
//! on a tmpfs that fills up, log locations that cannot be written at startup, logrotate's
//! rename-then-SIGHUP under load, and several processes appending to one file. Each test
//! accounts for every event a client saw acknowledged.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::kit::{self, Conn, HANG, Next};
use crate::support::{self, Api, TempDir};

/// What became of one POST /events.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// 201, with the event id.
    Acked(String),
    /// Any other complete answer.
    Refused(u16),
    /// The connection ended before any byte of an answer.
    Lost,
    /// The connection ended in the middle of an answer.
    Truncated,
    TimedOut,
}

/// One request a load client sent: its request id and what came back.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) rid: String,
    pub(crate) outcome: Outcome,
}

/// Shared by the load clients of one test: when to stop, and how many 201s so far.
#[derive(Clone, Default)]
pub(crate) struct Load {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) acks: Arc<AtomicUsize>,
}

impl Load {
    /// Waits until `n` events have been acknowledged in all (at most [`HANG`], times the
    /// time factor: the acknowledgements are work the binary does in that time).
    pub(crate) async fn until_acked(&self, n: usize) {
        let start = Instant::now();
        let limit = HANG * support::time_factor();
        while self.acks.load(Ordering::Relaxed) < n {
            assert!(
                start.elapsed() < limit,
                "only {} acks",
                self.acks.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Posts events on one kept-alive connection (reconnecting after a close) until told to stop,
/// until a connect fails, or for at most 20 s. The data of event `n` of client `c` is
/// `{"c":c,"n":n,"len":L,"pad":"x"*L}` with L = `pad(c, n)`; the request id is
/// `{tag}-c{c}-n{n}`.
async fn post_loop(
    addr: std::net::SocketAddr,
    client: usize,
    tag: String,
    load: Load,
    pad: fn(usize, usize) -> usize,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut http = kit::Client::new(addr, true, HANG);
    let start = Instant::now();
    let mut n = 0;
    while !load.stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(20) {
        let rid = format!("{tag}-c{client}-n{n}");
        let len = pad(client, n);
        let body = format!(
            r#"{{"type":"{tag}","data":{{"c":{client},"n":{n},"len":{len},"pad":"{}"}}}}"#,
            "x".repeat(len)
        );
        let req = kit::event_request(&body, &format!("X-Request-Id: {rid}\r\n"));
        let outcome = match http.send_raw(&req).await {
            kit::Outcome::Answered {
                status: 201, body, ..
            } => {
                load.acks.fetch_add(1, Ordering::Relaxed);
                let answer: Value = serde_json::from_slice(&body).expect("201 is JSON");
                Outcome::Acked(answer["id"].as_str().unwrap().to_string())
            }
            kit::Outcome::Answered { status, .. } => Outcome::Refused(status),
            // Nothing listens any more: this client is done.
            kit::Outcome::Failed("connect") => break,
            kit::Outcome::Failed("truncated") => Outcome::Truncated,
            kit::Outcome::Failed("timeout") => Outcome::TimedOut,
            // Closed before any byte of an answer, or the request could not be written.
            kit::Outcome::Failed(_) => Outcome::Lost,
        };
        sent.push(Sent { rid, outcome });
        n += 1;
    }
    sent
}

/// Starts `clients` load clients against `addr`.
pub(crate) fn start_load(
    addr: std::net::SocketAddr,
    clients: usize,
    tag: &str,
    load: &Load,
    pad: fn(usize, usize) -> usize,
) -> JoinSet<Vec<Sent>> {
    let mut set = JoinSet::new();
    for c in 0..clients {
        set.spawn(post_loop(addr, c, tag.to_string(), load.clone(), pad));
    }
    set
}

pub(crate) async fn join_all(mut set: JoinSet<Vec<Sent>>) -> Vec<Sent> {
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.expect("a load client does not panic"));
    }
    all
}

/// Posters that each return the statuses they got and the ids acknowledged to them: all the
/// statuses and all the ids, once every poster has finished.
pub(crate) async fn join_posters(
    mut posters: JoinSet<(Vec<u16>, Vec<String>)>,
) -> (Vec<u16>, Vec<String>) {
    let (mut statuses, mut acked) = (Vec::new(), Vec::new());
    while let Some(r) = posters.join_next().await {
        let (s, ids) = r.expect("a poster does not panic");
        statuses.extend(s);
        acked.extend(ids);
    }
    (statuses, acked)
}

pub(crate) fn acked_ids(sent: &[Sent]) -> Vec<String> {
    sent.iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Acked(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// Reads a log file line by line: the records that parse as JSON objects, and the lines
/// that do not (torn or interleaved), instead of failing at the first.
pub(crate) fn scan(path: &Path) -> (Vec<Value>, Vec<String>) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut records = Vec::new();
    let mut torn = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v) if v.is_object() => records.push(v),
            _ => torn.push(String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned()),
        }
    }
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        torn.push("(the file does not end with a newline)".into());
    }
    (records, torn)
}

/// Event data sizes: mostly small, every 8th up to 12 KiB, so group commits reach many pages.
pub(crate) fn mixed_pad(c: usize, n: usize) -> usize {
    if (c + n).is_multiple_of(8) {
        4000 + (c * 997 + n * 131) % 8000
    } else {
        (c * 31 + n * 17) % 300
    }
}

/// kill -9 during sustained concurrent POST /events, eight times over one log file, then a
/// clean restart: every event that got a 201 is in the log exactly once, no event is there
/// twice, and at most the one write a kill cut short has a torn last line, which the next
/// start closes with a newline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let dir = TempDir::new();
    let log = dir.0.join("logs/api.log");
    let mut acked = Vec::new();
    let mut sent_total = 0;
    for round in 0..8 {
        let api = support::spawn_api(&dir.0, &[]);
        let load = Load::default();
        let clients = start_load(api.addr, 16, &format!("kill.r{round}"), &load, mixed_pad);
        load.until_acked(50 + 40 * round).await;
        // Land the kill at a different point of the writer's cycle each round.
        tokio::time::sleep(Duration::from_millis((round as u64 * 37) % 150)).await;
        let mut api = api;
        api.signal("KILL");
        assert_eq!(api.wait_exit(HANG), None, "kill -9 ends it by the signal");
        load.stop.store(true, Ordering::Relaxed);
        let sent = join_all(clients).await;
        sent_total += sent.len();
        acked.extend(acked_ids(&sent));
    }
    // A clean restart appends to the same file.
    let mut api = support::spawn_api(&dir.0, &[]);
    let after = kit::post_event(api.addr, r#"{"type":"after.restart"}"#).await;
    assert_eq!(after.status, 201);
    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0));

    let (records, torn) = scan(&log);
    let counts = support::event_counts(&records, "id");
    let found_acked = acked.iter().filter(|id| counts.contains_key(*id)).count();
    eprintln!(
        "kill -9: 8 kills, {sent_total} events sent, {} acknowledged, {found_acked} of them in the \
         log, {} event records in all ({} written but unacknowledged), {} torn lines",
        acked.len(),
        counts.len(),
        counts.len().saturating_sub(found_acked + 1),
        torn.len()
    );
    // The kernel checks for a fatal signal between the pages of a write, so a kill can cut a
    // write short and tear its last line; none of that write's events had been answered
    // (`assert_exactly_once` proves it). One per kill at most, and each start closes it.
    assert!(torn.len() <= 8, "more torn lines than kills: {torn:?}");
    assert!(
        !torn.iter().any(|t| t.starts_with("(the file")),
        "the restart closes a torn line: {torn:?}"
    );
    support::assert_exactly_once(&acked, &counts);
    assert!(records.iter().any(|r| r["type"] == "after.restart"));
}

/// SIGTERM under sustained load: requests whose heads arrived before the signal (slow bodies
/// still arriving) complete with 201; new connections are refused; the process exits 0 within
/// the grace period; no answer is cut short; every event that got a 201 is in the log once and
/// no event is in the log without its 201 having reached the client; every answered request
/// has its access record (buffered records were flushed), and no request was processed
/// without its answer arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_accepted_requests_and_flushes() {
    let dir = TempDir::new();
    let log = dir.0.join("logs/api.log");
    let mut api = support::spawn_api(&dir.0, &[("GRACE", "5s"), ("BODY_TIMEOUT", "20s")]);
    let addr = api.addr;
    let load = Load::default();
    let clients = start_load(addr, 12, "term", &load, mixed_pad);

    // Slow requests: head and half the body before the signal, the rest after it.
    let signalled = Arc::new(tokio::sync::Notify::new());
    let mut slow = JoinSet::new();
    for i in 0..4 {
        let signalled = Arc::clone(&signalled);
        let mut conn = Conn::open(addr).await.unwrap();
        slow.spawn(async move {
            let body = format!(r#"{{"type":"term.slow","data":"{i:0>200}"}}"#);
            let req = kit::event_request(&body, &format!("X-Request-Id: term-slow-{i}\r\n"));
            let half = req.len() - 100;
            conn.io.write_all(&req[..half]).await.unwrap();
            signalled.notified().await;
            for piece in req[half..].chunks(20) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                conn.io.write_all(piece).await.unwrap();
            }
            match conn.next(HANG).await {
                Next::Response(r) => (r.status, r.json()["id"].as_str().unwrap_or("").to_string()),
                other => panic!("slow request {i}: {}", other.token()),
            }
        });
    }
    load.until_acked(300).await;
    // Let the server read the slow heads: from here on those requests are accepted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signal_at = Instant::now();
    api.signal("TERM");
    signalled.notify_waiters();

    // The listener goes away at once: connections are refused from then on.
    let mut refused = false;
    while signal_at.elapsed() < HANG {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "new connections still accepted after SIGTERM");
    for _ in 0..5 {
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "a connection accepted after the refusal"
        );
    }

    let code = api.wait_exit(Duration::from_secs(5) + HANG);
    let took = signal_at.elapsed();
    assert_eq!(
        code,
        Some(0),
        "exit after SIGTERM; stderr:\n{}",
        api.stderr()
    );
    assert!(
        took < Duration::from_secs(5) + Duration::from_secs(5),
        "exit took {took:?}"
    );
    load.stop.store(true, Ordering::Relaxed);
    let sent = join_all(clients).await;
    let mut slow_acked = Vec::new();
    while let Some(r) = slow.join_next().await {
        let (status, id) = r.unwrap();
        assert_eq!(status, 201, "a slow request accepted before SIGTERM");
        slow_acked.push(id);
    }

    let (records, torn) = scan(&log);
    assert!(torn.is_empty(), "torn lines: {torn:?}");
    let truncated = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Truncated))
        .count();
    assert_eq!(truncated, 0, "answers cut short");
    let refusals: Vec<u16> = sent
        .iter()
        .filter_map(|s| match s.outcome {
            Outcome::Refused(status) => Some(status),
            Outcome::TimedOut => Some(0),
            _ => None,
        })
        .collect();
    assert!(
        refusals.is_empty(),
        "non-201 answers (0: none in time) under load: {refusals:?}"
    );
    let mut acked = acked_ids(&sent);
    acked.extend(slow_acked);
    let counts = support::event_counts(&records, "id");
    support::assert_exactly_once(&acked, &counts);
    let acked_set: HashSet<&String> = acked.iter().collect();
    let unanswered_events: Vec<&String> =
        counts.keys().filter(|id| !acked_set.contains(id)).collect();
    assert!(
        unanswered_events.is_empty(),
        "events recorded whose 201 never arrived: {unanswered_events:?}"
    );

    let answered: HashSet<&str> = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Acked(_)))
        .map(|s| s.rid.as_str())
        .chain(["term-slow-0", "term-slow-1", "term-slow-2", "term-slow-3"])
        .collect();
    let logged: Vec<&str> = records
        .iter()
        .filter(|r| r["msg"] == "access")
        .filter_map(|r| r["request_id"].as_str())
        .filter(|id| id.starts_with("term"))
        .collect();
    let logged_set: HashSet<&str> = logged.iter().copied().collect();
    assert_eq!(logged.len(), logged_set.len(), "an access record twice");
    let unlogged: Vec<&&str> = answered
        .iter()
        .filter(|id| !logged_set.contains(*id))
        .collect();
    assert!(
        unlogged.is_empty(),
        "answered requests without an access record: {unlogged:?}"
    );
    let unanswered: Vec<&&str> = logged.iter().filter(|id| !answered.contains(*id)).collect();
    assert!(
        unanswered.is_empty(),
        "requests processed whose answer never arrived: {unanswered:?}"
    );
    let lost = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Lost))
        .count();
    eprintln!(
        "sigterm: {} sent, {} acknowledged (4 slow ones across the signal), {lost} sent on a \
         connection the drain closed (never processed), exit 0 after {took:?}",
        sent.len() + 4,
        acked.len()
    );
}

/// A tmpfs mounted for one test, lazily unmounted on drop.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs, or panics saying why it could not (no root, no CAP_SYS_ADMIN).
    pub(crate) fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount(8) runs");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs ({options}) at {}: {}; this test needs root (CAP_SYS_ADMIN), as CI has",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Statuses of `GET /health` until it answers `want` (at most [`HANG`]).
pub(crate) async fn health_becomes(addr: std::net::SocketAddr, want: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < HANG {
        if kit::health_status(addr, HANG).await == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A log on a 256 KiB tmpfs that fills under 8 concurrent posters: every event answer is 201
/// or 503, each 201 is in the file and each event in the file got its 201 (never a 201
/// without a record), no line is torn; `/health` is 503 with the reason while the disk is
/// full; once space returns it recovers by itself, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_recovers_when_space_returns() {
    let dir = TempDir::new();
    let mnt = dir.0.join("small");
    let _fs = Tmpfs::mount(&mnt, "size=256k,mode=0755");
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 160 * 1024]).expect("the filler fits");
    let log = mnt.join("api.log");
    let server = support::start_server_with(&[("LOG_FILE", log.to_str().unwrap())]).await;
    let addr = server.addr;

    let mut posters = JoinSet::new();
    for c in 0..8 {
        posters.spawn(async move {
            let mut statuses = Vec::new();
            let mut ids = Vec::new();
            let mut refused = 0;
            for n in 0..400 {
                let pad = "f".repeat((c * 389 + n * 97) % 3000);
                let body = format!(r#"{{"type":"full","data":{{"c":{c},"n":{n},"pad":"{pad}"}}}}"#);
                let r = kit::post_event(addr, &body).await;
                statuses.push(r.status);
                if r.status == 201 {
                    ids.push(r.json()["id"].as_str().unwrap().to_string());
                } else {
                    refused += 1;
                    if refused == 3 {
                        break;
                    }
                }
            }
            (statuses, ids)
        });
    }
    let (statuses, acked) = join_posters(posters).await;
    let n503 = statuses.iter().filter(|s| **s == 503).count();
    let odd: Vec<&u16> = statuses
        .iter()
        .filter(|s| **s != 201 && **s != 503)
        .collect();
    assert!(
        odd.is_empty(),
        "answers other than 201/503 on a full disk: {odd:?}"
    );
    assert!(
        !acked.is_empty() && n503 > 0,
        "{} acked, {n503} refused",
        acked.len()
    );

    // Still full: bigger than any page's leftover, so each needs space that is not there.
    for _ in 0..5 {
        let big = format!(r#"{{"type":"full.big","data":"{}"}}"#, "b".repeat(6000));
        let r = kit::post_event(addr, &big).await;
        assert_eq!(r.status, 503, "an event on a full disk");
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let health = kit::get(addr, "/health").await;
    assert_eq!(health.status, 503, "/health on a full disk");
    assert_eq!(health.json()["status"], "unavailable");
    assert!(
        health.json()["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );

    let (records, torn) = scan(&log);
    assert!(torn.is_empty(), "torn lines on a full disk: {torn:?}");
    support::assert_just_the_acked(
        &acked,
        &records,
        "events in the file that were answered 503",
    );
    eprintln!(
        "disk full: {} events acknowledged and all in the file, {n503} answered 503, 0 torn lines",
        acked.len()
    );

    // Space returns: health recovers without a restart, events are accepted again.
    std::fs::remove_file(&filler).unwrap();
    assert!(health_becomes(addr, 200).await, "/health did not recover");
    let r = kit::post_event(addr, r#"{"type":"full.after"}"#).await;
    assert_eq!(r.status, 201);
    server
        .sink
        .flush()
        .await
        .expect("the log is writable again");
    let (records, torn) = scan(&log);
    assert!(torn.is_empty(), "torn lines after recovery: {torn:?}");
    assert!(records.iter().any(|r| r["type"] == "full.after"));
    assert!(
        records
            .iter()
            .any(|r| r["level"] == "warn" && r["unwritten_records"].is_u64()),
        "no notice of the records that could not be written"
    );
}

/// A disk already full when the binary starts: it starts and serves, but `/health` is 503
/// and events are refused; once space returns both recover without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_at_startup_is_unhealthy_until_space_returns() {
    let dir = TempDir::new();
    let mnt = dir.0.join("small");
    let _fs = Tmpfs::mount(&mnt, "size=64k,mode=0755");
    let filler = mnt.join("filler");
    // Fill every block: write until the kernel refuses.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
    }
    let log = mnt.join("api.log");
    let mut api = Api::start(support::api_command(&dir.0, &log, &[]));
    let addr = api.addr;
    assert!(
        health_becomes(addr, 503).await,
        "/health on a disk full from the start"
    );
    assert_eq!(
        kit::post_event(addr, r#"{"type":"early"}"#).await.status,
        503
    );

    std::fs::remove_file(&filler).unwrap();
    assert!(health_becomes(addr, 200).await, "/health did not recover");
    assert_eq!(
        kit::post_event(addr, r#"{"type":"later"}"#).await.status,
        201
    );
    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0));
    let (records, torn) = scan(&log);
    assert!(torn.is_empty(), "{torn:?}");
    assert!(records.iter().any(|r| r["type"] == "later"));
    assert!(!records.iter().any(|r| r["type"] == "early"));
}

/// Log locations that cannot be written at startup — a read-only filesystem (even for root),
/// an existing log file the user may not write, a directory it may not create, a directory
/// without write permission for its own owner, and a path that is a directory — each exit 1
/// with exactly one line on stderr naming the path, the uid and the cause, and no panic; none
/// starts serving.
#[test]
fn unwritable_log_locations_exit_1_with_one_line() {
    let dir = TempDir::new();
    let ro = dir.0.join("ro");
    let _ro = Tmpfs::mount(&ro, "ro,size=64k");
    let root_file = dir.0.join("rootfile");
    std::fs::create_dir(&root_file).unwrap();
    std::fs::write(root_file.join("api.log"), b"").unwrap();
    let locked = dir.0.join("locked");
    std::fs::create_dir(&locked).unwrap();
    let own_ro = dir.0.join("own-ro");
    std::fs::create_dir(&own_ro).unwrap();
    std::os::unix::fs::chown(&own_ro, Some(65534), Some(65534)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&own_ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let is_dir = dir.0.join("isdir");
    std::fs::create_dir_all(is_dir.join("api.log")).unwrap();

    // (what, log file, run as nobody, words the line must hold)
    let cases: [(&str, PathBuf, bool, &[&str]); 5] = [
        (
            "read-only filesystem",
            ro.join("api.log"),
            false,
            &["uid 0", "Read-only file system"],
        ),
        (
            "root's file",
            root_file.join("api.log"),
            true,
            &["uid 65534", "Permission denied"],
        ),
        (
            "uncreatable directory",
            locked.join("sub/api.log"),
            true,
            &["uid 65534", "Permission denied"],
        ),
        (
            "owner without write bit",
            own_ro.join("api.log"),
            true,
            &["uid 65534", "Permission denied"],
        ),
        (
            "a directory",
            is_dir.join("api.log"),
            false,
            &["uid 0", "directory"],
        ),
    ];
    for (what, path, nobody, words) in cases {
        let mut cmd = if nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .args(support::api_argv());
            c
        } else {
            support::api_binary()
        };
        support::serve_in(&mut cmd, &dir.0, &path, &[]);
        cmd.stdout(std::process::Stdio::piped());
        let (code, err, stdout) =
            support::run_to_exit(cmd, &format!("{what}: it started despite the log"));
        assert_eq!(code, Some(1), "{what}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{what}: not one line: {err:?}"
        );
        assert!(err.starts_with("error: "), "{what}: {err}");
        assert!(
            err.contains(&path.display().to_string()),
            "{what}: path not named: {err}"
        );
        for w in words {
            assert!(err.contains(w), "{what}: {w:?} missing: {err}");
        }
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{what}: {err}"
        );
        assert!(stdout.is_empty(), "{what}: wrote to stdout");
    }
    assert!(
        !locked.join("sub").exists(),
        "a directory appeared where it may not"
    );
}

/// logrotate's rename-then-SIGHUP, eight times under sustained load from 8 clients: every
/// request is answered 201, every event is in exactly one of the nine files exactly once,
/// every request has exactly one access record across them, no line is torn, and each file
/// received events (the load crossed every rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_no_record() {
    let dir = TempDir::new();
    let log = dir.0.join("logs/api.log");
    let mut api = support::spawn_api(&dir.0, &[]);
    let load = Load::default();
    let clients = start_load(api.addr, 8, "rot", &load, mixed_pad);
    let mut files = Vec::new();
    // Counted from each reopen (not from the start), so a fast server cannot have passed the
    // mark already and leave a file that only existed for a moment; at most 8 of the 60 can
    // have been written before the reopen.
    for k in 1..=8 {
        load.until_acked(load.acks.load(Ordering::Relaxed) + 60)
            .await;
        let rotated = dir.0.join(format!("logs/api.log.{k}"));
        std::fs::rename(&log, &rotated).unwrap();
        api.signal("HUP");
        files.push(rotated);
        // The reopened file exists before the next rename.
        let start = Instant::now();
        while !log.exists() {
            assert!(start.elapsed() < HANG, "SIGHUP {k} created no new file");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    load.until_acked(load.acks.load(Ordering::Relaxed) + 60)
        .await;
    load.stop.store(true, Ordering::Relaxed);
    let sent = join_all(clients).await;
    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0));
    files.push(log.clone());

    let not_201: Vec<&Sent> = sent
        .iter()
        .filter(|s| !matches!(s.outcome, Outcome::Acked(_)))
        .collect();
    assert!(
        not_201.is_empty(),
        "requests not answered 201 during rotation: {not_201:?}"
    );
    let mut all = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let (records, torn) = scan(f);
        assert!(torn.is_empty(), "{}: torn lines {torn:?}", f.display());
        if i > 0 {
            assert!(
                records.iter().any(|r| r["msg"] == "event"),
                "{} got no event: the load did not cross rotation {i}",
                f.display()
            );
        }
        all.extend(records);
    }
    let acked = acked_ids(&sent);
    support::assert_just_the_acked(&acked, &all, "unacknowledged events logged");
    let mut access: HashMap<&str, usize> = HashMap::new();
    for r in all.iter().filter(|r| r["msg"] == "access") {
        *access
            .entry(r["request_id"].as_str().unwrap_or(""))
            .or_default() += 1;
    }
    for s in &sent {
        assert_eq!(
            access.get(s.rid.as_str()),
            Some(&1),
            "access records of {}",
            s.rid
        );
    }
    eprintln!(
        "rotation: 8 renames + SIGHUP, {} events acknowledged, all in {} files exactly once",
        acked.len(),
        files.len()
    );
}

/// Four processes append to one file at once, fed by pipelined connections, until the file
/// holds over 100,000 records: not one line is torn or interleaved (each parses, and each
/// event's padding is intact), and every acknowledged event is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_append_100k_records_without_a_torn_line() {
    const PROCS: usize = 4;
    const CONNS: usize = 6;
    const BATCHES: usize = 44;
    const PIPELINE: usize = 50;
    let dir = TempDir::new();
    let log = dir.0.join("logs/api.log");
    let mut apis: Vec<Api> = (0..PROCS)
        .map(|_| support::spawn_api(&dir.0, &[]))
        .collect();
    let started = Instant::now();
    let mut set = JoinSet::new();
    for (p, api) in apis.iter().enumerate() {
        for c in 0..CONNS {
            let addr = api.addr;
            set.spawn(async move {
                let mut conn = Conn::open(addr).await.unwrap();
                let mut ids = Vec::new();
                for b in 0..BATCHES {
                    let mut batch = Vec::new();
                    for i in 0..PIPELINE {
                        let n = b * PIPELINE + i;
                        let len = if n.is_multiple_of(16) { 6000 + (n * 131) % 3000 } else { (n * 37) % 200 };
                        let body = format!(
                            r#"{{"type":"append.p{p}","data":{{"p":{p},"c":{c},"n":{n},"len":{len},"pad":"{}"}}}}"#,
                            "z".repeat(len)
                        );
                        batch.extend(kit::event_request(&body, ""));
                    }
                    conn.io.write_all(&batch).await.unwrap();
                    for _ in 0..PIPELINE {
                        match conn.next(HANG).await {
                            Next::Response(r) if r.status == 201 => {
                                ids.push(r.json()["id"].as_str().unwrap().to_string());
                            }
                            other => panic!("process {p}: {}", other.token()),
                        }
                    }
                }
                ids
            });
        }
    }
    let mut acked = Vec::new();
    while let Some(r) = set.join_next().await {
        acked.extend(r.unwrap());
    }
    let load_time = started.elapsed();
    for api in &mut apis {
        api.signal("TERM");
    }
    for api in &mut apis {
        assert_eq!(api.wait_exit(HANG), Some(0));
    }

    let (records, torn) = scan(&log);
    assert!(
        torn.is_empty(),
        "{} torn lines, e.g. {:?}",
        torn.len(),
        &torn[..torn.len().min(3)]
    );
    let mut damaged = 0;
    for r in records.iter().filter(|r| r["msg"] == "event") {
        let d = &r["data"];
        let ok = d["pad"].as_str().is_some_and(|pad| {
            pad.len() as u64 == d["len"].as_u64().unwrap_or(u64::MAX)
                && pad.bytes().all(|b| b == b'z')
        }) && r["type"] == format!("append.p{}", d["p"]);
        damaged += usize::from(!ok);
    }
    eprintln!(
        "append: {PROCS} processes, {} records ({} events) in {load_time:?}, {} torn, {damaged} damaged",
        records.len(),
        acked.len(),
        torn.len()
    );
    assert_eq!(damaged, 0, "event records with altered data");
    assert!(records.len() >= 100_000, "only {} records", records.len());
    support::assert_just_the_acked(&acked, &records, "unacknowledged events logged");
}

/// A log write that stalls (the log is a FIFO nobody drains: the stand-in for a hung disk)
/// blocks only the events waiting for it: `GET /` and `/health` on other connections keep
/// answering, and once the disk moves again the waiting events complete with 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_write_does_not_freeze_the_service() {
    let dir = TempDir::new();
    let fifo = dir.0.join("log.fifo");
    let ok = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(ok.success());
    // The reader: takes the startup records, then stops reading until told to drain.
    let drain = Arc::new(AtomicBool::new(false));
    let reader = {
        let fifo = fifo.clone();
        let drain = Arc::clone(&drain);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut f = std::fs::File::open(&fifo).unwrap();
            let mut buf = vec![0u8; 65536];
            let mut total = 0usize;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if total > 0 && !drain.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(_) => break,
                }
            }
            total
        })
    };
    let mut api = Api::start(support::api_command(&dir.0, &fifo, &[("WORKERS", "2")]));
    let addr = api.addr;
    // Fill the pipe: events of 60 KiB each, on their own connections, left waiting.
    let mut events = JoinSet::new();
    for i in 0..6 {
        events.spawn(async move {
            let body = format!(r#"{{"type":"stall","data":"{}"}}"#, "s".repeat(60_000 + i));
            let req = kit::event_request(&body, "");
            let mut conn = Conn::open(addr).await.unwrap();
            conn.io.write_all(&req).await.unwrap();
            conn.next(Duration::from_secs(40)).await.token()
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let health = kit::health_status(addr, HANG).await;
    let info = match Conn::open(addr).await {
        Ok(mut c) => c
            .roundtrip(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .token(),
        Err(e) => e.to_string(),
    };
    eprintln!(
        "stalled log: /health {health:?}, / {info:?} after {:?}",
        t.elapsed()
    );
    drain.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    while let Some(s) = events.join_next().await {
        statuses.push(s.unwrap());
    }
    api.signal("TERM");
    let code = api.wait_exit(HANG);
    let _ = reader.join();
    eprintln!("stalled log, after draining: events {statuses:?}, exit {code:?}");
    assert_eq!(health, Some(200), "/health while a log write is stalled");
    assert_eq!(info, "200", "GET / while a log write is stalled");
    assert!(
        statuses.iter().all(|s| s == "201"),
        "events after the stall: {statuses:?}"
    );
    assert_eq!(code, Some(0));
}

/// SIGTERM with clients that have not sent a whole request: a connection mid-head, a silent
/// one and an idle kept-alive one are not in-flight requests, so the drain closes them and
/// exits 0 at once instead of waiting out the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_clients_that_sent_no_whole_request() {
    let dir = TempDir::new();
    let log = dir.0.join("api.log");
    let mut api = Api::start(support::api_command(
        &dir.0,
        &log,
        &[
            ("GRACE", "3s"),
            ("HEADER_TIMEOUT", "20s"),
            ("IDLE_TIMEOUT", "20s"),
        ],
    ));
    let addr = api.addr;
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /health HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut idle = Conn::open(addr).await.unwrap();
    assert_eq!(idle.roundtrip(kit::HEALTH).await.token(), "200");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    api.signal("TERM");
    let code = api.wait_exit(HANG);
    let took = t.elapsed();
    eprintln!("sigterm with idle clients: exit {code:?} after {took:?}");
    assert_eq!(code, Some(0), "exit; stderr:\n{}", api.stderr());
    assert!(
        took < Duration::from_secs(2),
        "the drain waited {took:?} for clients with no request"
    );
}

/// A log whose last line was cut short (a crash mid-write, a power loss) is not made worse by
/// a restart: the fragment stays a line of its own and every record of the new process is
/// whole; none is glued onto the fragment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_glue_records_onto_a_torn_last_line() {
    let dir = TempDir::new();
    let log = dir.0.join("logs/api.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let fragment = r#"{"ts":"2026-01-01T00:00:00.000Z","level":"info","msg":"event","id":"0"#;
    std::fs::write(&log, format!("{{\"msg\":\"before\"}}\n{fragment}")).unwrap();
    let mut api = support::spawn_api(&dir.0, &[]);
    let r = kit::post_event(api.addr, r#"{"type":"after.torn"}"#).await;
    assert_eq!(r.status, 201);
    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0));
    let (records, torn) = scan(&log);
    assert_eq!(
        torn,
        vec![fragment.to_string()],
        "only the old fragment may be torn"
    );
    assert!(
        records.iter().any(|r| r["msg"] == "listening"),
        "the first new record was lost"
    );
    assert!(records.iter().any(|r| r["type"] == "after.torn"));
}

/// With its stderr gone (the reader closed the pipe, as after a journald restart) a failing
/// log write still turns `/health` to 503: reporting the failure to a broken stderr must not
/// take down the code that records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stderr_does_not_hide_a_failing_log() {
    use std::io::BufRead;
    let dir = TempDir::new();
    let mnt = dir.0.join("small");
    let _fs = Tmpfs::mount(&mnt, "size=64k,mode=0755");
    let log = mnt.join("api.log");
    let mut cmd = support::api_command(&dir.0, &log, &[]);
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("the api binary starts");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() && stderr.read_line(&mut line).unwrap_or(0) > 0 {
        if let Ok(rec) = serde_json::from_str::<Value>(&line)
            && rec["msg"] == "listening"
        {
            addr = rec["addr"].as_str().and_then(|a| a.parse().ok());
        }
        line.clear();
    }
    let addr: std::net::SocketAddr = addr.expect("listening");
    drop(stderr); // the reader goes away
    // Fill the disk, then try to write.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("filler")).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    let r = kit::post_event(
        addr,
        &format!(r#"{{"type":"x","data":"{}"}}"#, "d".repeat(8000)),
    )
    .await;
    let health = kit::health_status(addr, HANG).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.status, 503, "an event on a full disk");
    assert_eq!(
        health,
        Some(503),
        "/health after a failed write, with stderr gone"
    );
}

/// A log file deleted while the service runs is recreated at its path by SIGHUP, and later
/// events land there; a storm of 200 SIGHUPs under load leaks no descriptor, tears no line
/// and loses no acknowledged event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_log_comes_back_on_sighup_and_a_sighup_storm_leaks_nothing() {
    let dir = TempDir::new();
    let log = dir.0.join("logs/api.log");
    let mut api = support::spawn_api(&dir.0, &[]);
    let (addr, pid) = (api.addr, api.pid());
    assert_eq!(
        kit::post_event(addr, r#"{"type":"before.rm"}"#)
            .await
            .status,
        201
    );
    std::fs::remove_file(&log).unwrap();
    api.signal("HUP");
    let start = Instant::now();
    while !log.exists() {
        assert!(
            start.elapsed() < HANG,
            "SIGHUP did not recreate the deleted log"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        kit::post_event(addr, r#"{"type":"after.rm"}"#).await.status,
        201
    );
    assert_eq!(kit::health_status(addr, HANG).await, Some(200));
    let base_fds = support::fds(pid).0;

    let load = Load::default();
    let clients = start_load(addr, 4, "storm", &load, mixed_pad);
    for _ in 0..200 {
        api.signal("HUP");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    load.until_acked(100).await;
    load.stop.store(true, Ordering::Relaxed);
    let sent = join_all(clients).await;
    // Reopens are served one by one; wait for the last before counting descriptors.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = support::fds(pid).0;
    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0));
    assert!(
        fds <= base_fds,
        "descriptors {base_fds} -> {fds} after 200 SIGHUPs"
    );
    let (records, torn) = scan(&log);
    assert!(torn.is_empty(), "{torn:?}");
    assert!(records.iter().any(|r| r["type"] == "after.rm"));
    assert!(!records.iter().any(|r| r["type"] == "before.rm"));
    support::assert_exactly_once(&acked_ids(&sent), &support::event_counts(&records, "id"));
}
