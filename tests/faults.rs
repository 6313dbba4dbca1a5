//! Fault tests, each with the order-to-cash load and simulated services, and
//! each checked at the end with a read_committed consumer: every order was
//! invoiced, every command committed exactly once, and the audit trail of
//! every shard rebuilds the state its changelog holds.
//!
//! - **broker outage**: the broker stops mid-run and starts again later;
//!   baton reports not-ready while it is away, its memory stays flat, and it
//!   resumes by itself;
//! - **rebalance loop**: three processes, one killed (SIGKILL) and started
//!   again every few seconds;
//! - **slow consumer downstream**: the warehouse stops reading its commands
//!   for a while; baton goes on as before.
//!
//! These are the short forms. `scripts/faults.sh` runs the long ones (the
//! `BATON_FAULT_*` settings) and prints the figures each test reports.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::config::Config;
use baton::kafka::Incoming;
use support::admin::{get, get_as};
use support::orders::{Behaviour, Topics, config, create_input, header, load, services_with};
use support::running::{assert_each_command_once, committed, orders_with};
use support::{Broker, eventually, free_addr, setting, unique};

const PARTITIONS: i32 = 4;
/// The admin API token the processes accept.
const TOKEN: &str = "fault-test-viewer-token";

/// The tests of this file measure under load: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A `baton run` process with an admin port of its own.
struct Baton {
    name: String,
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Baton {
    /// Starts the process and waits until its admin port answers. The port
    /// is picked free before the process binds it, so another socket may
    /// take it meanwhile: then the process ends saying so, and it is started
    /// again on another port.
    fn start(dir: &Path, bootstrap: &str, group: &str, name: &str) -> Baton {
        let log = dir.join(format!("{name}.log"));
        for _ in 0..5 {
            let admin = free_addr();
            // A viewer token, for the audit replay.
            let token = dir.join("viewer.token");
            std::fs::write(&token, TOKEN).expect("token file");
            let tokens = format!(
                "[[admin.tokens]]\nname = \"auditor\"\nrole = \"viewer\"\nfile = \"{}\"\n",
                token.display()
            );
            let config = support::write_config(
                dir,
                &support::RunConfig {
                    bootstrap,
                    group,
                    instance: name,
                    partitions: PARTITIONS,
                    in_place: true,
                    admin: admin.to_string(),
                    extra: &tokens,
                },
            );
            let logged = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
            let child = support::baton_run(&config, &log);
            let mut b = Baton {
                name: name.to_string(),
                child,
                admin,
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                if get(admin, "/healthz").is_some() {
                    return b;
                }
                if let Ok(Some(status)) = b.child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let said = text.get(logged..).unwrap_or_default();
                    if said.contains(&format!("admin port {admin}")) {
                        eprintln!("{name}: admin port {admin} was taken meanwhile; another one");
                        break;
                    }
                    panic!(
                        "{name} ended ({status}) at start; its log ends:\n{}",
                        b.log_tail()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}'s admin port {admin} did not answer within 90 s; its log ends:\n{}",
                    b.log_tail()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("{name}: no free admin port in five tries");
    }

    /// `/readyz`: `Some(ready, shards)`, `None` when nothing answers.
    fn readiness(&self) -> Option<(bool, usize)> {
        let (status, body) = get(self.admin, "/readyz")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let shards = v["shards"].as_array().map_or(0, Vec::len);
        Some((status == 200, shards))
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Fails the test if the process has ended.
    fn assert_alive(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} ended ({status}) {when}; its log ends:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `members` together own every shard, each of them ready.
fn all_ready(members: &[Baton]) -> bool {
    let mut shards = 0;
    for m in members {
        match m.readiness() {
            Some((true, n)) => shards += n,
            _ => return false,
        }
    }
    shards == PARTITIONS as usize
}

/// Waits until `members` together own every shard, each of them ready; on
/// a timeout the failure shows what each member reported and its log's end.
fn settle(members: &mut [Baton], secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !all_ready(members) {
        for m in members.iter_mut() {
            m.assert_alive(&format!("while waiting for {what}"));
        }
        if Instant::now() >= deadline {
            let mut report = String::new();
            for m in members {
                let answer = get(m.admin, "/readyz")
                    .map_or("no answer".to_string(), |(s, b)| format!("{s} {b}"));
                report.push_str(&format!(
                    "\n--- {} /readyz: {answer}\n{}",
                    m.name,
                    m.log_tail()
                ));
            }
            panic!("timed out after {secs} s waiting for {what}:{report}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the end check found.
struct Verified {
    commands: usize,
    audited: u64,
}

/// Every order invoiced and every command exactly once (read_committed),
/// then the audit trail of every shard replayed through `admin` (any member
/// answers for every shard): it rebuilds what the changelog holds.
fn verify(cfg: &Config, t: &Topics, orders: u64, admin: SocketAddr) -> Verified {
    let deadline = Instant::now() + Duration::from_secs(300);
    let commands = loop {
        let all = committed(cfg, &t.commands, PARTITIONS).unwrap_or_default();
        if orders_with(&all, "com.acme.invoice.create") as u64 >= orders {
            break all;
        }
        if Instant::now() > deadline {
            let per_kind: BTreeMap<String, usize> = [
                "com.acme.inventory.reserve",
                "com.acme.payment.charge",
                "com.acme.shipment.create",
                "com.acme.invoice.create",
            ]
            .iter()
            .map(|k| (k.to_string(), orders_with(&all, k)))
            .collect();
            let placed =
                committed(cfg, std::slice::from_ref(&t.input), PARTITIONS).map_or(0, |v| v.len());
            let metrics = get(admin, "/metrics").map(|(_, b)| b).unwrap_or_default();
            let counters: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("baton_") && !l.contains("_bucket"))
                .collect();
            panic!(
                "not every one of {orders} orders was invoiced within 300 s: orders with a command, by type: {per_kind:?}; {placed} records on the input topic; baton's counters:\n{}",
                counters.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_each_command_once(&commands, orders);
    // The services' last answers are processed before the trail is read.
    std::thread::sleep(Duration::from_secs(3));
    let mut audited = 0;
    for p in 0..PARTITIONS {
        let (status, body) = eventually(60, "the audit replay to answer", || {
            get_as(
                admin,
                &format!("/api/v1/audit/replay?partition={p}"),
                Some(TOKEN),
                Duration::from_secs(60),
            )
        });
        assert_eq!(status, 200, "audit replay of shard {p}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let mismatched = v["mismatched"].as_array().cloned().unwrap_or_default();
        assert!(
            mismatched.is_empty(),
            "shard {p}: the audit trail does not rebuild the changelog: {mismatched:?}"
        );
        audited += v["checked"].as_u64().unwrap_or(0);
    }
    assert!(
        audited >= orders,
        "{audited} instances audited for {orders} orders"
    );
    Verified {
        commands: commands.len(),
        audited,
    }
}

fn check_config(bootstrap: &str, group: &str) -> Config {
    let mut c = config(bootstrap, group, "check");
    c.topics.partitions = PARTITIONS;
    c
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[test]
fn a_broker_outage_costs_time_never_a_command() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let outage = Duration::from_secs(setting("BATON_FAULT_OUTAGE_SECS", 12));
    let rate = setting("BATON_FAULT_RATE", 20);
    let (mut kafka, broker) = Broker::dedicated("");
    let group = unique("outage");
    let cfg = check_config(&broker.bootstrap, &group);
    let t = create_input(&cfg);
    let mut b = Baton::start(&broker.dir, &broker.bootstrap, &group, "outage-1");
    settle(
        std::slice::from_mut(&mut b),
        90,
        "baton to own every shard, ready",
    );
    let stop_services = services_with(&broker.bootstrap, &t, Behaviour::default());
    let (stop_load, loader) = load(&broker.bootstrap, &t, rate);
    std::thread::sleep(Duration::from_secs(5));
    let rss_before = b.rss_kib();

    kafka.outage();
    let down = Instant::now();
    let not_ready = eventually(60, "baton to report not-ready without its broker", || {
        (b.readiness().map(|(ready, _)| ready) == Some(false)).then(|| down.elapsed())
    });
    let mut rss_away = 0;
    while down.elapsed() < outage {
        b.assert_alive("while the broker was away");
        rss_away = rss_away.max(b.rss_kib());
        assert!(
            b.readiness().is_some_and(|(ready, _)| !ready),
            "baton reported ready while its broker was away"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    kafka.resume().expect("the broker starts again");
    let up = Instant::now();
    let resumed = eventually(180, "baton to be ready again by itself", || {
        all_ready(std::slice::from_ref(&b)).then(|| up.elapsed())
    });
    b.assert_alive("after the outage");
    std::thread::sleep(Duration::from_secs(5));
    stop_load.store(true, Ordering::Relaxed);
    let orders = loader.join().expect("load thread");
    let v = verify(&cfg, &t, orders, b.admin);
    stop_services.store(true, Ordering::Relaxed);
    let rss_after = b.rss_kib();
    eprintln!(
        "broker outage: {} s away, {orders} orders, {} commands checked, 0 lost, 0 duplicated, {} instances audited; not-ready {} ms after the stop; ready again {} ms after the broker; resident memory {} MiB before, at most {} MiB while away, {} MiB after",
        outage.as_secs(),
        v.commands,
        v.audited,
        ms(not_ready),
        ms(resumed),
        rss_before / 1024,
        rss_away / 1024,
        rss_after / 1024,
    );
    // Nothing queues up in baton while the broker is away: it reads nothing
    // it cannot commit.
    assert!(
        rss_away < rss_before + 128 * 1024,
        "memory grew from {rss_before} KiB to {rss_away} KiB while the broker was away"
    );
}

#[test]
fn a_rebalance_loop_of_three_processes_loses_and_duplicates_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cycles = setting("BATON_FAULT_REBALANCES", 4);
    let rate = setting("BATON_FAULT_RATE", 20);
    let broker = Broker::start();
    let group = unique("reloop");
    let cfg = check_config(&broker.bootstrap, &group);
    let t = create_input(&cfg);
    let dir = broker.dir.clone();
    let mut members: Vec<Baton> = (0..3)
        .map(|i| Baton::start(&dir, &broker.bootstrap, &group, &format!("reloop-{i}")))
        .collect();
    settle(&mut members, 120, "three processes to split the shards");
    let stop_services = services_with(&broker.bootstrap, &t, Behaviour::default());
    let (stop_load, loader) = load(&broker.bootstrap, &t, rate);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        | 1;
    eprintln!("rebalance loop seed {seed}");
    let mut next = move |max: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % max
    };
    let mut settled_ms = Vec::new();
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(2000 + next(3000)));
        // A process dies and its replacement (same name, as a StatefulSet's
        // pod comes back) starts at once.
        let victim = next(3) as usize;
        let name = members[victim].name.clone();
        members[victim].kill();
        let at = Instant::now();
        members[victim] = Baton::start(&dir, &broker.bootstrap, &group, &name);
        settle(&mut members, 120, "the group to settle again after a kill");
        settled_ms.push(at.elapsed().as_millis() as u64);
        eprintln!(
            "cycle {cycle}: {name} killed and started again; settled in {} ms",
            settled_ms[settled_ms.len() - 1]
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    stop_load.store(true, Ordering::Relaxed);
    let orders = loader.join().expect("load thread");
    let v = verify(&cfg, &t, orders, members[0].admin);
    stop_services.store(true, Ordering::Relaxed);
    for m in &mut members {
        m.assert_alive("at the end of the loop");
    }
    settled_ms.sort_unstable();
    eprintln!(
        "rebalance loop: {cycles} kills of 3 processes, {orders} orders, {} commands checked, 0 lost, 0 duplicated, {} instances audited; kill to every shard ready again: median {} ms, max {} ms",
        v.commands,
        v.audited,
        settled_ms.get(settled_ms.len() / 2).copied().unwrap_or(0),
        settled_ms.last().copied().unwrap_or(0),
    );
}

/// Order → when its record of `kind` was written (the first one).
fn times_of(
    records: &[Incoming],
    kind: &str,
    order_of: impl Fn(&serde_json::Value) -> Option<String>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in records {
        let body: serde_json::Value = r
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or_default();
        // Binary CloudEvents (baton's commands) carry their type in a header
        // and are their data; structured ones (the orders) carry both inside.
        let (ty, data) = match header(r, "ce_type") {
            Some(ty) => (ty, body),
            None => (
                body["type"].as_str().unwrap_or_default().to_string(),
                body["data"].clone(),
            ),
        };
        if ty != kind {
            continue;
        }
        if let (Some(order), Some(ts)) = (order_of(&data), r.timestamp) {
            out.entry(order).or_insert(ts);
        }
    }
    out
}

fn percentile(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn a_stopped_consumer_downstream_changes_nothing_for_baton() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let hold_for = Duration::from_secs(setting("BATON_FAULT_HOLD_SECS", 15));
    let rate = setting("BATON_FAULT_RATE", 20);
    let broker = Broker::start();
    let group = unique("slow");
    let cfg = check_config(&broker.bootstrap, &group);
    let t = create_input(&cfg);
    let mut b = Baton::start(&broker.dir, &broker.bootstrap, &group, "slow-1");
    settle(
        std::slice::from_mut(&mut b),
        90,
        "baton to own every shard, ready",
    );
    // The ERP and the payment provider answer at once; the warehouse's
    // consumer stops reading for a while.
    let wms = t
        .commands
        .iter()
        .find(|c| c.ends_with(".wms.commands"))
        .cloned()
        .expect("the warehouse's command topic");
    let mut others = t.clone();
    others.commands.retain(|c| *c != wms);
    let mut warehouse = t.clone();
    warehouse.commands = vec![wms.clone()];
    let hold = Arc::new(AtomicBool::new(false));
    let stop_others = services_with(&broker.bootstrap, &others, Behaviour::default());
    let stop_warehouse = services_with(
        &broker.bootstrap,
        &warehouse,
        Behaviour {
            hold: Some(hold.clone()),
            ..Behaviour::default()
        },
    );
    let (stop_load, loader) = load(&broker.bootstrap, &t, rate);
    std::thread::sleep(Duration::from_secs(8));
    let rss_before = b.rss_kib();
    let held_from = baton::runtime::now_ms();
    hold.store(true, Ordering::Relaxed);
    let mut rss_held = 0;
    let started = Instant::now();
    while started.elapsed() < hold_for {
        b.assert_alive("while the warehouse did not read");
        rss_held = rss_held.max(b.rss_kib());
        std::thread::sleep(Duration::from_millis(500));
    }
    let held_to = baton::runtime::now_ms();
    // What baton did while the warehouse was away, read before it reads again.
    let placed = committed(&cfg, std::slice::from_ref(&t.input), PARTITIONS).expect("orders");
    let charges = committed(&cfg, &t.commands, PARTITIONS).expect("commands");
    hold.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    stop_load.store(true, Ordering::Relaxed);
    let orders = loader.join().expect("load thread");
    let v = verify(&cfg, &t, orders, b.admin);
    stop_warehouse.store(true, Ordering::Relaxed);
    stop_others.store(true, Ordering::Relaxed);

    let order_id = |d: &serde_json::Value| d["orderId"].as_str().map(str::to_string);
    let command_order = |d: &serde_json::Value| d["order"].as_str().map(str::to_string);
    let placed_at = times_of(&placed, "com.acme.order.placed", order_id);
    let charged_at = times_of(&charges, "com.acme.payment.charge", command_order);
    let shipped_at = times_of(&charges, "com.acme.shipment.create", command_order);
    let (mut before, mut during) = (Vec::new(), Vec::new());
    let mut missing = Vec::new();
    for (order, at) in &placed_at {
        match charged_at.get(order) {
            Some(c) if *at < held_from => before.push(c.saturating_sub(*at)),
            Some(c) => during.push(c.saturating_sub(*at)),
            // Placed in the last seconds of the hold: it may still be on its way.
            None if *at + 5000 > held_to => {}
            None => missing.push(order.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "orders placed while the warehouse did not read got no payment command from baton: {missing:?}"
    );
    let shipped_during = shipped_at
        .values()
        .filter(|ts| (held_from..held_to).contains(ts))
        .count();
    assert!(
        shipped_during > 0 && !during.is_empty(),
        "baton sent no shipment command while the warehouse did not read ({} charged; {} orders placed, {} charged, {} shipped in all; held from {held_from} to {held_to})",
        during.len(),
        placed_at.len(),
        charged_at.len(),
        shipped_at.len()
    );
    let (b50, b99) = (percentile(&mut before, 0.5), percentile(&mut before, 0.99));
    let (d50, d99) = (percentile(&mut during, 0.5), percentile(&mut during, 0.99));
    eprintln!(
        "slow consumer downstream: the warehouse read nothing for {} s; {orders} orders, {} commands checked, 0 lost, 0 duplicated, {} instances audited; order placed → payment command: p50 {b50} ms / p99 {b99} ms before, p50 {d50} ms / p99 {d99} ms while it did not read ({} orders); {shipped_during} shipment commands committed meanwhile; resident memory {} MiB before, at most {} MiB while it did not read",
        hold_for.as_secs(),
        v.commands,
        v.audited,
        during.len(),
        rss_before / 1024,
        rss_held / 1024,
    );
    b.assert_alive("at the end");
}
