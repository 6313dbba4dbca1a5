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

mod shard;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engine::{self, Instance, Millis, Registry};
use crate::kafka::{self, Consumer, Incoming, KafkaFailure, Offsets, Outgoing, Producer};
use crate::wire::{self, cloudevents};

/// Why the runtime stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error("{0}")]
    Setup(String),
}

/// Counters the runtime keeps (the demo's summary reads them).
#[derive(Debug, Default)]
pub struct Stats {
    pub events: AtomicU64,
    pub commands: AtomicU64,
    pub compensations: AtomicU64,
    pub dead_letters: AtomicU64,
    pub transactions: AtomicU64,
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
    /// Instances restored from the changelog, and how long restores took.
    pub restored_instances: AtomicU64,
    pub restore_ms: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Wall clock in epoch milliseconds (the runtime's, never the engine's).
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The shard an instance lives on.
pub fn shard_of(instance_id: &str, partitions: i32) -> i32 {
    // FNV-1a: stable across processes and releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as i32
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
}

/// One baton process in the consumer group.
pub struct Runtime {
    cfg: Config,
    registry: Registry,
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
}

fn ctx<'a>(
    registry: &'a Registry,
    cfg: &'a Config,
    partitions: i32,
    stats: &'a Stats,
) -> shard::Ctx<'a> {
    shard::Ctx {
        registry,
        topics: &cfg.topics,
        retention: cfg.runtime.retention.as_millis() as u64,
        partitions,
        stats,
    }
}

/// A shard being restored in the background, and records that arrived for it meanwhile.
struct Restoring {
    rx: std::sync::mpsc::Receiver<Result<shard::Shard, RuntimeError>>,
    held: Vec<Incoming>,
}

/// Reads shard `p`'s changelog partition to its end and rebuilds its
/// instances, honouring the position guard (`committed` is the committed
/// offset of the shard's repartition partition).
fn rebuild(
    cfg: &Config,
    p: i32,
    committed: Option<(i64, String)>,
    stats: &Stats,
) -> Result<shard::Shard, RuntimeError> {
    let started = Instant::now();
    // Snapshots up to this position belong to committed transactions.
    let valid_until = committed.as_ref().map_or(0, |(o, _)| (*o).max(0) as u64);
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
            Some(bytes) => match wire::decode_changelog(bytes) {
                Ok((position, inst)) if position <= valid_until => {
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
        position: committed.map_or(-1, |(o, _)| o),
        in_flight: BTreeSet::new(),
        repair: repair.into_iter().collect(),
    };
    for (key, inst) in latest {
        if let Some(inst) = inst {
            shard.add_timers(&key, &inst, retention);
            shard.instances.insert(key, inst);
        }
    }
    let ms = started.elapsed().as_millis() as u64;
    info!(
        partition = p,
        records = count,
        instances = shard.instances.len(),
        repaired = shard.repair.len(),
        ms,
        "shard restored"
    );
    stats
        .restored_instances
        .fetch_add(shard.instances.len() as u64, Ordering::Relaxed);
    stats.restore_ms.fetch_add(ms, Ordering::Relaxed);
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

impl Runtime {
    /// Provisions topics, creates the clients and joins the group.
    pub fn new(
        cfg: Config,
        registry: Registry,
        stats: Arc<Stats>,
    ) -> Result<Runtime, RuntimeError> {
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
        kafka::ensure_topics(&cfg, &topics)?;
        let transactional_id = format!("{}-{}", cfg.kafka.group_id, cfg.instance_id());
        let producer = Arc::new(Producer::new(&cfg, &transactional_id)?);
        let mut subscribe = cfg.kafka.input_topics.clone();
        subscribe.push(t.repartition());
        let consumer = Consumer::new(&cfg, &subscribe)?;
        let txn = Arc::new(Mutex::new(Txn::default()));
        {
            let txn = txn.clone();
            let producer = producer.clone();
            // Before partitions go, the work done on them is committed, so the
            // next owner starts exactly where this one stopped.
            consumer.on_revoke(Box::new(move |c| {
                let Ok(mut t) = txn.lock() else { return };
                if !t.open {
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
        }
        info!(transactional_id, partitions = n, "baton runtime ready");
        Ok(Runtime {
            inputs: cfg.kafka.input_topics.clone(),
            repartition: t.repartition(),
            changelog: t.changelog(),
            partitions: n,
            cfg,
            registry,
            consumer,
            producer,
            txn,
            shards: HashMap::new(),
            restoring: HashMap::new(),
            stats,
        })
    }

    /// Runs until `stop` is set; the transaction in flight is committed first.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<(), RuntimeError> {
        while !stop.load(Ordering::Relaxed) {
            let batch = self.poll_batch()?;
            self.process(batch)?;
            self.fire_timers()?;
            self.maybe_commit(false)?;
        }
        self.maybe_commit(true)?;
        Ok(())
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
                Some(Err(e)) => warn!(error = %e, "consumer error"),
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
                self.handle_input(m)?;
            }
        }
        for (&p, records) in &by_shard {
            if let Some(first) = records.first() {
                self.prepare_shard(p, (first.offset + 1) as u64)?;
            }
            for m in records {
                self.consumed(m)?;
            }
        }
        let ctx = ctx(&self.registry, &self.cfg, self.partitions, &self.stats);
        let mut outputs: Vec<Vec<Outgoing>> = Vec::new();
        let mut work: Vec<(i32, &mut shard::Shard, &Vec<Incoming>)> = self
            .shards
            .iter_mut()
            .filter_map(|(p, s)| by_shard.get(p).map(|r| (*p, s, r)))
            .collect();
        if work.len() <= 1 {
            for (p, s, records) in work.iter_mut() {
                let mut out = Vec::new();
                for m in records.iter() {
                    shard::handle(s, *p, m, &ctx, &mut out);
                }
                outputs.push(out);
            }
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = work
                    .into_iter()
                    .map(|(p, s, records)| {
                        let ctx = &ctx;
                        scope.spawn(move || {
                            let mut out = Vec::new();
                            for m in records {
                                shard::handle(s, p, m, ctx, &mut out);
                            }
                            out
                        })
                    })
                    .collect();
                for h in handles {
                    match h.join() {
                        Ok(out) => outputs.push(out),
                        Err(_) => warn!("a shard worker panicked"),
                    }
                }
            });
        }
        for r in outputs.into_iter().flatten() {
            self.send(r)?;
        }
        Ok(())
    }

    fn ctx(&self) -> shard::Ctx<'_> {
        ctx(&self.registry, &self.cfg, self.partitions, &self.stats)
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
        match hook {
            Some(true) => self.committed(),
            Some(false) => self.recover()?,
            None => {}
        }
        let r = self.consumer.take_rebalances();
        for (topic, p) in &r.revoked {
            if *topic == self.repartition {
                self.restoring.remove(p);
                self.shards.remove(p);
                self.stats
                    .shards
                    .store(self.shards.len() as u64, Ordering::Relaxed);
                info!(partition = p, "shard released");
            }
        }
        for (topic, p) in r.assigned {
            if topic == self.repartition {
                self.start_restore(p)?;
            }
        }
        Ok(r.revoked)
    }

    /// Rebuilds shard `p` now (used after a failed transaction).
    fn restore(&mut self, p: i32) -> Result<(), RuntimeError> {
        self.restoring.remove(&p);
        let committed = self.consumer.committed(&self.repartition, p)?;
        let shard = rebuild(&self.cfg, p, committed, &self.stats)?;
        self.install(p, shard);
        Ok(())
    }

    /// Starts rebuilding shard `p` on a thread of its own; the partition is
    /// paused meanwhile, so the other shards keep going.
    fn start_restore(&mut self, p: i32) -> Result<(), RuntimeError> {
        if self.restoring.contains_key(&p) || self.shards.contains_key(&p) {
            return Ok(());
        }
        let committed = self.consumer.committed(&self.repartition, p)?;
        self.consumer.pause(&self.repartition, p)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let cfg = self.cfg.clone();
        let stats = self.stats.clone();
        std::thread::spawn(move || {
            let _ = tx.send(rebuild(&cfg, p, committed, &stats));
        });
        self.restoring.insert(
            p,
            Restoring {
                rx,
                held: Vec::new(),
            },
        );
        Ok(())
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
            let Some(r) = self.restoring.remove(&p) else {
                continue;
            };
            self.install(p, result?);
            self.consumer.resume(&self.repartition, p)?;
            ready.extend(r.held);
        }
        Ok(ready)
    }

    fn install(&mut self, p: i32, shard: shard::Shard) {
        self.shards.insert(p, shard);
        self.stats
            .shards
            .store(self.shards.len() as u64, Ordering::Relaxed);
    }

    /// A transaction failed: state and positions go back to what was committed.
    fn recover(&mut self) -> Result<(), RuntimeError> {
        warn!("transaction failed; restoring shards and rewinding to committed offsets");
        if let Ok(mut t) = self.txn.lock() {
            *t = Txn::default();
        }
        let owned: Vec<i32> = self.shards.keys().copied().collect();
        for p in owned {
            self.restore(p)?;
            let at = self.shards.get(&p).map_or(-1, |s| s.position);
            self.consumer.seek(&self.repartition, p, at)?;
        }
        for topic in self.inputs.clone() {
            for p in 0..self.partitions {
                if let Ok(Some((o, _))) = self.consumer.committed(&topic, p) {
                    let _ = self.consumer.seek(&topic, p, o);
                }
            }
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
        bump(&self.stats.transactions);
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
            t.offsets.clone()
        };
        match self.producer.commit(&self.consumer.inner, &offsets) {
            Ok(()) => self.committed(),
            Err(e) => {
                warn!(error = %e, "commit failed");
                let _ = self.producer.abort();
                self.recover()?;
            }
        }
        Ok(())
    }

    /// Opens the transaction for shard `p`; the first time, it rewrites the keys
    /// whose latest changelog record never committed (with `position`).
    fn prepare_shard(&mut self, p: i32, position: u64) -> Result<(), RuntimeError> {
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
                .map(|i| wire::encode_changelog(position, i));
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
            t.offsets.insert(
                (m.topic.clone(), m.partition),
                (m.offset + 1, String::new()),
            );
        }
        Ok(())
    }

    /// A domain event: decode, find its processes, and forward it to their shards.
    fn handle_input(&mut self, m: Incoming) -> Result<(), RuntimeError> {
        bump(&self.stats.events);
        self.consumed(&m)?;
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
            Err(e) => out.push(ctx.dead_letter(&m, "undecodable", &e.to_string())),
            Ok(event) => {
                let mut routed = 0;
                let mut failures = Vec::new();
                for def in self.registry.latest_all() {
                    match engine::route(def, &event) {
                        Ok(Some(r)) => {
                            routed += 1;
                            let origin = json!({ "topic": m.topic, "partition": m.partition, "offset": m.offset });
                            let body = json!({ "input": "event", "process": def.process, "key": r.key, "event": shard::event_json(&event), "origin": origin });
                            let tp = cloudevents::traceparent(&m.headers);
                            out.push(ctx.forward(&def.process, &r.key, &body, tp.as_deref()));
                        }
                        Ok(None) => {}
                        Err(e) => failures
                            .push(format!("process {}: correlation failed: {e}", def.process)),
                    }
                }
                // A correlation that fails for one process is not an error when another
                // process took the event; only an event no process could take is dead.
                if routed == 0 && !failures.is_empty() {
                    out.push(ctx.dead_letter(&m, "correlation", &failures.join("; ")));
                } else if routed == 0 {
                    let reason = format!(
                        "no process starts on or correlates events of type {}",
                        event.kind
                    );
                    out.push(ctx.dead_letter(&m, "no-process", &reason));
                } else if !failures.is_empty() {
                    debug!(
                        ?failures,
                        "processes that could not correlate an event another process took"
                    );
                }
            }
        }
        for r in out {
            self.send(r)?;
        }
        Ok(())
    }

    /// Writes due timers to their shards' partitions (they fire when read back).
    fn fire_timers(&mut self) -> Result<(), RuntimeError> {
        let now = now_ms();
        let ctx = ctx(&self.registry, &self.cfg, self.partitions, &self.stats);
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
