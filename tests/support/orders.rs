//! Order-to-cash around a real broker: configuration, order events, and
//! simulated ERP, payment provider and warehouse that answer every command.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton::config::{self, Config};
use baton::kafka::{Incoming, Outgoing, PlainConsumer, PlainProducer};
use baton::wire::cloudevents;
use serde_json::{Value, json};

use super::unique;

/// The topics of one test's orders: every test has its own, named after
/// its (unique) consumer group, since the tests of a binary share a broker.
#[derive(Debug, Clone)]
pub struct Topics {
    /// The orders and the services' answers.
    pub input: String,
    /// Where order-to-cash sends its commands (ERP, payments, warehouse).
    pub commands: Vec<String>,
    prefix: String,
}

/// The command topics of the order-to-cash example, as the file names them.
const EXAMPLE_COMMANDS: [&str; 4] = [
    "erp.commands",
    "payments.commands",
    "wms.commands",
    "support.commands",
];

impl Topics {
    pub fn of(group: &str) -> Topics {
        Topics {
            input: format!("{group}.orders.events"),
            commands: EXAMPLE_COMMANDS[..3]
                .iter()
                .map(|t| format!("{group}.{t}"))
                .collect(),
            prefix: group.to_string(),
        }
    }

    /// The order-to-cash example with this test's command topics.
    pub fn definition(&self) -> String {
        let mut text = include_str!("../../examples/order-to-cash.yaml").to_string();
        for t in EXAMPLE_COMMANDS {
            text = text.replace(
                &format!("topic: {t}"),
                &format!("topic: {}.{t}", self.prefix),
            );
        }
        text
    }

    /// Writes [`Topics::definition`] into `dir`; returns its path.
    pub fn write_definition(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("order-to-cash.yaml");
        std::fs::write(&path, self.definition()).expect("definition written");
        path
    }

    /// The `order.placed` event of order `o-<n>`.
    pub fn placed(&self, n: u64) -> Outgoing {
        placed_on(&self.input, n)
    }
}

/// Creates the input topic of `cfg`'s group (as many partitions as its
/// shards); returns the group's topics.
pub fn create_input(cfg: &Config) -> Topics {
    let t = Topics::of(&cfg.kafka.group_id);
    baton::kafka::ensure_topics(cfg, &[(t.input.clone(), cfg.topics.partitions, false)])
        .expect("input topic");
    t
}

/// A configuration for tests: two shards, short commit interval and session.
pub fn config(bootstrap: &str, group: &str, instance: &str) -> Config {
    Config {
        kafka: config::Kafka {
            bootstrap_servers: bootstrap.to_string(),
            group_id: group.to_string(),
            input_topics: vec![Topics::of(group).input],
            options: BTreeMap::new(),
            group_protocol: Default::default(),
            max_record_bytes: None,
            secret_files: Default::default(),
            consumer_options: Default::default(),
            producer_options: Default::default(),
        },
        topics: config::Topics {
            prefix: format!("{group}.baton"),
            partitions: 2,
            replication_factor: 1,
            create: true,
            changelog_config: BTreeMap::new(),
        },
        definitions: config::Definitions { paths: Vec::new() },
        runtime: config::Runtime {
            instance_id: Some(instance.to_string()),
            commit_interval: Duration::from_millis(50),
            max_batch: 200,
            retention: Duration::from_secs(3600),
            session_timeout: Duration::from_secs(6),
            in_place: false,
            ..Default::default()
        },
        events: Default::default(),
        telemetry: Default::default(),
        log: Default::default(),
        admin: config::Admin {
            enabled: false,
            ..Default::default()
        },
    }
}

/// The `order.placed` event of order `o-<n>`, to `topic`.
pub fn placed_on(topic: &str, n: u64) -> Outgoing {
    let id = format!("placed-{n}");
    let data = json!({"orderId": format!("o-{n}"), "customerId": "c-1", "total": 100 + n, "lines": [{"sku": "A", "qty": 1}], "address": "1 Main St"});
    Outgoing {
        topic: topic.into(),
        partition: None,
        key: id.clone().into_bytes(),
        payload: Some(cloudevents::structured(
            &id,
            "com.acme.order.placed",
            "test",
            0,
            &data,
        )),
        headers: Vec::new(),
    }
}

/// Orders keyed by their id (so they are processed in place), `per_second`,
/// until stopped; the thread returns how many it sent. A send the client
/// cannot take (its queue is full while the broker is away) is tried again,
/// so every order counted was sent.
pub fn load(bootstrap: &str, t: &Topics, per_second: u64) -> (Arc<AtomicBool>, JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let producer = PlainProducer::new(bootstrap).expect("producer");
    let (st, t) = (stop.clone(), t.clone());
    let handle = std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0;
        while !st.load(Ordering::Relaxed) {
            let due = started.elapsed().as_millis() as u64 * per_second / 1000;
            while sent < due && !st.load(Ordering::Relaxed) {
                let mut r = t.placed(sent);
                r.key = format!("o-{sent}").into_bytes();
                if producer.send(&r).is_ok() {
                    sent += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        producer
            .flush()
            .expect("every order reaches the broker in the end");
        sent
    });
    (stop, handle)
}

/// A header of a record, as text.
pub fn header(m: &Incoming, name: &str) -> Option<String> {
    m.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
}

/// Kafka headers, as records carry them.
pub type Headers = Vec<(String, Vec<u8>)>;

/// How the simulated services answer.
pub struct Behaviour {
    /// The trace headers of the answer to a command for `order`, given the
    /// command's own (`traceparent`); by default the command's are passed on,
    /// as a service instrumented with OpenTelemetry does.
    pub trace: fn(order: &str, command: &Headers) -> Headers,
    /// The warehouse also reports the shipment delivered (the order then completes).
    pub deliver: bool,
    /// While set, the services stop reading their commands (a consumer
    /// that has stopped); they read the backlog once it is cleared.
    pub hold: Option<Arc<AtomicBool>>,
    /// The payment provider's first answer for this order lacks its
    /// `paymentId`: the order is parked in an incident at `charge`, and
    /// answered in full when an operator retries it.
    pub bad_charge: Option<String>,
}

fn propagate(_: &str, command: &Headers) -> Headers {
    command
        .iter()
        .filter(|(k, _)| k == "traceparent" || k == "tracestate")
        .cloned()
        .collect()
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            trace: propagate,
            deliver: false,
            hold: None,
            bad_charge: None,
        }
    }
}

/// Simulated services: every command succeeds, and each command id is answered once.
pub fn services(bootstrap: &str, topics: &Topics) -> Arc<AtomicBool> {
    services_with(bootstrap, topics, Behaviour::default())
}

/// Simulated services that answer as `behaviour` says.
pub fn services_with(bootstrap: &str, topics: &Topics, behaviour: Behaviour) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let input = topics.input.clone();
    let consumer = PlainConsumer::new(bootstrap, &unique("services"), &topics.commands)
        .expect("services consumer");
    let producer = PlainProducer::new(bootstrap).expect("services producer");
    let st = stop.clone();
    std::thread::spawn(move || {
        let mut answered = BTreeSet::new();
        while !st.load(Ordering::Relaxed) {
            if behaviour
                .hold
                .as_ref()
                .is_some_and(|h| h.load(Ordering::Relaxed))
            {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let (Some(kind), Some(id)) = (header(&m, "ce_type"), header(&m, "ce_id")) else {
                continue;
            };
            if !answered.insert(id.clone()) {
                continue;
            }

            let data: Value = m
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_slice(p).ok())
                .unwrap_or(Value::Null);
            let order = data["order"].clone();
            let (kind, data) = match kind.as_str() {
                "com.acme.inventory.reserve" => (
                    "com.acme.inventory.reserved",
                    json!({"orderId": order, "reservationId": "r"}),
                ),
                "com.acme.payment.charge"
                    if behaviour.bad_charge.as_deref() == order.as_str() && id.ends_with("/1") =>
                {
                    ("com.acme.payment.charged", json!({"orderId": order}))
                }
                "com.acme.payment.charge" => (
                    "com.acme.payment.charged",
                    json!({"orderId": order, "paymentId": "p"}),
                ),
                "com.acme.shipment.create" => (
                    "com.acme.shipment.created",
                    json!({"orderRef": order, "trackingId": "t"}),
                ),
                "com.acme.invoice.create" => (
                    "com.acme.invoice.created",
                    json!({"orderId": order, "invoiceId": "i"}),
                ),
                _ => continue,
            };
            let trace = (behaviour.trace)(order.as_str().unwrap_or_default(), &m.headers);
            let mut answers = vec![(format!("{id}/reply"), kind, data)];
            if behaviour.deliver && kind == "com.acme.shipment.created" {
                answers.push((
                    format!("{id}/delivered"),
                    "com.acme.shipment.delivered",
                    json!({"orderRef": order}),
                ));
            }
            for (eid, kind, data) in answers {
                let mut headers = trace.clone();
                headers.push((
                    "content-type".to_string(),
                    b"application/cloudevents+json".to_vec(),
                ));
                // Keyed by the order, as services key their events by the
                // business key: an order's answers stay in order.
                let _ = producer.send(&Outgoing {
                    topic: input.clone(),
                    partition: None,
                    key: order.as_str().unwrap_or(&eid).as_bytes().to_vec(),
                    payload: Some(cloudevents::structured(&eid, kind, "services", 0, &data)),
                    headers,
                });
            }
        }
        // Answers go out in the background (linger 2 ms); flushing after
        // each one held the services to about ten answers a second.
        let _ = producer.flush();
    });
    stop
}
