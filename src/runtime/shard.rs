//! One shard: the instances of one repartition partition, their timers, and
//! how a record on the shard's partition becomes engine steps and records to
//! write. Shards never touch Kafka themselves: they return the records, so
//! the runtime can process several shards in parallel and write their
//! results into one transaction.

use std::collections::{BTreeSet, HashMap};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use serde_json::{Value as Json, json};
use tracing::{debug, info, warn};

use super::stats::bump;
use super::{Stats, now_ms, shard_of};
use crate::config::Topics;
use crate::engine::{self, Effect, Event, Input, Instance, Millis, Purpose, Registry, Rejection};
use crate::kafka::{Incoming, Outgoing};
use crate::telemetry::{Span, Tracer};
use crate::wire::{self, cloudevents};

/// Bytes of a payload a dead letter keeps when the whole would be too large.
pub(super) const TRUNCATED_PAYLOAD: usize = 4096;

/// Timer id of the expiry of an ended instance's retention.
pub(super) const RETENTION_TIMER: &str = "__retention__";

/// The state a baton process holds for one shard it owns.
pub(super) struct Shard {
    pub instances: HashMap<String, Instance>,
    pub timers: BTreeSet<(Millis, String, String)>,
    /// Next offset of the shard's repartition partition.
    pub position: i64,
    /// Timers already written as timer records (not fired twice while in flight).
    pub in_flight: BTreeSet<(Millis, String, String)>,
    /// Keys whose latest changelog record came from an uncommitted transaction.
    pub repair: Vec<String>,
}

impl Shard {
    pub fn add_timers(&mut self, id: &str, inst: &Instance, retention: Millis) {
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

/// What shard processing reads, shared by all shards.
pub(super) struct Ctx<'a> {
    pub registry: &'a Registry,
    pub topics: &'a Topics,
    pub retention: Millis,
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
    shard: &mut Shard,
    p: i32,
    now: Millis,
    ctx: &Ctx<'_>,
    out: &mut Vec<Outgoing>,
) {
    while let Some(timer) = shard.timers.first().filter(|t| t.0 <= now).cloned() {
        shard.timers.remove(&timer);
        if !shard.in_flight.insert(timer.clone()) {
            continue;
        }
        let (at, id, timer_id) = timer;
        let Some((process, key)) = id.split_once('/') else {
            continue;
        };
        let record = ShardInput {
            process: process.to_string(),
            key: key.to_string(),
            input: Kind::Timer {
                timer: timer_id,
                due: at,
            },
        };
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
    shard: &mut Shard,
    p: i32,
    m: &Incoming,
    input: Option<ShardInput>,
    ctx: &Ctx<'_>,
    out: &mut Vec<Outgoing>,
) {
    if m.topic == ctx.repartition {
        shard.position = m.offset + 1;
    }
    let decoded = match input {
        Some(i) => i,
        None => match decode(m) {
            Ok(i) => i,
            Err(reason) => return out.push(ctx.dead_letter(m, "undecodable", &reason)),
        },
    };
    let name = decoded.name();
    let ShardInput {
        process,
        key,
        input: kind,
    } = decoded;
    // Only a recording tracer needs the instance's trace.
    let instance_trace = if ctx.tracer.enabled() {
        shard
            .instances
            .get(&format!("{process}/{key}"))
            .and_then(|i| i.trace.as_deref())
    } else {
        None
    };
    let mut span = ctx.tracer.shard(m, instance_trace);
    span.set("baton.process", process.clone());
    span.set("baton.instance.key", key.clone());
    span.set("baton.input", name.to_string());
    let input = match kind {
        Kind::Event { event, .. } => Input::Event(event),
        Kind::Call { parent, vars } => Input::Call { parent, vars },
        Kind::Timer { timer, due } => {
            let id = format!("{process}/{key}");
            shard.in_flight.remove(&(due, id.clone(), timer.clone()));
            if timer.contains("/timeout/") {
                bump(&ctx.stats.timeouts);
            }
            if timer == RETENTION_TIMER {
                // The ended instance's retention passed: forget it, tombstone its key.
                shard.instances.remove(&id);
                return out.push(ctx.changelog(p, &id, None));
            }
            span.set("baton.timer", timer.clone());
            return step(
                shard,
                p,
                &process,
                &key,
                &Input::Timer(timer),
                Some(due),
                span,
                m,
                ctx,
                out,
            );
        }
    };
    if let Input::Event(e) = &input {
        if let Some(f) = ctx.faults {
            f.on_event(&e.id);
        }
        span.set("messaging.message.id", e.id.clone());
        span.set("cloudevents.event_id", e.id.clone());
        span.set("cloudevents.event_type", e.kind.clone());
        if ctx.log_payloads {
            debug!(instance = %format!("{process}/{key}"), event_id = %e.id, kind = %e.kind, data = %e.data, "event delivered");
        }
    }
    step(shard, p, &process, &key, &input, None, span, m, ctx, out);
}

/// A record of the shard's partition that is not processed: it becomes a
/// dead letter, and the instance it is for, where that exists, gets an
/// incident naming it.
#[allow(clippy::too_many_arguments)]
pub(super) fn refuse(
    shard: &mut Shard,
    p: i32,
    m: &Incoming,
    input: Option<ShardInput>,
    kind: &str,
    reason: &str,
    ctx: &Ctx<'_>,
    out: &mut Vec<Outgoing>,
) {
    if m.topic == ctx.repartition {
        shard.position = m.offset + 1;
    }
    out.push(ctx.dead_letter(m, kind, reason));
    let Some(ShardInput {
        process,
        key,
        input: Kind::Event { event, .. },
    }) = input.or_else(|| decode(m).ok())
    else {
        return;
    };
    if shard.instances.contains_key(&format!("{process}/{key}")) {
        let input = Input::Refused {
            event,
            reason: reason.to_string(),
        };
        let span = ctx.tracer.shard(m, None);
        step(shard, p, &process, &key, &input, None, span, m, ctx, out);
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

/// Runs one engine step for an instance and turns its effects into records.
#[allow(clippy::too_many_arguments)]
fn step(
    shard: &mut Shard,
    p: i32,
    process: &str,
    key: &str,
    input: &Input,
    at: Option<Millis>,
    mut span: Span,
    source: &Incoming,
    ctx: &Ctx<'_>,
    out: &mut Vec<Outgoing>,
) {
    let id = format!("{process}/{key}");
    // The position guard: where the record that causes this change sits.
    let position = (source.offset + 1).max(0) as u64;
    let origin = if source.topic == ctx.repartition {
        ""
    } else {
        source.topic.as_str()
    };
    let existing_version = shard.instances.get(&id).map(|i| i.version);
    let def = match existing_version {
        Some(v) => ctx.registry.get(process, v),
        None => ctx.registry.latest(process),
    }
    .cloned();
    let Some(def) = def else {
        let reason =
            format!("process {process} (version {existing_version:?}) is not deployed here");
        span.error(&reason);
        return out.push(ctx.dead_letter(source, "no-definition", &reason));
    };
    span.set("baton.process.version", i64::from(def.version));
    // Time comes from the input, never from the clock: the event's own time,
    // else the time its record was written (a timer's: its due time), so
    // processing a partition again gives the same result.
    let now = match (at, input) {
        (Some(t), _) => t,
        (None, Input::Event(e)) if e.time > 0 => e.time,
        _ => source.timestamp.unwrap_or_else(now_ms),
    };
    let inst = shard.instances.entry(id.clone()).or_insert_with(|| {
        let mut i = Instance::new(&def.process, def.version, key);
        i.definition = def.hash.clone();
        i
    });
    let was_pending = inst.status == engine::Status::Pending;
    let transitions = inst.transitions;
    let effects = engine::apply(&def, inst, input, now);
    if was_pending && inst.status == engine::Status::Active {
        ctx.stats.started(process);
    }
    ctx.stats
        .transitions(process, inst.transitions.saturating_sub(transitions));
    if inst.trace.is_none() {
        // The instance's trace: inputs without a trace context join it later.
        inst.trace = span.traceparent();
    }
    span.set("baton.instance.status", inst.status.as_str());
    let snapshot = wire::encode_changelog_at(origin, position, inst);
    let vars = inst.vars.clone();
    let version = i64::from(def.version);
    let mut discard = false;
    let mut compensating = false;
    // Effects after an `Entered` belong to that step: its span is their parent.
    let mut step_span: Option<Span> = None;
    for fx in effects {
        match fx {
            Effect::Entered(idx) => {
                let name = def.steps.get(idx).map_or("?", |s| s.id.as_str());
                step_span = Some(span.child(
                    || format!("step {name}"),
                    SpanKind::Internal,
                    || {
                        vec![
                            KeyValue::new("baton.process", process.to_string()),
                            KeyValue::new("baton.process.version", version),
                            KeyValue::new("baton.instance.key", key.to_string()),
                            KeyValue::new("baton.step", name.to_string()),
                        ]
                    },
                ));
            }
            Effect::Command(c) => {
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
                out.push(Outgoing {
                    topic: c.topic.clone(),
                    partition: None,
                    key: c.key.clone().into_bytes(),
                    payload: Some(payload),
                    headers,
                });
            }
            Effect::ScheduleTimer(t) => {
                shard.timers.insert((t.due, id.clone(), t.id));
            }
            Effect::CancelTimer(t) => {
                // O(log n): the index is ordered by due time first.
                shard.timers.remove(&(t.due, id.clone(), t.id));
            }
            Effect::Audit(a) => {
                if !a.before.is_empty() {
                    // The step(s) the input found the instance at.
                    span.set("baton.step", a.before.join(","));
                }
                let body = json!({
                    "at": engine::format_rfc3339(a.at), "process": a.process, "version": a.version,
                    "key": a.key, "cause": format!("{:?}", a.cause), "before": a.before,
                    "after": a.after, "status": a.status.as_str(),
                });
                out.push(Outgoing {
                    topic: ctx.topics.audit(),
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
                let record = ShardInput {
                    process: child,
                    key: ckey,
                    input: Kind::Call { parent, vars },
                };
                let trace = step_span.as_ref().unwrap_or(&span).headers();
                out.push(ctx.forward(&record, trace));
            }
            Effect::Ended { status, parent } => {
                ctx.stats.ended(process, status);
                span.event(
                    "instance ended",
                    vec![KeyValue::new("baton.instance.status", status.as_str())],
                );
                let due = now.saturating_add(ctx.retention);
                shard
                    .timers
                    .insert((due, id.clone(), RETENTION_TIMER.to_string()));
                if let Some(parent) = parent {
                    let record = ShardInput {
                        input: Kind::Event {
                            event: Event::child_ended(process, key, status, &vars, now),
                            origin: None,
                        },
                        process: parent.process,
                        key: parent.key,
                    };
                    out.push(ctx.forward(&record, span.headers()));
                }
            }
            Effect::Discard => discard = true,
            Effect::Rejected { event, reason } => {
                if reason == Rejection::Duplicate {
                    ctx.stats.metrics.duplicates.inc();
                    debug!(instance = %id, event_id = %event.id, "duplicate event ignored");
                    continue;
                }
                span.event(
                    "event rejected",
                    vec![
                        KeyValue::new("cloudevents.event_id", event.id.clone()),
                        KeyValue::new("baton.reason", reason.to_string()),
                    ],
                );
                out.push(rejected(&id, &event, &reason, source, ctx));
            }
        }
    }
    drop(step_span);
    if compensating {
        ctx.stats.compensated(process);
    }
    if discard {
        shard.instances.remove(&id);
    }
    out.push(ctx.changelog(p, &id, if discard { None } else { Some(snapshot) }));
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

    fn registry() -> Registry {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/order-to-cash.yaml");
        let text = std::fs::read_to_string(path).expect("example");
        let mut reg = Registry::default();
        reg.deploy(
            crate::dsl::parse("order-to-cash.yaml", &text).expect("valid"),
            &text,
        )
        .expect("deploy");
        reg
    }

    fn shard() -> Shard {
        Shard {
            instances: HashMap::new(),
            timers: BTreeSet::new(),
            position: 0,
            in_flight: BTreeSet::new(),
            repair: Vec::new(),
        }
    }

    /// An event without a time of its own used to take the wall clock's:
    /// processing the same partition again gave other timestamps and other
    /// timer due times.
    #[test]
    fn time_comes_from_the_record_not_the_clock() {
        let registry = registry();
        let topics = Topics::default();
        let stats = Stats::default();
        let tracer = Tracer::disabled();
        let ctx = Ctx {
            registry: &registry,
            topics: &topics,
            retention: 3_600_000,
            partitions: 2,
            stats: &stats,
            tracer: &tracer,
            repartition: "baton.repartition",
            log_payloads: false,
            max_record: usize::MAX,
            faults: None,
        };
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
            let mut out = Vec::new();
            handle(&mut s, 0, &record, None, &ctx, &mut out);
            let inst = s
                .instances
                .get("order-to-cash/o-1")
                .expect("started")
                .clone();
            assert_eq!(inst.updated_at, written);
            std::thread::sleep(std::time::Duration::from_millis(5));
            runs.push((inst, s.timers));
        }
        assert_eq!(runs[0], runs[1], "the same record gave another state");
        assert!(
            runs[0]
                .1
                .iter()
                .all(|(due, _, _)| *due > written && *due < written + 86_400_000)
        );
    }
}
