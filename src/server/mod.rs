//! The accept loop: one tokio task per connection, served by hyper's HTTP/1.1 connection
//! driver over a guarded socket (`conn`), at most `max_connections` at once (`admission`
//! decides who gets a slot when they are all taken), and a graceful shutdown in two phases:
//! serving on for `DRAIN_DELAY` (`drain`), then closing the listener and letting in-flight
//! requests finish within `GRACE`. hyper's own header timer is off: it allocates and
//! registers a timer for every request, where `conn::Guarded` keeps one per connection.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::routes::{self, Answer, App};
use crate::shutdown::Shutdown;

mod admission;
mod conn;
mod drain;

use admission::Admission;
use conn::{Activity, Drain, Guarded};

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop waits for resources instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `listener` until `shutdown` is requested and the drain delay has passed, then stops
/// accepting, lets in-flight requests finish within the grace period and closes idle
/// connections. A second request or an expired grace period ends it early with an error
/// naming the reason.
pub async fn run(listener: TcpListener, app: Arc<App>, mut shutdown: Shutdown) -> io::Result<()> {
    let mut http = http1::Builder::new();
    http.header_read_timeout(None)
        .keep_alive(true)
        // Heads up to the configured limit reach our JSON 431; beyond this hyper answers alone.
        // (So does a head of over 100 fields: raising hyper's field limit moves its parse
        // buffer to the heap, a cost paid by every request.)
        .max_buf_size(app.cfg.max_header_bytes + 8192)
        // Without it hyper reads while every request is in progress, to notice a client that
        // closes early; that read finds nothing, and, with the request still holding hyper's
        // read buffer, allocates a new one. A request whose client left is answered anyway
        // (into a closed socket), and the connection closes at the next read.
        .half_close(true);
    let admission = Arc::new(Admission::new(Arc::clone(&app)));
    let summary = tokio::spawn({
        let admission = Arc::clone(&admission);
        async move { admission.summarize().await }
    });
    let drain = Arc::new(Drain::default());
    // Every connection's task holds a sender; `recv` gives `None` once all have ended.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let closing = drain::listener_closes(&app, shutdown.clone());
    tokio::pin!(closing);

    loop {
        // Accept only with room: a free slot or a connection to evict. Without, clients wait
        // in the listen backlog.
        let victim = tokio::select! {
            victim = admission.ready() => victim,
            () = &mut closing => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    if !per_connection(&e) {
                        log::warn!(error:% = e; "accept failed; pausing");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
            () = &mut closing => break,
        };
        // A slot for it: a free one, or that of a connection evicted to make room.
        let activity = Arc::new(Activity::new());
        let ticket = tokio::select! {
            ticket = admission.admit(Arc::clone(&activity), victim) => ticket,
            () = &mut closing => break,
        };
        // Small JSON answers: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let io = Guarded::new(stream, Arc::clone(&activity), &drain, &admission, &app.cfg);
        let app = Arc::clone(&app);
        let service = service_fn(move |req: Request<Incoming>| {
            activity.begin();
            // Before the future: see `answer_now` for why. hyper polls the future as soon as
            // it has it, so a request answered now is finished now.
            let later = match routes::answer_now(&app, req, peer) {
                Answer::Now(resp, end) => {
                    activity.finish(end);
                    Ok(resp)
                }
                Answer::Later(req) => Err((req, Arc::clone(&app), Arc::clone(&activity))),
            };
            async move {
                match later {
                    Ok(resp) => Ok::<_, std::convert::Infallible>(resp),
                    Err((req, app, activity)) => {
                        let (resp, end) = routes::answer_later(&app, req, peer).await;
                        activity.finish(end);
                        Ok(resp)
                    }
                }
            }
        });
        let conn = http.serve_connection(TokioIo::new(io), service);
        let drain = Arc::clone(&drain);
        let open = open_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = drain.watch(conn).await {
                log::debug!(peer:% = peer, error:% = e; "connection ended with an error");
            }
            drop(ticket);
            drop(open);
        });
    }
    drop(listener);
    summary.abort();
    // Connections without a request in progress (silent, idle, or mid-head) close now; hyper's
    // graceful shutdown alone would wait for a head that may never come.
    drain.start();
    drop(open_tx);

    let grace = app.cfg.grace;
    let open = admission.open();
    log::info!(connections = open as u64, grace_ms = grace.as_millis() as u64; "listener closed");
    tokio::select! {
        // A second request that ended the drain delay must not be read as a clean drain.
        biased;
        () = shutdown.forced() => {
            log::warn!("second shutdown request; closing the remaining connections");
            Err(io::Error::other("shutdown forced by a second signal"))
        }
        _ = open_rx.recv() => {
            log::info!("drained; shutting down");
            Ok(())
        }
        () = tokio::time::sleep(grace) => {
            let open = admission.open();
            log::warn!(connections = open as u64; "grace period expired; closing the remaining connections");
            Err(io::Error::other(format!("grace period of {grace:?} expired with {open} connections open")))
        }
    }
}

/// Errors that concern only the connection being accepted; the next accept may succeed.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Binds the configured address, naming it in the error. The default `::` takes IPv4 and
/// IPv6 clients (IPv4 ones as `::ffff:a.b.c.d`, unless `net.ipv6.bindv6only` is set; neither
/// tokio nor std can clear `IPV6_V6ONLY` without unsafe code or another crate) and falls back
/// to `0.0.0.0` where the kernel has IPv6 off. An address the user chose has no fallback.
pub async fn listen(cfg: &Config) -> io::Result<TcpListener> {
    let addr = SocketAddr::new(cfg.host, cfg.port);
    let listener = match bind_socket(addr) {
        Err(e) if cfg.host_fallback && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), cfg.port);
            log::info!(error:% = e; "IPv6 is off in this kernel; listening on IPv4 only");
            bind_socket(v4).map_err(|e| bind_error(v4, e))?
        }
        bound => bound.map_err(|e| bind_error(addr, e))?,
    };
    if addr.ip() == Ipv6Addr::UNSPECIFIED && v6_only_by_default() {
        log::warn!(
            "net.ipv6.bindv6only is 1: IPv4 clients cannot reach [::]; set HOST=0.0.0.0 for them"
        );
    }
    Ok(listener)
}

/// Whether a bind to `::` failed because this kernel has no usable IPv6: no IPv6 sockets at all
/// (EAFNOSUPPORT, booted with `ipv6.disable=1`) or no `::` to bind (EADDRNOTAVAIL).
fn ipv6_unavailable(e: &io::Error) -> bool {
    // Linux's number; std maps it to no ErrorKind of its own.
    const EAFNOSUPPORT: i32 = 97;
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(EAFNOSUPPORT)
}

/// Whether new IPv6 sockets take IPv6 clients only (the sysctl's default is 0).
fn v6_only_by_default() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "1")
}

/// A bind error that names the address and says what to do.
fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => {
            "; another process holds it: stop that one or choose another --port/PORT"
        }
        io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need privileges: choose --port/PORT above 1023"
        }
        io::ErrorKind::AddrNotAvailable => "; no interface has that address: check --host/HOST",
        _ => "",
    };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
}

/// Connections the kernel completes ahead of `accept`. At the cap, the loop accepts only as
/// fast as it can make room; a burst of new connections larger than this queue would have
/// its excess (and any new client among it) wait a second for a SYN retransmit. Linux caps
/// it at `net.core.somaxconn` (4096 by default since 5.4).
const LISTEN_BACKLOG: u32 = 4096;

fn bind_socket(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio's `TcpListener::bind` do: a restart can bind while old connections of
    // the previous process linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_off_is_recognised_by_errno() {
        assert!(ipv6_unavailable(&io::Error::from_raw_os_error(97)));
        assert!(ipv6_unavailable(&io::Error::from(
            io::ErrorKind::AddrNotAvailable
        )));
        assert!(!ipv6_unavailable(&io::Error::from(
            io::ErrorKind::AddrInUse
        )));
        assert!(!ipv6_unavailable(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
    }
}
