//! The figures of a run: a terminal table, `report.json`, and two charts
//! (`latency.svg`, `throughput.svg`).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::worker::Sample;
use super::{BenchError, io};

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub baton_version: String,
    pub machine: Machine,
    pub broker: String,
    pub settings: Settings,
    /// The raw transactional passthrough.
    pub baseline: Throughput,
    /// baton with order-to-cash at full speed.
    pub full: Throughput,
    /// baton's events/s over the baseline's.
    pub ratio: f64,
    /// baton at half of the full-speed rate.
    pub half: Latency,
    /// The passthrough at the same event rate: record → record latency.
    pub passthrough_half: Latency,
    /// Both at half load at other commit intervals.
    #[serde(default)]
    pub intervals: Vec<IntervalRun>,
    /// baton at full speed with the state phase's instances idle in its
    /// shards (each with a pending timer).
    #[serde(default)]
    pub loaded: Option<Loaded>,
    /// RSS of a baton process that owns its shards and no instance.
    pub empty_rss_bytes: u64,
    /// The size whose restore is the headline figure.
    pub restore_instances: u64,
    /// Restore and idle memory, one entry per size.
    pub state: Vec<StateRun>,
    /// How long the whole run took.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_bytes: u64,
    pub os: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            memory_bytes,
            os: format!("{} {}", std::env::consts::OS, kernel.trim())
                .trim()
                .to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub partitions: i32,
    pub commit_interval_ms: u64,
    pub max_batch: usize,
    /// baton ran with `runtime.in_place`.
    #[serde(default)]
    pub in_place: bool,
    pub orders: u64,
    pub latency_seconds: u64,
}

/// Events through a process over a measured window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Throughput {
    pub events: u64,
    pub commands: u64,
    pub transactions: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub commands_per_s: f64,
    /// CPU time of the measured process per 1 000 events.
    pub cpu_ms_per_1000_events: f64,
    /// Records the process wrote per event consumed.
    #[serde(default)]
    pub records_per_event: f64,
    pub rss_peak_bytes: u64,
    /// Events/s over one-second steps of the window: (seconds from its start, rate).
    pub series: Vec<(f64, f64)>,
    /// Event → command latency while saturated (baton only).
    pub latency: Option<Latency>,
}

impl Throughput {
    /// The window from `start` to `end` of a process's samples.
    pub fn between(samples: &[Sample], start: &Sample, end: &Sample) -> Throughput {
        let events = end.events.saturating_sub(start.events);
        let seconds = end.t_ms.saturating_sub(start.t_ms) as f64 / 1000.0;
        let per_s = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let commands = end.commands.saturating_sub(start.commands);
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.t_ms >= start.t_ms && s.t_ms <= end.t_ms)
            .collect();
        let mut series = Vec::new();
        let mut from = start;
        for s in &window {
            let dt = s.t_ms.saturating_sub(from.t_ms);
            if dt >= 1000 || s.t_ms == end.t_ms && dt > 0 {
                let rate = s.events.saturating_sub(from.events) as f64 * 1000.0 / dt as f64;
                series.push((s.t_ms.saturating_sub(start.t_ms) as f64 / 1000.0, rate));
                from = s;
            }
        }
        let cpu = end.cpu_ms.saturating_sub(start.cpu_ms) as f64;
        Throughput {
            events,
            commands,
            transactions: end.transactions.saturating_sub(start.transactions),
            seconds,
            events_per_s: per_s(events),
            commands_per_s: per_s(commands),
            cpu_ms_per_1000_events: if events > 0 {
                cpu * 1000.0 / events as f64
            } else {
                0.0
            },
            records_per_event: if events > 0 {
                end.records.saturating_sub(start.records) as f64 / events as f64
            } else {
                0.0
            },
            rss_peak_bytes: window.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
            series,
            latency: None,
        }
    }
}

/// Half-load latency of baton and the passthrough at one commit interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntervalRun {
    pub commit_interval_ms: u64,
    pub baton: Latency,
    pub passthrough: Latency,
}

/// Full speed with idle instances in the shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loaded {
    pub instances: u64,
    pub throughput: Throughput,
    /// Its events/s over the full-speed phase's (empty shards).
    pub ratio: f64,
}

/// Event → command latency: from the moment the event was handed to the
/// producer to the moment the simulated service read the command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub orders: u64,
    pub orders_per_s: f64,
    pub events_per_s: f64,
    /// Commands timed.
    pub commands: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub histogram: Vec<Bucket>,
    pub cpu_ms_per_1000_events: f64,
    pub rss_peak_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub from_ms: f64,
    pub to_ms: f64,
    pub count: u64,
}

impl Latency {
    pub fn of(mut ms: Vec<f64>, orders_per_s: f64) -> Latency {
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            let i = ((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1;
            ms[i]
        };
        let max = ms.last().copied().unwrap_or(0.0);
        // Forty buckets up to the 99.9th percentile keep the shape readable;
        // the slowest tail goes into the last bucket.
        let top = pick(0.999).max(1.0);
        let width = top / 40.0;
        let mut histogram: Vec<Bucket> = (0..40)
            .map(|i| Bucket {
                from_ms: i as f64 * width,
                to_ms: (i + 1) as f64 * width,
                count: 0,
            })
            .collect();
        for v in &ms {
            let i = ((v / width) as usize).min(39);
            histogram[i].count += 1;
        }
        if let Some(last) = histogram.last_mut() {
            last.to_ms = last.to_ms.max(max);
        }
        Latency {
            orders: 0,
            orders_per_s,
            events_per_s: 0.0,
            commands: ms.len() as u64,
            p50_ms: pick(0.50),
            p95_ms: pick(0.95),
            p99_ms: pick(0.99),
            max_ms: max,
            mean_ms: if ms.is_empty() {
                0.0
            } else {
                ms.iter().sum::<f64>() / ms.len() as f64
            },
            histogram,
            cpu_ms_per_1000_events: 0.0,
            rss_peak_bytes: 0,
        }
    }
}

/// Restore and memory at one changelog size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateRun {
    pub instances: u64,
    pub restored: u64,
    pub changelog_records: u64,
    pub changelog_bytes: u64,
    /// Sum over shards of their restore times (shards restore in parallel).
    pub restore_ms: u64,
    /// Sum over partitions of a raw read of the same records (in parallel too).
    pub raw_read_ms: u64,
    /// Raw read time over restore time: 1.0 means restore costs nothing beyond reading.
    pub ratio: f64,
    /// Instances per second of shard restore time.
    pub instances_per_s: f64,
    /// RSS once restored and idle.
    pub rss_idle_bytes: u64,
    pub rss_peak_bytes: u64,
    /// (idle RSS − RSS with no instance) / instances.
    pub bytes_per_instance: f64,
}

/// A goal the project set itself, and what this run reached.
pub struct Goal {
    pub what: &'static str,
    pub reached: String,
    pub met: bool,
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / 1_048_576.0)
}

/// `12345.6` → `12 346`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// The entry of the headline restore size.
    pub fn restore(&self) -> Option<&StateRun> {
        self.state
            .iter()
            .find(|s| s.instances == self.restore_instances)
    }

    pub fn goals(&self) -> Vec<Goal> {
        let (b, f) = (&self.baseline, &self.full);
        // The passthrough's CPU per record, times the records baton writes per event.
        let cpu_budget = 3.0 * b.cpu_ms_per_1000_events * f.records_per_event.max(1.0);
        let mut goals = vec![
            Goal {
                what: "CPU/event ≤ 3× passthrough/record × records/event",
                reached: format!(
                    "{:.1} ms/1k ev vs {:.1} (= 3 × {:.1} × {:.2})",
                    f.cpu_ms_per_1000_events,
                    cpu_budget,
                    b.cpu_ms_per_1000_events,
                    f.records_per_event
                ),
                met: f.cpu_ms_per_1000_events <= cpu_budget,
            },
            Goal {
                what: "end to end ≥ 0.7× baseline",
                reached: format!("{:.2}×", self.ratio),
                met: self.ratio >= 0.7,
            },
        ];
        let runs = std::iter::once((
            self.settings.commit_interval_ms,
            &self.half,
            &self.passthrough_half,
        ))
        .chain(
            self.intervals
                .iter()
                .filter(|r| r.commit_interval_ms != self.settings.commit_interval_ms)
                .map(|r| (r.commit_interval_ms, &r.baton, &r.passthrough)),
        );
        for (ms, baton, pass) in runs {
            goals.push(Goal {
                what: "p99 at half load ≤ passthrough p99 + 20 ms",
                reached: format!(
                    "{:.0} ms vs {:.0} + 20 ms at {ms} ms commits",
                    baton.p99_ms, pass.p99_ms
                ),
                met: baton.p99_ms <= pass.p99_ms + 20.0,
            });
        }
        if let Some(r) = self.restore() {
            goals.push(Goal {
                what: "restore ≥ 0.9× raw read",
                reached: format!("{:.2}× at {}", r.ratio, r.instances),
                met: r.ratio >= 0.9,
            });
            let peak = r.rss_peak_bytes as f64 / r.rss_idle_bytes.max(1) as f64;
            goals.push(Goal {
                what: "restore peak RSS ≤ 1.5× RSS after",
                reached: format!("{peak:.2}× at {}", r.instances),
                met: peak <= 1.5,
            });
        }
        if let Some(m) = self.state.last() {
            goals.push(Goal {
                what: "≤ 1 KiB per idle instance",
                reached: format!("{:.0} B at {}", m.bytes_per_instance, m.instances),
                met: m.bytes_per_instance <= 1024.0,
            });
        }
        if let Some(l) = &self.loaded {
            goals.push(Goal {
                what: "events/s with idle instances ≥ 0.9× empty",
                reached: format!("{:.2}× with {}", l.ratio, l.instances),
                met: l.ratio >= 0.9,
            });
        }
        goals
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(
            t,
            "baton {} on {} cores ({}), {} memory, {}",
            self.baton_version,
            m.cores,
            m.cpu,
            mib(m.memory_bytes),
            m.os
        );
        let _ = writeln!(
            t,
            "broker: {}; {} partitions, commit interval {} ms, max batch {}, baton {}",
            self.broker,
            s.partitions,
            s.commit_interval_ms,
            s.max_batch,
            if s.in_place {
                "in place (runtime.in_place)"
            } else {
                "re-keying every event"
            }
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<34}{:>10}{:>12}{:>14}{:>11}{:>10}",
            "throughput", "events/s", "commands/s", "CPU ms/1k ev", "records/ev", "peak RSS"
        );
        let loaded = self.loaded.as_ref().map(|l| {
            (
                format!(
                    "baton: with {} idle instances",
                    thousands(l.instances as f64)
                ),
                &l.throughput,
            )
        });
        for (name, x) in [
            ("baseline: raw EOS passthrough".to_string(), &self.baseline),
            ("baton: order-to-cash, full speed".to_string(), &self.full),
        ]
        .into_iter()
        .chain(loaded)
        {
            let _ = writeln!(
                t,
                "{:<34}{:>10}{:>12}{:>14.1}{:>11.2}{:>10}",
                name,
                thousands(x.events_per_s),
                if x.commands > 0 {
                    thousands(x.commands_per_s)
                } else {
                    "-".into()
                },
                x.cpu_ms_per_1000_events,
                x.records_per_event,
                mib(x.rss_peak_bytes)
            );
        }
        let _ = writeln!(t, "{:<34}{:>9.2}×", "baton / baseline", self.ratio);
        if let Some(l) = &self.loaded {
            let _ = writeln!(t, "{:<34}{:>9.2}×", "with idle instances / empty", l.ratio);
        }
        let _ = writeln!(t);
        let h = &self.half;
        let _ = writeln!(
            t,
            "latency at half load ({:.0} orders/s, {} events/s, {} commands timed; CPU {:.1} ms/1k ev)",
            h.orders_per_s,
            thousands(h.events_per_s),
            h.commands,
            h.cpu_ms_per_1000_events
        );
        let _ = writeln!(
            t,
            "  event → command  p50 {:.1} ms   p95 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
            h.p50_ms, h.p95_ms, h.p99_ms, h.max_ms
        );
        let p = &self.passthrough_half;
        let _ = writeln!(
            t,
            "  passthrough, record → record  p50 {:.1} ms   p95 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
            p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
        );
        if let Some(l) = &self.full.latency {
            let _ = writeln!(
                t,
                "  (saturated, full speed: p50 {:.0} ms, p99 {:.0} ms)",
                l.p50_ms, l.p99_ms
            );
        }
        for r in &self.intervals {
            let _ = writeln!(
                t,
                "  commit interval {:>4} ms: baton p50 {:.1} / p99 {:.1} ms, passthrough p50 {:.1} / p99 {:.1} ms",
                r.commit_interval_ms,
                r.baton.p50_ms,
                r.baton.p99_ms,
                r.passthrough.p50_ms,
                r.passthrough.p99_ms
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:>10}{:>12}{:>13}{:>8}{:>14}{:>11}{:>11}{:>12}",
            "instances",
            "restore ms",
            "raw read ms",
            "ratio",
            "instances/s",
            "idle RSS",
            "peak RSS",
            "B/instance"
        );
        for r in &self.state {
            let _ = writeln!(
                t,
                "{:>10}{:>12}{:>13}{:>7.2}×{:>14}{:>11}{:>11}{:>12.0}",
                thousands(r.instances as f64),
                thousands(r.restore_ms as f64),
                thousands(r.raw_read_ms as f64),
                r.ratio,
                thousands(r.instances_per_s),
                mib(r.rss_idle_bytes),
                mib(r.rss_peak_bytes),
                r.bytes_per_instance
            );
        }
        let _ = writeln!(
            t,
            "(no instance: {} RSS; restore and raw read are summed over partitions read in parallel)",
            mib(self.empty_rss_bytes)
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "goals");
        for g in self.goals() {
            let _ = writeln!(
                t,
                "  {} {:<50} {}",
                if g.met { "met   " } else { "missed" },
                g.what,
                g.reached
            );
        }
        t
    }

    /// Writes `report.json`, `report.txt`, `latency.svg` and `throughput.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), BenchError> {
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        let path = dir.join("report.json");
        std::fs::write(&path, json).map_err(io(format!("write {}", path.display())))?;
        let path = dir.join("report.txt");
        std::fs::write(&path, self.table()).map_err(io(format!("write {}", path.display())))?;
        latency_chart(&self.half, &dir.join("latency.svg"))?;
        throughput_chart(&self.baseline, &self.full, &dir.join("throughput.svg"))?;
        Ok(())
    }
}

fn chart_error(path: &Path) -> impl Fn(String) -> BenchError + '_ {
    move |reason| BenchError::Chart {
        file: path.display().to_string(),
        reason,
    }
}

fn latency_chart(h: &Latency, path: &Path) -> Result<(), BenchError> {
    let fail = chart_error(path);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let top = h.histogram.last().map_or(1.0, |b| b.to_ms).max(1.0);
    let most = h
        .histogram
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "event → command latency at half load ({:.0} orders/s): p50 {:.1} ms, p99 {:.1} ms",
                h.orders_per_s, h.p50_ms, h.p99_ms
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..top, 0u64..most + most / 10 + 1)
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("commands")
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    chart
        .draw_series(h.histogram.iter().map(|b| {
            Rectangle::new(
                [(b.from_ms, 0), (b.to_ms.min(top), b.count)],
                BLUE.mix(0.6).filled(),
            )
        }))
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn throughput_chart(base: &Throughput, full: &Throughput, path: &Path) -> Result<(), BenchError> {
    let fail = chart_error(path);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let all = base.series.iter().chain(&full.series);
    let (mut x_max, mut y_max) = (1.0f64, 1.0f64);
    for (x, y) in all {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    let mut chart = ChartBuilder::on(&root)
        .caption("events/s over time", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.1)
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("events/s")
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    for (name, t, color) in [
        ("baseline (raw EOS passthrough)", base, RED),
        ("baton, order-to-cash", full, BLUE),
    ] {
        chart
            .draw_series(LineSeries::new(
                t.series.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(e.to_string()))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_histogram_cover_every_value() {
        let ms: Vec<f64> = (1..=1000).map(f64::from).collect();
        let l = Latency::of(ms, 10.0);
        assert_eq!(l.commands, 1000);
        assert_eq!(
            (l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms),
            (500.0, 950.0, 990.0, 1000.0)
        );
        assert_eq!(l.histogram.iter().map(|b| b.count).sum::<u64>(), 1000);
        assert!(
            Latency::of(Vec::new(), 1.0)
                .histogram
                .iter()
                .all(|b| b.count == 0)
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(1_234_567.4), "1 234 567");
        assert_eq!(thousands(999.0), "999");
    }
}
