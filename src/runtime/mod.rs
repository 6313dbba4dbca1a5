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

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value as Json, json};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engine::{
    self, Effect, Event, Input, Instance, Millis, ParentRef, Registry, Rejection, Status, Vars,
};
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

const RETENTION_TIMER: &str = "__retention__";

struct Shard {
    instances: HashMap<String, Instance>,
    timers: BTreeSet<(Millis, String, String)>,
    /// Next offset of the shard's repartition partition.
    position: i64,
    /// Timers already written as timer records (not fired twice while in flight).
    in_flight: BTreeSet<(Millis, String, String)>,
    /// Keys whose latest changelog record came from an uncommitted transaction.
    repair: Vec<String>,
}

impl Shard {
    fn add_timers(&mut self, id: &str, inst: &Instance, retention: Millis) {
        for t in &inst.timers {
            self.timers.insert((t.due, id.to_string(), t.id.clone()));
        }
        if inst.status.is_ended() {
            let due = inst.updated_at.saturating_add(retention);
            self.timers
                .insert((due, id.to_string(), RETENTION_TIMER.to_string()));
        }
    }
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
    shards: HashMap<i32, Shard>,
    inputs: Vec<String>,
    repartition: String,
    changelog: String,
    partitions: i32,
    stats: Arc<Stats>,
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
            stats,
        })
    }

    /// Runs until `stop` is set; the transaction in flight is committed first.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<(), RuntimeError> {
        while !stop.load(Ordering::Relaxed) {
            let wait = self.poll_wait();
            match self.consumer.poll(wait) {
                Some(Ok(m)) => {
                    self.after_rebalance()?;
                    self.handle(m)?;
                }
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                None => {}
            }
            self.after_rebalance()?;
            self.fire_timers()?;
            self.maybe_commit(false)?;
        }
        self.maybe_commit(true)?;
        Ok(())
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

    fn after_rebalance(&mut self) -> Result<(), RuntimeError> {
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
        for (topic, p) in r.revoked {
            if topic == self.repartition {
                self.shards.remove(&p);
                self.stats
                    .shards
                    .store(self.shards.len() as u64, Ordering::Relaxed);
                info!(partition = p, "shard released");
            }
        }
        for (topic, p) in r.assigned {
            if topic == self.repartition {
                self.restore(p)?;
            }
        }
        Ok(())
    }

    /// Rebuilds shard `p` from its changelog partition, honouring the position guard.
    fn restore(&mut self, p: i32) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let committed = self.consumer.committed(&self.repartition, p)?;
        // Snapshots up to this position belong to committed transactions.
        let valid_until = committed.as_ref().map_or(0, |(o, _)| (*o).max(0) as u64);
        debug!(
            partition = p,
            valid_until, "committed position of the shard"
        );
        let records = kafka::read_partition(&self.cfg, &self.changelog, p)?;
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
                    Ok((position, inst)) => {
                        if position <= valid_until {
                            latest.insert(key.clone(), Some(inst));
                            repair.remove(&key);
                        } else {
                            repair.insert(key);
                        }
                    }
                    Err(e) => {
                        warn!(partition = p, offset = r.offset, error = %e, "unreadable changelog record skipped")
                    }
                },
            }
        }
        let retention = self.cfg.runtime.retention.as_millis() as u64;
        let mut shard = Shard {
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
        info!(
            partition = p,
            records = count,
            instances = shard.instances.len(),
            repaired = shard.repair.len(),
            ms = started.elapsed().as_millis() as u64,
            "shard restored"
        );
        self.stats
            .restored_instances
            .fetch_add(shard.instances.len() as u64, Ordering::Relaxed);
        self.stats
            .restore_ms
            .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.shards.insert(p, shard);
        self.stats
            .shards
            .store(self.shards.len() as u64, Ordering::Relaxed);
        Ok(())
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

    fn handle(&mut self, m: Incoming) -> Result<(), RuntimeError> {
        if let Ok(mut t) = self.txn.lock() {
            t.events += 1;
        }
        if m.topic == self.repartition {
            self.handle_shard_record(m)
        } else {
            self.handle_input(m)
        }
    }

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
        let event = match cloudevents::decode(&rec, &plain) {
            Ok(e) => e,
            Err(e) => return self.dead_letter(&m, "undecodable", &e.to_string()),
        };
        let mut routed = 0;
        let mut failures = Vec::new();
        let defs: Vec<_> = self.registry.latest_all().cloned().collect();
        for def in defs {
            match engine::route(&def, &event) {
                Ok(Some(r)) => {
                    routed += 1;
                    let origin =
                        json!({ "topic": m.topic, "partition": m.partition, "offset": m.offset });
                    let body = json!({ "input": "event", "process": def.process, "key": r.key, "event": event_json(&event), "origin": origin });
                    self.forward(
                        &def.process,
                        &r.key,
                        body,
                        cloudevents::traceparent(&m.headers),
                    )?;
                }
                Ok(None) => {}
                Err(e) => {
                    failures.push(format!("process {}: correlation failed: {e}", def.process))
                }
            }
        }
        // A correlation that fails for one process is not an error when another
        // process took the event; only an event no process could take is dead.
        if routed == 0 && !failures.is_empty() {
            self.dead_letter(&m, "correlation", &failures.join("; "))?;
        } else if routed == 0 {
            let reason = format!(
                "no process starts on or correlates events of type {}",
                event.kind
            );
            self.dead_letter(&m, "no-process", &reason)?;
        } else if !failures.is_empty() {
            debug!(
                ?failures,
                "processes that could not correlate an event another process took"
            );
        }
        Ok(())
    }

    fn forward(
        &mut self,
        process: &str,
        key: &str,
        body: Json,
        traceparent: Option<String>,
    ) -> Result<(), RuntimeError> {
        let id = format!("{process}/{key}");
        let mut headers = Vec::new();
        if let Some(tp) = traceparent {
            headers.push(("traceparent".to_string(), tp.into_bytes()));
        }
        let r = Outgoing {
            topic: self.repartition.clone(),
            partition: Some(shard_of(&id, self.partitions)),
            key: id.into_bytes(),
            payload: Some(serde_json::to_vec(&body).unwrap_or_default()),
            headers,
        };
        self.send(r)
    }

    fn dead_letter(&mut self, m: &Incoming, kind: &str, reason: &str) -> Result<(), RuntimeError> {
        warn!(topic = %m.topic, partition = m.partition, offset = m.offset, reason, "dead letter");
        bump(&self.stats.dead_letters);
        let mut headers = m.headers.clone();
        headers.extend([
            ("baton.dlq.kind".to_string(), kind.as_bytes().to_vec()),
            ("baton.dlq.reason".to_string(), reason.as_bytes().to_vec()),
            ("baton.dlq.topic".to_string(), m.topic.as_bytes().to_vec()),
            (
                "baton.dlq.partition".to_string(),
                m.partition.to_string().into_bytes(),
            ),
            (
                "baton.dlq.offset".to_string(),
                m.offset.to_string().into_bytes(),
            ),
            (
                "baton.version".to_string(),
                env!("CARGO_PKG_VERSION").as_bytes().to_vec(),
            ),
        ]);
        let r = Outgoing {
            topic: self.cfg.topics.dead_letters(),
            partition: None,
            key: m.key.clone().unwrap_or_default(),
            payload: m.payload.clone(),
            headers,
        };
        self.send(r)
    }

    /// A record on a shard: an event, a call, or a called instance's end.
    fn handle_shard_record(&mut self, m: Incoming) -> Result<(), RuntimeError> {
        let p = m.partition;
        if !self.shards.contains_key(&p) {
            self.restore(p)?;
        }
        self.consumed(&m)?;
        if let Some(s) = self.shards.get_mut(&p) {
            s.position = m.offset + 1;
        }
        let body: Json = match m.payload.as_deref().map(serde_json::from_slice::<Json>) {
            Some(Ok(b)) => b,
            _ => {
                return self.dead_letter(
                    &m,
                    "undecodable",
                    "repartition record is not baton's JSON",
                );
            }
        };
        let process = body["process"].as_str().unwrap_or_default().to_string();
        let key = body["key"].as_str().unwrap_or_default().to_string();
        let input = match body["input"].as_str() {
            Some("event") => match event_from_json(&body["event"]) {
                Some(e) => Input::Event(e),
                None => {
                    return self.dead_letter(
                        &m,
                        "undecodable",
                        "repartition record has no valid event",
                    );
                }
            },
            Some("call") => {
                let parent = ParentRef {
                    process: body["parent"]["process"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    key: body["parent"]["key"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    version: body["parent"]["version"].as_u64().unwrap_or(0) as u32,
                };
                let vars: Vars = serde_json::from_value(body["vars"].clone()).unwrap_or_default();
                Input::Call { parent, vars }
            }
            Some("timer") => {
                let timer = body["timer"].as_str().unwrap_or_default().to_string();
                let due = body["due"].as_u64().unwrap_or(0);
                let id = format!("{process}/{key}");
                if let Some(s) = self.shards.get_mut(&p) {
                    s.in_flight.remove(&(due, id.clone(), timer.clone()));
                }
                if timer.contains("/timeout/") {
                    bump(&self.stats.timeouts);
                }
                if timer == RETENTION_TIMER {
                    return self.expire(p, &id);
                }
                return self.step(
                    p,
                    &process,
                    &key,
                    &Input::Timer(timer),
                    Some(due),
                    None,
                    Some(&m),
                );
            }
            _ => return self.dead_letter(&m, "undecodable", "repartition record of unknown kind"),
        };
        let tp = cloudevents::traceparent(&m.headers);
        self.step(p, &process, &key, &input, None, tp.as_deref(), Some(&m))
    }

    /// Writes due timers to their shard's partition; they fire when read back,
    /// so that every state change has a position (see the module docs).
    fn fire_timers(&mut self) -> Result<(), RuntimeError> {
        let now = now_ms();
        let owned: Vec<i32> = self.shards.keys().copied().collect();
        for p in owned {
            loop {
                let due = self
                    .shards
                    .get_mut(&p)
                    .and_then(|s| s.timers.first().filter(|t| t.0 <= now).cloned());
                let Some(timer) = due else { break };
                if let Some(s) = self.shards.get_mut(&p) {
                    s.timers.remove(&timer);
                    if !s.in_flight.insert(timer.clone()) {
                        continue;
                    }
                }
                let (at, id, timer_id) = timer;
                let Some((process, key)) = id.split_once('/') else {
                    continue;
                };
                let body = json!({ "input": "timer", "process": process, "key": key, "timer": timer_id, "due": at });
                let r = Outgoing {
                    topic: self.repartition.clone(),
                    partition: Some(p),
                    key: id.clone().into_bytes(),
                    payload: Some(serde_json::to_vec(&body).unwrap_or_default()),
                    headers: Vec::new(),
                };
                self.send(r)?;
            }
        }
        Ok(())
    }

    /// An ended instance's retention passed: forget it and tombstone its changelog key.
    fn expire(&mut self, p: i32, id: &str) -> Result<(), RuntimeError> {
        let position = self.shards.get(&p).map_or(0, |s| s.position.max(0) as u64);
        self.prepare_shard(p, position)?;
        if let Some(s) = self.shards.get_mut(&p) {
            s.instances.remove(id);
        }
        let r = Outgoing {
            topic: self.changelog.clone(),
            partition: Some(p),
            key: id.as_bytes().to_vec(),
            payload: None,
            headers: Vec::new(),
        };
        self.send(r)
    }

    /// Runs one engine step for an instance and carries out its effects.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        p: i32,
        process: &str,
        key: &str,
        input: &Input,
        at: Option<Millis>,
        traceparent: Option<&str>,
        source: Option<&Incoming>,
    ) -> Result<(), RuntimeError> {
        let id = format!("{process}/{key}");
        let position = self.shards.get(&p).map_or(0, |s| s.position.max(0) as u64);
        self.prepare_shard(p, position)?;
        let Some(shard) = self.shards.get_mut(&p) else {
            return Ok(());
        };
        let existing_version = shard.instances.get(&id).map(|i| i.version);
        let def = match existing_version {
            Some(v) => self.registry.get(process, v),
            None => self.registry.latest(process),
        }
        .cloned();
        let Some(def) = def else {
            let reason =
                format!("process {process} (version {existing_version:?}) is not deployed here");
            return match source {
                Some(m) => self.dead_letter(m, "no-definition", &reason),
                None => Ok(()),
            };
        };
        let now = match (at, input) {
            (Some(t), _) => t,
            (None, Input::Event(e)) if e.time > 0 => e.time,
            _ => now_ms(),
        };
        let inst = shard
            .instances
            .entry(id.clone())
            .or_insert_with(|| Instance::new(&def.process, def.version, key));
        let was_pending = inst.status == Status::Pending;
        let effects = engine::apply(&def, inst, input, now);
        let status = inst.status;
        let snapshot = wire::encode_changelog(position, inst);
        if was_pending && status == Status::Active {
            bump(&self.stats.started);
        }
        let mut out = Vec::new();
        let mut discard = false;
        let mut ended_at = None;
        for fx in effects {
            match fx {
                Effect::Command(c) => {
                    bump(&self.stats.commands);
                    match c.purpose {
                        engine::Purpose::Compensation => bump(&self.stats.compensations),
                        engine::Purpose::Escalation => bump(&self.stats.escalations),
                        _ if c.attempt > 1 => bump(&self.stats.retries),
                        _ => {}
                    }
                    let (headers, payload) =
                        cloudevents::encode_command(&c, process, now, traceparent);
                    out.push(Outgoing {
                        topic: c.topic.clone(),
                        partition: None,
                        key: c.key.clone().into_bytes(),
                        payload: Some(payload),
                        headers,
                    });
                }
                Effect::ScheduleTimer(t) => {
                    if let Some(s) = self.shards.get_mut(&p) {
                        s.timers.insert((t.due, id.clone(), t.id));
                    }
                }
                Effect::CancelTimer(t) => {
                    if let Some(s) = self.shards.get_mut(&p) {
                        s.timers.retain(|(_, i, tid)| !(i == &id && tid == &t));
                    }
                }
                Effect::Audit(a) => {
                    let body = json!({
                        "at": engine::format_rfc3339(a.at), "process": a.process, "version": a.version,
                        "key": a.key, "cause": format!("{:?}", a.cause), "before": a.before,
                        "after": a.after, "status": a.status.as_str(),
                    });
                    out.push(Outgoing {
                        topic: self.cfg.topics.audit(),
                        partition: Some(p),
                        key: id.clone().into_bytes(),
                        payload: Some(serde_json::to_vec(&body).unwrap_or_default()),
                        headers: Vec::new(),
                    });
                }
                Effect::IncidentRaised {
                    id: n,
                    step,
                    reason,
                } => {
                    bump(&self.stats.incidents);
                    warn!(instance = %id, incident = n, step, reason, "incident raised");
                }
                Effect::IncidentResolved {
                    id: n, resolution, ..
                } => {
                    info!(instance = %id, incident = n, resolution, "incident resolved");
                }
                Effect::VariablesChanged(_) => {}
                Effect::StartProcess {
                    process: child,
                    key: ckey,
                    vars,
                    parent,
                } => {
                    let body = json!({
                        "input": "call", "process": child, "key": ckey, "vars": vars,
                        "parent": { "process": parent.process, "key": parent.key, "version": parent.version },
                    });
                    self.forward(&child, &ckey, body, traceparent.map(str::to_string))?;
                }
                Effect::Ended { status, parent } => {
                    match status {
                        Status::Completed => bump(&self.stats.completed),
                        Status::Failed => bump(&self.stats.failed),
                        Status::Cancelled => bump(&self.stats.cancelled),
                        _ => {}
                    }
                    ended_at = Some(now);
                    if let Some(parent) = parent {
                        let vars = self
                            .shards
                            .get(&p)
                            .and_then(|s| s.instances.get(&id))
                            .map(|i| i.vars.clone())
                            .unwrap_or_default();
                        let ev = Event::child_ended(process, key, status, &vars, now);
                        let body = json!({ "input": "event", "process": parent.process, "key": parent.key, "event": event_json(&ev) });
                        self.forward(
                            &parent.process,
                            &parent.key,
                            body,
                            traceparent.map(str::to_string),
                        )?;
                    }
                }
                Effect::Discard => discard = true,
                Effect::Rejected { event, reason } => {
                    let event_id = event.id.clone();
                    if reason == Rejection::Duplicate {
                        debug!(instance = %id, event_id, "duplicate event ignored");
                        continue;
                    }
                    bump(&self.stats.dead_letters);
                    info!(instance = %id, event_id, %reason, "event rejected");
                    // Where the event first entered baton, when the record says.
                    let origin = source
                        .and_then(|m| m.payload.as_deref())
                        .and_then(|p| serde_json::from_slice::<Json>(p).ok())
                        .filter(|b| b["event"]["id"].as_str() == Some(event_id.as_str()))
                        .map(|b| b["origin"].clone())
                        .unwrap_or(Json::Null);
                    let mut headers = vec![
                        (
                            "content-type".to_string(),
                            b"application/cloudevents+json".to_vec(),
                        ),
                        ("baton.dlq.kind".to_string(), b"rejected".to_vec()),
                        (
                            "baton.dlq.reason".to_string(),
                            format!("instance {id}: event {event_id}: {reason}").into_bytes(),
                        ),
                        ("baton.dlq.instance".to_string(), id.clone().into_bytes()),
                        (
                            "baton.version".to_string(),
                            env!("CARGO_PKG_VERSION").as_bytes().to_vec(),
                        ),
                    ];
                    for (field, header) in [
                        ("topic", "baton.dlq.topic"),
                        ("partition", "baton.dlq.partition"),
                        ("offset", "baton.dlq.offset"),
                    ] {
                        match &origin[field] {
                            Json::String(v) => {
                                headers.push((header.to_string(), v.clone().into_bytes()))
                            }
                            Json::Number(v) => {
                                headers.push((header.to_string(), v.to_string().into_bytes()))
                            }
                            _ => {}
                        }
                    }
                    out.push(Outgoing {
                        topic: self.cfg.topics.dead_letters(),
                        partition: None,
                        key: id.clone().into_bytes(),
                        payload: Some(cloudevents::structured(
                            &event.id,
                            &event.kind,
                            &event.source,
                            event.time,
                            &event.data,
                        )),
                        headers,
                    });
                }
            }
        }
        if let Some(at) = ended_at
            && let Some(s) = self.shards.get_mut(&p)
        {
            let due = at.saturating_add(self.cfg.runtime.retention.as_millis() as u64);
            s.timers
                .insert((due, id.clone(), RETENTION_TIMER.to_string()));
        }
        if discard && let Some(s) = self.shards.get_mut(&p) {
            s.instances.remove(&id);
        }
        out.push(Outgoing {
            topic: self.changelog.clone(),
            partition: Some(p),
            key: id.into_bytes(),
            payload: if discard { None } else { Some(snapshot) },
            headers: Vec::new(),
        });
        for r in out {
            self.send(r)?;
        }
        Ok(())
    }
}

fn event_json(e: &Event) -> Json {
    json!({ "id": e.id, "type": e.kind, "source": e.source, "time": e.time, "data": e.data })
}

fn event_from_json(v: &Json) -> Option<Event> {
    Some(Event {
        id: v["id"].as_str()?.to_string(),
        kind: v["type"].as_str()?.to_string(),
        source: v["source"].as_str().unwrap_or_default().to_string(),
        time: v["time"].as_u64().unwrap_or(0),
        data: v["data"].clone(),
    })
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
