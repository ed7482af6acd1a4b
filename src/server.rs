//! The accept loop: one tokio task per connection, served by hyper's HTTP/1.1 connection
//! driver, at most `max_connections` at once, and a graceful drain on shutdown.
//!
//! Timeouts: a connection must deliver each request head within `header_timeout` of its first
//! byte (and a new connection its first head within `header_timeout` of connecting), which is
//! what drops slowloris clients; hyper's own header timer, which starts whenever a connection
//! waits for a head, is set to `idle_timeout` and so closes idle keep-alive connections. The
//! split keeps the slow-client guard tight while idle connections outlive a load balancer's
//! idle timeout (60 s on common ones), avoiding the race where both sides close at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use crate::routes::{self, App};
use crate::shutdown::Shutdown;

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop waits for resources instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `listener` until `shutdown` is requested, then stops accepting, lets in-flight
/// requests finish within the grace period and closes idle connections. A second request or
/// an expired grace period ends it early with an error naming the reason.
pub async fn run(listener: TcpListener, app: Arc<App>, mut shutdown: Shutdown) -> io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(app.cfg.idle_timeout)
        .keep_alive(true)
        // Heads up to the configured limit reach our JSON 431; beyond this hyper answers alone.
        // (So does a head of over 100 fields: raising hyper's field limit moves its parse
        // buffer to the heap, measured at 3% of the CPU per request.)
        .max_buf_size(app.cfg.max_header_bytes + 8192);
    let limit = Arc::new(Semaphore::new(app.cfg.max_connections));
    let graceful = GracefulShutdown::new();

    loop {
        // Take a permit before accepting: past the cap, clients wait in the listen backlog.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
            () = shutdown.requested() => break,
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
            () = shutdown.requested() => break,
        };
        // Small JSON answers: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let io = HeadTimeout::new(stream, Arc::clone(&activity), app.cfg.header_timeout);
        let app = Arc::clone(&app);
        let service = service_fn(move |req: Request<Incoming>| {
            let app = Arc::clone(&app);
            let activity = Arc::clone(&activity);
            activity.started.fetch_add(1, Ordering::AcqRel);
            async move {
                let resp = routes::handle(&app, req, peer).await;
                activity.finished.fetch_add(1, Ordering::AcqRel);
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!(peer:% = peer, error:% = e; "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);

    let grace = app.cfg.grace;
    let open = app.cfg.max_connections - limit.available_permits();
    log::info!(connections = open as u64, grace_ms = grace.as_millis() as u64; "draining");
    tokio::select! {
        () = graceful.shutdown() => {
            log::info!("drained; shutting down");
            Ok(())
        }
        () = tokio::time::sleep(grace) => {
            let open = app.cfg.max_connections - limit.available_permits();
            log::warn!(connections = open as u64; "grace period expired; closing the remaining connections");
            Err(io::Error::other(format!("grace period of {grace:?} expired with {open} connections open")))
        }
        () = shutdown.forced() => {
            log::warn!("second shutdown request; closing the remaining connections");
            Err(io::Error::other("shutdown forced by a second signal"))
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

/// Binds the configured address, naming it in the error.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
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
    })
}

/// Requests a connection has begun (hyper parsed their head) and finished answering.
#[derive(Default)]
struct Activity {
    started: AtomicU32,
    finished: AtomicU32,
}

/// The socket, plus the slow-head guard: once a request head has begun (its first byte read
/// while no request is in progress), or the connection is new, reads fail with `TimedOut`
/// if that head is not complete within `limit`. Bodies and idle keep-alive time are not
/// counted: the clock only runs between a head's first byte and hyper handing it over.
struct HeadTimeout {
    io: TcpStream,
    activity: Arc<Activity>,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    /// The head being timed is the one after this many started requests.
    armed: Option<u32>,
}

impl HeadTimeout {
    fn new(io: TcpStream, activity: Arc<Activity>, limit: Duration) -> HeadTimeout {
        let deadline = Box::pin(tokio::time::sleep(limit));
        HeadTimeout {
            io,
            activity,
            limit,
            deadline,
            armed: Some(0),
        }
    }
}

impl AsyncRead for HeadTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let started = this.activity.started.load(Ordering::Acquire);
        let busy = started != this.activity.finished.load(Ordering::Acquire);
        if this.armed.is_some_and(|at| at != started) {
            this.armed = None; // the timed head arrived
        }
        if this.armed.is_some() && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received in time",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.armed.is_none() && !busy && buf.filled().len() > before {
            this.armed = Some(started);
            this.deadline.as_mut().reset(Instant::now() + this.limit);
            // Register the timer's waker, so a client that goes quiet is still timed out.
            let _ = this.deadline.as_mut().poll(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeadTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
