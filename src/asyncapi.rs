//! `baton asyncapi`: the event contract of process definitions, as an
//! AsyncAPI 3.1 document.
//!
//! For integrators: which events a process consumes and which commands it
//! emits, on which topics, with what in them. A channel per topic (the
//! events topic, and every topic commands, compensations and escalations go
//! to); `receive` operations for the start event, correlation, each step's
//! awaited outcomes, observe handlers and watchdogs; `send` operations for
//! commands, compensations and escalations. Payloads are inferred from the
//! definition: the event fields its CEL reads (`event.data.total`), the
//! command fields its data mappings write, with types where an expression
//! shows them. Headers are baton's CloudEvents attributes in Kafka's binary
//! mode, and the Kafka binding's key is the instance key.
//!
//! Reads compiled definitions only; knows nothing of Kafka clients.

use std::collections::{BTreeMap, BTreeSet};

use cel::common::ast::{Expr as Ast, IdedExpr, LiteralValue};
use serde_json::{Map, Value as Json, json};

use crate::engine::{CHILD_ENDED_PREFIX, CommandTemplate, DataMap, Definition, Expr, StepKind};

/// The AsyncAPI version written.
pub const ASYNCAPI: &str = "3.1.0";
/// The Kafka bindings' version written.
pub const KAFKA_BINDINGS: &str = "0.5.0";
/// The channel of domain events when no topic is given.
pub const EVENTS_CHANNEL: &str = "events";

/// What the document says beyond the definitions.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The topic domain events arrive on (one of `kafka.input_topics`);
    /// `None` leaves the channel's address open (`null`).
    pub events_topic: Option<String>,
}

/// The AsyncAPI document of `defs`: one process, or a set of them sharing
/// topics.
pub fn document(defs: &[&Definition], opts: &Options) -> Json {
    let mut c = Contract::new(opts);
    for def in defs {
        c.process(def);
    }
    c.finish(defs)
}

/// A message on a channel, gathered from every place that reads or writes it.
#[derive(Debug, Default)]
struct Message {
    /// The CloudEvents type, or a type pattern.
    kind: String,
    command: bool,
    /// Processes that send it (commands: their `ce_source`).
    sources: BTreeSet<String>,
    payload: Shape,
    /// Where the instance key comes from, per process.
    keys: BTreeMap<String, String>,
    /// `$message.payload#/...` of the first key that is a plain path.
    correlation: Option<String>,
    uses: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Channel {
    address: Option<String>,
    description: String,
    messages: BTreeMap<String, Message>,
}

#[derive(Debug)]
struct Operation {
    action: &'static str,
    channel: String,
    messages: Vec<String>,
    summary: String,
    description: Option<String>,
    process: String,
}

struct Contract {
    events: String,
    channels: BTreeMap<String, Channel>,
    operations: BTreeMap<String, Operation>,
}

impl Contract {
    fn new(opts: &Options) -> Contract {
        let events = opts
            .events_topic
            .clone()
            .unwrap_or_else(|| EVENTS_CHANNEL.to_string());
        let mut channels = BTreeMap::new();
        channels.insert(
            id(&events),
            Channel {
                address: opts.events_topic.clone(),
                description: match &opts.events_topic {
                    Some(t) => format!("Domain events baton consumes, on `{t}`."),
                    None => "Domain events baton consumes: any of the topics in baton's `kafka.input_topics` (the address is left open; `baton asyncapi --events-topic` names one).".to_string(),
                },
                messages: BTreeMap::new(),
            },
        );
        Contract {
            events: id(&events),
            channels,
            operations: BTreeMap::new(),
        }
    }

    fn process(&mut self, def: &Definition) {
        let p = def.process.as_str();
        let start = def.start.on.as_str().to_string();

        // Start: the key and the variables are read from the start event.
        let m = self.event(&start);
        m.uses.insert(format!("starts {p}"));
        read_key(m, p, def.start.key.source());
        if let Some(w) = &def.start.when {
            read(m, p, w.source(), "start.when", false);
        }
        for v in &def.vars {
            read(m, p, v.expr.source(), &format!("vars.{}", v.name), true);
        }
        let mut description = format!("Key: `{}`.", def.start.key.source());
        if let Some(w) = &def.start.when {
            description.push_str(&format!(" Only when `{}`.", w.source()));
        }
        self.receive(
            p,
            "start",
            vec![start.clone()],
            format!("Starts an instance of {p}."),
            Some(description),
        );

        // Everything a running instance receives, by purpose.
        let mut received: Vec<String> = Vec::new();
        for (i, s) in def.steps.iter().enumerate() {
            let StepKind::Task(t) = &s.kind else { continue };
            let mut kinds = Vec::new();
            for o in &t.outcomes {
                let on = o.on.as_str();
                if on.starts_with(CHILD_ENDED_PREFIX) {
                    continue; // a called process's end: baton's own record
                }
                let m = self.event(on);
                m.uses.insert(format!("awaited by {p} step `{}`", s.id));
                if let Some(w) = &o.when {
                    read(m, p, w.source(), &format!("{}: when", s.id), false);
                }
                // Read only when its `when` holds: not always there.
                for a in &o.set {
                    let what = format!("{}: vars.{}", s.id, a.name);
                    read(m, p, a.expr.source(), &what, o.when.is_none());
                }
                kinds.push(on.to_string());
            }
            if !kinds.is_empty() {
                received.extend(kinds.iter().cloned());
                let what = match (&t.command, t.manual) {
                    (Some(_), true) => "the outcome of the work it created",
                    (Some(_), false) => "the outcome of its command",
                    (None, _) => "the event it waits for",
                };
                self.receive(
                    p,
                    &format!("await.{}", s.id),
                    kinds,
                    format!("Step `{}` of {p} awaits {what}.", s.id),
                    t.timeout.map(|ms| format!("Timeout: {}.", duration(ms))),
                );
            }
            if let Some(c) = &t.command {
                let (purpose, summary) = if t.manual {
                    (
                        "task",
                        format!("Step `{}` of {p} creates work for a person.", s.id),
                    )
                } else {
                    (
                        "command",
                        format!("Step `{}` of {p} sends its command.", s.id),
                    )
                };
                self.send(def, c, &format!("{purpose}.{}", s.id), summary, i);
            }
            if let Some(c) = &t.compensate {
                self.send(
                    def,
                    c,
                    &format!("compensate.{}", s.id),
                    format!(
                        "Undoes step `{}` of {p} when the instance fails after it completed.",
                        s.id
                    ),
                    i,
                );
            }
        }
        if !def.observe.is_empty() {
            let mut kinds = Vec::new();
            for o in &def.observe {
                let on = o.on.as_str();
                let m = self.event(on);
                m.uses.insert(format!("observed by {p}"));
                if let Some(w) = &o.when {
                    read(m, p, w.source(), "observe: when", false);
                }
                for a in &o.set {
                    let what = format!("observe: vars.{}", a.name);
                    read(m, p, a.expr.source(), &what, o.when.is_none());
                }
                kinds.push(on.to_string());
            }
            received.extend(kinds.iter().cloned());
            self.receive(
                p,
                "observe",
                kinds,
                format!(
                    "Events {p} takes whenever they come (choreography): they update variables."
                ),
                None,
            );
        }
        for (n, e) in def.expect.iter().enumerate() {
            let on = e.on.as_str();
            let after = e.after.map_or("the start".to_string(), |a| {
                format!("step `{}`", def.steps[a].id)
            });
            let m = self.event(on);
            m.uses.insert(format!("expected by {p} after {after}"));
            if let Some(w) = &e.when {
                read(m, p, w.source(), "expect: when", false);
            }
            received.push(on.to_string());
            self.receive(
                p,
                &format!("expect.{n}"),
                vec![on.to_string()],
                format!(
                    "{p} expects this within {} after {after}.",
                    duration(e.within)
                ),
                None,
            );
            if let Some(c) = &e.command {
                self.send(
                    def,
                    c,
                    &format!("escalate.{n}"),
                    format!(
                        "{p} escalates when `{on}` does not come within {} after {after}.",
                        duration(e.within)
                    ),
                    usize::MAX,
                );
            }
        }

        // Correlation: every event of a running instance is found by the
        // key its type's first matching pattern gives.
        let mut correlated = Vec::new();
        for c in &def.correlate {
            let mut matched = false;
            let known: Vec<String> = received
                .iter()
                .chain(std::iter::once(&start))
                .filter(|k| c.on.matches(k) || **k == c.on.as_str())
                .cloned()
                .collect();
            for k in known {
                // Only the first pattern that matches a type decides its key.
                if def
                    .correlate
                    .iter()
                    .find(|x| x.on.matches(&k))
                    .map(|x| x.on.as_str())
                    == Some(c.on.as_str())
                {
                    let m = self.event(&k);
                    read_key(m, p, c.key.source());
                    if !correlated.contains(&k) {
                        correlated.push(k);
                    }
                }
                matched = true;
            }
            if !matched {
                let m = self.event(c.on.as_str());
                m.uses.insert(format!("correlated by {p}"));
                read_key(m, p, c.key.source());
                correlated.push(c.on.as_str().to_string());
            }
        }
        if !correlated.is_empty() {
            let keys: Vec<String> = def
                .correlate
                .iter()
                .map(|c| format!("`{}` → `{}`", c.on.as_str(), c.key.source()))
                .collect();
            self.receive(
                p,
                "correlate",
                correlated,
                format!(
                    "Events that reach a running instance of {p} through their correlation key."
                ),
                Some(format!("Keys: {}.", keys.join(", "))),
            );
        }
    }

    /// The events channel's message for `kind`.
    fn event(&mut self, kind: &str) -> &mut Message {
        let ch = self.channels.entry(self.events.clone()).or_default();
        ch.messages.entry(id(kind)).or_insert_with(|| Message {
            kind: kind.to_string(),
            ..Message::default()
        })
    }

    fn receive(
        &mut self,
        process: &str,
        purpose: &str,
        kinds: Vec<String>,
        summary: String,
        description: Option<String>,
    ) {
        let mut messages: Vec<String> = Vec::new();
        for k in kinds {
            let m = id(&k);
            if !messages.contains(&m) {
                messages.push(m);
            }
        }
        self.operations.insert(
            format!("{}.{purpose}", id(process)),
            Operation {
                action: "receive",
                channel: self.events.clone(),
                messages,
                summary,
                description,
                process: process.to_string(),
            },
        );
    }

    /// A command baton sends: on its topic's channel, with the payload its
    /// data mapping writes.
    fn send(
        &mut self,
        def: &Definition,
        c: &CommandTemplate,
        purpose: &str,
        summary: String,
        step: usize,
    ) {
        let p = def.process.as_str();
        let channel = id(&c.topic);
        let ch = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| Channel {
                address: Some(c.topic.clone()),
                description: format!("Commands baton sends on `{}`.", c.topic),
                messages: BTreeMap::new(),
            });
        if ch.description.starts_with("Domain events") {
            ch.description
                .push_str(" Commands baton sends go here too.");
        }
        let key = id(&c.kind);
        let fresh = !ch.messages.contains_key(&key);
        let m = ch.messages.entry(key.clone()).or_insert_with(|| Message {
            kind: c.kind.clone(),
            command: true,
            ..Message::default()
        });
        let shape = data_shape(&c.data);
        if fresh || m.payload.is_empty() {
            m.payload = shape;
        } else {
            m.payload.merge(shape);
        }
        m.command = true;
        m.sources.insert(p.to_string());
        m.keys.insert(
            p.to_string(),
            format!("`{}` of its start event", def.start.key.source()),
        );
        let via = match def.steps.get(step) {
            Some(s) => format!("{p} step `{}`", s.id),
            None => format!("{p} watchdog"),
        };
        m.uses.insert(format!("sent by {via}"));
        self.operations.insert(
            format!("{}.{purpose}", id(p)),
            Operation {
                action: "send",
                channel,
                messages: vec![key],
                summary,
                description: None,
                process: p.to_string(),
            },
        );
    }

    fn finish(self, defs: &[&Definition]) -> Json {
        let names: Vec<String> = defs
            .iter()
            .map(|d| format!("{} v{}", d.process, d.version))
            .collect();
        let (title, version, description) = match defs {
            [d] => (
                format!("baton process {}", d.process),
                d.version.to_string(),
                d_description(d),
            ),
            _ => (
                "baton processes".to_string(),
                names.join(", "),
                format!(
                    "The events and commands of {}, as baton runs them.",
                    names.join(", ")
                ),
            ),
        };
        let mut channels = Map::new();
        for (cid, ch) in &self.channels {
            let mut messages = Map::new();
            for (mid, m) in &ch.messages {
                messages.insert(mid.clone(), message(m));
            }
            let mut kafka = Map::new();
            if let Some(a) = &ch.address {
                kafka.insert("topic".into(), json!(a));
            }
            kafka.insert("bindingVersion".into(), json!(KAFKA_BINDINGS));
            channels.insert(
                cid.clone(),
                json!({
                    "address": ch.address,
                    "description": ch.description,
                    "messages": messages,
                    "bindings": { "kafka": kafka },
                }),
            );
        }
        let mut operations = Map::new();
        for (oid, op) in &self.operations {
            let mut o = Map::new();
            o.insert("action".into(), json!(op.action));
            o.insert(
                "channel".into(),
                json!({ "$ref": format!("#/channels/{}", op.channel) }),
            );
            o.insert("summary".into(), json!(op.summary));
            if let Some(d) = &op.description {
                o.insert("description".into(), json!(d));
            }
            o.insert(
                "messages".into(),
                Json::Array(
                    op.messages
                        .iter()
                        .map(|m| json!({ "$ref": format!("#/channels/{}/messages/{m}", op.channel) }))
                        .collect(),
                ),
            );
            o.insert("tags".into(), json!([{ "name": op.process }]));
            if op.action == "receive" {
                o.insert(
                    "bindings".into(),
                    json!({ "kafka": {
                        "groupId": { "type": "string", "description": "baton's consumer group (`kafka.group_id`, default `baton`)" },
                        "bindingVersion": KAFKA_BINDINGS,
                    }}),
                );
            }
            operations.insert(oid.clone(), Json::Object(o));
        }
        json!({
            "asyncapi": ASYNCAPI,
            "info": {
                "title": title,
                "version": version,
                "description": description,
                "tags": defs.iter().map(|d| json!({ "name": d.process })).collect::<Vec<_>>(),
            },
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
        })
    }
}

fn d_description(d: &Definition) -> String {
    format!(
        "The events baton consumes and the commands it sends for process {} (version {}), inferred from its definition. Calls of other processes and their ends travel on baton's own topics and are not part of this contract.",
        d.process, d.version
    )
}

/// A message object: baton's CloudEvents headers, the inferred payload, the
/// instance key as the Kafka key.
fn message(m: &Message) -> Json {
    let mut headers = Map::new();
    let mut required = vec!["ce_specversion", "ce_id", "ce_type", "ce_source"];
    headers.insert(
        "ce_specversion".into(),
        json!({ "type": "string", "const": "1.0" }),
    );
    let mut ce_type = Map::new();
    ce_type.insert("type".into(), json!("string"));
    if m.kind.contains('*') {
        ce_type.insert("pattern".into(), json!(glob_regex(&m.kind)));
        ce_type.insert(
            "description".into(),
            json!(format!("Any type matching `{}`.", m.kind)),
        );
    } else {
        ce_type.insert("const".into(), json!(m.kind));
    }
    headers.insert("ce_type".into(), Json::Object(ce_type));
    if m.command {
        headers.insert(
            "ce_id".into(),
            json!({ "type": "string", "description": "Deterministic: `<process>/<key>/<step>/<attempt>` (a step entered again adds `#<visit>`; a compensation adds `/compensate`), so receivers can deduplicate." }),
        );
        let sources: Vec<String> = m.sources.iter().map(|p| format!("baton/{p}")).collect();
        headers.insert(
            "ce_source".into(),
            json!({ "type": "string", "enum": sources }),
        );
        headers.insert(
            "ce_time".into(),
            json!({ "type": "string", "format": "date-time" }),
        );
        headers.insert(
            "ce_subject".into(),
            json!({ "type": "string", "description": "The instance key." }),
        );
        headers.insert(
            "content-type".into(),
            json!({ "type": "string", "const": "application/json" }),
        );
        headers.insert(
            "traceparent".into(),
            json!({ "type": "string", "description": "W3C trace context of the step that sent it." }),
        );
        required.extend(["ce_time", "ce_subject", "content-type"]);
    } else {
        headers.insert(
            "ce_id".into(),
            json!({ "type": "string", "description": "Unique per event: an instance ignores an id it has seen." }),
        );
        headers.insert("ce_source".into(), json!({ "type": "string" }));
        headers.insert(
            "ce_time".into(),
            json!({ "type": "string", "format": "date-time", "description": "The event's time, which timeouts count from (else the record's timestamp)." }),
        );
        headers.insert(
            "content-type".into(),
            json!({ "type": "string", "description": "JSON (`application/json`); a structured-mode CloudEvent (`application/cloudevents+json`, attributes in the payload) is read too." }),
        );
    }
    let headers = json!({
        "type": "object",
        "properties": headers,
        "required": required,
    });
    let key_description = if m.keys.is_empty() {
        "Any key; the correlation key keeps an instance's events in order on one partition."
            .to_string()
    } else {
        let keys: Vec<String> = m.keys.iter().map(|(p, k)| format!("{p}: {k}")).collect();
        if m.command {
            format!("The instance key ({}).", keys.join("; "))
        } else {
            format!(
                "The correlation key ({}); keyed so, an instance's events stay in order on one partition, and `runtime.in_place` can take them without re-keying.",
                keys.join("; ")
            )
        }
    };
    let mut o = Map::new();
    o.insert("name".into(), json!(m.kind));
    o.insert("title".into(), json!(m.kind));
    o.insert(
        "summary".into(),
        json!(format!(
            "{} {}",
            if m.command { "Command" } else { "Event" },
            m.uses.iter().cloned().collect::<Vec<_>>().join("; ")
        )),
    );
    o.insert("contentType".into(), json!("application/json"));
    o.insert("headers".into(), headers);
    o.insert("payload".into(), m.payload.schema(true));
    if let Some(loc) = &m.correlation {
        o.insert(
            "correlationId".into(),
            json!({ "description": "The correlation key of the instance.", "location": loc }),
        );
    }
    o.insert(
        "bindings".into(),
        json!({ "kafka": {
            "key": { "type": "string", "description": key_description },
            "bindingVersion": KAFKA_BINDINGS,
        }}),
    );
    Json::Object(o)
}

/// A JSON Schema being inferred: a value, an object's fields, where they
/// are read or written.
#[derive(Debug, Default, Clone, PartialEq)]
struct Shape {
    /// JSON Schema `type` (one, or `string`/`integer` for keys).
    types: Vec<&'static str>,
    constant: Option<Json>,
    format: Option<&'static str>,
    notes: BTreeSet<String>,
    fields: BTreeMap<String, Shape>,
    required: BTreeSet<String>,
}

impl Shape {
    fn is_empty(&self) -> bool {
        *self == Shape::default()
    }

    /// The shape at `path`, made on the way.
    fn at(&mut self, path: &[String]) -> &mut Shape {
        let mut cur = self;
        for f in path {
            cur.types = vec!["object"];
            cur = cur.fields.entry(f.clone()).or_default();
        }
        cur
    }

    /// Marks `path` as always there.
    fn require(&mut self, path: &[String]) {
        let mut cur = self;
        for f in path {
            cur.required.insert(f.clone());
            cur = cur.fields.entry(f.clone()).or_default();
        }
    }

    /// Another use of the same message: fields of both; what differs
    /// becomes unknown; required only if both require it.
    fn merge(&mut self, other: Shape) {
        if self.types != other.types {
            self.types.clear();
        }
        if self.constant != other.constant {
            self.constant = None;
        }
        if self.format != other.format {
            self.format = None;
        }
        self.notes.extend(other.notes);
        self.required = self
            .required
            .intersection(&other.required)
            .cloned()
            .collect();
        for (k, v) in other.fields {
            match self.fields.get_mut(&k) {
                Some(mine) => mine.merge(v),
                None => {
                    self.fields.insert(k, v);
                }
            }
        }
    }

    fn schema(&self, root: bool) -> Json {
        let mut o = Map::new();
        match self.types.as_slice() {
            [] if root && !self.fields.is_empty() => {
                o.insert("type".into(), json!("object"));
            }
            [] => {}
            [one] => {
                o.insert("type".into(), json!(one));
            }
            several => {
                o.insert("type".into(), json!(several));
            }
        }
        if let Some(c) = &self.constant {
            o.insert("const".into(), c.clone());
        }
        if let Some(f) = self.format {
            o.insert("format".into(), json!(f));
        }
        if !self.notes.is_empty() {
            o.insert(
                "description".into(),
                json!(self.notes.iter().cloned().collect::<Vec<_>>().join("; ")),
            );
        }
        if !self.fields.is_empty() {
            let props: Map<String, Json> = self
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.schema(false)))
                .collect();
            o.insert("properties".into(), Json::Object(props));
            if !self.required.is_empty() {
                o.insert(
                    "required".into(),
                    json!(self.required.iter().collect::<Vec<_>>()),
                );
            }
        }
        Json::Object(o)
    }
}

/// Records what an expression reads from the event's data; `plain`: the
/// expression is a mapping, so a bare path it reads must be there.
fn read(m: &mut Message, process: &str, source: &str, what: &str, plain: bool) {
    for (path, tested) in event_paths(source) {
        if path.is_empty() {
            continue;
        }
        let s = m.payload.at(&path);
        s.notes.insert(if tested {
            format!("tested by {process} ({what})")
        } else {
            format!("read by {process} ({what})")
        });
    }
    if plain && let Some(path) = bare_path(source) {
        m.payload.require(&path);
    }
}

/// Records the instance key an event gives: a string or an integer that
/// must be there.
fn read_key(m: &mut Message, process: &str, source: &str) {
    m.keys.insert(process.to_string(), format!("`{source}`"));
    for (path, _) in event_paths(source) {
        if path.is_empty() {
            continue;
        }
        let s = m.payload.at(&path);
        s.notes.insert(format!("the instance key of {process}"));
        if s.fields.is_empty() {
            s.types = vec!["string", "integer"];
        }
    }
    if let Some(path) = bare_path(source) {
        m.payload.require(&path);
        if m.correlation.is_none() {
            let pointer: Vec<String> = path
                .iter()
                .map(|f| f.replace('~', "~0").replace('/', "~1"))
                .collect();
            m.correlation = Some(format!("$message.payload#/{}", pointer.join("/")));
        }
    }
}

fn parse(source: &str) -> Option<IdedExpr> {
    cel::parser::Parser::new().parse(source).ok()
}

/// `event.data.a.b` as `[a, b]`, when that is the whole expression.
fn bare_path(source: &str) -> Option<Vec<String>> {
    let e = parse(source)?;
    let (root, fields, tested) = chain(&e)?;
    (root == "event" && !tested && fields.first().is_some_and(|f| f == "data"))
        .then(|| fields[1..].to_vec())
}

/// Every `event.data...` path an expression reads, and whether it only
/// tests for it (`has(...)`).
fn event_paths(source: &str) -> Vec<(Vec<String>, bool)> {
    let mut out = Vec::new();
    if let Some(e) = parse(source) {
        walk(&e, &mut out);
    }
    out
}

fn walk(e: &IdedExpr, out: &mut Vec<(Vec<String>, bool)>) {
    if let Some((root, fields, tested)) = chain(e)
        && root == "event"
    {
        if fields.first().is_some_and(|f| f == "data") {
            out.push((fields[1..].to_vec(), tested));
        }
        return;
    }
    crate::engine::for_each_child(e, &mut |c| walk(c, out));
}

/// `root.f1.f2...`: the root, the fields, and whether the last is a `has()` test.
fn chain(e: &IdedExpr) -> Option<(String, Vec<String>, bool)> {
    match &e.expr {
        Ast::Ident(n) => Some((n.clone(), Vec::new(), false)),
        Ast::Select(s) => {
            let (root, mut fields, inner_test) = chain(&s.operand)?;
            if inner_test {
                return None;
            }
            fields.push(s.field.clone());
            Some((root, fields, s.test))
        }
        _ => None,
    }
}

/// The payload a command's data mapping writes: every field always there.
fn data_shape(d: &DataMap) -> Shape {
    match d {
        DataMap::Expr(e) => expr_shape(e),
        DataMap::Object(fields) => {
            let mut s = Shape {
                types: vec!["object"],
                ..Shape::default()
            };
            for (k, v) in fields {
                s.fields.insert(k.clone(), data_shape(v));
                s.required.insert(k.clone());
            }
            s
        }
        DataMap::List(items) => {
            let mut s = Shape {
                types: vec!["array"],
                ..Shape::default()
            };
            s.notes.insert(format!("{} items", items.len()));
            s
        }
    }
}

/// What a CEL mapping shows of its value's type.
fn expr_shape(e: &Expr) -> Shape {
    let mut s = Shape::default();
    s.notes.insert(format!("`{}`", e.source()));
    if let Some(ast) = parse(e.source()) {
        let (types, constant, format) = infer(&ast);
        s.types = types;
        s.constant = constant;
        s.format = format;
    }
    s
}

type Inferred = (Vec<&'static str>, Option<Json>, Option<&'static str>);

fn infer(e: &IdedExpr) -> Inferred {
    let one = |t: &'static str| (vec![t], None, None);
    match &e.expr {
        Ast::Literal(l) => match l {
            LiteralValue::String(s) => (vec!["string"], Some(json!(s.inner())), None),
            LiteralValue::Int(i) => (vec!["integer"], Some(json!(*i.inner())), None),
            LiteralValue::UInt(u) => (vec!["integer"], Some(json!(*u.inner())), None),
            LiteralValue::Double(d) => (vec!["number"], Some(json!(*d.inner())), None),
            LiteralValue::Boolean(b) => (vec!["boolean"], Some(json!(*b.inner())), None),
            LiteralValue::Null => one("null"),
            LiteralValue::Bytes(_) => one("string"),
        },
        Ast::Ident(n) => match n.as_str() {
            "key" => one("string"),
            "attempt" => one("integer"),
            "now" => (vec!["string"], None, Some("date-time")),
            _ => (Vec::new(), None, None),
        },
        Ast::Select(_) => match chain(e) {
            Some((root, fields, false))
                if root == "event" && fields.len() == 1 && fields[0] == "time" =>
            {
                (vec!["string"], None, Some("date-time"))
            }
            Some((root, fields, false))
                if root == "event" && fields.len() == 1 && fields[0] != "data" =>
            {
                one("string")
            }
            Some((_, _, true)) => one("boolean"),
            _ => (Vec::new(), None, None),
        },
        Ast::Call(c) => match c.func_name.as_str() {
            "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" | "_&&_" | "_||_" | "!_" | "@in"
            | "has" | "startsWith" | "endsWith" | "contains" | "matches" | "exists" | "all" => {
                one("boolean")
            }
            "size" | "int" => one("integer"),
            "double" => one("number"),
            "string" => one("string"),
            "timestamp" => (vec!["string"], None, Some("date-time")),
            "_+_" | "_-_" | "_*_" | "_/_" | "_%_" => {
                let parts: Vec<Inferred> = c.args.iter().map(infer).collect();
                let has = |t: &str| parts.iter().any(|p| p.0 == [t]);
                if c.func_name == "_+_" && has("string") {
                    one("string")
                } else if has("integer") || has("number") {
                    one("number")
                } else {
                    (Vec::new(), None, None)
                }
            }
            "_?_:_" => {
                let parts: Vec<Inferred> = c.args.iter().skip(1).map(infer).collect();
                match parts.as_slice() {
                    [a, b] if !a.0.is_empty() && a.0 == b.0 => (a.0.clone(), None, a.2),
                    _ => (Vec::new(), None, None),
                }
            }
            _ => (Vec::new(), None, None),
        },
        Ast::List(_) => one("array"),
        Ast::Map(_) | Ast::Struct(_) => one("object"),
        Ast::Comprehension(_) | Ast::Unspecified => (Vec::new(), None, None),
    }
}

/// A name usable as a channel, message or operation id.
fn id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A type pattern (`com.acme.*`) as a regular expression.
fn glob_regex(p: &str) -> String {
    let mut out = String::from("^");
    for c in p.chars() {
        match c {
            '*' => out.push_str(".*"),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out.push('$');
    out
}

fn duration(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_from_the_event_are_found_with_their_tests() {
        type Case = (&'static str, Vec<(Vec<&'static str>, bool)>);
        let cases: [Case; 5] = [
            ("event.data.orderId", vec![(vec!["orderId"], false)]),
            (
                "has(event.data.reason) ? event.data.reason : 'none'",
                vec![(vec!["reason"], true), (vec!["reason"], false)],
            ),
            ("event.data.a.b + vars.x", vec![(vec!["a", "b"], false)]),
            ("event.time", vec![]),
            ("vars.total > 10", vec![]),
        ];
        for (source, want) in cases {
            let got = event_paths(source);
            let want: Vec<(Vec<String>, bool)> = want
                .into_iter()
                .map(|(p, t)| (p.into_iter().map(String::from).collect(), t))
                .collect();
            assert_eq!(got, want, "{source}");
        }
        assert_eq!(
            bare_path("event.data.a.b"),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(bare_path("has(event.data.a)"), None);
        assert_eq!(bare_path("vars.a"), None);
    }

    #[test]
    fn mappings_show_their_types_where_the_expression_does() {
        let cases = [
            ("'welcome'", vec!["string"], Some(json!("welcome"))),
            ("42", vec!["integer"], Some(json!(42))),
            ("key", vec!["string"], None),
            ("attempt", vec!["integer"], None),
            ("vars.runs + 1", vec!["number"], None),
            ("'restart-' + vars.service", vec!["string"], None),
            ("vars.a == 1", vec!["boolean"], None),
            (
                "vars.severity == 'critical' ? 'P1' : 'P2'",
                vec!["string"],
                None,
            ),
            ("has(vars.logs) ? vars.logs : 'unavailable'", vec![], None),
            ("vars.total", vec![], None),
        ];
        for (source, types, constant) in cases {
            let e = Expr::parse(source).expect("valid CEL");
            let s = expr_shape(&e);
            assert_eq!(s.types, types, "{source}");
            assert_eq!(s.constant, constant, "{source}");
        }
    }

    #[test]
    fn type_patterns_become_anchored_regular_expressions() {
        assert_eq!(glob_regex("com.acme.*"), "^com\\.acme\\..*$");
        assert_eq!(id("com.acme.task.completed"), "com.acme.task.completed");
        assert_eq!(id("com.acme.*"), "com.acme._");
    }
}
