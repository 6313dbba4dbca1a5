//! Mermaid flowcharts of process definitions (`baton graph`).

use std::fmt::Write as _;

use crate::engine::{Definition, EndStatus, Join, StepIdx, StepKind, Transition, Wait};

/// Renders `def` as a Mermaid `flowchart TD`.
pub fn mermaid(def: &Definition) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "flowchart TD");
    let _ = writeln!(out, "  %% {} v{}", def.process, def.version);
    let _ = writeln!(out, "  start((\"{}\"))", esc(def.start.on.as_str()));
    let _ = writeln!(out, "  done((completed))");
    let _ = writeln!(out, "  failed((failed: compensate))");
    let _ = writeln!(out, "  cancelled((cancelled))");
    match def.entry {
        Some(e) => {
            let _ = writeln!(out, "  start --> {}", node(def, e));
        }
        None => {
            let _ = writeln!(out, "  start --> done");
        }
    }
    for (i, s) in def.steps.iter().enumerate() {
        let id = node(def, i);
        let shape = match &s.kind {
            StepKind::Task(t) => {
                let what = if let Some(c) = &t.command {
                    format!(
                        "{}<br/>{}",
                        if t.manual { "manual" } else { "command" },
                        esc(&c.kind)
                    )
                } else if let Some(c) = &t.call {
                    format!("call {}", esc(&c.process))
                } else {
                    "await".to_string()
                };
                format!("[\"{}<br/>{what}\"]", esc(&s.id))
            }
            StepKind::Switch { .. } => format!("{{\"{}\"}}", esc(&s.id)),
            StepKind::Set(_) => format!("[/\"{} (set)\"/]", esc(&s.id)),
            StepKind::Wait(w) => {
                let what = match w {
                    Wait::For(ms) => {
                        humantime::format_duration(std::time::Duration::from_millis(*ms))
                            .to_string()
                    }
                    Wait::Until(e) => format!("until {}", esc(e.source())),
                };
                format!("([\"{}<br/>wait {what}\"])", esc(&s.id))
            }
            StepKind::Parallel { join, .. } => {
                let j = match join {
                    Join::All => "all".to_string(),
                    Join::Any => "any".to_string(),
                    Join::N(n) => n.to_string(),
                };
                format!("[[\"{}<br/>parallel, join {j}\"]]", esc(&s.id))
            }
            StepKind::End(st) => format!("((\"{} ({})\"))", esc(&s.id), end_name(*st)),
        };
        let _ = writeln!(out, "  {id}{shape}");
    }
    for (i, s) in def.steps.iter().enumerate() {
        let from = node(def, i);
        let mut edges: Vec<(String, Transition)> = Vec::new();
        let mut edge = |label: String, t: Transition| edges.push((label, t));
        match &s.kind {
            StepKind::Task(t) => {
                if t.outcomes.is_empty() && t.call.is_none() {
                    edge(String::new(), Transition::Next);
                }
                for o in &t.outcomes {
                    let label = match &o.when {
                        Some(w) => format!("{} if {}", o.on.as_str(), w.source()),
                        None => o.on.as_str().to_string(),
                    };
                    edge(label, o.then);
                }
                if let Some(ms) = t.timeout {
                    let d = humantime::format_duration(std::time::Duration::from_millis(ms));
                    edge(format!("timeout {d}"), t.on_timeout);
                }
                if t.retry.is_some() {
                    edge("retries exhausted".to_string(), t.on_exhausted);
                }
            }
            StepKind::Switch { cases, default } => {
                for c in cases {
                    edge(c.when.source().to_string(), c.then);
                }
                edge("otherwise".to_string(), *default);
            }
            StepKind::Set(_) | StepKind::Wait(_) => edge(String::new(), Transition::Next),
            StepKind::Parallel { branches, .. } => {
                edge("joined".to_string(), Transition::Next);
                for &b in branches {
                    let _ = writeln!(out, "  {from} -.->|fork| {}", node(def, b));
                }
            }
            StepKind::End(_) => {}
        }
        for (label, t) in edges {
            if let Some(to) = target(def, i, t) {
                if label.is_empty() {
                    let _ = writeln!(out, "  {from} --> {to}");
                } else {
                    let _ = writeln!(out, "  {from} -->|\"{}\"| {to}", esc(&label));
                }
            }
        }
        if let Some((par, _)) = s.branch
            && s.next.is_none()
            && !matches!(s.kind, StepKind::End(_))
        {
            let _ = writeln!(out, "  {from} -.->|join| {}", node(def, par));
        }
    }
    for (n, e) in def.expect.iter().enumerate() {
        let w = format!("expect{n}");
        let d = humantime::format_duration(std::time::Duration::from_millis(e.within));
        let _ = writeln!(out, "  {w}>\"expect {} within {d}\"]", esc(e.on.as_str()));
        if let Some(a) = e.after {
            let _ = writeln!(out, "  {} -.-> {w}", node(def, a));
        }
        if let Some(c) = &e.command {
            let _ = writeln!(out, "  {w} -.->|late| esc{n}[\"{}\"]", esc(&c.kind));
        }
    }
    out
}

fn end_name(s: EndStatus) -> &'static str {
    match s {
        EndStatus::Completed => "completed",
        EndStatus::Failed => "failed",
        EndStatus::Cancelled => "cancelled",
    }
}

fn node(def: &Definition, i: StepIdx) -> String {
    let clean: String = def.steps[i]
        .id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("s{i}_{clean}")
}

fn target(def: &Definition, from: StepIdx, t: Transition) -> Option<String> {
    match t {
        Transition::Next if def.steps[from].then != Transition::Next => {
            target(def, from, def.steps[from].then)
        }
        Transition::Next => match def.steps[from].next {
            Some(n) => Some(node(def, n)),
            None if def.steps[from].branch.is_some() => None,
            None => Some("done".to_string()),
        },
        Transition::Goto(g) => Some(node(def, g)),
        Transition::Complete => Some("done".to_string()),
        Transition::Fail => Some("failed".to_string()),
        Transition::Cancel => Some("cancelled".to_string()),
        Transition::Retry => Some(node(def, from)),
        Transition::Incident => Some("incident[/incident/]".to_string()),
    }
}

fn esc(s: &str) -> String {
    s.replace('"', "#quot;")
}
