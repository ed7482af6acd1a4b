//! One connection's socket, wrapped with the guards hyper does not provide (or, for idle
//! time, provides at a cost per request): the slow-head timeout, the idle timeout, the stalled
//! write timeout, and the close at shutdown. hyper drives the HTTP; [`Guarded`] decides when
//! the socket reads as closed or fails, and [`Activity`] is what the service tells it about
//! requests.
//!
//! A connection must deliver each request head within `header_timeout` of its first byte (and
//! a new connection its first head within `header_timeout` of connecting), which is what drops
//! slowloris clients; a keep-alive connection with no request for `idle_timeout` is closed.
//! The split keeps the slow-client guard tight while idle connections outlive a load
//! balancer's idle timeout (60 s on common ones), avoiding the race where both sides close at
//! once. A write that cannot progress for `write_timeout` (a client that never reads) closes
//! the connection too.
//!
//! When the connection waits for its client (idle between requests, or part-way through a
//! head) it says so in [`Activity`], with its task's waker, so that the admission
//! (`super::admission`) can close it to make room at the cap; see there for why and when.
//!
//! Two answers are changed on their way out. hyper answers a head it cannot parse itself,
//! with a bare status; [`Guarded`] sends the service's answer in its place
//! (`crate::http::unparsed_answer`), telling it from the service's by counting: a message
//! written while no request is in progress, when every finished request's answer has been
//! written and flushed, is not the service's. And an evicted connection that serves a
//! request first says `Connection: close` on its answer, so its client does not send another.

use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

use super::activity::{Activity, Signals, Wait, wait_state};
use crate::app::App;
use crate::shutdown::Phases;

/// Serves `conn` to its end; once shutdown reaches its closing phase, hyper finishes the
/// request in progress and closes the connection. As hyper-util's `GracefulShutdown::watch`,
/// except that this polls the closing notification only when the task's waker is new (else
/// [`Phases::closing`] says as much): polled on every wake-up of the connection, it takes the
/// lock of a `Notify` that every connection shares.
pub(super) async fn serve<C: GracefulConnection>(phases: &Phases, conn: C) -> C::Output {
    let mut conn = pin!(conn);
    // Created now, so it hears a `notify_waiters` even before it is polled.
    let notify = phases.closing_notify();
    let mut notified = pin!(notify.notified());
    let mut waker: Option<Waker> = None;
    let mut closing = false;
    std::future::poll_fn(|cx| {
        if !closing {
            closing = (new_waker(&mut waker, cx) && notified.as_mut().poll(cx).is_ready())
                || phases.closing();
            if closing {
                conn.as_mut().graceful_shutdown();
            }
        }
        conn.as_mut().poll(cx)
    })
    .await
}

/// Keeps the task's waker in `slot`; true if it is new there (a first poll, or the task is
/// woken another way now), so whatever was registered with the old one must register again.
fn new_waker(slot: &mut Option<Waker>, cx: &Context<'_>) -> bool {
    if slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        return false;
    }
    *slot = Some(cx.waker().clone());
    true
}

fn head_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request head not received in time")
}

/// A request head being timed.
struct HeadClock {
    /// It is the head after this many started requests.
    after: u32,
    /// A new connection's opening; else unset until a read finds the rest of the head missing,
    /// in the same poll as its first bytes: most heads arrive whole, and need no clock.
    began: Option<Instant>,
    /// Whether `head_deadline` is set for it. Only a head that does not arrive whole in one
    /// read needs the timer; most do, and skip the timer wheel entirely.
    registered: bool,
    /// Whether any of it has arrived: until then the connection is idle, not trickling.
    received: bool,
}

/// The socket, plus the guards hyper does not provide (or, for idle time, provides at a cost
/// per request):
/// - slow heads: once a request head has begun (its first byte read while no request is in
///   progress), or the connection is new, reads fail with `TimedOut` if that head is not
///   complete within `header_timeout`. Bodies and idle keep-alive time are not counted.
/// - idle connections: once no request has been in progress, nor a head begun, for
///   `idle_timeout`, a read sees end of stream, which closes the connection. The timer is
///   lazy: it is registered once and, when it fires early because requests came meanwhile,
///   moved to `idle_timeout` after the end of the last one (which [`Activity`] records), so a
///   busy connection touches the timer wheel about once per `idle_timeout`, not per request.
/// - slow readers: a write that cannot progress for `write_timeout` fails with `TimedOut`,
///   so a client that never reads its answer cannot hold a connection slot (or shutdown).
/// - shutdown: once it reaches its closing phase, a read while no request is in progress sees
///   end of stream, which closes the connection.
/// - eviction: the same, for this connection alone, once the admission chose it to make room
///   at the cap; it can be chosen only while it waits for its client, which it tells
///   [`Activity`] whenever a read finds nothing or an answer has been flushed.
pub(super) struct Guarded {
    io: TcpStream,
    activity: Arc<Activity>,
    header_timeout: Duration,
    head_deadline: Pin<Box<Sleep>>,
    /// The head being timed, if any.
    head: Option<HeadClock>,
    idle_timeout: Duration,
    idle_deadline: Pin<Box<Sleep>>,
    /// The waker `idle_deadline` was last polled with.
    idle_waker: Option<Waker>,
    write_timeout: Duration,
    write_deadline: Pin<Box<Sleep>>,
    write_armed: bool,
    app: Arc<App>,
    /// Created with the connection, so it hears a `notify_waiters` even before it is polled.
    closing_notified: Pin<Box<OwnedNotified>>,
    /// The waker `closing_notified` was last polled with. Polling it again with the same one
    /// only takes the lock of the `Notify` every connection shares, to find what
    /// `Phases::closing`, read on every read, already says.
    closing_waker: Option<Waker>,
    signals: Arc<Signals>,
    /// Whether `activity` says the connection waits for its client (it may be evicted), and
    /// the state it was told.
    parked: bool,
    published: u64,
    /// Set once evicted: from then on, a read while no request is in progress sees end of
    /// stream, as when closing, unless the client's next request had come (see `reprieve`).
    evicted: bool,
    /// Evicted with a request to serve first: the connection closes once this many requests
    /// have been answered.
    reprieve: Option<u32>,
    /// The waker last handed to `activity`, to skip its lock when the task's waker is the same.
    waker: Option<Waker>,
    /// Requests finished at the last flush.
    answered: u32,
    /// Set with `reprieve` or `replacement`: every message goes through
    /// [`Guarded::write_unusual`], which looks at them.
    special: bool,
    /// Whether all that was written has been flushed: the next write begins a message.
    flushed: bool,
    /// The service's answer in place of hyper's to a head it could not parse, and how much of
    /// it has been written.
    replacement: Option<Box<(Vec<u8>, usize)>>,
}

impl Guarded {
    pub(super) fn new(
        io: TcpStream,
        activity: Arc<Activity>,
        app: &Arc<App>,
        signals: Arc<Signals>,
    ) -> Guarded {
        let opened = activity.opened();
        let cfg = &app.cfg;
        Guarded {
            io,
            activity,
            header_timeout: cfg.header_timeout,
            head_deadline: Box::pin(tokio::time::sleep(cfg.header_timeout)),
            head: Some(HeadClock {
                after: 0,
                began: Some(opened),
                registered: false,
                received: false,
            }),
            idle_timeout: cfg.idle_timeout,
            idle_deadline: Box::pin(tokio::time::sleep_until(opened + cfg.idle_timeout)),
            idle_waker: None,
            write_timeout: cfg.write_timeout,
            write_deadline: Box::pin(tokio::time::sleep(cfg.write_timeout)),
            write_armed: false,
            app: Arc::clone(app),
            closing_notified: Box::pin(app.phases.closing_notify().notified_owned()),
            closing_waker: None,
            signals,
            parked: false,
            published: 0,
            evicted: false,
            reprieve: None,
            special: false,
            waker: None,
            answered: 0,
            flushed: true,
            replacement: None,
        }
    }

    /// Tells the admission the connection now waits for its client: for a request (idle, or
    /// new and silent) or for the rest of a head. The waker goes first, so an eviction that
    /// sees the state also finds the waker.
    fn park(&mut self, cx: &Context<'_>, started: u32) {
        if new_waker(&mut self.waker, cx) {
            self.activity.set_waker(self.waker.clone());
        }
        self.settle_head(started);
        let head = self
            .head
            .as_mut()
            .filter(|h| h.received)
            .map(|h| *h.began.get_or_insert_with(Instant::now));
        let kind = if head.is_some() {
            Wait::Head
        } else {
            Wait::Idle
        };
        let state = wait_state(started, kind);
        if self.parked && state == self.published {
            return; // already said, and an eviction since must stand
        }
        self.unpark();
        if self.evicted {
            return;
        }
        self.activity.publish(state, head);
        self.parked = true;
        self.published = state;
        self.signals.parked();
    }

    /// Forgets the head clock once the head it timed has arrived (a request began since).
    fn settle_head(&mut self, started: u32) {
        if self.head.as_ref().is_some_and(|h| h.after != started) {
            self.head = None;
        }
    }

    /// Bytes of a head after `started` requests have been read.
    fn head_bytes(&mut self, started: u32) {
        self.settle_head(started);
        match &mut self.head {
            None => {
                self.head = Some(HeadClock {
                    after: started,
                    began: None,
                    registered: false,
                    received: true,
                })
            }
            Some(h) => h.received = true,
        }
    }

    /// Evicted, the connection serves its requests up to the `until`th first, the last
    /// answered with `Connection: close`, and tells the admission, which evicts another.
    fn reprieve_until(&mut self, until: u32) {
        self.reprieve = Some(until);
        self.special = true;
        self.signals.reprieved(Arc::as_ptr(&self.activity));
    }

    /// Takes the connection back from the admission before reading; notes if it was evicted.
    fn unpark(&mut self) {
        if self.parked {
            self.parked = false;
            self.evicted |= self.activity.take_back();
        }
    }

    /// Called when a read found nothing and no request is in progress: about to wait for a
    /// request, so the closing wake-up must reach this task. Whether closing has begun.
    fn closing_notified(&mut self, cx: &mut Context<'_>) -> bool {
        // Registered with this waker already, closing since would have woken the task.
        new_waker(&mut self.closing_waker, cx) && self.closing_notified.as_mut().poll(cx).is_ready()
    }

    /// Called when a read found nothing: whether the connection has been idle (no request in
    /// progress, no head begun) for `idle_timeout`. Otherwise the timer is left registered to
    /// wake this task when it could have been; a request or head in progress (`active`)
    /// pushes that a whole `idle_timeout` on.
    fn idle_expired(&mut self, cx: &mut Context<'_>, active: bool) -> bool {
        if !new_waker(&mut self.idle_waker, cx) && !self.idle_deadline.is_elapsed() {
            // Registered with this waker, it wakes the task when it fires; polled before that,
            // on the read that finds nothing after every answer, it only says it has not.
            return false;
        }
        while self.idle_deadline.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let due = if active {
                now + self.idle_timeout
            } else {
                self.activity.idle_since() + self.idle_timeout
            };
            if due <= now {
                return true;
            }
            self.idle_deadline.as_mut().reset(due);
        }
        false
    }

    /// Called when a write could not progress: fails once it has been stuck too long.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.write_armed {
            self.write_armed = true;
            self.write_deadline
                .as_mut()
                .reset(Instant::now() + self.write_timeout);
        }
        match self.write_deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the answer in time",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Maps a write poll result through the stall guard.
    fn guard_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.write_stalled(cx).map(Err),
            ready => {
                self.write_armed = false;
                ready
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let (started, busy) = this.activity.progress();
        if !busy && this.app.phases.closing() {
            return Poll::Ready(Ok(())); // end of stream: no request in progress, closing
        }
        this.unpark();
        if this.evicted {
            // Closed to make room for another: at once, unless a request has begun or come.
            match this.reprieve {
                None if busy => this.reprieve_until(started),
                None => {
                    let before = buf.filled().len();
                    return match Pin::new(&mut this.io).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) if buf.filled().len() > before => {
                            this.reprieve_until(started + 1);
                            this.head_bytes(started);
                            Poll::Ready(Ok(()))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        // End of stream: nothing came, and a request sent from now on finds
                        // the connection closed before the service read any of it.
                        _ => Poll::Ready(Ok(())),
                    };
                }
                Some(until) if !busy && started >= until => return Poll::Ready(Ok(())),
                Some(_) => {}
            }
        }
        this.settle_head(started);
        if this.head.as_ref().is_some_and(|h| h.registered)
            && this.head_deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(head_timed_out()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if read.is_pending() {
            if !busy && this.closing_notified(cx) {
                return Poll::Ready(Ok(()));
            }
            if this.idle_expired(cx, busy || this.head.is_some()) {
                return Poll::Ready(Ok(())); // end of stream: idle too long
            }
            if let Some(h) = this.head.as_mut().filter(|h| !h.registered) {
                // Waiting for the rest of a head: now the clock must be able to wake us.
                h.registered = true;
                let began = *h.began.get_or_insert_with(Instant::now);
                this.head_deadline
                    .as_mut()
                    .reset(began + this.header_timeout);
                if this.head_deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(head_timed_out()));
                }
            }
            // Waiting for the client alone (no answer stuck in a write): it may be evicted.
            if !busy && !this.write_armed {
                this.park(cx, started);
            }
            return Poll::Pending;
        }
        ready!(read)?;
        if !busy && buf.filled().len() > before {
            this.head_bytes(started);
        }
        Poll::Ready(Ok(()))
    }
}

impl Guarded {
    /// Called when a message begins after everything written so far was flushed: whether
    /// it may be unusual (see [`Guarded::write_unusual`]). An answer of the service's begins
    /// after its request finished, so after more requests finished than had at the flush.
    #[inline]
    fn may_be_unusual(&self) -> bool {
        self.special || self.activity.finished() == self.answered
    }

    /// A message that may not be an ordinary answer going out, from `bufs`: hyper's own answer
    /// to a head it could not parse (no request finished since the last flush, and none is in
    /// progress, which would make it an interim 100 Continue) is replaced by the service's;
    /// the answer after which a reprieved connection closes gets `Connection: close`. Either
    /// goes out from `replacement`, and `bufs` are reported written.
    #[cold]
    #[inline(never)]
    fn write_unusual(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.replacement.is_some() {
            ready!(self.poll_replacement(cx))?;
        }
        let (started, busy) = self.activity.progress();
        let finished = started - u32::from(busy);
        let head = bufs.iter().find(|b| !b.is_empty());
        let answer = match head {
            Some(_) if finished != self.answered => self
                .reprieve
                .filter(|&until| finished >= until)
                .map(|_| closing(bufs)),
            Some(head) if !busy => {
                // Asked of the socket here rather than kept: this is rare, and every field of
                // the connection is paid for by every connection.
                let peer = self.io.peer_addr().unwrap_or(SocketAddr::from(([0; 4], 0)));
                Some(crate::http::unparsed_answer(&self.app, head, peer))
            }
            _ => None,
        };
        if let Some(answer) = answer {
            self.replacement = Some(Box::new((answer, 0)));
            self.special = true;
            // Sent as far as the socket takes it now; the rest at the flush that follows.
            if let Poll::Ready(Err(e)) = self.poll_replacement(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard_write(cx, r)
    }

    /// Writes what is left of the replacement answer, if any.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(pending) = &mut self.replacement {
            let (bytes, done) = &mut **pending;
            if *done == bytes.len() {
                self.replacement = None;
                break;
            }
            let r = Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]);
            match self.guard_write(cx, r) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    if let Some(pending) = &mut self.replacement {
                        pending.1 += n;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The answer in `bufs` (hyper's head, then the body) with its head saying
/// `Connection: close`: added, or in place of hyper's `keep-alive` (for an HTTP/1.0 client).
fn closing(bufs: &[io::IoSlice<'_>]) -> Vec<u8> {
    let mut out: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return out;
    };
    let head = &out[..end + 2];
    match head.windows(14).position(|w| w == b"\r\nconnection: ") {
        Some(at) => {
            let value = at + 14;
            if out[value..].starts_with(b"keep-alive") {
                out.splice(value..value + 10, *b"close");
            }
        }
        None => {
            out.splice(end + 2..end + 2, *b"connection: close\r\n");
        }
    }
    out
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if std::mem::replace(&mut self.flushed, false) && self.may_be_unusual() {
            return self.write_unusual(cx, &[io::IoSlice::new(buf)]);
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if std::mem::replace(&mut self.flushed, false) && self.may_be_unusual() {
            return self.write_unusual(cx, bufs);
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.replacement.is_some() {
            ready!(self.poll_replacement(cx))?;
        }
        let r = Pin::new(&mut self.io).poll_flush(cx);
        let r = self.guard_write(cx, r);
        if let Poll::Ready(Ok(())) = r {
            // Everything written is out: the next write begins a message.
            self.flushed = true;
            let (started, busy) = self.activity.progress();
            self.answered = started - u32::from(busy);
            // hyper flushes after an answer, and need not read again before the next request
            // arrives: the connection may start waiting for its client here.
            if !busy {
                self.park(cx, started);
            }
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.replacement.is_some() {
            ready!(self.poll_replacement(cx))?;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reprieved connection's last answer says `Connection: close`: added to the head, or in
    /// place of `keep-alive`; a head that says `close` already, or a body that mentions it,
    /// is left alone.
    #[test]
    fn the_last_answer_says_close() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let close = |head: &[u8], body: &[u8]| {
            let out = closing(&[io::IoSlice::new(head), io::IoSlice::new(body)]);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            close(head, b"{}"),
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
        );
        let ka = b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(
            close(ka, b"{}"),
            "HTTP/1.0 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"
        );
        let closed = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(close(closed, b"{}"), String::from_utf8_lossy(closed) + "{}");
        let body = b"\r\nconnection: keep-alive\r\n";
        assert!(close(head, body).ends_with("\r\n\r\n\r\nconnection: keep-alive\r\n"));
    }
}
