//! Prometheus metrics (`/metrics`), named `baton_<thing>_<unit>_total` or
//! `_seconds`. Label values are bounded: process names, topics, partitions,
//! dead-letter kinds, command kinds — never instance keys or event ids.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabel {
    process: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    process: String,
    /// `task`, `retry`, `compensation` or `escalation`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    process: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    /// `in_place` or `repartition`.
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// The counters of one process definition, looked up once per name.
#[derive(Clone, Default)]
pub struct ProcessCounters {
    pub started: Counter,
    pub completed: Counter,
    pub failed: Counter,
    pub cancelled: Counter,
    pub compensated: Counter,
    pub transitions: Counter,
    pub incidents: Counter,
    pub task_commands: Counter,
    pub retry_commands: Counter,
    pub compensation_commands: Counter,
    pub escalation_commands: Counter,
}

/// What a shard holds, counted by the runtime from time to time.
#[derive(Debug, Default)]
pub struct Holdings {
    /// Instances in memory per (process, status).
    pub instances: BTreeMap<(String, String), i64>,
    /// Open incidents per process.
    pub incidents: BTreeMap<String, i64>,
    pub timers: i64,
}

/// Every metric baton exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    events: Family<TopicLabel, Counter>,
    routed: Family<PathLabel, Counter>,
    /// The two series of `routed`, looked up once (counted per event).
    routed_in_place: Counter,
    routed_repartition: Counter,
    commands: Family<CommandLabels, Counter>,
    transitions: Family<ProcessLabel, Counter>,
    started: Family<ProcessLabel, Counter>,
    completed: Family<ProcessLabel, Counter>,
    failed: Family<ProcessLabel, Counter>,
    cancelled: Family<ProcessLabel, Counter>,
    compensated: Family<ProcessLabel, Counter>,
    incidents_raised: Family<ProcessLabel, Counter>,
    incidents_open: Family<ProcessLabel, Gauge>,
    instances: Family<StatusLabels, Gauge>,
    dead_letters: Family<KindLabel, Counter>,
    pub duplicates: Counter,
    pub rejoins: Counter,
    /// Transactions committed because they held `max_in_flight_records`.
    pub record_cap_commits: Counter,
    transactions: Family<OutcomeLabel, Counter>,
    pub commit_seconds: Histogram,
    pub batch_events: Histogram,
    pub restore_seconds: Histogram,
    pub restore_records: Counter,
    pub restored_instances: Counter,
    lag: Family<PartitionLabels, Gauge>,
    pub timers_pending: Gauge,
    pub shards_owned: Gauge,
    pub shards_restoring: Gauge,
    /// Shards holding their cap of instances.
    pub shards_full: Gauge,
    /// Input partitions stopped at the instance cap.
    pub inputs_stopped: Gauge,
    per_process: RwLock<HashMap<String, Arc<ProcessCounters>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("baton");
        let m = Metrics {
            registry: Registry::default(),
            events: Family::default(),
            routed: Family::default(),
            routed_in_place: Counter::default(),
            routed_repartition: Counter::default(),
            commands: Family::default(),
            transitions: Family::default(),
            started: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            cancelled: Family::default(),
            compensated: Family::default(),
            incidents_raised: Family::default(),
            incidents_open: Family::default(),
            instances: Family::default(),
            dead_letters: Family::default(),
            duplicates: Counter::default(),
            rejoins: Counter::default(),
            record_cap_commits: Counter::default(),
            transactions: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            restore_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            restore_records: Counter::default(),
            restored_instances: Counter::default(),
            lag: Family::default(),
            timers_pending: Gauge::default(),
            shards_owned: Gauge::default(),
            shards_restoring: Gauge::default(),
            shards_full: Gauge::default(),
            inputs_stopped: Gauge::default(),
            per_process: RwLock::new(HashMap::new()),
        };
        r.register(
            "events_consumed",
            "Domain events consumed from the input topics",
            m.events.clone(),
        );
        r.register(
            "events_routed",
            "Events routed to an instance: on their own partition's shard (in_place) or re-keyed (repartition)",
            m.routed.clone(),
        );
        r.register(
            "commands_emitted",
            "Command events emitted, by process and kind (task, retry, compensation, escalation)",
            m.commands.clone(),
        );
        r.register(
            "transitions",
            "Step transitions made by instances",
            m.transitions.clone(),
        );
        r.register("instances_started", "Instances started", m.started.clone());
        r.register(
            "instances_completed",
            "Instances that completed",
            m.completed.clone(),
        );
        r.register(
            "instances_failed",
            "Instances that failed",
            m.failed.clone(),
        );
        r.register(
            "instances_cancelled",
            "Instances that were cancelled",
            m.cancelled.clone(),
        );
        r.register(
            "instances_compensated",
            "Instances that ran their compensations",
            m.compensated.clone(),
        );
        r.register(
            "incidents_raised",
            "Incidents raised (a step parked until an operator acts)",
            m.incidents_raised.clone(),
        );
        r.register(
            "incidents_open",
            "Open incidents of the instances this process holds",
            m.incidents_open.clone(),
        );
        r.register(
            "instances",
            "Instances this process holds in memory, by status",
            m.instances.clone(),
        );
        r.register(
            "dead_letters",
            "Records sent to the dead-letter topic, by kind",
            m.dead_letters.clone(),
        );
        r.register(
            "events_duplicate",
            "Events an instance had already seen (same event id), ignored",
            m.duplicates.clone(),
        );
        r.register(
            "transactions_at_record_cap",
            "Transactions committed before their commit interval because they held runtime.max_in_flight_records records",
            m.record_cap_commits.clone(),
        );
        r.register(
            "consumer_rejoins",
            "Times the group consumer was rebuilt (fatal error, unknown position), its shards released and restored",
            m.rejoins.clone(),
        );
        r.register(
            "transactions",
            "Kafka transactions, by outcome (committed, aborted)",
            m.transactions.clone(),
        );
        r.register_with_unit(
            "transaction_commit",
            "Time to commit a transaction",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        r.register(
            "batch_events",
            "Records consumed per transaction",
            m.batch_events.clone(),
        );
        r.register_with_unit(
            "restore",
            "Time to restore a shard from the changelog",
            Unit::Seconds,
            m.restore_seconds.clone(),
        );
        r.register(
            "restore_records",
            "Changelog records read while restoring",
            m.restore_records.clone(),
        );
        r.register(
            "restored_instances",
            "Instances restored from the changelog",
            m.restored_instances.clone(),
        );
        r.register(
            "consumer_lag_records",
            "Records not yet consumed, per partition (librdkafka statistics)",
            m.lag.clone(),
        );
        r.register(
            "timers_pending",
            "Timers scheduled on the shards this process owns",
            m.timers_pending.clone(),
        );
        r.register(
            "shards_owned",
            "Shards (repartition partitions) this process owns",
            m.shards_owned.clone(),
        );
        r.register(
            "shards_restoring",
            "Shards being restored from the changelog",
            m.shards_restoring.clone(),
        );
        r.register(
            "shards_full",
            "Shards that reached runtime.max_instances_per_shard instances and hold more than 90 % of it still: events for new instances are dead letters (instance-cap) or stop their input (runtime.at_instance_cap)",
            m.shards_full.clone(),
        );
        r.register(
            "inputs_stopped",
            "Input partitions stopped at an event that would start an instance on a full shard (runtime.at_instance_cap = pause)",
            m.inputs_stopped.clone(),
        );
        let path = |p: &str| {
            m.routed
                .get_or_create(&PathLabel {
                    path: p.to_string(),
                })
                .clone()
        };
        let (routed_in_place, routed_repartition) = (path("in_place"), path("repartition"));
        Metrics {
            registry: r,
            routed_in_place,
            routed_repartition,
            ..m
        }
    }

    /// The counters of `process` (created on first use).
    pub fn process(&self, process: &str) -> Arc<ProcessCounters> {
        if let Ok(map) = self.per_process.read()
            && let Some(c) = map.get(process)
        {
            return c.clone();
        }
        let label = || ProcessLabel {
            process: process.to_string(),
        };
        let command = |kind: &str| {
            self.commands
                .get_or_create(&CommandLabels {
                    process: process.to_string(),
                    kind: kind.to_string(),
                })
                .clone()
        };
        let c = Arc::new(ProcessCounters {
            started: self.started.get_or_create(&label()).clone(),
            completed: self.completed.get_or_create(&label()).clone(),
            failed: self.failed.get_or_create(&label()).clone(),
            cancelled: self.cancelled.get_or_create(&label()).clone(),
            compensated: self.compensated.get_or_create(&label()).clone(),
            transitions: self.transitions.get_or_create(&label()).clone(),
            incidents: self.incidents_raised.get_or_create(&label()).clone(),
            task_commands: command("task"),
            retry_commands: command("retry"),
            compensation_commands: command("compensation"),
            escalation_commands: command("escalation"),
        });
        if let Ok(mut map) = self.per_process.write() {
            map.entry(process.to_string()).or_insert_with(|| c.clone());
        }
        c
    }

    pub fn event_consumed(&self, topic: &str) {
        self.events
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
    }

    pub fn routed(&self, in_place: bool) {
        if in_place {
            self.routed_in_place.inc();
        } else {
            self.routed_repartition.inc();
        }
    }

    pub fn dead_letter(&self, kind: &str) {
        self.dead_letters
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn transaction(&self, committed: bool) {
        let outcome = if committed { "committed" } else { "aborted" };
        self.transactions
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Replaces the consumer-lag gauges with `lag`.
    pub fn set_lag(&self, lag: &BTreeMap<(String, i32), i64>) {
        self.lag.clear();
        for ((topic, p), n) in lag {
            self.lag
                .get_or_create(&PartitionLabels {
                    topic: topic.clone(),
                    partition: p.to_string(),
                })
                .set(*n);
        }
    }

    /// Replaces the gauges of what the shards hold; `processes` are the
    /// deployed ones, reported with 0 where they hold nothing.
    pub fn set_holdings(&self, processes: &[String], h: &Holdings) {
        self.instances.clear();
        for ((process, status), n) in &h.instances {
            self.instances
                .get_or_create(&StatusLabels {
                    process: process.clone(),
                    status: status.clone(),
                })
                .set(*n);
        }
        for p in processes {
            let open = h.incidents.get(p).copied().unwrap_or(0);
            self.incidents_open
                .get_or_create(&ProcessLabel { process: p.clone() })
                .set(open);
        }
        self.timers_pending.set(h.timers);
    }

    /// The OpenMetrics text exposition (what Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_labels_are_bounded() {
        let m = Metrics::new();
        let c = m.process("order-to-cash");
        c.started.inc();
        c.task_commands.inc();
        m.event_consumed("orders.events");
        m.dead_letter("undecodable");
        m.commit_seconds.observe(0.02);
        let text = m.encode();
        for line in [
            "baton_instances_started_total{process=\"order-to-cash\"} 1",
            "baton_commands_emitted_total{process=\"order-to-cash\",kind=\"task\"} 1",
            "baton_events_consumed_total{topic=\"orders.events\"} 1",
            "baton_dead_letters_total{kind=\"undecodable\"} 1",
            "# TYPE baton_transaction_commit_seconds histogram",
            "baton_transaction_commit_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // The same counters come back for the same process.
        m.process("order-to-cash").started.inc();
        assert_eq!(c.started.get(), 2);
    }

    #[test]
    fn gauges_are_replaced_not_accumulated() {
        let m = Metrics::new();
        let mut h = Holdings::default();
        h.instances.insert(("p".into(), "active".into()), 3);
        h.incidents.insert("p".into(), 1);
        h.timers = 4;
        m.set_holdings(&["p".into(), "q".into()], &h);
        let mut lag = BTreeMap::new();
        lag.insert(("t".to_string(), 0), 7);
        m.set_lag(&lag);
        m.set_holdings(&["p".into(), "q".into()], &Holdings::default());
        m.set_lag(&BTreeMap::new());
        let text = m.encode();
        assert!(!text.contains("status=\"active\""), "{text}");
        assert!(
            text.contains("baton_incidents_open{process=\"p\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("baton_incidents_open{process=\"q\"} 0"),
            "{text}"
        );
        assert!(text.contains("baton_timers_pending 0"), "{text}");
        assert!(!text.contains("baton_consumer_lag_records{"), "{text}");
    }
}
