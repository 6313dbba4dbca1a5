//! The runtime against Apache Kafka: end to end,
//! restore after a restart (with a timer that fell due while baton was down),
//! and poison events.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use baton::config::{Config, GroupProtocol};
use baton::kafka::{self, Outgoing, PlainProducer};
use baton::wire::cloudevents;
use serde_json::json;
use support::orders::{Behaviour, config, create_input, header, services, services_with};
use support::running::{
    Running, assert_each_command_once, collector, example, ids_of, orders_with,
};
use support::{Broker, eventually, unique};

#[test]
fn orders_run_end_to_end_and_poison_events_go_to_the_dead_letter_topic() {
    let broker = Broker::start();
    let group = unique("e2e");
    let cfg = config(&broker.bootstrap, &group, "a");
    let t = create_input(&cfg);
    let runtime = Running::start(cfg.clone());
    let services = services(&broker.bootstrap, &t);
    let mut topics = t.commands.clone();
    let dlq = cfg.topics.dead_letters();
    topics.push(dlq.clone());
    let (seen, stop_collector) = collector(&broker.bootstrap, &topics);

    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in 0..5 {
        producer.send(&t.placed(n)).expect("send");
    }
    // Poison around the good events: not JSON, and a type no process knows.
    producer
        .send(&Outgoing {
            topic: t.input.clone(),
            partition: None,
            key: b"bad-1".to_vec(),
            payload: Some(b"{not json".to_vec()),
            headers: Vec::new(),
        })
        .expect("send");
    let unknown = cloudevents::structured("u-1", "com.acme.unknown", "test", 0, &json!({}));
    producer
        .send(&Outgoing {
            topic: t.input.clone(),
            partition: None,
            key: b"u-1".to_vec(),
            payload: Some(unknown),
            headers: Vec::new(),
        })
        .expect("send");
    producer.flush().expect("flush");

    let all = eventually(120, "five invoices and two dead letters", || {
        let v = seen.lock().ok()?.clone();
        let invoices = orders_with(&v, "com.acme.invoice.create");
        let dead = v.iter().filter(|m| m.topic == dlq).count();
        (invoices >= 5 && dead >= 2).then_some(v)
    });
    // read_committed; this run aborts nothing.
    assert_each_command_once(&all, 5);
    let reasons: Vec<String> = all
        .iter()
        .filter(|m| m.topic == dlq)
        .filter_map(|m| header(m, "baton.dlq.reason"))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("payload is not JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r
                .contains("no process starts on or correlates events of type com.acme.unknown")),
        "{reasons:?}"
    );
    let poison = all
        .iter()
        .find(|m| m.topic == dlq && m.key.as_deref() == Some(b"bad-1"))
        .expect("the undecodable record");
    assert_eq!(
        header(poison, "baton.dlq.topic").as_deref(),
        Some(t.input.as_str())
    );
    assert!(header(poison, "baton.version").is_some());

    stop_collector.store(true, Ordering::Relaxed);
    services.store(true, Ordering::Relaxed);
    runtime.stop();
}

#[test]
fn events_keyed_by_their_instance_are_processed_in_place() {
    let broker = Broker::start();
    let group = unique("inplace");
    let mut cfg = config(&broker.bootstrap, &group, "a");
    cfg.runtime.in_place = true;
    let t = create_input(&cfg);
    let runtime = Running::start(cfg.clone());
    let services = services(&broker.bootstrap, &t);
    let (seen, stop_collector) = collector(&broker.bootstrap, &t.commands);
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    const ORDERS: u64 = 8;
    for n in 0..ORDERS {
        // Keyed by the order, with Kafka's default partitioner, as a CRM would.
        let mut r = t.placed(n);
        r.key = format!("o-{n}").into_bytes();
        producer.send(&r).expect("send");
    }
    producer.flush().expect("flush");
    let all = eventually(120, "every order invoiced", || {
        let v = seen.lock().ok()?.clone();
        (orders_with(&v, "com.acme.invoice.create") >= ORDERS as usize).then_some(v)
    });
    assert_each_command_once(&all, ORDERS);
    // The services key their answers by order too: none of the five events
    // of an order (placed and four answers) took the hop.
    eventually(60, "every answer processed", || {
        (runtime.stats.in_place.load(Ordering::Relaxed) >= 5 * ORDERS).then_some(())
    });
    assert_eq!(runtime.stats.forwarded.load(Ordering::Relaxed), 0);
    stop_collector.store(true, Ordering::Relaxed);
    services.store(true, Ordering::Relaxed);
    runtime.stop();

    // A new process restores what was written in place and carries on.
    let again = Running::start(cfg.clone());
    eventually(60, "both shards restored", || {
        (again.shards() == 2).then_some(())
    });
    assert_eq!(
        again.stats.restored_instances.load(Ordering::Relaxed),
        ORDERS,
        "every instance restored (their snapshots name the input topic as source)"
    );
    again.stop();
}

#[test]
fn a_new_process_restores_instances_and_fires_timers_that_fell_due_while_down() {
    let broker = Broker::start();
    let group = unique("restore");
    let cfg = config(&broker.bootstrap, &group, "a");
    let t = create_input(&cfg);
    let (seen, stop_collector) = collector(&broker.bootstrap, &t.commands);

    // First process: orders start; nobody answers, so they wait at `reserve`.
    let first = Running::start(cfg.clone());
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in 0..3 {
        producer.send(&t.placed(n)).expect("send");
    }
    producer.flush().expect("flush");
    eventually(90, "three reserve commands", || {
        let v = seen.lock().ok()?.clone();
        (ids_of(&v, "com.acme.inventory.reserve").len() >= 3).then_some(())
    });
    first.stop();

    // Down for longer than the 2 s reserve timeout.
    std::thread::sleep(Duration::from_secs(3));

    // A new process takes over: it restores the instances from the changelog,
    // the overdue timeout fires (attempt 2), then the services answer.
    let second = Running::start(config(&broker.bootstrap, &group, "b"));
    let retried = eventually(90, "retried reserve commands after restore", || {
        let v = seen.lock().ok()?.clone();
        let ids = ids_of(&v, "com.acme.inventory.reserve");
        let retried: Vec<String> = ids
            .into_iter()
            .filter(|i| i.ends_with("/reserve/2"))
            .collect();
        (retried.len() >= 3).then_some(retried)
    });
    assert_eq!(retried.len(), 3, "{retried:?}");
    let services = services(&broker.bootstrap, &t);
    let all = eventually(120, "three invoices", || {
        let v = seen.lock().ok()?.clone();
        (orders_with(&v, "com.acme.invoice.create") >= 3).then_some(v)
    });
    // The restored instances went on from where they were: one charge each.
    let mut charges = ids_of(&all, "com.acme.payment.charge");
    charges.sort();
    charges.dedup();
    assert_eq!(charges.len(), 3, "{charges:?}");

    stop_collector.store(true, Ordering::Relaxed);
    services.store(true, Ordering::Relaxed);
    second.stop();
}

#[test]
fn two_processes_split_the_shards_and_one_takes_over_when_the_other_stops() {
    hand_over(GroupProtocol::Consumer);
}

/// The classic protocol with in-place processing, which takes the `range`
/// assignor (co-partitioning); `cooperative-sticky`, its choice otherwise,
/// may give one member every shard and the other every input partition.
#[test]
fn the_classic_group_protocol_hands_shards_over_too() {
    hand_over(GroupProtocol::Classic);
}

fn hand_over(protocol: GroupProtocol) {
    let broker = Broker::start();
    let group = unique("pair");
    let mut cfg = config(&broker.bootstrap, &group, "a");
    let mut cfg_b = config(&broker.bootstrap, &group, "b");
    for c in [&mut cfg, &mut cfg_b] {
        c.kafka.group_protocol = protocol;
        c.runtime.in_place = protocol == GroupProtocol::Classic;
    }
    let t = create_input(&cfg);
    let (seen, stop_collector) = collector(&broker.bootstrap, &t.commands);
    let a = Running::start(cfg);
    let b = Running::start(cfg_b);
    let services = services(&broker.bootstrap, &t);
    eventually(60, "each process to own one of the two shards", || {
        (a.shards() == 1 && b.shards() == 1).then_some(())
    });
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in 0..6 {
        producer.send(&t.placed(n)).expect("send");
    }
    producer.flush().expect("flush");
    eventually(120, "six invoices", || {
        let v = seen.lock().ok()?.clone();
        (orders_with(&v, "com.acme.invoice.create") >= 6).then_some(())
    });
    assert!(
        a.stats.transactions.load(Ordering::Relaxed) > 0
            && b.stats.transactions.load(Ordering::Relaxed) > 0
    );

    // `a` leaves: its shard moves to `b`, which goes on without loss or duplicates.
    a.stop();
    eventually(60, "the remaining process to own both shards", || {
        (b.shards() == 2).then_some(())
    });
    for n in 6..12 {
        producer.send(&t.placed(n)).expect("send");
    }
    producer.flush().expect("flush");
    let all = eventually(120, "twelve invoices", || {
        let v = seen.lock().ok()?.clone();
        (orders_with(&v, "com.acme.invoice.create") >= 12).then_some(v)
    });
    assert_each_command_once(&all, 12);
    stop_collector.store(true, Ordering::Relaxed);
    services.store(true, Ordering::Relaxed);
    b.stop();
}

/// Committed changelog records of every shard: (key, snapshot or tombstone).
fn changelog(cfg: &Config) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for p in 0..cfg.topics.partitions {
        for r in kafka::read_partition(cfg, &cfg.topics.changelog(), p).expect("changelog") {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            out.push((key, r.payload.is_some()));
        }
    }
    out
}

#[test]
fn the_changelog_compacts_and_a_restore_after_compaction_yields_the_same_instances() {
    let broker = Broker::start();
    let group = unique("compact");
    let mut cfg = config(&broker.bootstrap, &group, "a");
    // Ended instances are forgotten (tombstoned) a second after they end;
    // small segments and an eager cleaner make the broker compact soon.
    cfg.runtime.retention = Duration::from_secs(1);
    cfg.topics.changelog_config = [
        ("segment.ms", "300"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "500"),
        ("min.compaction.lag.ms", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let t = create_input(&cfg);
    let (seen, stop_collector) = collector(&broker.bootstrap, &t.commands);
    let a = Running::with(cfg.clone(), example(&t));
    let stop_services = services_with(
        &broker.bootstrap,
        &t,
        Behaviour {
            deliver: true,
            ..Behaviour::default()
        },
    );
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    const DONE: u64 = 10;
    for n in 0..DONE {
        producer.send(&t.placed(n)).expect("send");
    }
    producer.flush().expect("flush");
    eventually(120, "the first orders to complete", || {
        (a.stats.completed.load(Ordering::Relaxed) >= DONE).then_some(())
    });
    stop_services.store(true, Ordering::Relaxed);
    // Tombstones of the ended instances, once their retention passed: no
    // ended instance's latest record is a snapshot any more (the broker may
    // already have compacted some tombstones away; it never drops a key's
    // latest snapshot).
    let ended = |k: &str| {
        k.strip_prefix("order-to-cash/o-")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n < DONE)
    };
    let written = eventually(60, "a tombstone for every ended instance", || {
        let log = changelog(&cfg);
        let mut latest: std::collections::BTreeMap<&str, bool> = Default::default();
        for (k, live) in &log {
            latest.insert(k.as_str(), *live);
        }
        (!latest.iter().any(|(k, live)| ended(k) && *live)).then_some(log.len())
    });

    // Orders nobody answers stay active; they keep the changelog growing
    // (new segments) while the broker compacts the older ones.
    let mut sent = DONE;
    let compacted = eventually(120, "the changelog compacted, tombstones removed", || {
        producer.send(&t.placed(sent)).expect("send");
        producer.flush().expect("flush");
        sent += 1;
        std::thread::sleep(Duration::from_millis(400));
        let log = changelog(&cfg);
        (!log.iter().any(|(k, _)| ended(k))).then_some(log)
    });
    a.stop();
    let live: std::collections::BTreeSet<&String> = compacted.iter().map(|(k, _)| k).collect();
    eprintln!(
        "compaction: {written} changelog records when the tombstones were written, {} after compaction",
        compacted.len()
    );
    assert!(
        compacted.iter().all(|(_, live)| *live),
        "no tombstone is left once compacted"
    );
    // What a restore finds after compaction: exactly the active orders.
    let expected = sent - DONE;
    let changelog_now = changelog(&cfg);
    let keys: std::collections::BTreeSet<&String> = changelog_now.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len() as u64, expected, "{keys:?}");
    assert!(live.is_subset(&keys));
    let b = Running::with(cfg.clone(), example(&t));
    eventually(60, "both shards restored", || {
        (b.shards() == 2).then_some(())
    });
    assert_eq!(
        b.stats.restored_instances.load(Ordering::Relaxed),
        expected,
        "the restore after compaction has every active order and no ended one"
    );
    b.stop();
    stop_collector.store(true, Ordering::Relaxed);
    drop(seen);
}
