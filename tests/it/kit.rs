//! The raw-socket client the fault tests share (hostile, abuse, crash): a connection that
//! keeps what it has read beyond one response (so pipelined answers are not lost), and
//! helpers around the `api` binary as a child process.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::Resp;

/// The longest any single read may take before a test calls it a hang.
pub const HANG: Duration = Duration::from_secs(10);

/// What came next on a connection.
#[derive(Debug)]
pub enum Next {
    /// A complete response (1xx answers included, with an empty body).
    Response(Resp),
    /// The server closed (or reset) the connection before any byte of a response.
    Closed,
    /// The connection ended in the middle of a response.
    Truncated,
    /// Nothing complete arrived within the time allowed.
    TimedOut,
}

impl Next {
    /// The status, or `close` / `timeout`, as the case table writes it.
    pub fn token(&self) -> String {
        match self {
            Next::Response(r) => r.status.to_string(),
            Next::Closed => "close".into(),
            Next::Truncated => "truncated".into(),
            Next::TimedOut => "timeout".into(),
        }
    }
}

/// A reader over any byte stream that keeps unread bytes between responses.
pub struct Conn<R> {
    pub io: R,
    buf: Vec<u8>,
}

impl Conn<TcpStream> {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn<TcpStream>> {
        let io = TcpStream::connect(addr).await?;
        io.set_nodelay(true)?;
        Ok(Conn::new(io))
    }

    /// Writes `bytes`, then reads one response (panics on a hang).
    pub async fn roundtrip(&mut self, bytes: &[u8]) -> Next {
        if self.io.write_all(bytes).await.is_err() {
            return Next::Closed;
        }
        self.next(HANG).await
    }
}

impl<R: AsyncRead + Unpin> Conn<R> {
    pub fn new(io: R) -> Conn<R> {
        Conn {
            io,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes; false on EOF or error.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Option<bool> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
            Err(_) => None,
            Ok(Ok(0)) | Ok(Err(_)) => Some(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(true)
            }
        }
    }

    /// Reads the next response within `limit`. A response without `Content-Length`
    /// (other than 1xx, 204, 304) runs to EOF. Not for answers to HEAD.
    pub async fn next(&mut self, limit: Duration) -> Next {
        self.read(limit, false).await
    }

    /// Reads the answer to a HEAD request: a head without a body.
    pub async fn next_head(&mut self, limit: Duration) -> Next {
        self.read(limit, true).await
    }

    async fn read(&mut self, limit: Duration, bodiless: bool) -> Next {
        let deadline = tokio::time::Instant::now() + limit;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match self.fill(deadline).await {
                None => return Next::TimedOut,
                Some(false) if self.buf.is_empty() => return Next::Closed,
                Some(false) => return Next::Truncated,
                Some(true) => {}
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = match lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
        {
            Some(s) => s,
            None => panic!("not an HTTP response head: {head:?}"),
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        self.buf.drain(..head_end);
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let len = match status {
            _ if bodiless => Some(0),
            100..=199 | 204 | 304 => Some(0),
            _ => len,
        };
        let body = match len {
            Some(n) => {
                while self.buf.len() < n {
                    match self.fill(deadline).await {
                        None => return Next::TimedOut,
                        Some(false) => return Next::Truncated,
                        Some(true) => {}
                    }
                }
                self.buf.drain(..n).collect()
            }
            None => {
                loop {
                    match self.fill(deadline).await {
                        None => return Next::TimedOut,
                        Some(false) => break,
                        Some(true) => {}
                    }
                }
                std::mem::take(&mut self.buf)
            }
        };
        Next::Response(Resp {
            status,
            headers,
            body,
        })
    }

    /// Whether the peer closes within `limit` without sending anything more.
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if !self.buf.is_empty() {
                return false;
            }
            match self.fill(deadline).await {
                None => return false,
                Some(false) => return self.buf.is_empty(),
                Some(true) => {}
            }
        }
    }
}

/// A POST /events request (keep-alive) with `body` and optional extra header lines.
pub fn event_request(body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `GET /health`, keep-alive.
pub const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

/// One `GET /health` on a new connection: its status, or `None` if none came in time.
pub async fn health_status(addr: SocketAddr, limit: Duration) -> Option<u16> {
    let attempt = async {
        let mut conn = Conn::open(addr).await.ok()?;
        conn.io.write_all(HEALTH).await.ok()?;
        match conn.next(limit).await {
            Next::Response(r) => Some(r.status),
            _ => None,
        }
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

pub use crate::support::{Api, api_command};

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
