//! The answer to a request head hyper could not parse. hyper answers such a head itself, before
//! any of the service's code runs, with a status (400; 431 for a head too large for its
//! buffer or with too many fields; 414 for a request target too long for it) and nothing else: no body, none of the headers every answer
//! of the service carries. The connection (`server::conn`) hands what hyper wrote to
//! [`answer`], which gives the bytes to send instead: hyper's status line and `Date`, the
//! service's headers, a new request id, `Connection: close` (hyper closes after it) and a
//! JSON reason; the request is counted (in `GET /` and the metrics) and logged at debug.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::app::App;

/// The answer to send in place of `hyper_head`, hyper's own bodiless answer to a head from
/// `peer` it could not parse; counts and logs it.
pub(crate) fn answer(app: &App, hyper_head: &[u8], peer: SocketAddr) -> Vec<u8> {
    let now = Instant::now();
    let line_end = find(hyper_head, b"\r\n").unwrap_or(hyper_head.len());
    let status_line = &hyper_head[..line_end];
    let status = status_line
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
        .unwrap_or(400);
    let reason = match status {
        431 => format!(
            "request head larger than {} bytes or with more than 100 header fields",
            app.cfg.max_header_bytes
        ),
        414 => "request target too long".into(),
        _ => "malformed request head: not an HTTP/1.1 or HTTP/1.0 request line and header \
              fields"
            .into(),
    };
    let body = serde_json::to_vec(&serde_json::json!({ "error": reason }))
        .expect("a Value always serialises");
    let id = app.ids.next(now);

    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(status_line);
    out.extend_from_slice(
        b"\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
          x-content-type-options: nosniff\r\nx-request-id: ",
    );
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    if let Some(at) = find(hyper_head, b"\r\ndate: ") {
        let date = &hyper_head[at..];
        let end = find(&date[2..], b"\r\n").map_or(date.len(), |e| e + 2);
        out.extend_from_slice(&date[..end]);
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);

    app.unparsed.fetch_add(1, Ordering::Relaxed);
    if let Some(m) = &app.metrics {
        m.unparsed(status);
    }
    // One line per such request (hyper closes the connection after it), at debug: an
    // access record would give the request path's record code a second caller, which the
    // optimiser then stops inlining there.
    log::debug!(
        status = status,
        request_id:% = String::from_utf8_lossy(id.as_bytes()),
        client:% = peer.ip().to_canonical();
        "unparsed request"
    );
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
