//! Records of the operator topic (`<prefix>.operator`): one operator action
//! for one instance, as JSON, keyed by the instance id (`process/key`).
//!
//! ```json
//! {"v": 1, "process": "order-to-cash", "key": "o-42",
//!  "action": {"action": "retry", "incident": 1},
//!  "by": "alice", "reason": "ERP was down", "request": "9f2c…"}
//! ```
//!
//! `action` is what `POST /api/v1/instances/{process}/{key}/actions` takes
//! ([`ActionBody`]); `request` identifies the request, so an instance applies
//! it once however often it is sent. Anything else on the topic is a dead
//! letter with the reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Operator, ShardInputKind, ShardRecord, WireError};
use crate::engine::Action;

/// The operator record format this build writes and reads.
pub const OPERATOR_FORMAT: u32 = 1;

/// An operator action as JSON, tagged by `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ActionBody {
    /// Run the incident's step again (the oldest open incident by default).
    Retry {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<u32>,
    },
    /// Treat the incident's step as done.
    Skip {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<u32>,
    },
    /// End the instance as cancelled, compensating its completed tasks first
    /// when `compensate` is set.
    Cancel {
        #[serde(default)]
        compensate: bool,
    },
    /// Set one variable.
    Set { name: String, value: Value },
    /// Move the instance to version `to` of its definition; `steps` maps
    /// step ids of its version to step ids of the target.
    Migrate {
        to: u32,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        steps: BTreeMap<String, String>,
    },
}

impl ActionBody {
    /// The engine's action; `reason` goes with a cancel.
    pub fn to_action(&self, reason: &str) -> Result<Action, String> {
        Ok(match self {
            ActionBody::Retry { incident } => Action::Retry {
                incident: *incident,
            },
            ActionBody::Skip { incident } => Action::Skip {
                incident: *incident,
            },
            ActionBody::Cancel { compensate } => Action::Cancel {
                compensate: *compensate,
                reason: reason.to_string(),
            },
            ActionBody::Set { name, value } => {
                if name.trim().is_empty() {
                    return Err("set: `name` is empty".into());
                }
                Action::SetVariable {
                    name: name.clone(),
                    value: value.clone(),
                }
            }
            ActionBody::Migrate { to, steps } => {
                if *to == 0 {
                    return Err("migrate: `to` must be a version (1 or more)".into());
                }
                Action::Migrate {
                    to: *to,
                    steps: steps.clone(),
                }
            }
        })
    }

    /// `retry`, `skip`, `cancel`, `set` or `migrate`.
    pub fn name(&self) -> &'static str {
        match self {
            ActionBody::Retry { .. } => "retry",
            ActionBody::Skip { .. } => "skip",
            ActionBody::Cancel { .. } => "cancel",
            ActionBody::Set { .. } => "set",
            ActionBody::Migrate { .. } => "migrate",
        }
    }
}

/// One record of the operator topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorRequest {
    pub v: u32,
    pub process: String,
    pub key: String,
    pub action: ActionBody,
    /// Who asked (the admin token's name).
    pub by: String,
    /// Why (required, kept in the audit trail).
    pub reason: String,
    /// The request's id.
    pub request: String,
}

impl OperatorRequest {
    /// The instance id, which is also the record's key.
    pub fn instance(&self) -> String {
        format!("{}/{}", self.process, self.key)
    }
}

/// Encodes an operator record's value.
pub fn encode_operator(r: &OperatorRequest) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

/// Decodes an operator record's value into the shard input it asks for.
pub fn decode_operator(bytes: &[u8]) -> Result<ShardRecord, WireError> {
    let bad = |why: String| WireError::Operator(why);
    let r: OperatorRequest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if r.v != OPERATOR_FORMAT {
        return Err(bad(format!(
            "format v{} (this build reads v{OPERATOR_FORMAT})",
            r.v
        )));
    }
    for (field, value) in [
        ("process", &r.process),
        ("key", &r.key),
        ("by", &r.by),
        ("reason", &r.reason),
        ("request", &r.request),
    ] {
        if value.trim().is_empty() {
            return Err(bad(format!("`{field}` is empty")));
        }
    }
    let action = r.action.to_action(&r.reason).map_err(bad)?;
    Ok(ShardRecord {
        process: r.process,
        key: r.key,
        input: ShardInputKind::Operator(Operator {
            action,
            by: r.by,
            reason: r.reason,
            request: r.request,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(action: ActionBody) -> OperatorRequest {
        OperatorRequest {
            v: OPERATOR_FORMAT,
            process: "order-to-cash".into(),
            key: "o-42".into(),
            action,
            by: "alice".into(),
            reason: "ERP was down".into(),
            request: "r-1".into(),
        }
    }

    #[test]
    fn every_action_survives_a_round_trip() {
        let actions = [
            ActionBody::Retry { incident: Some(2) },
            ActionBody::Skip { incident: None },
            ActionBody::Cancel { compensate: true },
            ActionBody::Set {
                name: "note".into(),
                value: json!({"a": 1}),
            },
            ActionBody::Migrate {
                to: 2,
                steps: [("charge".to_string(), "pay".to_string())].into(),
            },
        ];
        for a in actions {
            let r = request(a.clone());
            let decoded = decode_operator(&encode_operator(&r)).expect("decodes");
            assert_eq!(
                (decoded.process.as_str(), decoded.key.as_str()),
                ("order-to-cash", "o-42")
            );
            let ShardInputKind::Operator(o) = decoded.input else {
                panic!("an operator input");
            };
            assert_eq!(o.action, a.to_action("ERP was down").expect("valid"));
            assert_eq!((o.by.as_str(), o.request.as_str()), ("alice", "r-1"));
        }
    }

    #[test]
    fn a_bad_record_says_what_is_wrong() {
        let cases = [
            (json!("nope"), "invalid type"),
            (
                json!({"v": 1, "process": "p", "key": "k", "action": {"action": "explode"}, "by": "a", "reason": "r", "request": "x"}),
                "unknown variant",
            ),
            (
                json!({"v": 2, "process": "p", "key": "k", "action": {"action": "retry"}, "by": "a", "reason": "r", "request": "x"}),
                "format v2",
            ),
            (
                json!({"v": 1, "process": "p", "key": "k", "action": {"action": "retry"}, "by": "a", "reason": " ", "request": "x"}),
                "`reason` is empty",
            ),
            (
                json!({"v": 1, "process": "p", "key": "k", "action": {"action": "set", "name": "", "value": 1}, "by": "a", "reason": "r", "request": "x"}),
                "`name` is empty",
            ),
            (
                json!({"v": 1, "process": "p", "key": "k", "action": {"action": "migrate", "to": 0}, "by": "a", "reason": "r", "request": "x"}),
                "`to` must be",
            ),
        ];
        for (value, want) in cases {
            let bytes = serde_json::to_vec(&value).expect("json");
            let err = decode_operator(&bytes).expect_err("refused").to_string();
            assert!(err.contains(want), "{value}: {err}");
            assert!(err.contains("operator record"), "{err}");
        }
    }
}
