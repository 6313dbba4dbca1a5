//! The broker a run measures against: Apache Kafka in KRaft mode, started for
//! the run from the jars `scripts/kafka.sh install` resolved (one node,
//! combined broker and controller, on free ports), or a Kafka the user names.
//!
//! The test support starts its broker through [`LocalKafka`] too, so tests,
//! benchmarks and `scripts/kafka.sh` run one and the same broker set-up: the
//! script is compiled into this binary and does the Java side.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Installing or starting the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the broker: {0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let what = what.into();
    move |source| BrokerError::Io { what, source }
}

/// `scripts/kafka.sh`, which installs, formats and runs the broker.
const SCRIPT: &str = include_str!("../../scripts/kafka.sh");
/// The pom that pins the Kafka version.
const POM: &str = include_str!("../../scripts/kafka/pom.xml");

/// The Apache Kafka version the project pins (`scripts/kafka/pom.xml`).
pub fn kafka_version() -> &'static str {
    POM.split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map_or("unknown", |(v, _)| v.trim())
}

fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("BATON_CACHE") {
        return PathBuf::from(c);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/baton")
}

/// Where the broker's jars are: `BATON_KAFKA_HOME`, else the cache.
pub fn kafka_home() -> PathBuf {
    std::env::var_os("BATON_KAFKA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(format!("kafka-{}", kafka_version())))
}

fn script(action: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c").arg(SCRIPT).arg("kafka.sh").arg(action);
    c.env("BATON_KAFKA_HOME", kafka_home());
    c
}

/// Installs the pinned Kafka into the cache when it is not there yet (needs
/// Java and Maven; the script says what to install when one is missing).
pub fn install() -> Result<(), BrokerError> {
    if kafka_home().join("libs/.complete").is_file() {
        return Ok(());
    }
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let pom = dir.join(format!("kafka-{}.pom.xml", kafka_version()));
    std::fs::write(&pom, POM).map_err(io(format!("write {}", pom.display())))?;
    let out = script("install")
        .env("BATON_KAFKA_POM", &pom)
        .stdin(Stdio::null())
        .output()
        .map_err(io("run bash for scripts/kafka.sh install"))?;
    if !out.status.success() {
        return Err(BrokerError::Failed(format!(
            "installing Apache Kafka {} failed: {}",
            kafka_version(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn free_port() -> Result<u16, BrokerError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("find a free port"))
}

/// A single-node Apache Kafka (KRaft) on free loopback ports, stopped when
/// dropped, and also when the process that started it ends in any way (the
/// script watches its standard input).
pub struct LocalKafka {
    child: Option<(Child, ChildStdin)>,
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    /// `server.properties` additions and script environment, for a restart.
    extra: String,
    env: Vec<(String, String)>,
}

impl LocalKafka {
    /// Installs Kafka if needed, formats a fresh storage directory under
    /// `dir` and starts the broker; returns once it accepts requests.
    /// `extra` is appended to `server.properties` as it is.
    pub fn start(dir: &Path, extra: &str) -> Result<LocalKafka, BrokerError> {
        LocalKafka::start_with(dir, extra, &[])
    }

    /// [`LocalKafka::start`] with environment variables for `scripts/kafka.sh`
    /// (`BATON_KAFKA_SASL_SSL_PORT`, `BATON_KAFKA_SCRAM`).
    pub fn start_with(
        dir: &Path,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Result<LocalKafka, BrokerError> {
        install()?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let mut k = LocalKafka {
            child: None,
            port: free_port()?,
            controller_port: free_port()?,
            dir: dir.to_path_buf(),
            extra: extra.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        k.child = Some(k.spawn()?);
        Ok(k)
    }

    /// An outage (the fault tests compile this file too): stops the broker process (as an operator's stop does),
    /// keeping its data; [`LocalKafka::resume`] starts it again.
    #[allow(dead_code)]
    pub fn outage(&mut self) {
        let _ = std::fs::write(self.dir.join("keep"), "");
        self.stop();
    }

    /// Starts the broker again after [`LocalKafka::outage`], on the same
    /// ports and data; returns once it accepts requests.
    #[allow(dead_code)]
    pub fn resume(&mut self) -> Result<(), BrokerError> {
        if self.child.is_none() {
            // The log of the first start says "started" already.
            let log = self.dir.join("broker.log");
            std::fs::write(&log, "").map_err(io(format!("truncate {}", log.display())))?;
            let _ = std::fs::remove_file(self.dir.join("keep"));
            self.child = Some(self.spawn()?);
        }
        Ok(())
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (a controlled shutdown).
    fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            // Closing its standard input makes the script stop the broker.
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    /// Runs the broker script and waits until the broker accepts requests.
    fn spawn(&self) -> Result<(Child, ChildStdin), BrokerError> {
        let log = self.dir.join("broker.log");
        let mut child = script("run")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .env("BATON_KAFKA_WATCH_STDIN", "1")
            .env("BATON_KAFKA_PROPS", &self.extra)
            // A broker nobody drops (a test binary's) is cleaned up by the
            // script, unless an outage keeps its data (`keep` marker).
            .env("BATON_KAFKA_EPHEMERAL", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("run bash for scripts/kafka.sh run"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| BrokerError::Failed("no standard input for the broker script".into()))?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let started =
                std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Kafka Server started"));
            if started && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(BrokerError::Failed(format!(
                    "Apache Kafka {} exited while starting ({status}): {} {}",
                    kafka_version(),
                    err.trim(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(BrokerError::Failed(format!(
                    "Apache Kafka {} was not ready within 90 s; see {}",
                    kafka_version(),
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((child, stdin))
    }
}

impl Drop for LocalKafka {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub enum Broker {
    /// Started for this run; stopped when dropped.
    Started(LocalKafka),
    External(String),
}

impl Broker {
    /// Starts Apache Kafka on free ports, with a store of its own in the temporary directory.
    pub fn start() -> Result<Broker, BrokerError> {
        let dir = std::env::temp_dir().join(format!("baton-bench-kafka-{}", std::process::id()));
        Ok(Broker::Started(LocalKafka::start(&dir, "")?))
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Started(k) => k.bootstrap(),
            Broker::External(b) => b.clone(),
        }
    }

    /// For the report.
    pub fn describe(&self) -> String {
        match self {
            Broker::Started(_) => format!(
                "Apache Kafka {} (KRaft, one node), started by baton bench",
                kafka_version()
            ),
            Broker::External(b) => format!("Kafka at {b}"),
        }
    }
}
