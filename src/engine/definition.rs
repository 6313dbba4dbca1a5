//! The compiled form of a process definition: what the engine runs.
//!
//! Built by [`crate::dsl`] from YAML; steps live in one arena indexed by
//! [`StepIdx`], each knowing the step that follows it in its list and the
//! parallel branch it belongs to, so the engine never searches by name.

use std::collections::HashMap;

use super::{Expr, Millis};

/// Index of a step in [`Definition::steps`].
pub type StepIdx = usize;

/// A process definition, compiled.
#[derive(Debug)]
pub struct Definition {
    pub process: String,
    pub version: u32,
    /// Content hash of the source text this version was deployed from (set
    /// by [`Registry::deploy`]; empty before). Instances carry it, so a
    /// definition edited without a new version is noticed on restore.
    pub hash: String,
    pub start: Start,
    pub correlate: Vec<Correlation>,
    /// Variables computed from the start event, in order.
    pub vars: Vec<Assign>,
    pub steps: Vec<Step>,
    /// First step of the top-level flow (`None`: the process ends at once).
    pub entry: Option<StepIdx>,
    pub observe: Vec<Observer>,
    pub expect: Vec<Expectation>,
    pub buffer: BufferPolicy,
    /// Every task must say how it is compensated.
    pub saga: bool,
    pub(crate) index: HashMap<String, StepIdx>,
}

impl Definition {
    /// The step with this id.
    pub fn step_named(&self, id: &str) -> Option<StepIdx> {
        self.index.get(id).copied()
    }

    /// Rebuilds the id index after the step arena changed.
    pub fn reindex(&mut self) {
        self.index = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
    }

    /// Does this definition start instances on this event type?
    pub fn starts_on(&self, kind: &str) -> bool {
        self.start.on.matches(kind)
    }
}

/// How instances start.
#[derive(Debug)]
pub struct Start {
    pub on: Pattern,
    pub key: Expr,
    pub when: Option<Expr>,
}

/// How a later event finds its instance.
#[derive(Debug)]
pub struct Correlation {
    pub on: Pattern,
    pub key: Expr,
}

/// `name: expression`.
#[derive(Debug)]
pub struct Assign {
    pub name: String,
    pub expr: Expr,
}

/// Buffering of events that arrive before the instance can use them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BufferPolicy {
    pub size: usize,
    pub ttl: Millis,
}

impl Default for BufferPolicy {
    fn default() -> Self {
        BufferPolicy {
            size: 32,
            ttl: 60 * 60 * 1000,
        }
    }
}

/// A CloudEvents type pattern: exact, or with `*` wildcards.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    text: String,
    /// It has a `*`: known once, as every event is matched against many patterns.
    wild: bool,
}

impl Pattern {
    pub fn new(p: &str) -> Pattern {
        Pattern {
            text: p.to_string(),
            wild: p.contains('*'),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, s: &str) -> bool {
        if !self.wild {
            return self.text == s;
        }
        glob(self.text.as_bytes(), s.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with single backtrack point: linear for `*` patterns.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// One step of a flow.
#[derive(Debug)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    /// The step after this one in its list; `None` ends the list.
    pub next: Option<StepIdx>,
    /// The parallel step and branch number this step belongs to.
    pub branch: Option<(StepIdx, usize)>,
    /// Where the flow goes when the step is done (`then:`/`goto:` on the step).
    pub then: Transition,
}

/// What a step does.
#[derive(Debug)]
pub enum StepKind {
    /// Emit a command (or nothing) and await one of several outcomes.
    Task(Box<Task>),
    /// Evaluate conditions in order; the first true case decides.
    Switch {
        cases: Vec<Case>,
        default: Transition,
    },
    /// Assign variables and move on.
    Set(Vec<Assign>),
    /// Hold the flow for a duration or until a time.
    Wait(Wait),
    /// Fork into branches and join them.
    Parallel { branches: Vec<StepIdx>, join: Join },
    /// End the instance.
    End(EndStatus),
}

/// A task: command out, outcomes in.
#[derive(Debug)]
pub struct Task {
    pub command: Option<CommandTemplate>,
    /// A human task: the command creates work for a person.
    pub manual: bool,
    /// Start another process and await its end.
    pub call: Option<Call>,
    pub outcomes: Vec<Outcome>,
    pub timeout: Option<Millis>,
    pub on_timeout: Transition,
    pub retry: Option<Retry>,
    pub on_exhausted: Transition,
    pub compensate: Option<CommandTemplate>,
}

/// A call of another process.
#[derive(Debug)]
pub struct Call {
    pub process: String,
    pub key: Expr,
    pub vars: Vec<Assign>,
}

/// A command to emit, with its payload mapping.
#[derive(Debug)]
pub struct CommandTemplate {
    pub topic: String,
    pub kind: String,
    pub data: DataMap,
}

/// A payload built from expressions: a tree whose leaves are CEL.
#[derive(Debug)]
pub enum DataMap {
    Expr(Expr),
    Object(Vec<(String, DataMap)>),
    List(Vec<DataMap>),
}

impl DataMap {
    /// The payload for `scope`; an error names the field that failed.
    pub fn build(&self, scope: &super::Scope<'_>) -> Result<serde_json::Value, String> {
        Ok(match self {
            DataMap::Expr(e) => e.eval(scope).map_err(|e| e.to_string())?,
            DataMap::Object(fields) => {
                let mut o = serde_json::Map::new();
                for (k, v) in fields {
                    o.insert(k.clone(), v.build(scope).map_err(|e| format!("{k}: {e}"))?);
                }
                serde_json::Value::Object(o)
            }
            DataMap::List(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|v| v.build(scope))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// One awaited outcome of a task.
#[derive(Debug)]
pub struct Outcome {
    pub on: Pattern,
    pub when: Option<Expr>,
    pub set: Vec<Assign>,
    pub then: Transition,
}

/// A `switch` case.
#[derive(Debug)]
pub struct Case {
    pub when: Expr,
    pub then: Transition,
}

/// Where the flow goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The next step in the list (or the end of the list).
    Next,
    Goto(StepIdx),
    /// End the instance as completed.
    Complete,
    /// Compensate completed steps, newest first, and end as failed.
    Fail,
    /// End the instance as cancelled.
    Cancel,
    /// Re-emit the task's command after its backoff.
    Retry,
    /// Park the step as an incident until an operator acts.
    Incident,
}

/// Retry policy: `attempts` counts the first one too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    pub attempts: u32,
    pub backoff: Millis,
    pub factor: f64,
    pub max_backoff: Option<Millis>,
}

impl Retry {
    /// Delay before attempt `next` (2 = first retry).
    pub fn delay(&self, next: u32) -> Millis {
        let exp = next.saturating_sub(2).min(62) as i32;
        let d = (self.backoff as f64) * self.factor.powi(exp);
        let d = if d.is_finite() {
            d.min(u64::MAX as f64) as u64
        } else {
            u64::MAX
        };
        match self.max_backoff {
            Some(max) => d.min(max),
            None => d,
        }
    }
}

/// How a `wait` step decides when to go on.
#[derive(Debug)]
pub enum Wait {
    For(Millis),
    Until(Expr),
}

/// How many branches a parallel step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    All,
    Any,
    N(usize),
}

impl Join {
    pub fn needed(self, branches: usize) -> usize {
        match self {
            Join::All => branches,
            Join::Any => 1.min(branches),
            Join::N(n) => n.min(branches),
        }
    }
}

/// Terminal status an `end` step gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndStatus {
    Completed,
    Failed,
    Cancelled,
}

/// Choreography: update variables from events nobody commanded.
#[derive(Debug)]
pub struct Observer {
    pub on: Pattern,
    pub when: Option<Expr>,
    pub set: Vec<Assign>,
}

/// Choreography watchdog: an event that must follow a step in time.
#[derive(Debug)]
pub struct Expectation {
    /// Armed when this step completes; `None`: when the instance starts.
    pub after: Option<StepIdx>,
    pub on: Pattern,
    pub when: Option<Expr>,
    pub within: Millis,
    pub command: Option<CommandTemplate>,
    /// What else happens when it is late (`Next` = nothing).
    pub then: Transition,
}

/// A stable content hash of a definition's source text (64-bit FNV-1a, hex):
/// the same text gives the same hash on every machine and build.
pub fn content_hash(source: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Deployed definitions: every version of every process.
///
/// New instances take the newest version; running ones keep theirs.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    processes: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<u32, (std::sync::Arc<Definition>, String)>,
    >,
    /// Who deployed a version at run time, and when (epoch ms); versions
    /// read from files at start have none.
    origins: std::collections::BTreeMap<(String, u32), (String, Millis)>,
}

/// Deploying over an existing version with other content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "process `{process}` version {version} is already deployed with different content; deploy it as a new version"
)]
pub struct VersionConflict {
    pub process: String,
    pub version: u32,
}

impl Registry {
    /// Adds a definition; `source` is its text, to tell a re-deploy from a conflict.
    pub fn deploy(
        &mut self,
        def: Definition,
        source: &str,
    ) -> Result<std::sync::Arc<Definition>, VersionConflict> {
        let versions = self.processes.entry(def.process.clone()).or_default();
        if let Some((existing, text)) = versions.get(&def.version) {
            if text == source {
                return Ok(existing.clone());
            }
            return Err(VersionConflict {
                process: def.process.clone(),
                version: def.version,
            });
        }
        let version = def.version;
        let mut def = def;
        def.hash = content_hash(source);
        let def = std::sync::Arc::new(def);
        versions.insert(version, (def.clone(), source.to_string()));
        Ok(def)
    }

    /// The newest version of a process.
    pub fn latest(&self, process: &str) -> Option<&std::sync::Arc<Definition>> {
        self.processes
            .get(process)?
            .values()
            .next_back()
            .map(|(d, _)| d)
    }

    /// A specific version of a process.
    pub fn get(&self, process: &str, version: u32) -> Option<&std::sync::Arc<Definition>> {
        self.processes.get(process)?.get(&version).map(|(d, _)| d)
    }

    /// The source text a version was deployed from.
    pub fn source(&self, process: &str, version: u32) -> Option<&str> {
        self.processes
            .get(process)?
            .get(&version)
            .map(|(_, s)| s.as_str())
    }

    /// Records who deployed `version` of `process` at run time, and when.
    pub fn set_origin(&mut self, process: &str, version: u32, by: &str, at: Millis) {
        self.origins
            .insert((process.to_string(), version), (by.to_string(), at));
    }

    /// Who deployed a version at run time and when; `None` for a version
    /// read from a file at start.
    pub fn origin(&self, process: &str, version: u32) -> Option<(&str, Millis)> {
        self.origins
            .get(&(process.to_string(), version))
            .map(|(by, at)| (by.as_str(), *at))
    }

    /// Every deployed version of every process.
    pub fn all(&self) -> impl Iterator<Item = &std::sync::Arc<Definition>> {
        self.processes
            .values()
            .flat_map(|v| v.values().map(|(d, _)| d))
    }

    /// This registry as it stood when `version` was the newest of
    /// `process`: later versions of it left out (a replay starts an
    /// instance on the version it started on).
    pub fn as_of(&self, process: &str, version: u32) -> Registry {
        let mut r = self.clone();
        if let Some(versions) = r.processes.get_mut(process) {
            versions.retain(|v, _| *v <= version);
        }
        r
    }

    /// The newest version of every process.
    pub fn latest_all(&self) -> impl Iterator<Item = &std::sync::Arc<Definition>> {
        self.processes
            .values()
            .filter_map(|v| v.values().next_back().map(|(d, _)| d))
    }
}

impl Definition {
    /// Shortens every duration by `factor`, but not below `floor` (nor above the
    /// original): lets a demo show hours-long timeouts in seconds.
    pub fn scale_time(&mut self, factor: u64, floor: Millis) {
        let f = factor.max(1);
        let scale = |d: &mut Millis| *d = (*d / f).max(floor.min(*d));
        scale(&mut self.buffer.ttl);
        for s in &mut self.steps {
            match &mut s.kind {
                StepKind::Task(t) => {
                    if let Some(d) = &mut t.timeout {
                        scale(d);
                    }
                    if let Some(r) = &mut t.retry {
                        scale(&mut r.backoff);
                        if let Some(m) = &mut r.max_backoff {
                            scale(m);
                        }
                    }
                }
                StepKind::Wait(Wait::For(d)) => scale(d),
                _ => {}
            }
        }
        for e in &mut self.expect {
            scale(&mut e.within);
        }
    }
}
