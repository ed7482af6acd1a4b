//! The HTTP/1.1 client every test uses, over raw sockets so that tests control every byte
//! and see exactly what the server sends: a connection that keeps what it has read beyond one
//! response (so pipelined answers are not lost), one-shot requests on a new connection, and a
//! keep-alive client for load that tells every way a request can fail apart instead of
//! panicking.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any single read may take before a test calls it a hang.
pub const HANG: Duration = Duration::from_secs(10);

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

    /// The response, or `None` if no whole one came (closed, cut short or too late).
    pub fn response(self) -> Option<Resp> {
        match self {
            Next::Response(r) => Some(r),
            _ => None,
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
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.until_eof(left).await {
                    Some(rest) => rest,
                    None => return Next::TimedOut,
                }
            }
        };
        Next::Response(Resp {
            status,
            headers,
            body,
        })
    }

    /// Everything up to EOF, including what is already buffered; `None` if the peer has not
    /// closed within `limit`.
    pub async fn until_eof(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.fill(deadline).await? {}
        Some(std::mem::take(&mut self.buf))
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

/// A new connection that sends a POST /events head for `body` and only the body's first
/// byte: a request in progress until the connection is dropped or BODY_TIMEOUT cuts it.
pub async fn partial_post(addr: SocketAddr, body: &str) -> Conn<TcpStream> {
    let mut c = Conn::open(addr)
        .await
        .expect("the backlog takes the connection");
    let mut bytes = event_request(body, "");
    bytes.truncate(bytes.len() - body.len() + 1);
    c.io.write_all(&bytes).await.expect("the head is sent");
    c
}

/// `GET /health`, keep-alive.
pub const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

/// One `GET /health` on a new connection: its status, or `None` if none came in time.
pub async fn health_status(addr: SocketAddr, limit: Duration) -> Option<u16> {
    let attempt = async {
        let mut conn = Conn::open(addr).await.ok()?;
        conn.io.write_all(HEALTH).await.ok()?;
        conn.next(limit).await.response().map(|r| r.status)
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

/// Sends `method path` with `headers` and `body` on a new connection (`Connection: close`).
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
    if method != "HEAD" {
        return send_raw(addr, &bytes).await.expect("the server answers");
    }
    let mut conn = Conn::open(addr).await.expect("the server accepts");
    conn.io.write_all(&bytes).await.expect("the server reads");
    let mut r = conn
        .next_head(HANG)
        .await
        .response()
        .expect("the server answers");
    // Whatever comes before the close is a body, which a HEAD answer must not have.
    r.body = conn.until_eof(HANG).await.expect("the server closes");
    r
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

/// Writes `bytes` on a new connection and reads one response (`None`: no whole one came, or
/// the connection was refused, as it is once a test has killed the server).
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Resp> {
    let mut conn = Conn::open(addr).await.ok()?;
    // The server may answer and close before taking all of a refused body.
    let _ = conn.io.write_all(bytes).await;
    conn.next(HANG).await.response()
}

/// How one request of a [`Client`] ended, as the client sees it.
#[derive(Debug)]
pub enum Outcome {
    /// A whole answer: status, whether the server closes the connection after it, body.
    Answered {
        status: u16,
        close: bool,
        body: Vec<u8>,
    },
    /// No whole answer: what went wrong ("connect", "reset", "closed", "truncated",
    /// "timeout").
    Failed(&'static str),
}

/// An HTTP/1.1 client on one connection at a time: it reuses the connection (keep-alive)
/// unless told to close or the server said `Connection: close`, and reconnects lazily.
pub struct Client {
    addr: SocketAddr,
    keep_alive: bool,
    /// Longest one request may take, connecting included, before it counts as failed.
    limit: Duration,
    conn: Option<Conn<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr, keep_alive: bool, limit: Duration) -> Client {
        Client {
            addr,
            keep_alive,
            limit,
            conn: None,
        }
    }

    /// Sends one request to `path` (a GET, or with a JSON body a POST) and reads its answer.
    pub async fn send(&mut self, path: &str, json: Option<&str>) -> Outcome {
        let close = if self.keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        let request = match json {
            None => format!("GET {path} HTTP/1.1\r\nHost: test\r\n{close}\r\n"),
            Some(body) => format!(
                "POST {path} HTTP/1.1\r\nHost: test\r\n{close}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        };
        self.send_raw(request.as_bytes()).await
    }

    /// Sends `request` as it is (any `Connection: close` is the caller's to write) and reads
    /// its answer.
    pub async fn send_raw(&mut self, request: &[u8]) -> Outcome {
        let outcome = match tokio::time::timeout(self.limit, self.exchange(request)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed("timeout"),
        };
        if !matches!(outcome, Outcome::Answered { close: false, .. }) || !self.keep_alive {
            self.conn = None;
        }
        outcome
    }

    async fn exchange(&mut self, request: &[u8]) -> Outcome {
        if self.conn.is_none() {
            match Conn::open(self.addr).await {
                Ok(c) => self.conn = Some(c),
                Err(_) => return Outcome::Failed("connect"),
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        if conn.io.write_all(request).await.is_err() {
            return Outcome::Failed("reset");
        }
        read_answer(conn, self.limit).await
    }
}

/// The outcome of the next answer on `conn` within `limit`, read with the tests' one HTTP
/// reader.
pub async fn read_answer(conn: &mut Conn<TcpStream>, limit: Duration) -> Outcome {
    match conn.next(limit).await {
        Next::Response(r) => Outcome::Answered {
            status: r.status,
            close: r
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            body: r.body,
        },
        Next::Closed => Outcome::Failed("closed"),
        Next::Truncated => Outcome::Failed("truncated"),
        Next::TimedOut => Outcome::Failed("timeout"),
    }
}

/// A slowloris on `stream`: every `every` it writes the next of `bytes` (nothing once they run
/// out, or if there are none), reading and ignoring whatever the server sends (a 408, say),
/// until the server closes the connection (true) or `stop` completes (false).
pub async fn trickle(
    stream: &mut TcpStream,
    every: Duration,
    mut bytes: impl Iterator<Item = u8>,
    stop: impl Future<Output = ()>,
) -> bool {
    tokio::pin!(stop);
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(n) if n > 0 => {}
                _ => return true,
            },
            () = tokio::time::sleep(every) => {
                if let Some(byte) = bytes.next()
                    && stream.write_all(&[byte]).await.is_err() {
                        return true;
                    }
            }
            () = &mut stop => return false,
        }
    }
}
