//! The state of one process instance: everything needed to continue it, and
//! nothing derived. A snapshot of this (see [`crate::wire`]) is what the
//! changelog holds.

use std::collections::{BTreeMap, VecDeque};

use super::{Event, Millis, StepIdx, Vars};

/// Lifecycle of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Events arrived for this key, but no start event yet: they are buffered.
    Pending,
    Active,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_ended(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// Every status, in the order of their names in [`Status::as_str`].
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Active,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The status named `name` (as [`Status::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Active => "active",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// One process instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub process: String,
    pub version: u32,
    /// Content hash of the definition version it runs (see
    /// [`super::Definition::hash`]; empty: not recorded).
    pub definition: String,
    pub key: String,
    pub status: Status,
    pub vars: Vars,
    /// Positions of the flow (more than one inside `parallel`).
    pub tokens: Vec<Token>,
    /// Tasks that completed, oldest first: what a failure compensates.
    pub completed: Vec<Completion>,
    pub timers: Vec<Timer>,
    /// Armed `expect` watchdogs.
    pub expects: Vec<ArmedExpect>,
    /// `expect` watchdogs whose event already arrived before they were armed
    /// (indexes into the definition's `expect`): met, they never arm.
    pub met_expects: Vec<u32>,
    /// A failure or a cancel emitted the compensation of completed tasks.
    pub compensated: bool,
    pub incidents: Vec<Incident>,
    /// Recent event ids, for deduplication.
    pub seen: VecDeque<String>,
    /// Events that arrived before the instance could use them.
    pub buffer: Vec<Buffered>,
    /// How often each step was entered (for unique command ids in loops).
    pub visits: BTreeMap<StepIdx, u32>,
    /// The top-level flow has ended; the instance ends once `expects` is empty.
    pub flow_done: bool,
    /// The instance that called this one, if any.
    pub parent: Option<ParentRef>,
    pub next_token: u32,
    pub next_incident: u32,
    pub transitions: u64,
    pub started_at: Millis,
    pub updated_at: Millis,
    /// W3C `traceparent` of the span that started the instance. Opaque to the
    /// engine: the runtime sets it so later inputs can join the instance's trace.
    pub trace: Option<String>,
}

/// How many event ids an instance remembers for deduplication.
pub const SEEN_WINDOW: usize = 64;

impl Instance {
    /// A fresh instance that has seen nothing yet.
    pub fn new(process: &str, version: u32, key: &str) -> Instance {
        Instance {
            process: process.to_string(),
            version,
            definition: String::new(),
            key: key.to_string(),
            status: Status::Pending,
            vars: Vars::new(),
            tokens: Vec::new(),
            completed: Vec::new(),
            timers: Vec::new(),
            expects: Vec::new(),
            met_expects: Vec::new(),
            compensated: false,
            incidents: Vec::new(),
            seen: VecDeque::new(),
            buffer: Vec::new(),
            visits: BTreeMap::new(),
            flow_done: false,
            parent: None,
            next_token: 1,
            next_incident: 1,
            transitions: 0,
            started_at: 0,
            updated_at: 0,
            trace: None,
        }
    }

    pub(crate) fn token(&self, id: u32) -> Option<&Token> {
        self.tokens.iter().find(|t| t.id == id)
    }

    pub(crate) fn token_mut(&mut self, id: u32) -> Option<&mut Token> {
        self.tokens.iter_mut().find(|t| t.id == id)
    }

    /// The earliest timer due, if any.
    pub fn next_due(&self) -> Option<Millis> {
        self.timers.iter().map(|t| t.due).min()
    }
}

/// A position in the flow.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub step: StepIdx,
    pub attempt: u32,
    pub visit: u32,
    pub phase: Phase,
    /// The token of the enclosing `parallel`, if any.
    pub parent: Option<u32>,
}

/// What a token is doing at its step.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// A task waiting for one of its outcomes.
    Awaiting,
    /// A task waiting for its next attempt.
    Backoff,
    /// A `wait` step.
    Waiting,
    /// A call waiting for the called instance (by key) to end.
    Calling(String),
    /// A `parallel` step; this many branches are done.
    Joining(u32),
    /// Stopped by an incident until an operator acts.
    Parked(u32),
}

/// A task that completed.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub step: StepIdx,
    pub attempt: u32,
    pub visit: u32,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// A task's timeout, for a token.
    Timeout(u32),
    /// The backoff before a task's next attempt.
    Backoff(u32),
    /// A `wait` step.
    Wait(u32),
    /// An `expect` watchdog, by index in the definition.
    Expect(u32),
    /// Expiry of buffered events.
    Buffer,
}

/// A durable timer.
#[derive(Debug, Clone, PartialEq)]
pub struct Timer {
    pub id: String,
    pub due: Millis,
    pub kind: TimerKind,
}

/// An armed watchdog.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmedExpect {
    pub index: u32,
    pub due: Millis,
}

/// A step that cannot proceed, parked until an operator acts.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub id: u32,
    /// The parked token; `None` for an incident raised by a watchdog.
    pub token: Option<u32>,
    pub step: Option<StepIdx>,
    pub reason: String,
    pub at: Millis,
}

/// A buffered event and when it expires.
#[derive(Debug, Clone, PartialEq)]
pub struct Buffered {
    pub event: Event,
    pub expires: Millis,
}

/// The calling instance and its step.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentRef {
    pub process: String,
    pub key: String,
    pub version: u32,
}
