//! HTTP: the one router and a file per handler. [`handle`] routes every request with one
//! `match` over method and path, and wraps it in the same envelope (request id, head checks,
//! client address, the access record, the headers every answer carries; see `envelope`).
//! Adding a route is one arm here, its line in [`ROUTES`], and one new file (and, for its own
//! series in the metrics, its name in `metrics::ROUTES`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response};

use crate::app::App;

mod body;
mod envelope;
mod error;
mod events;
mod exposition;
mod framing;
mod health;
mod info;
mod metrics;
mod unparsed;

pub(crate) use unparsed::answer as unparsed_answer;

pub(crate) use body::Body;
use envelope::Envelope;
use error::ApiError;
pub(crate) use metrics::metrics;

/// The routes, as `GET /` lists them: method(s), path, purpose. Keep in step with [`handle`].
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET, HEAD", "/", "service information"),
    (
        "GET, HEAD",
        "/health",
        "health probe: 200 {\"status\":\"ok\"} or 503",
    ),
    (
        "POST",
        "/events",
        "record a JSON event {\"type\": ..., \"data\": ...}; 201 once it is on disk",
    ),
];

/// An answer: ready, or to come (`POST /events`, which waits for its body and the disk). Both
/// give the instant the answer was ready (the access record's, and where the connection's
/// idle time starts).
pub(crate) enum Answer<F> {
    Now(Response<Body>, Instant),
    Later(F),
}

/// The router: answers one request, in the envelope. The routes that need not wait are
/// answered before this returns rather than in a future: hyper moves the future it is given
/// into its connection state, and a future that holds the request makes every request pay
/// for copying it (docs/performance.md). HEAD is served wherever GET is;
/// hyper drops the body of HEAD answers.
pub(crate) fn handle(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Answer<impl Future<Output = (Response<Body>, Instant)> + Send + use<>> {
    let start = Instant::now();
    let (head, body) = req.into_parts();
    let handler: Handler = match (&head.method, head.uri.path()) {
        (&Method::GET | &Method::HEAD, "/") => |app| Ok(info::get(app)),
        (&Method::GET | &Method::HEAD, "/health") => |app| Ok(health::get(app)),
        (&Method::POST, "/events") => {
            return Answer::Later(post_event(Arc::clone(app), head, body, peer, start));
        }
        (_, "/" | "/health") => |_| Err(ApiError::MethodNotAllowed("GET, HEAD")),
        (_, "/events") => |_| Err(ApiError::MethodNotAllowed("POST")),
        _ => |_| Err(ApiError::NotFound),
    };
    // A body these routes do not read must still be framed unambiguously: hyper skips it to
    // find the next request.
    let framed = !hyper::body::Body::is_end_stream(&body);
    now(app, head, framed, peer, start, handler)
}

/// A route that answers at once.
type Handler = fn(&App) -> Result<Response<Body>, ApiError>;

/// Answers with `handler`, in the envelope; `framed`: the request has a body.
fn now<F>(
    app: &App,
    mut head: Parts,
    framed: bool,
    peer: SocketAddr,
    start: Instant,
    handler: Handler,
) -> Answer<F> {
    let mut generated = None;
    let env = Envelope::open(app, &head, peer, start, &mut generated);
    let result = env.check_head(app, &head).and_then(|()| {
        if framed {
            framing::BodyFields::of(&head.headers).check_framing(&head.headers)?;
        }
        handler(app)
    });
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    let end = Instant::now();
    let request_id = env.record(app, start, end, &head, &resp);
    envelope::finish(app, &mut head, &mut resp, request_id);
    Answer::Now(resp, end)
}

/// `POST /events`, in the envelope.
async fn post_event(
    app: Arc<App>,
    mut head: Parts,
    body: Incoming,
    peer: SocketAddr,
    start: Instant,
) -> (Response<Body>, Instant) {
    let mut generated = None;
    let env = Envelope::open(&app, &head, peer, start, &mut generated);
    let result = match env.check_head(&app, &head) {
        Err(e) => Err(e),
        Ok(()) => events::post(&app, &head, body, &env).await,
    };
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    let end = Instant::now();
    let request_id = env.record(&app, start, end, &head, &resp);
    envelope::finish(&app, &mut head, &mut resp, request_id);
    (resp, end)
}
