//! The operator commands against a fake admin API: what they send, what
//! they print and how they exit. The fake records every request and answers
//! with JSON shaped like the admin API v1; no Kafka is involved.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// The raw (still percent-encoded) path.
    path: String,
    query: BTreeMap<String, String>,
    auth: Option<String>,
    body: Value,
}

type Answer = Arc<dyn Fn(&Request) -> (u16, Value) + Send + Sync>;

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Vec<Request>>>,
    answer: Answer,
}

/// A fake admin server on a free port, answering with `answer`.
struct Fake {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    fn start(answer: impl Fn(&Request) -> (u16, Value) + Send + Sync + 'static) -> Fake {
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            log: log.clone(),
            answer: Arc::new(answer),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the fake server");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("a free port");
                tx.send(listener.local_addr().expect("bound"))
                    .expect("the test waits for the address");
                let app = Router::new().fallback(record).with_state(shared);
                axum::serve(listener, app).await.expect("the fake serves");
            });
        });
        let addr = rx.recv().expect("the fake server starts");
        Fake { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().expect("log").clone()
    }

    /// Runs `baton ARGS --server <this>` with no token in the environment.
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let url = self.url();
        all.extend(["--server", &url]);
        baton(&all, &[])
    }
}

async fn record(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = Request {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(parse_query).unwrap_or_default(),
        auth: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let (status, value) = (s.answer)(&req);
    s.log.lock().expect("log").push(req);
    (
        StatusCode::from_u16(status).expect("a status code"),
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

struct Output {
    code: i32,
    out: String,
    err: String,
}

fn baton(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("BATON_TOKEN")
        .env_remove("BATON_ADMIN_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the baton binary runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn error(status: u16, message: &str) -> (u16, Value) {
    (status, json!({"error": message}))
}

fn summary(process: &str, key: &str, status: &str, steps: &[&str]) -> Value {
    json!({
        "id": format!("{process}/{key}"), "process": process, "key": key, "version": 1,
        "status": status, "steps": steps, "incidents": if steps.contains(&"charge") { 1 } else { 0 },
        "started_at": "2026-03-01T10:00:00.000Z", "updated_at": "2026-03-01T10:05:00.000Z",
        "ended_at": null, "shard": 3,
    })
}

fn incident(instance: &str, id: u64, age: f64) -> Value {
    let (process, key) = instance.split_once('/').expect("p/k");
    json!({
        "instance": instance, "process": process, "key": key, "version": 1, "id": id,
        "step": "charge", "reason": "payment provider answered 503", "at": "2026-03-01T10:02:00.000Z",
        "age_seconds": age,
    })
}

fn job(id: &str, state: &str, applied: u64, errors: &[&str]) -> Value {
    json!({
        "id": id, "action": "retry", "filter": {"process": "order-to-cash"}, "reason": "provider back",
        "by": "ops", "state": state, "matched": 10, "published": 10, "applied": applied,
        "errors": errors, "created_at": "2026-03-01T11:00:00.000Z",
    })
}

fn accepted(instance: &str) -> (u16, Value) {
    (
        202,
        json!({"request": "req-1", "instance": instance, "partition": 3}),
    )
}

#[test]
fn instances_sends_the_filters_and_prints_a_table() {
    let fake = Fake::start(|_| {
        (
            200,
            json!({
                "instances": [
                    summary("order-to-cash", "o-42", "active", &["charge"]),
                    summary("order-to-cash", "o-43", "active", &["charge", "ship"]),
                ],
                "next": "cursor-2",
            }),
        )
    });
    let o = fake.run(&[
        "instances",
        "--process",
        "order-to-cash",
        "--version",
        "1",
        "--status",
        "active",
        "--step",
        "charge",
        "--incident",
        "--key-prefix",
        "o-",
        "--limit",
        "2",
        "--token",
        "secret",
    ]);
    assert_eq!(o.code, 0, "{}{}", o.out, o.err);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("GET", "/api/v1/instances")
    );
    let want: BTreeMap<String, String> = [
        ("process", "order-to-cash"),
        ("version", "1"),
        ("status", "active"),
        ("step", "charge"),
        ("incident", "true"),
        ("key_prefix", "o-"),
        ("limit", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(r.query, want);
    assert_eq!(r.auth.as_deref(), Some("Bearer secret"));

    let lines: Vec<&str> = o.out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.out);
    for (line, cells) in lines.iter().zip([
        vec!["ID", "VERSION", "STATUS", "STEPS", "INCIDENTS", "STARTED"],
        vec![
            "order-to-cash/o-42",
            "1",
            "active",
            "charge",
            "2026-03-01T10:00:00.000Z",
        ],
        vec!["order-to-cash/o-43", "active", "charge,ship"],
    ]) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for c in cells {
            assert!(words.contains(&c), "{c} in {line}");
        }
    }
    // Columns line up: the status column starts at the same place in every row.
    let at: Vec<Option<usize>> = lines
        .iter()
        .map(|l| l.find("STATUS").or_else(|| l.find("active")))
        .collect();
    assert!(at.windows(2).all(|w| w[0] == w[1]), "{}", o.out);
    assert!(o.err.contains("more: --after cursor-2"), "{}", o.err);

    // The next page is asked for with the cursor.
    let o = fake.run(&["instances", "--after", "cursor-2"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let reqs = fake.requests();
    assert_eq!(
        reqs[1].query.get("after").map(String::as_str),
        Some("cursor-2")
    );
    assert_eq!(reqs[1].auth, None, "no token, no header");
}

#[test]
fn the_token_comes_from_baton_token_and_the_server_from_baton_admin_url() {
    let fake = Fake::start(|_| (200, json!({"instances": [], "next": null})));
    let url = fake.url();
    let o = baton(
        &["instances"],
        &[("BATON_TOKEN", "from-env"), ("BATON_ADMIN_URL", &url)],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(o.out.contains("no instances"), "{}", o.out);
    let o = baton(
        &["instances", "--token", "from-flag"],
        &[("BATON_TOKEN", "from-env"), ("BATON_ADMIN_URL", &url)],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    let auth: Vec<Option<String>> = fake.requests().into_iter().map(|r| r.auth).collect();
    assert_eq!(
        auth,
        [
            Some("Bearer from-env".into()),
            Some("Bearer from-flag".into())
        ]
    );
}

#[test]
fn all_follows_every_page() {
    let fake = Fake::start(|r| match r.query.get("after").map(String::as_str) {
        None => (
            200,
            json!({"instances": [summary("p", "a", "active", &["x"])], "next": "c1"}),
        ),
        Some("c1") => (
            200,
            json!({"instances": [summary("p", "b", "completed", &[])], "next": null}),
        ),
        Some(other) => error(400, &format!("unknown cursor {other}")),
    });
    let o = fake.run(&["instances", "--all", "--process", "p"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].query.get("after").map(String::as_str), Some("c1"));
    assert_eq!(reqs[1].query.get("process").map(String::as_str), Some("p"));
    assert!(o.out.contains("p/a") && o.out.contains("p/b"), "{}", o.out);
    assert!(!o.err.contains("more:"), "{}", o.err);

    let o = fake.run(&["instances", "--all", "--json"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let v: Value = serde_json::from_str(&o.out).expect("--json prints JSON");
    let ids: Vec<&str> = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["p/a", "p/b"]);
}

fn detail() -> Value {
    let mut d = summary("order-to-cash", "o/42", "active", &["charge"]);
    let extra = json!({
        "definition": {"process": "order-to-cash", "version": 1, "hash": "abc123"},
        "vars": {"amount": 120, "customer": "c-7"},
        "tokens": [{"step": "charge", "phase": "waiting", "attempt": 2}],
        "timers": [{"id": "charge/2/timeout", "due": "2026-03-01T10:10:00.000Z", "kind": "timeout"}],
        "buffered": [],
        "open_incidents": [incident("order-to-cash/o/42", 1, 192.5)],
        "transitions": 12,
        "parent": null,
        "history": [
            {"at": "2026-03-01T10:00:00.000Z", "input": {"kind": "event", "type": "order.placed"},
             "before": [], "after": ["reserve"], "status": "active"},
            {"at": "2026-03-01T10:01:00.000Z", "input": {"kind": "event", "type": "stock.reserved"},
             "before": ["reserve"], "after": ["charge"], "status": "active"},
        ],
    });
    for (k, v) in extra.as_object().expect("object") {
        d[k] = v.clone();
    }
    d
}

#[test]
fn instance_shows_a_readable_block_and_encodes_the_key() {
    let fake = Fake::start(|r| match r.path.as_str() {
        "/api/v1/instances/order-to-cash/o%2F42" => (200, detail()),
        _ => error(404, "no such instance"),
    });
    let o = fake.run(&["instance", "order-to-cash/o/42"]);
    assert_eq!(o.code, 0, "{}", o.err);
    for want in [
        "order-to-cash/o/42",
        "status",
        "active",
        "1 (hash abc123)",
        "charge (waiting, attempt 2)",
        "amount",
        "120",
        "\"c-7\"",
        "charge/2/timeout",
        "timeout",
        "payment provider answered 503",
        "3m12s",
        "event type=order.placed",
        "- → reserve",
        "reserve → charge",
    ] {
        assert!(o.out.contains(want), "{want} in\n{}", o.out);
    }
    // The same instance named by key and --process.
    let o = fake.run(&["instance", "o/42", "--process", "order-to-cash", "--json"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let v: Value = serde_json::from_str(&o.out).expect("--json prints JSON");
    assert_eq!(v, detail());
}

#[test]
fn incidents_table_shows_instance_step_age_and_reason() {
    let fake = Fake::start(|_| {
        (
            200,
            json!({"incidents": [incident("order-to-cash/o-42", 3, 192.5), incident("order-to-cash/o-9", 1, 7300.0)], "next": null}),
        )
    });
    let o = fake.run(&[
        "incidents",
        "--process",
        "order-to-cash",
        "--step",
        "charge",
    ]);
    assert_eq!(o.code, 0, "{}", o.err);
    let r = &fake.requests()[0];
    assert_eq!(r.path, "/api/v1/incidents");
    assert_eq!(
        r.query.get("process").map(String::as_str),
        Some("order-to-cash")
    );
    assert_eq!(r.query.get("step").map(String::as_str), Some("charge"));
    let lines: Vec<&str> = o.out.lines().collect();
    assert!(
        lines[0].contains("INSTANCE") && lines[0].contains("AGE") && lines[0].contains("REASON")
    );
    assert!(
        lines[1].contains("order-to-cash/o-42") && lines[1].contains("3m12s"),
        "{}",
        o.out
    );
    assert!(
        lines[2].contains("2h01m") && lines[2].contains("payment provider answered 503"),
        "{}",
        o.out
    );
}

#[test]
fn actions_post_their_body_with_the_reason() {
    let fake = Fake::start(|r| {
        let instance = r
            .path
            .trim_start_matches("/api/v1/instances/")
            .trim_end_matches("/actions")
            .to_string();
        accepted(&instance)
    });
    let runs: [(&[&str], Value); 6] = [
        (
            &[
                "retry",
                "order-to-cash/o-42",
                "--reason",
                "provider back",
                "--incident",
                "3",
            ],
            json!({"action": "retry", "reason": "provider back", "incident": 3}),
        ),
        (
            &[
                "skip",
                "o-42",
                "--process",
                "order-to-cash",
                "--reason",
                "paid by hand",
            ],
            json!({"action": "skip", "reason": "paid by hand"}),
        ),
        (
            &[
                "cancel",
                "order-to-cash/o-42",
                "--reason",
                "duplicate",
                "--compensate",
            ],
            json!({"action": "cancel", "reason": "duplicate", "compensate": true}),
        ),
        (
            &["cancel", "order-to-cash/o-42", "--reason", "duplicate"],
            json!({"action": "cancel", "reason": "duplicate", "compensate": false}),
        ),
        (
            &[
                "set",
                "order-to-cash/o-42",
                "amount",
                "42.5",
                "--reason",
                "typo",
            ],
            json!({"action": "set", "reason": "typo", "name": "amount", "value": 42.5}),
        ),
        (
            &[
                "set",
                "order-to-cash/o-42",
                "note",
                "call me",
                "--reason",
                "typo",
            ],
            json!({"action": "set", "reason": "typo", "name": "note", "value": "call me"}),
        ),
    ];
    for (args, _) in &runs {
        let o = fake.run(args);
        assert_eq!(o.code, 0, "{args:?}: {}", o.err);
        assert!(
            o.out.contains("requested for order-to-cash/o-42"),
            "{}",
            o.out
        );
        assert!(o.out.contains("request req-1"), "{}", o.out);
    }
    let reqs = fake.requests();
    assert_eq!(reqs.len(), runs.len());
    for (r, (args, body)) in reqs.iter().zip(&runs) {
        assert_eq!(r.method, "POST", "{args:?}");
        assert_eq!(
            r.path, "/api/v1/instances/order-to-cash/o-42/actions",
            "{args:?}"
        );
        assert_eq!(&r.body, body, "{args:?}");
    }

    // --reason is required: clap refuses before any request.
    let o = fake.run(&["retry", "order-to-cash/o-42"]);
    assert_eq!(o.code, 2, "{}", o.err);
    assert!(o.err.contains("--reason"), "{}", o.err);
    assert_eq!(fake.requests().len(), runs.len());
}

#[test]
fn a_bulk_filter_creates_a_job_and_follows_it_until_done() {
    let polls = Arc::new(AtomicUsize::new(0));
    let seen = polls.clone();
    let fake = Fake::start(move |r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v1/jobs") => (202, job("j-1", "running", 0, &[])),
        ("GET", "/api/v1/jobs/j-1") => {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                (200, job("j-1", "running", 4, &[]))
            } else {
                (200, job("j-1", "done", 10, &[]))
            }
        }
        _ => error(404, "no route"),
    });
    let o = fake.run(&[
        "retry",
        "--filter",
        "process=order-to-cash,step=charge,incident=true,status=active,version=1,key_prefix=o-,started_after=2026-01-01T00:00:00Z",
        "--reason",
        "provider back",
        "--token",
        "op",
    ]);
    assert_eq!(o.code, 0, "{}{}", o.out, o.err);
    let reqs = fake.requests();
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/api/v1/jobs");
    assert_eq!(
        reqs[0].body,
        json!({
            "filter": {
                "process": "order-to-cash", "step": "charge", "incident": true, "status": "active",
                "version": 1, "key_prefix": "o-", "started_after": "2026-01-01T00:00:00Z",
            },
            "action": {"action": "retry"},
            "reason": "provider back",
        })
    );
    assert_eq!(reqs.len(), 3, "one POST, then polls until done: {reqs:?}");
    assert!(
        reqs[1..]
            .iter()
            .all(|r| r.path == "/api/v1/jobs/j-1" && r.auth.as_deref() == Some("Bearer op"))
    );
    assert!(o.err.contains("job j-1"), "{}", o.err);
    assert!(o.err.contains("applied 4"), "progress is shown: {}", o.err);
    assert!(
        o.out
            .contains("job j-1 done: matched 10, published 10, applied 10"),
        "{}",
        o.out
    );

    // --no-wait prints the job and stops after the POST.
    let o = fake.run(&[
        "set",
        "priority",
        "\"high\"",
        "--filter",
        "process=order-to-cash",
        "--reason",
        "vip",
        "--no-wait",
    ]);
    assert_eq!(o.code, 0, "{}", o.err);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(
        reqs[3].body,
        json!({"filter": {"process": "order-to-cash"}, "action": {"action": "set", "name": "priority", "value": "high"}, "reason": "vip"})
    );
    assert!(o.out.contains("job j-1 running"), "{}", o.out);
}

#[test]
fn a_bulk_job_that_ends_with_errors_exits_6() {
    let fake = Fake::start(|r| match r.method.as_str() {
        "POST" => (202, job("j-2", "running", 0, &[])),
        _ => (
            200,
            job("j-2", "done", 9, &["order-to-cash/o-7: no open incident"]),
        ),
    });
    let o = fake.run(&[
        "cancel",
        "--filter",
        "process=order-to-cash",
        "--reason",
        "test",
        "--json",
    ]);
    assert_eq!(o.code, 6, "{}{}", o.out, o.err);
    let v: Value = serde_json::from_str(&o.out).expect("--json prints the final job");
    assert_eq!(v["state"], "done");
    assert!(o.err.contains("job j-2 ended with 1 error"), "{}", o.err);
    assert_eq!(
        fake.requests()[0].body["action"],
        json!({"action": "cancel", "compensate": false})
    );
}

#[test]
fn deploy_validates_locally_then_posts_each_file() {
    let fake = Fake::start(|r| {
        let source = r.body["source"].as_str().unwrap_or_default();
        if source.contains("process: order-to-cash") {
            (
                201,
                json!({"process": "order-to-cash", "version": 1, "hash": "0123456789abcdef", "created": true}),
            )
        } else {
            (
                200,
                json!({"process": "customer-onboarding", "version": 1, "hash": "ff", "created": false}),
            )
        }
    });
    let o = fake.run(&[
        "deploy",
        "examples/order-to-cash.yaml",
        "examples/customer-onboarding.yaml",
        "--token",
        "op",
    ]);
    assert_eq!(o.code, 0, "{}{}", o.out, o.err);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/order-to-cash.yaml"
    ))
    .expect("the example");
    assert_eq!(reqs[0].path, "/api/v1/definitions");
    assert_eq!(
        reqs[0].body,
        json!({"source": source, "file": "order-to-cash.yaml"})
    );
    assert!(
        o.out
            .contains("examples/order-to-cash.yaml: created order-to-cash v1 (0123456789ab)"),
        "{}",
        o.out
    );
    assert!(
        o.out.contains("customer-onboarding v1 already deployed"),
        "{}",
        o.out
    );

    // An invalid file is reported with file:line:col and nothing is sent.
    let dir = std::env::temp_dir().join(format!("baton-cli-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "process: bad\nversion: 1\nstart: { on: x, key: event.data.id }\nsteps:\n  - id: a\n    await: [ { on: y, goto: b } ]\n",
    )
    .expect("write");
    let o = fake.run(&[
        "deploy",
        "examples/order-to-cash.yaml",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.code, 5, "{}", o.err);
    assert!(
        o.err
            .contains("bad.yaml:6:29: error: steps[0].await[0].goto"),
        "{}",
        o.err
    );
    assert!(o.err.contains("nothing deployed"), "{}", o.err);
    assert_eq!(
        fake.requests().len(),
        2,
        "no request for an invalid set of files"
    );
}

#[test]
fn refusals_print_the_diagnostics_and_exit_5() {
    let fake = Fake::start(|_| {
        (
            422,
            json!({"error": "invalid definition", "diagnostics": ["order-to-cash.yaml:3:5: uses a newer field"]}),
        )
    });
    let o = fake.run(&["deploy", "examples/order-to-cash.yaml"]);
    assert_eq!(o.code, 5, "{}", o.err);
    assert!(
        o.err.contains("refused (422): invalid definition"),
        "{}",
        o.err
    );
    assert!(
        o.err.contains("order-to-cash.yaml:3:5: uses a newer field"),
        "{}",
        o.err
    );

    let fake = Fake::start(|_| error(409, "order-to-cash v1 is deployed with other content"));
    let o = fake.run(&["deploy", "examples/order-to-cash.yaml"]);
    assert_eq!(o.code, 5, "{}", o.err);
    assert!(
        o.err
            .contains("refused (409): order-to-cash v1 is deployed with other content"),
        "{}",
        o.err
    );
}

#[test]
fn status_codes_become_exit_codes() {
    let fake = Fake::start(|r| match r.path.as_str() {
        "/api/v1/instances/p/missing" => error(404, "no instance p/missing"),
        "/api/v1/instances/p/secret" => error(401, "no token"),
        "/api/v1/instances/p/k/actions" => error(403, "viewer may not act"),
        "/api/v1/instances/p/broken" => error(503, "shard 3's owner cannot be reached"),
        _ => error(400, "bad filter"),
    });
    let o = fake.run(&["instance", "p/missing"]);
    assert_eq!((o.code, o.out.as_str()), (3, ""), "{}", o.err);
    assert!(
        o.err.starts_with("error: not found: no instance p/missing"),
        "{}",
        o.err
    );

    let o = fake.run(&["instance", "p/secret"]);
    assert_eq!(o.code, 4, "{}", o.err);
    assert!(
        o.err.contains("401") && o.err.contains("--token") && o.err.contains("BATON_TOKEN"),
        "{}",
        o.err
    );

    let o = fake.run(&["retry", "p/k", "--reason", "r", "--token", "viewer"]);
    assert_eq!(o.code, 4, "{}", o.err);
    assert!(
        o.err.contains("forbidden (403): viewer may not act") && o.err.contains("operator token"),
        "{}",
        o.err
    );

    let o = fake.run(&["instance", "p/broken"]);
    assert_eq!(o.code, 1, "{}", o.err);
    assert!(
        o.err.contains("503") && o.err.contains("cannot be reached"),
        "{}",
        o.err
    );

    let o = fake.run(&["instances"]);
    assert_eq!(o.code, 1, "{}", o.err);
    assert!(o.err.contains("400: bad filter"), "{}", o.err);

    // An id that is no process/key is a usage error; nothing is sent.
    let before = fake.requests().len();
    let o = fake.run(&["instance", "just-a-key"]);
    assert_eq!(o.code, 2, "{}", o.err);
    assert_eq!(fake.requests().len(), before);
}

#[test]
fn an_unreachable_server_exits_1_and_names_the_url() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let o = baton(&["cluster", "--server", &url], &[]);
    assert_eq!(o.code, 1, "{}", o.err);
    assert!(
        o.err.starts_with("error: cannot reach the admin API at "),
        "{}",
        o.err
    );
    assert!(
        o.err.contains(&url) && o.err.contains("BATON_ADMIN_URL"),
        "{}",
        o.err
    );
}

#[test]
fn audit_replay_with_mismatches_exits_6() {
    let fake = Fake::start(|r| match r.query.get("partition").map(String::as_str) {
        Some("2") => (
            200,
            json!({"checked": 120, "matched": 119, "mismatched": [{"instance": "p/k", "reason": "step differs at transition 4"}]}),
        ),
        _ => (200, json!({"checked": 1, "matched": 1, "mismatched": []})),
    });
    let o = fake.run(&["audit", "replay", "--partition", "2"]);
    assert_eq!(o.code, 6, "{}{}", o.out, o.err);
    assert!(o.out.contains("checked 120, matched 119"), "{}", o.out);
    assert!(
        o.out.contains("p/k") && o.out.contains("step differs at transition 4"),
        "{}",
        o.out
    );

    let o = fake.run(&[
        "audit",
        "replay",
        "--process",
        "order-to-cash",
        "--key",
        "o-1",
    ]);
    assert_eq!(o.code, 0, "{}", o.err);
    let r = &fake.requests()[1];
    assert_eq!(r.path, "/api/v1/audit/replay");
    assert_eq!(
        r.query.get("process").map(String::as_str),
        Some("order-to-cash")
    );
    assert_eq!(r.query.get("key").map(String::as_str), Some("o-1"));
}

#[test]
fn migrate_reports_blocked_instances_and_runs_the_job() {
    let fake = Fake::start(|r| match (r.method.as_str(), r.body["dry_run"].as_bool()) {
        ("POST", Some(true)) => (
            200,
            json!({"movable": ["p/a", "p/b"], "blocked": [{"instance": "p/c", "reasons": ["step `old` is not in v2", "a timer of `old` is pending"]}], "job": null}),
        ),
        ("POST", _) => (
            202,
            json!({"movable": ["p/a", "p/b"], "blocked": [], "job": job("m-1", "running", 0, &[])}),
        ),
        _ => (200, job("m-1", "done", 2, &[])),
    });
    let o = fake.run(&[
        "migrate",
        "--process",
        "p",
        "--from",
        "1",
        "--to",
        "2",
        "--map",
        "old=new",
        "--dry-run",
        "--reason",
        "v2 fixes the tax rule",
    ]);
    assert_eq!(o.code, 6, "{}{}", o.out, o.err);
    assert!(o.out.contains("2 movable, 1 blocked"), "{}", o.out);
    assert!(
        o.out.contains("p/c")
            && o.out
                .contains("step `old` is not in v2; a timer of `old` is pending"),
        "{}",
        o.out
    );
    let r = &fake.requests()[0];
    assert_eq!(r.path, "/api/v1/migrations");
    assert_eq!(
        r.body,
        json!({"process": "p", "from": 1, "to": 2, "steps": {"old": "new"}, "dry_run": true, "reason": "v2 fixes the tax rule"})
    );

    let o = fake.run(&[
        "migrate",
        "--process",
        "p",
        "--from",
        "1",
        "--to",
        "2",
        "--reason",
        "go",
    ]);
    assert_eq!(o.code, 0, "{}{}", o.out, o.err);
    assert!(o.out.contains("job m-1 done"), "{}", o.out);
    let reqs = fake.requests();
    assert_eq!(reqs[1].body["dry_run"], false);
    assert_eq!(reqs[2].path, "/api/v1/jobs/m-1");
}

#[test]
fn read_commands_print_tables() {
    let fake = Fake::start(|r| match r.path.as_str() {
        "/api/v1/definitions" => (
            200,
            json!({"definitions": [{"process": "order-to-cash", "version": 2, "hash": "deadbeefcafe0000", "steps": ["reserve", "charge", "ship"], "deployed_at": "2026-03-01T09:00:00.000Z", "deployed_by": "ops", "file": "order-to-cash.yaml", "latest": true}]}),
        ),
        "/api/v1/definitions/order-to-cash/2" => (
            200,
            json!({"process": "order-to-cash", "version": 2, "hash": "deadbeef", "steps": [], "deployed_at": null, "deployed_by": null, "file": null, "latest": true, "source": "process: order-to-cash\nversion: 2\n"}),
        ),
        "/api/v1/cluster" => (
            200,
            json!({"partitions": 8, "members": [
                {"id": "b-1", "admin": "http://10.0.0.1:8080", "shards": [0, 1, 2, 3], "restoring": [], "ready": true, "seen_seconds_ago": 0.0, "self": true},
                {"id": "b-2", "admin": "http://10.0.0.2:8080", "shards": [4, 5, 7], "restoring": [6], "ready": false, "seen_seconds_ago": 75.0, "self": false},
            ]}),
        ),
        "/api/v1/jobs" => (
            200,
            json!({"jobs": [job("j-1", "done", 10, &[]), job("j-2", "running", 3, &[])]}),
        ),
        "/api/v1/jobs/j-1" => (200, job("j-1", "done", 10, &["p/x: gone"])),
        "/api/v1/audit/order-to-cash/o-42" => (200, json!({"entries": detail()["history"]})),
        _ => error(404, "no route"),
    });
    let o = fake.run(&["definitions"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let row: Vec<&str> = o
        .out
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    for c in [
        "order-to-cash",
        "2",
        "yes",
        "deadbeefcafe",
        "3",
        "ops",
        "order-to-cash.yaml",
    ] {
        assert!(row.contains(&c), "{c} in {row:?}");
    }

    let o = fake.run(&["definition", "order-to-cash", "2"]);
    assert_eq!(
        (o.code, o.out.as_str()),
        (0, "process: order-to-cash\nversion: 2\n"),
        "{}",
        o.err
    );

    let o = fake.run(&["cluster"]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(o.out.contains("partitions: 8"), "{}", o.out);
    let b1 = o.out.lines().find(|l| l.contains("b-1")).expect("b-1");
    assert!(
        b1.contains("(this)") && b1.contains("0-3") && b1.contains("yes"),
        "{b1}"
    );
    let b2 = o.out.lines().find(|l| l.contains("b-2")).expect("b-2");
    assert!(
        b2.contains("4-5,7") && b2.contains(" 6 ") && b2.contains("no") && b2.contains("1m15s ago"),
        "{b2}"
    );

    let o = fake.run(&["jobs"]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert_eq!(o.out.lines().count(), 3, "{}", o.out);
    assert!(
        o.out
            .lines()
            .any(|l| l.contains("j-2") && l.contains("running") && l.contains("retry")),
        "{}",
        o.out
    );

    let o = fake.run(&["jobs", "j-1"]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(
        o.out.contains("matched 10, published 10, applied 10") && o.out.contains("p/x: gone"),
        "{}",
        o.out
    );

    let o = fake.run(&["audit", "order-to-cash/o-42"]);
    assert_eq!(o.code, 0, "{}", o.err);
    let lines: Vec<&str> = o.out.lines().collect();
    assert!(
        lines[0].contains("TIME") && lines[0].contains("BEFORE → AFTER"),
        "{}",
        o.out
    );
    assert!(
        lines[2].contains("event type=stock.reserved") && lines[2].contains("reserve → charge"),
        "{}",
        o.out
    );

    let o = fake.run(&["cluster", "--json"]);
    let v: Value = serde_json::from_str(&o.out).expect("--json prints JSON");
    assert_eq!(v["members"][1]["restoring"], json!([6]));
}
