//! Test support: one Apache Kafka broker (KRaft, one node) per test binary,
//! started through the same set-up as `scripts/kafka.sh`, and a unique
//! scratch directory, topic names and group ids per test.
//!
//! `bash scripts/test.sh` installs the broker; a test that needs it fails,
//! never skips, when it cannot start one.

#![allow(dead_code)]

pub mod admin;
/// The broker launcher of `baton bench` (binary-side), compiled into the
/// tests from the same source, so both run one broker set-up.
#[path = "../../src/bench/broker.rs"]
pub mod broker;
pub mod oracle;
pub mod orders;
pub mod otlp;
pub mod running;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use broker::LocalKafka;

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// The test binary's broker: started by the first test that asks, stopped
/// when the binary ends (the broker script watches its standard input).
fn shared() -> &'static LocalKafka {
    static KAFKA: OnceLock<LocalKafka> = OnceLock::new();
    KAFKA.get_or_init(|| {
        let dir = std::env::temp_dir().join(unique("baton-kafka"));
        LocalKafka::start(&dir, "").unwrap_or_else(|e| {
            panic!("the test broker (Apache Kafka) could not start: {e}\n`bash scripts/test.sh` installs it")
        })
    })
}

/// What a test gets: the broker's address and a scratch directory of its own.
pub struct Broker {
    pub bootstrap: String,
    pub dir: PathBuf,
}

impl Broker {
    /// The binary's shared broker (topics and groups must be unique per test).
    pub fn start() -> Broker {
        let kafka = shared();
        let dir = std::env::temp_dir().join(unique("baton-test"));
        std::fs::create_dir_all(&dir).expect("test directory");
        Broker {
            bootstrap: kafka.bootstrap(),
            dir,
        }
    }

    /// A broker of the test's own, for tests that stop it, change its
    /// settings, or need the example's shared topic names with a partition
    /// count of their own.
    pub fn dedicated(extra_properties: &str) -> (LocalKafka, Broker) {
        let dir = std::env::temp_dir().join(unique("baton-kafka"));
        let kafka = LocalKafka::start(&dir, extra_properties).unwrap_or_else(|e| {
            panic!("the test broker (Apache Kafka) could not start: {e}\n`bash scripts/test.sh` installs it")
        });
        let scratch = std::env::temp_dir().join(unique("baton-test"));
        std::fs::create_dir_all(&scratch).expect("test directory");
        let b = Broker {
            bootstrap: kafka.bootstrap(),
            dir: scratch,
        };
        (kafka, b)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A number from the environment (the long forms of the fault tests), or `default`.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A free loopback address (for an admin port).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// How a `baton run` of the tests is set up (see [`write_config`]).
pub struct RunConfig<'a> {
    pub bootstrap: &'a str,
    pub group: &'a str,
    /// `runtime.instance_id`; also the file's name.
    pub instance: &'a str,
    pub partitions: i32,
    pub in_place: bool,
    /// `admin.listen`.
    pub admin: String,
    /// More TOML, appended as it is (tables after `[admin]`).
    pub extra: &'a str,
}

/// Writes the order-to-cash example with the group's topics and a
/// `<instance>.toml` for it into `dir`; returns the configuration's path.
pub fn write_config(dir: &std::path::Path, c: &RunConfig<'_>) -> PathBuf {
    let t = orders::Topics::of(c.group);
    let definition = t.write_definition(dir);
    let text = format!(
        r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topics = ["{input}"]
[topics]
prefix = "{group}.baton"
partitions = {partitions}
[definitions]
paths = ["{definition}"]
[runtime]
instance_id = "{instance}"
commit_interval = "50ms"
session_timeout = "6s"
in_place = {in_place}
[admin]
listen = "{admin}"
{extra}
"#,
        bootstrap = c.bootstrap,
        group = c.group,
        input = t.input,
        partitions = c.partitions,
        definition = definition.display(),
        instance = c.instance,
        in_place = c.in_place,
        admin = c.admin,
        extra = c.extra,
    );
    let path = dir.join(format!("{}.toml", c.instance));
    std::fs::write(&path, text).expect("config written");
    path
}

/// Starts `baton run --config <config>`, its output appended to `log`.
pub fn baton_run(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    baton_serving("run", config, log, &[])
}

/// Starts `baton <command> --config <config>` (`run`, `connect`) with more
/// environment `env`, its output appended to `log`.
pub fn baton_serving(
    command: &str,
    config: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([command, "--config"])
        .arg(config)
        .env("RUST_LOG", "info,rdkafka=warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::from(log.try_clone().expect("log")))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("baton {command} starts: {e}"))
}

/// Polls `f` until it returns `Some`, or fails after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the `baton` binary from the repository's root: (exit code, stdout, stderr).
pub fn baton_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the baton binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
