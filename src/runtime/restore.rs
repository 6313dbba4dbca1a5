//! Restoring a shard: its changelog partition read to the end, checked
//! against the committed offsets of its sources (the position guard) and
//! against the deployed definitions.

use super::*;
use crate::index;

/// Content hash of every deployed definition version (see
/// [`engine::Definition::hash`]), by process and version.
pub(super) type Hashes = Arc<HashMap<String, HashMap<u32, String>>>;

pub(super) fn hashes(registry: &Registry) -> Hashes {
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
pub(super) fn check_definition(
    hashes: &Hashes,
    key: &str,
    inst: &wire::Peek,
) -> Result<(), RuntimeError> {
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

/// A shard being restored in the background, and records that arrived for it meanwhile.
pub(super) struct Restoring {
    pub(super) rx: std::sync::mpsc::Receiver<Result<shard::Owned, RuntimeError>>,
    pub(super) held: Vec<Incoming>,
}

/// Committed offsets of a shard's sources: `""` is its repartition
/// partition, other keys are input topics processed in place.
pub(super) type Committed = HashMap<String, i64>;

/// Committed offsets of shard `p`'s sources (see [`Committed`]), read by a
/// client that is not a group member. They wait for a transaction that holds
/// offsets of these partitions to end (Kafka's stable offsets): the previous
/// owner's, or, for a fenced one, until the broker aborts it after
/// `transaction.timeout.ms`. Retried while the broker keeps them unstable.
pub(super) fn committed_sources(cfg: &Config, p: i32) -> Result<Committed, RuntimeError> {
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
pub(super) fn rebuild(
    cfg: &Config,
    p: i32,
    committed: Committed,
    stats: &Stats,
    hashes: &Hashes,
) -> Result<shard::Owned, RuntimeError> {
    let started = Instant::now();
    // Snapshots up to these positions belong to committed transactions.
    let valid_until = |source: &str| committed.get(source).map_or(0, |o| (*o).max(0) as u64);
    let retention = cfg.runtime.retention.as_millis() as u64;
    let cap = cfg.runtime.max_instances_per_shard;
    let mut shard = shard::Owned {
        state: crate::shard::Shard::new(Some(retention)).with_cap(cap),
        position: committed.get("").copied().unwrap_or(-1),
        shard: p,
        repair: Vec::new(),
        index: Vec::new(),
    };
    let mut repair: BTreeSet<String> = BTreeSet::new();
    // Keys whose latest valid record runs an edited definition.
    let mut edited: BTreeMap<String, RuntimeError> = BTreeMap::new();
    // Streamed: each valid record goes straight into the shard as its bytes,
    // replacing the key's earlier one, so nothing but the shard's own state
    // is held.
    let count = kafka::scan_partition(cfg, &cfg.topics.changelog(), p, |r| {
        let Some(key) = r
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_string)
        else {
            return;
        };
        let Some(bytes) = r.payload else {
            repair.remove(&key);
            edited.remove(&key);
            shard.state.remove(&key);
            shard
                .index
                .push(index::Update::Remove(Arc::from(key.as_str())));
            return;
        };
        match wire::peek_changelog(&bytes) {
            Ok(peek) if peek.position <= valid_until(&peek.source) => {
                repair.remove(&key);
                match check_definition(hashes, &key, &peek) {
                    Ok(()) => edited.remove(&key),
                    Err(e) => edited.insert(key.clone(), e),
                };
                let bytes: Arc<[u8]> = Arc::from(bytes);
                shard.index.push(index::Update::Put(
                    Arc::from(key.as_str()),
                    index::Entry::peeked(&peek, p, bytes.clone()),
                ));
                shard.state.insert_record(key, bytes, &peek);
            }
            Ok(_) => {
                repair.insert(key);
            }
            Err(e) => {
                // Kept as unreadable: its inputs become dead letters naming
                // the record, and no event starts the instance afresh.
                warn!(partition = p, offset = r.offset, instance = %key, error = %e, "changelog record does not decode; inputs for its instance will be dead-lettered");
                repair.remove(&key);
                edited.remove(&key);
                shard
                    .index
                    .push(index::Update::Remove(Arc::from(key.as_str())));
                let reason = format!(
                    "its snapshot at {} offset {} does not decode: {e}",
                    r.topic, r.offset
                );
                shard.state.unreadable(key, reason);
            }
        }
    })?;
    if let Some((_, e)) = edited.into_iter().next() {
        return Err(e);
    }
    shard.repair = repair.into_iter().collect();
    let took = started.elapsed();
    let ms = took.as_millis() as u64;
    info!(
        partition = p,
        records = count,
        instances = shard.state.len(),
        repaired = shard.repair.len(),
        ms,
        "shard restored"
    );
    stats.restored(count, shard.state.len() as u64, took);
    Ok(shard)
}

impl Runtime {
    /// Rebuilds shard `p` now (used after a failed transaction).
    pub(super) fn restore(&mut self, p: i32) -> Result<(), RuntimeError> {
        self.restoring.remove(&p);
        let committed = committed_sources(&self.cfg, p)?;
        let shard = rebuild(&self.cfg, p, committed, &self.stats, &self.hashes)?;
        self.install(p, shard);
        Ok(())
    }

    /// Starts rebuilding shard `p` on a thread of its own; the partition is
    /// paused meanwhile, so the other shards keep going.
    pub(super) fn start_restore(&mut self, p: i32) -> Result<(), RuntimeError> {
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
    pub(super) fn spawn_restore(
        &self,
        p: i32,
    ) -> std::sync::mpsc::Receiver<Result<shard::Owned, RuntimeError>> {
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
    pub(super) fn finish_restores(&mut self) -> Result<Vec<Incoming>, RuntimeError> {
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

    pub(super) fn install(&mut self, p: i32, mut shard: shard::Owned) {
        self.index.drop_shard(p);
        self.index.apply(std::mem::take(&mut shard.index));
        self.shards.insert(p, shard);
    }
}
