//! Shutdown: how it is asked for, and the one state that says how far it has gone.
//!
//! It is asked for through a [`Trigger`] (the signal handlers in `signals`, or a test): the
//! first request starts it, a second forces it. It then runs in two phases:
//!
//! 1. **Draining**, for `DRAIN_DELAY`: the listener stays open, because an orchestrator takes
//!    a replica out of its load balancers only as it signals it (Kubernetes) or shortly before
//!    (Swarm's DNS), and the balancers keep sending new connections for a few seconds more.
//!    `/health` answers 503 (readiness follows it) and every answer closes its connection, so
//!    keep-alive clients reconnect to a replica that is not going away.
//! 2. **Closing**, for at most `GRACE`: the listener is closed, connections without a request
//!    in progress close at once, and requests in progress finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::{Notify, watch};

/// Counts shutdown requests: the server starts on the first and gives up on the second.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<u32>,
}

/// The sending side of [`Shutdown`]; tests hold one instead of sending signals.
pub struct Trigger {
    tx: watch::Sender<u32>,
}

/// A connected pair.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(0);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    /// Requests shutdown (again, to force it).
    pub fn request(&self) {
        self.tx.send_modify(|n| *n += 1);
    }
}

impl Shutdown {
    /// Resolves on the first request.
    pub async fn requested(&mut self) {
        self.at_least(1).await;
    }

    /// Resolves on the second request.
    pub async fn forced(&mut self) {
        self.at_least(2).await;
    }

    async fn at_least(&mut self, n: u32) {
        // A dropped trigger can never fire: wait forever rather than shut down by accident.
        if self.rx.wait_for(|count| *count >= n).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The phases after serving (0, the state's default), in the order they come.
const DRAINING: u8 = 1;
const CLOSING: u8 = 2;

/// How far a shutdown has gone, read by every request and connection, and the wake-up that
/// connections waiting for a request hear when closing begins.
#[derive(Default)]
pub(crate) struct Phases {
    phase: AtomicU8,
    closing: Arc<Notify>,
}

impl Phases {
    /// Whether shutdown has begun (draining or closing). Relaxed: an answer racing the
    /// request may go either way, and nothing else is published through it.
    pub(crate) fn draining(&self) -> bool {
        self.phase.load(Ordering::Relaxed) >= DRAINING
    }

    /// Whether the listener has closed and idle connections must close too. Acquire, paired
    /// with [`Phases::start_closing`], for connections deciding whether to wait for a request.
    pub(crate) fn closing(&self) -> bool {
        self.phase.load(Ordering::Acquire) == CLOSING
    }

    pub(crate) fn start_draining(&self) {
        self.phase.fetch_max(DRAINING, Ordering::AcqRel);
    }

    /// Enters the closing phase and wakes every connection waiting for a request.
    pub(crate) fn start_closing(&self) {
        self.phase.store(CLOSING, Ordering::Release);
        self.closing.notify_waiters();
    }

    /// The notification [`Phases::start_closing`] sends, for a connection to register with
    /// before it first checks [`Phases::closing`].
    pub(crate) fn closing_notify(&self) -> Arc<Notify> {
        Arc::clone(&self.closing)
    }
}
