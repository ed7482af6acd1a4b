//! The first phase of a shutdown, while the listener stays open. An orchestrator takes a
//! replica out of its load balancers only as it signals it (Kubernetes) or shortly before
//! (Swarm's DNS), and the balancers keep sending new connections for a few seconds more: a
//! listener closed at the signal would refuse them. So for `DRAIN_DELAY` the server keeps
//! accepting and serving, `/health` fails (readiness follows it), and every answer closes its
//! connection (keep-alive clients reconnect elsewhere). Then the listener closes and the
//! `GRACE` phase in [`super::run`] begins.

use crate::app::App;
use crate::shutdown::Shutdown;

/// Resolves when the listener should close: `DRAIN_DELAY` after the first shutdown request,
/// or at once on a second. From the first request on, `app` is draining.
pub(super) async fn listener_closes(app: &App, mut shutdown: Shutdown) {
    shutdown.requested().await;
    app.start_draining();
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
