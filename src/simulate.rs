//! Runs process definitions in memory on a virtual clock: the test harness
//! behind `baton simulate`, in the spirit of Camunda's and Temporal's test
//! environments. No Kafka, no wall clock: timers fire when the scenario
//! advances time.
//!
//! A scenario is JSON Lines; each line is one of
//! - `{"clock": "2026-01-05T09:00:00Z"}`: set the clock (only forward);
//! - `{"event": {"type": "...", "id": "...", "data": {...}}}`: deliver an event now
//!   (`id` defaults to `e<line>`, `source` to `scenario`);
//! - `{"advance": "30s"}`: move the clock, firing due timers in order;
//! - `{"operator": {"process": "...", "key": "...", "action": "retry|skip|cancel|set", ...}}`;
//! - `{"expect": {...}}`: check what happened since the previous `expect`
//!   (`commands`: command types in order; `key`/`process` with `status`,
//!   `at` (current steps), `vars` (subset), `incidents` (open count);
//!   `rejected`: number of events rejected or dead-lettered; `duplicates`:
//!   number of events ignored because the instance had seen their id).

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value as Json;

use crate::engine::{
    self, Action, Event, Instance, Millis, Purpose, Registry, Rejection, Status, format_rfc3339,
    parse_rfc3339,
};
use crate::shard::{self, Applied, Shard};
use crate::wire::{ShardInputKind as Kind, ShardRecord};

/// Default start of the virtual clock: 2026-01-05T09:00:00Z.
pub const DEFAULT_CLOCK: Millis = 1_767_603_600_000;

/// A problem with a scenario line, or an expectation that did not hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Something the simulation reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub at: Millis,
    pub instance: String,
    pub what: String,
}

/// The in-memory world: definitions, one shard (the same code `baton run`
/// runs on every partition) and a clock.
pub struct Simulation {
    registry: Registry,
    shard: Shard,
    pub clock: Millis,
    pub log: Vec<Record>,
    /// Commands emitted, in order.
    pub commands: Vec<engine::Command>,
    pub rejected: usize,
    /// Events ignored as repeats (an id the instance had seen).
    pub duplicates: usize,
    seq: u64,
}

impl Simulation {
    pub fn new(registry: Registry) -> Simulation {
        Simulation {
            registry,
            // Ended instances stay, so a scenario can check them.
            shard: Shard::new(None),
            clock: DEFAULT_CLOCK,
            log: Vec::new(),
            commands: Vec::new(),
            rejected: 0,
            duplicates: 0,
            seq: 0,
        }
    }

    fn note(&mut self, instance: &str, what: String) {
        self.log.push(Record {
            at: self.clock,
            instance: instance.to_string(),
            what,
        });
    }

    /// An instance, by process and key.
    pub fn instance(&self, process: &str, key: &str) -> Option<Cow<'_, Instance>> {
        self.shard.instance(&format!("{process}/{key}"))
    }

    /// Every instance, ordered by process and key.
    pub fn instances(&self) -> Vec<Cow<'_, Instance>> {
        let mut all: Vec<Cow<'_, Instance>> = self.shard.instances().collect();
        all.sort_by(|a, b| (&a.process, &a.key).cmp(&(&b.process, &b.key)));
        all
    }

    /// Delivers an event to every process it concerns, routed as `baton
    /// run` routes it.
    pub fn deliver(&mut self, event: Event) {
        let routes = shard::route(&self.registry, &event);
        if let Some((_, why)) = routes.dead(&event) {
            self.rejected += 1;
            self.note(
                "-",
                format!("dead letter {} ({}): {why}", event.kind, event.id),
            );
            return;
        }
        for (process, key) in routes.to {
            self.note(
                &format!("{process}/{key}"),
                format!("event {} ({})", event.kind, event.id),
            );
            self.feed(ShardRecord {
                process,
                key,
                input: Kind::Event {
                    event: event.clone(),
                    origin: None,
                },
            });
        }
    }

    /// Moves the clock to `to`, firing every timer due on the way.
    pub fn advance_to(&mut self, to: Millis) {
        while let Some(record) = self.shard.next_due(to) {
            if let Kind::Timer { timer, due } = &record.input {
                self.clock = self.clock.max(*due);
                let name = format!("{}/{}", record.process, record.key);
                self.note(&name, format!("timer {timer} fired"));
            }
            self.feed(record);
        }
        self.clock = self.clock.max(to);
    }

    /// Applies an operator action to an instance.
    pub fn operate(&mut self, process: &str, key: &str, action: Action) -> Result<(), String> {
        if self.instance(process, key).is_none() {
            return Err(format!("no instance {process}/{key}"));
        }
        self.note(&format!("{process}/{key}"), format!("operator {action:?}"));
        self.feed(ShardRecord {
            process: process.to_string(),
            key: key.to_string(),
            input: Kind::Operator(crate::wire::Operator {
                action,
                by: "scenario".to_string(),
                reason: String::new(),
                request: String::new(),
            }),
        });
        Ok(())
    }

    /// Applies one input to the shard, then, in order, the inputs it
    /// forwards to other instances (which `baton run` writes to their shards).
    fn feed(&mut self, record: ShardRecord) {
        let name = format!("{}/{}", record.process, record.key);
        match self.shard.apply(&self.registry, record, self.clock, None) {
            Ok(applied) => self.carry_out(applied),
            Err(e) => self.note(&name, format!("  ! {e}")),
        }
    }

    fn carry_out(&mut self, applied: Applied) {
        let name = applied.id;
        for action in applied.actions {
            match action {
                // The audit's before/after positions already show the steps.
                shard::Action::Entered(_) => {}
                shard::Action::Command(c) => {
                    let label = match c.purpose {
                        Purpose::Task => "command",
                        Purpose::Manual => "manual task",
                        Purpose::Compensation => "compensation",
                        Purpose::Escalation => "escalation",
                    };
                    self.note(
                        &name,
                        format!(
                            "  → {label} {} {} id={} data={}",
                            c.topic, c.kind, c.id, c.data
                        ),
                    );
                    self.commands.push(c);
                }
                shard::Action::Scheduled(t) => {
                    self.note(
                        &name,
                        format!("  ⏲ timer {} due {}", t.id, format_rfc3339(t.due)),
                    );
                }
                shard::Action::Audit(a) => {
                    if a.before != a.after {
                        self.note(
                            &name,
                            format!("  state {} at [{}]", a.status.as_str(), a.after.join(", ")),
                        );
                    }
                }
                shard::Action::Variables(names) => {
                    if let Some(inst) = self.shard.instance(&name) {
                        let shown: Vec<String> = names
                            .iter()
                            .map(|n| format!("{n}={}", inst.vars.get(n).unwrap_or(&Json::Null)))
                            .collect();
                        self.note(&name, format!("  vars {}", shown.join(" ")));
                    }
                }
                shard::Action::Incident { id, step, reason } => {
                    self.note(&name, format!("  ! incident {id} at {step}: {reason}"));
                }
                shard::Action::Resolved { id, resolution, .. } => {
                    self.note(&name, format!("  ✓ incident {id} {resolution}"));
                }
                shard::Action::Forward(record) => {
                    if let Kind::Call { .. } = record.input {
                        self.note(&name, format!("  → call {}/{}", record.process, record.key));
                    }
                    self.feed(record);
                }
                shard::Action::Ended(status) => {
                    self.note(&name, format!("  ■ {}", status.as_str()));
                }
                shard::Action::Rejected { event, reason } => {
                    let event_id = &event.id;
                    // As in `baton run`: a repeated event is ignored, not a dead letter.
                    if reason == Rejection::Duplicate {
                        self.duplicates += 1;
                        self.note(&name, format!("  = duplicate {event_id} ignored"));
                        continue;
                    }
                    self.rejected += 1;
                    self.note(&name, format!("  ✗ rejected {event_id}: {reason}"));
                }
            }
        }
    }

    /// Runs a scenario; the first failed expectation or bad line stops it.
    pub fn run(&mut self, file: &str, scenario: &str) -> Result<(), ScenarioError> {
        let mut since = 0usize;
        let mut rejected_since = (0usize, 0usize);
        for (n, line) in scenario.lines().enumerate() {
            let line_no = n + 1;
            let fail = |message: String| ScenarioError {
                file: file.to_string(),
                line: line_no,
                message,
            };
            let text = line.trim();
            if text.is_empty() || text.starts_with("//") || text.starts_with('#') {
                continue;
            }
            let v: Json = serde_json::from_str(text).map_err(|e| fail(format!("not JSON: {e}")))?;
            let obj = v
                .as_object()
                .ok_or_else(|| fail("expected a JSON object".into()))?;
            let (verb, arg) = match obj.iter().next() {
                Some(kv) if obj.len() == 1 => kv,
                _ => {
                    return Err(fail(
                        "each line has exactly one of clock, event, advance, operator, expect"
                            .into(),
                    ));
                }
            };
            match verb.as_str() {
                "clock" => {
                    let t = arg
                        .as_str()
                        .and_then(parse_rfc3339)
                        .ok_or_else(|| fail("clock must be an RFC 3339 time".into()))?;
                    self.advance_to(t);
                }
                "advance" => {
                    let d = arg
                        .as_str()
                        .and_then(|s| humantime::parse_duration(s).ok())
                        .ok_or_else(|| fail("advance must be a duration such as \"30s\"".into()))?;
                    self.advance_to(self.clock.saturating_add(d.as_millis() as u64));
                }
                "event" => {
                    let event = self.event(arg, line_no).map_err(fail)?;
                    self.deliver(event);
                }
                "operator" => {
                    let (process, key, action) = operator(arg).map_err(fail)?;
                    self.operate(&process, &key, action).map_err(fail)?;
                }
                "expect" => {
                    self.check(arg, since, rejected_since).map_err(fail)?;
                    since = self.commands.len();
                    rejected_since = (self.rejected, self.duplicates);
                }
                other => return Err(fail(format!("unknown verb `{other}`"))),
            }
        }
        Ok(())
    }

    fn event(&mut self, v: &Json, line: usize) -> Result<Event, String> {
        let o = v.as_object().ok_or("event must be an object")?;
        for k in o.keys() {
            if !["type", "id", "source", "data", "time"].contains(&k.as_str()) {
                return Err(format!("unknown event field `{k}`"));
            }
        }
        let kind = o
            .get("type")
            .and_then(Json::as_str)
            .ok_or("event needs a string `type`")?;
        self.seq += 1;
        let time = match o.get("time") {
            Some(t) => t
                .as_str()
                .and_then(parse_rfc3339)
                .ok_or("event time must be RFC 3339")?,
            None => self.clock,
        };
        Ok(Event {
            id: o
                .get("id")
                .and_then(Json::as_str)
                .map_or_else(|| format!("e{line}"), str::to_string),
            kind: kind.to_string(),
            source: o
                .get("source")
                .and_then(Json::as_str)
                .unwrap_or("scenario")
                .to_string(),
            time,
            data: o.get("data").cloned().unwrap_or(Json::Null),
        })
    }

    /// `rejected_since`: the rejected and duplicate counts at the previous `expect`.
    fn check(&self, v: &Json, since: usize, rejected_since: (usize, usize)) -> Result<(), String> {
        let o = v.as_object().ok_or("expect must be an object")?;
        let mut problems = Vec::new();
        for k in o.keys() {
            if ![
                "commands",
                "process",
                "key",
                "status",
                "at",
                "vars",
                "incidents",
                "rejected",
                "duplicates",
            ]
            .contains(&k.as_str())
            {
                return Err(format!("unknown expect field `{k}`"));
            }
        }
        if let Some(want) = o.get("commands") {
            let got: Vec<&str> = self.commands[since..]
                .iter()
                .map(|c| c.kind.as_str())
                .collect();
            let want: Vec<&str> = want
                .as_array()
                .ok_or("commands must be a list of types")?
                .iter()
                .filter_map(Json::as_str)
                .collect();
            if got != want {
                problems.push(format!("commands: expected {want:?}, got {got:?}"));
            }
        }
        if let Some(want) = o.get("rejected").and_then(Json::as_u64) {
            let got = self.rejected - rejected_since.0;
            if got as u64 != want {
                problems.push(format!("rejected: expected {want}, got {got}"));
            }
        }
        if let Some(want) = o.get("duplicates").and_then(Json::as_u64) {
            let got = self.duplicates - rejected_since.1;
            if got as u64 != want {
                problems.push(format!("duplicates: expected {want}, got {got}"));
            }
        }
        if let Some(key) = o.get("key").and_then(Json::as_str) {
            let process = match o.get("process").and_then(Json::as_str) {
                Some(p) => p.to_string(),
                None => {
                    let matching: Vec<Cow<'_, Instance>> = self
                        .instances()
                        .into_iter()
                        .filter(|i| i.key == key)
                        .collect();
                    match matching.as_slice() {
                        [one] => one.process.clone(),
                        [] => return Err(format!("no instance with key {key}")),
                        _ => {
                            return Err(format!(
                                "several processes have key {key}; say which with `process`"
                            ));
                        }
                    }
                }
            };
            let inst = self
                .instance(&process, key)
                .ok_or_else(|| format!("no instance {process}/{key}"))?;
            let def = self.registry.get(&inst.process, inst.version);
            if let Some(want) = o.get("status").and_then(Json::as_str)
                && inst.status.as_str() != want
            {
                problems.push(format!(
                    "status: expected {want}, got {}",
                    inst.status.as_str()
                ));
            }
            if let (Some(want), Some(def)) = (o.get("at"), def) {
                let mut got: Vec<String> = inst
                    .tokens
                    .iter()
                    .map(|t| def.steps[t.step].id.clone())
                    .collect();
                let mut want: Vec<String> = want
                    .as_array()
                    .ok_or("at must be a list of step ids")?
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect();
                got.sort();
                want.sort();
                if got != want {
                    problems.push(format!("at: expected {want:?}, got {got:?}"));
                }
            }
            if let Some(want) = o.get("vars") {
                let want = want.as_object().ok_or("vars must be an object")?;
                for (k, v) in want {
                    if inst.vars.get(k) != Some(v) {
                        problems.push(format!(
                            "vars.{k}: expected {v}, got {}",
                            inst.vars.get(k).unwrap_or(&Json::Null)
                        ));
                    }
                }
            }
            if let Some(want) = o.get("incidents").and_then(Json::as_u64)
                && inst.incidents.len() as u64 != want
            {
                let reasons: Vec<&str> = inst.incidents.iter().map(|i| i.reason.as_str()).collect();
                problems.push(format!(
                    "incidents: expected {want}, got {} {reasons:?}",
                    inst.incidents.len()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("expectation failed: {}", problems.join("; ")))
        }
    }

    /// The log as text, one line per record.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.log {
            let _ = writeln!(
                out,
                "{} {:<28} {}",
                format_rfc3339(r.at),
                r.instance,
                r.what
            );
        }
        out
    }

    /// Final state of every instance, as text.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for inst in self.instances() {
            let (p, k) = (&inst.process, &inst.key);
            let def = self.registry.get(&inst.process, inst.version);
            let at: Vec<String> = inst
                .tokens
                .iter()
                .filter_map(|t| def.map(|d| d.steps[t.step].id.clone()))
                .collect();
            let vars = serde_json::to_string(&inst.vars).unwrap_or_default();
            let _ = writeln!(
                out,
                "{p}/{k} v{}: {}{} incidents={} vars={vars}",
                inst.version,
                inst.status.as_str(),
                if at.is_empty() {
                    String::new()
                } else {
                    format!(" at [{}]", at.join(", "))
                },
                inst.incidents.len()
            );
        }
        out
    }

    /// How many instances are in this status.
    pub fn count(&self, status: Status) -> usize {
        self.shard
            .summaries()
            .filter(|i| i.status == status)
            .count()
    }
}

fn operator(v: &Json) -> Result<(String, String, Action), String> {
    let o = v.as_object().ok_or("operator must be an object")?;
    let s = |k: &str| o.get(k).and_then(Json::as_str).map(str::to_string);
    let process = s("process").ok_or("operator needs `process`")?;
    let key = s("key").ok_or("operator needs `key`")?;
    let incident = o.get("incident").and_then(Json::as_u64).map(|n| n as u32);
    let action = match s("action").as_deref() {
        Some("retry") => Action::Retry { incident },
        Some("skip") => Action::Skip { incident },
        Some("cancel") => Action::Cancel {
            compensate: o.get("compensate").and_then(Json::as_bool).unwrap_or(false),
            reason: s("reason").unwrap_or_else(|| "operator".into()),
        },
        Some("set") => Action::SetVariable {
            name: s("name").ok_or("set needs `name`")?,
            value: o.get("value").cloned().ok_or("set needs `value`")?,
        },
        other => {
            return Err(format!(
                "unknown operator action {other:?}; use retry, skip, cancel or set"
            ));
        }
    };
    Ok((process, key, action))
}
