//! What `/healthz` and `/readyz` report. The runtime updates it as it goes;
//! the admin port reads it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Readiness facts, as the runtime last saw them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Readiness {
    /// The consumer has received its first assignment from the group.
    pub joined: bool,
    /// The transactional producer is initialised and its last transaction did not fail unrecovered.
    pub producer: bool,
    /// Shards owned and restored.
    pub shards: Vec<i32>,
    /// Shards assigned but still restoring from the changelog.
    pub restoring: Vec<i32>,
    /// The consumer group has settled: the coordinator calls it stable,
    /// every shard has an owner and no hand-over is under way.
    pub settled: bool,
    /// Why the group has not settled, when it has not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The runtime is shutting down.
    pub stopping: bool,
    /// The processing loop has not turned for this many milliseconds (more
    /// than [`STALLED_AFTER`]): it waits, e.g. on a commit while the broker
    /// is away, so it processes nothing. Set when readiness is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_ms: Option<u64>,
}

/// How long the processing loop may go without turning before readiness
/// fails (a commit normally takes milliseconds; a batch is bounded by
/// `runtime.max_batch`).
pub const STALLED_AFTER: Duration = Duration::from_secs(5);

impl Readiness {
    /// Ready to process: joined, the group settled, producer usable, every
    /// assigned shard restored.
    pub fn ready(&self) -> bool {
        self.joined
            && self.settled
            && self.producer
            && self.restoring.is_empty()
            && !self.stopping
            && self.stalled_ms.is_none()
    }
}

/// Shared between the runtime and the admin port.
#[derive(Debug)]
pub struct Health {
    readiness: Mutex<Readiness>,
    /// When the processing loop last turned.
    beat: Mutex<Instant>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            readiness: Mutex::new(Readiness::default()),
            beat: Mutex::new(Instant::now()),
        }
    }
}

impl Health {
    pub fn update(&self, f: impl FnOnce(&mut Readiness)) {
        if let Ok(mut r) = self.readiness.lock() {
            f(&mut r);
        }
    }

    pub fn readiness(&self) -> Readiness {
        let mut r = self.readiness.lock().map(|r| r.clone()).unwrap_or_default();
        let since = self.since_beat();
        if since > STALLED_AFTER {
            r.stalled_ms = Some(since.as_millis() as u64);
        }
        r
    }

    /// The processing loop is turning.
    pub fn beat(&self) {
        if let Ok(mut b) = self.beat.lock() {
            *b = Instant::now();
        }
    }

    /// How long ago the processing loop last turned.
    pub fn since_beat(&self) -> Duration {
        self.beat
            .lock()
            .map(|b| b.elapsed())
            .unwrap_or(Duration::MAX)
    }
}
