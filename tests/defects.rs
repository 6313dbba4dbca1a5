//! Exactly-once defects found on the way, each reproduced on Apache Kafka:
//! these tests failed before their fix.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use baton::config::Config;
use baton::kafka::{self, Incoming, PlainProducer};
use baton::runtime::Faults;
use baton::runtime::shard_of;
use serde_json::json;
use support::admin::get;
use support::orders::{Topics, config, create_input, header, placed_on, services};
use support::running::{
    Running, assert_each_command_once, collector, ids_of, orders_with, registry,
};
use support::{Broker, RunConfig, baton_run, eventually, free_addr, unique, write_config};

fn committed_inputs(cfg: &Config, t: &Topics) -> std::collections::BTreeMap<(String, i32), i64> {
    kafka::committed_offsets(cfg, &[(t.input.clone(), 0), (t.input.clone(), 1)])
        .expect("committed offsets")
}

/// A runtime error in the middle of a batch (seen: a record larger than the
/// producer may send; here an injected produce failure) used to drop the
/// runtime, whose consumer's revocation hook then committed the open
/// transaction: all of the batch's input offsets with only the records
/// produced before the error.
#[test]
fn a_runtime_error_aborts_the_batch_it_cut_short() {
    let broker = Broker::start();
    let group = unique("halfdone");
    let cfg = config(&broker.bootstrap, &group, "a");
    let t = create_input(&cfg);
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    // One batch of three orders on partition 0; the second forward fails.
    for n in 0..3 {
        let mut r = t.placed(n);
        r.partition = Some(0);
        producer.send(&r).expect("send");
    }
    producer.flush().expect("flush");
    let faults = Faults {
        send_fails_after: Some(1),
        ..Faults::default()
    };
    let runtime = Running::faulty(cfg.clone(), registry(&t), faults);
    eventually(60, "the runtime to fail on the produce error", || {
        runtime.ended().then_some(())
    });
    let err = runtime.join().expect_err("the runtime stops with an error");
    assert!(
        err.to_string().contains("produce fails"),
        "unexpected error: {err}"
    );
    assert!(
        committed_inputs(&cfg, &t).is_empty(),
        "input offsets were committed for a batch that did not complete: {:?}",
        committed_inputs(&cfg, &t)
    );
    for p in 0..2 {
        let forwarded = kafka::read_partition(&cfg, &cfg.topics.repartition(), p).expect("read");
        assert!(
            forwarded.is_empty(),
            "records of the unfinished batch were committed to the repartition topic: {}",
            forwarded.len()
        );
    }
}

/// An order of 600 kB with records limited to 300 kB: forwarding it failed
/// the whole batch (and the dead letter, a copy of it, could not be written
/// either). Now it goes to the dead-letter topic with its head and the
/// reason, and the orders around it flow. A record whose processing would
/// produce an oversized command is dead-lettered too, and its instance gets
/// an incident naming it.
#[test]
fn records_too_large_for_the_broker_are_dead_lettered_and_the_partition_flows() {
    let broker = Broker::start();
    let group = unique("oversized");
    let mut cfg = config(&broker.bootstrap, &group, "a");
    cfg.kafka
        .options
        .insert("message.max.bytes".into(), "300000".into());
    let t = create_input(&cfg);
    let dlq = cfg.topics.dead_letters();
    let mut topics = t.commands.clone();
    topics.push(dlq.clone());
    let (seen, stop_collector) = collector(&broker.bootstrap, &topics);
    let services = services(&broker.bootstrap, &t);
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    let items = |n: usize| -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| json!({"sku": format!("sku-{i:08}"), "qty": 1}))
            .collect()
    };
    let event = |id: &str, kind: &str, data: serde_json::Value| {
        let mut r = placed_on(&t.input, 0);
        r.key = id.as_bytes().to_vec();
        r.partition = Some(0);
        r.payload = Some(baton::wire::cloudevents::structured(
            id, kind, "test", 0, &data,
        ));
        r
    };
    let big = event(
        "placed-1",
        "com.acme.order.placed",
        json!({"orderId": "o-1", "customerId": "c-1", "total": 1, "lines": items(20_000), "address": "x"}),
    );
    let big_size = big.payload.as_ref().map_or(0, Vec::len);
    // One batch: a good order, the oversized one, another good one.
    for mut r in [t.placed(0), big, t.placed(2)] {
        r.partition = Some(0);
        producer.send(&r).expect("send");
    }
    // A bulk order whose command doubles what its second event brings.
    producer
        .send(&event(
            "bulk-opened",
            "com.acme.bulk.opened",
            json!({"id": "b-1"}),
        ))
        .expect("send");
    producer.flush().expect("flush");

    let mut registry = registry(&t);
    let bulky = format!(
        "process: bulky\nversion: 1\nstart:\n  on: com.acme.bulk.opened\n  key: event.data.id\ncorrelate:\n  \"com.acme.bulk.*\": event.data.id\nsteps:\n  - id: fill\n    await:\n      - on: com.acme.bulk.filled\n        set: {{ items: event.data.items }}\n  - id: order\n    command:\n      topic: {}\n      type: com.acme.bulk.order\n      data: {{ a: vars.items, b: vars.items }}\n",
        t.commands[0]
    );
    registry
        .deploy(
            baton::dsl::parse("bulky.yaml", &bulky).expect("valid"),
            &bulky,
        )
        .expect("deploy");
    let runtime = Running::with(cfg.clone(), registry);
    eventually(60, "the bulk order to start", || {
        (runtime.stats.transactions.load(Ordering::Relaxed) > 0).then_some(())
    });
    // 160 kB of items: forwarded fine, but the command would carry 320 kB.
    producer
        .send(&event(
            "bulk-filled",
            "com.acme.bulk.filled",
            json!({"id": "b-1", "items": items(5_000)}),
        ))
        .expect("send");
    producer.flush().expect("flush");

    let all = eventually(120, "two invoices and two dead letters", || {
        let v = seen.lock().ok()?.clone();
        let dead = v.iter().filter(|m| m.topic == dlq).count();
        (orders_with(&v, "com.acme.invoice.create") >= 2 && dead >= 2).then_some(v)
    });
    assert!(!runtime.ended(), "the runtime stopped");
    let dead: Vec<&Incoming> = all.iter().filter(|m| m.topic == dlq).collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert_eq!(header(d, "baton.dlq.kind").as_deref(), Some("oversized"));
        let reason = header(d, "baton.dlq.reason").unwrap_or_default();
        assert!(reason.contains("above the limit of"), "{reason}");
    }
    let order = dead
        .iter()
        .find(|m| m.key.as_deref() == Some(&b"placed-1"[..]))
        .expect("the oversized order");
    assert_eq!(
        header(order, "baton.dlq.truncated"),
        Some(big_size.to_string())
    );
    assert!(order.payload.as_ref().map_or(0, Vec::len) <= 4096);
    assert_eq!(header(order, "baton.dlq.offset").as_deref(), Some("1"));
    assert!(
        dead.iter()
            .any(|m| m.key.as_deref() == Some(&b"bulky/b-1"[..])),
        "{dead:?}"
    );
    for n in [0, 2] {
        assert!(
            ids_of(&all, "com.acme.invoice.create")
                .contains(&format!("order-to-cash/o-{n}/invoice/1")),
            "o-{n} did not flow"
        );
    }
    assert!(ids_of(&all, "com.acme.bulk.order").is_empty());
    // The bulk order is parked with an incident that names the event.
    let id = "bulky/b-1";
    let inst = eventually(30, "the incident in the changelog", || {
        let records = kafka::read_partition(&cfg, &cfg.topics.changelog(), shard_of(id, 2)).ok()?;
        let last = records
            .iter()
            .rev()
            .find(|m| m.key.as_deref() == Some(id.as_bytes()))?;
        let (_, inst) = baton::wire::decode_changelog(last.payload.as_deref()?).ok()?;
        (!inst.incidents.is_empty()).then_some(inst)
    });
    assert!(
        inst.incidents[0].reason.contains("bulk-filled")
            && inst.incidents[0].reason.contains("above the limit"),
        "{:?}",
        inst.incidents
    );
    stop_collector.store(true, Ordering::Relaxed);
    services.store(true, Ordering::Relaxed);
    runtime.stop();
}

/// In place, an input's offset was recorded once when it was read and again
/// when its shard processed it, overwriting the offset of a later record of
/// the same partition that took the repartition hop: the committed offset
/// went back, and that record was processed again after a restart.
#[test]
fn committed_input_offsets_only_move_forward() {
    let broker = Broker::start();
    let group = unique("forward");
    let mut cfg = config(&broker.bootstrap, &group, "a");
    cfg.runtime.in_place = true;
    let t = create_input(&cfg);
    let id = |k: &str| format!("order-to-cash/{k}");
    // An order keyed by itself (processed in place on its partition p)…
    let p = shard_of(&id("o-0"), 2);
    // …then, on the same partition, an order keyed by something else whose
    // instance lives on the other shard (it takes the hop).
    let n = (1..100)
        .find(|n| shard_of(&id(&format!("o-{n}")), 2) != p)
        .expect("an order of the other shard");
    let key = (0..100)
        .map(|i| format!("k-{i}"))
        .find(|k| shard_of(&id(k), 2) == p)
        .expect("a key of partition p");
    // Both shards owned first: an input partition assigned before its shard
    // would send the first record through the repartition topic as well.
    let runtime = Running::start(cfg.clone());
    eventually(60, "both shards owned", || {
        (runtime.shards() == 2).then_some(())
    });
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    let mut first = t.placed(0);
    first.key = b"o-0".to_vec();
    let mut second = t.placed(n);
    second.key = key.into_bytes();
    for r in [first, second] {
        producer.send(&r).expect("send");
    }
    producer.flush().expect("flush");
    eventually(60, "one event in place and one forwarded", || {
        (runtime.stats.in_place.load(Ordering::Relaxed) >= 1
            && runtime.stats.forwarded.load(Ordering::Relaxed) >= 1
            && runtime.stats.transactions.load(Ordering::Relaxed) >= 1)
            .then_some(())
    });
    runtime.stop();
    assert_eq!(
        committed_inputs(&cfg, &t)
            .get(&(t.input.clone(), p))
            .copied(),
        Some(2),
        "both records of partition {p} were processed: the committed offset is past the second"
    );
}

/// Snapshots index steps by number: an instance restored under a definition
/// whose file was edited without a new version would resume at the wrong
/// step. The restore refuses it, and says what to do.
#[test]
fn a_snapshot_of_an_edited_definition_version_is_refused_on_restore() {
    let broker = Broker::start();
    let group = unique("edited");
    let cfg = config(&broker.bootstrap, &group, "a");
    let t = create_input(&cfg);
    let changelog = cfg.topics.changelog();
    kafka::ensure_topics(&cfg, &[(changelog.clone(), 2, true)]).expect("changelog");
    // An instance left by a process that ran other content as version 1.
    let mut inst = baton::engine::Instance::new("order-to-cash", 1, "o-9");
    inst.status = baton::engine::Status::Active;
    inst.definition = "00000000deadbeef".into();
    let id = "order-to-cash/o-9";
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    producer
        .send(&baton::kafka::Outgoing {
            topic: changelog,
            partition: Some(shard_of(id, 2)),
            key: id.as_bytes().to_vec(),
            payload: Some(baton::wire::encode_changelog(0, &inst)),
            headers: Vec::new(),
        })
        .expect("send");
    producer.flush().expect("flush");
    drop(t);

    let runtime = Running::start(cfg);
    eventually(60, "the runtime to refuse the snapshot", || {
        runtime.ended().then_some(())
    });
    let err = runtime
        .join()
        .expect_err("the restore is refused")
        .to_string();
    for part in [
        "order-to-cash/o-9",
        "order-to-cash version 1",
        "edited without a new version",
        "as version 2",
    ] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
}

/// Readiness answered 200 once the consumer had its first assignment, which
/// may be empty while the group still moves: here both shards are still held
/// by a member that was killed and whose session has not expired. Ready now
/// means the group has settled and every assigned shard is restored.
#[test]
fn readiness_waits_until_the_group_has_settled() {
    let broker = Broker::start();
    let group = unique("settle");
    let dir = broker.dir.join(&group);
    std::fs::create_dir_all(&dir).expect("dir");
    let admin = free_addr();
    let cfg_a = write_config(
        &dir,
        &RunConfig {
            bootstrap: &broker.bootstrap,
            group: &group,
            instance: "a",
            partitions: 2,
            in_place: false,
            admin: admin.to_string(),
            extra: "",
        },
    );
    let cfg = config(&broker.bootstrap, &group, "b");
    create_input(&cfg);
    let mut a = baton_run(&cfg_a, &dir.join("a.log"));
    eventually(60, "the first process to be ready", || {
        get(admin, "/readyz").filter(|(s, _)| *s == 200).map(|_| ())
    });
    a.kill().expect("kill");
    a.wait().expect("reaped");
    let killed = Instant::now();

    let b = Running::start(cfg.clone());
    let mut reasons = BTreeSet::new();
    let r = eventually(60, "the second process to be ready", || {
        let r = b.health.readiness();
        if let Some(why) = &r.group {
            reasons.insert(why.clone());
        }
        r.ready().then_some(r)
    });
    eprintln!(
        "ready {} ms after the other member was killed; meanwhile: {reasons:?}",
        killed.elapsed().as_millis()
    );
    assert_eq!(
        r.shards,
        vec![0, 1],
        "ready while the dead member still held shards: {r:?}"
    );
    assert!(!reasons.is_empty(), "not ready, but /readyz never said why");

    // Static membership: a process that leaves and comes back under its
    // instance id gets its shards back without waiting for a session timeout.
    b.stop();
    let left = Instant::now();
    let mut cfg = cfg;
    cfg.runtime.static_membership = true;
    let b = Running::start(cfg);
    let r = eventually(60, "the restarted process to be ready", || {
        let r = b.health.readiness();
        r.ready().then_some(r)
    });
    eprintln!(
        "restart to ready (static member): {} ms",
        left.elapsed().as_millis()
    );
    assert_eq!(r.shards, vec![0, 1]);
    b.stop();
}

/// A shard worker that panicked lost the records its shard produced in that
/// batch while the batch's input offsets were committed. Now the batch is
/// aborted and processed again; a record that panics twice the same way is
/// dead-lettered, and everything else goes on.
#[test]
fn a_panicking_shard_loses_nothing_and_a_record_that_panics_twice_is_dead_lettered() {
    let dead = six_orders_with_a_poison(
        "panic",
        Faults {
            // Once: processing it again succeeds. Always: it is poison.
            panic_on_event: [("placed-3".to_string(), 1), ("placed-5".to_string(), 1000)].into(),
            ..Faults::default()
        },
    );
    assert_eq!(dead.key.as_deref(), Some(&b"order-to-cash/o-5"[..]));
    let reason = header(&dead, "baton.dlq.reason").unwrap_or_default();
    assert!(
        reason.contains("panicked twice") && reason.contains("panic on event placed-5"),
        "{reason}"
    );
}

/// A panic while an input was routed (decoded, correlated, before any shard)
/// unwound through the processing loop and ended the runtime; restarted, it
/// met the same record again, so one poison event stopped its partition for
/// good. Now routing is guarded like a shard: the batch is aborted and
/// processed again, and a record that panics twice is dead-lettered.
#[test]
fn a_panic_while_routing_an_input_loses_nothing_and_a_poison_input_is_dead_lettered() {
    let dead = six_orders_with_a_poison(
        "routepanic",
        Faults {
            // Once: routing it again succeeds. Always: it is poison.
            panic_on_routing: [("placed-2".to_string(), 1), ("placed-5".to_string(), 1000)].into(),
            ..Faults::default()
        },
    );
    assert_eq!(dead.key.as_deref(), Some(&b"placed-5"[..]));
    assert_eq!(header(&dead, "baton.dlq.kind").as_deref(), Some("panic"));
    let reason = header(&dead, "baton.dlq.reason").unwrap_or_default();
    assert!(
        reason.contains("panicked twice") && reason.contains("panic routing event placed-5"),
        "{reason}"
    );
}

/// Orders o-0 … o-5 through a runtime with `faults` that make o-5 poison:
/// the other five are invoiced with every command once, o-5 never starts,
/// and its one dead letter is returned.
fn six_orders_with_a_poison(name: &str, faults: Faults) -> Incoming {
    let broker = Broker::start();
    let group = unique(name);
    let cfg = config(&broker.bootstrap, &group, "a");
    let t = create_input(&cfg);
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in 0..6 {
        producer.send(&t.placed(n)).expect("send");
    }
    producer.flush().expect("flush");
    let dlq = cfg.topics.dead_letters();
    let mut topics = t.commands.clone();
    topics.push(dlq.clone());
    let (seen, stop_collector) = collector(&broker.bootstrap, &topics);
    let services = services(&broker.bootstrap, &t);
    let runtime = Running::faulty(cfg, registry(&t), faults);
    let all = eventually(120, "five invoices and the poison dead-lettered", || {
        let v = seen.lock().ok()?.clone();
        let dead = v.iter().any(|m| m.topic == dlq);
        (orders_with(&v, "com.acme.invoice.create") >= 5 && dead).then_some(v)
    });
    assert_each_command_once(&all, 5);
    let dead: Vec<&Incoming> = all.iter().filter(|m| m.topic == dlq).collect();
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    assert!(
        all.iter().all(
            |m| !String::from_utf8_lossy(m.key.as_deref().unwrap_or_default()).contains("o-5")
                || m.topic == dlq
        ),
        "the poison order started"
    );
    let letter = dead[0].clone();
    stop_collector.store(true, Ordering::Relaxed);
    services.store(true, Ordering::Relaxed);
    runtime.stop();
    letter
}

/// After a failed transaction, input partitions were rewound to their
/// committed offsets only where one existed: records of a partition's first
/// transaction were skipped, never processed. Now an input partition without
/// a committed offset goes back to its log start.
#[test]
fn a_failed_first_transaction_is_processed_again_from_the_log_start() {
    let broker = Broker::start();
    let group = unique("firstfail");
    let cfg = config(&broker.bootstrap, &group, "a");
    let t = create_input(&cfg);
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in 0..4 {
        producer.send(&t.placed(n)).expect("send");
    }
    producer.flush().expect("flush");
    let (seen, stop_collector) = collector(&broker.bootstrap, &t.commands);
    let services = services(&broker.bootstrap, &t);
    let faults = Faults {
        failed_commits: 1,
        ..Faults::default()
    };
    let runtime = Running::faulty(cfg, registry(&t), faults);
    let all = eventually(90, "four invoices", || {
        let v = seen.lock().ok()?.clone();
        (orders_with(&v, "com.acme.invoice.create") >= 4).then_some(v)
    });
    assert_each_command_once(&all, 4);
    assert!(runtime.stats.transactions.load(Ordering::Relaxed) > 0);
    stop_collector.store(true, Ordering::Relaxed);
    services.store(true, Ordering::Relaxed);
    runtime.stop();
}
