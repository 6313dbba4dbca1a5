//! A shard as a state machine: the instances of one partition, their timers,
//! and what one input does to them.
//!
//! [`Shard::apply`] takes one typed input ([`ShardRecord`]: an event, a due
//! timer, a call, an operator action) and the time it happens at, and returns
//! [`Applied`]: whether the instance's state changed and the [`Action`]s the
//! caller carries out. Nothing here knows Kafka, the clock, spans or metrics:
//! `baton run` maps actions to records, spans and counters, and `baton
//! simulate` runs the same code on a virtual clock, so a scenario that passes
//! in simulation takes the same steps in production.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::engine::{
    self, Audit, Command, Effect, Event, Input, Instance, Millis, Registry, Rejection, Status,
    Timer,
};
use crate::wire::{self, ShardInputKind as Kind, ShardRecord};

/// What an instance's seen ids remember an applied operator request by.
pub const REQUEST_MARK: &str = "operator-request:";

/// Timer id of the expiry of an ended instance's retention.
pub const RETENTION_TIMER: &str = "__retention__";

/// A pending timer: due time, instance id (`process/key`), timer id; the
/// ids are the shard's own copies, shared with its instance map.
pub type TimerKey = (Millis, Arc<str>, Arc<str>);

/// What an input asked of the shard that it cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("process {process} (version {version:?}) is not deployed here")]
    Undeployed {
        process: String,
        version: Option<u32>,
    },
    #[error("the state of instance {id} does not decode: {reason}")]
    State { id: String, reason: String },
    /// An operator action that does not apply to its instance as it stands.
    #[error("operator action on {id} refused: {reason}")]
    Refused { id: String, reason: String },
    /// A timer for an instance the shard does not hold (it ended and was
    /// forgotten, or never started).
    #[error(
        "{input} for instance {id}, which does not exist (never started, or ended and forgotten)"
    )]
    NoInstance { id: String, input: String },
    /// An event that would start a new instance on a shard holding its cap.
    #[error(
        "event {event} would start instance {id}, but its shard holds its cap of {cap} instances (runtime.max_instances_per_shard)"
    )]
    AtCapacity {
        id: String,
        event: String,
        cap: usize,
    },
}

/// What the caller carries out for one input, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The instance entered this step: the actions that follow, up to the
    /// next `Entered`, were caused by entering it.
    Entered(String),
    /// Publish a command event.
    Command(Command),
    /// A timer was scheduled (the shard holds it until it falls due).
    Scheduled(Timer),
    /// One transition, for the audit trail.
    Audit(Audit),
    /// These variables changed.
    Variables(Vec<String>),
    Incident {
        id: u32,
        step: String,
        reason: String,
    },
    Resolved {
        id: u32,
        step: String,
        resolution: String,
    },
    /// An input for another instance, on its own shard: a call's start, or
    /// the end of a child told to its caller.
    Forward(ShardRecord),
    /// The instance ended.
    Ended(Status),
    /// An event the instance did not use ([`Rejection::Duplicate`]: seen before).
    Rejected {
        event: Box<Event>,
        reason: Rejection,
    },
}

/// How an input changed the instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing to write: the input found no instance to act on.
    None,
    /// The instance's state is new: write its snapshot.
    Saved,
    /// The instance is gone (its retention passed, or it held nothing):
    /// delete its snapshot.
    Forgotten,
}

/// What applying one input did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The instance, `process/key`.
    pub id: String,
    /// The time the input ran at.
    pub at: Millis,
    /// The definition version the instance runs, when an engine step ran.
    pub version: Option<u32>,
    /// The instance's status after the input.
    pub status: Option<Status>,
    /// The input started the instance.
    pub started: bool,
    /// Transitions the input caused.
    pub transitions: u64,
    pub change: Change,
    pub actions: Vec<Action>,
}

impl Applied {
    fn nothing(id: String, at: Millis, change: Change) -> Applied {
        Applied {
            id,
            at,
            version: None,
            status: None,
            started: false,
            transitions: 0,
            change,
            actions: Vec::new(),
        }
    }
}

/// The instances that an event concerns under the latest deployed
/// definitions, and the processes that could not correlate it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    /// `(process, key)` of every instance the event goes to.
    pub to: Vec<(String, String)>,
    /// Why a process that might want it could not say which instance.
    pub failures: Vec<String>,
}

impl Routes {
    /// When no instance takes the event: the dead-letter kind and reason.
    pub fn dead(&self, event: &Event) -> Option<(&'static str, String)> {
        if !self.to.is_empty() {
            None
        } else if self.failures.is_empty() {
            Some((
                "no-process",
                format!(
                    "no process starts on or correlates events of type {}",
                    event.kind
                ),
            ))
        } else {
            // A correlation that fails for one process is not an error when
            // another process took the event; only an event no process could
            // take is dead.
            Some(("correlation", self.failures.join("; ")))
        }
    }
}

/// Which instances an event goes to.
pub fn route(registry: &Registry, event: &Event) -> Routes {
    let mut routes = Routes::default();
    for def in registry.latest_all() {
        match engine::route(def, event) {
            Ok(Some(r)) => routes.to.push((def.process.clone(), r.key)),
            Ok(None) => {}
            Err(e) => routes
                .failures
                .push(format!("process {}: correlation failed: {e}", def.process)),
        }
    }
    routes
}

/// An instance as the shard holds it.
#[derive(Debug, Clone, PartialEq)]
enum Slot {
    /// Decoded: changed since it was last [frozen](Shard::freeze), or never frozen.
    Hot(Box<Instance>),
    /// Not touched since its snapshot was written: the snapshot's changelog
    /// record, decoded when an input comes for it.
    Cold(Cold),
}

/// An untouched instance: its changelog record and what summaries need.
#[derive(Debug, Clone, PartialEq)]
struct Cold {
    record: Arc<[u8]>,
    version: u32,
    status: Status,
    incidents: u32,
    trace: Option<Box<str>>,
}

/// What the shard knows of an instance without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary<'a> {
    /// `process/key`.
    pub id: &'a str,
    pub process: &'a str,
    pub version: u32,
    pub status: Status,
    /// Open incidents.
    pub incidents: usize,
}

/// The instances and timers of one shard. An instance an input touched is
/// held decoded until the caller [freezes](Shard::freeze) it with the
/// snapshot it wrote; an idle one costs its snapshot's bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shard {
    instances: HashMap<Arc<str>, Slot>,
    timers: BTreeSet<TimerKey>,
    /// Timers handed out by [`Shard::due`] whose input has not come back yet.
    in_flight: BTreeSet<TimerKey>,
    /// Timer ids, held once however many instances use them.
    names: HashSet<Arc<str>>,
    /// How long an ended instance is kept; `None`: for ever.
    retention: Option<Millis>,
    /// Instances whose snapshot did not decode on restore, with the reason:
    /// every input for one is refused (never started afresh over it).
    unreadable: HashMap<Arc<str>, String>,
    /// Most instances held; an event for a new one is refused at the cap.
    cap: Option<usize>,
}

impl Shard {
    /// Refuses events for new instances once the shard holds `cap` of them.
    pub fn with_cap(mut self, cap: usize) -> Shard {
        self.cap = Some(cap);
        self
    }

    /// Whether the shard holds its cap of instances.
    pub fn full(&self) -> bool {
        self.cap.is_some_and(|c| self.instances.len() >= c)
    }

    /// An empty shard that keeps ended instances for `retention`.
    pub fn new(retention: Option<Millis>) -> Shard {
        Shard {
            retention,
            ..Shard::default()
        }
    }

    /// The shard's one copy of a timer id.
    fn name(names: &mut HashSet<Arc<str>>, id: &str) -> Arc<str> {
        if let Some(n) = names.get(id) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(id);
        names.insert(n.clone());
        n
    }

    /// Schedules the timers of an instance as it was restored, and the end
    /// of its retention when it has ended.
    fn arm(&mut self, id: &Arc<str>, timers: &[(&str, Millis)], ended_at: Option<Millis>) {
        for (timer, due) in timers {
            let name = Shard::name(&mut self.names, timer);
            self.timers.insert((*due, id.clone(), name));
        }
        if let (Some(at), Some(r)) = (ended_at, self.retention) {
            let name = Shard::name(&mut self.names, RETENTION_TIMER);
            self.timers.insert((at.saturating_add(r), id.clone(), name));
        }
    }

    /// Removes an instance and its timers (a restore reading a newer record
    /// of its key, or its tombstone).
    pub fn remove(&mut self, id: &str) {
        self.unreadable.remove(id);
        let Some((handle, slot)) = self.instances.remove_entry(id) else {
            return;
        };
        let (timers, ended_at) = match &slot {
            Slot::Hot(i) => (
                i.timers.iter().map(|t| (t.id.clone(), t.due)).collect(),
                i.status.is_ended().then_some(i.updated_at),
            ),
            Slot::Cold(c) => match wire::peek_changelog(&c.record) {
                Ok(p) => (p.timers, p.status.is_ended().then_some(p.updated_at)),
                Err(_) => (Vec::new(), None),
            },
        };
        for (timer, due) in timers {
            if let Some(name) = self.names.get(timer.as_str()) {
                self.timers.remove(&(due, handle.clone(), name.clone()));
            }
        }
        if let (Some(at), Some(r), Some(name)) =
            (ended_at, self.retention, self.names.get(RETENTION_TIMER))
        {
            self.timers
                .remove(&(at.saturating_add(r), handle.clone(), name.clone()));
        }
    }

    /// Marks an instance whose snapshot does not decode: inputs for it are
    /// refused with `reason` until a readable snapshot replaces it.
    pub fn unreadable(&mut self, id: String, reason: String) {
        self.remove(&id);
        self.unreadable.insert(Arc::from(id), reason);
    }

    /// Adds an instance, decoded, with its timers (replacing one of the same id).
    pub fn insert(&mut self, id: String, inst: Instance) {
        self.remove(&id);
        let id: Arc<str> = Arc::from(id);
        let timers: Vec<(&str, Millis)> =
            inst.timers.iter().map(|t| (t.id.as_str(), t.due)).collect();
        let ended = inst.status.is_ended().then_some(inst.updated_at);
        self.arm(&id, &timers, ended);
        self.instances.insert(id, Slot::Hot(Box::new(inst)));
    }

    /// Adds an instance as its changelog record (`crate::wire`'s
    /// `encode_changelog_at`), with the summary `peek` read from it: it is
    /// decoded only when an input comes for it. It replaces an instance of
    /// the same id, with its timers.
    pub fn insert_record(&mut self, id: String, record: Arc<[u8]>, peek: &wire::Peek) {
        self.remove(&id);
        let id: Arc<str> = Arc::from(id);
        let timers: Vec<(&str, Millis)> = peek
            .timers
            .iter()
            .map(|(t, due)| (t.as_str(), *due))
            .collect();
        let ended = peek.status.is_ended().then_some(peek.updated_at);
        self.arm(&id, &timers, ended);
        let cold = Cold {
            record,
            version: peek.version,
            status: peek.status,
            incidents: peek.open.len() as u32,
            trace: peek.trace.as_deref().map(Box::from),
        };
        self.instances.insert(id, Slot::Cold(cold));
    }

    /// Marks an instance untouched: `record` is the changelog record just
    /// written for it, what it is kept as until an input comes for it.
    pub fn freeze(&mut self, id: &str, record: Arc<[u8]>) {
        if let Some(slot) = self.instances.get_mut(id)
            && let Slot::Hot(inst) = slot
        {
            *slot = Slot::Cold(Cold {
                record,
                version: inst.version,
                status: inst.status,
                incidents: inst.incidents.len() as u32,
                trace: inst.trace.as_deref().map(Box::from),
            });
        }
    }

    /// An instance, decoded (`None` also when its record no longer decodes).
    pub fn instance(&self, id: &str) -> Option<Cow<'_, Instance>> {
        match self.instances.get(id)? {
            Slot::Hot(i) => Some(Cow::Borrowed(i)),
            Slot::Cold(c) => thaw(&c.record).ok().map(Cow::Owned),
        }
    }

    /// Every instance, decoded.
    pub fn instances(&self) -> impl Iterator<Item = Cow<'_, Instance>> {
        self.instances.keys().filter_map(|id| self.instance(id))
    }

    /// What the shard knows of every instance without decoding one.
    pub fn summaries(&self) -> impl Iterator<Item = Summary<'_>> {
        self.instances.iter().map(|(id, slot)| {
            let (version, status, incidents) = match slot {
                Slot::Hot(i) => (i.version, i.status, i.incidents.len()),
                Slot::Cold(c) => (c.version, c.status, c.incidents as usize),
            };
            Summary {
                id,
                process: id.split_once('/').map_or(id.as_ref(), |(p, _)| p),
                version,
                status,
                incidents,
            }
        })
    }

    /// The trace context an instance keeps (see [`Shard::apply`]).
    pub fn trace(&self, id: &str) -> Option<&str> {
        match self.instances.get(id)? {
            Slot::Hot(i) => i.trace.as_deref(),
            Slot::Cold(c) => c.trace.as_deref(),
        }
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether the shard holds instance `id` (`<process>/<key>`).
    pub fn holds(&self, id: &str) -> bool {
        self.instances.contains_key(id)
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The pending timers, by due time.
    pub fn timers(&self) -> &BTreeSet<TimerKey> {
        &self.timers
    }

    /// The timers due at `now`, as the inputs that fire them. Each is handed
    /// out once: it stays in flight until its input is applied.
    pub fn due(&mut self, now: Millis) -> Vec<ShardRecord> {
        std::iter::from_fn(|| self.next_due(now)).collect()
    }

    /// The first timer due at `now`, as the input that fires it.
    pub fn next_due(&mut self, now: Millis) -> Option<ShardRecord> {
        while let Some(timer) = self.timers.pop_first() {
            if timer.0 > now {
                self.timers.insert(timer);
                return None;
            }
            if !self.in_flight.insert(timer.clone()) {
                continue;
            }
            let (at, id, timer) = timer;
            if let Some((process, key)) = id.split_once('/') {
                return Some(ShardRecord {
                    process: process.to_string(),
                    key: key.to_string(),
                    input: Kind::Timer {
                        timer: timer.to_string(),
                        due: at,
                    },
                });
            }
        }
        None
    }

    /// Applies one input. `now` is when its record was written; a timer
    /// runs at its due time and an event that carries its own time at that
    /// time, so applying the same inputs again gives the same result.
    /// `trace` is the input's trace context (W3C `traceparent`): an instance
    /// without one keeps it, so inputs without a context join its trace.
    pub fn apply(
        &mut self,
        registry: &Registry,
        record: ShardRecord,
        now: Millis,
        trace: Option<String>,
    ) -> Result<Applied, ShardError> {
        let ShardRecord {
            process,
            key,
            input,
        } = record;
        if !self.unreadable.is_empty() {
            let id = format!("{process}/{key}");
            if let Some(reason) = self.unreadable.get(id.as_str()) {
                return Err(ShardError::State {
                    id,
                    reason: reason.clone(),
                });
            }
        }
        let (input, now) = match input {
            Kind::Event { event, .. } => {
                if self.full() {
                    let id = format!("{process}/{key}");
                    if !self.instances.contains_key(id.as_str()) {
                        return Err(ShardError::AtCapacity {
                            id,
                            event: event.id,
                            cap: self.cap.unwrap_or_default(),
                        });
                    }
                }
                let at = if event.time > 0 { event.time } else { now };
                (Input::Event(event), at)
            }
            Kind::Call { parent, vars } => (Input::Call { parent, vars }, now),
            Kind::Operator(o) => return self.operate(registry, &process, &key, o, now, trace),
            Kind::Timer { timer, due } => {
                let id = format!("{process}/{key}");
                self.in_flight
                    .remove(&(due, Arc::from(id.as_str()), Arc::from(timer.as_str())));
                if timer == RETENTION_TIMER {
                    // The ended instance's retention passed: forget it.
                    let change = match self.instances.remove(id.as_str()) {
                        Some(_) => Change::Forgotten,
                        None => Change::None,
                    };
                    return Ok(Applied::nothing(id, due, change));
                }
                if !self.instances.contains_key(id.as_str()) {
                    return Err(ShardError::NoInstance {
                        id,
                        input: format!("timer {timer} due {}", engine::format_rfc3339(due)),
                    });
                }
                (Input::Timer(timer), due)
            }
        };
        self.step(registry, &process, &key, &input, now, trace)
    }

    /// An event the caller could not process (its results would be too
    /// large, or processing it panicked): the instance it is for, if that
    /// exists, gets an incident naming it, and the event counts as seen.
    pub fn refuse(
        &mut self,
        registry: &Registry,
        record: ShardRecord,
        reason: &str,
        now: Millis,
    ) -> Result<Option<Applied>, ShardError> {
        let ShardRecord {
            process,
            key,
            input: Kind::Event { event, .. },
        } = record
        else {
            return Ok(None);
        };
        if !self
            .instances
            .contains_key(format!("{process}/{key}").as_str())
        {
            return Ok(None);
        }
        let input = Input::Refused {
            event,
            reason: reason.to_string(),
        };
        self.step(registry, &process, &key, &input, now, None)
            .map(Some)
    }

    /// An operator's action: refused (with the reason) when its instance does
    /// not exist or the action does not apply to it; ignored when the
    /// instance already applied the same request; else applied like any
    /// other input. A migration is carried out here, since the shard holds
    /// every deployed version.
    fn operate(
        &mut self,
        registry: &Registry,
        process: &str,
        key: &str,
        o: wire::Operator,
        now: Millis,
        trace: Option<String>,
    ) -> Result<Applied, ShardError> {
        let id = format!("{process}/{key}");
        let refused = |reason: String| ShardError::Refused {
            id: id.clone(),
            reason,
        };
        let Some(inst) = self.instance(&id) else {
            return Err(refused(
                "no such instance on its shard (it never started, or its retention passed)".into(),
            ));
        };
        let mark = (!o.request.is_empty()).then(|| format!("{REQUEST_MARK}{}", o.request));
        if mark
            .as_ref()
            .is_some_and(|m| inst.seen.iter().any(|s| s == m))
        {
            // The same request again (a job or a client sent it twice).
            return Ok(Applied::nothing(id, now, Change::None));
        }
        let applied = match o.action {
            engine::Action::Migrate { to, steps } => {
                let inst = inst.into_owned();
                let from =
                    registry
                        .get(process, inst.version)
                        .ok_or_else(|| ShardError::Undeployed {
                            process: process.to_string(),
                            version: Some(inst.version),
                        })?;
                let target = registry.get(process, to).ok_or_else(|| {
                    refused(format!("version {to} of process {process} is not deployed"))
                })?;
                let mut moved = engine::migrate(from, target, &inst, &steps).map_err(|m| {
                    refused(format!(
                        "cannot move to version {to}: {}",
                        m.iter()
                            .map(|m| m.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                })?;
                moved.updated_at = now;
                let at = |def: &engine::Definition, i: &Instance| -> Vec<String> {
                    i.tokens
                        .iter()
                        .filter_map(|t| def.steps.get(t.step).map(|s| s.id.clone()))
                        .collect()
                };
                let audit = engine::Audit {
                    at: now,
                    process: process.to_string(),
                    version: to,
                    key: key.to_string(),
                    cause: engine::Cause::Operator(format!(
                        "migrate from version {} to version {to}",
                        inst.version
                    )),
                    before: at(from, &inst),
                    after: at(target, &moved),
                    status: moved.status,
                };
                let mut actions: Vec<Action> = moved
                    .timers
                    .iter()
                    .filter(|t| !inst.timers.contains(t))
                    .cloned()
                    .map(Action::Scheduled)
                    .collect();
                actions.push(Action::Audit(audit));
                let status = moved.status;
                // Its timers are re-armed under their new ids.
                self.insert(id.clone(), moved);
                Applied {
                    id: id.clone(),
                    at: now,
                    version: Some(to),
                    status: Some(status),
                    started: false,
                    transitions: 0,
                    change: Change::Saved,
                    actions,
                }
            }
            action => {
                if let Some(reason) = action.refusal(&inst) {
                    return Err(refused(reason));
                }
                drop(inst);
                self.step(registry, process, key, &Input::Operator(action), now, trace)?
            }
        };
        if let (Some(mark), Some(Slot::Hot(inst))) = (mark, self.instances.get_mut(id.as_str())) {
            if inst.seen.len() >= engine::SEEN_WINDOW {
                inst.seen.pop_front();
            }
            inst.seen.push_back(mark);
        }
        Ok(applied)
    }

    /// Runs one engine step for an instance and turns its effects into actions.
    fn step(
        &mut self,
        registry: &Registry,
        process: &str,
        key: &str,
        input: &Input,
        now: Millis,
        trace: Option<String>,
    ) -> Result<Applied, ShardError> {
        let id = format!("{process}/{key}");
        let (handle, existing) = match self.instances.get_key_value(id.as_str()) {
            Some((k, Slot::Hot(i))) => (k.clone(), Some(i.version)),
            Some((k, Slot::Cold(c))) => (k.clone(), Some(c.version)),
            None => (Arc::from(id.as_str()), None),
        };
        let def = match existing {
            Some(v) => registry.get(process, v),
            None => registry.latest(process),
        }
        .cloned()
        .ok_or_else(|| ShardError::Undeployed {
            process: process.to_string(),
            version: existing,
        })?;
        let Shard {
            instances,
            timers,
            names,
            retention,
            ..
        } = self;
        let slot = instances.entry(handle.clone()).or_insert_with(|| {
            let mut i = Instance::new(&def.process, def.version, key);
            i.definition = def.hash.clone();
            Slot::Hot(Box::new(i))
        });
        if let Slot::Cold(c) = slot {
            let inst = thaw(&c.record).map_err(|e| ShardError::State {
                id: id.clone(),
                reason: e.to_string(),
            })?;
            *slot = Slot::Hot(Box::new(inst));
        }
        let Slot::Hot(inst) = slot else {
            unreachable!("thawed above");
        };
        let was_pending = inst.status == engine::Status::Pending;
        let before = inst.transitions;
        let effects = engine::apply(&def, inst, input, now);
        if inst.trace.is_none() {
            inst.trace = trace;
        }
        let mut applied = Applied {
            id,
            at: now,
            version: Some(def.version),
            status: Some(inst.status),
            started: was_pending && inst.status == engine::Status::Active,
            transitions: inst.transitions.saturating_sub(before),
            change: Change::Saved,
            actions: Vec::with_capacity(effects.len()),
        };
        for fx in effects {
            let action = match fx {
                Effect::Entered(idx) => Action::Entered(
                    def.steps
                        .get(idx)
                        .map_or_else(|| "?".to_string(), |s| s.id.clone()),
                ),
                Effect::Command(c) => Action::Command(c),
                Effect::ScheduleTimer(t) => {
                    let name = Shard::name(names, &t.id);
                    timers.insert((t.due, handle.clone(), name));
                    Action::Scheduled(t)
                }
                Effect::CancelTimer(t) => {
                    // O(log n): the index is ordered by due time first.
                    if let Some(name) = names.get(t.id.as_str()) {
                        timers.remove(&(t.due, handle.clone(), name.clone()));
                    }
                    continue;
                }
                Effect::Audit(a) => Action::Audit(a),
                Effect::VariablesChanged(names) => Action::Variables(names),
                Effect::IncidentRaised { id, step, reason } => {
                    Action::Incident { id, step, reason }
                }
                Effect::IncidentResolved {
                    id,
                    step,
                    resolution,
                } => Action::Resolved {
                    id,
                    step,
                    resolution,
                },
                Effect::StartProcess {
                    process,
                    key,
                    vars,
                    parent,
                } => Action::Forward(ShardRecord {
                    process,
                    key,
                    input: Kind::Call { parent, vars },
                }),
                Effect::Ended { status, parent } => {
                    if let Some(r) = retention {
                        let name = Shard::name(names, RETENTION_TIMER);
                        timers.insert((now.saturating_add(*r), handle.clone(), name));
                    }
                    applied.actions.push(Action::Ended(status));
                    let Some(parent) = parent else {
                        continue;
                    };
                    Action::Forward(ShardRecord {
                        input: Kind::Event {
                            event: Event::child_ended(process, key, status, &inst.vars, now),
                            origin: None,
                        },
                        process: parent.process,
                        key: parent.key,
                    })
                }
                Effect::Discard => {
                    applied.change = Change::Forgotten;
                    continue;
                }
                Effect::Rejected { event, reason } => Action::Rejected { event, reason },
            };
            applied.actions.push(action);
        }
        if applied.change == Change::Forgotten {
            instances.remove(&handle);
        }
        Ok(applied)
    }
}

/// Decodes a cold instance's changelog record.
fn thaw(record: &[u8]) -> Result<Instance, wire::WireError> {
    wire::decode_changelog_at(record).map(|(_, _, i)| i)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A registry with `examples/order-to-cash.yaml` deployed.
    pub(crate) fn registry() -> Registry {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/order-to-cash.yaml");
        let text = std::fs::read_to_string(path).expect("example");
        let mut reg = Registry::default();
        reg.deploy(
            crate::dsl::parse("order-to-cash.yaml", &text).expect("valid"),
            &text,
        )
        .expect("deploy");
        reg
    }

    fn placed(order: &str) -> ShardRecord {
        ShardRecord {
            process: "order-to-cash".into(),
            key: order.into(),
            input: Kind::Event {
                event: Event {
                    id: format!("{order}/placed"),
                    kind: "com.acme.order.placed".into(),
                    source: "test".into(),
                    time: 0,
                    data: json!({"orderId": order, "customerId": "c-1", "total": 5, "lines": [], "address": "x"}),
                },
                origin: None,
            },
        }
    }

    /// An operator's cancel of `order`, without compensation.
    fn cancel(order: &str) -> ShardRecord {
        ShardRecord {
            process: "order-to-cash".into(),
            key: order.into(),
            input: Kind::Operator(wire::Operator {
                action: engine::Action::Cancel {
                    compensate: false,
                    reason: "test".into(),
                },
                by: "tester".into(),
                reason: "test".into(),
                request: String::new(),
            }),
        }
    }

    const T0: Millis = 1_700_000_000_000;

    fn operator(order: &str, action: engine::Action, request: &str) -> ShardRecord {
        ShardRecord {
            process: "order-to-cash".into(),
            key: order.into(),
            input: Kind::Operator(wire::Operator {
                action,
                by: "alice".into(),
                reason: "ticket 7".into(),
                request: request.into(),
            }),
        }
    }

    #[test]
    fn an_operator_action_that_does_not_apply_is_refused_with_the_reason() {
        let reg = registry();
        let mut s = Shard::new(None);
        let retry = engine::Action::Retry { incident: None };
        let err = s
            .apply(&reg, operator("o-9", retry.clone(), "r1"), T0, None)
            .expect_err("no instance");
        assert!(
            matches!(&err, ShardError::Refused { id, reason } if id == "order-to-cash/o-9" && reason.contains("no such instance")),
            "{err}"
        );
        assert!(s.is_empty(), "a refused action creates no instance");
        s.apply(&reg, placed("o-1"), T0, None).expect("started");
        let err = s
            .apply(&reg, operator("o-1", retry, "r2"), T0 + 1, None)
            .expect_err("no incident");
        assert!(err.to_string().contains("no open incident"), "{err}");
        let skip = engine::Action::Skip { incident: Some(4) };
        let err = s
            .apply(&reg, operator("o-1", skip, "r3"), T0 + 1, None)
            .expect_err("no incident 4");
        assert!(err.to_string().contains("no open incident 4"), "{err}");
    }

    #[test]
    fn the_same_operator_request_applies_once() {
        let reg = registry();
        let mut s = Shard::new(None);
        s.apply(&reg, placed("o-1"), T0, None).expect("started");
        let set = engine::Action::SetVariable {
            name: "note".into(),
            value: json!("fragile"),
        };
        let first = s
            .apply(&reg, operator("o-1", set.clone(), "req-1"), T0 + 1, None)
            .expect("applied");
        assert_eq!(first.change, Change::Saved);
        assert!(first.actions.iter().any(|a| matches!(a, Action::Audit(_))));
        let again = s
            .apply(&reg, operator("o-1", set.clone(), "req-1"), T0 + 2, None)
            .expect("ignored");
        assert_eq!(again.change, Change::None);
        assert!(again.actions.is_empty());
        // Another request with the same action applies again.
        let other = s
            .apply(&reg, operator("o-1", set, "req-2"), T0 + 3, None)
            .expect("applied");
        assert_eq!(other.change, Change::Saved);
    }

    #[test]
    fn a_migration_moves_the_instance_or_says_why_not() {
        let mut reg = registry();
        let mut s = Shard::new(None);
        s.apply(&reg, placed("o-1"), T0, None)
            .expect("started on v1");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/order-to-cash.yaml");
        let v2 = std::fs::read_to_string(path)
            .expect("example")
            .replace("version: 1", "version: 2");
        reg.deploy(crate::dsl::parse("v2.yaml", &v2).expect("valid"), &v2)
            .expect("deploy v2");
        let to = |to| engine::Action::Migrate {
            to,
            steps: Default::default(),
        };
        let err = s
            .apply(&reg, operator("o-1", to(3), "m0"), T0 + 1, None)
            .expect_err("no version 3");
        assert!(err.to_string().contains("version 3"), "{err}");
        let unknown = engine::Action::Migrate {
            to: 2,
            steps: [("nowhere".to_string(), "reserve".to_string())].into(),
        };
        let err = s
            .apply(&reg, operator("o-1", unknown, "m1"), T0 + 1, None)
            .expect_err("mapping of an unknown step");
        assert!(err.to_string().contains("nowhere"), "{err}");
        let before = s.instance("order-to-cash/o-1").expect("there").into_owned();
        let moved = s
            .apply(&reg, operator("o-1", to(2), "m2"), T0 + 2, None)
            .expect("moved");
        assert_eq!((moved.version, moved.change), (Some(2), Change::Saved));
        let after = s.instance("order-to-cash/o-1").expect("there").into_owned();
        assert_eq!(after.version, 2);
        assert_eq!(after.tokens, before.tokens);
        let audit = moved.actions.iter().find_map(|a| match a {
            Action::Audit(a) => Some(a),
            _ => None,
        });
        let audit = audit.expect("audited");
        assert_eq!(audit.before, audit.after);
        assert!(
            matches!(&audit.cause, engine::Cause::Operator(c) if c.contains("from version 1 to version 2"))
        );
        // Its timers are still armed, once each.
        let ids: Vec<_> = s.timers().iter().map(|(_, _, t)| t.to_string()).collect();
        let mut want: Vec<_> = after.timers.iter().map(|t| t.id.clone()).collect();
        let mut got = ids.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        let again = s
            .apply(&reg, operator("o-1", to(2), "m3"), T0 + 3, None)
            .expect_err("already there");
        assert!(err_has(&again, "already runs"), "{again}");
    }

    fn err_has(e: &ShardError, what: &str) -> bool {
        e.to_string().contains(what)
    }

    #[test]
    fn an_input_gives_the_same_actions_and_state_every_time() {
        let reg = registry();
        let run = || {
            let mut s = Shard::new(Some(60_000));
            let applied = s.apply(&reg, placed("o-1"), T0, None).expect("deployed");
            (applied, s)
        };
        let (a, s) = run();
        assert_eq!((a.clone(), s.clone()), run());
        assert_eq!(a.id, "order-to-cash/o-1");
        assert_eq!(a.at, T0);
        assert!(a.started);
        assert_eq!(a.change, Change::Saved);
        assert!(
            a.actions
                .iter()
                .any(|x| matches!(x, Action::Command(c) if c.kind == "com.acme.inventory.reserve"))
        );
        // Every scheduled timer is in the index, and nothing else is.
        let scheduled: BTreeSet<TimerKey> = a
            .actions
            .iter()
            .filter_map(|x| match x {
                Action::Scheduled(t) => {
                    Some((t.due, Arc::from(a.id.as_str()), Arc::from(t.id.as_str())))
                }
                _ => None,
            })
            .collect();
        assert!(!scheduled.is_empty());
        assert_eq!(s.timers(), &scheduled);
    }

    #[test]
    fn a_due_timer_is_handed_out_once_and_fires_at_its_due_time() {
        let reg = registry();
        let mut s = Shard::new(None);
        s.apply(&reg, placed("o-1"), T0, None).expect("deployed");
        let (due, _, timer) = s.timers().first().cloned().expect("a timer");
        assert!(s.due(due - 1).is_empty(), "not due yet");
        let fired = s.due(due);
        assert_eq!(fired.len(), 1);
        assert_eq!(
            fired[0].input,
            Kind::Timer {
                timer: timer.to_string(),
                due
            }
        );
        assert!(s.due(due + 1).is_empty(), "handed out twice");
        let a = s
            .apply(&reg, fired[0].clone(), due + 5_000, None)
            .expect("deployed");
        assert_eq!(a.at, due, "a timer runs at its due time");
        assert!(a.transitions > 0 || !a.actions.is_empty());
    }

    #[test]
    fn a_shard_at_its_cap_refuses_new_instances_and_serves_the_ones_it_holds() {
        let reg = registry();
        let mut s = Shard::new(Some(60_000)).with_cap(2);
        s.apply(&reg, placed("o-1"), T0, None).expect("deployed");
        s.apply(&reg, placed("o-2"), T0, None).expect("deployed");
        assert!(s.full());
        match s.apply(&reg, placed("o-3"), T0, None) {
            Err(e @ ShardError::AtCapacity { .. }) => assert_eq!(
                e.to_string(),
                "event o-3/placed would start instance order-to-cash/o-3, but its shard holds its cap of 2 instances (runtime.max_instances_per_shard)"
            ),
            other => panic!("expected AtCapacity, got {other:?}"),
        }
        assert_eq!(s.len(), 2, "nothing of the refused instance is kept");
        // The instances it holds go on: o-1 is cancelled and, once its
        // retention passed, forgotten, which makes room again.
        let a = s
            .apply(&reg, cancel("o-1"), T0 + 1_000, None)
            .expect("deployed");
        assert!(a.actions.contains(&Action::Ended(Status::Cancelled)));
        let due = T0 + 1_000 + 60_000;
        for r in s.due(due) {
            s.apply(&reg, r, due, None).expect("deployed");
        }
        assert!(!s.full());
        s.apply(&reg, placed("o-3"), due, None)
            .expect("o-3 starts below the cap");
        assert!(s.instance("order-to-cash/o-3").is_some());
    }

    #[test]
    fn an_ended_instance_is_forgotten_when_its_retention_passes() {
        let reg = registry();
        let mut s = Shard::new(Some(60_000));
        s.apply(&reg, placed("o-1"), T0, None).expect("deployed");
        let cancel = cancel("o-1");
        let a = s.apply(&reg, cancel, T0 + 1_000, None).expect("deployed");
        assert!(a.actions.contains(&Action::Ended(Status::Cancelled)));
        let retention = s
            .timers()
            .iter()
            .find(|t| &*t.2 == RETENTION_TIMER)
            .cloned()
            .expect("retention timer");
        assert_eq!(retention.0, T0 + 1_000 + 60_000);
        let fired = s.due(retention.0);
        let gone = fired
            .into_iter()
            .map(|r| s.apply(&reg, r, retention.0, None).expect("deployed"))
            .find(|a| a.change == Change::Forgotten)
            .expect("forgotten");
        assert_eq!(gone.id, "order-to-cash/o-1");
        assert!(s.is_empty());
        // A timer of an instance that is gone changes nothing and says why.
        let late = ShardRecord {
            process: "order-to-cash".into(),
            key: "o-1".into(),
            input: Kind::Timer {
                timer: "reserve/timeout/1".into(),
                due: retention.0 + 1,
            },
        };
        match s.apply(&reg, late, retention.0 + 1, None) {
            Err(ShardError::NoInstance { id, input }) => {
                assert_eq!(id, "order-to-cash/o-1");
                assert!(input.starts_with("timer reserve/timeout/1 due "), "{input}");
            }
            other => panic!("expected NoInstance, got {other:?}"),
        }
        assert!(s.is_empty());
    }

    #[test]
    fn an_instance_whose_snapshot_does_not_decode_refuses_its_inputs() {
        let reg = registry();
        let mut s = Shard::new(None);
        s.unreadable("order-to-cash/o-1".into(), "bad bytes".into());
        // Not even its start event starts it afresh.
        match s.apply(&reg, placed("o-1"), T0, None) {
            Err(ShardError::State { id, reason }) => {
                assert_eq!(
                    (id.as_str(), reason.as_str()),
                    ("order-to-cash/o-1", "bad bytes")
                );
            }
            other => panic!("expected a state error, got {other:?}"),
        }
        assert!(s.is_empty());
        // Other instances are not concerned.
        s.apply(&reg, placed("o-2"), T0, None).expect("o-2 starts");
        // A readable snapshot of the same id replaces the mark.
        s.insert(
            "order-to-cash/o-1".into(),
            Instance::new("order-to-cash", 1, "o-1"),
        );
        assert!(s.apply(&reg, placed("o-1"), T0, None).is_ok());
    }

    #[test]
    fn a_refused_event_raises_an_incident_and_an_unknown_process_is_an_error() {
        let reg = registry();
        let mut s = Shard::new(None);
        assert_eq!(
            s.refuse(&reg, placed("o-1"), "too large", T0).expect("ok"),
            None,
            "no instance, nothing to tell"
        );
        s.apply(&reg, placed("o-1"), T0, None).expect("deployed");
        let mut again = placed("o-1");
        if let Kind::Event { event, .. } = &mut again.input {
            event.id = "o-1/other".into();
        }
        let a = s
            .refuse(&reg, again, "too large", T0 + 1)
            .expect("ok")
            .expect("applied");
        assert!(
            a.actions.iter().any(
                |x| matches!(x, Action::Incident { reason, .. } if reason.contains("too large"))
            )
        );
        let mut other = placed("x-1");
        other.process = "nowhere".into();
        assert_eq!(
            s.apply(&reg, other, T0, None),
            Err(ShardError::Undeployed {
                process: "nowhere".into(),
                version: None
            })
        );
    }

    #[test]
    fn routes_name_every_instance_and_say_why_none() {
        let reg = registry();
        let placed = match placed("o-9").input {
            Kind::Event { event, .. } => event,
            _ => unreachable!(),
        };
        let r = route(&reg, &placed);
        assert_eq!(r.to, vec![("order-to-cash".to_string(), "o-9".to_string())]);
        assert_eq!(r.dead(&placed), None);
        let stray = Event {
            kind: "com.acme.unknown".into(),
            ..placed
        };
        let (kind, reason) = route(&reg, &stray).dead(&stray).expect("dead");
        assert_eq!(kind, "no-process");
        assert!(reason.contains("com.acme.unknown"), "{reason}");
    }

    /// An instance kept as its snapshot's bytes (frozen after a step, or
    /// restored from the changelog) continues exactly as a decoded one.
    #[test]
    fn a_frozen_or_restored_instance_continues_as_a_decoded_one() {
        let reg = registry();
        let reserved = ShardRecord {
            process: "order-to-cash".into(),
            key: "o-1".into(),
            input: Kind::Event {
                event: Event {
                    id: "o-1/reserved".into(),
                    kind: "com.acme.inventory.reserved".into(),
                    source: "test".into(),
                    time: T0 + 10,
                    data: json!({"orderId": "o-1", "reservationId": "r-1"}),
                },
                origin: None,
            },
        };
        let id = "order-to-cash/o-1";
        let mut hot = Shard::new(None);
        hot.apply(&reg, placed("o-1"), T0, Some("00-t-s-01".into()))
            .expect("deployed");
        let snapshot = wire::encode_changelog_at("", 1, &hot.instance(id).expect("there"));

        let mut frozen = hot.clone();
        frozen.freeze(id, snapshot.clone().into());
        let mut restored = Shard::new(None);
        let peek = wire::peek_changelog(&snapshot).expect("peeks");
        restored.insert_record(id.to_string(), snapshot.into(), &peek);
        for other in [&frozen, &restored] {
            assert_eq!(other.timers(), hot.timers());
            assert_eq!(other.trace(id), Some("00-t-s-01"));
            assert_eq!(other.instance(id), hot.instance(id));
            assert_eq!(
                other.summaries().collect::<Vec<_>>(),
                hot.summaries().collect::<Vec<_>>()
            );
        }
        let want = hot
            .apply(&reg, reserved.clone(), T0, None)
            .expect("deployed");
        for mut other in [frozen, restored] {
            let got = other
                .apply(&reg, reserved.clone(), T0, None)
                .expect("deployed");
            assert_eq!(got, want);
            assert_eq!(other.instance(id), hot.instance(id));
            assert_eq!(other.timers(), hot.timers());
        }
        // A record that does not decode is an error naming the instance, not a panic.
        let mut broken = Shard::new(None);
        let mut peek = peek.clone();
        peek.timers.clear();
        broken.insert_record(id.to_string(), Arc::from(&b"\x12\x02no"[..]), &peek);
        match broken.apply(&reg, reserved, T0, None) {
            Err(ShardError::State { id: got, .. }) => assert_eq!(got, id),
            other => panic!("expected a state error, got {other:?}"),
        }
    }

    /// A restore reads every record of a key; only the last one's timers
    /// may stay armed, and a tombstone takes the instance and its timers.
    #[test]
    fn a_newer_record_of_a_key_replaces_the_instance_and_its_timers() {
        let reg = registry();
        let id = "order-to-cash/o-1";
        let mut live = Shard::new(Some(60_000));
        live.apply(&reg, placed("o-1"), T0, None).expect("deployed");
        let first = wire::encode_changelog_at("", 1, &live.instance(id).expect("there"));
        let cancel = cancel("o-1");
        live.apply(&reg, cancel, T0 + 5, None).expect("deployed");
        let second = wire::encode_changelog_at("", 2, &live.instance(id).expect("there"));

        let mut restored = Shard::new(Some(60_000));
        for record in [first, second] {
            let peek = wire::peek_changelog(&record).expect("peeks");
            restored.insert_record(id.to_string(), record.into(), &peek);
        }
        assert_eq!(
            restored.timers(),
            live.timers(),
            "only the newest record's timers"
        );
        assert_eq!(restored.instance(id), live.instance(id));
        restored.remove(id);
        assert!(restored.is_empty());
        assert!(
            restored.timers().is_empty(),
            "a removed instance leaves no timer"
        );
    }
}
