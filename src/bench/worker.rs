//! The measured process: baton (or the raw passthrough) in a child process of
//! its own, so its CPU time and resident memory are not mixed with the load
//! generator's.
//!
//! The parent writes a [`WorkerSpec`] to a file and starts
//! `baton bench --worker SPEC`; the child prints one [`Sample`] (JSON) per
//! line on stdout every 100 ms and stops, committing what it holds, when its
//! stdin closes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{BenchError, Progress, io};
use baton::config::{self, Config};
use baton::dsl;
use baton::engine::Registry;
use baton::kafka::{Consumer, Offsets, Outgoing, Producer};
use baton::runtime::{Runtime, Stats};

/// The process definition every baton phase runs.
pub const ORDER_TO_CASH: &str = include_str!("../../examples/order-to-cash.yaml");

/// What the measured process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The baton runtime with order-to-cash.
    Baton,
    /// Input → output, one transaction per batch, with baton's batching.
    Passthrough,
}

/// Everything the measured process needs to know.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub mode: Mode,
    pub bootstrap: String,
    pub group: String,
    /// Prefix of baton's own topics.
    pub prefix: String,
    pub input: String,
    /// The passthrough's output topic.
    pub output: String,
    pub partitions: i32,
    pub commit_interval_ms: u64,
    pub max_batch: usize,
    /// baton processes records already on their instance's shard in place.
    #[serde(default)]
    pub in_place: bool,
    pub session_timeout_ms: u64,
    /// librdkafka options for every client.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// `runtime.instance_id`: distinct for processes that share a group.
    #[serde(default = "bench_instance")]
    pub instance: String,
    /// `runtime.max_instances_per_shard` (default: the production default);
    /// a phase that holds more instances than that raises it.
    #[serde(default)]
    pub max_instances_per_shard: Option<usize>,
}

fn bench_instance() -> String {
    "bench".to_string()
}

impl WorkerSpec {
    /// baton's configuration for this spec (production defaults elsewhere).
    pub fn config(&self) -> Config {
        Config {
            kafka: config::Kafka {
                bootstrap_servers: self.bootstrap.clone(),
                group_id: self.group.clone(),
                input_topics: vec![self.input.clone()],
                options: self.options.clone(),
                group_protocol: Default::default(),
                max_record_bytes: None,
                secret_files: Default::default(),
                consumer_options: Default::default(),
                producer_options: Default::default(),
            },
            topics: config::Topics {
                prefix: self.prefix.clone(),
                partitions: self.partitions,
                ..config::Topics::default()
            },
            definitions: config::Definitions { paths: Vec::new() },
            runtime: config::Runtime {
                instance_id: Some(self.instance.clone()),
                commit_interval: Duration::from_millis(self.commit_interval_ms),
                max_batch: self.max_batch,
                session_timeout: Duration::from_millis(self.session_timeout_ms),
                in_place: self.in_place,
                max_instances_per_shard: self
                    .max_instances_per_shard
                    .unwrap_or(config::Runtime::default().max_instances_per_shard),
                ..config::Runtime::default()
            },
            events: Default::default(),
            telemetry: Default::default(),
            log: Default::default(),
            admin: config::Admin {
                enabled: false,
                ..Default::default()
            },
        }
    }
}

/// The measured process's counters at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since the process started.
    pub t_ms: u64,
    /// Domain events consumed (passthrough: records passed through and committed).
    pub events: u64,
    pub commands: u64,
    pub completed: u64,
    pub transactions: u64,
    /// Records written (passthrough: one per event).
    pub records: u64,
    pub restored: u64,
    /// Sum over shards of the time their restore took.
    pub restore_ms: u64,
    pub shards: u64,
    /// CPU time (user + system) of the whole process.
    pub cpu_ms: u64,
    pub rss_bytes: u64,
}

impl Sample {
    fn now(stats: &Stats, started: Instant) -> Sample {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Sample {
            t_ms: started.elapsed().as_millis() as u64,
            events: get(&stats.events),
            commands: get(&stats.commands),
            completed: get(&stats.completed),
            transactions: get(&stats.transactions),
            records: get(&stats.records),
            restored: get(&stats.restored_instances),
            restore_ms: get(&stats.restore_ms),
            shards: get(&stats.shards),
            cpu_ms: cpu_ms().unwrap_or(0),
            rss_bytes: rss_bytes().unwrap_or(0),
        }
    }
}

/// User + system CPU time of this process, from `/proc/self/stat`.
fn cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports clock ticks of USER_HZ, which Linux fixes at 100 per second.
    Some((utime + stime) * 10)
}

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The child side: runs the spec at `path` until stdin closes, printing samples.
pub fn serve(path: &Path) -> Result<(), BenchError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
    let spec: WorkerSpec = serde_json::from_str(&text)
        .map_err(|e| BenchError::Worker(format!("{} is not a worker spec: {e}", path.display())))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let run = {
        let (stats, stop) = (stats.clone(), stop.clone());
        std::thread::spawn(move || match spec.mode {
            Mode::Baton => {
                let runtime = Runtime::new(spec.config(), registry()?, stats)?;
                runtime.run(stop).map_err(BenchError::from)
            }
            Mode::Passthrough => passthrough(&spec, &stats, &stop),
        })
    };
    let mut out = std::io::stdout().lock();
    loop {
        let finished = run.is_finished();
        let line = serde_json::to_string(&Sample::now(&stats, started)).unwrap_or_default();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(io("write a sample"))?;
        if finished {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run.join()
        .map_err(|_| BenchError::Worker("the measured run panicked".into()))?
}

/// order-to-cash, the definition every baton phase deploys.
pub fn registry() -> Result<Registry, BenchError> {
    let def = dsl::parse("order-to-cash.yaml", ORDER_TO_CASH)
        .map_err(|d| BenchError::Worker(format!("order-to-cash does not parse: {d}")))?;
    let mut reg = Registry::default();
    reg.deploy(def, ORDER_TO_CASH)
        .map_err(|e| BenchError::Worker(e.to_string()))?;
    Ok(reg)
}

/// The baseline: consume → produce → commit with offsets, batched the way the
/// runtime batches (commit interval, max batch), without any processing.
fn passthrough(spec: &WorkerSpec, stats: &Stats, stop: &AtomicBool) -> Result<(), BenchError> {
    let cfg = spec.config();
    let producer = Producer::new(&cfg, &format!("{}-passthrough", spec.group))?;
    let consumer = Consumer::new(&cfg)?;
    consumer.subscribe(std::slice::from_ref(&spec.input))?;
    let interval = cfg.runtime.commit_interval;
    let mut open: Option<Instant> = None;
    let mut offsets = Offsets::new();
    let mut in_txn = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut wait = match open {
            Some(s) => interval
                .saturating_sub(s.elapsed())
                .max(Duration::from_millis(1)),
            None => interval.min(Duration::from_millis(100)),
        };
        while in_txn < spec.max_batch {
            let m = match consumer.poll(wait) {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            };
            wait = Duration::ZERO;
            if open.is_none() {
                producer.begin()?;
                open = Some(Instant::now());
            }
            producer.send(&Outgoing {
                topic: spec.output.clone(),
                partition: Some(m.partition),
                key: m.key.unwrap_or_default(),
                payload: m.payload,
                headers: m.headers,
            })?;
            offsets.insert((m.topic, m.partition), (m.offset + 1, String::new()));
            in_txn += 1;
        }
        // Rebalance notices are not needed here; drop them so they do not pile up.
        consumer.take_rebalances();
        if let Some(s) = open
            && (s.elapsed() >= interval || in_txn >= spec.max_batch)
        {
            producer.commit(&consumer.inner, &offsets)?;
            // Counted once committed: a passed-through event exists for
            // read_committed consumers only from here on.
            stats.events.fetch_add(in_txn as u64, Ordering::Relaxed);
            stats.records.fetch_add(in_txn as u64, Ordering::Relaxed);
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            open = None;
            offsets.clear();
            in_txn = 0;
        }
    }
    if open.is_some() {
        producer.commit(&consumer.inner, &offsets)?;
    }
    Ok(())
}

/// The parent's handle on a measured process.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Sample>,
    samples: Arc<Mutex<Vec<Sample>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Worker {
    /// Starts `exe bench --worker` on `spec`; its log goes to `<out>/logs/<phase>.log`.
    pub fn spawn(
        exe: &Path,
        spec: &WorkerSpec,
        out: &Path,
        phase: &str,
    ) -> Result<Worker, BenchError> {
        let logs = out.join("logs");
        std::fs::create_dir_all(&logs).map_err(io(format!("create {}", logs.display())))?;
        let spec_path = logs.join(format!("{phase}.json"));
        let text = serde_json::to_vec_pretty(spec).unwrap_or_default();
        std::fs::write(&spec_path, text).map_err(io(format!("write {}", spec_path.display())))?;
        let log = logs.join(format!("{phase}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let mut child = Command::new(exe)
            .arg("bench")
            .arg("--worker")
            .arg(&spec_path)
            .env("RUST_LOG", "warn,rdkafka=error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(io(format!("start {}", exe.display())))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Worker("no stdout".into()))?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let samples = samples.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Ok(s) = serde_json::from_str::<Sample>(&line) else {
                        continue;
                    };
                    if let Ok(mut v) = samples.lock() {
                        v.push(s.clone());
                    }
                    let _ = tx.send(s);
                }
            })
        };
        Ok(Worker {
            child,
            stdin,
            rx,
            samples,
            reader: Some(reader),
            log,
        })
    }

    /// Waits for the first sample for which `f` says done; `f` also returns a
    /// progress count, and the wait fails when it stops moving for `stall`.
    pub fn wait_for(
        &self,
        stall: Duration,
        progress: &mut dyn FnMut(Progress),
        mut f: impl FnMut(&Sample) -> (u64, bool),
    ) -> Result<Sample, BenchError> {
        let mut last = (u64::MAX, Instant::now());
        loop {
            match self.rx.recv_timeout(stall) {
                Ok(s) => {
                    let (n, done) = f(&s);
                    if done {
                        progress(Progress::Step { done: n });
                        return Ok(s);
                    }
                    if n != last.0 {
                        progress(Progress::Step { done: n });
                        last = (n, Instant::now());
                    } else if last.1.elapsed() > stall {
                        return Err(BenchError::Stalled(format!(
                            "no progress for {} s at {n}; see {}",
                            stall.as_secs(),
                            self.log.display()
                        )));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BenchError::Stalled(format!(
                        "the measured process sent nothing for {} s; see {}",
                        stall.as_secs(),
                        self.log.display()
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BenchError::Worker(format!(
                        "it stopped early: {}",
                        tail(&self.log)
                    )));
                }
            }
        }
    }

    /// The newest sample it sent.
    pub fn latest(&self) -> Option<Sample> {
        self.samples.lock().ok().and_then(|v| v.last().cloned())
    }

    /// Ends the process with SIGKILL, as a crash does: nothing is committed.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Stops the process (it commits first) and returns every sample it sent.
    pub fn stop(mut self) -> Result<Vec<Sample>, BenchError> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(io("wait for the worker"))? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(BenchError::Worker(format!(
                    "it did not stop within 60 s: {}",
                    tail(&self.log)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if !status.success() {
            return Err(BenchError::Worker(format!(
                "it exited with {status}: {}",
                tail(&self.log)
            )));
        }
        Ok(self.samples.lock().map(|v| v.clone()).unwrap_or_default())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A phase that failed leaves no process behind.
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a log, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(5);
    format!("{} (log: {})", lines[from..].join(" | "), log.display())
}
