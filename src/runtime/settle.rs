//! Watches the consumer group from a thread of its own, so that readiness
//! can wait for the group to settle without the processing loop waiting for
//! the coordinator.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::debug;

use crate::config::Config;
use crate::kafka::group::{GroupView, GroupWatch, Part};
use crate::kafka::{Consumer, KafkaFailure};

/// How often the group is described.
const EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Latest {
    /// Descriptions so far (the runtime re-evaluates readiness when it moves).
    seq: u64,
    view: Option<Result<GroupView, String>>,
    /// Every partition the group subscribes to.
    expected: BTreeSet<Part>,
}

/// The thread describing the group; it stops when this is dropped.
pub struct GroupWatcher {
    latest: Arc<Mutex<Latest>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GroupWatcher {
    pub fn start(cfg: &Config, topics: Vec<String>) -> Result<GroupWatcher, KafkaFailure> {
        let mut watch = GroupWatch::new(cfg)?;
        let latest = Arc::new(Mutex::new(Latest::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = cfg.clone();
        let thread = {
            let latest = latest.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("baton-group".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let timeout = Duration::from_secs(5);
                        // The group is described only while the cluster
                        // answers metadata, and a client whose description
                        // failed is replaced: librdkafka 2.12 failed an
                        // internal assertion (`rd_kafka_enq_once_del_source_return`,
                        // admin coordinator requests) and ended the process
                        // when the broker came back after an outage with
                        // descriptions outstanding.
                        let expected = watch.partitions(&topics, timeout);
                        let view = match &expected {
                            Ok(_) => watch.describe(timeout).map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        if let Err(e) = &view {
                            debug!(error = %e, "cannot describe the group");
                            if expected.is_ok()
                                && let Ok(fresh) = GroupWatch::new(&cfg)
                            {
                                watch = fresh;
                            }
                        }
                        if let Ok(mut l) = latest.lock() {
                            l.seq += 1;
                            l.view = Some(view);
                            if let Ok(e) = expected {
                                l.expected = e;
                            }
                        }
                        std::thread::sleep(EVERY);
                    }
                })
                .map_err(|e| KafkaFailure::Topic {
                    topic: "(group)".into(),
                    problem: format!("cannot start the group watch thread: {e}"),
                })?
        };
        Ok(GroupWatcher {
            latest,
            stop,
            thread: Some(thread),
        })
    }

    /// How many descriptions have arrived.
    pub fn seq(&self) -> u64 {
        self.latest.lock().map(|l| l.seq).unwrap_or(0)
    }

    /// Why the group has not settled for `consumer` (`None`: it has).
    pub fn unsettled(&self, consumer: &Consumer) -> Option<String> {
        let Ok(l) = self.latest.lock() else {
            return Some("the group watch failed".into());
        };
        match &l.view {
            None => Some("the group has not been described yet".into()),
            Some(Err(e)) => Some(format!("cannot describe the group: {e}")),
            Some(Ok(v)) => v.unsettled(&consumer.member_id(), &consumer.assignment(), &l.expected),
        }
    }
}

impl Drop for GroupWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
