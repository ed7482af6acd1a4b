//! Signals. The service is PID 1 in a scratch container, where the kernel gives SIGTERM no
//! default action: unless handled, `docker stop` would wait out its timeout and SIGKILL.
//! SIGTERM and SIGINT request a shutdown (a second one forces it); SIGHUP asks the log sink
//! to reopen its file after an outside rotation.

use std::io;

use tokio::signal::unix::{SignalKind, signal};

use crate::logging::Sink;
use crate::shutdown::{self, Shutdown};

/// Installs the signal handlers (inside a runtime) and returns the shutdown they drive.
pub fn listen(sink: Sink) -> io::Result<Shutdown> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (trigger, shutdown) = shutdown::channel();
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
