//! Mermaid flowcharts of process definitions (`baton graph`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{EdgeKind, Graph, NodeKind};
use crate::engine::Definition;

/// Renders `def` as a Mermaid `flowchart TD`.
pub fn mermaid(def: &Definition) -> String {
    let g = Graph::of(def);
    let names: BTreeMap<&str, String> = g
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), name(n.id.as_str(), n.step)))
        .collect();
    let name_of = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    let mut out = String::new();
    let _ = writeln!(out, "flowchart TD");
    let _ = writeln!(out, "  %% {} v{}", def.process, def.version);
    for n in &g.nodes {
        let (label, detail) = (esc(&n.label), esc(&n.detail));
        let shape = match n.kind {
            NodeKind::Start => format!("((\"{detail}\"))"),
            NodeKind::Task | NodeKind::Manual | NodeKind::Call | NodeKind::Await => {
                format!("[\"{label}<br/>{detail}\"]")
            }
            NodeKind::Switch => format!("{{\"{label}\"}}"),
            NodeKind::Set => format!("[/\"{label} (set)\"/]"),
            NodeKind::Wait => format!("([\"{label}<br/>{detail}\"])"),
            NodeKind::Parallel => format!("[[\"{label}<br/>{detail}\"]]"),
            NodeKind::End => format!("((\"{label}<br/>{detail}\"))"),
            NodeKind::Completed | NodeKind::Failed | NodeKind::Cancelled => {
                format!("(({label}))")
            }
            NodeKind::Incident => "[/incident/]".to_string(),
            NodeKind::Expect => format!(">\"{label} {detail}\"]"),
            NodeKind::Escalation => format!("[\"{label}\"]"),
        };
        let _ = writeln!(out, "  {}{shape}", name_of(&n.id));
    }
    for e in &g.edges {
        let (from, to) = (name_of(&e.from), name_of(&e.to));
        let line = match (e.kind, e.label.is_empty()) {
            (EdgeKind::Flow, true) => format!("{from} --> {to}"),
            (EdgeKind::Flow, false) => format!("{from} -->|\"{}\"| {to}", esc(&e.label)),
            (EdgeKind::Watch, _) => format!("{from} -.-> {to}"),
            (_, _) => format!("{from} -.->|{}| {to}", esc(&e.label)),
        };
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The Mermaid name of a node: `s<index>_<id>` for a step, the id without
/// its `@` for the others (`done` for the completed end).
fn name(id: &str, step: Option<usize>) -> String {
    match step {
        Some(i) => {
            let clean: String = id
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            format!("s{i}_{clean}")
        }
        None if id == super::COMPLETED => "done".to_string(),
        None => id.trim_start_matches('@').replace("late", "esc"),
    }
}

fn esc(s: &str) -> String {
    s.replace('"', "#quot;")
}
