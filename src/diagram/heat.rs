//! The heat map of a definition version: from the audit trail of a time
//! window, how many instances passed each node of its graph and each edge,
//! and how long they stayed in each step (p50, p95). It reads the trail's
//! `before`, `entered` and `after` steps and the status an input ended an
//! instance with, so it needs no other record.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use utoipa::ToSchema;

use super::{EdgeKind, Graph, START, status_node};
use crate::audit::Entry;
use crate::engine::{Definition, Millis};

/// One node of the heat map.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NodeHeat {
    /// The node's id in the definition's graph.
    pub node: String,
    /// Instances that entered it in the window.
    pub entered: u64,
    /// Time spent in the step, over the stays that began and ended in the
    /// window (null: none did; a step passed within one input stays 0 ms).
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
}

/// One edge of the heat map.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EdgeHeat {
    pub from: String,
    pub to: String,
    /// Times it was taken in the window.
    pub count: u64,
}

/// Where the instances of a definition version went in a window.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Heat {
    /// Instances with an entry in the window.
    pub instances: u64,
    pub nodes: Vec<NodeHeat>,
    pub edges: Vec<EdgeHeat>,
}

/// The heat map of `def` from the audit `trail` (every instance's entries,
/// in order), counting inputs applied from `from` to `to` (epoch ms,
/// inclusive). Entries of other processes or versions are left out.
pub fn heat<'a>(
    def: &Definition,
    trail: impl IntoIterator<Item = &'a [Entry]>,
    from: Millis,
    to: Millis,
) -> Heat {
    let graph = Graph::of(def);
    let edges: BTreeSet<(&str, &str)> = graph
        .edges
        .iter()
        .filter(|e| matches!(e.kind, EdgeKind::Flow | EdgeKind::Fork))
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    let nodes: BTreeSet<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
    let mut entered: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut stays: BTreeMap<&str, Vec<Millis>> = BTreeMap::new();
    let mut taken: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut instances = 0u64;
    for list in trail {
        let mut counted = false;
        // When each step the instance is at was entered.
        let mut since: HashMap<&str, Millis> = HashMap::new();
        // The last nodes of a flow that is done while a watchdog still
        // waits: where the instance's end is reached from.
        let mut last: Vec<&str> = Vec::new();
        for (n, e) in list.iter().enumerate() {
            if e.process != def.process || e.version != Some(def.version) {
                continue;
            }
            let inside = (from..=to).contains(&e.time);
            if inside && !counted {
                instances += 1;
                counted = true;
            }
            // The path of this input: where it left from, then every step
            // it entered; each step is reached from the latest node on the
            // path that has an edge to it.
            let mut path: Vec<&str> = e
                .before
                .iter()
                .map(String::as_str)
                .filter(|s| !e.after.iter().any(|a| a == s))
                .collect();
            if path.is_empty() && e.after.is_empty() {
                path.clone_from(&last);
            }
            // The input that first moved the instance started it (an
            // instance can wait for its start event with others buffered).
            let moved = |p: &Entry| !p.after.is_empty() || !p.effects.entered.is_empty();
            if e.before.is_empty() && moved(e) && !list[..n].iter().any(moved) {
                path.push(START);
                if inside {
                    entered.entry(START).or_default().insert(&e.instance);
                }
            }
            let mut reached: Vec<&str> = e.effects.entered.iter().map(String::as_str).collect();
            if let Some(end) = e.effects.ended.and_then(|s| status_node(s.as_str())) {
                reached.push(end);
            }
            for step in reached {
                if !nodes.contains(step) {
                    continue;
                }
                let source = path.iter().rev().find(|p| edges.contains(&(**p, step)));
                if inside {
                    if let Some(source) = source {
                        *taken.entry((source, step)).or_default() += 1;
                    }
                    entered.entry(step).or_default().insert(&e.instance);
                }
                // A step passed through within the input stays no time.
                if !e.after.iter().any(|a| a == step)
                    && step.starts_with(|c: char| c != '@')
                    && inside
                {
                    stays.entry(step).or_default().push(0);
                }
                path.push(step);
            }
            if e.after.is_empty() && !path.is_empty() {
                last.clone_from(&path);
            }
            for left in e.before.iter().filter(|s| !e.after.contains(s)) {
                if let Some(at) = since.remove(left.as_str())
                    && inside
                {
                    stays
                        .entry(left)
                        .or_default()
                        .push(e.time.saturating_sub(at));
                }
            }
            for now in &e.after {
                since.entry(now).or_insert(e.time);
            }
        }
    }
    let percentile = |sorted: &[Millis], p: f64| -> Option<u64> {
        if sorted.is_empty() {
            return None;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    };
    Heat {
        instances,
        nodes: graph
            .nodes
            .iter()
            .filter_map(|n| {
                let count = entered.get(n.id.as_str()).map_or(0, |s| s.len() as u64);
                let mut times = stays.remove(n.id.as_str()).unwrap_or_default();
                times.sort_unstable();
                (count > 0 || !times.is_empty()).then(|| NodeHeat {
                    node: n.id.clone(),
                    entered: count,
                    p50_ms: percentile(&times, 0.50),
                    p95_ms: percentile(&times, 0.95),
                })
            })
            .collect(),
        edges: taken
            .into_iter()
            .map(|((from, to), count)| EdgeHeat {
                from: from.to_string(),
                to: to.to_string(),
                count,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::scenario;

    #[test]
    fn the_scenario_shows_where_its_four_orders_went_and_how_long_they_stayed() {
        let reg = crate::shard::tests::registry();
        let def = reg.get("order-to-cash", 1).expect("deployed").clone();
        let trail = scenario().trail();
        let h = heat(&def, trail.values().map(Vec::as_slice), 0, Millis::MAX);
        let node = |id: &str| h.nodes.iter().find(|n| n.node == id).cloned();
        let edge = |a: &str, b: &str| {
            h.edges
                .iter()
                .find(|e| e.from == a && e.to == b)
                .map_or(0, |e| e.count)
        };
        assert_eq!(h.instances, 4, "{h:?}");
        assert_eq!(node(START).map(|n| n.entered), Some(4));
        assert_eq!(edge(START, "reserve"), 4, "{h:?}");
        assert_eq!(node("reserve").map(|n| n.entered), Some(4));
        // Every reservation is answered at last; the switch is passed
        // within the input that answers it.
        assert_eq!(edge("reserve", "approval"), 4, "{h:?}");
        assert_eq!(edge("approval", "charge"), 4, "{h:?}");
        assert_eq!(node("approval").and_then(|n| n.p95_ms), Some(0));
        // o-2's decline compensates: the failed end. o-1 and o-3 ship; o-1
        // is delivered and completes, o-3's delivery is still expected.
        assert_eq!(edge("charge", super::super::FAILED), 1, "{h:?}");
        assert_eq!(edge("charge", "ship"), 2, "{h:?}");
        assert_eq!(
            node(super::super::COMPLETED).map(|n| n.entered),
            Some(1),
            "{h:?}"
        );
        // o-1 reserved 100 ms after it was placed; o-3 waited for retries
        // and an operator: the slowest stay is its.
        let reserve = node("reserve").expect("reserve");
        let (p50, p95) = (reserve.p50_ms.expect("p50"), reserve.p95_ms.expect("p95"));
        assert!(p50 <= p95, "{reserve:?}");
        assert!(p95 > 60_000, "o-3's retries took minutes: {reserve:?}");
        // Every edge counted is an edge of the graph.
        let graph = Graph::of(&def);
        for e in &h.edges {
            assert!(
                graph.edges.iter().any(|g| g.from == e.from && g.to == e.to),
                "{e:?} is in the graph"
            );
        }
    }

    #[test]
    fn a_window_counts_only_the_inputs_inside_it() {
        let reg = crate::shard::tests::registry();
        let def = reg.get("order-to-cash", 1).expect("deployed").clone();
        let trail = scenario().trail();
        let all = heat(&def, trail.values().map(Vec::as_slice), 0, Millis::MAX);
        let none = heat(&def, trail.values().map(Vec::as_slice), 0, 1);
        assert_eq!(none.instances, 0);
        assert!(none.edges.is_empty() && none.nodes.is_empty(), "{none:?}");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/order-to-cash.yaml");
        let text = std::fs::read_to_string(path).expect("example");
        let other = crate::dsl::parse(path, &text.replace("\nversion: 1\n", "\nversion: 2\n"))
            .expect("version 2");
        assert_eq!(other.version, 2);
        let unrelated = heat(&other, trail.values().map(Vec::as_slice), 0, Millis::MAX);
        assert_eq!(unrelated.instances, 0, "entries of version 1 only");
        assert!(all.instances > 0);
    }
}
