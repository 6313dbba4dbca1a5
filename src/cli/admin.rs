//! The operator commands: `baton instances`, `instance`, `incidents`,
//! `retry`, `skip`, `cancel`, `set`, `jobs`, `definitions`, `definition`,
//! `deploy`, `migrate`, `audit` and `cluster`, each one or a few calls to
//! the admin HTTP API (`/api/v1`) of any baton member.
//!
//! They print aligned tables (or, with `--json`, the server's JSON) to
//! stdout, and errors as `error: ...` to stderr. They never touch Kafka or
//! state; everything goes through [`Client`].
//!
//! Exit codes scripts can rely on:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | the server answered with an error not listed below (400, 5xx), or it could not be reached (the message names the URL; set `--server` or `BATON_ADMIN_URL`) |
//! | 2 | usage: clap's own errors, or arguments that make no request (a malformed `--filter` or instance id) |
//! | 3 | not found (404) |
//! | 4 | not authorised: 401 (no or unknown token) or 403 (the token's role may not do this); `--token` or `BATON_TOKEN` sets the token |
//! | 5 | refused: a conflict (409) or an invalid definition (422, or found by local validation in `baton deploy`); the diagnostics are printed |
//! | 6 | a check failed: an audit replay with mismatches, a migration (run or dry run) with blocked instances, or a bulk job that ended with errors |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::client::{Client, Failure, segment};
use super::table::{Table, age};

/// The exit codes, for the top-level `--help` (the same table as this module's docs).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the server answered with an error not listed here, or could not be reached
     (set --server or BATON_ADMIN_URL); validate, graph, simulate: a check failed
  2  usage (also: a file or configuration that cannot be read)
  3  not found (404)
  4  not authorised (401/403); --token or BATON_TOKEN sets the token
  5  refused: conflict or invalid definition (409/422); diagnostics are printed
  6  a check failed: audit replay mismatches, a migration with blocked instances,
     a bulk job that ended with errors";

/// How often a followed job is asked for its progress.
const POLL: Duration = Duration::from_millis(500);

/// Where the admin API is and how to talk to it; every operator command takes these.
#[derive(Args, Debug, Clone)]
pub struct Server {
    /// The admin API of any baton member.
    #[arg(
        long = "server",
        env = "BATON_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub url: String,
    /// API token, sent as `Authorization: Bearer <T>`.
    #[arg(long, env = "BATON_TOKEN", hide_env_values = true, value_name = "T")]
    pub token: Option<String>,
    /// Print the server's JSON (pretty) instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl Server {
    fn client(&self) -> Client {
        Client::new(&self.url, self.token.clone())
    }
}

/// Which instance, or which instances, an action is for.
#[derive(Args, Debug)]
pub struct Target {
    /// The instance: `process/key`, or a key with --process.
    #[arg(value_name = "ID", required_unless_present = "filter")]
    pub id: Option<String>,
    /// The process of an ID given as a bare key.
    #[arg(long, conflicts_with = "filter")]
    pub process: Option<String>,
    /// Act on every matching instance as one bulk job instead, e.g.
    /// `process=order-to-cash,step=charge,incident=true` (keys: process,
    /// version, status, step, key_prefix, incident, started_after,
    /// started_before, ended_after, ended_before).
    #[arg(long, conflicts_with = "id", value_parser = parse_filter, value_name = "K=V,...")]
    pub filter: Option<Filter>,
    /// With --filter: print the job id and return without following it.
    #[arg(long, requires = "filter")]
    pub no_wait: bool,
}

/// A bulk filter, as the JSON object `POST /api/v1/jobs` takes.
#[derive(Debug, Clone)]
pub struct Filter(pub Map<String, Value>);

/// A retry or skip.
#[derive(Args, Debug)]
pub struct StepAction {
    #[command(flatten)]
    pub target: Target,
    /// The incident (default: the instance's oldest open one).
    #[arg(long)]
    pub incident: Option<u64>,
    /// Why: kept with the action in the audit log.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    pub reason: String,
    #[command(flatten)]
    pub server: Server,
}

/// The operator commands (flattened into the top-level `baton` commands).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List instances (one page; --all for every page).
    Instances {
        #[arg(long)]
        process: Option<String>,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long, value_parser = ["pending", "active", "completed", "failed", "cancelled"])]
        status: Option<String>,
        /// Instances with a token at this step.
        #[arg(long)]
        step: Option<String>,
        /// Only instances with an open incident.
        #[arg(long)]
        incident: bool,
        #[arg(long)]
        key_prefix: Option<String>,
        /// RFC 3339 time bounds.
        #[arg(long, value_name = "TIME")]
        started_after: Option<String>,
        #[arg(long, value_name = "TIME")]
        started_before: Option<String>,
        #[arg(long, value_name = "TIME")]
        ended_after: Option<String>,
        #[arg(long, value_name = "TIME")]
        ended_before: Option<String>,
        /// Instances per page (1..=1000; the server's default is 50).
        #[arg(long)]
        limit: Option<u32>,
        /// Start after this cursor (the `more: --after` of the previous page).
        #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
        after: Option<String>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Show one instance: state, variables, timers, incidents and history.
    Instance {
        /// `process/key`, or a key with --process.
        id: String,
        #[arg(long)]
        process: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// List open incidents.
    Incidents {
        #[arg(long)]
        process: Option<String>,
        #[arg(long)]
        step: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
        after: Option<String>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Retry the step of an incident.
    Retry(StepAction),
    /// Skip the step of an incident and go on as if it had completed.
    Skip(StepAction),
    /// Cancel instances.
    Cancel {
        #[command(flatten)]
        target: Target,
        /// Run the compensations of the completed steps first.
        #[arg(long)]
        compensate: bool,
        /// Why: kept with the action in the audit log.
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        reason: String,
        #[command(flatten)]
        server: Server,
    },
    /// Set a variable: `set ID NAME VALUE`, or `set --filter F NAME VALUE`.
    #[command(
        override_usage = "baton set [OPTIONS] --reason <REASON> <ID> <NAME> <VALUE>\n       \
                      baton set [OPTIONS] --reason <REASON> --filter <K=V,...> <NAME> <VALUE>"
    )]
    Set {
        /// ID NAME VALUE, or NAME VALUE with --filter. VALUE is read as JSON
        /// (`42`, `true`, `{"a":1}`), else taken as a string.
        #[arg(num_args = 2..=3, required = true, value_name = "ARGS")]
        args: Vec<String>,
        /// The process of an ID given as a bare key.
        #[arg(long, conflicts_with = "filter")]
        process: Option<String>,
        /// Set it on every matching instance as one bulk job (see `retry --help`).
        #[arg(long, value_parser = parse_filter, value_name = "K=V,...")]
        filter: Option<Filter>,
        /// With --filter: print the job id and return without following it.
        #[arg(long, requires = "filter")]
        no_wait: bool,
        /// Why: kept with the action in the audit log.
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        reason: String,
        #[command(flatten)]
        server: Server,
    },
    /// List bulk jobs, or show one.
    Jobs {
        id: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// List deployed definitions.
    Definitions {
        #[command(flatten)]
        server: Server,
    },
    /// Print the source of a deployed definition.
    Definition {
        process: String,
        version: u32,
        #[command(flatten)]
        server: Server,
    },
    /// Validate definitions locally, then deploy them.
    Deploy {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        server: Server,
    },
    /// Move a process's instances from one definition version to another.
    Migrate {
        #[arg(long)]
        process: String,
        #[arg(long)]
        from: u32,
        #[arg(long)]
        to: u32,
        /// A step of the old version that is another step in the new one (repeatable).
        #[arg(long = "map", value_name = "OLD=NEW", value_parser = parse_mapping)]
        map: Vec<(String, String)>,
        /// Only report which instances could move and which are blocked.
        #[arg(long)]
        dry_run: bool,
        /// Print the job id and return without following it.
        #[arg(long, conflicts_with = "dry_run")]
        no_wait: bool,
        /// Why: kept with the action in the audit log.
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        reason: String,
        #[command(flatten)]
        server: Server,
    },
    /// Show an instance's audit log, or replay logs to check them (`audit replay`).
    Audit(Audit),
    /// Show the cluster's members and the shards each owns.
    Cluster {
        #[command(flatten)]
        server: Server,
    },
}

/// `baton audit ID` or `baton audit replay ...`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Audit {
    #[command(subcommand)]
    pub replay: Option<AuditCommand>,
    /// `process/key`, or a key with --process.
    #[arg(required = true)]
    pub id: Option<String>,
    #[arg(long)]
    pub process: Option<String>,
    #[command(flatten)]
    pub server: Server,
}

/// The subcommand of `baton audit`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Replay audit logs through the engine and compare the states they record.
    Replay {
        /// One instance: --process P --key K.
        #[arg(long, requires = "key", required_unless_present = "partition")]
        process: Option<String>,
        /// The key of that instance.
        #[arg(long, requires = "process")]
        key: Option<String>,
        /// Every instance of one partition.
        #[arg(long, conflicts_with_all = ["process", "key"])]
        partition: Option<u32>,
        #[command(flatten)]
        server: Server,
    },
}

/// Runs an operator command; prints its output and errors, and returns its exit code.
pub fn run(cmd: Command) -> ExitCode {
    match dispatch(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {f}");
            for d in f.diagnostics() {
                eprintln!("  {d}");
            }
            ExitCode::from(f.exit_code())
        }
    }
}

fn dispatch(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Instances {
            process,
            version,
            status,
            step,
            incident,
            key_prefix,
            started_after,
            started_before,
            ended_after,
            ended_before,
            limit,
            after,
            all,
            server,
        } => {
            let mut query = Vec::new();
            let text = [
                ("process", process),
                ("version", version.map(|v| v.to_string())),
                ("status", status),
                ("step", step),
                ("key_prefix", key_prefix),
                ("incident", incident.then(|| "true".to_string())),
                ("started_after", started_after),
                ("started_before", started_before),
                ("ended_after", ended_after),
                ("ended_before", ended_before),
                ("limit", limit.map(|l| l.to_string())),
                ("after", after),
            ];
            for (k, v) in text {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            instances(&server, query, all)
        }
        Command::Instance {
            id,
            process,
            server,
        } => instance(&server, &id, process.as_deref()),
        Command::Incidents {
            process,
            step,
            limit,
            after,
            all,
            server,
        } => {
            let query = [
                ("process", process),
                ("step", step),
                ("limit", limit.map(|l| l.to_string())),
                ("after", after),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            incidents(&server, query, all)
        }
        Command::Retry(a) => step_action("retry", a),
        Command::Skip(a) => step_action("skip", a),
        Command::Cancel {
            target,
            compensate,
            reason,
            server,
        } => {
            let action = json!({"action": "cancel", "compensate": compensate});
            act(&server, &target, action, &reason)
        }
        Command::Set {
            args,
            process,
            filter,
            no_wait,
            reason,
            server,
        } => {
            let (id, name, value) = match (&filter, args.as_slice()) {
                (None, [id, name, value]) => (Some(id.clone()), name, value),
                (Some(_), [name, value]) => (None, name, value),
                (None, _) => {
                    return Err(Failure::Usage(
                        "set takes ID NAME VALUE (or NAME VALUE with --filter)".into(),
                    ));
                }
                (Some(_), _) => {
                    return Err(Failure::Usage(
                        "set --filter takes NAME VALUE (no instance id)".into(),
                    ));
                }
            };
            let value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.clone()));
            let target = Target {
                id,
                process,
                filter,
                no_wait,
            };
            act(
                &server,
                &target,
                json!({"action": "set", "name": name, "value": value}),
                &reason,
            )
        }
        Command::Jobs { id, server } => jobs(&server, id.as_deref()),
        Command::Definitions { server } => definitions(&server),
        Command::Definition {
            process,
            version,
            server,
        } => definition(&server, &process, version),
        Command::Deploy { files, server } => deploy(&server, &files),
        Command::Migrate {
            process,
            from,
            to,
            map,
            dry_run,
            no_wait,
            reason,
            server,
        } => {
            let steps: Map<String, Value> = map
                .into_iter()
                .map(|(old, new)| (old, Value::String(new)))
                .collect();
            let body = json!({
                "process": process, "from": from, "to": to, "steps": steps,
                "dry_run": dry_run, "reason": reason,
            });
            migrate(&server, &body, no_wait)
        }
        Command::Audit(Audit {
            replay:
                Some(AuditCommand::Replay {
                    process,
                    key,
                    partition,
                    server,
                }),
            ..
        }) => {
            let query = match (process, key, partition) {
                (Some(p), Some(k), _) => vec![("process", p), ("key", k)],
                (_, _, Some(n)) => vec![("partition", n.to_string())],
                _ => {
                    return Err(Failure::Usage(
                        "audit replay takes --process P --key K, or --partition N".into(),
                    ));
                }
            };
            replay(&server, &query)
        }
        Command::Audit(Audit {
            replay: None,
            id,
            process,
            server,
        }) => {
            let id = id.ok_or_else(|| Failure::Usage("audit takes an instance id".into()))?;
            audit(&server, &id, process.as_deref())
        }
        Command::Cluster { server } => cluster(&server),
    }
}

// ---- what the server sends (tolerant: missing fields take defaults) ----

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Summary {
    id: String,
    version: u64,
    status: String,
    steps: Vec<String>,
    incidents: u64,
    started_at: Option<String>,
    updated_at: Option<String>,
    ended_at: Option<String>,
    shard: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Detail {
    #[serde(flatten)]
    summary: Summary,
    definition: Option<DefinitionRef>,
    vars: Map<String, Value>,
    tokens: Vec<Token>,
    timers: Vec<Timer>,
    buffered: Vec<Buffered>,
    open_incidents: Vec<Incident>,
    transitions: Option<u64>,
    parent: Option<Parent>,
    history: Vec<AuditEntry>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct DefinitionRef {
    version: u64,
    hash: String,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Token {
    step: String,
    phase: String,
    attempt: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Timer {
    #[serde(deserialize_with = "text")]
    id: String,
    due: String,
    kind: String,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Buffered {
    #[serde(deserialize_with = "text")]
    id: String,
    #[serde(rename = "type")]
    kind: String,
    expires: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Parent {
    process: String,
    key: String,
    version: u64,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Incident {
    instance: String,
    #[serde(deserialize_with = "text")]
    id: String,
    step: String,
    reason: String,
    at: String,
    age_seconds: f64,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct AuditEntry {
    at: String,
    input: Value,
    before: Value,
    after: Value,
    status: Value,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Definition {
    process: String,
    version: u64,
    hash: String,
    steps: Vec<String>,
    deployed_at: Option<String>,
    deployed_by: Option<String>,
    file: Option<String>,
    latest: bool,
    source: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Deployed {
    process: String,
    version: u64,
    hash: String,
    created: bool,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Cluster {
    partitions: Option<u64>,
    members: Vec<Member>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Member {
    #[serde(deserialize_with = "text")]
    id: String,
    admin: String,
    shards: Vec<u32>,
    restoring: Vec<u32>,
    ready: bool,
    seen_seconds_ago: Option<f64>,
    #[serde(rename = "self")]
    this: bool,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Job {
    #[serde(deserialize_with = "text")]
    id: String,
    action: Value,
    filter: Value,
    reason: String,
    by: Option<String>,
    state: String,
    matched: u64,
    published: u64,
    applied: u64,
    errors: Vec<String>,
    created_at: Option<String>,
}

impl Job {
    fn running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "pending" | "queued")
    }

    fn progress(&self) -> String {
        format!(
            "matched {}, published {}, applied {}",
            self.matched, self.published, self.applied
        )
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Accepted {
    #[serde(deserialize_with = "text")]
    request: String,
    instance: String,
    partition: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Replay {
    checked: u64,
    matched: u64,
    mismatched: Vec<Mismatch>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Mismatch {
    instance: String,
    reason: String,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Migration {
    movable: Vec<String>,
    blocked: Vec<Blocked>,
    job: Option<Value>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Blocked {
    instance: String,
    reasons: Vec<String>,
}

/// Any JSON scalar as text (ids may be numbers or strings).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(show(&Value::deserialize(d)?))
}

/// Reads an answer into its type; `what` names the call in the error.
fn decode<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, Failure> {
    serde_json::from_value(value).map_err(|e| Failure::Unexpected {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

// ---- arguments ----

/// The keys a bulk filter takes, and how each value is typed in JSON.
const FILTER_KEYS: [&str; 12] = [
    "process",
    "version",
    "status",
    "step",
    "key_prefix",
    "incident",
    "started_after",
    "started_before",
    "ended_after",
    "ended_before",
    "incident_after",
    "incident_before",
];

/// `process=order-to-cash,version=1,incident=true` → `{"process": "order-to-cash", "version": 1, "incident": true}`.
fn parse_filter(s: &str) -> Result<Filter, String> {
    let mut out = Map::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not KEY=VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        if !FILTER_KEYS.contains(&k) {
            return Err(format!(
                "unknown filter key `{k}` (known: {})",
                FILTER_KEYS.join(", ")
            ));
        }
        if v.is_empty() {
            return Err(format!("`{k}` has no value"));
        }
        let value = match k {
            "version" => Value::from(
                v.parse::<u64>()
                    .map_err(|_| format!("version `{v}` is not a number"))?,
            ),
            "incident" => Value::Bool(
                v.parse::<bool>()
                    .map_err(|_| format!("incident `{v}` is not true or false"))?,
            ),
            _ => Value::String(v.to_string()),
        };
        if out.insert(k.to_string(), value).is_some() {
            return Err(format!("`{k}` is given twice"));
        }
    }
    if out.is_empty() {
        return Err("an empty filter would match every instance; name at least one key".into());
    }
    Ok(Filter(out))
}

/// `old=new` → (old, new).
fn parse_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.trim().is_empty() && !new.trim().is_empty() => {
            Ok((old.trim().to_string(), new.trim().to_string()))
        }
        _ => Err(format!("`{s}` is not OLD=NEW")),
    }
}

/// `process/key`, or a bare key with `--process`, as (process, key).
fn instance_id(id: &str, process: Option<&str>) -> Result<(String, String), Failure> {
    if let Some(p) = process {
        return Ok((p.to_string(), id.to_string()));
    }
    match id.split_once('/') {
        Some((p, k)) if !p.is_empty() && !k.is_empty() => Ok((p.to_string(), k.to_string())),
        _ => Err(Failure::Usage(format!(
            "`{id}` is not an instance id: give process/key, or the key with --process"
        ))),
    }
}

// ---- the commands ----

fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        // A Value always serialises; keep the output total anyway.
        Err(_) => println!("{v}"),
    }
}

/// JSON values as a person reads them: strings bare, null as `-`.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// Shards as ranges: `0-3,6`.
fn ranges(shards: &[u32]) -> String {
    let mut sorted = shards.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// Reads one page, or every page, of a listing; returns the items and the cursor of the next page.
fn pages(
    client: &Client,
    path: &str,
    mut query: Vec<(&'static str, String)>,
    field: &str,
    all: bool,
) -> Result<(Vec<Value>, Option<String>), Failure> {
    let what = format!("GET /api/v1{path}");
    let mut items = Vec::new();
    loop {
        let page = client.get(path, &query)?;
        let Some(found) = page.get(field).and_then(Value::as_array) else {
            return Err(Failure::Unexpected {
                what,
                reason: format!("no `{field}` list"),
            });
        };
        items.extend(found.iter().cloned());
        let next = page
            .get("next")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        match next {
            Some(n) if all => {
                if query.iter().any(|(k, v)| *k == "after" && *v == n) {
                    return Err(Failure::Unexpected {
                        what,
                        reason: format!("the cursor `{n}` does not advance"),
                    });
                }
                query.retain(|(k, _)| *k != "after");
                query.push(("after", n));
            }
            next => return Ok((items, next)),
        }
    }
}

fn instances(
    server: &Server,
    query: Vec<(&'static str, String)>,
    all: bool,
) -> Result<(), Failure> {
    let (items, next) = pages(&server.client(), "/instances", query, "instances", all)?;
    if server.json {
        print_json(&json!({"instances": items, "next": next}));
        return Ok(());
    }
    let rows: Vec<Summary> = decode(Value::Array(items), "GET /api/v1/instances")?;
    if rows.is_empty() {
        println!("no instances");
    } else {
        let mut t = Table::new(&[
            "ID",
            "VERSION",
            "STATUS",
            "STEPS",
            "INCIDENTS",
            "STARTED",
            "UPDATED",
        ]);
        for s in rows {
            t.row(vec![
                s.id,
                s.version.to_string(),
                s.status,
                list(&s.steps),
                s.incidents.to_string(),
                or_dash(&s.started_at),
                or_dash(&s.updated_at),
            ]);
        }
        print!("{}", t.render());
    }
    if let Some(n) = next {
        eprintln!("more: --after {n}");
    }
    Ok(())
}

fn indent(block: &str) -> String {
    block.lines().map(|l| format!("  {l}\n")).collect()
}

/// An audit input: its kind, then its scalar fields as `name=value`.
fn describe_input(input: &Value) -> String {
    let Some(fields) = input.as_object() else {
        return show(input);
    };
    let mut out = fields.get("kind").map_or_else(|| "?".to_string(), show);
    for (k, v) in fields {
        if k == "kind" {
            continue;
        }
        let v = match v {
            Value::Object(_) | Value::Array(_) => continue,
            v => show(v),
        };
        out.push_str(&format!(" {k}={v}"));
    }
    const MAX: usize = 80;
    if out.chars().count() > MAX {
        out = out.chars().take(MAX - 1).collect::<String>() + "…";
    }
    out
}

/// A recorded state (steps, a status, or more) on one line.
fn describe_state(state: &Value) -> String {
    match state {
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(show).collect::<Vec<_>>().join(","),
        Value::Object(fields) => match fields.get("steps") {
            Some(steps @ Value::Array(_)) => describe_state(steps),
            _ => state.to_string(),
        },
        other => show(other),
    }
}

fn history_table(entries: &[AuditEntry]) -> Table {
    let mut t = Table::new(&["TIME", "INPUT", "BEFORE → AFTER", "STATUS"]);
    for e in entries {
        t.row(vec![
            e.at.clone(),
            describe_input(&e.input),
            format!(
                "{} → {}",
                describe_state(&e.before),
                describe_state(&e.after)
            ),
            show(&e.status),
        ]);
    }
    t
}

fn incident_table(incidents: &[Incident], with_instance: bool) -> Table {
    let mut t = if with_instance {
        Table::new(&["INSTANCE", "INCIDENT", "STEP", "AGE", "REASON"])
    } else {
        Table::new(&["INCIDENT", "STEP", "AGE", "SINCE", "REASON"])
    };
    for i in incidents {
        let mut row = Vec::new();
        if with_instance {
            row.push(i.instance.clone());
        }
        row.extend([i.id.clone(), i.step.clone(), age(i.age_seconds)]);
        if !with_instance {
            row.push(i.at.clone());
        }
        row.push(i.reason.clone());
        t.row(row);
    }
    t
}

fn instance(server: &Server, id: &str, process: Option<&str>) -> Result<(), Failure> {
    let (p, k) = instance_id(id, process)?;
    let path = format!("/instances/{}/{}", segment(&p), segment(&k));
    let value = server
        .client()
        .get(&path, &[("history", "true".to_string())])?;
    if server.json {
        print_json(&value);
        return Ok(());
    }
    let d: Detail = decode(value, &format!("GET /api/v1{path}"))?;
    let s = &d.summary;
    let mut head = Table::bare();
    let mut field = |name: &str, value: String| head.row(vec![name.to_string(), value]);
    field("status", s.status.clone());
    field(
        "version",
        match &d.definition {
            Some(def) if !def.hash.is_empty() => format!("{} (hash {})", def.version, def.hash),
            _ => s.version.to_string(),
        },
    );
    field("steps", list(&s.steps));
    if !d.tokens.is_empty() {
        let tokens: Vec<String> = d
            .tokens
            .iter()
            .map(|t| match t.attempt {
                Some(a) => format!("{} ({}, attempt {a})", t.step, t.phase),
                None => format!("{} ({})", t.step, t.phase),
            })
            .collect();
        field("tokens", tokens.join(", "));
    }
    field("started", or_dash(&s.started_at));
    field("updated", or_dash(&s.updated_at));
    field("ended", or_dash(&s.ended_at));
    if let Some(shard) = s.shard {
        field("shard", shard.to_string());
    }
    if let Some(n) = d.transitions {
        field("transitions", n.to_string());
    }
    field(
        "parent",
        d.parent.as_ref().map_or_else(
            || "-".into(),
            |p| format!("{}/{} (v{})", p.process, p.key, p.version),
        ),
    );
    println!("{}", s.id);
    print!("{}", indent(&head.render()));

    println!("variables");
    if d.vars.is_empty() {
        println!("  -");
    } else {
        let mut vars = Table::bare();
        let sorted: BTreeMap<_, _> = d.vars.iter().collect();
        for (name, value) in sorted {
            vars.row(vec![name.clone(), value.to_string()]);
        }
        print!("{}", indent(&vars.render()));
    }

    println!("timers");
    if d.timers.is_empty() {
        println!("  -");
    } else {
        let mut t = Table::new(&["ID", "DUE", "KIND"]);
        for timer in &d.timers {
            t.row(vec![
                timer.id.clone(),
                timer.due.clone(),
                timer.kind.clone(),
            ]);
        }
        print!("{}", indent(&t.render()));
    }

    if !d.buffered.is_empty() {
        println!("buffered events");
        let mut t = Table::new(&["ID", "TYPE", "EXPIRES"]);
        for b in &d.buffered {
            t.row(vec![b.id.clone(), b.kind.clone(), or_dash(&b.expires)]);
        }
        print!("{}", indent(&t.render()));
    }

    println!("open incidents");
    if d.open_incidents.is_empty() {
        println!("  -");
    } else {
        print!(
            "{}",
            indent(&incident_table(&d.open_incidents, false).render())
        );
    }

    println!("history");
    if d.history.is_empty() {
        println!("  -");
    } else {
        print!("{}", indent(&history_table(&d.history).render()));
    }
    Ok(())
}

fn incidents(
    server: &Server,
    query: Vec<(&'static str, String)>,
    all: bool,
) -> Result<(), Failure> {
    let (items, next) = pages(&server.client(), "/incidents", query, "incidents", all)?;
    if server.json {
        print_json(&json!({"incidents": items, "next": next}));
        return Ok(());
    }
    let rows: Vec<Incident> = decode(Value::Array(items), "GET /api/v1/incidents")?;
    if rows.is_empty() {
        println!("no open incidents");
    } else {
        print!("{}", incident_table(&rows, true).render());
    }
    if let Some(n) = next {
        eprintln!("more: --after {n}");
    }
    Ok(())
}

fn step_action(name: &str, a: StepAction) -> Result<(), Failure> {
    let mut action = json!({"action": name});
    if let Some(n) = a.incident {
        action["incident"] = Value::from(n);
    }
    act(&a.server, &a.target, action, &a.reason)
}

/// Sends one action to one instance, or to every instance a filter matches (a bulk job).
fn act(server: &Server, target: &Target, action: Value, reason: &str) -> Result<(), Failure> {
    let client = server.client();
    if let Some(filter) = &target.filter {
        let body = json!({"filter": filter.0, "action": action, "reason": reason});
        let job = client.post("/jobs", &body)?;
        let job = follow(&client, job, target.no_wait, server.json)?;
        if server.json {
            print_json(&job);
        }
        return check_job(&job);
    }
    let id = target
        .id
        .as_deref()
        .ok_or_else(|| Failure::Usage("give an instance id or --filter".into()))?;
    let (p, k) = instance_id(id, target.process.as_deref())?;
    let mut body = action;
    body["reason"] = Value::String(reason.to_string());
    let path = format!("/instances/{}/{}/actions", segment(&p), segment(&k));
    let answer = client.post(&path, &body)?;
    if server.json {
        print_json(&answer);
        return Ok(());
    }
    let a: Accepted = decode(answer, &format!("POST /api/v1{path}"))?;
    let instance = if a.instance.is_empty() {
        format!("{p}/{k}")
    } else {
        a.instance
    };
    let partition = a
        .partition
        .map_or_else(String::new, |n| format!(", partition {n}"));
    println!(
        "{} requested for {instance} (request {}{partition}); the owning shard applies it shortly",
        show(&body["action"]),
        a.request
    );
    Ok(())
}

/// Prints a job's start and follows it until it ends (unless `no_wait`);
/// progress goes to stderr, the outcome to stdout (not with `--json`: the
/// caller prints the returned final job).
fn follow(client: &Client, job: Value, no_wait: bool, json: bool) -> Result<Value, Failure> {
    let mut value = job;
    let mut job: Job = decode(value.clone(), "POST /api/v1/jobs")?;
    let what = format!("GET /api/v1/jobs/{}", job.id);
    eprintln!(
        "job {}: {} of the matching instances ({})",
        job.id,
        action_name(&job.action),
        job.progress()
    );
    if no_wait {
        if !json {
            println!(
                "job {} {}; follow it with `baton jobs {}`",
                job.id, job.state, job.id
            );
        }
        return Ok(value);
    }
    let mut last = job.progress();
    while job.running() {
        std::thread::sleep(POLL);
        value = client.get(&format!("/jobs/{}", segment(&job.id)), &[])?;
        job = decode(value.clone(), &what)?;
        let now = job.progress();
        if now != last {
            eprintln!("job {}: {now}", job.id);
            last = now;
        }
    }
    if !json {
        println!("job {} {}: {}", job.id, job.state, job.progress());
        for e in &job.errors {
            println!("  error: {e}");
        }
    }
    Ok(value)
}

/// A job that ended with errors is a failed check.
fn check_job(job: &Value) -> Result<(), Failure> {
    let job: Job = decode(job.clone(), "the job")?;
    if job.state == "failed" || !job.errors.is_empty() {
        return Err(Failure::Check(format!(
            "job {} {} with {} error{}",
            job.id,
            if job.state == "failed" {
                "failed"
            } else {
                "ended"
            },
            job.errors.len(),
            if job.errors.len() == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

fn action_name(action: &Value) -> String {
    match action {
        Value::Object(o) => o.get("action").map_or_else(|| action.to_string(), show),
        other => show(other),
    }
}

fn jobs(server: &Server, id: Option<&str>) -> Result<(), Failure> {
    let client = server.client();
    let Some(id) = id else {
        let value = client.get("/jobs", &[])?;
        if server.json {
            print_json(&value);
            return Ok(());
        }
        let list: Vec<Job> = decode(
            value.get("jobs").cloned().unwrap_or(Value::Null),
            "GET /api/v1/jobs",
        )?;
        if list.is_empty() {
            println!("no jobs");
            return Ok(());
        }
        let mut t = Table::new(&[
            "ID",
            "ACTION",
            "STATE",
            "MATCHED",
            "PUBLISHED",
            "APPLIED",
            "ERRORS",
            "CREATED",
            "BY",
            "REASON",
        ]);
        for j in list {
            t.row(vec![
                j.id,
                action_name(&j.action),
                j.state,
                j.matched.to_string(),
                j.published.to_string(),
                j.applied.to_string(),
                j.errors.len().to_string(),
                or_dash(&j.created_at),
                or_dash(&j.by),
                j.reason,
            ]);
        }
        print!("{}", t.render());
        return Ok(());
    };
    let path = format!("/jobs/{}", segment(id));
    let value = client.get(&path, &[])?;
    if server.json {
        print_json(&value);
        return Ok(());
    }
    let j: Job = decode(value, &format!("GET /api/v1{path}"))?;
    let mut t = Table::bare();
    t.row(vec!["action".into(), action_name(&j.action)]);
    t.row(vec!["filter".into(), j.filter.to_string()]);
    t.row(vec!["state".into(), j.state.clone()]);
    t.row(vec!["progress".into(), j.progress()]);
    t.row(vec!["created".into(), or_dash(&j.created_at)]);
    t.row(vec!["by".into(), or_dash(&j.by)]);
    t.row(vec!["reason".into(), j.reason.clone()]);
    println!("job {}", j.id);
    print!("{}", indent(&t.render()));
    if !j.errors.is_empty() {
        println!("errors");
        for e in &j.errors {
            println!("  {e}");
        }
    }
    Ok(())
}

fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

fn definitions(server: &Server) -> Result<(), Failure> {
    let value = server.client().get("/definitions", &[])?;
    if server.json {
        print_json(&value);
        return Ok(());
    }
    let list: Vec<Definition> = decode(
        value.get("definitions").cloned().unwrap_or(Value::Null),
        "GET /api/v1/definitions",
    )?;
    if list.is_empty() {
        println!("no definitions");
        return Ok(());
    }
    let mut t = Table::new(&[
        "PROCESS", "VERSION", "LATEST", "HASH", "STEPS", "DEPLOYED", "BY", "FILE",
    ]);
    for d in list {
        t.row(vec![
            d.process,
            d.version.to_string(),
            if d.latest { "yes" } else { "" }.into(),
            short_hash(&d.hash),
            d.steps.len().to_string(),
            or_dash(&d.deployed_at),
            or_dash(&d.deployed_by),
            or_dash(&d.file),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

fn definition(server: &Server, process: &str, version: u32) -> Result<(), Failure> {
    let path = format!("/definitions/{}/{version}", segment(process));
    let value = server.client().get(&path, &[])?;
    if server.json {
        print_json(&value);
        return Ok(());
    }
    let d: Definition = decode(value, &format!("GET /api/v1{path}"))?;
    let source = d.source.ok_or_else(|| Failure::Unexpected {
        what: format!("GET /api/v1{path}"),
        reason: "no `source`".into(),
    })?;
    print!("{source}");
    if !source.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn deploy(server: &Server, files: &[PathBuf]) -> Result<(), Failure> {
    // Every file is read and validated before anything is sent, so a typo
    // shows as file:line:col at once and deploys nothing.
    let mut sources = Vec::new();
    let mut errors = 0;
    for path in files {
        let name = path.display().to_string();
        let source = std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("cannot read {name}: {e}")))?;
        if let Err(diags) = baton::dsl::parse(&name, &source) {
            for d in &diags.0 {
                eprintln!("{d}");
            }
            errors += diags.0.len();
        }
        sources.push((name, path, source));
    }
    if errors > 0 {
        return Err(Failure::Invalid(format!(
            "{errors} error{} in the definitions; nothing deployed",
            if errors == 1 { "" } else { "s" }
        )));
    }
    let client = server.client();
    let mut answers = Vec::new();
    let mut first: Option<u8> = None;
    let mut failed = 0;
    for (name, path, source) in sources {
        let file = path
            .file_name()
            .map_or_else(|| name.clone(), |f| f.to_string_lossy().into_owned());
        match client.post("/definitions", &json!({"source": source, "file": file})) {
            Ok(answer) => {
                if server.json {
                    answers.push(answer);
                    continue;
                }
                let d: Deployed = decode(answer, "POST /api/v1/definitions")?;
                if d.created {
                    println!(
                        "{name}: created {} v{} ({})",
                        d.process,
                        d.version,
                        short_hash(&d.hash)
                    );
                } else {
                    println!(
                        "{name}: {} v{} already deployed (same content)",
                        d.process, d.version
                    );
                }
            }
            Err(f) => {
                eprintln!("error: {name}: {f}");
                for d in f.diagnostics() {
                    eprintln!("  {d}");
                }
                first.get_or_insert(f.exit_code());
                failed += 1;
            }
        }
    }
    if server.json {
        print_json(&Value::Array(answers));
    }
    match first {
        None => Ok(()),
        Some(code) => Err(Failure::Reported {
            code,
            message: format!("{failed} of {} definitions not deployed", files.len()),
        }),
    }
}

fn migrate(server: &Server, body: &Value, no_wait: bool) -> Result<(), Failure> {
    let client = server.client();
    let mut answer = client.post("/migrations", body)?;
    let m: Migration = decode(answer.clone(), "POST /api/v1/migrations")?;
    let to = show(&body["to"]);
    if !server.json {
        println!(
            "{} v{} → v{to}: {} movable, {} blocked",
            show(&body["process"]),
            show(&body["from"]),
            m.movable.len(),
            m.blocked.len()
        );
        if !m.blocked.is_empty() {
            let mut t = Table::new(&["BLOCKED", "REASONS"]);
            for b in &m.blocked {
                t.row(vec![b.instance.clone(), b.reasons.join("; ")]);
            }
            print!("{}", t.render());
        }
    }
    let job = match m.job {
        Some(job) if !job.is_null() => {
            let job = follow(&client, job, no_wait, server.json)?;
            answer["job"] = job.clone();
            Some(job)
        }
        _ => None,
    };
    if server.json {
        print_json(&answer);
    }
    if let Some(job) = &job {
        check_job(job)?;
    }
    if !m.blocked.is_empty() {
        return Err(Failure::Check(format!(
            "{} instance{} cannot move to v{to}",
            m.blocked.len(),
            if m.blocked.len() == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

fn audit(server: &Server, id: &str, process: Option<&str>) -> Result<(), Failure> {
    let (p, k) = instance_id(id, process)?;
    let path = format!("/audit/{}/{}", segment(&p), segment(&k));
    let value = server.client().get(&path, &[])?;
    if server.json {
        print_json(&value);
        return Ok(());
    }
    let entries: Vec<AuditEntry> = decode(
        value.get("entries").cloned().unwrap_or(Value::Null),
        &format!("GET /api/v1{path}"),
    )?;
    if entries.is_empty() {
        println!("no audit entries");
    } else {
        print!("{}", history_table(&entries).render());
    }
    Ok(())
}

fn replay(server: &Server, query: &[(&str, String)]) -> Result<(), Failure> {
    let value = server.client().get("/audit/replay", query)?;
    let r: Replay = decode(value.clone(), "GET /api/v1/audit/replay")?;
    if server.json {
        print_json(&value);
    } else {
        println!(
            "checked {}, matched {}, mismatched {}",
            r.checked,
            r.matched,
            r.mismatched.len()
        );
        if !r.mismatched.is_empty() {
            let mut t = Table::new(&["INSTANCE", "REASON"]);
            for m in &r.mismatched {
                t.row(vec![m.instance.clone(), m.reason.clone()]);
            }
            print!("{}", t.render());
        }
    }
    if !r.mismatched.is_empty() {
        return Err(Failure::Check(format!(
            "{} instance{} replay differently from the audit log",
            r.mismatched.len(),
            if r.mismatched.len() == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

fn cluster(server: &Server) -> Result<(), Failure> {
    let value = server.client().get("/cluster", &[])?;
    if server.json {
        print_json(&value);
        return Ok(());
    }
    let c: Cluster = decode(value, "GET /api/v1/cluster")?;
    if let Some(n) = c.partitions {
        println!("partitions: {n}");
    }
    let mut t = Table::new(&["MEMBER", "ADMIN", "SHARDS", "RESTORING", "READY", "SEEN"]);
    for m in c.members {
        t.row(vec![
            if m.this {
                format!("{} (this)", m.id)
            } else {
                m.id
            },
            m.admin,
            ranges(&m.shards),
            ranges(&m.restoring),
            if m.ready { "yes" } else { "no" }.into(),
            m.seen_seconds_ago
                .map_or_else(|| "-".into(), |s| format!("{} ago", age(s))),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_typed_json() {
        let f = parse_filter(
            "process=order-to-cash,step=charge,incident=true,status=active,version=1,key_prefix=o-,started_after=2026-01-01T00:00:00Z",
        )
        .expect("a valid filter");
        assert_eq!(
            Value::Object(f.0),
            json!({
                "process": "order-to-cash", "step": "charge", "incident": true,
                "status": "active", "version": 1, "key_prefix": "o-",
                "started_after": "2026-01-01T00:00:00Z",
            })
        );
    }

    #[test]
    fn bad_filters_say_why() {
        for (input, says) in [
            ("process", "not KEY=VALUE"),
            ("colour=red", "unknown filter key `colour`"),
            ("version=one", "not a number"),
            ("incident=yes", "not true or false"),
            ("step=", "no value"),
            ("step=a,step=b", "given twice"),
            ("", "empty filter"),
        ] {
            let err = parse_filter(input).expect_err(input);
            assert!(err.contains(says), "{input}: {err}");
        }
    }

    #[test]
    fn instance_ids_split_at_the_first_slash() {
        let id = |s, p| instance_id(s, p).map_err(|e| e.to_string());
        assert_eq!(id("p/k/1", None), Ok(("p".into(), "k/1".into())));
        assert_eq!(id("k/1", Some("p")), Ok(("p".into(), "k/1".into())));
        assert!(id("nokey", None).is_err());
        assert!(id("/k", None).is_err());
    }

    #[test]
    fn shards_print_as_ranges() {
        assert_eq!(ranges(&[3, 0, 1, 2, 6, 8, 7]), "0-3,6-8");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[]), "-");
    }

    #[test]
    fn audit_inputs_and_states_read_on_one_line() {
        assert_eq!(
            describe_input(&json!({"kind": "event", "type": "payment.captured", "data": {"a": 1}})),
            "event type=payment.captured"
        );
        assert_eq!(describe_state(&json!(["charge", "ship"])), "charge,ship");
        assert_eq!(describe_state(&json!([])), "-");
        assert_eq!(describe_state(&json!({"steps": ["a"]})), "a");
        assert_eq!(describe_state(&json!("active")), "active");
    }
}
