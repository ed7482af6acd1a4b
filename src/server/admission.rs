//! Admission at the connection cap: who gets a slot when all `max_connections` are taken.
//!
//! A slot is a permit of a semaphore, held by a connection for its lifetime. The accept loop
//! accepts only when there is room: a free slot, or, at the cap, a connection it may evict.
//! A connection that only waits for its client is worth less than a new client, so one is
//! closed to make room, whatever it has waited for: any connection between requests or
//! part-way through a head may go, so that a new client never waits for a timeout while one
//! does. They are ranked by how likely their client is to be about to use them:
//!
//! 1. a parked connection, the longest idle first: kept alive after a request and idle for
//!    [`RECENT`], or new and silent for [`SILENT`];
//! 2. a slow head, the oldest first: part-way through a request head begun [`SLOW_HEAD`] ago
//!    or more (slowloris, or a client so slow it would hit the header timeout anyway);
//! 3. a working connection, the longest idle first: kept alive and idle for less than
//!    [`RECENT`], likely between two requests of a client that is working;
//! 4. a head begun less than [`SLOW_HEAD`] ago, the oldest first: likely an honest head
//!    still arriving.
//!
//! A new connection silent for less than [`SILENT`] is not evicted: its client sends its first
//! request as soon as it has connected, and may not have been scheduled yet. A connection with
//! a request in progress (head complete, handler running, answer being written) is never
//! chosen. If no connection can be evicted, the loop stops accepting and new clients wait in
//! the listen backlog; it looks again when a slot frees, when a connection starts waiting for
//! its client, or when a silent one becomes evictable.
//!
//! An evicted connection is closed by its own task, which first reads what its client sent
//! meanwhile. Nothing: it closes at once, a clean close between requests, as at the idle
//! timeout; a request its client sends from then on finds the connection closed before the
//! service read any of it, which is the race RFC 9112 section 9.5 describes, and which
//! clients resolve by sending the request again on a new connection. Something (or a request
//! already in progress): it serves that request, answers it with `Connection: close`, the
//! way HTTP/1.1 closes a connection without racing its client, and closes after it; so no
//! request the service has begun to read is lost. Such a reprieved connection tells the
//! admission, which evicts another.
//!
//! The loop takes the victim's slot as it is released before it accepts again, so the
//! service holds at most one connection beyond the cap (the one waiting for that slot, or, if
//! the victim found by `ready` moved on before a client arrived, for any slot): the cap still
//! bounds descriptors and memory. A flood of new connections at the cap turns over the
//! evictable connections, best kept, at one eviction per accepted connection, as fast as the
//! loop can go; what waits beyond that waits in the listen backlog, as before, and clients
//! doing work keep their slots throughout.
//!
//! This is eviction rather than timeouts scaled by load (Envoy's overload manager) or a queue
//! (HAProxy; nginx reuses idle connections, then refuses): scaled timeouts still make a new
//! client wait for some timeout to run out and close connections that would have stayed within
//! it, and a queue keeps the slots with whoever holds them. Eviction needs no timer and
//! touches nothing until the cap is reached; the timeouts stay as configured.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::activity::{Activity, Signals, Wait};
use crate::app::App;

/// A kept-alive connection that finished a request less than this ago is likely between two
/// requests of a client that is working, not parked: it goes after slow heads.
const RECENT: Duration = Duration::from_secs(2);

/// A new connection that has sent nothing is not evicted for this long: its client sends its
/// first request as soon as it has connected, and may not have been scheduled yet.
const SILENT: Duration = Duration::from_millis(100);

/// A head that has been arriving for less than this is likely an honest client's, split
/// across packets: it goes last.
const SLOW_HEAD: Duration = Duration::from_millis(100);

/// Victims are ranked this many at a time ([`Admission::victim`])...
const BATCH: usize = 32;

/// ... for at most this long, so that the order stays close to the present one.
const BATCH_FOR: Duration = Duration::from_millis(100);

/// While the cap is reached, the log gets one summary line per this period.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The slots, the connections holding them, and what the loop needs to choose a victim.
pub(super) struct Admission {
    app: Arc<App>,
    permits: Arc<Semaphore>,
    held: Mutex<Held>,
    /// Wakes the loop when a connection starts waiting for its client (while it waits for one
    /// to evict) and when a victim serves a request first.
    signals: Arc<Signals>,
    /// Wakes the summary writer when the cap is reached.
    reached: Notify,
}

/// The connections holding slots, indexed by their [`Ticket`].
#[derive(Default)]
struct Held {
    conns: Vec<Option<Arc<Activity>>>,
    free: Vec<usize>,
    open: usize,
    /// The best victims of the last scan, the best last, and when it was made.
    victims: Vec<Victim>,
    scanned: Option<Instant>,
}

/// A connection's slot: released, and the connection forgotten, when the connection ends.
pub(super) struct Ticket {
    admission: Arc<Admission>,
    index: usize,
    _permit: OwnedSemaphorePermit,
}

/// A connection to evict, as a scan found it.
pub(super) struct Victim {
    conn: Arc<Activity>,
    kind: Wait,
    rank: Rank,
    since: Instant,
    state: u64,
}

/// The order in which connections are evicted (see the module's doc), first first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Parked,
    SlowHead,
    Working,
    NewHead,
}

impl Admission {
    pub(super) fn new(app: Arc<App>) -> Admission {
        let cap = app.cfg.max_connections;
        Admission {
            app,
            permits: Arc::new(Semaphore::new(cap)),
            held: Mutex::new(Held::default()),
            signals: Arc::default(),
            reached: Notify::new(),
        }
    }

    /// Connections holding a slot.
    pub(super) fn open(&self) -> usize {
        self.held().open
    }

    /// Waits until a new connection could be admitted: a slot is free (`None`), or a
    /// connection can be evicted (to be passed to [`Admission::admit`]). Until then, new
    /// clients wait in the listen backlog.
    pub(super) async fn ready(&self) -> Option<Victim> {
        loop {
            if self.permits.available_permits() > 0 {
                return None;
            }
            match self.victim() {
                Ok(v) => return Some(v),
                Err(next) => self.wait(next).await,
            }
        }
    }

    /// A slot for `conn`, just accepted: a free one, or that of a connection evicted for it,
    /// `victim` first if it still waits as it did.
    pub(super) async fn admit(
        self: &Arc<Self>,
        conn: Arc<Activity>,
        mut victim: Option<Victim>,
    ) -> Ticket {
        let permit = 'take: loop {
            if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
                break p;
            }
            let v = match victim.take().map_or_else(|| self.victim(), Ok) {
                Ok(v) => v,
                Err(next) => {
                    self.wait(next).await;
                    continue;
                }
            };
            // Listening from before the eviction, so that the victim's reprieve is heard.
            self.signals.clear_reprieve();
            let reprieve = self.signals.next();
            tokio::pin!(reprieve);
            reprieve.as_mut().enable();
            if !v.conn.evict(v.state) {
                continue;
            }
            let counter = match v.kind {
                Wait::Idle => &self.app.cap.evicted_idle,
                _ => &self.app.cap.evicted_head,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            // The victim releases its slot as soon as its task runs, and only this loop takes
            // slots: the next one released is this connection's. Unless the victim serves a
            // request that came meanwhile first: then another is evicted.
            loop {
                tokio::select! {
                    p = Arc::clone(&self.permits).acquire_owned() => {
                        break 'take p.expect("the slot semaphore is never closed");
                    }
                    () = &mut reprieve => {
                        if self.signals.was_reprieved(Arc::as_ptr(&v.conn)) {
                            continue 'take;
                        }
                        reprieve.set(self.signals.next());
                        reprieve.as_mut().enable();
                    }
                }
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
        self.app.cap.open.store(held.open as u64, Ordering::Relaxed);
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

    /// What a connection tells the admission (see [`Signals`]).
    pub(super) fn signals(&self) -> Arc<Signals> {
        Arc::clone(&self.signals)
    }

    /// The best connection to evict, or, if there is none, when an idle one will become
    /// evictable. Victims are ranked [`BATCH`] at a time, so that a flood of new connections
    /// costs one pass over the held connections per batch, not per connection; a batch
    /// older than [`BATCH_FOR`] is ranked again. A victim that has moved on since is refused
    /// by `Activity::evict`.
    fn victim(&self) -> Result<Victim, Option<Instant>> {
        let now = Instant::now();
        let mut held = self.held();
        if held.scanned.is_none_or(|t| now >= t + BATCH_FOR) {
            held.victims.clear();
        }
        if let Some(v) = held.victims.pop() {
            return Ok(v);
        }
        held.scanned = Some(now);
        let next = held.scan(now);
        held.victims.pop().ok_or(next)
    }

    /// Waits for a slot to be released, a connection to start waiting for its client, or
    /// `next`, when a silent one becomes evictable (else [`SILENT`], to look again).
    async fn wait(&self, next: Option<Instant>) {
        self.signals.want(true);
        let until = next.unwrap_or_else(|| Instant::now() + SILENT);
        tokio::select! {
            _ = self.permits.acquire() => {}
            () = self.signals.next() => {}
            () = tokio::time::sleep_until(until) => {}
        }
        self.signals.want(false);
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
                    open = now.open,
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
        crate::lock(&self.held)
    }
}

impl Held {
    /// Ranks the connections that could be evicted now into `victims` (the best [`BATCH`],
    /// the best last; see [`Rank`]). Returns when a new, silent connection not yet evictable
    /// will be.
    fn scan(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut found = std::mem::take(&mut self.victims);
        found.clear();
        for conn in self.conns.iter().flatten() {
            let Some(w) = conn.waiting() else {
                continue;
            };
            let waited = now.saturating_duration_since(w.since);
            let rank = match w.kind {
                Wait::Idle if !w.served => {
                    if waited < SILENT {
                        let from = w.since + SILENT;
                        next = Some(next.map_or(from, |n| n.min(from)));
                        continue;
                    }
                    Rank::Parked
                }
                Wait::Idle if waited >= RECENT => Rank::Parked,
                Wait::Idle => Rank::Working,
                _ if waited >= SLOW_HEAD => Rank::SlowHead,
                _ => Rank::NewHead,
            };
            found.push(Victim {
                conn: Arc::clone(conn),
                kind: w.kind,
                rank,
                since: w.since,
                state: w.state,
            });
        }
        // Worst first, so that the best are popped from the end.
        found.sort_unstable_by_key(|v| std::cmp::Reverse((v.rank, v.since)));
        found.drain(..found.len().saturating_sub(BATCH));
        self.victims = found;
        next
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
        admission
            .app
            .cap
            .open
            .store(held.open as u64, Ordering::Relaxed);
        if let Some(conn) = held.conns[self.index].take() {
            conn.retire(); // no longer a victim, even for a batch that still holds it
        }
        held.free.push(self.index);
        // The permit is released after this, with the entry already gone.
    }
}
