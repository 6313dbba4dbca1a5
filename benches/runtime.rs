//! One baton process against Apache Kafka: events per second from
//! domain event to command, and the time to restore the instances it left.
//!
//! `cargo bench --bench runtime` runs 20 000 orders (`BATON_BENCH_ORDERS`
//! overrides; `BATON_BENCH_COMMIT_INTERVAL_MS` and `BATON_BENCH_MAX_BATCH`
//! override the batching); under `cargo test` it runs 200 as a smoke check.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton::config::{self, Config};
use baton::kafka::{self, PlainConsumer, PlainProducer};
use baton::runtime::{Runtime, Stats};

use support::orders::Topics;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn config(bootstrap: &str, group: &str) -> Config {
    // Production batching defaults unless the environment says otherwise.
    let defaults = config::Runtime::default();
    let mut cfg = support::orders::config(bootstrap, group, "bench");
    cfg.runtime = config::Runtime {
        instance_id: Some("bench".into()),
        commit_interval: env("BATON_BENCH_COMMIT_INTERVAL_MS")
            .map_or(defaults.commit_interval, Duration::from_millis),
        max_batch: env("BATON_BENCH_MAX_BATCH").map_or(defaults.max_batch, |n| n as usize),
        ..defaults
    };
    cfg
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let orders: u64 = std::env::var("BATON_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 20_000 } else { 200 });
    let broker = support::Broker::start();
    let group = support::unique("bench");
    let cfg = config(&broker.bootstrap, &group);
    let t = Topics::of(&group);
    kafka::ensure_topics(&cfg, &[(t.input.clone(), 2, false)]).expect("input topic");

    // Load first: the events are waiting when baton starts.
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in 0..orders {
        producer.send(&t.placed(n)).expect("send");
    }
    producer.flush().expect("flush");

    let (cfg_interval, cfg_batch) = (cfg.runtime.commit_interval, cfg.runtime.max_batch);
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let runtime =
        Runtime::new(cfg.clone(), support::running::example(&t), stats.clone()).expect("runtime");
    let flag = stop.clone();
    let started = Instant::now();
    let handle = std::thread::spawn(move || runtime.run(flag));
    let commands = PlainConsumer::new(
        &broker.bootstrap,
        &support::unique("count"),
        &t.commands[..1],
    )
    .expect("consumer");
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while seen < orders && Instant::now() < deadline {
        if let Some(Ok(_)) = commands.poll(Duration::from_millis(100)) {
            seen += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("runtime thread").expect("runtime");
    assert_eq!(seen, orders, "every order produced its reserve command");
    println!(
        "runtime: {orders} orders, event → command in {elapsed:.1} s: {:.0} events/s ({} transactions; commit interval {:?}, max batch {})",
        orders as f64 / elapsed,
        stats.transactions.load(Ordering::Relaxed),
        cfg_interval,
        cfg_batch
    );

    // A second process restores the instances the first one left.
    let stats2 = Arc::new(Stats::default());
    let stop2 = Arc::new(AtomicBool::new(false));
    let runtime =
        Runtime::new(cfg, support::running::example(&t), stats2.clone()).expect("runtime");
    let flag = stop2.clone();
    let handle = std::thread::spawn(move || runtime.run(flag));
    let deadline = Instant::now() + Duration::from_secs(1800);
    while stats2.restored_instances.load(Ordering::Relaxed) < orders && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let restore_ms = stats2.restore_ms.load(Ordering::Relaxed).max(1);
    let restored = stats2.restored_instances.load(Ordering::Relaxed);
    stop2.store(true, Ordering::Relaxed);
    handle.join().expect("runtime thread").expect("runtime");
    assert_eq!(restored, orders, "every instance restored");
    println!(
        "restore: {restored} instances in {restore_ms} ms: {:.0} instances/s",
        restored as f64 * 1000.0 / restore_ms as f64
    );
}
