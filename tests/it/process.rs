use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::kit::*;
use crate::support::*;

fn run_api(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = api_binary();
    cmd.current_dir(dir).args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the api binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Each invalid setting exits 2 with `error:` naming the setting and the value, plus usage.
#[test]
fn config_errors_exit_2_naming_setting_and_value() {
    let dir = TempDir::new();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (&[], &[("PORT", "abc")], "invalid value 'abc' for PORT"),
        (&[], &[("PORT", "70000")], "invalid value '70000' for PORT"),
        (
            &[],
            &[("LOG_LEVEL", "loud")],
            "invalid value 'loud' for LOG_LEVEL",
        ),
        (&["--port", "x1"], &[], "invalid value 'x1' for --port"),
        (&["--grace=-3s"], &[], "invalid value '-3s' for --grace"),
        (&["--bogus"], &[], "unknown argument '--bogus'"),
    ];
    for (args, env, needle) in cases {
        let o = run_api(&dir.0, args, env);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}");
        let err = stderr(&o);
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(err.contains("Usage: api"), "{err}");
    }
    assert!(
        !dir.0.join("logs").exists(),
        "a bad configuration writes no log"
    );
}

/// `--help` and `--version` print and exit 0.
#[test]
fn help_and_version_exit_0() {
    let dir = TempDir::new();
    let o = run_api(&dir.0, &["--help"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "Usage: api",
        "--port",
        "PORT",
        "--healthcheck",
        "default: 8000",
    ] {
        assert!(out.contains(needle), "{needle}");
    }
    let o = run_api(&dir.0, &["--version"], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("api {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A port already in use exits 1 with one clear line, no panic.
#[test]
fn port_in_use_exits_1() {
    let dir = TempDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = run_api(&dir.0, &["--host", "127.0.0.1", "--port", &port], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    // The OS's words for EADDRINUSE: glibc says "Address already in use", musl (the
    // static build) "Address in use".
    let words = err.to_lowercase();
    assert!(
        words.contains("address already in use") || words.contains("address in use"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A log file that cannot be opened exits 1 with one line naming the path, the uid and what to do.
#[test]
fn unwritable_log_exits_1_naming_path_and_uid() {
    let dir = TempDir::new();
    // Root ignores permissions, so run as nobody against a root-owned directory.
    let logs = dir.0.join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(api_argv())
        .current_dir(&dir.0)
        .env("PORT", "0")
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot open log file logs/api.log for appending as uid 65534"),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("chown 65534"), "{err}");

    // A path whose parent is a file: not a permission problem, still exit 1 and clear.
    let o = run_api(
        &dir.0,
        &["--port", "0"],
        &[("LOG_FILE", "/dev/null/api.log")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot open log file /dev/null/api.log"),
        "{}",
        stderr(&o)
    );
}

/// The log directory is created when missing, and the startup record names the durability
/// mode in force.
#[test]
fn missing_log_directory_is_created() {
    let dir = TempDir::new();
    let mut p = spawn_api(
        &dir.0,
        &[("LOG_FILE", "deep/er/api.log"), ("EVENT_SYNC", "data")],
    );
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let records = read_records(&dir.0.join("deep/er/api.log"));
    let listening = records.iter().find(|r| r["msg"] == "listening");
    assert_eq!(listening.expect("a startup record")["event_sync"], "data");
}

/// SIGTERM lets an in-flight request finish (a body still arriving), refuses new
/// connections, logs the shutdown and exits 0.
#[test]
fn sigterm_drains_in_flight_requests() {
    let dir = TempDir::new();
    let mut p = spawn_api(&dir.0, &[("GRACE", "10s")]);
    let mut slow = std::net::TcpStream::connect(p.addr).unwrap();
    slow.write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"type\":").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    p.signal("TERM");
    // Give the server time to stop accepting, then check it did.
    let refused = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::net::TcpStream::connect(p.addr).is_err()
    });
    assert!(refused, "new connections are refused once draining");
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "still running while a request is in flight"
    );
    slow.write_all(b"\"drained\"}  ").unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let records = read_records(&dir.0.join("logs/api.log"));
    let msgs: Vec<&str> = records.iter().filter_map(|r| r["msg"].as_str()).collect();
    for m in [
        "shutdown requested",
        "draining",
        "event",
        "drained; shutting down",
    ] {
        assert!(msgs.contains(&m), "{m} in {msgs:?}");
    }
    assert!(
        records
            .iter()
            .any(|r| r["msg"] == "access" && r["status"] == 201),
        "flushed on exit"
    );
}

/// A second SIGTERM ends a stuck drain at once, exit 1, with the reason logged.
#[test]
fn second_signal_forces_exit() {
    let dir = TempDir::new();
    let mut p = spawn_api(&dir.0, &[("GRACE", "60s")]);
    let mut stuck = std::net::TcpStream::connect(p.addr).unwrap();
    stuck.write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    p.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(p.child.try_wait().unwrap().is_none(), "draining, not gone");
    let start = Instant::now();
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(start.elapsed() < Duration::from_secs(10));
    let records = read_records(&dir.0.join("logs/api.log"));
    assert!(
        records
            .iter()
            .any(|r| r["msg"] == "second shutdown request; closing the remaining connections")
    );
}

/// An expired grace period ends the drain with exit 1 and a logged reason.
#[test]
fn grace_period_expiry_forces_exit() {
    let dir = TempDir::new();
    let mut p = spawn_api(&dir.0, &[("GRACE", "300ms"), ("BODY_TIMEOUT", "60s")]);
    let mut stuck = std::net::TcpStream::connect(p.addr).unwrap();
    stuck.write_all(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(1));
    let err = p.stderr();
    assert!(err.contains("grace period expired"), "{err}");
}

/// `--healthcheck` exits 0 against a live server, 1 against a dead port and against a
/// server whose log cannot be written; it writes no log file of its own.
#[test]
fn healthcheck_exit_codes() {
    let dir = TempDir::new();
    let mut p = spawn_api(&dir.0, &[]);
    let port = p.addr.port().to_string();
    let probe_dir = TempDir::new();
    let o = run_api(&probe_dir.0, &["--healthcheck"], &[("PORT", &port)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1);
    assert!(out.starts_with("healthy: 127.0.0.1:"), "{out}");
    assert!(
        !probe_dir.0.join("logs").exists(),
        "the probe writes no log"
    );
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));

    let o = run_api(&probe_dir.0, &["--healthcheck", "--port", &port], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("unhealthy: "), "{}", stderr(&o));

    let bad = spawn_api(&dir.0, &[("LOG_FILE", "/dev/full")]);
    let port = bad.addr.port().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The first failed write (this event) turns health to 503.
    assert_eq!(
        rt.block_on(post_event(bad.addr, r#"{"type":"x"}"#)).status,
        503
    );
    let o = run_api(&probe_dir.0, &["--healthcheck"], &[("PORT", &port)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("answered 503"), "{}", stderr(&o));
}

/// `--prepare-logs UID:GID` creates the log directory and hands it and the log to that owner.
#[test]
fn prepare_logs_hands_the_directory_over() {
    let dir = TempDir::new();
    std::fs::create_dir(dir.0.join("logs")).unwrap();
    std::fs::write(dir.0.join("logs/api.log"), b"").unwrap();
    let o = run_api(&dir.0, &["--prepare-logs", "65534:65534"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for (path, mode) in [("logs", 0o755), ("logs/api.log", 0o644)] {
        let m = std::fs::metadata(dir.0.join(path)).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (65534, 65534, mode),
            "{path}"
        );
    }
    let o = run_api(&dir.0, &["--prepare-logs", "nobody"], &[]);
    assert_eq!(o.status.code(), Some(2));
    // A planted symlink is refused, and its target keeps its owner.
    let target = dir.0.join("precious");
    std::fs::write(&target, b"").unwrap();
    std::fs::remove_file(dir.0.join("logs/api.log")).unwrap();
    std::os::unix::fs::symlink(&target, dir.0.join("logs/api.log")).unwrap();
    let o = run_api(&dir.0, &["--prepare-logs", "65534:65534"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0);
}

/// The in-process server stops on a shutdown request and returns Ok once drained.
#[tokio::test]
async fn run_returns_after_shutdown_request() {
    let srv = start_server().await;
    assert_eq!(get(srv.addr, "/health").await.status, 200);
    srv.trigger.request();
    let result = tokio::time::timeout(Duration::from_secs(10), srv.task)
        .await
        .expect("run returns");
    assert!(result.unwrap().is_ok());
    assert!(
        tokio::net::TcpStream::connect(srv.addr).await.is_err(),
        "the listener is closed"
    );
}
