//! `baton.toml`: one file plus `BATON_…` environment overrides.
//!
//! Unknown keys are rejected, durations are human (`100ms`, `7d`), and the
//! `[kafka.options]` table passes any librdkafka option through (SASL, TLS…).
//! An override names its key path with `__` between levels (a variable
//! without `__` is not an override):
//! `BATON_KAFKA__BOOTSTRAP_SERVERS=broker:9092`, `BATON_RUNTIME__MAX_BATCH=500`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: Kafka,
    #[serde(default)]
    pub topics: Topics,
    pub definitions: Definitions,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub events: Events,
    #[serde(default)]
    pub telemetry: Telemetry,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub admin: Admin,
}

/// Connection and consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kafka {
    pub bootstrap_servers: String,
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topics carrying domain events (the user's).
    pub input_topics: Vec<String>,
    /// Passed to librdkafka as they are, for every client baton creates
    /// (connection, TLS, SASL).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Options whose values are secrets (`sasl.password`, `ssl.key.password`),
    /// each read from a file when the configuration loads (surrounding white
    /// space is ignored) and added to `options`, so the file itself holds no
    /// secret. (A `BATON_KAFKA__OPTIONS__<OPTION>` environment variable is the
    /// other way.)
    #[serde(default)]
    pub secret_files: BTreeMap<String, std::path::PathBuf>,
    /// Passed to baton's consumers only (the group member, restore and
    /// offset readers), over `options`: fetch tuning, group settings.
    #[serde(default)]
    pub consumer_options: BTreeMap<String, String>,
    /// Passed to the transactional producer only, over `options`: batching,
    /// compression, `message.max.bytes`, transaction timeout.
    #[serde(default)]
    pub producer_options: BTreeMap<String, String>,
    /// The consumer group protocol: `consumer` (KIP-848, Kafka 4.0 or newer:
    /// incremental rebalances coordinated by the broker, with its `range`
    /// assignor, which keeps partition *p* of every topic on one member) or
    /// `classic` (any broker; `range` assignor with in-place processing,
    /// `cooperative-sticky` otherwise).
    #[serde(default)]
    pub group_protocol: GroupProtocol,
    /// The largest record baton produces (key, value and headers); an input
    /// whose results would be larger goes to the dead-letter topic instead.
    /// Default: the broker's `message.max.bytes`, capped by the producer's.
    #[serde(default)]
    pub max_record_bytes: Option<usize>,
}

impl Kafka {
    /// A problem for every option in the option tables that `who` sets
    /// itself (the client's identity, group, transactions and isolation).
    pub fn reserved_options(&self, who: &str, problems: &mut Vec<String>) {
        for key in [
            "transactional.id",
            "group.id",
            "enable.auto.commit",
            "isolation.level",
            "bootstrap.servers",
        ] {
            for (table, options) in self.option_tables() {
                if options.contains_key(key) {
                    problems.push(format!(
                        "{table}.\"{key}\": {who} sets this itself; remove it"
                    ));
                }
            }
        }
    }

    /// Reads `secret_files` into `options`; a problem for each file that
    /// cannot be read or is empty.
    pub fn read_secret_files(&mut self, problems: &mut Vec<String>) {
        for (option, path) in self.secret_files.clone() {
            match std::fs::read_to_string(&path) {
                Ok(v) if v.trim().is_empty() => problems.push(format!(
                    "kafka.secret_files.\"{option}\": file {} is empty",
                    path.display()
                )),
                Ok(v) => {
                    self.options.insert(option, v.trim().to_string());
                }
                Err(e) => problems.push(format!(
                    "kafka.secret_files.\"{option}\": file {}: {e}",
                    path.display()
                )),
            }
        }
    }

    /// The option tables, by their name in the file.
    pub fn option_tables(&self) -> [(&'static str, &BTreeMap<String, String>); 3] {
        [
            ("kafka.options", &self.options),
            ("kafka.consumer_options", &self.consumer_options),
            ("kafka.producer_options", &self.producer_options),
        ]
    }

    /// A consumer's setting: `consumer_options` over `options`.
    pub fn consumer_option(&self, key: &str) -> Option<&String> {
        self.consumer_options
            .get(key)
            .or_else(|| self.options.get(key))
    }

    /// A producer's setting: `producer_options` over `options`.
    pub fn producer_option(&self, key: &str) -> Option<&String> {
        self.producer_options
            .get(key)
            .or_else(|| self.options.get(key))
    }

    /// Which table that reaches consumers sets `key`, if one does.
    fn consumer_table_with(&self, key: &str) -> Option<&'static str> {
        if self.consumer_options.contains_key(key) {
            Some("kafka.consumer_options")
        } else if self.options.contains_key(key) {
            Some("kafka.options")
        } else {
            None
        }
    }
}

/// See [`Kafka::group_protocol`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    #[default]
    Consumer,
    Classic,
}

fn default_group() -> String {
    "baton".to_string()
}

/// baton's own topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Names are `<prefix>.changelog`, `.audit`, `.dead-letters`, `.repartition`, `.operator`, `.definitions`.
    pub prefix: String,
    /// Partitions of baton's topics; equal to the input topics' partitions.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Create missing topics (otherwise only check them).
    pub create: bool,
    /// Topic settings for the changelog when baton creates it, beside
    /// `cleanup.policy=compact` (e.g. `segment.ms`, `min.cleanable.dirty.ratio`,
    /// `delete.retention.ms`: how soon old snapshots and tombstones go).
    pub changelog_config: BTreeMap<String, String>,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            prefix: "baton".to_string(),
            partitions: 6,
            replication_factor: 1,
            create: true,
            changelog_config: BTreeMap::new(),
        }
    }
}

impl Topics {
    pub fn changelog(&self) -> String {
        format!("{}.changelog", self.prefix)
    }
    pub fn audit(&self) -> String {
        format!("{}.audit", self.prefix)
    }
    pub fn dead_letters(&self) -> String {
        format!("{}.dead-letters", self.prefix)
    }
    pub fn repartition(&self) -> String {
        format!("{}.repartition", self.prefix)
    }
    pub fn operator(&self) -> String {
        format!("{}.operator", self.prefix)
    }
    /// The members' admin addresses and shards (compacted, one partition).
    pub fn members(&self) -> String {
        format!("{}.members", self.prefix)
    }
    /// Definitions deployed at run time (compacted, one partition).
    pub fn definitions(&self) -> String {
        format!("{}.definitions", self.prefix)
    }
}

/// Where the process definitions are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definitions {
    /// Files, or directories whose `*.yaml` files are loaded.
    pub paths: Vec<PathBuf>,
}

/// Batching, transactions and identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Stable name of this baton process; its transactional id derives from it.
    pub instance_id: Option<String>,
    /// Longest time events wait before their transaction commits.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Most events in one transaction.
    pub max_batch: usize,
    /// Most records one transaction holds before it commits (checked between
    /// batches, so a transaction holds at most this plus one batch's records).
    pub max_in_flight_records: usize,
    /// Most instances a shard holds in memory (ended ones count until their
    /// retention ends). What happens at the cap is `at_instance_cap`.
    pub max_instances_per_shard: usize,
    /// What a shard holding `max_instances_per_shard` instances does with an
    /// event that would start a new one.
    pub at_instance_cap: AtInstanceCap,
    /// How long an ended instance is kept before its changelog key is tombstoned.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Consumer group session timeout of the classic group protocol; with
    /// the consumer protocol the broker's `group.consumer.session.timeout.ms`
    /// (or the group's `consumer.session.timeout.ms`) applies instead.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Process an input record on its own partition's shard when its
    /// instance lives there (the input topic is keyed by the correlation key
    /// with Kafka's default partitioner and has `topics.partitions`
    /// partitions), instead of re-keying it through the repartition topic.
    /// Needs a co-partitioning assignor, which keeps input partition *p* and
    /// shard *p* on the same process: the broker's `range` assignor with the
    /// consumer group protocol (the default), `range` with the classic one.
    pub in_place: bool,
    /// Join the group as a static member (`group.instance.id` =
    /// `instance_id`): a process that restarts under the same instance id
    /// gets its shards back without moving anyone else's. The broker keeps a
    /// static member's shards for it for a session timeout after it went, so
    /// a process that stops for good hands them over only then.
    pub static_membership: bool,
    /// `/readyz` answers 200 only once the group has settled: the
    /// coordinator describes it as stable and every shard has an owner.
    /// Needs the DescribeGroups/ConsumerGroupDescribe API (and DESCRIBE on
    /// the group where ACLs are on); without it, ready means joined.
    pub await_settled_group: bool,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            instance_id: None,
            commit_interval: Duration::from_millis(100),
            max_batch: 1000,
            max_in_flight_records: 50_000,
            max_instances_per_shard: 100_000,
            at_instance_cap: AtInstanceCap::Refuse,
            retention: Duration::from_secs(7 * 24 * 3600),
            session_timeout: Duration::from_secs(10),
            in_place: false,
            static_membership: true,
            await_settled_group: true,
        }
    }
}

/// What a shard at its instance cap does with an event that would start a
/// new instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AtInstanceCap {
    /// The event is a dead letter (kind `instance-cap`, replayable with
    /// `baton dead-letters --replay`); everything else of the partition goes
    /// on, so the instances held still get their answers and end.
    Refuse,
    /// The input partition stops at that event (backpressure): nothing after
    /// it is read until instances have left the shard, and reading goes on
    /// from that event. Timers and operator actions go on, but so is every
    /// later event of the partition held back, the answers of the instances
    /// held too, so they end only by their timers (timeouts, retention) or
    /// an operator. Needs `in_place` (in the repartition mode every input
    /// reaches the shard through the partition its timers are read from); an
    /// event that still reaches a full shard through the repartition topic is
    /// refused.
    Pause,
}

/// How events that are not CloudEvents are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// Field of a plain JSON event that holds its type.
    pub type_field: String,
    /// Field that holds its id (else `<topic>/<partition>/<offset>`).
    pub id_field: String,
    /// Largest payload of an input record baton reads; a larger one is a
    /// dead letter (`oversized-payload`), so one huge record cannot take the
    /// memory of a process.
    pub max_payload_bytes: usize,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            type_field: "type".to_string(),
            id_field: "id".to_string(),
            max_payload_bytes: 1024 * 1024,
        }
    }
}

/// Traces exported over OTLP. Off unless an endpoint is given here or in the
/// standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// variables (which the OpenTelemetry SDK reads, with the other `OTEL_*` ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// Collector address, e.g. `http://collector:4318` (HTTP) or `http://collector:4317` (gRPC).
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (default: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`).
    pub otlp_protocol: Option<OtlpProtocol>,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME` wins).
    pub service_name: String,
    /// Share of new traces recorded (0.0–1.0); traces that arrive sampled stay sampled.
    pub sample_ratio: f64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: None,
            otlp_protocol: None,
            service_name: "baton".to_string(),
            sample_ratio: 1.0,
        }
    }
}

/// OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` (human-readable) or `json` (one object per line).
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax (`RUST_LOG` wins), e.g. `info,baton=debug`.
    pub level: String,
    /// Log event payloads at debug level. Off by default: payloads carry business data.
    pub payloads: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info,rdkafka=warn".to_string(),
            payloads: false,
        }
    }
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The admin HTTP port: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub enabled: bool,
    /// Address and port to listen on (port 0 picks a free one and logs it).
    pub listen: std::net::SocketAddr,
    /// `/healthz` fails when the processing loop has not turned for this long.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// Bearer tokens for `/api/v1`; without any, the API refuses every call
    /// (health and metrics stay open).
    pub tokens: Vec<AdminToken>,
    /// The URL other members reach this one's admin port at (default:
    /// `http://<listen>`, with an unspecified address replaced by
    /// `$HOSTNAME`, else 127.0.0.1).
    pub advertise: Option<String>,
}

impl Admin {
    /// The URL other members forward queries to.
    pub fn advertised(&self) -> String {
        if let Some(url) = &self.advertise {
            return url.trim_end_matches('/').to_string();
        }
        let port = self.listen.port();
        if self.listen.ip().is_unspecified() {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".to_string());
            format!("http://{host}:{port}")
        } else {
            format!("http://{}", self.listen)
        }
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: true,
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 8080)),
            stall_after: Duration::from_secs(60),
            tokens: Vec::new(),
            advertise: None,
        }
    }
}

/// One admin API token: its secret comes from an environment variable or a
/// file, never from the configuration itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who holds it; audit entries of its actions name it.
    pub name: String,
    pub role: Role,
    /// The environment variable holding the secret.
    pub env: Option<String>,
    /// The file holding the secret (surrounding white space is ignored).
    pub file: Option<std::path::PathBuf>,
}

/// What a token may do: a viewer reads, an operator also acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
}

impl AdminToken {
    /// The secret, read from its variable or file.
    pub fn secret(&self) -> Result<String, String> {
        let (what, value) = match (&self.env, &self.file) {
            (Some(var), None) => (
                format!("environment variable {var}"),
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set")),
            ),
            (None, Some(path)) => (
                format!("file {}", path.display()),
                std::fs::read_to_string(path).map_err(|e| format!("file {}: {e}", path.display())),
            ),
            _ => return Err("set exactly one of `env` and `file`".to_string()),
        };
        let value = value?.trim().to_string();
        if value.len() < 16 {
            return Err(format!("{what} holds fewer than 16 characters"));
        }
        Ok(value)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{file}: invalid configuration:\n  {}", .problems.join("\n  "))]
    Invalid { file: String, problems: Vec<String> },
}

impl Config {
    /// Parses `text` (named `file` in errors), applies `env` overrides, and validates.
    pub fn load(
        file: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // Only `BATON_<SECTION>__<KEY>` names a key: other BATON_* variables
        // (tooling, tests) are none of the configuration's business.
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("BATON_") && k.contains("__"))
            .collect();
        let config: Config = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| ConfigError::Parse {
                file: file.to_string(),
                message: e.to_string(),
            })?
        } else {
            let mut root: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
                file: file.to_string(),
                message: e.to_string(),
            })?;
            for (var, value) in &overrides {
                apply_override(&mut root, var, value)?;
            }
            Config::deserialize(toml::Value::Table(root)).map_err(|e| ConfigError::Parse {
                file: format!("{file} (with BATON_* overrides)"),
                message: e.to_string(),
            })?
        };
        let mut config = config;
        let mut problems = config.problems();
        config.kafka.read_secret_files(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: file.to_string(),
                problems,
            })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.kafka.bootstrap_servers.trim().is_empty() {
            p.push("kafka.bootstrap_servers: must name at least one broker".to_string());
        }
        if self.kafka.input_topics.is_empty() {
            p.push("kafka.input_topics: list at least one topic of domain events".to_string());
        }
        if self.definitions.paths.is_empty() {
            p.push("definitions.paths: list at least one definition file or directory".to_string());
        }
        if self.topics.partitions < 1 {
            p.push("topics.partitions: must be at least 1".to_string());
        }
        if self.topics.replication_factor < 1 {
            p.push("topics.replication_factor: must be at least 1".to_string());
        }
        if self.runtime.max_batch == 0 {
            p.push("runtime.max_batch: must be at least 1".to_string());
        }
        if self.runtime.max_in_flight_records == 0 {
            p.push("runtime.max_in_flight_records: must be at least 1".to_string());
        }
        if self.runtime.max_instances_per_shard == 0 {
            p.push("runtime.max_instances_per_shard: must be at least 1".to_string());
        }
        if self.runtime.at_instance_cap == AtInstanceCap::Pause && !self.runtime.in_place {
            p.push("runtime.at_instance_cap = \"pause\" needs runtime.in_place = true: without it every event reaches its shard through the repartition topic, whose partition also carries the shard's timers, so a paused shard could never make room".to_string());
        }
        match self.kafka.group_protocol {
            GroupProtocol::Classic => {
                if self.runtime.in_place
                    && let Some(s) = self.kafka.consumer_option("partition.assignment.strategy")
                    && s != "range"
                {
                    p.push(format!(
                        "runtime.in_place needs the range assignor (it keeps input partition p and shard p together); kafka.options.\"partition.assignment.strategy\" is \"{s}\""
                    ));
                }
            }
            GroupProtocol::Consumer => {
                for key in [
                    "partition.assignment.strategy",
                    "session.timeout.ms",
                    "heartbeat.interval.ms",
                ] {
                    if let Some(table) = self.kafka.consumer_table_with(key) {
                        p.push(format!(
                            "{table}.\"{key}\": not used by the consumer group protocol (kafka.group_protocol = \"consumer\"), where the broker sets it (group.consumer.* broker settings); remove it, or set kafka.group_protocol = \"classic\""
                        ));
                    }
                }
                if self.runtime.in_place
                    && let Some(a) = self.kafka.consumer_option("group.remote.assignor")
                    && a != "range"
                {
                    p.push(format!(
                        "runtime.in_place needs the broker's range assignor (it keeps input partition p and shard p together); kafka.options.\"group.remote.assignor\" is \"{a}\""
                    ));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            p.push("telemetry.sample_ratio: must be between 0.0 and 1.0".to_string());
        }
        for (n, t) in self.admin.tokens.iter().enumerate() {
            if let Err(why) = t.secret() {
                p.push(format!("admin.tokens[{n}] ({}): {why}", t.name));
            }
        }
        if self.admin.stall_after.is_zero() {
            p.push("admin.stall_after: must be longer than zero".to_string());
        }
        if self.runtime.commit_interval.is_zero() {
            p.push("runtime.commit_interval: must be longer than zero".to_string());
        }
        self.kafka.reserved_options("baton", &mut p);
        p
    }

    /// This process's stable name.
    pub fn instance_id(&self) -> String {
        self.runtime
            .instance_id
            .clone()
            .unwrap_or_else(|| "baton-0".to_string())
    }
}

fn apply_override(root: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var["BATON_".len()..]
        .split("__")
        .map(|s| s.to_lowercase())
        .collect();
    let bad = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    if path.iter().any(String::is_empty) {
        return Err(bad(
            "use `__` between key levels, e.g. BATON_KAFKA__BOOTSTRAP_SERVERS".into(),
        ));
    }
    // A value that reads as TOML (number, boolean, array) is taken as such; anything else is a string.
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| bad("empty key path".into()))?;
    let mut table = root;
    for part in parents {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(bad(format!("`{part}` is not a table"))),
        };
    }
    table.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
bootstrap_servers = "localhost:9092"
input_topics = ["crm.events"]
[definitions]
paths = ["examples"]
"#;

    #[test]
    fn defaults_fill_what_is_not_said() {
        let c = Config::load("baton.toml", MINIMAL, []).expect("valid");
        assert_eq!(c.kafka.group_id, "baton");
        assert_eq!(c.runtime.commit_interval, Duration::from_millis(100));
        assert_eq!(c.topics.changelog(), "baton.changelog");
        assert_eq!(c.events.type_field, "type");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_location() {
        let text = format!("{MINIMAL}\n[runtime]\ncommit_intervall = \"1s\"\n");
        let err = Config::load("baton.toml", &text, []).expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("baton.toml"), "{msg}");
        assert!(msg.contains("unknown field `commit_intervall`"), "{msg}");
        assert!(msg.contains("line 9"), "{msg}");
    }

    #[test]
    fn consumer_settings_are_checked_in_either_table_that_reaches_the_consumer() {
        let text =
            format!("{MINIMAL}\n[kafka.consumer_options]\n\"session.timeout.ms\" = \"6000\"\n");
        let msg = Config::load("baton.toml", &text, [])
            .expect_err("classic-only")
            .to_string();
        assert!(
            msg.contains("kafka.consumer_options.\"session.timeout.ms\": not used by the consumer group protocol"),
            "{msg}"
        );
        let text = format!("{MINIMAL}\n[kafka.producer_options]\n\"transactional.id\" = \"x\"\n");
        let msg = Config::load("baton.toml", &text, [])
            .expect_err("baton's own")
            .to_string();
        assert!(
            msg.contains("kafka.producer_options.\"transactional.id\": baton sets this itself"),
            "{msg}"
        );
    }

    #[test]
    fn durations_are_human() {
        let text =
            format!("{MINIMAL}\n[runtime]\ncommit_interval = \"250ms\"\nretention = \"3d\"\n");
        let c = Config::load("baton.toml", &text, []).expect("valid");
        assert_eq!(c.runtime.commit_interval, Duration::from_millis(250));
        assert_eq!(c.runtime.retention, Duration::from_secs(3 * 24 * 3600));
        let bad = format!("{MINIMAL}\n[runtime]\ncommit_interval = \"soon\"\n");
        assert!(Config::load("baton.toml", &bad, []).is_err());
    }

    #[test]
    fn environment_overrides_win_and_are_checked() {
        let env = vec![
            (
                "BATON_KAFKA__BOOTSTRAP_SERVERS".to_string(),
                "broker:9093".to_string(),
            ),
            ("BATON_RUNTIME__MAX_BATCH".to_string(), "500".to_string()),
            (
                "BATON_KAFKA__OPTIONS__SECURITY.PROTOCOL".to_string(),
                "SASL_SSL".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
            ("BATON_CACHE".to_string(), "/var/cache/baton".to_string()),
        ];
        let c = Config::load("baton.toml", MINIMAL, env).expect("valid");
        assert_eq!(c.kafka.bootstrap_servers, "broker:9093");
        assert_eq!(c.runtime.max_batch, 500);
        assert_eq!(
            c.kafka.options.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
        let env = vec![("BATON_RUNTIME__NO_SUCH".to_string(), "1".to_string())];
        let err = Config::load("baton.toml", MINIMAL, env).expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `no_such`"), "{err}");
    }

    #[test]
    fn pausing_at_the_instance_cap_needs_in_place_processing() {
        let c = Config::load("baton.toml", MINIMAL, []).expect("valid");
        assert_eq!(c.runtime.at_instance_cap, AtInstanceCap::Refuse);
        let pause = format!("{MINIMAL}\n[runtime]\nat_instance_cap = \"pause\"\n");
        let msg = Config::load("baton.toml", &pause, [])
            .expect_err("pause without in_place")
            .to_string();
        assert!(
            msg.contains("runtime.at_instance_cap = \"pause\" needs runtime.in_place = true"),
            "{msg}"
        );
        let text = format!("{pause}in_place = true\n");
        let c = Config::load("baton.toml", &text, []).expect("valid");
        assert_eq!(c.runtime.at_instance_cap, AtInstanceCap::Pause);
        let bad = format!("{MINIMAL}\n[runtime]\nat_instance_cap = \"wait\"\n");
        let msg = Config::load("baton.toml", &bad, [])
            .expect_err("unknown mode")
            .to_string();
        assert!(msg.contains("unknown variant `wait`"), "{msg}");
    }

    #[test]
    fn all_semantic_problems_are_reported_together() {
        let text = r#"
[kafka]
bootstrap_servers = ""
input_topics = []
options = { "transactional.id" = "x" }
[definitions]
paths = []
[runtime]
max_batch = 0
"#;
        let err = Config::load("baton.toml", text, []).expect_err("invalid");
        let msg = err.to_string();
        for needle in [
            "bootstrap_servers",
            "input_topics",
            "definitions.paths",
            "max_batch",
            "transactional.id",
        ] {
            assert!(msg.contains(needle), "{needle} missing in {msg}");
        }
    }
}
