//! Observability of `baton run` against the test broker: spans exported over
//! OTLP (HTTP and gRPC) to a receiver the test runs, trace context carried
//! from the incoming event through baton into the commands, Prometheus
//! metrics on the admin port, readiness during restore, and logs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use baton::config::Config;
use baton::engine::{Instance, Status};
use baton::kafka::{self, Incoming, Outgoing, PlainConsumer, PlainProducer};
use baton::runtime::shard_of;
use baton::wire::{self, cloudevents};
use serde_json::{Value, json};

use support::admin::{get, parse_metrics, sum};
use support::orders::{Behaviour, Headers, Topics, header, services_with};
use support::otlp::{Received, Receiver};
use support::{Broker, eventually, free_addr, unique};

const PARTITIONS: i32 = 2;
/// Business data that must never reach the logs unless payload logging is on.
const SECRET: &str = "SECRET-CUSTOMER-4711";
const CONSUMER: i32 = 5;
const PRODUCER: i32 = 4;

fn write_config(
    dir: &Path,
    bootstrap: &str,
    group: &str,
    admin: SocketAddr,
    extra: &str,
) -> PathBuf {
    support::write_config(
        dir,
        &support::RunConfig {
            bootstrap,
            group,
            instance: "telemetry-1",
            partitions: PARTITIONS,
            in_place: false,
            admin: admin.to_string(),
            extra,
        },
    )
}

fn load(path: &Path) -> Config {
    Config::load(
        "baton.toml",
        &std::fs::read_to_string(path).expect("config"),
        [],
    )
    .expect("valid config")
}

/// `baton run`, killed when dropped.
struct Baton(Child);

impl Baton {
    fn start(config: &Path, log: &Path, env: &[(&str, &str)]) -> Baton {
        let log = std::fs::File::create(log).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
        cmd.args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Baton(cmd.spawn().expect("baton starts"))
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metrics(admin: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = get(admin, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body).unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{body}"))
}

fn order(t: &Topics, n: &str, trace: Option<&str>) -> Outgoing {
    let id = format!("placed-{n}");
    let data = json!({"orderId": n, "customerId": SECRET, "total": 120, "lines": [{"sku": "A", "qty": 1}], "address": "1 Main St"});
    let mut headers = vec![(
        "content-type".to_string(),
        b"application/cloudevents+json".to_vec(),
    )];
    if let Some(tp) = trace {
        headers.push(("traceparent".to_string(), tp.as_bytes().to_vec()));
    }
    Outgoing {
        topic: t.input.clone(),
        partition: None,
        key: id.clone().into_bytes(),
        payload: Some(cloudevents::structured(
            &id,
            "com.acme.order.placed",
            "crm",
            0,
            &data,
        )),
        headers,
    }
}

/// (trace id, parent span id) of a `traceparent`.
fn ids(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp}");
    (parts[1].to_string(), parts[2].to_string())
}

/// The services answer order `o-2` without any trace context, like a system
/// that is not instrumented; the others pass the command's context on.
fn untraced_o2(order: &str, command: &Headers) -> Headers {
    if order == "o-2" {
        return Vec::new();
    }
    command
        .iter()
        .filter(|(k, _)| k == "traceparent" || k == "tracestate")
        .cloned()
        .collect()
}

/// Every command record on the command topics.
fn commands(bootstrap: &str, t: &Topics, expected: usize) -> Vec<Incoming> {
    let topics = t.commands.clone();
    let c = PlainConsumer::new(bootstrap, &unique("read"), &topics).expect("consumer");
    let mut out = Vec::new();
    eventually(60, "the commands", || {
        while let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(m);
        }
        (out.len() >= expected).then_some(())
    });
    out
}

fn shard_spans<'a>(spans: &'a [Received], key: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.kind == CONSUMER && s.attr("baton.instance.key") == Some(key))
        .collect()
}

#[test]
fn one_order_is_one_trace_from_the_crm_through_baton_to_the_services() {
    let broker = Broker::start();
    let group = unique("otel");
    let t = Topics::of(&group);
    let dir = broker.dir.join("baton");
    std::fs::create_dir_all(&dir).expect("dir");
    let receiver = Receiver::http();
    let admin = free_addr();
    let config = write_config(
        &dir,
        &broker.bootstrap,
        &group,
        admin,
        "[log]\nformat = \"json\"\n",
    );
    kafka::ensure_topics(&load(&config), &[(t.input.clone(), PARTITIONS, false)])
        .expect("input topic");
    let log = dir.join("baton.log");
    // The standard OpenTelemetry variables turn export on (OTLP/HTTP).
    let endpoint = receiver.endpoint();
    let baton = Baton::start(
        &config,
        &log,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );

    eventually(60, "/readyz to answer 200", || {
        get(admin, "/readyz").filter(|(s, _)| *s == 200)
    });
    assert_eq!(get(admin, "/healthz").map(|(s, _)| s), Some(200));
    let before = metrics(admin);
    assert_eq!(
        sum(
            &before,
            "baton_instances_started_total",
            &[("process", "order-to-cash")]
        ),
        0.0
    );

    let stop = services_with(
        &broker.bootstrap,
        &t,
        Behaviour {
            trace: untraced_o2,
            deliver: true,
            ..Behaviour::default()
        },
    );
    let crm_trace = format!("{:032x}", 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319cu128);
    let crm_span = "b7ad6b7169203331";
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    producer
        .send(&order(
            &t,
            "o-1",
            Some(&format!("00-{crm_trace}-{crm_span}-01")),
        ))
        .expect("send");
    producer.send(&order(&t, "o-2", None)).expect("send");
    producer.flush().expect("flush");

    // Both orders run to completion (reserve, charge, ship + delivered, invoice).
    let m = eventually(90, "both orders to complete", || {
        let m = metrics(admin);
        (sum(
            &m,
            "baton_instances_completed_total",
            &[("process", "order-to-cash")],
        ) >= 2.0)
            .then_some(m)
    });
    stop.store(true, Ordering::Relaxed);
    let per = [("process", "order-to-cash")];
    assert_eq!(sum(&m, "baton_instances_started_total", &per), 2.0);
    assert_eq!(sum(&m, "baton_instances_completed_total", &per), 2.0);
    assert_eq!(sum(&m, "baton_instances_failed_total", &per), 0.0);
    // 4 task commands per order; 2 placed + 5 answers per order consumed.
    assert_eq!(
        sum(
            &m,
            "baton_commands_emitted_total",
            &[("process", "order-to-cash"), ("kind", "task")]
        ),
        8.0
    );
    assert_eq!(
        sum(
            &m,
            "baton_events_consumed_total",
            &[("topic", t.input.as_str())]
        ),
        12.0
    );
    assert!(sum(&m, "baton_transitions_total", &per) >= 10.0);
    assert!(sum(&m, "baton_transaction_commit_seconds_count", &[]) >= 1.0);
    assert!(sum(&m, "baton_transactions_total", &[("outcome", "committed")]) >= 1.0);
    assert!(sum(&m, "baton_batch_events_count", &[]) >= 1.0);
    assert_eq!(sum(&m, "baton_dead_letters_total", &[]), 0.0);
    assert_eq!(sum(&m, "baton_shards_owned", &[]), f64::from(PARTITIONS));
    assert!(
        m.keys()
            .all(|series| !series.contains("o-1") && !series.contains("placed-")),
        "no instance keys or event ids as label values"
    );

    // Every command carries the trace context of the span that sent it.
    let cmds = commands(&broker.bootstrap, &t, 8);
    let tp_of = |order: &str, kind: &str| -> (String, String) {
        let c = cmds
            .iter()
            .find(|c| {
                header(c, "ce_type").as_deref() == Some(kind)
                    && header(c, "ce_subject").as_deref() == Some(order)
            })
            .unwrap_or_else(|| panic!("no {kind} command for {order}"));
        ids(&header(c, "traceparent")
            .unwrap_or_else(|| panic!("{kind} for {order} has no traceparent")))
    };
    for kind in [
        "com.acme.inventory.reserve",
        "com.acme.payment.charge",
        "com.acme.shipment.create",
        "com.acme.invoice.create",
    ] {
        assert_eq!(
            tp_of("o-1", kind).0,
            crm_trace,
            "{kind} continues the CRM's trace"
        );
    }

    // The spans arrive at the receiver.
    let (reserve_trace, reserve_parent) = tp_of("o-1", "com.acme.inventory.reserve");
    let spans = eventually(30, "the spans of both orders", || {
        let spans = receiver.spans();
        let has = |id: &str| spans.iter().any(|s| s.span_id == id);
        let o2_done = shard_spans(&spans, "o-2").len() >= 6;
        (has(&reserve_parent) && shard_spans(&spans, "o-1").len() >= 6 && o2_done).then_some(spans)
    });
    assert!(spans.iter().all(|s| s.service == "baton"), "service.name");
    let by_id: BTreeMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();

    // o-1: the CRM's span → baton's consumer span for the input topic …
    let input = spans
        .iter()
        .find(|s| s.parent == crm_span && s.trace_id == crm_trace)
        .expect("a span continuing the CRM's traceparent");
    assert_eq!(input.kind, CONSUMER);
    assert_eq!(input.name, format!("process {}", t.input));
    let group_s = group.as_str();
    for (k, v) in [
        ("messaging.system", "kafka"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", t.input.as_str()),
        ("messaging.consumer.group.name", group_s),
        ("cloudevents.event_type", "com.acme.order.placed"),
        ("messaging.message.id", "placed-o-1"),
    ] {
        assert_eq!(input.attr(k), Some(v), "{k} on {input:?}");
    }
    let partition: i32 = input
        .attr("messaging.destination.partition.id")
        .and_then(|p| p.parse().ok())
        .expect("partition id");
    assert!((0..PARTITIONS).contains(&partition));
    assert!(
        input
            .attr("messaging.kafka.offset")
            .and_then(|o| o.parse::<i64>().ok())
            .is_some()
    );

    // … → the instance's consumer span on its shard …
    let shard = spans
        .iter()
        .find(|s| s.parent == input.span_id)
        .expect("the shard span is a child of the input span");
    assert_eq!(shard.kind, CONSUMER);
    assert_eq!(shard.attr("baton.process"), Some("order-to-cash"));
    assert_eq!(shard.attr("baton.process.version"), Some("1"));
    assert_eq!(shard.attr("baton.instance.key"), Some("o-1"));
    assert_eq!(
        shard.attr("messaging.destination.name"),
        Some(format!("{group}.baton.repartition").as_str())
    );
    assert_eq!(
        shard.attr("messaging.destination.partition.id"),
        Some(
            shard_of("order-to-cash/o-1", PARTITIONS)
                .to_string()
                .as_str()
        )
    );

    // … → a span per step entered …
    let reserve = spans
        .iter()
        .find(|s| s.parent == shard.span_id && s.name == "step reserve")
        .expect("step span under the shard span");
    assert_eq!(reserve.attr("baton.step"), Some("reserve"));
    assert_eq!(reserve.attr("baton.instance.key"), Some("o-1"));

    // … → the producer span whose context the command carries.
    let send = by_id
        .get(reserve_parent.as_str())
        .expect("the command's parent span was exported");
    assert_eq!(reserve_trace, crm_trace);
    assert_eq!(send.kind, PRODUCER);
    assert_eq!(send.parent, reserve.span_id);
    assert_eq!(
        send.attr("messaging.destination.name"),
        Some(t.commands[0].as_str())
    );
    assert_eq!(
        send.attr("cloudevents.event_type"),
        Some("com.acme.inventory.reserve")
    );

    // The whole order is one trace: every step, and every parent is there.
    let o1: Vec<&Received> = spans.iter().filter(|s| s.trace_id == crm_trace).collect();
    let steps: BTreeSet<&str> = o1
        .iter()
        .filter_map(|s| s.name.strip_prefix("step "))
        .collect();
    for step in ["reserve", "approval", "charge", "ship", "invoice"] {
        assert!(steps.contains(step), "step {step} in the trace: {steps:?}");
    }
    for s in &o1 {
        assert!(
            s.parent == crm_span || by_id.contains_key(s.parent.as_str()),
            "parent of {} ({}) missing",
            s.name,
            s.parent
        );
    }

    // o-2 came without a trace: its instance gets a root trace, and the
    // untraced answers join it (with a link to the span that routed them).
    let o2 = shard_spans(&spans, "o-2");
    let start = o2
        .iter()
        .find(|s| {
            s.links.is_empty()
                && by_id
                    .get(s.parent.as_str())
                    .is_some_and(|p| p.parent.is_empty())
        })
        .expect("o-2's first span, under a root span");
    let joined: Vec<&&Received> = o2.iter().filter(|s| s.span_id != start.span_id).collect();
    assert!(joined.len() >= 5, "{joined:?}");
    for s in joined {
        assert_eq!(s.trace_id, start.trace_id, "answers join o-2's trace");
        assert_eq!(s.parent, start.span_id);
        assert_eq!(s.links.len(), 1, "linked to its routing span");
        let (lt, ls) = &s.links[0];
        let route = by_id
            .get(ls.as_str())
            .expect("the linked routing span was exported");
        assert_eq!(&route.trace_id, lt);
        assert!(
            route.parent.is_empty(),
            "routing spans of untraced events are roots"
        );
    }

    // Logs: JSON lines, and no payload data.
    drop(baton);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.is_empty());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(!text.contains(SECRET), "event data leaked into the logs");
}

#[test]
fn readiness_waits_for_the_restore_and_grpc_export_works() {
    // Enough that the restore lasts long enough to be seen (Kafka reads 20 000 in a blink).
    const RESTORED: u64 = 100_000;
    let broker = Broker::start();
    let group = unique("ready");
    let t = Topics::of(&group);
    let dir = broker.dir.join("baton");
    std::fs::create_dir_all(&dir).expect("dir");
    let receiver = Receiver::grpc();
    let admin = free_addr();
    let extra = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\notlp_protocol = \"grpc\"\nservice_name = \"baton-ready\"\n[log]\nlevel = \"info,baton=debug,rdkafka=warn\"\npayloads = true\n",
        receiver.endpoint()
    );
    let config = write_config(&dir, &broker.bootstrap, &group, admin, &extra);
    let cfg = load(&config);
    let changelog = cfg.topics.changelog();
    kafka::ensure_topics(
        &cfg,
        &[
            (t.input.clone(), PARTITIONS, false),
            (changelog.clone(), PARTITIONS, true),
        ],
    )
    .expect("topics");

    // A changelog holding instances left by an earlier owner.
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for i in 0..RESTORED {
        let key = format!("r-{i}");
        let mut inst = Instance::new("order-to-cash", 1, &key);
        inst.status = Status::Active;
        let id = format!("order-to-cash/{key}");
        producer
            .send(&Outgoing {
                topic: changelog.clone(),
                partition: Some(shard_of(&id, PARTITIONS)),
                key: id.into_bytes(),
                payload: Some(wire::encode_changelog(0, &inst)),
                headers: Vec::new(),
            })
            .expect("send");
    }
    producer.flush().expect("flush");

    let log = dir.join("baton.log");
    let baton = Baton::start(&config, &log, &[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
    let mut seen: Vec<(u16, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((status, body)) = get(admin, "/readyz") {
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("/readyz body ({e}): {body}"));
            let done = status == 200;
            seen.push((status, v));
            if done {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never ready: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let restoring = seen
        .iter()
        .find(|(s, v)| *s == 503 && v["restoring"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(restoring.is_some(), "503 while shards restore: {seen:?}");
    assert!(
        seen.iter()
            .all(|(s, v)| (*s == 200) == (v["ready"] == true))
    );
    let (_, ready) = seen.last().expect("a last answer");
    assert_eq!(ready["shards"], json!([0, 1]));
    assert_eq!(ready["restoring"], json!([]));
    assert_eq!(get(admin, "/healthz").map(|(s, _)| s), Some(200));

    let m = eventually(30, "the restored instances in the gauges", || {
        let m = metrics(admin);
        (sum(
            &m,
            "baton_instances",
            &[("process", "order-to-cash"), ("status", "active")],
        ) == RESTORED as f64)
            .then_some(m)
    });
    assert_eq!(
        sum(&m, "baton_restored_instances_total", &[]),
        RESTORED as f64
    );
    assert_eq!(sum(&m, "baton_restore_records_total", &[]), RESTORED as f64);
    assert_eq!(
        sum(&m, "baton_restore_seconds_count", &[]),
        f64::from(PARTITIONS)
    );
    assert_eq!(sum(&m, "baton_shards_restoring", &[]), 0.0);

    // Spans go out over OTLP/gRPC, with the configured service name.
    producer.send(&order(&t, "g-1", None)).expect("send");
    producer.flush().expect("flush");
    let spans = eventually(60, "the order's spans over gRPC", || {
        let spans = receiver.spans();
        spans
            .iter()
            .any(|s| s.attr("baton.instance.key") == Some("g-1"))
            .then_some(spans)
    });
    let input = spans
        .iter()
        .find(|s| s.attr("messaging.message.id") == Some("placed-g-1") && s.parent.is_empty())
        .expect("the input span");
    assert_eq!(input.service, "baton-ready");
    // Consumer lag per partition, from librdkafka's statistics.
    eventually(30, "consumer lag gauges", || {
        let m = metrics(admin);
        let repartition = format!("{group}.baton.repartition");
        (0..PARTITIONS)
            .all(|p| {
                m.contains_key(&format!(
                    "baton_consumer_lag_records{{topic=\"{repartition}\",partition=\"{p}\"}}"
                ))
            })
            .then_some(())
    });
    // Payload logging was asked for: the event's data is in the debug log.
    eventually(30, "the payload in the log", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains(SECRET))
    });
    drop(baton);
}

#[test]
fn the_demo_serves_metrics_and_exports_traces() {
    let receiver = Receiver::http();
    let admin = free_addr();
    let endpoint = receiver.endpoint();
    let admin_arg = admin.to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "demo",
            "--seconds",
            "2",
            "--rate",
            "5",
            "--admin",
            &admin_arg,
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("baton demo starts");
    let m = eventually(60, "the demo's instances in /metrics", || {
        let (_, body) = get(admin, "/metrics")?;
        let m = parse_metrics(&body).ok()?;
        (sum(&m, "baton_instances_started_total", &[]) > 0.0).then_some(m)
    });
    assert!(
        sum(
            &m,
            "baton_events_consumed_total",
            &[("topic", "demo.events")]
        ) > 0.0
    );
    let out = child.wait_with_output().expect("demo ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("exporting traces over OTLP"), "{stdout}");
    // Spans were flushed before the demo exited.
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.service == "baton-demo"
            && s.name.starts_with("step ")
            && s.attr("baton.process").is_some()),
        "{} spans",
        spans.len()
    );
}
