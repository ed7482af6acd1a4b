//! The envelope around every request, whatever its route: the request id (the client's
//! `X-Request-Id` if it is safe, else a new one), the head checks, the client's address, the
//! request counter, the access record, and the headers every answer carries.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::BytesMut;
use hyper::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, USER_AGENT,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Response, Version};
use log::Level;

use super::body::Body;
use super::error::ApiError;
use crate::app::App;
use crate::config::Config;
use crate::healthcheck;
use crate::ids::{Id, RequestId};
use crate::logging::Access;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
/// Every answer describes the service at one instant (health, counters, an event just taken):
/// no cache may keep one, or serve it again by heuristic freshness.
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// A browser must take the JSON as JSON, never sniff it into something it would run.
static NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
/// User-Agent prefix of the kubelet's HTTP probes.
const KUBE_PROBE_AGENT: &[u8] = b"kube-probe/";

/// What the envelope knows of a request before it is routed.
pub(super) struct Envelope<'a> {
    fields: Fields<'a>,
    /// The client's id if it passes the check, else a new one: as a RequestId (the proof it
    /// needs no escaping) for the record, and as a header value for the answer.
    pub(super) rid: RequestId<'a>,
    request_id: HeaderValue,
    peer_ip: IpAddr,
    /// The client's address (see [`client_ip`]).
    pub(super) client: IpAddr,
}

impl<'a> Envelope<'a> {
    /// `generated` holds the request's id if it is a new one (dated `start`).
    pub(super) fn open(
        app: &App,
        head: &'a Parts,
        peer: SocketAddr,
        start: Instant,
        generated: &'a mut Option<Id>,
    ) -> Envelope<'a> {
        let fields = Fields::of(&head.headers);
        let given = fields
            .request_id
            .and_then(|v| Some((RequestId::given(v.as_bytes())?, v)));
        let (rid, request_id) = match given {
            Some((rid, v)) => (rid, v.clone()),
            None => {
                let id = generated.insert(app.ids.next(start));
                (RequestId::from(&*id), id_header(id))
            }
        };
        // An IPv4 client of the dual-stack listener arrives as ::ffff:a.b.c.d; it is logged,
        // matched and recognised as the IPv4 address it is.
        let peer_ip = peer.ip().to_canonical();
        let client = client_ip(&app.cfg, peer_ip, &head.headers);
        Envelope {
            fields,
            rid,
            request_id,
            peer_ip,
            client,
        }
    }

    /// Refuses heads beyond the configured size, and HTTP/1.1 requests without exactly one
    /// `Host` (see [`check_head`]).
    pub(super) fn check_head(&self, app: &App, head: &Parts) -> Result<(), ApiError> {
        check_head(head, &self.fields, app.cfg.max_header_bytes)
    }

    /// Counts the request and writes its access record (`resp` was ready at `end`); gives
    /// back the id, for [`finish`] to put on the answer.
    pub(super) fn record(
        self,
        app: &App,
        start: Instant,
        end: Instant,
        head: &Parts,
        resp: &Response<Body>,
    ) -> HeaderValue {
        app.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &app.metrics {
            let status = resp.status().as_u16();
            m.request(
                &head.method,
                head.uri.path(),
                status,
                end.duration_since(start),
            );
        }

        // Probes every few seconds must not flood the file: debug level. The image's own
        // (`--healthcheck`) comes over loopback; the kubelet's from the node, so only its
        // probes of the probe routes qualify: a client calling itself a probe cannot hide
        // anything else from the info log.
        let user_agent = self
            .fields
            .user_agent
            .map_or(&b""[..], HeaderValue::as_bytes);
        let probe = (self.peer_ip.is_loopback()
            && user_agent.starts_with(healthcheck::PROBE_AGENT.as_bytes()))
            || (user_agent.starts_with(KUBE_PROBE_AGENT) && probe_route(head));
        let level = if probe { Level::Debug } else { Level::Info };
        if app.sink.enabled(level) {
            let bytes = if head.method == Method::HEAD {
                0
            } else {
                body_len(resp)
            };
            app.sink.access(
                level,
                &Access {
                    method: &head.method,
                    path: head.uri.path(),
                    status: resp.status().as_u16(),
                    bytes,
                    at: end,
                    duration_us: end.duration_since(start).as_micros() as u64,
                    request_id: self.rid,
                    client: self.client,
                    user_agent,
                },
            );
        }
        self.request_id
    }
}

thread_local! {
    /// Room for the generated ids of this thread's answers, [`ID_ROOM_BYTES`] at a time.
    static ID_ROOM: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Room for 128 ids.
const ID_ROOM_BYTES: usize = 128 * 32;

/// A generated id as a header value, cut from this thread's room for ids: a header value of
/// its own would be an allocation (and a lock in musl's build) on every request that brings
/// no id, where this is one per 128 of them.
fn id_header(id: &Id) -> HeaderValue {
    ID_ROOM.with_borrow_mut(|room| {
        if room.capacity() < id.as_bytes().len() {
            // The full room is freed once the last answer cut from it has been sent.
            *room = BytesMut::with_capacity(ID_ROOM_BYTES);
        }
        room.extend_from_slice(id.as_bytes());
        HeaderValue::from_maybe_shared(room.split().freeze()).expect("generated ids are hex")
    })
}

/// The answer as sent: its headers (see [`answer_headers`]), and `Connection: close` while
/// draining.
pub(super) fn finish(
    app: &App,
    head: &mut Parts,
    resp: &mut Response<Body>,
    request_id: HeaderValue,
) {
    // The request's map goes to the answer, the handler's to the request, which drops it.
    std::mem::swap(&mut head.headers, resp.headers_mut());
    answer_headers(resp.headers_mut(), &mut head.headers, request_id);
    if app.phases.draining() {
        // hyper closes the connection after this answer: a keep-alive client reconnects,
        // through its load balancer, to a replica that is not going away.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// The headers of an answer: those every answer carries (`Content-Type`, `Cache-Control:
/// no-store`, `X-Content-Type-Options: nosniff`, `X-Request-Id`), then any its handler set
/// (`Allow`, `Connection`). They are written into `map`, the request's own header map, emptied:
/// hyper hands the map of an answer it has sent back to the connection to parse the next
/// request into, so a map passed along this way is never allocated again. Names are constants
/// and values static, so an insert hashes a known name and copies no bytes.
fn answer_headers(map: &mut HeaderMap, handler: &mut HeaderMap, request_id: HeaderValue) {
    map.clear();
    map.insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    map.insert(CACHE_CONTROL, NO_STORE.clone());
    map.insert(X_CONTENT_TYPE_OPTIONS, NOSNIFF.clone());
    map.insert(X_REQUEST_ID.clone(), request_id);
    if !handler.is_empty() {
        map.extend(handler.drain());
    }
}

/// Whether `head` asks what an orchestrator's probe asks: `GET` or `HEAD` of `/` or `/health`.
fn probe_route(head: &Parts) -> bool {
    (head.method == Method::GET || head.method == Method::HEAD)
        && matches!(head.uri.path(), "/" | "/health")
}

fn body_len(resp: &Response<Body>) -> u64 {
    hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0)
}

/// What the envelope reads from a request's header fields, gathered in one pass over them: a
/// lookup by name hashes the name each time, where the pass compares names, which for known
/// names compares two small integers.
struct Fields<'a> {
    /// Their size as sent: name, `: `, value and CRLF of each.
    size: usize,
    hosts: usize,
    /// The first `X-Request-Id` and `User-Agent`, as `HeaderMap::get` would give them.
    request_id: Option<&'a HeaderValue>,
    user_agent: Option<&'a HeaderValue>,
}

impl Fields<'_> {
    fn of(headers: &HeaderMap) -> Fields<'_> {
        let mut f = Fields {
            size: 0,
            hosts: 0,
            request_id: None,
            user_agent: None,
        };
        for (name, value) in headers {
            f.size += name.as_str().len() + value.len() + 4;
            if name == HOST {
                f.hosts += 1;
            } else if name == USER_AGENT {
                f.user_agent.get_or_insert(value);
            } else if name == X_REQUEST_ID {
                f.request_id.get_or_insert(value);
            }
        }
        f
    }
}

/// Refuses heads beyond the configured size with a 431 (hyper's parser refuses heads that do
/// not fit its buffer at all, or carry over 100 fields, with a 431 of its own, which the
/// connection sends as the service's: see `super::unparsed`), and
/// HTTP/1.1 requests without exactly one `Host` with a 400, as RFC 9112 section 3.2 requires:
/// two differing hosts would let a proxy and this service disagree on the target.
fn check_head(head: &Parts, fields: &Fields<'_>, max_bytes: usize) -> Result<(), ApiError> {
    if head.version == Version::HTTP_11 && fields.hosts != 1 {
        return Err(ApiError::BadRequest(
            "an HTTP/1.1 request needs exactly one Host header".into(),
        ));
    }
    // The target's length without formatting it (this runs for every request).
    let uri = &head.uri;
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    if target + fields.size > max_bytes {
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
            match hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
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
        let cfg = cfg_trusting("10.0.0.0/8");
        // (settings, TCP peer, X-Forwarded-For, the client found)
        let cases = [
            (&none, "10.0.0.2", "1.2.3.4", "10.0.0.2"),
            (&cfg, "10.0.0.2", "1.2.3.4", "1.2.3.4"),
            (&cfg, "192.0.2.9", "1.2.3.4", "192.0.2.9"),
            // The client prepended a fake hop; the proxy appended the real one.
            (&cfg, "10.0.0.2", "6.6.6.6, 5.6.7.8, 10.0.0.3", "5.6.7.8"),
            (&cfg, "10.0.0.2", "garbage", "10.0.0.2"),
            // A hop written as an IPv4-mapped IPv6 address is that IPv4 address.
            (&cfg, "10.0.0.2", "::ffff:5.6.7.8", "5.6.7.8"),
        ];
        for (cfg, peer, forwarded, client) in cases {
            let found = client_ip(cfg, ip(peer), &xff(&[forwarded]));
            assert_eq!(
                found,
                ip(client),
                "peer {peer}, X-Forwarded-For {forwarded}"
            );
        }
    }
}
