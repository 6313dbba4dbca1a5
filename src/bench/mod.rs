//! `baton bench`: end-to-end figures measured as ratios within one run.
//!
//! Absolute numbers on a shared machine are noise; ratios against a baseline
//! measured in the same run, on the same broker, are not. The phases:
//!
//! 1. **baseline**: a raw consume → produce passthrough with baton's
//!    transactional settings and batching, the best any exactly-once
//!    processor could do on this broker;
//! 2. **full speed**: baton with the order-to-cash example, orders waiting and
//!    simulated ERP, payment provider and warehouse answering every command;
//! 3. **half load**: orders paced at half of the full-speed rate, for
//!    event → command latency;
//! 4. **state**: instances written to a changelog, restored by a fresh baton
//!    process, compared with a raw read of the same partitions, and the
//!    resident memory each idle instance costs.
//!
//! The measured process (baseline or baton) runs as a child process of its
//! own ([`worker`]), so its CPU time and resident memory are its own and not
//! the load generator's. This module owns orchestration and figures; it
//! reaches Kafka only through [`baton::kafka`], and it never prints: progress
//! goes through a callback, the report is data ([`report`]).

pub mod broker;
mod load;
pub mod report;
pub mod scale;
pub mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use baton::config;
use baton::kafka::{self, KafkaFailure};
use baton::runtime::RuntimeError;

pub use report::Report;
use report::{Latency, StateRun, Throughput};
use worker::{Mode, Sample, Worker, WorkerSpec};

/// Why a benchmark run stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error("the measured process: {0}")]
    Worker(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Stalled(String),
    #[error("chart {file}: {reason}")]
    Chart { file: String, reason: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// Sizes and settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// A Kafka to use; `None` starts Apache Kafka (`scripts/kafka.sh`'s set-up).
    pub bootstrap_servers: Option<String>,
    /// Where the report, charts and the measured processes' logs go.
    pub out: PathBuf,
    /// Orders (six domain events and four commands each) at full speed; the
    /// baseline passes the same number of events through.
    pub orders: u64,
    /// How long orders are paced at half of the full-speed rate.
    pub latency_seconds: u64,
    /// Instances in the changelog for the restore comparison.
    pub restore_instances: u64,
    /// Instance counts at which idle memory is measured.
    pub memory_instances: Vec<u64>,
    /// Partitions of every topic (and so shards).
    pub partitions: i32,
    pub commit_interval: Duration,
    /// Commit intervals at which baton and the passthrough are also timed at
    /// half load.
    pub latency_intervals: Vec<Duration>,
    /// Measure full speed again with the state phase's instances idle in
    /// the shards.
    pub loaded: bool,
    pub max_batch: usize,
    /// Run baton with `runtime.in_place` (the load is keyed by order with
    /// Kafka's default partitioner, the case in-place processing is for).
    pub in_place: bool,
    /// Consumer group session timeout of the measured processes.
    pub session_timeout: Duration,
    /// The `baton` executable that runs the measured processes.
    pub exe: PathBuf,
    /// librdkafka options for every client (security settings of a real cluster).
    pub kafka_options: BTreeMap<String, String>,
}

impl Options {
    /// The full run, with production batching defaults.
    pub fn full(exe: PathBuf) -> Options {
        let rt = config::Runtime::default();
        Options {
            bootstrap_servers: None,
            out: PathBuf::from("bench-results"),
            orders: 20_000,
            latency_seconds: 30,
            restore_instances: 1_000_000,
            memory_instances: vec![100_000, 1_000_000],
            partitions: 2,
            commit_interval: rt.commit_interval,
            latency_intervals: vec![Duration::from_millis(20), Duration::from_millis(100)],
            loaded: true,
            max_batch: rt.max_batch,
            in_place: true,
            session_timeout: Duration::from_secs(6),
            exe,
            kafka_options: BTreeMap::new(),
        }
    }

    /// A smoke run that takes well under a minute.
    pub fn quick(exe: PathBuf) -> Options {
        Options {
            orders: 300,
            latency_seconds: 4,
            restore_instances: 2_000,
            memory_instances: vec![1_000, 2_000],
            ..Options::full(exe)
        }
    }
}

/// What a run is doing, for a progress display.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A phase starts; `total` is the count its steps go up to (0: unknown).
    Phase { name: String, total: u64 },
    /// How far the current phase is.
    Step { done: u64 },
}

/// Events per order: placed, reserved, charged, shipment created, invoice created, delivered.
pub const EVENTS_PER_ORDER: u64 = 6;
/// Orders that run before each measured window, so group joins and topic
/// metadata are settled when the clock starts.
const WARMUP_ORDERS: u64 = 10;
/// A phase fails when its counters do not move for this long.
const STALL: Duration = Duration::from_secs(120);

/// Runs every phase and writes the report, its JSON and charts to `opts.out`.
pub fn run(opts: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Report, BenchError> {
    let started = Instant::now();
    let broker = start(opts, progress)?;
    let bench = Bench::new(opts, &broker);

    let baseline = bench.baseline(progress)?;
    let full = bench.full_speed(progress, &bench.spec("full", Mode::Baton), 0)?;
    let interval = opts.commit_interval;
    let half = bench.half_load(progress, full.events_per_s, interval)?;
    // The passthrough at baton's half-load event rate.
    let passthrough_half = bench.passthrough_half(progress, half.events_per_s, interval)?;
    let mut intervals = Vec::new();
    for &at in &opts.latency_intervals {
        let (baton, passthrough) = if at == interval {
            (half.clone(), passthrough_half.clone())
        } else {
            let baton = bench.half_load(progress, full.events_per_s, at)?;
            let passthrough = bench.passthrough_half(progress, baton.events_per_s, at)?;
            (baton, passthrough)
        };
        intervals.push(report::IntervalRun {
            commit_interval_ms: at.as_millis() as u64,
            baton,
            passthrough,
        });
    }
    let (empty_rss, state, state_spec) = bench.state(progress)?;
    let loaded = match (opts.loaded, state.last()) {
        (true, Some(last)) => {
            // The same changelog, a new group and input: every instance is
            // restored into the shards before the orders start.
            let spec = loaded_spec(state_spec, last.instances, opts.orders);
            let throughput = bench.full_speed(progress, &spec, last.instances)?;
            Some(report::Loaded {
                instances: last.instances,
                ratio: ratio(throughput.events_per_s, full.events_per_s),
                throughput,
            })
        }
        _ => None,
    };

    let report = Report {
        baton_version: env!("CARGO_PKG_VERSION").to_string(),
        machine: report::Machine::this(),
        broker: broker.describe(),
        settings: report::Settings {
            partitions: opts.partitions,
            commit_interval_ms: opts.commit_interval.as_millis() as u64,
            max_batch: opts.max_batch,
            in_place: opts.in_place,
            orders: opts.orders,
            latency_seconds: opts.latency_seconds,
        },
        ratio: ratio(full.events_per_s, baseline.events_per_s),
        baseline,
        full,
        half,
        passthrough_half,
        intervals,
        loaded,
        empty_rss_bytes: empty_rss,
        restore_instances: opts.restore_instances,
        state,
        seconds: started.elapsed().as_secs_f64(),
    };
    progress(Progress::Phase {
        name: "writing the report".into(),
        total: 0,
    });
    report.write(&opts.out)?;
    Ok(report)
}

/// The output directory and the broker of a run.
fn start(opts: &Options, progress: &mut dyn FnMut(Progress)) -> Result<broker::Broker, BenchError> {
    std::fs::create_dir_all(&opts.out).map_err(io(format!("create {}", opts.out.display())))?;
    progress(Progress::Phase {
        name: "starting the broker".into(),
        total: 0,
    });
    Ok(match &opts.bootstrap_servers {
        Some(b) => broker::Broker::External(b.clone()),
        None => broker::Broker::start()?,
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

struct Bench<'a> {
    opts: &'a Options,
    bootstrap: String,
    run_id: String,
    /// librdkafka options of every consumer: the user's plus fetch tuning.
    options: BTreeMap<String, String>,
}

impl<'a> Bench<'a> {
    /// A run on `broker`: topics and groups are named after a fresh run id.
    fn new(opts: &'a Options, broker: &broker::Broker) -> Bench<'a> {
        Bench {
            opts,
            bootstrap: broker.bootstrap(),
            run_id: format!(
                "bench-{}-{}",
                std::process::id(),
                baton::runtime::now_ms() % 1_000_000_000
            ),
            options: opts.kafka_options.clone(),
        }
    }

    fn spec(&self, phase: &str, mode: Mode) -> WorkerSpec {
        self.spec_at(phase, mode, self.opts.commit_interval)
    }

    fn spec_at(&self, phase: &str, mode: Mode, interval: Duration) -> WorkerSpec {
        let prefix = format!("{}.{phase}", self.run_id);
        WorkerSpec {
            mode,
            bootstrap: self.bootstrap.clone(),
            group: prefix.clone(),
            input: format!("{prefix}.orders"),
            output: format!("{prefix}.out"),
            prefix,
            partitions: self.opts.partitions,
            commit_interval_ms: interval.as_millis() as u64,
            max_batch: self.opts.max_batch,
            in_place: self.opts.in_place,
            session_timeout_ms: self.opts.session_timeout.as_millis() as u64,
            options: self.options.clone(),
            instance: "bench".into(),
            max_instances_per_shard: None,
        }
    }

    fn producer(&self) -> Result<kafka::PlainProducer, BenchError> {
        Ok(kafka::PlainProducer::with_options(
            &self.bootstrap,
            &self.opts.kafka_options,
        )?)
    }

    /// Starts the simulated services of a baton phase; its command topics are
    /// created first so they subscribe to topics that exist.
    fn services(
        &self,
        spec: &WorkerSpec,
        tracker: Arc<load::Tracker>,
    ) -> Result<load::Services, BenchError> {
        let mut topics = vec![(spec.input.clone(), spec.partitions, false)];
        for t in baton::runtime::command_topics(&worker::registry()?) {
            topics.push((t, spec.partitions, false));
        }
        kafka::ensure_topics(&spec.config(), &topics)?;
        let consumer = kafka::PlainConsumer::with_options(
            &self.bootstrap,
            &format!("{}.services", spec.group),
            &load::COMMANDS.map(String::from),
            &self.options,
        )?;
        Ok(load::Services::start(
            consumer,
            self.producer()?,
            &spec.input,
            tracker,
        ))
    }

    fn spawn(&self, phase: &str, spec: &WorkerSpec) -> Result<Worker, BenchError> {
        Worker::spawn(&self.opts.exe, spec, &self.opts.out, phase)
    }

    /// Raw transactional passthrough of as many events as the baton phase handles.
    fn baseline(&self, progress: &mut dyn FnMut(Progress)) -> Result<Throughput, BenchError> {
        let total = self.opts.orders * EVENTS_PER_ORDER;
        let spec = self.spec("baseline", Mode::Passthrough);
        let cfg = spec.config();
        kafka::ensure_topics(
            &cfg,
            &[
                (spec.input.clone(), spec.partitions, false),
                (spec.output.clone(), spec.partitions, false),
            ],
        )?;
        progress(Progress::Phase {
            name: "baseline: loading events".into(),
            total,
        });
        // The same events baton sees, in the same mix, waiting before the clock starts.
        let producer = self.producer()?;
        for n in 0..self.opts.orders {
            for r in load::lifecycle(&spec.input, &format!("b-{n}"), n) {
                load::send(&producer, &r)?;
            }
            if n % 1000 == 0 {
                progress(Progress::Step {
                    done: n * EVENTS_PER_ORDER,
                });
            }
        }
        producer.flush()?;
        progress(Progress::Phase {
            name: "baseline: raw transactional passthrough".into(),
            total,
        });
        let worker = self.spawn("baseline", &spec)?;
        let end = worker.wait_for(STALL, progress, |s| (s.events, s.events >= total))?;
        let samples = worker.stop()?;
        let start = first_moving(&samples, 0);
        Ok(Throughput::between(&samples, &start, &end))
    }

    /// baton on order-to-cash with simulated services, as fast as it goes;
    /// `idle` instances are restored into the shards first.
    fn full_speed(
        &self,
        progress: &mut dyn FnMut(Progress),
        spec: &WorkerSpec,
        idle: u64,
    ) -> Result<Throughput, BenchError> {
        let total = self.opts.orders;
        let tag = if idle > 0 { "loaded" } else { "full" };
        kafka::ensure_topics(
            &spec.config(),
            &[(spec.input.clone(), spec.partitions, false)],
        )?;
        progress(Progress::Phase {
            name: format!("baton at full speed ({tag}): joining"),
            total: idle,
        });
        let tracker = Arc::new(load::Tracker::default());
        let services = self.services(spec, tracker.clone())?;
        let worker = self.spawn(tag, spec)?;
        if idle > 0 {
            let partitions = spec.partitions as u64;
            worker.wait_for(STALL, progress, |s| {
                (s.restored, s.shards >= partitions && s.restored >= idle)
            })?;
        }
        let producer = self.producer()?;
        let warm = self.warm_up(&worker, &producer, spec, tag, &tracker, progress)?;

        progress(Progress::Phase {
            name: format!("baton at full speed ({tag}): order-to-cash"),
            total,
        });
        tracker.record.store(true, Ordering::Relaxed);
        for n in 0..total {
            let id = format!("{tag}-{n}");
            tracker.sent(&id);
            load::send(&producer, &load::placed(&spec.input, &id, n))?;
        }
        producer.flush()?;
        let end = worker.wait_for(STALL, progress, |s| {
            let done = s.completed.saturating_sub(warm.completed);
            (done, done >= total)
        })?;
        let samples = worker.stop()?;
        services.stop();
        let start = first_moving(&samples, warm.events);
        let mut t = Throughput::between(&samples, &start, &end);
        t.latency = Some(Latency::of(tracker.take_latencies(), 0.0));
        Ok(t)
    }

    /// baton at half of the full-speed event rate: latency.
    fn half_load(
        &self,
        progress: &mut dyn FnMut(Progress),
        full_events_per_s: f64,
        interval: Duration,
    ) -> Result<Latency, BenchError> {
        let rate = (full_events_per_s / EVENTS_PER_ORDER as f64 / 2.0).max(1.0);
        let orders = ((rate * self.opts.latency_seconds as f64) as u64).max(1);
        let ms = interval.as_millis();
        let phase = format!("half-{ms}ms");
        let spec = self.spec_at(&phase, Mode::Baton, interval);
        kafka::ensure_topics(
            &spec.config(),
            &[(spec.input.clone(), spec.partitions, false)],
        )?;
        progress(Progress::Phase {
            name: format!("baton at half load, {ms} ms commits: joining"),
            total: 0,
        });
        let tracker = Arc::new(load::Tracker::default());
        let services = self.services(&spec, tracker.clone())?;
        let worker = self.spawn(&phase, &spec)?;
        let producer = self.producer()?;
        let warm = self.warm_up(&worker, &producer, &spec, &phase, &tracker, progress)?;

        progress(Progress::Phase {
            name: format!("baton at half load, {ms} ms commits: {rate:.0} orders/s"),
            total: orders,
        });
        tracker.record.store(true, Ordering::Relaxed);
        paced(
            &producer,
            &spec.input,
            &phase,
            &tracker,
            orders,
            rate,
            progress,
        )?;
        let end = worker.wait_for(STALL, progress, |s| {
            let done = s.completed.saturating_sub(warm.completed);
            (done, done >= orders)
        })?;
        let samples = worker.stop()?;
        services.stop();
        let start = first_moving(&samples, warm.events);
        let t = Throughput::between(&samples, &start, &end);
        let mut latency = Latency::of(tracker.take_latencies(), rate);
        latency.orders = orders;
        latency.events_per_s = t.events_per_s;
        latency.cpu_ms_per_1000_events = t.cpu_ms_per_1000_events;
        latency.rss_peak_bytes = t.rss_peak_bytes;
        Ok(latency)
    }

    /// The passthrough at `events_per_s`, paced: from the moment an event is
    /// sent to the moment a read_committed consumer reads what the
    /// passthrough wrote for it, at commit interval `interval`.
    fn passthrough_half(
        &self,
        progress: &mut dyn FnMut(Progress),
        events_per_s: f64,
        interval: Duration,
    ) -> Result<Latency, BenchError> {
        let rate = events_per_s.max(1.0);
        let events = ((rate * self.opts.latency_seconds as f64) as u64).max(1);
        let ms = interval.as_millis();
        let phase = format!("pass-{ms}ms");
        let spec = self.spec_at(&phase, Mode::Passthrough, interval);
        kafka::ensure_topics(
            &spec.config(),
            &[
                (spec.input.clone(), spec.partitions, false),
                (spec.output.clone(), spec.partitions, false),
            ],
        )?;
        progress(Progress::Phase {
            name: format!("passthrough at half load, {ms} ms commits: joining"),
            total: 0,
        });
        let tracker = Arc::new(load::Tracker::default());
        let sink = load::Sink::start(
            kafka::PlainConsumer::with_options(
                &self.bootstrap,
                &format!("{}.sink", spec.group),
                std::slice::from_ref(&spec.output),
                &self.options,
            )?,
            tracker.clone(),
        );
        let worker = self.spawn(&phase, &spec)?;
        let producer = self.producer()?;
        // Warm-up: the passthrough and the sink have joined once these are through.
        for n in 0..WARMUP_ORDERS {
            let id = format!("{phase}-w-{n}");
            tracker.sent(&id);
            load::send(&producer, &load::placed(&spec.input, &id, n))?;
        }
        producer.flush()?;
        let waited = Instant::now();
        while tracker.outstanding() > 0 {
            if waited.elapsed() > STALL {
                return Err(BenchError::Stalled(format!(
                    "the passthrough's warm-up did not come through within {} s",
                    STALL.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        progress(Progress::Phase {
            name: format!("passthrough at half load, {ms} ms commits: {rate:.0} events/s"),
            total: events,
        });
        tracker.record.store(true, Ordering::Relaxed);
        paced(
            &producer,
            &spec.input,
            &phase,
            &tracker,
            events,
            rate,
            progress,
        )?;
        let waited = Instant::now();
        while tracker.outstanding() > 0 && waited.elapsed() < STALL {
            std::thread::sleep(Duration::from_millis(20));
        }
        let samples = worker.stop()?;
        sink.stop();
        let start = first_moving(&samples, WARMUP_ORDERS);
        let end = samples.last().cloned().unwrap_or_default();
        let t = Throughput::between(&samples, &start, &end);
        let mut latency = Latency::of(tracker.take_latencies(), 0.0);
        latency.events_per_s = rate;
        latency.cpu_ms_per_1000_events = t.cpu_ms_per_1000_events;
        latency.rss_peak_bytes = t.rss_peak_bytes;
        Ok(latency)
    }

    /// Orders that run to completion before the clock starts; returns the
    /// sample that saw them done.
    fn warm_up(
        &self,
        worker: &Worker,
        producer: &kafka::PlainProducer,
        spec: &WorkerSpec,
        tag: &str,
        tracker: &load::Tracker,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Sample, BenchError> {
        for n in 0..WARMUP_ORDERS {
            let id = format!("{tag}-w-{n}");
            tracker.sent(&id);
            load::send(producer, &load::placed(&spec.input, &id, n))?;
        }
        producer.flush()?;
        worker.wait_for(STALL, progress, |s| {
            (s.completed, s.completed >= WARMUP_ORDERS)
        })
    }

    /// Restore and idle memory at every size, on one changelog that grows.
    fn state(
        &self,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(u64, Vec<StateRun>, WorkerSpec), BenchError> {
        let mut sizes = self.opts.memory_instances.clone();
        sizes.push(self.opts.restore_instances);
        sizes.sort_unstable();
        sizes.dedup();
        let base = self.spec("state", Mode::Baton);
        let cfg = base.config();
        let changelog = cfg.topics.changelog();
        kafka::ensure_topics(
            &cfg,
            &[
                (changelog.clone(), base.partitions, true),
                (base.input.clone(), base.partitions, false),
            ],
        )?;
        let seeder = load::Seeder::new(self.producer()?, &changelog, base.partitions)?;
        let mut written = 0;
        let mut runs = Vec::new();
        let mut empty_rss = 0;
        for size in std::iter::once(0).chain(sizes) {
            if size > written {
                progress(Progress::Phase {
                    name: format!("state: writing {size} instances to the changelog"),
                    total: size,
                });
                seeder.write(written..size, &mut |done| {
                    progress(Progress::Step { done });
                })?;
                written = size;
            }
            progress(Progress::Phase {
                name: format!("state: restoring {size} instances"),
                total: size,
            });
            // A group of its own each time: nothing committed, a full restore.
            let mut spec = base.clone();
            spec.group = format!("{}-{size}", base.group);
            let worker = self.spawn(&format!("restore-{size}"), &spec)?;
            let partitions = spec.partitions as u64;
            let done = worker.wait_for(STALL, progress, |s| {
                (s.restored, s.shards >= partitions && s.restored >= size)
            })?;
            // Let the allocator and the clients settle, then read memory
            // while the process still holds its shards (not while it stops:
            // an allocator that returns memory at once would show none).
            let settled = worker.wait_for(STALL, progress, |s| {
                (s.restored, s.t_ms >= done.t_ms + 2000)
            })?;
            let idle = settled.rss_bytes;
            let samples = worker.stop()?;
            let peak = samples
                .iter()
                .filter(|s| s.t_ms <= settled.t_ms)
                .map(|s| s.rss_bytes)
                .max()
                .unwrap_or(0);
            if size == 0 {
                empty_rss = idle;
                continue;
            }
            progress(Progress::Phase {
                name: format!("state: raw read of {size} changelog records"),
                total: 0,
            });
            let raw = load::raw_read(&spec.config(), &changelog, spec.partitions)?;
            runs.push(StateRun {
                instances: size,
                restored: done.restored,
                changelog_records: raw.records,
                changelog_bytes: raw.bytes,
                restore_ms: done.restore_ms,
                raw_read_ms: raw.ms,
                ratio: ratio(raw.ms as f64, done.restore_ms.max(1) as f64),
                instances_per_s: done.restored as f64 * 1000.0 / done.restore_ms.max(1) as f64,
                rss_idle_bytes: idle,
                rss_peak_bytes: peak,
                bytes_per_instance: idle.saturating_sub(empty_rss) as f64 / size as f64,
            });
        }
        Ok((empty_rss, runs, base))
    }
}

/// Sends `count` placed orders `<phase>-<n>` to `input` at `rate` per
/// second, each timed from its send.
fn paced(
    producer: &kafka::PlainProducer,
    input: &str,
    phase: &str,
    tracker: &load::Tracker,
    count: u64,
    rate: f64,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), BenchError> {
    let start = Instant::now();
    for n in 0..count {
        // Paced by the schedule, not by sleeps between sends, so the rate
        // holds even when a send is slow.
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = format!("{phase}-{n}");
        tracker.sent(&id);
        load::send(producer, &load::placed(input, &id, n))?;
        if n % 50 == 0 {
            progress(Progress::Step { done: n });
        }
    }
    producer.flush()?;
    Ok(())
}

/// The last sample before the counters moved past `from` (the window's start).
fn first_moving(samples: &[Sample], from: u64) -> Sample {
    let i = samples.iter().position(|s| s.events > from).unwrap_or(0);
    samples
        .get(i.saturating_sub(1))
        .cloned()
        .unwrap_or_default()
}

/// The spec of the full-speed run with `idle` instances restored into the
/// shards first: the state phase's changelog, a group and input of its own,
/// and an instance cap with room for the idle instances and every order of
/// the run on the fullest shard (keys spread unevenly).
fn loaded_spec(state: WorkerSpec, idle: u64, orders: u64) -> WorkerSpec {
    let mut spec = state;
    spec.group = format!("{}-loaded", spec.group);
    spec.input = format!("{}.loaded-orders", spec.prefix);
    let per_shard = (idle + orders).div_ceil(spec.partitions.max(1) as u64) as usize;
    spec.max_instances_per_shard = Some(
        per_shard
            .saturating_mul(2)
            .max(baton::config::Runtime::default().max_instances_per_shard),
    );
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaded_run_has_room_for_its_idle_instances_and_orders() {
        let state = WorkerSpec {
            mode: Mode::Baton,
            bootstrap: "localhost:9092".into(),
            group: "b.state".into(),
            input: "b.state.orders".into(),
            output: "b.state.out".into(),
            prefix: "b.state".into(),
            partitions: 2,
            commit_interval_ms: 100,
            max_batch: 1000,
            in_place: true,
            session_timeout_ms: 6000,
            options: BTreeMap::new(),
            instance: "bench".into(),
            max_instances_per_shard: None,
        };
        let spec = loaded_spec(state.clone(), 1_000_000, 20_000);
        let cap = spec.config().runtime.max_instances_per_shard;
        assert!(
            cap >= 510_000,
            "a shard holds about half of 1 020 000: {cap}"
        );
        assert_ne!(spec.group, state.group);
        assert_ne!(spec.input, state.input);
        assert_eq!(
            loaded_spec(state, 10, 10)
                .config()
                .runtime
                .max_instances_per_shard,
            baton::config::Runtime::default().max_instances_per_shard,
            "small runs keep the default"
        );
    }
}
