//! The transition function: one input in, new state and effects out.

use std::borrow::Cow;
use std::collections::BTreeSet;

use super::*;

/// Upper bound of transitions one input may cause. A flow that loops without
/// waiting hits it and is parked as an incident instead of spinning forever.
pub const TRANSITION_BUDGET: u32 = 10_000;

/// Advances `instance` by one input at time `now`.
pub fn step(
    def: &Definition,
    mut instance: Instance,
    input: &Input,
    now: Millis,
) -> (Instance, Vec<Effect>) {
    let effects = apply(def, &mut instance, input, now);
    (instance, effects)
}

/// [`step`] in place: the state is updated where it is.
pub fn apply(def: &Definition, instance: &mut Instance, input: &Input, now: Millis) -> Vec<Effect> {
    let mut m = Machine {
        def,
        inst: instance,
        now,
        // An event typically causes a handful of effects (entered, command,
        // timers, variables, audit): one allocation instead of growing. Six
        // (about 1 KB) is what glibc still serves from its per-thread cache;
        // a larger block takes its slow path.
        fx: Vec::with_capacity(6),
        moves: 0,
        changed: BTreeSet::new(),
    };
    let before = m.positions();
    let (accepted, cause) = match input {
        Input::Event(ev) => (
            m.event(ev),
            Cause::Event {
                id: ev.id.clone(),
                kind: ev.kind.clone(),
            },
        ),
        Input::Timer(id) => (m.timer(id), Cause::Timer(id.clone())),
        Input::Call { parent, vars } => (m.call(parent, vars), Cause::Call),
        Input::Operator(action) => (m.operator(action), Cause::Operator(describe(action))),
        Input::Refused { event, reason } => (
            m.refused(event, reason),
            Cause::Event {
                id: event.id.clone(),
                kind: event.kind.clone(),
            },
        ),
    };
    if accepted && !matches!(input, Input::Event(_)) {
        // A timer or an operator may have moved the flow to a step that
        // awaits an event already waiting in the buffer.
        m.drain_buffer();
    }
    if accepted {
        m.inst.updated_at = now;
        m.inst.transitions += u64::from(m.moves);
        if !m.changed.is_empty() {
            let names = std::mem::take(&mut m.changed)
                .into_iter()
                .map(Cow::into_owned)
                .collect();
            m.fx.push(Effect::VariablesChanged(names));
        }
        let after = m.positions();
        let audit = Audit {
            at: now,
            process: m.inst.process.clone(),
            version: m.inst.version,
            key: m.inst.key.clone(),
            cause,
            before,
            after,
            status: m.inst.status,
        };
        m.fx.push(Effect::Audit(audit));
    }
    m.fx
}

fn describe(action: &Action) -> String {
    match action {
        Action::Retry { incident } => format!("retry incident {}", opt(incident)),
        Action::Skip { incident } => format!("skip incident {}", opt(incident)),
        Action::Cancel { compensate, reason } => {
            format!("cancel (compensate: {compensate}): {reason}")
        }
        Action::SetVariable { name, .. } => format!("set variable {name}"),
        Action::Migrate { to, .. } => format!("migrate to version {to}"),
    }
}

fn opt(n: &Option<u32>) -> String {
    n.map_or_else(|| "(oldest)".to_string(), |n| n.to_string())
}

enum Move {
    Enter(StepIdx),
    Follow(StepIdx, Transition),
}

struct Machine<'a> {
    def: &'a Definition,
    inst: &'a mut Instance,
    now: Millis,
    fx: Vec<Effect>,
    moves: u32,
    /// Names of the variables this input set, borrowed where they come from
    /// the definition or the input (no copy until the effect is built).
    changed: BTreeSet<Cow<'a, str>>,
}

impl<'a> Machine<'a> {
    fn positions(&self) -> Vec<String> {
        self.inst
            .tokens
            .iter()
            .map(|t| self.def.steps[t.step].id.clone())
            .collect()
    }

    fn scope<'s>(&'s self, event: Option<&'s Event>, attempt: u32) -> Scope<'s> {
        Scope::new(event, &self.inst.vars, &self.inst.key, self.now, attempt)
    }

    fn reject(&mut self, event: &Event, reason: Rejection) {
        self.fx.push(Effect::Rejected {
            event: Box::new(event.clone()),
            reason,
        });
    }

    // ---- inputs ---------------------------------------------------------

    fn event(&mut self, ev: &Event) -> bool {
        // A known id is a repeat, whatever became of the instance since: a
        // service that answers twice after the instance ended is no problem.
        if self.inst.seen.iter().any(|s| s == &ev.id) {
            self.reject(ev, Rejection::Duplicate);
            return false;
        }
        if self.inst.status.is_ended() {
            self.reject(ev, Rejection::Ended(self.inst.status));
            return false;
        }
        if self.inst.seen.len() >= SEEN_WINDOW {
            self.inst.seen.pop_front();
        }
        self.inst.seen.push_back(ev.id.clone());
        self.expire_buffer();
        let is_start = self.def.start.on.matches(&ev.kind);
        if self.inst.status == Status::Pending {
            let wanted = is_start
                && match &self.def.start.when {
                    Some(w) => w.eval_bool(&self.scope(Some(ev), 0)).unwrap_or(false),
                    None => true,
                };
            if wanted {
                self.start(Some(ev), Vars::new());
                self.drain_buffer();
                return true;
            }
            return self.buffer(ev);
        }
        if self.deliver(ev) {
            self.drain_buffer();
            return true;
        }
        if is_start {
            self.reject(ev, Rejection::AlreadyStarted);
            return false;
        }
        self.buffer(ev)
    }

    fn call(&mut self, parent: &ParentRef, vars: &'a Vars) -> bool {
        if self.inst.status != Status::Pending {
            return false;
        }
        self.inst.parent = Some(parent.clone());
        self.start(None, vars.clone());
        self.drain_buffer();
        true
    }

    fn timer(&mut self, id: &str) -> bool {
        let Some(pos) = self.inst.timers.iter().position(|t| t.id == id) else {
            return false;
        };
        let timer = self.inst.timers.remove(pos);
        match timer.kind {
            TimerKind::Timeout(tid) => {
                let Some(tok) = self.inst.token(tid) else {
                    return false;
                };
                let s = tok.step;
                let StepKind::Task(task) = &self.def.steps[s].kind else {
                    return false;
                };
                match task.on_timeout {
                    Transition::Retry => self.retry(tid, "timed out"),
                    Transition::Incident => {
                        let reason = format!("step '{}' timed out", self.def.steps[s].id);
                        self.park(tid, reason);
                    }
                    t => {
                        self.cancel_token_timers(tid);
                        self.run(tid, Move::Follow(s, t));
                    }
                }
            }
            TimerKind::Backoff(tid) => {
                let Some(tok) = self.inst.token_mut(tid) else {
                    return false;
                };
                tok.attempt += 1;
                if let Some(m) = self.start_task(tid) {
                    self.run(tid, m);
                }
            }
            TimerKind::Wait(tid) => {
                let Some(tok) = self.inst.token(tid) else {
                    return false;
                };
                let s = tok.step;
                self.step_done(tid, s);
                self.run(tid, Move::Follow(s, Transition::Next));
            }
            TimerKind::Expect(i) => {
                self.inst.expects.retain(|e| e.index != i);
                self.escalate(i as usize);
            }
            TimerKind::Buffer => {
                self.expire_buffer();
                if self.inst.status == Status::Pending && self.inst.buffer.is_empty() {
                    self.fx.push(Effect::Discard);
                }
            }
        }
        self.maybe_complete();
        true
    }

    fn refused(&mut self, ev: &Event, reason: &str) -> bool {
        let known = self.inst.seen.iter().any(|s| s == &ev.id);
        if known || self.inst.status.is_ended() || self.inst.status == Status::Pending {
            return false;
        }
        if self.inst.seen.len() >= SEEN_WINDOW {
            self.inst.seen.pop_front();
        }
        self.inst.seen.push_back(ev.id.clone());
        self.incident(
            None,
            None,
            format!(
                "event {} ({}) could not be processed and went to the dead-letter topic: {reason}",
                ev.id, ev.kind
            ),
        );
        true
    }

    fn operator(&mut self, action: &'a Action) -> bool {
        if action.refusal(self.inst).is_some() {
            return false;
        }
        match action {
            Action::Retry { incident } | Action::Skip { incident } => {
                let pos = match incident {
                    Some(id) => self.inst.incidents.iter().position(|i| i.id == *id),
                    None if self.inst.incidents.is_empty() => None,
                    None => Some(0),
                };
                let Some(pos) = pos else {
                    return false;
                };
                let inc = self.inst.incidents.remove(pos);
                let retry = matches!(action, Action::Retry { .. });
                self.fx.push(Effect::IncidentResolved {
                    id: inc.id,
                    step: self.step_name(inc.step),
                    resolution: if retry { "retried" } else { "skipped" }.to_string(),
                });
                if let (Some(tid), Some(s)) = (inc.token, inc.step) {
                    if retry {
                        match &self.def.steps[s].kind {
                            StepKind::Task(_)
                                if self.inst.token(tid).is_some_and(|t| t.visit > 0) =>
                            {
                                if let Some(tok) = self.inst.token_mut(tid) {
                                    tok.attempt += 1;
                                }
                                if let Some(m) = self.start_task(tid) {
                                    self.run(tid, m);
                                }
                            }
                            _ => self.run(tid, Move::Enter(s)),
                        }
                    } else {
                        self.run(tid, Move::Follow(s, Transition::Next));
                    }
                }
                self.maybe_complete();
                true
            }
            Action::Cancel { compensate, .. } => {
                if *compensate {
                    self.compensate();
                }
                self.finish(Status::Cancelled);
                true
            }
            Action::SetVariable { name, value } => {
                self.inst.vars.insert(name.clone(), value.clone());
                self.changed.insert(Cow::Borrowed(name));
                true
            }
            // Needs the target version: the shard migrates, not the engine.
            Action::Migrate { .. } => false,
        }
    }

    fn step_name(&self, s: Option<StepIdx>) -> String {
        s.map_or_else(|| "(process)".to_string(), |s| self.def.steps[s].id.clone())
    }

    // ---- starting and delivering ----------------------------------------

    fn start(&mut self, ev: Option<&Event>, initial: Vars) {
        self.inst.status = Status::Active;
        self.inst.started_at = self.now;
        let mut errors = Vec::new();
        // `vars:` read the start event; an instance started by a call has none
        // and gets its variables from the caller instead.
        let from_event = if ev.is_some() {
            &self.def.vars[..]
        } else {
            &[]
        };
        for a in from_event {
            let value = a.expr.eval(&self.scope(ev, 0));
            match value {
                Ok(v) => {
                    self.inst.vars.insert(a.name.clone(), v);
                }
                Err(e) => errors.push(format!("vars.{}: {e}", a.name)),
            }
        }
        for (k, v) in initial {
            self.inst.vars.insert(k, v);
        }
        // Every variable counts as set; most are named by the definition,
        // whose names can be borrowed.
        let def = self.def;
        for k in self.inst.vars.keys() {
            let name = match def.vars.iter().find(|a| a.name == *k) {
                Some(a) => Cow::Borrowed(a.name.as_str()),
                None => Cow::Owned(k.clone()),
            };
            self.changed.insert(name);
        }
        for (i, e) in self.def.expect.iter().enumerate() {
            if e.after.is_none() {
                self.arm(i);
            }
        }
        let Some(entry) = self.def.entry else {
            self.inst.flow_done = true;
            self.maybe_complete();
            return;
        };
        let tid = self.new_token(entry, None);
        if errors.is_empty() {
            self.run(tid, Move::Enter(entry));
        } else {
            if let Some(t) = self.inst.token_mut(tid) {
                t.attempt = 1;
            }
            self.park(tid, errors.join("; "));
        }
    }

    /// Offers an event to awaiting tokens, watchdogs and observers; true if any used it.
    fn deliver(&mut self, ev: &Event) -> bool {
        let mut used = false;
        // Tokens in order, by index: nothing changes them until one takes
        // the event, and then the loop ends.
        let mut next = 0;
        while let Some(t) = self.inst.tokens.get(next) {
            next += 1;
            if !matches!(t.phase, Phase::Awaiting | Phase::Calling(_)) {
                continue;
            }
            let tid = t.id;
            match self.match_outcome(tid, ev) {
                Ok(Some(oi)) => {
                    self.take_outcome(tid, oi, ev);
                    used = true;
                    break;
                }
                Ok(None) => {}
                Err(reason) => {
                    self.park(tid, reason);
                    used = true;
                    break;
                }
            }
        }
        // An expected event that comes before its watchdog is armed (the
        // shipment delivered before the step the SLA runs after completed)
        // meets it in advance: it will not arm.
        for (i, e) in self.def.expect.iter().enumerate() {
            let i = i as u32;
            if self.inst.expects.iter().any(|a| a.index == i)
                || self.inst.met_expects.contains(&i)
                || !e.on.matches(&ev.kind)
            {
                continue;
            }
            let hit = match &e.when {
                Some(w) => w.eval_bool(&self.scope(Some(ev), 0)).unwrap_or(false),
                None => true,
            };
            if hit {
                self.inst.met_expects.push(i);
            }
        }
        let armed: Vec<u32> = self.inst.expects.iter().map(|e| e.index).collect();
        for i in armed {
            let e = &self.def.expect[i as usize];
            if !e.on.matches(&ev.kind) {
                continue;
            }
            let hit = match &e.when {
                Some(w) => w.eval_bool(&self.scope(Some(ev), 0)),
                None => Ok(true),
            };
            match hit {
                Ok(true) => {
                    self.inst.expects.retain(|a| a.index != i);
                    self.cancel_timer(&expect_timer_id(i));
                    used = true;
                }
                Ok(false) => {}
                Err(err) => {
                    self.incident(None, None, format!("expect[{i}].when: {err}"));
                    used = true;
                }
            }
        }
        for (i, o) in self.def.observe.iter().enumerate() {
            if !o.on.matches(&ev.kind) {
                continue;
            }
            let scope = self.scope(Some(ev), 0);
            let hit = match &o.when {
                Some(w) => w.eval_bool(&scope).map_err(|e| e.to_string()),
                None => Ok(true),
            };
            let result = hit.and_then(|hit| {
                if !hit {
                    return Ok(None);
                }
                eval_assigns(&o.set, &scope).map(Some)
            });
            // The scope borrows the variables that `store` changes.
            drop(scope);
            match result {
                Ok(Some(values)) => {
                    self.store(values);
                    used = true;
                }
                Ok(None) => {}
                Err(err) => {
                    self.incident(None, None, format!("observe[{i}]: {err}"));
                    used = true;
                }
            }
        }
        if used {
            self.maybe_complete();
        }
        used
    }

    fn match_outcome(&self, tid: u32, ev: &Event) -> Result<Option<usize>, String> {
        let Some(tok) = self.inst.token(tid) else {
            return Ok(None);
        };
        let StepKind::Task(task) = &self.def.steps[tok.step].kind else {
            return Ok(None);
        };
        if let Phase::Calling(child) = &tok.phase {
            let from_child = ev.kind.starts_with(CHILD_ENDED_PREFIX)
                && ev.data.get("key").and_then(|k| k.as_str()) == Some(child.as_str())
                && task.call.as_ref().map(|c| c.process.as_str())
                    == ev.data.get("process").and_then(|p| p.as_str());
            if !from_child {
                return Ok(None);
            }
        }
        let scope = self.scope(Some(ev), tok.attempt);
        for (i, o) in task.outcomes.iter().enumerate() {
            if !o.on.matches(&ev.kind) {
                continue;
            }
            let hit = match &o.when {
                Some(w) => w.eval_bool(&scope).map_err(|e| {
                    format!(
                        "step '{}' await[{i}].when: {e}",
                        self.def.steps[tok.step].id
                    )
                })?,
                None => true,
            };
            if hit {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn take_outcome(&mut self, tid: u32, oi: usize, ev: &Event) {
        let Some(tok) = self.inst.token(tid) else {
            return;
        };
        let (s, attempt) = (tok.step, tok.attempt);
        let StepKind::Task(task) = &self.def.steps[s].kind else {
            return;
        };
        let outcome = &task.outcomes[oi];
        self.cancel_token_timers(tid);
        let values = eval_assigns(&outcome.set, &self.scope(Some(ev), attempt));
        match values {
            Ok(values) => self.store(values),
            Err(e) => {
                let reason = format!("step '{}' await[{oi}].set: {e}", self.def.steps[s].id);
                self.park(tid, reason);
                return;
            }
        }
        match outcome.then {
            Transition::Retry => self.retry(tid, &format!("outcome {}", ev.kind)),
            Transition::Incident => {
                let reason = format!("step '{}' got {}", self.def.steps[s].id, ev.kind);
                self.park(tid, reason);
            }
            Transition::Fail | Transition::Cancel => self.run(tid, Move::Follow(s, outcome.then)),
            t => {
                self.step_done(tid, s);
                self.run(tid, Move::Follow(s, t));
            }
        }
    }

    // ---- running the flow -------------------------------------------------

    fn new_token(&mut self, step: StepIdx, parent: Option<u32>) -> u32 {
        let id = self.inst.next_token;
        self.inst.next_token += 1;
        self.inst.tokens.push(Token {
            id,
            step,
            attempt: 0,
            visit: 0,
            phase: Phase::Awaiting,
            parent,
        });
        id
    }

    fn run(&mut self, tid: u32, mut mv: Move) {
        loop {
            if self.inst.status.is_ended() || self.inst.token(tid).is_none() {
                return;
            }
            self.moves += 1;
            if self.moves > TRANSITION_BUDGET {
                let reason = format!(
                    "more than {TRANSITION_BUDGET} transitions for one input: the flow loops without waiting"
                );
                self.park(tid, reason);
                return;
            }
            let next = match mv {
                Move::Enter(s) => self.enter(tid, s),
                Move::Follow(s, t) => self.follow(tid, s, t),
            };
            match next {
                Some(m) => mv = m,
                None => return,
            }
        }
    }

    fn enter(&mut self, tid: u32, s: StepIdx) -> Option<Move> {
        let visit = {
            let v = self.inst.visits.entry(s).or_insert(0);
            *v += 1;
            *v
        };
        let tok = self.inst.token_mut(tid)?;
        tok.step = s;
        tok.visit = visit;
        tok.attempt = 1;
        tok.phase = Phase::Awaiting;
        self.fx.push(Effect::Entered(s));
        let def = self.def;
        match &def.steps[s].kind {
            StepKind::Task(_) => self.start_task(tid),
            StepKind::Switch { cases, default } => {
                for (i, c) in cases.iter().enumerate() {
                    let hit = c.when.eval_bool(&self.scope(None, 1));
                    match hit {
                        Ok(true) => return Some(Move::Follow(s, c.then)),
                        Ok(false) => {}
                        Err(e) => {
                            let reason =
                                format!("step '{}' switch[{i}].when: {e}", def.steps[s].id);
                            self.park(tid, reason);
                            return None;
                        }
                    }
                }
                Some(Move::Follow(s, *default))
            }
            StepKind::Set(assigns) => {
                let values = eval_assigns(assigns, &self.scope(None, 1));
                match values {
                    Ok(values) => {
                        self.store(values);
                        self.step_done(tid, s);
                        Some(Move::Follow(s, Transition::Next))
                    }
                    Err(e) => {
                        self.park(tid, format!("step '{}' set: {e}", def.steps[s].id));
                        None
                    }
                }
            }
            StepKind::Wait(w) => {
                let due = match w {
                    Wait::For(d) => Ok(self.now.saturating_add(*d)),
                    Wait::Until(e) => e.eval_time(&self.scope(None, 1)),
                };
                match due {
                    Ok(due) if due <= self.now => {
                        self.step_done(tid, s);
                        Some(Move::Follow(s, Transition::Next))
                    }
                    Ok(due) => {
                        if let Some(t) = self.inst.token_mut(tid) {
                            t.phase = Phase::Waiting;
                        }
                        let id = token_timer_id(&def.steps[s].id, tid, "wait", visit, None);
                        self.schedule(id, due, TimerKind::Wait(tid));
                        None
                    }
                    Err(e) => {
                        self.park(tid, format!("step '{}' wait: {e}", def.steps[s].id));
                        None
                    }
                }
            }
            StepKind::Parallel { branches, .. } => {
                if let Some(t) = self.inst.token_mut(tid) {
                    t.phase = Phase::Joining(0);
                }
                if branches.is_empty() {
                    return Some(Move::Follow(s, Transition::Next));
                }
                for &b in branches {
                    let still_joining = matches!(
                        self.inst.token(tid).map(|t| &t.phase),
                        Some(Phase::Joining(_))
                    );
                    if !still_joining || self.inst.status.is_ended() {
                        break;
                    }
                    let child = self.new_token(b, Some(tid));
                    self.run(child, Move::Enter(b));
                }
                None
            }
            StepKind::End(status) => {
                self.end_flow(*status);
                None
            }
        }
    }

    fn follow(&mut self, tid: u32, s: StepIdx, t: Transition) -> Option<Move> {
        match t {
            Transition::Next if self.def.steps[s].then != Transition::Next => {
                self.follow(tid, s, self.def.steps[s].then)
            }
            Transition::Next => match self.def.steps[s].next {
                Some(n) => Some(Move::Enter(n)),
                None => {
                    self.end_of_list(tid, s);
                    None
                }
            },
            Transition::Goto(g) => Some(Move::Enter(g)),
            Transition::Complete => {
                self.end_flow(EndStatus::Completed);
                None
            }
            Transition::Fail => {
                self.end_flow(EndStatus::Failed);
                None
            }
            Transition::Cancel => {
                self.end_flow(EndStatus::Cancelled);
                None
            }
            Transition::Retry => {
                self.retry(tid, "retry requested");
                None
            }
            Transition::Incident => {
                let reason = format!("step '{}' raised an incident", self.def.steps[s].id);
                self.park(tid, reason);
                None
            }
        }
    }

    /// A token ran off the end of its list: a branch is done, or the flow is.
    fn end_of_list(&mut self, tid: u32, s: StepIdx) {
        let Some(pos) = self.inst.tokens.iter().position(|t| t.id == tid) else {
            return;
        };
        let tok = self.inst.tokens.remove(pos);
        match (self.def.steps[s].branch, tok.parent) {
            (Some((par, _)), Some(ptid)) => {
                let StepKind::Parallel { branches, join } = &self.def.steps[par].kind else {
                    return;
                };
                let needed = join.needed(branches.len()) as u32;
                let Some(parent) = self.inst.token_mut(ptid) else {
                    return;
                };
                let Phase::Joining(done) = parent.phase else {
                    return;
                };
                parent.phase = Phase::Joining(done + 1);
                if done + 1 >= needed {
                    self.cancel_descendants(ptid);
                    self.step_done(ptid, par);
                    self.run(ptid, Move::Follow(par, Transition::Next));
                }
            }
            _ => {
                self.inst.flow_done = true;
                self.maybe_complete();
            }
        }
    }

    /// Emits a task's command (or starts its call) and starts awaiting; a task
    /// that awaits nothing is done at once and says where to go.
    fn start_task(&mut self, tid: u32) -> Option<Move> {
        let tok = self.inst.token(tid)?;
        let (s, attempt, visit) = (tok.step, tok.attempt, tok.visit);
        let def = self.def;
        let step = &def.steps[s];
        let StepKind::Task(task) = &step.kind else {
            return None;
        };
        // Everything the task evaluates, first: the scope borrows the
        // instance, which the rest changes. A failed command payload stops
        // there, so the call is not evaluated then.
        let scope = self.scope(None, attempt);
        let data = task.command.as_ref().map(|tpl| tpl.data.build(&scope));
        let called = match (&data, &task.call) {
            (Some(Err(_)), _) | (_, None) => None,
            (_, Some(call)) => Some((
                call.key.eval_key(&scope).map_err(|e| e.to_string()),
                eval_assigns(&call.vars, &scope),
            )),
        };
        drop(scope);
        let mut command = None;
        if let (Some(tpl), Some(data)) = (&task.command, data) {
            match data {
                Ok(data) => {
                    command = Some(Command {
                        id: command_id(
                            &self.inst.process,
                            &self.inst.key,
                            &step.id,
                            visit,
                            attempt,
                        ),
                        topic: tpl.topic.clone(),
                        kind: tpl.kind.clone(),
                        key: self.inst.key.clone(),
                        data,
                        step: step.id.clone(),
                        attempt,
                        purpose: if task.manual {
                            Purpose::Manual
                        } else {
                            Purpose::Task
                        },
                    })
                }
                Err(e) => {
                    self.park(tid, format!("step '{}' command.data: {e}", step.id));
                    return None;
                }
            }
        }
        let mut phase = Phase::Awaiting;
        let mut start = None;
        if let (Some(call), Some((key, vars))) = (&task.call, called) {
            match (key, vars) {
                (Ok(key), Ok(vars)) => {
                    phase = Phase::Calling(key.clone());
                    start = Some(Effect::StartProcess {
                        process: call.process.clone(),
                        key,
                        vars: vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                        parent: ParentRef {
                            process: self.inst.process.clone(),
                            key: self.inst.key.clone(),
                            version: self.inst.version,
                        },
                    });
                }
                (Err(e), _) | (_, Err(e)) => {
                    self.park(tid, format!("step '{}' call: {e}", step.id));
                    return None;
                }
            }
        }
        if let Some(c) = command {
            self.fx.push(Effect::Command(c));
        }
        if let Some(st) = start {
            self.fx.push(st);
        }
        if task.outcomes.is_empty() && task.call.is_none() {
            self.step_done(tid, s);
            return Some(Move::Follow(s, Transition::Next));
        }
        if let Some(t) = self.inst.token_mut(tid) {
            t.phase = phase;
        }
        if let Some(timeout) = task.timeout {
            let id = token_timer_id(&step.id, tid, "timeout", visit, Some(attempt));
            self.schedule(
                id,
                self.now.saturating_add(timeout),
                TimerKind::Timeout(tid),
            );
        }
        None
    }

    fn retry(&mut self, tid: u32, why: &str) {
        let Some(tok) = self.inst.token(tid) else {
            return;
        };
        let (s, attempt, visit) = (tok.step, tok.attempt, tok.visit);
        let def = self.def;
        let StepKind::Task(task) = &def.steps[s].kind else {
            return;
        };
        self.cancel_token_timers(tid);
        match task.retry {
            Some(r) if attempt < r.attempts => {
                if let Some(t) = self.inst.token_mut(tid) {
                    t.phase = Phase::Backoff;
                }
                let id = token_timer_id(&def.steps[s].id, tid, "backoff", visit, Some(attempt + 1));
                let due = self.now.saturating_add(r.delay(attempt + 1));
                self.schedule(id, due, TimerKind::Backoff(tid));
            }
            _ => match task.on_exhausted {
                Transition::Retry | Transition::Incident => {
                    let reason = format!(
                        "step '{}' {why} after {attempt} attempt{}",
                        def.steps[s].id,
                        if attempt == 1 { "" } else { "s" }
                    );
                    self.park(tid, reason);
                }
                t => self.run(tid, Move::Follow(s, t)),
            },
        }
    }

    fn step_done(&mut self, tid: u32, s: StepIdx) {
        if let StepKind::Task(_) = self.def.steps[s].kind
            && let Some(tok) = self.inst.token(tid)
        {
            let c = Completion {
                step: s,
                attempt: tok.attempt,
                visit: tok.visit,
            };
            self.inst.completed.push(c);
        }
        for (i, e) in self.def.expect.iter().enumerate() {
            if e.after == Some(s) {
                self.arm(i);
            }
        }
    }

    // ---- watchdogs --------------------------------------------------------

    fn arm(&mut self, i: usize) {
        if self.inst.expects.iter().any(|e| e.index as usize == i)
            || self.inst.met_expects.contains(&(i as u32))
        {
            return;
        }
        let due = self.now.saturating_add(self.def.expect[i].within);
        self.inst.expects.push(ArmedExpect {
            index: i as u32,
            due,
        });
        self.schedule(expect_timer_id(i as u32), due, TimerKind::Expect(i as u32));
    }

    fn escalate(&mut self, i: usize) {
        let def = self.def;
        let e = &def.expect[i];
        if let Some(tpl) = &e.command {
            let data = tpl.data.build(&self.scope(None, 0));
            match data {
                Ok(data) => {
                    let c = Command {
                        id: format!("{}/{}/expect[{i}]", self.inst.process, self.inst.key),
                        topic: tpl.topic.clone(),
                        kind: tpl.kind.clone(),
                        key: self.inst.key.clone(),
                        data,
                        step: format!("expect[{i}]"),
                        attempt: 1,
                        purpose: Purpose::Escalation,
                    };
                    self.fx.push(Effect::Command(c));
                }
                Err(err) => {
                    self.incident(None, None, format!("expect[{i}].otherwise.command: {err}"));
                }
            }
        }
        match e.then {
            Transition::Next | Transition::Retry => {}
            Transition::Incident => {
                let within = humantime::format_duration(std::time::Duration::from_millis(e.within));
                let reason = format!(
                    "expected {} within {within} after {}, it did not come",
                    e.on.as_str(),
                    self.step_name(e.after)
                );
                self.incident(None, None, reason);
            }
            Transition::Goto(g) => {
                let all: Vec<u32> = self.inst.tokens.iter().map(|t| t.id).collect();
                for tid in all {
                    self.drop_token(tid);
                }
                self.inst.flow_done = false;
                let tid = self.new_token(g, None);
                self.run(tid, Move::Enter(g));
            }
            Transition::Complete => self.end_flow(EndStatus::Completed),
            Transition::Fail => self.end_flow(EndStatus::Failed),
            Transition::Cancel => self.end_flow(EndStatus::Cancelled),
        }
    }

    // ---- incidents and ends -----------------------------------------------

    fn park(&mut self, tid: u32, reason: String) {
        self.cancel_token_timers(tid);
        let step = self.inst.token(tid).map(|t| t.step);
        let id = self.incident(Some(tid), step, reason);
        if let Some(t) = self.inst.token_mut(tid) {
            t.phase = Phase::Parked(id);
        }
    }

    fn incident(&mut self, token: Option<u32>, step: Option<StepIdx>, reason: String) -> u32 {
        let id = self.inst.next_incident;
        self.inst.next_incident += 1;
        self.fx.push(Effect::IncidentRaised {
            id,
            step: self.step_name(step),
            reason: reason.clone(),
        });
        self.inst.incidents.push(Incident {
            id,
            token,
            step,
            reason,
            at: self.now,
        });
        id
    }

    fn end_flow(&mut self, status: EndStatus) {
        match status {
            EndStatus::Completed => {
                let all: Vec<u32> = self.inst.tokens.iter().map(|t| t.id).collect();
                for tid in all {
                    self.drop_token(tid);
                }
                self.inst.flow_done = true;
                self.maybe_complete();
            }
            EndStatus::Failed => {
                self.compensate();
                self.finish(Status::Failed);
            }
            EndStatus::Cancelled => self.finish(Status::Cancelled),
        }
    }

    /// Emits the compensation of every completed task, newest first.
    fn compensate(&mut self) {
        let def = self.def;
        // `completed` stays as history; an ended instance compensates no more.
        let done = self.inst.completed.clone();
        for c in done.iter().rev() {
            let step = &def.steps[c.step];
            let StepKind::Task(task) = &step.kind else {
                continue;
            };
            let Some(tpl) = &task.compensate else {
                continue;
            };
            let data = tpl.data.build(&self.scope(None, c.attempt));
            match data {
                Ok(data) => {
                    let id = command_id(
                        &self.inst.process,
                        &self.inst.key,
                        &step.id,
                        c.visit,
                        c.attempt,
                    );
                    self.inst.compensated = true;
                    self.fx.push(Effect::Command(Command {
                        id: format!("{id}/compensate"),
                        topic: tpl.topic.clone(),
                        kind: tpl.kind.clone(),
                        key: self.inst.key.clone(),
                        data,
                        step: step.id.clone(),
                        attempt: c.attempt,
                        purpose: Purpose::Compensation,
                    }));
                }
                Err(e) => {
                    let reason = format!("step '{}' compensate.data: {e}", step.id);
                    self.incident(None, Some(c.step), reason);
                }
            }
        }
    }

    fn finish(&mut self, status: Status) {
        for t in std::mem::take(&mut self.inst.timers) {
            self.fx.push(Effect::CancelTimer(t));
        }
        self.inst.tokens.clear();
        self.inst.expects.clear();
        for b in std::mem::take(&mut self.inst.buffer) {
            self.reject(&b.event, Rejection::Ended(status));
        }
        self.inst.status = status;
        self.fx.push(Effect::Ended {
            status,
            parent: self.inst.parent.clone(),
        });
    }

    fn maybe_complete(&mut self) {
        if self.inst.status == Status::Active
            && self.inst.flow_done
            && self.inst.tokens.is_empty()
            && self.inst.expects.is_empty()
            && self.inst.incidents.is_empty()
        {
            self.finish(Status::Completed);
        }
    }

    // ---- tokens and timers ------------------------------------------------

    fn drop_token(&mut self, tid: u32) {
        self.cancel_token_timers(tid);
        let open: Vec<Incident> = self
            .inst
            .incidents
            .iter()
            .filter(|i| i.token == Some(tid))
            .cloned()
            .collect();
        for inc in open {
            self.inst.incidents.retain(|i| i.id != inc.id);
            self.fx.push(Effect::IncidentResolved {
                id: inc.id,
                step: self.step_name(inc.step),
                resolution: "withdrawn".to_string(),
            });
        }
        self.inst.tokens.retain(|t| t.id != tid);
    }

    fn cancel_descendants(&mut self, root: u32) {
        let mut family = vec![root];
        let mut grew = true;
        while grew {
            grew = false;
            for t in &self.inst.tokens {
                if let Some(p) = t.parent
                    && family.contains(&p)
                    && !family.contains(&t.id)
                {
                    family.push(t.id);
                    grew = true;
                }
            }
        }
        for tid in family.into_iter().skip(1) {
            self.drop_token(tid);
        }
    }

    fn schedule(&mut self, id: String, due: Millis, kind: TimerKind) {
        let timer = Timer { id, due, kind };
        self.fx.push(Effect::ScheduleTimer(timer.clone()));
        self.inst.timers.push(timer);
    }

    fn cancel_timer(&mut self, id: &str) {
        if let Some(pos) = self.inst.timers.iter().position(|t| t.id == id) {
            let t = self.inst.timers.remove(pos);
            self.fx.push(Effect::CancelTimer(t));
        }
    }

    fn cancel_token_timers(&mut self, tid: u32) {
        let mine = |k: &TimerKind| matches!(k, TimerKind::Timeout(t) | TimerKind::Backoff(t) | TimerKind::Wait(t) if *t == tid);
        // In place, in order; timer ids are unique, so this removes what
        // cancelling each of them by id would.
        let mut i = 0;
        while let Some(t) = self.inst.timers.get(i) {
            if mine(&t.kind) {
                let t = self.inst.timers.remove(i);
                self.fx.push(Effect::CancelTimer(t));
            } else {
                i += 1;
            }
        }
    }

    // ---- buffer -------------------------------------------------------------

    fn buffer(&mut self, ev: &Event) -> bool {
        if self.inst.buffer.len() >= self.def.buffer.size {
            self.reject(ev, Rejection::BufferFull);
            return false;
        }
        self.inst.buffer.push(Buffered {
            event: ev.clone(),
            expires: self.now.saturating_add(self.def.buffer.ttl),
        });
        self.buffer_timer();
        true
    }

    fn expire_buffer(&mut self) {
        let now = self.now;
        let (gone, kept): (Vec<Buffered>, Vec<Buffered>) = std::mem::take(&mut self.inst.buffer)
            .into_iter()
            .partition(|b| b.expires <= now);
        self.inst.buffer = kept;
        for b in gone {
            self.reject(&b.event, Rejection::Expired);
        }
        self.buffer_timer();
    }

    /// Keeps exactly one buffer timer, due at the earliest expiry, while the buffer holds events.
    fn buffer_timer(&mut self) {
        let due = self.inst.buffer.iter().map(|b| b.expires).min();
        let current = self
            .inst
            .timers
            .iter()
            .find(|t| t.kind == TimerKind::Buffer)
            .map(|t| (t.id.clone(), t.due));
        match (due, current) {
            (Some(d), Some((_, c))) if d == c => {}
            (due, current) => {
                if let Some((id, _)) = current {
                    self.cancel_timer(&id);
                }
                if let Some(d) = due {
                    let id = join(&[Part::Str("buffer/"), Part::Num(d)]);
                    self.schedule(id, d, TimerKind::Buffer);
                }
            }
        }
    }

    /// Delivers buffered events the instance can now use, in arrival order.
    fn drain_buffer(&mut self) {
        loop {
            if self.inst.status != Status::Active {
                return;
            }
            let mut progressed = false;
            for i in 0..self.inst.buffer.len() {
                // Out of the buffer while it is offered: if it ends the
                // instance, it must not be rejected as left over.
                let b = self.inst.buffer.remove(i);
                if self.deliver(&b.event) {
                    progressed = true;
                    break;
                }
                self.inst.buffer.insert(i, b);
            }
            if !progressed {
                break;
            }
        }
        self.buffer_timer();
    }

    fn store(&mut self, values: Vec<(&'a str, serde_json::Value)>) {
        for (k, v) in values {
            self.changed.insert(Cow::Borrowed(k));
            // The key is copied only for a variable that is new.
            match self.inst.vars.get_mut(k) {
                Some(slot) => *slot = v,
                None => {
                    self.inst.vars.insert(k.to_string(), v);
                }
            }
        }
    }
}

fn expect_timer_id(i: u32) -> String {
    join(&[Part::Str("expect["), Part::Num(i.into()), Part::Str("]")])
}

/// `<process>/<key>/<step>/<attempt>`; a step entered again (a loop) adds `#<visit>`.
pub fn command_id(process: &str, key: &str, step: &str, visit: u32, attempt: u32) -> String {
    let (p, k, s, a) = (
        Part::Str(process),
        Part::Str(key),
        Part::Str(step),
        Part::Num(attempt.into()),
    );
    let slash = Part::Str("/");
    if visit <= 1 {
        join(&[p, slash, k, slash, s, slash, a])
    } else {
        let v = Part::Num(visit.into());
        join(&[p, slash, k, slash, s, Part::Str("#"), v, slash, a])
    }
}

/// `<step>/<token>/<what>/<visit>[.<attempt>]`: the id of a token's timer.
fn token_timer_id(step: &str, tid: u32, what: &str, visit: u32, attempt: Option<u32>) -> String {
    let slash = Part::Str("/");
    let mut parts = [
        Part::Str(step),
        slash,
        Part::Num(tid.into()),
        slash,
        Part::Str(what),
        slash,
        Part::Num(visit.into()),
        Part::Str(""),
        Part::Str(""),
    ];
    if let Some(a) = attempt {
        parts[7] = Part::Str(".");
        parts[8] = Part::Num(a.into());
    }
    join(&parts)
}

/// A piece of an id.
#[derive(Clone, Copy)]
enum Part<'s> {
    Str(&'s str),
    Num(u64),
}

/// Concatenates `parts` into a string allocated once at its final size.
/// Ids are made on every transition; `format!` costs several times more.
fn join(parts: &[Part<'_>]) -> String {
    let mut digits = [[0u8; 20]; 9];
    let mut texts: [&str; 9] = [""; 9];
    let mut len = 0;
    for ((part, text), buf) in parts.iter().zip(&mut texts).zip(&mut digits) {
        *text = match *part {
            Part::Str(s) => s,
            Part::Num(n) => decimal(n, buf),
        };
        len += text.len();
    }
    let mut out = String::with_capacity(len);
    for text in &texts[..parts.len().min(texts.len())] {
        out.push_str(text);
    }
    out
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[start..]).unwrap_or_default()
}

/// All the assignments' values, or the first error: a failed `set` sets nothing.
fn eval_assigns<'d>(
    assigns: &'d [Assign],
    scope: &Scope<'_>,
) -> Result<Vec<(&'d str, serde_json::Value)>, String> {
    assigns
        .iter()
        .map(|a| {
            a.expr
                .eval(scope)
                .map(|v| (a.name.as_str(), v))
                .map_err(|e| format!("{}: {e}", a.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The ids are part of the output (commands, timers, snapshots): built
    // without `format!`, they must read exactly as the format strings say.
    #[test]
    fn ids_read_as_their_format() {
        for (visit, attempt) in [(0, 1), (1, 1), (2, 3), (10, 4_000_000_000)] {
            let want = if visit <= 1 {
                format!("order-to-cash/o-1/reserve/{attempt}")
            } else {
                format!("order-to-cash/o-1/reserve#{visit}/{attempt}")
            };
            assert_eq!(
                command_id("order-to-cash", "o-1", "reserve", visit, attempt),
                want
            );
            assert_eq!(
                token_timer_id("charge", 7, "timeout", visit, Some(attempt)),
                format!("charge/7/timeout/{visit}.{attempt}")
            );
            assert_eq!(
                token_timer_id("wait", 12, "wait", visit, None),
                format!("wait/12/wait/{visit}")
            );
        }
        assert_eq!(expect_timer_id(0), "expect[0]");
        assert_eq!(
            join(&[Part::Str("buffer/"), Part::Num(u64::MAX)]),
            format!("buffer/{}", u64::MAX)
        );
    }
}
