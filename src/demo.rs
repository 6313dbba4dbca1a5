//! `baton demo`: the three examples running on librdkafka's in-process mock
//! cluster through the production runtime, with simulated services that
//! answer commands (and sometimes decline, fail or stay silent, so that
//! compensation, retries and timeouts really happen).
//!
//! The examples' durations are shortened (hours become seconds) so a run of
//! half a minute shows timeouts and escalations. The mock cluster does not
//! hide aborted transactions from read_committed consumers, so it is only a
//! demo, never evidence of exactly-once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use baton::config::{self, Config};
use baton::dsl;
use baton::engine::{Registry, format_rfc3339, parse_rfc3339};
use baton::kafka::{KafkaFailure, MockBroker, Outgoing, PlainConsumer, PlainProducer};
use baton::runtime::{self, Runtime, RuntimeError, Stats, now_ms};
use baton::wire::cloudevents;

/// The examples the demo deploys.
pub const EXAMPLES: [(&str, &str); 3] = [
    (
        "order-to-cash.yaml",
        include_str!("../examples/order-to-cash.yaml"),
    ),
    (
        "customer-onboarding.yaml",
        include_str!("../examples/customer-onboarding.yaml"),
    ),
    (
        "incident-response.yaml",
        include_str!("../examples/incident-response.yaml"),
    ),
];

/// The topic the demo's simulated systems publish their domain events to.
pub const EVENTS: &str = "demo.events";

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long new instances are started.
    pub seconds: u64,
    /// How long to wait afterwards for instances to finish.
    pub drain_seconds: u64,
    /// New instances per second.
    pub rate: u32,
    /// Share of payments declined (→ compensation).
    pub decline_rate: f64,
    /// Share of commands no service answers (→ timeouts, retries, escalation).
    pub silence_rate: f64,
    pub seed: u64,
    /// Serve `/healthz`, `/readyz`, `/metrics` and the admin API here while
    /// the demo runs.
    pub admin: Option<std::net::SocketAddr>,
    /// The operator token the admin API accepts.
    pub admin_token: String,
    /// Spans of the demo's instances (off by default).
    pub tracer: baton::telemetry::Tracer,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seconds: 20,
            drain_seconds: 10,
            rate: 20,
            decline_rate: 0.1,
            silence_rate: 0.05,
            seed: 7,
            admin: None,
            admin_token: String::new(),
            tracer: baton::telemetry::Tracer::disabled(),
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Admin(#[from] baton::admin::AdminError),
    #[error("example {0}: {1}")]
    Example(String, String),
    #[error("the simulated services stopped: {0}")]
    Services(String),
}

/// What the demo did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub active: u64,
    pub incidents: u64,
    pub commands: u64,
    pub compensations: u64,
    pub dead_letters: u64,
    pub transactions: u64,
    pub timeouts: u64,
    pub retries: u64,
    pub escalations: u64,
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
}

/// Small deterministic random numbers for the simulated world (never used by the engine).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn event(topic: &str, kind: &str, id: String, data: Json) -> Outgoing {
    let payload = cloudevents::structured(&id, kind, "demo", now_ms(), &data);
    Outgoing {
        topic: topic.to_string(),
        partition: None,
        key: id.clone().into_bytes(),
        payload: Some(payload),
        headers: vec![(
            "content-type".into(),
            b"application/cloudevents+json".to_vec(),
        )],
    }
}

/// The registry of shortened examples.
pub fn registry(factor: u64, floor_ms: u64) -> Result<Registry, DemoError> {
    let mut reg = Registry::default();
    for (name, text) in EXAMPLES {
        let mut def =
            dsl::parse(name, text).map_err(|e| DemoError::Example(name.into(), e.to_string()))?;
        def.scale_time(factor, floor_ms);
        reg.deploy(def, text)
            .map_err(|e| DemoError::Example(name.into(), e.to_string()))?;
    }
    Ok(reg)
}

/// Runs the demo; `progress` receives a status line about once a second.
pub fn run(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Summary, DemoError> {
    let broker = MockBroker::start()?;
    let bootstrap = broker.bootstrap_servers();
    let registry = registry(2000, 5000)?;
    let partitions = 3;
    let cfg = Config {
        kafka: config::Kafka {
            bootstrap_servers: bootstrap.clone(),
            group_id: "baton-demo".into(),
            input_topics: vec![EVENTS.into()],
            options: Default::default(),
            // librdkafka's mock cluster speaks the classic group protocol.
            group_protocol: config::GroupProtocol::Classic,
            max_record_bytes: None,
            secret_files: Default::default(),
            consumer_options: Default::default(),
            producer_options: Default::default(),
        },
        topics: config::Topics {
            prefix: "baton".into(),
            partitions,
            replication_factor: 1,
            create: true,
            changelog_config: Default::default(),
        },
        definitions: config::Definitions { paths: Vec::new() },
        runtime: config::Runtime {
            instance_id: Some("demo-1".into()),
            commit_interval: Duration::from_millis(50),
            max_batch: 500,
            retention: Duration::from_secs(3600),
            session_timeout: Duration::from_secs(6),
            in_place: false,
            // The embedded mock cluster cannot describe groups.
            await_settled_group: false,
            ..Default::default()
        },
        events: Default::default(),
        telemetry: Default::default(),
        log: Default::default(),
        admin: config::Admin {
            enabled: false,
            ..Default::default()
        },
    };
    let commands: Vec<String> = runtime::command_topics(&registry).into_iter().collect();
    for t in commands.iter().chain([EVENTS.to_string()].iter()) {
        broker.create_topic(t, partitions)?;
    }
    for t in [
        cfg.topics.changelog(),
        cfg.topics.repartition(),
        cfg.topics.audit(),
        cfg.topics.dead_letters(),
        cfg.topics.operator(),
    ] {
        broker.create_topic(&t, partitions)?;
    }
    // Single-partition compacted topics: run-time deploys and group membership.
    for t in [cfg.topics.definitions(), cfg.topics.members()] {
        broker.create_topic(&t, 1)?;
    }

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rt = Runtime::new(cfg, registry, stats.clone())?.with_tracer(opts.tracer.clone());
    let _admin = match opts.admin {
        Some(addr) => Some(baton::admin::serve(
            addr,
            stats.metrics.clone(),
            rt.health(),
            Duration::from_secs(60),
            Some(baton::admin::api::Api::for_runtime(
                &rt,
                baton::admin::api::Tokens::new([(
                    "demo".to_string(),
                    baton::config::Role::Operator,
                    opts.admin_token.clone(),
                )]),
                format!("http://{addr}"),
            )?),
        )?),
        None => None,
    };
    let rt_stop = stop.clone();
    let runtime_thread = std::thread::spawn(move || rt.run(rt_stop));

    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let services = {
        let stop = stop.clone();
        let latencies = latencies.clone();
        let bootstrap = bootstrap.clone();
        let opts = opts.clone();
        std::thread::spawn(move || {
            services(&bootstrap, EVENTS, &commands, &opts, &stop, &latencies)
        })
    };

    let producer = PlainProducer::new(&bootstrap)?;
    let mut rng = Rng(opts.seed.max(1));
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut n: u64 = 0;
    let generate = Duration::from_secs(opts.seconds);
    let total = generate + Duration::from_secs(opts.drain_seconds);
    let gap = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
    while started.elapsed() < total {
        if started.elapsed() < generate {
            n += 1;
            for r in start_events(EVENTS, n, &mut rng) {
                producer.send(&r)?;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let s = summary(&stats, &latencies);
            progress(&format!(
                "{:>3}s  started {:>5}  completed {:>5}  compensated {:>4}  active {:>4}  incidents {:>3}  commands {:>6}",
                started.elapsed().as_secs(),
                s.started,
                s.completed,
                s.failed,
                s.active,
                s.incidents,
                s.commands
            ));
        }
        std::thread::sleep(gap);
    }
    producer.flush()?;
    stop.store(true, Ordering::Relaxed);
    let rt_result = runtime_thread.join();
    let _ = services.join();
    match rt_result {
        Ok(r) => r?,
        Err(_) => {
            return Err(DemoError::Runtime(RuntimeError::Setup(
                "the runtime thread panicked".into(),
            )));
        }
    }
    Ok(summary(&stats, &latencies))
}

/// Where `baton services` plays the simulated systems, and how busily.
#[derive(Debug, Clone)]
pub struct World {
    /// The Kafka that the `baton run` processes use.
    pub bootstrap: String,
    /// The topic the simulated systems publish domain events to (one of
    /// the processes' `kafka.input_topics`).
    pub topic: String,
    /// Partitions of the event and command topics it creates when missing
    /// (the processes' `topics.partitions`).
    pub partitions: i32,
    /// New instances per second, how payments and commands go, and for how
    /// long instances start (`seconds = 0`: until stopped).
    pub opts: Options,
}

/// `baton services`: the demo's simulated CRM, ERP, payment provider,
/// warehouse, chat and ops tooling against a real Kafka, for `baton run`
/// processes that deploy the three examples (as `docker-compose.yml` does).
/// Creates the event and command topics when missing, starts new instances
/// and answers every command until `stop` is set; `progress` gets a line
/// every ten seconds. Returns the instances it started.
pub fn world(
    w: &World,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&str),
) -> Result<u64, DemoError> {
    let registry = registry(1, 0)?;
    let commands: Vec<String> = runtime::command_topics(&registry).into_iter().collect();
    let mut table = toml::Table::new();
    let mut kafka = toml::Table::new();
    kafka.insert("bootstrap_servers".into(), w.bootstrap.clone().into());
    kafka.insert("input_topics".into(), vec![w.topic.clone()].into());
    let mut topics = toml::Table::new();
    topics.insert("partitions".into(), i64::from(w.partitions).into());
    table.insert("kafka".into(), kafka.into());
    table.insert("topics".into(), topics.into());
    table.insert(
        "definitions".into(),
        toml::Table::from_iter([("paths".to_string(), toml::Value::Array(Vec::new()))]).into(),
    );
    // Only the brokers and topic settings matter here (no runtime starts),
    // so the settings are read without the checks of a runtime's.
    let cfg: Config = toml::from_str(&table.to_string())
        .map_err(|e| DemoError::Services(format!("the services' own Kafka settings: {e}")))?;
    let wanted: Vec<(String, i32, bool)> = commands
        .iter()
        .chain([w.topic.clone()].iter())
        .map(|t| (t.clone(), w.partitions, false))
        .collect();
    baton::kafka::ensure_topics(&cfg, &wanted)?;

    let latencies = Mutex::new(Vec::<u64>::new());
    let producer = PlainProducer::new(&w.bootstrap)?;
    let mut rng = Rng(w.opts.seed.max(1));
    let gap = Duration::from_secs_f64(1.0 / f64::from(w.opts.rate.max(1)));
    let generate = (w.opts.seconds > 0).then(|| Duration::from_secs(w.opts.seconds));
    std::thread::scope(|scope| {
        let answering =
            scope.spawn(|| services(&w.bootstrap, &w.topic, &commands, &w.opts, stop, &latencies));
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut n: u64 = 0;
        let mut seen: usize = 0;
        while !stop.load(Ordering::Relaxed) && !answering.is_finished() {
            if generate.is_none_or(|g| started.elapsed() < g) {
                n += 1;
                for r in start_events(&w.topic, n, &mut rng) {
                    producer.send(&r)?;
                }
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                // Counted and dropped: `baton services` runs for as long as
                // its container does.
                seen += latencies
                    .lock()
                    .map(|mut l| l.drain(..).count())
                    .unwrap_or(0);
                progress(&format!(
                    "{:>5}s  instances started {n:>7}  commands seen {seen:>8}",
                    started.elapsed().as_secs()
                ));
            }
            std::thread::sleep(gap);
        }
        producer.flush()?;
        stop.store(true, Ordering::Relaxed);
        match answering.join() {
            Ok(Ok(())) => Ok(n),
            Ok(Err(e)) => Err(DemoError::Services(e.to_string())),
            Err(_) => Err(DemoError::Services("the answering thread panicked".into())),
        }
    })
}

fn summary(stats: &Stats, latencies: &Mutex<Vec<u64>>) -> Summary {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (p50, p99) = {
        let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        let at = |q: f64| {
            l.get(((l.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        (at(0.5), at(0.99))
    };
    let started = get(&stats.started);
    let ended = get(&stats.completed) + get(&stats.failed) + get(&stats.cancelled);
    Summary {
        started,
        completed: get(&stats.completed),
        failed: get(&stats.failed),
        cancelled: get(&stats.cancelled),
        active: started.saturating_sub(ended),
        incidents: get(&stats.incidents),
        commands: get(&stats.commands),
        compensations: get(&stats.compensations),
        dead_letters: get(&stats.dead_letters),
        transactions: get(&stats.transactions),
        timeouts: get(&stats.timeouts),
        retries: get(&stats.retries),
        escalations: get(&stats.escalations),
        latency_p50_ms: p50,
        latency_p99_ms: p99,
    }
}

/// The start event(s) of the n-th new instance.
fn start_events(topic: &str, n: u64, rng: &mut Rng) -> Vec<Outgoing> {
    let r = rng.next();
    if r < 0.5 {
        let total = if rng.next() < 0.1 {
            12_000 + n
        } else {
            40 + n % 900
        };
        vec![event(
            topic,
            "com.acme.order.placed",
            format!("order-{n}"),
            json!({"orderId": format!("o-{n}"), "customerId": format!("c-{}", n % 97), "total": total,
                   "lines": [{"sku": "A-1", "qty": 1 + n % 3}], "address": "1 Main St"}),
        )]
    } else if r < 0.8 {
        vec![event(
            topic,
            "com.acme.crm.lead.captured",
            format!("lead-{n}"),
            json!({"leadId": format!("l-{n}"), "company": format!("Company {n}"), "email": format!("ops{n}@example.com"), "requestedCredit": 1000 * (n % 50)}),
        )]
    } else {
        let alert =
            json!({"incidentId": format!("inc-{n}"), "service": "checkout", "severity": "high"});
        let mut out = vec![event(
            topic,
            "com.acme.monitoring.alert.fired",
            format!("alert-{n}"),
            alert.clone(),
        )];
        if rng.next() < 0.5 {
            // The monitoring system fires again: deduplicated onto the same instance.
            out.push(event(
                topic,
                "com.acme.monitoring.alert.fired",
                format!("alert-{n}-again"),
                alert,
            ));
        }
        out
    }
}

/// Simulated CRM, ERP, payment provider, warehouse, chat and ops tooling.
fn services(
    bootstrap: &str,
    events: &str,
    topics: &[String],
    opts: &Options,
    stop: &AtomicBool,
    latencies: &Mutex<Vec<u64>>,
) -> Result<(), KafkaFailure> {
    let consumer = PlainConsumer::new(bootstrap, "demo-services", topics)?;
    let producer = PlainProducer::new(bootstrap)?;
    let mut rng = Rng(opts.seed.wrapping_mul(31).max(1));
    let mut delayed: Vec<(Instant, Outgoing)> = Vec::new();
    let mut answered: BTreeSet<String> = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = delayed.into_iter().partition(|(t, _)| *t <= now);
        delayed = later;
        for (_, r) in due {
            let _ = producer.send(&r);
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
            continue;
        };
        let header = |k: &str| {
            m.headers
                .iter()
                .find(|(h, _)| h == k)
                .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
        };
        let (Some(kind), Some(id)) = (header("ce_type"), header("ce_id")) else {
            continue;
        };
        if let Some(t) = header("ce_time").as_deref().and_then(parse_rfc3339)
            && let Ok(mut l) = latencies.lock()
        {
            l.push(now_ms().saturating_sub(t));
        }
        // Commands carry deterministic ids; a service answers each once. The
        // ids are forgotten now and then (a long `baton services` run): an
        // answer given twice has the same event id, which baton ignores.
        if answered.len() >= 100_000 {
            answered.clear();
        }
        if !answered.insert(id.clone()) {
            continue;
        }
        let data: Json = m
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or(Json::Null);
        let s = |k: &str| data.get(k).cloned().unwrap_or(Json::Null);
        let silent = rng.next() < opts.silence_rate;
        let r = rng.next();
        let reply = |kind: &str, data: Json| event(events, kind, format!("{id}/{kind}"), data);
        let mut now_out = Vec::new();
        let mut later_out: Vec<(u64, Outgoing)> = Vec::new();
        match kind.as_str() {
            "com.acme.inventory.reserve" if !silent => now_out.push(if r < 0.95 {
                reply("com.acme.inventory.reserved", json!({"orderId": s("order"), "reservationId": format!("r-{id}")}))
            } else {
                reply("com.acme.inventory.unavailable", json!({"orderId": s("order")}))
            }),
            "com.acme.task.approve-order" => later_out.push((
                300,
                reply("com.acme.task.completed", json!({"orderId": s("order"), "approved": r < 0.8, "user": "dana"})),
            )),
            "com.acme.payment.charge" if !silent => now_out.push(if r < opts.decline_rate {
                reply("com.acme.payment.declined", json!({"orderId": s("order"), "reason": "insufficient funds"}))
            } else if r < opts.decline_rate + 0.08 {
                reply("com.acme.payment.error", json!({"orderId": s("order")}))
            } else {
                reply("com.acme.payment.charged", json!({"orderId": s("order"), "paymentId": format!("p-{id}")}))
            }),
            "com.acme.shipment.create" if !silent => {
                let order = s("order");
                now_out.push(reply("com.acme.shipment.created", json!({"orderRef": order, "trackingId": format!("t-{id}")})));
                if r < 0.95 {
                    later_out.push((1500, reply("com.acme.shipment.delivered", json!({"orderRef": order}))));
                }
            }
            "com.acme.invoice.create" => now_out.push(reply("com.acme.invoice.created", json!({"orderId": s("order"), "invoiceId": format!("i-{id}")}))),
            "com.acme.credit.check" if !silent && r < 0.85 => now_out.push(if r < 0.65 {
                reply("com.acme.credit.approved", json!({"leadId": s("lead"), "limit": 5000}))
            } else {
                reply("com.acme.credit.rejected", json!({"leadId": s("lead"), "reason": "exposure too high"}))
            }),
            "com.acme.crm.task.credit-review" => later_out.push((
                500,
                reply("com.acme.crm.task.completed", json!({"leadId": s("lead"), "decision": if r < 0.7 { "approve" } else { "reject" }, "limit": 2000, "user": "maria"})),
            )),
            "com.acme.crm.account.create" => now_out.push(reply("com.acme.crm.account.created", json!({"leadId": s("lead"), "accountId": format!("C-{id}")}))),
            "com.acme.erp.customer.create" => now_out.push(reply("com.acme.erp.customer.created", json!({"leadId": s("lead"), "customerId": format!("E-{id}")}))),
            "com.acme.diagnostics.logs.collect" if !silent => now_out.push(reply("com.acme.diagnostics.logs.collected", json!({"incidentId": s("incident"), "url": "https://logs"}))),
            "com.acme.diagnostics.metrics.collect" => now_out.push(reply("com.acme.diagnostics.metrics.collected", json!({"incidentId": s("incident"), "url": "https://metrics"}))),
            "com.acme.remediation.run" => {
                if r < 0.8 {
                    now_out.push(reply("com.acme.remediation.finished", json!({"incidentId": s("incident"), "result": "restarted"})));
                    if rng.next() < 0.7 {
                        later_out.push((500, reply("com.acme.monitoring.alert.resolved", json!({"incidentId": s("incident")}))));
                    }
                } else {
                    now_out.push(reply("com.acme.remediation.failed", json!({"incidentId": s("incident")})));
                }
            }
            "com.acme.chat.page" if r < 0.8 => later_out.push((
                300,
                reply("com.acme.chat.acknowledged", json!({"incidentId": s("incident"), "user": "sam"})),
            )),
            "com.acme.chat.escalate" => later_out.push((1000, reply("com.acme.monitoring.alert.resolved", json!({"incidentId": s("incident")})))),
            _ => {}
        }
        for r in now_out {
            let _ = producer.send(&r);
        }
        for (ms, r) in later_out {
            delayed.push((Instant::now() + Duration::from_millis(ms), r));
        }
    }
    Ok(())
}

/// The summary as the terminal shows it.
pub fn render(s: &Summary) -> String {
    format!(
        "instances started {}\n  completed        {}\n  compensated      {}\n  cancelled        {}\n  still active     {} (waiting on timers, watchdogs or incidents)\n  incidents raised {}\ntimeouts fired    {} ({} commands retried, {} watchdog escalations)\ncommands          {} ({} compensations)\ndead letters      {}\ntransactions      {}\nevent→command latency p50 {} ms, p99 {} ms\nended at {}",
        s.started,
        s.completed,
        s.failed,
        s.cancelled,
        s.active,
        s.incidents,
        s.timeouts,
        s.retries,
        s.escalations,
        s.commands,
        s.compensations,
        s.dead_letters,
        s.transactions,
        s.latency_p50_ms,
        s.latency_p99_ms,
        format_rfc3339(now_ms())
    )
}
