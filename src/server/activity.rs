//! What one connection's slot says about it, shared between the connection's own task (which
//! writes it: `conn::Guarded` and the service around the router) and the admission (which
//! reads it to choose a connection to evict at the cap, and marks the one it chose).
//!
//! [`Activity`] counts the requests begun and finished, and, while the connection waits for
//! its client, what it waits for ([`Wait`]) together with the count of requests begun, in one
//! word: a connection that served a request in between never matches a stale reading, so an
//! eviction can only close a connection still waiting as the admission saw it.
//! [`Signals`] wakes the admission when a connection starts waiting for its client (one it may
//! evict, if it found none) and when an evicted connection has a request to serve before it
//! closes (so another must make room).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Requests a connection has begun (hyper parsed their head) and finished answering, and
/// whether it waits for its client.
pub(super) struct Activity {
    started: AtomicU32,
    finished: AtomicU32,
    opened: Instant,
    /// When the last request finished, in milliseconds after `opened`.
    last_end_ms: AtomicU64,
    /// A [`Wait`] kind in the low bits, the count of started requests above them.
    state: AtomicU64,
    /// When the head it waits for began, in milliseconds after `opened`.
    head_began_ms: AtomicU64,
    /// The connection task's waker, so that an eviction can wake it.
    waker: Mutex<Option<Waker>>,
}

/// What a connection is waiting for, as the admission sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// Nothing to evict: a request in progress, an answer being written, or not yet polled.
    Busy = 0,
    /// A request: a kept-alive connection between requests, or a new one that sent nothing.
    Idle = 1,
    /// The rest of a request head.
    Head = 2,
    /// Closed by the admission: once no request is in progress, reads see end of stream.
    Evicted = 3,
}

const WAIT_BITS: u64 = 0b11;

fn wait_kind(state: u64) -> Wait {
    match state & WAIT_BITS {
        0 => Wait::Busy,
        1 => Wait::Idle,
        2 => Wait::Head,
        _ => Wait::Evicted,
    }
}

/// The state word of a connection that waits as `kind` after `started` requests.
pub(super) fn wait_state(started: u32, kind: Wait) -> u64 {
    (u64::from(started) << 2) | kind as u64
}

/// A connection waiting for its client, as [`Activity::waiting`] found it.
pub(super) struct Waiting {
    pub(super) kind: Wait,
    /// Since when: the end of the last answer (or the connection's opening), or the head's
    /// first byte.
    pub(super) since: Instant,
    /// Whether it has served a request: if not, an idle connection has sent nothing yet.
    pub(super) served: bool,
    /// The state word it was found in, for [`Activity::evict`].
    pub(super) state: u64,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            started: AtomicU32::new(0),
            finished: AtomicU32::new(0),
            opened: Instant::now(),
            last_end_ms: AtomicU64::new(0),
            state: AtomicU64::new(Wait::Busy as u64),
            head_began_ms: AtomicU64::new(0),
            waker: Mutex::new(None),
        }
    }

    /// When the connection was accepted.
    pub(super) fn opened(&self) -> Instant {
        self.opened
    }

    /// Counts a request as begun: from here until it finishes, the connection is busy.
    pub(super) fn begin(&self) {
        self.started.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a request as finished, its answer ready at `end` (the instant its access record
    /// read); the connection's idle time starts there.
    pub(super) fn finish(&self, end: std::time::Instant) {
        let end = Instant::from_std(end);
        let ms = end.saturating_duration_since(self.opened).as_millis() as u64;
        self.last_end_ms.store(ms, Ordering::Release);
        self.finished.fetch_add(1, Ordering::AcqRel);
    }

    /// The requests finished so far.
    pub(super) fn finished(&self) -> u32 {
        self.finished.load(Ordering::Acquire)
    }

    /// The requests begun so far, and whether one of them is still in progress.
    pub(super) fn progress(&self) -> (u32, bool) {
        let started = self.started.load(Ordering::Acquire);
        (started, started != self.finished.load(Ordering::Acquire))
    }

    /// When the connection last became idle: the end of its last request, or its opening.
    pub(super) fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_end_ms.load(Ordering::Acquire))
    }

    /// The connection's side: keeps its task's waker for an eviction to wake.
    pub(super) fn set_waker(&self, waker: Option<Waker>) {
        *crate::lock(&self.waker) = waker;
    }

    /// The connection's side: it now waits as `state` says (see [`wait_state`]), for the rest
    /// of a head begun at `head_began` if it waits for one.
    pub(super) fn publish(&self, state: u64, head_began: Option<Instant>) {
        if let Some(began) = head_began {
            let ms = began.saturating_duration_since(self.opened).as_millis() as u64;
            self.head_began_ms.store(ms, Ordering::Release);
        }
        self.state.store(state, Ordering::Release);
    }

    /// The connection's side: it no longer waits (it is about to read). Whether the admission
    /// evicted it meanwhile.
    pub(super) fn take_back(&self) -> bool {
        let was = self.state.swap(Wait::Busy as u64, Ordering::AcqRel);
        wait_kind(was) == Wait::Evicted
    }

    /// The admission's side: what the connection waits for now, if it waits for its client.
    pub(super) fn waiting(&self) -> Option<Waiting> {
        let state = self.state.load(Ordering::Acquire);
        let started = u64::from(self.started.load(Ordering::Acquire));
        if state >> 2 != started {
            // A request began from what hyper had already read, without a read since.
            return None;
        }
        let since = match wait_kind(state) {
            Wait::Idle => self.idle_since(),
            Wait::Head => {
                self.opened + Duration::from_millis(self.head_began_ms.load(Ordering::Acquire))
            }
            Wait::Busy | Wait::Evicted => return None,
        };
        Some(Waiting {
            kind: wait_kind(state),
            since,
            served: started > 0,
            state,
        })
    }

    /// The admission's side: marks a connection that has ended, so it is never evicted.
    pub(super) fn retire(&self) {
        self.state.store(Wait::Busy as u64, Ordering::Release);
    }

    /// The admission's side: closes the connection if it still waits as `seen` (from
    /// [`Waiting::state`]) says: its next read with no request in progress sees end of
    /// stream. False if it has moved on (it read since).
    pub(super) fn evict(&self, seen: u64) -> bool {
        let evicted = (seen & !WAIT_BITS) | Wait::Evicted as u64;
        if self
            .state
            .compare_exchange(seen, evicted, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if let Some(w) = &*crate::lock(&self.waker) {
            w.wake_by_ref();
        }
        true
    }
}

/// What connections tell the admission: while it waits for a connection it may evict, that
/// one starts waiting for its client; and that an evicted connection serves a request before
/// it closes, so its slot is not about to be free. One notification serves both (the
/// admission never waits for both at once, and takes a wake-up meant for the other as a
/// reason to look again), and one word holds whether it waits for a connection to evict
/// (the low bit) and which connection was last reprieved (the rest: its [`Activity`]'s
/// address, which is aligned): kept here, so that no connection carries state for it.
#[derive(Default)]
pub(super) struct Signals {
    word: AtomicUsize,
    notify: Notify,
}

const WANTED: usize = 1;

impl Signals {
    /// The connection's side: it waits for its client now.
    pub(super) fn parked(&self) {
        if self.word.load(Ordering::Relaxed) & WANTED != 0 {
            self.notify.notify_one();
        }
    }

    /// The connection's side: evicted, `who` has a request to serve first.
    pub(super) fn reprieved(&self, who: *const Activity) {
        let who = who as usize;
        // Keeps the wanted bit as it is.
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(w & WANTED | who)
            });
        self.notify.notify_one();
    }

    /// The admission's side: whether it waits for a connection it may evict.
    pub(super) fn want(&self, wanted: bool) {
        if wanted {
            self.word.fetch_or(WANTED, Ordering::Relaxed);
        } else {
            self.word.fetch_and(!WANTED, Ordering::Relaxed);
        }
    }

    /// The admission's side, before an eviction: no reprieve is pending.
    pub(super) fn clear_reprieve(&self) {
        self.word.fetch_and(WANTED, Ordering::AcqRel);
    }

    /// The admission's side: whether `who` was reprieved since [`Signals::clear_reprieve`].
    pub(super) fn was_reprieved(&self, who: *const Activity) -> bool {
        self.word.load(Ordering::Acquire) & !WANTED == who as usize
    }

    /// The admission's side: resolves at the next [`Signals::parked`] (while wanted) or
    /// [`Signals::reprieved`], or at once if one came since the last.
    pub(super) fn next(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}
