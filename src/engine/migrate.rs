//! Moving a running instance from one version of its definition to another.
//!
//! [`migrate`] is pure: it takes both definitions, the instance and the step
//! mapping of an [`Action::Migrate`](super::Action::Migrate), and returns the
//! instance as it continues under the target version, or every reason it
//! cannot ([`Misfit`]s, all of them at once). The shard, which holds every
//! deployed version, carries the action out; this module decides nothing
//! about where the instance is stored or how its timers are kept.
//!
//! The rules follow what process instance migration means in Camunda/Zeebe:
//! an explicit mapping of the elements that are active, each onto an element
//! of the same kind, and a refusal otherwise. Nothing is guessed.
//!
//! - **Which instances.** Only an `Active` instance (not pending, not ended)
//!   that runs exactly `from` (its process, its version and, when both are
//!   known, its content hash) can move, and only to another version of the
//!   same process.
//! - **The mapping.** A step keeps its id unless `steps` maps it
//!   (`old id → new id`). Every key of `steps` must be a step of `from` and
//!   every value a step of `to`, whether or not the instance uses it.
//! - **Tokens** (the active steps) must map to a step of `to` of the same
//!   kind: a task (with a command), a manual task, a call, a receive task
//!   (await only), a switch, a set, a wait, a parallel or an end. The token's
//!   phase must fit the target: awaiting an outcome or backing off needs a
//!   task, calling needs a call of the same process (the called instance's
//!   end must still reach it), waiting needs a wait, joining needs a parallel
//!   with as many branches. A token inside a parallel branch must land inside
//!   the branches of the step its parallel maps to, siblings in distinct
//!   branches; a token outside any parallel must stay outside. A token's id,
//!   visit, attempt and phase are kept.
//! - **Completed tasks** (what compensation undoes): a task that has a
//!   compensation must map to a task of `to` that has one too, or a later
//!   failure would silently not undo it. A completed task without a
//!   compensation that has no counterpart is dropped from the history (it
//!   would compensate nothing anyway); one that gets a compensation in `to`
//!   is compensated by it.
//! - **Two steps into one.** Two steps of `from` that the instance is at or
//!   has completed cannot map onto the same step of `to` (their command and
//!   compensation ids would collide).
//! - **Visits** (per-step entry counts, for unique command ids) and the steps
//!   of incidents are remapped; visits of steps `to` no longer has are
//!   dropped, as nothing can enter them again. An incident of a watchdog or a
//!   compensation names a step that must map.
//! - **Timers** keep their due times. The engine builds a token's timer id
//!   from its step id (`<step>/<token>/<what>/…`); a renamed step renames its
//!   token's timers the same way, so the ids read as the engine would have
//!   built them under `to`. A task timeout is dropped when the target task
//!   has no `timeout`; one the source did not have is not created (when the
//!   task was entered is not known). A wait keeps the due time it was given.
//!   The caller must cancel the timers whose ids changed and schedule the new
//!   ones: [`timer_changes`] lists them.
//! - **Watchdogs.** An armed `expect` must have a counterpart in `to`: an
//!   expect on the same event pattern, armed after the step its `after` maps
//!   to (or at the start, for both). The same index is preferred, else the
//!   first unused match; the armed watchdog takes the counterpart's index, its
//!   timer (`expect[<index>]`, an id the engine rebuilds from the index) and
//!   keeps its due time, while the counterpart's `when` and command apply
//!   from now on. A watchdog already met moves to its counterpart too; one
//!   without a counterpart is dropped, since `to` does not watch for it.
//!   Watchdogs that `to` arms after steps the instance already passed are not
//!   armed.
//! - **Variables.** Every variable the instance holds is kept. Whether a
//!   later expression of `to` reads a variable only steps already passed
//!   would set cannot be told reliably, so the check is conservative and
//!   narrow: a variable that `to` computes from the start event (`vars:`),
//!   that `from` does not, and that the instance lacks, is a misfit, since no
//!   step will set it afterwards. Set it with an operator action first.
//! - **The rest** (key, variables, seen ids, buffered events, transitions,
//!   times, trace, parent, counters) is carried over; the result has
//!   `version = to.version` and `definition = to.hash`. Buffered events are
//!   offered again on the instance's next input.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Completion, Definition, Effect, Expectation, Instance, Phase, Status, Step, StepIdx, StepKind,
    Timer, TimerKind,
};

/// Why an instance cannot move to the target version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Misfit {
    /// What does not fit, e.g. "step `charge`" or "variable `total`".
    pub what: String,
    /// Why, and where possible what to do about it.
    pub why: String,
}

impl Misfit {
    fn new(what: impl Into<String>, why: impl Into<String>) -> Misfit {
        Misfit {
            what: what.into(),
            why: why.into(),
        }
    }
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.why)
    }
}

/// The instance as it continues under `to`, or every reason it cannot (see
/// the module documentation for the rules). `steps` maps step ids of `from`
/// to step ids of `to`; unmapped steps keep their id.
pub fn migrate(
    from: &Definition,
    to: &Definition,
    inst: &Instance,
    steps: &BTreeMap<String, String>,
) -> Result<Instance, Vec<Misfit>> {
    let mut misfits = Vec::new();
    check_instance(from, to, inst, &mut misfits);
    if !misfits.is_empty() {
        // The instance's step indexes mean nothing against `from` then.
        return Err(misfits);
    }
    let map = Mapping { from, to, steps };
    map.check(&mut misfits);

    let mut out = inst.clone();
    out.version = to.version;
    out.definition = to.hash.clone();

    // Which target step each used source step lands on, to find two in one.
    let mut landed: BTreeMap<StepIdx, StepIdx> = BTreeMap::new();
    let mut land = |src: StepIdx, dst: StepIdx, misfits: &mut Vec<Misfit>| {
        let first = *landed.entry(dst).or_insert(src);
        if first != src {
            misfits.push(Misfit::new(
                map.what(src),
                format!(
                    "maps to `{}` in version {}, as `{}` does: a step of the target takes at most one step of the instance",
                    to.steps[dst].id, to.version, from.steps[first].id
                ),
            ));
        }
    };

    // ---- tokens ----------------------------------------------------------
    // (parent token, target parallel's branch) already taken by a sibling.
    let mut branches_taken: BTreeSet<(u32, usize)> = BTreeSet::new();
    for (slot, tok) in inst.tokens.iter().enumerate() {
        let Some(src) = from.steps.get(tok.step) else {
            misfits.push(Misfit::new(
                format!("token {}", tok.id),
                format!(
                    "is at step #{}, which version {} does not have",
                    tok.step, from.version
                ),
            ));
            continue;
        };
        let dst_idx = match map.target(tok.step) {
            Ok(t) => t,
            Err(Some(why)) => {
                misfits.push(Misfit::new(
                    map.what(tok.step),
                    format!("the instance is at this step, and {why}"),
                ));
                continue;
            }
            Err(None) => continue,
        };
        let dst = &to.steps[dst_idx];
        land(tok.step, dst_idx, &mut misfits);
        let (was, is) = (kind(src), kind(dst));
        if was != is {
            misfits.push(Misfit::new(
                map.what(tok.step),
                format!(
                    "the instance is at this {was}, and `{}` in version {} is a {is}: an active step must map to one of the same kind",
                    dst.id, to.version
                ),
            ));
            continue;
        }
        if let Err(why) = fits(&tok.phase, src, dst) {
            misfits.push(Misfit::new(
                map.what(tok.step),
                format!("`{}` in version {}: {why}", dst.id, to.version),
            ));
            continue;
        }
        match (src.branch, dst.branch) {
            (None, None) => {}
            (Some((par, _)), Some((dst_par, dst_branch))) => {
                let inside = map.target(par).is_ok_and(|p| p == dst_par);
                if !inside {
                    misfits.push(Misfit::new(
                        map.what(tok.step),
                        format!(
                            "runs in a branch of `{}`, but `{}` in version {} is in a branch of `{}`",
                            from.steps[par].id, dst.id, to.version, to.steps[dst_par].id
                        ),
                    ));
                } else if let Some(parent) = tok.parent
                    && !branches_taken.insert((parent, dst_branch))
                {
                    misfits.push(Misfit::new(
                        map.what(tok.step),
                        format!(
                            "`{}` in version {} is in a branch of `{}` that another active step of the same parallel maps to",
                            dst.id,
                            to.version,
                            to.steps[dst_par].id
                        ),
                    ));
                }
            }
            (Some((par, _)), None) => misfits.push(Misfit::new(
                map.what(tok.step),
                format!(
                    "runs in a branch of `{}`, but `{}` in version {} is outside any parallel",
                    from.steps[par].id, dst.id, to.version
                ),
            )),
            (None, Some((dst_par, _))) => misfits.push(Misfit::new(
                map.what(tok.step),
                format!(
                    "is outside any parallel, but `{}` in version {} is in a branch of `{}`",
                    dst.id, to.version, to.steps[dst_par].id
                ),
            )),
        }
        out.tokens[slot].step = dst_idx;
    }

    // ---- completed tasks ------------------------------------------------
    let mut completed: Vec<Completion> = Vec::with_capacity(inst.completed.len());
    for c in &inst.completed {
        let Some(src) = from.steps.get(c.step) else {
            misfits.push(Misfit::new(
                format!("completed step #{}", c.step),
                format!("version {} does not have it", from.version),
            ));
            continue;
        };
        let compensation = match &src.kind {
            StepKind::Task(t) => t.compensate.as_ref().map(|c| c.kind.as_str()),
            _ => None,
        };
        let dst_idx = match map.target(c.step) {
            Ok(t) => t,
            Err(Some(why)) => {
                if let Some(undo) = compensation {
                    misfits.push(Misfit::new(
                        map.what(c.step),
                        format!(
                            "completed, and a failure would undo it with {undo}, but {why}: its compensation would be lost"
                        ),
                    ));
                }
                continue;
            }
            Err(None) => continue,
        };
        let dst = &to.steps[dst_idx];
        let dst_compensates = matches!(&dst.kind, StepKind::Task(t) if t.compensate.is_some());
        if let Some(undo) = compensation
            && !dst_compensates
        {
            misfits.push(Misfit::new(
                map.what(c.step),
                format!(
                    "completed, and a failure would undo it with {undo}, but `{}` in version {} has no compensation: map it to a task that has one",
                    dst.id, to.version
                ),
            ));
            continue;
        }
        if !matches!(dst.kind, StepKind::Task(_)) {
            // Nothing to undo, and not a task any more: history only.
            continue;
        }
        land(c.step, dst_idx, &mut misfits);
        completed.push(Completion {
            step: dst_idx,
            ..c.clone()
        });
    }
    out.completed = completed;

    // ---- visits and incidents ---------------------------------------------
    let mut visits = BTreeMap::new();
    for (&s, &n) in &inst.visits {
        if let Ok(t) = map.target(s) {
            let v = visits.entry(t).or_insert(0);
            *v = n.max(*v);
        }
    }
    out.visits = visits;
    for inc in &mut out.incidents {
        let Some(s) = inc.step else { continue };
        match map.target(s) {
            Ok(t) => inc.step = Some(t),
            // A token's incident: the token's own check reported its step.
            Err(_) if inc.token.is_some() => {}
            Err(Some(why)) => misfits.push(Misfit::new(
                map.what(s),
                format!("incident {} is open at this step, and {why}", inc.id),
            )),
            Err(None) => {}
        }
    }

    // ---- watchdogs ----------------------------------------------------------
    let mut taken: BTreeSet<usize> = BTreeSet::new();
    let mut expect_to: BTreeMap<u32, u32> = BTreeMap::new();
    for armed in &mut out.expects {
        let i = armed.index;
        let Some(e) = from.expect.get(i as usize) else {
            misfits.push(Misfit::new(
                format!("watchdog `expect[{i}]`"),
                format!("is armed, but version {} has no such expect", from.version),
            ));
            continue;
        };
        match counterpart(&map, i as usize, e, &taken) {
            Some(j) => {
                taken.insert(j);
                expect_to.insert(i, j as u32);
                armed.index = j as u32;
            }
            None => misfits.push(Misfit::new(
                format!("watchdog `expect[{i}]`"),
                format!(
                    "is armed ({} after {}), and version {} has no expect on that event after {}",
                    e.on.as_str(),
                    map.after(e.after),
                    to.version,
                    map.after_target(e.after)
                ),
            )),
        }
    }
    let mut met = Vec::with_capacity(inst.met_expects.len());
    for &i in &inst.met_expects {
        let Some(e) = from.expect.get(i as usize) else {
            continue;
        };
        if let Some(j) = counterpart(&map, i as usize, e, &taken) {
            taken.insert(j);
            met.push(j as u32);
        }
    }
    out.met_expects = met;

    // ---- timers ---------------------------------------------------------
    let mut timers = Vec::with_capacity(inst.timers.len());
    for t in &inst.timers {
        let mut t = t.clone();
        match t.kind {
            TimerKind::Timeout(tid) | TimerKind::Backoff(tid) | TimerKind::Wait(tid) => {
                let Some(tok) = inst.token(tid) else {
                    // The engine ignores a timer of a token that is gone.
                    timers.push(t);
                    continue;
                };
                let (Some(src), Ok(dst_idx)) = (from.steps.get(tok.step), map.target(tok.step))
                else {
                    continue; // The token's check reported it.
                };
                let dst = &to.steps[dst_idx];
                let has_timeout =
                    matches!(&dst.kind, StepKind::Task(task) if task.timeout.is_some());
                if matches!(t.kind, TimerKind::Timeout(_)) && !has_timeout {
                    continue;
                }
                if src.id != dst.id
                    && let Some(rest) =
                        t.id.strip_prefix(src.id.as_str())
                            .and_then(|r| r.strip_prefix('/'))
                {
                    t.id = format!("{}/{rest}", dst.id);
                }
            }
            TimerKind::Expect(i) => {
                let Some(&j) = expect_to.get(&i) else {
                    continue; // Reported with the armed watchdog.
                };
                t.kind = TimerKind::Expect(j);
                t.id = format!("expect[{j}]");
            }
            TimerKind::Buffer => {}
        }
        timers.push(t);
    }
    out.timers = timers;

    // ---- variables --------------------------------------------------------
    for a in &to.vars {
        let new = !from.vars.iter().any(|f| f.name == a.name);
        if new && !inst.vars.contains_key(&a.name) {
            misfits.push(Misfit::new(
                format!("variable `{}`", a.name),
                format!(
                    "version {} computes it from the start event, which this instance has passed, and no step would set it: set it on the instance first",
                    to.version
                ),
            ));
        }
    }

    if misfits.is_empty() {
        Ok(out)
    } else {
        let mut seen = BTreeSet::new();
        misfits.retain(|m| seen.insert((m.what.clone(), m.why.clone())));
        Err(misfits)
    }
}

/// The timer effects that take `before`'s timers to `after`'s: a timer whose
/// id or due time changed (or that is gone) is cancelled, a new one is
/// scheduled. What the caller of [`migrate`] must carry out.
pub fn timer_changes(before: &Instance, after: &Instance) -> Vec<Effect> {
    let same = |a: &Timer, b: &Timer| a.id == b.id && a.due == b.due && a.kind == b.kind;
    let mut fx: Vec<Effect> = before
        .timers
        .iter()
        .filter(|t| !after.timers.iter().any(|u| same(t, u)))
        .cloned()
        .map(Effect::CancelTimer)
        .collect();
    fx.extend(
        after
            .timers
            .iter()
            .filter(|t| !before.timers.iter().any(|u| same(t, u)))
            .cloned()
            .map(Effect::ScheduleTimer),
    );
    fx
}

fn check_instance(from: &Definition, to: &Definition, inst: &Instance, misfits: &mut Vec<Misfit>) {
    if inst.status != Status::Active {
        misfits.push(Misfit::new(
            "instance",
            format!(
                "is {}: only an active instance can move to another version",
                inst.status.as_str()
            ),
        ));
    }
    if inst.process != from.process || inst.version != from.version {
        misfits.push(Misfit::new(
            "instance",
            format!(
                "runs `{}` version {}, not `{}` version {}",
                inst.process, inst.version, from.process, from.version
            ),
        ));
    } else if !inst.definition.is_empty() && !from.hash.is_empty() && inst.definition != from.hash {
        misfits.push(Misfit::new(
            "instance",
            format!(
                "runs content {} of version {}, but the deployed version {} has content {}",
                inst.definition, from.version, from.version, from.hash
            ),
        ));
    }
    if to.process != from.process {
        misfits.push(Misfit::new(
            "target",
            format!(
                "is process `{}`, not `{}`: an instance moves only between versions of its own process",
                to.process, from.process
            ),
        ));
    } else if to.version == from.version {
        misfits.push(Misfit::new(
            "target",
            format!(
                "is version {}, the one the instance already runs",
                to.version
            ),
        ));
    }
}

/// The step mapping between the two versions.
struct Mapping<'a> {
    from: &'a Definition,
    to: &'a Definition,
    steps: &'a BTreeMap<String, String>,
}

impl Mapping<'_> {
    /// Every entry of the mapping names steps that exist.
    fn check(&self, misfits: &mut Vec<Misfit>) {
        for (src, dst) in self.steps {
            if self.from.step_named(src).is_none() {
                misfits.push(Misfit::new(
                    format!("mapping `{src}` → `{dst}`"),
                    format!(
                        "version {} of `{}` has no step `{src}`",
                        self.from.version, self.from.process
                    ),
                ));
            }
            if self.to.step_named(dst).is_none() {
                misfits.push(Misfit::new(
                    format!("mapping `{src}` → `{dst}`"),
                    format!(
                        "version {} of `{}` has no step `{dst}`",
                        self.to.version, self.to.process
                    ),
                ));
            }
        }
    }

    /// The step of `to` that step `s` of `from` becomes; `Err(None)` when a
    /// bad mapping entry is to blame (reported by [`Mapping::check`]).
    fn target(&self, s: StepIdx) -> Result<StepIdx, Option<String>> {
        let Some(step) = self.from.steps.get(s) else {
            return Err(Some(format!(
                "version {} has no step #{s}",
                self.from.version
            )));
        };
        match self.steps.get(&step.id) {
            Some(id) => self.to.step_named(id).ok_or(None),
            None => self.to.step_named(&step.id).ok_or_else(|| {
                Some(format!(
                    "version {} has no step `{}`: map it to one in `steps`",
                    self.to.version, step.id
                ))
            }),
        }
    }

    fn what(&self, s: StepIdx) -> String {
        match self.from.steps.get(s) {
            Some(step) => format!("step `{}`", step.id),
            None => format!("step #{s}"),
        }
    }

    fn after(&self, after: Option<StepIdx>) -> String {
        match after.and_then(|s| self.from.steps.get(s)) {
            Some(step) => format!("`{}`", step.id),
            None => "the start".to_string(),
        }
    }

    fn after_target(&self, after: Option<StepIdx>) -> String {
        match after {
            None => "the start".to_string(),
            Some(s) => match self.target(s) {
                Ok(t) => format!("`{}`", self.to.steps[t].id),
                Err(_) => format!("what {} maps to", self.after(after)),
            },
        }
    }
}

/// The expect of `to` that expect `i` of `from` continues as: the same event
/// pattern, armed after the step its `after` maps to; index `i` preferred.
fn counterpart(
    map: &Mapping<'_>,
    i: usize,
    e: &Expectation,
    taken: &BTreeSet<usize>,
) -> Option<usize> {
    let after = match e.after {
        None => None,
        Some(s) => Some(map.target(s).ok()?),
    };
    let matches = |j: usize, c: &Expectation| {
        !taken.contains(&j) && c.on.as_str() == e.on.as_str() && c.after == after
    };
    if map.to.expect.get(i).is_some_and(|c| matches(i, c)) {
        return Some(i);
    }
    map.to
        .expect
        .iter()
        .enumerate()
        .find(|(j, c)| matches(*j, c))
        .map(|(j, _)| j)
}

/// A step's kind, as migration tells them apart.
fn kind(step: &Step) -> &'static str {
    match &step.kind {
        StepKind::Task(t) if t.call.is_some() => "call",
        StepKind::Task(t) if t.manual => "manual task",
        StepKind::Task(t) if t.command.is_some() => "task",
        StepKind::Task(_) => "receive task",
        StepKind::Switch { .. } => "switch",
        StepKind::Set(_) => "set",
        StepKind::Wait(_) => "wait",
        StepKind::Parallel { .. } => "parallel",
        StepKind::End(_) => "end",
    }
}

/// Can a token in `phase` at `src` continue at `dst` (a step of the same kind)?
fn fits(phase: &Phase, src: &Step, dst: &Step) -> Result<(), String> {
    let branches = |s: &Step| match &s.kind {
        StepKind::Parallel { branches, .. } => Some(branches.len()),
        _ => None,
    };
    let called = |s: &Step| match &s.kind {
        StepKind::Task(t) => t.call.as_ref().map(|c| c.process.clone()),
        _ => None,
    };
    match phase {
        Phase::Awaiting => match &dst.kind {
            StepKind::Task(t) if t.call.is_none() => Ok(()),
            _ => Err(format!(
                "the instance awaits an outcome, and a {} awaits none",
                kind(dst)
            )),
        },
        Phase::Backoff => match &dst.kind {
            StepKind::Task(_) => Ok(()),
            _ => Err(format!(
                "the instance waits to retry a task, and this is a {}",
                kind(dst)
            )),
        },
        Phase::Calling(child) => match (called(src), called(dst)) {
            (Some(a), Some(b)) if a == b => Ok(()),
            (a, b) => Err(format!(
                "the instance awaits the end of `{}` `{child}`, and this step calls {}: that end would not reach it",
                a.unwrap_or_default(),
                b.map_or_else(|| "nothing".to_string(), |b| format!("`{b}`"))
            )),
        },
        Phase::Waiting => match &dst.kind {
            StepKind::Wait(_) => Ok(()),
            _ => Err(format!("the instance waits, and this is a {}", kind(dst))),
        },
        Phase::Joining(_) | Phase::Parked(_) if branches(src) != branches(dst) => Err(format!(
            "the parallel has {} branches, this one {}",
            branches(src).unwrap_or(0),
            branches(dst).unwrap_or(0)
        )),
        Phase::Joining(_) | Phase::Parked(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsl;
    use crate::engine::{self, Event, Input, Millis, Registry};
    use serde_json::{Value, json};
    use std::sync::Arc;

    const ORDER_TO_CASH: &str = include_str!("../../examples/order-to-cash.yaml");
    const ONBOARDING: &str = include_str!("../../examples/customer-onboarding.yaml");
    const T0: Millis = 1_767_603_600_000;

    /// `text` as version 2, with each `(old, new)` edit applied once (each
    /// must be found, or the variant would silently be v1 again).
    fn edited(text: &str, edits: &[(&str, &str)]) -> String {
        let mut text = text.replacen("\nversion: 1\n", "\nversion: 2\n", 1);
        for (old, new) in edits {
            assert!(text.contains(old), "edit target not found: {old}");
            text = text.replacen(old, new, 1);
        }
        text
    }

    /// Deploys each text (as the shard would, so each has its hash); each
    /// on its own, as variants may share a version number.
    fn deploy(texts: &[&str]) -> Vec<Arc<Definition>> {
        texts
            .iter()
            .map(|t| {
                let def = dsl::parse("test.yaml", t).unwrap_or_else(|e| panic!("{e}"));
                Registry::default().deploy(def, t).expect("deployed")
            })
            .collect()
    }

    fn no_map() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// One input of a script: an event, or fire the earliest pending timer of a kind.
    #[derive(Clone)]
    enum In {
        Ev(&'static str, Value),
        Fire(fn(&TimerKind) -> bool),
    }

    fn timeout(k: &TimerKind) -> bool {
        matches!(k, TimerKind::Timeout(_))
    }
    fn backoff(k: &TimerKind) -> bool {
        matches!(k, TimerKind::Backoff(_))
    }
    fn watchdog(k: &TimerKind) -> bool {
        matches!(k, TimerKind::Expect(_))
    }
    fn wait(k: &TimerKind) -> bool {
        matches!(k, TimerKind::Wait(_))
    }

    /// A driven instance and its clock.
    struct Run {
        inst: Instance,
        now: Millis,
        n: u32,
    }

    impl Run {
        fn new(def: &Definition) -> Run {
            let mut inst = Instance::new(&def.process, def.version, "o-1");
            inst.definition = def.hash.clone();
            Run {
                inst,
                now: T0,
                n: 0,
            }
        }

        fn input(&mut self, i: &In) -> Input {
            self.n += 1;
            match i {
                In::Ev(kind, data) => {
                    self.now += 1_000;
                    Input::Event(Event {
                        id: format!("ev-{}", self.n),
                        kind: kind.to_string(),
                        source: "test".into(),
                        time: self.now,
                        data: data.clone(),
                    })
                }
                In::Fire(which) => {
                    let t = self
                        .inst
                        .timers
                        .iter()
                        .filter(|t| which(&t.kind))
                        .min_by_key(|t| (t.due, t.id.clone()))
                        .unwrap_or_else(|| panic!("no such timer in {:?}", self.inst.timers));
                    self.now = self.now.max(t.due);
                    Input::Timer(t.id.clone())
                }
            }
        }

        fn apply(&mut self, def: &Definition, i: &In) -> Vec<Effect> {
            let input = self.input(i);
            engine::apply(def, &mut self.inst, &input, self.now)
        }

        fn drive(&mut self, def: &Definition, script: &[In]) -> Vec<Effect> {
            script.iter().flat_map(|i| self.apply(def, i)).collect()
        }
    }

    fn order(total: i64) -> Value {
        json!({
            "orderId": "o-1", "orderRef": "o-1", "total": total, "customerId": "c-1",
            "lines": [{ "sku": "A", "qty": 1 }], "address": "1 Main St",
        })
    }

    fn about(extra: Value) -> Value {
        let mut v = json!({ "orderId": "o-1", "orderRef": "o-1" });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    }

    fn placed(total: i64) -> In {
        In::Ev("com.acme.order.placed", order(total))
    }
    fn ev(kind: &'static str, extra: Value) -> In {
        In::Ev(kind, about(extra))
    }
    fn reserved() -> In {
        ev(
            "com.acme.inventory.reserved",
            json!({ "reservationId": "r-1" }),
        )
    }
    fn charged() -> In {
        ev("com.acme.payment.charged", json!({ "paymentId": "p-1" }))
    }

    /// Normal runs of order-to-cash: retries and timeouts, a manual approval
    /// and a missed SLA, a declined payment that compensates.
    fn scripts() -> Vec<Vec<In>> {
        vec![
            vec![
                placed(120),
                reserved(),
                ev("com.acme.payment.error", json!({})),
                In::Fire(backoff),
                In::Fire(timeout),
                In::Fire(backoff),
                charged(),
                ev("com.acme.shipment.created", json!({ "trackingId": "t-1" })),
                ev(
                    "com.acme.order.address-changed",
                    json!({ "address": "2 Side St" }),
                ),
                ev("com.acme.invoice.created", json!({ "invoiceId": "i-1" })),
                ev("com.acme.shipment.delivered", json!({})),
            ],
            vec![
                placed(20_000),
                In::Fire(timeout),
                In::Fire(backoff),
                reserved(),
                ev(
                    "com.acme.task.completed",
                    json!({ "approved": true, "user": "ann" }),
                ),
                charged(),
                ev("com.acme.shipment.created", json!({ "trackingId": "t-1" })),
                In::Fire(watchdog),
                ev("com.acme.invoice.created", json!({ "invoiceId": "i-1" })),
            ],
            vec![
                placed(120),
                reserved(),
                ev("com.acme.payment.declined", json!({ "reason": "card" })),
            ],
        ]
    }

    /// Effects with the audit's version blanked: all that may differ between
    /// identical versions.
    fn unversioned(fx: Vec<Effect>) -> Vec<Effect> {
        fx.into_iter()
            .map(|e| match e {
                Effect::Audit(mut a) => {
                    a.version = 0;
                    Effect::Audit(a)
                }
                e => e,
            })
            .collect()
    }

    fn whats(misfits: &[Misfit]) -> Vec<&str> {
        misfits.iter().map(|m| m.what.as_str()).collect()
    }

    // (a)
    #[test]
    fn every_state_of_a_normal_run_moves_to_an_identical_version_and_ends_the_same() {
        let v2_text = edited(ORDER_TO_CASH, &[]);
        let defs = deploy(&[ORDER_TO_CASH, &v2_text]);
        let (v1, v2) = (&defs[0], &defs[1]);
        let mut migrated = 0;
        for script in scripts() {
            for cut in 0..=script.len() {
                let mut plain = Run::new(v1);
                plain.drive(v1, &script[..cut]);
                let want = unversioned(plain.drive(v1, &script[cut..]));

                let mut moved = Run::new(v1);
                moved.drive(v1, &script[..cut]);
                if moved.inst.status != Status::Active {
                    let refused = migrate(v1, v2, &moved.inst, &no_map());
                    assert!(refused.is_err(), "a {:?} instance moved", moved.inst.status);
                    continue;
                }
                let before = moved.inst.clone();
                moved.inst = migrate(v1, v2, &moved.inst, &no_map())
                    .unwrap_or_else(|m| panic!("cut {cut}: {m:?}"));
                assert_eq!(moved.inst.version, 2);
                assert_eq!(moved.inst.definition, v2.hash);
                assert!(!v2.hash.is_empty() && v2.hash != v1.hash);
                assert_eq!(timer_changes(&before, &moved.inst), vec![]);
                migrated += 1;
                let got = unversioned(moved.drive(v2, &script[cut..]));
                assert_eq!(got, want, "cut {cut}");
                let mut end = moved.inst.clone();
                end.version = plain.inst.version;
                end.definition = plain.inst.definition.clone();
                assert_eq!(end, plain.inst, "cut {cut}");
                assert!(moved.inst.status.is_ended(), "cut {cut}");
            }
        }
        // Every cut but the one before the start and the one after the end.
        assert_eq!(
            migrated,
            scripts().iter().map(|s| s.len() - 1).sum::<usize>()
        );
    }

    /// v2 with `charge` renamed to `payment`.
    fn renamed() -> String {
        edited(
            ORDER_TO_CASH,
            &[
                ("  - id: charge\n", "  - id: payment\n"),
                ("default: charge", "default: payment"),
            ],
        )
    }

    // (b)
    #[test]
    fn a_renamed_step_moves_with_a_mapping_and_is_refused_without() {
        let v2_text = renamed();
        let defs = deploy(&[ORDER_TO_CASH, &v2_text]);
        let (v1, v2) = (&defs[0], &defs[1]);
        let mut run = Run::new(v1);
        run.drive(v1, &[placed(120), reserved()]);
        assert_eq!(run.inst.timers[0].id, "charge/1/timeout/1.1");

        let refused = migrate(v1, v2, &run.inst, &no_map()).expect_err("charge is gone");
        assert_eq!(whats(&refused), ["step `charge`"]);
        assert!(
            refused[0].why.contains("no step `charge`"),
            "{}",
            refused[0]
        );

        let before = run.inst.clone();
        run.inst = migrate(v1, v2, &run.inst, &map(&[("charge", "payment")])).expect("mapped");
        let payment = v2.step_named("payment").expect("step");
        assert_eq!(run.inst.tokens[0].step, payment);
        assert_eq!(run.inst.visits.get(&payment), Some(&1));
        assert_eq!(
            run.inst.completed[0].step,
            v2.step_named("reserve").expect("step")
        );
        let t = &run.inst.timers[0];
        assert_eq!(
            (t.id.as_str(), t.due, t.kind),
            (
                "payment/1/timeout/1.1",
                before.timers[0].due,
                before.timers[0].kind
            )
        );
        assert_eq!(
            timer_changes(&before, &run.inst),
            vec![
                Effect::CancelTimer(before.timers[0].clone()),
                Effect::ScheduleTimer(run.inst.timers[0].clone()),
            ]
        );

        // The renamed timeout fires under v2: a retry, then the second attempt.
        run.drive(v2, &[In::Fire(timeout)]);
        let fx = run.apply(v2, &In::Fire(backoff));
        let commands: Vec<_> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Command(c) => Some((c.id.as_str(), c.kind.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            commands,
            [("order-to-cash/o-1/payment/2", "com.acme.payment.charge")]
        );
        let fx = run.drive(
            v2,
            &[
                charged(),
                ev("com.acme.shipment.created", json!({ "trackingId": "t" })),
                ev("com.acme.inventory.unavailable", json!({})),
            ],
        );
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Command(c) if c.id == "order-to-cash/o-1/ship/1"))
        );

        // A mapping must name steps that exist, used or not.
        let refused = migrate(
            v1,
            v2,
            &before,
            &map(&[("charge", "payment"), ("nope", "ship")]),
        )
        .expect_err("unknown source");
        assert_eq!(whats(&refused), ["mapping `nope` → `ship`"]);
        let refused =
            migrate(v1, v2, &before, &map(&[("charge", "pay")])).expect_err("unknown target");
        assert_eq!(whats(&refused), ["mapping `charge` → `pay`"]);
    }

    /// v2 without the approval switch and the manual approval.
    fn without_approval() -> String {
        let start = ORDER_TO_CASH.find("  - id: approval\n").expect("approval");
        let end = ORDER_TO_CASH.find("  - id: charge\n").expect("charge");
        edited(ORDER_TO_CASH, &[(&ORDER_TO_CASH[start..end], "")])
    }

    // (c)
    #[test]
    fn a_token_at_a_removed_step_is_refused_and_passed_removed_steps_do_not_matter() {
        let v2_text = without_approval();
        let defs = deploy(&[ORDER_TO_CASH, &v2_text]);
        let (v1, v2) = (&defs[0], &defs[1]);
        let mut big = Run::new(v1);
        big.drive(v1, &[placed(20_000), reserved()]);
        let refused = migrate(v1, v2, &big.inst, &no_map()).expect_err("removed");
        assert_eq!(whats(&refused), ["step `manual-approval`"]);

        // Past the removed steps: it moves, and their visits are gone.
        let mut small = Run::new(v1);
        small.drive(v1, &[placed(120), reserved()]);
        let approval = v1.step_named("approval").expect("step");
        assert!(small.inst.visits.contains_key(&approval));
        let moved = migrate(v1, v2, &small.inst, &no_map()).expect("moves");
        let ids: Vec<&str> = moved
            .visits
            .keys()
            .map(|&s| v2.steps[s].id.as_str())
            .collect();
        assert_eq!(ids, ["reserve", "charge"]);
    }

    // (d)
    #[test]
    fn a_step_whose_kind_changed_is_refused() {
        let start = ORDER_TO_CASH.find("  - id: charge\n").expect("charge");
        let end = ORDER_TO_CASH.find("  - id: ship\n").expect("ship");
        let to_wait = edited(
            ORDER_TO_CASH,
            &[(
                &ORDER_TO_CASH[start..end],
                "  - id: charge\n    wait: 1m\n\n",
            )],
        );
        let to_command = edited(
            ORDER_TO_CASH,
            &[
                (
                    "    manual:\n      topic: crm.tasks",
                    "    command:\n      topic: crm.tasks",
                ),
                (
                    "    on_timeout: fail\n",
                    "    on_timeout: fail\n    compensate: none\n",
                ),
            ],
        );
        let defs = deploy(&[ORDER_TO_CASH, &to_wait, &to_command]);
        let v1 = &defs[0];

        let mut run = Run::new(v1);
        run.drive(v1, &[placed(120), reserved()]);
        let refused = migrate(v1, &defs[1], &run.inst, &no_map()).expect_err("now a wait");
        assert_eq!(whats(&refused), ["step `charge`"]);
        assert!(
            refused[0].why.contains("task") && refused[0].why.contains("wait"),
            "{}",
            refused[0]
        );

        let mut run = Run::new(v1);
        run.drive(v1, &[placed(20_000), reserved()]);
        let refused = migrate(v1, &defs[2], &run.inst, &no_map()).expect_err("no longer manual");
        assert_eq!(whats(&refused), ["step `manual-approval`"]);
        assert!(refused[0].why.contains("manual task"), "{}", refused[0]);
    }

    // (e)
    #[test]
    fn an_instance_that_is_not_active_is_refused() {
        let v2_text = edited(ORDER_TO_CASH, &[]);
        let defs = deploy(&[ORDER_TO_CASH, &v2_text]);
        let (v1, v2) = (&defs[0], &defs[1]);
        let pending = Run::new(v1);
        let mut failed = Run::new(v1);
        failed.drive(v1, &scripts()[2]);
        assert_eq!(failed.inst.status, Status::Failed);
        for inst in [&pending.inst, &failed.inst] {
            let refused = migrate(v1, v2, inst, &no_map()).expect_err("not active");
            assert_eq!(whats(&refused), ["instance"]);
            assert!(refused[0].why.contains(inst.status.as_str()));
        }
    }

    // (f)
    #[test]
    fn the_wrong_source_or_target_version_is_refused() {
        let v2_text = edited(ORDER_TO_CASH, &[]);
        let v3_text = v2_text.replacen("\nversion: 2\n", "\nversion: 3\n", 1);
        let other = ORDER_TO_CASH.replacen("process: order-to-cash", "process: quote", 1);
        let edited_v1 = ORDER_TO_CASH.replacen("timeout: 30s", "timeout: 40s", 1);
        let defs = deploy(&[ORDER_TO_CASH, &v2_text, &v3_text, &other]);
        let (v1, v2, v3, quote) = (&defs[0], &defs[1], &defs[2], &defs[3]);
        let mut run = Run::new(v1);
        run.drive(v1, &[placed(120)]);

        let refused = migrate(v2, v3, &run.inst, &no_map()).expect_err("runs v1");
        assert_eq!(whats(&refused), ["instance"]);
        assert!(refused[0].why.contains("version 1"), "{}", refused[0]);

        let refused = migrate(v1, v1, &run.inst, &no_map()).expect_err("same version");
        assert_eq!(whats(&refused), ["target"]);

        let refused = migrate(v1, quote, &run.inst, &no_map()).expect_err("other process");
        assert_eq!(whats(&refused), ["target"]);

        // Version 1 again, with other content than the instance ran.
        let mut reg = Registry::default();
        let changed = reg
            .deploy(
                dsl::parse("v1.yaml", &edited_v1).expect("valid"),
                &edited_v1,
            )
            .expect("deployed");
        let refused = migrate(&changed, v2, &run.inst, &no_map()).expect_err("other content");
        assert_eq!(whats(&refused), ["instance"]);
        assert!(refused[0].why.contains("content"), "{}", refused[0]);
    }

    const RESERVE_COMPENSATION: &str = "    compensate:\n      topic: erp.commands\n      type: com.acme.inventory.release\n      data: { order: key, reservation: vars.reservation }\n";

    // (g)
    #[test]
    fn a_completed_task_whose_compensation_disappeared_is_refused() {
        let v2_text = edited(
            ORDER_TO_CASH,
            &[(RESERVE_COMPENSATION, "    compensate: none\n")],
        );
        let defs = deploy(&[ORDER_TO_CASH, &v2_text]);
        let (v1, v2) = (&defs[0], &defs[1]);
        let mut run = Run::new(v1);
        run.drive(v1, &[placed(120)]);
        // Still at `reserve`: nothing is lost.
        let moved = migrate(v1, v2, &run.inst, &no_map()).expect("not completed yet");
        assert!(moved.completed.is_empty());

        run.drive(v1, &[reserved()]);
        let refused = migrate(v1, v2, &run.inst, &no_map()).expect_err("would lose the release");
        assert_eq!(whats(&refused), ["step `reserve`"]);
        assert!(
            refused[0].why.contains("com.acme.inventory.release"),
            "{}",
            refused[0]
        );
    }

    // (h)
    #[test]
    fn every_misfit_is_listed() {
        let v2_text = edited(
            &renamed(),
            &[
                (RESERVE_COMPENSATION, "    compensate: none\n"),
                (
                    "  address: event.data.address\n",
                    "  address: event.data.address\n  currency: event.data.currency\n",
                ),
            ],
        );
        let defs = deploy(&[ORDER_TO_CASH, &v2_text]);
        let (v1, v2) = (&defs[0], &defs[1]);
        let mut run = Run::new(v1);
        run.drive(v1, &[placed(120), reserved()]);
        let refused = migrate(v1, v2, &run.inst, &no_map()).expect_err("three problems");
        assert_eq!(
            whats(&refused),
            ["step `charge`", "step `reserve`", "variable `currency`"]
        );
        // Each misfit reads as one line.
        for m in &refused {
            let line = m.to_string();
            assert!(line.starts_with(&m.what) && !line.contains('\n'), "{line}");
        }

        // The variable, once the instance holds it, is no misfit any more.
        run.inst.vars.insert("currency".into(), json!("EUR"));
        let refused =
            migrate(v1, v2, &run.inst, &map(&[("charge", "payment")])).expect_err("one problem");
        assert_eq!(whats(&refused), ["step `reserve`"]);
    }

    #[test]
    fn an_armed_watchdog_follows_its_counterpart_and_is_refused_without_one() {
        // v2 watches one more event first: the SLA moves to index 1.
        let more = edited(
            ORDER_TO_CASH,
            &[(
                "expect:\n",
                "expect:\n  - after: invoice\n    on: com.acme.invoice.paid\n    within: 30d\n    otherwise: { then: incident }\n",
            )],
        );
        let start = ORDER_TO_CASH.find("\nexpect:\n").expect("expect");
        let none = edited(ORDER_TO_CASH, &[(&ORDER_TO_CASH[start..], "\n")]);
        let defs = deploy(&[ORDER_TO_CASH, &more, &none]);
        let (v1, v2, bare) = (&defs[0], &defs[1], &defs[2]);
        let mut run = Run::new(v1);
        run.drive(
            v1,
            &[
                placed(120),
                reserved(),
                charged(),
                ev("com.acme.shipment.created", json!({ "trackingId": "t" })),
            ],
        );
        let due = run.inst.expects[0].due;

        let refused = migrate(v1, bare, &run.inst, &no_map()).expect_err("nothing watches");
        assert_eq!(whats(&refused), ["watchdog `expect[0]`"]);

        run.inst = migrate(v1, v2, &run.inst, &no_map()).expect("counterpart");
        assert_eq!(run.inst.expects[0].index, 1);
        assert_eq!(run.inst.expects[0].due, due);
        let t = run
            .inst
            .timers
            .iter()
            .find(|t| watchdog(&t.kind))
            .expect("expect timer");
        assert_eq!((t.id.as_str(), t.kind), ("expect[1]", TimerKind::Expect(1)));

        // The delivery meets it under v2: its timer is cancelled by the id
        // the engine builds from the new index.
        let fx = run.apply(v2, &ev("com.acme.shipment.delivered", json!({})));
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::CancelTimer(t) if t.id == "expect[1]")),
            "{fx:?}"
        );
        assert!(run.inst.expects.is_empty());
        assert!(!run.inst.timers.iter().any(|t| watchdog(&t.kind)));
        // The invoice ends the flow and arms v2's new watchdog.
        run.apply(
            v2,
            &ev("com.acme.invoice.created", json!({ "invoiceId": "i" })),
        );
        assert_eq!(run.inst.status, Status::Active);
        assert_eq!(run.inst.expects.len(), 1);
        assert_eq!(run.inst.expects[0].index, 0);

        // Not armed yet (before `ship`): any v2 will do.
        let mut early = Run::new(v1);
        early.drive(v1, &[placed(120)]);
        assert!(migrate(v1, bare, &early.inst, &no_map()).is_ok());
    }

    #[test]
    fn tokens_inside_a_parallel_move_with_it() {
        let same = edited(ONBOARDING, &[]);
        let third = edited(
            ONBOARDING,
            &[(
                "        - - id: erp-account\n",
                "        - - id: audit\n            command: { topic: t, type: audit, data: { lead: key } }\n        - - id: erp-account\n",
            )],
        );
        let moved_out = edited(
            ONBOARDING,
            &[
                (
                    "        - - id: crm-account\n",
                    "        - - id: crm-account-old\n",
                ),
                (
                    "  - id: welcome\n",
                    "  - id: crm-account\n    command: { topic: t, type: x, data: { lead: key } }\n    await: [ { on: com.acme.crm.account.created } ]\n  - id: welcome\n",
                ),
            ],
        );
        let defs = deploy(&[ONBOARDING, &same, &third, &moved_out]);
        let v1 = &defs[0];
        let mut run = Run::new(v1);
        run.drive(
            v1,
            &[
                In::Ev(
                    "com.acme.crm.lead.captured",
                    json!({ "leadId": "o-1", "company": "Acme", "email": "a@b", "requestedCredit": 5 }),
                ),
                In::Ev(
                    "com.acme.credit.approved",
                    json!({ "leadId": "o-1", "limit": 100 }),
                ),
                In::Ev(
                    "com.acme.crm.account.created",
                    json!({ "leadId": "o-1", "accountId": "c" }),
                ),
            ],
        );
        // The parallel joining, one branch done, `erp-account` awaiting.
        assert_eq!(run.inst.tokens.len(), 2);
        assert!(matches!(run.inst.tokens[0].phase, Phase::Joining(1)));

        let mut moved = migrate(v1, &defs[1], &run.inst, &no_map()).expect("same shape");
        let fx = engine::apply(
            &defs[1],
            &mut moved,
            &Input::Event(Event {
                id: "erp".into(),
                kind: "com.acme.erp.customer.created".into(),
                source: "test".into(),
                time: run.now + 1,
                data: json!({ "leadId": "o-1", "customerId": "e" }),
            }),
            run.now + 1,
        );
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Command(c) if c.kind == "com.acme.mail.send")),
            "the join completes under v2: {fx:?}"
        );
        assert_eq!(moved.status, Status::Completed);

        let refused = migrate(v1, &defs[2], &run.inst, &no_map()).expect_err("three branches");
        assert_eq!(whats(&refused), ["step `provision`"]);

        // Run `crm-account` again outside the parallel: a branch's token
        // cannot leave it.
        let mut at_crm = Run::new(v1);
        at_crm.drive(
            v1,
            &[
                In::Ev(
                    "com.acme.crm.lead.captured",
                    json!({ "leadId": "o-1", "company": "Acme", "email": "a@b", "requestedCredit": 5 }),
                ),
                In::Ev(
                    "com.acme.credit.approved",
                    json!({ "leadId": "o-1", "limit": 100 }),
                ),
            ],
        );
        let refused = migrate(v1, &defs[3], &at_crm.inst, &no_map()).expect_err("left the branch");
        assert_eq!(whats(&refused), ["step `crm-account`"]);
        assert!(
            refused[0].why.contains("outside any parallel"),
            "{}",
            refused[0]
        );
    }

    const CALLER: &str = "process: caller
version: 1
start: { on: go, key: event.data.id }
correlate: { \"x.*\": event.data.id }
steps:
  - id: kyc
    call: { process: kyc, key: \"key + '-kyc'\", vars: { customer: key } }
    await: [ { on: baton.process.completed } ]
  - id: hold
    wait: 10m
  - id: done
    await: [ { on: x.done } ]
";

    #[test]
    fn calls_and_waits_move_only_to_their_own_kind() {
        let other_callee = edited(CALLER, &[("process: kyc,", "process: kyc2,")]);
        let hold_task = edited(
            CALLER,
            &[("    wait: 10m\n", "    await: [ { on: x.held } ]\n")],
        );
        let same = edited(CALLER, &[]);
        let defs = deploy(&[CALLER, &other_callee, &hold_task, &same]);
        let v1 = &defs[0];
        let mut run = Run::new(v1);
        run.drive(v1, &[In::Ev("go", json!({ "id": "o-1" }))]);
        assert_eq!(run.inst.tokens[0].phase, Phase::Calling("o-1-kyc".into()));
        let refused = migrate(v1, &defs[1], &run.inst, &no_map()).expect_err("other callee");
        assert_eq!(whats(&refused), ["step `kyc`"]);
        assert!(refused[0].why.contains("`kyc2`"), "{}", refused[0]);

        let child_ended = Event::child_ended(
            "kyc",
            "o-1-kyc",
            Status::Completed,
            &Default::default(),
            run.now + 1,
        );
        run.now += 1;
        engine::apply(v1, &mut run.inst, &Input::Event(child_ended), run.now);
        assert_eq!(run.inst.tokens[0].phase, Phase::Waiting);
        let due = run.inst.timers[0].due;
        let refused = migrate(v1, &defs[2], &run.inst, &no_map()).expect_err("now a task");
        assert_eq!(whats(&refused), ["step `hold`"]);

        let v2 = &defs[3];
        run.inst = migrate(v1, v2, &run.inst, &no_map()).expect("same kinds");
        assert_eq!(run.inst.timers[0].due, due);
        run.apply(v2, &In::Fire(wait));
        assert_eq!(run.now, due);
        assert_eq!(
            run.inst.tokens[0].step,
            v2.step_named("done").expect("step")
        );
    }
}
