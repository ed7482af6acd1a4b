//! The header fields that say how a request body is framed and coded, checked before the body
//! is read. hyper frames a body (chunked when `Transfer-Encoding` ends in `chunked`, else by
//! `Content-Length`) and refuses with a 400 of its own what it cannot frame; what it lets
//! through but this service does not take is refused here, with a JSON answer:
//!
//! - a transfer coding other than `chunked` (`gzip, chunked`): 501, as RFC 9112 section 6.1
//!   advises; hyper would frame the chunks and skip the coding;
//! - `chunked` more than once: 400 (RFC 9112 section 7 forbids it; a proxy in front could
//!   frame such a body differently);
//! - for a JSON body (`POST /events`), `Content-Type` more than once: 400 (RFC 9110 section
//!   5.3: which one holds is ambiguous), not JSON: 415, and a content coding other than
//!   `identity`: 415 naming it, with `Accept-Encoding: identity` (RFC 9110 sections 8.4 and
//!   15.5.16).
//!
//! `Content-Length` is left to hyper: it refuses differing repeated values and lists, and takes
//! equal repeated values as one (RFC 9110 section 8.6 allows either), dropping the copy before
//! the service sees it; every reader agrees on such a length.
//!
//! The framing errors close the connection: after them, where this request ends is not
//! something to rely on.

use hyper::HeaderMap;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, TRANSFER_ENCODING};

use super::error::ApiError;

/// The longest coding name an answer repeats.
const NAME_IN_ANSWER: usize = 64;

/// What the checks read from a request's header fields, gathered in one pass over them: a
/// lookup by name hashes the name each time, where the pass compares names, which for known
/// names compares two small integers.
pub(super) struct BodyFields<'a> {
    /// The first `Content-Type`, and how many there are.
    content_type: Option<&'a HeaderValue>,
    content_types: usize,
    /// Whether any `Transfer-Encoding` or `Content-Encoding` is present; their values are
    /// read only then.
    transfer_encoding: bool,
    content_encoding: bool,
}

impl BodyFields<'_> {
    pub(super) fn of(headers: &HeaderMap) -> BodyFields<'_> {
        let mut f = BodyFields {
            content_type: None,
            content_types: 0,
            transfer_encoding: false,
            content_encoding: false,
        };
        for (name, value) in headers {
            if name == CONTENT_TYPE {
                f.content_type.get_or_insert(value);
                f.content_types += 1;
            } else if name == TRANSFER_ENCODING {
                f.transfer_encoding = true;
            } else if name == CONTENT_ENCODING {
                f.content_encoding = true;
            }
        }
        f
    }

    /// The check of every request with a body: its transfer codings.
    pub(super) fn check_framing(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.transfer_encoding {
            let mut chunked = 0;
            for coding in list(headers, &TRANSFER_ENCODING) {
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked += 1;
                } else {
                    return Err(ApiError::NotImplemented(format!(
                        "transfer coding {} is not supported; send the body chunked or with a \
                         Content-Length",
                        quoted(coding)
                    )));
                }
            }
            if chunked > 1 {
                return Err(ApiError::Framing(
                    "the chunked transfer coding is applied more than once".into(),
                ));
            }
        }
        Ok(())
    }

    /// The checks of a JSON body: one `Content-Type`, `application/json` (parameters such as
    /// `charset` allowed), and no content coding.
    pub(super) fn check_json(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.content_types > 1 {
            return Err(ApiError::BadRequest(
                "Content-Type is given more than once".into(),
            ));
        }
        if !self.content_type.is_some_and(is_json) {
            return Err(ApiError::UnsupportedMediaType);
        }
        if self.content_encoding {
            let coding =
                list(headers, &CONTENT_ENCODING).find(|c| !c.eq_ignore_ascii_case(b"identity"));
            if let Some(coding) = coding {
                return Err(ApiError::UnsupportedEncoding(format!(
                    "content coding {} is not supported; send the body without \
                     Content-Encoding",
                    quoted(coding)
                )));
            }
        }
        Ok(())
    }
}

/// Whether `v` is `application/json`, parameters allowed.
fn is_json(v: &HeaderValue) -> bool {
    let Ok(v) = v.to_str() else {
        return false;
    };
    let essence = v.split_once(';').map_or(v, |(e, _)| e).trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The elements of a list field over all its lines, trimmed, empty ones skipped (RFC 9110
/// section 5.6.1).
fn list<'h>(
    headers: &'h HeaderMap,
    name: &hyper::header::HeaderName,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

/// A name as sent, quoted, for an answer: at most [`NAME_IN_ANSWER`] bytes of it.
fn quoted(name: &[u8]) -> String {
    let cut = &name[..name.len().min(NAME_IN_ANSWER)];
    format!("\"{}\"", String::from_utf8_lossy(cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(fields: &[(&str, &str)]) -> Result<(), (u16, String)> {
        let h = headers(fields);
        let f = BodyFields::of(&h);
        f.check_framing(&h)
            .and_then(|()| f.check_json(&h))
            .map_err(|e| {
                let resp = e.into_response();
                let body = hyper::body::Body::size_hint(resp.body()).exact();
                (
                    resp.status().as_u16(),
                    format!("{body:?} {:?}", resp.headers()),
                )
            })
    }

    /// Each field rule on its own: what passes, and the status of what does not.
    #[test]
    fn framing_and_coding_fields() {
        let json = ("content-type", "application/json; charset=utf-8");
        assert_eq!(check(&[json, ("content-length", "2")]), Ok(()));
        assert_eq!(check(&[json, ("transfer-encoding", "Chunked")]), Ok(()));
        assert_eq!(check(&[json, ("transfer-encoding", " , chunked")]), Ok(()));
        assert_eq!(check(&[json, ("content-encoding", "identity")]), Ok(()));
        let status = |f: &[(&str, &str)]| check(f).map_err(|e| e.0);
        assert_eq!(
            status(&[json, ("transfer-encoding", "gzip, chunked")]),
            Err(501)
        );
        assert_eq!(
            status(&[
                json,
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ]),
            Err(501)
        );
        assert_eq!(
            status(&[json, ("transfer-encoding", "chunked, chunked")]),
            Err(400)
        );
        assert_eq!(
            status(&[
                json,
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            Err(400)
        );
        assert_eq!(status(&[json, json]), Err(400));
        assert_eq!(status(&[("content-type", "text/plain")]), Err(415));
        assert_eq!(status(&[]), Err(415));
        let (code, answer) = check(&[json, ("content-encoding", "identity, br")]).unwrap_err();
        assert_eq!(code, 415);
        assert!(
            answer.contains(r#""accept-encoding": "identity""#),
            "{answer}"
        );
        // A 415 for the media type must not carry Accept-Encoding (RFC 9110 section 12.5.3).
        let (_, answer) = check(&[("content-type", "text/plain")]).unwrap_err();
        assert!(!answer.contains("accept-encoding"), "{answer}");
    }

    #[test]
    fn names_in_answers_are_cut() {
        assert_eq!(quoted(b"gzip"), "\"gzip\"");
        assert_eq!(quoted(&[b'x'; 100]).len(), NAME_IN_ANSWER + 2);
    }
}
