//! The runtime's counters: plain totals (the demo's and benchmark's summary
//! read them) and the Prometheus metrics with their labels, kept together so
//! one call counts both.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::{Purpose, Status};
use crate::telemetry::Metrics;

/// Counters the runtime keeps.
#[derive(Default)]
pub struct Stats {
    /// Domain events consumed from the input topics.
    pub events: AtomicU64,
    pub commands: AtomicU64,
    pub compensations: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Records handed to the transactional producer (commands, snapshots,
    /// audit, dead letters, forwards).
    pub records: AtomicU64,
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub incidents: AtomicU64,
    /// Step timeouts that fired.
    pub timeouts: AtomicU64,
    /// Commands re-sent by a retry.
    pub retries: AtomicU64,
    /// Commands sent because an `expect` watchdog fired.
    pub escalations: AtomicU64,
    /// Shards this process owns now.
    pub shards: AtomicU64,
    /// Input events processed on their own partition's shard, and re-keyed
    /// through the repartition topic.
    pub in_place: AtomicU64,
    pub forwarded: AtomicU64,
    /// Instances restored from the changelog, and how long restores took.
    pub restored_instances: AtomicU64,
    pub restore_ms: AtomicU64,
    /// The same counts with labels, for `/metrics`.
    pub metrics: Arc<Metrics>,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub(super) fn event_consumed(&self, topic: &str) {
        bump(&self.events);
        self.metrics.event_consumed(topic);
    }

    /// An input event routed to an instance: in place or through the repartition topic.
    pub(super) fn routed(&self, in_place: bool) {
        bump(if in_place {
            &self.in_place
        } else {
            &self.forwarded
        });
        self.metrics.routed(in_place);
    }

    pub(super) fn dead_letter(&self, kind: &str) {
        bump(&self.dead_letters);
        self.metrics.dead_letter(kind);
    }

    pub(super) fn started(&self, process: &str) {
        bump(&self.started);
        self.metrics.process(process).started.inc();
    }

    pub(super) fn ended(&self, process: &str, status: Status) {
        let p = self.metrics.process(process);
        match status {
            Status::Completed => {
                bump(&self.completed);
                p.completed.inc();
            }
            Status::Failed => {
                bump(&self.failed);
                p.failed.inc();
            }
            Status::Cancelled => {
                bump(&self.cancelled);
                p.cancelled.inc();
            }
            Status::Pending | Status::Active => {}
        }
    }

    /// A command sent: `attempt` > 1 is a retry.
    pub(super) fn command(&self, process: &str, purpose: Purpose, attempt: u32) {
        bump(&self.commands);
        let p = self.metrics.process(process);
        match purpose {
            Purpose::Compensation => {
                bump(&self.compensations);
                p.compensation_commands.inc();
            }
            Purpose::Escalation => {
                bump(&self.escalations);
                p.escalation_commands.inc();
            }
            Purpose::Task | Purpose::Manual if attempt > 1 => {
                bump(&self.retries);
                p.retry_commands.inc();
            }
            Purpose::Task | Purpose::Manual => {
                p.task_commands.inc();
            }
        }
    }

    /// An instance started compensating its completed steps.
    pub(super) fn compensated(&self, process: &str) {
        self.metrics.process(process).compensated.inc();
    }

    pub(super) fn incident(&self, process: &str) {
        bump(&self.incidents);
        self.metrics.process(process).incidents.inc();
    }

    pub(super) fn transitions(&self, process: &str, n: u64) {
        if n > 0 {
            self.metrics.process(process).transitions.inc_by(n);
        }
    }

    pub(super) fn transaction(&self, committed: bool) {
        if committed {
            bump(&self.transactions);
        }
        self.metrics.transaction(committed);
    }

    pub(super) fn restored(&self, records: u64, instances: u64, took: std::time::Duration) {
        self.restored_instances
            .fetch_add(instances, Ordering::Relaxed);
        self.restore_ms
            .fetch_add(took.as_millis() as u64, Ordering::Relaxed);
        self.metrics.restore_records.inc_by(records);
        self.metrics.restored_instances.inc_by(instances);
        self.metrics.restore_seconds.observe(took.as_secs_f64());
    }
}
