//! The Kafka runtime: consume → step → produce, exactly once.
//!
//! Domain events arrive on the input topics and are re-keyed onto baton's
//! repartition topic, whose partitions are the shards: shard *p* owns the
//! instances whose id hashes to *p*, and its state lives in partition *p* of
//! the compacted changelog. Every batch runs in one Kafka transaction that
//! holds the commands, changelog snapshots, audit records, dead letters,
//! repartitioned events and the consumed offsets.
//!
//! The position guard: every state change on a shard is caused by a record
//! consumed from its repartition partition (due timers are first written there
//! as timer records), and each changelog snapshot carries the position (next
//! offset) of the record that caused it. On restore, a snapshot beyond the
//! committed offset of the shard's partition came from a transaction that
//! never committed: it is ignored, and the next transaction rewrites that key.
//! Correctness therefore depends neither on the broker hiding aborted records
//! nor on offset-commit metadata; records of aborted transactions that are
//! read again are harmless because the engine deduplicates events by id and
//! ignores timers that are no longer pending.

mod faults;
mod settle;
mod shard;
mod stats;

use faults::Armed;
pub use faults::Faults;
use settle::GroupWatcher;
pub use stats::Stats;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engine::{self, Instance, Millis, Registry};
use crate::kafka::{self, Consumer, Incoming, KafkaFailure, Offsets, Outgoing, Producer};
use crate::telemetry::metrics::Holdings;
use crate::telemetry::{Health, Tracer};
use crate::wire::{self, cloudevents};

/// Why the runtime stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error("{0}")]
    Setup(String),
    /// A snapshot was written under other content of its definition version.
    #[error("{0}")]
    Definition(String),
}

/// Content hash of every deployed definition version (see
/// [`engine::Definition::hash`]), by process and version.
type Hashes = Arc<HashMap<String, HashMap<u32, String>>>;

fn hashes(registry: &Registry) -> Hashes {
    let mut out: HashMap<String, HashMap<u32, String>> = HashMap::new();
    for d in registry.all() {
        out.entry(d.process.clone())
            .or_default()
            .insert(d.version, d.hash.clone());
    }
    Arc::new(out)
}

/// Refuses an instance whose snapshot names other content of its definition
/// version than the one deployed: its step indexes would point elsewhere.
fn check_definition(hashes: &Hashes, key: &str, inst: &Instance) -> Result<(), RuntimeError> {
    let Some(deployed) = hashes
        .get(inst.process.as_str())
        .and_then(|v| v.get(&inst.version))
    else {
        return Ok(());
    };
    if inst.definition.is_empty() || deployed.is_empty() || *deployed == inst.definition {
        return Ok(());
    }
    Err(RuntimeError::Definition(format!(
        "instance {key} runs {} version {} as it was deployed with content {}, but the file deployed now as {} version {} has content {}: the definition was edited without a new version. Put the original file of version {} back, and deploy the edited one as version {} (running instances keep their version; new ones take the newest)",
        inst.process,
        inst.version,
        inst.definition,
        inst.process,
        inst.version,
        deployed,
        inst.version,
        inst.version + 1
    )))
}

/// Wall clock in epoch milliseconds (the runtime's, never the engine's).
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The shard an instance lives on: the partition Kafka's default (murmur2)
/// partitioner picks for its correlation key, so events keyed by that key
/// land on the instance's shard and can be processed in place.
pub fn shard_of(instance_id: &str, partitions: i32) -> i32 {
    let key = instance_id
        .split_once('/')
        .map_or(instance_id, |(_, key)| key);
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (the Java client's and Kafka Streams' default partitioner;
/// librdkafka's `murmur2_random`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The transaction in flight, shared with the revocation hook.
#[derive(Default)]
struct Txn {
    open: bool,
    offsets: Offsets,
    /// Shards written in this transaction (their repairs are done).
    shards: BTreeSet<i32>,
    events: usize,
    started: Option<Instant>,
    /// Set by the revocation hook: the transaction was committed (true) or failed (false).
    ended_by_hook: Option<bool>,
    /// A batch is being processed: what the transaction holds is not yet
    /// everything the consumed offsets stand for, so it must not commit.
    in_batch: bool,
}

/// One baton process in the consumer group.
pub struct Runtime {
    cfg: Config,
    registry: Registry,
    /// The registry's definition hashes, for restores to check against.
    hashes: Hashes,
    consumer: Consumer,
    producer: Arc<Producer>,
    txn: Arc<Mutex<Txn>>,
    shards: HashMap<i32, shard::Shard>,
    restoring: HashMap<i32, Restoring>,
    inputs: Vec<String>,
    repartition: String,
    changelog: String,
    partitions: i32,
    stats: Arc<Stats>,
    health: Arc<Health>,
    tracer: Tracer,
    /// When the gauges (holdings, lag) were last refreshed.
    gauges_at: Instant,
    /// The consumer has had its first assignment.
    joined: bool,
    /// Describes the group for readiness (`None`: readiness does not wait for it).
    group: Option<GroupWatcher>,
    /// The group description readiness was last evaluated against.
    group_seq: u64,
    /// The topics the consumer subscribes to.
    subscribe: Vec<String>,
    /// Faults a test injects (`None` in production).
    faults: Option<Armed>,
    /// An in-place input was found partitioned by another hash (said once).
    partitioner_warned: AtomicBool,
    /// Shard records that panicked once, with the panic's message.
    panicked: HashMap<(String, i32, i64), String>,
    /// Shard records not to process again (they panicked twice the same way,
    /// or would produce an oversized record): dead-lettered when read again.
    poisoned: HashMap<(String, i32, i64), Poison>,
    /// Input records whose instance lives on their own partition's shard are
    /// processed there, without the repartition hop.
    in_place: bool,
}

/// How often gauges that need a walk over the instances are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);

fn ctx<'a>(
    registry: &'a Registry,
    cfg: &'a Config,
    partitions: i32,
    stats: &'a Stats,
    tracer: &'a Tracer,
    repartition: &'a str,
    faults: Option<&'a Armed>,
) -> shard::Ctx<'a> {
    shard::Ctx {
        repartition,
        registry,
        topics: &cfg.topics,
        retention: cfg.runtime.retention.as_millis() as u64,
        partitions,
        stats,
        tracer,
        log_payloads: cfg.log.payloads,
        max_record: cfg.kafka.max_record_bytes.unwrap_or(usize::MAX),
        faults,
    }
}

/// How many records that panicked once are remembered.
const PANICS_KEPT: usize = 1000;

/// A shard panicked on the record `at` (topic, partition, offset), or
/// processing it would have produced a record above the size limit.
struct Panicked {
    at: Option<(String, i32, i64)>,
    message: String,
    oversized: bool,
}

/// A record not to process again: it becomes a dead letter of this kind.
struct Poison {
    kind: &'static str,
    reason: String,
}

/// Processes a shard's records of one batch; a panic is caught and says on
/// which record it happened. Records that panicked twice become dead letters.
fn run_shard(
    s: &mut shard::Shard,
    p: i32,
    records: &[Incoming],
    ctx: &shard::Ctx<'_>,
    poisoned: &HashMap<(String, i32, i64), Poison>,
) -> Result<Vec<Outgoing>, Panicked> {
    let mut out = Vec::new();
    for m in records {
        let at = (m.topic.clone(), m.partition, m.offset);
        if let Some(poison) = poisoned.get(&at) {
            shard::refuse(s, p, m, poison.kind, &poison.reason, ctx, &mut out);
            continue;
        }
        let before = out.len();
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shard::handle(s, p, m, ctx, &mut out)
        }));
        if let Err(payload) = step {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            return Err(Panicked {
                at: Some(at),
                message,
                oversized: false,
            });
        }
        if let Some(big) = out[before..]
            .iter()
            .find(|r| kafka::record_size(r) > ctx.max_record)
        {
            return Err(Panicked {
                message: format!(
                    "processing it would produce a record of {} bytes to {}, above the limit of {} bytes (kafka.max_record_bytes)",
                    kafka::record_size(big),
                    big.topic,
                    ctx.max_record
                ),
                at: Some(at),
                oversized: true,
            });
        }
    }
    Ok(out)
}

/// A shard being restored in the background, and records that arrived for it meanwhile.
struct Restoring {
    rx: std::sync::mpsc::Receiver<Result<shard::Shard, RuntimeError>>,
    held: Vec<Incoming>,
}

/// Committed offsets of a shard's sources: `""` is its repartition
/// partition, other keys are input topics processed in place.
type Committed = HashMap<String, i64>;

/// Committed offsets of shard `p`'s sources (see [`Committed`]), read by a
/// client that is not a group member. They wait for a transaction that holds
/// offsets of these partitions to end (Kafka's stable offsets): the previous
/// owner's, or, for a fenced one, until the broker aborts it after
/// `transaction.timeout.ms`. Retried while the broker keeps them unstable.
fn committed_sources(cfg: &Config, p: i32) -> Result<Committed, RuntimeError> {
    let repartition = cfg.topics.repartition();
    let mut wanted = vec![(repartition.clone(), p)];
    // Also without in-place processing: snapshots written while it was on
    // stay valid after it is turned off.
    wanted.extend(cfg.kafka.input_topics.iter().map(|t| (t.clone(), p)));
    let deadline = Instant::now() + Duration::from_secs(300);
    let got = loop {
        let attempt = match kafka::committed_offsets(cfg, &wanted) {
            // An input topic may have fewer partitions when nothing runs in place.
            Err(_) if !cfg.runtime.in_place && wanted.len() > 1 => {
                wanted.truncate(1);
                continue;
            }
            other => other,
        };
        match attempt {
            Ok(got) => break got,
            Err(e) if Instant::now() < deadline => {
                warn!(partition = p, error = %e, "committed offsets not readable yet (a transaction of a previous owner may still be open); retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut c = Committed::new();
    for ((topic, _), offset) in got {
        let source = if topic == repartition {
            String::new()
        } else {
            topic
        };
        c.insert(source, offset);
    }
    Ok(c)
}

/// Reads shard `p`'s changelog partition to its end and rebuilds its
/// instances, honouring the position guard: a snapshot is valid when the
/// record that wrote it is below the committed offset of its source.
fn rebuild(
    cfg: &Config,
    p: i32,
    committed: Committed,
    stats: &Stats,
    hashes: &Hashes,
) -> Result<shard::Shard, RuntimeError> {
    let started = Instant::now();
    // Snapshots up to these positions belong to committed transactions.
    let valid_until = |source: &str| committed.get(source).map_or(0, |o| (*o).max(0) as u64);
    let records = kafka::read_partition(cfg, &cfg.topics.changelog(), p)?;
    let mut latest: HashMap<String, Option<Instance>> = HashMap::new();
    let mut repair: BTreeSet<String> = BTreeSet::new();
    let count = records.len();
    for r in records {
        let Some(key) = r
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_string)
        else {
            continue;
        };
        match r.payload.as_deref() {
            None => {
                latest.insert(key.clone(), None);
                repair.remove(&key);
            }
            Some(bytes) => match wire::decode_changelog_at(bytes) {
                Ok((source, position, inst)) if position <= valid_until(&source) => {
                    latest.insert(key.clone(), Some(inst));
                    repair.remove(&key);
                }
                Ok(_) => {
                    repair.insert(key);
                }
                Err(e) => {
                    warn!(partition = p, offset = r.offset, error = %e, "unreadable changelog record skipped")
                }
            },
        }
    }
    let retention = cfg.runtime.retention.as_millis() as u64;
    let mut shard = shard::Shard {
        instances: HashMap::new(),
        timers: BTreeSet::new(),
        position: committed.get("").copied().unwrap_or(-1),
        in_flight: BTreeSet::new(),
        repair: repair.into_iter().collect(),
    };
    for (key, inst) in latest {
        if let Some(inst) = inst {
            check_definition(hashes, &key, &inst)?;
            shard.add_timers(&key, &inst, retention);
            shard.instances.insert(key, inst);
        }
    }
    let took = started.elapsed();
    let ms = took.as_millis() as u64;
    info!(
        partition = p,
        records = count,
        instances = shard.instances.len(),
        repaired = shard.repair.len(),
        ms,
        "shard restored"
    );
    stats.restored(count as u64, shard.instances.len() as u64, took);
    Ok(shard)
}

/// Every topic named in a definition's commands.
pub fn command_topics(registry: &Registry) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for def in registry.latest_all() {
        for s in &def.steps {
            if let engine::StepKind::Task(t) = &s.kind {
                out.extend(t.command.iter().map(|c| c.topic.clone()));
                out.extend(t.compensate.iter().map(|c| c.topic.clone()));
            }
        }
        for e in &def.expect {
            out.extend(e.command.iter().map(|c| c.topic.clone()));
        }
    }
    out
}

/// Creates the group consumer (not yet subscribed) with its revocation hook.
fn consumer(
    cfg: &Config,
    txn: &Arc<Mutex<Txn>>,
    producer: &Arc<Producer>,
) -> Result<Consumer, RuntimeError> {
    let consumer = Consumer::new(cfg)?;
    let txn = txn.clone();
    let producer = producer.clone();
    // Before partitions go, the work done on them is committed, so the
    // next owner starts exactly where this one stopped.
    consumer.on_revoke(Box::new(move |c, lost| {
        let Ok(mut t) = txn.lock() else { return };
        if !t.open {
            return;
        }
        if lost || t.in_batch {
            // The group fenced this member (it missed its session,
            // e.g. paused or partitioned away): another member owns
            // these shards and reprocesses from the committed offsets,
            // so this work must never commit. Nor may a batch cut
            // short by an error (the hook also runs when a failed
            // runtime drops its consumer): half of it would commit
            // with all of its offsets.
            if lost {
                warn!("partitions lost to the group; aborting the open transaction");
            } else {
                warn!("revocation during an unfinished batch; aborting the open transaction");
            }
            let _ = producer.abort();
            t.open = false;
            t.ended_by_hook = Some(false);
            return;
        }
        let ok = match producer.commit(c, &t.offsets) {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "commit before revocation failed; aborting");
                let _ = producer.abort();
                false
            }
        };
        t.open = false;
        t.ended_by_hook = Some(ok);
    }));
    Ok(consumer)
}

impl Runtime {
    /// Provisions topics, creates the clients and joins the group.
    pub fn new(
        mut cfg: Config,
        registry: Registry,
        stats: Arc<Stats>,
    ) -> Result<Runtime, RuntimeError> {
        cfg.kafka.max_record_bytes = Some(kafka::record_limit(&cfg)?);
        let t = &cfg.topics;
        let n = t.partitions;
        let mut topics = vec![
            (t.changelog(), n, true),
            (t.repartition(), n, false),
            (t.audit(), n, false),
            (t.dead_letters(), n, false),
            (t.operator(), n, false),
        ];
        for c in command_topics(&registry) {
            topics.push((c, n, false));
        }
        if cfg.runtime.in_place {
            // Input partition p is processed as part of shard p.
            for input in &cfg.kafka.input_topics {
                topics.push((input.clone(), n, false));
            }
        }
        kafka::ensure_topics(&cfg, &topics)?;
        let transactional_id = format!("{}-{}", cfg.kafka.group_id, cfg.instance_id());
        let producer = Arc::new(Producer::new(&cfg, &transactional_id)?);
        let mut subscribe = cfg.kafka.input_topics.clone();
        subscribe.push(t.repartition());
        let txn = Arc::new(Mutex::new(Txn::default()));
        let consumer = consumer(&cfg, &txn, &producer)?;
        consumer.subscribe(&subscribe)?;
        let group = if cfg.runtime.await_settled_group {
            Some(GroupWatcher::start(&cfg, subscribe.clone())?)
        } else {
            None
        };
        let cfg_in_place = cfg.runtime.in_place;
        let health = Arc::new(Health::default());
        health.update(|r| r.producer = true);
        info!(transactional_id, partitions = n, "baton runtime ready");
        Ok(Runtime {
            inputs: cfg.kafka.input_topics.clone(),
            repartition: t.repartition(),
            changelog: t.changelog(),
            partitions: n,
            cfg,
            hashes: hashes(&registry),
            registry,
            consumer,
            producer,
            txn,
            shards: HashMap::new(),
            restoring: HashMap::new(),
            stats,
            health,
            tracer: Tracer::disabled(),
            gauges_at: Instant::now(),
            joined: false,
            group,
            group_seq: 0,
            subscribe,
            faults: None,
            partitioner_warned: AtomicBool::new(false),
            panicked: HashMap::new(),
            poisoned: HashMap::new(),
            in_place: cfg_in_place,
        })
    }

    /// Records spans through `tracer` (tracing is off otherwise).
    pub fn with_tracer(mut self, tracer: Tracer) -> Runtime {
        self.tracer = tracer;
        self
    }

    /// Injects faults (tests only).
    #[doc(hidden)]
    pub fn with_faults(mut self, faults: Faults) -> Runtime {
        self.faults = Some(Armed::new(faults));
        self
    }

    /// What `/healthz` and `/readyz` report about this runtime.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Runs until `stop` is set; the transaction in flight is committed first.
    /// On an error the open transaction is aborted, never committed.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<(), RuntimeError> {
        let result = self.turn_until(&stop);
        if result.is_err() {
            self.abort_open();
        }
        result
    }

    fn turn_until(&mut self, stop: &AtomicBool) -> Result<(), RuntimeError> {
        while !stop.load(Ordering::Relaxed) {
            self.health.beat();
            if self
                .group
                .as_ref()
                .is_some_and(|g| g.seq() != self.group_seq)
            {
                self.refresh_readiness();
            }
            let batch = self.poll_batch()?;
            self.set_in_batch(true);
            self.process(batch)?;
            self.fire_timers()?;
            self.set_in_batch(false);
            self.maybe_commit(false)?;
            self.refresh_gauges(false);
        }
        self.health.update(|r| r.stopping = true);
        self.maybe_commit(true)?;
        Ok(())
    }

    fn set_in_batch(&self, on: bool) {
        if let Ok(mut t) = self.txn.lock() {
            t.in_batch = on;
        }
    }

    /// Aborts the transaction in flight (the runtime is failing).
    fn abort_open(&mut self) {
        let Ok(mut t) = self.txn.lock() else { return };
        if t.open {
            warn!("the runtime failed; aborting the open transaction");
            if let Err(e) = self.producer.abort() {
                warn!(error = %e, "abort failed; the broker aborts the transaction after its timeout");
            }
        }
        *t = Txn::default();
    }

    /// Replaces the consumer, which is unusable or at an unknown position:
    /// the open transaction is aborted, every shard is released, and a new
    /// consumer joins the group; the shards come back by assignment and
    /// restore from what was committed.
    fn rejoin(&mut self) -> Result<(), RuntimeError> {
        self.abort_open();
        self.shards.clear();
        self.restoring.clear();
        let fresh = consumer(&self.cfg, &self.txn, &self.producer)?;
        // The old consumer leaves before the new one joins, so a static
        // member's instance id is free again.
        drop(std::mem::replace(&mut self.consumer, fresh));
        self.consumer.subscribe(&self.subscribe)?;
        self.stats.metrics.rejoins.inc();
        self.refresh_readiness();
        Ok(())
    }

    /// Readiness as the shards stand now.
    fn refresh_readiness(&mut self) {
        let joined = self.consumer.joined();
        self.joined = joined;
        let unsettled = match &self.group {
            Some(g) => {
                self.group_seq = g.seq();
                g.unsettled(&self.consumer)
            }
            None => None,
        };
        let mut shards: Vec<i32> = self.shards.keys().copied().collect();
        let mut restoring: Vec<i32> = self.restoring.keys().copied().collect();
        shards.sort_unstable();
        restoring.sort_unstable();
        self.stats
            .shards
            .store(shards.len() as u64, Ordering::Relaxed);
        let m = &self.stats.metrics;
        m.shards_owned.set(shards.len() as i64);
        m.shards_restoring.set(restoring.len() as i64);
        self.health.update(|r| {
            r.joined = joined;
            r.settled = unsettled.is_none();
            r.group = unsettled;
            r.shards = shards;
            r.restoring = restoring;
        });
    }

    /// Gauges that need a walk over the instances, at most every [`GAUGE_INTERVAL`].
    fn refresh_gauges(&mut self, now: bool) {
        if !now && self.gauges_at.elapsed() < GAUGE_INTERVAL {
            return;
        }
        self.gauges_at = Instant::now();
        self.refresh_readiness();
        let mut h = Holdings::default();
        // Counted under borrowed names: no allocation per instance.
        let mut instances: HashMap<(&str, &str), i64> = HashMap::new();
        let mut incidents: HashMap<&str, i64> = HashMap::new();
        for s in self.shards.values() {
            h.timers += s.timers.len() as i64;
            for inst in s.instances.values() {
                *instances
                    .entry((inst.process.as_str(), inst.status.as_str()))
                    .or_default() += 1;
                if !inst.incidents.is_empty() {
                    *incidents.entry(inst.process.as_str()).or_default() +=
                        inst.incidents.len() as i64;
                }
            }
        }
        h.instances = instances
            .into_iter()
            .map(|((p, st), n)| ((p.to_string(), st.to_string()), n))
            .collect();
        h.incidents = incidents
            .into_iter()
            .map(|(p, n)| (p.to_string(), n))
            .collect();
        let processes: Vec<String> = self
            .registry
            .latest_all()
            .map(|d| d.process.clone())
            .collect();
        self.stats.metrics.set_holdings(&processes, &h);
        self.stats.metrics.set_lag(&self.consumer.lag());
    }

    /// Records that arrived within the poll wait, up to the batch limit; those
    /// of partitions revoked meanwhile are left to their next owner.
    fn poll_batch(&mut self) -> Result<Vec<Incoming>, RuntimeError> {
        let mut batch: Vec<Incoming> = self.finish_restores()?;
        let mut wait = if batch.is_empty() {
            self.poll_wait()
        } else {
            Duration::ZERO
        };
        while batch.len() < self.cfg.runtime.max_batch {
            match self.consumer.poll(wait) {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => {
                    if let Some(fatal) = self.consumer.fatal_error() {
                        // UNRELEASED_INSTANCE_ID: the previous run of this
                        // static member crashed and the broker keeps its
                        // place until its session times out; or a second
                        // process uses the same runtime.instance_id.
                        warn!(error = %fatal, "the consumer failed fatally (if this says UNRELEASED_INSTANCE_ID: this process's previous run has not timed out of the group yet, or another process runs with the same runtime.instance_id); joining again in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                        self.rejoin()?;
                        return Ok(Vec::new());
                    }
                    warn!(error = %e, "consumer error");
                }
                None => break,
            }
            wait = Duration::ZERO;
            let revoked = self.after_rebalance()?;
            if !revoked.is_empty() {
                batch.retain(|m| !revoked.contains(&(m.topic.clone(), m.partition)));
            }
        }
        self.after_rebalance()?;
        Ok(batch)
    }

    /// Input records are routed and re-keyed; shard records are stepped, one
    /// thread per shard, and everything they produce joins the transaction.
    fn process(&mut self, batch: Vec<Incoming>) -> Result<(), RuntimeError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Ok(mut t) = self.txn.lock() {
            t.events += batch.len();
        }
        let mut by_shard: BTreeMap<i32, Vec<Incoming>> = BTreeMap::new();
        for m in batch {
            if m.topic == self.repartition {
                if !self.shards.contains_key(&m.partition) {
                    // Not ready yet: held (not consumed) until its restore ends.
                    self.start_restore(m.partition)?;
                    if let Some(r) = self.restoring.get_mut(&m.partition) {
                        r.held.push(m);
                    }
                    continue;
                }
                by_shard.entry(m.partition).or_default().push(m);
            } else {
                for local in self.handle_input(m)? {
                    by_shard.entry(local.partition).or_default().push(local);
                }
            }
        }
        for (&p, records) in &by_shard {
            if let Some(first) = records.first() {
                self.prepare_shard(p, &first.topic, (first.offset + 1) as u64)?;
            }
            for m in records {
                self.consumed(m)?;
            }
        }
        let ctx = ctx(
            &self.registry,
            &self.cfg,
            self.partitions,
            &self.stats,
            &self.tracer,
            &self.repartition,
            self.faults.as_ref(),
        );
        let poisoned = &self.poisoned;
        let mut outputs: Vec<Result<Vec<Outgoing>, Panicked>> = Vec::new();
        let work: Vec<(i32, &mut shard::Shard, &Vec<Incoming>)> = self
            .shards
            .iter_mut()
            .filter_map(|(p, s)| by_shard.get(p).map(|r| (*p, s, r)))
            .collect();
        if work.len() <= 1 {
            for (p, s, records) in work {
                outputs.push(run_shard(s, p, records, &ctx, poisoned));
            }
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = work
                    .into_iter()
                    .map(|(p, s, records)| {
                        let ctx = &ctx;
                        scope.spawn(move || run_shard(s, p, records, ctx, poisoned))
                    })
                    .collect();
                for h in handles {
                    outputs.push(h.join().unwrap_or_else(|_| {
                        Err(Panicked {
                            at: None,
                            message: "a shard worker died".into(),
                            oversized: false,
                        })
                    }));
                }
            });
        }
        let mut panics = Vec::new();
        let mut records = Vec::new();
        for o in outputs {
            match o {
                Ok(out) => records.extend(out),
                Err(p) => panics.push(p),
            }
        }
        if !panics.is_empty() {
            return self.after_panic(panics);
        }
        for r in records {
            self.send(r)?;
        }
        Ok(())
    }

    /// A shard panicked, or would have produced an oversized record: nothing
    /// of the batch may commit. The transaction is aborted and the batch
    /// processed again from the committed state; a record that panics a
    /// second time the same way, or an oversized one, is dead-lettered then.
    fn after_panic(&mut self, panics: Vec<Panicked>) -> Result<(), RuntimeError> {
        for p in panics {
            let Some(at) = p.at else {
                warn!(message = %p.message, "a shard worker panicked; processing the batch again");
                continue;
            };
            if self.panicked.len() >= PANICS_KEPT {
                self.panicked.clear();
            }
            if p.oversized {
                warn!(topic = %at.0, partition = at.1, offset = at.2, reason = %p.message, "a record would produce an oversized record; processing the batch again without it");
                let poison = Poison {
                    kind: "oversized",
                    reason: p.message,
                };
                self.poisoned.insert(at, poison);
            } else if self.panicked.get(&at) == Some(&p.message) {
                warn!(topic = %at.0, partition = at.1, offset = at.2, message = %p.message, "processing a record panicked again; processing the batch again without it");
                let poison = Poison {
                    kind: "panic",
                    reason: format!("processing this record panicked twice: {}", p.message),
                };
                self.poisoned.insert(at, poison);
            } else {
                warn!(topic = %at.0, partition = at.1, offset = at.2, message = %p.message, "processing a record panicked; aborting the batch and processing it again");
                self.panicked.insert(at, p.message);
            }
        }
        self.abort_open();
        self.stats.transaction(false);
        self.recover()
    }

    fn ctx(&self) -> shard::Ctx<'_> {
        ctx(
            &self.registry,
            &self.cfg,
            self.partitions,
            &self.stats,
            &self.tracer,
            &self.repartition,
            self.faults.as_ref(),
        )
    }

    fn poll_wait(&self) -> Duration {
        let interval = self.cfg.runtime.commit_interval;
        match self.txn.lock().ok().and_then(|t| t.started) {
            Some(s) => interval
                .saturating_sub(s.elapsed())
                .max(Duration::from_millis(1)),
            None => interval.min(Duration::from_millis(100)),
        }
    }

    /// Acts on what the last poll's rebalances did; returns the revoked partitions.
    fn after_rebalance(&mut self) -> Result<Vec<(String, i32)>, RuntimeError> {
        let hook = self
            .txn
            .lock()
            .ok()
            .and_then(|mut t| t.ended_by_hook.take());
        let r = self.consumer.take_rebalances();
        for (topic, p) in &r.revoked {
            if *topic == self.repartition {
                self.restoring.remove(p);
                self.shards.remove(p);
                info!(partition = p, "shard released");
            }
        }
        // Released shards first: a failed (or fenced) transaction rebuilds
        // only the shards this process still owns.
        match hook {
            Some(true) => self.committed(),
            Some(false) => self.recover()?,
            None => {}
        }
        let changed = !r.revoked.is_empty() || !r.assigned.is_empty();
        for (topic, p) in r.assigned {
            if topic == self.repartition {
                self.start_restore(p)?;
            }
        }
        if changed || (!self.joined && self.consumer.joined()) {
            self.refresh_readiness();
        }
        Ok(r.revoked)
    }

    /// Rebuilds shard `p` now (used after a failed transaction).
    fn restore(&mut self, p: i32) -> Result<(), RuntimeError> {
        self.restoring.remove(&p);
        let committed = committed_sources(&self.cfg, p)?;
        let shard = rebuild(&self.cfg, p, committed, &self.stats, &self.hashes)?;
        self.install(p, shard);
        Ok(())
    }

    /// Starts rebuilding shard `p` on a thread of its own; the partition is
    /// paused meanwhile, so the other shards keep going.
    fn start_restore(&mut self, p: i32) -> Result<(), RuntimeError> {
        if self.restoring.contains_key(&p) || self.shards.contains_key(&p) {
            return Ok(());
        }
        self.consumer.pause(&self.repartition, p)?;
        if self.in_place {
            for input in &self.inputs {
                // Best effort: records that still arrive are held in memory.
                if let Err(e) = self.consumer.pause(input, p) {
                    debug!(topic = %input, partition = p, error = %e, "input partition not paused");
                }
            }
        }
        let rx = self.spawn_restore(p);
        self.restoring.insert(
            p,
            Restoring {
                rx,
                held: Vec::new(),
            },
        );
        Ok(())
    }

    /// Reads shard `p`'s committed offsets and changelog on a thread of its
    /// own: the offsets may wait for the transaction of a previous owner to
    /// end (KIP-447), which must not stop the other shards.
    fn spawn_restore(
        &self,
        p: i32,
    ) -> std::sync::mpsc::Receiver<Result<shard::Shard, RuntimeError>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let cfg = self.cfg.clone();
        let stats = self.stats.clone();
        let hashes = self.hashes.clone();
        std::thread::spawn(move || {
            let result = committed_sources(&cfg, p)
                .and_then(|committed| rebuild(&cfg, p, committed, &stats, &hashes));
            let _ = tx.send(result);
        });
        rx
    }

    /// Installs shards whose restore finished; returns the records held for them.
    fn finish_restores(&mut self) -> Result<Vec<Incoming>, RuntimeError> {
        let mut ready = Vec::new();
        let pending: Vec<i32> = self.restoring.keys().copied().collect();
        for p in pending {
            let result = match self.restoring.get(&p).map(|r| r.rx.try_recv()) {
                Some(Ok(result)) => result,
                Some(Err(std::sync::mpsc::TryRecvError::Empty)) | None => continue,
                Some(Err(std::sync::mpsc::TryRecvError::Disconnected)) => Err(RuntimeError::Setup(
                    format!("the restore of shard {p} stopped"),
                )),
            };
            let Some(mut r) = self.restoring.remove(&p) else {
                continue;
            };
            let shard = match result {
                Ok(shard) => shard,
                // Not transient: the operator must act.
                Err(e @ RuntimeError::Definition(_)) => return Err(e),
                Err(e) => {
                    // The partition stays paused and its held records stay
                    // held: nothing of it was consumed. Try again.
                    warn!(partition = p, error = %e, "shard restore failed; retrying");
                    r.rx = self.spawn_restore(p);
                    self.restoring.insert(p, r);
                    continue;
                }
            };
            self.install(p, shard);
            self.consumer.resume(&self.repartition, p)?;
            if self.in_place {
                for input in &self.inputs {
                    if let Err(e) = self.consumer.resume(input, p) {
                        debug!(topic = %input, partition = p, error = %e, "input partition not resumed");
                    }
                }
            }
            ready.extend(r.held);
            self.refresh_readiness();
        }
        Ok(ready)
    }

    fn install(&mut self, p: i32, shard: shard::Shard) {
        self.shards.insert(p, shard);
    }

    /// A transaction failed: state and positions go back to what was
    /// committed. A position that cannot be read or set is not guessed: the
    /// consumer is rebuilt, and its shards start again from what was committed.
    fn recover(&mut self) -> Result<(), RuntimeError> {
        warn!("transaction failed; restoring shards and rewinding to committed offsets");
        if let Ok(mut t) = self.txn.lock() {
            *t = Txn::default();
        }
        // Input records held for shards still restoring are read again from
        // the committed offsets the inputs are rewound to below.
        let repartition = self.repartition.clone();
        for r in self.restoring.values_mut() {
            r.held.retain(|m| m.topic == repartition);
        }
        match self.rewind() {
            Ok(()) => Ok(()),
            Err(e @ RuntimeError::Definition(_)) => Err(e),
            Err(e) => {
                warn!(error = %e, "cannot rewind to the committed offsets; rebuilding the consumer");
                self.rejoin()
            }
        }
    }

    /// Rebuilds the owned shards and moves every assigned partition back to
    /// its committed offset (the log start where nothing was committed yet).
    fn rewind(&mut self) -> Result<(), RuntimeError> {
        let owned: Vec<i32> = self.shards.keys().copied().collect();
        for p in owned {
            self.restore(p)?;
            let at = self.shards.get(&p).map_or(-1, |s| s.position);
            self.consumer.seek(&self.repartition, p, at)?;
        }
        for (topic, p) in self.consumer.assignment() {
            if topic == self.repartition {
                continue;
            }
            let at = self.consumer.committed(&topic, p)?.map_or(-1, |(o, _)| o);
            self.consumer.seek(&topic, p, at)?;
        }
        Ok(())
    }

    fn committed(&mut self) {
        if let Ok(t) = self.txn.lock() {
            debug!(
                events = t.events,
                shards = t.shards.len(),
                "transaction committed"
            );
        }
        self.stats.transaction(true);
        if let Ok(mut t) = self.txn.lock() {
            *t = Txn::default();
        }
    }

    fn begin(&mut self) -> Result<(), RuntimeError> {
        let mut t = self
            .txn
            .lock()
            .map_err(|_| RuntimeError::Setup("transaction state poisoned".into()))?;
        if !t.open {
            self.producer.begin()?;
            t.open = true;
            t.started = Some(Instant::now());
        }
        Ok(())
    }

    fn send(&mut self, r: Outgoing) -> Result<(), RuntimeError> {
        self.begin()?;
        if self.faults.as_ref().is_some_and(Armed::send_fails) {
            return Err(RuntimeError::Kafka(KafkaFailure::Topic {
                topic: r.topic,
                problem: "injected fault: produce fails".into(),
            }));
        }
        self.producer.send(&r)?;
        Ok(())
    }

    /// Commits when the batch is full or old enough (or `force`).
    fn maybe_commit(&mut self, force: bool) -> Result<(), RuntimeError> {
        let offsets = {
            let Ok(t) = self.txn.lock() else {
                return Ok(());
            };
            if !t.open {
                return Ok(());
            }
            let old = t
                .started
                .is_some_and(|s| s.elapsed() >= self.cfg.runtime.commit_interval);
            if !(force || old || t.events >= self.cfg.runtime.max_batch) {
                return Ok(());
            }
            self.stats.metrics.batch_events.observe(t.events as f64);
            t.offsets.clone()
        };
        let started = Instant::now();
        let result = if self.faults.as_ref().is_some_and(Armed::commit_fails) {
            Err(KafkaFailure::Topic {
                topic: "(transaction)".into(),
                problem: "injected fault: the commit fails".into(),
            })
        } else {
            self.producer.commit(&self.consumer.inner, &offsets)
        };
        self.stats
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => self.committed(),
            Err(e) => {
                warn!(error = %e, "commit failed");
                self.stats.transaction(false);
                let _ = self.producer.abort();
                self.recover()?;
            }
        }
        Ok(())
    }

    /// Opens the transaction for shard `p`; the first time, it rewrites the keys
    /// whose latest changelog record never committed (with `position`).
    fn prepare_shard(&mut self, p: i32, topic: &str, position: u64) -> Result<(), RuntimeError> {
        let source = if topic == self.repartition { "" } else { topic };
        self.begin()?;
        let fresh = self
            .txn
            .lock()
            .map(|mut t| t.shards.insert(p))
            .unwrap_or(false);
        if !fresh {
            return Ok(());
        }
        let repair = self
            .shards
            .get_mut(&p)
            .map(|s| std::mem::take(&mut s.repair))
            .unwrap_or_default();
        for key in repair {
            let payload = self
                .shards
                .get(&p)
                .and_then(|s| s.instances.get(&key))
                .map(|i| wire::encode_changelog_at(source, position, i));
            let r = Outgoing {
                topic: self.changelog.clone(),
                partition: Some(p),
                key: key.into_bytes(),
                payload,
                headers: Vec::new(),
            };
            self.send(r)?;
        }
        Ok(())
    }

    // ---- records ------------------------------------------------------------

    fn consumed(&mut self, m: &Incoming) -> Result<(), RuntimeError> {
        self.begin()?;
        if let Ok(mut t) = self.txn.lock() {
            // Offsets only move forward: a record processed in place is
            // recorded again after later records of its partition were.
            let next = m.offset + 1;
            t.offsets
                .entry((m.topic.clone(), m.partition))
                .and_modify(|(o, _)| *o = (*o).max(next))
                .or_insert((next, String::new()));
        }
        Ok(())
    }

    /// A domain event: decode, find its processes, and forward it to their shards.
    /// Returns the records to process in place on this process's shards.
    fn handle_input(&mut self, m: Incoming) -> Result<Vec<Incoming>, RuntimeError> {
        if self.in_place
            && let Some(r) = self.restoring.get_mut(&m.partition)
        {
            // Its shard is restoring: held (not consumed) so the partition's
            // order is kept.
            r.held.push(m);
            return Ok(Vec::new());
        }
        self.stats.event_consumed(&m.topic);
        self.consumed(&m)?;
        let mut local = Vec::new();
        let mut span = self.tracer.input(&m);
        let plain = cloudevents::PlainJson {
            type_field: self.cfg.events.type_field.clone(),
            id_field: self.cfg.events.id_field.clone(),
        };
        let rec = cloudevents::Record {
            topic: &m.topic,
            partition: m.partition,
            offset: m.offset,
            timestamp: m.timestamp,
            headers: &m.headers,
            payload: m.payload.as_deref(),
        };
        let mut out = Vec::new();
        let ctx = self.ctx();
        match cloudevents::decode(&rec, &plain) {
            Err(e) => {
                span.error(&e.to_string());
                out.push(ctx.dead_letter(&m, "undecodable", &e.to_string()))
            }
            Ok(event) => {
                span.set("messaging.message.id", event.id.clone());
                span.set("cloudevents.event_id", event.id.clone());
                span.set("cloudevents.event_type", event.kind.clone());
                span.set("cloudevents.event_source", event.source.clone());
                if self.cfg.log.payloads {
                    debug!(topic = %m.topic, partition = m.partition, offset = m.offset, event_id = %event.id, kind = %event.kind, data = %event.data, "event consumed");
                }
                let mut routed = 0;
                let mut failures = Vec::new();
                for def in self.registry.latest_all() {
                    match engine::route(def, &event) {
                        Ok(Some(r)) => {
                            routed += 1;
                            let origin = json!({ "topic": m.topic, "partition": m.partition, "offset": m.offset });
                            let body = json!({ "input": "event", "process": def.process, "key": r.key, "event": shard::event_json(&event), "origin": origin });
                            span.event(
                                "routed",
                                vec![
                                    opentelemetry::KeyValue::new(
                                        "baton.process",
                                        def.process.clone(),
                                    ),
                                    opentelemetry::KeyValue::new(
                                        "baton.instance.key",
                                        r.key.clone(),
                                    ),
                                ],
                            );
                            let mut fwd = ctx.forward(&def.process, &r.key, &body, span.headers());
                            if self.in_place
                                && fwd.partition == Some(m.partition)
                                && self.shards.contains_key(&m.partition)
                            {
                                // Same shard as the record's own partition: no hop.
                                self.stats.routed(true);
                                local.push(Incoming {
                                    topic: m.topic.clone(),
                                    partition: m.partition,
                                    offset: m.offset,
                                    timestamp: m.timestamp,
                                    key: Some(std::mem::take(&mut fwd.key)),
                                    headers: std::mem::take(&mut fwd.headers),
                                    payload: fwd.payload.take(),
                                });
                            } else {
                                if self.in_place
                                    && !self.partitioner_warned.load(Ordering::Relaxed)
                                    && m.key.as_deref() == Some(r.key.as_bytes())
                                    && self.shards.contains_key(&m.partition)
                                {
                                    // Keyed by its correlation key, yet on another
                                    // partition than murmur2 picks.
                                    self.partitioner_warned.store(true, Ordering::Relaxed);
                                    warn!(topic = %m.topic, partition = m.partition, key = %r.key, shard = ?fwd.partition, "an input keyed by its correlation key is not on the partition Kafka's default partitioner picks, so it takes the repartition hop: its producer must partition with murmur2 (librdkafka clients: partitioner=murmur2_random); baton_events_routed_total{{path=\"repartition\"}} counts these");
                                }
                                self.stats.routed(false);
                                out.push(fwd);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => failures
                            .push(format!("process {}: correlation failed: {e}", def.process)),
                    }
                }
                // A correlation that fails for one process is not an error when another
                // process took the event; only an event no process could take is dead.
                if routed == 0 && !failures.is_empty() {
                    span.error(&failures.join("; "));
                    out.push(ctx.dead_letter(&m, "correlation", &failures.join("; ")));
                } else if routed == 0 {
                    let reason = format!(
                        "no process starts on or correlates events of type {}",
                        event.kind
                    );
                    span.error(&reason);
                    out.push(ctx.dead_letter(&m, "no-process", &reason));
                } else if !failures.is_empty() {
                    debug!(
                        ?failures,
                        "processes that could not correlate an event another process took"
                    );
                }
            }
        }
        if let Some(big) = out.iter().find(|r| kafka::record_size(r) > ctx.max_record) {
            // Nothing of it is produced, and no state changed yet.
            let reason = format!(
                "forwarding it would produce a record of {} bytes to {}, above the limit of {} bytes (kafka.max_record_bytes)",
                kafka::record_size(big),
                big.topic,
                ctx.max_record
            );
            span.error(&reason);
            out = vec![ctx.dead_letter(&m, "oversized", &reason)];
            local.clear();
        }
        for r in out {
            self.send(r)?;
        }
        Ok(local)
    }

    /// Writes due timers to their shards' partitions (they fire when read back).
    fn fire_timers(&mut self) -> Result<(), RuntimeError> {
        let now = now_ms();
        let ctx = ctx(
            &self.registry,
            &self.cfg,
            self.partitions,
            &self.stats,
            &self.tracer,
            &self.repartition,
            self.faults.as_ref(),
        );
        let mut out = Vec::new();
        for (p, s) in self.shards.iter_mut() {
            shard::due_timers(s, *p, now, &ctx, &mut out);
        }
        for r in out {
            self.send(r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // The Java client's test vectors (as signed 32-bit values).
        for (key, want) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(
            shard_of("order-to-cash/o-1", 6),
            shard_of("order-to-cash/o-1", 6)
        );
        let mut seen = BTreeSet::new();
        for i in 0..200 {
            let s = shard_of(&format!("p/k-{i}"), 6);
            assert!((0..6).contains(&s));
            seen.insert(s);
        }
        assert_eq!(seen.len(), 6, "keys spread over every shard");
    }
}
