//! Process definitions as graphs: one walk over a definition gives its
//! nodes (steps, and the start, end and incident points) and edges
//! (transitions, forks, joins, watchdogs), which [`mermaid`] prints for
//! `baton graph` and [`layout`] places for the console's diagrams.
//!
//! Node ids are the step ids for steps; the other nodes have ids that start
//! with `@` (`@start`, `@completed`, `@failed`, `@cancelled`, `@incident`,
//! `@expect0`, `@late0`), which no step id can (step ids are letters,
//! digits, `-` and `_`).

mod heat;
mod layout;
mod mermaid;

pub use heat::{EdgeHeat, Heat, NodeHeat, heat};
pub use layout::{Layout, Placed, Point, Route, layout};
pub use mermaid::mermaid;

use serde::Serialize;

use crate::engine::{Definition, EndStatus, Join, StepIdx, StepKind, Transition, Wait};

/// What a node stands for; it decides the node's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Start,
    Task,
    Manual,
    Call,
    Await,
    Switch,
    Set,
    Wait,
    Parallel,
    /// An `end` step.
    End,
    Completed,
    Failed,
    Cancelled,
    /// Where a step is parked for an operator.
    Incident,
    /// An `expect` watchdog.
    Expect,
    /// The command a late `expect` sends.
    Escalation,
}

/// What an edge stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EdgeKind {
    /// A transition of the flow.
    Flow,
    /// A `parallel` step starting a branch.
    Fork,
    /// A branch ending, back to its `parallel` step.
    Join,
    /// A step arming an `expect` watchdog.
    Watch,
    /// A late watchdog's escalation.
    Late,
}

/// A node of a definition's graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    /// The step it stands for, by index (`None` for the other nodes).
    pub step: Option<StepIdx>,
    /// What the node says: the step id, or the start event, status, ...
    pub label: String,
    /// A second line: what the step does (`command <type>`, `wait 5m`, ...).
    pub detail: String,
}

/// An edge of a definition's graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// The event, condition or timeout that takes it (empty: none).
    pub label: String,
    pub kind: EdgeKind,
}

/// A definition as nodes and edges, in definition order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// The node id of an end status.
pub fn status_node(status: &str) -> Option<&'static str> {
    match status {
        "completed" => Some(COMPLETED),
        "failed" => Some(FAILED),
        "cancelled" => Some(CANCELLED),
        _ => None,
    }
}

pub const START: &str = "@start";
pub const COMPLETED: &str = "@completed";
pub const FAILED: &str = "@failed";
pub const CANCELLED: &str = "@cancelled";
pub const INCIDENT: &str = "@incident";

fn millis(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

impl Graph {
    /// The graph of `def`.
    pub fn of(def: &Definition) -> Graph {
        let mut g = Graph {
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        g.node(START, NodeKind::Start, None, "start", def.start.on.as_str());
        for (i, s) in def.steps.iter().enumerate() {
            let (kind, detail) = match &s.kind {
                StepKind::Task(t) => match (&t.command, &t.call) {
                    (Some(c), _) if t.manual => (NodeKind::Manual, format!("manual {}", c.kind)),
                    (Some(c), _) => (NodeKind::Task, format!("command {}", c.kind)),
                    (None, Some(c)) => (NodeKind::Call, format!("call {}", c.process)),
                    (None, None) => (NodeKind::Await, "await".to_string()),
                },
                StepKind::Switch { .. } => (NodeKind::Switch, "switch".to_string()),
                StepKind::Set(_) => (NodeKind::Set, "set".to_string()),
                StepKind::Wait(Wait::For(ms)) => (NodeKind::Wait, format!("wait {}", millis(*ms))),
                StepKind::Wait(Wait::Until(e)) => {
                    (NodeKind::Wait, format!("wait until {}", e.source()))
                }
                StepKind::Parallel { join, .. } => {
                    let j = match join {
                        Join::All => "all".to_string(),
                        Join::Any => "any".to_string(),
                        Join::N(n) => n.to_string(),
                    };
                    (NodeKind::Parallel, format!("parallel, join {j}"))
                }
                StepKind::End(st) => (NodeKind::End, format!("end ({})", end_name(*st))),
            };
            g.node(&s.id, kind, Some(i), &s.id, &detail);
        }
        match def.entry {
            Some(e) => g.edge(START, &def.steps[e].id, "", EdgeKind::Flow),
            None => g.edge(START, COMPLETED, "", EdgeKind::Flow),
        }
        for (i, s) in def.steps.iter().enumerate() {
            let mut out: Vec<(String, Transition)> = Vec::new();
            match &s.kind {
                StepKind::Task(t) => {
                    if t.outcomes.is_empty() && t.call.is_none() {
                        out.push((String::new(), Transition::Next));
                    }
                    for o in &t.outcomes {
                        let label = match &o.when {
                            Some(w) => format!("{} if {}", o.on.as_str(), w.source()),
                            None => o.on.as_str().to_string(),
                        };
                        out.push((label, o.then));
                    }
                    if let Some(ms) = t.timeout {
                        out.push((format!("timeout {}", millis(ms)), t.on_timeout));
                    }
                    if t.retry.is_some() {
                        out.push(("retries exhausted".to_string(), t.on_exhausted));
                    }
                }
                StepKind::Switch { cases, default } => {
                    for c in cases {
                        out.push((c.when.source().to_string(), c.then));
                    }
                    out.push(("otherwise".to_string(), *default));
                }
                StepKind::Set(_) | StepKind::Wait(_) => out.push((String::new(), Transition::Next)),
                StepKind::Parallel { branches, .. } => {
                    out.push(("joined".to_string(), Transition::Next));
                    for &b in branches {
                        g.edge(&s.id, &def.steps[b].id, "fork", EdgeKind::Fork);
                    }
                }
                StepKind::End(st) => {
                    let to = match st {
                        EndStatus::Completed => COMPLETED,
                        EndStatus::Failed => FAILED,
                        EndStatus::Cancelled => CANCELLED,
                    };
                    g.edge(&s.id, to, "", EdgeKind::Flow);
                }
            }
            for (label, t) in out {
                if let Some(to) = target(def, i, t) {
                    g.edge(&s.id, &to, &label, EdgeKind::Flow);
                }
            }
            if let Some((par, _)) = s.branch
                && s.next.is_none()
                && !matches!(s.kind, StepKind::End(_))
            {
                g.edge(&s.id, &def.steps[par].id, "join", EdgeKind::Join);
            }
        }
        for (n, e) in def.expect.iter().enumerate() {
            let w = format!("@expect{n}");
            let label = format!("expect {}", e.on.as_str());
            g.node(
                &w,
                NodeKind::Expect,
                None,
                &label,
                &format!("within {}", millis(e.within)),
            );
            if let Some(a) = e.after {
                g.edge(&def.steps[a].id, &w, "", EdgeKind::Watch);
            }
            if let Some(c) = &e.command {
                let late = format!("@late{n}");
                g.node(
                    &late,
                    NodeKind::Escalation,
                    None,
                    &c.kind,
                    &format!("command to {}", c.topic),
                );
                g.edge(&w, &late, "late", EdgeKind::Late);
            }
        }
        // The terminal nodes that something reaches, in a fixed order.
        for (id, kind, label) in [
            (COMPLETED, NodeKind::Completed, "completed"),
            (FAILED, NodeKind::Failed, "failed: compensate"),
            (CANCELLED, NodeKind::Cancelled, "cancelled"),
            (INCIDENT, NodeKind::Incident, "incident"),
        ] {
            if g.edges.iter().any(|e| e.to == id) {
                g.node(id, kind, None, label, "");
            }
        }
        g
    }

    fn node(&mut self, id: &str, kind: NodeKind, step: Option<StepIdx>, label: &str, detail: &str) {
        self.nodes.push(Node {
            id: id.to_string(),
            kind,
            step,
            label: label.to_string(),
            detail: detail.to_string(),
        });
    }

    fn edge(&mut self, from: &str, to: &str, label: &str, kind: EdgeKind) {
        self.edges.push(Edge {
            from: from.to_string(),
            to: to.to_string(),
            label: label.to_string(),
            kind,
        });
    }
}

fn end_name(s: EndStatus) -> &'static str {
    match s {
        EndStatus::Completed => "completed",
        EndStatus::Failed => "failed",
        EndStatus::Cancelled => "cancelled",
    }
}

/// The node a transition of step `from` leads to (`None`: the end of a
/// branch, which joins its `parallel` step).
fn target(def: &Definition, from: StepIdx, t: Transition) -> Option<String> {
    match t {
        Transition::Next if def.steps[from].then != Transition::Next => {
            target(def, from, def.steps[from].then)
        }
        Transition::Next => match def.steps[from].next {
            Some(n) => Some(def.steps[n].id.clone()),
            None if def.steps[from].branch.is_some() => None,
            None => Some(COMPLETED.to_string()),
        },
        Transition::Goto(g) => Some(def.steps[g].id.clone()),
        Transition::Complete => Some(COMPLETED.to_string()),
        Transition::Fail => Some(FAILED.to_string()),
        Transition::Cancel => Some(CANCELLED.to_string()),
        Transition::Retry => Some(def.steps[from].id.clone()),
        Transition::Incident => Some(INCIDENT.to_string()),
    }
}
