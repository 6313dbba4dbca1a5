//! Properties of the engine over random input sequences:
//! (a) the same inputs give the same effects and state;
//! (b) snapshot → decode → continue equals never snapshotting, at every step;
//! (c) a failure compensates exactly the completed tasks, newest first;
//! (d) no input sequence panics the engine.

use std::path::Path;
use std::sync::Arc;

use baton::dsl;
use baton::engine::{
    self, Action, Definition, Effect, Event, Input, Instance, Millis, Purpose, StepKind,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn example(name: &str) -> Arc<Definition> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("example exists");
    Arc::new(dsl::parse(name, &text).unwrap_or_else(|e| panic!("{e}")))
}

const TYPES: [&str; 13] = [
    "com.acme.order.placed",
    "com.acme.inventory.reserved",
    "com.acme.inventory.unavailable",
    "com.acme.payment.charged",
    "com.acme.payment.declined",
    "com.acme.payment.error",
    "com.acme.shipment.created",
    "com.acme.shipment.delivered",
    "com.acme.invoice.created",
    "com.acme.task.completed",
    "com.acme.order.address-changed",
    "com.acme.unrelated",
    "baton.process.completed",
];

#[derive(Debug, Clone)]
enum Step {
    Event {
        kind: usize,
        id: u8,
        data: u8,
        total: i64,
    },
    /// Fire the n-th pending timer (modulo their count).
    FireTimer(usize),
    StaleTimer,
    Advance(Millis),
    Operator(u8),
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..TYPES.len(), 0u8..40, 0u8..6, -5i64..20_000).prop_map(|(kind, id, data, total)| Step::Event { kind, id, data, total }),
        3 => (0usize..8).prop_map(Step::FireTimer),
        1 => Just(Step::StaleTimer),
        1 => (0u64..200_000_000).prop_map(Step::Advance),
        1 => (0u8..6).prop_map(Step::Operator),
    ]
}

fn data(variant: u8, total: i64) -> Value {
    match variant {
        // Garbage of several shapes: CEL errors on real data must not panic.
        0 => Value::Null,
        1 => json!("not an object"),
        2 => json!({ "orderId": "k", "orderRef": "k", "total": "a string", "lines": 7 }),
        _ => json!({
            "orderId": "k", "orderRef": "k", "total": total, "customerId": "c-1",
            "lines": [{ "sku": "A", "qty": 1 }], "address": "1 Main St",
            "reservationId": "r", "paymentId": "p", "trackingId": "t", "invoiceId": "i",
            "approved": total % 2 == 0, "user": "u", "reason": "r",
            "key": "k", "process": "x", "vars": {}
        }),
    }
}

/// Turns the abstract steps into concrete engine inputs against a running state.
fn input_for(step: &Step, inst: &Instance, now: &mut Millis) -> Option<Input> {
    match step {
        Step::Event {
            kind,
            id,
            data: d,
            total,
        } => {
            *now += 1_000;
            Some(Input::Event(Event {
                id: format!("ev-{id}"),
                kind: TYPES[*kind].to_string(),
                source: "test".into(),
                time: *now,
                data: data(*d, *total),
            }))
        }
        Step::FireTimer(n) => {
            if inst.timers.is_empty() {
                return None;
            }
            let mut timers = inst.timers.clone();
            timers.sort_by(|a, b| (a.due, &a.id).cmp(&(b.due, &b.id)));
            let t = &timers[n % timers.len()];
            *now = (*now).max(t.due);
            Some(Input::Timer(t.id.clone()))
        }
        Step::StaleTimer => Some(Input::Timer("no-such-timer/1".into())),
        Step::Advance(ms) => {
            *now += ms;
            None
        }
        Step::Operator(n) => Some(Input::Operator(match n {
            0 => Action::Retry { incident: None },
            1 => Action::Skip { incident: None },
            2 => Action::Retry { incident: Some(1) },
            3 => Action::SetVariable {
                name: "total".into(),
                value: json!(42),
            },
            4 => Action::Cancel {
                compensate: true,
                reason: "test".into(),
            },
            _ => Action::Skip { incident: Some(99) },
        })),
    }
}

type Trace = Vec<(Input, Vec<Effect>)>;

/// Runs the steps; `snapshot` round-trips the state through the wire format before every input.
fn drive(def: &Definition, steps: &[Step], snapshot: bool) -> (Instance, Trace) {
    let mut inst = Instance::new(&def.process, def.version, "k");
    let mut now: Millis = 1_767_603_600_000;
    let mut trace = Vec::new();
    for s in steps {
        let Some(input) = input_for(s, &inst, &mut now) else {
            continue;
        };
        if snapshot {
            let bytes = baton::wire::encode(&inst);
            inst = baton::wire::decode(&bytes).expect("a snapshot decodes");
        }
        let fx = engine::apply(def, &mut inst, &input, now);
        trace.push((input, fx));
    }
    (inst, trace)
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step_strategy(), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn same_inputs_same_effects(steps in steps()) {
        let def = example("order-to-cash.yaml");
        let (a, ta) = drive(&def, &steps, false);
        let (b, tb) = drive(&def, &steps, false);
        prop_assert_eq!(a, b);
        prop_assert_eq!(ta, tb);
    }

    #[test]
    fn snapshots_change_nothing(steps in steps()) {
        let def = example("order-to-cash.yaml");
        let (a, ta) = drive(&def, &steps, false);
        let (b, tb) = drive(&def, &steps, true);
        prop_assert_eq!(a, b);
        prop_assert_eq!(ta, tb);
    }

    #[test]
    fn compensation_runs_completed_tasks_newest_first(steps in steps()) {
        let def = example("order-to-cash.yaml");
        let mut inst = Instance::new(&def.process, def.version, "k");
        let mut now: Millis = 1_767_603_600_000;
        let mut commanded: Vec<String> = Vec::new();
        for s in &steps {
            let Some(input) = input_for(s, &inst, &mut now) else { continue };
            let fx = engine::apply(&def, &mut inst, &input, now);
            let mut compensated: Vec<String> = Vec::new();
            for e in &fx {
                if let Effect::Command(c) = e {
                    match c.purpose {
                        Purpose::Compensation => compensated.push(c.step.clone()),
                        Purpose::Task | Purpose::Manual => commanded.push(c.step.clone()),
                        Purpose::Escalation => {}
                    }
                }
            }
            let failed = fx.iter().any(|e| matches!(e, Effect::Ended { status: engine::Status::Failed, .. }));
            let cancelled_with_compensation = matches!(&input, Input::Operator(Action::Cancel { compensate: true, .. }))
                && fx.iter().any(|e| matches!(e, Effect::Ended { .. }));
            if failed || cancelled_with_compensation {
                // Exactly the completed tasks that have a compensation, newest first.
                let expected: Vec<String> = inst
                    .completed
                    .iter()
                    .rev()
                    .filter(|c| matches!(&def.steps[c.step].kind, StepKind::Task(t) if t.compensate.is_some()))
                    .map(|c| def.steps[c.step].id.clone())
                    .collect();
                prop_assert_eq!(&compensated, &expected);
                // Only steps whose command went out, each once (order-to-cash has no loops).
                for (n, step) in compensated.iter().enumerate() {
                    prop_assert!(commanded.contains(step), "{} compensated but never commanded", step);
                    prop_assert!(!compensated[..n].contains(step), "{} compensated twice", step);
                }
                // Newest first: the reverse of the order the commands went out.
                let order: Vec<usize> = compensated
                    .iter()
                    .map(|s| commanded.iter().position(|c| c == s).unwrap_or(usize::MAX))
                    .collect();
                prop_assert!(order.windows(2).all(|w| w[0] > w[1]), "not newest first: {:?}", compensated);
            } else {
                prop_assert!(compensated.is_empty(), "compensation without failure: {:?}", compensated);
            }
        }
    }

    /// The runtime keeps a shard's timers in an index ordered by due time,
    /// maintained from the effects alone (a cancel removes the exact entry,
    /// no scan): it must always equal the instance's pending timers.
    #[test]
    fn a_timer_index_kept_from_the_effects_matches_the_pending_timers(steps in steps(), which in 0usize..3) {
        let name = ["order-to-cash.yaml", "customer-onboarding.yaml", "incident-response.yaml"][which];
        let def = example(name);
        let mut inst = Instance::new(&def.process, def.version, "k");
        let mut now: Millis = 1_767_603_600_000;
        let mut index: std::collections::BTreeSet<(Millis, String)> = Default::default();
        for s in &steps {
            let Some(input) = input_for(s, &inst, &mut now) else { continue };
            if let Input::Timer(id) = &input {
                // A fired timer leaves the index when it is written out (as the runtime does).
                index.retain(|(_, t)| t != id);
            }
            for e in engine::apply(&def, &mut inst, &input, now) {
                match e {
                    Effect::ScheduleTimer(t) => {
                        index.insert((t.due, t.id));
                    }
                    Effect::CancelTimer(t) => {
                        prop_assert!(index.remove(&(t.due, t.id.clone())), "cancelled {} (due {}) was not indexed", t.id, t.due);
                    }
                    _ => {}
                }
            }
            let pending: std::collections::BTreeSet<(Millis, String)> =
                inst.timers.iter().map(|t| (t.due, t.id.clone())).collect();
            prop_assert_eq!(&index, &pending);
        }
    }

    #[test]
    fn no_input_sequence_panics(steps in steps(), which in 0usize..3) {
        let name = ["order-to-cash.yaml", "customer-onboarding.yaml", "incident-response.yaml"][which];
        let def = example(name);
        let (inst, _) = drive(&def, &steps, false);
        // Invariants that must hold whatever happened.
        prop_assert!(inst.seen.len() <= engine::SEEN_WINDOW);
        prop_assert!(inst.buffer.len() <= def.buffer.size);
        if inst.status.is_ended() {
            prop_assert!(inst.tokens.is_empty() && inst.timers.is_empty());
        }
    }
}

#[test]
fn a_failed_order_compensates_in_reverse() {
    // A fixed sequence for the property above, so a regression names itself.
    let def = example("order-to-cash.yaml");
    let steps = vec![
        Step::Event {
            kind: 0,
            id: 1,
            data: 3,
            total: 100,
        },
        Step::Event {
            kind: 1,
            id: 2,
            data: 3,
            total: 100,
        },
        Step::Event {
            kind: 4,
            id: 3,
            data: 3,
            total: 100,
        },
    ];
    let (inst, trace) = drive(&def, &steps, false);
    assert_eq!(inst.status, engine::Status::Failed);
    let last = &trace.last().expect("three inputs").1;
    let undo: Vec<&str> = last
        .iter()
        .filter_map(|e| match e {
            Effect::Command(c) if c.purpose == Purpose::Compensation => Some(c.kind.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(undo, ["com.acme.inventory.release"]);
}
