//! A batch on the shards: one thread per shard, panics caught per record,
//! and the records that must not be processed again.

use super::*;

/// How many records that panicked once are remembered.
pub(super) const PANICS_KEPT: usize = 1000;

/// A record's coordinates: topic, partition, offset.
pub(super) type Coords = (String, i32, i64);

/// Why a shard's batch cannot commit.
pub(super) enum Failed {
    /// Processing this record panicked.
    Panic { at: Coords, message: String },
    /// Processing this record would produce a record above the size limit.
    Oversized { at: Coords, message: String },
    /// A snapshot or audit record the batch writes at its end is above the
    /// size limit: the batch is processed again writing them record by
    /// record, which finds the record that made it so.
    Batched,
    /// A shard's worker thread died.
    Worker(String),
    /// This input record would start an instance on a full shard, and
    /// `runtime.at_instance_cap` is `pause`: its partition stops there.
    AtCap { at: Coords },
}

/// A record not to process again: it becomes a dead letter of this kind.
pub(super) struct Poison {
    pub(super) kind: &'static str,
    pub(super) reason: String,
}

/// A record for a shard, with its input when routing decoded it already.
pub(super) type Local = (Incoming, Option<shard::ShardInput>);

/// The record in `out` above the size limit, as a reason.
fn oversized(out: &[Outgoing], max: usize) -> Option<String> {
    out.iter().find(|r| kafka::record_size(r) > max).map(|big| {
        format!(
            "processing it would produce a record of {} bytes to {}, above the limit of {max} bytes (kafka.max_record_bytes)",
            kafka::record_size(big),
            big.topic,
        )
    })
}

/// Processes a shard's records of one batch; a panic is caught and says on
/// which record it happened. Records that panicked twice become dead letters.
/// Each instance's snapshot is written once, after the batch's last record,
/// and the audit entries are packed, unless `every_record` asks for both
/// after each record.
pub(super) fn run_shard(
    s: &mut shard::Owned,
    p: i32,
    records: &mut [Local],
    ctx: &shard::Ctx<'_>,
    poisoned: &HashMap<Coords, Poison>,
    every_record: bool,
) -> Result<shard::Output, Failed> {
    let mut out = shard::Output::default();
    for (m, input) in records.iter_mut() {
        // The record's coordinates are only built when a record is poisoned
        // or panics: not on every record.
        let at = || (m.topic.clone(), m.partition, m.offset);
        let input = input.take();
        if let Some(poison) = (!poisoned.is_empty())
            .then(|| poisoned.get(&at()))
            .flatten()
        {
            shard::refuse(s, m, input, poison.kind, &poison.reason, ctx, &mut out);
            continue;
        }
        let before = out.records.len();
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shard::handle(s, m, input, ctx, &mut out);
            if every_record {
                out.flush(&mut s.state, p, ctx);
            }
        }));
        if let Err(payload) = step {
            let message = panic_message(payload.as_ref());
            return Err(Failed::Panic { at: at(), message });
        }
        if out.at_cap {
            return Err(Failed::AtCap { at: at() });
        }
        if let Some(message) = oversized(&out.records[before..], ctx.max_record) {
            return Err(Failed::Oversized { at: at(), message });
        }
    }
    let before = out.records.len();
    out.flush(&mut s.state, p, ctx);
    if oversized(&out.records[before..], ctx.max_record).is_some() {
        return Err(Failed::Batched);
    }
    Ok(out)
}

/// What a panic said.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl Runtime {
    /// Input records are routed and re-keyed; shard records are stepped, one
    /// thread per shard, and everything they produce joins the transaction.
    pub(super) fn process(&mut self, batch: Vec<Incoming>) -> Result<(), RuntimeError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Ok(mut t) = self.txn.lock() {
            t.events += batch.len();
        }
        self.admitting.begin(batch.len());
        let mut by_shard: BTreeMap<i32, Vec<Local>> = BTreeMap::new();
        for m in batch {
            if self.held_back(&m) {
                // Its input stopped at an earlier record of this batch.
                continue;
            }
            if m.topic == self.repartition {
                if !self.shards.contains_key(&m.partition) {
                    // Not ready yet: held (not consumed) until its restore ends.
                    self.start_restore(m.partition)?;
                    if let Some(r) = self.restoring.get_mut(&m.partition) {
                        r.held.push(m);
                    }
                    continue;
                }
                by_shard.entry(m.partition).or_default().push((m, None));
            } else if m.topic == self.operator {
                self.handle_operator(m)?;
            } else {
                let at = (m.topic.clone(), m.partition, m.offset);
                if let Some(poison) = self.poisoned.get(&at) {
                    // It panicked twice while it was routed: a dead letter.
                    let r = self.ctx().dead_letter(&m, poison.kind, &poison.reason);
                    self.stats.event_consumed(&m.topic);
                    self.consumed(&m)?;
                    self.send(r)?;
                    continue;
                }
                // Routing runs the definitions' correlation expressions on
                // the event's data: a panic there is handled like one in a
                // shard (the batch is aborted and processed again, and a
                // record that panics twice is dead-lettered), never an end
                // of the runtime that the restarted process meets again.
                let routed =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle_input(m)));
                match routed {
                    Ok(locals) => {
                        for local in locals? {
                            by_shard.entry(local.0.partition).or_default().push(local);
                        }
                    }
                    Err(payload) => {
                        let message = panic_message(payload.as_ref());
                        return self.after_panic(vec![Failed::Panic { at, message }]);
                    }
                }
            }
        }
        for (&p, records) in &by_shard {
            if let Some((first, _)) = records.first() {
                self.prepare_shard(p, &first.topic, (first.offset + 1) as u64)?;
            }
            for (m, _) in records {
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
        let every_record = self.every_record;
        let mut outputs: Vec<Result<shard::Output, Failed>> = Vec::new();
        let mut records: HashMap<i32, &mut Vec<Local>> =
            by_shard.iter_mut().map(|(p, r)| (*p, r)).collect();
        let work: Vec<(i32, &mut shard::Owned, &mut Vec<Local>)> = self
            .shards
            .iter_mut()
            .filter_map(|(p, s)| records.remove(p).map(|r| (*p, s, r)))
            .collect();
        if work.len() <= 1 {
            for (p, s, records) in work {
                outputs.push(run_shard(s, p, records, &ctx, poisoned, every_record));
            }
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = work
                    .into_iter()
                    .map(|(p, s, records)| {
                        let ctx = &ctx;
                        scope.spawn(move || run_shard(s, p, records, ctx, poisoned, every_record))
                    })
                    .collect();
                for h in handles {
                    outputs.push(
                        h.join()
                            .unwrap_or_else(|_| Err(Failed::Worker("a shard worker died".into()))),
                    );
                }
            });
        }
        let mut panics = Vec::new();
        let mut records = Vec::new();
        let mut index = Vec::new();
        let mut outcomes = Vec::new();
        for o in outputs {
            match o {
                Ok(out) => {
                    records.extend(out.records);
                    index.extend(out.index);
                    outcomes.extend(out.outcomes);
                }
                Err(p) => panics.push(p),
            }
        }
        if !panics.is_empty() {
            return self.after_panic(panics);
        }
        for r in records {
            self.send(r)?;
        }
        if let Ok(mut t) = self.txn.lock() {
            t.index.extend(index);
            t.outcomes.extend(outcomes);
        }
        Ok(())
    }

    /// A shard panicked, or would have produced an oversized record: nothing
    /// of the batch may commit. The transaction is aborted and the batch
    /// processed again from the committed state; a record that panics a
    /// second time the same way, or an oversized one, is dead-lettered then.
    pub(super) fn after_panic(&mut self, failures: Vec<Failed>) -> Result<(), RuntimeError> {
        if self.panicked.len() >= PANICS_KEPT {
            self.panicked.clear();
        }
        let mut stops = Vec::new();
        let mut failed = false;
        for f in failures {
            failed |= !matches!(f, Failed::AtCap { .. });
            match f {
                Failed::AtCap { at } => stops.push(at),
                Failed::Worker(message) => {
                    warn!(%message, "a shard worker panicked; processing the batch again");
                }
                Failed::Batched => {
                    warn!(
                        "a snapshot or audit record would be oversized; processing the batch again writing them record by record"
                    );
                    self.every_record = true;
                }
                Failed::Oversized { at, message } => {
                    warn!(topic = %at.0, partition = at.1, offset = at.2, reason = %message, "a record would produce an oversized record; processing the batch again without it");
                    let poison = Poison {
                        kind: "oversized",
                        reason: message,
                    };
                    self.poisoned.insert(at, poison);
                }
                Failed::Panic { at, message } if self.panicked.get(&at) == Some(&message) => {
                    warn!(topic = %at.0, partition = at.1, offset = at.2, %message, "processing a record panicked again; processing the batch again without it");
                    let poison = Poison {
                        kind: "panic",
                        reason: format!("processing this record panicked twice: {message}"),
                    };
                    self.poisoned.insert(at, poison);
                }
                Failed::Panic { at, message } => {
                    warn!(topic = %at.0, partition = at.1, offset = at.2, %message, "processing a record panicked; aborting the batch and processing it again");
                    self.panicked.insert(at, message);
                }
            }
        }
        if failed {
            self.abort_open();
            self.stats.transaction(false);
            self.recover()?;
        } else {
            // Not a failure: the batch is processed again up to the stops.
            self.abort_because(
                "an input stops at the instance cap; aborting the open transaction to process it again up to there",
            );
            self.roll_back()?;
        }
        for at in stops {
            self.stop_input(at);
        }
        Ok(())
    }
}
