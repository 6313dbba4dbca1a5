//! Load for the benchmark: order events, simulated services that answer
//! baton's commands (and time them), changelog seeding, and the raw read that
//! restore is compared with.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::BenchError;
use super::worker::registry;
use baton::config::Config;
use baton::engine::{Event, Registry};
use baton::kafka::{self, KafkaFailure, Outgoing, PlainConsumer, PlainProducer};
use baton::runtime::{now_ms, shard_of};
use baton::shard::Shard;
use baton::wire::{self, ShardInputKind, ShardRecord, cloudevents};

/// The topics order-to-cash sends its commands to.
pub const COMMANDS: [&str; 3] = ["erp.commands", "payments.commands", "wms.commands"];

fn event(topic: &str, order: &str, id: &str, kind: &str, data: &Value) -> Outgoing {
    Outgoing {
        topic: topic.to_string(),
        partition: None,
        // Keyed by order: every event of an order stays in order on one partition.
        key: order.as_bytes().to_vec(),
        payload: Some(cloudevents::structured(id, kind, "bench", 0, data)),
        headers: Vec::new(),
    }
}

/// The `order.placed` event of `order`.
pub fn placed(topic: &str, order: &str, n: u64) -> Outgoing {
    event(
        topic,
        order,
        &format!("{order}/placed"),
        "com.acme.order.placed",
        &order_data(order, n),
    )
}

fn order_data(order: &str, n: u64) -> Value {
    // Totals stay under order-to-cash's manual-approval threshold.
    json!({"orderId": order, "customerId": format!("c-{}", n % 97), "total": 100 + n % 900, "lines": [{"sku": "A-1", "qty": 1 + n % 3}], "address": "1 Main St"})
}

/// The six events of one order's lifecycle (what baton consumes per order).
pub fn lifecycle(topic: &str, order: &str, n: u64) -> Vec<Outgoing> {
    let mut out = vec![placed(topic, order, n)];
    for (kind, data) in [
        (
            "com.acme.inventory.reserved",
            json!({"orderId": order, "reservationId": "r"}),
        ),
        (
            "com.acme.payment.charged",
            json!({"orderId": order, "paymentId": "p"}),
        ),
        (
            "com.acme.shipment.created",
            json!({"orderRef": order, "trackingId": "t"}),
        ),
        (
            "com.acme.invoice.created",
            json!({"orderId": order, "invoiceId": "i"}),
        ),
        ("com.acme.shipment.delivered", json!({"orderRef": order})),
    ] {
        out.push(event(topic, order, &format!("{order}/{kind}"), kind, &data));
    }
    out
}

/// Sends one record, waiting for room when the producer's queue is full.
pub fn send(producer: &PlainProducer, r: &Outgoing) -> Result<(), KafkaFailure> {
    match producer.send(r) {
        Ok(()) => Ok(()),
        Err(_) => {
            producer.flush()?;
            producer.send(r)
        }
    }
}

/// When each order's latest event was sent, and the event → command latencies.
#[derive(Default)]
pub struct Tracker {
    /// Latencies are kept only while this is set (not during warm-up).
    pub record: AtomicBool,
    sent: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<f64>>,
}

impl Tracker {
    /// An event of `order` was sent now (its next command is timed from here).
    pub fn sent(&self, order: &str) {
        if let Ok(mut s) = self.sent.lock() {
            s.insert(order.to_string(), Instant::now());
        }
    }

    /// A command for `order` arrived now; false when the order is not this run's.
    fn command(&self, order: &str) -> bool {
        let now = Instant::now();
        let Some(at) = self.sent.lock().ok().and_then(|s| s.get(order).copied()) else {
            return false;
        };
        if self.record.load(Ordering::Relaxed)
            && let Ok(mut l) = self.latencies.lock()
        {
            l.push(now.duration_since(at).as_secs_f64() * 1000.0);
        }
        true
    }

    fn forget(&self, order: &str) {
        if let Ok(mut s) = self.sent.lock() {
            s.remove(order);
        }
    }

    /// Orders (or records) sent and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.sent.lock().map_or(0, |s| s.len())
    }

    /// The latencies (ms) recorded so far.
    pub fn take_latencies(&self) -> Vec<f64> {
        self.latencies
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

/// Simulated ERP, payment provider and warehouse: each command of this run's
/// orders is answered once with its success event.
pub struct Services {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Services {
    /// Answers what `consumer` (subscribed to [`COMMANDS`]) reads, on `input`.
    pub fn start(
        consumer: PlainConsumer,
        producer: PlainProducer,
        input: &str,
        tracker: Arc<Tracker>,
    ) -> Services {
        let stop = Arc::new(AtomicBool::new(false));
        let input = input.to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answered = HashSet::new();
            while !flag.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let header = |name: &str| {
                    m.headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| std::str::from_utf8(v).ok())
                };
                let (Some(kind), Some(id)) = (header("ce_type"), header("ce_id")) else {
                    continue;
                };
                let data: Value = m
                    .payload
                    .as_deref()
                    .and_then(|p| serde_json::from_slice(p).ok())
                    .unwrap_or(Value::Null);
                let Some(order) = data["order"].as_str() else {
                    continue;
                };
                // Command topics are shared by every phase: answer only this run's orders, once.
                if !answered.insert(id.to_string()) || !tracker.command(order) {
                    continue;
                }
                let reply = |kind: &str, data: Value| {
                    event(&input, order, &format!("{id}/{kind}"), kind, &data)
                };
                let replies = match kind {
                    "com.acme.inventory.reserve" => vec![reply(
                        "com.acme.inventory.reserved",
                        json!({"orderId": order, "reservationId": "r"}),
                    )],
                    "com.acme.payment.charge" => vec![reply(
                        "com.acme.payment.charged",
                        json!({"orderId": order, "paymentId": "p"}),
                    )],
                    "com.acme.shipment.create" => vec![reply(
                        "com.acme.shipment.created",
                        json!({"orderRef": order, "trackingId": "t"}),
                    )],
                    // The carrier delivers once the invoice is asked for, so
                    // the order completes without waiting for its SLA.
                    "com.acme.invoice.create" => vec![
                        reply(
                            "com.acme.invoice.created",
                            json!({"orderId": order, "invoiceId": "i"}),
                        ),
                        reply("com.acme.shipment.delivered", json!({"orderRef": order})),
                    ],
                    _ => continue,
                };
                if kind == "com.acme.invoice.create" {
                    tracker.forget(order);
                } else {
                    tracker.sent(order);
                }
                for r in &replies {
                    let _ = send(&producer, r);
                }
            }
        });
        Services { stop, thread }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Reads what the passthrough wrote (read_committed) and times each record
/// from the moment its input was sent.
pub struct Sink {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Sink {
    pub fn start(consumer: PlainConsumer, tracker: Arc<Tracker>) -> Sink {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                if let Some(key) = m.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
                    && tracker.command(key)
                {
                    tracker.forget(key);
                }
            }
        });
        Sink { stop, thread }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Writes idle order-to-cash instances (waiting for their reservation)
/// straight into a changelog, as baton would have left them.
pub struct Seeder {
    producer: PlainProducer,
    changelog: String,
    partitions: i32,
    registry: Registry,
}

impl Seeder {
    pub fn new(
        producer: PlainProducer,
        changelog: &str,
        partitions: i32,
    ) -> Result<Seeder, BenchError> {
        Ok(Seeder {
            producer,
            changelog: changelog.to_string(),
            partitions,
            registry: registry()?,
        })
    }

    /// Writes instances `s-<n>` for every `n` in `range`.
    pub fn write(
        &self,
        range: Range<u64>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BenchError> {
        // Timers (the reservation's timeout) fall due long after the run, so
        // restored instances stay idle.
        let now = now_ms() + 86_400_000;
        for n in range {
            let order = format!("s-{n}");
            let placed = ShardRecord {
                process: "order-to-cash".into(),
                key: order.clone(),
                input: ShardInputKind::Event {
                    event: Event {
                        id: format!("{order}/placed"),
                        kind: "com.acme.order.placed".into(),
                        source: "bench".into(),
                        time: 0,
                        data: order_data(&order, n),
                    },
                    origin: None,
                },
            };
            // The instance as a shard leaves it, one shard per instance so
            // that the seeder holds none of them.
            let mut shard = Shard::new(None);
            shard
                .apply(&self.registry, placed, now, None)
                .map_err(|e| BenchError::Worker(e.to_string()))?;
            let id = format!("order-to-cash/{order}");
            let inst = shard
                .instance(&id)
                .ok_or_else(|| BenchError::Worker(format!("{id} did not start")))?;
            let r = Outgoing {
                topic: self.changelog.clone(),
                partition: Some(shard_of(&id, self.partitions)),
                key: id.into_bytes(),
                // Position 0: covered by any committed offset, so always restored.
                payload: Some(wire::encode_changelog(0, &inst)),
                headers: Vec::new(),
            };
            send(&self.producer, &r)?;
            if n % 10_000 == 0 {
                progress(n);
            }
        }
        self.producer.flush()?;
        Ok(())
    }
}

/// What reading a topic's partitions, and nothing else, costs.
pub struct RawRead {
    pub records: u64,
    pub bytes: u64,
    /// Sum over partitions (read in parallel, as restore does) of their read times.
    pub ms: u64,
}

/// Reads every partition of `topic` to its end with the client restore uses.
pub fn raw_read(cfg: &Config, topic: &str, partitions: i32) -> Result<RawRead, BenchError> {
    let reads: Vec<Result<(u64, u64, u64), KafkaFailure>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..partitions)
            .map(|p| {
                s.spawn(move || {
                    let started = Instant::now();
                    let records = kafka::read_partition(cfg, topic, p)?;
                    let ms = started.elapsed().as_millis() as u64;
                    let bytes = records
                        .iter()
                        .map(|r| {
                            (r.key.as_ref().map_or(0, Vec::len)
                                + r.payload.as_ref().map_or(0, Vec::len))
                                as u64
                        })
                        .sum();
                    Ok((records.len() as u64, bytes, ms))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(KafkaFailure::Topic {
                        topic: topic.to_string(),
                        problem: "the reading thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut total = RawRead {
        records: 0,
        bytes: 0,
        ms: 0,
    };
    for r in reads {
        let (records, bytes, ms) = r?;
        total.records += records;
        total.bytes += bytes;
        total.ms += ms;
    }
    Ok(total)
}
