//! `baton bench --scale-out`: the order-to-cash load on one input topic
//! with many partitions, run by 1, then 2, then 3 baton processes of one
//! consumer group, each process a child of its own (so its CPU time is its
//! own); then three processes under paced load, one of them killed, and the
//! time until every shard runs again.
//!
//! On one machine the processes share its cores with the broker, the load
//! generator and the simulated services, so the throughput ratio is bounded
//! by the cores; the CPU each process spends is reported beside it, and
//! that is what says how the work divides (see the README's "Deploying").

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::report::Machine;
use super::worker::{Mode, Sample, Worker, WorkerSpec};
use super::{Bench, BenchError, EVENTS_PER_ORDER, Options, Progress, STALL, io, load, ratio};

/// What a scale-out run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleReport {
    pub baton_version: String,
    pub machine: Machine,
    pub broker: String,
    pub partitions: i32,
    pub orders: u64,
    pub runs: Vec<ScaleRun>,
    pub failover: Option<Failover>,
    pub seconds: f64,
}

/// One process count at full speed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRun {
    pub processes: usize,
    /// Domain events per second, all processes together.
    pub events_per_s: f64,
    /// Over the one-process run's.
    pub ratio: f64,
    /// CPU of each process over the window, in cores (1.0: one core busy).
    pub cpu_cores: Vec<f64>,
    /// Shards each process owned.
    pub shards: Vec<u64>,
    pub seconds: f64,
}

/// Three processes under paced load; one is killed (SIGKILL).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failover {
    pub processes: usize,
    /// Orders per second of the paced load.
    pub orders_per_s: f64,
    pub orders: u64,
    /// From the kill until the two left own and run every shard.
    pub shards_back_s: f64,
    /// Orders not at their last command when the load ended and the group
    /// settled (0: every order went on).
    pub outstanding: usize,
}

/// The sizes of a scale-out run.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Process counts, in order (the first is the ratios' baseline).
    pub processes: Vec<usize>,
    /// Measure the kill of one of the largest count under paced load.
    pub failover: bool,
    /// How long the paced load of the failover runs.
    pub failover_seconds: u64,
}

/// Runs every process count of `scale` with `opts`'s broker, orders and
/// partitions; writes `scale-out.json` and `scale-out.txt` to `opts.out`.
pub fn run(
    opts: &Options,
    scale: &ScaleOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ScaleReport, BenchError> {
    let started = Instant::now();
    let broker = super::start(opts, progress)?;
    let bench = Bench::new(opts, &broker);
    let mut runs: Vec<ScaleRun> = Vec::new();
    for &n in &scale.processes {
        let mut run = bench.scale_run(n, progress)?;
        run.ratio = ratio(
            run.events_per_s,
            runs.first().map_or(run.events_per_s, |r| r.events_per_s),
        );
        runs.push(run);
    }
    let failover = match (scale.failover, runs.last()) {
        (true, Some(last)) if last.processes > 1 => {
            // Half of what that many processes did at full speed.
            let rate = last.events_per_s / EVENTS_PER_ORDER as f64 / 2.0;
            Some(bench.failover(
                last.processes,
                rate.max(1.0),
                scale.failover_seconds,
                progress,
            )?)
        }
        _ => None,
    };
    let report = ScaleReport {
        baton_version: env!("CARGO_PKG_VERSION").to_string(),
        machine: Machine::this(),
        broker: broker.describe(),
        partitions: opts.partitions,
        orders: opts.orders,
        runs,
        failover,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    let path = opts.out.join("scale-out.json");
    std::fs::write(&path, json).map_err(io(format!("write {}", path.display())))?;
    let path = opts.out.join("scale-out.txt");
    std::fs::write(&path, report.table()).map_err(io(format!("write {}", path.display())))?;
    Ok(report)
}

impl ScaleReport {
    /// The figures as the terminal shows them.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let m = &self.machine;
        let _ = writeln!(
            t,
            "baton {} on {} cores ({}), {}\n{} orders on {} partitions per run\n",
            self.baton_version, m.cores, m.cpu, self.broker, self.orders, self.partitions
        );
        let _ = writeln!(
            t,
            "{:>9}  {:>10}  {:>6}  {:>22}  {:>16}",
            "processes", "events/s", "ratio", "CPU per process (cores)", "shards"
        );
        for r in &self.runs {
            let cpu: Vec<String> = r.cpu_cores.iter().map(|c| format!("{c:.2}")).collect();
            let shards: Vec<String> = r.shards.iter().map(u64::to_string).collect();
            let _ = writeln!(
                t,
                "{:>9}  {:>10.0}  {:>5.2}×  {:>22}  {:>16}",
                r.processes,
                r.events_per_s,
                r.ratio,
                cpu.join(" "),
                shards.join(" ")
            );
        }
        if let Some(f) = &self.failover {
            let _ = writeln!(
                t,
                "\nfailover: {} processes at {:.0} orders/s, one killed: every shard running again after {:.1} s; {} of {} orders outstanding at the end",
                f.processes, f.orders_per_s, f.shards_back_s, f.outstanding, f.orders
            );
        }
        let _ = writeln!(t, "took {:.0} s", self.seconds);
        t
    }
}

/// The newest sample of every worker (a default one for a silent worker).
fn latest(workers: &[Worker]) -> Vec<Sample> {
    workers
        .iter()
        .map(|w| w.latest().unwrap_or_default())
        .collect()
}

/// Waits until `done` holds for the workers' newest samples; fails when the
/// count it returns does not move for [`STALL`].
fn wait_all(
    logs: &std::path::Path,
    workers: &[Worker],
    progress: &mut dyn FnMut(Progress),
    mut done: impl FnMut(&[Sample]) -> (u64, bool),
) -> Result<Vec<Sample>, BenchError> {
    let mut last = (u64::MAX, Instant::now());
    loop {
        let samples = latest(workers);
        let (n, finished) = done(&samples);
        if finished {
            progress(Progress::Step { done: n });
            return Ok(samples);
        }
        if n != last.0 {
            progress(Progress::Step { done: n });
            last = (n, Instant::now());
        } else if last.1.elapsed() > STALL {
            return Err(BenchError::Stalled(format!(
                "no progress for {} s at {n}; the processes' logs are in {}",
                STALL.as_secs(),
                logs.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Bench<'_> {
    /// `n` processes of one group, started together, joined and warmed up.
    fn group(
        &self,
        phase: &str,
        n: usize,
        tracker: Arc<load::Tracker>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(WorkerSpec, load::Services, Vec<Worker>), BenchError> {
        let spec = self.spec(phase, Mode::Baton);
        baton::kafka::ensure_topics(
            &spec.config(),
            &[(spec.input.clone(), spec.partitions, false)],
        )?;
        let services = self.services(&spec, tracker.clone())?;
        progress(Progress::Phase {
            name: format!("{phase}: {n} processes joining"),
            total: spec.partitions as u64,
        });
        let mut workers = Vec::new();
        for i in 0..n {
            let mut s = spec.clone();
            s.instance = format!("p{i}");
            workers.push(self.spawn(&format!("{phase}-p{i}"), &s)?);
        }
        let partitions = spec.partitions as u64;
        wait_all(&self.opts.out.join("logs"), &workers, progress, |s| {
            let owned: u64 = s.iter().map(|s| s.shards).sum();
            (owned, owned >= partitions && s.iter().all(|s| s.shards > 0))
        })?;
        let producer = self.producer()?;
        for k in 0..super::WARMUP_ORDERS {
            let id = format!("{phase}-w-{k}");
            tracker.sent(&id);
            load::send(&producer, &load::placed(&spec.input, &id, k))?;
        }
        producer.flush()?;
        progress(Progress::Phase {
            name: format!("{phase}: warming up"),
            total: super::WARMUP_ORDERS,
        });
        wait_all(&self.opts.out.join("logs"), &workers, progress, |s| {
            let done: u64 = s.iter().map(|s| s.completed).sum();
            (done, done >= super::WARMUP_ORDERS)
        })?;
        Ok((spec, services, workers))
    }

    /// `n` processes at full speed on the whole order batch.
    fn scale_run(
        &self,
        n: usize,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ScaleRun, BenchError> {
        let phase = format!("scale-{n}");
        let tracker = Arc::new(load::Tracker::default());
        let (spec, services, workers) = self.group(&phase, n, tracker.clone(), progress)?;
        let total = self.opts.orders;
        progress(Progress::Phase {
            name: format!("{phase}: {total} orders with {n} processes"),
            total,
        });
        let before = latest(&workers);
        let warm: u64 = before.iter().map(|s| s.completed).sum();
        let clock = Instant::now();
        let producer = self.producer()?;
        for k in 0..total {
            let id = format!("{phase}-{k}");
            tracker.sent(&id);
            load::send(&producer, &load::placed(&spec.input, &id, k))?;
        }
        producer.flush()?;
        let after = wait_all(&self.opts.out.join("logs"), &workers, progress, |s| {
            let done = s
                .iter()
                .map(|s| s.completed)
                .sum::<u64>()
                .saturating_sub(warm);
            (done, done >= total)
        })?;
        let seconds = clock.elapsed().as_secs_f64();
        for w in workers {
            w.stop()?;
        }
        services.stop();
        let cpu_cores = before
            .iter()
            .zip(&after)
            .map(|(b, a)| {
                let wall = a.t_ms.saturating_sub(b.t_ms) as f64;
                if wall > 0.0 {
                    a.cpu_ms.saturating_sub(b.cpu_ms) as f64 / wall
                } else {
                    0.0
                }
            })
            .collect();
        Ok(ScaleRun {
            processes: n,
            events_per_s: (total * EVENTS_PER_ORDER) as f64 / seconds.max(1e-9),
            ratio: 1.0,
            cpu_cores,
            shards: after.iter().map(|s| s.shards).collect(),
            seconds,
        })
    }

    /// `n` processes under paced load; the first is killed a third of the
    /// way in, and the others must take its shards and finish every order.
    fn failover(
        &self,
        n: usize,
        orders_per_s: f64,
        seconds: u64,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Failover, BenchError> {
        let phase = "failover";
        let tracker = Arc::new(load::Tracker::default());
        let (spec, services, mut workers) = self.group(phase, n, tracker.clone(), progress)?;
        let orders = ((orders_per_s * seconds as f64) as u64).max(1);
        progress(Progress::Phase {
            name: format!("{phase}: {orders} orders at {orders_per_s:.0}/s, one process killed"),
            total: 0,
        });
        let producer = self.producer()?;
        let partitions = spec.partitions as u64;
        let shards_back = std::thread::scope(|scope| -> Result<f64, BenchError> {
            let sender = scope.spawn(|| {
                super::paced(
                    &producer,
                    &spec.input,
                    phase,
                    &tracker,
                    orders,
                    orders_per_s,
                    &mut |_| {},
                )
            });
            std::thread::sleep(Duration::from_secs(seconds / 3).max(Duration::from_secs(1)));
            let victim = workers.remove(0);
            let killed = Instant::now();
            victim.kill();
            progress(Progress::Phase {
                name: format!("{phase}: waiting for every shard to run again"),
                total: partitions,
            });
            wait_all(&self.opts.out.join("logs"), &workers, &mut |_| {}, |s| {
                let owned: u64 = s.iter().map(|s| s.shards).sum();
                (owned, owned >= partitions)
            })?;
            let back = killed.elapsed().as_secs_f64();
            match sender.join() {
                Ok(r) => r?,
                Err(_) => return Err(BenchError::Worker("the load generator panicked".into())),
            }
            Ok(back)
        })?;
        progress(Progress::Phase {
            name: format!("{phase}: every order to its end"),
            total: 0,
        });
        tracker.record.store(false, Ordering::Relaxed);
        let deadline = Instant::now() + STALL;
        while tracker.outstanding() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let outstanding = tracker.outstanding();
        for w in workers {
            w.stop()?;
        }
        services.stop();
        Ok(Failover {
            processes: n,
            orders_per_s,
            orders,
            shards_back_s: shards_back,
            outstanding,
        })
    }
}
