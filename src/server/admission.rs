//! Admission at the connection cap: who gets a slot when all `max_connections` are taken.
//!
//! A slot is a permit of a semaphore, taken before a connection is accepted, as before. When
//! none is free, a connection that only waits for its client is worth less than a new client,
//! so the accept loop accepts anyway and evicts one to make room:
//!
//! 1. an idle connection, the longest idle first: kept alive after a request, or new and
//!    silent. Only once idle for [`RECENT`]: sooner, it is between two requests of a working
//!    client (or about to send its first), and closing it would likely race with that request;
//! 2. else a connection part-way through a request head, the oldest first: slowloris, or a
//!    client so slow it would hit the header timeout anyway. Honest clients send a head in one
//!    go, and the newest heads are the last to go.
//!
//! A connection with a request in progress (head complete, handler running, answer being
//! written) is never chosen. If no connection can be evicted, the loop stops accepting and
//! new clients wait in the listen backlog, as without eviction; it looks again when a slot
//! frees, when a connection starts waiting for a head, or when an idle one passes [`RECENT`].
//!
//! An evicted connection is closed by its own task at its next read, which sees end of
//! stream: an idle one is closed between requests (a clean close, as at the idle timeout),
//! and a connection that claimed its socket for a request first is left alone (see
//! `conn::Activity::evict`). The loop then takes the victim's slot as it is released, before
//! accepting again: the service holds at most one connection beyond the cap, the one waiting
//! for that slot, so the cap still bounds descriptors and memory. A flood of new connections
//! at the cap turns over the evictable ones, newest kept, one eviction per accepted
//! connection; clients doing work keep their slots.
//!
//! This is eviction rather than timeouts scaled by load (Envoy's overload manager) or a queue
//! (nginx, HAProxy): scaled timeouts still make a new client wait for some timeout to run out
//! and close connections that would have stayed within it, and a queue keeps the slots with
//! whoever holds them. Eviction needs no timer and touches nothing until the cap is reached;
//! the timeouts stay as configured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::conn::{Activity, Wait};
use crate::app::App;

/// A kept-alive connection that finished a request less than this ago is not evicted: it is
/// between two requests of a client that is working, not parked.
pub(super) const RECENT: Duration = Duration::from_secs(2);

/// While the cap is reached, the log gets one summary line per this period.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The slots, the connections holding them, and what the loop needs to choose a victim.
pub(super) struct Admission {
    app: Arc<App>,
    permits: Arc<Semaphore>,
    held: Mutex<Held>,
    /// Set while the loop waits for an evictable connection; a head then wakes it.
    wanted: AtomicBool,
    head_waiting: Notify,
    /// Wakes the summary writer when the cap is reached.
    reached: Notify,
}

/// The connections holding slots, indexed by their [`Ticket`].
#[derive(Default)]
struct Held {
    conns: Vec<Option<Arc<Activity>>>,
    free: Vec<usize>,
    open: usize,
}

/// A connection's slot: released, and the connection forgotten, when the connection ends.
pub(super) struct Ticket {
    admission: Arc<Admission>,
    index: usize,
    _permit: OwnedSemaphorePermit,
}

/// The connection to evict, as seen by a scan.
struct Victim {
    conn: Arc<Activity>,
    kind: Wait,
    state: u64,
}

impl Admission {
    pub(super) fn new(app: Arc<App>) -> Admission {
        let cap = app.cfg.max_connections;
        Admission {
            app,
            permits: Arc::new(Semaphore::new(cap)),
            held: Mutex::new(Held::default()),
            wanted: AtomicBool::new(false),
            head_waiting: Notify::new(),
            reached: Notify::new(),
        }
    }

    /// Connections holding a slot.
    pub(super) fn open(&self) -> usize {
        self.held().open
    }

    /// Waits until a new connection could be admitted: a slot is free, or a connection can be
    /// evicted. Until then, new clients wait in the listen backlog.
    pub(super) async fn ready(&self) {
        loop {
            if self.permits.available_permits() > 0 {
                return;
            }
            let next = match self.scan() {
                Ok(_) => return,
                Err(next) => next,
            };
            self.wait(next).await;
        }
    }

    /// A slot for `conn`, just accepted: a free one, or the one of a connection evicted for it.
    pub(super) async fn admit(self: &Arc<Self>, conn: Arc<Activity>) -> Ticket {
        let permit = loop {
            if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
                break p;
            }
            match self.scan() {
                Ok(v) => {
                    if v.conn.evict(v.state) {
                        let counter = match v.kind {
                            Wait::Idle => &self.app.cap.evicted_idle,
                            _ => &self.app.cap.evicted_head,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        // The victim releases its slot as soon as its task runs, and only
                        // this loop takes slots: the next one released is this connection's.
                        break (Arc::clone(&self.permits).acquire_owned().await)
                            .expect("the slot semaphore is never closed");
                    }
                }
                Err(next) => self.wait(next).await,
            }
        };
        let mut held = self.held();
        let index = match held.free.pop() {
            Some(i) => i,
            None => {
                held.conns.push(None);
                held.conns.len() - 1
            }
        };
        held.conns[index] = Some(conn);
        held.open += 1;
        if held.open == self.app.cfg.max_connections {
            self.app.cap.reached(std::time::Instant::now());
            self.reached.notify_one();
        }
        Ticket {
            admission: Arc::clone(self),
            index,
            _permit: permit,
        }
    }

    /// Called by a connection that starts waiting for a head: if the loop waits for a
    /// connection it can evict, this is one.
    pub(super) fn head_waiting(&self) {
        if self.wanted.load(Ordering::Relaxed) {
            self.head_waiting.notify_one();
        }
    }

    /// The connection to evict, or, if there is none, when an idle one will become evictable.
    fn scan(&self) -> Result<Victim, Option<Instant>> {
        let now = Instant::now();
        let held = self.held();
        let mut idle: Option<(Instant, Victim)> = None;
        let mut head: Option<(Instant, Victim)> = None;
        let mut next: Option<Instant> = None;
        for conn in held.conns.iter().flatten() {
            let Some((kind, since, state)) = conn.waiting() else {
                continue;
            };
            let best = match kind {
                Wait::Idle if now.saturating_duration_since(since) < RECENT => {
                    next = Some(next.map_or(since + RECENT, |n| n.min(since + RECENT)));
                    continue;
                }
                Wait::Idle => &mut idle,
                _ => &mut head,
            };
            if best.as_ref().is_none_or(|(t, _)| since < *t) {
                let conn = Arc::clone(conn);
                *best = Some((since, Victim { conn, kind, state }));
            }
        }
        idle.or(head).map(|(_, v)| v).ok_or(next)
    }

    /// Waits for a slot to be released, a connection to start waiting for a head, or `next`
    /// (else [`RECENT`]: a connection that goes idle now is evictable no sooner).
    async fn wait(&self, next: Option<Instant>) {
        self.wanted.store(true, Ordering::Relaxed);
        let until = next.unwrap_or_else(|| Instant::now() + RECENT);
        tokio::select! {
            _ = self.permits.acquire() => {}
            () = self.head_waiting.notified() => {}
            () = tokio::time::sleep_until(until) => {}
        }
        self.wanted.store(false, Ordering::Relaxed);
    }

    /// Writes one summary line per [`SUMMARY_EVERY`] while the cap is reached: the time spent
    /// at the cap and the evictions of that period. Runs until dropped.
    pub(super) async fn summarize(&self) {
        let cap = &self.app.cap;
        loop {
            self.reached.notified().await;
            let mut last = cap.snapshot(std::time::Instant::now());
            loop {
                tokio::time::sleep(SUMMARY_EVERY).await;
                let now = cap.snapshot(std::time::Instant::now());
                let at_cap = now.at_cap - last.at_cap;
                if at_cap.is_zero() && !now.reached {
                    break; // a stale wake-up: the cap was left before this period began
                }
                log::warn!(
                    max_connections = self.app.cfg.max_connections as u64,
                    open = self.open() as u64,
                    period_ms = SUMMARY_EVERY.as_millis() as u64,
                    at_cap_ms = at_cap.as_millis() as u64,
                    evicted_idle = now.evicted_idle - last.evicted_idle,
                    evicted_head = now.evicted_head - last.evicted_head;
                    "connection cap reached"
                );
                if !now.reached {
                    break;
                }
                last = now;
            }
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // The lock guards plain bookkeeping that no panic leaves half done.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let admission = &self.admission;
        let mut held = admission.held();
        if held.open == admission.app.cfg.max_connections {
            admission.app.cap.left(std::time::Instant::now());
        }
        held.open -= 1;
        held.conns[self.index] = None;
        held.free.push(self.index);
        // The permit is released after this, with the entry already gone.
    }
}
