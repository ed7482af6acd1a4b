//! `--healthcheck`: the probe a scratch image runs as its Docker HEALTHCHECK (no shell or curl
//! there). It speaks just enough HTTP/1.1 over a blocking socket to need no runtime, and
//! starts no server and no log: `GET /health` of the configured server, exit 0 on a 200
//! `{"status":"ok"}`, 1 on anything else.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Config;

/// User-Agent prefix of the probe; its requests are access-logged at debug level only.
pub(crate) const PROBE_AGENT: &str = "api-healthcheck/";

/// Budget for the whole probe, inside the Dockerfile's 2 s HEALTHCHECK timeout, so that a slow
/// server gets our one-line verdict rather than Docker's kill.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Where the server `cfg` describes can be reached from this machine, in the order to try.
/// A wildcard listen address is reachable on loopback: `::` on `::1`, or on `127.0.0.1` where
/// `::1` does not exist (a container without IPv6) or the server fell back to `0.0.0.0`.
fn probe_addrs(cfg: &Config) -> Vec<SocketAddr> {
    let ips = match cfg.host {
        IpAddr::V4(v4) if v4.is_unspecified() => vec![Ipv4Addr::LOCALHOST.into()],
        IpAddr::V6(v6) if v6.is_unspecified() => {
            vec![Ipv6Addr::LOCALHOST.into(), Ipv4Addr::LOCALHOST.into()]
        }
        ip => vec![ip],
    };
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, cfg.port))
        .collect()
}

/// Probes `GET /health` of the server `cfg` describes. `Ok` holds the line to print for a
/// healthy answer, `Err` the line for anything else.
pub fn probe(cfg: &Config) -> Result<String, String> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    // What is left of the budget (never zero: a zero timeout means none).
    let remaining = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    // The first address that takes the connection is the server's; what it answers is final.
    let mut refused = Vec::new();
    let mut connected = None;
    for addr in probe_addrs(cfg) {
        match TcpStream::connect_timeout(&addr, remaining()) {
            Ok(stream) => {
                connected = Some((addr, stream));
                break;
            }
            Err(e) => refused.push(format!("{addr}: cannot connect: {e}")),
        }
    }
    let Some((addr, mut stream)) = connected else {
        return Err(format!("unhealthy: {}", refused.join("; ")));
    };
    let unhealthy = |why: String| format!("unhealthy: {addr}: {why}");
    stream
        .set_write_timeout(Some(remaining()))
        .and_then(|()| stream.set_read_timeout(Some(remaining())))
        .map_err(|e| unhealthy(e.to_string()))?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {PROBE_AGENT}{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| unhealthy(format!("cannot send: {e}")))?;

    // The answer is small; read to EOF (Connection: close) but never more than 64 KiB.
    let mut answer = Vec::with_capacity(512);
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|e| unhealthy(format!("no answer: {e}")))?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or("");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    let status = status_line.split(' ').nth(1).unwrap_or("");
    let ok = status == "200"
        && serde_json::from_str::<serde_json::Value>(body)
            .is_ok_and(|v| v.get("status").and_then(|s| s.as_str()) == Some("ok"));
    if ok {
        Ok(format!("healthy: {addr} answered 200 {body}"))
    } else if status.is_empty() {
        Err(unhealthy("no HTTP answer".into()))
    } else {
        Err(unhealthy(format!("answered {status} {body}")))
    }
}
