//! Places a definition's graph for drawing, in the layered way (Sugiyama):
//! nodes in layers from the start down (the longest path over forward
//! edges); an edge that spans layers passes a virtual node in each layer
//! between, so it is routed around the nodes there instead of through
//! them; nodes ordered within a layer by the mean position of their
//! neighbours (barycentres, sweeping down and up), then placed as close to
//! their neighbours above as their order allows. Edges leave a node's
//! bottom and enter the next node's top at ports spread along the border;
//! edges that go back up (loops, retries, joins) run in lanes on the right.
//! Each label is placed where it is read: below its edge's source, beside
//! the port it leaves from, stacked with its siblings.
//!
//! The console draws the result as SVG; the coordinates are pixels with
//! the origin at the top left, and a node's `x`/`y` is its top-left corner.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::{EdgeKind, Graph, NodeKind};
use crate::engine::Definition;

const MARGIN: f64 = 24.0;
const LAYER_GAP: f64 = 48.0;
const NODE_GAP: f64 = 40.0;
const VIRTUAL_GAP: f64 = 18.0;
const LANE_GAP: f64 = 14.0;
/// Height of a line of edge labels.
const LABEL_LINE: f64 = 13.0;
/// Roughly the width of one character of an edge label, and the most a
/// label takes (the console cuts longer ones).
const LABEL_CHAR: f64 = 5.6;
const LABEL_MAX: f64 = 190.0;
const LOOP: f64 = 28.0;

/// A point of an edge's route.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

/// A node and where it is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Placed {
    pub id: String,
    /// The step id (`null` for the start, end, incident and watchdog nodes).
    pub step: Option<String>,
    pub kind: NodeKind,
    pub label: String,
    pub detail: String,
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// An edge and its route, from its source's border to its target's.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Route {
    pub from: String,
    pub to: String,
    /// The labels of every transition between the two nodes, joined by ` / `.
    pub label: String,
    pub kind: EdgeKind,
    pub points: Vec<Point>,
    /// Where the label's text starts (the left end of its baseline);
    /// `null` when the edge has no label.
    pub label_at: Option<Point>,
}

/// A definition laid out for drawing.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    pub nodes: Vec<Placed>,
    pub edges: Vec<Route>,
}

fn size(kind: NodeKind) -> (f64, f64) {
    match kind {
        NodeKind::Start | NodeKind::Completed | NodeKind::Failed | NodeKind::Cancelled => {
            (150.0, 40.0)
        }
        NodeKind::Incident => (120.0, 40.0),
        NodeKind::Switch => (160.0, 64.0),
        NodeKind::Expect | NodeKind::Escalation => (200.0, 48.0),
        _ => (200.0, 56.0),
    }
}

/// How wide a label is drawn, at most.
fn label_width(label: &str) -> f64 {
    (label.chars().count() as f64 * LABEL_CHAR).min(LABEL_MAX)
}

/// An edge between two nodes of the graph, all its labels together.
struct Link {
    from: usize,
    to: usize,
    kind: EdgeKind,
    label: String,
}

/// A placed box: a node of the graph, or a virtual node a long edge passes.
#[derive(Clone, Copy)]
struct Slot {
    layer: usize,
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    /// Room kept free on its right (a loop and its label).
    extra: f64,
    real: bool,
}

/// Lays out the graph of `def`.
pub fn layout(def: &Definition) -> Layout {
    let g = Graph::of(def);
    let n = g.nodes.len();
    let index: BTreeMap<&str, usize> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| (node.id.as_str(), i))
        .collect();
    let links = links(&g, &index);
    let back = back_edges(n, &links);
    let forward: Vec<usize> = (0..links.len())
        .filter(|&i| !back[i] && links[i].kind != EdgeKind::Join && links[i].from != links[i].to)
        .collect();
    let layer = layers(
        n,
        &forward
            .iter()
            .map(|&i| (links[i].from, links[i].to))
            .collect::<Vec<_>>(),
    );

    let mut slots: Vec<Slot> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(v, node)| {
            let (width, height) = size(node.kind);
            Slot {
                layer: layer[v],
                x: 0.0,
                y: 0.0,
                width,
                height,
                extra: 0.0,
                real: true,
            }
        })
        .collect();
    // A loop and its label take room on the node's right.
    for l in links.iter().filter(|l| l.from == l.to) {
        slots[l.from].extra = slots[l.from].extra.max(LOOP + 6.0 + label_width(&l.label));
    }
    // Every forward edge as a chain of slots, one per layer it crosses.
    let mut chains: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in &forward {
        let (a, b) = (links[i].from, links[i].to);
        let mut chain = vec![a];
        for l in layer[a] + 1..layer[b] {
            slots.push(Slot {
                layer: l,
                x: 0.0,
                y: 0.0,
                width: 0.0,
                height: 0.0,
                extra: 0.0,
                real: false,
            });
            chain.push(slots.len() - 1);
        }
        chain.push(b);
        chains.insert(i, chain);
    }
    let hops: Vec<(usize, usize)> = chains
        .values()
        .flat_map(|c| c.windows(2).map(|w| (w[0], w[1])))
        .collect();
    let layers_n = slots.iter().map(|s| s.layer + 1).max().unwrap_or(0);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers_n];
    for (v, s) in slots.iter().enumerate() {
        rows[s.layer].push(v);
    }
    order(&mut rows, &hops, &slots);

    // Heights: each row as tall as its tallest node; each gap as tall as
    // the stack of labels below its row's nodes needs.
    let mut labelled_out = vec![0usize; n];
    for &i in &forward {
        if !links[i].label.is_empty() {
            labelled_out[links[i].from] += 1;
        }
    }
    let mut top = MARGIN;
    let mut row_bottom = vec![0.0f64; layers_n];
    let mut gap_below = vec![LAYER_GAP; layers_n];
    for (l, row) in rows.iter().enumerate() {
        let h = row.iter().map(|&v| slots[v].height).fold(0.0, f64::max);
        for &v in row {
            slots[v].y = top + (h - slots[v].height) / 2.0;
            if !slots[v].real {
                slots[v].height = h;
                slots[v].y = top;
            }
        }
        let stack = row
            .iter()
            .filter(|&&v| v < n)
            .map(|&v| labelled_out[v])
            .max()
            .unwrap_or(0);
        gap_below[l] = LAYER_GAP.max(18.0 + LABEL_LINE * stack as f64 + 14.0);
        row_bottom[l] = top + h;
        top += h + gap_below[l];
    }
    place(&rows, &hops, &mut slots);

    let right = slots
        .iter()
        .map(|s| s.x + s.width + s.extra)
        .fold(MARGIN, f64::max);

    // Ports: where each forward edge leaves its source and enters its target.
    let next_of = |i: usize| chains[&i][1];
    let prev_of = |i: usize| chains[&i][chains[&i].len() - 2];
    let mut exits: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
    let mut entries: BTreeMap<usize, f64> = BTreeMap::new();
    let centre = |s: &Slot| s.x + s.width / 2.0;
    for v in 0..n {
        let spread = |mut ends: Vec<(f64, usize)>, s: &Slot| -> Vec<(usize, f64, usize)> {
            ends.sort_by(|a, b| a.0.total_cmp(&b.0));
            let k = ends.len();
            let narrow = matches!(g.nodes[v].kind, NodeKind::Switch);
            ends.iter()
                .enumerate()
                .map(|(j, &(_, e))| {
                    let x = if narrow || k == 1 {
                        centre(s)
                    } else {
                        s.x + s.width * (0.2 + 0.6 * (j + 1) as f64 / (k + 1) as f64)
                    };
                    (e, x, j)
                })
                .collect()
        };
        let out: Vec<(f64, usize)> = forward
            .iter()
            .filter(|&&i| links[i].from == v)
            .map(|&i| (centre(&slots[next_of(i)]), i))
            .collect();
        let mut labelled = 0;
        for (e, x, _) in spread(out, &slots[v]) {
            let slot = if links[e].label.is_empty() {
                usize::MAX
            } else {
                labelled += 1;
                labelled - 1
            };
            exits.insert(e, (x, slot));
        }
        let inc: Vec<(f64, usize)> = forward
            .iter()
            .filter(|&&i| links[i].to == v)
            .map(|&i| (centre(&slots[prev_of(i)]), i))
            .collect();
        for (e, x, _) in spread(inc, &slots[v]) {
            entries.insert(e, x);
        }
    }

    let mut lanes = 0usize;
    let mut widest = right;
    let mut routes = Vec::with_capacity(links.len());
    for (i, link) in links.iter().enumerate() {
        let (a, b) = (link.from, link.to);
        let (sa, sb) = (slots[a], slots[b]);
        let labelled = !link.label.is_empty();
        let (points, label_at) = if a == b {
            let (r, cy) = (sa.x + sa.width, sa.y + sa.height / 2.0);
            let at = labelled.then_some(Point {
                x: r + LOOP + 4.0,
                y: cy + 4.0,
            });
            (
                vec![
                    Point { x: r, y: cy - 9.0 },
                    Point {
                        x: r + LOOP,
                        y: cy - 9.0,
                    },
                    Point {
                        x: r + LOOP,
                        y: cy + 9.0,
                    },
                    Point { x: r, y: cy + 9.0 },
                ],
                at,
            )
        } else if let Some(chain) = chains.get(&i) {
            let (exit, stack) = exits[&i];
            let mut pts = vec![Point {
                x: exit,
                y: sa.y + sa.height,
            }];
            let mut x = exit;
            for (hop, &c) in chain.iter().enumerate().skip(1) {
                let sc = slots[c];
                let tx = if c == b { entries[&i] } else { centre(&sc) };
                let prev_layer = slots[chain[hop - 1]].layer;
                if (tx - x).abs() > 0.5 {
                    // Turn in the gap, below the labels, each edge at its own height.
                    let y = row_bottom[prev_layer] + gap_below[prev_layer]
                        - 10.0
                        - (i % 3) as f64 * 5.0;
                    pts.push(Point { x, y });
                    pts.push(Point { x: tx, y });
                }
                pts.push(Point { x: tx, y: sc.y });
                if !sc.real {
                    pts.push(Point {
                        x: tx,
                        y: sc.y + sc.height,
                    });
                }
                x = tx;
            }
            let at = (labelled && stack != usize::MAX).then_some(Point {
                x: exit + 5.0,
                y: sa.y + sa.height + 14.0 + LABEL_LINE * stack as f64,
            });
            (pts, at)
        } else {
            lanes += 1;
            let lane = right + LANE_GAP * lanes as f64;
            let (sy, ty) = (sa.y + sa.height / 2.0, sb.y + sb.height / 2.0);
            let at = labelled.then(|| {
                widest = widest.max(lane + 4.0 + label_width(&link.label));
                Point {
                    x: lane + 4.0,
                    y: (sy + ty) / 2.0,
                }
            });
            (
                vec![
                    Point {
                        x: sa.x + sa.width,
                        y: sy,
                    },
                    Point { x: lane, y: sy },
                    Point { x: lane, y: ty },
                    Point {
                        x: sb.x + sb.width,
                        y: ty,
                    },
                ],
                at,
            )
        };
        if let Some(at) = label_at {
            widest = widest.max(at.x + label_width(&link.label));
        }
        routes.push(Route {
            from: g.nodes[a].id.clone(),
            to: g.nodes[b].id.clone(),
            label: link.label.clone(),
            kind: link.kind,
            points,
            label_at,
        });
    }
    let width = widest.max(right + LANE_GAP * (lanes as f64 + 1.0)) + MARGIN;
    let height = row_bottom.last().copied().unwrap_or(MARGIN) + MARGIN;
    Layout {
        width,
        height,
        nodes: g
            .nodes
            .iter()
            .enumerate()
            .map(|(v, node)| Placed {
                id: node.id.clone(),
                step: node.step.map(|s| def.steps[s].id.clone()),
                kind: node.kind,
                label: node.label.clone(),
                detail: node.detail.clone(),
                x: slots[v].x,
                y: slots[v].y,
                width: slots[v].width,
                height: slots[v].height,
            })
            .collect(),
        edges: routes,
    }
}

/// One link per (from, to, kind), with every label of the edges it stands for.
fn links(g: &Graph, index: &BTreeMap<&str, usize>) -> Vec<Link> {
    let mut out: Vec<Link> = Vec::new();
    for e in &g.edges {
        let (Some(&a), Some(&b)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) else {
            continue;
        };
        match out
            .iter_mut()
            .find(|l| (l.from, l.to, l.kind) == (a, b, e.kind))
        {
            Some(l) => {
                if !e.label.is_empty() && !l.label.split(" / ").any(|x| x == e.label) {
                    if !l.label.is_empty() {
                        l.label.push_str(" / ");
                    }
                    l.label.push_str(&e.label);
                }
            }
            None => out.push(Link {
                from: a,
                to: b,
                kind: e.kind,
                label: e.label.clone(),
            }),
        }
    }
    out
}

/// Which links close a cycle: a depth-first walk from the start node (then
/// from any node not reached yet) meets them going back to a node still on
/// its path.
fn back_edges(n: usize, links: &[Link]) -> Vec<bool> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, l) in links.iter().enumerate() {
        if l.kind != EdgeKind::Join {
            succ[l.from].push(i);
        }
    }
    let mut back = vec![false; links.len()];
    let mut mark = vec![Mark::New; n];
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, next successor to look at)
        let mut stack = vec![(root, 0usize)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            if let Some(&e) = succ[v].get(*next) {
                *next += 1;
                let w = links[e].to;
                match mark[w] {
                    Mark::New => {
                        mark[w] = Mark::OnPath;
                        stack.push((w, 0));
                    }
                    Mark::OnPath => back[e] = true,
                    Mark::Done => {}
                }
            } else {
                mark[v] = Mark::Done;
                stack.pop();
            }
        }
    }
    back
}

/// The layer of every node: the longest path to it over `forward` edges
/// (which hold no cycle).
fn layers(n: usize, forward: &[(usize, usize)]) -> Vec<usize> {
    let mut indegree = vec![0usize; n];
    for &(_, b) in forward {
        indegree[b] += 1;
    }
    let mut layer = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).rev().filter(|&v| indegree[v] == 0).collect();
    while let Some(v) = ready.pop() {
        for &(a, b) in forward {
            if a == v {
                layer[b] = layer[b].max(layer[v] + 1);
                indegree[b] -= 1;
                if indegree[b] == 0 {
                    ready.push(b);
                }
            }
        }
    }
    layer
}

/// Orders the slots of each layer by the mean position of their
/// neighbours in the layer above, then below, a few times over.
fn order(rows: &mut [Vec<usize>], hops: &[(usize, usize)], slots: &[Slot]) {
    let mut pos = vec![0.0f64; slots.len()];
    for row in rows.iter() {
        for (i, &v) in row.iter().enumerate() {
            pos[v] = i as f64;
        }
    }
    for sweep in 0..6 {
        let down = sweep % 2 == 0;
        let ls: Vec<usize> = if down {
            (1..rows.len()).collect()
        } else {
            (0..rows.len().saturating_sub(1)).rev().collect()
        };
        for l in ls {
            let key = |v: usize| {
                let near: Vec<f64> = hops
                    .iter()
                    .filter_map(|&(a, b)| match down {
                        true if b == v && slots[a].layer + 1 == l => Some(pos[a]),
                        false if a == v && slots[b].layer == l + 1 => Some(pos[b]),
                        _ => None,
                    })
                    .collect();
                if near.is_empty() {
                    pos[v]
                } else {
                    near.iter().sum::<f64>() / near.len() as f64
                }
            };
            let mut keyed: Vec<(f64, usize)> = rows[l].iter().map(|&v| (key(v), v)).collect();
            keyed.sort_by(|p, q| p.0.total_cmp(&q.0));
            rows[l] = keyed.into_iter().map(|(_, v)| v).collect();
            for (i, &v) in rows[l].iter().enumerate() {
                pos[v] = i as f64;
            }
        }
    }
}

/// Places each row as close as its order allows to where its slots want to
/// be: centred on their neighbours in the row above, then (going back up)
/// on those below, then above again; the first row starts side by side.
/// Slots that would overlap form a block, placed at the mean of its
/// members' wishes.
fn place(rows: &[Vec<usize>], hops: &[(usize, usize)], slots: &mut [Slot]) {
    let gap = |a: &Slot, b: &Slot| {
        a.extra
            + if a.real || b.real {
                NODE_GAP
            } else {
                VIRTUAL_GAP
            }
    };
    let mut first = true;
    for pass in 0..3 {
        let down = pass % 2 == 0;
        let order: Vec<&Vec<usize>> = if down {
            rows.iter().collect()
        } else {
            rows.iter().rev().collect()
        };
        for row in order {
            let mut wish = Vec::with_capacity(row.len());
            let mut left = 0.0;
            for &v in row {
                let near: Vec<f64> = hops
                    .iter()
                    .filter_map(|&(a, b)| match down {
                        true if b == v => Some(a),
                        false if a == v => Some(b),
                        _ => None,
                    })
                    .map(|u| slots[u].x + slots[u].width / 2.0)
                    .collect();
                let w = slots[v].width;
                wish.push(if !near.is_empty() {
                    near.iter().sum::<f64>() / near.len() as f64 - w / 2.0
                } else if first {
                    left
                } else {
                    slots[v].x
                });
                left += w + slots[v].extra + NODE_GAP;
            }
            // Blocks of slots that touch: (first, last, start, wishes − offsets, count, width).
            let mut blocks: Vec<(usize, usize, f64, f64, f64, f64)> = Vec::new();
            for (i, &v) in row.iter().enumerate() {
                let mut cur = (i, i, wish[i], wish[i], 1.0, slots[v].width);
                // Merged with the blocks before it while they overlap.
                while let Some(&prev) = blocks.last() {
                    let g = gap(&slots[row[prev.1]], &slots[row[cur.0]]);
                    if prev.2 + prev.5 + g <= cur.2 {
                        break;
                    }
                    blocks.pop();
                    let shift = prev.5 + g;
                    let sum = prev.3 + cur.3 - cur.4 * shift;
                    let count = prev.4 + cur.4;
                    cur = (prev.0, cur.1, sum / count, sum, count, shift + cur.5);
                }
                blocks.push(cur);
            }
            for (first, last, start, ..) in blocks {
                let mut x = start;
                for i in first..=last {
                    if i > first {
                        x += slots[row[i - 1]].width + gap(&slots[row[i - 1]], &slots[row[i]]);
                    }
                    slots[row[i]].x = x;
                }
            }
        }
        first = false;
    }
    let min = slots.iter().map(|s| s.x).fold(f64::INFINITY, f64::min);
    if min.is_finite() {
        for s in slots.iter_mut() {
            s.x += MARGIN - min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Definition {
        let path = format!("{}/examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("example");
        crate::dsl::parse(&path, &text).expect("valid example")
    }

    fn overlap(a: &Placed, b: &Placed) -> bool {
        a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height
    }

    #[test]
    fn every_example_is_laid_out_without_overlaps_inside_its_box() {
        for name in ["order-to-cash", "customer-onboarding", "incident-response"] {
            let def = example(name);
            let l = layout(&def);
            let graph = Graph::of(&def);
            assert_eq!(
                l.nodes.len(),
                graph.nodes.len(),
                "{name}: every node placed"
            );
            for (i, a) in l.nodes.iter().enumerate() {
                assert!(
                    a.x >= 0.0 && a.y >= 0.0,
                    "{name}: {} at {},{}",
                    a.id,
                    a.x,
                    a.y
                );
                assert!(
                    a.x + a.width <= l.width && a.y + a.height <= l.height,
                    "{name}: {} outside",
                    a.id
                );
                for b in &l.nodes[i + 1..] {
                    assert!(!overlap(a, b), "{name}: {} overlaps {}", a.id, b.id);
                }
            }
            for e in &l.edges {
                let from = l
                    .nodes
                    .iter()
                    .find(|n| n.id == e.from)
                    .expect("from placed");
                let to = l.nodes.iter().find(|n| n.id == e.to).expect("to placed");
                let (first, last) = (e.points[0], e.points[e.points.len() - 1]);
                let on = |p: Point, n: &Placed| {
                    p.x >= n.x - 0.01
                        && p.x <= n.x + n.width + 0.01
                        && p.y >= n.y - 0.01
                        && p.y <= n.y + n.height + 0.01
                };
                assert!(
                    on(first, from) && on(last, to),
                    "{name}: {} → {} starts and ends on its nodes",
                    e.from,
                    e.to
                );
                assert!(
                    e.points.iter().all(|p| p.x <= l.width && p.y <= l.height),
                    "{name}: route inside"
                );
            }
        }
    }

    #[test]
    fn labels_and_long_edges_keep_off_the_nodes() {
        for name in ["order-to-cash", "customer-onboarding", "incident-response"] {
            let l = layout(&example(name));
            for e in &l.edges {
                if let Some(at) = e.label_at {
                    let (x0, x1) = (at.x, at.x + label_width(&e.label));
                    let (y0, y1) = (at.y - 10.0, at.y + 3.0);
                    assert!(
                        x1 <= l.width,
                        "{name}: label of {} → {} inside",
                        e.from,
                        e.to
                    );
                    for n in &l.nodes {
                        let apart =
                            x1 <= n.x || n.x + n.width <= x0 || y1 <= n.y || n.y + n.height <= y0;
                        assert!(
                            apart,
                            "{name}: label `{}` of {} → {} covers {}",
                            e.label, e.from, e.to, n.id
                        );
                    }
                } else {
                    assert!(
                        e.label.is_empty(),
                        "{name}: {} → {} has a label and no place",
                        e.from,
                        e.to
                    );
                }
                // A vertical segment of a forward edge passes no node but its ends'.
                for w in e.points.windows(2) {
                    let (p, q) = (w[0], w[1]);
                    if (p.x - q.x).abs() > 0.01 {
                        continue;
                    }
                    let (lo, hi) = (p.y.min(q.y), p.y.max(q.y));
                    for n in l.nodes.iter().filter(|n| n.id != e.from && n.id != e.to) {
                        let crosses = p.x > n.x + 0.01
                            && p.x < n.x + n.width - 0.01
                            && lo < n.y + n.height - 0.01
                            && hi > n.y + 0.01;
                        assert!(
                            !crosses,
                            "{name}: {} → {} runs through {}",
                            e.from, e.to, n.id
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_flow_goes_down_from_the_start_and_loops_go_up_on_the_right() {
        let def = example("order-to-cash");
        let l = layout(&def);
        let at = |id: &str| l.nodes.iter().find(|n| n.id == id).expect(id).clone();
        let start = at(super::super::START);
        assert_eq!(start.y, MARGIN, "the start is on top");
        assert!(at("reserve").y > start.y);
        assert!(at("charge").y > at("reserve").y);
        assert!(at("invoice").y > at("charge").y);
        // `retry` leads a step back to itself: a loop on its right side.
        let loops: Vec<&Route> = l.edges.iter().filter(|e| e.from == e.to).collect();
        for e in loops {
            let n = at(&e.from);
            assert!(
                e.points.iter().all(|p| p.x >= n.x + n.width),
                "{} loops on the right",
                e.from
            );
        }
        // Parallel edges between two nodes are one route with every label.
        let mut pairs: Vec<(&str, &str, EdgeKind)> = l
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.kind))
            .collect();
        let before = pairs.len();
        pairs.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        pairs.dedup();
        assert_eq!(pairs.len(), before, "one route per pair and kind");
        let failed = l
            .edges
            .iter()
            .find(|e| e.from == "reserve" && e.to == super::super::FAILED)
            .expect("reserve can fail");
        assert!(
            failed.label.contains("com.acme.inventory.unavailable"),
            "{}",
            failed.label
        );
    }
}
