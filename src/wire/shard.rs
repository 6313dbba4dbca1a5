//! Records of the repartition topic (`baton.v1.ShardRecord`,
//! `proto/baton/v1/shard.proto`): the inputs of a shard, decoded once.

use prost::Message;

use super::{WireError, bad, pb};
use crate::engine::{Action, Event, Millis, ParentRef, Vars};

/// Where an event entered baton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a shard record asks of its instance.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardInputKind {
    Event {
        event: Event,
        origin: Option<Origin>,
    },
    Timer {
        timer: String,
        due: Millis,
    },
    Call {
        parent: ParentRef,
        vars: Vars,
    },
    Operator(Operator),
}

/// An operator's action with who asked for it and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    pub action: Action,
    /// The admin token's name.
    pub by: String,
    pub reason: String,
    /// The request's id; one already applied to the instance is not applied again.
    pub request: String,
}

/// A shard record: for which instance, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRecord {
    pub process: String,
    pub key: String,
    pub input: ShardInputKind,
}

impl ShardRecord {
    /// `event`, `timer`, `call` or `operator`.
    pub fn name(&self) -> &'static str {
        match self.input {
            ShardInputKind::Event { .. } => "event",
            ShardInputKind::Timer { .. } => "timer",
            ShardInputKind::Call { .. } => "call",
            ShardInputKind::Operator(_) => "operator",
        }
    }
}

/// Encodes a shard record.
pub fn encode_shard(r: &ShardRecord) -> Vec<u8> {
    use pb::shard_record::Input;
    let input = match &r.input {
        ShardInputKind::Event { event, origin } => Input::Event(pb::EventInput {
            id: event.id.clone(),
            r#type: event.kind.clone(),
            source: event.source.clone(),
            time: event.time,
            data: serde_json::to_vec(&event.data).unwrap_or_default(),
            origin: origin.as_ref().map(|o| pb::Origin {
                topic: o.topic.clone(),
                partition: o.partition,
                offset: o.offset,
            }),
        }),
        ShardInputKind::Timer { timer, due } => Input::Timer(pb::TimerInput {
            timer: timer.clone(),
            due: *due,
        }),
        ShardInputKind::Call { parent, vars } => Input::Call(pb::CallInput {
            parent_process: parent.process.clone(),
            parent_key: parent.key.clone(),
            parent_version: parent.version,
            vars: serde_json::to_vec(vars).unwrap_or_default(),
        }),
        ShardInputKind::Operator(o) => Input::Operator(encode_operator(o)),
    };
    pb::ShardRecord {
        process: r.process.clone(),
        key: r.key.clone(),
        input: Some(input),
    }
    .encode_to_vec()
}

/// Decodes a shard record; an error names what is wrong.
pub fn decode_shard(bytes: &[u8]) -> Result<ShardRecord, WireError> {
    use pb::shard_record::Input;
    let r = pb::ShardRecord::decode(bytes).map_err(WireError::Shard)?;
    if r.process.is_empty() || r.key.is_empty() {
        return Err(bad("process/key", "empty"));
    }
    let input = match r.input {
        None => return Err(bad("input", "missing")),
        Some(Input::Event(e)) => ShardInputKind::Event {
            event: Event {
                id: e.id,
                kind: e.r#type,
                source: e.source,
                time: e.time,
                data: serde_json::from_slice(&e.data)
                    .map_err(|err| bad("event.data", err.to_string()))?,
            },
            origin: e.origin.map(|o| Origin {
                topic: o.topic,
                partition: o.partition,
                offset: o.offset,
            }),
        },
        Some(Input::Timer(t)) => ShardInputKind::Timer {
            timer: t.timer,
            due: t.due,
        },
        Some(Input::Call(c)) => ShardInputKind::Call {
            parent: ParentRef {
                process: c.parent_process,
                key: c.parent_key,
                version: c.parent_version,
            },
            vars: serde_json::from_slice(&c.vars)
                .map_err(|err| bad("call.vars", err.to_string()))?,
        },
        Some(Input::Operator(o)) => ShardInputKind::Operator(decode_operator(o)?),
    };
    Ok(ShardRecord {
        process: r.process,
        key: r.key,
        input,
    })
}

fn encode_operator(o: &Operator) -> pb::OperatorInput {
    use pb::operator_input::Action as A;
    let action = match &o.action {
        Action::Retry { incident } => A::Retry(pb::Resolve {
            incident: *incident,
        }),
        Action::Skip { incident } => A::Skip(pb::Resolve {
            incident: *incident,
        }),
        Action::Cancel { compensate, reason } => A::Cancel(pb::Cancel {
            compensate: *compensate,
            reason: reason.clone(),
        }),
        Action::SetVariable { name, value } => A::Set(pb::SetVariable {
            name: name.clone(),
            value: serde_json::to_vec(value).unwrap_or_default(),
        }),
        Action::Migrate { to, steps } => A::Migrate(pb::Migrate {
            to_version: *to,
            steps: steps.clone().into_iter().collect(),
        }),
    };
    pb::OperatorInput {
        action: Some(action),
        by: o.by.clone(),
        reason: o.reason.clone(),
        request: o.request.clone(),
    }
}

fn decode_operator(o: pb::OperatorInput) -> Result<Operator, WireError> {
    use pb::operator_input::Action as A;
    let action = match o.action {
        None => return Err(bad("operator.action", "missing")),
        Some(A::Retry(r)) => Action::Retry {
            incident: r.incident,
        },
        Some(A::Skip(r)) => Action::Skip {
            incident: r.incident,
        },
        Some(A::Cancel(c)) => Action::Cancel {
            compensate: c.compensate,
            reason: c.reason,
        },
        Some(A::Set(s)) => {
            if s.name.is_empty() {
                return Err(bad("operator.set.name", "empty"));
            }
            Action::SetVariable {
                name: s.name,
                value: serde_json::from_slice(&s.value)
                    .map_err(|err| bad("operator.set.value", err.to_string()))?,
            }
        }
        Some(A::Migrate(m)) => {
            if m.to_version == 0 {
                return Err(bad("operator.migrate.to_version", "missing"));
            }
            Action::Migrate {
                to: m.to_version,
                steps: m.steps.into_iter().collect(),
            }
        }
    };
    Ok(Operator {
        action,
        by: o.by,
        reason: o.reason,
        request: o.request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_survives_a_round_trip_and_garbage_is_an_error() {
        let records = [
            ShardRecord {
                process: "p".into(),
                key: "k".into(),
                input: ShardInputKind::Event {
                    event: Event {
                        id: "e-1".into(),
                        kind: "com.acme.x".into(),
                        source: "s".into(),
                        time: 7,
                        data: json!({"a": [1, 2], "b": null}),
                    },
                    origin: Some(Origin {
                        topic: "crm.events".into(),
                        partition: 3,
                        offset: 42,
                    }),
                },
            },
            ShardRecord {
                process: "p".into(),
                key: "k".into(),
                input: ShardInputKind::Timer {
                    timer: "t/timeout/1".into(),
                    due: 1_700_000_000_000,
                },
            },
            ShardRecord {
                process: "child".into(),
                key: "k-2".into(),
                input: ShardInputKind::Call {
                    parent: ParentRef {
                        process: "p".into(),
                        key: "k".into(),
                        version: 2,
                    },
                    vars: [("x".to_string(), json!(1))].into(),
                },
            },
        ];
        let actions = [
            Action::Retry { incident: Some(3) },
            Action::Skip { incident: None },
            Action::Cancel {
                compensate: true,
                reason: "customer asked".into(),
            },
            Action::SetVariable {
                name: "limit".into(),
                value: json!({"eur": 5000}),
            },
            Action::Migrate {
                to: 2,
                steps: [("charge".to_string(), "pay".to_string())].into(),
            },
        ];
        let records = records.into_iter().chain(actions.map(|a| ShardRecord {
            process: "p".into(),
            key: "k".into(),
            input: ShardInputKind::Operator(Operator {
                action: a,
                by: "alice".into(),
                reason: "INC-7".into(),
                request: "r-1".into(),
            }),
        }));
        for r in records {
            assert_eq!(decode_shard(&encode_shard(&r)).expect("decodes"), r);
        }
        assert!(decode_shard(b"{\"input\":\"event\"}").is_err());
        assert!(decode_shard(&[]).is_err());
    }
}
