//! `baton bench` end to end at tiny sizes against the test broker: every phase
//! reports, counts agree with the load, and the JSON and charts are written.
//! Timings are never asserted (they are the benchmark's output, not its contract).

mod support;

use std::path::PathBuf;

use baton::bench::{self, COMMANDS_PER_ORDER, EVENTS_PER_ORDER, Options, Progress, Report};

#[test]
fn bench_pipeline_produces_a_complete_report() {
    let broker = support::Broker::start();
    let out = std::env::temp_dir().join(support::unique("baton-bench"));
    let mut opts = Options::quick(PathBuf::from(env!("CARGO_BIN_EXE_baton")));
    opts.bootstrap_servers = Some(broker.bootstrap.clone());
    opts.out = out.clone();
    opts.orders = 40;
    opts.latency_seconds = 2;
    opts.restore_instances = 300;
    opts.memory_instances = vec![200, 300];

    let mut phases = Vec::new();
    let report = bench::run(&opts, &mut |p| {
        if let Progress::Phase { name, .. } = p {
            phases.push(name);
        }
    })
    .expect("the bench runs");

    for phase in ["baseline", "full speed", "half load", "restoring"] {
        assert!(
            phases.iter().any(|p| p.contains(phase)),
            "phase {phase} reported progress: {phases:?}"
        );
    }

    // Baseline: every event passed through once.
    assert!(report.baseline.events > 0);
    assert!(report.baseline.events <= opts.orders * EVENTS_PER_ORDER);
    assert!(report.baseline.events_per_s > 0.0);
    assert!(report.baseline.transactions > 0);

    // Full speed: every order ran to completion, every command was sent once.
    assert_eq!(report.full.events, opts.orders * EVENTS_PER_ORDER);
    assert_eq!(report.full.commands, opts.orders * COMMANDS_PER_ORDER);
    assert!(report.full.events_per_s > 0.0 && report.ratio > 0.0);
    assert!(report.full.cpu_ms_per_1000_events >= 0.0);
    assert!(report.full.rss_peak_bytes > 0);

    // Half load: every command of every paced order was timed.
    let h = &report.half;
    assert!(h.orders > 0);
    assert_eq!(h.commands, h.orders * COMMANDS_PER_ORDER);
    assert!(h.p50_ms <= h.p95_ms && h.p95_ms <= h.p99_ms && h.p99_ms <= h.max_ms);
    let bucketed: u64 = h.histogram.iter().map(|b| b.count).sum();
    assert_eq!(bucketed, h.commands);

    // State: every size restored completely, memory measured.
    let sizes: Vec<u64> = report.state.iter().map(|s| s.instances).collect();
    assert_eq!(sizes, vec![200, 300]);
    for s in &report.state {
        assert_eq!(s.restored, s.instances);
        assert_eq!(s.changelog_records, s.instances);
        assert!(s.changelog_bytes > 0 && s.rss_idle_bytes > 0);
    }
    assert!(report.restore().is_some());
    assert!(report.empty_rss_bytes > 0);
    assert_eq!(report.goals().len(), 4);

    // The files: JSON that reads back, a table, and two non-empty charts.
    let json = std::fs::read(out.join("report.json")).expect("report.json");
    let back: Report = serde_json::from_slice(&json).expect("report.json parses");
    assert_eq!(back.full.events, report.full.events);
    let table = std::fs::read_to_string(out.join("report.txt")).expect("report.txt");
    for part in ["baseline", "half load", "p99", "restore ms", "goals"] {
        assert!(table.contains(part), "the table shows {part}:\n{table}");
    }
    for chart in ["latency.svg", "throughput.svg"] {
        let svg = std::fs::read_to_string(out.join(chart)).expect(chart);
        assert!(
            svg.starts_with("<svg") && svg.len() > 1000,
            "{chart} is drawn"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
