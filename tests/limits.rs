//! Bounded resources against the real broker: a shard that holds its cap of
//! instances turns events for new instances into dead letters (kind
//! `instance-cap`, with the reason) while the instances it holds go on to
//! their end; once they have left memory, new instances start again, and
//! the refused events replayed from the dead-letter topic start theirs. No
//! event is lost on the way and the partition never stops. With
//! `runtime.at_instance_cap = "pause"` the input stops at the first event
//! for a new instance instead, and goes on from it once there is room.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use baton::config::{AtInstanceCap, Config};
use baton::engine::Status;
use baton::kafka::{self, Outgoing, PlainProducer};
use baton::runtime::Faults;
use baton::wire::{self, ActionBody, OperatorRequest};
use support::admin::{parse_metrics, sum};
use support::orders::{Behaviour, Topics, config, create_input, header, services_with};
use support::running::{Running, committed, example, ids_of, orders_with};
use support::{Broker, eventually, unique};

const CAP: usize = 10;
const FIRST: u64 = 30;

fn metric(r: &Running, name: &str) -> f64 {
    let m = parse_metrics(&r.stats.metrics.encode()).expect("metrics parse");
    sum(&m, name, &[])
}

/// One shard with a cap of [`CAP`] instances, processing in place, whose
/// ended instances leave memory soon after they end; `tune` sets the rest.
fn capped(
    name: &str,
    faults: Faults,
    tune: impl FnOnce(&mut Config),
) -> (Broker, Config, Topics, Running) {
    let broker = Broker::start();
    let group = unique(name);
    let mut cfg = config(&broker.bootstrap, &group, &format!("{name}-1"));
    cfg.topics.partitions = 1;
    cfg.runtime.in_place = true;
    cfg.runtime.max_instances_per_shard = CAP;
    cfg.runtime.retention = Duration::from_secs(2);
    tune(&mut cfg);
    let t = create_input(&cfg);
    let r = Running::faulty(cfg.clone(), example(&t), faults);
    eventually(60, "the shard to be owned", || {
        (r.shards() == 1).then_some(())
    });
    (broker, cfg, t, r)
}

/// Places orders o-`n` for each `n`, keyed by the order.
fn place(producer: &PlainProducer, t: &Topics, orders: std::ops::Range<u64>) {
    for n in orders {
        let mut o = t.placed(n);
        o.key = format!("o-{n}").into_bytes();
        producer.send(&o).expect("send");
    }
    producer.flush().expect("flush");
}

#[test]
fn a_shard_at_its_instance_cap_refuses_new_instances_and_serves_the_ones_it_holds() {
    let (broker, cfg, t, r) = capped("cap", Faults::default(), |_| {});
    // Nobody answers yet: every order that starts waits for its reservation.
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    place(&producer, &t, 0..FIRST);
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
    place(&producer, &t, FIRST..FIRST + 5);
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

    // Nothing refused is lost: the letters replayed to where they came from
    // start their orders, as many as the cap lets in; the rest are refused
    // again, and replayed again once those have ended.
    let instance_cap = |from: Option<i64>| baton::deadletters::Filter {
        kinds: vec!["instance-cap".into()],
        from,
        ..Default::default()
    };
    let mut letters = baton::deadletters::read(&cfg, &instance_cap(None)).expect("letters");
    assert_eq!(letters.len() as u64, FIRST - CAP as u64);
    let mut rounds = 0;
    while !letters.is_empty() {
        rounds += 1;
        assert!(rounds <= 4, "replays did not get every order in");
        let end = letters.iter().map(|d| d.offset).max().unwrap_or(0) + 1;
        let before = orders_with(&read(), "com.acme.invoice.create");
        let refused = baton::deadletters::replay(&cfg, &letters).expect("replay");
        assert!(refused.is_empty(), "{refused:?}");
        // The shard takes at most its cap: those orders end, the rest are refused again.
        eventually(120, "the replayed orders admitted to end", || {
            let d = baton::deadletters::read(&cfg, &instance_cap(Some(end))).ok()?;
            let done = orders_with(&read(), "com.acme.invoice.create");
            (done as u64 + d.len() as u64 == (before + letters.len()) as u64).then_some(())
        });
        eventually(60, "the shard to be below its cap again", || {
            (metric(&r, "baton_shards_full") == 0.0).then_some(())
        });
        letters = baton::deadletters::read(&cfg, &instance_cap(Some(end))).expect("letters");
    }
    assert!(rounds >= 2, "the cap held during the replay");
    let all = read();
    assert_eq!(
        orders_with(&all, "com.acme.invoice.create") as u64,
        FIRST + 5,
        "every order, refused or not, invoiced"
    );
    let ids: Vec<String> = all.iter().filter_map(|m| header(m, "ce_id")).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a command twice after the replays");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    r.stop();
}

/// The keys of the instances the index holds with `status`, in order.
fn keys_with(r: &Running, status: Status) -> Vec<u64> {
    let mut keys = Vec::new();
    r.index.scan(|id, e| {
        if e.status == status
            && let Some(n) = id
                .strip_prefix("order-to-cash/o-")
                .and_then(|n| n.parse().ok())
        {
            keys.push(n);
        }
    });
    keys.sort_unstable();
    keys
}

#[test]
fn a_shard_at_its_instance_cap_pauses_its_input_and_goes_on_where_it_stopped() {
    pauses_at_the_cap(Faults::default());
}

/// The same when routing does not see the cap coming: the shard meets it in
/// the middle of a batch, which is aborted and processed again up to there.
#[test]
fn a_shard_meeting_its_cap_mid_batch_pauses_its_input_just_the_same() {
    pauses_at_the_cap(Faults {
        blind_admission: true,
        ..Faults::default()
    });
}

fn pauses_at_the_cap(faults: Faults) {
    let (broker, cfg, t, r) = capped("cap-pause", faults, |cfg| {
        cfg.runtime.at_instance_cap = AtInstanceCap::Pause;
        // Small batches: the cap is met in the middle of the orders sent.
        cfg.runtime.max_batch = 7;
    });
    // Nobody answers: every order that starts waits for its reservation.
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    place(&producer, &t, 0..FIRST);
    let first: Vec<u64> = (0..CAP as u64).collect();
    eventually(60, "the first orders up to the cap to start", || {
        (keys_with(&r, Status::Active) == first).then_some(())
    });
    eventually(30, "the input to stop", || {
        (metric(&r, "baton_inputs_stopped") == 1.0).then_some(())
    });
    assert_eq!(metric(&r, "baton_shards_full"), 1.0);
    // It stays stopped: the shard does not grow, and nothing is refused.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(keys_with(&r, Status::Active), first, "the shard grew");
    let dead = kafka::read_partition(&cfg, &cfg.topics.dead_letters(), 0).unwrap_or_default();
    assert!(dead.is_empty(), "dead letters while paused: {}", dead.len());
    // A process that takes over the partition stops at the same order.
    r.stop();
    let r = Running::with(cfg.clone(), example(&t));
    eventually(60, "the next process to stop at the same order", || {
        (metric(&r, "baton_inputs_stopped") == 1.0 && keys_with(&r, Status::Active) == first)
            .then_some(())
    });

    // An operator cancels the orders held (operator actions go on while the
    // input is stopped); once they have left memory, the input goes on from
    // the order it stopped at, and stops again at the cap.
    for n in 0..CAP as u64 {
        producer.send(&cancel(&cfg, n)).expect("send");
    }
    producer.flush().expect("flush");
    let second: Vec<u64> = (CAP as u64..2 * CAP as u64).collect();
    eventually(60, "the next orders up to the cap to start", || {
        (keys_with(&r, Status::Active) == second).then_some(())
    });
    eventually(30, "the input to stop again", || {
        (metric(&r, "baton_inputs_stopped") == 1.0 && metric(&r, "baton_shards_full") == 1.0)
            .then_some(())
    });

    // Every order that started asked for its reservation once; the orders
    // behind the stop have not started, and nothing was refused.
    let started = eventually(60, "the reservations of the orders started", || {
        let all = committed(&cfg, &t.commands, 1)?;
        let s = reserved(&all);
        (s.len() == 2 * CAP).then_some(s)
    });
    assert_eq!(started, (0..2 * CAP as u64).collect());
    let dead = kafka::read_partition(&cfg, &cfg.topics.dead_letters(), 0).unwrap_or_default();
    assert!(dead.is_empty(), "dead letters: {}", dead.len());
    r.stop();
}

/// An operator's cancel of order o-`n`.
fn cancel(cfg: &Config, n: u64) -> Outgoing {
    Outgoing {
        topic: cfg.topics.operator(),
        partition: None,
        key: format!("order-to-cash/o-{n}").into_bytes(),
        payload: Some(wire::encode_operator(&OperatorRequest {
            v: wire::OPERATOR_FORMAT,
            process: "order-to-cash".into(),
            key: format!("o-{n}"),
            action: ActionBody::Cancel { compensate: false },
            by: "test".into(),
            reason: "make room".into(),
            request: format!("r-{n}"),
        })),
        headers: Vec::new(),
    }
}

/// The orders whose reservation was asked for, each once (it fails on a
/// command committed twice).
fn reserved(commands: &[kafka::Incoming]) -> BTreeSet<u64> {
    let ids: Vec<String> = commands.iter().filter_map(|m| header(m, "ce_id")).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a command twice: {ids:?}");
    ids_of(commands, "com.acme.inventory.reserve")
        .iter()
        .filter_map(|id| {
            id.strip_prefix("order-to-cash/o-")?
                .split('/')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn inputs_of_two_topics_each_stop_at_the_cap_and_go_on_in_order() {
    // The shard's second input topic, with the same partitioning.
    let mut more = String::new();
    // Routing that does not see the cap coming: every stop goes through
    // an aborted batch, whose rollback must keep the other input's stop.
    let blind = Faults {
        blind_admission: true,
        ..Faults::default()
    };
    let (broker, cfg, t, r) = capped("cap-two", blind, |cfg| {
        cfg.runtime.at_instance_cap = AtInstanceCap::Pause;
        cfg.runtime.max_batch = 7;
        more = format!("{}.more", cfg.kafka.input_topics[0]);
        cfg.kafka.input_topics.push(more.clone());
        kafka::ensure_topics(cfg, &[(more.clone(), 1, false)]).expect("second input");
    });
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    // Orders o-0… on the first topic, o-100… on the second, interleaved.
    for n in 0..FIRST {
        for (topic, order) in [(&t.input, n), (&more, 100 + n)] {
            let mut o = t.placed(order);
            o.topic = topic.clone();
            o.key = format!("o-{order}").into_bytes();
            producer.send(&o).expect("send");
        }
    }
    producer.flush().expect("flush");
    // Each input stops at its first order beyond the cap, and the stops
    // stay: one input's stop does not lift the other's.
    eventually(60, "both inputs to stop", || {
        (metric(&r, "baton_inputs_stopped") == 2.0 && keys_with(&r, Status::Active).len() == CAP)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(metric(&r, "baton_inputs_stopped"), 2.0);
    let held = keys_with(&r, Status::Active);
    assert_eq!(held.len(), CAP, "the shard grew: {held:?}");
    for n in &held {
        producer.send(&cancel(&cfg, *n)).expect("send");
    }
    producer.flush().expect("flush");
    eventually(60, "the next orders up to the cap to start", || {
        let now = keys_with(&r, Status::Active);
        (now.len() == CAP && now.iter().all(|n| !held.contains(n))).then_some(())
    });
    // Of each topic, the orders that started are the first ones, none
    // skipped, each asked once.
    let started = eventually(60, "the reservations of the orders started", || {
        let all = committed(&cfg, &t.commands, 1)?;
        let s = reserved(&all);
        (s.len() == 2 * CAP).then_some(s)
    });
    let first: Vec<u64> = started.iter().copied().filter(|n| *n < 100).collect();
    let second: Vec<u64> = started.iter().copied().filter(|n| *n >= 100).collect();
    assert_eq!(first, (0..first.len() as u64).collect::<Vec<_>>());
    assert_eq!(second, (100..100 + second.len() as u64).collect::<Vec<_>>());
    let dead = kafka::read_partition(&cfg, &cfg.topics.dead_letters(), 0).unwrap_or_default();
    assert!(dead.is_empty(), "dead letters: {}", dead.len());
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
    // Each of those commits is counted as one at the cap.
    assert!(
        metric(&r, "baton_transactions_at_record_cap_total") >= 3.0,
        "commits at the record cap not counted"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    r.stop();
}

/// `baton dead-letters` lists the letters and `--replay` publishes each
/// original record to its origin (its headers without `baton.dlq.*`); a
/// truncated letter is not replayed, and the command says where its whole
/// record is and exits 1.
#[test]
fn dead_letters_are_listed_and_replayed_to_their_origin() {
    let broker = Broker::start();
    let group = unique("dlq");
    let path = support::write_config(
        &broker.dir,
        &support::RunConfig {
            bootstrap: &broker.bootstrap,
            group: &group,
            instance: "dlq-1",
            partitions: 1,
            in_place: false,
            admin: "127.0.0.1:0".into(),
            extra: "",
        },
    );
    let text = std::fs::read_to_string(&path).expect("config");
    let cfg = baton::config::Config::load("test", &text, []).expect("config loads");
    let origin = format!("{group}.origin");
    let dlq = cfg.topics.dead_letters();
    kafka::ensure_topics(&cfg, &[(dlq.clone(), 1, false), (origin.clone(), 1, false)])
        .expect("topics");
    let letter = |kind: &str, payload: &[u8], truncated: bool| {
        let mut headers = vec![
            (
                "traceparent".to_string(),
                b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec(),
            ),
            ("baton.dlq.kind".to_string(), kind.as_bytes().to_vec()),
            (
                "baton.dlq.reason".to_string(),
                format!("a {kind} letter").into_bytes(),
            ),
            ("baton.dlq.topic".to_string(), origin.clone().into_bytes()),
            ("baton.dlq.partition".to_string(), b"0".to_vec()),
            ("baton.dlq.offset".to_string(), b"41".to_vec()),
            ("baton.version".to_string(), b"0.1.0".to_vec()),
        ];
        if truncated {
            headers.push(("baton.dlq.truncated".to_string(), b"9000000".to_vec()));
        }
        baton::kafka::Outgoing {
            topic: dlq.clone(),
            partition: Some(0),
            key: format!("{kind}-key").into_bytes(),
            payload: Some(payload.to_vec()),
            headers,
        }
    };
    kafka::send_plain(
        &cfg,
        &[
            letter("instance-cap", b"{\"first\": 1}", false),
            letter("undecodable", b"not json", false),
            letter("oversized-payload", b"head only", true),
        ],
    )
    .expect("letters written");
    let baton = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("dead-letters")
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .expect("baton dead-letters runs")
    };
    let listed = baton(&[]);
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{out}");
    assert!(out.contains("3 dead letters"), "{out}");
    assert!(
        out.contains(&format!(
            "0/0  instance-cap  from {origin}/0/41  a instance-cap letter"
        )),
        "{out}"
    );

    // One kind replayed: only its record reaches the origin, as it was.
    let replayed = baton(&["--kind", "instance-cap", "--replay"]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("replayed 1 of 1"));
    let got = eventually(30, "the replayed record at its origin", || {
        let r = kafka::read_partition(&cfg, &origin, 0).ok()?;
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.as_deref(), Some(&b"instance-cap-key"[..]));
    assert_eq!(got[0].payload.as_deref(), Some(&b"{\"first\": 1}"[..]));
    let names: Vec<&str> = got[0].headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["traceparent"], "the dlq headers are gone");

    // The truncated one is refused with where its whole record is.
    let refused = baton(&["--from", "2", "--replay"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!(
            "0/2 not replayed: only the head of its payload was kept; replay it from {origin}/0/41"
        )),
        "{err}"
    );
    assert_eq!(
        kafka::read_partition(&cfg, &origin, 0).expect("read").len(),
        1
    );
}
