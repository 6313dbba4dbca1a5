//! The worker loop: consume commands → call → publish the outcomes and
//! commit the consumed offsets in one Kafka transaction.
//!
//! The loop thread only polls, dispatches and commits; calls run as tokio
//! tasks (the HTTP exchange itself on tokio's blocking pool). Commands of
//! one instance key are called one after the other, in offset order
//! (a chain per key); different keys run at once.
//!
//! Each partition keeps a ledger of the commands taken from it, by offset:
//! calling, or ready with the outcome record to publish. A commit takes
//! every partition's ready prefix — never past a command still calling —
//! and writes those outcomes with the offsets after them in one
//! transaction. So an outcome is published exactly when its command's
//! offset is committed: a crash or a failed commit loses nothing and
//! duplicates nothing; the commands after the last commit are read and
//! called again (same idempotency key), which is why calls are
//! at-least-once. On any failure the loop fences its producer (a new one
//! with the same transactional id aborts the open transaction), drops
//! everything in flight and rewinds to the committed offsets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::ConnectError;
use super::call::{Delivery, Endpoint, Outcome};
use super::config::{Connectors, Settings};
use super::metrics::ConnectMetrics;
use super::outcome;
use super::request::{Command, Route};
use crate::config::Config;
use crate::kafka::{
    self, Consumer, GroupConsumer, Incoming, KafkaFailure, Offsets, Outgoing, Producer,
};
use crate::runtime::now_ms;
use crate::telemetry::Health;

/// A topic partition.
type Tp = (String, i32);

/// Most records taken in one turn of the loop.
const MAX_POLL: usize = 500;

/// One partition's commands since its last commit.
struct Track {
    /// Set when the partition is first seen after an assignment or a
    /// rewind; outcomes of calls begun before belong to another epoch.
    epoch: u64,
    /// Offset → `None` while calling, else the outcome records (none for a
    /// record that is not a command of ours, or whose outcome is not published).
    slots: BTreeMap<i64, Option<Vec<Outgoing>>>,
    paused: bool,
}

/// What the loop and the revocation hook share.
#[derive(Default)]
struct Ledger {
    tracks: HashMap<Tp, Track>,
    /// The revocation hook's commit failed: the loop must recover.
    failed: bool,
}

impl Ledger {
    /// Every partition's ready prefix: the records to publish and the offsets to commit.
    fn take_ready(&mut self) -> (Vec<Outgoing>, Offsets) {
        let mut records = Vec::new();
        let mut offsets = Offsets::new();
        for (tp, t) in &mut self.tracks {
            let mut next = None;
            while let Some(entry) = t.slots.first_entry() {
                if entry.get().is_none() {
                    break;
                }
                let (offset, out) = entry.remove_entry();
                records.extend(out.unwrap_or_default());
                next = Some(offset + 1);
            }
            if let Some(n) = next {
                offsets.insert(tp.clone(), (n, String::new()));
            }
        }
        (records, offsets)
    }

    fn pending(&self) -> usize {
        self.tracks.values().map(|t| t.slots.len()).sum()
    }
}

/// Publishes the ready outcomes and commits their offsets in one
/// transaction; how many partitions it moved on.
fn commit_ready(
    producer: &Producer,
    consumer: &GroupConsumer,
    ledger: &mut Ledger,
) -> Result<usize, KafkaFailure> {
    let (records, offsets) = ledger.take_ready();
    if offsets.is_empty() {
        return Ok(0);
    }
    producer.begin()?;
    for r in &records {
        producer.send(r)?;
    }
    producer.commit(consumer, &offsets)?;
    Ok(offsets.len())
}

/// A command taken, waiting for or having its call.
#[derive(Clone)]
struct Job {
    tp: Tp,
    offset: i64,
    epoch: u64,
    command: Arc<Command>,
    route: Arc<Route>,
}

/// A finished call, reported by its task.
struct Done {
    tp: Tp,
    offset: i64,
    epoch: u64,
    chain: Vec<u8>,
    records: Vec<Outgoing>,
}

/// What a call's task tells the loop.
enum Report {
    Done(Done),
    /// The task of the call at (partition, offset, epoch) panicked: its
    /// command has no outcome, and everything since the last commit is
    /// taken again.
    Panicked((Tp, i64, u64), String),
}

/// `baton connect`: a member of the connector's consumer group.
pub struct Connector {
    cfg: Config,
    settings: Settings,
    routes: BTreeMap<String, Arc<Route>>,
    endpoints: Vec<Arc<Endpoint>>,
    consumer: Consumer,
    producer: Arc<Producer>,
    ledger: Arc<Mutex<Ledger>>,
    /// Instance key → its commands in order; the first is the one calling.
    chains: HashMap<Vec<u8>, VecDeque<Job>>,
    running: HashMap<(Tp, i64, u64), AbortHandle>,
    done_tx: mpsc::Sender<Report>,
    done_rx: mpsc::Receiver<Report>,
    tasks: Option<tokio::runtime::Runtime>,
    metrics: Arc<ConnectMetrics>,
    health: Arc<Health>,
    record_limit: usize,
    next_epoch: u64,
    stop: Arc<AtomicBool>,
    /// How often the call of each command panicked (a second time, the
    /// command fails instead of being taken again).
    panics: HashMap<(Tp, i64), u32>,
    /// Test-only: the call of this command id panics.
    panic_on: Option<Arc<str>>,
}

/// The group consumer with a revocation hook that commits what is ready
/// before partitions go, so their next owner calls as little again as possible.
fn consumer(
    cfg: &Config,
    ledger: &Arc<Mutex<Ledger>>,
    producer: &Arc<Producer>,
    metrics: &Arc<ConnectMetrics>,
) -> Result<Consumer, KafkaFailure> {
    let consumer = Consumer::new(cfg)?;
    let (ledger, producer, metrics) = (ledger.clone(), producer.clone(), metrics.clone());
    consumer.on_revoke(Box::new(move |c, lost| {
        let Ok(mut l) = ledger.lock() else { return };
        if lost {
            // Fenced by the group: another member owns these partitions and
            // starts from the committed offsets; nothing of ours may commit.
            return;
        }
        match commit_ready(&producer, c, &mut l) {
            Ok(0) => {}
            Ok(_) => metrics.transaction(true),
            Err(e) => {
                warn!(error = %e, "commit before revocation failed; aborting");
                let _ = producer.abort();
                metrics.transaction(false);
                l.failed = true;
            }
        }
    }));
    Ok(consumer)
}

impl Connector {
    /// Creates the result topics, the clients and the endpoints, and joins the group.
    pub fn new(setup: Connectors) -> Result<Connector, ConnectError> {
        let metrics = Arc::new(ConnectMetrics::new());
        let cfg = setup.client.clone();
        let results = setup.result_topics();
        if !results.is_empty() {
            // Existing topics keep their partitions; missing ones get `partitions`.
            let existing = kafka::partition_counts(&cfg, &results)?;
            let topics: Vec<(String, i32, bool)> = results
                .iter()
                .map(|t| {
                    let n = existing.get(t).copied().unwrap_or(cfg.topics.partitions);
                    (t.clone(), n, false)
                })
                .collect();
            kafka::ensure_topics(&cfg, &topics)?;
        }
        let record_limit = kafka::record_limit(&cfg)?;
        let transactional_id = setup.transactional_id();
        let calls: usize = setup.endpoints.iter().map(|e| e.concurrency).sum();
        let endpoints: Vec<Arc<Endpoint>> = setup
            .endpoints
            .into_iter()
            .map(|p| Arc::new(Endpoint::new(p, metrics.clone())))
            .collect();
        let producer = Arc::new(Producer::new(&cfg, &transactional_id)?);
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let consumer = consumer(&cfg, &ledger, &producer, &metrics)?;
        consumer.subscribe(&cfg.kafka.input_topics)?;
        let tasks = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Every call holds a blocking thread for its length; the
            // concurrency limits bound how many there are.
            .max_blocking_threads(calls.max(1) + 2)
            .thread_name("baton-connect")
            .enable_all()
            .build()
            .map_err(|e| ConnectError::Setup(format!("cannot start the call threads: {e}")))?;
        let (done_tx, done_rx) = mpsc::channel();
        let health = Arc::new(Health::default());
        health.update(|r| {
            r.producer = true;
            r.settled = true;
        });
        info!(
            transactional_id,
            topics = ?cfg.kafka.input_topics,
            commands = setup.routes.len(),
            "baton connect ready"
        );
        Ok(Connector {
            cfg,
            settings: setup.settings,
            routes: setup.routes,
            endpoints,
            consumer,
            producer,
            ledger,
            chains: HashMap::new(),
            running: HashMap::new(),
            done_tx,
            done_rx,
            tasks: Some(tasks),
            metrics,
            health,
            record_limit,
            next_epoch: 0,
            stop: Arc::default(),
            panics: HashMap::new(),
            panic_on: None,
        })
    }

    /// Test-only fault: the call of command `id` panics, every time.
    #[doc(hidden)]
    pub fn with_panic_on(mut self, id: &str) -> Connector {
        self.panic_on = Some(Arc::from(id));
        self
    }

    /// The connector's metrics (what `/metrics` shows).
    pub fn metrics(&self) -> Arc<ConnectMetrics> {
        self.metrics.clone()
    }

    /// What `/healthz` and `/readyz` report.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` on `listen`.
    pub fn serve(
        &self,
        listen: std::net::SocketAddr,
        stall_after: Duration,
    ) -> Result<crate::admin::Admin, crate::admin::AdminError> {
        crate::admin::serve(listen, self.metrics(), self.health(), stall_after, None)
    }

    /// Runs until `stop` is set; then lets the calls in flight finish (up
    /// to `connect.drain_timeout`) and commits their outcomes. On an error,
    /// nothing uncommitted is kept: the next owner calls it again.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<(), ConnectError> {
        self.stop = stop.clone();
        let result = self.turn_until(&stop);
        if result.is_err() {
            self.abort_all();
        }
        result
    }

    fn turn_until(&mut self, stop: &AtomicBool) -> Result<(), ConnectError> {
        let interval = self.settings.commit_interval;
        let mut committed_at = Instant::now();
        let mut refreshed_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.health.beat();
            // Calls in flight report back through a channel the loop reads
            // between polls: a short poll keeps a key's next command close
            // behind its previous one.
            let wait = if self.running.is_empty() {
                interval.min(Duration::from_millis(100))
            } else {
                Duration::from_millis(5)
            };
            self.poll(wait)?;
            self.collect()?;
            if committed_at.elapsed() >= interval {
                self.commit()?;
                committed_at = Instant::now();
            }
            if refreshed_at.elapsed() >= Duration::from_millis(500) {
                self.refresh();
                refreshed_at = Instant::now();
            }
        }
        self.drain()
    }

    fn refresh(&self) {
        let joined = self.consumer.joined();
        self.health.update(|r| r.joined = joined);
        let pending = self.ledger.lock().map(|l| l.pending()).unwrap_or(0);
        self.metrics.pending.set(pending as i64);
    }

    /// Takes what arrived within `wait`, up to [`MAX_POLL`] records.
    fn poll(&mut self, wait: Duration) -> Result<(), ConnectError> {
        let mut wait = wait;
        for _ in 0..MAX_POLL {
            let got = self.consumer.poll(wait);
            wait = Duration::ZERO;
            let revoked = self.after_rebalance()?;
            match got {
                None => break,
                Some(Ok(m)) => {
                    if !revoked.contains(&(m.topic.clone(), m.partition)) {
                        self.accept(m)?;
                    }
                }
                Some(Err(e)) => {
                    if let Some(fatal) = self.consumer.fatal_error() {
                        warn!(error = %fatal, "the consumer failed fatally; joining again in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                        self.rejoin()?;
                    } else {
                        warn!(error = %e, "consumer error");
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    /// Takes one record: a command of ours starts (or queues behind its
    /// key's), anything else is passed over (its offset still commits).
    fn accept(&mut self, m: Incoming) -> Result<(), ConnectError> {
        self.metrics.consumed(&m.topic);
        let tp: Tp = (m.topic.clone(), m.partition);
        let job = match Command::decode(&m) {
            Ok(c) => match self.routes.get(&c.event.kind) {
                Some(route) => Some((c, route.clone())),
                None => {
                    self.metrics.ignored("no-connector");
                    debug!(topic = %m.topic, kind = %c.event.kind, "no connector for this command type; passed over");
                    None
                }
            },
            Err(why) => {
                self.metrics.ignored("undecodable");
                warn!(topic = %m.topic, partition = m.partition, offset = m.offset, error = %why, "a record on a command topic is not a CloudEvent; passed over");
                None
            }
        };
        // Epochs only need to differ: every record draws one, the first of
        // a partition's new track keeps it.
        let fresh = self.next_epoch;
        self.next_epoch += 1;
        let (epoch, full) = {
            let mut l = self.lock()?;
            let track = l.tracks.entry(tp.clone()).or_insert_with(|| Track {
                epoch: fresh,
                slots: BTreeMap::new(),
                paused: false,
            });
            track.slots.insert(
                m.offset,
                if job.is_some() {
                    None
                } else {
                    Some(Vec::new())
                },
            );
            let full = track.slots.len() >= self.settings.max_pending && !track.paused;
            if full {
                track.paused = true;
            }
            (track.epoch, full)
        };
        if full {
            // This partition's commands wait on their calls: stop reading
            // it until a commit makes room (others go on).
            debug!(topic = %tp.0, partition = tp.1, "partition paused: max_pending commands in flight");
            self.consumer.pause(&tp.0, tp.1)?;
        }
        if let Some((command, route)) = job {
            let chain = match &m.key {
                Some(k) if !k.is_empty() => k.clone(),
                // No key, no order to keep: a chain of its own.
                _ => format!("\u{0}{}/{}/{}", m.topic, m.partition, m.offset).into_bytes(),
            };
            let job = Job {
                tp,
                offset: m.offset,
                epoch,
                command: Arc::new(command),
                route,
            };
            let queue = self.chains.entry(chain.clone()).or_default();
            queue.push_back(job);
            if queue.len() == 1 {
                self.start(&chain);
            }
        }
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Ledger>, ConnectError> {
        self.ledger
            .lock()
            .map_err(|_| ConnectError::Setup("the ledger's lock is poisoned".into()))
    }

    /// Starts the first command of `chain`. One whose request cannot be
    /// built (a CEL error on its data) fails at once, without a call, and
    /// the next one starts.
    fn start(&mut self, chain: &[u8]) {
        loop {
            let Some(job) = self.chains.get(chain).and_then(|q| q.front()).cloned() else {
                self.chains.remove(chain);
                return;
            };
            let endpoint = self.endpoints[job.route.endpoint].clone();
            let request = match job.route.request(&job.command, now_ms()) {
                Ok(r) => r,
                Err(why) => {
                    warn!(command = %job.command.event.id, reason = %why, "the request cannot be built; the command fails");
                    self.decide_failed(chain, &job, format!("the request cannot be built: {why}"));
                    continue;
                }
            };
            let Some(tasks) = &self.tasks else { return };
            let (metrics, limit) = (self.metrics.clone(), self.record_limit);
            let chain_key = chain.to_vec();
            let key = (job.tp.clone(), job.offset, job.epoch);
            let panic_on = self.panic_on.clone();
            let work = tasks.spawn(async move {
                if panic_on.as_deref() == Some(job.command.event.id.as_str()) {
                    panic!("injected fault: the call of {} panics", job.command.event.id);
                }
                let delivery = endpoint
                    .clone()
                    .deliver(Arc::new(request), job.command.clone())
                    .await;
                let succeeded = matches!(delivery.outcome, Outcome::Succeeded { .. });
                metrics.outcome(&endpoint.name, succeeded);
                if let Outcome::Failed { reason, .. } = &delivery.outcome {
                    warn!(endpoint = %endpoint.name, command = %job.command.event.id, %reason, "command failed");
                }
                let records = outcome::record(
                    &job.command,
                    &job.route,
                    &endpoint.name,
                    &delivery,
                    now_ms(),
                    limit,
                );
                Done {
                    tp: job.tp,
                    offset: job.offset,
                    epoch: job.epoch,
                    chain: chain_key,
                    records: records.into_iter().collect(),
                }
            });
            let handle = work.abort_handle();
            let tx = self.done_tx.clone();
            let which = key.clone();
            // A second task reports, so a panic is reported too; a call
            // cancelled (its partition gone) reports nothing.
            tasks.spawn(async move {
                match work.await {
                    Ok(done) => {
                        let _ = tx.send(Report::Done(done));
                    }
                    Err(e) if e.is_panic() => {
                        let _ = tx.send(Report::Panicked(which, e.to_string()));
                    }
                    Err(_) => {}
                }
            });
            self.running.insert(key, handle);
            return;
        }
    }

    /// Records a command's outcome in its partition's ledger (unless the
    /// partition was dropped or rewound since it was taken).
    fn fill(&self, tp: &Tp, epoch: u64, offset: i64, records: Vec<Outgoing>) {
        if let Ok(mut l) = self.ledger.lock()
            && let Some(t) = l.tracks.get_mut(tp)
            && t.epoch == epoch
            && let Some(slot) = t.slots.get_mut(&offset)
        {
            *slot = Some(records);
        }
    }

    /// Takes the outcomes calls reported and starts each key's next command.
    fn collect(&mut self) -> Result<(), ConnectError> {
        while let Ok(report) = self.done_rx.try_recv() {
            let done = match report {
                Report::Done(d) => d,
                Report::Panicked(key, why) => {
                    if !self.running.contains_key(&key) {
                        // A call of a partition dropped or rewound since.
                        continue;
                    }
                    let times = self.panics.entry((key.0.clone(), key.1)).or_insert(0);
                    *times += 1;
                    if *times < 2 {
                        warn!(%why, "a call's task panicked; taking every command since the last commit again");
                        return self.recover();
                    }
                    // The same command again: it fails, so that it does not
                    // stop its key and its partition for good.
                    warn!(%why, "a call's task panicked a second time on the same command; the command fails");
                    self.running.remove(&key);
                    self.panics.remove(&(key.0.clone(), key.1));
                    self.fail_panicked(&key, &why);
                    continue;
                }
            };
            self.running
                .remove(&(done.tp.clone(), done.offset, done.epoch));
            let current = self
                .chains
                .get(&done.chain)
                .and_then(|q| q.front())
                .is_some_and(|j| {
                    j.tp == done.tp && j.offset == done.offset && j.epoch == done.epoch
                });
            if !current {
                // Its partition was dropped or rewound meanwhile.
                continue;
            }
            if let Some(q) = self.chains.get_mut(&done.chain) {
                q.pop_front();
            }
            self.fill(&done.tp, done.epoch, done.offset, done.records);
            self.start(&done.chain);
        }
        Ok(())
    }

    /// Decides `job`, the first command of `chain`, as failed without a
    /// call (its outcome waits for the next commit) and takes it off its chain.
    fn decide_failed(&mut self, chain: &[u8], job: &Job, reason: String) {
        let endpoint = self.endpoints[job.route.endpoint].clone();
        let delivery = Delivery {
            outcome: Outcome::Failed {
                status: None,
                reason,
                body: serde_json::Value::Null,
                truncated: false,
            },
            attempts: 0,
        };
        self.metrics.outcome(&endpoint.name, false);
        let records = outcome::record(
            &job.command,
            &job.route,
            &endpoint.name,
            &delivery,
            now_ms(),
            self.record_limit,
        );
        self.fill(
            &job.tp,
            job.epoch,
            job.offset,
            records.into_iter().collect(),
        );
        if let Some(q) = self.chains.get_mut(chain) {
            q.pop_front();
        }
    }

    /// Decides the command whose call panicked twice as failed, and starts
    /// the next command of its key.
    fn fail_panicked(&mut self, key: &(Tp, i64, u64), why: &str) {
        let chain = self.chains.iter().find_map(|(chain, q)| {
            q.front()
                .filter(|j| (&j.tp, j.offset, j.epoch) == (&key.0, key.1, key.2))
                .map(|j| (chain.clone(), j.clone()))
        });
        let Some((chain, job)) = chain else { return };
        self.decide_failed(&chain, &job, format!("calling it panicked twice: {why}"));
        self.start(&chain);
    }

    /// Commits the ready outcomes; a failed commit fences the producer and
    /// rewinds to the committed offsets.
    fn commit(&mut self) -> Result<(), ConnectError> {
        let result = {
            let mut l = self.lock()?;
            commit_ready(&self.producer, &self.consumer.inner, &mut l)
        };
        match result {
            Ok(0) => {}
            Ok(n) => {
                self.metrics.transaction(true);
                debug!(partitions = n, "outcomes committed");
            }
            Err(e) => {
                warn!(error = %e, "commit failed; the commands since the last commit are called again");
                self.metrics.transaction(false);
                self.health.update(|r| r.producer = false);
                self.renew_producer()?;
                self.health.update(|r| r.producer = true);
                self.recover()?;
            }
        }
        self.resume_drained()?;
        Ok(())
    }

    /// Reads paused partitions again once their ledger has room.
    fn resume_drained(&mut self) -> Result<(), ConnectError> {
        let half = self.settings.max_pending / 2;
        let resumable: Vec<Tp> = {
            let mut l = self.lock()?;
            l.tracks
                .iter_mut()
                .filter(|(_, t)| t.paused && t.slots.len() <= half)
                .map(|(tp, t)| {
                    t.paused = false;
                    tp.clone()
                })
                .collect()
        };
        for (topic, p) in resumable {
            self.consumer.resume(&topic, p)?;
        }
        Ok(())
    }

    /// Acts on the rebalances of the last poll; returns the revoked partitions.
    fn after_rebalance(&mut self) -> Result<Vec<Tp>, ConnectError> {
        let r = self.consumer.take_rebalances();
        for tp in &r.revoked {
            self.drop_partition(tp);
        }
        if !r.assigned.is_empty() || !r.revoked.is_empty() {
            info!(assigned = ?r.assigned, revoked = ?r.revoked, "partitions moved");
            self.refresh();
        }
        let failed = self
            .ledger
            .lock()
            .map(|mut l| std::mem::take(&mut l.failed))
            .unwrap_or(false);
        if failed {
            self.renew_producer()?;
            self.recover()?;
        }
        Ok(r.revoked)
    }

    /// Forgets a partition: its calls are cancelled, its queued commands dropped.
    fn drop_partition(&mut self, tp: &Tp) {
        if let Ok(mut l) = self.ledger.lock() {
            l.tracks.remove(tp);
        }
        let mut restart = Vec::new();
        for (chain, q) in &mut self.chains {
            let front_dropped = q.front().is_some_and(|j| j.tp == *tp);
            q.retain(|j| j.tp != *tp);
            if front_dropped && !q.is_empty() {
                restart.push(chain.clone());
            }
        }
        self.chains.retain(|_, q| !q.is_empty());
        self.running.retain(|(t, _, _), h| {
            if t == tp {
                h.abort();
                false
            } else {
                true
            }
        });
        for chain in restart {
            self.start(&chain);
        }
    }

    /// Cancels every call and forgets everything not committed.
    fn abort_all(&mut self) {
        for h in self.running.values() {
            h.abort();
        }
        self.running.clear();
        self.chains.clear();
        if let Ok(mut l) = self.ledger.lock() {
            *l = Ledger::default();
        }
        while self.done_rx.try_recv().is_ok() {}
    }

    /// After a failed transaction: everything since the last commit is
    /// taken again from the committed offsets. A position that cannot be
    /// read or set is not guessed: the consumer is rebuilt instead.
    fn recover(&mut self) -> Result<(), ConnectError> {
        warn!("rewinding to the committed offsets");
        self.abort_all();
        let rewind = |c: &Consumer| -> Result<(), KafkaFailure> {
            for (topic, p) in c.assignment() {
                let at = c.committed(&topic, p)?.map_or(-1, |(o, _)| o);
                c.resume(&topic, p)?;
                c.seek(&topic, p, at)?;
            }
            Ok(())
        };
        if let Err(e) = rewind(&self.consumer) {
            warn!(error = %e, "cannot rewind to the committed offsets; rebuilding the consumer");
            self.rejoin()?;
        }
        Ok(())
    }

    /// Replaces the consumer (unusable, or at an unknown position).
    fn rejoin(&mut self) -> Result<(), ConnectError> {
        self.abort_all();
        let fresh = consumer(&self.cfg, &self.ledger, &self.producer, &self.metrics)?;
        // The old consumer leaves before the new one joins.
        drop(std::mem::replace(&mut self.consumer, fresh));
        self.consumer.subscribe(&self.cfg.kafka.input_topics)?;
        self.refresh();
        Ok(())
    }

    /// [`Producer::renew`], tried again every second until the broker answers
    /// (or a stop is asked).
    fn renew_producer(&mut self) -> Result<(), ConnectError> {
        let mut said = false;
        loop {
            match self.producer.renew() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if !said {
                        warn!(error = %e, "cannot renew the transactional producer; trying again every second");
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

    /// On stop: no new commands; the calls in flight get `drain_timeout` to
    /// finish, then what is ready commits.
    fn drain(&mut self) -> Result<(), ConnectError> {
        self.health.update(|r| r.stopping = true);
        for (topic, p) in self.consumer.assignment() {
            let _ = self.consumer.pause(&topic, p);
        }
        let deadline = Instant::now() + self.settings.drain_timeout;
        while !self.running.is_empty() && Instant::now() < deadline {
            self.health.beat();
            // Polled only to serve the group; paused partitions bring nothing,
            // and what a poll still brings is left uncommitted for the next owner.
            let _ = self.consumer.poll(Duration::from_millis(10));
            self.after_rebalance()?;
            self.collect()?;
        }
        self.commit()?;
        if !self.running.is_empty() {
            info!(
                calls = self.running.len(),
                "stopping with calls still in flight; their commands are called again by the next owner"
            );
        }
        self.abort_all();
        Ok(())
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        // Calls still running (their results unwanted) end on their own,
        // within their timeout; the process need not wait for them.
        if let Some(tasks) = self.tasks.take() {
            tasks.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, n: u8) -> Outgoing {
        Outgoing {
            topic: topic.into(),
            partition: None,
            key: vec![n],
            payload: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_commit_never_passes_a_command_still_calling() {
        let mut l = Ledger::default();
        let tp = ("crm.commands".to_string(), 0);
        let mut slots = BTreeMap::new();
        slots.insert(3, Some(vec![record("r", 3)]));
        slots.insert(4, Some(Vec::new()));
        slots.insert(6, None);
        slots.insert(7, Some(vec![record("r", 7)]));
        l.tracks.insert(
            tp.clone(),
            Track {
                epoch: 0,
                slots,
                paused: false,
            },
        );
        let (records, offsets) = l.take_ready();
        assert_eq!(records.len(), 1);
        assert_eq!(offsets.get(&tp), Some(&(5, String::new())));
        assert_eq!(l.pending(), 2);
        // Nothing ready at the front: nothing to commit.
        let (records, offsets) = l.take_ready();
        assert!(records.is_empty() && offsets.is_empty());
        if let Some(t) = l.tracks.get_mut(&tp) {
            t.slots.insert(6, Some(Vec::new()));
        }
        let (records, offsets) = l.take_ready();
        assert_eq!(records.len(), 1);
        assert_eq!(offsets.get(&tp), Some(&(8, String::new())));
    }
}
