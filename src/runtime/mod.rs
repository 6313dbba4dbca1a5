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
//!
//! The parts: `routing` (input records to their shards), `process` (a batch
//! on the shards), `shard` (one shard's records), `txn` (the transaction in
//! flight and recovery), `restore` (shards from the changelog), `settle`
//! (the group, for readiness), `partition` (which shard a key lives on),
//! `stats`, and `faults` (injected by tests only).

mod deploys;
mod faults;
mod limits;
mod partition;
mod process;
mod restore;
mod routing;
mod settle;
mod shard;
mod stats;
mod txn;

use faults::Armed;
pub use faults::Faults;
pub use partition::{murmur2, now_ms, shard_of};
use process::{Local, Poison};
use restore::{Hashes, Restoring, hashes};
use settle::GroupWatcher;
pub use stats::Stats;
use txn::{Txn, consumer};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engine::{self, Millis, Registry};
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

/// One baton process in the consumer group.
pub struct Runtime {
    cfg: Config,
    registry: Registry,
    /// The registry's definition hashes, for restores to check against.
    hashes: Hashes,
    consumer: Consumer,
    producer: Arc<Producer>,
    txn: Arc<Mutex<Txn>>,
    shards: HashMap<i32, shard::Owned>,
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
    /// Write snapshots after every record, not once per instance and batch,
    /// until the next commit: a batch had an oversized snapshot, and this
    /// finds the record that made it so.
    every_record: bool,
    /// Input records whose instance lives on their own partition's shard are
    /// processed there, without the repartition hop.
    in_place: bool,
    /// The instances this process holds, as committed, for the admin API.
    index: Arc<crate::index::Index>,
    /// What became of operator requests, as committed.
    outcomes: Arc<crate::index::Outcomes>,
    /// The deployed definitions as the admin API reads them.
    published: Arc<crate::index::Current<Registry>>,
    /// The definitions topic, followed for versions deployed at run time.
    deploys: deploys::Deploys,
    /// The operator topic.
    operator: String,
    /// Set when the runtime is asked to stop (`run`'s flag).
    stop: Arc<AtomicBool>,
    /// Shards holding their cap of instances.
    full: BTreeSet<i32>,
    /// Input partitions stopped at an event that would start an instance on
    /// a full shard (`runtime.at_instance_cap = "pause"`).
    stops: BTreeMap<(String, i32), limits::Stop>,
    /// The instances the batch being routed starts on full-enough shards.
    admitting: limits::Admitting,
    /// When a transaction at its record cap was last logged.
    record_cap_said: Option<Instant>,
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
        partitions,
        stats,
        tracer,
        log_payloads: cfg.log.payloads,
        max_record: cfg.kafka.max_record_bytes.unwrap_or(usize::MAX),
        faults,
        pause_at_cap: cfg.runtime.at_instance_cap == crate::config::AtInstanceCap::Pause,
    }
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

impl Runtime {
    /// Provisions topics, creates the clients and joins the group.
    pub fn new(
        mut cfg: Config,
        registry: Registry,
        stats: Arc<Stats>,
    ) -> Result<Runtime, RuntimeError> {
        cfg.kafka.max_record_bytes = Some(kafka::record_limit(&cfg)?);
        let mut registry = registry;
        kafka::ensure_topics(&cfg, &[(cfg.topics.definitions(), 1, true)])?;
        let deploys = deploys::Deploys::start(&cfg, &cfg.topics.definitions(), &mut registry)?;
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
        subscribe.push(t.operator());
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
            deploys,
            published: Arc::new(crate::index::Current::new(registry.clone())),
            operator: t.operator(),
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
            every_record: false,
            in_place: cfg_in_place,
            index: Arc::default(),
            outcomes: Arc::default(),
            stop: Arc::default(),
            full: BTreeSet::new(),
            stops: BTreeMap::new(),
            admitting: limits::Admitting::default(),
            record_cap_said: None,
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

    /// The instances this process holds, as committed (the admin API reads it).
    pub fn index(&self) -> Arc<crate::index::Index> {
        self.index.clone()
    }

    /// What became of operator requests this process applied (the admin API's jobs read it).
    pub fn outcomes(&self) -> Arc<crate::index::Outcomes> {
        self.outcomes.clone()
    }

    /// The deployed definitions, replaced when a deploy arrives.
    pub fn definitions(&self) -> Arc<crate::index::Current<Registry>> {
        self.published.clone()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// What `/healthz` and `/readyz` report about this runtime.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Runs until `stop` is set; the transaction in flight is committed first.
    /// On an error the open transaction is aborted, never committed.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<(), RuntimeError> {
        self.stop = stop.clone();
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
            self.follow_deploys(false)?;
            let batch = self.poll_batch()?;
            self.set_in_batch(true);
            self.process(batch)?;
            self.fire_timers()?;
            self.set_in_batch(false);
            self.maybe_commit(false)?;
            self.watch_caps()?;
            self.refresh_gauges(false);
        }
        self.health.update(|r| r.stopping = true);
        self.maybe_commit(true)?;
        Ok(())
    }

    /// Replaces the consumer, which is unusable or at an unknown position:
    /// the open transaction is aborted, every shard is released, and a new
    /// consumer joins the group; the shards come back by assignment and
    /// restore from what was committed.
    fn rejoin(&mut self) -> Result<(), RuntimeError> {
        self.abort_open();
        self.shards.clear();
        self.restoring.clear();
        self.stops.clear();
        self.index.apply_clear();
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
            h.timers += s.state.timers().len() as i64;
            for inst in s.state.summaries() {
                *instances
                    .entry((inst.process, inst.status.as_str()))
                    .or_default() += 1;
                if inst.incidents > 0 {
                    *incidents.entry(inst.process).or_default() += inst.incidents as i64;
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
            // Its next owner reads on from the committed offset.
            self.stops.remove(&(topic.clone(), *p));
            if *topic == self.repartition {
                self.restoring.remove(p);
                self.shards.remove(p);
                self.index.drop_shard(*p);
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
        if r.assigned.iter().any(|(t, _)| *t == self.repartition) {
            // A shard taken over may hold instances of versions deployed
            // since the last look.
            self.follow_deploys(true)?;
        }
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
