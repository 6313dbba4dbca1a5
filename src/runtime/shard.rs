//! A shard's records as the runtime sees them: each record is decoded into
//! its typed input, applied to the pure [`crate::shard::Shard`], and the
//! actions it returns become records, spans and counters. Shards never touch
//! Kafka themselves: they return the records, so the runtime can process
//! several shards in parallel and write their results into one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use serde_json::{Value as Json, json};
use tracing::{debug, info, warn};

use super::stats::bump;
use super::{Stats, now_ms, shard_of};
use crate::config::Topics;
use crate::engine::{self, Event, Millis, Purpose, Registry, Rejection};
use crate::kafka::{Incoming, Outgoing};
use crate::shard::{Action, Applied, Change, RETENTION_TIMER, Shard, ShardError};
use crate::telemetry::{Span, Tracer};
use crate::wire::{self, cloudevents};
use crate::{audit, index};

/// Bytes of a payload a dead letter keeps when the whole would be too large.
pub(super) const TRUNCATED_PAYLOAD: usize = 4096;

/// A shard this process owns: its state, and where it stands on its partition.
pub(super) struct Owned {
    pub state: Shard,
    /// Next offset of the shard's repartition partition.
    pub position: i64,
    /// Its partition.
    pub shard: i32,
    /// Keys whose latest changelog record came from an uncommitted transaction.
    pub repair: Vec<String>,
    /// The restore's entries for the admin index, taken when the shard is installed.
    pub index: Vec<index::Update>,
}

/// An instance's snapshot to write: where the last record that changed it
/// sits (its source topic, `""` for the repartition topic, and offset + 1),
/// or `None` when it is forgotten.
type Pending = Option<(String, u64)>;

/// What a shard's records of one batch produce: the records in order; the
/// snapshots, one per instance however many of its inputs the batch holds;
/// and the audit entries, packed into as few records as the size limit
/// allows. [`Output::flush`] writes the last two.
#[derive(Default)]
pub(super) struct Output {
    pub records: Vec<Outgoing>,
    snapshots: BTreeMap<String, Pending>,
    /// Audit entries in the order of the transitions, each as JSON.
    audit: Vec<Vec<u8>>,
    /// What the admin index learns when the transaction commits.
    pub index: Vec<index::Update>,
    /// What became of the operator requests among the records.
    pub outcomes: Vec<(String, index::Outcome)>,
    /// An input record that would start an instance on a full shard, with
    /// `runtime.at_instance_cap = "pause"`: its partition stops there.
    pub at_cap: bool,
}

impl Output {
    /// Writes the snapshots of the instances changed since the last flush,
    /// and the audit entries since then. The shard keeps each instance as
    /// the snapshot written for it until an input comes for it again.
    pub fn flush(&mut self, shard: &mut Shard, p: i32, ctx: &Ctx<'_>) {
        self.flush_audit(p, ctx);
        for (id, pending) in std::mem::take(&mut self.snapshots) {
            let payload = pending.and_then(|(origin, position)| {
                let inst = shard.instance(&id)?;
                let record = wire::encode_changelog_at(&origin, position, &inst);
                let shared: Arc<[u8]> = Arc::from(&record[..]);
                self.index.push(index::Update::Put(
                    Arc::from(id.as_str()),
                    index::Entry::of(&inst, p, shared.clone()),
                ));
                Some((record, shared))
            });
            let payload = match payload {
                Some((record, shared)) => {
                    shard.freeze(&id, shared);
                    Some(record)
                }
                None => {
                    self.index
                        .push(index::Update::Remove(Arc::from(id.as_str())));
                    None
                }
            };
            self.records.push(ctx.changelog(p, &id, payload));
        }
    }

    /// Packs the audit entries into records of at most the size limit, in
    /// order: the audit partition of a shard reads as its transitions did.
    fn flush_audit(&mut self, p: i32, ctx: &Ctx<'_>) {
        let entries = std::mem::take(&mut self.audit);
        if entries.is_empty() {
            return;
        }
        let head = format!("{{\"v\":{},\"shard\":{p},\"entries\":[", audit::VERSION);
        // Room for the key, the headers and the record's framing.
        let room = ctx.max_record.saturating_sub(head.len() + 256);
        let mut body = head.clone().into_bytes();
        let mut count = 0usize;
        let pack = |body: Vec<u8>, count: usize| {
            let mut body = body;
            body.extend_from_slice(b"]}");
            Outgoing {
                topic: ctx.topics.audit(),
                partition: Some(p),
                key: format!("shard-{p}").into_bytes(),
                payload: Some(body),
                headers: vec![
                    ("content-type".to_string(), b"application/json".to_vec()),
                    (
                        "baton.audit.entries".to_string(),
                        count.to_string().into_bytes(),
                    ),
                ],
            }
        };
        for e in entries {
            if count > 0 && body.len() + 1 + e.len() > room {
                self.records.push(pack(std::mem::take(&mut body), count));
                body = head.clone().into_bytes();
                count = 0;
            }
            if count > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&e);
            count += 1;
        }
        self.records.push(pack(body, count));
    }

    /// The audit entry of an input that changed its instance: the input in
    /// full, so the trail replays (see [`crate::audit::replay`]).
    fn audit_entry(
        &mut self,
        shard: i32,
        input: audit::Input,
        now: Millis,
        applied: &Applied,
        ctx: &Ctx<'_>,
    ) {
        if applied.change == Change::None {
            return;
        }
        let process = applied.id.split_once('/').map_or("", |(p, _)| p);
        let hash = audit::Entry::version_of(applied)
            .and_then(|v| ctx.registry.get(process, v))
            .map_or("", |d| d.hash.as_str());
        self.audit
            .push(audit::Entry::new(shard, input, now, applied, hash).encode());
    }

    fn change(&mut self, id: String, change: Change, source: &Incoming, ctx: &Ctx<'_>) {
        let pending = match change {
            Change::None => return,
            Change::Forgotten => None,
            Change::Saved => {
                // The position guard: where the record that causes this change sits.
                let origin = if source.topic == ctx.repartition {
                    ""
                } else {
                    source.topic.as_str()
                };
                Some((origin.to_string(), (source.offset + 1).max(0) as u64))
            }
        };
        self.snapshots.insert(id, pending);
    }
}

/// What shard processing reads, shared by all shards.
pub(super) struct Ctx<'a> {
    pub registry: &'a Registry,
    pub topics: &'a Topics,
    pub partitions: i32,
    pub stats: &'a Stats,
    pub tracer: &'a Tracer,
    /// The repartition topic's name (records of other topics were processed in place).
    pub repartition: &'a str,
    /// Log event payloads (debug level); off unless configured.
    pub log_payloads: bool,
    /// The largest record this runtime may produce.
    pub max_record: usize,
    /// Faults a test injects.
    pub faults: Option<&'a super::Armed>,
    /// An input record processed in place that would start an instance on a
    /// full shard stops its partition (`runtime.at_instance_cap = "pause"`)
    /// instead of becoming a dead letter.
    pub pause_at_cap: bool,
}

impl Ctx<'_> {
    /// A record that re-keys `body` onto the shard of `<process>/<key>`;
    /// `headers` carry the trace context.
    pub fn forward(&self, record: &ShardInput, headers: Vec<(String, Vec<u8>)>) -> Outgoing {
        let id = format!("{}/{}", record.process, record.key);
        Outgoing {
            topic: self.topics.repartition(),
            partition: Some(shard_of(&id, self.partitions)),
            key: id.into_bytes(),
            payload: Some(wire::encode_shard(record)),
            headers,
        }
    }

    /// The dead-letter record of an input record, with the reason in headers.
    pub fn dead_letter(&self, m: &Incoming, kind: &str, reason: &str) -> Outgoing {
        warn!(topic = %m.topic, partition = m.partition, offset = m.offset, reason, "dead letter");
        self.stats.dead_letter(kind);
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
        let mut r = Outgoing {
            topic: self.topics.dead_letters(),
            partition: None,
            key: m.key.clone().unwrap_or_default(),
            payload: m.payload.clone(),
            headers,
        };
        if crate::kafka::record_size(&r) > self.max_record
            && let Some(p) = r.payload.as_mut()
        {
            // Too large to dead-letter whole: its head, and where the whole
            // record stays (topic, partition, offset above).
            r.headers.push((
                "baton.dlq.truncated".to_string(),
                p.len().to_string().into_bytes(),
            ));
            p.truncate(TRUNCATED_PAYLOAD);
        }
        r
    }

    fn changelog(&self, p: i32, id: &str, payload: Option<Vec<u8>>) -> Outgoing {
        Outgoing {
            topic: self.topics.changelog(),
            partition: Some(p),
            key: id.as_bytes().to_vec(),
            payload,
            headers: Vec::new(),
        }
    }
}

/// The records that write the shard's due timers to its partition; they fire
/// when read back, so every state change has a position.
pub(super) fn due_timers(
    shard: &mut Owned,
    p: i32,
    now: Millis,
    ctx: &Ctx<'_>,
    out: &mut Vec<Outgoing>,
) {
    for record in shard.state.due(now) {
        let mut r = ctx.forward(&record, Vec::new());
        r.partition = Some(p);
        out.push(r);
    }
}

pub(super) use crate::wire::{ShardInputKind as Kind, ShardRecord as ShardInput};

/// Decodes a record of the repartition topic; the reason when it is not
/// baton's.
pub(super) fn decode(m: &Incoming) -> Result<ShardInput, String> {
    match m.payload.as_deref() {
        Some(bytes) => wire::decode_shard(bytes).map_err(|e| e.to_string()),
        None => Err("repartition record without a value".into()),
    }
}

/// Processes one record of the shard's partition: `input` is the record's
/// input when the caller decoded it already (in place), else it is decoded
/// from the record.
pub(super) fn handle(
    shard: &mut Owned,
    m: &Incoming,
    input: Option<ShardInput>,
    ctx: &Ctx<'_>,
    out: &mut Output,
) {
    if m.topic == ctx.repartition {
        shard.position = m.offset + 1;
    }
    let record = match input {
        Some(i) => i,
        None => match decode(m) {
            Ok(i) => i,
            Err(reason) => return out.records.push(ctx.dead_letter(m, "undecodable", &reason)),
        },
    };
    // Only a recording tracer needs the instance's trace.
    let instance_trace = if ctx.tracer.enabled() {
        shard
            .state
            .trace(&format!("{}/{}", record.process, record.key))
    } else {
        None
    };
    let mut span = ctx.tracer.shard(m, instance_trace);
    span.set("baton.process", record.process.clone());
    span.set("baton.instance.key", record.key.clone());
    span.set("baton.input", record.name().to_string());
    match &record.input {
        Kind::Timer { timer, .. } => {
            if timer.contains("/timeout/") {
                bump(&ctx.stats.timeouts);
            }
            if timer != RETENTION_TIMER {
                span.set("baton.timer", timer.clone());
            }
        }
        Kind::Event { event: e, .. } => {
            if let Some(f) = ctx.faults {
                f.on_event(&e.id);
            }
            span.set("messaging.message.id", e.id.clone());
            span.set("cloudevents.event_id", e.id.clone());
            span.set("cloudevents.event_type", e.kind.clone());
            if ctx.log_payloads {
                debug!(instance = %format!("{}/{}", record.process, record.key), event_id = %e.id, kind = %e.kind, data = %e.data, "event delivered");
            }
        }
        Kind::Call { .. } | Kind::Operator(_) => {}
    }
    let now = m.timestamp.unwrap_or_else(now_ms);
    let trace = span.traceparent();
    let input = audit::Input::of(&record);
    let request = match &record.input {
        Kind::Operator(o) => Some(o.request.clone()),
        _ => None,
    };
    let result = shard.state.apply(ctx.registry, record, now, trace);
    if let Some(request) = request {
        let outcome = match &result {
            Ok(a) if a.change == Change::None => index::Outcome::Repeated,
            Ok(_) => index::Outcome::Applied,
            Err(e) => index::Outcome::Refused(e.to_string()),
        };
        out.outcomes.push((request, outcome));
    }
    match result {
        Ok(applied) => {
            out.audit_entry(shard.shard, input, now, &applied, ctx);
            carry_out(applied, span, m, ctx, out)
        }
        Err(ShardError::AtCapacity { .. }) if ctx.pause_at_cap && m.topic != ctx.repartition => {
            // The runtime aborts the batch and stops the partition here.
            out.at_cap = true;
        }
        Err(e) => {
            let kind = match e {
                ShardError::Undeployed { .. } => "no-definition",
                ShardError::State { .. } => "undecodable-state",
                ShardError::Refused { .. } => "operator-refused",
                ShardError::NoInstance { .. } => "unknown-instance",
                ShardError::AtCapacity { .. } => "instance-cap",
            };
            let reason = e.to_string();
            span.error(&reason);
            out.records.push(ctx.dead_letter(m, kind, &reason));
        }
    }
}

/// A record of the shard's partition that is not processed: it becomes a
/// dead letter, and the instance it is for, where that exists, gets an
/// incident naming it.
pub(super) fn refuse(
    shard: &mut Owned,
    m: &Incoming,
    input: Option<ShardInput>,
    kind: &str,
    reason: &str,
    ctx: &Ctx<'_>,
    out: &mut Output,
) {
    if m.topic == ctx.repartition {
        shard.position = m.offset + 1;
    }
    out.records.push(ctx.dead_letter(m, kind, reason));
    let Some(record) = input.or_else(|| decode(m).ok()) else {
        return;
    };
    let now = m.timestamp.unwrap_or_else(now_ms);
    let input = audit::Input::refused(&record, reason);
    if let Ok(Some(applied)) = shard.state.refuse(ctx.registry, record, reason, now) {
        if let Some(input) = input {
            out.audit_entry(shard.shard, input, now, &applied, ctx);
        }
        let span = ctx.tracer.shard(m, None);
        carry_out(applied, span, m, ctx, out);
    }
}

/// What kind of command a command is, for metrics and spans.
fn command_kind(c: &engine::Command) -> &'static str {
    match c.purpose {
        Purpose::Compensation => "compensation",
        Purpose::Escalation => "escalation",
        Purpose::Task | Purpose::Manual if c.attempt > 1 => "retry",
        Purpose::Task | Purpose::Manual => "task",
    }
}

/// Maps what the shard did for one input to records, spans and counters.
fn carry_out(applied: Applied, mut span: Span, source: &Incoming, ctx: &Ctx<'_>, out: &mut Output) {
    let Applied {
        id,
        at: now,
        version,
        status,
        started,
        transitions,
        change,
        actions,
    } = applied;
    let (process, key) = id.split_once('/').unwrap_or((id.as_str(), ""));
    if let Some(v) = version {
        span.set("baton.process.version", i64::from(v));
    }
    if started {
        ctx.stats.started(process);
    }
    if transitions > 0 {
        ctx.stats.transitions(process, transitions);
    }
    if let Some(s) = status {
        span.set("baton.instance.status", s.as_str());
    }
    let version = i64::from(version.unwrap_or_default());
    let mut compensating = false;
    // Actions after an `Entered` belong to that step: its span is their parent.
    let mut step_span: Option<Span> = None;
    for action in actions {
        match action {
            Action::Entered(name) => {
                step_span = Some(span.child(
                    || format!("step {name}"),
                    SpanKind::Internal,
                    || {
                        vec![
                            KeyValue::new("baton.process", process.to_string()),
                            KeyValue::new("baton.process.version", version),
                            KeyValue::new("baton.instance.key", key.to_string()),
                            KeyValue::new("baton.step", name.clone()),
                        ]
                    },
                ));
            }
            Action::Command(c) => {
                ctx.stats.command(process, c.purpose, c.attempt);
                compensating |= c.purpose == Purpose::Compensation;
                let kind = command_kind(&c);
                let send = step_span.as_ref().unwrap_or(&span).child(
                    || format!("send {}", c.topic),
                    SpanKind::Producer,
                    || {
                        vec![
                            KeyValue::new("messaging.system", "kafka"),
                            KeyValue::new("messaging.operation.type", "send"),
                            KeyValue::new("messaging.operation.name", "send"),
                            KeyValue::new("messaging.destination.name", c.topic.clone()),
                            KeyValue::new("messaging.message.id", c.id.clone()),
                            KeyValue::new("cloudevents.event_id", c.id.clone()),
                            KeyValue::new("cloudevents.event_type", c.kind.clone()),
                            KeyValue::new("baton.process", process.to_string()),
                            KeyValue::new("baton.instance.key", key.to_string()),
                            KeyValue::new("baton.command.kind", kind),
                        ]
                    },
                );
                let (headers, payload) =
                    cloudevents::encode_command(&c, process, now, send.headers());
                out.records.push(Outgoing {
                    topic: c.topic.clone(),
                    partition: None,
                    key: c.key.clone().into_bytes(),
                    payload: Some(payload),
                    headers,
                });
            }
            Action::Scheduled(_) | Action::Variables(_) => {}
            Action::Audit(a) => {
                if !a.before.is_empty() {
                    // The step(s) the input found the instance at.
                    span.set("baton.step", a.before.join(","));
                }
            }
            Action::Incident {
                id: n,
                step,
                reason,
            } => {
                ctx.stats.incident(process);
                span.error(&format!("incident {n} at step {step}: {reason}"));
                span.event(
                    "incident raised",
                    vec![
                        KeyValue::new("baton.step", step.clone()),
                        KeyValue::new("baton.incident.reason", reason.clone()),
                    ],
                );
                warn!(instance = %id, incident = n, step, reason, "incident raised");
            }
            Action::Resolved {
                id: n, resolution, ..
            } => {
                info!(instance = %id, incident = n, resolution, "incident resolved");
            }
            Action::Forward(record) => {
                // A call belongs to its step; a child's end to the input.
                let parent = match record.input {
                    Kind::Call { .. } => step_span.as_ref().unwrap_or(&span),
                    _ => &span,
                };
                let headers = parent.headers();
                out.records.push(ctx.forward(&record, headers));
            }
            Action::Ended(status) => {
                ctx.stats.ended(process, status);
                span.event(
                    "instance ended",
                    vec![KeyValue::new("baton.instance.status", status.as_str())],
                );
            }
            Action::Rejected { event, reason } => {
                if reason == Rejection::Duplicate {
                    // Not applied again; its copy goes to the dead letters
                    // with the reason, like every input baton does not use.
                    ctx.stats.metrics.duplicates.inc();
                }
                span.event(
                    "event rejected",
                    vec![
                        KeyValue::new("cloudevents.event_id", event.id.clone()),
                        KeyValue::new("baton.reason", reason.to_string()),
                    ],
                );
                out.records
                    .push(rejected(&id, &event, &reason, source, ctx));
            }
        }
    }
    drop(step_span);
    if compensating {
        ctx.stats.compensated(process);
    }
    out.change(id, change, source, ctx);
}

/// The dead-letter record of an event an instance did not use.
fn rejected(
    id: &str,
    event: &Event,
    reason: &Rejection,
    source: &Incoming,
    ctx: &Ctx<'_>,
) -> Outgoing {
    ctx.stats.dead_letter("rejected");
    info!(instance = %id, event_id = %event.id, %reason, "event rejected");
    // Where the event first entered baton: the record itself when it was
    // processed in place, else what the repartition record says.
    let origin = if source.topic == ctx.repartition {
        decode(source).ok().and_then(|r| match r.input {
            Kind::Event { event: e, origin } if e.id == event.id => origin,
            _ => None,
        })
    } else {
        Some(wire::Origin {
            topic: source.topic.clone(),
            partition: source.partition,
            offset: source.offset,
        })
    };
    let origin = origin.map_or(
        Json::Null,
        |o| json!({ "topic": o.topic, "partition": o.partition, "offset": o.offset }),
    );
    let mut headers = vec![
        (
            "content-type".to_string(),
            b"application/cloudevents+json".to_vec(),
        ),
        ("baton.dlq.kind".to_string(), b"rejected".to_vec()),
        (
            "baton.dlq.reason".to_string(),
            format!("instance {id}: event {}: {reason}", event.id).into_bytes(),
        ),
        ("baton.dlq.instance".to_string(), id.as_bytes().to_vec()),
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
            Json::String(v) => headers.push((header.to_string(), v.clone().into_bytes())),
            Json::Number(v) => headers.push((header.to_string(), v.to_string().into_bytes())),
            _ => {}
        }
    }
    Outgoing {
        topic: ctx.topics.dead_letters(),
        partition: None,
        key: id.as_bytes().to_vec(),
        payload: Some(cloudevents::structured(
            &event.id,
            &event.kind,
            &event.source,
            event.time,
            &event.data,
        )),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Stats;

    use crate::shard::tests::registry;

    /// What a [`Ctx`] borrows, for tests.
    struct Fixture {
        registry: Registry,
        topics: Topics,
        stats: Stats,
        tracer: Tracer,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                registry: registry(),
                topics: Topics::default(),
                stats: Stats::default(),
                tracer: Tracer::disabled(),
            }
        }

        fn ctx(&self, partitions: i32, max_record: usize) -> Ctx<'_> {
            Ctx {
                registry: &self.registry,
                topics: &self.topics,
                partitions,
                stats: &self.stats,
                tracer: &self.tracer,
                repartition: "baton.repartition",
                log_payloads: false,
                max_record,
                faults: None,
                pause_at_cap: false,
            }
        }
    }

    fn shard() -> Owned {
        Owned {
            state: Shard::new(Some(3_600_000)),
            position: 0,
            shard: 0,
            repair: Vec::new(),
            index: Vec::new(),
        }
    }

    /// An event without a time of its own used to take the wall clock's:
    /// processing the same partition again gave other timestamps and other
    /// timer due times.
    #[test]
    fn time_comes_from_the_record_not_the_clock() {
        let fixture = Fixture::new();
        let topics = &fixture.topics;
        let ctx = fixture.ctx(2, usize::MAX);
        let event = Event {
            id: "placed-1".into(),
            kind: "com.acme.order.placed".into(),
            source: "test".into(),
            time: 0,
            data: json!({"orderId": "o-1", "customerId": "c-1", "total": 5, "lines": [], "address": "x"}),
        };
        let body = ShardInput {
            process: "order-to-cash".into(),
            key: "o-1".into(),
            input: Kind::Event {
                event,
                origin: None,
            },
        };
        let written: Millis = 1_700_000_000_000;
        let record = Incoming {
            topic: "baton.repartition".into(),
            partition: 0,
            offset: 7,
            timestamp: Some(written),
            key: Some(b"order-to-cash/o-1".to_vec()),
            headers: Vec::new(),
            payload: Some(wire::encode_shard(&body)),
        };
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut s = shard();
            let mut out = Output::default();
            handle(&mut s, &record, None, &ctx, &mut out);
            out.flush(&mut s.state, 0, &ctx);
            let inst = s
                .state
                .instance("order-to-cash/o-1")
                .expect("started")
                .into_owned();
            assert_eq!(inst.updated_at, written);
            std::thread::sleep(std::time::Duration::from_millis(5));
            let records: Vec<_> = out
                .records
                .into_iter()
                .map(|r| (r.topic, r.key, r.payload))
                .collect();
            runs.push((inst, s.state.timers().clone(), records));
        }
        assert_eq!(runs[0], runs[1], "the same record gave another state");
        assert!(
            runs[0]
                .1
                .iter()
                .all(|(due, _, _)| *due > written && *due < written + 86_400_000)
        );
        assert!(
            runs[0]
                .2
                .iter()
                .any(|(topic, _, _)| *topic == topics.changelog()),
            "no snapshot written"
        );
    }

    /// Before, every input wrote its instance's snapshot: an instance with
    /// three inputs in one batch wrote three. Now it writes one, of its
    /// state after the last, guarded by that input's position.
    #[test]
    fn a_batch_writes_one_snapshot_per_instance() {
        let fixture = Fixture::new();
        let topics = &fixture.topics;
        let ctx = fixture.ctx(1, usize::MAX);
        let event = |n: i64, kind: &str, data: Json| {
            let body = ShardInput {
                process: "order-to-cash".into(),
                key: "o-1".into(),
                input: Kind::Event {
                    event: Event {
                        id: format!("e-{n}"),
                        kind: kind.into(),
                        source: "test".into(),
                        time: 1_700_000_000_000 + n as u64,
                        data,
                    },
                    origin: None,
                },
            };
            Incoming {
                topic: "baton.repartition".into(),
                partition: 0,
                offset: n,
                timestamp: Some(1_700_000_000_000),
                key: Some(b"order-to-cash/o-1".to_vec()),
                headers: Vec::new(),
                payload: Some(wire::encode_shard(&body)),
            }
        };
        let records = [
            event(
                10,
                "com.acme.order.placed",
                json!({"orderId": "o-1", "customerId": "c-1", "total": 5, "lines": [], "address": "x"}),
            ),
            event(
                11,
                "com.acme.inventory.reserved",
                json!({"orderId": "o-1", "reservationId": "r-1"}),
            ),
        ];
        for every_record in [false, true] {
            let mut s = shard();
            let mut out = Output::default();
            for m in &records {
                handle(&mut s, m, None, &ctx, &mut out);
                if every_record {
                    out.flush(&mut s.state, 0, &ctx);
                }
            }
            out.flush(&mut s.state, 0, &ctx);
            let snapshots: Vec<_> = out
                .records
                .iter()
                .filter(|r| r.topic == topics.changelog())
                .collect();
            assert_eq!(snapshots.len(), if every_record { 2 } else { 1 });
            let last = snapshots
                .last()
                .and_then(|r| r.payload.as_deref())
                .expect("a snapshot");
            let (origin, position, inst) = wire::decode_changelog_at(last).expect("decodes");
            assert_eq!((origin.as_str(), position), ("", 12));
            assert_eq!(
                Some(&inst),
                s.state.instance("order-to-cash/o-1").as_deref()
            );
            assert!(inst.transitions >= 2, "both inputs applied");
            // The audit: packed per flush, every entry there and in order.
            let audits: Vec<Json> = out
                .records
                .iter()
                .filter(|r| r.topic == topics.audit())
                .map(|r| {
                    serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("JSON")
                })
                .collect();
            assert_eq!(audits.len(), if every_record { 2 } else { 1 });
            let entries: Vec<&Json> = audits
                .iter()
                .flat_map(|a| {
                    assert_eq!(a["v"], json!(audit::VERSION));
                    assert_eq!(a["shard"], json!(0));
                    a["entries"].as_array().expect("entries")
                })
                .collect();
            assert_eq!(entries.len(), 2, "{entries:?}");
            assert_eq!(entries[0]["input"]["id"], json!("e-10"), "{entries:?}");
            assert_eq!(entries[1]["input"]["id"], json!("e-11"), "{entries:?}");
        }
    }

    /// Audit entries that do not fit one record under the size limit are
    /// split over several, in order; none is lost.
    #[test]
    fn audit_entries_are_split_at_the_size_limit() {
        let fixture = Fixture::new();
        let ctx = fixture.ctx(1, 1_000);
        let mut out = Output::default();
        for n in 0..25 {
            out.audit
                .push(format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(60)).into_bytes());
        }
        out.flush(&mut Shard::new(None), 3, &ctx);
        assert!(
            out.records.len() > 2,
            "split into {} records",
            out.records.len()
        );
        let mut seen = Vec::new();
        for r in &out.records {
            assert!(crate::kafka::record_size(r) <= 1_000);
            assert_eq!(r.partition, Some(3));
            let v: Json =
                serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("JSON");
            let entries = v["entries"].as_array().expect("entries");
            let header = r
                .headers
                .iter()
                .find(|(k, _)| k == "baton.audit.entries")
                .map(|(_, v)| v.clone());
            assert_eq!(header, Some(entries.len().to_string().into_bytes()));
            seen.extend(entries.iter().filter_map(|e| e["n"].as_u64()));
        }
        assert_eq!(seen, (0..25).collect::<Vec<u64>>());
    }
}
