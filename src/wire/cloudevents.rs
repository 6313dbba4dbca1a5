//! CloudEvents over Kafka: binary mode (`ce_*` headers), structured mode
//! (`application/cloudevents+json`), and plain JSON with a configured type field.

use serde_json::Value as Json;

use crate::engine::{Command, Event, Millis, format_rfc3339, parse_rfc3339};

/// A Kafka record as the decoder needs it.
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<Millis>,
    pub headers: &'a [(String, Vec<u8>)],
    pub payload: Option<&'a [u8]>,
}

/// How plain JSON events name their type and id.
#[derive(Debug, Clone)]
pub struct PlainJson {
    pub type_field: String,
    pub id_field: String,
}

/// An event baton cannot read, with the reason (this goes to the dead-letter topic).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record: no payload")]
    Empty,
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("{mode}: missing or empty attribute `{attribute}`")]
    Missing {
        mode: &'static str,
        attribute: String,
    },
    #[error("{mode}: attribute `{attribute}` is not valid: {reason}")]
    Invalid {
        mode: &'static str,
        attribute: String,
        reason: String,
    },
    #[error("content type `{0}` is not supported (JSON only)")]
    ContentType(String),
}

/// The first header `name` (any case) as text.
pub fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// The W3C trace context of a record, if it carries one.
pub fn traceparent(headers: &[(String, Vec<u8>)]) -> Option<String> {
    header(headers, "traceparent").map(str::to_string)
}

/// Decodes a record into an event.
pub fn decode(r: &Record<'_>, plain: &PlainJson) -> Result<Event, DecodeError> {
    let fallback_id = format!("{}/{}/{}", r.topic, r.partition, r.offset);
    let time_or = |t: Option<&str>, mode: &'static str| -> Result<Millis, DecodeError> {
        match t {
            Some(s) => parse_rfc3339(s).ok_or_else(|| DecodeError::Invalid {
                mode,
                attribute: "time".into(),
                reason: format!("`{s}` is not RFC 3339"),
            }),
            None => Ok(r.timestamp.unwrap_or(0)),
        }
    };
    let content_type = header(r.headers, "content-type").unwrap_or("");
    // Whatever the mode, a record that says it is not JSON is not read as JSON.
    if !content_type.is_empty() && !content_type.contains("json") {
        return Err(DecodeError::ContentType(content_type.to_string()));
    }
    if header(r.headers, "ce_specversion").is_some() {
        const MODE: &str = "binary CloudEvent";
        let attr = |name: &str| -> Result<String, DecodeError> {
            match header(r.headers, &format!("ce_{name}")) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(DecodeError::Missing {
                    mode: MODE,
                    attribute: name.into(),
                }),
            }
        };
        let data = match r.payload {
            None | Some([]) => Json::Null,
            Some(p) => {
                serde_json::from_slice(p).map_err(|e| DecodeError::NotJson(e.to_string()))?
            }
        };
        return Ok(Event {
            id: attr("id")?,
            kind: attr("type")?,
            source: attr("source")?,
            time: time_or(header(r.headers, "ce_time"), MODE)?,
            data,
        });
    }
    let payload = r
        .payload
        .filter(|p| !p.is_empty())
        .ok_or(DecodeError::Empty)?;
    let json: Json =
        serde_json::from_slice(payload).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let structured = content_type.starts_with("application/cloudevents+json")
        || json.get("specversion").is_some();
    let str_field = |obj: &Json, name: &str| {
        obj.get(name)
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if structured {
        const MODE: &str = "structured CloudEvent";
        let need = |name: &str| {
            str_field(&json, name).ok_or_else(|| DecodeError::Missing {
                mode: MODE,
                attribute: name.into(),
            })
        };
        return Ok(Event {
            id: need("id")?,
            kind: need("type")?,
            source: need("source")?,
            time: time_or(json.get("time").and_then(Json::as_str), MODE)?,
            data: json.get("data").cloned().unwrap_or(Json::Null),
        });
    }
    const MODE: &str = "plain JSON event";
    let kind = str_field(&json, &plain.type_field).ok_or_else(|| DecodeError::Missing {
        mode: MODE,
        attribute: plain.type_field.clone(),
    })?;
    let id = match json.get(&plain.id_field) {
        Some(Json::String(s)) if !s.is_empty() => s.clone(),
        Some(Json::Number(n)) => n.to_string(),
        _ => fallback_id,
    };
    Ok(Event {
        id,
        kind,
        source: r.topic.to_string(),
        time: r.timestamp.unwrap_or(0),
        data: json,
    })
}

/// Headers and payload of a command, as a binary-mode CloudEvent; `trace`
/// holds the W3C trace headers (`traceparent`, `tracestate`) to carry.
pub fn encode_command(
    c: &Command,
    process: &str,
    time: Millis,
    trace: Vec<(String, Vec<u8>)>,
) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let mut headers = vec![
        ("ce_specversion".to_string(), b"1.0".to_vec()),
        ("ce_id".to_string(), c.id.clone().into_bytes()),
        (
            "ce_source".to_string(),
            format!("baton/{process}").into_bytes(),
        ),
        ("ce_type".to_string(), c.kind.clone().into_bytes()),
        ("ce_time".to_string(), format_rfc3339(time).into_bytes()),
        ("ce_subject".to_string(), c.key.clone().into_bytes()),
        ("content-type".to_string(), b"application/json".to_vec()),
    ];
    headers.extend(trace);
    let payload = serde_json::to_vec(&c.data).unwrap_or_else(|_| b"null".to_vec());
    (headers, payload)
}

/// A structured-mode CloudEvent for `baton send`.
pub fn structured(id: &str, kind: &str, source: &str, time: Millis, data: &Json) -> Vec<u8> {
    let v = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "type": kind,
        "source": source,
        "time": format_rfc3339(time),
        "datacontenttype": "application/json",
        "data": data,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plain() -> PlainJson {
        PlainJson {
            type_field: "type".into(),
            id_field: "id".into(),
        }
    }

    fn rec<'a>(headers: &'a [(String, Vec<u8>)], payload: Option<&'a [u8]>) -> Record<'a> {
        Record {
            topic: "crm.events",
            partition: 2,
            offset: 7,
            timestamp: Some(1_000),
            headers,
            payload,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn binary_mode() {
        let headers = h(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "e-1"),
            ("ce_type", "com.acme.order.placed"),
            ("ce_source", "erp"),
            ("ce_time", "2026-01-05T09:00:00Z"),
            ("content-type", "application/json"),
        ]);
        let e = decode(&rec(&headers, Some(br#"{"orderId":"o-1"}"#)), &plain()).expect("decodes");
        assert_eq!(
            (e.id.as_str(), e.kind.as_str(), e.source.as_str()),
            ("e-1", "com.acme.order.placed", "erp")
        );
        assert_eq!(e.time, 1_767_603_600_000);
        assert_eq!(e.data, json!({"orderId": "o-1"}));
        let missing = h(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "e-1"),
            ("ce_source", "erp"),
        ]);
        let err = decode(&rec(&missing, Some(b"{}")), &plain()).expect_err("no type");
        assert_eq!(
            err.to_string(),
            "binary CloudEvent: missing or empty attribute `type`"
        );
        let xml = h(&[
            ("ce_specversion", "1.0"),
            ("content-type", "application/xml"),
        ]);
        assert!(matches!(
            decode(&rec(&xml, Some(b"<a/>")), &plain()),
            Err(DecodeError::ContentType(_))
        ));
    }

    #[test]
    fn structured_mode() {
        let body = br#"{"specversion":"1.0","id":"e-2","type":"t","source":"s","data":{"a":1}}"#;
        let e = decode(&rec(&[], Some(body)), &plain()).expect("decodes");
        assert_eq!((e.id.as_str(), e.time), ("e-2", 1_000));
        assert_eq!(e.data, json!({"a": 1}));
        let bad = br#"{"specversion":"1.0","id":"e-2","type":"t","source":"s","time":"yesterday"}"#;
        let err = decode(&rec(&[], Some(bad)), &plain()).expect_err("bad time");
        assert!(
            err.to_string().contains("`yesterday` is not RFC 3339"),
            "{err}"
        );
    }

    #[test]
    fn plain_json_with_configured_fields() {
        let p = PlainJson {
            type_field: "eventType".into(),
            id_field: "eventId".into(),
        };
        let e = decode(
            &rec(
                &[],
                Some(br#"{"eventType":"lead.captured","leadId":"l-1"}"#),
            ),
            &p,
        )
        .expect("decodes");
        assert_eq!(e.kind, "lead.captured");
        assert_eq!(e.id, "crm.events/2/7");
        assert_eq!(e.data["leadId"], "l-1");
        let err = decode(&rec(&[], Some(br#"{"leadId":"l-1"}"#)), &p).expect_err("no type");
        assert_eq!(
            err.to_string(),
            "plain JSON event: missing or empty attribute `eventType`"
        );
        assert_eq!(decode(&rec(&[], None), &p), Err(DecodeError::Empty));
        assert!(matches!(
            decode(&rec(&[], Some(b"not json")), &p),
            Err(DecodeError::NotJson(_))
        ));
    }

    #[test]
    fn commands_are_binary_cloudevents_with_trace_context() {
        let c = Command {
            id: "p/k/s/1".into(),
            topic: "erp.commands".into(),
            kind: "com.acme.do".into(),
            key: "k".into(),
            data: json!({"x": 1}),
            step: "s".into(),
            attempt: 1,
            purpose: crate::engine::Purpose::Task,
        };
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (headers, payload) = encode_command(
            &c,
            "p",
            1_000,
            vec![("traceparent".to_string(), tp.as_bytes().to_vec())],
        );
        let back = decode(&rec(&headers, Some(&payload)), &plain()).expect("round trip");
        assert_eq!(
            (back.id.as_str(), back.kind.as_str(), back.source.as_str()),
            ("p/k/s/1", "com.acme.do", "baton/p")
        );
        assert_eq!(traceparent(&headers).as_deref(), Some(tp));
    }
}
