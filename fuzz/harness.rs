//! The bodies of the fuzz targets. The cargo-fuzz targets in `fuzz/fuzz_targets/`
//! call them with libFuzzer's inputs; `tests/fuzz.rs` calls them on stable Rust
//! with every saved input under `fuzz/regressions/` and a run of generated ones,
//! so a crash once found stays fixed.
//!
//! Each body panics only when baton does something it must never do: panic on
//! bad input, or break an invariant (decoding what it encoded, determinism,
//! unique command ids).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use baton::engine::{Action, Event, Registry};
use baton::simulate::Simulation;
use baton::wire::{self, cloudevents};
use serde_json::Value as Json;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name (the name of its file under `fuzz/fuzz_targets/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("dsl", dsl),
    ("cloudevents", cloudevents),
    ("records", records),
    ("engine", engine),
];

const EXAMPLES: &[(&str, &str)] = &[
    (
        "order-to-cash.yaml",
        include_str!("../examples/order-to-cash.yaml"),
    ),
    (
        "customer-onboarding.yaml",
        include_str!("../examples/customer-onboarding.yaml"),
    ),
    (
        "incident-response.yaml",
        include_str!("../examples/incident-response.yaml"),
    ),
];

const SCENARIOS: &[&str] = &[
    include_str!("../examples/order-to-cash/happy.jsonl"),
    include_str!("../examples/order-to-cash/delivered-early.jsonl"),
    include_str!("../examples/order-to-cash/delivery-late.jsonl"),
    include_str!("../examples/customer-onboarding/approved.jsonl"),
    include_str!("../examples/customer-onboarding/credit-timeout.jsonl"),
    include_str!("../examples/customer-onboarding/provisioning-failed.jsonl"),
    include_str!("../examples/customer-onboarding/rejected.jsonl"),
    include_str!("../examples/customer-onboarding/review-overdue.jsonl"),
    include_str!("../examples/customer-onboarding/review-rejected.jsonl"),
    include_str!("../examples/incident-response/escalated.jsonl"),
    include_str!("../examples/incident-response/flapping.jsonl"),
    include_str!("../examples/incident-response/recovered.jsonl"),
    include_str!("../examples/incident-response/remediation-failed.jsonl"),
];

/// The three examples, deployed.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut reg = Registry::default();
        for (name, text) in EXAMPLES {
            let def = baton::dsl::parse(name, text).expect("the examples are valid");
            reg.deploy(def, text).expect("the examples deploy");
        }
        reg
    })
}

/// Every event the example scenarios deliver: the engine target's vocabulary.
pub fn templates() -> &'static [Event] {
    static TEMPLATES: OnceLock<Vec<Event>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut out = Vec::new();
        for scenario in SCENARIOS {
            for line in scenario.lines() {
                let Ok(v) = serde_json::from_str::<Json>(line) else {
                    continue;
                };
                let Some(e) = v.get("event") else { continue };
                out.push(Event {
                    id: e["id"].as_str().unwrap_or("e").to_string(),
                    kind: e["type"].as_str().unwrap_or("").to_string(),
                    source: "fuzz".to_string(),
                    time: 0,
                    data: e.get("data").cloned().unwrap_or(Json::Null),
                });
            }
        }
        out
    })
}

/// Reads the input a byte at a time; an exhausted input reads as zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.byte()) << 8 | u16::from(self.byte())
    }
    /// Up to 255 bytes, as text.
    fn text(&mut self) -> String {
        let n = usize::from(self.byte() % 24);
        let take = n.min(self.0.len());
        let (s, rest) = self.0.split_at(take);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
    /// A JSON value of every kind the engine may meet in event data.
    fn json(&mut self, depth: u8) -> Json {
        match self.byte() % 9 {
            0 => Json::Null,
            1 => Json::Bool(self.byte() & 1 == 1),
            2 => Json::from(i64::from(self.u16() as i16)),
            3 => Json::from(f64::from(self.u16()) / 7.0 - 1000.0),
            4 => Json::from(i64::MAX - i64::from(self.byte())),
            5 => Json::from(self.text()),
            6 => Json::from(
                ["o-1", "c-1", "k", "", "2026-01-05T09:00:00Z"][usize::from(self.byte() % 5)],
            ),
            7 if depth < 3 => {
                let n = self.byte() % 4;
                Json::Array((0..n).map(|_| self.json(depth + 1)).collect())
            }
            _ if depth < 3 => {
                let n = self.byte() % 4;
                Json::Object(
                    (0..n)
                        .map(|_| (self.text(), self.json(depth + 1)))
                        .collect(),
                )
            }
            _ => Json::Null,
        }
    }
}

/// A definition's text: parsing and validating never panic, and what they
/// accept deploys.
pub fn dsl(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(def) = baton::dsl::parse("fuzz.yaml", text) {
        let mut reg = Registry::default();
        reg.deploy(def, text)
            .expect("a parsed definition deploys into an empty registry");
    }
}

/// A Kafka record's headers and payload: decoding never panics, and an
/// event it yields routes through the examples without panicking.
pub fn cloudevents(data: &[u8]) {
    let mut b = Bytes(data);
    let flags = b.byte();
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let content_types = [
        "application/cloudevents+json",
        "application/json",
        "text/plain",
        "application/cloudevents+json; charset=utf-8",
    ];
    if flags & 1 == 1 {
        headers.push((
            "content-type".into(),
            content_types[usize::from(flags >> 1 & 3)].into(),
        ));
    }
    if flags & 8 == 8 {
        // Binary mode: attributes in headers.
        headers.push(("ce_specversion".into(), b"1.0".to_vec()));
        for name in ["ce_id", "ce_type", "ce_source", "ce_time"] {
            if b.byte() & 3 != 0 {
                headers.push((name.into(), b.text().into_bytes()));
            }
        }
    }
    let payload = b.0;
    let record = cloudevents::Record {
        topic: "fuzz",
        partition: 0,
        offset: 1,
        timestamp: Some(1_767_603_600_000),
        headers: &headers,
        payload: (flags & 16 == 0).then_some(payload),
    };
    let plain = cloudevents::PlainJson {
        type_field: "type".into(),
        id_field: "id".into(),
    };
    if let Ok(event) = cloudevents::decode(&record, &plain) {
        let routes = baton::shard::route(registry(), &event);
        let _ = routes.dead(&event);
    }
}

/// A stored record of every kind baton reads back: decoding never panics,
/// and what decodes encodes to something that decodes to the same.
pub fn records(data: &[u8]) {
    let Some((which, bytes)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(i) = wire::decode(bytes) {
                assert_eq!(wire::decode(&wire::encode(&i)).ok(), Some(i));
            }
        }
        1 => {
            if let Ok((source, pos, i)) = wire::decode_changelog_at(bytes) {
                let again = wire::encode_changelog_at(&source, pos, &i);
                assert_eq!(
                    wire::decode_changelog_at(&again).ok(),
                    Some((source, pos, i))
                );
            }
        }
        2 => {
            if let Ok(r) = wire::decode_shard(bytes) {
                assert_eq!(wire::decode_shard(&wire::encode_shard(&r)).ok(), Some(r));
            }
        }
        3 => {
            let _ = wire::decode_operator(bytes);
        }
        4 => {
            if let Ok(r) = wire::decode_deploy(bytes) {
                assert_eq!(wire::decode_deploy(&wire::encode_deploy(&r)).ok(), Some(r));
            }
        }
        _ => {
            let _ = wire::peek_changelog(bytes);
            let _ = wire::changelog_position(bytes);
        }
    }
}

/// A run of the three examples driven by the input: events from their
/// scenarios with data mutated, clock moves, operator actions. Nothing
/// panics, command ids are unique, and the same input gives the same run.
pub fn engine(data: &[u8]) {
    let first = run(data);
    let mut ids = BTreeSet::new();
    for c in &first.commands {
        assert!(
            ids.insert(c.id.clone()),
            "command id {} emitted twice",
            c.id
        );
    }
    let second = run(data);
    assert_eq!(
        first.commands, second.commands,
        "the same inputs gave other commands"
    );
    assert_eq!(
        first.render(),
        second.render(),
        "the same inputs gave other instances"
    );
}

fn run(data: &[u8]) -> Simulation {
    let mut sim = Simulation::new(registry().clone());
    let templates = templates();
    let mut b = Bytes(data);
    let mut ops = 0;
    while !b.done() && ops < 64 {
        ops += 1;
        match b.byte() % 8 {
            0..=3 => {
                let mut event = templates[usize::from(b.byte()) % templates.len()].clone();
                if b.byte() & 1 == 1 {
                    event.id = format!("{}-{}", event.id, b.byte() % 4);
                }
                mutate(&mut event.data, &mut b);
                sim.deliver(event);
            }
            4 | 5 => {
                let seconds = u64::from(b.u16()) * u64::from(b.byte() % 60 + 1);
                let to = sim.clock.saturating_add(seconds.saturating_mul(1000));
                sim.advance_to(to);
            }
            _ => {
                let instances: Vec<(String, String)> = sim
                    .instances()
                    .iter()
                    .map(|i| (i.process.clone(), i.key.clone()))
                    .collect();
                if instances.is_empty() {
                    continue;
                }
                let (process, key) = &instances[usize::from(b.byte()) % instances.len()];
                let incident = (b.byte() & 1 == 1).then(|| u32::from(b.byte() % 3));
                let action = match b.byte() % 5 {
                    0 => Action::Retry { incident },
                    1 => Action::Skip { incident },
                    2 => Action::Cancel {
                        compensate: b.byte() & 1 == 1,
                        reason: b.text(),
                    },
                    3 => Action::SetVariable {
                        name: b.text(),
                        value: b.json(0),
                    },
                    _ => Action::Migrate {
                        to: u32::from(b.byte() % 3),
                        steps: Default::default(),
                    },
                };
                let _ = sim.operate(process, key, action);
            }
        }
    }
    sim
}

/// Replaces some of the leaves of `v` with values the input makes up.
fn mutate(v: &mut Json, b: &mut Bytes<'_>) {
    match v {
        Json::Object(map) => {
            for (_, x) in map.iter_mut() {
                mutate(x, b);
            }
            if b.byte() % 8 == 7 {
                map.insert(b.text(), b.json(0));
            }
        }
        Json::Array(items) => {
            for x in items.iter_mut() {
                mutate(x, b);
            }
        }
        leaf => {
            if b.byte() % 4 == 3 {
                *leaf = b.json(0);
            }
        }
    }
}
