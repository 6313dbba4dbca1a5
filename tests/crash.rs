//! Crash test: `baton run` is killed with SIGKILL at random points while
//! orders flow, at least ten times, and restarted each time. Afterwards every
//! order has completed and every command is present exactly once in what a
//! plain read_committed consumer sees; the test's raw-batch oracle, which
//! applies the transaction markers itself, agrees with it record for record.
//!
//! `BATON_CRASH_KILLS` and `BATON_CRASH_ORDERS` make the run longer
//! (`scripts/crash-loop.sh`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use baton::config::{self, Config};
use baton::kafka::{self, Outgoing, PlainProducer};
use support::orders::{Topics, services};
use support::{Broker, eventually, oracle, setting, unique};

const PARTITIONS: i32 = 2;

/// Orders are keyed by event id (re-keyed through the repartition topic), the
/// services' answers by order (processed in place): both paths crash.
fn write_config(dir: &std::path::Path, bootstrap: &str, group: &str) -> std::path::PathBuf {
    support::write_config(
        dir,
        &support::RunConfig {
            bootstrap,
            group,
            instance: "crash-1",
            partitions: PARTITIONS,
            in_place: true,
            admin: "127.0.0.1:0".into(),
            // Records up to 300 kB: the oversized order in the stream is more.
            extra: "[kafka.producer_options]\n\"message.max.bytes\" = \"300000\"\n",
        },
    )
}

/// An order of 400 kB (above the 300 kB records may have) and 2 kB of non-JSON.
fn poison(input: &str) -> [Outgoing; 2] {
    let lines: Vec<serde_json::Value> = (0..13_000)
        .map(|i| serde_json::json!({"sku": format!("sku-{i:08}"), "qty": 1}))
        .collect();
    let data = serde_json::json!({"orderId": "o-big", "customerId": "c-1", "total": 1, "lines": lines, "address": "x"});
    let big = Outgoing {
        topic: input.into(),
        partition: None,
        key: b"placed-big".to_vec(),
        payload: Some(baton::wire::cloudevents::structured(
            "placed-big",
            "com.acme.order.placed",
            "test",
            0,
            &data,
        )),
        headers: Vec::new(),
    };
    let junk = Outgoing {
        topic: input.into(),
        partition: None,
        key: b"junk".to_vec(),
        payload: Some(vec![b'#'; 2048]),
        headers: Vec::new(),
    };
    [big, junk]
}

/// Committed command ids per type, as a plain read_committed consumer reads them.
fn committed_commands(cfg: &Config, t: &Topics) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for topic in &t.commands {
        for p in 0..PARTITIONS {
            for r in kafka::read_partition(cfg, topic, p).expect("read_committed read") {
                let get = |k: &str| {
                    r.headers
                        .iter()
                        .find(|(h, _)| h.as_str() == k)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                };
                if let (Some(kind), Some(id)) = (get("ce_type"), get("ce_id")) {
                    out.entry(kind).or_default().push(id);
                }
            }
        }
    }
    out
}

/// A record as both readers see it: offset, key, value.
type Seen = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// The read_committed consumer and the oracle see the same records of
/// `topic`/`p`: same offsets, keys and values. Returns how many.
fn consumer_agrees_with_oracle(cfg: &Config, bootstrap: &str, topic: &str, p: i32) -> usize {
    let consumer: Vec<Seen> = kafka::read_partition(cfg, topic, p)
        .expect("read_committed read")
        .into_iter()
        .map(|r| (r.offset, r.key, r.payload))
        .collect();
    let oracle: Vec<Seen> = oracle::committed(bootstrap, topic, p)
        .into_iter()
        .map(|r| {
            (
                r.offset,
                r.key.map(|k| k.to_vec()),
                r.value.map(|v| v.to_vec()),
            )
        })
        .collect();
    assert_eq!(
        consumer.len(),
        oracle.len(),
        "{topic}/{p}: the read_committed consumer and the oracle disagree on how many records committed"
    );
    for (c, o) in consumer.iter().zip(&oracle) {
        assert_eq!(
            c, o,
            "{topic}/{p}: the consumer and the oracle disagree at offset {}",
            c.0
        );
    }
    consumer.len()
}

#[test]
fn killing_baton_mid_stream_loses_and_duplicates_no_command() {
    let broker = Broker::start();
    let group = unique("crash");
    let dir = broker.dir.join("baton");
    std::fs::create_dir_all(&dir).expect("dir");
    let config_path = write_config(&dir, &broker.bootstrap, &group);
    let log = dir.join("baton.log");
    let cfg = Config::load(
        "baton.toml",
        &std::fs::read_to_string(&config_path).expect("config"),
        [],
    )
    .expect("valid config");
    let t = Topics::of(&group);
    kafka::ensure_topics(&cfg, &[(t.input.clone(), PARTITIONS, false)]).expect("input topic");
    let _ = config::Topics::default();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = seed;
    let mut next = move |max: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % max
    };

    let kills = setting("BATON_CRASH_KILLS", 10);
    let orders = setting("BATON_CRASH_ORDERS", 100);
    let mut child = support::baton_run(&config_path, &log);
    // Wait until baton has created its topics before the services subscribe.
    std::thread::sleep(Duration::from_secs(3));
    let services = services(&broker.bootstrap, &t);
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    let mut sent = 0;
    // Orders are spread over the kills, so they keep coming the whole time.
    let per_round = orders.div_ceil(kills + 1);
    let restores = || {
        std::fs::read_to_string(&log)
            .map(|t| t.matches("shard restored").count())
            .unwrap_or(0)
    };
    let mut resumed_ms = Vec::new();
    // Restores logged before the current process started.
    let mut before = 0;
    let mut killed_at = Instant::now();
    for round in 0..kills {
        // Orders keep coming; once this process has restored a shard (it is
        // processing), it is killed at a random moment.
        let give_up = Instant::now() + Duration::from_secs(90);
        let mut kill_at: Option<Instant> = None;
        let mut this_round = 0;
        loop {
            if sent < orders && this_round < per_round {
                producer.send(&t.placed(sent)).expect("send");
                producer.flush().expect("flush");
                sent += 1;
                this_round += 1;
            }
            if kill_at.is_none() && restores() > before {
                if round > 0 {
                    resumed_ms.push(killed_at.elapsed().as_millis() as u64);
                }
                kill_at = Some(Instant::now() + Duration::from_millis(100 + next(2500)));
            }
            if kill_at.is_some_and(|k| Instant::now() >= k) {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "round {round}: the restarted process restored no shard within 90 s (log: {})",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if round == kills / 2 {
            // Mid-run: an order too large for the broker, and one that is not JSON.
            for r in poison(&t.input) {
                producer.send(&r).expect("send");
            }
            producer.flush().expect("flush");
        }
        eprintln!("round {round}: kill -9 after {sent} orders");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        killed_at = Instant::now();
        before = restores();
        child = support::baton_run(&config_path, &log);
    }
    while sent < orders {
        producer.send(&t.placed(sent)).expect("send");
        sent += 1;
    }
    producer.flush().expect("flush");

    let deadline = Instant::now() + Duration::from_secs(240);
    let commands = eventually(250, "every order to be invoiced", || {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            let kept = std::env::temp_dir().join("baton-crash-test.log");
            let _ = std::fs::write(&kept, &text);
            panic!(
                "not every order was invoiced within 240 s; baton's log is kept at {}, its end:\n{}",
                kept.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let c = committed_commands(&cfg, &t);
        let invoiced: BTreeSet<&String> = c
            .get("com.acme.invoice.create")
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        (invoiced.len() as u64 >= orders).then_some(c)
    });
    services.store(true, Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    let aborted = oracle::aborted(&broker.bootstrap, &t.commands, PARTITIONS);
    eprintln!(
        "command records in transactions that never committed (hidden by the broker and the oracle): {aborted}"
    );
    let mut checked = 0;
    for topic in &t.commands {
        for p in 0..PARTITIONS {
            checked += consumer_agrees_with_oracle(&cfg, &broker.bootstrap, topic, p);
        }
    }

    // Both paths were exercised: committed snapshots written by records
    // processed in place (source: the input topic) and by re-keyed ones.
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for r in oracle::committed(&broker.bootstrap, &cfg.topics.changelog(), p) {
            if let Some(v) = r.value.as_ref()
                && let Ok((source, _, _)) = baton::wire::decode_changelog_at(v)
            {
                *sources.entry(source).or_default() += 1;
            }
        }
    }
    assert!(
        sources.get(&t.input).is_some_and(|n| *n > 0) && sources.get("").is_some_and(|n| *n > 0),
        "snapshots by source: {sources:?}"
    );
    eprintln!("committed snapshots by source: {sources:?}");

    for (kind, ids) in &commands {
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{kind}: a committed command appears twice: {ids:?}\n(log: {})",
            log.display()
        );
    }
    for kind in [
        "com.acme.inventory.reserve",
        "com.acme.payment.charge",
        "com.acme.shipment.create",
        "com.acme.invoice.create",
    ] {
        let ids = commands.get(kind).cloned().unwrap_or_default();
        for n in 0..orders {
            let prefix = format!("order-to-cash/o-{n}/");
            assert!(
                ids.iter().any(|i| i.starts_with(&prefix)),
                "{kind} missing for o-{n}"
            );
        }
    }
    // Each input was processed once: one committed forward (or dead letter)
    // per input record, whatever the kills did.
    let mut twice = 0;
    let mut origins = BTreeSet::new();
    for p in 0..PARTITIONS {
        for r in kafka::read_partition(&cfg, &cfg.topics.repartition(), p).expect("read") {
            let record = baton::wire::decode_shard(r.payload.as_deref().unwrap_or_default())
                .expect("a shard record");
            if let baton::wire::ShardInputKind::Event {
                origin: Some(o), ..
            } = record.input
                && !origins.insert((o.topic, o.partition, o.offset))
            {
                twice += 1;
            }
        }
    }
    let mut dead = BTreeMap::new();
    for p in 0..PARTITIONS {
        for r in kafka::read_partition(&cfg, &cfg.topics.dead_letters(), p).expect("read") {
            let get = |k: &str| {
                r.headers
                    .iter()
                    .find(|(h, _)| h.as_str() == k)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let at = format!("{}/{}", get("baton.dlq.partition"), get("baton.dlq.offset"));
            *dead.entry((get("baton.dlq.kind"), at)).or_insert(0) += 1;
        }
    }
    twice += dead.values().filter(|n| **n > 1).count();
    let kinds: BTreeSet<&str> = dead.keys().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["oversized", "undecodable"]),
        "dead letters: {dead:?}"
    );
    assert_eq!(twice, 0, "inputs processed twice; dead letters: {dead:?}");
    let commands_checked: usize = commands.values().map(Vec::len).sum();
    resumed_ms.sort_unstable();
    eprintln!(
        "crash test: {kills} kills, {orders} orders and 2 poison inputs (one oversized), {commands_checked} commands checked ({checked} command records, consumer and oracle agreeing): 0 lost, 0 duplicated, 0 inputs processed twice ({} dead letters, each once); {aborted} command records aborted; kill to first shard restored: median {} ms, max {} ms",
        dead.len(),
        resumed_ms.get(resumed_ms.len() / 2).copied().unwrap_or(0),
        resumed_ms.last().copied().unwrap_or(0)
    );
}

#[test]
fn the_oracle_keeps_committed_and_drops_aborted_transactions() {
    let broker = Broker::start();
    let group = unique("oracle");
    let dir = broker.dir.join("baton");
    std::fs::create_dir_all(&dir).expect("dir");
    let text =
        std::fs::read_to_string(write_config(&dir, &broker.bootstrap, &group)).expect("config");
    let cfg = Config::load("baton.toml", &text, []).expect("valid config");
    let topic = format!("{group}.oracle");
    let topic = topic.as_str();
    kafka::ensure_topics(&cfg, &[(topic.to_string(), 1, false)]).expect("topic");
    let consumer = kafka::Consumer::new(&cfg).expect("consumer");
    consumer.subscribe(&[topic.to_string()]).expect("subscribe");
    let producer =
        kafka::Producer::new(&cfg, &unique("oracle-txn")).expect("transactional producer");
    let record = |v: &str| Outgoing {
        topic: topic.into(),
        partition: Some(0),
        key: v.as_bytes().to_vec(),
        payload: Some(v.as_bytes().to_vec()),
        headers: Vec::new(),
    };
    producer.begin().expect("begin");
    producer.send(&record("aborted")).expect("send");
    producer.abort().expect("abort");
    producer.begin().expect("begin");
    producer.send(&record("committed")).expect("send");
    producer
        .commit(&consumer.inner, &Default::default())
        .expect("commit");
    producer.begin().expect("begin");
    producer.send(&record("still-open")).expect("send");
    std::thread::sleep(Duration::from_secs(1));
    let seen: Vec<String> = eventually(30, "the committed record", || {
        let v: Vec<String> = oracle::committed(&broker.bootstrap, topic, 0)
            .into_iter()
            .filter_map(|r| r.value.map(|v| String::from_utf8_lossy(&v).into_owned()))
            .collect();
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(seen, vec!["committed".to_string()]);
}
