//! The only place that knows encodings: protobuf instance snapshots for the
//! changelog, protobuf shard records for the repartition topic
//! ([`encode_shard`], [`decode_shard`]), and CloudEvents ([`cloudevents`])
//! for events in and commands out.
//!
//! [`encode`] and [`decode`] convert between [`Instance`] and
//! `baton.v1.InstanceSnapshot` (`proto/baton/v1/instance.proto`). Decoding
//! validates everything and returns an error for any input it cannot trust;
//! it never panics.

pub mod cloudevents;
mod deploy;
mod operator;
mod peek;
mod shard;

pub use deploy::{DEPLOY_FORMAT, DeployRecord, decode_deploy, encode_deploy};
pub use operator::{
    ActionBody, OPERATOR_FORMAT, OperatorRequest, decode_operator, encode_operator,
};
pub use peek::{Peek, changelog_position, peek_changelog};
pub use shard::{Operator, Origin, ShardInputKind, ShardRecord, decode_shard, encode_shard};

use prost::Message;

use crate::engine::{
    ArmedExpect, Buffered, Completion, Event, Incident, Instance, ParentRef, Phase, Status, Timer,
    TimerKind, Token, Vars,
};

/// Generated protobuf types.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/baton.v1.rs"));
}

/// The snapshot format this build writes and reads.
pub const FORMAT: u32 = 1;

/// Why bytes are not a usable snapshot.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a protobuf instance snapshot: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not a baton shard record: {0}")]
    Shard(prost::DecodeError),
    #[error("snapshot format {0} is not supported (this build reads format {FORMAT})")]
    Format(u32),
    #[error("snapshot field `{field}`: {reason}")]
    Field { field: String, reason: String },
    #[error("not a baton operator record: {0}")]
    Operator(String),
    #[error("not a baton definitions record: {0}")]
    Deploy(String),
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> WireError {
    WireError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Encodes an instance as a snapshot.
pub fn encode(i: &Instance) -> Vec<u8> {
    to_proto(i).encode_to_vec()
}

/// Decodes a snapshot.
pub fn decode(bytes: &[u8]) -> Result<Instance, WireError> {
    from_proto(pb::InstanceSnapshot::decode(bytes)?)
}

/// Encodes a changelog record: the snapshot and the position on the shard's
/// repartition partition whose processing wrote it.
pub fn encode_changelog(position: u64, i: &Instance) -> Vec<u8> {
    encode_changelog_at("", position, i)
}

/// Encodes a changelog record written by a record of `source` (an input
/// topic processed in place; empty: the repartition topic).
pub fn encode_changelog_at(source: &str, position: u64, i: &Instance) -> Vec<u8> {
    pb::ChangelogRecord {
        position,
        instance: Some(to_proto(i)),
        source: source.to_string(),
    }
    .encode_to_vec()
}

/// Decodes a changelog record into its position and instance.
pub fn decode_changelog(bytes: &[u8]) -> Result<(u64, Instance), WireError> {
    decode_changelog_at(bytes).map(|(_, position, i)| (position, i))
}

/// Decodes a changelog record into its source topic (empty: the repartition
/// topic), position and instance.
pub fn decode_changelog_at(bytes: &[u8]) -> Result<(String, u64, Instance), WireError> {
    let r = pb::ChangelogRecord::decode(bytes)?;
    let instance = r.instance.ok_or_else(|| bad("instance", "missing"))?;
    Ok((r.source, r.position, from_proto(instance)?))
}

fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    // A JSON value always serialises; the fallback keeps this infallible.
    serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec())
}

fn to_proto(i: &Instance) -> pb::InstanceSnapshot {
    use pb::timer::Kind;
    use pb::token::Phase as P;
    pb::InstanceSnapshot {
        format: FORMAT,
        process: i.process.clone(),
        version: i.version,
        key: i.key.clone(),
        status: match i.status {
            Status::Pending => pb::Status::Pending,
            Status::Active => pb::Status::Active,
            Status::Completed => pb::Status::Completed,
            Status::Failed => pb::Status::Failed,
            Status::Cancelled => pb::Status::Cancelled,
        } as i32,
        vars: i
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), json_bytes(v)))
            .collect(),
        tokens: i
            .tokens
            .iter()
            .map(|t| pb::Token {
                id: t.id,
                step: t.step as u32,
                attempt: t.attempt,
                visit: t.visit,
                phase: Some(match &t.phase {
                    Phase::Awaiting => P::Awaiting(pb::Empty {}),
                    Phase::Backoff => P::Backoff(pb::Empty {}),
                    Phase::Waiting => P::Waiting(pb::Empty {}),
                    Phase::Calling(k) => P::Calling(k.clone()),
                    Phase::Joining(n) => P::Joining(*n),
                    Phase::Parked(n) => P::Parked(*n),
                }),
                parent: t.parent,
            })
            .collect(),
        completed: i
            .completed
            .iter()
            .map(|c| pb::Completion {
                step: c.step as u32,
                attempt: c.attempt,
                visit: c.visit,
            })
            .collect(),
        timers: i
            .timers
            .iter()
            .map(|t| pb::Timer {
                id: t.id.clone(),
                due: t.due,
                kind: Some(match t.kind {
                    TimerKind::Timeout(n) => Kind::Timeout(n),
                    TimerKind::Backoff(n) => Kind::Backoff(n),
                    TimerKind::Wait(n) => Kind::Wait(n),
                    TimerKind::Expect(n) => Kind::Expect(n),
                    TimerKind::Buffer => Kind::Buffer(pb::Empty {}),
                }),
            })
            .collect(),
        expects: i
            .expects
            .iter()
            .map(|e| pb::ArmedExpect {
                index: e.index,
                due: e.due,
            })
            .collect(),
        incidents: i
            .incidents
            .iter()
            .map(|n| pb::Incident {
                id: n.id,
                token: n.token,
                step: n.step.map(|s| s as u32),
                reason: n.reason.clone(),
                at: n.at,
            })
            .collect(),
        seen: i.seen.iter().cloned().collect(),
        buffer: i
            .buffer
            .iter()
            .map(|b| pb::Buffered {
                event: Some(pb::Event {
                    id: b.event.id.clone(),
                    r#type: b.event.kind.clone(),
                    source: b.event.source.clone(),
                    time: b.event.time,
                    data: json_bytes(&b.event.data),
                }),
                expires: b.expires,
            })
            .collect(),
        visits: i.visits.iter().map(|(k, v)| (*k as u32, *v)).collect(),
        flow_done: i.flow_done,
        parent: i.parent.as_ref().map(|p| pb::ParentRef {
            process: p.process.clone(),
            key: p.key.clone(),
            version: p.version,
        }),
        next_token: i.next_token,
        next_incident: i.next_incident,
        transitions: i.transitions,
        started_at: i.started_at,
        updated_at: i.updated_at,
        trace: i.trace.clone().unwrap_or_default(),
        met_expects: i.met_expects.clone(),
        definition_hash: i.definition.clone(),
        compensated: i.compensated,
    }
}

fn json(field: &str, bytes: &[u8]) -> Result<serde_json::Value, WireError> {
    serde_json::from_slice(bytes).map_err(|e| bad(field, format!("invalid JSON: {e}")))
}

fn from_proto(s: pb::InstanceSnapshot) -> Result<Instance, WireError> {
    use pb::timer::Kind;
    use pb::token::Phase as P;
    if s.format != FORMAT {
        return Err(WireError::Format(s.format));
    }
    if s.process.is_empty() {
        return Err(bad("process", "empty"));
    }
    let status = peek::status(s.status)?;
    let mut vars = Vars::new();
    for (k, v) in &s.vars {
        vars.insert(k.clone(), json(&format!("vars.{k}"), v)?);
    }
    let tokens = s
        .tokens
        .into_iter()
        .enumerate()
        .map(|(n, t)| {
            let phase = match t.phase {
                Some(P::Awaiting(_)) => Phase::Awaiting,
                Some(P::Backoff(_)) => Phase::Backoff,
                Some(P::Waiting(_)) => Phase::Waiting,
                Some(P::Calling(k)) => Phase::Calling(k),
                Some(P::Joining(c)) => Phase::Joining(c),
                Some(P::Parked(c)) => Phase::Parked(c),
                None => return Err(bad(format!("tokens[{n}].phase"), "missing")),
            };
            Ok(Token {
                id: t.id,
                step: t.step as usize,
                attempt: t.attempt,
                visit: t.visit,
                phase,
                parent: t.parent,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let timers = s
        .timers
        .into_iter()
        .enumerate()
        .map(|(n, t)| {
            let kind = match t.kind {
                Some(Kind::Timeout(x)) => TimerKind::Timeout(x),
                Some(Kind::Backoff(x)) => TimerKind::Backoff(x),
                Some(Kind::Wait(x)) => TimerKind::Wait(x),
                Some(Kind::Expect(x)) => TimerKind::Expect(x),
                Some(Kind::Buffer(_)) => TimerKind::Buffer,
                None => return Err(bad(format!("timers[{n}].kind"), "missing")),
            };
            Ok(Timer {
                id: t.id,
                due: t.due,
                kind,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let buffer = s
        .buffer
        .into_iter()
        .enumerate()
        .map(|(n, b)| {
            let e = b
                .event
                .ok_or_else(|| bad(format!("buffer[{n}].event"), "missing"))?;
            Ok(Buffered {
                event: Event {
                    data: json(&format!("buffer[{n}].event.data"), &e.data)?,
                    id: e.id,
                    kind: e.r#type,
                    source: e.source,
                    time: e.time,
                },
                expires: b.expires,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(Instance {
        process: s.process,
        version: s.version,
        key: s.key,
        status,
        vars,
        tokens,
        completed: s
            .completed
            .into_iter()
            .map(|c| Completion {
                step: c.step as usize,
                attempt: c.attempt,
                visit: c.visit,
            })
            .collect(),
        timers,
        expects: s
            .expects
            .into_iter()
            .map(|e| ArmedExpect {
                index: e.index,
                due: e.due,
            })
            .collect(),
        incidents: s.incidents.into_iter().map(incident).collect(),
        seen: s.seen.into_iter().collect(),
        buffer,
        visits: s.visits.into_iter().map(|(k, v)| (k as usize, v)).collect(),
        flow_done: s.flow_done,
        parent: s.parent.map(|p| ParentRef {
            process: p.process,
            key: p.key,
            version: p.version,
        }),
        next_token: s.next_token,
        next_incident: s.next_incident,
        transitions: s.transitions,
        started_at: s.started_at,
        updated_at: s.updated_at,
        trace: (!s.trace.is_empty()).then_some(s.trace),
        met_expects: s.met_expects,
        definition: s.definition_hash,
        compensated: s.compensated,
    })
}

/// An incident as the snapshot holds it.
fn incident(n: pb::Incident) -> Incident {
    Incident {
        id: n.id,
        token: n.token,
        step: n.step.map(|x| x as usize),
        reason: n.reason,
        at: n.at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rich() -> Instance {
        let mut i = Instance::new("order-to-cash", 3, "o-1");
        i.status = Status::Active;
        i.vars.insert("total".into(), json!(250));
        i.vars.insert(
            "lines".into(),
            json!([{"sku": "A", "qty": 2, "tags": {"x": null}}]),
        );
        i.vars.insert("ratio".into(), json!(0.5));
        i.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        for (n, phase) in [
            Phase::Awaiting,
            Phase::Backoff,
            Phase::Waiting,
            Phase::Calling("c-1".into()),
            Phase::Joining(2),
            Phase::Parked(7),
        ]
        .into_iter()
        .enumerate()
        {
            i.tokens.push(Token {
                id: n as u32 + 1,
                step: n,
                attempt: 2,
                visit: 1,
                phase,
                parent: (n > 0).then_some(1),
            });
        }
        i.completed.push(Completion {
            step: 0,
            attempt: 1,
            visit: 1,
        });
        for (n, kind) in [
            TimerKind::Timeout(1),
            TimerKind::Backoff(2),
            TimerKind::Wait(3),
            TimerKind::Expect(0),
            TimerKind::Buffer,
        ]
        .into_iter()
        .enumerate()
        {
            i.timers.push(Timer {
                id: format!("t{n}"),
                due: 1_000 + n as u64,
                kind,
            });
        }
        i.expects.push(ArmedExpect { index: 0, due: 99 });
        i.met_expects.push(1);
        i.definition = "0123456789abcdef".into();
        i.incidents.push(Incident {
            id: 7,
            token: Some(6),
            step: Some(5),
            reason: "CEL failed".into(),
            at: 5,
        });
        i.incidents.push(Incident {
            id: 8,
            token: None,
            step: None,
            reason: "late".into(),
            at: 6,
        });
        i.seen.extend(["e1".to_string(), "e2".to_string()]);
        i.buffer.push(Buffered {
            event: Event {
                id: "e3".into(),
                kind: "com.acme.x".into(),
                source: "crm".into(),
                time: 42,
                data: json!({"a": [1, 2, {"b": "c"}]}),
            },
            expires: 100,
        });
        i.visits.insert(0, 1);
        i.visits.insert(4, 3);
        i.flow_done = true;
        i.parent = Some(ParentRef {
            process: "parent".into(),
            key: "p-1".into(),
            version: 2,
        });
        i.next_token = 7;
        i.next_incident = 9;
        i.transitions = 12345;
        i.started_at = 1;
        i.updated_at = 2;
        i
    }

    #[test]
    fn round_trip_keeps_everything() {
        let i = rich();
        let bytes = encode(&i);
        assert_eq!(decode(&bytes).expect("decodes"), i);
        // Deterministic bytes: equal states encode equally.
        assert_eq!(encode(&rich()), bytes);
    }

    #[test]
    fn changelog_records_carry_their_position() {
        let bytes = encode_changelog(42, &rich());
        let (seq, back) = decode_changelog(&bytes).expect("decodes");
        assert_eq!((seq, back), (42, rich()));
        assert!(decode_changelog(&[]).is_err());
        let bytes = encode_changelog_at("orders.events", 7, &rich());
        assert_eq!(
            decode_changelog_at(&bytes).expect("decodes"),
            ("orders.events".to_string(), 7, rich())
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(decode(b"\xff\xff\xff\xff garbage").is_err());
        let bytes = encode(&rich());
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        // An empty message is format 0: rejected, not taken for an instance.
        assert!(matches!(decode(&[]), Err(WireError::Format(0))));
    }

    #[test]
    fn unknown_format_and_bad_fields_are_rejected() {
        let mut s = to_proto(&rich());
        s.format = 2;
        assert!(matches!(
            decode(&s.encode_to_vec()),
            Err(WireError::Format(2))
        ));
        let mut s = to_proto(&rich());
        s.status = 17;
        let err = decode(&s.encode_to_vec()).expect_err("bad status");
        assert_eq!(err.to_string(), "snapshot field `status`: unknown value 17");
        let mut s = to_proto(&rich());
        s.vars.insert("bad".into(), b"{not json".to_vec());
        let err = decode(&s.encode_to_vec()).expect_err("bad json");
        assert!(
            err.to_string()
                .starts_with("snapshot field `vars.bad`: invalid JSON"),
            "{err}"
        );
        let mut s = to_proto(&rich());
        s.tokens[0].phase = None;
        let err = decode(&s.encode_to_vec()).expect_err("missing phase");
        assert_eq!(err.to_string(), "snapshot field `tokens[0].phase`: missing");
    }

    proptest! {
        #[test]
        fn numbers_in_variables_survive_a_snapshot_exactly(x in any::<f64>().prop_filter("finite", |x| x.is_finite()), n in any::<i64>(), u in any::<u64>()) {
            let mut i = rich();
            i.vars.insert("x".into(), json!(x));
            i.vars.insert("n".into(), json!(n));
            i.vars.insert("u".into(), json!(u));
            let back = decode(&encode(&i)).expect("decodes");
            prop_assert_eq!(back.vars["x"].as_f64(), Some(x));
            prop_assert_eq!(back.vars["n"].as_i64(), Some(n));
            prop_assert_eq!(back.vars["u"].as_u64(), Some(u));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoding_mutated_snapshots_never_panics(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = encode(&rich());
            for (at, b) in flips {
                let n = at.index(bytes.len());
                bytes[n] ^= b;
            }
            let _ = decode(&bytes);
        }
    }
}
