//! From a command record to the HTTP request it becomes.
//!
//! The URL template, the headers and the body mapping are CEL, compiled by
//! the engine's [`Expr`] when the configuration loads and evaluated with the
//! engine's [`Scope`]: the command is the event at hand (`event.id`,
//! `event.type`, `event.source`, `event.time`, `event.data`), `key` is its
//! instance key, `attempt` its attempt number and `now` the time of the call,
//! so a mapping reads as it does in a definition.

use std::sync::Arc;

use serde_json::Value as Json;

use super::config::Publish;
use crate::engine::{DataMap, Event, Expr, Millis, ROOTS, Scope, Vars};
use crate::kafka::Incoming;
use crate::wire::cloudevents::{self, DecodeError, PlainJson};

/// Compiles a CEL expression and checks the names it reads.
pub fn check_expr(source: &str) -> Result<Expr, String> {
    let e = Expr::parse(source)
        .map_err(|why| format!("CEL expression `{source}` does not parse: {why}"))?;
    if let Some(root) = e.unknown_roots().first() {
        let hint = if ["data", "id", "type", "source", "time", "subject"].contains(&root.as_str()) {
            format!(" (the command is `event`: write `event.{root}`)")
        } else {
            String::new()
        };
        return Err(format!(
            "CEL expression `{source}` refers to unknown name `{root}`{hint}; expressions may use {}",
            ROOTS.join(", ")
        ));
    }
    Ok(e)
}

/// A text with `{CEL}` holes: the URL of a call.
#[derive(Debug, Default)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Hole(Expr),
}

impl Template {
    /// Splits `text` at its `{…}` holes (CEL may hold braces and quoted text of its own).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' => {
                    let start = at + 1;
                    let mut depth = 1;
                    let mut quote: Option<char> = None;
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match (quote, c) {
                            (Some(_), '\\') => {
                                chars.next();
                            }
                            (Some(q), c) if c == q => quote = None,
                            (Some(_), _) => {}
                            (None, '\'' | '"') => quote = Some(c),
                            (None, '{') => depth += 1,
                            (None, '}') => {
                                depth -= 1;
                                if depth == 0 {
                                    end = Some(i);
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    let Some(end) = end else {
                        return Err(format!("`{text}`: the `{{` at {at} is never closed"));
                    };
                    let source = text[start..end].trim();
                    if source.is_empty() {
                        return Err(format!("`{text}`: empty `{{}}` at {at}"));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Hole(check_expr(source)?));
                }
                '}' => return Err(format!("`{text}`: `}}` at {at} closes nothing")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// The text with every hole's value percent-encoded in.
    pub fn render(&self, scope: &Scope<'_>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Hole(e) => {
                    let v = e.eval(scope).map_err(|e| e.to_string())?;
                    let text = scalar(&v).ok_or_else(|| {
                        format!(
                            "`{}` gave {}, expected a string or a number",
                            e.source(),
                            kind(&v)
                        )
                    })?;
                    encode_into(&text, &mut out);
                }
            }
        }
        Ok(out)
    }
}

/// A string, number or boolean as text.
fn scalar(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters: a value stays
/// one path segment or one query value whatever it holds (`/`, `?`, `&`, spaces).
fn encode_into(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// What a call sends as its body.
#[derive(Debug)]
pub enum Body {
    /// No body.
    None,
    /// The command's data as it is.
    Data,
    /// A mapping over the command (boxed: a compiled tree is large).
    Map(Box<DataMap>),
}

/// A `body` table from the file as a tree of expressions: strings are CEL,
/// numbers and booleans are constants.
pub fn datamap(v: &toml::Value, at: &str, problems: &mut Vec<String>) -> Option<DataMap> {
    let literal = |source: String, problems: &mut Vec<String>| match Expr::parse(&source) {
        Ok(e) => Some(DataMap::Expr(e)),
        Err(why) => {
            problems.push(format!("{at}: {why}"));
            None
        }
    };
    match v {
        toml::Value::String(s) => match check_expr(s) {
            Ok(e) => Some(DataMap::Expr(e)),
            Err(why) => {
                problems.push(format!("{at}: {why}"));
                None
            }
        },
        toml::Value::Integer(i) => literal(i.to_string(), problems),
        toml::Value::Float(f) if f.is_finite() => literal(format!("{f:?}"), problems),
        toml::Value::Boolean(b) => literal(b.to_string(), problems),
        toml::Value::Float(_) | toml::Value::Datetime(_) => {
            problems.push(format!(
                "{at}: write this value as CEL in a string (a TOML date or a non-finite number has no JSON form)"
            ));
            None
        }
        toml::Value::Array(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.push(datamap(item, &format!("{at}[{i}]"), problems)?);
            }
            Some(DataMap::List(out))
        }
        toml::Value::Table(t) => {
            let mut out = Vec::new();
            for (k, item) in t {
                out.push((k.clone(), datamap(item, &format!("{at}.{k}"), problems)?));
            }
            Some(DataMap::Object(out))
        }
    }
}

/// One command type's call, compiled.
#[derive(Debug)]
pub struct Route {
    pub kind: String,
    /// Index into the connector's endpoints.
    pub endpoint: usize,
    pub method: ureq::http::Method,
    /// The endpoint's base address followed by the command's path.
    pub url: Template,
    /// The endpoint's headers with the command's over them.
    pub headers: Vec<(String, Arc<Expr>)>,
    pub body: Body,
    pub result_topic: String,
    pub publish: Publish,
}

/// A command as read from its topic.
#[derive(Debug, Clone)]
pub struct Command {
    /// Its CloudEvent: `id` is baton's `<process>/<key>/<step>/<attempt>`.
    pub event: Event,
    /// The instance key: the record's key (`ce_subject` if it has none).
    pub key: String,
    /// The record's key, which outcomes carry too.
    pub record_key: Vec<u8>,
    /// The attempt the command id ends with (1 when it has none).
    pub attempt: u32,
    /// `traceparent` and `tracestate`, passed on to the call and the outcome.
    pub trace: Vec<(String, Vec<u8>)>,
}

impl Command {
    /// Reads a command record (a binary or structured CloudEvent).
    pub fn decode(m: &Incoming) -> Result<Command, DecodeError> {
        let record = m.event_record();
        // baton's commands are binary CloudEvents; plain JSON with a `type`
        // field is read as `baton run` reads it.
        let plain = PlainJson {
            type_field: "type".into(),
            id_field: "id".into(),
        };
        let event = cloudevents::decode(&record, &plain)?;
        let key = match &m.key {
            Some(k) if !k.is_empty() => String::from_utf8_lossy(k).into_owned(),
            _ => cloudevents::header(&m.headers, "ce_subject")
                .unwrap_or_default()
                .to_string(),
        };
        let attempt = event
            .id
            .rsplit('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        let trace = m
            .headers
            .iter()
            .filter(|(k, _)| {
                k.eq_ignore_ascii_case("traceparent") || k.eq_ignore_ascii_case("tracestate")
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        Ok(Command {
            event,
            record_key: m.key.clone().unwrap_or_else(|| key.clone().into_bytes()),
            key,
            attempt,
            trace,
        })
    }

    /// The trace header `name`, as text.
    pub fn trace_header(&self, name: &str) -> Option<&str> {
        self.trace
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// An HTTP request, built and ready to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: ureq::http::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// JSON.
    pub body: Option<Vec<u8>>,
}

impl Route {
    /// The request for `command` at `now`; the error says which part failed and why.
    pub fn request(&self, command: &Command, now: Millis) -> Result<Request, String> {
        let vars = Vars::new();
        let scope = Scope::new(
            Some(&command.event),
            &vars,
            &command.key,
            now,
            command.attempt,
        );
        let url = self.url.render(&scope).map_err(|e| format!("url: {e}"))?;
        let mut headers = Vec::new();
        for (name, e) in &self.headers {
            let v = e.eval(&scope).map_err(|e| format!("header {name}: {e}"))?;
            if v.is_null() {
                // A null header is left out: `has(…) ? … : null` makes it optional.
                continue;
            }
            let text = scalar(&v).ok_or_else(|| {
                format!(
                    "header {name}: `{}` gave {}, expected a string or a number",
                    e.source(),
                    kind(&v)
                )
            })?;
            if text.contains(['\r', '\n']) {
                return Err(format!("header {name}: the value holds a line break"));
            }
            headers.push((name.clone(), text));
        }
        let body = match &self.body {
            Body::None => None,
            Body::Data => Some(serde_json::to_vec(&command.event.data)),
            Body::Map(m) => Some(serde_json::to_vec(
                &m.build(&scope).map_err(|e| format!("body: {e}"))?,
            )),
        }
        .transpose()
        .map_err(|e| format!("body: {e}"))?;
        Ok(Request {
            method: self.method.clone(),
            url,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn command() -> Command {
        Command {
            event: Event {
                id: "onboarding/lead 1/crm-account/2".into(),
                kind: "com.acme.crm.account.create".into(),
                source: "baton/onboarding".into(),
                time: 1_767_603_600_000,
                data: json!({"lead": "lead 1/a?b", "company": "Initech", "seats": 12}),
            },
            key: "lead 1".into(),
            record_key: b"lead 1".to_vec(),
            attempt: 2,
            trace: Vec::new(),
        }
    }

    fn route(path: &str, body: Body, headers: &[(&str, &str)]) -> Route {
        Route {
            kind: "com.acme.crm.account.create".into(),
            endpoint: 0,
            method: ureq::http::Method::POST,
            url: Template::parse(&format!("https://crm.example/api{path}")).expect("template"),
            headers: headers
                .iter()
                .map(|(n, e)| (n.to_string(), Arc::new(check_expr(e).expect("expr"))))
                .collect(),
            body,
            result_topic: "results".into(),
            publish: Publish::Always,
        }
    }

    #[test]
    fn url_holes_are_cel_and_percent_encoded() {
        let r = route(
            "/leads/{event.data.lead}/seats/{event.data.seats}?attempt={attempt}&m={ {'a': 1}.size() }",
            Body::None,
            &[],
        );
        let req = r.request(&command(), 0).expect("request");
        assert_eq!(
            req.url,
            "https://crm.example/api/leads/lead%201%2Fa%3Fb/seats/12?attempt=2&m=1"
        );
        for bad in ["/x/{event.data.lead", "/x/}", "/x/{}", "/x/{data.lead}"] {
            assert!(Template::parse(bad).is_err(), "{bad} should not parse");
        }
        let err = Template::parse("/x/{data.lead}").expect_err("unknown root");
        assert!(err.contains("write `event.data`"), "{err}");
        let missing = route("/x/{event.data.nope}", Body::None, &[]);
        let err = missing.request(&command(), 0).expect_err("no such field");
        assert!(err.starts_with("url: `event.data.nope` failed"), "{err}");
    }

    #[test]
    fn headers_and_body_map_the_command() {
        let mut map = Vec::new();
        let problems = &mut Vec::new();
        let body: toml::Value = toml::from_str(
            r#"name = "event.data.company"
tier = 2
trial = true
ids = ["key", "event.id"]
"#,
        )
        .expect("toml");
        if let Some(DataMap::Object(fields)) = datamap(&body, "body", problems) {
            map = fields;
        }
        assert!(problems.is_empty(), "{problems:?}");
        let r = route(
            "",
            Body::Map(Box::new(DataMap::Object(map))),
            &[
                ("X-Tenant", "'acme'"),
                ("X-Seats", "event.data.seats"),
                (
                    "X-Optional",
                    "has(event.data.absent) ? event.data.absent : null",
                ),
            ],
        );
        let req = r.request(&command(), 0).expect("request");
        assert_eq!(
            req.headers,
            vec![
                ("X-Tenant".to_string(), "acme".to_string()),
                ("X-Seats".to_string(), "12".to_string())
            ]
        );
        let body: Json = serde_json::from_slice(&req.body.expect("body")).expect("json");
        assert_eq!(
            body,
            json!({"name": "Initech", "tier": 2, "trial": true, "ids": ["lead 1", "onboarding/lead 1/crm-account/2"]})
        );
        let data = route("", Body::Data, &[])
            .request(&command(), 0)
            .expect("request");
        let sent: Json = serde_json::from_slice(&data.body.expect("body")).expect("json");
        assert_eq!(sent, command().event.data);
    }

    #[test]
    fn commands_decode_with_their_key_attempt_and_trace() {
        let c = crate::engine::Command {
            id: "onboarding/lead-1/credit-check#2/3".into(),
            topic: "risk.commands".into(),
            kind: "com.acme.credit.check".into(),
            key: "lead-1".into(),
            data: json!({"amount": 5}),
            step: "credit-check".into(),
            attempt: 3,
            purpose: crate::engine::Purpose::Task,
        };
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (headers, payload) = cloudevents::encode_command(
            &c,
            "onboarding",
            1_000,
            vec![("traceparent".into(), tp.as_bytes().to_vec())],
        );
        let m = Incoming {
            topic: "risk.commands".into(),
            partition: 0,
            offset: 4,
            timestamp: Some(1_000),
            key: Some(b"lead-1".to_vec()),
            headers,
            payload: Some(payload),
        };
        let got = Command::decode(&m).expect("decodes");
        assert_eq!(got.key, "lead-1");
        assert_eq!(got.attempt, 3);
        assert_eq!(got.event.kind, "com.acme.credit.check");
        assert_eq!(got.trace_header("traceparent"), Some(tp));
        let junk = Incoming {
            payload: Some(b"{not json".to_vec()),
            headers: Vec::new(),
            ..m
        };
        assert!(Command::decode(&junk).is_err());
    }
}
