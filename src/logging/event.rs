//! The event record: one JSON line per accepted event, with the event's id, type, request id,
//! client and `data` exactly as the client sent it (minified). Written through [`Rec`], as the
//! access record is; the ids are hex or checked (a [`RequestId`] is the proof) and the type
//! was checked to be `[A-Za-z0-9._:-]`, so none needs escaping, and `data` is JSON text
//! checked and minified by the request body scanner.

use std::net::IpAddr;

use super::json::{Out, Rec, TIMESTAMP_LEN};
use crate::ids::RequestId;

/// The fields of an event's record, but the replica's name, which the sink adds.
pub(crate) struct EventRecord<'a> {
    /// [`super::json::timestamp`] of when it was received.
    pub(crate) received_at: &'a [u8; TIMESTAMP_LEN],
    pub(crate) id: &'a [u8],
    pub(crate) kind: &'a [u8],
    pub(crate) request_id: RequestId<'a>,
    pub(crate) client: IpAddr,
    /// Minified JSON text, as sent.
    pub(crate) data: Option<&'a [u8]>,
}

/// Writes the record of `r`, one line; `host` is the replica's name as a JSON string.
pub(super) fn write(out: &mut Vec<u8>, host: &[u8], r: &EventRecord<'_>) {
    let mut rec = Rec::new(out);
    rec.put(b"{\"ts\":\"");
    rec.put(r.received_at);
    rec.put(b"\",\"level\":\"info\",\"msg\":\"event\",\"host\":");
    rec.put(host);
    rec.put(b",\"id\":\"");
    rec.put(r.id);
    rec.put(b"\",\"type\":\"");
    rec.put(r.kind);
    rec.put(b"\"");
    super::request_fields(&mut rec, r.request_id, r.client);
    if let Some(data) = r.data {
        rec.put(b",\"data\":");
        rec.put(data);
    }
    rec.put(b"}\n");
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::super::json;
    use super::*;

    /// The record is one line of JSON with every field, and `data` exactly as given, however
    /// long.
    #[test]
    fn record_is_one_line_with_data_as_given() {
        let ts = json::timestamp(OffsetDateTime::UNIX_EPOCH);
        let record = |data: Option<&[u8]>| {
            let mut out = Vec::new();
            let r = EventRecord {
                received_at: &ts,
                id: b"0af",
                kind: b"a.b",
                request_id: RequestId::given(b"r-1:/+=@_.").unwrap(),
                client: [10, 0, 0, 1].into(),
                data,
            };
            write(&mut out, br#""web-1""#, &r);
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            assert!(out.ends_with(b"\n"));
            (
                serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
                out,
            )
        };
        let (v, out) = record(Some(br#"{"n":1e400,"s":"\u2028\n"}"#));
        assert!(out.ends_with(b",\"data\":{\"n\":1e400,\"s\":\"\\u2028\\n\"}}\n"));
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(
            (v["level"].as_str(), v["msg"].as_str()),
            (Some("info"), Some("event"))
        );
        assert_eq!(v["host"], "web-1");
        assert_eq!(
            (v["id"].as_str(), v["type"].as_str()),
            (Some("0af"), Some("a.b"))
        );
        assert_eq!(v["request_id"], "r-1:/+=@_.");
        assert_eq!(v["client"], "10.0.0.1");
        // Long data, and no data.
        let long = "d".repeat(2000);
        let (v, _) = record(Some(format!("\"{long}\"").as_bytes()));
        assert_eq!(v["data"], long.as_str());
        assert!(record(None).0.get("data").is_none());
    }
}
