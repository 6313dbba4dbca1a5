//! CEL expressions as the engine evaluates them.
//!
//! An [`Expr`] is compiled once when a definition is loaded; evaluating it binds
//! only the roots the expression mentions (`event`, `vars`, `key`, `now`,
//! `attempt`), so an expression that reads one variable does not pay for
//! converting the event.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr as Ast, LiteralValue};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp,
    CelUInt,
};
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

/// How much of a root (`event` or `vars`) an expression reads.
#[derive(Debug, Clone, PartialEq)]
enum Need {
    /// Only these fields, each always as `root.field`: the interpreter gets a
    /// map of just those (a missing one stays missing, so `has()` and the
    /// "No such key" error behave as on the whole root).
    Fields(Vec<String>),
    /// The root itself (passed to a function, indexed, iterated, shadowed…).
    Whole,
}

/// A compiled CEL expression together with its source text.
pub struct Expr {
    source: String,
    program: Program,
    uses: u8,
    unknown_roots: Vec<String>,
    /// `root.field.field…`: evaluated on JSON directly, without the interpreter.
    path: Option<(usize, Vec<String>)>,
    /// Shortcuts past the interpreter; boxed, as definitions hold many
    /// expressions inline in their enums.
    plan: Box<Plan>,
}

/// What an expression needs from its scope, worked out once at compile time.
#[derive(Debug)]
struct Plan {
    /// What the interpreter must bind of `event` and `vars` (slots 0 and 1 of
    /// [`ROOTS`]): converting a whole root to CEL is most of the cost of a
    /// small expression like `vars.total > 10000`.
    needs: [Need; 2],
    /// `path <op> integer literal` (or the other way round): decided on the
    /// JSON when the path holds an integer, else left to the interpreter.
    compare: Option<Compare>,
}

/// A comparison of a plain path with an integer literal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn from_function(name: &str) -> Option<Cmp> {
        Some(match name {
            "_<_" => Cmp::Lt,
            "_<=_" => Cmp::Le,
            "_>_" => Cmp::Gt,
            "_>=_" => Cmp::Ge,
            "_==_" => Cmp::Eq,
            "_!=_" => Cmp::Ne,
            _ => return None,
        })
    }

    /// The same comparison with its operands swapped (`1 < x` is `x > 1`).
    fn flipped(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            other => other,
        }
    }

    fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }
}

#[derive(Debug)]
struct Compare {
    op: Cmp,
    /// Root index and fields, as in [`Expr::path`].
    path: (usize, Vec<String>),
    literal: i64,
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

/// Converts one field of the event.
type ToVal<'a> = fn(&'a Event) -> Box<dyn Val + 'a>;

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
    /// The CEL values borrow their strings from the event and the variables
    /// (hence `'a`): converting a root copies no text.
    cache: [OnceLock<Box<dyn Val + 'a>>; 5],
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

    fn root(&self, slot: usize) -> Option<&(dyn Val + 'a)> {
        let cell = self.cache.get(slot)?;
        Some(cell.get_or_init(|| self.convert(slot, None)).as_ref())
    }

    /// Root `slot` as a CEL value; `only`: just these fields of `event` or `vars`.
    ///
    /// Builds the interpreter's own value types directly, with the same
    /// result as going through [`Cel`] and its conversion, minus one copy.
    fn convert(&self, slot: usize, only: Option<&[String]>) -> Box<dyn Val + 'a> {
        let wanted = |name: &str| only.is_none_or(|f| f.iter().any(|n| n == name));
        match slot {
            0 => match self.event {
                Some(event) => {
                    let fields: [(&str, ToVal<'a>); 5] = [
                        ("id", |e| Box::new(CelString::from(e.id.as_str()))),
                        ("type", |e| Box::new(CelString::from(e.kind.as_str()))),
                        ("source", |e| Box::new(CelString::from(e.source.as_str()))),
                        ("time", |e| millis_to_val(e.time)),
                        ("data", |e| json_to_val(&e.data)),
                    ];
                    let m: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = fields
                        .into_iter()
                        .filter(|(name, _)| wanted(name))
                        .map(|(name, f)| (CelMapKey::from(name), f(event)))
                        .collect();
                    Box::new(CelMap::from(m))
                }
                None => Box::new(CelNull),
            },
            1 => {
                let m: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = match only {
                    None => self
                        .vars
                        .iter()
                        .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_val(v)))
                        .collect(),
                    Some(fields) => fields
                        .iter()
                        .filter_map(|f| self.vars.get_key_value(f))
                        .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_val(v)))
                        .collect(),
                };
                Box::new(CelMap::from(m))
            }
            2 => Box::new(CelString::from(self.key)),
            3 => millis_to_val(self.now),
            _ => Box::new(CelInt::from(i64::from(self.attempt))),
        }
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

/// The roots one expression sees: `event` and `vars` cut down to the fields
/// it reads (see [`Need`]), the others shared through the scope's cache.
struct Bound<'s, 'a> {
    scope: &'s Scope<'a>,
    needs: &'s [Need; 2],
    cache: [OnceLock<Box<dyn Val + 'a>>; 2],
}

impl VariableResolver for Bound<'_, '_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let slot = ROOTS.iter().position(|r| *r == variable)?;
        let value = match (self.needs.get(slot), self.cache.get(slot)) {
            (Some(Need::Fields(fields)), Some(cell)) => cell
                .get_or_init(|| self.scope.convert(slot, Some(fields)))
                .as_ref(),
            _ => self.scope.root(slot)?,
        };
        Some(CowVal::Borrowed(value))
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
        let needs = ["event", "vars"].map(|root| {
            if bound.contains(root) {
                return Need::Whole;
            }
            let mut need = Need::Fields(Vec::new());
            root_needs(program.expression(), root, &mut need);
            need
        });
        let compare = select_compare(program.expression());
        Ok(Expr {
            source: source.to_string(),
            program,
            uses,
            unknown_roots,
            path,
            plan: Box::new(Plan { needs, compare }),
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
        let bound = Bound {
            scope,
            needs: &self.plan.needs,
            cache: Default::default(),
        };
        let mut ctx = Context::with_env(env());
        ctx.set_variable_resolver(&bound);
        self.program
            .execute(&ctx)
            .map_err(|e| ExprError::Execution {
                expr: self.source.clone(),
                reason: execution_reason(&e),
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

    /// The JSON value at a plain `event.data…` or `vars…` path, if it is
    /// there; `None` for anything else (the interpreter then decides, with
    /// its own error for a missing field).
    fn lookup<'s>(scope: &Scope<'s>, root: usize, fields: &[String]) -> Option<&'s Json> {
        let (first, rest) = match root {
            0 => match fields.split_first() {
                Some((data, rest)) if data == "data" => (&scope.event?.data, rest),
                _ => return None,
            },
            1 => {
                let (name, rest) = fields.split_first()?;
                (scope.vars.get(name)?, rest)
            }
            _ => return None,
        };
        rest.iter()
            .try_fold(first, |cur, f| cur.as_object()?.get(f))
    }

    /// Evaluates to JSON (timestamps become RFC 3339 strings).
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Json, ExprError> {
        if let Some(v) = self.fast(scope)? {
            return Ok(v);
        }
        // `event.time` and `now` are timestamps: as JSON, the RFC 3339 text
        // the interpreter's timestamp would give, without running it.
        match &self.path {
            Some((0, fields)) if fields.len() == 1 && fields[0] == "time" => {
                if let Some(e) = scope.event {
                    return Ok(millis_to_json(e.time));
                }
            }
            Some((3, fields)) if fields.is_empty() => return Ok(millis_to_json(scope.now)),
            _ => {}
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
        if let Some(c) = &self.plan.compare
            && let Some(Json::Number(n)) = Self::lookup(scope, c.path.0, &c.path.1)
            && let Some(i) = n.as_i64()
        {
            // An integer against an integer literal: CEL compares them as
            // plain integers, so this is what the interpreter would say.
            return Ok(c.op.holds(i, c.literal));
        }
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

/// `path <op> int` or `int <op> path`, with one of the six comparisons.
fn select_compare(e: &Expression) -> Option<Compare> {
    let Ast::Call(call) = &e.expr else {
        return None;
    };
    let op = Cmp::from_function(&call.func_name)?;
    if call.target.is_some() {
        return None;
    }
    let [a, b] = call.args.as_slice() else {
        return None;
    };
    let int = |e: &Expression| match &e.expr {
        Ast::Literal(LiteralValue::Int(i)) => Some(*i.inner()),
        _ => None,
    };
    // Only paths `lookup` can read: into the event's data or the variables.
    let path = |e: &Expression| {
        select_path(e).filter(|(root, fields)| match root {
            0 => fields.len() > 1 && fields[0] == "data",
            1 => !fields.is_empty(),
            _ => false,
        })
    };
    if let (Some(path), Some(literal)) = (path(a), int(b)) {
        return Some(Compare { op, path, literal });
    }
    let (literal, path) = (int(a)?, path(b)?);
    Some(Compare {
        op: op.flipped(),
        path,
        literal,
    })
}

/// A timestamp as [`cel_to_json`] gives it for the root `now` or `event.time`.
fn millis_to_json(ms: Millis) -> Json {
    match Utc.timestamp_millis_opt(ms as i64).single() {
        Some(t) => Json::String(t.fixed_offset().to_rfc3339()),
        None => Json::from(ms as i64),
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

fn millis_to_val<'a>(ms: Millis) -> Box<dyn Val + 'a> {
    match Utc.timestamp_millis_opt(ms as i64).single() {
        Some(t) => Box::new(CelTimestamp::from(t.fixed_offset())),
        None => Box::new(CelInt::from(ms as i64)),
    }
}

/// Converts JSON into the interpreter's values, borrowing its strings
/// (integers stay integers, as in [`json_to_cel`]).
fn json_to_val(v: &Json) -> Box<dyn Val + '_> {
    match v {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Json::String(s) => Box::new(CelString::from(s.as_str())),
        Json::Array(a) => Box::new(CelList::from(a.iter().map(json_to_val).collect::<Vec<_>>())),
        Json::Object(o) => {
            let m: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = o
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_val(v)))
                .collect();
            Box::new(CelMap::from(m))
        }
    }
}

/// Widens `need` to cover how `e` reads `root`: `root.field` adds the field,
/// any other use of `root` needs all of it.
fn root_needs(e: &Expression, root: &str, need: &mut Need) {
    let Need::Fields(fields) = need else {
        return;
    };
    match &e.expr {
        Ast::Select(s) => {
            if let Ast::Ident(name) = &s.operand.expr
                && name == root
            {
                if !fields.contains(&s.field) {
                    fields.push(s.field.clone());
                }
                return;
            }
            root_needs(&s.operand, root, need);
        }
        Ast::Ident(name) if name == root => *need = Need::Whole,
        _ => for_each_child(e, &mut |c| root_needs(c, root, need)),
    }
}

/// Calls `f` on each direct subexpression of `e`, in source order.
pub fn for_each_child<'a>(e: &'a Expression, f: &mut impl FnMut(&'a Expression)) {
    match &e.expr {
        Ast::Unspecified | Ast::Literal(_) | Ast::Ident(_) => {}
        Ast::Select(s) => f(&s.operand),
        Ast::Call(call) => {
            if let Some(target) = &call.target {
                f(target);
            }
            call.args.iter().for_each(&mut *f);
        }
        Ast::Comprehension(c) => {
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                f(part);
            }
        }
        Ast::List(list) => list.elements.iter().for_each(&mut *f),
        Ast::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(m) = &entry.expr {
                    f(&m.key);
                    f(&m.value);
                }
            }
        }
        Ast::Struct(st) => {
            for entry in &st.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(m) => {
                        f(&m.key);
                        f(&m.value);
                    }
                    EntryExpr::StructField(field) => f(&field.value),
                }
            }
        }
    }
}

/// Why an evaluation failed, in words that do not depend on the order of a
/// map's keys (the interpreter's own message prints maps in hash order, and an
/// incident's reason must be the same every time the input is replayed) and
/// that name values briefly instead of echoing whole payloads.
fn execution_reason(e: &cel::ExecutionError) -> String {
    use cel::ExecutionError as E;
    match e {
        E::UnsupportedTargetType { target } => format!("invalid argument type: {}", brief(target)),
        E::NotSupportedAsMethod { method, target } => {
            format!("method '{method}' not supported on {}", brief(target))
        }
        E::UnsupportedKeyType(v) => format!("unable to use {} as a key", brief(v)),
        E::ValuesNotComparable(a, b) => {
            format!("{} can not be compared to {}", brief(a), brief(b))
        }
        E::UnsupportedBinaryOperator(op, a, b) => {
            format!(
                "unsupported binary operator '{op}': {}, {}",
                brief(a),
                brief(b)
            )
        }
        E::UnsupportedIndex(a, b) => format!("cannot use {} to index {}", brief(a), brief(b)),
        E::DivisionByZero(v) => format!("division by zero of {}", brief(v)),
        E::RemainderByZero(v) => format!("remainder by zero of {}", brief(v)),
        E::Overflow(op, a, b) => {
            format!(
                "overflow from binary operator '{op}': {}, {}",
                brief(a),
                brief(b)
            )
        }
        E::IndexOutOfBounds(v) => format!("index out of bounds: {}", brief(v)),
        E::DuplicateKey(v) => format!("repeated key {}", brief(v)),
        other => other.to_string(),
    }
}

/// A value named in an error: scalars as literals (long strings cut), lists
/// and maps by their size.
fn brief(v: &Cel) -> String {
    match v {
        Cel::String(s) if s.chars().count() > 40 => {
            let cut: String = s.chars().take(40).collect();
            format!("string {cut:?}…")
        }
        Cel::String(s) => format!("string {:?}", s.as_str()),
        Cel::Int(i) => format!("int {i}"),
        Cel::UInt(u) => format!("uint {u}"),
        Cel::Float(f) => format!("double {f}"),
        Cel::Bool(b) => format!("bool {b}"),
        Cel::Null => "null".into(),
        Cel::List(l) => format!("a list of {} items", l.len()),
        Cel::Map(m) => format!("a map of {} keys", m.map.len()),
        other => type_name(other),
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
        Ast::Ident(name) if !name.starts_with('@') => {
            out.insert(name.clone());
        }
        Ast::Comprehension(c) => {
            bound.insert(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.insert(v.clone());
            }
            bound.insert(c.accu_var.clone());
        }
        _ => {}
    }
    for_each_child(e, &mut |c| collect_idents(c, bound, out));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `source` through the interpreter alone, with whole roots bound.
    fn interpreted(source: &str, scope: &Scope<'_>) -> Result<Cel, String> {
        let e = Expr::parse(source).map_err(|e| e.to_string())?;
        let mut ctx = Context::with_env(env());
        ctx.set_variable_resolver(scope);
        e.program.execute(&ctx).map_err(|e| e.to_string())
    }

    // Found by the engine fuzz target: the interpreter's message printed a map
    // in hash order, so an incident's reason changed between two runs of the
    // same input (and an audit replay reported a mismatch).
    #[test]
    fn an_evaluation_error_reads_the_same_every_time() {
        let mut vars = Vars::new();
        let map: serde_json::Map<String, Json> =
            (0..16).map(|i| (format!("k{i}"), Json::from(i))).collect();
        vars.insert("service".into(), Json::Object(map));
        let scope = Scope::new(None, &vars, "k", 1_000, 1);
        let e = Expr::parse("'restart-' + vars.service").expect("parses");
        let reasons: BTreeSet<String> = (0..20)
            .map(|_| match e.eval(&scope) {
                Err(ExprError::Execution { reason, .. }) => reason,
                other => panic!("expected an execution error, got {other:?}"),
            })
            .collect();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        let reason = reasons.into_iter().next().unwrap_or_default();
        assert_eq!(
            reason,
            "unsupported binary operator 'add': string \"restart-\", a map of 16 keys"
        );
    }

    // The shortcuts (integer comparisons on JSON, roots cut to the fields an
    // expression reads, timestamps as text) must agree with the interpreter.
    #[test]
    fn shortcuts_agree_with_the_interpreter() {
        let event = Event {
            id: "e-1".into(),
            kind: "com.acme.x".into(),
            source: "test".into(),
            time: 1_700_000_000_123,
            data: serde_json::json!({"n": 5, "f": 5.5, "s": "5", "o": {"m": -3}}),
        };
        let mut vars = Vars::new();
        vars.insert("total".into(), serde_json::json!(250));
        vars.insert("big".into(), serde_json::json!(u64::MAX));
        vars.insert("name".into(), serde_json::json!("x"));
        let scope = Scope::new(Some(&event), &vars, "k", 1_000, 2);
        for source in [
            "vars.total > 10000",
            "vars.total <= 250",
            "10000 < vars.total",
            "vars.total == 250",
            "vars.total != 250",
            "vars.big > 1",
            "vars.name > 1",
            "vars.missing > 1",
            "has(vars.total) && vars.total >= 0",
            "has(vars.missing)",
            "event.data.n >= 5",
            "event.data.f > 5",
            "event.data.o.m < 0",
            "event.data.s == 5",
            "size(vars) == 3",
            "vars.exists(k, k == 'name')",
            "event.type == 'com.acme.x' && event.id == 'e-1'",
            "event.time > timestamp('2020-01-01T00:00:00Z')",
        ] {
            let e = Expr::parse(source).expect("parses");
            let want = match interpreted(source, &scope) {
                Ok(Cel::Bool(b)) => Ok(b),
                Ok(other) => Err(type_name(&other)),
                Err(e) => Err(e),
            };
            let got = e.eval_bool(&scope).map_err(|e| match e {
                ExprError::Execution { reason, .. } => reason,
                ExprError::Type { got, .. } => got,
            });
            assert_eq!(got, want, "{source}");
        }
        for source in ["event.time", "now", "vars", "event.data", "event"] {
            let e = Expr::parse(source).expect("parses");
            let want = interpreted(source, &scope).and_then(|v| cel_to_json(&v));
            let got = e.eval(&scope).map_err(|e| e.to_string());
            // Map key order is the interpreter's own: compare as JSON values.
            assert_eq!(got.ok(), want.ok(), "{source}");
        }
    }
}
