//! The audit trail: what every input did to its instance, complete enough to
//! rebuild the instance from it.
//!
//! The runtime writes one [`Entry`] for every input a shard applies (an
//! event, a due timer, a call, an operator's action, an event it refused),
//! also one that caused no transition: an event the engine did not use can
//! still change the instance (it counts as seen). Entries are packed per
//! shard into [`Record`]s on the audit topic
//! (`{"v": 2, "shard": p, "entries": [...]}`, schema in
//! `proto/baton/v1/audit.schema.json`). An entry holds the input in full and
//! the time it was applied at, so [`replay`] can apply the same inputs to a
//! fresh [`Shard`] and check that the trail, the deployed definitions and the
//! changelog tell the same story.
//!
//! This module owns the format and the replay; it knows nothing of Kafka.
//! It must not change what the shard does: it only reads [`Applied`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::{self, Instance, Millis, Registry, Status, Vars};
use crate::shard::{Action, Applied, Shard};
use crate::wire::{self, ShardInputKind, ShardRecord};

/// The version of the audit record this build writes and reads.
pub const VERSION: u32 = 2;

/// Why bytes are not an audit record this build reads.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("not an audit record: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "audit record version {found} is not supported: this build reads version {VERSION} \
         (version 1 records carry no inputs and cannot be replayed)"
    )]
    Version { found: u64 },
    #[error("audit record has no version `v`; this build reads version {VERSION}")]
    Unversioned,
}

/// One record of the audit topic: a shard's entries, in the order their
/// inputs were applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Format version, [`VERSION`].
    pub v: u32,
    /// The shard (partition of the repartition topic) the entries come from.
    pub shard: i32,
    pub entries: Vec<Entry>,
}

impl Record {
    /// A record of the current version.
    pub fn new(shard: i32, entries: Vec<Entry>) -> Record {
        Record {
            v: VERSION,
            shard,
            entries,
        }
    }

    /// The record as JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Cannot fail: every map key is a string and no type has a fallible
        // `Serialize`.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Decodes an audit record; a record of another version is an error saying so.
pub fn decode(bytes: &[u8]) -> Result<Record, AuditError> {
    /// Only the version: other versions have other fields.
    #[derive(Deserialize)]
    struct Head {
        v: Option<u64>,
    }
    match serde_json::from_slice::<Head>(bytes)?.v {
        None => Err(AuditError::Unversioned),
        Some(v) if v == u64::from(VERSION) => Ok(serde_json::from_slice(bytes)?),
        Some(found) => Err(AuditError::Version { found }),
    }
}

/// Groups the entries of a stream of records by instance (`process/key`),
/// each instance's entries in the order of the stream.
pub fn by_instance(records: impl IntoIterator<Item = Record>) -> BTreeMap<String, Vec<Entry>> {
    let mut out: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for entry in records.into_iter().flat_map(|r| r.entries) {
        match out.get_mut(&entry.instance) {
            Some(list) => list.push(entry),
            None => {
                out.insert(entry.instance.clone(), vec![entry]);
            }
        }
    }
    out
}

/// What one input did to one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// When the input took effect, RFC 3339 UTC with milliseconds: an
    /// event's own time if it carries one, a timer's due time, else `time`.
    pub at: String,
    /// Epoch milliseconds passed to the shard as the input's `now` (the
    /// time its record was written): what a replay passes again.
    pub time: Millis,
    /// The shard that applied the input.
    pub shard: i32,
    /// The instance, `process/key`.
    pub instance: String,
    pub process: String,
    pub key: String,
    /// The definition version the instance runs after the input; `null`
    /// when no engine step ran (the input found no instance to act on, or
    /// the instance's retention passed).
    pub version: Option<u32>,
    /// The content hash of that version (`Definition::hash`); `null` with
    /// `version`.
    pub definition: Option<String>,
    /// The input, in full.
    pub input: Input,
    /// The steps the input found the instance at (more than one inside a
    /// `parallel`); empty when the input caused no transition.
    pub before: Vec<String>,
    /// The steps the instance is at after the input.
    pub after: Vec<String>,
    /// The instance's status after the input; `null` when no engine step ran.
    #[serde(with = "opt_status")]
    pub status: Option<Status>,
    /// Transitions the input caused.
    pub transitions: u64,
    /// What the input made the runtime do.
    pub effects: Effects,
}

impl Entry {
    /// The entry for `applied`, the result of applying `input` (taken with
    /// [`Input::of`] before the shard consumed the record) at `now`.
    /// `hash` is the content hash of the definition version
    /// [`Entry::version_of`] names (empty: none).
    pub fn new(shard: i32, input: Input, now: Millis, applied: &Applied, hash: &str) -> Entry {
        let outcome = Outcome::of(applied, input.event_id());
        let (process, key) = applied
            .id
            .split_once('/')
            .unwrap_or((applied.id.as_str(), ""));
        Entry {
            at: engine::format_rfc3339(applied.at),
            time: now,
            shard,
            instance: applied.id.clone(),
            process: process.to_string(),
            key: key.to_string(),
            version: outcome.version,
            definition: (outcome.version.is_some() && !hash.is_empty()).then(|| hash.to_string()),
            input,
            before: outcome.before,
            after: outcome.after,
            status: outcome.status,
            transitions: applied.transitions,
            effects: outcome.effects,
        }
    }

    /// The definition version an entry of `applied` names: the instance's
    /// version after the input.
    pub fn version_of(applied: &Applied) -> Option<u32> {
        applied
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Audit(a) => Some(a.version),
                _ => None,
            })
            .or(applied.version)
    }

    /// The entry as JSON, as it stands in a record's `entries`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `entry N (event e-9)`: names the entry in a replay's reasons.
    fn describe(&self, n: usize) -> String {
        match &self.input {
            Input::Event(e) => format!("entry {n} (event {})", e.id),
            Input::Refused { event, .. } => format!("entry {n} (refused event {})", event.id),
            Input::Timer { timer, .. } => format!("entry {n} (timer {timer})"),
            Input::Call { parent, .. } => {
                format!("entry {n} (call from {}/{})", parent.process, parent.key)
            }
            Input::Operator(o) => format!("entry {n} ({} by {})", o.action.name(), o.by),
        }
    }
}

/// The input of an entry, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Input {
    /// A domain event (or the end of a called instance, told to its caller).
    Event(EventInput),
    /// A timer of the instance fell due.
    Timer {
        /// The timer's id.
        timer: String,
        /// Its due time, epoch ms: the time it runs at.
        due: Millis,
    },
    /// The instance was started by a `call` step of another instance.
    Call {
        parent: Parent,
        /// The variables the caller passed.
        vars: Vars,
    },
    /// An operator's action.
    Operator(OperatorInput),
    /// An event the runtime could not process (its results would be too
    /// large, or processing it failed): the instance got an incident.
    Refused {
        event: EventInput,
        /// Why it was refused.
        reason: String,
    },
}

/// A domain event as it reached the shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// CloudEvents `id`.
    pub id: String,
    /// CloudEvents `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `time`, epoch ms (0: none).
    pub time: Millis,
    /// CloudEvents `data`.
    pub data: serde_json::Value,
    /// Where it entered baton; `null` for an event baton made (a called
    /// instance's end).
    pub origin: Option<Origin>,
}

/// A topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The calling instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parent {
    pub process: String,
    pub key: String,
    /// The caller's definition version.
    pub version: u32,
}

/// An operator's action with who asked for it and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorInput {
    pub action: OperatorAction,
    /// The admin token's name.
    pub by: String,
    /// Why the operator acted.
    pub reason: String,
    /// The request's id.
    pub request: String,
}

/// What an operator asked for, tagged by `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum OperatorAction {
    /// Run an incident's step again (absent `incident`: the oldest).
    Retry {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<u32>,
    },
    /// Treat an incident's step as done (absent `incident`: the oldest).
    Skip {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<u32>,
    },
    /// End the instance as cancelled, compensating first if asked.
    Cancel { compensate: bool, reason: String },
    /// Set a variable.
    Set {
        name: String,
        value: serde_json::Value,
    },
    /// Move the instance to another version of its definition; `steps` maps
    /// step ids of its version to those of the target.
    Migrate {
        to_version: u32,
        steps: BTreeMap<String, String>,
    },
}

impl OperatorAction {
    fn name(&self) -> &'static str {
        match self {
            OperatorAction::Retry { .. } => "retry",
            OperatorAction::Skip { .. } => "skip",
            OperatorAction::Cancel { .. } => "cancel",
            OperatorAction::Set { .. } => "set",
            OperatorAction::Migrate { .. } => "migrate",
        }
    }

    fn of(a: &engine::Action) -> OperatorAction {
        match a {
            engine::Action::Retry { incident } => OperatorAction::Retry {
                incident: *incident,
            },
            engine::Action::Skip { incident } => OperatorAction::Skip {
                incident: *incident,
            },
            engine::Action::Cancel { compensate, reason } => OperatorAction::Cancel {
                compensate: *compensate,
                reason: reason.clone(),
            },
            engine::Action::SetVariable { name, value } => OperatorAction::Set {
                name: name.clone(),
                value: value.clone(),
            },
            engine::Action::Migrate { to, steps } => OperatorAction::Migrate {
                to_version: *to,
                steps: steps.clone(),
            },
        }
    }

    fn action(&self) -> engine::Action {
        match self {
            OperatorAction::Retry { incident } => engine::Action::Retry {
                incident: *incident,
            },
            OperatorAction::Skip { incident } => engine::Action::Skip {
                incident: *incident,
            },
            OperatorAction::Cancel { compensate, reason } => engine::Action::Cancel {
                compensate: *compensate,
                reason: reason.clone(),
            },
            OperatorAction::Set { name, value } => engine::Action::SetVariable {
                name: name.clone(),
                value: value.clone(),
            },
            OperatorAction::Migrate { to_version, steps } => engine::Action::Migrate {
                to: *to_version,
                steps: steps.clone(),
            },
        }
    }
}

impl EventInput {
    fn of(e: &engine::Event, origin: Option<&wire::Origin>) -> EventInput {
        EventInput {
            id: e.id.clone(),
            kind: e.kind.clone(),
            source: e.source.clone(),
            time: e.time,
            data: e.data.clone(),
            origin: origin.map(|o| Origin {
                topic: o.topic.clone(),
                partition: o.partition,
                offset: o.offset,
            }),
        }
    }

    fn record(&self, process: &str, key: &str) -> ShardRecord {
        ShardRecord {
            process: process.to_string(),
            key: key.to_string(),
            input: ShardInputKind::Event {
                event: engine::Event {
                    id: self.id.clone(),
                    kind: self.kind.clone(),
                    source: self.source.clone(),
                    time: self.time,
                    data: self.data.clone(),
                },
                origin: self.origin.as_ref().map(|o| wire::Origin {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    offset: o.offset,
                }),
            },
        }
    }
}

impl Input {
    /// The input a shard record carries. The runtime takes it before
    /// `Shard::apply` consumes the record.
    pub fn of(record: &ShardRecord) -> Input {
        match &record.input {
            ShardInputKind::Event { event, origin } => {
                Input::Event(EventInput::of(event, origin.as_ref()))
            }
            ShardInputKind::Timer { timer, due } => Input::Timer {
                timer: timer.clone(),
                due: *due,
            },
            ShardInputKind::Call { parent, vars } => Input::Call {
                parent: Parent {
                    process: parent.process.clone(),
                    key: parent.key.clone(),
                    version: parent.version,
                },
                vars: vars.clone(),
            },
            ShardInputKind::Operator(o) => Input::Operator(OperatorInput {
                action: OperatorAction::of(&o.action),
                by: o.by.clone(),
                reason: o.reason.clone(),
                request: o.request.clone(),
            }),
        }
    }

    /// The input of an event record passed to `Shard::refuse` with
    /// `reason`; `None` for a record that is not an event (the shard
    /// refuses only events).
    pub fn refused(record: &ShardRecord, reason: &str) -> Option<Input> {
        match &record.input {
            ShardInputKind::Event { event, origin } => Some(Input::Refused {
                event: EventInput::of(event, origin.as_ref()),
                reason: reason.to_string(),
            }),
            _ => None,
        }
    }

    /// The shard record that carries this input to `process/key`; `None`
    /// for a refused event, which goes to `Shard::refuse` instead.
    pub fn record(&self, process: &str, key: &str) -> Option<ShardRecord> {
        let input = match self {
            Input::Event(e) => return Some(e.record(process, key)),
            Input::Refused { .. } => return None,
            Input::Timer { timer, due } => ShardInputKind::Timer {
                timer: timer.clone(),
                due: *due,
            },
            Input::Call { parent, vars } => ShardInputKind::Call {
                parent: engine::ParentRef {
                    process: parent.process.clone(),
                    key: parent.key.clone(),
                    version: parent.version,
                },
                vars: vars.clone(),
            },
            Input::Operator(o) => ShardInputKind::Operator(wire::Operator {
                action: o.action.action(),
                by: o.by.clone(),
                reason: o.reason.clone(),
                request: o.request.clone(),
            }),
        };
        Some(ShardRecord {
            process: process.to_string(),
            key: key.to_string(),
            input,
        })
    }

    /// The id of the event this input carries, if it carries one.
    fn event_id(&self) -> Option<&str> {
        match self {
            Input::Event(e) | Input::Refused { event: e, .. } => Some(&e.id),
            _ => None,
        }
    }
}

/// What an input made the runtime do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Effects {
    /// Command events published, in order.
    pub commands: Vec<Sent>,
    /// Timers scheduled.
    pub timers: Vec<Scheduled>,
    /// Incidents raised.
    pub incidents: Vec<Raised>,
    /// Incidents resolved.
    pub resolved: Vec<Resolved>,
    /// Names of the variables the input set.
    pub variables: Vec<String>,
    /// The status the instance ended with, if the input ended it.
    #[serde(with = "opt_status")]
    pub ended: Option<Status>,
    /// Why the input's event was not used, if it was not.
    pub rejected: Option<Rejection>,
    /// Buffered events the input dropped (they expired, or the instance
    /// ended), to the dead letters.
    pub dropped: Vec<Dropped>,
    /// The steps the input's transitions entered, in order (also steps
    /// passed through within the input, such as a `switch`): with
    /// `before` and `after`, the path the instance took.
    #[serde(default)]
    pub entered: Vec<String>,
}

/// A command event published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sent {
    /// The command's id, `process/key/step/attempt`.
    pub id: String,
    pub topic: String,
    /// CloudEvents `type`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "purpose")]
    pub purpose: engine::Purpose,
}

/// A timer scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduled {
    pub id: String,
    /// Epoch ms.
    pub due: Millis,
}

/// An incident raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raised {
    pub id: u32,
    pub step: String,
    pub reason: String,
}

/// An incident resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    pub id: u32,
    pub step: String,
    pub resolution: String,
}

/// A buffered event dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropped {
    /// The event's id.
    pub event: String,
    pub reason: Rejection,
}

/// Why an event was not used (`engine::Rejection`; for `ended`, the
/// entry's `status` says how the instance ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rejection {
    /// Its id was seen before.
    Duplicate,
    /// The instance has ended.
    Ended,
    /// A start event for an instance already running.
    AlreadyStarted,
    /// The instance's buffer is full.
    BufferFull,
    /// It waited in the buffer longer than the buffer's TTL.
    Expired,
}

impl Rejection {
    fn of(r: &engine::Rejection) -> Rejection {
        match r {
            engine::Rejection::Duplicate => Rejection::Duplicate,
            engine::Rejection::Ended(_) => Rejection::Ended,
            engine::Rejection::AlreadyStarted => Rejection::AlreadyStarted,
            engine::Rejection::BufferFull => Rejection::BufferFull,
            engine::Rejection::Expired => Rejection::Expired,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Rejection::Duplicate => "duplicate",
            Rejection::Ended => "ended",
            Rejection::AlreadyStarted => "already-started",
            Rejection::BufferFull => "buffer-full",
            Rejection::Expired => "expired",
        }
    }
}

/// What an entry says about one application of an input, read from the
/// shard's actions: what [`Entry::new`] records and what [`replay`] checks.
struct Outcome {
    version: Option<u32>,
    before: Vec<String>,
    after: Vec<String>,
    status: Option<Status>,
    effects: Effects,
}

impl Outcome {
    fn of(applied: &Applied, event: Option<&str>) -> Outcome {
        let mut o = Outcome {
            version: applied.version,
            before: Vec::new(),
            after: Vec::new(),
            status: applied.status,
            effects: Effects::default(),
        };
        let fx = &mut o.effects;
        for action in &applied.actions {
            match action {
                Action::Audit(a) => {
                    o.version = Some(a.version);
                    o.before.clone_from(&a.before);
                    o.after.clone_from(&a.after);
                    o.status = Some(a.status);
                }
                Action::Command(c) => fx.commands.push(Sent {
                    id: c.id.clone(),
                    topic: c.topic.clone(),
                    kind: c.kind.clone(),
                    purpose: c.purpose,
                }),
                Action::Scheduled(t) => fx.timers.push(Scheduled {
                    id: t.id.clone(),
                    due: t.due,
                }),
                Action::Incident { id, step, reason } => fx.incidents.push(Raised {
                    id: *id,
                    step: step.clone(),
                    reason: reason.clone(),
                }),
                Action::Resolved {
                    id,
                    step,
                    resolution,
                } => fx.resolved.push(Resolved {
                    id: *id,
                    step: step.clone(),
                    resolution: resolution.clone(),
                }),
                Action::Variables(names) => fx.variables.extend(names.iter().cloned()),
                Action::Ended(s) => fx.ended = Some(*s),
                Action::Rejected { event: e, reason } => {
                    let reason = Rejection::of(reason);
                    if fx.rejected.is_none() && event == Some(e.id.as_str()) {
                        fx.rejected = Some(reason);
                    } else {
                        fx.dropped.push(Dropped {
                            event: e.id.clone(),
                            reason,
                        });
                    }
                }
                // The step entered shows in `after`; a forward is the
                // other instance's input, in its own entries.
                Action::Entered(step) => fx.entered.push(step.clone()),
                Action::Forward(_) => {}
            }
        }
        o
    }
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The trail rebuilds exactly the state the changelog holds.
    Match,
    /// It does not: the first difference found.
    Mismatch { reason: String },
}

/// Rebuilds instance `id` (`process/key`) from its audit entries, in order,
/// and compares it with `snapshot`, the changelog's state for it (`None`:
/// the changelog holds none). Each entry's input is applied to a fresh
/// shard at the entry's `time`, under the definition version it names,
/// which must be deployed in `registry` with the hash the entry records;
/// what each input did must be what its entry says. Entries are numbered
/// from 1 in reasons. Only the instance's trace context, opaque to the
/// engine, is not compared.
pub fn replay(
    registry: &Registry,
    id: &str,
    entries: &[Entry],
    snapshot: Option<&Instance>,
) -> Verdict {
    let mut shard = Shard::new(None);
    for (i, entry) in entries.iter().enumerate() {
        if let Err(reason) = replay_entry(registry, &mut shard, id, i + 1, entry) {
            return Verdict::Mismatch { reason };
        }
    }
    let rebuilt = shard.instance(id);
    let reason = match (rebuilt.as_deref(), snapshot) {
        (None, None) => return Verdict::Match,
        (Some(r), None) => format!(
            "the audit trail rebuilds instance {id} ({}), the changelog holds no state for it",
            r.status.as_str()
        ),
        (None, Some(h)) => format!(
            "the changelog holds instance {id} ({}), the audit trail rebuilds no state for it",
            h.status.as_str()
        ),
        (Some(r), Some(h)) => match diff(r, h) {
            None => return Verdict::Match,
            Some(reason) => reason,
        },
    };
    Verdict::Mismatch { reason }
}

/// Applies entry `n` to `shard` and checks that it did what the entry says.
fn replay_entry(
    registry: &Registry,
    shard: &mut Shard,
    id: &str,
    n: usize,
    entry: &Entry,
) -> Result<(), String> {
    let (process, key) = (entry.process.as_str(), entry.key.as_str());
    if entry.instance != id {
        return Err(format!(
            "entry {n}: it is for instance {}, not {id}",
            entry.instance
        ));
    }
    if id.split_once('/') != Some((process, key)) {
        return Err(format!(
            "entry {n}: instance {id} does not match its process {process} and key {key}"
        ));
    }
    match (entry.version, &entry.definition) {
        (None, None) => {}
        (Some(v), Some(hash)) => match registry.get(process, v) {
            None => {
                return Err(format!(
                    "entry {n}: definition {process} v{v} is not deployed"
                ));
            }
            Some(d) if d.hash != *hash => {
                return Err(format!(
                    "entry {n}: definition {process} v{v} hash {hash} in the audit trail, {} in the registry",
                    d.hash
                ));
            }
            Some(_) => {}
        },
        (Some(v), None) => {
            return Err(format!(
                "entry {n}: definition {process} v{v} has no content hash in the audit trail"
            ));
        }
        (None, Some(hash)) => {
            return Err(format!(
                "entry {n}: a definition hash {hash} without a version in the audit trail"
            ));
        }
    }
    let name = entry.describe(n);
    // An instance starts on the newest version of its day, which a later
    // deploy no longer is.
    let as_of;
    let registry = match entry.version {
        Some(v) if shard.instance(id).is_none() => {
            as_of = registry.as_of(process, v);
            &as_of
        }
        _ => registry,
    };
    let applied = match &entry.input {
        Input::Refused { event, reason } => {
            match shard.refuse(registry, event.record(process, key), reason, entry.time) {
                Ok(Some(a)) => a,
                Ok(None) => {
                    return Err(format!(
                        "{name}: replay finds no instance to refuse the event for"
                    ));
                }
                Err(e) => return Err(format!("{name}: replay failed: {e}")),
            }
        }
        input => {
            let Some(record) = input.record(process, key) else {
                return Err(format!("{name}: its input cannot be replayed"));
            };
            shard
                .apply(registry, record, entry.time, None)
                .map_err(|e| format!("{name}: replay failed: {e}"))?
        }
    };
    let got = Outcome::of(&applied, entry.input.event_id());
    let want = &entry.effects;
    match (want.rejected, got.effects.rejected) {
        (None, Some(r)) => return Err(format!("{name} was rejected on replay ({})", r.as_str())),
        (Some(w), None) => {
            return Err(format!(
                "{name} was not rejected on replay; the audit trail says {}",
                w.as_str()
            ));
        }
        _ => {}
    }
    let at = engine::format_rfc3339(applied.at);
    check(&name, "at", &entry.at, &at)?;
    check(&name, "version", &entry.version, &got.version)?;
    check(
        &name,
        "status",
        &entry.status.map(Status::as_str),
        &got.status.map(Status::as_str),
    )?;
    check(&name, "before", &entry.before, &got.before)?;
    check(&name, "after", &entry.after, &got.after)?;
    check(
        &name,
        "transitions",
        &entry.transitions,
        &applied.transitions,
    )?;
    let fx = &got.effects;
    check(&name, "effects.commands", &want.commands, &fx.commands)?;
    check(&name, "effects.timers", &want.timers, &fx.timers)?;
    check(&name, "effects.incidents", &want.incidents, &fx.incidents)?;
    check(&name, "effects.resolved", &want.resolved, &fx.resolved)?;
    check(&name, "effects.variables", &want.variables, &fx.variables)?;
    check(
        &name,
        "effects.ended",
        &want.ended.map(Status::as_str),
        &fx.ended.map(Status::as_str),
    )?;
    check(&name, "effects.rejected", &want.rejected, &fx.rejected)?;
    check(&name, "effects.dropped", &want.dropped, &fx.dropped)
}

/// `Err` naming the field when what the trail records differs from what
/// the replay gives.
fn check<T: PartialEq + Serialize>(
    name: &str,
    field: &str,
    recorded: &T,
    replayed: &T,
) -> Result<(), String> {
    if recorded == replayed {
        return Ok(());
    }
    Err(format!(
        "{name}: {field}: the audit trail records {}, replay gives {}",
        json(recorded),
        json(replayed)
    ))
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Off the hot path: the engine's state types have no serde form.
fn debug<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

/// The first field in which the rebuilt instance differs from the one the
/// changelog holds, ignoring the trace context.
fn diff(rebuilt: &Instance, held: &Instance) -> Option<String> {
    // Every field by name: a field added to `Instance` must be placed here.
    let Instance {
        process,
        version,
        definition,
        key,
        status,
        vars,
        tokens,
        completed,
        timers,
        expects,
        met_expects,
        compensated,
        incidents,
        seen,
        buffer,
        visits,
        flow_done,
        parent,
        next_token,
        next_incident,
        transitions,
        started_at,
        updated_at,
        trace: _,
    } = rebuilt;
    let differ = |field: &str, r: String, h: String| {
        Some(format!(
            "{field}: audit trail gives {r}, changelog holds {h}"
        ))
    };
    macro_rules! same {
        ($field:ident, $show:expr) => {
            if *$field != held.$field {
                let show = $show;
                return differ(stringify!($field), show($field), show(&held.$field));
            }
        };
    }
    same!(process, |v: &String| v.clone());
    same!(version, |v: &u32| v.to_string());
    same!(definition, |v: &String| v.clone());
    same!(key, |v: &String| v.clone());
    same!(status, |v: &Status| v.as_str().to_string());
    if *vars != held.vars {
        let names = vars.keys().chain(held.vars.keys());
        for name in names {
            let (r, h) = (vars.get(name), held.vars.get(name));
            if r != h {
                let show = |v: Option<&serde_json::Value>| v.map_or("none".into(), json);
                return differ(&format!("vars.{name}"), show(r), show(h));
            }
        }
    }
    same!(tokens, debug);
    same!(completed, debug);
    same!(timers, debug);
    same!(expects, debug);
    same!(met_expects, debug);
    same!(compensated, |v: &bool| v.to_string());
    same!(incidents, debug);
    same!(seen, debug);
    same!(buffer, debug);
    same!(visits, debug);
    same!(flow_done, |v: &bool| v.to_string());
    same!(parent, debug);
    same!(next_token, |v: &u32| v.to_string());
    same!(next_incident, |v: &u32| v.to_string());
    same!(transitions, |v: &u64| v.to_string());
    same!(started_at, |v: &Millis| v.to_string());
    same!(updated_at, |v: &Millis| v.to_string());
    None
}

/// `engine::Status` as its lower-case name, or `null`.
mod opt_status {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::engine::Status;

    pub fn serialize<S: Serializer>(s: &Option<Status>, ser: S) -> Result<S::Ok, S::Error> {
        match s {
            Some(s) => ser.serialize_str(s.as_str()),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Status>, D::Error> {
        let Some(name) = Option::<std::borrow::Cow<'de, str>>::deserialize(de)? else {
            return Ok(None);
        };
        match Status::parse(&name) {
            Some(s) => Ok(Some(s)),
            None => Err(serde::de::Error::unknown_variant(
                &name,
                &["pending", "active", "completed", "failed", "cancelled"],
            )),
        }
    }
}

/// `engine::Purpose` as its lower-case name.
mod purpose {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::engine::Purpose;

    const NAMES: &[&str] = &["task", "manual", "compensation", "escalation"];

    pub fn serialize<S: Serializer>(p: &Purpose, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(match p {
            Purpose::Task => "task",
            Purpose::Manual => "manual",
            Purpose::Compensation => "compensation",
            Purpose::Escalation => "escalation",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Purpose, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(de)?;
        Ok(match &*name {
            "task" => Purpose::Task,
            "manual" => Purpose::Manual,
            "compensation" => Purpose::Compensation,
            "escalation" => Purpose::Escalation,
            other => return Err(serde::de::Error::unknown_variant(other, NAMES)),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::shard::tests::registry;
    use serde_json::{Value, json};

    /// 2026-01-05T09:00:00Z.
    const T0: Millis = 1_767_603_600_000;
    const SHARD: i32 = 3;
    const PROCESS: &str = "order-to-cash";
    const HOUR: Millis = 3_600_000;

    fn id(key: &str) -> String {
        format!("{PROCESS}/{key}")
    }

    /// A shard driven as the runtime drives it: an entry for every input
    /// applied (`Input::of` before `apply`, `Entry::new` after), packed
    /// into a record per transaction as `Output::flush_audit` packs them.
    pub(crate) struct Run {
        reg: Registry,
        shard: Shard,
        now: Millis,
        offset: i64,
        entries: Vec<Vec<u8>>,
        records: Vec<Vec<u8>>,
    }

    impl Run {
        fn new() -> Run {
            Run {
                reg: registry(),
                shard: Shard::new(Some(24 * HOUR)),
                now: T0,
                offset: 0,
                entries: Vec::new(),
                records: Vec::new(),
            }
        }

        fn apply(&mut self, record: ShardRecord) -> Applied {
            let input = Input::of(&record);
            let applied = self
                .shard
                .apply(&self.reg, record, self.now, Some("00-live-trace-01".into()))
                .expect("deployed");
            self.entry(input, &applied);
            applied
        }

        fn entry(&mut self, input: Input, applied: &Applied) {
            let process = applied.id.split_once('/').map_or("", |(p, _)| p);
            let hash = Entry::version_of(applied)
                .and_then(|v| self.reg.get(process, v))
                .map_or("", |d| d.hash.as_str());
            let entry = Entry::new(SHARD, input, self.now, applied, hash);
            self.entries.push(entry.encode());
        }

        /// An event from the input topic, `time` 0: it runs at `now`.
        fn event(&mut self, key: &str, kind: &str, id: &str, data: Value) -> Applied {
            let record = self.event_record(key, kind, id, 0, data);
            self.apply(record)
        }

        fn event_record(
            &mut self,
            key: &str,
            kind: &str,
            id: &str,
            time: Millis,
            data: Value,
        ) -> ShardRecord {
            self.offset += 1;
            ShardRecord {
                process: PROCESS.into(),
                key: key.into(),
                input: ShardInputKind::Event {
                    event: engine::Event {
                        id: id.into(),
                        kind: kind.into(),
                        source: "test".into(),
                        time,
                        data,
                    },
                    origin: Some(wire::Origin {
                        topic: "orders".into(),
                        partition: 0,
                        offset: self.offset,
                    }),
                },
            }
        }

        fn refuse(&mut self, record: ShardRecord, reason: &str) -> Applied {
            let input = Input::refused(&record, reason).expect("an event");
            let applied = self
                .shard
                .refuse(&self.reg, record, reason, self.now)
                .expect("deployed")
                .expect("an instance");
            self.entry(input, &applied);
            applied
        }

        fn operator(&mut self, key: &str, action: engine::Action, by: &str) -> Applied {
            self.apply(ShardRecord {
                process: PROCESS.into(),
                key: key.into(),
                input: ShardInputKind::Operator(wire::Operator {
                    action,
                    by: by.into(),
                    reason: "INC-7".into(),
                    request: format!("r-{by}"),
                }),
            })
        }

        /// Moves the clock to `to` and fires every timer due by then.
        fn advance_to(&mut self, to: Millis) -> Vec<Applied> {
            self.now = to;
            let due = self.shard.due(to);
            due.into_iter().map(|r| self.apply(r)).collect()
        }

        /// Ends a transaction: its entries become one record.
        fn commit(&mut self) {
            if self.entries.is_empty() {
                return;
            }
            let mut body =
                format!("{{\"v\":{VERSION},\"shard\":{SHARD},\"entries\":[").into_bytes();
            for (i, e) in std::mem::take(&mut self.entries).into_iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&e);
            }
            body.extend_from_slice(b"]}");
            self.records.push(body);
        }

        /// The audit topic so far, read back and grouped by instance.
        pub(crate) fn trail(&mut self) -> BTreeMap<String, Vec<Entry>> {
            self.commit();
            by_instance(self.records.iter().map(|r| decode(r).expect("a v2 record")))
        }

        /// What the changelog holds for an instance: its snapshot, decoded.
        fn snapshot(&self, id: &str) -> Option<Instance> {
            self.shard
                .instance(id)
                .map(|i| wire::decode(&wire::encode(&i)).expect("decodes"))
        }
    }

    fn incidents(a: &Applied) -> usize {
        a.actions
            .iter()
            .filter(|x| matches!(x, Action::Incident { .. }))
            .count()
    }

    /// Four orders through one shard: one whose reservation times out until
    /// an incident an operator retries, one whose payment is declined
    /// (compensated), a happy one with a duplicate and a late event, and
    /// one that starts from a buffered event, has an event refused and is
    /// cancelled with compensation.
    pub(crate) fn scenario() -> Run {
        let mut run = Run::new();
        // o-3: timeouts and retries until an incident; an operator retries.
        run.event(
            "o-3",
            "com.acme.order.placed",
            "o3-placed",
            json!({"orderId": "o-3", "customerId": "c-9", "total": 40, "lines": [], "address": "4 Lake Ave"}),
        );
        run.commit();
        let mut raised = 0;
        for _ in 0..10 {
            let (due, _, _) = run.shard.timers().first().cloned().expect("a timer");
            raised += run.advance_to(due).iter().map(incidents).sum::<usize>();
            run.commit();
            if raised > 0 {
                break;
            }
        }
        assert_eq!(raised, 1, "the reservation's retries run out");
        run.now += 1_000;
        let retried = run.operator("o-3", engine::Action::Retry { incident: None }, "alice");
        assert!(
            retried
                .actions
                .iter()
                .any(|x| matches!(x, Action::Resolved { .. }))
        );
        for (kind, event, data) in [
            (
                "com.acme.inventory.reserved",
                "o3-reserved",
                json!({"orderId": "o-3", "reservationId": "r-57"}),
            ),
            (
                "com.acme.payment.charged",
                "o3-charged",
                json!({"orderId": "o-3", "paymentId": "p-11"}),
            ),
            (
                "com.acme.shipment.created",
                "o3-shipped",
                json!({"orderRef": "o-3", "trackingId": "t-44"}),
            ),
            (
                "com.acme.invoice.created",
                "o3-invoiced",
                json!({"orderId": "o-3", "invoiceId": "i-5"}),
            ),
        ] {
            run.now += 1_000;
            run.event("o-3", kind, event, data);
        }
        run.commit();

        // o-2: a payment error, its backoff timer, then a decline: compensated.
        run.event(
            "o-2",
            "com.acme.order.placed",
            "o2-placed",
            json!({"orderId": "o-2", "customerId": "c-8", "total": 99, "lines": [{"sku": "B-2", "qty": 1}], "address": "3 Hill Rd"}),
        );
        run.event(
            "o-2",
            "com.acme.inventory.reserved",
            "o2-reserved",
            json!({"orderId": "o-2", "reservationId": "r-56"}),
        );
        run.event(
            "o-2",
            "com.acme.payment.error",
            "o2-error",
            json!({"orderId": "o-2"}),
        );
        run.commit();
        let fired = run.advance_to(run.now + 5_000);
        assert_eq!(fired.len(), 1, "the charge's backoff");
        run.event(
            "o-2",
            "com.acme.payment.declined",
            "o2-declined",
            json!({"orderId": "o-2", "reason": "insufficient funds"}),
        );
        run.commit();

        // o-1: the happy path, a duplicate, an event with its own time, a late event.
        run.now += 1_000;
        for (kind, event, data) in [
            (
                "com.acme.order.placed",
                "o1-placed",
                json!({"orderId": "o-1", "customerId": "c-7", "total": 250, "lines": [{"sku": "A-1", "qty": 2}], "address": "1 Main St"}),
            ),
            (
                "com.acme.inventory.reserved",
                "o1-reserved",
                json!({"orderId": "o-1", "reservationId": "r-55"}),
            ),
            (
                "com.acme.inventory.reserved",
                "o1-reserved",
                json!({"orderId": "o-1", "reservationId": "r-55"}),
            ),
            (
                "com.acme.payment.charged",
                "o1-charged",
                json!({"orderId": "o-1", "paymentId": "p-9"}),
            ),
            (
                "com.acme.order.address-changed",
                "o1-address",
                json!({"orderId": "o-1", "address": "2 Side St"}),
            ),
            (
                "com.acme.shipment.created",
                "o1-shipped",
                json!({"orderRef": "o-1", "trackingId": "t-42"}),
            ),
            (
                "com.acme.invoice.created",
                "o1-invoiced",
                json!({"orderId": "o-1", "invoiceId": "i-3"}),
            ),
        ] {
            run.now += 100;
            run.event("o-1", kind, event, data);
        }
        run.commit();
        let delivered = run.event_record(
            "o-1",
            "com.acme.shipment.delivered",
            "o1-delivered",
            run.now - 50,
            json!({"orderRef": "o-1"}),
        );
        run.now += 100;
        run.apply(delivered);
        run.event(
            "o-1",
            "com.acme.payment.charged",
            "o1-late",
            json!({"orderId": "o-1", "paymentId": "p-9"}),
        );
        run.commit();

        // o-5: an event before the start (buffered), a refused event, a
        // cancel with compensation.
        run.now += 1_000;
        run.event(
            "o-5",
            "com.acme.inventory.reserved",
            "o5-reserved",
            json!({"orderId": "o-5", "reservationId": "r-60"}),
        );
        run.event(
            "o-5",
            "com.acme.order.placed",
            "o5-placed",
            json!({"orderId": "o-5", "customerId": "c-2", "total": 30, "lines": [], "address": "9 Bay Rd"}),
        );
        run.commit();
        let big = run.event_record(
            "o-5",
            "com.acme.payment.charged",
            "o5-charged",
            0,
            json!({"orderId": "o-5", "paymentId": "p-12", "blob": "x"}),
        );
        let refused = run.refuse(big, "its results would exceed the record size limit");
        assert_eq!(incidents(&refused), 1);
        run.now += 1_000;
        run.operator(
            "o-5",
            engine::Action::Cancel {
                compensate: true,
                reason: "customer asked".into(),
            },
            "bob",
        );
        run.commit();
        run
    }

    fn status(run: &Run, key: &str) -> Option<Status> {
        run.shard.instance(&id(key)).map(|i| i.status)
    }

    fn replay_all(run: &mut Run) -> BTreeMap<String, Vec<Entry>> {
        let trail = run.trail();
        for (id, entries) in &trail {
            let held = run.snapshot(id);
            assert_eq!(
                replay(&run.reg, id, entries, held.as_ref()),
                Verdict::Match,
                "{id}"
            );
        }
        trail
    }

    #[test]
    fn instances_started_before_a_deploy_and_migrated_after_it_replay() {
        let mut run = Run::new();
        let placed = |n: &str| json!({"orderId": n, "customerId": "c-1", "total": 5, "lines": [], "address": "x"});
        run.event("o-1", "com.acme.order.placed", "o1-placed", placed("o-1"));
        run.event("o-2", "com.acme.order.placed", "o2-placed", placed("o-2"));
        run.commit();
        // Version 2 arrives: o-1 keeps version 1, o-2 moves, o-3 starts on 2.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/order-to-cash.yaml");
        let v2 = std::fs::read_to_string(path)
            .expect("example")
            .replace("version: 1", "version: 2");
        run.reg
            .deploy(crate::dsl::parse("v2.yaml", &v2).expect("valid"), &v2)
            .expect("deploy v2");
        run.now += 100;
        run.operator(
            "o-2",
            engine::Action::Migrate {
                to: 2,
                steps: Default::default(),
            },
            "ops",
        );
        run.event("o-3", "com.acme.order.placed", "o3-placed", placed("o-3"));
        run.commit();
        let version = |run: &Run, key: &str| run.shard.instance(&id(key)).map(|i| i.version);
        assert_eq!(
            [
                version(&run, "o-1"),
                version(&run, "o-2"),
                version(&run, "o-3")
            ],
            [Some(1), Some(2), Some(2)]
        );
        let trail = replay_all(&mut run);
        assert_eq!(trail.len(), 3);
    }

    #[test]
    fn replay_rebuilds_every_instance_the_changelog_holds() {
        let mut run = scenario();
        assert_eq!(status(&run, "o-1"), Some(Status::Completed));
        assert_eq!(status(&run, "o-2"), Some(Status::Failed));
        assert_eq!(status(&run, "o-3"), Some(Status::Active));
        assert_eq!(status(&run, "o-5"), Some(Status::Cancelled));
        // The live instances carry a trace context the replay does not have.
        assert_eq!(run.shard.trace(&id("o-1")), Some("00-live-trace-01"));

        let trail = replay_all(&mut run);
        assert_eq!(
            trail.keys().cloned().collect::<Vec<_>>(),
            ["o-1", "o-2", "o-3", "o-5"].map(id)
        );
        let compensations = |key: &str| -> Vec<String> {
            trail[&id(key)]
                .iter()
                .flat_map(|e| &e.effects.commands)
                .filter(|c| c.purpose == engine::Purpose::Compensation)
                .map(|c| c.kind.clone())
                .collect()
        };
        assert_eq!(compensations("o-2"), ["com.acme.inventory.release"]);
        assert_eq!(compensations("o-5"), ["com.acme.inventory.release"]);
        let o3 = &trail[&id("o-3")];
        assert!(o3.iter().any(|e| !e.effects.incidents.is_empty()));
        assert!(o3.iter().any(|e| matches!(e.input, Input::Timer { .. })));
        let o1 = &trail[&id("o-1")];
        let rejected: Vec<_> = o1.iter().filter_map(|e| e.effects.rejected).collect();
        assert_eq!(rejected, [Rejection::Duplicate, Rejection::Ended]);
        // An event with its own time runs at it; `time` is what apply got.
        let delivered = o1
            .iter()
            .find(|e| matches!(&e.input, Input::Event(ev) if ev.id == "o1-delivered"))
            .expect("delivered");
        let Input::Event(ev) = &delivered.input else {
            unreachable!("found as an event");
        };
        assert_eq!(delivered.time, ev.time + 150);
        assert_eq!(delivered.at, engine::format_rfc3339(ev.time));
        let o5 = &trail[&id("o-5")];
        assert!(o5.iter().any(|e| matches!(e.input, Input::Refused { .. })));
        assert_eq!(
            o5[0].status,
            Some(Status::Pending),
            "buffered before its start"
        );

        // Time passes: the SLA of o-3 fires, the ended orders' retention
        // passes and the changelog forgets them; the trail agrees.
        run.advance_to(run.now + 73 * HOUR);
        run.commit();
        assert_eq!(status(&run, "o-3"), Some(Status::Completed));
        for key in ["o-1", "o-2", "o-5"] {
            assert_eq!(status(&run, key), None, "{key} forgotten");
        }
        let trail = replay_all(&mut run);
        let last = trail[&id("o-1")].last().expect("entries");
        assert!(
            matches!(&last.input, Input::Timer { timer, .. } if timer == crate::shard::RETENTION_TIMER),
            "{last:?}"
        );
        assert_eq!(
            (last.version, &last.definition, last.status),
            (None, &None, None)
        );
    }

    fn mismatch(v: Verdict) -> String {
        match v {
            Verdict::Mismatch { reason } => reason,
            Verdict::Match => panic!("expected a mismatch"),
        }
    }

    fn position(entries: &[Entry], event: &str) -> usize {
        entries
            .iter()
            .position(|e| matches!(&e.input, Input::Event(ev) if ev.id == event))
            .expect("the event's entry")
    }

    #[test]
    fn a_tampered_trail_is_a_mismatch_that_says_where() {
        let mut run = scenario();
        let trail = run.trail();
        let (o1, o2) = (id("o-1"), id("o-2"));
        let held = run.snapshot(&o1).expect("o-1");
        let reg = &run.reg;
        let check = |entries: &[Entry]| mismatch(replay(reg, &o1, entries, Some(&held)));

        // One entry dropped: the next one finds the instance elsewhere.
        let mut dropped = trail[&o1].clone();
        dropped.remove(position(&dropped, "o1-charged"));
        assert_eq!(
            check(&dropped),
            r#"entry 4 (event o1-address): before: the audit trail records ["ship"], replay gives ["charge"]"#
        );
        // Dropped, and a later event is no longer rejected.
        let mut short = trail[&o1].clone();
        short.remove(position(&short, "o1-delivered"));
        assert_eq!(
            check(&short),
            "entry 8 (event o1-late) was not rejected on replay; the audit trail says ended"
        );
        // The last entry dropped: only the state tells.
        let held2 = run.snapshot(&o2);
        let o2_trail = &trail[&o2];
        assert_eq!(
            mismatch(replay(
                reg,
                &o2,
                &o2_trail[..o2_trail.len() - 1],
                held2.as_ref()
            )),
            "status: audit trail gives active, changelog holds failed"
        );

        // One event's data changed.
        let mut changed = trail[&o1].clone();
        let placed = position(&changed, "o1-placed");
        let Input::Event(ev) = &mut changed[placed].input else {
            unreachable!("found as an event");
        };
        ev.data["total"] = json!(260);
        assert_eq!(
            check(&changed),
            "vars.total: audit trail gives 260, changelog holds 250"
        );

        // Another definition than the one deployed.
        let mut other = trail[&o2].clone();
        other[1].definition = Some("0123456789abcdef".into());
        let deployed = &reg.get(PROCESS, 1).expect("deployed").hash;
        assert_eq!(
            mismatch(replay(reg, &o2, &other, held2.as_ref())),
            format!(
                "entry 2: definition order-to-cash v1 hash 0123456789abcdef in the audit trail, {deployed} in the registry"
            )
        );
        other[1].version = Some(9);
        assert_eq!(
            mismatch(replay(reg, &o2, &other, held2.as_ref())),
            "entry 2: definition order-to-cash v9 is not deployed"
        );

        // An event the replay rejects.
        let mut dup = trail[&o1].clone();
        let charged = position(&dup, "o1-charged");
        let Input::Event(ev) = &mut dup[charged].input else {
            unreachable!("found as an event");
        };
        ev.id = "o1-placed".into();
        assert_eq!(
            check(&dup),
            "entry 4 (event o1-placed) was rejected on replay (duplicate)"
        );

        // A recorded effect the input did not have.
        let mut edited = trail[&o1].clone();
        edited[0].effects.commands.clear();
        assert_eq!(
            check(&edited),
            r#"entry 1 (event o1-placed): effects.commands: the audit trail records [], replay gives [{"id":"order-to-cash/o-1/reserve/1","topic":"erp.commands","type":"com.acme.inventory.reserve","purpose":"task"}]"#
        );

        // State on one side only, another instance's entries, another status.
        assert_eq!(
            mismatch(replay(reg, &o1, &trail[&o1], None)),
            "the audit trail rebuilds instance order-to-cash/o-1 (completed), the changelog holds no state for it"
        );
        assert_eq!(
            check(&[]),
            "the changelog holds instance order-to-cash/o-1 (completed), the audit trail rebuilds no state for it"
        );
        assert_eq!(
            check(&trail[&o2]),
            "entry 1: it is for instance order-to-cash/o-2, not order-to-cash/o-1"
        );
        let mut off = held.clone();
        off.status = Status::Active;
        assert_eq!(
            mismatch(replay(reg, &o1, &trail[&o1], Some(&off))),
            "status: audit trail gives completed, changelog holds active"
        );
        let mut off = held.clone();
        off.vars.insert("extra".into(), json!(true));
        assert_eq!(
            mismatch(replay(reg, &o1, &trail[&o1], Some(&off))),
            "vars.extra: audit trail gives none, changelog holds true"
        );
        // The trace context is the one field not compared.
        let mut traced = held.clone();
        traced.trace = Some("00-other-01".into());
        assert_eq!(replay(reg, &o1, &trail[&o1], Some(&traced)), Verdict::Match);
    }

    fn schema() -> jsonschema::Validator {
        let text = include_str!("../proto/baton/v1/audit.schema.json");
        let schema: Value = serde_json::from_str(text).expect("the schema is JSON");
        jsonschema::meta::validate(&schema).expect("a valid draft 2020-12 schema");
        jsonschema::draft202012::new(&schema).expect("compiles")
    }

    fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
        v.iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    #[test]
    fn every_record_validates_against_the_schema_and_the_schema_is_strict() {
        let validator = schema();
        let mut run = scenario();
        run.advance_to(run.now + 73 * HOUR);
        run.commit();
        let mut kinds = std::collections::BTreeSet::new();
        for bytes in &run.records {
            let doc: Value = serde_json::from_slice(bytes).expect("JSON");
            assert_eq!(errors(&validator, &doc), Vec::<String>::new(), "{doc}");
            for e in doc["entries"].as_array().expect("entries") {
                kinds.insert(e["input"]["kind"].as_str().expect("kind").to_string());
            }
        }
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["event", "operator", "refused", "timer"]
        );

        // Inputs the scenario has not: a call and every operator action.
        let mut doc: Value = serde_json::from_slice(&run.records[0]).expect("JSON");
        for input in inputs() {
            doc["entries"][0]["input"] = serde_json::to_value(Input::of(&input)).expect("JSON");
            assert_eq!(errors(&validator, &doc), Vec::<String>::new(), "{doc}");
        }

        // What is not an audit record of this version does not validate.
        let record: Value = serde_json::from_slice(&run.records[0]).expect("JSON");
        type Edit = fn(&mut Value);
        let broken: [(&str, Edit); 6] = [
            ("a field the format has not", |d| {
                d["entries"][0]["cause"] = json!("Event")
            }),
            ("version 1", |d| d["v"] = json!(1)),
            ("no effects", |d| {
                d["entries"][0].as_object_mut().map(|e| e.remove("effects"));
            }),
            ("an unknown input kind", |d| {
                d["entries"][0]["input"]["kind"] = json!("signal")
            }),
            ("a status the engine has not", |d| {
                d["entries"][0]["status"] = json!("done")
            }),
            ("an operator action without its fields", |d| {
                d["entries"][0]["input"] = json!({"kind": "operator", "action": {"action": "set"}, "by": "a", "reason": "r", "request": "q"})
            }),
        ];
        for (what, edit) in broken {
            let mut doc = record.clone();
            edit(&mut doc);
            assert!(!validator.is_valid(&doc), "{what} validates: {doc}");
            // What the schema refuses, decoding refuses too.
            assert!(
                decode(&serde_json::to_vec(&doc).expect("JSON")).is_err(),
                "{what} decodes"
            );
        }
    }

    /// A call and every operator action, as shard records.
    fn inputs() -> Vec<ShardRecord> {
        let record = |input| ShardRecord {
            process: PROCESS.into(),
            key: "o-9".into(),
            input,
        };
        let operator = |action| {
            record(ShardInputKind::Operator(wire::Operator {
                action,
                by: "carol".into(),
                reason: "INC-9".into(),
                request: "r-9".into(),
            }))
        };
        vec![
            record(ShardInputKind::Call {
                parent: engine::ParentRef {
                    process: "parent".into(),
                    key: "p-1".into(),
                    version: 2,
                },
                vars: [("total".to_string(), json!(12.5))].into(),
            }),
            record(ShardInputKind::Timer {
                timer: "reserve/timeout/1".into(),
                due: T0,
            }),
            record(ShardInputKind::Event {
                event: engine::Event {
                    id: "e-1".into(),
                    kind: "com.acme.x".into(),
                    source: "s".into(),
                    time: T0,
                    data: json!({"a": [1, null, "b"]}),
                },
                origin: None,
            }),
            operator(engine::Action::Retry { incident: Some(2) }),
            operator(engine::Action::Retry { incident: None }),
            operator(engine::Action::Skip { incident: Some(1) }),
            operator(engine::Action::Cancel {
                compensate: false,
                reason: "duplicate order".into(),
            }),
            operator(engine::Action::SetVariable {
                name: "limit".into(),
                value: json!({"eur": 5000}),
            }),
            operator(engine::Action::Migrate {
                to: 2,
                steps: [("charge".to_string(), "pay".to_string())].into(),
            }),
        ]
    }

    #[test]
    fn every_input_survives_json_and_gives_back_its_record() {
        for record in inputs() {
            let input = Input::of(&record);
            let text = serde_json::to_string(&input).expect("JSON");
            let back: Input = serde_json::from_str(&text).expect("decodes");
            assert_eq!(back, input, "{text}");
            assert_eq!(back.record(&record.process, &record.key), Some(record));
        }
        let event = inputs().remove(2);
        let refused = Input::refused(&event, "too large").expect("an event");
        assert_eq!(
            refused.record(PROCESS, "o-9"),
            None,
            "a refused event is not applied"
        );
        let text = serde_json::to_string(&refused).expect("JSON");
        assert_eq!(
            serde_json::from_str::<Input>(&text).expect("decodes"),
            refused
        );
        assert_eq!(
            Input::refused(&inputs()[1], "too large"),
            None,
            "only events are refused"
        );
        // The shapes auditors read.
        let retry = serde_json::to_value(Input::of(&inputs()[4])).expect("JSON");
        assert_eq!(
            retry,
            json!({"kind": "operator", "action": {"action": "retry"}, "by": "carol", "reason": "INC-9", "request": "r-9"})
        );
        let migrate = serde_json::to_value(Input::of(&inputs()[8])).expect("JSON");
        assert_eq!(
            migrate["action"],
            json!({"action": "migrate", "to_version": 2, "steps": {"charge": "pay"}})
        );
    }

    #[test]
    fn an_operator_entry_keeps_who_why_and_which_request() {
        let mut run = scenario();
        let trail = run.trail();
        let operators: Vec<(&str, &OperatorInput)> = trail
            .values()
            .flatten()
            .filter_map(|e| match &e.input {
                Input::Operator(o) => Some((e.key.as_str(), o)),
                _ => None,
            })
            .collect();
        assert_eq!(operators.len(), 2);
        let (_, retry) = operators.iter().find(|(k, _)| *k == "o-3").expect("o-3");
        assert_eq!(
            (
                retry.by.as_str(),
                retry.reason.as_str(),
                retry.request.as_str()
            ),
            ("alice", "INC-7", "r-alice")
        );
        assert_eq!(retry.action, OperatorAction::Retry { incident: None });
        let (_, cancel) = operators.iter().find(|(k, _)| *k == "o-5").expect("o-5");
        assert_eq!(
            (&cancel.by, &cancel.request, &cancel.action),
            (
                &"bob".to_string(),
                &"r-bob".to_string(),
                &OperatorAction::Cancel {
                    compensate: true,
                    reason: "customer asked".into()
                }
            )
        );
        // The retry's entry says what it resolved and what it sent.
        let entry = trail[&id("o-3")]
            .iter()
            .find(|e| matches!(e.input, Input::Operator(_)))
            .expect("the retry");
        assert_eq!(entry.effects.resolved.len(), 1);
        assert_eq!(entry.effects.resolved[0].step, "reserve");
        assert_eq!(
            entry
                .effects
                .commands
                .iter()
                .map(|c| c.kind.as_str())
                .collect::<Vec<_>>(),
            ["com.acme.inventory.reserve"]
        );
        assert_eq!(
            (entry.before.clone(), entry.after.clone()),
            (vec!["reserve".to_string()], vec!["reserve".to_string()])
        );
    }

    #[test]
    fn a_record_of_another_version_is_refused_with_a_clear_error() {
        let v1 = br#"{"v":1,"shard":0,"entries":[{"at":"2026-01-05T09:00:00.000Z","process":"order-to-cash","version":1,"key":"o-1","cause":"Event { id: \"e\", kind: \"k\" }","before":[],"after":["reserve"],"status":"active"}]}"#;
        let err = decode(v1).expect_err("v1");
        assert!(matches!(err, AuditError::Version { found: 1 }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "audit record version 1 is not supported: this build reads version 2 \
             (version 1 records carry no inputs and cannot be replayed)"
        );
        assert!(matches!(
            decode(br#"{"shard":0,"entries":[]}"#),
            Err(AuditError::Unversioned)
        ));
        assert!(matches!(decode(b"not json"), Err(AuditError::Json(_))));
        assert!(matches!(
            decode(br#"{"v":2,"shard":0,"entries":[{"at":"x"}]}"#),
            Err(AuditError::Json(_))
        ));
        let empty = Record::new(4, Vec::new());
        assert_eq!(decode(&empty.encode()).expect("v2"), empty);
    }
}
