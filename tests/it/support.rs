//! The service under test and what it leaves behind: an in-process server on 127.0.0.1:0
//! with its own log file, the `api` binary as a child process, its log records, and what
//! `/proc` says about it. Requests go through [`crate::kit`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api::App;
use api::config::{self, Config};
use api::logging::Sink;
use api::shutdown::{self, Trigger};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::kit::HANG;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "api-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("the temp dir is writable");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server running in this process, with its log in a temp dir.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The metrics listener's address, when `METRICS_PORT` was among the settings.
    pub metrics: Option<SocketAddr>,
    pub sink: Sink,
    pub log: PathBuf,
    pub trigger: Trigger,
    pub task: JoinHandle<std::io::Result<()>>,
    pub _dir: TempDir,
}

impl TestServer {
    /// Writes everything buffered and returns the log's records, each parsed as JSON.
    pub async fn records(&self) -> Vec<Value> {
        self.sink.flush().await.expect("the test log is writable");
        read_records(&self.log)
    }
}

/// Starts a server with default settings.
pub async fn start_server() -> TestServer {
    start_server_with(&[]).await
}

/// Starts a server with settings given as environment pairs (`("MAX_BODY_BYTES", "100")`).
pub async fn start_server_with(env: &[(&str, &str)]) -> TestServer {
    let dir = TempDir::new();
    let default_log = dir.0.join("logs/api.log");
    let log_str = default_log
        .to_str()
        .expect("temp paths are UTF-8")
        .to_string();
    let mut pairs: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.push(("LOG_FILE".into(), log_str));
    pairs.push(("HOST".into(), "127.0.0.1".into()));
    let lookup = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.into());
    let cfg: Config = match config::parse(Vec::<String>::new(), lookup) {
        Ok(config::Command::Serve(cfg)) => cfg,
        other => panic!("test settings must parse: {other:?}"),
    };
    let sink = Sink::open(&cfg).expect("the test log opens");
    let log = cfg.log_file.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let metrics_on = cfg.metrics_port.is_some();
    let app = Arc::new(App::new(cfg, sink.clone()));
    let metrics = if metrics_on {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(api::serve_metrics(listener, Arc::clone(&app)));
        Some(addr)
    } else {
        None
    };
    let task = tokio::spawn(api::run(listener, app, shutdown));
    TestServer {
        addr,
        metrics,
        sink,
        log,
        trigger,
        task,
        _dir: dir,
    }
}

/// Reads a log file and parses every line as JSON, failing the test on any invalid line.
pub fn read_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the log ends with a whole line"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid log line {l:?}: {e}")))
        .collect()
}

/// How many event records carry each value of `key` (`"id"`, or `"request_id"` where the
/// client chose the ids); an event record without it fails the test.
pub fn event_counts(records: &[Value], key: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records.iter().filter(|r| r["msg"] == "event") {
        let id = r[key]
            .as_str()
            .unwrap_or_else(|| panic!("an event record without {key}: {r}"));
        *counts.entry(id.to_string()).or_default() += 1;
    }
    counts
}

/// Every acknowledged id is logged (at least once), and no id is logged twice: together,
/// each acknowledged event is in the log exactly once. Names the ids that break either.
pub fn assert_exactly_once(acked: &[String], counts: &HashMap<String, usize>) {
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are not in the log: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let doubled: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "events logged more than once: {doubled:?}"
    );
}

/// The event records are the acknowledged events, each exactly once, and no other (`other`
/// says what another would be).
pub fn assert_just_the_acked(acked: &[String], records: &[Value], other: &str) {
    let counts = event_counts(records, "id");
    assert_exactly_once(acked, &counts);
    assert_eq!(counts.len(), acked.len(), "{other}");
}

/// Polls `cond` every 10 ms for up to `limit`; true if it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// The binary under test, after the runner named by `API_RUNNER` when that is set: an
/// emulator such as `qemu-aarch64-static` for a binary built for another architecture (the
/// kernel cannot exec it without a binfmt handler, and registering one changes the whole
/// machine). A runner is one program name, no arguments.
pub fn api_argv() -> Vec<std::ffi::OsString> {
    let bin = env!("CARGO_BIN_EXE_api").into();
    match std::env::var_os("API_RUNNER").filter(|r| !r.is_empty()) {
        Some(runner) => vec![runner, bin],
        None => vec![bin],
    }
}

/// How many times longer than natively the service under test, in process or spawned, takes
/// to do the same work: `API_TIME_FACTOR`, a whole number, 1 when unset. Set it when the tests
/// run under an emulator (cargo's target runner, and `API_RUNNER` for the binary). Only a test
/// that gives the service a fixed span of time to get work done scales that span by it;
/// limits that only bound a hang (like [`START_LIMIT`]) need not.
pub fn time_factor() -> u32 {
    match std::env::var("API_TIME_FACTOR") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|f| *f >= 1)
            .unwrap_or_else(|| panic!("API_TIME_FACTOR={v:?}: want a whole number >= 1")),
        Err(_) => 1,
    }
}

/// The binary under test as a command (through `API_RUNNER`, see [`api_argv`]).
pub fn api_binary() -> Command {
    let argv = api_argv();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// Longest wait for a started binary's "listening" record.
const START_LIMIT: Duration = Duration::from_secs(10);

/// The `api` binary as a child on 127.0.0.1 with a free port, its stderr drained by a
/// thread (so a chatty child can never block on a full pipe) and kept for inspection.
pub struct Api {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread draining stderr; joined once the child exits, so `stderr()` is complete.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A command for the binary with `LOG_FILE=log`, `HOST=127.0.0.1`, `PORT=0` and `env`,
/// run in `dir`.
pub fn api_command(
    dir: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Command {
    let mut cmd = api_binary();
    serve_in(&mut cmd, dir, log, env);
    cmd
}

/// Sets up `cmd`, the binary or a program that runs it, as [`api_command`] does.
pub fn serve_in(cmd: &mut Command, dir: &Path, log: &Path, env: &[(&str, &str)]) {
    cmd.current_dir(dir)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("LOG_FILE", log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
}

impl Api {
    /// Starts `cmd` and waits (up to [`START_LIMIT`]) for its "listening" record.
    pub fn start(mut cmd: std::process::Command) -> Api {
        use std::io::BufRead;
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("the api binary starts");
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = std::sync::Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(rec) = serde_json::from_str::<serde_json::Value>(&line)
                    && rec["msg"] == "listening"
                {
                    let _ = tx.send(rec["addr"].as_str().unwrap_or("").to_string());
                }
                let mut all = keep.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        match rx.recv_timeout(START_LIMIT) {
            Ok(addr) => Api {
                child,
                addr: addr.parse().expect("listening names its address"),
                stderr,
                reader: Some(reader),
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("api did not listen: {}", stderr.lock().unwrap());
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") with kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(ok.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits up to `limit` for the exit; the exit code, or `None` if a signal ended it.
    /// Panics if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join(); // the pipe closed with the child
                }
                return status.code();
            }
            assert!(
                start.elapsed() < limit,
                "api did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd`, the binary set to refuse to start, to its exit: the exit code, stderr, and
/// stdout if `cmd` pipes it. If it still runs after [`HANG`], it started: the test fails
/// with `why` it must not have.
pub fn run_to_exit(mut cmd: Command, why: &str) -> (Option<i32>, String, Vec<u8>) {
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{:?} does not run: {e}", cmd.get_program()));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {HANG:?}: {why}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.stdout,
    )
}

/// Starts the binary in `dir` with `LOG_FILE=dir/logs/api.log` and `env`.
pub fn spawn_api(dir: &Path, env: &[(&str, &str)]) -> Api {
    Api::start(api_command(dir, &dir.join("logs/api.log"), env))
}

/// Open file descriptors of `pid`: (all, sockets).
pub fn fds(pid: u32) -> (usize, usize) {
    let mut all = 0;
    let mut sockets = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            all += 1;
            if std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    (all, sockets)
}

/// A field of `/proc/<pid>/status` in its unit (kB for memory), e.g. `VmRSS`, `Threads`.
pub fn status_field(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} for pid {pid}"))
}

/// CPU time (user + system) `pid` has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process runs");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').expect("stat has a comm") + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    // USER_HZ is 100 on every Linux ABI that matters here.
    Duration::from_millis((f[0] + f[1]) * 10)
}
