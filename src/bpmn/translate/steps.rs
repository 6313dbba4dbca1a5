//! Pass 2 of the translation: each step written, with its outcomes,
//! timeout, retries, compensation and watchdogs, and where each of its
//! transitions leads; and the checks of baton's extension elements.

use std::collections::HashMap;

use super::{
    Dflt, KEYWORDS, Severity, Target, Tr, describe, is_step_id, list_or_none, one_line, short,
    trigger_word, what,
};
use crate::bpmn::feel;
use crate::bpmn::model::{Element, Ext, GatewayKind, Item, Kind, Scope, TaskKind, Timer, Trigger};
use crate::bpmn::timer;
use crate::bpmn::yaml::{
    Await, Body, Call, Case, Command, Compensate, Data, Expect, Jump, Observe, Retry, Step, Task,
};
use crate::engine::CHILD_ENDED_PREFIX;

impl<'a> Tr<'a> {
    pub(super) fn build(&mut self, list: usize) -> Vec<Step> {
        let ids = self.lists[list].steps.clone();
        let mut out = Vec::new();
        for id in ids {
            let Some(el) = self.els.get(id.as_str()).copied() else {
                continue;
            };
            out.push(self.step(el, list));
        }
        out
    }

    /// How a transition is written, seen from step `from` in `list`.
    fn jump(&mut self, from: &Element, list: usize, t: &Target, dflt: Dflt) -> Option<Jump> {
        let steps = &self.lists[list].steps;
        let pos = steps.iter().position(|s| *s == from.item.id);
        let next = pos.and_then(|p| steps.get(p + 1)).cloned();
        let last = next.is_none();
        let branch = self.lists[list].branch;
        let join = self.lists[list].join.clone();
        let note = |id: &Option<String>, els: &HashMap<&str, &Element>| {
            id.as_ref()
                .and_then(|i| els.get(i.as_str()))
                .map(|e| format!("→ {}", short(e)))
        };
        let (word, step, n) = match t {
            // Only outcomes and a step's own `then` leave the next step
            // unsaid; where a field names a step, it names it.
            Target::Step(s) if Some(s) == next.as_ref() && dflt == Dflt::Next => {
                ("next".to_string(), false, None)
            }
            Target::Step(s) => {
                if self.list_of.get(s) != Some(&list) {
                    let how = if branch {
                        "leaves its parallel branch"
                    } else {
                        "enters a parallel branch from outside"
                    };
                    self.error(
                        from,
                        format!(
                            "the flow to `{s}` {how}: baton's branches start at their parallel gateway and run off their last step into the join"
                        ),
                    );
                }
                (s.clone(), true, None)
            }
            Target::End(_) if last => ("next".to_string(), false, None),
            Target::End(e) if !branch => ("complete".to_string(), false, note(e, &self.els)),
            Target::Join(j) if branch && join.as_ref() == Some(j) && last => {
                let n = (dflt != Dflt::Next)
                    .then(|| format!("→ the end of the branch, into joining gateway `{j}`"));
                ("next".to_string(), false, n)
            }
            Target::Join(j) if branch && join.as_ref().is_some_and(|mine| mine != j) => {
                self.error(
                    from,
                    format!(
                        "the flow reaches joining gateway `{j}`, not the join of its own branch"
                    ),
                );
                ("incident".to_string(), false, None)
            }
            Target::End(_) | Target::Join(_) => {
                let message = if branch {
                    "a parallel branch ends only after its last step: the flow here ends the branch early (let the shorter path into the join leave from the branch's last step)"
                } else {
                    "the flow reaches a joining parallel gateway outside any parallel branch"
                };
                self.error(from, message);
                ("incident".to_string(), false, None)
            }
            Target::Complete(e) => (
                "complete".to_string(),
                false,
                note(&Some(e.clone()), &self.els),
            ),
            Target::Fail(e) => ("fail".to_string(), false, note(&Some(e.clone()), &self.els)),
            Target::Incident(e) => (
                "incident".to_string(),
                false,
                note(&Some(e.clone()), &self.els),
            ),
            Target::Retry => ("retry".to_string(), false, None),
            Target::Broken(e) => (
                "incident".to_string(),
                false,
                Some(format!(
                    "→ `{e}`, which is not translated (see the import's report)"
                )),
            ),
        };
        let default_word = match dflt {
            Dflt::Next => Some("next"),
            Dflt::Retry => Some("retry"),
            Dflt::Incident => Some("incident"),
            Dflt::Always => None,
        };
        if !step && Some(word.as_str()) == default_word && n.is_none() {
            return None;
        }
        Some(Jump {
            to: word,
            step,
            note: n,
        })
    }

    fn step(&mut self, el: &Element, list: usize) -> Step {
        let id = &el.item.id;
        if !is_step_id(id) {
            self.error(
                el,
                format!(
                    "`{id}` cannot be a step id (letters, digits, `-` and `_`, not a keyword): change the element's id"
                ),
            );
        }
        let mut note = vec![describe(el)];
        for (aid, text, _) in &self.process.scope.annotations {
            let linked = self
                .process
                .scope
                .associations
                .iter()
                .any(|(s, t)| (s == aid && t == id) || (t == aid && s == id));
            if linked && !text.is_empty() {
                note.push(format!("Note: {}", one_line(text)));
            }
        }
        let mut then = None;
        let body = match &el.kind {
            Kind::Gateway(GatewayKind::Exclusive) => {
                self.allowed(el, &["expect"]);
                self.switch(el, list)
            }
            Kind::Gateway(GatewayKind::Parallel) => {
                self.allowed(el, &["expect"]);
                let lists = self.branches.get(id).cloned().unwrap_or_default();
                let branches = lists.into_iter().map(|b| self.build(b)).collect();
                let after = self
                    .after_join
                    .get(id)
                    .cloned()
                    .unwrap_or(Target::End(None));
                then = self.jump(el, list, &after, Dflt::Next);
                Body::Parallel(branches)
            }
            Kind::Gateway(GatewayKind::EventBased) => {
                self.allowed(el, &["expect"]);
                Body::Task(Box::new(self.event_gateway(el, list)))
            }
            Kind::Catch(Trigger::Timer(timer)) => {
                self.allowed(el, &["expect"]);
                let normal = self.normal(el);
                then = self.jump(el, list, &normal, Dflt::Next);
                match timer {
                    Timer::Duration(d) => match timer::duration(d) {
                        Ok(d) => Body::WaitFor(d),
                        Err(why) => {
                            self.error(el, why);
                            Body::WaitFor("0s".into())
                        }
                    },
                    Timer::Date(d) => match timer::date(d) {
                        Ok(e) => Body::WaitUntil(e),
                        Err(why) => {
                            self.error(el, why);
                            Body::WaitFor("0s".into())
                        }
                    },
                    Timer::Cycle(_) => {
                        self.error(el, "timer cycles are not translated: a wait happens once");
                        Body::WaitFor("0s".into())
                    }
                    Timer::Missing => {
                        self.error(el, "the timer has no duration or date");
                        Body::WaitFor("0s".into())
                    }
                }
            }
            Kind::Task(TaskKind::Script)
            | Kind::Throw(Trigger::None)
            | Kind::Task(TaskKind::Plain)
                if !el.ext.baton.iter().any(|x| x.tag == "command") =>
            {
                self.allowed(el, &["set", "expect"]);
                let normal = self.normal(el);
                then = self.jump(el, list, &normal, Dflt::Next);
                Body::Set(self.set_step(el))
            }
            Kind::Catch(Trigger::Message(r)) => {
                self.allowed(el, &["await", "expect"]);
                let on = self.message_type(r.as_deref(), el);
                let (task, t) = self.task(el, list, None, false, None, on);
                then = t;
                Body::Task(Box::new(task))
            }
            Kind::Task(TaskKind::Receive) => {
                self.allowed(el, &["await", "expect"]);
                let on = match &el.message_ref {
                    Some(r) => self.message_type(Some(r), el),
                    None if el.ext.baton.iter().any(|x| x.attr("on").is_some()) => None,
                    None => {
                        self.error(
                            el,
                            "no message: choose the message the task waits for (its name is the CloudEvents type), or give baton:await on=\"...\"",
                        );
                        None
                    }
                };
                let (task, t) = self.task(el, list, None, false, None, on);
                then = t;
                Body::Task(Box::new(task))
            }
            Kind::Call(called) => {
                self.allowed(el, &["call", "await", "expect"]);
                let call = self.call(el, called.as_deref());
                let (task, t) = self.task(el, list, None, false, call, None);
                then = t;
                Body::Task(Box::new(task))
            }
            _ => {
                self.allowed(el, &["command", "await", "retry", "expect"]);
                let manual = matches!(el.kind, Kind::Task(TaskKind::User | TaskKind::Manual));
                let command = self.command(el);
                let (task, t) = self.task(el, list, command, manual, None, None);
                then = t;
                Body::Task(Box::new(task))
            }
        };
        self.expectations(el, Some(id.clone()));
        Step {
            id: id.clone(),
            note,
            description: el.documentation.clone(),
            body,
            then,
        }
    }

    /// A task: command (or call) out, outcomes in. `message` is the event a
    /// receive task or message catch event awaits.
    fn task(
        &mut self,
        el: &Element,
        list: usize,
        command: Option<Command>,
        manual: bool,
        call: Option<Call>,
        message: Option<String>,
    ) -> (Task, Option<Jump>) {
        let normal = match el.kind {
            Kind::End(_) => Target::End(Some(el.item.id.clone())),
            _ => self.normal(el),
        };
        let waits_by_nature = message.is_some();
        let mut task = Task {
            command,
            manual,
            ..Task::default()
        };
        // Outcomes taken along the normal flow.
        for x in el.ext.baton.iter().filter(|x| x.tag == "await") {
            self.shape(el, x, &["on", "when"], &[], &["set"]);
            let on = match (x.attr("on"), &message) {
                (Some(on), _) => on.to_string(),
                (None, Some(m)) => m.clone(),
                (None, None) => {
                    self.ext_error(
                        el,
                        x,
                        "needs on=\"<event type>\": the event that completes the task",
                    );
                    continue;
                }
            };
            let to = self.jump(el, list, &normal, Dflt::Next);
            let set = self.sets(el, x);
            task.awaits.push(Await {
                note: Vec::new(),
                on,
                when: x.attr("when").map(str::to_string),
                set,
                to,
            });
        }
        if task.awaits.is_empty()
            && let Some(m) = &message
        {
            let to = self.jump(el, list, &normal, Dflt::Next);
            task.awaits.push(Await {
                note: Vec::new(),
                on: m.clone(),
                when: None,
                set: Vec::new(),
                to,
            });
        }
        let normal_awaits = task.awaits.len();

        // Boundary events.
        let mut exhausted: Option<(Target, &Element)> = None;
        let mut compensation: Option<Compensate> = None;
        for b in self
            .boundaries
            .get(el.item.id.as_str())
            .cloned()
            .unwrap_or_default()
        {
            self.used.insert(b.item.id.clone());
            self.allowed(b, &["await"]);
            let Kind::Boundary(trigger) = &b.kind else {
                continue;
            };
            if !b.interrupting && !matches!(trigger, Trigger::Compensate) {
                self.error(
                    b,
                    "non-interrupting boundary events are not translated: an outcome of a baton task ends it (observe handlers take events on the side)",
                );
                continue;
            }
            match trigger {
                Trigger::Message(r) => {
                    let Some(on) = self.message_type(r.as_deref(), b) else {
                        continue;
                    };
                    let target = self.boundary_target(b, el);
                    let a = self.refine(b, on, &target, el, list);
                    task.awaits.push(a);
                }
                Trigger::Error(r) => {
                    let code = r.as_deref().and_then(|r| self.error_type(r, b));
                    let target = self.boundary_target(b, el);
                    match code {
                        Some(on) => {
                            let a = self.refine(b, on, &target, el, list);
                            task.awaits.push(a);
                        }
                        None if exhausted.is_some() => self.error(
                            b,
                            "a second error boundary event without an error code: one says where the flow goes when retries are exhausted",
                        ),
                        None => {
                            if target == Target::Retry {
                                self.error(b, "when retries are exhausted the flow cannot go back to the same task");
                            }
                            exhausted = Some((target, b));
                        }
                    }
                }
                Trigger::Timer(Timer::Duration(d)) => {
                    if task.timeout.is_some() {
                        self.error(b, "a second timer boundary event: a task has one timeout");
                        continue;
                    }
                    match timer::duration(d) {
                        Ok(d) => task.timeout = Some((vec![describe(b)], d)),
                        Err(why) => {
                            self.error(b, why);
                            continue;
                        }
                    }
                    let target = self.boundary_target(b, el);
                    task.on_timeout = self.jump(el, list, &target, Dflt::Retry);
                }
                Trigger::Timer(_) => self.error(
                    b,
                    "only a duration (timeDuration) times a task out; dates and cycles are not translated",
                ),
                Trigger::Compensate => {
                    compensation = Some(self.compensation(el, b));
                }
                other => self.error(
                    b,
                    format!("{} boundary events are not translated", trigger_word(other)),
                ),
            }
        }
        let boundary_outcomes = task.awaits.len() > normal_awaits || task.timeout.is_some();
        if boundary_outcomes && normal_awaits == 0 && call.is_none() {
            self.error(
                el,
                "it awaits events at its boundary but none for its normal completion: add baton:await on=\"<event type>\" (the event that completes it)",
            );
        }

        // Calls: completed goes on; failed and cancelled fail the caller,
        // or go where a catch-all error boundary event says.
        if let Some(c) = call {
            if task.awaits.is_empty()
                && let Some((target, b)) = exhausted.take()
            {
                let done = self.jump(el, list, &normal, Dflt::Next);
                let failed = self.jump(el, list, &target, Dflt::Always);
                task.awaits.push(Await {
                    note: Vec::new(),
                    on: format!("{CHILD_ENDED_PREFIX}completed"),
                    when: None,
                    set: Vec::new(),
                    to: done,
                });
                for status in ["failed", "cancelled"] {
                    task.awaits.push(Await {
                        note: vec![describe(b)],
                        on: format!("{CHILD_ENDED_PREFIX}{status}"),
                        when: None,
                        set: Vec::new(),
                        to: failed.clone(),
                    });
                }
            }
            task.call = Some(c);
        }
        if let Some((target, b)) = exhausted
            && let Some(mut j) = self.jump(el, list, &target, Dflt::Incident)
        {
            j.note = Some(match j.note {
                Some(n) => format!("{}; {n}", describe(b)),
                None => describe(b),
            });
            task.on_exhausted = Some(j);
        }

        // Retries.
        let retries: Vec<&Ext> = el.ext.baton.iter().filter(|x| x.tag == "retry").collect();
        if let Some(x) = retries.first() {
            self.shape(
                el,
                x,
                &["attempts", "backoff", "factor", "maxBackoff"],
                &["attempts"],
                &[],
            );
            task.retry = Some(Retry {
                attempts: x.attr("attempts").unwrap_or("1").to_string(),
                backoff: x.attr("backoff").map(str::to_string),
                factor: x.attr("factor").map(str::to_string),
                max_backoff: x.attr("maxBackoff").map(str::to_string),
            });
            if manual {
                self.ext_error(
                    el,
                    x,
                    "a user task is not retried: give it a timer boundary event to escalate",
                );
            }
        }
        if let Some(x) = retries.get(1) {
            self.ext_error(el, x, "give baton:retry once");
        }

        // Compensation.
        task.compensate = match compensation {
            Some(c) => c,
            None if self.saga && task.command.is_some() && !manual => Compensate::Nothing(vec![
                "No compensation boundary event in the model: nothing to undo.".into(),
            ]),
            None => Compensate::Unsaid,
        };

        // Fire and forget, or a call without outcomes of its own: the
        // step's own transition.
        let then = if task.awaits.is_empty() && (task.call.is_some() || !waits_by_nature) {
            self.jump(el, list, &normal, Dflt::Next)
        } else {
            None
        };
        (task, then)
    }

    /// An outcome from a message or error boundary event, with the event's
    /// own `baton:await` (when, set).
    fn refine(
        &mut self,
        b: &Element,
        on: String,
        target: &Target,
        owner: &Element,
        list: usize,
    ) -> Await {
        let to = self.jump(owner, list, target, Dflt::Next);
        let mut a = Await {
            note: vec![describe(b)],
            on,
            when: None,
            set: Vec::new(),
            to,
        };
        let xs: Vec<&Ext> = b.ext.baton.iter().filter(|x| x.tag == "await").collect();
        if let Some(x) = xs.first() {
            self.shape(b, x, &["when"], &[], &["set"]);
            a.when = x.attr("when").map(str::to_string);
            a.set = self.sets(b, x);
        }
        if let Some(x) = xs.get(1) {
            self.ext_error(b, x, "give baton:await once on an event");
        }
        a
    }

    fn compensation(&mut self, el: &Element, b: &Element) -> Compensate {
        let handlers: Vec<&'a Element> = self
            .process
            .scope
            .associations
            .iter()
            .filter(|(s, _)| *s == b.item.id)
            .filter_map(|(_, t)| self.els.get(t.as_str()).copied())
            .collect();
        match handlers.as_slice() {
            [h] => {
                self.used.insert(h.item.id.clone());
                if !h.for_compensation {
                    self.error(h, "it is associated with a compensation boundary event but is not marked as a compensation handler (isForCompensation)");
                }
                self.allowed(h, &["command"]);
                match self.command(h) {
                    Some(c) => Compensate::Command(vec![describe(b), describe(h)], c),
                    None => Compensate::Unsaid,
                }
            }
            [] => {
                self.error(
                    b,
                    format!(
                        "no compensation handler is associated with it: connect it to a task marked for compensation, which sends the command that undoes `{}`",
                        el.item.id
                    ),
                );
                Compensate::Unsaid
            }
            [_, extra, ..] => {
                self.error(extra, "a second compensation handler for one task: baton sends one compensation command");
                Compensate::Unsaid
            }
        }
    }

    fn event_gateway(&mut self, el: &Element, list: usize) -> Task {
        let mut task = Task::default();
        for f in self.outgoing(el) {
            let Some(c) = self.els.get(f.target.as_str()).copied() else {
                continue;
            };
            self.used.insert(c.item.id.clone());
            match &c.kind {
                Kind::Catch(Trigger::Message(r)) => {
                    self.allowed(c, &["await"]);
                    let Some(on) = self.message_type(r.as_deref(), c) else {
                        continue;
                    };
                    let target = self.normal(c);
                    let a = self.refine(c, on, &target, el, list);
                    task.awaits.push(a);
                }
                Kind::Catch(Trigger::Timer(Timer::Duration(d))) if task.timeout.is_none() => {
                    self.allowed(c, &[]);
                    match timer::duration(d) {
                        Ok(d) => task.timeout = Some((vec![describe(c)], d)),
                        Err(why) => self.error(c, why),
                    }
                    let target = self.normal(c);
                    task.on_timeout = self.jump(el, list, &target, Dflt::Always);
                }
                _ => self.error(
                    c,
                    "after an event-based gateway only message catch events and one timer (a duration) are translated",
                ),
            }
        }
        if task.awaits.is_empty() {
            self.error(
                el,
                "an event-based gateway needs at least one message catch event after it",
            );
        }
        task
    }

    fn switch(&mut self, el: &Element, list: usize) -> Body {
        let mut cases = Vec::new();
        let mut default = None;
        for f in self.outgoing(el) {
            let target = self.resolve(f);
            if el.default_flow.as_deref() == Some(f.item.id.as_str()) {
                let mut j = self.jump(el, list, &target, Dflt::Always);
                if let Some(j) = &mut j {
                    j.note = Some(match j.note.take() {
                        Some(n) => format!("default flow `{}`; {n}", f.item.id),
                        None => format!("default flow `{}`", f.item.id),
                    });
                }
                default = Some(j);
                continue;
            }
            let Some(cond) = &f.condition else {
                self.report(
                    Severity::Error,
                    &f.item,
                    "sequence flow".into(),
                    format!(
                        "it leaves exclusive gateway `{}` without a condition and is not its default flow",
                        el.item.id
                    ),
                );
                continue;
            };
            let when = match feel::condition(&cond.text, cond.language.as_deref()) {
                Ok(c) => c,
                Err(why) => {
                    self.report(Severity::Error, &f.item, "sequence flow".into(), why);
                    continue;
                }
            };
            let Some(to) = self.jump(el, list, &target, Dflt::Always) else {
                continue;
            };
            let mut note = Vec::new();
            if f.item.name.is_some() || cond.language.is_none() {
                note.push(format!(
                    "sequence flow `{}`{}{}",
                    f.item.id,
                    f.item
                        .name
                        .as_ref()
                        .map(|n| format!(" (\"{n}\")"))
                        .unwrap_or_default(),
                    if feel::is_cel(cond.language.as_deref()) {
                        String::new()
                    } else {
                        format!(", FEEL `{}`", cond.text.trim())
                    }
                ));
            }
            cases.push(Case { note, when, to });
        }
        let default = match default {
            Some(j) => j,
            None => Some(Jump::word(
                "incident",
                Some("no default flow: when no condition holds, an operator decides (as a BPMN engine raises an incident)".into()),
            )),
        };
        Body::Switch { cases, default }
    }

    fn set_step(&mut self, el: &Element) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some((expr, var)) = &el.ext.zeebe_script {
            match feel::to_cel(expr) {
                Ok(cel) => out.push((var.clone(), cel)),
                Err(e) => self.error(el, format!("zeebe:script: {e}")),
            }
        }
        for x in el.ext.baton.iter().filter(|x| x.tag == "set") {
            self.shape(el, x, &["name", "value"], &["name", "value"], &[]);
            if let (Some(n), Some(v)) = (x.attr("name"), x.attr("value")) {
                out.push((n.to_string(), v.to_string()));
            }
        }
        out
    }

    fn call(&mut self, el: &Element, called: Option<&str>) -> Option<Call> {
        let process = called
            .map(str::to_string)
            .or_else(|| el.ext.zeebe_called.clone());
        let Some(process) = process else {
            self.error(el, "the call activity names no process: set its called element (calledElement, or zeebe:calledElement processId)");
            return None;
        };
        let xs: Vec<&Ext> = el.ext.baton.iter().filter(|x| x.tag == "call").collect();
        let Some(x) = xs.first() else {
            self.error(el, "the call activity needs baton:call key=\"...\": the CEL key of the called instance");
            return None;
        };
        self.shape(el, x, &["key"], &["key"], &["set"]);
        let vars = self.sets(el, x);
        Some(Call {
            process,
            key: x.attr("key").unwrap_or_default().to_string(),
            vars,
        })
    }

    /// The command of an element: `baton:command`, else the mapping file,
    /// else `zeebe:taskDefinition` (the type) and the message it sends.
    fn command(&mut self, el: &Element) -> Option<Command> {
        let xs: Vec<&Ext> = el.ext.baton.iter().filter(|x| x.tag == "command").collect();
        if let Some(extra) = xs.get(1) {
            self.ext_error(el, extra, "give baton:command once");
        }
        self.command_from(el, xs.first().copied(), true)
    }

    /// A command from `baton:command` `x`; with `fallbacks`, what it does
    /// not say comes from the mapping file and the element itself.
    fn command_from(&mut self, el: &Element, x: Option<&Ext>, fallbacks: bool) -> Option<Command> {
        if let Some(x) = x {
            self.shape(el, x, &["topic", "type"], &[], &["data"]);
        }
        let mapped = self.mapping.command(&el.item.id).filter(|_| fallbacks);
        let sent = match (&el.kind, &el.message_ref) {
            _ if !fallbacks => None,
            (Kind::Throw(Trigger::Message(r)) | Kind::End(Trigger::Message(r)), _) => r.clone(),
            (Kind::Task(TaskKind::Send), r) => r.clone(),
            _ => None,
        };
        let kind = x
            .and_then(|x| x.attr("type").map(str::to_string))
            .or_else(|| mapped.and_then(|m| m.kind.clone()))
            .or_else(|| el.ext.zeebe_type.clone().filter(|_| fallbacks))
            .or_else(|| sent.and_then(|r| self.message_type(Some(&r), el)));
        let Some(kind) = kind else {
            self.error(
                el,
                format!(
                    "no command type: give baton:command type=\"...\", zeebe:taskDefinition type, or [commands.{}] type in the mapping file",
                    el.item.id
                ),
            );
            return None;
        };
        let topic = x
            .and_then(|x| x.attr("topic").map(str::to_string))
            .or_else(|| mapped.and_then(|m| m.topic.clone()))
            .or_else(|| self.mapping.topic(&kind).map(str::to_string));
        let Some(topic) = topic else {
            self.error(
                el,
                format!(
                    "no topic for command `{kind}`: give baton:command topic=\"...\", or a [topics] entry in the mapping file"
                ),
            );
            return None;
        };
        let written: Vec<&Ext> = x
            .map(|x| x.children.iter().filter(|c| c.tag == "data").collect())
            .unwrap_or_default();
        let data = if written.is_empty() {
            mapped
                .and_then(|m| m.data())
                .unwrap_or(Data::Object(Vec::new()))
        } else {
            let mut fields: Vec<(String, Data)> = Vec::new();
            for d in written {
                self.shape(el, d, &["name", "value"], &["name", "value"], &[]);
                if let (Some(n), Some(v)) = (d.attr("name"), d.attr("value")) {
                    insert(&mut fields, n, v);
                }
            }
            Data::Object(fields)
        };
        Some(Command { topic, kind, data })
    }

    pub(super) fn expectations(&mut self, el: &Element, after: Option<String>) {
        for x in el.ext.baton.iter().filter(|x| x.tag == "expect") {
            self.shape(
                el,
                x,
                &["on", "within", "when", "then"],
                &["on", "within"],
                &["command"],
            );
            let command = match x.children.iter().find(|c| c.tag == "command") {
                Some(c) => self.command_from(el, Some(c), false),
                None => None,
            };
            let then = x.attr("then").map(|t| {
                let keyword = KEYWORDS.contains(&t);
                Jump {
                    to: t.to_string(),
                    step: !keyword,
                    note: None,
                }
            });
            if command.is_none() && then.is_none() {
                self.ext_error(el, x, "say what happens when the event is late: a baton:command inside, and/or then=\"...\"");
            }
            self.expects.push(Expect {
                note: vec![format!(
                    "baton:expect on {} (line {})",
                    describe(el),
                    x.line
                )],
                after: after.clone(),
                on: x.attr("on").unwrap_or_default().to_string(),
                when: x.attr("when").map(str::to_string),
                within: x.attr("within").unwrap_or_default().to_string(),
                command,
                then,
            });
        }
    }

    pub(super) fn observer(&mut self, sp: &Element, scope: &'a Scope) -> Option<Observe> {
        let mut starts = Vec::new();
        for e in &scope.elements {
            match &e.kind {
                Kind::Start(_) => starts.push(e),
                Kind::End(Trigger::None) => {}
                _ => self.error(
                    e,
                    "in an event sub-process only a message start event and an end event are translated (an observe handler updates variables, it runs no steps)",
                ),
            }
        }
        let [s] = starts.as_slice() else {
            self.error(sp, "an event sub-process needs exactly one start event");
            return None;
        };
        self.allowed(s, &["await"]);
        let Kind::Start(Trigger::Message(r)) = &s.kind else {
            self.error(s, "only message start events are translated in an event sub-process (observe handlers)");
            return None;
        };
        if s.interrupting {
            self.error(
                s,
                "an interrupting start event would cancel the flow: make it non-interrupting (baton's observe handlers update variables beside the flow)",
            );
        }
        let on = self.message_type(r.as_deref(), s)?;
        let mut o = Observe {
            note: vec![format!("{}, in {}", describe(s), short(sp))],
            on,
            when: None,
            set: Vec::new(),
        };
        if let Some(x) = s.ext.baton.iter().find(|x| x.tag == "await") {
            self.shape(s, x, &["when"], &[], &["set"]);
            o.when = x.attr("when").map(str::to_string);
            o.set = self.sets(s, x);
        }
        if o.set.is_empty() {
            self.error(
                s,
                "an observe handler must set a variable: add baton:await with baton:set inside",
            );
            return None;
        }
        Some(o)
    }

    // ---- small things ---------------------------------------------------

    /// The event type a message stands for: the mapping file, else its name.
    pub(super) fn message_type(&mut self, r: Option<&str>, el: &Element) -> Option<String> {
        let Some(r) = r else {
            self.error(
                el,
                "no message: choose the message (its name is the CloudEvents type)",
            );
            return None;
        };
        let Some(m) = self.model.messages.get(r) else {
            self.error(el, format!("message `{r}` is not defined in the model"));
            return None;
        };
        let kind = self
            .mapping
            .event(m.name.as_deref(), r)
            .map(str::to_string)
            .or_else(|| m.name.clone());
        if kind.is_none() {
            self.error(el, format!("message `{r}` has no name: name it with the CloudEvents type, or map it in the mapping file's [events]"));
        }
        kind
    }

    /// The event type an error stands for: the mapping file, else its code
    /// (`None`: a catch-all error).
    fn error_type(&mut self, r: &str, el: &Element) -> Option<String> {
        let Some(e) = self.model.errors.get(r) else {
            self.error(el, format!("error `{r}` is not defined in the model"));
            return None;
        };
        self.mapping
            .event(e.name.as_deref(), r)
            .map(str::to_string)
            .or_else(|| e.code.clone())
            .filter(|c| !c.is_empty())
    }

    /// `baton:set` children as `name: value`.
    pub(super) fn sets(&mut self, el: &Element, x: &Ext) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for c in x.children.iter().filter(|c| c.tag == "set") {
            self.shape(el, c, &["name", "value"], &["name", "value"], &[]);
            if let (Some(n), Some(v)) = (c.attr("name"), c.attr("value")) {
                out.push((n.to_string(), v.to_string()));
            }
        }
        out
    }

    /// Checks an extension element's attributes and children.
    pub(super) fn shape(
        &mut self,
        el: &Element,
        x: &Ext,
        attrs: &[&str],
        required: &[&str],
        children: &[&str],
    ) {
        for (k, _) in &x.attrs {
            if !attrs.contains(&k.as_str()) {
                self.ext_error(
                    el,
                    x,
                    format!("unknown attribute `{k}`; it takes {}", list_or_none(attrs)),
                );
            }
        }
        for r in required {
            if x.attr(r).is_none() {
                self.ext_error(el, x, format!("missing attribute `{r}`"));
            }
        }
        for c in &x.children {
            if !children.contains(&c.tag.as_str()) {
                let shown = c
                    .tag
                    .strip_prefix('{')
                    .map_or(format!("baton:{}", c.tag), |_| c.tag.clone());
                self.ext_error(
                    el,
                    x,
                    format!(
                        "`{shown}` does not belong inside; it takes {}",
                        list_or_none(children)
                    ),
                );
            }
        }
    }

    /// Reports baton elements that do not apply to this element.
    pub(super) fn allowed(&mut self, el: &Element, tags: &[&str]) {
        for x in &el.ext.baton {
            if !tags.contains(&x.tag.as_str()) {
                let takes = if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.iter()
                        .map(|t| format!("baton:{t}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                self.ext_error(
                    el,
                    x,
                    format!("does not apply to a {} (it takes {takes})", what(el)),
                );
            }
        }
    }

    /// Warnings for other vendors' extensions, which change nothing here.
    pub(super) fn foreign(&mut self, el: &Element) {
        for (tag, line) in &el.ext.foreign {
            let item = Item {
                line: *line,
                ..el.item.clone()
            };
            self.report(
                Severity::Warning,
                &item,
                what(el),
                format!("`{tag}` is not translated"),
            );
        }
        for a in &el.foreign_attributes {
            self.warn(el, format!("attribute `{a}` is not translated"));
        }
        if let Kind::SubProcess { scope, .. } = &el.kind {
            for e in &scope.elements {
                self.foreign(e);
            }
        }
    }
}

/// Puts `value` at a dotted `name` (`accounts.crm`) in a payload tree.
fn insert(fields: &mut Vec<(String, Data)>, name: &str, value: &str) {
    match name.split_once('.') {
        None => fields.push((name.to_string(), Data::Expr(value.to_string()))),
        Some((head, rest)) => {
            let pos = fields
                .iter()
                .position(|(k, v)| k == head && matches!(v, Data::Object(_)));
            let i = match pos {
                Some(i) => i,
                None => {
                    fields.push((head.to_string(), Data::Object(Vec::new())));
                    fields.len() - 1
                }
            };
            if let Data::Object(inner) = &mut fields[i].1 {
                insert(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_data_names_nest() {
        let mut fields = Vec::new();
        insert(&mut fields, "to", "vars.email");
        insert(&mut fields, "accounts.crm", "vars.crmAccount");
        insert(&mut fields, "accounts.erp", "vars.erpCustomer");
        assert_eq!(
            Data::Object(fields),
            Data::Object(vec![
                ("to".into(), Data::Expr("vars.email".into())),
                (
                    "accounts".into(),
                    Data::Object(vec![
                        ("crm".into(), Data::Expr("vars.crmAccount".into())),
                        ("erp".into(), Data::Expr("vars.erpCustomer".into())),
                    ])
                ),
            ])
        );
    }
}
