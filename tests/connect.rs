//! `baton connect` against Apache Kafka and a local HTTP server the tests
//! start: each outcome of a call (success, 4xx, 5xx then success, timeout,
//! refused connection, TLS with a given CA), the rate limit under a burst,
//! order per key, a crash mid-call, and the onboarding example with its
//! credit check and CRM provisioning going through the connector.

#[path = "support/http.rs"]
mod http;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton::connect::{ConnectError, ConnectMetrics, Connector};
use baton::engine::{Command, Purpose};
use baton::kafka::{self, Incoming, Outgoing, PlainProducer};
use baton::wire::cloudevents;
use http::{Gate, Reply, Server};
use serde_json::{Value, json};
use support::orders::{config, header};
use support::running::collector;
use support::{Broker, eventually, unique};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One test's topics and group.
struct Topics {
    group: String,
    commands: String,
    results: String,
}

impl Topics {
    /// Fresh names; the command topic is created with `partitions`.
    fn create(broker: &Broker, partitions: i32) -> Topics {
        let group = unique("connect");
        let t = Topics {
            commands: format!("{group}.commands"),
            results: format!("{group}.results"),
            group,
        };
        let cfg = config(&broker.bootstrap, &t.group, "admin");
        kafka::ensure_topics(&cfg, &[(t.commands.clone(), partitions, false)])
            .expect("command topic");
        t
    }

    /// A connector file for these topics: `[kafka]`, `[connect]` and
    /// `[admin]`, then `rest` (endpoints and commands).
    fn file(&self, broker: &Broker, rest: &str) -> String {
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topics = ["{commands}"]
[connect]
result_topic = "{results}"
commit_interval = "50ms"
partitions = 2
[admin]
enabled = false
{rest}
"#,
            bootstrap = broker.bootstrap,
            group = self.group,
            commands = self.commands,
            results = self.results,
        )
    }
}

/// A connector on a thread of its own, with its health port.
struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<(), ConnectError>>,
    metrics: Arc<ConnectMetrics>,
    port: baton::admin::Admin,
}

impl Running {
    fn start(text: &str, env: &[(&str, &str)]) -> Running {
        Running::start_with(text, env, |c| c)
    }

    /// [`Running::start`] with the connector changed by `adjust` first
    /// (test-only faults).
    fn start_with(
        text: &str,
        env: &[(&str, &str)],
        adjust: impl FnOnce(Connector) -> Connector,
    ) -> Running {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let setup = baton::connect::load("connectors.toml", text, env).expect("valid file");
        let connector = adjust(Connector::new(setup).expect("the connector starts"));
        let metrics = connector.metrics();
        let port = connector
            .serve(
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                Duration::from_secs(60),
            )
            .expect("health port");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || connector.run(flag));
        Running {
            stop,
            handle,
            metrics,
            port,
        }
    }

    /// GET `path` on the health port: status and body.
    fn get(&self, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(format!("http://{}{path}", self.port.addr()))
            .call()
            .expect("the health port answers");
        let body = r.body_mut().read_to_string().unwrap_or_default();
        (r.status().as_u16(), body)
    }

    /// The value of one series of `/metrics`.
    fn metric(&self, series: &str) -> f64 {
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .expect("connector thread")
            .expect("the connector ends cleanly");
    }
}

/// A command record as `baton run` writes it: a binary CloudEvent keyed by
/// its instance, with a trace context.
fn command(topic: &str, key: &str, step: &str, kind: &str, data: Value) -> Outgoing {
    let c = Command {
        id: format!("onboarding/{key}/{step}/1"),
        topic: topic.to_string(),
        kind: kind.to_string(),
        key: key.to_string(),
        data,
        step: step.to_string(),
        attempt: 1,
        purpose: Purpose::Task,
    };
    let trace = vec![("traceparent".to_string(), TRACEPARENT.as_bytes().to_vec())];
    let (headers, payload) = cloudevents::encode_command(&c, "onboarding", 1_000, trace);
    Outgoing {
        topic: topic.to_string(),
        partition: None,
        key: key.as_bytes().to_vec(),
        payload: Some(payload),
        headers,
    }
}

fn send(broker: &Broker, records: &[Outgoing]) {
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for r in records {
        producer.send(r).expect("send");
    }
    producer.flush().expect("flush");
}

/// The outcome of command `id` once it is committed.
fn outcome(seen: &Arc<Mutex<Vec<Incoming>>>, id: &str) -> Incoming {
    eventually(60, &format!("the outcome of {id}"), || {
        seen.lock()
            .ok()?
            .iter()
            .find(|m| header(m, "ce_correlationid").as_deref() == Some(id))
            .cloned()
    })
}

fn data(m: &Incoming) -> Value {
    serde_json::from_slice(m.payload.as_deref().unwrap_or_default()).unwrap_or(Value::Null)
}

#[test]
fn a_successful_call_publishes_the_answer_as_an_event() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 2);
    let server = Server::start(|_, _| Reply::json(201, json!({"accountId": "C-12"})));
    let text = t.file(
        &broker,
        &format!(
            r#"[endpoints.crm]
url = "{url}/api"
auth = {{ bearer = {{ env = "CRM_TOKEN" }} }}
headers = {{ "X-Tenant" = "'acme'" }}
[[commands]]
type = "com.acme.crm.account.create"
endpoint = "crm"
method = "PUT"
path = "/accounts/{{key}}?attempt={{attempt}}"
body = {{ company = "event.data.company", seats = 5, source = "event.source" }}
"#,
            url = server.url()
        ),
    );
    let connector = Running::start(&text, &[("CRM_TOKEN", "crm-secret")]);
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    send(
        &broker,
        &[
            // A command type nobody configured: passed over, its offset committed.
            command(
                &t.commands,
                "lead 1",
                "welcome",
                "com.acme.mail.send",
                json!({}),
            ),
            command(
                &t.commands,
                "lead 1",
                "crm-account",
                "com.acme.crm.account.create",
                json!({"company": "Initech"}),
            ),
        ],
    );
    let m = outcome(&seen, "onboarding/lead 1/crm-account/1");
    assert_eq!(
        header(&m, "ce_type").as_deref(),
        Some("com.acme.crm.account.create.succeeded")
    );
    assert_eq!(
        header(&m, "ce_id").as_deref(),
        Some("onboarding/lead 1/crm-account/1/succeeded")
    );
    assert_eq!(header(&m, "ce_subject").as_deref(), Some("lead 1"));
    assert_eq!(header(&m, "traceparent").as_deref(), Some(TRACEPARENT));
    assert_eq!(m.key.as_deref(), Some(&b"lead 1"[..]));
    assert_eq!(
        data(&m),
        json!({"command": "onboarding/lead 1/crm-account/1", "key": "lead 1", "status": 201, "body": {"accountId": "C-12"}})
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1, "only the configured type is called");
    let r = &requests[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.path, "/api/accounts/lead%201?attempt=1");
    assert_eq!(r.header("authorization"), Some("Bearer crm-secret"));
    assert_eq!(r.header("x-tenant"), Some("acme"));
    assert_eq!(
        r.header("idempotency-key"),
        Some("onboarding/lead 1/crm-account/1")
    );
    assert_eq!(r.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"company": "Initech", "seats": 5, "source": "baton/onboarding"})
    );
    eventually(30, "the passed-over command counted", || {
        (connector.metric("baton_connector_commands_ignored_total{reason=\"no-connector\"}") >= 1.0)
            .then_some(())
    });
    assert_eq!(
        connector.metric("baton_connector_calls_total{endpoint=\"crm\",outcome=\"succeeded\"}"),
        1.0
    );
    let (status, metrics) = connector.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics
            .contains("baton_connector_outcomes_total{endpoint=\"crm\",outcome=\"succeeded\"} 1"),
        "{metrics}"
    );
    let (status, ready) = connector.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(connector.get("/healthz").0, 200);
    connector.stop();
    stop.store(true, Ordering::Relaxed);
    // Both commands are committed: a new member of the group reads nothing again.
    let cfg = config(&broker.bootstrap, &t.group, "check");
    let committed: i64 =
        kafka::committed_offsets(&cfg, &[(t.commands.clone(), 0), (t.commands.clone(), 1)])
            .expect("committed offsets")
            .values()
            .sum();
    assert_eq!(committed, 2);
}

#[test]
fn a_call_that_panics_every_time_fails_and_the_next_command_of_its_key_goes_on() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 1);
    let server = Server::start(|_, _| Reply::json(200, json!({"ok": true})));
    let text = t.file(
        &broker,
        &format!(
            r#"[endpoints.crm]
url = "{url}"
[[commands]]
type = "com.acme.crm.account.create"
endpoint = "crm"
"#,
            url = server.url()
        ),
    );
    let poison = "onboarding/lead-9/crm-account/1";
    let connector = Running::start_with(&text, &[], |c| c.with_panic_on(poison));
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    send(
        &broker,
        &[
            command(
                &t.commands,
                "lead-9",
                "crm-account",
                "com.acme.crm.account.create",
                json!({}),
            ),
            command(
                &t.commands,
                "lead-9",
                "crm-contact",
                "com.acme.crm.account.create",
                json!({}),
            ),
        ],
    );
    // The next command of the same key runs once the poison one is decided.
    let next = outcome(&seen, "onboarding/lead-9/crm-contact/1");
    assert_eq!(
        header(&next, "ce_type").as_deref(),
        Some("com.acme.crm.account.create.succeeded")
    );
    let failed = outcome(&seen, poison);
    assert_eq!(
        header(&failed, "ce_type").as_deref(),
        Some("com.acme.crm.account.create.failed")
    );
    let reason = data(&failed)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("panicked"), "{reason}");
    // One outcome each; the poison command never reached the server.
    let outcomes = |id: &str| {
        seen.lock()
            .map(|v| {
                v.iter()
                    .filter(|m| header(m, "ce_correlationid").as_deref() == Some(id))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(
        (
            outcomes(poison),
            outcomes("onboarding/lead-9/crm-contact/1")
        ),
        (1, 1)
    );
    assert_eq!(server.requests().len(), 1);
    connector.stop();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_4xx_answer_fails_at_once() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 1);
    let server = Server::start(|_, _| Reply::json(422, json!({"error": "company is required"})));
    let text = t.file(
        &broker,
        &format!(
            r#"[endpoints.crm]
url = "{url}"
retry = {{ attempts = 5, backoff = "10ms" }}
[[commands]]
type = "com.acme.crm.account.create"
endpoint = "crm"
path = "/accounts"
"#,
            url = server.url()
        ),
    );
    let connector = Running::start(&text, &[]);
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    send(
        &broker,
        &[command(
            &t.commands,
            "lead-2",
            "crm-account",
            "com.acme.crm.account.create",
            json!({}),
        )],
    );
    let m = outcome(&seen, "onboarding/lead-2/crm-account/1");
    assert_eq!(
        header(&m, "ce_type").as_deref(),
        Some("com.acme.crm.account.create.failed")
    );
    let d = data(&m);
    assert_eq!(d["status"], 422);
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["reason"], "HTTP 422 Unprocessable Entity");
    assert_eq!(d["body"], json!({"error": "company is required"}));
    assert_eq!(d["key"], "lead-2");
    // The outcome is out, so the command is decided: no call follows.
    assert_eq!(server.requests().len(), 1);
    // The default body is the command's data.
    assert_eq!(server.requests()[0].json(), json!({}));
    connector.stop();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_5xx_answer_is_tried_again_with_backoff_until_it_succeeds() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 1);
    let server = Server::start(|_, before| {
        if before < 2 {
            Reply::status(503)
        } else {
            Reply::json(200, json!({"decision": "approved", "limit": 40000}))
        }
    });
    let text = t.file(
        &broker,
        &format!(
            r#"[endpoints.bureau]
url = "{url}"
auth = {{ api_key = {{ header = "X-Api-Key", key = {{ env = "BUREAU_KEY" }} }} }}
retry = {{ attempts = 4, backoff = "200ms", factor = 2.0 }}
[[commands]]
type = "com.acme.credit.check"
endpoint = "bureau"
path = "/checks"
"#,
            url = server.url()
        ),
    );
    let connector = Running::start(&text, &[("BUREAU_KEY", "bureau-secret")]);
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    send(
        &broker,
        &[command(
            &t.commands,
            "lead-3",
            "credit-check",
            "com.acme.credit.check",
            json!({"amount": 5}),
        )],
    );
    let m = outcome(&seen, "onboarding/lead-3/credit-check/1");
    assert_eq!(
        header(&m, "ce_type").as_deref(),
        Some("com.acme.credit.check.succeeded")
    );
    assert_eq!(data(&m)["body"]["limit"], 40000);
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(
            r.header("idempotency-key"),
            Some("onboarding/lead-3/credit-check/1"),
            "every attempt carries the command id"
        );
        assert_eq!(r.header("x-api-key"), Some("bureau-secret"));
    }
    // Backoff 200 ms, then 400 ms, each jittered to at least half of it.
    let gaps: Vec<Duration> = requests.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(200), "{gaps:?}");
    assert_eq!(
        connector.metric("baton_connector_retries_total{endpoint=\"bureau\"}"),
        2.0
    );
    assert_eq!(
        connector
            .metric("baton_connector_calls_total{endpoint=\"bureau\",outcome=\"server_error\"}"),
        2.0
    );
    connector.stop();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_call_that_times_out_is_tried_again_then_fails() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 1);
    let server = Server::start(|_, _| {
        // Far longer than the endpoint's timeout.
        std::thread::sleep(Duration::from_secs(3));
        Reply::status(200)
    });
    let text = t.file(
        &broker,
        &format!(
            r#"[endpoints.slow]
url = "{url}"
timeout = "300ms"
retry = {{ attempts = 2, backoff = "50ms" }}
[[commands]]
type = "com.acme.erp.customer.create"
endpoint = "slow"
path = "/customers"
"#,
            url = server.url()
        ),
    );
    let connector = Running::start(&text, &[]);
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    let started = Instant::now();
    send(
        &broker,
        &[command(
            &t.commands,
            "lead-4",
            "erp-account",
            "com.acme.erp.customer.create",
            json!({}),
        )],
    );
    let m = outcome(&seen, "onboarding/lead-4/erp-account/1");
    assert_eq!(
        header(&m, "ce_type").as_deref(),
        Some("com.acme.erp.customer.create.failed")
    );
    let d = data(&m);
    assert!(d.get("status").is_none(), "the server never answered: {d}");
    assert_eq!(d["attempts"], 2);
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("no answer within 300ms (timeout)")
            && reason.contains("gave up after 2 attempts"),
        "{reason}"
    );
    assert_eq!(server.requests().len(), 2);
    // Two timeouts, not two waits for the server's 3 s.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        connector.metric("baton_connector_calls_total{endpoint=\"slow\",outcome=\"timeout\"}"),
        2.0
    );
    connector.stop();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_refused_connection_is_tried_again_then_fails_and_trips_the_breaker() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 1);
    // A port nobody listens on.
    let closed = support::free_addr();
    let text = t.file(
        &broker,
        &format!(
            r#"[endpoints.down]
url = "http://{closed}"
retry = {{ attempts = 3, backoff = "20ms" }}
breaker = {{ failures = 2, pause = "300ms" }}
[[commands]]
type = "com.acme.crm.account.create"
endpoint = "down"
"#
        ),
    );
    let connector = Running::start(&text, &[]);
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    send(
        &broker,
        &[command(
            &t.commands,
            "lead-5",
            "crm-account",
            "com.acme.crm.account.create",
            json!({}),
        )],
    );
    let m = outcome(&seen, "onboarding/lead-5/crm-account/1");
    assert_eq!(
        header(&m, "ce_type").as_deref(),
        Some("com.acme.crm.account.create.failed")
    );
    let d = data(&m);
    assert_eq!(d["attempts"], 3);
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("connection failed"), "{reason}");
    assert_eq!(
        connector.metric("baton_connector_calls_total{endpoint=\"down\",outcome=\"unreachable\"}"),
        3.0
    );
    // Two failures in a row paused the endpoint; the third attempt waited
    // out the pause as the probe.
    assert_eq!(
        connector.metric("baton_connector_breaker_opened_total{endpoint=\"down\"}"),
        1.0
    );
    assert_eq!(
        connector.metric("baton_connector_breaker_open{endpoint=\"down\"}"),
        1.0
    );
    connector.stop();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn the_rate_and_concurrency_limits_hold_under_a_burst() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 2);
    let server = Server::start(|_, _| {
        std::thread::sleep(Duration::from_millis(50));
        Reply::json(200, json!({}))
    });
    let text = t.file(
        &broker,
        &format!(
            r#"[endpoints.crm]
url = "{url}"
concurrency = 2
rate_limit = {{ per_second = 10, burst = 3 }}
[[commands]]
type = "com.acme.crm.account.create"
endpoint = "crm"
"#,
            url = server.url()
        ),
    );
    let connector = Running::start(&text, &[]);
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    let n = 23;
    let burst: Vec<Outgoing> = (0..n)
        .map(|i| {
            command(
                &t.commands,
                &format!("lead-{i}"),
                "crm-account",
                "com.acme.crm.account.create",
                json!({}),
            )
        })
        .collect();
    send(&broker, &burst);
    eventually(90, "every outcome of the burst", || {
        (seen.lock().ok()?.len() >= n).then_some(())
    });
    let requests = server.requests();
    assert_eq!(requests.len(), n);
    let times: Vec<Instant> = requests.iter().map(|r| r.at).collect();
    // A token bucket lets at most burst + rate × t calls through in any
    // window of length t: here 3 + 10 per second (one more allowed for the
    // server's own timing).
    for (i, start) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|t| **t - *start < Duration::from_secs(1))
            .count();
        assert!(within <= 14, "{within} calls within a second from call {i}");
    }
    let span = times[n - 1] - times[0];
    assert!(
        span >= Duration::from_millis(1800),
        "{n} calls at 10/s after a burst of 3 took only {span:?}"
    );
    assert!(server.max_concurrent() <= 2, "{}", server.max_concurrent());
    assert!(
        connector.metric("baton_connector_rate_limited_total{endpoint=\"crm\"}") >= 15.0,
        "{}",
        connector.metrics.encode()
    );
    connector.stop();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn commands_of_one_key_are_called_in_order_and_keys_at_once() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 1);
    let server = Server::start(|_, _| {
        std::thread::sleep(Duration::from_millis(150));
        Reply::json(200, json!({}))
    });
    let text = t.file(
        &broker,
        &format!(
            r#"[endpoints.crm]
url = "{url}"
concurrency = 8
[[commands]]
type = "com.acme.crm.contact.update"
endpoint = "crm"
path = "/contacts/{{key}}/{{event.data.n}}"
"#,
            url = server.url()
        ),
    );
    let connector = Running::start(&text, &[]);
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    let mut records = Vec::new();
    for n in 0..4 {
        for key in ["a", "b", "c"] {
            records.push(command(
                &t.commands,
                key,
                &format!("update-{n}"),
                "com.acme.crm.contact.update",
                json!({"n": n}),
            ));
        }
    }
    send(&broker, &records);
    eventually(60, "twelve outcomes", || {
        (seen.lock().ok()?.len() >= 12).then_some(())
    });
    let requests = server.requests();
    for key in ["a", "b", "c"] {
        let order: Vec<String> = requests
            .iter()
            .filter(|r| r.path.starts_with(&format!("/contacts/{key}/")))
            .map(|r| r.path.clone())
            .collect();
        let want: Vec<String> = (0..4).map(|n| format!("/contacts/{key}/{n}")).collect();
        assert_eq!(order, want, "key {key} out of order");
    }
    // One key at a time each, three keys at once.
    assert_eq!(server.max_concurrent(), 3);
    connector.stop();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn tls_works_with_a_given_ca_and_refuses_an_unknown_one() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 1);
    let (ca, identity) = http::certificates(&broker.dir);
    let server = Server::start_tls(identity, |_, _| Reply::json(200, json!({"secure": true})));
    let text = t.file(
        &broker,
        &format!(
            r#"[endpoints.internal]
url = "{url}"
tls = {{ ca_file = "{ca}" }}
[endpoints.system-roots]
url = "{url}"
retry = {{ attempts = 1 }}
[[commands]]
type = "com.acme.crm.account.create"
endpoint = "internal"
[[commands]]
type = "com.acme.erp.customer.create"
endpoint = "system-roots"
"#,
            url = server.url(),
            ca = ca.display()
        ),
    );
    let connector = Running::start(&text, &[]);
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    send(
        &broker,
        &[
            command(
                &t.commands,
                "lead-6",
                "crm-account",
                "com.acme.crm.account.create",
                json!({}),
            ),
            command(
                &t.commands,
                "lead-6",
                "erp-account",
                "com.acme.erp.customer.create",
                json!({}),
            ),
        ],
    );
    let ok = outcome(&seen, "onboarding/lead-6/crm-account/1");
    assert_eq!(
        header(&ok, "ce_type").as_deref(),
        Some("com.acme.crm.account.create.succeeded")
    );
    assert_eq!(data(&ok)["body"], json!({"secure": true}));
    // The system's roots do not know the test's CA: the handshake fails.
    let refused = outcome(&seen, "onboarding/lead-6/erp-account/1");
    assert_eq!(
        header(&refused, "ce_type").as_deref(),
        Some("com.acme.erp.customer.create.failed")
    );
    let reason = data(&refused)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("certificate"), "{reason}");
    assert_eq!(server.requests().len(), 1);
    connector.stop();
    stop.store(true, Ordering::Relaxed);
}

/// `baton connect` as its own process.
fn baton_connect(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    support::baton_serving("connect", config, log, &[("CRM_TOKEN", "crm-secret")])
}

#[test]
fn a_crash_mid_call_repeats_the_call_and_publishes_its_outcome_once() {
    let broker = Broker::start();
    let t = Topics::create(&broker, 1);
    let gate = Arc::new(Gate::default());
    let held = gate.clone();
    let server = Server::start(move |_, before| {
        if before == 0 {
            // The first call hangs until the connector making it is gone.
            held.wait();
        }
        Reply::json(201, json!({"accountId": "C-9"}))
    });
    let text = t
        .file(
            &broker,
            &format!(
                r#"[endpoints.crm]
url = "{url}"
timeout = "60s"
auth = {{ bearer = {{ env = "CRM_TOKEN" }} }}
[[commands]]
type = "com.acme.crm.account.create"
endpoint = "crm"
path = "/accounts"
"#,
                url = server.url()
            ),
        )
        .replace("[connect]", "[connect]\ninstance_id = \"connect-crash\"");
    let file = broker.dir.join("connectors.toml");
    std::fs::write(&file, text).expect("configuration written");
    let log = broker.dir.join("connect.log");
    let mut first = baton_connect(&file, &log);
    send(
        &broker,
        &[command(
            &t.commands,
            "lead-9",
            "crm-account",
            "com.acme.crm.account.create",
            json!({"company": "Hooli"}),
        )],
    );
    eventually(60, "the first call", || {
        (!server.requests().is_empty()).then_some(())
    });
    // SIGKILL mid-call: nothing of it was committed.
    first.kill().expect("kill");
    let _ = first.wait();
    gate.open();
    let mut second = baton_connect(&file, &log);
    let (seen, stop) = collector(&broker.bootstrap, std::slice::from_ref(&t.results));
    let m = outcome(&seen, "onboarding/lead-9/crm-account/1");
    assert_eq!(data(&m)["body"], json!({"accountId": "C-9"}));
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "called again after the crash");
    for r in &requests {
        assert_eq!(
            r.header("idempotency-key"),
            Some("onboarding/lead-9/crm-account/1"),
            "the repeated call carries the same idempotency key"
        );
    }
    // The command's offset is committed with the outcome, so nothing will
    // call or publish it again; the result topic holds it once.
    let cfg = config(&broker.bootstrap, &t.group, "check");
    eventually(60, "the command's offset committed", || {
        let c = kafka::committed_offsets(&cfg, &[(t.commands.clone(), 0)]).ok()?;
        (c.get(&(t.commands.clone(), 0)) == Some(&1)).then_some(())
    });
    let all = support::running::committed(&cfg, std::slice::from_ref(&t.results), 2)
        .expect("results read");
    let outcomes = all
        .iter()
        .filter(|m| {
            header(m, "ce_correlationid").as_deref() == Some("onboarding/lead-9/crm-account/1")
        })
        .count();
    assert_eq!(outcomes, 1);
    second.kill().expect("kill");
    let _ = second.wait();
    stop.store(true, Ordering::Relaxed);
}

/// The onboarding example over HTTP, in memory: its scenarios hold.
#[test]
fn the_onboarding_variant_over_http_passes_its_scenarios() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/customer-onboarding");
    let source = std::fs::read_to_string(dir.join("over-http.yaml")).expect("variant");
    let mut ran = 0;
    let mut scenarios: Vec<_> = std::fs::read_dir(dir.join("over-http"))
        .expect("scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    scenarios.sort();
    for path in scenarios {
        let def = baton::dsl::parse("over-http.yaml", &source).unwrap_or_else(|e| panic!("{e}"));
        let mut reg = baton::engine::Registry::default();
        reg.deploy(def, &source).expect("deploy");
        let mut sim = baton::simulate::Simulation::new(reg);
        let text = std::fs::read_to_string(&path).expect("scenario");
        if let Err(e) = sim.run(&path.display().to_string(), &text) {
            panic!("{e}\n--- log ---\n{}", sim.render());
        }
        ran += 1;
    }
    assert!(ran >= 3, "{ran} scenarios");
}

/// The onboarding example end to end: `baton run` with the over-HTTP
/// variant, `baton connect` with `examples/connectors.toml` calling a test
/// credit bureau and CRM, and the ERP answering on Kafka.
#[test]
fn onboarding_runs_end_to_end_through_the_connector() {
    let broker = Broker::start();
    let group = unique("onboarding");
    let events = format!("{group}.events");
    let results = "connector.results".to_string();
    let mut cfg = config(&broker.bootstrap, &group, "baton-0");
    cfg.kafka.input_topics = vec![events.clone(), results.clone()];
    kafka::ensure_topics(
        &cfg,
        &[(events.clone(), 2, false), (results.clone(), 2, false)],
    )
    .expect("input topics");

    let server = Server::start(|r, _| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/v2/checks") => Reply::json(200, json!({"decision": "approved", "limit": 40000})),
        ("PUT", p) if p.starts_with("/api/accounts/") => {
            Reply::json(201, json!({"accountId": "C-12"}))
        }
        _ => Reply::status(404),
    });
    let connectors = include_str!("../examples/connectors.toml")
        .replace("localhost:9092", &broker.bootstrap)
        .replace("\"baton-connect\"", &format!("\"{group}-connect\""))
        .replace("https://bureau.example.com", &server.url())
        .replace("https://crm.example.com", &server.url())
        .replace("listen = \"0.0.0.0:9091\"", "enabled = false");
    // baton first: it creates the command topics the connector consumes.
    let source = include_str!("../examples/customer-onboarding/over-http.yaml");
    let def = baton::dsl::parse("over-http.yaml", source).unwrap_or_else(|e| panic!("{e}"));
    let mut registry = baton::engine::Registry::default();
    registry.deploy(def, source).expect("deploy");
    let runtime = support::running::Running::with(cfg.clone(), registry);
    let connector = Running::start(
        &connectors,
        &[
            ("CREDIT_BUREAU_API_KEY", "bureau-secret"),
            ("CRM_TOKEN", "crm-secret"),
        ],
    );

    let (seen, stop) = collector(
        &broker.bootstrap,
        &["erp.commands".to_string(), "mail.commands".to_string()],
    );
    let lead = cloudevents::structured(
        "lead-1-captured",
        "com.acme.crm.lead.captured",
        "crm",
        baton::runtime::now_ms(),
        &json!({"leadId": "lead-1", "company": "Initech", "email": "ops@initech.example", "requestedCredit": 50000}),
    );
    send(
        &broker,
        &[Outgoing {
            topic: events.clone(),
            partition: None,
            key: b"lead-1".to_vec(),
            payload: Some(lead),
            headers: vec![(
                "content-type".into(),
                b"application/cloudevents+json".to_vec(),
            )],
        }],
    );
    // The ERP is still on Kafka: it answers the customer command.
    eventually(120, "the ERP command", || {
        seen.lock()
            .ok()?
            .iter()
            .any(|m| header(m, "ce_type").as_deref() == Some("com.acme.erp.customer.create"))
            .then_some(())
    });
    let erp = cloudevents::structured(
        "erp-1",
        "com.acme.erp.customer.created",
        "erp",
        baton::runtime::now_ms(),
        &json!({"leadId": "lead-1", "customerId": "E-77"}),
    );
    send(
        &broker,
        &[Outgoing {
            topic: events.clone(),
            partition: None,
            key: b"lead-1".to_vec(),
            payload: Some(erp),
            headers: vec![(
                "content-type".into(),
                b"application/cloudevents+json".to_vec(),
            )],
        }],
    );
    let welcome = eventually(120, "the welcome e-mail", || {
        seen.lock()
            .ok()?
            .iter()
            .find(|m| header(m, "ce_type").as_deref() == Some("com.acme.mail.send"))
            .cloned()
    });
    let mail = data(&welcome);
    assert_eq!(mail["accounts"], json!({"crm": "C-12", "erp": "E-77"}));
    assert_eq!(mail["creditLimit"], 40000);

    let checks = server.requests_to("/v2/checks");
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].header("x-api-key"), Some("bureau-secret"));
    assert_eq!(
        checks[0].header("idempotency-key"),
        Some("customer-onboarding-http/lead-1/credit-check/1")
    );
    assert_eq!(
        checks[0].json(),
        json!({"reference": "lead-1", "company": "Initech", "amount": 50000, "currency": "EUR"})
    );
    let accounts = server.requests_to("/api/accounts/");
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].path, "/api/accounts/lead-1");
    assert_eq!(
        accounts[0].header("authorization"),
        Some("Bearer crm-secret")
    );
    assert_eq!(accounts[0].header("x-acme-tenant"), Some("onboarding"));
    assert_eq!(
        accounts[0].json(),
        json!({"company": "Initech", "email": "ops@initech.example"})
    );
    runtime.stop();
    connector.stop();
    stop.store(true, Ordering::Relaxed);
}
