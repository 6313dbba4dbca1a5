//! The pure process engine.
//!
//! [`step`] takes a definition, an instance's state, one input and the time
//! ("now" is the event's or timer's time, never a clock) and returns the new
//! state with the effects the caller must carry out: commands to emit, timers
//! to schedule, audit records, incidents. Nothing here does I/O, reads a clock,
//! draws random numbers or knows about Kafka; the same inputs always give the
//! same outputs.

mod definition;
mod expr;
mod instance;
mod machine;
pub mod migrate;

use std::collections::BTreeMap;

pub use definition::*;
pub use expr::{Expr, ExprError, ROOTS, Scope, for_each_child, format_rfc3339, parse_rfc3339};
pub use instance::*;
pub use machine::{TRANSITION_BUDGET, apply, step};
pub use migrate::{Misfit, migrate, timer_changes};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// An instance's variables.
pub type Vars = BTreeMap<String, serde_json::Value>;

/// A domain event, as the engine sees it (a CloudEvent without transport details).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    /// CloudEvents `type`.
    pub kind: String,
    pub source: String,
    pub time: Millis,
    pub data: serde_json::Value,
}

/// Event type of the event a called process sends its caller when it ends:
/// `baton.process.completed`, `baton.process.failed` or `baton.process.cancelled`.
pub const CHILD_ENDED_PREFIX: &str = "baton.process.";

impl Event {
    /// The event a called instance's end delivers to its caller.
    pub fn child_ended(
        process: &str,
        key: &str,
        status: Status,
        vars: &Vars,
        time: Millis,
    ) -> Event {
        Event {
            id: format!("{process}/{key}/ended"),
            kind: format!("{CHILD_ENDED_PREFIX}{}", status.as_str()),
            source: format!("baton/{process}"),
            time,
            data: serde_json::json!({
                "process": process,
                "key": key,
                "status": status.as_str(),
                "vars": vars,
            }),
        }
    }
}

/// What drives an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Event(Event),
    /// A timer of this instance fell due.
    Timer(String),
    /// Start as a call from another process, with these variables.
    Call {
        parent: ParentRef,
        vars: Vars,
    },
    Operator(Action),
    /// An event for this instance that the runtime could not process (its
    /// results would exceed the broker's record size): the instance gets an
    /// incident naming it, and the event counts as seen.
    Refused {
        event: Event,
        reason: String,
    },
}

/// Operator actions on an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Resolve an incident by running its step again (a task gets a new attempt).
    Retry { incident: Option<u32> },
    /// Resolve an incident by treating its step as done.
    Skip { incident: Option<u32> },
    /// End the instance as cancelled, optionally compensating first.
    Cancel { compensate: bool, reason: String },
    SetVariable {
        name: String,
        value: serde_json::Value,
    },
    /// Move the instance to another version of its definition; `steps` maps
    /// step ids of its version to step ids of the target (unmapped steps keep
    /// their id). The shard carries it out (it holds every version, see
    /// [`migrate()`]); the engine's `apply` alone does not.
    Migrate {
        to: u32,
        steps: std::collections::BTreeMap<String, String>,
    },
}

impl Action {
    /// Why this action cannot apply to `inst` as it stands, or `None` when it
    /// can (a migration is checked by [`migrate()`] instead).
    pub fn refusal(&self, inst: &Instance) -> Option<String> {
        if inst.status.is_ended() || inst.status == Status::Pending {
            return Some(format!(
                "the instance is {}: operator actions apply to active instances only",
                inst.status.as_str()
            ));
        }
        match self {
            Action::Retry { incident } | Action::Skip { incident } => match incident {
                Some(n) if !inst.incidents.iter().any(|i| i.id == *n) => Some(format!(
                    "the instance has no open incident {n} (open: {})",
                    open_incidents(inst)
                )),
                None if inst.incidents.is_empty() => {
                    Some("the instance has no open incident".to_string())
                }
                _ => None,
            },
            Action::SetVariable { name, .. } if name.is_empty() => {
                Some("the variable name is empty".to_string())
            }
            Action::Cancel { .. } | Action::SetVariable { .. } | Action::Migrate { .. } => None,
        }
    }
}

fn open_incidents(inst: &Instance) -> String {
    if inst.incidents.is_empty() {
        return "none".to_string();
    }
    inst.incidents
        .iter()
        .map(|i| i.id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a command is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Task,
    Manual,
    Compensation,
    Escalation,
}

/// A command event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Deterministic: `<process>/<key>/<step>/<attempt>` (re-entered steps add `#<visit>`).
    pub id: String,
    pub topic: String,
    pub kind: String,
    /// The instance key, also the Kafka key.
    pub key: String,
    pub data: serde_json::Value,
    pub step: String,
    pub attempt: u32,
    pub purpose: Purpose,
}

/// What caused a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    Event { id: String, kind: String },
    Timer(String),
    Call,
    Operator(String),
}

/// One audit record per accepted input.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub at: Millis,
    pub process: String,
    pub version: u32,
    pub key: String,
    pub cause: Cause,
    pub before: Vec<String>,
    pub after: Vec<String>,
    pub status: Status,
}

/// Why an event was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The same event id was already processed.
    Duplicate,
    /// The instance has ended.
    Ended(Status),
    /// A start event for an instance that is already running, and nothing observes it.
    AlreadyStarted,
    /// The instance's buffer is full.
    BufferFull,
    /// It waited in the buffer longer than the buffer's TTL.
    Expired,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Duplicate => {
                write!(
                    f,
                    "duplicate event id: the instance already processed an event with this id"
                )
            }
            Rejection::Ended(s) => write!(f, "instance already {}", s.as_str()),
            Rejection::AlreadyStarted => write!(f, "instance already started"),
            Rejection::BufferFull => write!(f, "instance buffer full"),
            Rejection::Expired => write!(f, "expired in the instance buffer"),
        }
    }
}

/// What the caller of [`step`] must carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The flow entered a step (by index in the definition); effects that
    /// follow, up to the next `Entered`, were caused by entering it.
    Entered(StepIdx),
    Command(Command),
    ScheduleTimer(Timer),
    /// A pending timer is cancelled (it carries its due time, so an index
    /// of timers by due time finds it without a scan).
    CancelTimer(Timer),
    Audit(Audit),
    IncidentRaised {
        id: u32,
        step: String,
        reason: String,
    },
    IncidentResolved {
        id: u32,
        step: String,
        resolution: String,
    },
    VariablesChanged(Vec<String>),
    /// Start another process's instance (a `call` step).
    StartProcess {
        process: String,
        key: String,
        vars: Vars,
        parent: ParentRef,
    },
    /// The instance ended; a caller, if any, must be told with [`Event::child_ended`].
    Ended {
        status: Status,
        parent: Option<ParentRef>,
    },
    /// The instance holds nothing any more (a pending instance whose buffer expired).
    Discard,
    /// An event the instance did not use, with why (it goes to the dead letters).
    Rejected {
        event: Box<Event>,
        reason: Rejection,
    },
}

/// How an event reaches an instance of a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub key: String,
    /// The event is this definition's start event.
    pub start: bool,
}

/// Finds the instance key an event belongs to under `def`, if it concerns `def` at all.
pub fn route(def: &Definition, event: &Event) -> Result<Option<Route>, ExprError> {
    let empty = Vars::new();
    let scope = Scope::new(Some(event), &empty, "", event.time, 0);
    if def.start.on.matches(&event.kind) {
        let wanted = match &def.start.when {
            Some(w) => w.eval_bool(&scope)?,
            None => true,
        };
        if wanted {
            let key = def.start.key.eval_key(&scope)?;
            return Ok(Some(Route { key, start: true }));
        }
    }
    for c in &def.correlate {
        if c.on.matches(&event.kind) {
            let key = c.key.eval_key(&scope)?;
            return Ok(Some(Route { key, start: false }));
        }
    }
    Ok(None)
}
