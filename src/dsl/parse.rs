//! YAML → [`Definition`], collecting every located error on the way.

use std::collections::HashMap;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoaderOptions, Node, Span};

use super::Diagnostic;
use crate::engine::{
    Assign, BufferPolicy, Call, Case, CommandTemplate, Correlation, DataMap, Definition, EndStatus,
    Expectation, Expr, Join, Millis, Observer, Outcome, Pattern, Retry, Start, Step, StepIdx,
    StepKind, Task, Transition, Wait,
};

/// Where something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
    pub path: String,
}

/// A `goto`/`then` to a named step, kept for validation.
#[derive(Debug, Clone)]
pub struct Jump {
    /// The step the jump is written in; `None` for `expect[].otherwise`.
    pub from: Option<StepIdx>,
    pub to: StepIdx,
    pub loc: Loc,
}

/// Source locations the validator needs.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    /// The `id` of each step.
    pub steps: Vec<Loc>,
    pub jumps: Vec<Jump>,
    pub root: Option<Loc>,
    /// Tasks that say `compensate: none` (they need no compensation in a saga).
    pub no_compensation: Vec<StepIdx>,
}

/// Words `then:` understands; they cannot be step ids.
pub const KEYWORDS: [&str; 6] = ["next", "complete", "fail", "cancel", "retry", "incident"];

const TASK_KEYS: [&str; 4] = ["command", "manual", "call", "await"];
const KINDS: [&str; 5] = ["switch", "set", "wait", "parallel", "end"];

pub struct Parser {
    file: String,
    pub diagnostics: Vec<Diagnostic>,
    ids: HashMap<String, StepIdx>,
    arena: Vec<Option<Step>>,
    next_idx: usize,
    locs: Locations,
}

/// What `Parser::definition` returns when the YAML had the right shape.
pub type Parsed = (Definition, Locations);

fn start_of(span: &Span) -> (usize, usize) {
    span.start().map_or((1, 1), |m| (m.line(), m.column()))
}

fn get<'n>(m: &'n MarkedMappingNode, k: &str) -> Option<&'n Node> {
    m.get_node(k)
}

fn kind_word(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a scalar",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

impl Parser {
    pub fn new(file: &str) -> Parser {
        Parser {
            file: file.to_string(),
            diagnostics: Vec::new(),
            ids: HashMap::new(),
            arena: Vec::new(),
            next_idx: 0,
            locs: Locations::default(),
        }
    }

    fn loc(&self, span: &Span, path: &str) -> Loc {
        let (line, column) = start_of(span);
        Loc {
            line,
            column,
            path: path.to_string(),
        }
    }

    fn err(&mut self, span: &Span, path: &str, message: impl Into<String>) {
        let (line, column) = start_of(span);
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n MarkedMappingNode> {
        match node {
            Node::Mapping(m) => Some(m),
            other => {
                self.err(
                    other.span(),
                    path,
                    format!("expected a mapping, found {}", kind_word(other)),
                );
                None
            }
        }
    }

    fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match node {
            Node::Sequence(s) => Some(s.as_slice()),
            other => {
                self.err(
                    other.span(),
                    path,
                    format!("expected a list, found {}", kind_word(other)),
                );
                None
            }
        }
    }

    fn fields(&mut self, m: &MarkedMappingNode, path: &str, allowed: &[&str]) {
        for (k, _) in m.iter() {
            if !allowed.contains(&k.as_str()) {
                let hint = closest(k.as_str(), allowed)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                let message = format!(
                    "unknown field `{}`{hint}; expected one of: {}",
                    k.as_str(),
                    allowed.join(", ")
                );
                self.err(k.span(), &join(path, k.as_str()), message);
            }
        }
    }

    fn required<'n>(&mut self, m: &'n MarkedMappingNode, path: &str, k: &str) -> Option<&'n Node> {
        let node = get(m, k);
        if node.is_none() {
            self.err(m.span(), path, format!("missing field `{k}`"));
        }
        node
    }

    fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        match node {
            Node::Scalar(s) if !s.as_str().trim().is_empty() => Some(s.as_str().to_string()),
            Node::Scalar(s) => {
                self.err(s.span(), path, "must not be empty");
                None
            }
            other => {
                self.err(
                    other.span(),
                    path,
                    format!("expected a scalar, found {}", kind_word(other)),
                );
                None
            }
        }
    }

    fn expr(&mut self, node: &Node, path: &str, event_ok: bool) -> Option<Expr> {
        let source = self.text(node, path)?;
        match Expr::parse(&source) {
            Ok(e) => {
                let mut ok = true;
                for root in e.unknown_roots() {
                    let message = format!(
                        "CEL expression `{source}` refers to unknown name `{root}`; expressions may use {}",
                        crate::engine::ROOTS.join(", ")
                    );
                    self.err(node.span(), path, message);
                    ok = false;
                }
                if e.uses_event() && !event_ok {
                    let message = format!(
                        "CEL expression `{source}` uses `event`, but no event is at hand here; copy what you need into `vars` when it arrives"
                    );
                    self.err(node.span(), path, message);
                    ok = false;
                }
                ok.then_some(e)
            }
            Err(reason) => {
                self.err(
                    node.span(),
                    path,
                    format!("CEL expression `{source}` does not parse: {reason}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<Millis> {
        let text = self.text(node, path)?;
        match humantime::parse_duration(&text) {
            Ok(d) => Some(d.as_millis().min(u128::from(u64::MAX)) as u64),
            Err(e) => {
                self.err(
                    node.span(),
                    path,
                    format!("`{text}` is not a duration ({e}); write e.g. 30s, 15m, 2h, 3d"),
                );
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, path: &str, min: u64) -> Option<u64> {
        let text = self.text(node, path)?;
        match text.parse::<u64>() {
            Ok(n) if n >= min => Some(n),
            _ => {
                self.err(
                    node.span(),
                    path,
                    format!("`{text}` is not a whole number ≥ {min}"),
                );
                None
            }
        }
    }

    fn pattern(&mut self, node: &Node, path: &str) -> Option<Pattern> {
        self.text(node, path).map(|t| Pattern::new(&t))
    }

    fn assigns(&mut self, node: &Node, path: &str, event_ok: bool) -> Vec<Assign> {
        let Some(m) = self.map(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in m.iter() {
            let p = join(path, k.as_str());
            if !is_identifier(k.as_str()) {
                self.err(
                    k.span(),
                    &p,
                    format!(
                        "`{}` is not a valid variable name (letters, digits, _)",
                        k.as_str()
                    ),
                );
                continue;
            }
            if let Some(expr) = self.expr(v, &p, event_ok) {
                out.push(Assign {
                    name: k.as_str().to_string(),
                    expr,
                });
            }
        }
        out
    }

    fn datamap(&mut self, node: &Node, path: &str, event_ok: bool) -> Option<DataMap> {
        match node {
            Node::Scalar(_) => self.expr(node, path, event_ok).map(DataMap::Expr),
            Node::Mapping(m) => {
                let mut fields = Vec::new();
                for (k, v) in m.iter() {
                    let value = self.datamap(v, &join(path, k.as_str()), event_ok)?;
                    fields.push((k.as_str().to_string(), value));
                }
                Some(DataMap::Object(fields))
            }
            Node::Sequence(s) => {
                let mut items = Vec::new();
                for (i, v) in s.iter().enumerate() {
                    items.push(self.datamap(v, &format!("{path}[{i}]"), event_ok)?);
                }
                Some(DataMap::List(items))
            }
        }
    }

    fn command(&mut self, node: &Node, path: &str) -> Option<CommandTemplate> {
        let m = self.map(node, path)?;
        self.fields(m, path, &["topic", "type", "data"]);
        let topic = self
            .required(m, path, "topic")
            .and_then(|n| self.text(n, &join(path, "topic")));
        let kind = self
            .required(m, path, "type")
            .and_then(|n| self.text(n, &join(path, "type")));
        let data = match get(m, "data") {
            Some(d) => self.datamap(d, &join(path, "data"), false),
            None => Some(DataMap::Object(Vec::new())),
        };
        Some(CommandTemplate {
            topic: topic?,
            kind: kind?,
            data: data?,
        })
    }

    fn step_ref(&mut self, node: &Node, path: &str, from: Option<StepIdx>) -> Option<StepIdx> {
        let name = self.text(node, path)?;
        match self.ids.get(&name) {
            Some(&to) => {
                let loc = self.loc(node.span(), path);
                self.locs.jumps.push(Jump { from, to, loc });
                Some(to)
            }
            None => {
                let hint = closest(
                    &name,
                    &self.ids.keys().map(String::as_str).collect::<Vec<_>>(),
                )
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
                self.err(node.span(), path, format!("unknown step `{name}`{hint}"));
                None
            }
        }
    }

    /// A `then:` value: a keyword or a step id.
    fn then(
        &mut self,
        node: &Node,
        path: &str,
        from: Option<StepIdx>,
        allow_retry: bool,
    ) -> Option<Transition> {
        let word = self.text(node, path)?;
        let t = match word.as_str() {
            "next" => Transition::Next,
            "complete" => Transition::Complete,
            "fail" => Transition::Fail,
            "cancel" => Transition::Cancel,
            "incident" => Transition::Incident,
            "retry" if allow_retry => Transition::Retry,
            "retry" => {
                self.err(
                    node.span(),
                    path,
                    "`retry` only applies to a task's outcomes and timeout",
                );
                return None;
            }
            _ => return self.step_ref(node, path, from).map(Transition::Goto),
        };
        Some(t)
    }

    /// `then:` or `goto:` in a mapping; `dflt` when neither is given.
    fn transition_in(
        &mut self,
        m: &MarkedMappingNode,
        path: &str,
        from: Option<StepIdx>,
        allow_retry: bool,
        dflt: Transition,
    ) -> Option<Transition> {
        match (get(m, "then"), get(m, "goto")) {
            (Some(_), Some(g)) => {
                self.err(
                    g.span(),
                    &join(path, "goto"),
                    "give either `then` or `goto`, not both",
                );
                None
            }
            (Some(t), None) => self.then(t, &join(path, "then"), from, allow_retry),
            (None, Some(g)) => self
                .step_ref(g, &join(path, "goto"), from)
                .map(Transition::Goto),
            (None, None) => Some(dflt),
        }
    }

    // ---- the document -------------------------------------------------------

    pub fn definition(&mut self, source: &str) -> Option<Parsed> {
        let root = match marked_yaml::parse_yaml_with_options(
            0,
            source,
            LoaderOptions::default().error_on_duplicate_keys(true),
        ) {
            Ok(n) => n,
            Err(e) => {
                let (line, column, message) = load_error(&e);
                self.diagnostics.push(Diagnostic {
                    file: self.file.clone(),
                    line,
                    column,
                    path: "(document)".to_string(),
                    message,
                });
                return None;
            }
        };
        let m = self.map(&root, "(document)")?;
        self.locs.root = Some(self.loc(m.span(), "(document)"));
        self.fields(
            m,
            "",
            &[
                "process",
                "version",
                "description",
                "start",
                "correlate",
                "vars",
                "saga",
                "buffer",
                "steps",
                "observe",
                "expect",
            ],
        );
        let process = self
            .required(m, "(document)", "process")
            .and_then(|n| self.text(n, "process"));
        if let (Some(p), Some(n)) = (&process, get(m, "process"))
            && !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.err(
                n.span(),
                "process",
                format!("`{p}` may only hold letters, digits, `-`, `_` and `.`"),
            );
        }
        let version = self
            .required(m, "(document)", "version")
            .and_then(|n| self.uint(n, "version", 1))
            .and_then(|v| {
                let ok = u32::try_from(v).ok();
                if ok.is_none()
                    && let Some(n) = get(m, "version")
                {
                    self.err(n.span(), "version", "version is too large");
                }
                ok
            });
        let start = self
            .required(m, "(document)", "start")
            .and_then(|n| self.start(n));
        let correlate = get(m, "correlate")
            .map(|n| self.correlate(n))
            .unwrap_or_default();
        let vars = get(m, "vars")
            .map(|n| self.assigns(n, "vars", true))
            .unwrap_or_default();
        let saga = match get(m, "saga") {
            Some(n) => match n.as_scalar().and_then(|s| s.as_bool()) {
                Some(b) => b,
                None => {
                    self.err(n.span(), "saga", "expected true or false");
                    false
                }
            },
            None => false,
        };
        let buffer = get(m, "buffer").map(|n| self.buffer(n)).unwrap_or_default();

        // Pass 1: every step id, so jumps can point forward.
        let steps_node = self.required(m, "(document)", "steps");
        if let Some(n) = steps_node {
            self.collect_ids(n, "steps");
        }
        self.arena = (0..self.next_idx).map(|_| None).collect();
        self.next_idx = 0;
        // Pass 2: the steps themselves.
        let top = match steps_node {
            Some(n) => self.steps(n, "steps", None),
            None => Vec::new(),
        };
        let observe = get(m, "observe")
            .map(|n| self.observe(n))
            .unwrap_or_default();
        let expect = get(m, "expect").map(|n| self.expect(n)).unwrap_or_default();

        let steps: Vec<Step> = std::mem::take(&mut self.arena)
            .into_iter()
            .flatten()
            .collect();
        let mut def = Definition {
            process: process?,
            version: version?,
            hash: String::new(),
            start: start?,
            correlate,
            vars,
            entry: top.first().copied(),
            steps,
            observe,
            expect,
            buffer,
            saga,
            index: HashMap::new(),
        };
        def.reindex();
        Some((def, std::mem::take(&mut self.locs)))
    }

    fn start(&mut self, node: &Node) -> Option<Start> {
        let m = self.map(node, "start")?;
        self.fields(m, "start", &["on", "key", "when"]);
        let on = self
            .required(m, "start", "on")
            .and_then(|n| self.pattern(n, "start.on"));
        let key = self
            .required(m, "start", "key")
            .and_then(|n| self.expr(n, "start.key", true));
        let when = match get(m, "when") {
            Some(n) => Some(self.expr(n, "start.when", true)?),
            None => None,
        };
        Some(Start {
            on: on?,
            key: key?,
            when,
        })
    }

    fn correlate(&mut self, node: &Node) -> Vec<Correlation> {
        let Some(m) = self.map(node, "correlate") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in m.iter() {
            let path = format!("correlate[{:?}]", k.as_str());
            if let Some(key) = self.expr(v, &path, true) {
                out.push(Correlation {
                    on: Pattern::new(k.as_str()),
                    key,
                });
            }
        }
        out
    }

    fn buffer(&mut self, node: &Node) -> BufferPolicy {
        let mut b = BufferPolicy::default();
        let Some(m) = self.map(node, "buffer") else {
            return b;
        };
        self.fields(m, "buffer", &["size", "ttl"]);
        if let Some(n) = get(m, "size").and_then(|n| self.uint(n, "buffer.size", 0)) {
            b.size = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = get(m, "ttl").and_then(|n| self.duration(n, "buffer.ttl")) {
            b.ttl = n;
        }
        b
    }

    fn collect_ids(&mut self, node: &Node, path: &str) {
        let Node::Sequence(items) = node else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let idx = self.next_idx;
            self.next_idx += 1;
            let Node::Mapping(m) = item else {
                self.locs.steps.push(self.loc(item.span(), &p));
                continue;
            };
            match get(m, "id").and_then(|n| n.as_scalar()) {
                Some(id) => {
                    let name = id.as_str().to_string();
                    let ip = join(&p, "id");
                    let loc = self.loc(id.span(), &ip);
                    if KEYWORDS.contains(&name.as_str()) || name == "start" {
                        self.err(
                            id.span(),
                            &ip,
                            format!("`{name}` is a reserved word and cannot be a step id"),
                        );
                    } else if !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                        || name.is_empty()
                    {
                        self.err(
                            id.span(),
                            &ip,
                            format!("step id `{name}` may only hold letters, digits, `-` and `_`"),
                        );
                    } else if let Some(&first) = self.ids.get(&name) {
                        let at = self.locs.steps[first].line;
                        self.err(
                            id.span(),
                            &ip,
                            format!("duplicate step id `{name}` (first defined on line {at})"),
                        );
                    } else {
                        self.ids.insert(name, idx);
                    }
                    self.locs.steps.push(loc);
                }
                None => self.locs.steps.push(self.loc(m.span(), &p)),
            }
            if let Some(Node::Mapping(par)) = get(m, "parallel")
                && let Some(Node::Sequence(branches)) = get(par, "branches")
            {
                for (b, branch) in branches.iter().enumerate() {
                    self.collect_ids(branch, &format!("{p}.parallel.branches[{b}]"));
                }
            }
        }
    }

    fn steps(&mut self, node: &Node, path: &str, branch: Option<(StepIdx, usize)>) -> Vec<StepIdx> {
        let Some(items) = self.seq(node, path) else {
            return Vec::new();
        };
        let mut list = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let idx = self.next_idx;
            self.next_idx += 1;
            let step = self.step(item, &p, idx, branch).unwrap_or_else(|| {
                // Its errors are reported; a stand-in that falls through keeps
                // the whole-definition checks meaningful for the other steps.
                let id = match item {
                    Node::Mapping(m) => get(m, "id")
                        .and_then(|n| n.as_scalar())
                        .map(|s| s.as_str().to_string()),
                    _ => None,
                };
                Step {
                    id: id.unwrap_or_else(|| format!("#{idx}")),
                    kind: StepKind::Set(Vec::new()),
                    next: None,
                    branch,
                    then: Transition::Next,
                }
            });
            self.arena[idx] = Some(step);
            list.push(idx);
        }
        for w in list.windows(2) {
            if let Some(s) = self.arena[w[0]].as_mut() {
                s.next = Some(w[1]);
            }
        }
        list
    }

    fn step(
        &mut self,
        node: &Node,
        path: &str,
        idx: StepIdx,
        branch: Option<(StepIdx, usize)>,
    ) -> Option<Step> {
        let m = self.map(node, path)?;
        let id = self
            .required(m, path, "id")
            .and_then(|n| self.text(n, &join(path, "id")));
        let has = |k: &str| get(m, k).is_some();
        let mut kinds: Vec<&str> = KINDS.iter().copied().filter(|k| has(k)).collect();
        if TASK_KEYS.iter().any(|k| has(k)) {
            kinds.insert(0, "task");
        }
        let kind = match kinds.as_slice() {
            [one] => *one,
            [] => {
                self.err(
                    m.span(),
                    path,
                    "a step needs one of: command, manual, call, await (a task), switch, set, wait, parallel, end",
                );
                return None;
            }
            [a, b, ..] => {
                let a = if *a == "task" { "command/await" } else { a };
                self.err(
                    m.span(),
                    path,
                    format!("a step does one thing; this one has both `{a}` and `{b}`"),
                );
                return None;
            }
        };
        let common = ["id", "description", "then", "goto"];
        let then = match kind {
            "switch" | "end" => {
                for k in ["then", "goto"] {
                    if let Some(n) = get(m, k) {
                        let what = if kind == "switch" {
                            "a switch decides with its cases and `default`"
                        } else {
                            "an end step ends the flow"
                        };
                        self.err(
                            n.span(),
                            &join(path, k),
                            format!("`{k}` does not apply here: {what}"),
                        );
                    }
                }
                Transition::Next
            }
            _ => self.transition_in(m, path, Some(idx), false, Transition::Next)?,
        };
        let kind = match kind {
            "task" => {
                let allowed = [
                    "command",
                    "manual",
                    "call",
                    "await",
                    "timeout",
                    "on_timeout",
                    "retry",
                    "on_exhausted",
                    "compensate",
                ];
                self.fields(m, path, &[&common[..], &allowed[..]].concat());
                StepKind::Task(Box::new(self.task(m, path, idx)?))
            }
            "switch" => {
                self.fields(m, path, &[&common[..], &["switch", "default"][..]].concat());
                let mut cases = Vec::new();
                let cp = join(path, "switch");
                if let Some(items) = get(m, "switch").and_then(|n| self.seq(n, &cp)) {
                    for (i, c) in items.iter().enumerate() {
                        let p = format!("{cp}[{i}]");
                        let Some(cm) = self.map(c, &p) else { continue };
                        self.fields(cm, &p, &["when", "goto", "then"]);
                        let when = self
                            .required(cm, &p, "when")
                            .and_then(|n| self.expr(n, &join(&p, "when"), false));
                        let then = self.transition_in(cm, &p, Some(idx), false, Transition::Next);
                        if get(cm, "then").is_none() && get(cm, "goto").is_none() {
                            self.err(cm.span(), &p, "a case needs `goto` or `then`");
                        }
                        if let (Some(when), Some(then)) = (when, then) {
                            cases.push(Case { when, then });
                        }
                    }
                }
                let default = match get(m, "default") {
                    Some(n) => self.then(n, &join(path, "default"), Some(idx), false)?,
                    None => Transition::Next,
                };
                StepKind::Switch { cases, default }
            }
            "set" => {
                self.fields(m, path, &[&common[..], &["set"][..]].concat());
                StepKind::Set(
                    get(m, "set")
                        .map(|n| self.assigns(n, &join(path, "set"), false))
                        .unwrap_or_default(),
                )
            }
            "wait" => {
                self.fields(m, path, &[&common[..], &["wait"][..]].concat());
                let wp = join(path, "wait");
                let n = get(m, "wait")?;
                match n {
                    Node::Mapping(wm) => {
                        self.fields(wm, &wp, &["for", "until"]);
                        match (get(wm, "for"), get(wm, "until")) {
                            (Some(f), None) => {
                                StepKind::Wait(Wait::For(self.duration(f, &join(&wp, "for"))?))
                            }
                            (None, Some(u)) => StepKind::Wait(Wait::Until(self.expr(
                                u,
                                &join(&wp, "until"),
                                false,
                            )?)),
                            _ => {
                                self.err(wm.span(), &wp, "give exactly one of `for` (a duration) or `until` (a CEL time)");
                                return None;
                            }
                        }
                    }
                    _ => StepKind::Wait(Wait::For(self.duration(n, &wp)?)),
                }
            }
            "parallel" => {
                self.fields(m, path, &[&common[..], &["parallel"][..]].concat());
                let pp = join(path, "parallel");
                let pm = self.map(get(m, "parallel")?, &pp)?;
                self.fields(pm, &pp, &["join", "branches"]);
                let mut branches = Vec::new();
                let bp = join(&pp, "branches");
                if let Some(items) = self
                    .required(pm, &pp, "branches")
                    .and_then(|n| self.seq(n, &bp))
                {
                    for (b, branch) in items.iter().enumerate() {
                        let p = format!("{bp}[{b}]");
                        let list = self.steps(branch, &p, Some((idx, b)));
                        match list.first() {
                            Some(&first) => branches.push(first),
                            None => self.err(branch.span(), &p, "a branch needs at least one step"),
                        }
                    }
                }
                let join_mode = match get(pm, "join") {
                    None => Join::All,
                    Some(n) => {
                        let jp = join(&pp, "join");
                        match self.text(n, &jp)?.as_str() {
                            "all" => Join::All,
                            "any" => Join::Any,
                            other => match other.parse::<usize>() {
                                Ok(k) if k >= 1 && k <= branches.len() => Join::N(k),
                                _ => {
                                    let msg = format!(
                                        "join `{other}` must be all, any, or a number from 1 to {} (the branch count)",
                                        branches.len()
                                    );
                                    self.err(n.span(), &jp, msg);
                                    return None;
                                }
                            },
                        }
                    }
                };
                StepKind::Parallel {
                    branches,
                    join: join_mode,
                }
            }
            _ => {
                self.fields(m, path, &[&common[..], &["end"][..]].concat());
                let ep = join(path, "end");
                let n = get(m, "end")?;
                let status = match self.text(n, &ep)?.as_str() {
                    "completed" => EndStatus::Completed,
                    "failed" => EndStatus::Failed,
                    "cancelled" => EndStatus::Cancelled,
                    other => {
                        self.err(
                            n.span(),
                            &ep,
                            format!(
                                "`{other}` is not an end state; use completed, failed or cancelled"
                            ),
                        );
                        return None;
                    }
                };
                StepKind::End(status)
            }
        };
        Some(Step {
            id: id?,
            kind,
            next: None,
            branch,
            then,
        })
    }

    fn task(&mut self, m: &MarkedMappingNode, path: &str, idx: StepIdx) -> Option<Task> {
        let mut ok = true;
        let command = match (get(m, "command"), get(m, "manual")) {
            (Some(_), Some(n)) => {
                self.err(
                    n.span(),
                    &join(path, "manual"),
                    "give either `command` or `manual`, not both",
                );
                return None;
            }
            (Some(n), None) => Some(self.command(n, &join(path, "command"))),
            (None, Some(n)) => Some(self.command(n, &join(path, "manual"))),
            (None, None) => None,
        };
        let command = match command {
            Some(None) => {
                ok = false;
                None
            }
            Some(c) => c,
            None => None,
        };
        let manual = get(m, "manual").is_some();
        let call = match get(m, "call") {
            Some(n) if command.is_some() || manual => {
                self.err(
                    n.span(),
                    &join(path, "call"),
                    "a step either sends a command or calls a process, not both",
                );
                return None;
            }
            Some(n) => Some(self.call(n, &join(path, "call"))?),
            None => None,
        };
        let mut outcomes = Vec::new();
        let ap = join(path, "await");
        if let Some(items) = get(m, "await").and_then(|n| self.seq(n, &ap)) {
            for (i, o) in items.iter().enumerate() {
                let p = format!("{ap}[{i}]");
                let Some(om) = self.map(o, &p) else {
                    ok = false;
                    continue;
                };
                self.fields(om, &p, &["on", "when", "set", "then", "goto"]);
                let on = self
                    .required(om, &p, "on")
                    .and_then(|n| self.pattern(n, &join(&p, "on")));
                let when = match get(om, "when") {
                    Some(n) => self.expr(n, &join(&p, "when"), true).map(Some),
                    None => Some(None),
                };
                let set = get(om, "set")
                    .map(|n| self.assigns(n, &join(&p, "set"), true))
                    .unwrap_or_default();
                let then = self.transition_in(om, &p, Some(idx), true, Transition::Next);
                match (on, when, then) {
                    (Some(on), Some(when), Some(then)) => outcomes.push(Outcome {
                        on,
                        when,
                        set,
                        then,
                    }),
                    _ => ok = false,
                }
            }
            if items.is_empty() {
                self.err(
                    get(m, "await")?.span(),
                    &ap,
                    "list at least one outcome, or leave `await` out",
                );
            }
        }
        if call.is_some() && get(m, "await").is_none() {
            for (status, then) in [
                ("completed", Transition::Next),
                ("failed", Transition::Fail),
                ("cancelled", Transition::Fail),
            ] {
                outcomes.push(Outcome {
                    on: Pattern::new(&format!("{}{status}", crate::engine::CHILD_ENDED_PREFIX)),
                    when: None,
                    set: Vec::new(),
                    then,
                });
            }
        }
        if command.is_none() && call.is_none() && outcomes.is_empty() && ok {
            self.err(
                m.span(),
                path,
                "this task neither sends a command nor awaits anything",
            );
            return None;
        }
        let waits = !outcomes.is_empty() || call.is_some();
        let timeout = match get(m, "timeout") {
            Some(n) if !waits => {
                self.err(
                    n.span(),
                    &join(path, "timeout"),
                    "a task that awaits nothing cannot time out; add `await`",
                );
                None
            }
            Some(n) => self.duration(n, &join(path, "timeout")),
            None => None,
        };
        let on_timeout = match get(m, "on_timeout") {
            Some(n) if timeout.is_none() && get(m, "timeout").is_none() => {
                self.err(
                    n.span(),
                    &join(path, "on_timeout"),
                    "`on_timeout` needs a `timeout`",
                );
                Transition::Retry
            }
            Some(n) => self
                .then(n, &join(path, "on_timeout"), Some(idx), true)
                .unwrap_or(Transition::Retry),
            None => Transition::Retry,
        };
        let retry = match get(m, "retry") {
            Some(n) if manual => {
                self.err(
                    n.span(),
                    &join(path, "retry"),
                    "a manual task is not retried; use `timeout` and `on_timeout` to escalate",
                );
                None
            }
            Some(n) => self.retry(n, &join(path, "retry")),
            None => None,
        };
        let on_exhausted = match get(m, "on_exhausted") {
            Some(n) => self
                .then(n, &join(path, "on_exhausted"), Some(idx), false)
                .unwrap_or(Transition::Incident),
            None => Transition::Incident,
        };
        let compensate = match get(m, "compensate") {
            Some(Node::Scalar(s)) if s.as_str() == "none" => {
                self.locs.no_compensation.push(idx);
                None
            }
            Some(n) => self.command(n, &join(path, "compensate")),
            None => None,
        };
        ok.then_some(Task {
            command,
            manual,
            call,
            outcomes,
            timeout,
            on_timeout,
            retry,
            on_exhausted,
            compensate,
        })
    }

    fn call(&mut self, node: &Node, path: &str) -> Option<Call> {
        let m = self.map(node, path)?;
        self.fields(m, path, &["process", "key", "vars"]);
        let process = self
            .required(m, path, "process")
            .and_then(|n| self.text(n, &join(path, "process")));
        let key = self
            .required(m, path, "key")
            .and_then(|n| self.expr(n, &join(path, "key"), false));
        let vars = get(m, "vars")
            .map(|n| self.assigns(n, &join(path, "vars"), false))
            .unwrap_or_default();
        Some(Call {
            process: process?,
            key: key?,
            vars,
        })
    }

    fn retry(&mut self, node: &Node, path: &str) -> Option<Retry> {
        let m = self.map(node, path)?;
        self.fields(m, path, &["attempts", "backoff", "factor", "max_backoff"]);
        let attempts = self
            .required(m, path, "attempts")
            .and_then(|n| self.uint(n, &join(path, "attempts"), 1));
        let backoff = match get(m, "backoff") {
            Some(n) => self.duration(n, &join(path, "backoff")),
            None => Some(1000),
        };
        let factor = match get(m, "factor") {
            Some(n) => {
                let fp = join(path, "factor");
                let t = self.text(n, &fp)?;
                match t.parse::<f64>() {
                    Ok(f) if f.is_finite() && f >= 1.0 => Some(f),
                    _ => {
                        self.err(n.span(), &fp, format!("`{t}` must be a number ≥ 1"));
                        None
                    }
                }
            }
            None => Some(2.0),
        };
        let max_backoff = match get(m, "max_backoff") {
            Some(n) => Some(self.duration(n, &join(path, "max_backoff"))?),
            None => None,
        };
        Some(Retry {
            attempts: u32::try_from(attempts?).unwrap_or(u32::MAX),
            backoff: backoff?,
            factor: factor?,
            max_backoff,
        })
    }

    fn observe(&mut self, node: &Node) -> Vec<Observer> {
        let Some(items) = self.seq(node, "observe") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, o) in items.iter().enumerate() {
            let p = format!("observe[{i}]");
            let Some(m) = self.map(o, &p) else { continue };
            self.fields(m, &p, &["on", "when", "set"]);
            let on = self
                .required(m, &p, "on")
                .and_then(|n| self.pattern(n, &join(&p, "on")));
            let when = match get(m, "when") {
                Some(n) => self.expr(n, &join(&p, "when"), true).map(Some),
                None => Some(None),
            };
            let set = match self.required(m, &p, "set") {
                Some(n) => self.assigns(n, &join(&p, "set"), true),
                None => Vec::new(),
            };
            if let (Some(on), Some(when)) = (on, when) {
                out.push(Observer { on, when, set });
            }
        }
        out
    }

    fn expect(&mut self, node: &Node) -> Vec<Expectation> {
        let Some(items) = self.seq(node, "expect") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, e) in items.iter().enumerate() {
            let p = format!("expect[{i}]");
            let Some(m) = self.map(e, &p) else { continue };
            self.fields(m, &p, &["after", "on", "when", "within", "otherwise"]);
            let after = match get(m, "after") {
                Some(n) => match self.text(n, &join(&p, "after")) {
                    Some(s) if s == "start" => Some(None),
                    Some(_) => self.step_ref(n, &join(&p, "after"), None).map(Some),
                    None => None,
                },
                None => Some(None),
            };
            let on = self
                .required(m, &p, "on")
                .and_then(|n| self.pattern(n, &join(&p, "on")));
            let when = match get(m, "when") {
                Some(n) => self.expr(n, &join(&p, "when"), true).map(Some),
                None => Some(None),
            };
            let within = self
                .required(m, &p, "within")
                .and_then(|n| self.duration(n, &join(&p, "within")));
            let mut command = None;
            let mut then = Some(Transition::Next);
            if let Some(o) = self.required(m, &p, "otherwise") {
                let op = join(&p, "otherwise");
                if let Some(om) = self.map(o, &op) {
                    self.fields(om, &op, &["command", "then", "goto"]);
                    if let Some(c) = get(om, "command") {
                        command = self.command(c, &join(&op, "command"));
                    }
                    then = self.transition_in(om, &op, None, false, Transition::Next);
                    if get(om, "command").is_none()
                        && get(om, "then").is_none()
                        && get(om, "goto").is_none()
                    {
                        self.err(
                            om.span(),
                            &op,
                            "say what happens: `command`, `then` or `goto`",
                        );
                    }
                }
            }
            if let (Some(after), Some(on), Some(when), Some(within), Some(then)) =
                (after, on, when, within, then)
            {
                out.push(Expectation {
                    after,
                    on,
                    when,
                    within,
                    command,
                    then,
                });
            }
        }
        out
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() || path == "(document)" {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn load_error(e: &marked_yaml::LoadError) -> (usize, usize, String) {
    use marked_yaml::LoadError as L;
    let at = |m: &marked_yaml::Marker| (m.line(), m.column());
    let ((line, column), msg) = match e {
        L::TopLevelMustBeMapping(m) => (at(m), "the document must be a mapping".to_string()),
        L::TopLevelMustBeSequence(m) => (at(m), "the document must be a list".to_string()),
        L::UnexpectedAnchor(m) => (
            at(m),
            "YAML anchors and aliases are not supported".to_string(),
        ),
        L::MappingKeyMustBeScalar(m) => (at(m), "mapping keys must be scalars".to_string()),
        L::UnexpectedTag(m) => (at(m), "YAML tags are not supported".to_string()),
        L::ScanError(m, se) => (at(m), format!("invalid YAML: {}", se.info())),
        L::DuplicateKey(inner) => {
            let (l, c) = start_of(inner.key.span());
            let (pl, _) = start_of(inner.prev_key.span());
            (
                (l, c),
                format!(
                    "duplicate key `{}` (first on line {pl})",
                    inner.key.as_str()
                ),
            )
        }
    };
    (line, column, msg)
}

/// The allowed word nearest to `word`, if it is close enough to be a typo.
fn closest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(word, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
