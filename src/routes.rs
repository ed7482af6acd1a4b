//! Request handling: the shared [`App`] state, the router (one `match` over method and path),
//! the handlers, and the per-request envelope around them — request id, header limits, the
//! access record and the counters.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Version};
use log::Level;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::body::{self, Body};
use crate::config::Config;
use crate::error::ApiError;
use crate::health;
use crate::ids::{Id, IdGen, RequestId};
use crate::logging::{self, Access, Line, Sink};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The routes, as listed by `GET /`: method(s), path, purpose.
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

/// State shared by every connection of one server.
pub struct App {
    pub cfg: Config,
    pub sink: Sink,
    pub ids: IdGen,
    hostname: String,
    started_at: OffsetDateTime,
    started: Instant,
    requests: AtomicU64,
    events: AtomicU64,
}

impl App {
    pub fn new(cfg: Config, sink: Sink) -> App {
        App {
            cfg,
            sink,
            ids: IdGen::new(),
            hostname: hostname(),
            started_at: OffsetDateTime::now_utc(),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }
}

/// The kernel's hostname (the container id under Docker); no libc call needed.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Answers one request: routes it, stamps the request id, writes the access record. Returns
/// the answer and when it was ready (read once, for the record and the caller).
pub async fn handle(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> (Response<Body>, Instant) {
    let start = Instant::now();
    // The head stays here, for the access record; only the body goes to the handler.
    let (head, body) = req.into_parts();
    // The client's id if it passes the check, else a new one: as a header value for the
    // answer, and as a RequestId (the proof it needs no escaping) for the record.
    let generated: Id;
    let given = head
        .headers
        .get(&X_REQUEST_ID)
        .and_then(|v| Some((RequestId::given(v.as_bytes())?, v)));
    let (rid, request_id) = match given {
        Some((rid, v)) => (rid, v.clone()),
        None => {
            generated = app.ids.next();
            let v = HeaderValue::from_bytes(generated.as_bytes()).expect("generated ids are hex");
            (RequestId::from(&generated), v)
        }
    };
    let client = client_ip(&app.cfg, peer.ip(), &head.headers);

    let result = match check_head(&head, app.cfg.max_header_bytes) {
        Err(e) => Err(e),
        Ok(()) => route(app, &head, body, &request_id, client).await,
    };
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    app.requests.fetch_add(1, Ordering::Relaxed);
    let end = Instant::now();

    // A probe every few seconds from `--healthcheck` must not flood the file: debug level.
    let user_agent = head
        .headers
        .get(USER_AGENT)
        .map_or(&b""[..], |v| v.as_bytes());
    let probe = peer.ip().is_loopback() && user_agent.starts_with(health::PROBE_AGENT);
    let level = if probe { Level::Debug } else { Level::Info };
    if app.sink.enabled(level) {
        let bytes = if head.method == Method::HEAD {
            0
        } else {
            body_len(&resp)
        };
        app.sink.access(
            level,
            &Access {
                method: head.method.as_str(),
                path: head.uri.path(),
                status: resp.status().as_u16(),
                bytes,
                at: end,
                duration_us: end.duration_since(start).as_micros() as u64,
                request_id: rid,
                client,
                user_agent,
            },
        );
    }
    (resp, end)
}

fn body_len(resp: &Response<Body>) -> u64 {
    hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0)
}

/// The router. HEAD is served wherever GET is; hyper drops the body of HEAD answers.
async fn route(
    app: &App,
    head: &Parts,
    body: Incoming,
    request_id: &HeaderValue,
    client: IpAddr,
) -> Result<Response<Body>, ApiError> {
    match (&head.method, head.uri.path()) {
        (&Method::GET | &Method::HEAD, "/") => Ok(info(app)),
        (&Method::GET | &Method::HEAD, "/health") => Ok(health::respond(&app.sink)),
        (&Method::POST, "/events") => create_event(app, head, body, request_id, client).await,
        (_, "/" | "/health") => Err(ApiError::MethodNotAllowed("GET, HEAD")),
        (_, "/events") => Err(ApiError::MethodNotAllowed("POST")),
        _ => Err(ApiError::NotFound),
    }
}

/// `GET /`: who this is and how it is doing.
fn info(app: &App) -> Response<Body> {
    let routes: Vec<Value> = ROUTES
        .iter()
        .map(|(m, p, d)| json!({ "methods": m, "path": p, "description": d }))
        .collect();
    body::json(
        StatusCode::OK,
        &json!({
            "service": env!("CARGO_PKG_NAME"),
            "version": env!("CARGO_PKG_VERSION"),
            "hostname": app.hostname,
            "started_at": logging::timestamp(app.started_at),
            "uptime_seconds": app.started.elapsed().as_secs(),
            "requests_served": app.requests.load(Ordering::Relaxed) + 1,
            "events_accepted": app.events.load(Ordering::Relaxed),
            "routes": routes,
        }),
    )
}

/// `POST /events`: validates the event, appends its record, and answers 201 only once the
/// record is in the file.
async fn create_event(
    app: &App,
    head: &Parts,
    incoming: Incoming,
    request_id: &HeaderValue,
    client: IpAddr,
) -> Result<Response<Body>, ApiError> {
    if !body::is_json(&head.headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = body::read_limited(
        &head.headers,
        incoming,
        app.cfg.max_body_bytes,
        app.cfg.body_timeout,
    )
    .await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    let (kind, data) = event_shape(value)?;

    let id = app.ids.next();
    let now = OffsetDateTime::now_utc();
    let mut record = Vec::with_capacity(256 + bytes.len());
    let mut line = Line::start_at(&mut record, now, Level::Info, "event");
    line.str("id", id.as_str())
        .str("type", &kind)
        .bytes("request_id", request_id.as_bytes())
        .ip("client", client);
    if let Some(data) = &data {
        line.json("data", data);
    }
    line.finish();

    app.sink
        .append_durable(&record)
        .await
        .map_err(ApiError::Unavailable)?;
    app.events.fetch_add(1, Ordering::Relaxed);
    // Written directly: the id and timestamp are ASCII and the type was checked to be
    // `[A-Za-z0-9._:-]`, so nothing needs escaping, and a json! map costs five allocations.
    let mut answer = Vec::with_capacity(96);
    answer.extend_from_slice(b"{\"id\":\"");
    answer.extend_from_slice(id.as_bytes());
    answer.extend_from_slice(b"\",\"type\":\"");
    answer.extend_from_slice(kind.as_bytes());
    answer.extend_from_slice(b"\",\"received_at\":\"");
    logging::write_timestamp(&mut answer, now);
    answer.extend_from_slice(b"\"}");
    Ok(body::json_bytes(StatusCode::CREATED, answer))
}

/// Checks `{"type": "<1-64 of A-Z a-z 0-9 . _ : ->", "data": <any, optional>}`.
fn event_shape(value: Value) -> Result<(String, Option<Value>), ApiError> {
    let Value::Object(mut map) = value else {
        return Err(ApiError::Unprocessable(
            "the body must be a JSON object with a \"type\" field".into(),
        ));
    };
    if let Some(extra) = map.keys().find(|k| *k != "type" && *k != "data") {
        return Err(ApiError::Unprocessable(format!(
            "unknown field \"{}\"; allowed fields are \"type\" and \"data\"",
            extra.escape_debug()
        )));
    }
    let kind = match map.remove("type") {
        None => return Err(ApiError::Unprocessable("field \"type\" is required".into())),
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(ApiError::Unprocessable(
                "field \"type\" must be a string".into(),
            ));
        }
    };
    let valid = (1..=64).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if !valid {
        return Err(ApiError::Unprocessable(
            "field \"type\" must be 1-64 characters of A-Z a-z 0-9 . _ : -".into(),
        ));
    }
    Ok((kind, map.remove("data")))
}

/// Refuses heads beyond the configured size with a JSON 431 (hyper's parser refuses heads
/// that do not fit its buffer at all, or carry over 100 fields, with a bare 431), and
/// HTTP/1.1 requests without exactly one `Host` with a 400, as RFC 9112 section 3.2 requires:
/// two differing hosts would let a proxy and this service disagree on the target.
fn check_head(head: &Parts, max_bytes: usize) -> Result<(), ApiError> {
    let headers = &head.headers;
    if head.version == Version::HTTP_11 && headers.get_all(HOST).iter().count() != 1 {
        return Err(ApiError::BadRequest(
            "an HTTP/1.1 request needs exactly one Host header".into(),
        ));
    }
    // The target's length without formatting it (this runs for every request).
    let uri = &head.uri;
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    let size = target
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > max_bytes {
        return Err(ApiError::HeadersTooLarge(format!(
            "request head larger than {max_bytes} bytes"
        )));
    }
    Ok(())
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case
/// `X-Forwarded-For` is read from the right, skipping trusted hops, to the first address
/// that is not one (a client can prepend anything, but cannot forge what proxies append).
fn client_ip(cfg: &Config, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: IpAddr| cfg.trusted_proxies.iter().any(|net| net.contains(ip));
    if cfg.trusted_proxies.is_empty() || !trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for hop in value.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(ip) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_trusting(nets: &str) -> Config {
        let env = move |k: &str| (k == "TRUSTED_PROXIES").then(|| nets.into());
        match crate::config::parse(Vec::<String>::new(), env).unwrap() {
            crate::config::Command::Serve(c) => c,
            _ => unreachable!(),
        }
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let none = Config::default();
        assert_eq!(
            client_ip(&none, ip("10.0.0.2"), &xff(&["1.2.3.4"])),
            ip("10.0.0.2")
        );
        let cfg = cfg_trusting("10.0.0.0/8");
        assert_eq!(
            client_ip(&cfg, ip("10.0.0.2"), &xff(&["1.2.3.4"])),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(&cfg, ip("192.0.2.9"), &xff(&["1.2.3.4"])),
            ip("192.0.2.9")
        );
        // The client prepended a fake hop; the proxy appended the real one.
        assert_eq!(
            client_ip(&cfg, ip("10.0.0.2"), &xff(&["6.6.6.6, 5.6.7.8, 10.0.0.3"])),
            ip("5.6.7.8")
        );
        assert_eq!(
            client_ip(&cfg, ip("10.0.0.2"), &xff(&["garbage"])),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn event_shape_names_the_field() {
        let err = |v: Value| match event_shape(v) {
            Err(ApiError::Unprocessable(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err(json!([])).contains("JSON object"));
        assert!(err(json!({})).contains("\"type\" is required"));
        assert!(err(json!({"type": 1})).contains("must be a string"));
        assert!(err(json!({"type": "a b"})).contains("1-64 characters"));
        assert!(err(json!({"type": "x".repeat(65)})).contains("1-64 characters"));
        assert!(err(json!({"type": "a", "extra": 1})).contains("\"extra\""));
        let (t, d) = event_shape(json!({"type": "user.signup:v2-a_b", "data": {"k": 1}})).unwrap();
        assert_eq!(
            (t.as_str(), d),
            ("user.signup:v2-a_b", Some(json!({"k": 1})))
        );
    }
}
