//! Crash test: `baton run` is killed with SIGKILL at random points while
//! orders flow, several times, and restarted each time. Afterwards every order
//! has completed and every command is present exactly once in what a correct
//! read_committed consumer sees (checked by the test's own oracle, since the
//! test broker does not hide aborted records).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use baton::config::{self, Config};
use baton::kafka::{self, Outgoing, PlainProducer};
use support::orders::{Topics, services};
use support::{Broker, eventually, oracle, unique};

const PARTITIONS: i32 = 2;
const ORDERS: u64 = 30;

fn write_config(dir: &std::path::Path, bootstrap: &str, group: &str) -> std::path::PathBuf {
    let t = Topics::of(group);
    let examples = t.write_definition(dir);
    let input = &t.input;
    let text = format!(
        r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topics = ["{input}"]
[topics]
prefix = "{group}.baton"
partitions = {PARTITIONS}
[definitions]
paths = ["{}"]
[runtime]
instance_id = "crash-1"
commit_interval = "50ms"
session_timeout = "6s"
# Orders are keyed by event id (re-keyed through the repartition topic), the
# services' answers by order (processed in place): both paths crash.
in_place = true
[admin]
listen = "127.0.0.1:0"
"#,
        examples.display()
    );
    let path = dir.join("baton.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

fn start(config: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("baton starts")
}

/// Committed command ids per type, read through the oracle.
fn committed_commands(bootstrap: &str, t: &Topics) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for topic in &t.commands {
        for p in 0..PARTITIONS {
            for r in oracle::committed(bootstrap, topic, p) {
                let get = |k: &str| {
                    r.headers
                        .iter()
                        .find(|(h, _)| h.as_str() == k)
                        .and_then(|(_, v)| v.as_ref())
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                if let (Some(kind), Some(id)) = (get("ce_type"), get("ce_id")) {
                    out.entry(kind).or_default().push(id);
                }
            }
        }
    }
    out
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

    let mut child = start(&config_path, &log);
    // Wait until baton has created its topics before the services subscribe.
    std::thread::sleep(Duration::from_secs(3));
    let services = services(&broker.bootstrap, &t);
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    let mut sent = 0;
    for round in 0..4 {
        // Orders keep coming while baton runs, then it is killed at a random moment.
        let until = Instant::now() + Duration::from_millis(1500 + next(3000));
        while Instant::now() < until {
            if sent < ORDERS {
                producer.send(&t.placed(sent)).expect("send");
                producer.flush().expect("flush");
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("round {round}: kill -9 after {sent} orders");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        child = start(&config_path, &log);
    }
    while sent < ORDERS {
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
        let c = committed_commands(&broker.bootstrap, &t);
        let invoiced: BTreeSet<&String> = c
            .get("com.acme.invoice.create")
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        (invoiced.len() as u64 >= ORDERS).then_some(c)
    });
    services.store(true, Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    let aborted: usize = t
        .commands
        .iter()
        .flat_map(|t| (0..PARTITIONS).map(move |p| (t, p)))
        .map(|(t, p)| oracle::scan(&broker.bootstrap, t, p).1)
        .sum();
    eprintln!(
        "command records in transactions that never committed (hidden by the oracle): {aborted}"
    );

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
        for n in 0..ORDERS {
            let prefix = format!("order-to-cash/o-{n}/");
            assert!(
                ids.iter().any(|i| i.starts_with(&prefix)),
                "{kind} missing for o-{n}"
            );
        }
    }
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
    let topic = "oracle.check";
    kafka::ensure_topics(&cfg, &[(topic.to_string(), 1, false)]).expect("topic");
    let consumer = kafka::Consumer::new(&cfg, &[topic.to_string()]).expect("consumer");
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
