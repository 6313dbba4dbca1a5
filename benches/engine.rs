//! Engine throughput: full order-to-cash lifecycles in memory, and instance
//! snapshot encode/decode. Transitions are counted by the engine itself.

use std::hint::black_box;

use baton::dsl;
use baton::engine::{self, Event, Input, Instance};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

fn lifecycle() -> Vec<Input> {
    let ev = |id: &str, kind: &str, data: serde_json::Value| {
        Input::Event(Event {
            id: id.to_string(),
            kind: kind.to_string(),
            source: "bench".to_string(),
            time: 0,
            data,
        })
    };
    vec![
        ev(
            "1",
            "com.acme.order.placed",
            json!({"orderId": "o-1", "customerId": "c-1", "total": 250, "lines": [{"sku": "A", "qty": 2}], "address": "1 Main St"}),
        ),
        ev(
            "2",
            "com.acme.inventory.reserved",
            json!({"orderId": "o-1", "reservationId": "r-1"}),
        ),
        ev(
            "3",
            "com.acme.payment.charged",
            json!({"orderId": "o-1", "paymentId": "p-1"}),
        ),
        ev(
            "4",
            "com.acme.shipment.created",
            json!({"orderRef": "o-1", "trackingId": "t-1"}),
        ),
        ev(
            "5",
            "com.acme.invoice.created",
            json!({"orderId": "o-1", "invoiceId": "i-1"}),
        ),
        ev(
            "6",
            "com.acme.shipment.delivered",
            json!({"orderRef": "o-1"}),
        ),
    ]
}

fn run_once(def: &engine::Definition, inputs: &[Input]) -> Instance {
    let mut inst = Instance::new(&def.process, def.version, "o-1");
    for (i, input) in inputs.iter().enumerate() {
        black_box(engine::apply(def, &mut inst, input, 1_000 + i as u64));
    }
    inst
}

fn benches(c: &mut Criterion) {
    let text = include_str!("../examples/order-to-cash.yaml");
    let def = dsl::parse("order-to-cash.yaml", text).expect("example is valid");
    let inputs = lifecycle();
    let done = run_once(&def, &inputs);
    assert_eq!(done.status, engine::Status::Completed);
    let transitions = done.transitions;

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(transitions));
    g.bench_function(
        format!("order_to_cash_lifecycle ({transitions} transitions)"),
        |b| b.iter(|| run_once(&def, black_box(&inputs))),
    );
    g.finish();

    // A mid-flight instance: vars, tokens, timers, an armed watchdog.
    let mut mid = Instance::new(&def.process, def.version, "o-1");
    for (i, input) in inputs[..4].iter().enumerate() {
        engine::apply(&def, &mut mid, input, 1_000 + i as u64);
    }
    let bytes = baton::wire::encode(&mid);
    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("encode ({} bytes)", bytes.len()), |b| {
        b.iter(|| baton::wire::encode(black_box(&mid)))
    });
    g.bench_function("decode", |b| {
        b.iter(|| baton::wire::decode(black_box(&bytes)).expect("decodes"))
    });
    g.finish();
}

criterion_group!(engine_benches, benches);
criterion_main!(engine_benches);
