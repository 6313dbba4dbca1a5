//! The only place that knows rdkafka: clients, topic provisioning, the
//! transactional producer, the consumer with its rebalance hooks, and reading
//! a changelog partition for restore.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, Producer as _, ProducerContext,
    ThreadedProducer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, TopicPartitionList as Tpl};

use crate::config::{Config, GroupProtocol};

pub mod group;

/// Kafka went wrong; the message says which operation.
#[derive(Debug, thiserror::Error)]
pub enum KafkaFailure {
    #[error("{what}: {source}")]
    Client {
        what: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {topic}: {problem}")]
    Topic { topic: String, problem: String },
}

fn fail(what: impl Into<String>) -> impl FnOnce(KafkaError) -> KafkaFailure {
    let what = what.into();
    move |source| KafkaFailure::Client { what, source }
}

/// A partition's low and high watermarks. A topic created a moment ago may
/// not be in the client's metadata yet: unknown partitions are asked again
/// for up to 30 s.
fn watermarks<C: rdkafka::consumer::Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaFailure> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(30)) {
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        Code::UnknownPartition | Code::UnknownTopicOrPartition | Code::UnknownTopic
                    )
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other.map_err(fail(format!("watermarks of {topic}/{partition}"))),
        }
    }
}

/// A client of any kind: `kafka.options`.
fn base(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.bootstrap_servers);
    for (k, v) in &cfg.kafka.options {
        c.set(k, v);
    }
    c
}

/// A consumer: `kafka.options`, then `kafka.consumer_options`.
fn consumer_base(cfg: &Config) -> ClientConfig {
    let mut c = base(cfg);
    for (k, v) in &cfg.kafka.consumer_options {
        c.set(k, v);
    }
    c
}

/// A producer: `kafka.options`, then `kafka.producer_options`.
fn producer_base(cfg: &Config) -> ClientConfig {
    let mut c = base(cfg);
    for (k, v) in &cfg.kafka.producer_options {
        c.set(k, v);
    }
    c
}

/// A record read from Kafka.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<u64>,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Option<Vec<u8>>,
}

impl Incoming {
    /// The record as the CloudEvents decoder reads it.
    pub fn event_record(&self) -> crate::wire::cloudevents::Record<'_> {
        crate::wire::cloudevents::Record {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            headers: &self.headers,
            payload: self.payload.as_deref(),
        }
    }

    fn from<M: Message>(m: &M) -> Incoming {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Incoming {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m
                .timestamp()
                .to_millis()
                .and_then(|t| u64::try_from(t).ok()),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }
}

/// A record to write.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    /// `None` writes a tombstone.
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a rebalance did, for the runtime to act on after `poll` returns.
#[derive(Debug, Default)]
pub struct Rebalances {
    pub assigned: Vec<(String, i32)>,
    pub revoked: Vec<(String, i32)>,
}

/// Called on revocation, before partitions are released: it must finish the
/// open transaction. The flag says the partitions were lost (the group fenced
/// this member) rather than handed over.
pub type RevokeHook = Box<dyn Fn(&BaseConsumer<GroupContext>, bool) + Send + Sync>;

/// Records behind per partition, as librdkafka's statistics last reported it.
pub type Lag = Arc<Mutex<BTreeMap<(String, i32), i64>>>;

/// Consumer context: records rebalances and lets the runtime commit before a
/// revocation; keeps the consumer lag from librdkafka's statistics.
pub struct GroupContext {
    pub events: Arc<Mutex<Rebalances>>,
    pub on_revoke: Mutex<Option<RevokeHook>>,
    /// Assignments received so far (0: the group has not been joined yet).
    pub assignments: AtomicU64,
    pub lag: Lag,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = BTreeMap::new();
        for (topic, t) in statistics.topics {
            for (p, part) in t.partitions {
                // librdkafka's own `consumer_lag` counts from its committed
                // offset, which transactional commits do not update: the lag
                // is measured from the position instead (the committed offset,
                // or the log start, before anything was read). -1 is
                // librdkafka's placeholder partition.
                if p < 0 || !part.desired {
                    continue;
                }
                let end = if part.ls_offset >= 0 {
                    part.ls_offset
                } else {
                    part.hi_offset
                };
                let from = [part.app_offset, part.committed_offset, part.lo_offset]
                    .into_iter()
                    .find(|o| *o >= 0);
                if let (true, Some(from)) = (end >= 0, from) {
                    lag.insert((topic.clone(), p), (end - from).max(0));
                }
            }
        }
        if let Ok(mut l) = self.lag.lock() {
            *l = lag;
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            if let Ok(hook) = self.on_revoke.lock()
                && let Some(h) = hook.as_ref()
            {
                h(consumer, consumer.assignment_lost());
            }
            if let Ok(mut ev) = self.events.lock() {
                ev.revoked.extend(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition())),
                );
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.assignments.fetch_add(1, Ordering::Relaxed);
        }
        if let Rebalance::Assign(tpl) = rebalance
            && let Ok(mut ev) = self.events.lock()
        {
            ev.assigned.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
        }
    }
}

/// The librdkafka consumer inside [`Consumer`], as a revocation hook and
/// [`Producer::commit`] see it.
pub type GroupConsumer = BaseConsumer<GroupContext>;

/// The group consumer (read_committed, incremental rebalancing, no auto commit).
pub struct Consumer {
    pub inner: BaseConsumer<GroupContext>,
    pub rebalances: Arc<Mutex<Rebalances>>,
}

impl Consumer {
    /// A consumer of the group, not yet subscribed.
    pub fn new(cfg: &Config) -> Result<Consumer, KafkaFailure> {
        let rebalances = Arc::new(Mutex::new(Rebalances::default()));
        let ctx = GroupContext {
            events: rebalances.clone(),
            on_revoke: Mutex::new(None),
            assignments: AtomicU64::new(0),
            lag: Lag::default(),
        };
        let mut client = consumer_base(cfg);
        if cfg
            .kafka
            .consumer_option("statistics.interval.ms")
            .is_none()
        {
            // The lag metric comes from these statistics.
            client.set("statistics.interval.ms", "5000");
        }
        match cfg.kafka.group_protocol {
            GroupProtocol::Consumer => {
                // KIP-848: the broker assigns, incrementally; its range
                // assignor keeps partition p of every subscribed topic on one
                // member (co-partitioning), and moves only what must move.
                client.set("group.protocol", "consumer");
                if cfg.kafka.consumer_option("group.remote.assignor").is_none() {
                    client.set("group.remote.assignor", "range");
                }
            }
            GroupProtocol::Classic => {
                let strategy = cfg
                    .kafka
                    .consumer_option("partition.assignment.strategy")
                    .map_or(
                        if cfg.runtime.in_place {
                            "range"
                        } else {
                            "cooperative-sticky"
                        },
                        String::as_str,
                    );
                client
                    .set("partition.assignment.strategy", strategy)
                    .set(
                        "session.timeout.ms",
                        cfg.runtime.session_timeout.as_millis().to_string(),
                    )
                    .set(
                        "heartbeat.interval.ms",
                        (cfg.runtime.session_timeout.as_millis() / 4)
                            .max(100)
                            .to_string(),
                    );
            }
        }
        if cfg.runtime.static_membership && cfg.kafka.consumer_option("group.instance.id").is_none()
        {
            client.set("group.instance.id", cfg.instance_id());
        }
        let inner: BaseConsumer<GroupContext> = client
            .set("group.id", &cfg.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create_with_context(ctx)
            .map_err(fail("create consumer"))?;
        Ok(Consumer { inner, rebalances })
    }

    /// Joins the group, subscribed to `topics`.
    pub fn subscribe(&self, topics: &[String]) -> Result<(), KafkaFailure> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.inner
            .subscribe(&names)
            .map_err(fail(format!("subscribe to {names:?}")))
    }

    /// Installs the hook that runs before partitions are revoked.
    pub fn on_revoke(&self, hook: RevokeHook) {
        if let Ok(mut h) = self.inner.context().on_revoke.lock() {
            *h = Some(hook);
        }
    }

    /// The next record, if one arrives within `timeout`.
    pub fn poll(&self, timeout: Duration) -> Option<Result<Incoming, KafkaFailure>> {
        self.inner
            .poll(timeout)
            .map(|r| r.map(|m| Incoming::from(&m)).map_err(fail("poll")))
    }

    /// Whether the consumer has received an assignment from the group yet.
    pub fn joined(&self) -> bool {
        self.inner.context().assignments.load(Ordering::Relaxed) > 0
    }

    /// The partitions assigned to this consumer now.
    pub fn assignment(&self) -> BTreeSet<(String, i32)> {
        self.inner
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The consumer's fatal error, if it has had one (it is unusable then).
    pub fn fatal_error(&self) -> Option<String> {
        self.inner
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// The member id the group coordinator gave this consumer.
    pub fn member_id(&self) -> String {
        group::member_id(&self.inner)
    }

    /// Consumer lag per partition, as of librdkafka's last statistics.
    pub fn lag(&self) -> BTreeMap<(String, i32), i64> {
        self.inner
            .context()
            .lag
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    pub fn take_rebalances(&self) -> Rebalances {
        self.rebalances
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    /// Committed offset and metadata of a partition (`None`: nothing committed yet).
    pub fn committed(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<(i64, String)>, KafkaFailure> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let got = self
            .inner
            .committed_offsets(tpl, Duration::from_secs(30))
            .map_err(fail(format!("committed offsets of {topic}/{partition}")))?;
        Ok(got
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some((o, e.metadata().to_string())),
                _ => None,
            }))
    }

    /// Stops fetching a partition until [`Consumer::resume`].
    pub fn pause(&self, topic: &str, partition: i32) -> Result<(), KafkaFailure> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        self.inner
            .pause(&tpl)
            .map_err(fail(format!("pause {topic}/{partition}")))
    }

    pub fn resume(&self, topic: &str, partition: i32) -> Result<(), KafkaFailure> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        self.inner
            .resume(&tpl)
            .map_err(fail(format!("resume {topic}/{partition}")))
    }

    /// Moves the read position of a partition.
    pub fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaFailure> {
        let mut tpl = TopicPartitionList::new();
        let at = if offset < 0 {
            Offset::Beginning
        } else {
            Offset::Offset(offset)
        };
        tpl.add_partition_offset(topic, partition, at)
            .map_err(fail(format!("seek {topic}/{partition}")))?;
        self.inner
            .seek_partitions(tpl, Duration::from_secs(10))
            .map(|_| ())
            .map_err(fail(format!("seek {topic}/{partition}")))
    }
}

/// Offsets to commit with a transaction: (topic, partition) → (next offset, metadata).
pub type Offsets = BTreeMap<(String, i32), (i64, String)>;

/// The transactional producer.
pub struct Producer {
    inner: std::sync::RwLock<ThreadedProducer<DefaultProducerContext>>,
    /// How to create it again, with its transactional id (transactional only).
    renewal: Option<(ClientConfig, String)>,
}

impl Producer {
    pub fn new(cfg: &Config, transactional_id: &str) -> Result<Producer, KafkaFailure> {
        let mut client = producer_base(cfg);
        // Tuning the user did not set gets baton's defaults. A linger of a
        // few milliseconds made librdkafka's broker thread spin while
        // acknowledgements were outstanding (4 s of CPU per 20 000 events
        // against 1 s at 20 ms, same throughput); the commit flushes anyway,
        // so the linger adds no latency.
        // A transaction lasts about one commit interval; a short timeout lets
        // the broker abort the open transaction of a fenced (paused,
        // partitioned) process soon, so the new owner of its shards, whose
        // committed offsets wait for it, goes on (Kafka Streams: 10 s too).
        let timeout = TRANSACTION_TIMEOUT_MS.to_string();
        for (key, default) in [("linger.ms", "20"), ("transaction.timeout.ms", &timeout)] {
            if cfg.kafka.producer_option(key).is_none() {
                client.set(key, default);
            }
        }
        client
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true");
        let inner = transactional(&client, transactional_id)?;
        Ok(Producer {
            inner: std::sync::RwLock::new(inner),
            renewal: Some((client, transactional_id.to_string())),
        })
    }

    fn plain(inner: ThreadedProducer<DefaultProducerContext>) -> Producer {
        Producer {
            inner: std::sync::RwLock::new(inner),
            renewal: None,
        }
    }

    /// The client, for one call.
    fn client(&self) -> std::sync::RwLockReadGuard<'_, ThreadedProducer<DefaultProducerContext>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the transactional producer with a new one of the same
    /// transactional id, instead of aborting a failed transaction: the new
    /// one's initialisation fences the old and has the coordinator abort its
    /// open transaction. A transaction that failed with the broker away (its
    /// records timed out) needs a new producer epoch to abort; librdkafka
    /// 2.12's abort of it failed an internal assertion
    /// (`rd_kafka_enq_once_del_source_return`) and ended the process.
    pub fn renew(&self) -> Result<(), KafkaFailure> {
        let Some((client, id)) = &self.renewal else {
            return Ok(());
        };
        let fresh = transactional(client, id)?;
        let old = std::mem::replace(
            &mut *self.inner.write().unwrap_or_else(|e| e.into_inner()),
            fresh,
        );
        drop(old);
        Ok(())
    }

    pub fn begin(&self) -> Result<(), KafkaFailure> {
        self.client()
            .begin_transaction()
            .map_err(fail("begin transaction"))
    }

    pub fn send(&self, r: &Outgoing) -> Result<(), KafkaFailure> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut attempt = 0;
        loop {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&r.topic)
                .key(&r.key[..])
                .headers(headers.clone());
            if let Some(p) = &r.payload {
                rec = rec.payload(&p[..]);
            }
            if let Some(p) = r.partition {
                rec = rec.partition(p);
            }
            match self.client().send(rec) {
                Ok(()) => return Ok(()),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) if attempt < 100 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(fail(format!("produce to {}", r.topic))(e)),
            }
        }
    }

    /// Commits the open transaction together with the consumed offsets.
    pub fn commit(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        offsets: &Offsets,
    ) -> Result<(), KafkaFailure> {
        if !offsets.is_empty() {
            let mut tpl = Tpl::new();
            for ((topic, partition), (offset, meta)) in offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(fail("offsets"))?;
                if let Some(mut e) = tpl.find_partition(topic, *partition) {
                    e.set_metadata(meta.as_str());
                }
            }
            let group = consumer
                .group_metadata()
                .ok_or_else(|| KafkaFailure::Topic {
                    topic: "(group)".into(),
                    problem: "no consumer group metadata: the consumer has not joined its group"
                        .into(),
                })?;
            self.client()
                .send_offsets_to_transaction(&tpl, &group, Duration::from_secs(30))
                .map_err(fail("send offsets to transaction"))?;
        }
        self.client()
            .commit_transaction(Duration::from_secs(60))
            .map_err(fail("commit transaction"))
    }

    pub fn abort(&self) -> Result<(), KafkaFailure> {
        self.client()
            .abort_transaction(Duration::from_secs(60))
            .map_err(fail("abort transaction"))
    }
}

/// Creates a transactional producer and initialises its transactions.
fn transactional(
    client: &ClientConfig,
    id: &str,
) -> Result<ThreadedProducer<DefaultProducerContext>, KafkaFailure> {
    let inner: ThreadedProducer<DefaultProducerContext> = client
        .create()
        .map_err(fail("create transactional producer"))?;
    inner
        .init_transactions(Duration::from_secs(60))
        .map_err(fail(format!("init transactions for {id}")))?;
    Ok(inner)
}

/// A current-thread runtime for the admin client's futures.
fn admin_runtime() -> Result<tokio::runtime::Runtime, KafkaFailure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KafkaFailure::Topic {
            topic: "(admin)".into(),
            problem: e.to_string(),
        })
}

/// baton's `transaction.timeout.ms` unless `kafka.producer_options` sets
/// one: the broker aborts a transaction open for longer (see [`Producer::new`]).
pub const TRANSACTION_TIMEOUT_MS: u64 = 10_000;

/// Creates missing topics; checks partitions and the changelog's compaction on existing ones.
pub fn ensure_topics(cfg: &Config, topics: &[(String, i32, bool)]) -> Result<(), KafkaFailure> {
    let admin: AdminClient<DefaultClientContext> =
        base(cfg).create().map_err(fail("create admin client"))?;
    let rt = admin_runtime()?;
    let metadata = cluster_metadata(cfg, &admin)?;
    let existing: HashMap<String, i32> = metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect();
    let mut missing = Vec::new();
    for (name, partitions, compact) in topics {
        match existing.get(name) {
            Some(&n) if n == *partitions || n == 0 => {}
            Some(&n) => {
                return Err(KafkaFailure::Topic {
                    topic: name.clone(),
                    problem: format!(
                        "has {n} partitions, baton needs {partitions} (its topics are co-partitioned); set topics.partitions = {n} or recreate the topic"
                    ),
                });
            }
            None => missing.push((name.clone(), *partitions, *compact)),
        }
    }
    if !missing.is_empty() {
        if !cfg.topics.create {
            let names: Vec<&str> = missing.iter().map(|m| m.0.as_str()).collect();
            return Err(KafkaFailure::Topic {
                topic: names.join(", "),
                problem: "missing, and topics.create is false".into(),
            });
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(name, p, compact)| {
                let t = NewTopic::new(
                    name,
                    *p,
                    TopicReplication::Fixed(cfg.topics.replication_factor),
                );
                if *compact {
                    cfg.topics
                        .changelog_config
                        .iter()
                        .fold(t.set("cleanup.policy", "compact"), |t, (k, v)| t.set(k, v))
                } else {
                    t
                }
            })
            .collect();
        let results = rt
            .block_on(admin.create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            ))
            .map_err(fail("create topics"))?;
        for r in results {
            if let Err((topic, code)) = r
                && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
            {
                return Err(KafkaFailure::Topic {
                    topic,
                    problem: format!("could not be created: {code}"),
                });
            }
        }
    }
    // The changelog must be compacted, or restore reads every version ever written.
    for (name, _, compact) in topics {
        if !compact {
            continue;
        }
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
        let described = match rt
            .block_on(admin.describe_configs([&ResourceSpecifier::Topic(name)], &opts))
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(topic = %name, error = %e, "cannot read topic configuration; compaction not checked");
                continue;
            }
        };
        for r in described.into_iter().flatten() {
            if let Some(e) = r.get("cleanup.policy")
                && let Some(v) = &e.value
                && !v.contains("compact")
            {
                return Err(KafkaFailure::Topic {
                    topic: name.clone(),
                    problem: format!("cleanup.policy is `{v}`, baton needs `compact`"),
                });
            }
        }
    }
    Ok(())
}

/// How many partitions each of `topics` has; those that do not exist are
/// left out.
pub fn partition_counts(
    cfg: &Config,
    topics: &[String],
) -> Result<HashMap<String, i32>, KafkaFailure> {
    let admin: AdminClient<DefaultClientContext> =
        base(cfg).create().map_err(fail("create admin client"))?;
    let metadata = cluster_metadata(cfg, &admin)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()) && !t.partitions().is_empty())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// librdkafka's own `message.max.bytes` default.
const CLIENT_MESSAGE_MAX: usize = 1_000_000;

/// The largest record baton may produce: `kafka.max_record_bytes`, or else
/// the broker's `message.max.bytes`, never above what the producer itself
/// takes (`message.max.bytes` of `[kafka.producer_options]` or
/// `[kafka.options]`, librdkafka's 1 000 000
/// otherwise). A record's size counts its key, value and headers.
pub fn record_limit(cfg: &Config) -> Result<usize, KafkaFailure> {
    let client = cfg
        .kafka
        .producer_option("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(CLIENT_MESSAGE_MAX);
    if let Some(n) = cfg.kafka.max_record_bytes {
        return Ok(n.min(client));
    }
    let admin: AdminClient<DefaultClientContext> =
        base(cfg).create().map_err(fail("create admin client"))?;
    let metadata = cluster_metadata(cfg, &admin)?;
    let Some(broker) = metadata.brokers().first().map(|b| b.id()) else {
        return Ok(client);
    };
    let rt = admin_runtime()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = match rt
        .block_on(admin.describe_configs([&ResourceSpecifier::Broker(broker)], &opts))
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, limit = client, "cannot read the broker's message.max.bytes; records are limited to the producer's");
            return Ok(client);
        }
    };
    let broker_max = described.into_iter().flatten().find_map(|r| {
        r.get("message.max.bytes")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse::<usize>().ok())
    });
    Ok(broker_max.map_or(client, |b| b.min(client)))
}

/// The cluster's metadata, the first request of a run: a failure says why
/// the cluster does not answer where librdkafka tells (see [`why_unreachable`]).
fn cluster_metadata(
    cfg: &Config,
    admin: &AdminClient<DefaultClientContext>,
) -> Result<rdkafka::metadata::Metadata, KafkaFailure> {
    admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(|e| {
            fail(match why_unreachable(cfg) {
                Some(why) => format!("fetch metadata ({why})"),
                None => "fetch metadata".to_string(),
            })(e)
        })
}

/// Why the cluster does not answer, when librdkafka says (a wrong password,
/// a TLS failure): its metadata error is only "transport failure", the
/// reason comes as an error event, served here by polling a short-lived
/// client of the same settings.
fn why_unreachable(cfg: &Config) -> Option<String> {
    let probe: BaseProducer<FirstContact> = base(cfg)
        .set("reconnect.backoff.max.ms", "1000")
        .create_with_context(FirstContact::default())
        .ok()?;
    let _ = probe.client().fetch_metadata(None, Duration::from_secs(5));
    for _ in 0..10 {
        probe.poll(Duration::from_millis(100));
        if let Some(why) = probe.context().why() {
            return Some(why);
        }
    }
    None
}

/// Keeps the last authentication or TLS failure librdkafka reports.
#[derive(Default)]
struct FirstContact {
    failure: Mutex<Option<String>>,
}

impl FirstContact {
    fn why(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

impl ClientContext for FirstContact {
    fn error(&self, error: KafkaError, reason: &str) {
        let lower = reason.to_ascii_lowercase();
        let security = matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::Authentication)
                | Some(rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed)
                | Some(rdkafka::types::RDKafkaErrorCode::SSL)
        ) || lower.contains("authentication")
            || lower.contains("ssl");
        if security && let Ok(mut f) = self.failure.lock() {
            *f = Some(reason.to_string());
        }
    }
}

impl ProducerContext for FirstContact {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// The bytes a record takes against the record size limit (key, value and
/// headers, and the record's own framing).
pub fn record_size(r: &Outgoing) -> usize {
    const FRAMING: usize = 128;
    r.key.len()
        + r.payload.as_ref().map_or(0, Vec::len)
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
        + FRAMING
}

/// Committed offsets of baton's group for `partitions` (absent: nothing
/// committed yet), read by a client that does not join the group. With
/// read_committed it asks for stable offsets, so an offset held by an open
/// transaction is waited for rather than read stale.
pub fn committed_offsets(
    cfg: &Config,
    partitions: &[(String, i32)],
) -> Result<BTreeMap<(String, i32), i64>, KafkaFailure> {
    let consumer: BaseConsumer = consumer_base(cfg)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(fail("create offsets client"))?;
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(15))
        .map_err(fail(format!("committed offsets of {partitions:?}")))?;
    let mut out = BTreeMap::new();
    for e in got.elements() {
        if let Some(err) = e.error().err() {
            return Err(fail(format!(
                "committed offset of {}/{}",
                e.topic(),
                e.partition()
            ))(err));
        }
        if let Offset::Offset(o) = e.offset() {
            out.insert((e.topic().to_string(), e.partition()), o);
        }
    }
    Ok(out)
}

/// Reads one partition from its start to its end (as of now) with a
/// `read_committed` consumer: every committed record, in order.
pub fn read_partition(
    cfg: &Config,
    topic: &str,
    partition: i32,
) -> Result<Vec<Incoming>, KafkaFailure> {
    let mut out = Vec::new();
    scan_partition(cfg, topic, partition, |r| out.push(r))?;
    Ok(out)
}

/// Like [`read_partition`], handing each record to `each` as it arrives
/// instead of holding them all: a restore keeps only what it needs.
pub fn scan_partition(
    cfg: &Config,
    topic: &str,
    partition: i32,
    each: impl FnMut(Incoming),
) -> Result<u64, KafkaFailure> {
    scan_partition_since(cfg, topic, partition, None, each)
}

/// Like [`scan_partition`], from the first record written at or after
/// `since` (epoch ms; `None`: from the start).
pub fn scan_partition_since(
    cfg: &Config,
    topic: &str,
    partition: i32,
    since: Option<u64>,
    mut each: impl FnMut(Incoming),
) -> Result<u64, KafkaFailure> {
    let mut client = consumer_base(cfg);
    // librdkafka prefetches up to 64 MiB per consumer by default: on a
    // restore that is memory next to the shard being built, for no speed.
    if cfg
        .kafka
        .consumer_option("queued.max.messages.kbytes")
        .is_none()
    {
        client.set("queued.max.messages.kbytes", "16384");
    }
    let consumer: BaseConsumer = client
        .set("group.id", format!("{}-restore", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(fail("create restore consumer"))?;
    let (mut low, high) = watermarks(&consumer, topic, partition)?;
    if let Some(since) = since
        && high > low
    {
        let at = |time: i64| -> Result<Option<i64>, KafkaFailure> {
            let mut ask = TopicPartitionList::new();
            ask.add_partition_offset(topic, partition, Offset::Offset(time))
                .map_err(fail("offsets for times"))?;
            let found = consumer
                .offsets_for_times(ask, Duration::from_secs(30))
                .map_err(fail(format!("offsets for times of {topic}/{partition}")))?;
            Ok(
                match found.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => Some(o),
                    _ => None,
                },
            )
        };
        match at(since as i64)? {
            Some(o) => low = low.max(o),
            // Nothing written since then, unless the broker cannot look
            // offsets up by time at all (librdkafka's mock cluster): then
            // it finds no offset for the beginning of time either, and the
            // partition is read whole.
            None if at(0)?.is_some() => return Ok(0),
            None => {}
        }
    }
    if high <= low {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))
        .map_err(fail("assign"))?;
    consumer
        .assign(&tpl)
        .map_err(fail(format!("assign {topic}/{partition}")))?;
    let mut count = 0u64;
    // Given up when no record arrives for this long.
    let patience = Duration::from_secs(120);
    let mut progress = std::time::Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let done = m.offset() + 1 >= high;
                each(Incoming::from(&m));
                count += 1;
                progress = std::time::Instant::now();
                if done {
                    break;
                }
            }
            Some(Err(e)) => return Err(fail(format!("read {topic}/{partition}"))(e)),
            None => {
                // Nothing more to read: the end may be a transaction marker
                // or aborted records, which a read_committed read skips.
                if let Ok(pos) = consumer.position()
                    && let Some(e) = pos.find_partition(topic, partition)
                    && let Offset::Offset(o) = e.offset()
                    && o >= high
                {
                    break;
                }
                if progress.elapsed() > patience {
                    return Err(KafkaFailure::Topic {
                        topic: format!("{topic}/{partition}"),
                        problem: format!(
                            "reading towards offset {high} made no progress for {} s",
                            patience.as_secs()
                        ),
                    });
                }
            }
        }
    }
    Ok(count)
}

/// Follows one partition from its start, outside any group: what was
/// committed to it so far ([`Follower::catch_up`]), then what arrives
/// ([`Follower::poll`]). The runtime follows the definitions topic with it.
pub struct Follower {
    consumer: BaseConsumer,
    topic: String,
    partition: i32,
}

impl Follower {
    pub fn new(cfg: &Config, topic: &str, partition: i32) -> Result<Follower, KafkaFailure> {
        let consumer: BaseConsumer = consumer_base(cfg)
            .set("group.id", format!("{}-follow", cfg.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(fail("create follower"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(fail("assign"))?;
        consumer
            .assign(&tpl)
            .map_err(fail(format!("assign {topic}/{partition}")))?;
        Ok(Follower {
            consumer,
            topic: topic.to_string(),
            partition,
        })
    }

    /// Every record up to the partition's end as of now.
    pub fn catch_up(&self, patience: Duration) -> Result<Vec<Incoming>, KafkaFailure> {
        let (topic, p) = (self.topic.as_str(), self.partition);
        let (_, high) = watermarks(&self.consumer, topic, p)?;
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + patience;
        loop {
            let at = match self.consumer.position() {
                Ok(pos) => match pos.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                },
                Err(_) => 0,
            };
            if at >= high {
                return Ok(out);
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => out.push(Incoming::from(&m)),
                Some(Err(e)) => return Err(fail(format!("read {topic}/{p}"))(e)),
                None if std::time::Instant::now() > deadline => {
                    return Err(KafkaFailure::Topic {
                        topic: format!("{topic}/{p}"),
                        problem: format!(
                            "reading towards offset {high} made no progress for {} s",
                            patience.as_secs()
                        ),
                    });
                }
                None => {}
            }
        }
    }

    /// What arrived since the last call, without waiting.
    pub fn poll(&self) -> Result<Vec<Incoming>, KafkaFailure> {
        let mut out = Vec::new();
        while let Some(m) = self.consumer.poll(Duration::ZERO) {
            match m {
                Ok(m) => out.push(Incoming::from(&m)),
                Err(e) => return Err(fail(format!("read {}/{}", self.topic, self.partition))(e)),
            }
        }
        Ok(out)
    }
}

/// A plain (non-transactional) producer for `baton send` and simulated services.
pub fn send_plain(cfg: &Config, records: &[Outgoing]) -> Result<(), KafkaFailure> {
    let producer: ThreadedProducer<DefaultProducerContext> = producer_base(cfg)
        .create()
        .map_err(fail("create producer"))?;
    let p = Producer::plain(producer);
    for r in records {
        p.send(r)?;
    }
    p.client()
        .flush(Duration::from_secs(30))
        .map_err(fail("flush"))
}

/// An idempotent, non-transactional producer whose sends complete when the
/// broker has the record (the admin API's operator actions and deploys).
pub struct Publisher {
    inner: rdkafka::producer::FutureProducer,
}

impl Publisher {
    pub fn new(cfg: &Config) -> Result<Publisher, KafkaFailure> {
        let inner = producer_base(cfg)
            .set("enable.idempotence", "true")
            .create()
            .map_err(fail("create the admin producer"))?;
        Ok(Publisher { inner })
    }

    /// Writes `r` and waits until the broker acknowledged it; returns its
    /// partition and offset.
    pub async fn publish(&self, r: &Outgoing) -> Result<(i32, i64), KafkaFailure> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut rec: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
            rdkafka::producer::FutureRecord::to(&r.topic)
                .key(&r.key[..])
                .headers(headers);
        if let Some(p) = &r.payload {
            rec = rec.payload(&p[..]);
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        self.inner
            .send(rec, Duration::from_secs(30))
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| fail(format!("produce to {}", r.topic))(e))
    }
}

/// librdkafka's in-process mock cluster (for `baton demo` only: it does not
/// hide aborted transactions from read_committed consumers).
pub struct MockBroker {
    cluster: rdkafka::mocking::MockCluster<'static, DefaultProducerContext>,
}

impl MockBroker {
    pub fn start() -> Result<MockBroker, KafkaFailure> {
        let cluster = rdkafka::mocking::MockCluster::new(1)
            .map_err(fail("start the in-process mock cluster"))?;
        Ok(MockBroker { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaFailure> {
        self.cluster
            .create_topic(name, partitions, 1)
            .map_err(fail(format!("create mock topic {name}")))
    }
}

/// A plain group consumer (read_committed) for tools and simulated services.
pub struct PlainConsumer {
    inner: BaseConsumer,
}

impl PlainConsumer {
    pub fn new(
        bootstrap: &str,
        group: &str,
        topics: &[String],
    ) -> Result<PlainConsumer, KafkaFailure> {
        let inner: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .map_err(fail("create consumer"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        inner.subscribe(&names).map_err(fail("subscribe"))?;
        Ok(PlainConsumer { inner })
    }

    pub fn poll(&self, timeout: Duration) -> Option<Result<Incoming, KafkaFailure>> {
        self.inner
            .poll(timeout)
            .map(|r| r.map(|m| Incoming::from(&m)).map_err(fail("poll")))
    }
}

/// A plain producer kept open (for load generators and simulated services).
pub struct PlainProducer {
    inner: Producer,
}

impl PlainProducer {
    pub fn new(bootstrap: &str) -> Result<PlainProducer, KafkaFailure> {
        let inner: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "2")
            // Kafka's default (the Java client's): keyed events land on the
            // shard of the instance their key names.
            .set("partitioner", "murmur2_random")
            .create()
            .map_err(fail("create producer"))?;
        Ok(PlainProducer {
            inner: Producer::plain(inner),
        })
    }

    pub fn send(&self, r: &Outgoing) -> Result<(), KafkaFailure> {
        self.inner.send(r)
    }

    pub fn flush(&self) -> Result<(), KafkaFailure> {
        self.inner
            .client()
            .flush(Duration::from_secs(30))
            .map_err(fail("flush"))
    }
}

impl PlainConsumer {
    /// A plain consumer with extra librdkafka options (security settings,
    /// fetch tuning) applied over the defaults of [`PlainConsumer::new`].
    pub fn with_options(
        bootstrap: &str,
        group: &str,
        topics: &[String],
        options: &BTreeMap<String, String>,
    ) -> Result<PlainConsumer, KafkaFailure> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "1000");
        for (k, v) in options {
            c.set(k, v);
        }
        let inner: BaseConsumer = c.create().map_err(fail("create consumer"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        inner.subscribe(&names).map_err(fail("subscribe"))?;
        Ok(PlainConsumer { inner })
    }
}

impl PlainProducer {
    /// A plain producer with extra librdkafka options applied over the
    /// defaults of [`PlainProducer::new`].
    pub fn with_options(
        bootstrap: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<PlainProducer, KafkaFailure> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap)
            .set("linger.ms", "2")
            .set("partitioner", "murmur2_random");
        for (k, v) in options {
            c.set(k, v);
        }
        let inner: ThreadedProducer<DefaultProducerContext> =
            c.create().map_err(fail("create producer"))?;
        Ok(PlainProducer {
            inner: Producer::plain(inner),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    fn with_tables() -> crate::config::Config {
        crate::config::Config::load(
            "baton.toml",
            r#"
[kafka]
bootstrap_servers = "localhost:9092"
input_topics = ["crm.events"]
[kafka.options]
"security.protocol" = "plaintext"
[kafka.consumer_options]
"fetch.wait.max.ms" = "10"
[kafka.producer_options]
"compression.type" = "lz4"
[definitions]
paths = ["examples"]
"#,
            [],
        )
        .expect("valid")
    }

    fn keys(c: &ClientConfig) -> BTreeMap<String, String> {
        c.config_map()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn client_option_tables_reach_only_their_clients() {
        let cfg = with_tables();
        let consumer = keys(&consumer_base(&cfg));
        let producer = keys(&producer_base(&cfg));
        assert_eq!(
            consumer.get("fetch.wait.max.ms").map(String::as_str),
            Some("10")
        );
        assert!(!consumer.contains_key("compression.type"));
        assert_eq!(
            producer.get("compression.type").map(String::as_str),
            Some("lz4")
        );
        assert!(!producer.contains_key("fetch.wait.max.ms"));
        for c in [&consumer, &producer] {
            assert_eq!(
                c.get("security.protocol").map(String::as_str),
                Some("plaintext")
            );
        }
    }

    use super::*;

    #[test]
    fn security_options_are_supported_by_this_build() {
        // librdkafka rejects options its build lacks (e.g. TLS without OpenSSL).
        for (protocol, mechanism) in [
            ("SSL", None),
            ("SASL_SSL", Some("SCRAM-SHA-512")),
            ("SASL_SSL", Some("PLAIN")),
        ] {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", "127.0.0.1:1")
                .set("security.protocol", protocol);
            if let Some(m) = mechanism {
                c.set("sasl.mechanism", m)
                    .set("sasl.username", "u")
                    .set("sasl.password", "p");
            }
            let made: Result<rdkafka::producer::BaseProducer, _> = c.create();
            assert!(made.is_ok(), "{protocol} {mechanism:?}: {:?}", made.err());
        }
    }
}
