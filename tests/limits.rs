//! Bounded resources against the real broker: a shard that holds its cap of
//! instances turns events for new instances into dead letters (kind
//! `instance-cap`, with the reason) while the instances it holds go on to
//! their end; once they have left memory, new instances start again. No
//! event is lost on the way and the partition never stops.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use baton::kafka::{self, PlainProducer};
use support::admin::{parse_metrics, sum};
use support::orders::{Behaviour, config, create_input, header, services_with};
use support::running::{Running, committed, example, orders_with};
use support::{Broker, eventually, unique};

const CAP: usize = 10;
const FIRST: u64 = 30;

fn metric(r: &Running, name: &str) -> f64 {
    let m = parse_metrics(&r.stats.metrics.encode()).expect("metrics parse");
    sum(&m, name, &[])
}

#[test]
fn a_shard_at_its_instance_cap_refuses_new_instances_and_serves_the_ones_it_holds() {
    let broker = Broker::start();
    let group = unique("cap");
    let mut cfg = config(&broker.bootstrap, &group, "cap-1");
    cfg.topics.partitions = 1;
    cfg.runtime.in_place = true;
    cfg.runtime.max_instances_per_shard = CAP;
    // Ended instances leave memory soon after they end.
    cfg.runtime.retention = Duration::from_secs(2);
    let t = create_input(&cfg);
    let r = Running::with(cfg.clone(), example(&t));
    eventually(60, "the shard to be owned", || {
        (r.shards() == 1).then_some(())
    });

    // Nobody answers yet: every order that starts waits for its reservation.
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    let send = |n: u64| {
        let mut o = t.placed(n);
        o.key = format!("o-{n}").into_bytes();
        producer.send(&o).expect("send");
    };
    (0..FIRST).for_each(send);
    producer.flush().expect("flush");
    let dead = eventually(60, "the orders beyond the cap as dead letters", || {
        let d = kafka::read_partition(&cfg, &cfg.topics.dead_letters(), 0).ok()?;
        (d.len() as u64 >= FIRST - CAP as u64).then_some(d)
    });
    assert_eq!(r.index.len(), CAP, "the shard holds its cap, no more");
    assert_eq!(metric(&r, "baton_shards_full"), 1.0);
    let mut refused = BTreeSet::new();
    for d in &dead {
        assert_eq!(header(d, "baton.dlq.kind").as_deref(), Some("instance-cap"));
        let reason = header(d, "baton.dlq.reason").unwrap_or_default();
        assert!(
            reason.contains("its shard holds its cap of 10 instances"),
            "{reason}"
        );
        refused.insert(reason);
    }
    assert_eq!(
        refused.len() as u64,
        FIRST - CAP as u64,
        "each refused once"
    );

    // The services answer: the instances held complete (their answers pass
    // while the shard is full), leave memory, and new orders start again.
    let stop = services_with(
        &broker.bootstrap,
        &t,
        Behaviour {
            deliver: true,
            ..Behaviour::default()
        },
    );
    let read = || committed(&cfg, &t.commands, 1).unwrap_or_default();
    eventually(120, "the orders held to be invoiced", || {
        (orders_with(&read(), "com.acme.invoice.create") >= CAP).then_some(())
    });
    eventually(60, "the shard to be below its cap again", || {
        (metric(&r, "baton_shards_full") == 0.0).then_some(())
    });
    (FIRST..FIRST + 5).for_each(send);
    producer.flush().expect("flush");
    eventually(120, "the later orders to be invoiced", || {
        (orders_with(&read(), "com.acme.invoice.create") >= CAP + 5).then_some(())
    });
    let all = read();
    // Every command id once; the orders held and the later ones complete.
    let held: Vec<_> = all
        .iter()
        .filter(|m| {
            header(m, "ce_id").is_some_and(|id| {
                (0..CAP as u64)
                    .chain(FIRST..FIRST + 5)
                    .any(|n| id.starts_with(&format!("order-to-cash/o-{n}/")))
            })
        })
        .cloned()
        .collect();
    let ids: Vec<String> = all.iter().filter_map(|m| header(m, "ce_id")).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a command twice: {ids:?}");
    assert_eq!(orders_with(&held, "com.acme.invoice.create"), CAP + 5);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    r.stop();
}

#[test]
fn a_transaction_commits_when_it_holds_its_cap_of_records() {
    let broker = Broker::start();
    let group = unique("inflight");
    let mut cfg = config(&broker.bootstrap, &group, "inflight-1");
    cfg.topics.partitions = 1;
    // Nothing would commit for two minutes but for the record cap.
    cfg.runtime.commit_interval = Duration::from_secs(120);
    cfg.runtime.max_in_flight_records = 1;
    let t = create_input(&cfg);
    let r = Running::with(cfg.clone(), example(&t));
    eventually(60, "the shard to be owned", || {
        (r.shards() == 1).then_some(())
    });
    let stop = services_with(&broker.bootstrap, &t, Behaviour::default());
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in 0..3 {
        producer.send(&t.placed(n)).expect("send");
    }
    producer.flush().expect("flush");
    let all = eventually(
        60,
        "three orders invoiced long before the commit interval",
        || {
            let all = committed(&cfg, &t.commands, 1)?;
            (orders_with(&all, "com.acme.invoice.create") >= 3).then_some(all)
        },
    );
    let ids: Vec<String> = all.iter().filter_map(|m| header(m, "ce_id")).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a command twice: {ids:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    r.stop();
}
