//! HTTP: the one router and a file per handler. [`handle`] wraps every request in the same
//! envelope (request id, head checks, client address, the access record, the headers every
//! answer carries; see [`envelope`]) and routes it with one `match` over method and path.
//! Adding a route is one arm here and one new file.

use std::net::SocketAddr;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response};

use crate::app::App;

mod body;
mod envelope;
mod error;
mod events;
mod health;
mod info;

use body::Body;
use envelope::Envelope;
use error::ApiError;

/// The routes, as `GET /` lists them: method(s), path, purpose. Keep in step with [`route`].
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

/// Answers one request, and gives the instant its answer was ready (the access record's, and
/// where the connection's idle time starts).
pub(crate) async fn handle(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> (Response<Body>, Instant) {
    let start = Instant::now();
    // The head stays here, for the envelope; only the body goes to a handler that reads it.
    let (mut head, body) = req.into_parts();
    let mut generated = None;
    let env = Envelope::open(app, &head, peer, start, &mut generated);
    let result = match env.check_head(app, &head) {
        Err(e) => Err(e),
        Ok(()) => route(app, &head, body, &env).await,
    };
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    let end = Instant::now();
    let request_id = env.record(app, start, end, &head, &resp);
    envelope::finish(app, &mut head, &mut resp, request_id);
    (resp, end)
}

/// The router. HEAD is served wherever GET is; hyper drops the body of HEAD answers.
async fn route(
    app: &App,
    head: &Parts,
    body: Incoming,
    env: &Envelope<'_>,
) -> Result<Response<Body>, ApiError> {
    match (&head.method, head.uri.path()) {
        (&Method::GET | &Method::HEAD, "/") => Ok(info::get(app)),
        (&Method::GET | &Method::HEAD, "/health") => Ok(health::get(app)),
        (&Method::POST, "/events") => events::post(app, head, body, env).await,
        (_, "/" | "/health") => Err(ApiError::MethodNotAllowed("GET, HEAD")),
        (_, "/events") => Err(ApiError::MethodNotAllowed("POST")),
        _ => Err(ApiError::NotFound),
    }
}
