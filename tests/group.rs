//! The consumer group on Apache Kafka with the KIP-848 protocol: processes
//! join and leave under load without a lost or duplicated command while the
//! shards that stay keep going, and a paused process (a zombie) is fenced.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::config::Config;
use baton::kafka;
use baton::runtime::now_ms;
use baton::telemetry::Health;
use support::admin::get;
use support::orders::{Topics, config, create_input, load, services};
use support::running::{Running, assert_each_command_once, collector, example, orders_with};
use support::{Broker, eventually, free_addr, oracle, unique};

const PARTITIONS: i32 = 6;

/// The tests of this file measure under load: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn start(cfg: Config) -> Running {
    let registry = example(&Topics::of(&cfg.kafka.group_id));
    Running::with(cfg, registry)
}

fn group_config(bootstrap: &str, group: &str, instance: &str) -> Config {
    let mut c = config(bootstrap, group, instance);
    c.topics.partitions = PARTITIONS;
    // Co-partitioning: input partition p and shard p on one member.
    c.runtime.in_place = true;
    c
}

/// Who owned which shard when: a change log of the members' readiness.
type Owners = BTreeMap<i32, String>;
/// The members watched, by name.
type Members = Arc<Mutex<Vec<(String, Arc<Health>)>>>;

struct Monitor {
    members: Members,
    timeline: Arc<Mutex<Vec<(u64, Owners)>>>,
    stop: Arc<AtomicBool>,
}

impl Monitor {
    fn start() -> Monitor {
        let members: Members = Arc::default();
        let timeline: Arc<Mutex<Vec<(u64, Owners)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (m, tl, st) = (members.clone(), timeline.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let mut owners = Owners::new();
                for (name, h) in m.lock().expect("members").iter() {
                    for p in h.readiness().shards {
                        owners.insert(p, name.clone());
                    }
                }
                let mut tl = tl.lock().expect("timeline");
                if tl.last().is_none_or(|(_, o)| *o != owners) {
                    tl.push((now_ms(), owners));
                }
                drop(tl);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Monitor {
            members,
            timeline,
            stop,
        }
    }

    fn add(&self, name: &str, r: &Running) {
        self.members
            .lock()
            .expect("members")
            .push((name.to_string(), r.health.clone()));
    }

    fn owners_at(&self, at: u64) -> Owners {
        let tl = self.timeline.lock().expect("timeline");
        tl.iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map(|(_, o)| o.clone())
            .unwrap_or_default()
    }
}

/// The longest time without a changelog write on `p` between `from` and
/// `to` (epoch ms), counted from the last write before `from`.
fn longest_gap(writes: &[u64], from: u64, to: u64) -> u64 {
    let start = writes
        .iter()
        .rev()
        .find(|t| **t <= from)
        .copied()
        .unwrap_or(from);
    let mut last = start;
    let mut gap = 0;
    for &t in writes.iter().filter(|t| **t > from && **t <= to) {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to.saturating_sub(last).min(to - from))
}

#[test]
fn processes_join_and_leave_under_load_and_the_shards_that_stay_never_stop() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let broker = Broker::start();
    let group = unique("rebalance");
    let cfg = group_config(&broker.bootstrap, &group, "a");
    let t = create_input(&cfg);
    let (seen, stop_collector) = collector(&broker.bootstrap, &t.commands);
    let stop_services = services(&broker.bootstrap, &t);
    let monitor = Monitor::start();
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    let settled = |members: &[&Running]| {
        let mut owned = BTreeSet::new();
        for m in members {
            let r = m.health.readiness();
            if r.shards.is_empty() || !r.restoring.is_empty() {
                return false;
            }
            owned.extend(r.shards);
        }
        owned == all
    };

    let a = start(cfg.clone());
    monitor.add("a", &a);
    eventually(60, "the first process to own every shard", || {
        settled(&[&a]).then_some(())
    });
    let (stop_load, loader) = load(&broker.bootstrap, &t, 25);
    std::thread::sleep(Duration::from_secs(3));

    // (name, start, settled) of each membership change.
    let mut changes: Vec<(&str, u64, u64)> = Vec::new();
    let steady_from = now_ms().saturating_sub(2000);

    let at = now_ms();
    let b = start(group_config(&broker.bootstrap, &group, "b"));
    monitor.add("b", &b);
    eventually(60, "a and b to split the shards", || {
        settled(&[&a, &b]).then_some(())
    });
    changes.push(("b joins", at, now_ms()));
    std::thread::sleep(Duration::from_secs(3));

    let at = now_ms();
    let c = start(group_config(&broker.bootstrap, &group, "c"));
    monitor.add("c", &c);
    eventually(60, "a, b and c to split the shards", || {
        settled(&[&a, &b, &c]).then_some(())
    });
    changes.push(("c joins", at, now_ms()));
    std::thread::sleep(Duration::from_secs(3));

    let at = now_ms();
    a.stop();
    eventually(60, "b and c to take a's shards", || {
        settled(&[&b, &c]).then_some(())
    });
    changes.push(("a leaves", at, now_ms()));
    std::thread::sleep(Duration::from_secs(3));

    stop_load.store(true, Ordering::Relaxed);
    let orders = loader.join().expect("load thread");
    let seen_all = eventually(180, "every order invoiced", || {
        let v = seen.lock().ok()?.clone();
        (orders_with(&v, "com.acme.invoice.create") as u64 >= orders).then_some(v)
    });
    assert_each_command_once(&seen_all, orders);
    let forwarded =
        b.stats.forwarded.load(Ordering::Relaxed) + c.stats.forwarded.load(Ordering::Relaxed);
    stop_collector.store(true, Ordering::Relaxed);
    stop_services.store(true, Ordering::Relaxed);
    monitor.stop.store(true, Ordering::Relaxed);
    b.stop();
    c.stop();

    // How long each shard went without a changelog write around each change.
    let mut writes: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let mut ts: Vec<u64> = kafka::read_partition(&cfg, &cfg.topics.changelog(), p)
            .expect("changelog")
            .into_iter()
            .filter_map(|r| r.timestamp)
            .collect();
        ts.sort_unstable();
        writes.insert(p, ts);
    }
    let steady_to = changes[0].1;
    let steady = (0..PARTITIONS)
        .map(|p| longest_gap(&writes[&p], steady_from, steady_to))
        .max()
        .unwrap_or(0);
    eprintln!(
        "rebalance test: {orders} orders, 0 lost, 0 duplicated commands; events forwarded instead of processed in place: {forwarded}; steady state: longest gap between changelog writes of a shard {steady} ms"
    );
    for (name, from, to) in &changes {
        let before = monitor.owners_at(*from);
        let after = monitor.owners_at(*to);
        let (mut stayed, mut moved) = (Vec::new(), Vec::new());
        for p in 0..PARTITIONS {
            let gap = longest_gap(&writes[&p], *from, to + 1000);
            if before.get(&p) == after.get(&p) {
                stayed.push((p, gap));
            } else {
                moved.push((p, gap));
            }
        }
        let worst = |v: &[(i32, u64)]| v.iter().map(|(_, g)| *g).max().unwrap_or(0);
        eprintln!(
            "{name}: settled in {} ms; shards that stayed {:?}: longest gap {} ms; shards that moved {:?}: resumed within {} ms",
            to - from,
            stayed.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            worst(&stayed),
            moved.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            worst(&moved),
        );
        assert!(
            !moved.is_empty(),
            "{name}: no shard moved ({before:?} → {after:?})"
        );
        assert!(
            !stayed.is_empty(),
            "{name}: every shard moved, the rebalance was not incremental ({before:?} → {after:?})"
        );
    }
}

// ---- zombie fencing ---------------------------------------------------------

fn write_config(
    dir: &Path,
    bootstrap: &str,
    group: &str,
    name: &str,
    admin: SocketAddr,
) -> PathBuf {
    support::write_config(
        dir,
        &support::RunConfig {
            bootstrap,
            group,
            instance: name,
            partitions: PARTITIONS,
            in_place: true,
            admin: admin.to_string(),
            extra: "",
        },
    )
}

/// The shards a process reports ready (`None`: it does not answer).
fn shards_of(admin: SocketAddr) -> Option<BTreeSet<i64>> {
    let (_, body) = get(admin, "/readyz")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(
        v["shards"]
            .as_array()?
            .iter()
            .filter_map(serde_json::Value::as_i64)
            .collect(),
    )
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {}", child.id());
}

#[test]
fn a_paused_process_is_fenced_and_its_late_transaction_never_commits() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let broker = Broker::start();
    let group = unique("zombie");
    let cfg = group_config(&broker.bootstrap, &group, "check");
    let t = create_input(&cfg);
    let dir = broker.dir.clone();
    let (admin_a, admin_b) = (free_addr(), free_addr());
    let conf_a = write_config(&dir, &broker.bootstrap, &group, "zombie-a", admin_a);
    let conf_b = write_config(&dir, &broker.bootstrap, &group, "zombie-b", admin_b);
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let mut a = support::baton_run(&conf_a, &log_a);
    eventually(60, "a to own every shard", || {
        shards_of(admin_a).filter(|s| s.len() == PARTITIONS as usize)
    });
    let stop_services = services(&broker.bootstrap, &t);
    let (stop_load, loader) = load(&broker.bootstrap, &t, 20);
    let mut b = support::baton_run(&conf_b, &log_b);
    eventually(60, "a and b to split the shards", || {
        let (sa, sb) = (shards_of(admin_a)?, shards_of(admin_b)?);
        (!sa.is_empty() && !sb.is_empty() && sa.len() + sb.len() == PARTITIONS as usize)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));

    // a stops in the middle of its work; the group gives its shards to b.
    signal(&a, "-STOP");
    let paused = Instant::now();
    eventually(60, "b to own every shard while a is paused", || {
        shards_of(admin_b).filter(|s| s.len() == PARTITIONS as usize)
    });
    let moved_after = paused.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    // a wakes up with an open transaction and records in its buffers.
    signal(&a, "-CONT");
    std::thread::sleep(Duration::from_secs(5));
    stop_load.store(true, Ordering::Relaxed);
    let orders = loader.join().expect("load thread");

    let commands = eventually(180, "every order invoiced", || {
        let mut all = Vec::new();
        for topic in &t.commands {
            for p in 0..PARTITIONS {
                all.extend(kafka::read_partition(&cfg, topic, p).ok()?);
            }
        }
        (orders_with(&all, "com.acme.invoice.create") as u64 >= orders).then_some(all)
    });
    assert_each_command_once(&commands, orders);
    stop_services.store(true, Ordering::Relaxed);
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();

    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    let fenced = log.contains("partitions lost")
        || log.contains("commit failed")
        || log.contains("transaction failed");
    assert!(
        fenced,
        "the paused process never noticed it was fenced; its log:\n{}",
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    let aborted = oracle::aborted(&broker.bootstrap, &t.commands, PARTITIONS);

    // No stale snapshot: every key's committed snapshots only move forward,
    // so a restore (which takes the newest) never goes back.
    let mut regressions = Vec::new();
    let mut keys = 0;
    for p in 0..PARTITIONS {
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for r in kafka::read_partition(&cfg, &cfg.topics.changelog(), p).expect("changelog") {
            let (Some(key), Some(v)) = (r.key.clone(), r.payload.as_deref()) else {
                continue;
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            let (_, _, inst) = baton::wire::decode_changelog_at(v).expect("snapshot decodes");
            if let Some(before) = last.insert(key.clone(), inst.transitions)
                && before > inst.transitions
            {
                regressions.push(format!("{key}: {before} → {}", inst.transitions));
            }
        }
        keys += last.len();
    }
    assert!(
        regressions.is_empty(),
        "committed snapshots that went back: {regressions:?}"
    );
    assert!(
        keys as u64 >= orders,
        "{keys} instances for {orders} orders"
    );
    eprintln!(
        "zombie test: {orders} orders, 0 lost, 0 duplicated; shards moved {} ms after the pause; {aborted} command records of aborted transactions; no snapshot went back",
        moved_after.as_millis()
    );
}
