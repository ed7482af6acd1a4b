//! Termination and rotation signals. The service is PID 1 in a scratch container, where the
//! kernel delivers no default action for SIGTERM: unless handled, `docker stop` would wait out
//! its timeout and SIGKILL. SIGTERM and SIGINT request a graceful shutdown (a second one forces
//! it); SIGHUP asks the log sink to reopen its file after rotation.

use std::io;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::logging::Sink;

/// Counts termination requests: the server drains on the first and gives up on the second.
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

/// Installs the signal handlers (inside a runtime) and returns the shutdown they drive.
pub fn listen(sink: Sink) -> io::Result<Shutdown> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    log::info!(signal = "SIGHUP"; "reopening the log file");
                    if sink.reopen().await.is_ok() {
                        log::info!("log file reopened");
                    }
                    continue;
                }
            };
            log::info!(signal = name; "shutdown requested");
            trigger.request();
        }
    });
    Ok(shutdown)
}
