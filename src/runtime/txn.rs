//! The transaction in flight: records and offsets join it, the revocation
//! hook and the commit end it, and a failed one rewinds everything to what
//! was committed.

use super::*;

/// The transaction in flight, shared with the revocation hook.
#[derive(Default)]
pub(super) struct Txn {
    pub(super) open: bool,
    pub(super) offsets: Offsets,
    /// Shards written in this transaction (their repairs are done).
    pub(super) shards: BTreeSet<i32>,
    pub(super) events: usize,
    /// Records sent in this transaction.
    pub(super) records: usize,
    pub(super) started: Option<Instant>,
    /// Set by the revocation hook: the transaction was committed (true) or failed (false).
    pub(super) ended_by_hook: Option<bool>,
    /// A batch is being processed: what the transaction holds is not yet
    /// everything the consumed offsets stand for, so it must not commit.
    pub(super) in_batch: bool,
    /// What the admin index learns when this transaction commits.
    pub(super) index: Vec<crate::index::Update>,
    /// What became of operator requests, known when this transaction commits.
    pub(super) outcomes: Vec<(String, crate::index::Outcome)>,
}

/// Creates the group consumer (not yet subscribed) with its revocation hook.
pub(super) fn consumer(
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
    pub(super) fn set_in_batch(&self, on: bool) {
        if let Ok(mut t) = self.txn.lock() {
            t.in_batch = on;
        }
    }

    /// Aborts the transaction in flight (the runtime is failing).
    pub(super) fn abort_open(&mut self) {
        self.abort_because("the runtime failed; aborting the open transaction");
    }

    /// Aborts the transaction in flight, saying `why`.
    pub(super) fn abort_because(&mut self, why: &str) {
        let Ok(mut t) = self.txn.lock() else { return };
        if t.open {
            warn!("{why}");
            if let Err(e) = self.producer.abort() {
                warn!(error = %e, "abort failed; the broker aborts the transaction after its timeout");
            }
        }
        *t = Txn::default();
    }

    /// A transaction failed: state and positions go back to what was
    /// committed. A position that cannot be read or set is not guessed: the
    /// consumer is rebuilt, and its shards start again from what was committed.
    pub(super) fn recover(&mut self) -> Result<(), RuntimeError> {
        warn!("transaction failed; restoring shards and rewinding to committed offsets");
        self.roll_back()
    }

    /// State and positions go back to what was committed (see [`Self::recover`]).
    pub(super) fn roll_back(&mut self) -> Result<(), RuntimeError> {
        if let Ok(mut t) = self.txn.lock() {
            *t = Txn::default();
        }
        // Inputs stopped at the instance cap are read again from their
        // committed offsets too, up to their stops.
        self.rewind_stops();
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
    pub(super) fn rewind(&mut self) -> Result<(), RuntimeError> {
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

    pub(super) fn committed(&mut self) {
        if let Ok(t) = self.txn.lock() {
            debug!(
                events = t.events,
                shards = t.shards.len(),
                "transaction committed"
            );
        }
        self.stats.transaction(true);
        self.every_record = false;
        let (updates, outcomes) = match self.txn.lock() {
            Ok(mut t) => {
                let t = std::mem::take(&mut *t);
                (t.index, t.outcomes)
            }
            Err(_) => (Vec::new(), Vec::new()),
        };
        self.outcomes.record(outcomes);
        // A shard released meanwhile is its next owner's to show.
        let shards = &self.shards;
        self.index.apply(updates.into_iter().filter(|u| match u {
            crate::index::Update::Put(_, e) => shards.contains_key(&e.shard),
            crate::index::Update::Remove(_) => true,
        }));
    }

    /// [`Producer::renew`], tried again (the processing loop turning, not
    /// ready) until the broker answers; a stop asked meanwhile ends it.
    fn renew_producer(&mut self) -> Result<(), RuntimeError> {
        let mut said = false;
        loop {
            match self.producer.renew() {
                Ok(()) => {
                    if said {
                        info!(
                            "the transactional producer is back; the failed transaction was aborted"
                        );
                    }
                    return Ok(());
                }
                Err(e) => {
                    if !said {
                        warn!(error = %e, "cannot renew the transactional producer; trying again every second (not ready meanwhile)");
                        said = true;
                    }
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(e.into());
                    }
                    self.health.beat();
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    pub(super) fn begin(&mut self) -> Result<(), RuntimeError> {
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

    pub(super) fn send(&mut self, r: Outgoing) -> Result<(), RuntimeError> {
        self.begin()?;
        if self.faults.as_ref().is_some_and(Armed::send_fails) {
            return Err(RuntimeError::Kafka(KafkaFailure::Topic {
                topic: r.topic,
                problem: "injected fault: produce fails".into(),
            }));
        }
        self.producer.send(&r)?;
        if let Ok(mut t) = self.txn.lock() {
            t.records += 1;
        }
        stats::bump(&self.stats.records);
        Ok(())
    }

    /// Commits when the batch is full or old enough (or `force`).
    pub(super) fn maybe_commit(&mut self, force: bool) -> Result<(), RuntimeError> {
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
            let capped = t.records >= self.cfg.runtime.max_in_flight_records;
            let full = t.events >= self.cfg.runtime.max_batch || capped;
            if !(force || old || full) {
                return Ok(());
            }
            self.stats.metrics.batch_events.observe(t.events as f64);
            if capped && !(force || old) {
                self.stats.metrics.record_cap_commits.inc();
                if self
                    .record_cap_said
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
                {
                    self.record_cap_said = Some(Instant::now());
                    info!(
                        records = t.records,
                        cap = self.cfg.runtime.max_in_flight_records,
                        "a transaction holds its cap of records (runtime.max_in_flight_records): it commits before its commit interval (said at most once a minute; baton_transactions_at_record_cap_total counts them)"
                    );
                }
            }
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
                // A new producer of the same transactional id fences this
                // one's transaction, which the coordinator then aborts (see
                // `Producer::renew`); not ready until it is initialised.
                self.health.update(|r| r.producer = false);
                self.renew_producer()?;
                self.health.update(|r| r.producer = true);
                self.recover()?;
            }
        }
        Ok(())
    }

    /// Opens the transaction for shard `p`; the first time, it rewrites the keys
    /// whose latest changelog record never committed (with `position`).
    pub(super) fn prepare_shard(
        &mut self,
        p: i32,
        topic: &str,
        position: u64,
    ) -> Result<(), RuntimeError> {
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
                .and_then(|s| s.state.instance(&key))
                .map(|i| wire::encode_changelog_at(source, position, &i));
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

    pub(super) fn consumed(&mut self, m: &Incoming) -> Result<(), RuntimeError> {
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
}
