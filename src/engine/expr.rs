//! CEL expressions as the engine evaluates them.
//!
//! An [`Expr`] is compiled once when a definition is loaded; evaluating it binds
//! only the roots the expression mentions (`event`, `vars`, `key`, `now`,
//! `attempt`), so an expression that reads one variable does not pay for
//! converting the event.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr as Ast};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::objects::{Key, Map};
use cel::parser::Expression;
use cel::{Context, Env, Program, Value as Cel};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value as Json;

use super::{Event, Millis, Vars};

/// The names an expression may start from.
pub const ROOTS: [&str; 5] = ["event", "vars", "key", "now", "attempt"];

const EVENT: u8 = 1;
const VARS: u8 = 2;
const KEY: u8 = 4;
const NOW: u8 = 8;
const ATTEMPT: u8 = 16;

fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib())).clone()
}

/// A compiled CEL expression together with its source text.
pub struct Expr {
    source: String,
    program: Program,
    uses: u8,
    unknown_roots: Vec<String>,
    /// `root.field.field…`: evaluated on JSON directly, without the interpreter.
    path: Option<(usize, Vec<String>)>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// What an expression can see when it runs.
///
/// Each root is converted to CEL at most once per scope, on first use, so a
/// payload with many leaves reads `vars` once, not once per leaf.
pub struct Scope<'a> {
    pub event: Option<&'a Event>,
    pub vars: &'a Vars,
    pub key: &'a str,
    pub now: Millis,
    pub attempt: u32,
    cache: [OnceLock<Box<dyn Val>>; 5],
}

impl<'a> Scope<'a> {
    pub fn new(
        event: Option<&'a Event>,
        vars: &'a Vars,
        key: &'a str,
        now: Millis,
        attempt: u32,
    ) -> Scope<'a> {
        Scope {
            event,
            vars,
            key,
            now,
            attempt,
            cache: Default::default(),
        }
    }

    fn root(&self, slot: usize) -> Option<&dyn Val> {
        let cell = self.cache.get(slot)?;
        if let Some(v) = cell.get() {
            return Some(v.as_ref());
        }
        let value = match slot {
            0 => match self.event {
                Some(event) => event_to_cel(event),
                None => Cel::Null,
            },
            1 => vars_to_cel(self.vars),
            2 => string(self.key),
            3 => millis_to_cel(self.now),
            _ => Cel::Int(i64::from(self.attempt)),
        };
        let boxed: Box<dyn Val> = value.try_into().ok()?;
        Some(cell.get_or_init(|| boxed).as_ref())
    }

    /// `vars`, `key` or `attempt` as JSON, without going through CEL.
    fn root_json(&self, slot: usize) -> Json {
        match slot {
            1 => Json::Object(
                self.vars
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            2 => Json::String(self.key.to_string()),
            _ => Json::from(self.attempt),
        }
    }
}

impl VariableResolver for Scope<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let slot = ROOTS.iter().position(|r| *r == variable)?;
        self.root(slot).map(CowVal::Borrowed)
    }
}

/// Why an expression could not produce a usable value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("`{expr}` failed: {reason}")]
    Execution { expr: String, reason: String },
    #[error("`{expr}` gave {got}, expected {expected}")]
    Type {
        expr: String,
        got: String,
        expected: &'static str,
    },
}

impl Expr {
    /// Compiles `source`; the error is the parser's message.
    pub fn parse(source: &str) -> Result<Expr, String> {
        let program = env().compile(source).map_err(|e| {
            // Keep the parser's first message line, without the source echo.
            let text = e.to_string();
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("syntax error");
            first
                .trim_start_matches("ERROR: ")
                .trim_start_matches("<input>:")
                .to_string()
        })?;
        let mut bound = BTreeSet::new();
        let mut idents = BTreeSet::new();
        collect_idents(program.expression(), &mut bound, &mut idents);
        let mut uses = 0;
        let mut unknown_roots = Vec::new();
        for ident in idents.difference(&bound) {
            match ident.as_str() {
                "event" => uses |= EVENT,
                "vars" => uses |= VARS,
                "key" => uses |= KEY,
                "now" => uses |= NOW,
                "attempt" => uses |= ATTEMPT,
                // Type names CEL lets you write as identifiers.
                "int" | "uint" | "double" | "string" | "bytes" | "bool" | "list" | "map"
                | "null_type" | "type" | "timestamp" | "duration" => {}
                other => unknown_roots.push(other.to_string()),
            }
        }
        let path = select_path(program.expression());
        Ok(Expr {
            source: source.to_string(),
            program,
            uses,
            unknown_roots,
            path,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Identifiers the expression reads that are not one of [`ROOTS`].
    pub fn unknown_roots(&self) -> &[String] {
        &self.unknown_roots
    }

    /// Whether the expression reads the event.
    pub fn uses_event(&self) -> bool {
        self.uses & EVENT != 0
    }

    fn execute(&self, scope: &Scope<'_>) -> Result<Cel, ExprError> {
        if let Some(v) = self.fast(scope)? {
            return Ok(json_to_cel(&v));
        }
        let mut ctx = Context::with_env(env());
        ctx.set_variable_resolver(scope);
        self.program
            .execute(&ctx)
            .map_err(|e| ExprError::Execution {
                expr: self.source.clone(),
                reason: e.to_string(),
            })
    }

    /// A plain field path read straight from JSON; `None` when not a plain path.
    /// It gives exactly what the interpreter would, only without converting
    /// whole roots to CEL first.
    fn fast(&self, scope: &Scope<'_>) -> Result<Option<Json>, ExprError> {
        let Some((root, fields)) = &self.path else {
            return Ok(None);
        };
        let value = match *root {
            0 => {
                let Some(e) = scope.event else {
                    return Ok(None);
                };
                if fields.first().map(String::as_str) != Some("data") {
                    // `time` is a timestamp in CEL: leave the other fields to it.
                    return Ok(None);
                }
                walk(&e.data, &fields[1..], &self.source)?.clone()
            }
            1 => match fields.first() {
                None => scope.root_json(1),
                Some(first) => {
                    let v = scope
                        .vars
                        .get(first)
                        .ok_or_else(|| no_key(&self.source, first))?;
                    walk(v, &fields[1..], &self.source)?.clone()
                }
            },
            2 | 4 if fields.is_empty() => scope.root_json(*root),
            _ => return Ok(None),
        };
        Ok(Some(value))
    }

    /// Evaluates to JSON (timestamps become RFC 3339 strings).
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Json, ExprError> {
        if let Some(v) = self.fast(scope)? {
            return Ok(v);
        }
        let value = self.execute(scope)?;
        cel_to_json(&value).map_err(|got| ExprError::Type {
            expr: self.source.clone(),
            got,
            expected: "a JSON-representable value",
        })
    }

    /// Evaluates a condition; anything but a boolean is an error.
    pub fn eval_bool(&self, scope: &Scope<'_>) -> Result<bool, ExprError> {
        match self.execute(scope)? {
            Cel::Bool(b) => Ok(b),
            other => Err(ExprError::Type {
                expr: self.source.clone(),
                got: type_name(&other),
                expected: "bool",
            }),
        }
    }

    /// Evaluates to a correlation key: a string or an integer.
    pub fn eval_key(&self, scope: &Scope<'_>) -> Result<String, ExprError> {
        if let Some(v) = self.fast(scope)? {
            match v {
                Json::String(s) if !s.is_empty() => return Ok(s),
                Json::Number(n) if n.is_i64() || n.is_u64() => return Ok(n.to_string()),
                _ => {}
            }
        }
        match self.execute(scope)? {
            Cel::String(s) if !s.is_empty() => Ok(s.to_string()),
            Cel::Int(i) => Ok(i.to_string()),
            Cel::UInt(u) => Ok(u.to_string()),
            other => Err(ExprError::Type {
                expr: self.source.clone(),
                got: type_name(&other),
                expected: "a non-empty string or an integer",
            }),
        }
    }

    /// Evaluates to a point in time: a CEL timestamp, an RFC 3339 string or
    /// milliseconds since the Unix epoch.
    pub fn eval_time(&self, scope: &Scope<'_>) -> Result<Millis, ExprError> {
        let bad = |got: String| ExprError::Type {
            expr: self.source.clone(),
            got,
            expected: "a timestamp, an RFC 3339 string or epoch milliseconds",
        };
        match self.execute(scope)? {
            Cel::Timestamp(t) => {
                u64::try_from(t.timestamp_millis()).map_err(|_| bad(t.to_rfc3339()))
            }
            Cel::String(s) => parse_rfc3339(&s).ok_or_else(|| bad(format!("string {s:?}"))),
            Cel::Int(i) => u64::try_from(i).map_err(|_| bad(i.to_string())),
            Cel::UInt(u) => Ok(u),
            other => Err(bad(type_name(&other))),
        }
    }
}

fn no_key(source: &str, field: &str) -> ExprError {
    ExprError::Execution {
        expr: source.to_string(),
        reason: format!("No such key: {field}"),
    }
}

fn walk<'j>(mut cur: &'j Json, fields: &[String], source: &str) -> Result<&'j Json, ExprError> {
    for f in fields {
        cur = match cur {
            Json::Object(o) => o.get(f).ok_or_else(|| no_key(source, f))?,
            _ => return Err(no_key(source, f)),
        };
    }
    Ok(cur)
}

/// `root.a.b…` with a known root: the root's index in [`ROOTS`] and the fields.
fn select_path(e: &Expression) -> Option<(usize, Vec<String>)> {
    match &e.expr {
        Ast::Ident(name) => ROOTS
            .iter()
            .position(|r| r == name)
            .map(|i| (i, Vec::new())),
        Ast::Select(s) if !s.test => {
            let (root, mut fields) = select_path(&s.operand)?;
            fields.push(s.field.clone());
            Some((root, fields))
        }
        _ => None,
    }
}

/// Parses an RFC 3339 time into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
}

/// Formats epoch milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn format_rfc3339(ms: Millis) -> String {
    match Utc.timestamp_millis_opt(ms as i64).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

fn millis_to_cel(ms: Millis) -> Cel {
    match Utc.timestamp_millis_opt(ms as i64).single() {
        Some(t) => Cel::Timestamp(t.fixed_offset()),
        None => Cel::Int(ms as i64),
    }
}

fn type_name(v: &Cel) -> String {
    match v {
        Cel::Null => "null".into(),
        other => other.type_of().to_string(),
    }
}

fn collect_idents(e: &Expression, bound: &mut BTreeSet<String>, out: &mut BTreeSet<String>) {
    match &e.expr {
        Ast::Unspecified | Ast::Literal(_) => {}
        Ast::Ident(name) => {
            if !name.starts_with('@') {
                out.insert(name.clone());
            }
        }
        Ast::Call(call) => {
            if let Some(target) = &call.target {
                collect_idents(target, bound, out);
            }
            for arg in &call.args {
                collect_idents(arg, bound, out);
            }
        }
        Ast::Comprehension(c) => {
            bound.insert(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.insert(v.clone());
            }
            bound.insert(c.accu_var.clone());
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                collect_idents(part, bound, out);
            }
        }
        Ast::List(list) => {
            for el in &list.elements {
                collect_idents(el, bound, out);
            }
        }
        Ast::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(m) = &entry.expr {
                    collect_idents(&m.key, bound, out);
                    collect_idents(&m.value, bound, out);
                }
            }
        }
        Ast::Struct(s) => {
            for entry in &s.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(m) => {
                        collect_idents(&m.key, bound, out);
                        collect_idents(&m.value, bound, out);
                    }
                    EntryExpr::StructField(f) => collect_idents(&f.value, bound, out),
                }
            }
        }
        Ast::Select(s) => collect_idents(&s.operand, bound, out),
    }
}

fn event_to_cel(event: &Event) -> Cel {
    let mut m: HashMap<Key, Cel> = HashMap::with_capacity(6);
    m.insert(key("id"), string(&event.id));
    m.insert(key("type"), string(&event.kind));
    m.insert(key("source"), string(&event.source));
    m.insert(key("time"), millis_to_cel(event.time));
    m.insert(key("data"), json_to_cel(&event.data));
    Cel::Map(Map { map: Arc::new(m) })
}

fn vars_to_cel(vars: &Vars) -> Cel {
    let m: HashMap<Key, Cel> = vars.iter().map(|(k, v)| (key(k), json_to_cel(v))).collect();
    Cel::Map(Map { map: Arc::new(m) })
}

fn key(s: &str) -> Key {
    Key::String(Arc::new(s.to_string()))
}

fn string(s: &str) -> Cel {
    Cel::String(Arc::new(s.to_string()))
}

/// Converts JSON into a CEL value (integers stay integers).
pub fn json_to_cel(v: &Json) -> Cel {
    match v {
        Json::Null => Cel::Null,
        Json::Bool(b) => Cel::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Cel::Int(i)
            } else if let Some(u) = n.as_u64() {
                Cel::UInt(u)
            } else {
                Cel::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => string(s),
        Json::Array(a) => Cel::List(Arc::new(a.iter().map(json_to_cel).collect())),
        Json::Object(o) => {
            let m: HashMap<Key, Cel> = o.iter().map(|(k, v)| (key(k), json_to_cel(v))).collect();
            Cel::Map(Map { map: Arc::new(m) })
        }
    }
}

/// Converts a CEL value into JSON; the error names the type that has no JSON form.
pub fn cel_to_json(v: &Cel) -> Result<Json, String> {
    Ok(match v {
        Cel::Null => Json::Null,
        Cel::Bool(b) => Json::Bool(*b),
        Cel::Int(i) => Json::from(*i),
        Cel::UInt(u) => Json::from(*u),
        Cel::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| format!("non-finite number {f}"))?,
        Cel::String(s) => Json::String(s.to_string()),
        Cel::List(l) => Json::Array(l.iter().map(cel_to_json).collect::<Result<_, _>>()?),
        Cel::Map(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                let k = match k {
                    Key::String(s) => s.to_string(),
                    Key::Int(i) => i.to_string(),
                    Key::Uint(u) => u.to_string(),
                    Key::Bool(b) => b.to_string(),
                };
                o.insert(k, cel_to_json(v)?);
            }
            Json::Object(o)
        }
        Cel::Timestamp(t) => Json::String(t.to_rfc3339()),
        Cel::Duration(d) => Json::String(format!("{}ms", d.num_milliseconds())),
        other => return Err(type_name(other)),
    })
}
