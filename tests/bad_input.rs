//! The bad-input matrix against the test broker: every kind of input baton
//! cannot use ends as a dead letter or an incident with a specific reason,
//! the partitions keep flowing, and nothing panics.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use baton::engine::Status;
use baton::kafka::{self, Incoming, Outgoing, PlainProducer};
use baton::runtime::shard_of;
use baton::wire::{self, ActionBody, OperatorRequest, ShardInputKind, ShardRecord, cloudevents};
use serde_json::{Value, json};

use support::orders::{config, create_input, header};
use support::running::{Running, collector};
use support::{Broker, eventually, unique};

const PARTITIONS: i32 = 2;
const MAX_PAYLOAD: usize = 4096;

/// What one bad input must end as.
enum Outcome {
    /// A dead letter of this kind whose key contains `key` and whose reason
    /// contains `reason`.
    Dead {
        kind: &'static str,
        key: &'static str,
        reason: &'static str,
    },
    /// An open incident on this instance whose reason contains `reason`.
    Incident {
        instance: &'static str,
        reason: &'static str,
    },
}

struct Case {
    name: &'static str,
    records: Vec<Outgoing>,
    outcome: Outcome,
}

fn record(topic: &str, key: &str, payload: Vec<u8>, headers: Vec<(String, Vec<u8>)>) -> Outgoing {
    Outgoing {
        topic: topic.to_string(),
        partition: None,
        key: key.as_bytes().to_vec(),
        payload: Some(payload),
        headers,
    }
}

fn event(topic: &str, id: &str, kind: &str, data: Value) -> Outgoing {
    let key = data["orderId"].as_str().unwrap_or(id).to_string();
    record(
        topic,
        &key,
        cloudevents::structured(id, kind, "test", 0, &data),
        Vec::new(),
    )
}

fn placed(topic: &str, id: &str, order: Value, total: Value) -> Outgoing {
    event(
        topic,
        id,
        "com.acme.order.placed",
        json!({"orderId": order, "customerId": "c-1", "total": total, "lines": [{"sku": "A", "qty": 1}], "address": "1 Main St"}),
    )
}

fn dead_letters(seen: &[Incoming], dlq: &str) -> Vec<(String, String, String)> {
    seen.iter()
        .filter(|m| m.topic == dlq)
        .map(|m| {
            (
                header(m, "baton.dlq.kind").unwrap_or_default(),
                String::from_utf8_lossy(m.key.as_deref().unwrap_or_default()).into_owned(),
                header(m, "baton.dlq.reason").unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn every_bad_input_ends_as_a_dead_letter_or_an_incident_and_the_partitions_flow() {
    let broker = Broker::start();
    let group = unique("bad-input");
    let mut cfg = config(&broker.bootstrap, &group, "a");
    cfg.events.max_payload_bytes = MAX_PAYLOAD;
    let t = create_input(&cfg);
    let input = t.input.as_str();
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");

    // A snapshot that does not decode, in the changelog before baton starts.
    let changelog = cfg.topics.changelog();
    kafka::ensure_topics(&cfg, &[(changelog.clone(), PARTITIONS, true)]).expect("changelog");
    let snap = "order-to-cash/o-snap";
    producer
        .send(&Outgoing {
            topic: changelog.clone(),
            partition: Some(shard_of(snap, PARTITIONS)),
            key: snap.as_bytes().to_vec(),
            payload: Some(b"\xff\xfe not a snapshot".to_vec()),
            headers: Vec::new(),
        })
        .expect("send");
    producer.flush().expect("flush");

    let runtime = Running::start(cfg.clone());
    let dlq = cfg.topics.dead_letters();
    let mut topics = t.commands.clone();
    topics.push(dlq.clone());
    let (seen, stop_collector) = collector(&broker.bootstrap, &topics);
    eventually(60, "both shards restored", || {
        (runtime.owned().len() == PARTITIONS as usize).then_some(())
    });

    // Instances the matrix needs: one that has ended, one with text for a total.
    for r in [
        placed(input, "placed-end", json!("o-end"), json!(100)),
        placed(input, "placed-cel", json!("o-cel"), json!("lots")),
        placed(input, "placed-dup", json!("o-dup"), json!(100)),
    ] {
        producer.send(&r).expect("send");
    }
    producer
        .send(&event(
            input,
            "unavailable-end",
            "com.acme.inventory.unavailable",
            json!({"orderId": "o-end"}),
        ))
        .expect("send");
    producer.flush().expect("flush");
    eventually(60, "o-end ended and o-cel, o-dup started", || {
        let ended = runtime
            .index
            .get("order-to-cash/o-end")
            .is_some_and(|e| e.status.is_ended());
        let started = ["o-cel", "o-dup"].iter().all(|k| {
            runtime
                .index
                .get(&format!("order-to-cash/{k}"))
                .is_some_and(|e| e.status == Status::Active)
        });
        (ended && started).then_some(())
    });

    let placed_json =
        |order: &str| serde_json::to_vec(&json!({"orderId": order, "total": 1})).expect("json");
    let repartition = cfg.topics.repartition();
    let ghost_timer = ShardRecord {
        process: "order-to-cash".into(),
        key: "ghost".into(),
        input: ShardInputKind::Timer {
            timer: "reserve/1/timeout/1.1".into(),
            due: 1_767_603_600_000,
        },
    };
    let ghost_action = OperatorRequest {
        v: wire::OPERATOR_FORMAT,
        process: "order-to-cash".into(),
        key: "ghost-op".into(),
        action: ActionBody::Retry { incident: None },
        by: "test".into(),
        reason: "matrix".into(),
        request: "r-ghost".into(),
    };
    let cases = vec![
        Case {
            name: "malformed JSON",
            records: vec![record(input, "bad-json", b"{not json".to_vec(), Vec::new())],
            outcome: Outcome::Dead {
                kind: "undecodable",
                key: "bad-json",
                reason: "payload is not JSON",
            },
        },
        Case {
            name: "wrong content type",
            records: vec![record(
                input,
                "bad-ct",
                placed_json("o-ct"),
                vec![("content-type".into(), b"application/xml".to_vec())],
            )],
            outcome: Outcome::Dead {
                kind: "undecodable",
                key: "bad-ct",
                reason: "content type `application/xml` is not supported",
            },
        },
        Case {
            name: "missing CloudEvents attribute",
            records: vec![record(
                input,
                "bad-ce-missing",
                serde_json::to_vec(&json!({"specversion": "1.0", "id": "x-1", "type": "com.acme.order.placed", "data": {"orderId": "o-x"}})).expect("json"),
                Vec::new(),
            )],
            outcome: Outcome::Dead {
                kind: "undecodable",
                key: "bad-ce-missing",
                reason: "missing or empty attribute `source`",
            },
        },
        Case {
            name: "wrong CloudEvents attribute",
            records: vec![record(
                input,
                "bad-ce-time",
                serde_json::to_vec(&json!({"specversion": "1.0", "id": "x-2", "type": "com.acme.order.placed", "source": "t", "time": "yesterday", "data": {"orderId": "o-y"}})).expect("json"),
                Vec::new(),
            )],
            outcome: Outcome::Dead {
                kind: "undecodable",
                key: "bad-ce-time",
                reason: "`yesterday` is not RFC 3339",
            },
        },
        Case {
            name: "unknown event type",
            records: vec![event(input, "u-1", "com.acme.unknown", json!({"orderId": "bad-unknown"}))],
            outcome: Outcome::Dead {
                kind: "no-process",
                key: "bad-unknown",
                reason: "no process starts on or correlates events of type com.acme.unknown",
            },
        },
        Case {
            name: "oversized payload",
            records: vec![placed(input, "big-1", json!("bad-big"), json!("x".repeat(2 * MAX_PAYLOAD)))],
            outcome: Outcome::Dead {
                kind: "oversized-payload",
                key: "bad-big",
                reason: "(events.max_payload_bytes)",
            },
        },
        Case {
            name: "missing correlation key",
            records: vec![event(input, "bad-nokey", "com.acme.order.placed", json!({"total": 1}))],
            outcome: Outcome::Dead {
                kind: "correlation",
                key: "bad-nokey",
                reason: "`event.data.orderId` failed: No such key: orderId",
            },
        },
        Case {
            name: "key of the wrong type",
            records: vec![record(
                input,
                "bad-keytype",
                cloudevents::structured("kt-1", "com.acme.order.placed", "test", 0, &json!({"orderId": [1, 2]})),
                Vec::new(),
            )],
            outcome: Outcome::Dead {
                kind: "correlation",
                key: "bad-keytype",
                reason: "`event.data.orderId` gave list",
            },
        },
        Case {
            name: "event for an ended instance",
            records: vec![event(input, "reserved-end", "com.acme.inventory.reserved", json!({"orderId": "o-end", "reservationId": "r-1"}))],
            outcome: Outcome::Dead {
                kind: "rejected",
                key: "o-end",
                reason: "event reserved-end: instance already",
            },
        },
        Case {
            name: "duplicate event id",
            records: vec![placed(input, "placed-dup", json!("o-dup"), json!(100))],
            outcome: Outcome::Dead {
                kind: "rejected",
                key: "o-dup",
                reason: "duplicate event id",
            },
        },
        Case {
            name: "CEL evaluation error on real data",
            records: vec![event(input, "reserved-cel", "com.acme.inventory.reserved", json!({"orderId": "o-cel", "reservationId": "r-2"}))],
            outcome: Outcome::Incident {
                instance: "order-to-cash/o-cel",
                reason: "vars.total > 10000",
            },
        },
        Case {
            name: "timer for an instance that does not exist",
            records: vec![Outgoing {
                topic: repartition.clone(),
                partition: Some(shard_of("order-to-cash/ghost", PARTITIONS)),
                key: b"order-to-cash/ghost".to_vec(),
                payload: Some(wire::encode_shard(&ghost_timer)),
                headers: Vec::new(),
            }],
            outcome: Outcome::Dead {
                kind: "unknown-instance",
                key: "ghost",
                reason: "timer reserve/1/timeout/1.1 due 2026-01-05T09:00:00.000Z for instance order-to-cash/ghost, which does not exist",
            },
        },
        Case {
            name: "operator action for an unknown instance",
            records: vec![record(
                &cfg.topics.operator(),
                "order-to-cash/ghost-op",
                wire::encode_operator(&ghost_action),
                Vec::new(),
            )],
            outcome: Outcome::Dead {
                kind: "operator-refused",
                key: "ghost-op",
                reason: "order-to-cash/ghost-op",
            },
        },
        Case {
            name: "snapshot that does not decode",
            records: vec![placed(input, "placed-snap", json!("o-snap"), json!(100))],
            outcome: Outcome::Dead {
                kind: "undecodable-state",
                key: "o-snap",
                reason: "does not decode",
            },
        },
    ];
    for c in &cases {
        for r in &c.records {
            producer
                .send(r)
                .unwrap_or_else(|e| panic!("{}: send: {e}", c.name));
        }
    }
    // After the bad input, one good order on each shard.
    let mut after = BTreeMap::new();
    for n in 0.. {
        let key = format!("o-after-{n}");
        after
            .entry(shard_of(&format!("order-to-cash/{key}"), PARTITIONS))
            .or_insert(key);
        if after.len() == PARTITIONS as usize {
            break;
        }
    }
    for key in after.values() {
        producer
            .send(&placed(
                input,
                &format!("placed-{key}"),
                json!(key),
                json!(100),
            ))
            .expect("send");
    }
    producer.flush().expect("flush");

    let expected_dead = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Dead { .. }))
        .count();
    let seen_all = eventually(
        120,
        "every dead letter and the good orders' commands",
        || {
            let v = seen.lock().ok()?.clone();
            let dead = v.iter().filter(|m| m.topic == dlq).count();
            let reserved = after.values().all(|k| {
                v.iter()
                    .any(|m| m.topic != dlq && m.key.as_deref() == Some(k.as_bytes()))
            });
            (dead >= expected_dead && reserved).then_some(v)
        },
    );
    let letters = dead_letters(&seen_all, &dlq);
    let mut failures = Vec::new();
    for c in &cases {
        match &c.outcome {
            Outcome::Dead { kind, key, reason } => {
                let matching: Vec<_> = letters
                    .iter()
                    .filter(|(k, rk, _)| k == kind && rk.contains(key))
                    .collect();
                match matching.as_slice() {
                    [(_, _, r)] if r.contains(reason) => {}
                    other => failures.push(format!(
                        "{}: expected one dead letter {kind} for {key} with `{reason}`, got {other:?}",
                        c.name
                    )),
                }
            }
            Outcome::Incident { instance, reason } => {
                let entry = eventually(30, instance, || runtime.index.get(instance));
                if !entry.incidents.iter().any(|i| i.reason.contains(reason)) {
                    failures.push(format!(
                        "{}: expected an incident with `{reason}` on {instance}, got {:?}",
                        c.name, entry.incidents
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nall dead letters: {letters:#?}",
        failures.join("\n")
    );
    assert_eq!(
        letters.len(),
        expected_dead,
        "no dead letter beyond the matrix's: {letters:#?}"
    );
    assert!(
        letters.iter().all(|(k, _, _)| k != "panic"),
        "nothing panicked: {letters:#?}"
    );
    // The duplicate was not applied again: o-dup got one reserve command.
    let reserves = seen_all
        .iter()
        .filter(|m| m.topic != dlq && m.key.as_deref() == Some(b"o-dup".as_slice()))
        .count();
    assert_eq!(reserves, 1, "o-dup's commands");
    assert!(!runtime.ended(), "the runtime is still running");
    stop_collector.store(true, Ordering::Relaxed);
    runtime.stop();
}
