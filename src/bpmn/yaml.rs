//! The definition `baton import` writes: a plain description of the YAML
//! ([`Doc`]) and the writer that turns it into readable text, each part
//! under a comment naming the BPMN element it came from.
//!
//! Knows YAML and the definition's field names, nothing of BPMN: the
//! translation fills a [`Doc`] and every decision is made there.

use std::fmt::Write as _;

/// A process definition to write.
#[derive(Debug, Default)]
pub struct Doc {
    /// Comment lines at the top of the file.
    pub header: Vec<String>,
    pub process: String,
    pub version: u32,
    pub description: Option<String>,
    pub saga: bool,
    pub start: Start,
    pub correlate: Vec<(String, String)>,
    pub vars: Vec<(String, String)>,
    /// `buffer.size` and `buffer.ttl`, as written in the model.
    pub buffer: (Option<String>, Option<String>),
    pub steps: Vec<Step>,
    pub observe: Vec<Observe>,
    pub expect: Vec<Expect>,
}

#[derive(Debug, Default)]
pub struct Start {
    pub note: Vec<String>,
    pub on: String,
    pub key: String,
    pub when: Option<String>,
}

/// One step.
#[derive(Debug)]
pub struct Step {
    pub id: String,
    pub note: Vec<String>,
    pub description: Option<String>,
    pub body: Body,
    /// The step's own `then`/`goto` (steps that wait for no outcome).
    pub then: Option<Jump>,
}

/// What a step does.
#[derive(Debug)]
pub enum Body {
    Task(Box<Task>),
    Switch {
        cases: Vec<Case>,
        default: Option<Jump>,
    },
    Set(Vec<(String, String)>),
    /// `wait: <duration>`.
    WaitFor(String),
    /// `wait: { until: <CEL> }`.
    WaitUntil(String),
    Parallel(Vec<Vec<Step>>),
}

#[derive(Debug, Default)]
pub struct Task {
    pub command: Option<Command>,
    pub manual: bool,
    pub call: Option<Call>,
    pub awaits: Vec<Await>,
    pub timeout: Option<(Vec<String>, String)>,
    pub on_timeout: Option<Jump>,
    pub retry: Option<Retry>,
    pub on_exhausted: Option<Jump>,
    pub compensate: Compensate,
}

#[derive(Debug)]
pub struct Command {
    pub topic: String,
    pub kind: String,
    pub data: Data,
}

/// A payload: a tree whose leaves are CEL.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Expr(String),
    Object(Vec<(String, Data)>),
    List(Vec<Data>),
}

#[derive(Debug)]
pub struct Call {
    pub process: String,
    pub key: String,
    pub vars: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Await {
    pub note: Vec<String>,
    pub on: String,
    pub when: Option<String>,
    pub set: Vec<(String, String)>,
    pub to: Option<Jump>,
}

/// `retry:` as written in the model (validated when the YAML is parsed).
#[derive(Debug, Default)]
pub struct Retry {
    pub attempts: String,
    pub backoff: Option<String>,
    pub factor: Option<String>,
    pub max_backoff: Option<String>,
}

#[derive(Debug, Default)]
pub enum Compensate {
    /// Nothing to say (not a saga, or no command).
    #[default]
    Unsaid,
    /// `compensate: none`.
    Nothing(Vec<String>),
    Command(Vec<String>, Command),
}

#[derive(Debug)]
pub struct Case {
    pub note: Vec<String>,
    pub when: String,
    pub to: Jump,
}

/// Where a transition goes: a keyword (`fail`, `retry`, ...) or a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub to: String,
    pub step: bool,
    /// Why it goes there (e.g. the end event it stands for).
    pub note: Option<String>,
}

impl Jump {
    pub fn word(w: &str, note: Option<String>) -> Jump {
        Jump {
            to: w.to_string(),
            step: false,
            note,
        }
    }

    pub fn step(id: &str, note: Option<String>) -> Jump {
        Jump {
            to: id.to_string(),
            step: true,
            note,
        }
    }
}

#[derive(Debug)]
pub struct Observe {
    pub note: Vec<String>,
    pub on: String,
    pub when: Option<String>,
    pub set: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Expect {
    pub note: Vec<String>,
    pub after: Option<String>,
    pub on: String,
    pub when: Option<String>,
    pub within: String,
    pub command: Option<Command>,
    pub then: Option<Jump>,
}

/// Writes `doc` as YAML.
pub fn write(doc: &Doc) -> String {
    let mut w = Writer::default();
    for h in &doc.header {
        w.comment(0, h);
    }
    w.field(0, "process", &doc.process);
    w.raw(0, "version", &doc.version.to_string());
    if let Some(d) = &doc.description {
        w.field(0, "description", d);
    }
    if doc.saga {
        w.raw(0, "saga", "true");
    }
    w.blank();
    w.notes(0, &doc.start.note);
    w.open(0, "start");
    w.field(2, "on", &doc.start.on);
    w.field(2, "key", &doc.start.key);
    if let Some(c) = &doc.start.when {
        w.field(2, "when", c);
    }
    if !doc.correlate.is_empty() {
        w.blank();
        w.open(0, "correlate");
        for (on, key) in &doc.correlate {
            // Patterns are always quoted: a `*` would start a YAML alias.
            let _ = writeln!(w.out, "  {}: {}", json(on), scalar(key));
        }
    }
    if !doc.vars.is_empty() {
        w.blank();
        w.map(0, "vars", &doc.vars);
    }
    if let (None, None) = &doc.buffer {
    } else {
        w.blank();
        w.open(0, "buffer");
        if let Some(s) = &doc.buffer.0 {
            w.number(2, "size", s);
        }
        if let Some(t) = &doc.buffer.1 {
            w.field(2, "ttl", t);
        }
    }
    w.blank();
    w.open(0, "steps");
    w.steps(2, &doc.steps);
    if !doc.observe.is_empty() {
        w.blank();
        w.open(0, "observe");
        for o in &doc.observe {
            w.notes(2, &o.note);
            w.item(2, "on", &o.on);
            if let Some(c) = &o.when {
                w.field(4, "when", c);
            }
            w.map(4, "set", &o.set);
        }
    }
    if !doc.expect.is_empty() {
        w.blank();
        w.open(0, "expect");
        for e in &doc.expect {
            w.notes(2, &e.note);
            w.item(2, "after", e.after.as_deref().unwrap_or("start"));
            w.field(4, "on", &e.on);
            if let Some(c) = &e.when {
                w.field(4, "when", c);
            }
            w.field(4, "within", &e.within);
            w.open(4, "otherwise");
            if let Some(c) = &e.command {
                w.command(6, "command", c);
            }
            if let Some(j) = &e.then {
                w.jump(6, j);
            }
        }
    }
    w.out
}

#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn pad(&mut self, indent: usize) {
        self.out.extend(std::iter::repeat_n(' ', indent));
    }

    fn blank(&mut self) {
        self.out.push('\n');
    }

    fn comment(&mut self, indent: usize, text: &str) {
        for line in text.lines() {
            self.pad(indent);
            let _ = writeln!(self.out, "# {line}");
        }
    }

    fn notes(&mut self, indent: usize, notes: &[String]) {
        for n in notes {
            self.comment(indent, n);
        }
    }

    fn open(&mut self, indent: usize, key: &str) {
        self.pad(indent);
        let _ = writeln!(self.out, "{key}:");
    }

    /// `key: value` with the value quoted where YAML needs it.
    fn field(&mut self, indent: usize, key: &str, value: &str) {
        self.pad(indent);
        let _ = writeln!(self.out, "{key}: {}", scalar(value));
    }

    /// `key: value` with the value as it is (numbers, booleans).
    fn raw(&mut self, indent: usize, key: &str, value: &str) {
        self.pad(indent);
        let _ = writeln!(self.out, "{key}: {value}");
    }

    /// `key: 3`: plain when it is a number, quoted otherwise (the parser
    /// then says what is wrong with it).
    fn number(&mut self, indent: usize, key: &str, value: &str) {
        if value.parse::<f64>().is_ok_and(f64::is_finite) && !value.contains(['e', 'E']) {
            self.raw(indent, key, value);
        } else {
            self.field(indent, key, value);
        }
    }

    /// `- key: value`: the first field of a list item.
    fn item(&mut self, indent: usize, key: &str, value: &str) {
        self.pad(indent);
        let _ = writeln!(self.out, "- {key}: {}", scalar(value));
    }

    fn map(&mut self, indent: usize, key: &str, entries: &[(String, String)]) {
        if entries.is_empty() {
            self.raw(indent, key, "{}");
            return;
        }
        self.open(indent, key);
        for (k, v) in entries {
            self.field(indent + 2, &name(k), v);
        }
    }

    fn jump(&mut self, indent: usize, j: &Jump) {
        if let Some(n) = &j.note {
            self.comment(indent, n);
        }
        if j.step {
            self.field(indent, "goto", &j.to);
        } else {
            self.field(indent, "then", &j.to);
        }
    }

    /// `key: <word or step>` for `on_timeout`, `on_exhausted`, `default`.
    fn target(&mut self, indent: usize, key: &str, j: &Jump) {
        if let Some(n) = &j.note {
            self.comment(indent, n);
        }
        self.field(indent, key, &j.to);
    }

    fn command(&mut self, indent: usize, key: &str, c: &Command) {
        self.open(indent, key);
        self.field(indent + 2, "topic", &c.topic);
        self.field(indent + 2, "type", &c.kind);
        self.data(indent + 2, "data", &c.data);
    }

    fn data(&mut self, indent: usize, key: &str, d: &Data) {
        match d {
            Data::Expr(e) => self.field(indent, key, e),
            Data::Object(fields) if fields.is_empty() => self.raw(indent, key, "{}"),
            Data::Object(fields) => {
                self.open(indent, key);
                for (k, v) in fields {
                    self.data(indent + 2, &name(k), v);
                }
            }
            Data::List(_) => {
                let flow = flow(d);
                self.raw(indent, key, &flow);
            }
        }
    }

    fn steps(&mut self, indent: usize, steps: &[Step]) {
        for (i, s) in steps.iter().enumerate() {
            if i > 0 && indent == 2 {
                self.blank();
            }
            self.step(indent, s);
        }
    }

    fn step(&mut self, indent: usize, s: &Step) {
        let i = indent + 2;
        self.notes(indent, &s.note);
        self.item(indent, "id", &s.id);
        if let Some(d) = &s.description {
            self.field(i, "description", d);
        }
        match &s.body {
            Body::Task(t) => self.task(i, t),
            Body::Switch { cases, default } => {
                self.open(i, "switch");
                for c in cases {
                    self.notes(i + 2, &c.note);
                    self.item(i + 2, "when", &c.when);
                    self.jump(i + 4, &c.to);
                }
                if let Some(d) = default {
                    self.target(i, "default", d);
                }
            }
            Body::Set(entries) => self.map(i, "set", entries),
            Body::WaitFor(d) => self.field(i, "wait", d),
            Body::WaitUntil(e) => {
                self.open(i, "wait");
                self.field(i + 2, "until", e);
            }
            Body::Parallel(branches) => {
                self.open(i, "parallel");
                self.raw(i + 2, "join", "all");
                self.open(i + 2, "branches");
                for b in branches {
                    // A branch is a list of steps inside the list of branches.
                    // Written on its own, then indented under `- `; the
                    // first step's notes stay above the item.
                    let mut inner = Writer::default();
                    inner.steps(0, b);
                    let mut started = false;
                    for line in inner.out.lines() {
                        self.pad(i + 4);
                        if !started && line.starts_with('#') {
                            let _ = writeln!(self.out, "{line}");
                        } else if !started {
                            let _ = writeln!(self.out, "- {line}");
                            started = true;
                        } else {
                            let _ = writeln!(self.out, "  {line}");
                        }
                    }
                }
            }
        }
        if let Some(j) = &s.then {
            self.jump(i, j);
        }
    }

    fn task(&mut self, i: usize, t: &Task) {
        if let Some(c) = &t.command {
            self.command(i, if t.manual { "manual" } else { "command" }, c);
        }
        if let Some(c) = &t.call {
            self.open(i, "call");
            self.field(i + 2, "process", &c.process);
            self.field(i + 2, "key", &c.key);
            if !c.vars.is_empty() {
                self.map(i + 2, "vars", &c.vars);
            }
        }
        if !t.awaits.is_empty() {
            self.open(i, "await");
            for a in &t.awaits {
                self.notes(i + 2, &a.note);
                self.item(i + 2, "on", &a.on);
                if let Some(c) = &a.when {
                    self.field(i + 4, "when", c);
                }
                if !a.set.is_empty() {
                    self.map(i + 4, "set", &a.set);
                }
                if let Some(j) = &a.to {
                    self.jump(i + 4, j);
                }
            }
        }
        if let Some((note, d)) = &t.timeout {
            self.notes(i, note);
            self.field(i, "timeout", d);
        }
        if let Some(j) = &t.on_timeout {
            self.target(i, "on_timeout", j);
        }
        if let Some(r) = &t.retry {
            self.open(i, "retry");
            self.number(i + 2, "attempts", &r.attempts);
            if let Some(b) = &r.backoff {
                self.field(i + 2, "backoff", b);
            }
            if let Some(f) = &r.factor {
                self.number(i + 2, "factor", f);
            }
            if let Some(m) = &r.max_backoff {
                self.field(i + 2, "max_backoff", m);
            }
        }
        if let Some(j) = &t.on_exhausted {
            self.target(i, "on_exhausted", j);
        }
        match &t.compensate {
            Compensate::Unsaid => {}
            Compensate::Nothing(note) => {
                self.notes(i, note);
                self.raw(i, "compensate", "none");
            }
            Compensate::Command(note, c) => {
                self.notes(i, note);
                self.command(i, "compensate", c);
            }
        }
    }
}

/// A key: plain when it is a simple name, else quoted.
fn name(k: &str) -> String {
    let simple = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !reserved(k)
        && !k.starts_with('-');
    if simple { k.to_string() } else { json(k) }
}

/// A scalar value: plain where YAML reads it back as the same string,
/// double-quoted otherwise.
pub fn scalar(s: &str) -> String {
    let first = s.chars().next();
    let plain = match first {
        None => false,
        Some(c) => {
            !c.is_whitespace()
                && !"-?:,[]{}#&*!|>'\"%@`".contains(c)
                && !s.ends_with(char::is_whitespace)
                && !s.ends_with(':')
                && !s.contains(": ")
                && !s.contains(" #")
                && !s.contains(['\n', '\r', '\t'])
                && !reserved(s)
                && s.parse::<f64>().is_err()
        }
    };
    if plain { s.to_string() } else { json(s) }
}

/// Words YAML 1.1 readers take for booleans or null.
fn reserved(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "~"
    )
}

/// A double-quoted YAML scalar (JSON's string syntax is valid YAML).
fn json(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A list in flow style, every leaf quoted.
fn flow(d: &Data) -> String {
    match d {
        Data::Expr(e) => json(e),
        Data::List(items) => format!(
            "[{}]",
            items.iter().map(flow).collect::<Vec<_>>().join(", ")
        ),
        Data::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("{}: {}", json(k), flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_quoted_only_where_yaml_needs_it() {
        let cases = [
            ("event.data.orderId", "event.data.orderId"),
            ("vars.total > 10000", "vars.total > 10000"),
            (
                "vars.repeats > vars.repeatsAtRecovery && vars.runs < 3",
                "vars.repeats > vars.repeatsAtRecovery && vars.runs < 3",
            ),
            ("'welcome'", "\"'welcome'\""),
            (
                "has(vars.logs) ? vars.logs : 'unavailable'",
                "\"has(vars.logs) ? vars.logs : 'unavailable'\"",
            ),
            ("0", "\"0\""),
            ("1.5", "\"1.5\""),
            ("true", "\"true\""),
            ("on", "\"on\""),
            ("", "\"\""),
            ("-x", "\"-x\""),
            ("*", "\"*\""),
            ("a # b", "\"a # b\""),
            ("line\nbreak", "\"line\\nbreak\""),
            ("30s", "30s"),
            ("1h 30m", "1h 30m"),
        ];
        for (value, written) in cases {
            assert_eq!(scalar(value), written, "{value}");
        }
    }
}
