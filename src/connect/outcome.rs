//! A command's outcome as the CloudEvent a process awaits.
//!
//! Type `<command type>.succeeded` or `<command type>.failed`; id
//! `<command id>/succeeded` (or `/failed`), so a repeated outcome is a
//! duplicate an instance ignores; the command id again as the `correlationid`
//! extension and in `data.command`; the instance key as the Kafka key,
//! `ce_subject` and `data.key`, which is what a definition correlates on:
//!
//! ```yaml
//! correlate:
//!   "com.acme.crm.account.create.*": event.data.key
//! ```
//!
//! `data` of `.succeeded`: `{command, key, status, body}` (`body`: the JSON
//! answer, its text if it is not JSON, `null` if empty); of `.failed`:
//! `{command, key, status, reason, attempts, body}` (`status` absent when
//! the server never answered). `"truncated": true` says a body was too
//! large to carry and is left out.

use serde_json::{Value as Json, json};

use super::call::{Delivery, Outcome};
use super::config::Publish;
use super::request::{Command, Route};
use crate::engine::{Millis, format_rfc3339};
use crate::kafka::{Outgoing, record_size};

/// The outcome record of `command`, if `route` publishes it; `limit` is the
/// largest record the producer may write (a body that would not fit is left out).
pub fn record(
    command: &Command,
    route: &Route,
    endpoint: &str,
    delivery: &Delivery,
    now: Millis,
    limit: usize,
) -> Option<Outgoing> {
    let succeeded = matches!(delivery.outcome, Outcome::Succeeded { .. });
    let wanted = match route.publish {
        Publish::Always => true,
        Publish::Failures => !succeeded,
        Publish::Never => false,
    };
    if !wanted {
        return None;
    }
    let r = build(command, route, endpoint, delivery, now, false);
    if record_size(&r) <= limit {
        return Some(r);
    }
    Some(build(command, route, endpoint, delivery, now, true))
}

fn build(
    command: &Command,
    route: &Route,
    endpoint: &str,
    delivery: &Delivery,
    now: Millis,
    drop_body: bool,
) -> Outgoing {
    let id = &command.event.id;
    let (suffix, mut data) = match &delivery.outcome {
        Outcome::Succeeded {
            status,
            body,
            truncated,
        } => {
            let mut d = json!({"command": id, "key": command.key, "status": status, "body": body});
            if *truncated {
                d["truncated"] = Json::Bool(true);
            }
            ("succeeded", d)
        }
        Outcome::Failed {
            status,
            reason,
            body,
            truncated,
        } => {
            let mut d = json!({
                "command": id,
                "key": command.key,
                "reason": reason,
                "attempts": delivery.attempts,
                "body": body,
            });
            // Absent when the server never answered: `has(event.data.status)`
            // tells a refusal from an endpoint that stayed away.
            if let Some(s) = status {
                d["status"] = json!(s);
            }
            if *truncated {
                d["truncated"] = Json::Bool(true);
            }
            ("failed", d)
        }
    };
    if drop_body {
        data["body"] = Json::Null;
        data["truncated"] = Json::Bool(true);
    }
    let mut headers = vec![
        ("ce_specversion".to_string(), b"1.0".to_vec()),
        ("ce_id".to_string(), format!("{id}/{suffix}").into_bytes()),
        (
            "ce_source".to_string(),
            format!("baton-connect/{endpoint}").into_bytes(),
        ),
        (
            "ce_type".to_string(),
            format!("{}.{suffix}", route.kind).into_bytes(),
        ),
        ("ce_time".to_string(), format_rfc3339(now).into_bytes()),
        ("ce_subject".to_string(), command.key.clone().into_bytes()),
        ("ce_correlationid".to_string(), id.clone().into_bytes()),
        ("content-type".to_string(), b"application/json".to_vec()),
    ];
    // The outcome continues the command's trace.
    headers.extend(command.trace.iter().cloned());
    Outgoing {
        topic: route.result_topic.clone(),
        partition: None,
        key: command.record_key.clone(),
        payload: Some(serde_json::to_vec(&data).unwrap_or_else(|_| b"null".to_vec())),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::request::{Body, Template};
    use crate::engine::Event;
    use crate::wire::cloudevents::{PlainJson, Record, decode, header};

    fn command() -> Command {
        Command {
            event: Event {
                id: "onboarding/lead-1/crm-account/1".into(),
                kind: "com.acme.crm.account.create".into(),
                source: "baton/onboarding".into(),
                time: 0,
                data: json!({}),
            },
            key: "lead-1".into(),
            record_key: b"lead-1".to_vec(),
            attempt: 1,
            trace: vec![(
                "traceparent".into(),
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
            )],
        }
    }

    fn route(publish: Publish) -> Route {
        Route {
            kind: "com.acme.crm.account.create".into(),
            endpoint: 0,
            method: ureq::http::Method::POST,
            url: Template::default(),
            headers: Vec::new(),
            body: Body::Data,
            result_topic: "connector.results".into(),
            publish,
        }
    }

    fn succeeded(body: Json) -> Delivery {
        Delivery {
            outcome: Outcome::Succeeded {
                status: 201,
                body,
                truncated: false,
            },
            attempts: 1,
        }
    }

    #[test]
    fn outcomes_are_cloudevents_baton_reads() {
        let r = record(
            &command(),
            &route(Publish::Always),
            "crm",
            &succeeded(json!({"accountId": "C-1"})),
            1_000,
            1_000_000,
        )
        .expect("published");
        assert_eq!(r.topic, "connector.results");
        assert_eq!(r.key, b"lead-1");
        let rec = Record {
            topic: &r.topic,
            partition: 0,
            offset: 0,
            timestamp: None,
            headers: &r.headers,
            payload: r.payload.as_deref(),
        };
        let plain = PlainJson {
            type_field: "type".into(),
            id_field: "id".into(),
        };
        let e = decode(&rec, &plain).expect("decodes");
        assert_eq!(e.kind, "com.acme.crm.account.create.succeeded");
        assert_eq!(e.id, "onboarding/lead-1/crm-account/1/succeeded");
        assert_eq!(e.source, "baton-connect/crm");
        assert_eq!(
            e.data,
            json!({"command": "onboarding/lead-1/crm-account/1", "key": "lead-1", "status": 201, "body": {"accountId": "C-1"}})
        );
        assert_eq!(
            header(&r.headers, "ce_correlationid"),
            Some("onboarding/lead-1/crm-account/1")
        );
        assert!(header(&r.headers, "traceparent").is_some());
    }

    #[test]
    fn publish_filters_and_oversized_bodies_are_left_out() {
        let failed = Delivery {
            outcome: Outcome::Failed {
                status: Some(503),
                reason: "HTTP 503 Service Unavailable; gave up after 3 attempts".into(),
                body: Json::Null,
                truncated: false,
            },
            attempts: 3,
        };
        let ok = succeeded(json!("x".repeat(10_000)));
        assert!(
            record(
                &command(),
                &route(Publish::Never),
                "crm",
                &failed,
                0,
                1 << 20
            )
            .is_none()
        );
        assert!(
            record(
                &command(),
                &route(Publish::Failures),
                "crm",
                &ok,
                0,
                1 << 20
            )
            .is_none()
        );
        let f = record(
            &command(),
            &route(Publish::Failures),
            "crm",
            &failed,
            0,
            1 << 20,
        )
        .expect("failures are published");
        let data: Json =
            serde_json::from_slice(f.payload.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(data["status"], 503);
        assert_eq!(data["attempts"], 3);
        let small =
            record(&command(), &route(Publish::Always), "crm", &ok, 0, 2_000).expect("published");
        let data: Json =
            serde_json::from_slice(small.payload.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(data["body"], Json::Null);
        assert_eq!(data["truncated"], true);
    }
}
