//! The metrics listener: `GET /metrics` on a port of its own, for Prometheus. It shares
//! nothing with the API's accept loop on purpose: it has its own small cap and no eviction,
//! so a scraper never takes an API slot and a full API never hides its own numbers. Its
//! sockets are guarded as the API's are (head, idle and write timeouts, closing at
//! shutdown), and a connection lives at most [`CONNECTION_LIFETIME`], so the few slots
//! always come back.
//!
//! Its connections are of the API's socket and service types on purpose (see `service` in
//! the server module).

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::activity::{Activity, Signals};
use super::conn::Guarded;
use super::{Listener, accept};
use crate::app::App;

/// Connections served at once: a Prometheus server or two, with room for a person's curl.
const MAX_CONNECTIONS: usize = 4;

/// Longest a metrics connection stays open. A scraper keeps its connection alive between
/// scrapes; closing it now and then costs it a reconnect, and bounds what a client that holds
/// a slot without scraping can take.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `GET /metrics` on `listener` until the runtime stops.
pub async fn serve_metrics(listener: TcpListener, app: Arc<App>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    // The socket keeps the head timeout (see `conn::Guarded`).
    http.header_read_timeout(None).keep_alive(true);
    // Never given to an admission: these connections are never evicted.
    let signals = Arc::new(Signals::default());
    loop {
        // Accept only with a free slot: beyond them, scrapers wait in the listen backlog.
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the metrics slots are never closed");
        let Some((stream, peer)) = accept(&listener, "metrics accept failed; pausing").await else {
            continue;
        };
        let activity = Arc::new(Activity::new());
        let io = Guarded::new(stream, Arc::clone(&activity), &app, Arc::clone(&signals));
        let service = super::service(Arc::clone(&app), activity, peer, Listener::Metrics);
        let conn = http.serve_connection(TokioIo::new(io), service);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}
