//! `baton bench` end to end at tiny sizes against the test broker: every phase
//! reports, counts agree with the load, and the JSON and charts are written.
//! Timings are never asserted (they are the benchmark's output, not its contract).

mod support;

use std::process::Command;

use serde_json::Value;

/// Events and commands of one order-to-cash order under the bench's load.
const EVENTS_PER_ORDER: u64 = 6;
const COMMANDS_PER_ORDER: u64 = 4;

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("report.json has no number at {path}"))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("report.json has no number at {path}"))
}

#[test]
fn bench_pipeline_produces_a_complete_report() {
    let broker = support::Broker::start();
    let out = std::env::temp_dir().join(support::unique("baton-bench"));
    let orders = 40;
    let run = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["bench", "--quick", "--bootstrap-servers", &broker.bootstrap])
        .arg("--out")
        .arg(&out)
        .args(["--orders", &orders.to_string(), "--latency-seconds", "2"])
        .args([
            "--restore-instances",
            "300",
            "--memory-instances",
            "200,300",
        ])
        .output()
        .expect("baton bench runs");
    assert!(
        run.status.success(),
        "baton bench failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json = std::fs::read(out.join("report.json")).expect("report.json");
    let report: Value = serde_json::from_slice(&json).expect("report.json parses");

    // Baseline: every event passed through once.
    let baseline = u(&report, "/baseline/events");
    assert!(baseline > 0 && baseline <= orders * EVENTS_PER_ORDER);
    assert!(f(&report, "/baseline/events_per_s") > 0.0);
    assert!(u(&report, "/baseline/transactions") > 0);

    // Full speed: every order ran to completion, every command was sent once.
    assert_eq!(u(&report, "/full/events"), orders * EVENTS_PER_ORDER);
    assert_eq!(u(&report, "/full/commands"), orders * COMMANDS_PER_ORDER);
    assert!(f(&report, "/full/events_per_s") > 0.0 && f(&report, "/ratio") > 0.0);
    assert!(f(&report, "/full/cpu_ms_per_1000_events") >= 0.0);
    assert!(u(&report, "/full/rss_peak_bytes") > 0);

    // Half load: every command of every paced order was timed.
    let h = &report["half"];
    assert!(u(h, "/orders") > 0);
    assert_eq!(u(h, "/commands"), u(h, "/orders") * COMMANDS_PER_ORDER);
    let (p50, p95, p99, max) = (
        f(h, "/p50_ms"),
        f(h, "/p95_ms"),
        f(h, "/p99_ms"),
        f(h, "/max_ms"),
    );
    assert!(p50 <= p95 && p95 <= p99 && p99 <= max);
    let bucketed: u64 = h["histogram"]
        .as_array()
        .expect("a histogram")
        .iter()
        .map(|b| u(b, "/count"))
        .sum();
    assert_eq!(bucketed, u(h, "/commands"));

    // The passthrough at the same rate: every record timed.
    let pass = &report["passthrough_half"];
    assert!(u(pass, "/commands") > 0, "passthrough records timed");
    assert!(f(pass, "/p50_ms") <= f(pass, "/p99_ms"));
    // Both again at each commit interval asked for.
    let intervals: Vec<u64> = report["intervals"]
        .as_array()
        .expect("interval runs")
        .iter()
        .map(|r| {
            assert!(u(r, "/baton/commands") > 0 && u(r, "/passthrough/commands") > 0);
            u(r, "/commit_interval_ms")
        })
        .collect();
    assert_eq!(intervals, vec![20, 100]);
    // Full speed again with the state's instances idle in the shards.
    let loaded = &report["loaded"];
    assert_eq!(u(loaded, "/instances"), 300);
    assert_eq!(u(loaded, "/throughput/events"), orders * EVENTS_PER_ORDER);
    assert!(f(loaded, "/ratio") > 0.0);
    // Records written per event are counted (snapshot, command, packed audit).
    assert!(f(&report, "/full/records_per_event") > 1.0);
    assert!((f(&report, "/baseline/records_per_event") - 1.0).abs() < 1e-9);

    // State: every size restored completely, memory measured.
    let state = report["state"].as_array().expect("state runs");
    let sizes: Vec<u64> = state.iter().map(|s| u(s, "/instances")).collect();
    assert_eq!(sizes, vec![200, 300]);
    for s in state {
        assert_eq!(u(s, "/restored"), u(s, "/instances"));
        assert_eq!(u(s, "/changelog_records"), u(s, "/instances"));
        assert!(u(s, "/changelog_bytes") > 0 && u(s, "/rss_idle_bytes") > 0);
    }
    assert!(sizes.contains(&u(&report, "/restore_instances")));
    assert!(u(&report, "/empty_rss_bytes") > 0);

    // The files: JSON that reads back, a table, and two non-empty charts.
    let table = std::fs::read_to_string(out.join("report.txt")).expect("report.txt");
    for part in [
        "baseline",
        "half load",
        "p99",
        "passthrough, record → record",
        "commit interval",
        "idle instances",
        "restore ms",
        "goals",
    ] {
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

#[test]
fn scale_out_reports_every_process_count_and_a_failover() {
    // A broker of its own: the example's command topics get the run's
    // partition count (12 here), and the other bench test's run makes them
    // with 2 on the shared broker.
    let (_kafka, broker) = support::Broker::dedicated("");
    let out = std::env::temp_dir().join(support::unique("baton-scale"));
    let run = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "bench",
            "--scale-out",
            "--quick",
            "--bootstrap-servers",
            &broker.bootstrap,
        ])
        .arg("--out")
        .arg(&out)
        .args(["--orders", "60", "--processes", "1,2,3"])
        .output()
        .expect("baton bench --scale-out runs");
    assert!(
        run.status.success(),
        "baton bench --scale-out failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json = std::fs::read(out.join("scale-out.json")).expect("scale-out.json");
    let report: Value = serde_json::from_slice(&json).expect("scale-out.json parses");
    let partitions = u(&report, "/partitions");
    assert_eq!(partitions, 12, "twelve shards by default");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3);
    for (i, r) in runs.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(u(r, "/processes"), n);
        // The group divided every shard among all its processes.
        let shards: Vec<u64> = r["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(shards.len() as u64, n);
        assert_eq!(
            shards.iter().sum::<u64>(),
            partitions,
            "run {n}: {shards:?}"
        );
        assert!(shards.iter().all(|s| *s > 0), "run {n}: {shards:?}");
        assert_eq!(r["cpu_cores"].as_array().map(Vec::len), Some(n as usize));
        assert!(f(r, "/events_per_s") > 0.0);
    }
    assert_eq!(
        f(&runs[0], "/ratio"),
        1.0,
        "the one-process run is the baseline"
    );
    // After the kill, the two left run every shard and every order goes on.
    assert_eq!(u(&report, "/failover/processes"), 3);
    assert!(f(&report, "/failover/shards_back_s") > 0.0);
    assert!(u(&report, "/failover/orders") > 0);
    assert_eq!(u(&report, "/failover/outstanding"), 0);
    assert!(out.join("scale-out.txt").exists());
    let _ = std::fs::remove_dir_all(&out);
}
