//! Exactly-once defects found on the way, each reproduced on Apache Kafka:
//! these tests failed before their fix.

mod support;

use std::sync::atomic::Ordering;

use baton::config::Config;
use baton::kafka::{self, PlainProducer};
use baton::runtime::shard_of;
use serde_json::json;
use support::orders::{Topics, config, create_input, placed_on};
use support::running::Running;
use support::{Broker, eventually, unique};

fn committed_inputs(cfg: &Config, t: &Topics) -> std::collections::BTreeMap<(String, i32), i64> {
    kafka::committed_offsets(cfg, &[(t.input.clone(), 0), (t.input.clone(), 1)])
        .expect("committed offsets")
}

/// A runtime error in the middle of a batch (here: a record larger than the
/// producer may send) used to drop the runtime, whose consumer's revocation
/// hook then committed the open transaction: all of the batch's input
/// offsets with only the records produced before the error.
#[test]
fn a_runtime_error_aborts_the_batch_it_cut_short() {
    let broker = Broker::start();
    let group = unique("halfdone");
    let mut cfg = config(&broker.bootstrap, &group, "a");
    // baton may produce records up to 300 kB; the broker takes 1 MB.
    cfg.kafka
        .options
        .insert("message.max.bytes".into(), "300000".into());
    let t = create_input(&cfg);
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    let mut big = placed_on(&t.input, 1);
    let lines: Vec<serde_json::Value> = (0..20_000)
        .map(|i| json!({"sku": format!("sku-{i:08}"), "qty": 1}))
        .collect();
    let data =
        json!({"orderId": "o-1", "customerId": "c-1", "total": 1, "lines": lines, "address": "x"});
    big.payload = Some(baton::wire::cloudevents::structured(
        "placed-1",
        "com.acme.order.placed",
        "test",
        0,
        &data,
    ));
    // One batch: a good order, the oversized one, another good one, all on partition 0.
    for mut r in [t.placed(0), big, t.placed(2)] {
        r.partition = Some(0);
        producer.send(&r).expect("send");
    }
    producer.flush().expect("flush");

    let runtime = Running::start(cfg.clone());
    eventually(60, "the runtime to fail on the oversized record", || {
        runtime.ended().then_some(())
    });
    let err = runtime.join().expect_err("the runtime stops with an error");
    assert!(
        err.to_string().contains("produce to"),
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
