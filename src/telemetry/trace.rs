//! Spans of what baton does with each record, and W3C trace context in Kafka
//! headers, so one trace runs from the system that published an event,
//! through baton, into the system that receives the command.
//!
//! Spans follow the OpenTelemetry messaging conventions (`messaging.*`) plus
//! `baton.*` attributes. A domain event gets a consumer span (child of its
//! `traceparent`, if any); the record that carries it to its shard gets a
//! consumer span for the instance, with a span per step entered and a producer
//! span per command, whose context goes out as the command's `traceparent`.
//! An instance remembers the trace it started in: inputs without a trace
//! context of their own (timers, events from systems that do not propagate
//! one) join that trace, and inputs from another trace link to it.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use crate::kafka::Incoming;

/// Header saying whether a repartition record's event arrived with a trace
/// context (`incoming`) or baton started one for it (`none`).
pub const ORIGIN_HEADER: &str = "baton.trace.origin";

/// Makes spans, or nothing when tracing is off.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Option<SdkTracer>,
    group: String,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("enabled", &self.enabled())
            .field("group", &self.group)
            .finish()
    }
}

impl Tracer {
    /// A tracer recording through `tracer`; `group` is the consumer group.
    pub fn new(tracer: SdkTracer, group: &str) -> Tracer {
        Tracer {
            inner: Some(tracer),
            group: group.to_string(),
        }
    }

    /// Tracing off: spans are no-ops and trace headers pass through unchanged.
    pub fn disabled() -> Tracer {
        Tracer::default()
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    fn consumer_attributes(&self, m: &Incoming) -> Vec<KeyValue> {
        vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", m.topic.clone()),
            KeyValue::new(
                "messaging.destination.partition.id",
                m.partition.to_string(),
            ),
            KeyValue::new("messaging.kafka.offset", m.offset),
            KeyValue::new("messaging.consumer.group.name", self.group.clone()),
        ]
    }

    /// The span of a domain event consumed from an input topic: a child of the
    /// event's own trace context, or the root of a new trace.
    pub fn input(&self, m: &Incoming) -> Span {
        let Some(tracer) = &self.inner else {
            return Span::passthrough(m);
        };
        let parent = extract(&m.headers);
        let origin = if parent.span().span_context().is_valid() {
            "incoming"
        } else {
            "none"
        };
        let span = tracer
            .span_builder(format!("process {}", m.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes(self.consumer_attributes(m))
            .start_with_context(tracer, &parent);
        Span::recording(tracer, span, origin)
    }

    /// The span of a record on a shard, for the instance it concerns.
    /// `instance` is the `traceparent` the instance started with.
    pub fn shard(&self, m: &Incoming, instance: Option<&str>) -> Span {
        let Some(tracer) = &self.inner else {
            return Span::passthrough(m);
        };
        let carried = extract(&m.headers);
        let carried_sc = carried.span().span_context().clone();
        let instance_sc = instance
            .map(parse_traceparent)
            .filter(SpanContext::is_valid);
        let came_with_trace = header(&m.headers, ORIGIN_HEADER) != Some("none");
        let mut links = Vec::new();
        let parent = match (&instance_sc, carried_sc.is_valid() && came_with_trace) {
            // The event brought its own trace: continue it, link to the instance's.
            (Some(i), true) => {
                if i.trace_id() != carried_sc.trace_id() {
                    links.push(link(i.clone(), "instance"));
                }
                carried
            }
            (None, true) => carried,
            // No trace of its own (a timer, a service that does not propagate
            // one): it joins the instance's trace; the routing span is linked.
            (Some(i), false) => {
                if carried_sc.is_valid() {
                    links.push(link(carried_sc.clone(), "route"));
                }
                Context::new().with_remote_span_context(i.clone())
            }
            (None, false) => carried,
        };
        let span = tracer
            .span_builder(format!("process {}", m.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes(self.consumer_attributes(m))
            .with_links(links)
            .start_with_context(tracer, &parent);
        Span::recording(tracer, span, "incoming")
    }
}

fn link(sc: SpanContext, why: &'static str) -> Link {
    Link::new(sc, vec![KeyValue::new("baton.link", why)], 0)
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

struct Headers<'a>(&'a [(String, Vec<u8>)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header(self.0, key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

fn extract(headers: &[(String, Vec<u8>)]) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The span context a `traceparent` value names (invalid if it names none).
pub fn parse_traceparent(value: &str) -> SpanContext {
    let headers = [("traceparent".to_string(), value.as_bytes().to_vec())];
    extract(&headers).span().span_context().clone()
}

/// The W3C `traceparent` of a span context.
fn traceparent_of(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The W3C trace headers (`traceparent`, `tracestate`) of a span context.
fn inject(sc: &SpanContext) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("traceparent".to_string(), traceparent_of(sc).into_bytes())];
    let state = sc.trace_state().header();
    if !state.is_empty() {
        out.push(("tracestate".to_string(), state.into_bytes()));
    }
    out
}

/// One span, or nothing when tracing is off. Ends when dropped.
pub struct Span {
    kind: Kind,
}

enum Kind {
    /// Tracing is off: the trace headers of the record being processed.
    Passthrough(Vec<(String, Vec<u8>)>),
    Recording(Box<Recording>),
}

struct Recording {
    tracer: SdkTracer,
    span: opentelemetry_sdk::trace::Span,
    origin: &'static str,
}

impl Span {
    fn passthrough(m: &Incoming) -> Span {
        let headers = m
            .headers
            .iter()
            .filter(|(k, _)| {
                k.eq_ignore_ascii_case("traceparent") || k.eq_ignore_ascii_case("tracestate")
            })
            .cloned()
            .collect();
        Span {
            kind: Kind::Passthrough(headers),
        }
    }

    fn recording(
        tracer: &SdkTracer,
        span: opentelemetry_sdk::trace::Span,
        origin: &'static str,
    ) -> Span {
        Span {
            kind: Kind::Recording(Box::new(Recording {
                tracer: tracer.clone(),
                span,
                origin,
            })),
        }
    }

    pub fn is_recording(&self) -> bool {
        matches!(self.kind, Kind::Recording(_))
    }

    /// Sets an attribute (nothing when tracing is off).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Kind::Recording(r) = &mut self.kind {
            r.span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Records an event on the span.
    pub fn event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        if let Kind::Recording(r) = &mut self.kind {
            r.span.add_event(name, attributes);
        }
    }

    /// Marks the span as failed, with why.
    pub fn error(&mut self, reason: &str) {
        if let Kind::Recording(r) = &mut self.kind {
            r.span.set_status(Status::error(reason.to_string()));
        }
    }

    /// A child span (a step, a command sent). `attributes` is only called when recording.
    pub fn child(
        &self,
        name: impl FnOnce() -> String,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        match &self.kind {
            Kind::Passthrough(h) => Span {
                kind: Kind::Passthrough(h.clone()),
            },
            Kind::Recording(r) => {
                let tracer = &r.tracer;
                let parent = Context::new().with_remote_span_context(r.span.span_context().clone());
                let child = tracer
                    .span_builder(name())
                    .with_kind(kind)
                    .with_attributes(attributes())
                    .start_with_context(tracer, &parent);
                Span::recording(tracer, child, "incoming")
            }
        }
    }

    /// The headers that make a record's consumer a child of this span (or,
    /// with tracing off, the trace headers of the record being processed).
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        match &self.kind {
            Kind::Passthrough(h) => h.clone(),
            Kind::Recording(r) => {
                let mut h = inject(r.span.span_context());
                if r.origin == "none" {
                    h.push((ORIGIN_HEADER.to_string(), b"none".to_vec()));
                }
                h
            }
        }
    }

    /// This span's `traceparent` (None when tracing is off).
    pub fn traceparent(&self) -> Option<String> {
        match &self.kind {
            Kind::Passthrough(_) => None,
            Kind::Recording(r) => Some(traceparent_of(r.span.span_context())),
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Kind::Recording(r) = &mut self.kind {
            r.span.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    fn record(topic: &str, headers: Vec<(String, Vec<u8>)>) -> Incoming {
        Incoming {
            topic: topic.into(),
            partition: 1,
            offset: 42,
            timestamp: None,
            key: None,
            headers,
            payload: None,
        }
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn disabled_tracing_passes_the_callers_context_through() {
        let t = Tracer::disabled();
        let m = record("in", vec![("traceparent".into(), TP.as_bytes().to_vec())]);
        let s = t.input(&m);
        assert!(!s.is_recording());
        let child = s.child(|| unreachable!(), SpanKind::Producer, || unreachable!());
        assert_eq!(
            child.headers(),
            vec![("traceparent".to_string(), TP.as_bytes().to_vec())]
        );
    }

    #[test]
    fn spans_continue_the_incoming_trace_and_inject_their_own_context() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let t = Tracer::new(provider.tracer("test"), "g");
        let m = record(
            "in",
            vec![
                ("traceparent".into(), TP.as_bytes().to_vec()),
                ("tracestate".into(), b"vendor=abc".to_vec()),
            ],
        );
        let out = {
            let s = t.input(&m);
            s.headers()
        };
        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(
            span.span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(span.parent_span_id.to_string(), "b7ad6b7169203331");
        assert!(
            span.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "messaging.kafka.offset" && kv.value == 42.into())
        );
        let tp = header(&out, "traceparent").expect("injected");
        assert_eq!(header(&out, "tracestate"), Some("vendor=abc"));
        assert_eq!(parse_traceparent(tp).span_id(), span.span_context.span_id());
        assert_eq!(header(&out, ORIGIN_HEADER), None);
    }

    #[test]
    fn an_input_without_trace_joins_its_instance_and_a_foreign_one_links_to_it() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let t = Tracer::new(provider.tracer("test"), "g");
        let instance = "00-11111111111111111111111111111111-2222222222222222-01";
        // Routed without a trace of its own: joins the instance's trace.
        let routed = {
            let s = t.input(&record("in", vec![]));
            s.headers()
        };
        assert_eq!(header(&routed, ORIGIN_HEADER), Some("none"));
        drop(t.shard(&record("rep", routed), Some(instance)));
        // A timer record carries nothing: joins too.
        drop(t.shard(&record("rep", vec![]), Some(instance)));
        // An event from another trace: continues it and links to the instance.
        drop(t.shard(
            &record("rep", vec![("traceparent".into(), TP.as_bytes().to_vec())]),
            Some(instance),
        ));
        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 4);
        for s in &spans[1..3] {
            assert_eq!(
                s.span_context.trace_id().to_string(),
                "11111111111111111111111111111111"
            );
            assert_eq!(s.parent_span_id.to_string(), "2222222222222222");
        }
        assert_eq!(spans[1].links.links.len(), 1, "the routing span is linked");
        let foreign = &spans[3];
        assert_eq!(
            foreign.span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(
            foreign.links.links[0].span_context.trace_id().to_string(),
            "11111111111111111111111111111111"
        );
    }
}
