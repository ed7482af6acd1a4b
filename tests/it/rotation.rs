//! The log's own rotation and retention (`LOG_MAX_BYTES`, `LOG_KEEP`, `LOG_MAX_AGE`): under
//! load, across kill -9, on a volume far smaller than the traffic, with a replica that is
//! gone and one that is alive sharing the directory, with two processes on one file, and
//! what `GET /` reports about it. Each test accounts for every event a client saw
//! acknowledged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::task::JoinSet;

use crate::crash::{self, Load, Outcome, Tmpfs};
use crate::events;
use crate::kit::{self, HANG};
use crate::support::{self, TempDir};

/// The longest a test waits for the load to make the rotations it needs: the load clients
/// themselves stop after 20 s.
const LOAD_LIMIT: Duration = Duration::from_secs(30);

/// Whether `s` is a rotation time as rotated names carry it: `20261202T044419.258123Z`.
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 23
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 => c == b'T',
            15 => c == b'.',
            22 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The rotated files of `<dir>/api.log`, oldest first (their names sort by time).
fn rotated(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.strip_prefix("api.")
                            .and_then(|n| n.strip_suffix(".log"))
                            .is_some_and(is_stamp)
                    })
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The records of `msg` in `records`.
fn with_msg<'a>(records: &'a [Value], msg: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["msg"] == msg).collect()
}

/// The log section of `GET /`.
async fn log_info(addr: std::net::SocketAddr) -> Value {
    let r = kit::get(addr, "/").await;
    assert_eq!(r.status, 200);
    r.json()["log"].clone()
}

/// Rotation under load, with `EVENT_SYNC` none and data: 16 clients post events of mixed
/// sizes while the file rotates at 64 KiB, at least 40 times, with a SIGHUP and a
/// logrotate-style rename + SIGHUP in between. Every request is answered 201; every
/// acknowledged event is in exactly one file, once, whole; no line is torn; no file the
/// service rotated is larger than LOG_MAX_BYTES; every rotation is logged with the rotated
/// file's name and size, and the names sort in the order of the rotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_keeps_every_event_whole_in_one_file() {
    const MAX: u64 = 64 * 1024;
    for sync in ["none", "data"] {
        let dir = TempDir::new();
        let logs = dir.0.join("logs");
        let live = logs.join("api.log");
        let mut api = support::spawn_api(
            &dir.0,
            &[
                ("LOG_MAX_BYTES", "64KiB"),
                ("LOG_KEEP", "1000"),
                ("EVENT_SYNC", sync),
            ],
        );
        let load = Load::default();
        let clients = crash::start_load(
            api.addr,
            16,
            &format!("rot.{sync}"),
            &load,
            crash::mixed_pad,
        );
        let manual = logs.join("api.log.manual");
        let (mut hup, mut renamed) = (false, false);
        let start = Instant::now();
        loop {
            let n = rotated(&logs).len();
            if n >= 10 && !hup {
                // The file in use is at the path: a reopen changes nothing.
                api.signal("HUP");
                hup = true;
            }
            if n >= 20 && !renamed {
                std::fs::rename(&live, &manual).unwrap();
                api.signal("HUP");
                renamed = true;
            }
            if n >= 40 {
                break;
            }
            assert!(start.elapsed() < LOAD_LIMIT, "{sync}: only {n} rotations");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let info = log_info(api.addr).await;
        load.stop.store(true, Ordering::Relaxed);
        let sent = crash::join_all(clients).await;
        api.signal("TERM");
        assert_eq!(api.wait_exit(HANG), Some(0), "{}", api.stderr());

        let not_201: Vec<_> = sent
            .iter()
            .filter(|s| !matches!(s.outcome, Outcome::Acked(_)))
            .collect();
        assert!(not_201.is_empty(), "{sync}: not answered 201: {not_201:?}");
        let files = rotated(&logs);
        let mut all = Vec::new();
        for f in files.iter().chain([&live, &manual]) {
            let (records, torn) = crash::scan(f);
            assert!(
                torn.is_empty(),
                "{sync}: {}: torn lines {torn:?}",
                f.display()
            );
            let size = std::fs::metadata(f).unwrap().len();
            // The renamed file took records until the reopen, past the limit maybe.
            assert!(
                f == &manual || size <= MAX,
                "{sync}: {} holds {size} bytes",
                f.display()
            );
            all.extend(records);
        }
        let acked = crash::acked_ids(&sent);
        support::assert_just_the_acked(
            &acked,
            &all,
            &format!("{sync}: unacknowledged events logged"),
        );

        let logged = with_msg(&all, "log file rotated");
        if logged.len() != files.len() {
            let named: Vec<&str> = logged.iter().filter_map(|r| r["file"].as_str()).collect();
            let unnamed: Vec<_> = files
                .iter()
                .filter(|f| !named.contains(&f.display().to_string().as_str()))
                .collect();
            let about: Vec<&Value> = all.iter().filter(|r| r["level"] != "info").collect();
            panic!(
                "{sync}: {} rotation records for {} rotated files; without one: {unnamed:?}; \
                 warnings: {about:?}; stderr: {}",
                logged.len(),
                files.len(),
                api.stderr()
            );
        }
        let mut named: Vec<(String, String)> = logged
            .iter()
            .map(|r| {
                let path = PathBuf::from(r["file"].as_str().unwrap());
                assert_eq!(r["reason"], "LOG_MAX_BYTES");
                assert_eq!(
                    std::fs::metadata(&path).map(|m| m.len()).ok(),
                    r["bytes"].as_u64(),
                    "{sync}: the size the record gives for {}",
                    path.display()
                );
                (
                    r["ts"].as_str().unwrap().to_string(),
                    path.display().to_string(),
                )
            })
            .collect();
        named.sort();
        let in_order: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(
            named.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
            in_order,
            "{sync}: rotated names sort in the order of the rotations"
        );
        assert!(info["rotations"].as_u64().unwrap() >= 40, "{info}");
        assert_eq!(info["deleted_files"], 0, "LOG_KEEP=1000 deletes nothing");
        eprintln!(
            "rotation under load, EVENT_SYNC={sync}: {} rotations, {} events acknowledged, each in \
             exactly one of {} files, 0 torn lines",
            files.len(),
            acked.len(),
            files.len() + 2
        );
    }
}

/// kill -9 while the file rotates every few dozen events, ten times over one log directory,
/// each kill a little later after a rotation than the one before, then a clean restart:
/// every acknowledged event is in exactly one file, once; at most one torn line per kill;
/// and no rotation is left half done (no file under two names, no temporary file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_rotation_loses_no_acknowledged_event() {
    let dir = TempDir::new();
    let logs = dir.0.join("logs");
    let env = [("LOG_MAX_BYTES", "64KiB"), ("LOG_KEEP", "1000")];
    let mut acked = Vec::new();
    let mut sent_total = 0;
    for round in 0..10u64 {
        let mut api = support::spawn_api(&dir.0, &env);
        let load = Load::default();
        let clients =
            crash::start_load(api.addr, 16, &format!("k{round}"), &load, crash::mixed_pad);
        let before = rotated(&logs).len();
        let start = Instant::now();
        while rotated(&logs).len() == before {
            assert!(start.elapsed() < LOAD_LIMIT, "round {round}: no rotation");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(round * 3)).await;
        api.signal("KILL");
        assert_eq!(api.wait_exit(HANG), None, "kill -9 ends it by the signal");
        load.stop.store(true, Ordering::Relaxed);
        let sent = crash::join_all(clients).await;
        sent_total += sent.len();
        acked.extend(crash::acked_ids(&sent));
    }
    let mut api = support::spawn_api(&dir.0, &env);
    assert_eq!(
        kit::post_event(api.addr, r#"{"type":"after.kills"}"#)
            .await
            .status,
        201
    );
    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0));

    let live = logs.join("api.log");
    let files = rotated(&logs);
    let mut all = Vec::new();
    let mut torn_total = Vec::new();
    for f in files.iter().chain([&live]) {
        let (records, torn) = crash::scan(f);
        torn_total.extend(torn);
        all.extend(records);
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&live).unwrap().nlink(),
        1,
        "the live file has one name"
    );
    assert!(!logs.join(".api.log.rotating").exists());
    let counts = support::event_counts(&all, "id");
    eprintln!(
        "kill -9 during rotation: 10 kills, {} rotations, {sent_total} events sent, {} \
         acknowledged, {} event records in all, {} torn lines",
        files.len(),
        acked.len(),
        counts.len(),
        torn_total.len()
    );
    assert!(
        torn_total.len() <= 10,
        "more torn lines than kills: {torn_total:?}"
    );
    support::assert_exactly_once(&acked, &counts);
    assert!(all.iter().any(|r| r["type"] == "after.kills"));
}

/// What one poster of the bound test saw: the statuses and the acknowledged ids.
type Posted = (Vec<u16>, Vec<String>);

/// Posts up to `n` events of about 1.5 KiB on one kept-alive connection, stopping after
/// `refusals` answers other than 201.
async fn post_many(addr: std::net::SocketAddr, c: usize, n: usize, refusals: usize) -> Posted {
    let mut http = kit::Client::new(addr, true, HANG);
    let (mut statuses, mut ids) = (Vec::new(), Vec::new());
    for i in 0..n {
        let pad = "b".repeat(1000 + (c * 131 + i * 17) % 1000);
        let body = format!(r#"{{"type":"bound","data":{{"c":{c},"n":{i},"pad":"{pad}"}}}}"#);
        match http.send("/events", Some(&body)).await {
            kit::Outcome::Answered { status, body, .. } => {
                statuses.push(status);
                if status == 201 {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    ids.push(v["id"].as_str().unwrap().to_string());
                } else if statuses.iter().filter(|s| **s != 201).count() >= refusals {
                    break;
                }
            }
            kit::Outcome::Failed(why) => panic!("poster {c}: {why}"),
        }
    }
    (statuses, ids)
}

/// Bytes the files in `dir` take on the file system (whole pages on a tmpfs).
fn used(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// The bound: a 1 MiB tmpfs gets over 20 MiB of records from 8 clients. With
/// `LOG_MAX_BYTES=128KiB` and `LOG_KEEP=3` the files never take more than (3 + 1) x 128 KiB,
/// every event is answered 201 and kept (the last files' in the files, the rest deleted
/// with their rotation logged), and `/health` answers 200 all along. With rotation off, the
/// same traffic fills the volume: every event is answered 201 or 503 and some 503, `/health`
/// answers 503 with "disk full" as the reason, no line is torn, and the file holds exactly
/// the events answered 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_volume_never_fills_with_rotation_on() {
    let dir = TempDir::new();
    let mnt = dir.0.join("small");
    let fs = Tmpfs::mount(&mnt, "size=1m,mode=0755");
    const MAX: u64 = 128 * 1024;
    const KEEP: u64 = 3;
    let log = mnt.join("api.log");
    let mut api = support::Api::start(support::api_command(
        &dir.0,
        &log,
        &[("LOG_MAX_BYTES", "128KiB"), ("LOG_KEEP", "3")],
    ));
    let addr = api.addr;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, mnt) = (Arc::clone(&done), mnt.clone());
        tokio::spawn(async move {
            let (mut peak, mut min_free, mut samples, mut unhealthy) = (0, u64::MAX, 0, Vec::new());
            // Bounded: the posters end, and so does this, within 60 s in any case.
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                peak = peak.max(used(&mnt));
                match kit::health_status(addr, HANG).await {
                    Some(200) => {}
                    other => unhealthy.push(other),
                }
                let info = log_info(addr).await;
                min_free = min_free.min(info["volume_free_bytes"].as_u64().unwrap());
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (peak, min_free, samples, unhealthy)
        })
    };
    let mut posters = JoinSet::new();
    for c in 0..8 {
        posters.spawn(post_many(addr, c, 1700, 1));
    }
    let (statuses, acked) = crash::join_posters(posters).await;
    done.store(true, Ordering::Relaxed);
    let (peak, min_free, samples, unhealthy) = sampler.await.unwrap();
    let info = log_info(addr).await;
    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0), "{}", api.stderr());

    let refused: Vec<&u16> = statuses.iter().filter(|s| **s != 201).collect();
    assert!(refused.is_empty(), "answers other than 201: {refused:?}");
    assert!(
        unhealthy.is_empty(),
        "/health not 200 at times: {unhealthy:?}"
    );
    let kept = rotated(&mnt);
    assert_eq!(kept.len() as u64, KEEP, "{kept:?}");
    let mut records = Vec::new();
    for f in kept.iter().chain([&log]) {
        let (r, torn) = crash::scan(f);
        assert!(torn.is_empty(), "{}: {torn:?}", f.display());
        assert!(std::fs::metadata(f).unwrap().len() <= MAX);
        records.extend(r);
    }
    // The records of the rotations and deletions of the files still there (the others went
    // with the files that held them): every one deleted by LOG_KEEP, and gone.
    let deletions = with_msg(&records, "log file deleted");
    assert!(
        deletions.len() >= KEEP as usize,
        "{} deletion records",
        deletions.len()
    );
    for d in &deletions {
        assert_eq!(d["reason"], "LOG_KEEP");
        assert!(!Path::new(d["file"].as_str().unwrap()).exists(), "{d}");
    }
    assert!(with_msg(&records, "log file rotated").len() >= KEEP as usize);
    // The events still on the volume are acknowledged ones, each once.
    let counts = support::event_counts(&records, "id");
    let acked_set: std::collections::HashSet<&String> = acked.iter().collect();
    assert!(counts.keys().all(|id| acked_set.contains(id)));
    assert!(counts.values().all(|n| *n == 1));
    let rotations = info["rotations"].as_u64().unwrap();
    let deleted = info["deleted_files"].as_u64().unwrap();
    assert_eq!(deleted, rotations - KEEP, "{info}");
    // Each rotated file held about LOG_MAX_BYTES: what went through the volume.
    let written = rotations * MAX;
    assert!(
        written > 10 << 20,
        "the traffic is 10 times the volume: {written}"
    );
    assert!(peak <= (KEEP + 1) * MAX, "peak use {peak} bytes");
    assert!(samples > 10, "only {samples} samples");
    eprintln!(
        "bounded volume: 1 MiB tmpfs, {} events acknowledged, {rotations} rotations (over {} \
         MiB written), {deleted} files deleted, peak use {} KiB of the {} KiB bound in \
         {samples} samples, least free {} KiB as GET / reported it, /health 200 in every sample",
        acked.len(),
        written >> 20,
        peak / 1024,
        (KEEP + 1) * MAX / 1024,
        min_free / 1024
    );
    drop(fs);

    // Rotation off: the disk fills.
    let mnt = dir.0.join("small-off");
    let _fs = Tmpfs::mount(&mnt, "size=1m,mode=0755");
    let log = mnt.join("api.log");
    let mut api = support::Api::start(support::api_command(&dir.0, &log, &[]));
    let addr = api.addr;
    let mut posters = JoinSet::new();
    for c in 0..8 {
        posters.spawn(post_many(addr, c, 1700, 3));
    }
    let (statuses, acked) = crash::join_posters(posters).await;
    let health = kit::get(addr, "/health").await;
    let big = format!(r#"{{"type":"bound.big","data":"{}"}}"#, "x".repeat(8000));
    let refused = kit::post_event(addr, &big).await;
    api.signal("TERM");
    assert_eq!(api.wait_exit(HANG), Some(0));
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "rotation off: the volume filled");
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["reason"], "log file not writable: disk full");
    assert_eq!(refused.status, 503);
    let (records, torn) = crash::scan(&log);
    assert!(torn.is_empty(), "{torn:?}");
    support::assert_just_the_acked(&acked, &records, "an event answered 503 is in the file");
    eprintln!(
        "rotation off: {} events acknowledged, then {} answered 503 (disk full)",
        acked.len(),
        statuses.iter().filter(|s| **s == 503).count()
    );
}

/// Sets a file's modification time `ago` into the past.
fn age(path: &Path, ago: Duration) {
    let f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

/// `LOG_MAX_AGE`: a replica writing `logs/api-{hostname}.log` deletes the live and rotated
/// files of a replica that is gone (not written for an hour) at once, and a young one's once
/// it has not been written for `LOG_MAX_AGE`; the file of a live replica that writes nothing
/// for three times `LOG_MAX_AGE` survives, and that replica's later records land in it.
/// Files outside the pattern stay, however old. Every deletion is logged with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_what_gone_replicas_left_but_never_a_live_file() {
    const MAX_AGE: Duration = Duration::from_secs(4);
    let dir = TempDir::new();
    let logs = dir.0.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let hour = Duration::from_secs(3600);
    let old = [
        "api-gone.log",
        "api-gone.20260101T000000.000000Z.log",
        "api-gone.log.1",
        "other.log",
    ];
    for name in old {
        std::fs::write(logs.join(name), b"{}\n").unwrap();
        age(&logs.join(name), hour);
    }
    std::fs::write(logs.join("api-young.log"), b"{}\n").unwrap();
    // The live replica: it gets no request until the end, so after its startup records it
    // writes nothing, and only its own care keeps its file's time recent (and its lock).
    let live = logs.join("api-live.log");
    let mut b = support::Api::start(support::api_command(
        &dir.0,
        &live,
        &[("LOG_MAX_AGE", "4s")],
    ));
    let b_started = Instant::now();
    let mut a = support::Api::start(support::api_command(
        &dir.0,
        &logs.join("api-{hostname}.log"),
        &[("LOG_MAX_AGE", "4s")],
    ));
    let exists = |n: &str| logs.join(n).exists();
    let start = Instant::now();
    while exists("api-young.log") || exists("api-gone.log") {
        assert!(start.elapsed() < LOAD_LIMIT, "old files not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The live replica has written nothing for three times LOG_MAX_AGE by the end of this.
    while b_started.elapsed() < 3 * MAX_AGE {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(live.exists(), "a live replica's file was deleted");
    let idle = std::fs::metadata(&live)
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap_or_default();
    assert!(idle < MAX_AGE, "the live file looks idle for {idle:?}");
    assert_eq!(
        kit::post_event(b.addr, r#"{"type":"still.here"}"#)
            .await
            .status,
        201
    );
    let a_host = kit::get(a.addr, "/").await.json()["hostname"]
        .as_str()
        .unwrap()
        .to_string();
    b.signal("TERM");
    a.signal("TERM");
    assert_eq!(b.wait_exit(HANG), Some(0));
    assert_eq!(a.wait_exit(HANG), Some(0));
    assert!(
        support::read_records(&live)
            .iter()
            .any(|r| r["type"] == "still.here"),
        "the live replica's record is in its file"
    );
    assert!(!exists("api-gone.20260101T000000.000000Z.log"));
    assert!(
        exists("api-gone.log.1") && exists("other.log"),
        "outside the pattern"
    );

    let a_log = logs.join(format!("api-{a_host}.log"));
    let deleted: HashMap<String, Value> =
        with_msg(&support::read_records(&a_log), "log file deleted")
            .into_iter()
            .map(|r| {
                let name = Path::new(r["file"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (name, r.clone())
            })
            .collect();
    let mut names: Vec<&String> = deleted.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "api-gone.20260101T000000.000000Z.log",
            "api-gone.log",
            "api-young.log"
        ],
        "{deleted:?}"
    );
    for r in deleted.values() {
        assert_eq!(r["reason"], "LOG_MAX_AGE");
        assert!(r["idle_s"].as_u64().unwrap() >= MAX_AGE.as_secs(), "{r}");
        assert_eq!(r["bytes"], 3);
    }
}

/// Two processes, one file: while one rotates the file, a second one, rotating or not,
/// refuses to start with exit 1 and one line naming the file and the fix; the first goes on
/// undisturbed. Two processes that only append share a file, each answering its event 201,
/// and a rotating one then refuses to start on it (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_rotated_file_refuses_to_start() {
    const REFUSE: &str = "it started on a file it must not write";
    let dir = TempDir::new();
    let log = dir.0.join("logs/api.log");
    let rotating = [("LOG_MAX_BYTES", "1MiB")];
    let mut first = support::spawn_api(&dir.0, &rotating);
    for (what, env) in [("rotating", &rotating[..]), ("appending", &[][..])] {
        let (code, err, _) = support::run_to_exit(support::api_command(&dir.0, &log, env), REFUSE);
        assert_eq!(code, Some(1), "{what}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{what}: one line: {err:?}"
        );
        assert!(err.starts_with("error: log file "), "{what}: {err}");
        assert!(err.contains(&log.display().to_string()), "{what}: {err}");
        assert!(
            err.contains("LOG_FILE=logs/api-{hostname}.log"),
            "{what}: {err}"
        );
    }
    let r = kit::post_event(first.addr, r#"{"type":"first.alone"}"#).await;
    assert_eq!(r.status, 201);
    first.signal("TERM");
    assert_eq!(first.wait_exit(HANG), Some(0));
    assert!(
        support::read_records(&log)
            .iter()
            .any(|r| r["type"] == "first.alone")
    );

    let mut a = support::spawn_api(&dir.0, &[]);
    let mut b = support::spawn_api(&dir.0, &[]);
    let (code, err, _) =
        support::run_to_exit(support::api_command(&dir.0, &log, &rotating), REFUSE);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("this process rotates it"), "{err}");
    for api in [&mut a, &mut b] {
        assert_eq!(
            kit::post_event(api.addr, r#"{"type":"shared"}"#)
                .await
                .status,
            201
        );
        api.signal("TERM");
        assert_eq!(api.wait_exit(HANG), Some(0));
    }
}

/// `GET /` reports the log's headroom: the file's size as written, the rotated files kept and
/// their bytes as on disk, the rotations and deletions counted, and the volume's free and
/// total bytes; and the records of the deletions still on the volume name files that are
/// gone, deleted by `LOG_KEEP`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_root_reports_the_log_headroom() {
    let srv = support::start_server_with(&[("LOG_MAX_BYTES", "64KiB"), ("LOG_KEEP", "2")]).await;
    let body = format!(r#"{{"type":"room","data":"{}"}}"#, "r".repeat(3000));
    let mut posted = 0;
    while log_info(srv.addr).await["rotations"].as_u64().unwrap() < 4 {
        for _ in 0..10 {
            assert_eq!(kit::post_event(srv.addr, &body).await.status, 201);
        }
        posted += 10;
        assert!(posted <= 1000, "no 4 rotations after {posted} events");
    }
    srv.sink.flush().await.unwrap();
    let size = std::fs::metadata(&srv.log).unwrap().len();
    let info = log_info(srv.addr).await;
    let logs = srv.log.parent().unwrap();
    let kept = rotated(logs);
    let kept_bytes: u64 = kept
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(info["file"], srv.log.display().to_string());
    assert_eq!(info["bytes"], size, "{info}");
    assert_eq!(kept.len(), 2);
    assert_eq!(info["rotated_files"], 2, "{info}");
    assert_eq!(info["rotated_bytes"], kept_bytes, "{info}");
    let rotations = info["rotations"].as_u64().unwrap();
    assert_eq!(info["deleted_files"], rotations - 2, "{info}");
    let total = info["volume_total_bytes"].as_u64().unwrap();
    let free = info["volume_free_bytes"].as_u64().unwrap();
    assert!(total > 0 && free <= total, "{info}");
    // The records of the older deletions went with the files that held them.
    let mut records = srv.records().await;
    for f in &kept {
        records.extend(support::read_records(f));
    }
    let deletions = with_msg(&records, "log file deleted");
    assert!(!deletions.is_empty());
    for d in deletions {
        assert_eq!(d["reason"], "LOG_KEEP");
        assert!(!Path::new(d["file"].as_str().unwrap()).exists(), "{d}");
    }
}

/// With `EVENT_SYNC=data`, an event written into the file a rotation just started is
/// answered only after the directory holding the new file's entry was synced: in the
/// syscalls, the rename that puts the new file in place, then an `fsync` of the log
/// directory that succeeds, then the `201`. (And the full file was synced before the rename.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_sync_data_syncs_the_new_directory_entry_before_answering() {
    let Some(strace) =
        events::strace("event_sync_data_syncs_the_new_directory_entry_before_answering")
    else {
        return;
    };
    let dir = TempDir::new();
    let logs = dir.0.join("logs");
    let traced = events::Traced::start(
        strace,
        256,
        "openat,linkat,rename,renameat,renameat2,fsync,fdatasync,write,writev,sendto,sendmsg",
        &dir.0,
        &logs.join("api.log"),
        &[("EVENT_SYNC", "data"), ("LOG_MAX_BYTES", "64KiB")],
    );
    let body = format!(r#"{{"type":"traced","data":"{}"}}"#, "t".repeat(20_000));
    let mut n = 0;
    while rotated(&logs).len() < 2 {
        assert_eq!(kit::post_event(traced.api.addr, &body).await.status, 201);
        n += 1;
        assert!(n < 50, "no two rotations after {n} events");
    }
    let trace = traced.stop();
    let dump = || trace.join("\n");
    let logs_text = format!("\"{}\"", logs.display());
    let mut checked = 0;
    for (i, line) in trace.iter().enumerate() {
        if !(line.contains("rename") && line.contains(".api.log.rotating\"")) {
            continue;
        }
        let renamed = events::ends_at(&trace, i);
        assert!(trace[renamed].ends_with("= 0"), "{}", trace[renamed]);
        let answer = (renamed..trace.len())
            .find(|&j| trace[j].contains("HTTP/1.1 201 Created") && !trace[j].contains("resumed>"))
            .unwrap_or_else(|| panic!("no 201 after the rotation at line {i}:\n{}", dump()));
        // The log directory opened after the rename, and that descriptor synced.
        let synced = (renamed..answer).any(|j| {
            let Some(fd) = trace[j]
                .contains(&logs_text)
                .then(|| trace[j].contains("openat("))
                .filter(|open| *open)
                .and_then(|_| trace[j].rsplit("= ").next())
                .map(str::trim)
            else {
                return false;
            };
            (j..answer).any(|k| {
                trace[k].contains(&format!("fsync({fd})"))
                    && trace[events::ends_at(&trace, k)].ends_with("= 0")
            })
        });
        assert!(
            synced,
            "no fsync of the log directory between the rotation (line {i}) and the 201 (line {answer}):\n{}",
            dump()
        );
        let full_synced = (0..i)
            .rev()
            .take(40)
            .any(|j| trace[j].contains("fdatasync("));
        assert!(
            full_synced,
            "the full file was not synced before its rename:\n{}",
            dump()
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "{checked} rotations in the trace:\n{}",
        dump()
    );
}
