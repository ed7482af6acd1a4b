//! Shared helpers: an in-process server on 127.0.0.1:0 with its own log file, the `api`
//! binary as a child process, and a small HTTP/1.1 client over raw sockets (so tests control
//! every byte and see exactly what the server sends).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api::config::{self, Config};
use api::logging::Sink;
use api::routes::App;
use api::shutdown::{self, Trigger};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

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
    let sink = Sink::open(&cfg.log_file, cfg.log_level).expect("the test log opens");
    let log = cfg.log_file.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let app = Arc::new(App::new(cfg, sink.clone()));
    let task = tokio::spawn(api::run(listener, app, shutdown));
    TestServer {
        addr,
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

/// One parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `method path` with `headers` and `body` on a new connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    send_raw(addr, &bytes).await.expect("the server answers")
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"").await
}

/// POSTs a JSON body to /events.
pub async fn post_event(addr: SocketAddr, body: &str) -> Resp {
    request(
        addr,
        "POST",
        "/events",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// Writes `bytes` on a new connection and reads one response (`None`: closed without one).
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Resp> {
    let mut stream = TcpStream::connect(addr).await.expect("the server accepts");
    // The server may answer and close before taking all of a refused body.
    let _ = stream.write_all(bytes).await;
    read_response(&mut stream).await
}

/// Reads one response from `stream`: head, then a Content-Length body (or to EOF).
pub async fn read_response(stream: &mut TcpStream) -> Option<Resp> {
    let mut buf = Vec::new();
    let deadline = Duration::from_secs(10);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no response within {deadline:?}"),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    loop {
        if len.is_some_and(|n| body.len() >= n) {
            body.truncate(len.unwrap());
            break;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => body.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("response body not complete within {deadline:?}"),
        }
    }
    Some(Resp {
        status,
        headers,
        body,
    })
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

/// The `api` binary running as a child, listening on a free port of 127.0.0.1.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: BufReader<ChildStderr>,
}

impl Proc {
    /// Sends `signal` (e.g. "TERM") with kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(ok.success(), "kill -{signal} succeeded");
    }

    /// Waits up to `limit` for exit; returns the exit code (panics if it did not exit).
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < limit,
                "the process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `Command` for the binary under test.
pub fn api_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_api"))
}

/// Starts the binary with `LOG_FILE` in `dir`, `PORT=0` and `env`, and waits for its
/// "listening" record on stderr to learn the port.
pub fn spawn_api(dir: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = api_command();
    cmd.current_dir(dir)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("LOG_FILE", dir.join("logs/api.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the api binary starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if stderr.read_line(&mut line).expect("stderr is readable") == 0 {
            break None;
        }
        let Ok(rec) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if rec["msg"] == "listening" {
            break rec["addr"].as_str().and_then(|a| a.parse().ok());
        }
    };
    match addr {
        Some(addr) => Proc {
            child,
            addr,
            stderr,
        },
        None => {
            let status = child.wait();
            panic!("api exited before listening: {status:?}");
        }
    }
}
