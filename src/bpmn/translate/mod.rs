//! One BPMN process translated into a definition ([`Doc`]).
//!
//! Two passes. The first walks the flow from the start event and decides
//! which steps exist and in which list each one sits (the top-level flow, or
//! a branch of a parallel gateway), in the order the diagram shows them left
//! to right. The second ([`steps`]) writes each step, its outcomes and where
//! each of them leads. Everything baton has no counterpart for is reported as a
//! [`Problem`] naming the element's id, name and line; a flow into an element
//! that is not translated becomes an incident, never a guess.
//!
//! What becomes what:
//!
//! | BPMN | definition |
//! |---|---|
//! | message start event (+ `baton:start`) | `start`, `vars` |
//! | service, send, user, manual task (+ `baton:command`) | task with `command` / `manual` |
//! | receive task, intermediate message catch event | task that only awaits |
//! | `baton:await` on a task; message and error boundary events | `await` outcomes |
//! | timer boundary event | `timeout`, `on_timeout` (back to the task: `retry`) |
//! | error boundary event without an error code | `on_exhausted` |
//! | compensation boundary event + handler | `compensate` |
//! | call activity (+ `baton:call`) | `call` |
//! | exclusive gateway (FEEL or CEL conditions) | `switch` |
//! | parallel gateway, fork and join | `parallel` |
//! | event-based gateway | task that awaits the first event (or times out) |
//! | intermediate timer catch event | `wait` |
//! | script task (`zeebe:script`) or `baton:set` | `set` |
//! | end events: none / terminate / error, compensation / escalation | next, `complete` / `fail` / `incident` |
//! | event sub-process with a non-interrupting message start | `observe` |
//! | `baton:expect` | `expect` |

mod steps;

use std::collections::{HashMap, HashSet};

use super::mapping::Mapping;
use super::model::{
    Element, Ext, Flow, GatewayKind, Item, Kind, Model, Process, TaskKind, Trigger,
};
use super::yaml::{Doc, Expect, Start};
use super::{Problem, Severity};
use crate::dsl::Diagnostic;

/// Translates `process` of `model` (read from `file`).
pub fn translate(
    file: &str,
    model: &Model,
    process: &Process,
    mapping: &Mapping,
) -> (Doc, Vec<Problem>) {
    let mut t = Tr::new(model, process, mapping);
    let doc = t.run(file);
    (doc, t.problems)
}

/// A diagnostic of the written YAML, reported at the element of the step
/// it sits in (the nearest `- id:` above its line), else at the process.
pub fn invalid(process: &Process, yaml: &str, d: &Diagnostic) -> Problem {
    let step = yaml
        .lines()
        .take(d.line)
        .filter_map(|l| l.trim_start().strip_prefix("- id: "))
        .last()
        .map(|s| s.trim_matches('"').to_string());
    let item = step
        .and_then(|s| process.scope.elements.iter().find(|e| e.item.id == s))
        .map_or(&process.item, |e| &e.item);
    Problem {
        severity: Severity::Error,
        line: item.line,
        id: item.id.clone(),
        name: item.name.clone(),
        what: what_item(item),
        message: format!(
            "the translated definition does not validate: {}: {} (line {} of the YAML)",
            d.path, d.message, d.line
        ),
    }
}

/// Where a flow leads, seen from the element it leaves.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Step(String),
    /// A none end event (or no flow at all): the end of the list.
    End(Option<String>),
    /// A terminate end event.
    Complete(String),
    /// An error or compensation end event.
    Fail(String),
    /// An escalation end event.
    Incident(String),
    /// A converging parallel gateway.
    Join(String),
    /// Back to the task itself, from one of its boundary events.
    Retry,
    /// An element that is not translated (reported on its own).
    Broken(String),
}

/// What an element is to the flow.
enum Role {
    Step,
    PassThrough,
    Join,
    End,
    Complete,
    Fail,
    Incident,
    /// A compensation throw event: fine when the flow then ends.
    Compensation,
    Broken(String),
}

/// The default a transition field has, so it is only written when it differs.
#[derive(Clone, Copy, PartialEq)]
enum Dflt {
    /// An outcome, the step's own `then`.
    Next,
    /// A switch's case or default: always written.
    Always,
    /// `on_timeout`.
    Retry,
    /// `on_exhausted`.
    Incident,
}

/// A list of steps: the top-level flow or one branch.
#[derive(Debug, Default)]
struct List {
    steps: Vec<String>,
    branch: bool,
    /// The join gateway a branch runs into.
    join: Option<String>,
    joins_seen: Vec<String>,
}

struct Tr<'a> {
    model: &'a Model,
    process: &'a Process,
    mapping: &'a Mapping,
    els: HashMap<&'a str, &'a Element>,
    out: HashMap<&'a str, Vec<&'a Flow>>,
    inc: HashMap<&'a str, Vec<&'a Flow>>,
    boundaries: HashMap<&'a str, Vec<&'a Element>>,
    problems: Vec<Problem>,
    /// Elements the translation accounted for.
    used: HashSet<String>,
    /// Elements reported as not translatable (reported once).
    broken: HashSet<String>,
    lists: Vec<List>,
    list_of: HashMap<String, usize>,
    /// Parallel (fork) gateway → its branch lists.
    branches: HashMap<String, Vec<usize>>,
    /// Parallel (fork) gateway → where the flow goes after the join.
    after_join: HashMap<String, Target>,
    expects: Vec<Expect>,
    saga: bool,
}

impl<'a> Tr<'a> {
    fn new(model: &'a Model, process: &'a Process, mapping: &'a Mapping) -> Tr<'a> {
        let scope = &process.scope;
        let mut out: HashMap<&str, Vec<&Flow>> = HashMap::new();
        let mut inc: HashMap<&str, Vec<&Flow>> = HashMap::new();
        for f in &scope.flows {
            out.entry(f.source.as_str()).or_default().push(f);
            inc.entry(f.target.as_str()).or_default().push(f);
        }
        let mut boundaries: HashMap<&str, Vec<&Element>> = HashMap::new();
        for e in &scope.elements {
            if let Some(a) = &e.attached_to {
                boundaries.entry(a.as_str()).or_default().push(e);
            }
        }
        Tr {
            model,
            process,
            mapping,
            els: scope
                .elements
                .iter()
                .map(|e| (e.item.id.as_str(), e))
                .collect(),
            out,
            inc,
            boundaries,
            problems: Vec::new(),
            used: HashSet::new(),
            broken: HashSet::new(),
            lists: Vec::new(),
            list_of: HashMap::new(),
            branches: HashMap::new(),
            after_join: HashMap::new(),
            expects: Vec::new(),
            saga: false,
        }
    }

    // ---- reports ------------------------------------------------------------

    fn report(&mut self, severity: Severity, item: &Item, what: String, message: String) {
        self.problems.push(Problem {
            severity,
            line: item.line,
            id: item.id.clone(),
            name: item.name.clone(),
            what,
            message,
        });
    }

    fn error(&mut self, el: &Element, message: impl Into<String>) {
        self.report(Severity::Error, &el.item, what(el), message.into());
    }

    fn warn(&mut self, el: &Element, message: impl Into<String>) {
        self.report(Severity::Warning, &el.item, what(el), message.into());
    }

    /// An error about an extension element, at its own line.
    fn ext_error(&mut self, el: &Element, ext: &Ext, message: impl Into<String>) {
        let item = Item {
            line: ext.line,
            ..el.item.clone()
        };
        self.report(
            Severity::Error,
            &item,
            what(el),
            format!("baton:{}: {}", ext.tag, message.into()),
        );
    }

    // ---- the whole process --------------------------------------------------

    fn run(&mut self, file: &str) -> Doc {
        let p = self.process;
        let mut doc = Doc {
            header: vec![
                format!(
                    "Imported by `baton import` from {file} (BPMN process `{}`, line {}).",
                    p.item.id, p.item.line
                ),
                "Each part names the BPMN element it came from.".to_string(),
            ],
            process: p.item.id.clone(),
            version: 1,
            description: p.documentation.clone().or_else(|| p.item.name.clone()),
            ..Doc::default()
        };
        self.process_extensions(&mut doc);
        for lane in &p.lanes {
            self.report(
                Severity::Warning,
                lane,
                "lane".into(),
                "lanes are not translated: who does a task is up to the system that receives its command".into(),
            );
        }
        for (item, process_ref) in &self.model.collaboration {
            if process_ref.as_deref() == Some(p.item.id.as_str()) {
                continue;
            }
            let message = match item.tag.as_str() {
                "messageFlow" => {
                    "message flows are not translated: a command goes to the topic of its baton:command, and events reach baton on its input topics"
                }
                "participant" => {
                    "this pool is not translated: only the pool of the imported process is"
                }
                _ => "collaboration parts are not translated",
            };
            self.report(Severity::Warning, item, words(&item.tag), message.into());
        }
        for a in &p.scope.artifacts {
            self.report(
                Severity::Warning,
                a,
                words(&a.tag),
                "data and groups are not translated: an instance's data lives in `vars`".into(),
            );
        }

        // The start event.
        let starts: Vec<&Element> = p
            .scope
            .elements
            .iter()
            .filter(|e| matches!(e.kind, Kind::Start(_)))
            .collect();
        let mut head = None;
        match starts.as_slice() {
            [] => self.report(
                Severity::Error,
                &p.item,
                "process".into(),
                "no start event: draw a message start event (its message is the event type that starts an instance)".into(),
            ),
            [s, rest @ ..] => {
                for extra in rest {
                    self.used.insert(extra.item.id.clone());
                    self.error(
                        extra,
                        "a second start event is not translated: a definition starts on one event type",
                    );
                }
                self.used.insert(s.item.id.clone());
                doc.start = self.start(s, &mut doc.vars);
                head = Some(self.normal(s));
            }
        }

        // Pass 1: which steps, in which list, in which order.
        self.lists.push(List::default());
        match &head {
            Some(Target::Step(h)) => {
                let h = h.clone();
                self.collect(&h, 0);
            }
            Some(other) => {
                if let Some(s) = starts.first() {
                    let what = match other {
                        Target::Broken(_) => "an element that is not translated",
                        _ => "no step",
                    };
                    self.error(
                        s,
                        format!(
                            "the start event leads to {what}: a definition needs at least one step"
                        ),
                    );
                }
            }
            None => {}
        }
        // Pass 2: the steps.
        doc.steps = self.build(0);
        for s in starts.iter().take(1) {
            self.expectations(s, None);
        }
        doc.expect = std::mem::take(&mut self.expects);

        // Event sub-processes: observe handlers.
        for e in &p.scope.elements {
            if let Kind::SubProcess { event: true, scope } = &e.kind {
                self.used.insert(e.item.id.clone());
                if let Some(o) = self.observer(e, scope) {
                    doc.observe.push(o);
                }
            }
        }

        // Whatever the walk did not reach is reported, never dropped.
        let behind = self.behind_broken();
        for e in &p.scope.elements {
            if self.used.contains(&e.item.id) || self.broken.contains(&e.item.id) {
                continue;
            }
            let message = if e.for_compensation {
                "this compensation handler is not associated with any compensation boundary event"
                    .to_string()
            } else if e.attached_to.is_some() {
                "this boundary event belongs to an element that is not a translated step"
                    .to_string()
            } else if let Some(b) = behind.get(&e.item.id) {
                format!("the flow reaches it only through `{b}`, which is not translated")
            } else {
                "not reached from the start event: no sequence flow leads here".to_string()
            };
            self.error(e, message);
        }
        for e in &p.scope.elements {
            self.foreign(e);
        }
        // Annotations not on a step go to the top of the file.
        for (id, text, line) in &p.scope.annotations {
            let on_step = p.scope.associations.iter().any(|(s, t)| {
                (s == id && self.list_of.contains_key(t))
                    || (t == id && self.list_of.contains_key(s))
            });
            if !on_step && !text.is_empty() {
                doc.header
                    .push(format!("Note `{id}` (line {line}): {}", one_line(text)));
            }
        }
        doc.saga = self.saga;
        doc
    }

    /// Elements the flow reaches only past an element that is not
    /// translated, each with that element.
    fn behind_broken(&self) -> HashMap<String, String> {
        let mut out: HashMap<String, String> = HashMap::new();
        let mut broken: Vec<&String> = self.broken.iter().collect();
        broken.sort();
        for b in broken {
            let mut stack = vec![b.as_str()];
            while let Some(id) = stack.pop() {
                for f in self.out.get(id).into_iter().flatten() {
                    let t = f.target.as_str();
                    if !self.used.contains(t) && !self.broken.contains(t) && !out.contains_key(t) {
                        out.insert(t.to_string(), b.clone());
                        stack.push(t);
                    }
                }
            }
        }
        out
    }

    fn process_extensions(&mut self, doc: &mut Doc) {
        let p = self.process;
        let item = p.item.clone();
        let host = Element {
            item: item.clone(),
            kind: Kind::Other,
            documentation: None,
            attached_to: None,
            interrupting: true,
            default_flow: None,
            for_compensation: false,
            looping: None,
            message_ref: None,
            ext: Default::default(),
            foreign_attributes: Vec::new(),
        };
        for (tag, line) in &p.ext.foreign {
            let it = Item {
                line: *line,
                ..item.clone()
            };
            self.report(
                Severity::Warning,
                &it,
                "process".into(),
                format!("`{tag}` is not translated"),
            );
        }
        for x in &p.ext.baton {
            match x.tag.as_str() {
                "definition" => {
                    self.shape(&host, x, &["version", "saga"], &[], &[]);
                    if let Some(v) = x.attr("version") {
                        match v.parse::<u32>() {
                            Ok(n) if n >= 1 => doc.version = n,
                            _ => self.ext_error(
                                &host,
                                x,
                                format!("version `{v}` is not a whole number ≥ 1"),
                            ),
                        }
                    }
                    match x.attr("saga") {
                        None | Some("false") => {}
                        Some("true") => self.saga = true,
                        Some(other) => self.ext_error(
                            &host,
                            x,
                            format!("saga `{other}`: write true or false"),
                        ),
                    }
                }
                "correlate" => {
                    self.shape(&host, x, &["on", "key"], &["on", "key"], &[]);
                    if let (Some(on), Some(key)) = (x.attr("on"), x.attr("key")) {
                        doc.correlate.push((on.to_string(), key.to_string()));
                    }
                }
                "buffer" => {
                    self.shape(&host, x, &["size", "ttl"], &[], &[]);
                    doc.buffer = (
                        x.attr("size").map(str::to_string),
                        x.attr("ttl").map(str::to_string),
                    );
                }
                _ => self.ext_error(
                    &host,
                    x,
                    "does not apply to a process (it takes baton:definition, baton:correlate, baton:buffer)",
                ),
            }
        }
    }

    fn start(&mut self, s: &Element, vars: &mut Vec<(String, String)>) -> Start {
        let mut start = Start {
            note: vec![describe(s)],
            ..Start::default()
        };
        match &s.kind {
            Kind::Start(Trigger::Message(r)) => {
                if let Some(on) = self.message_type(r.as_deref(), s) {
                    start.on = on;
                }
            }
            Kind::Start(t) => self.error(
                s,
                format!(
                    "{} start events are not translated: an instance starts on an event, so draw a message start event",
                    trigger_word(t)
                ),
            ),
            _ => {}
        }
        self.allowed(s, &["start", "expect"]);
        let starts: Vec<&Ext> = s.ext.baton.iter().filter(|x| x.tag == "start").collect();
        match starts.as_slice() {
            [x] => {
                self.shape(s, x, &["key", "when"], &["key"], &["set"]);
                start.key = x.attr("key").unwrap_or_default().to_string();
                start.when = x.attr("when").map(str::to_string);
                *vars = self.sets(s, x);
            }
            [] => self.error(
                s,
                "the start event needs baton:start key=\"...\" (the CEL key of an instance, e.g. event.data.orderId)",
            ),
            [_, x, ..] => self.ext_error(s, x, "give baton:start once"),
        }
        start
    }

    // ---- pass 1: lists ------------------------------------------------------

    fn collect(&mut self, head: &str, list: usize) {
        let mut stack = vec![head.to_string()];
        while let Some(id) = stack.pop() {
            if self.list_of.contains_key(&id) {
                continue;
            }
            self.list_of.insert(id.clone(), list);
            self.lists[list].steps.push(id.clone());
            let Some(el) = self.els.get(id.as_str()).copied() else {
                continue;
            };
            let succ = self.successors(el);
            for t in &succ {
                if let Target::Join(j) = t {
                    self.lists[list].joins_seen.push(j.clone());
                }
            }
            for t in succ.iter().rev() {
                if let Target::Step(s) = t {
                    stack.push(s.clone());
                }
            }
        }
        self.order(list);
    }

    /// The steps of a list in the diagram's order (left to right, then top
    /// to bottom), the entry first; the walk's order without a diagram.
    fn order(&mut self, list: usize) {
        let steps = &self.lists[list].steps;
        let shapes = &self.model.shapes;
        if steps.len() < 3 || !steps.iter().all(|s| shapes.contains_key(s.as_str())) {
            return;
        }
        let mut rest: Vec<String> = steps[1..].to_vec();
        rest.sort_by(|a, b| {
            let (pa, pb) = (shapes[a.as_str()], shapes[b.as_str()]);
            pa.0.total_cmp(&pb.0).then(pa.1.total_cmp(&pb.1))
        });
        self.lists[list].steps.truncate(1);
        self.lists[list].steps.extend(rest);
    }

    /// Where a step's flow can go next, its main flow first.
    fn successors(&mut self, el: &Element) -> Vec<Target> {
        match &el.kind {
            Kind::Gateway(GatewayKind::Exclusive) => self
                .outgoing(el)
                .into_iter()
                .map(|f| self.resolve(f))
                .collect(),
            Kind::Gateway(GatewayKind::Parallel) => vec![self.fork(el)],
            Kind::Gateway(GatewayKind::EventBased) => {
                let mut out = Vec::new();
                for f in self.outgoing(el) {
                    if let Some(c) = self.els.get(f.target.as_str()).copied() {
                        self.used.insert(c.item.id.clone());
                        out.push(self.normal(c));
                    }
                }
                out
            }
            _ => {
                let mut out = vec![self.normal(el)];
                let id = el.item.id.as_str();
                for b in self.boundaries.get(id).cloned().unwrap_or_default() {
                    if !matches!(b.kind, Kind::Boundary(Trigger::Compensate)) {
                        out.push(self.boundary_target(b, el));
                    }
                }
                out
            }
        }
    }

    /// Collects the branches of a parallel gateway; gives where the flow
    /// goes after their join.
    fn fork(&mut self, el: &Element) -> Target {
        let mut lists = Vec::new();
        let mut joins: Vec<String> = Vec::new();
        for f in self.outgoing(el) {
            match self.resolve(f) {
                Target::Step(h) if self.list_of.contains_key(&h) => self.error(
                    el,
                    format!("a branch starts at `{h}`, which another branch or the flow before already runs"),
                ),
                Target::Step(h) => {
                    let b = self.lists.len();
                    self.lists.push(List {
                        branch: true,
                        ..List::default()
                    });
                    self.collect(&h, b);
                    joins.extend(self.lists[b].joins_seen.clone());
                    lists.push(b);
                }
                Target::Broken(_) => {}
                _ => self.error(
                    el,
                    format!(
                        "sequence flow `{}` starts a branch without a step; a branch needs at least one",
                        f.item.id
                    ),
                ),
            }
        }
        joins.sort();
        joins.dedup();
        let after = match joins.as_slice() {
            [j] => {
                for &b in &lists {
                    self.lists[b].join = Some(j.clone());
                }
                match self.els.get(j.as_str()).copied() {
                    Some(g) => self.normal(g),
                    None => Target::End(None),
                }
            }
            [] => {
                self.error(
                    el,
                    "its branches never meet at a joining parallel gateway: baton's parallel step waits for all branches and then goes on",
                );
                Target::Broken(el.item.id.clone())
            }
            several => {
                self.error(
                    el,
                    format!(
                        "its branches end at different joining gateways ({}); draw one join",
                        several.join(", ")
                    ),
                );
                Target::Broken(el.item.id.clone())
            }
        };
        self.branches.insert(el.item.id.clone(), lists);
        self.after_join.insert(el.item.id.clone(), after.clone());
        after
    }

    // ---- the flow -----------------------------------------------------------

    fn outgoing(&self, el: &Element) -> Vec<&'a Flow> {
        self.out
            .get(el.item.id.as_str())
            .cloned()
            .unwrap_or_default()
    }

    /// Where the main flow out of an element leads.
    fn normal(&mut self, el: &Element) -> Target {
        let flows = self.outgoing(el);
        match flows.as_slice() {
            [] => Target::End(None),
            [f] => {
                if f.condition.is_some() {
                    self.error(
                        el,
                        format!(
                            "sequence flow `{}` has a condition: decide in an exclusive gateway after the element",
                            f.item.id
                        ),
                    );
                }
                self.resolve(f)
            }
            several => {
                let conditional = several.iter().any(|f| f.condition.is_some());
                self.error(
                    el,
                    if conditional {
                        "conditional sequence flows out of an element are not translated: decide in an exclusive gateway"
                    } else {
                        "several sequence flows leave it without a gateway (BPMN forks here): draw a parallel gateway"
                    },
                );
                Target::Broken(el.item.id.clone())
            }
        }
    }

    fn boundary_target(&mut self, b: &Element, owner: &Element) -> Target {
        match self.normal(b) {
            Target::Step(s) if s == owner.item.id => Target::Retry,
            other => other,
        }
    }

    /// Follows a flow through gateways that only merge, to what it leads to.
    fn resolve(&mut self, flow: &'a Flow) -> Target {
        let mut seen = HashSet::new();
        let mut f = flow;
        let mut compensating: Option<String> = None;
        loop {
            let Some(el) = self.els.get(f.target.as_str()).copied() else {
                self.report(
                    Severity::Error,
                    &f.item,
                    "sequence flow".into(),
                    format!(
                        "leads to `{}`, which is no element of this process",
                        f.target
                    ),
                );
                return Target::Broken(f.target.clone());
            };
            let id = el.item.id.clone();
            if !seen.insert(id.clone()) {
                self.error(
                    el,
                    "sequence flows run in a circle through it without reaching a step",
                );
                return Target::Broken(id);
            }
            let role = self.role(el);
            if !matches!(role, Role::Broken(_)) {
                self.used.insert(id.clone());
            }
            let target = match role {
                Role::Step => Target::Step(id),
                Role::PassThrough | Role::Compensation => {
                    if let Role::Compensation = role {
                        compensating = Some(id.clone());
                    }
                    match self.outgoing(el).as_slice() {
                        [next] => {
                            f = next;
                            continue;
                        }
                        [] => Target::End(Some(id)),
                        _ => {
                            self.error(el, "several sequence flows leave it: draw a gateway");
                            Target::Broken(id)
                        }
                    }
                }
                Role::Join => Target::Join(id),
                Role::End => Target::End(Some(id)),
                Role::Complete => Target::Complete(id),
                Role::Fail => Target::Fail(id),
                Role::Incident => Target::Incident(id),
                Role::Broken(reason) => {
                    if self.broken.insert(id.clone()) {
                        self.error(el, reason);
                    }
                    Target::Broken(id)
                }
            };
            return match (compensating, target) {
                (None, t) => t,
                (Some(_), Target::End(Some(e)) | Target::Fail(e)) => Target::Fail(e),
                (Some(c), Target::End(None)) => Target::Fail(c),
                (Some(c), _) => {
                    if let Some(ce) = self.els.get(c.as_str()).copied()
                        && self.broken.insert(c.clone())
                    {
                        self.error(
                            ce,
                            "baton compensates only when an instance fails: a compensation throw event must lead to an end event",
                        );
                    }
                    Target::Broken(c)
                }
            };
        }
    }

    fn role(&mut self, el: &Element) -> Role {
        let has = |tag: &str| el.ext.baton.iter().any(|x| x.tag == tag);
        let outs = self.outgoing(el).len();
        let ins = self.inc.get(el.item.id.as_str()).map_or(0, Vec::len);
        if let Some(marker) = el.looping {
            return Role::Broken(format!(
                "its {marker} is not translated: a step runs once each time the flow reaches it"
            ));
        }
        if el.for_compensation {
            return Role::Broken(
                "a compensation handler runs through its compensation boundary event, not in the flow".into(),
            );
        }
        match &el.kind {
            Kind::Task(
                TaskKind::Service
                | TaskKind::Send
                | TaskKind::User
                | TaskKind::Manual
                | TaskKind::Receive,
            ) => Role::Step,
            Kind::Task(TaskKind::Script) if el.ext.zeebe_script.is_some() || has("set") => {
                Role::Step
            }
            Kind::Task(TaskKind::Script) => Role::Broken(
                "script tasks are not translated, except a `zeebe:script` FEEL expression with a result variable, or baton:set".into(),
            ),
            Kind::Task(TaskKind::BusinessRule) => Role::Broken(
                "business rule tasks (DMN decisions) are not translated: decide with an exclusive gateway".into(),
            ),
            Kind::Task(TaskKind::Plain) if has("command") || has("set") => Role::Step,
            Kind::Task(TaskKind::Plain) => Role::Broken(
                "a task without a type does nothing baton can do: make it a service, send, user or receive task".into(),
            ),
            Kind::Call(_) => Role::Step,
            Kind::Gateway(GatewayKind::Exclusive) if outs >= 2 => Role::Step,
            Kind::Gateway(GatewayKind::Exclusive) => Role::PassThrough,
            Kind::Gateway(GatewayKind::Parallel) if outs >= 2 && ins >= 2 => Role::Broken(
                "a parallel gateway that both joins and forks is not translated: draw two gateways".into(),
            ),
            Kind::Gateway(GatewayKind::Parallel) if outs >= 2 => Role::Step,
            Kind::Gateway(GatewayKind::Parallel) if ins >= 2 => Role::Join,
            Kind::Gateway(GatewayKind::Parallel) => Role::PassThrough,
            Kind::Gateway(GatewayKind::EventBased) => Role::Step,
            Kind::Gateway(GatewayKind::Inclusive) => Role::Broken(
                "inclusive gateways are not translated: baton has no join that waits for just the branches taken; use an exclusive or a parallel gateway".into(),
            ),
            Kind::Gateway(GatewayKind::Complex) => {
                Role::Broken("complex gateways are not translated".into())
            }
            Kind::Catch(Trigger::Message(_) | Trigger::Timer(_)) => Role::Step,
            Kind::Catch(Trigger::Link) => Role::Broken(
                "link events are not translated: connect the flow directly".into(),
            ),
            Kind::Catch(t) => Role::Broken(format!(
                "{} intermediate catch events are not translated",
                trigger_word(t)
            )),
            Kind::Throw(Trigger::None) if has("set") => Role::Step,
            Kind::Throw(Trigger::None) => {
                if !self.used.contains(&el.item.id) {
                    self.warn(
                        el,
                        "an intermediate event without a definition does nothing: the flow passes through it",
                    );
                }
                Role::PassThrough
            }
            Kind::Throw(Trigger::Message(_)) => Role::Step,
            Kind::Throw(Trigger::Compensate) => Role::Compensation,
            Kind::Throw(t) => Role::Broken(format!(
                "{} intermediate throw events are not translated",
                trigger_word(t)
            )),
            Kind::End(Trigger::None) => Role::End,
            Kind::End(Trigger::Error(_) | Trigger::Compensate) => Role::Fail,
            Kind::End(Trigger::Terminate) => Role::Complete,
            Kind::End(Trigger::Escalation) => Role::Incident,
            Kind::End(Trigger::Message(_)) => Role::Step,
            Kind::End(t) => Role::Broken(format!(
                "{} end events are not translated",
                trigger_word(t)
            )),
            Kind::Start(_) => Role::Broken("a sequence flow cannot lead to a start event".into()),
            Kind::Boundary(_) => {
                Role::Broken("a sequence flow cannot lead to a boundary event".into())
            }
            Kind::SubProcess { event: false, .. } => Role::Broken(
                "embedded sub-processes are not translated: draw their content in the main flow, or make it a process of its own and call it (call activity)".into(),
            ),
            Kind::SubProcess { event: true, .. } => Role::Broken(
                "an event sub-process starts on its event, not through a sequence flow".into(),
            ),
            Kind::Other => Role::Broken(format!("`{}` elements are not translated", el.item.tag)),
        }
    }
}

/// Words `then:` understands; they cannot be step ids.
const KEYWORDS: [&str; 6] = ["next", "complete", "fail", "cancel", "retry", "incident"];

fn is_step_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !KEYWORDS.contains(&id)
        && id != "start"
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `camelCase` → `camel case`.
fn words(tag: &str) -> String {
    let mut out = String::new();
    for c in tag.chars() {
        if c.is_ascii_uppercase() {
            out.push(' ');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn trigger_word(t: &Trigger) -> &'static str {
    match t {
        Trigger::None => "none",
        Trigger::Message(_) => "message",
        Trigger::Timer(_) => "timer",
        Trigger::Error(_) => "error",
        Trigger::Escalation => "escalation",
        Trigger::Compensate => "compensation",
        Trigger::Signal => "signal",
        Trigger::Conditional => "conditional",
        Trigger::Link => "link",
        Trigger::Terminate => "terminate",
        Trigger::Cancel => "cancel",
        Trigger::Multiple => "multiple",
    }
}

/// What an element is, in words: `timer boundary event`, `service task`.
pub fn what(el: &Element) -> String {
    let event = |t: &Trigger, kind: &str| match t {
        Trigger::None if kind == "intermediate throw event" => {
            "intermediate none event".to_string()
        }
        Trigger::None => format!("none {kind}"),
        t => format!("{} {kind}", trigger_word(t)),
    };
    match &el.kind {
        Kind::Start(t) => event(t, "start event"),
        Kind::End(t) => event(t, "end event"),
        Kind::Catch(t) => event(t, "intermediate catch event"),
        Kind::Throw(t) => event(t, "intermediate throw event"),
        Kind::Boundary(t) => event(t, "boundary event"),
        Kind::SubProcess { event: true, .. } => "event sub-process".into(),
        Kind::SubProcess { .. } => "sub-process".into(),
        Kind::Task(TaskKind::Plain) => "task".into(),
        _ => words(&el.item.tag),
    }
}

fn what_item(item: &Item) -> String {
    words(&item.tag)
}

/// `service task `reserve` ("Reserve inventory")`.
fn short(el: &Element) -> String {
    let name = el
        .item
        .name
        .as_ref()
        .map(|n| format!(" (\"{}\")", one_line(n)))
        .unwrap_or_default();
    format!("{} `{}`{name}", what(el), el.item.id)
}

/// The comment naming the element a part came from.
fn describe(el: &Element) -> String {
    let s = short(el);
    let mut c = s.chars();
    let s = match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    };
    format!("{s}, line {}", el.item.line)
}
