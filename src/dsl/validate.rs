//! Checks on a whole definition that no single field shows: reachability,
//! loops that never wait, parallel branches that cannot join, sagas without
//! compensation.

use super::Diagnostic;
use super::parse::{Loc, Locations};
use crate::engine::{Definition, StepIdx, StepKind, Transition};

pub fn validate(file: &str, def: &Definition, locs: &Locations) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut err = |loc: &Loc, message: String| {
        out.push(Diagnostic {
            file: file.to_string(),
            line: loc.line,
            column: loc.column,
            path: loc.path.clone(),
            message,
        })
    };
    let n = def.steps.len();
    let mut succ: Vec<Vec<StepIdx>> = (0..n).map(|s| successors(def, s)).collect();
    for j in &locs.jumps {
        if let Some(f) = j.from
            && !succ[f].contains(&j.to)
        {
            succ[f].push(j.to);
        }
    }

    // Reachability from the entry and from watchdog jumps.
    let mut seen = vec![false; n];
    let mut stack: Vec<StepIdx> = def.entry.into_iter().collect();
    stack.extend(locs.jumps.iter().filter(|j| j.from.is_none()).map(|j| j.to));
    while let Some(s) = stack.pop() {
        if !std::mem::replace(&mut seen[s], true) {
            stack.extend(succ[s].iter().copied());
        }
    }
    for s in (0..n).filter(|&s| !seen[s]) {
        err(
            &locs.steps[s],
            format!(
                "step `{}` can never run: no step, outcome or watchdog leads to it",
                def.steps[s].id
            ),
        );
    }

    // Loops made only of steps that never wait would spin forever.
    let instant: Vec<bool> = (0..n).map(|s| !waits(def, s)).collect();
    let reach = |from: StepIdx| {
        let mut seen = vec![false; n];
        let mut stack = vec![from];
        while let Some(s) = stack.pop() {
            for &t in &succ[s] {
                if instant[t] && !std::mem::replace(&mut seen[t], true) {
                    stack.push(t);
                }
            }
        }
        seen
    };
    let reach_all: Vec<Vec<bool>> = (0..n)
        .map(|s| if instant[s] { reach(s) } else { Vec::new() })
        .collect();
    for s in (0..n).filter(|&s| instant[s] && reach_all[s][s]) {
        let cycle: Vec<StepIdx> = (0..n)
            .filter(|&t| instant[t] && reach_all[s][t] && reach_all[t][s])
            .collect();
        if cycle.first() == Some(&s) {
            let names: Vec<&str> = cycle.iter().map(|&t| def.steps[t].id.as_str()).collect();
            err(
                &locs.steps[s],
                format!(
                    "steps {} form a loop in which nothing waits (no await, wait or call); it would never yield",
                    names.join(" → ")
                ),
            );
        }
    }

    // Jumps must stay inside their list so parallel branches can join.
    for j in &locs.jumps {
        let to_branch = def.steps[j.to].branch;
        let from_branch = j.from.and_then(|f| def.steps[f].branch);
        if to_branch == from_branch {
            continue;
        }
        let target = &def.steps[j.to].id;
        let message = match (from_branch, to_branch) {
            (Some((par, b)), _) => format!(
                "jump to `{target}` leaves branch {b} of parallel step `{}`; a branch must run off its last step so the branches can join",
                def.steps[par].id
            ),
            (None, Some((par, b))) => format!(
                "jump to `{target}` enters branch {b} of parallel step `{}` from outside; branches start only through their parallel step",
                def.steps[par].id
            ),
            (None, None) => continue,
        };
        err(&j.loc, message);
    }

    // Sagas: every command-sending task says how it is undone.
    if def.saga {
        for (s, step) in def.steps.iter().enumerate() {
            if let StepKind::Task(t) = &step.kind
                && t.command.is_some()
                && !t.manual
                && t.compensate.is_none()
                && !locs.no_compensation.contains(&s)
            {
                err(
                    &locs.steps[s],
                    format!(
                        "the process is a saga (`saga: true`) but task `{}` has no `compensate`; add one, or write `compensate: none`",
                        step.id
                    ),
                );
            }
        }
    }
    out
}

fn waits(def: &Definition, s: StepIdx) -> bool {
    match &def.steps[s].kind {
        StepKind::Task(t) => !t.outcomes.is_empty() || t.call.is_some(),
        StepKind::Wait(_) | StepKind::Parallel { .. } => true,
        StepKind::Switch { .. } | StepKind::Set(_) | StepKind::End(_) => false,
    }
}

fn successors(def: &Definition, s: StepIdx) -> Vec<StepIdx> {
    let step = &def.steps[s];
    let mut ts: Vec<Transition> = Vec::new();
    let mut out = Vec::new();
    match &step.kind {
        StepKind::Task(t) => {
            if t.outcomes.is_empty() && t.call.is_none() {
                ts.push(Transition::Next);
            }
            ts.extend(t.outcomes.iter().map(|o| o.then));
            if t.timeout.is_some() {
                ts.push(t.on_timeout);
            }
            ts.push(t.on_exhausted);
        }
        StepKind::Switch { cases, default } => {
            ts.extend(cases.iter().map(|c| c.then));
            ts.push(*default);
        }
        StepKind::Set(_) | StepKind::Wait(_) => ts.push(Transition::Next),
        StepKind::Parallel { branches, .. } => {
            ts.push(Transition::Next);
            out.extend(branches.iter().copied());
        }
        StepKind::End(_) => {}
    }
    for t in ts {
        let t = if t == Transition::Next { step.then } else { t };
        match t {
            Transition::Next => out.extend(step.next),
            Transition::Goto(g) => out.push(g),
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}
