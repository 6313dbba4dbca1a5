//! baton runtimes on threads of the test process, and a collector of what
//! they commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use baton::config::Config;
use baton::dsl;
use baton::engine::Registry;
use baton::kafka::{Incoming, PlainConsumer};
use baton::runtime::{Faults, Runtime, RuntimeError, Stats};
use baton::telemetry::Health;

use super::orders::{Topics, header};
use super::unique;

/// order-to-cash as the example has it, with the test's command topics.
pub fn example(topics: &Topics) -> Registry {
    let text = topics.definition();
    let mut reg = Registry::default();
    reg.deploy(
        dsl::parse("order-to-cash.yaml", &text).expect("valid example"),
        &text,
    )
    .expect("deploy");
    reg
}

/// order-to-cash with durations divided by 1000 (at least 2 s): the reserve
/// timeout is 2 s; the command topics are the test's.
pub fn registry(topics: &Topics) -> Registry {
    let text = topics.definition();
    let mut def = dsl::parse("order-to-cash.yaml", &text).expect("valid example");
    def.scale_time(1000, 2000);
    let mut reg = Registry::default();
    reg.deploy(def, &text).expect("deploy");
    reg
}

/// One baton runtime on a thread of its own.
pub struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<(), RuntimeError>>,
    pub stats: Arc<Stats>,
    pub health: Arc<Health>,
    /// The live index of its instances.
    pub index: Arc<baton::index::Index>,
}

impl Running {
    /// Starts a runtime of the order-to-cash example (see [`registry`]).
    pub fn start(cfg: Config) -> Running {
        let registry = registry(&Topics::of(&cfg.kafka.group_id));
        Running::with(cfg, registry)
    }

    /// Starts a runtime of `registry`'s definitions.
    pub fn with(cfg: Config, registry: Registry) -> Running {
        Running::faulty(cfg, registry, Faults::default())
    }

    /// Starts a runtime of `registry`'s definitions with `faults` injected.
    pub fn faulty(cfg: Config, registry: Registry, faults: Faults) -> Running {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let runtime = Runtime::new(cfg, registry, stats.clone())
            .expect("runtime starts")
            .with_faults(faults);
        let health = runtime.health();
        let index = runtime.index();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || runtime.run(flag));
        Running {
            stop,
            handle,
            stats,
            health,
            index,
        }
    }

    /// Shards owned and restored.
    pub fn shards(&self) -> u64 {
        self.stats.shards.load(Ordering::Relaxed)
    }

    /// The shards owned and restored, as readiness reports them.
    pub fn owned(&self) -> Vec<i32> {
        self.health.readiness().shards
    }

    /// Waits for the runtime to end by itself (after an error); its result.
    pub fn join(self) -> Result<(), RuntimeError> {
        self.handle.join().expect("runtime thread")
    }

    /// Whether the runtime has ended (returned, with or without an error).
    pub fn ended(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops the runtime (it commits what is in flight) and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .expect("runtime thread")
            .expect("runtime ends cleanly");
    }
}

/// Everything read so far, shared with the collector's thread.
pub type Seen = Arc<Mutex<Vec<Incoming>>>;

/// Reads everything on `topics` (read_committed) into a shared list.
pub fn collector(bootstrap: &str, topics: &[String]) -> (Seen, Arc<AtomicBool>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let topics = topics.to_vec();
    let consumer = PlainConsumer::new(bootstrap, &unique("collector"), &topics).expect("collector");
    let (s, st) = (seen.clone(), stop.clone());
    std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100))
                && let Ok(mut v) = s.lock()
            {
                v.push(m);
            }
        }
    });
    (seen, stop)
}

/// Every record of partitions `0..partitions` of `topics`, as a
/// read_committed consumer reads them (`None`: a read failed).
pub fn committed(cfg: &Config, topics: &[String], partitions: i32) -> Option<Vec<Incoming>> {
    let mut all = Vec::new();
    for topic in topics {
        for p in 0..partitions {
            all.extend(baton::kafka::read_partition(cfg, topic, p).ok()?);
        }
    }
    Some(all)
}

/// How many different orders got a command of this type.
pub fn orders_with(seen: &[Incoming], kind: &str) -> usize {
    let orders: std::collections::BTreeSet<String> = ids_of(seen, kind)
        .iter()
        .filter_map(|id| id.split('/').nth(1).map(str::to_string))
        .collect();
    orders.len()
}

/// The command ids of one command type.
pub fn ids_of(seen: &[Incoming], kind: &str) -> Vec<String> {
    seen.iter()
        .filter(|m| header(m, "ce_type").as_deref() == Some(kind))
        .filter_map(|m| header(m, "ce_id"))
        .collect()
}

/// Every order `o-0`…`o-<orders-1>` got the first attempt of every command,
/// and no command id appears twice (a slow answer may add a retry: a new
/// attempt with a new id).
pub fn assert_each_command_once(all: &[Incoming], orders: u64) {
    for kind in [
        "com.acme.inventory.reserve",
        "com.acme.payment.charge",
        "com.acme.shipment.create",
        "com.acme.invoice.create",
    ] {
        let ids = ids_of(all, kind);
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{kind} duplicated: {ids:?}");
        for n in 0..orders {
            let first = format!("order-to-cash/o-{n}/{}/1", kind_step(kind));
            assert!(ids.contains(&first), "{kind}: {first} missing in {ids:?}");
        }
    }
}

fn kind_step(kind: &str) -> &'static str {
    match kind {
        "com.acme.inventory.reserve" => "reserve",
        "com.acme.payment.charge" => "charge",
        "com.acme.shipment.create" => "ship",
        _ => "invoice",
    }
}
