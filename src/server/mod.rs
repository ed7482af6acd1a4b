//! The accept loop: one tokio task per connection, served by hyper's HTTP/1.1 connection
//! driver over a guarded socket ([`conn`]), at most `max_connections` at once ([`admission`]
//! decides who gets a slot when they are all taken, from what each connection's [`activity`]
//! says), and the two phases of a shutdown (see [`crate::shutdown`]): serving on while
//! draining, then closing the listener and letting requests in progress finish within
//! `GRACE`. hyper's own header timer is off: it allocates and registers a timer for every
//! request, where `conn::Guarded` keeps one per connection.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::app::App;
use crate::http::{self, Answer, Body};
use crate::shutdown::Shutdown;

mod activity;
mod admission;
mod conn;
mod listen;
mod metrics;

use activity::Activity;
use admission::Admission;
use conn::Guarded;
pub use listen::{listen, listen_metrics};
pub use metrics::serve_metrics;

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
    // Every connection's task holds a sender; `recv` gives `None` once all have ended.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let draining = drain(&app, shutdown.clone());
    tokio::pin!(draining);

    loop {
        // Accept only with room: a free slot or a connection to evict. Without, clients wait
        // in the listen backlog.
        let victim = tokio::select! {
            victim = admission.ready() => victim,
            () = &mut draining => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, "accept failed; pausing") => match accepted {
                Some(conn) => conn,
                None => continue,
            },
            () = &mut draining => break,
        };
        // A slot for it: a free one, or that of a connection evicted to make room.
        let activity = Arc::new(Activity::new());
        let ticket = tokio::select! {
            ticket = admission.admit(Arc::clone(&activity), victim) => ticket,
            () = &mut draining => break,
        };
        // Small JSON answers: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let io = Guarded::new(stream, Arc::clone(&activity), &app, admission.signals());
        let service = service(Arc::clone(&app), activity, peer, Listener::Api);
        let conn = http.serve_connection(TokioIo::new(io), service);
        let app = Arc::clone(&app);
        let open = open_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = conn::serve(&app.phases, conn).await {
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
    app.phases.start_closing();
    drop(open_tx);

    let grace = app.cfg.grace;
    let open = admission.open();
    log::info!(connections = open as u64, grace_ms = grace.as_millis() as u64; "listener closed");
    tokio::select! {
        // A second request that ended the drain delay must not be read as a clean close.
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

/// Which listener a connection came in on.
#[derive(Clone, Copy)]
enum Listener {
    Api,
    Metrics,
}

/// What hyper calls for each request of one connection: the router, or on the metrics
/// listener the exposition, telling the connection's `activity` when each request begins and
/// ends. Keep one function and one socket type for both listeners: hyper's connection code
/// is built once per type, and stays inlined into the API's connections only while there is
/// one (docs/performance.md).
fn service(
    app: Arc<App>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    listener: Listener,
) -> impl Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send> {
    service_fn(move |req: Request<Incoming>| {
        activity.begin();
        let answer = match listener {
            Listener::Metrics => Answer::Now(http::metrics(&app, &req), Instant::now()),
            Listener::Api => http::handle(&app, req, peer),
        };
        // Answered now: the future holds only the answer (see `http::handle`).
        let answer = match answer {
            Answer::Now(resp, end) => {
                activity.finish(end);
                Ok(resp)
            }
            Answer::Later(answer) => Err((answer, Arc::clone(&activity))),
        };
        async move {
            match answer {
                Ok(resp) => Ok::<_, Infallible>(resp),
                Err((answer, activity)) => {
                    let (resp, end) = answer.await;
                    activity.finish(end);
                    Ok(resp)
                }
            }
        }
    })
}

/// The draining phase: resolves when the listener should close, `DRAIN_DELAY` after the
/// first shutdown request, or at once on a second. From the first request on, `app` is
/// draining.
async fn drain(app: &App, mut shutdown: Shutdown) {
    shutdown.requested().await;
    app.phases.start_draining();
    let delay = app.cfg.drain_delay;
    log::info!(
        drain_delay_ms = delay.as_millis() as u64,
        grace_ms = app.cfg.grace.as_millis() as u64;
        "draining"
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        // `run` sees the same request and ends the shutdown with its reason.
        () = shutdown.forced() => {}
    }
}

/// Accepts a connection. On an error that is not about that one connection (out of file
/// descriptors, say), logs `pausing` and waits [`ACCEPT_BACKOFF`] before giving `None`, so
/// that the caller's loop waits for resources instead of spinning.
async fn accept(listener: &TcpListener, pausing: &str) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(conn) => Some(conn),
        Err(e) => {
            if !per_connection(&e) {
                log::warn!(error:% = e; "{pausing}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            None
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
