//! `connectors.toml`: which command types become which HTTP calls.
//!
//! One serde tree with `deny_unknown_fields` and human durations, like
//! `baton.toml`; its `[kafka]` table is baton's own ([`crate::config::Kafka`]).
//! [`load`] parses it, reads the secrets (from environment variables or
//! files, never from the file itself), compiles every CEL expression and
//! reports every problem at once, each naming the file and the field.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::request::{Body, Route, Template, check_expr, datamap};
use crate::config::{Config, Kafka, Log};
use crate::engine::Expr;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectFile {
    /// baton's `[kafka]` table: `input_topics` are the command topics the
    /// connector consumes; `group_id` is the connector's own group.
    pub kafka: Kafka,
    #[serde(default)]
    pub connect: Settings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub log: Log,
    /// Remote services by name: address, credentials, TLS and limits.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointConfig>,
    /// One entry per command type: which endpoint, and the request to make.
    #[serde(default)]
    pub commands: Vec<CommandConfig>,
}

/// `[connect]`: the worker itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Stable name of this connector process; its transactional id is
    /// `<group_id>-<instance_id>`. Default: `$HOSTNAME`, else `connect-0`.
    pub instance_id: Option<String>,
    /// Where outcomes go unless a command names its own `result_topic`.
    pub result_topic: Option<String>,
    /// Longest time an outcome waits for its transaction.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commands of one partition taken but not yet committed; at this many
    /// the partition is paused, so a stalled endpoint holds back its own
    /// topic's partitions only.
    pub max_pending: usize,
    /// On stop, how long calls in flight may still finish before the
    /// connector commits what it has and leaves (the rest is called again by
    /// the next owner).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Create missing result topics (with `partitions` and
    /// `replication_factor`), else expect them to exist.
    pub create_topics: bool,
    /// Partitions of result topics it creates: baton's `topics.partitions`,
    /// so outcomes keyed by their instance can be processed in place.
    pub partitions: i32,
    pub replication_factor: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            instance_id: None,
            result_topic: None,
            commit_interval: Duration::from_millis(100),
            max_pending: 1000,
            drain_timeout: Duration::from_secs(30),
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
        }
    }
}

/// `[admin]`: `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// `/healthz` fails when the loop has not turned for this long.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9091)),
            stall_after: Duration::from_secs(60),
        }
    }
}

/// `[endpoints.<name>]`: one remote service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Base address, `http://` or `https://`; a command's `path` is appended.
    pub url: String,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Longest time one call may take, connecting and reading the answer included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Header name → CEL, sent with every call to this endpoint.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Most calls in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Largest answer body kept in the outcome; a larger one is left out
    /// (`"truncated": true`), so an outcome always fits a Kafka record.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_concurrency() -> usize {
    8
}

fn default_max_response_bytes() -> u64 {
    256 * 1024
}

/// How the connector proves who it is; every secret from the environment or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`.
    Bearer(SecretConfig),
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        username: String,
        password: SecretConfig,
    },
    /// `<header>: <key>`.
    ApiKey { header: String, key: SecretConfig },
}

/// Where a secret is: an environment variable or a file (exactly one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

/// `tls`: which certificate authorities a server's certificate must chain to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// `rate_limit`: a token bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Calls per second, on average.
    pub per_second: f64,
    /// Calls that may go at once after a quiet spell (default: 1).
    #[serde(default = "one")]
    pub burst: u32,
}

fn one() -> u32 {
    1
}

/// `retry`: 5xx answers, timeouts and connection failures are tried again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Calls in all, the first included.
    pub attempts: u32,
    /// Wait before the second call; each further wait is `factor` times
    /// longer, up to `max_backoff`, and jittered to between half and all of it.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    pub factor: f64,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 5,
            backoff: Duration::from_millis(500),
            factor: 2.0,
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// `breaker`: after `failures` failed calls in a row the endpoint is
/// paused for `pause`; then one call tries it, and its success resumes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// 0 turns the breaker off.
    pub failures: u32,
    #[serde(with = "humantime_serde")]
    pub pause: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            pause: Duration::from_secs(30),
        }
    }
}

/// `[[commands]]`: one command type and the call it becomes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The command's CloudEvents type.
    #[serde(rename = "type")]
    pub kind: String,
    /// A name under `[endpoints]`.
    pub endpoint: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// Appended to the endpoint's `url`; `{…}` holds CEL whose value is
    /// percent-encoded, e.g. `/accounts/{event.data.account}`.
    #[serde(default)]
    pub path: String,
    /// Header name → CEL, over the endpoint's headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The JSON body: a tree whose leaves are CEL (strings) or constants
    /// (numbers, booleans). Default: the command's data, for methods with a body.
    #[serde(default)]
    pub body: Option<toml::Value>,
    /// Where its outcomes go (default `[connect] result_topic`).
    #[serde(default)]
    pub result_topic: Option<String>,
    #[serde(default)]
    pub publish: Publish,
}

fn default_method() -> String {
    "POST".to_string()
}

/// Which outcomes of a command are published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Publish {
    /// `.succeeded` and `.failed`: what a process awaits.
    #[default]
    Always,
    /// Only `.failed`: for fire-and-forget commands (a compensation), whose
    /// successes nobody awaits but whose failures should be seen.
    Failures,
    /// Nothing.
    Never,
}

/// A secret's text; never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The server certificates an endpoint accepts.
#[derive(Debug, Clone)]
pub enum Roots {
    /// The system's certificate authorities.
    System,
    /// Only these CA certificates.
    Only(Vec<ureq::tls::Certificate<'static>>),
}

/// An endpoint, resolved: secrets read, CA loaded, headers compiled.
#[derive(Debug)]
pub struct EndpointPlan {
    pub name: String,
    pub url: String,
    /// Authentication headers (name, value).
    pub auth: Vec<(String, Secret)>,
    pub roots: Roots,
    pub timeout: Duration,
    pub concurrency: usize,
    pub rate_limit: Option<RateLimitConfig>,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub max_response_bytes: u64,
}

/// Everything `baton connect` needs, checked.
#[derive(Debug)]
pub struct Connectors {
    /// The Kafka clients' configuration: the file's `[kafka]` table inside
    /// a baton [`Config`], which is what `crate::kafka` builds clients from.
    pub client: Config,
    pub settings: Settings,
    pub instance_id: String,
    pub admin: AdminSettings,
    pub log: Log,
    pub endpoints: Vec<EndpointPlan>,
    /// By command type.
    pub routes: BTreeMap<String, Arc<Route>>,
}

impl Connectors {
    /// Every topic outcomes go to.
    pub fn result_topics(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .routes
            .values()
            .filter(|r| r.publish != Publish::Never)
            .map(|r| r.result_topic.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The transactional id: `<group_id>-<instance_id>`.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.client.kafka.group_id, self.instance_id)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectConfigError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: invalid configuration:\n  {}", .problems.join("\n  "))]
    Invalid { file: String, problems: Vec<String> },
}

/// Headers the connector sets itself on every call.
const OWN_HEADERS: [&str; 4] = [
    "idempotency-key",
    "traceparent",
    "tracestate",
    "content-length",
];

/// Methods a command may use.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Parses `text` (named `file` in errors) and checks it; `env` is the
/// environment secrets named by `env = "…"` are read from.
pub fn load(
    file: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Connectors, ConnectConfigError> {
    let parsed: ConnectFile = toml::from_str(text).map_err(|e| ConnectConfigError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let env: HashMap<String, String> = env.into_iter().collect();
    let mut problems = Vec::new();
    let mut kafka = parsed.kafka.clone();
    check_kafka(&mut kafka, &mut problems);
    let s = &parsed.connect;
    if s.commit_interval.is_zero() {
        problems.push("connect.commit_interval: must be longer than zero".into());
    }
    if s.max_pending == 0 {
        problems.push("connect.max_pending: must be at least 1".into());
    }
    if s.partitions < 1 {
        problems.push("connect.partitions: must be at least 1".into());
    }
    if s.replication_factor < 1 {
        problems.push("connect.replication_factor: must be at least 1".into());
    }
    if parsed.admin.stall_after.is_zero() {
        problems.push("admin.stall_after: must be longer than zero".into());
    }
    let instance_id = s
        .instance_id
        .clone()
        .or_else(|| env.get("HOSTNAME").filter(|h| !h.is_empty()).cloned())
        .unwrap_or_else(|| "connect-0".to_string());

    let mut endpoints = Vec::new();
    let mut index = HashMap::new();
    let mut endpoint_headers = HashMap::new();
    for (name, e) in &parsed.endpoints {
        let at = format!("endpoints.{name}");
        // Kept even with problems, so the commands that use it are checked too.
        let (plan, headers) = endpoint(&at, name, e, &env, &mut problems);
        index.insert(name.clone(), endpoints.len());
        endpoint_headers.insert(name.clone(), headers);
        endpoints.push(plan);
    }
    if parsed.commands.is_empty() {
        problems.push("commands: list at least one [[commands]] entry".into());
    }
    let mut routes = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for (n, c) in parsed.commands.iter().enumerate() {
        let at = format!("commands[{n}] ({})", c.kind);
        if c.kind.trim().is_empty() {
            problems.push(format!("commands[{n}].type: must name a command type"));
            continue;
        }
        if !seen.insert(c.kind.as_str()) {
            problems.push(format!(
                "{at}.type: `{}` is configured twice; one command type makes one call",
                c.kind
            ));
            continue;
        }
        let Some(&e) = index.get(&c.endpoint) else {
            let known: Vec<&str> = parsed.endpoints.keys().map(String::as_str).collect();
            problems.push(format!(
                "{at}.endpoint: no endpoint `{}` under [endpoints] (known: {})",
                c.endpoint,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
            continue;
        };
        let base = endpoint_headers
            .get(&c.endpoint)
            .cloned()
            .unwrap_or_default();
        let result_topic = c.result_topic.clone().or_else(|| s.result_topic.clone());
        if let Some(route) = route(&at, c, e, &endpoints[e], base, result_topic, &mut problems) {
            routes.insert(c.kind.clone(), Arc::new(route));
        }
    }
    if !problems.is_empty() {
        return Err(ConnectConfigError::Invalid {
            file: file.to_string(),
            problems,
        });
    }
    let client = Config {
        kafka,
        topics: crate::config::Topics {
            create: s.create_topics,
            replication_factor: s.replication_factor,
            partitions: s.partitions,
            ..Default::default()
        },
        definitions: crate::config::Definitions { paths: Vec::new() },
        runtime: crate::config::Runtime {
            instance_id: Some(instance_id.clone()),
            // The connector holds no state: a restarted process takes
            // whatever partitions the group gives it, at once.
            static_membership: false,
            await_settled_group: false,
            ..Default::default()
        },
        events: Default::default(),
        telemetry: Default::default(),
        log: parsed.log.clone(),
        admin: crate::config::Admin {
            enabled: false,
            ..Default::default()
        },
    };
    Ok(Connectors {
        client,
        settings: parsed.connect.clone(),
        instance_id,
        admin: parsed.admin.clone(),
        log: parsed.log,
        endpoints,
        routes,
    })
}

/// The `[kafka]` checks `baton.toml` makes, for the connector's clients,
/// and its secret files read into `options`.
fn check_kafka(kafka: &mut Kafka, problems: &mut Vec<String>) {
    if kafka.bootstrap_servers.trim().is_empty() {
        problems.push("kafka.bootstrap_servers: must name at least one broker".into());
    }
    if kafka.input_topics.is_empty() {
        problems
            .push("kafka.input_topics: list the command topics the connector consumes".to_string());
    }
    if kafka.group_id == "baton" {
        problems.push(
            "kafka.group_id: the connector needs a consumer group of its own, not baton's (`baton`); e.g. group_id = \"baton-connect\"".into(),
        );
    }
    kafka.reserved_options("the connector", problems);
    kafka.read_secret_files(problems);
    // Outcomes keyed by their instance land on the partition Kafka's
    // default partitioner picks, where baton can process them in place.
    if kafka.producer_option("partitioner").is_none() {
        kafka
            .producer_options
            .insert("partitioner".into(), "murmur2_random".into());
    }
}

fn secret(
    at: &str,
    s: &SecretConfig,
    env: &HashMap<String, String>,
    problems: &mut Vec<String>,
) -> Option<Secret> {
    let value = match (&s.env, &s.file) {
        (Some(var), None) => match env.get(var) {
            Some(v) => v.clone(),
            None => {
                problems.push(format!("{at}: environment variable {var} is not set"));
                return None;
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{at}: file {}: {e}", path.display()));
                return None;
            }
        },
        _ => {
            problems.push(format!(
                "{at}: set exactly one of `env` and `file` (secrets are never written in this file)"
            ));
            return None;
        }
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        let source = match (&s.env, &s.file) {
            (Some(var), _) => format!("environment variable {var}"),
            (_, Some(path)) => format!("file {}", path.display()),
            _ => "the secret".to_string(),
        };
        problems.push(format!("{at}: {source} is empty"));
        return None;
    }
    Some(Secret(value))
}

/// A header name as HTTP allows it (a token).
fn header_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Header name → CEL, compiled; problems under `at`.
fn headers(
    at: &str,
    given: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Vec<(String, Arc<Expr>)> {
    let mut out = Vec::new();
    for (name, source) in given {
        let path = format!("{at}.headers.\"{name}\"");
        if !header_name_ok(name) {
            problems.push(format!("{path}: `{name}` is not a valid header name"));
            continue;
        }
        if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            problems.push(format!(
                "{path}: the connector sets `{name}` itself (the command id is the idempotency key; the trace context is the command's); remove it"
            ));
            continue;
        }
        match check_expr(source) {
            Ok(e) => out.push((name.clone(), Arc::new(e))),
            Err(why) => problems.push(format!("{path}: {why}")),
        }
    }
    out
}

type EndpointParts = (EndpointPlan, Vec<(String, Arc<Expr>)>);

fn endpoint(
    at: &str,
    name: &str,
    e: &EndpointConfig,
    env: &HashMap<String, String>,
    problems: &mut Vec<String>,
) -> EndpointParts {
    let url = e.url.trim_end_matches('/').to_string();
    let https = url.starts_with("https://");
    match url.parse::<ureq::http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && uri.query().is_none() => {}
        Ok(_) => problems.push(format!(
            "{at}.url: `{}` must be an http:// or https:// address with a host and no query (a command's `path` adds the rest)",
            e.url
        )),
        Err(why) => problems.push(format!("{at}.url: `{}` is not a URL: {why}", e.url)),
    }
    let mut auth = Vec::new();
    match &e.auth {
        None => {}
        Some(AuthConfig::Bearer(s)) => {
            if let Some(token) = secret(&format!("{at}.auth.bearer"), s, env, problems) {
                auth.push((
                    "Authorization".to_string(),
                    Secret(format!("Bearer {}", token.0)),
                ));
            }
        }
        Some(AuthConfig::Basic { username, password }) => {
            use base64::Engine as _;
            if username.contains(':') {
                problems.push(format!(
                    "{at}.auth.basic.username: a user name for basic authentication cannot hold `:`"
                ));
            }
            if let Some(p) = secret(
                &format!("{at}.auth.basic.password"),
                password,
                env,
                problems,
            ) {
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", p.0));
                auth.push(("Authorization".to_string(), Secret(format!("Basic {pair}"))));
            }
        }
        Some(AuthConfig::ApiKey { header, key }) => {
            if !header_name_ok(header) {
                problems.push(format!(
                    "{at}.auth.api_key.header: `{header}` is not a valid header name"
                ));
            }
            if let Some(k) = secret(&format!("{at}.auth.api_key.key"), key, env, problems) {
                auth.push((header.clone(), k));
            }
        }
    }
    let roots = match e.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
        None => Roots::System,
        Some(path) => {
            if !https {
                problems.push(format!(
                    "{at}.tls.ca_file: the endpoint's url is not https://, so no certificate is checked"
                ));
            }
            match std::fs::read(path) {
                Ok(pem) => {
                    let mut certs = Vec::new();
                    for item in ureq::tls::parse_pem(&pem) {
                        match item {
                            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                            Ok(_) => {}
                            Err(why) => problems
                                .push(format!("{at}.tls.ca_file: {}: {why}", path.display())),
                        }
                    }
                    if certs.is_empty() {
                        problems.push(format!(
                            "{at}.tls.ca_file: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                            path.display()
                        ));
                    }
                    Roots::Only(certs)
                }
                Err(why) => {
                    problems.push(format!("{at}.tls.ca_file: {}: {why}", path.display()));
                    Roots::System
                }
            }
        }
    };
    if e.timeout.is_zero() {
        problems.push(format!("{at}.timeout: must be longer than zero"));
    }
    if e.concurrency == 0 {
        problems.push(format!("{at}.concurrency: must be at least 1"));
    }
    if let Some(r) = &e.rate_limit {
        if !(r.per_second.is_finite() && r.per_second > 0.0) {
            problems.push(format!(
                "{at}.rate_limit.per_second: must be a number above zero"
            ));
        }
        if r.burst == 0 {
            problems.push(format!("{at}.rate_limit.burst: must be at least 1"));
        }
    }
    if e.retry.attempts == 0 {
        problems.push(format!(
            "{at}.retry.attempts: must be at least 1 (it counts the first call)"
        ));
    }
    if !(e.retry.factor.is_finite() && e.retry.factor >= 1.0) {
        problems.push(format!("{at}.retry.factor: must be at least 1"));
    }
    if e.breaker.failures > 0 && e.breaker.pause.is_zero() {
        problems.push(format!("{at}.breaker.pause: must be longer than zero"));
    }
    if e.max_response_bytes > 768 * 1024 {
        problems.push(format!(
            "{at}.max_response_bytes: at most 786432 (an outcome carries the body in one Kafka record)"
        ));
    }
    let compiled = headers(at, &e.headers, problems);
    (
        EndpointPlan {
            name: name.to_string(),
            url,
            auth,
            roots,
            timeout: e.timeout,
            concurrency: e.concurrency,
            rate_limit: e.rate_limit.clone(),
            retry: e.retry.clone(),
            breaker: e.breaker.clone(),
            max_response_bytes: e.max_response_bytes,
        },
        compiled,
    )
}

fn route(
    at: &str,
    c: &CommandConfig,
    endpoint: usize,
    plan: &EndpointPlan,
    base_headers: Vec<(String, Arc<Expr>)>,
    result_topic: Option<String>,
    problems: &mut Vec<String>,
) -> Option<Route> {
    let before = problems.len();
    let method = c.method.to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        problems.push(format!(
            "{at}.method: `{}` is not one of {}",
            c.method,
            METHODS.join(", ")
        ));
    }
    if !(c.path.is_empty() || c.path.starts_with('/') || c.path.starts_with('?')) {
        problems.push(format!(
            "{at}.path: `{}` must start with `/` (or `?`): it is appended to {}",
            c.path, plan.url
        ));
    }
    let url = match Template::parse(&format!("{}{}", plan.url, c.path)) {
        Ok(t) => Some(t),
        Err(why) => {
            problems.push(format!("{at}.path: {why}"));
            None
        }
    };
    // The command's headers win over the endpoint's of the same name.
    let own = headers(at, &c.headers, problems);
    let mut all: Vec<(String, Arc<Expr>)> = base_headers
        .into_iter()
        .filter(|(n, _)| !own.iter().any(|(o, _)| o.eq_ignore_ascii_case(n)))
        .collect();
    all.extend(own);
    if plan
        .auth
        .iter()
        .any(|(a, _)| all.iter().any(|(h, _)| h.eq_ignore_ascii_case(a)))
    {
        problems.push(format!(
            "{at}.headers: a header repeats the endpoint's authentication header; remove one"
        ));
    }
    let takes_body = !matches!(method.as_str(), "GET" | "DELETE");
    let body = match &c.body {
        None if takes_body => Body::Data,
        None => Body::None,
        Some(_) if method == "GET" => {
            problems.push(format!("{at}.body: a GET request has no body"));
            Body::None
        }
        Some(v) => match datamap(v, &format!("{at}.body"), problems) {
            Some(m) => Body::Map(Box::new(m)),
            None => Body::None,
        },
    };
    let topic = match (c.publish, result_topic) {
        (Publish::Never, t) => t.unwrap_or_default(),
        (_, Some(t)) if !t.trim().is_empty() => t,
        _ => {
            problems.push(format!(
                "{at}.result_topic: no topic for its outcomes; set result_topic here or under [connect]"
            ));
            String::new()
        }
    };
    let method = ureq::http::Method::from_bytes(method.as_bytes()).ok()?;
    (problems.len() == before).then(|| Route {
        kind: c.kind.clone(),
        endpoint,
        method,
        url: url.unwrap_or_default(),
        headers: all,
        body,
        result_topic: topic,
        publish: c.publish,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[kafka]
bootstrap_servers = "localhost:9092"
group_id = "baton-connect"
input_topics = ["crm.commands"]
[connect]
result_topic = "connector.results"
[endpoints.crm]
url = "https://crm.example/api/"
auth = { bearer = { env = "CRM_TOKEN" } }
timeout = "5s"
rate_limit = { per_second = 20, burst = 5 }
retry = { attempts = 3, backoff = "200ms" }
headers = { "X-Tenant" = "'acme'" }
[[commands]]
type = "com.acme.crm.account.create"
endpoint = "crm"
path = "/accounts/{event.data.lead}"
body = { name = "event.data.company", tier = 2, tags = ["'new'", "key"] }
"#;

    fn env() -> Vec<(String, String)> {
        vec![("CRM_TOKEN".into(), " s3cret-token \n".into())]
    }

    #[test]
    fn a_good_file_compiles() {
        let c = load("connectors.toml", GOOD, env()).expect("valid");
        assert_eq!(c.client.kafka.group_id, "baton-connect");
        assert_eq!(c.instance_id, "connect-0");
        assert_eq!(c.transactional_id(), "baton-connect-connect-0");
        assert_eq!(c.result_topics(), vec!["connector.results".to_string()]);
        let e = &c.endpoints[0];
        assert_eq!(e.url, "https://crm.example/api");
        assert_eq!(e.auth[0].0, "Authorization");
        assert_eq!(e.auth[0].1.expose(), "Bearer s3cret-token");
        assert_eq!(e.timeout, Duration::from_secs(5));
        let r = &c.routes["com.acme.crm.account.create"];
        assert_eq!(r.method, ureq::http::Method::POST);
        assert_eq!(r.headers.len(), 1);
        // Secrets never show in debug output.
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(
            c.client
                .kafka
                .producer_option("partitioner")
                .map(String::as_str),
            Some("murmur2_random")
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let text = r#"
[kafka]
bootstrap_servers = "localhost:9092"
input_topics = ["crm.commands"]
options = { "transactional.id" = "x" }
[endpoints.crm]
url = "ftp://crm.example"
auth = { bearer = { env = "NOT_SET_ANYWHERE" } }
headers = { "Idempotency-Key" = "'x'", "X-Bad" = "event.data." }
concurrency = 0
[endpoints.erp]
url = "https://erp.example"
auth = { basic = { username = "baton", password = { env = "A", file = "/x" } } }
[[commands]]
type = "com.acme.crm.account.create"
endpoint = "crmm"
[[commands]]
type = "com.acme.erp.customer.create"
endpoint = "erp"
method = "FETCH"
path = "/customers/{data.id}"
"#;
        let err = load("connectors.toml", text, env()).expect_err("invalid");
        let msg = err.to_string();
        for needle in [
            "connectors.toml: invalid configuration",
            "kafka.group_id: the connector needs a consumer group of its own",
            "kafka.options.\"transactional.id\": the connector sets this itself",
            "endpoints.crm.url: `ftp://crm.example` must be an http:// or https:// address",
            "endpoints.crm.auth.bearer: environment variable NOT_SET_ANYWHERE is not set",
            "endpoints.crm.headers.\"Idempotency-Key\": the connector sets `Idempotency-Key` itself",
            "endpoints.crm.headers.\"X-Bad\": CEL expression `event.data.` does not parse",
            "endpoints.crm.concurrency: must be at least 1",
            "endpoints.erp.auth.basic.password: set exactly one of `env` and `file`",
            "commands[0] (com.acme.crm.account.create).endpoint: no endpoint `crmm`",
            "commands[1] (com.acme.erp.customer.create).method: `FETCH` is not one of",
            "commands[1] (com.acme.erp.customer.create).path: CEL expression `data.id` refers to unknown name `data`",
            "commands[1] (com.acme.erp.customer.create).result_topic: no topic for its outcomes",
        ] {
            assert!(msg.contains(needle), "`{needle}` missing in:\n{msg}");
        }
    }

    #[test]
    fn secrets_cannot_be_written_in_clear() {
        let text = GOOD.replace(
            r#"auth = { bearer = { env = "CRM_TOKEN" } }"#,
            r#"auth = { bearer = { value = "s3cret" } }"#,
        );
        let msg = load("connectors.toml", &text, env())
            .expect_err("clear secret")
            .to_string();
        assert!(msg.contains("unknown field `value`"), "{msg}");
        assert!(msg.contains("connectors.toml"), "{msg}");
    }

    #[test]
    fn secrets_come_from_files_too() {
        let dir = std::env::temp_dir().join(format!("baton-connect-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("erp-password");
        std::fs::write(&path, "pa55word\n").expect("secret written");
        let text = GOOD.replace(
            r#"auth = { bearer = { env = "CRM_TOKEN" } }"#,
            &format!(
                r#"auth = {{ basic = {{ username = "baton", password = {{ file = "{}" }} }} }}"#,
                path.display()
            ),
        );
        let c = load("connectors.toml", &text, []).expect("valid");
        // base64("baton:pa55word")
        assert_eq!(
            c.endpoints[0].auth[0].1.expose(),
            "Basic YmF0b246cGE1NXdvcmQ="
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_example_configuration_loads() {
        let text = include_str!("../../examples/connectors.toml");
        let env = [
            ("CREDIT_BUREAU_API_KEY", "bureau-key-0123456789"),
            ("CRM_TOKEN", "crm-token-0123456789"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = load("examples/connectors.toml", text, env).expect("the example is valid");
        assert!(c.routes.contains_key("com.acme.credit.check"));
        assert!(c.routes.contains_key("com.acme.crm.account.create"));
    }
}
