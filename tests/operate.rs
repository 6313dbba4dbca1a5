//! The admin API of `baton run` against the test broker: tokens and roles,
//! instances listed, filtered and paged from the live index, one instance in
//! full, definitions, this member's shards and the OpenAPI document, read
//! over HTTP and through the `baton` CLI.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use baton::kafka::{Outgoing, PlainProducer};
use baton::wire::cloudevents;
use serde_json::{Value, json};

use support::admin::{Baton, OPERATOR, VIEWER};
use support::orders::Topics;
use support::{Broker, eventually, unique};

const PARTITIONS: i32 = 2;

/// `GET /api/v1{path}` with `token` → (status, JSON body).
fn api(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    call(admin, "GET", path, token)
}

fn call(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    send(admin, method, path, token, json!({}))
}

/// `POST /api/v1{path}` with a JSON body and an operator's token.
fn post(admin: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    send(admin, "POST", path, Some(OPERATOR), body)
}

fn send(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{admin}/api/v1{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let answer = match method {
        "GET" => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_json(body)
        }
    };
    let mut answer = answer.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = answer.status().as_u16();
    let body = answer.body_mut().read_to_string().expect("body");
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
    (status, value)
}

fn event(t: &Topics, kind: &str, id: &str, data: Value) -> Outgoing {
    Outgoing {
        topic: t.input.clone(),
        partition: None,
        key: id.as_bytes().to_vec(),
        payload: Some(cloudevents::structured(id, kind, "crm", 0, &data)),
        headers: vec![(
            "content-type".to_string(),
            b"application/cloudevents+json".to_vec(),
        )],
    }
}

fn placed(t: &Topics, n: &str) -> Outgoing {
    event(
        t,
        "com.acme.order.placed",
        &format!("placed-{n}"),
        json!({"orderId": n, "customerId": "c-1", "total": 120, "lines": [{"sku": "A", "qty": 1}], "address": "1 Main St"}),
    )
}

fn ids(page: &Value) -> Vec<String> {
    page["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect()
}

fn cli(admin: SocketAddr, args: &[&str]) -> (i32, String) {
    cli_as(admin, VIEWER, args)
}

fn cli_as(admin: SocketAddr, token: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env("BATON_ADMIN_URL", format!("http://{admin}"))
        .env("BATON_TOKEN", token)
        .output()
        .expect("baton runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// One `baton run` of its own group, with a viewer and an operator token,
/// ready to serve.
struct Setup {
    broker: Broker,
    t: Topics,
    group: String,
    admin: SocketAddr,
    _baton: Baton,
}

fn start(name: &str) -> Setup {
    let broker = Broker::start();
    let group = unique(name);
    let t = Topics::of(&group);
    let (admin, _baton) = member(&broker, &group, "operate-1");
    eventually(60, "/readyz to answer 200", || {
        support::admin::get(admin, "/readyz").filter(|(s, _)| *s == 200)
    });
    Setup {
        broker,
        t,
        group,
        admin,
        _baton,
    }
}

/// Starts `baton run` as member `instance` of `group`, with a viewer and an
/// operator token; returns its admin address.
fn member(broker: &Broker, group: &str, instance: &str) -> (SocketAddr, Baton) {
    support::admin::member(broker, group, instance, PARTITIONS)
}

#[test]
fn the_admin_api_lists_filters_pages_and_details_live_instances() {
    let Setup {
        broker,
        t,
        admin,
        _baton: _running,
        ..
    } = start("operate");

    // Tokens and roles; health stays open.
    assert_eq!(
        support::admin::get(admin, "/healthz").map(|r| r.0),
        Some(200)
    );
    let (status, body) = api(admin, "/instances", None);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("Bearer")));
    assert_eq!(api(admin, "/instances", Some("not-a-token-at-all")).0, 401);
    let (status, body) = call(admin, "POST", "/jobs", Some(VIEWER));
    assert_eq!(status, 403, "a viewer may not act: {body}");
    let (status, body) = call(admin, "POST", "/jobs", Some(OPERATOR));
    assert_eq!(status, 400, "an operator passes the role check: {body}");

    // Three orders wait at `reserve` (no ERP answers); o-3 is then refused
    // by the ERP and fails.
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in ["o-1", "o-2", "o-3"] {
        producer.send(&placed(&t, n)).expect("send");
    }
    producer
        .send(&event(
            &t,
            "com.acme.inventory.unavailable",
            "unavailable-o-3",
            json!({"orderId": "o-3"}),
        ))
        .expect("send");
    producer.flush().expect("flush");
    eventually(60, "o-1, o-2 active and o-3 failed in the index", || {
        let (_, page) = api(admin, "/instances?process=order-to-cash", Some(VIEWER));
        let list = page["instances"].as_array()?.clone();
        let status = |id: &str| {
            list.iter()
                .find(|i| i["id"] == json!(id))
                .and_then(|i| i["status"].as_str().map(str::to_string))
        };
        (status("order-to-cash/o-1").as_deref() == Some("active")
            && status("order-to-cash/o-2").as_deref() == Some("active")
            && status("order-to-cash/o-3").as_deref() == Some("failed"))
        .then_some(())
    });

    // Filters.
    let q = |query: &str| ids(&api(admin, &format!("/instances?{query}"), Some(VIEWER)).1);
    assert_eq!(q("status=failed"), ["order-to-cash/o-3"]);
    assert_eq!(
        q("status=active&step=reserve"),
        ["order-to-cash/o-1", "order-to-cash/o-2"]
    );
    assert_eq!(q("key_prefix=o-2"), ["order-to-cash/o-2"]);
    assert_eq!(q("process=customer-onboarding"), Vec::<String>::new());
    assert_eq!(q("started_after=2000-01-01T00:00:00Z").len(), 3);
    assert!(q("started_before=2000-01-01T00:00:00Z").is_empty());
    assert_eq!(q("ended_after=0"), ["order-to-cash/o-3"]);
    let (status, body) = api(admin, "/instances?status=running", Some(VIEWER));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("status")));

    // Cursor paging: two pages of two, in id order, nothing twice.
    let (_, first) = api(admin, "/instances?limit=2", Some(VIEWER));
    assert_eq!(ids(&first), ["order-to-cash/o-1", "order-to-cash/o-2"]);
    let next = first["next"].as_str().expect("a next cursor");
    let (_, second) = api(
        admin,
        &format!("/instances?limit=2&after={next}"),
        Some(VIEWER),
    );
    assert_eq!(ids(&second), ["order-to-cash/o-3"]);
    assert!(second["next"].is_null());

    // One instance in full.
    let (status, d) = api(admin, "/instances/order-to-cash/o-1", Some(VIEWER));
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["status"], json!("active"));
    assert_eq!(d["version"], json!(1));
    assert_eq!(d["steps"], json!(["reserve"]));
    assert_eq!(d["vars"]["total"], json!(120));
    assert_eq!(d["tokens"][0]["step"], json!("reserve"));
    assert_eq!(d["tokens"][0]["phase"], json!("awaiting"));
    assert!(
        d["timers"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["kind"] == json!("timeout"))),
        "the reserve timeout is pending: {d}"
    );
    assert!(
        d["definition"]["hash"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    let (status, body) = api(admin, "/instances/order-to-cash/o-404", Some(VIEWER));
    assert_eq!(status, 404, "{body}");

    // Definitions, the member's shards, the document.
    let (_, defs) = api(admin, "/definitions", Some(VIEWER));
    let o2c = defs["definitions"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["process"] == json!("order-to-cash")))
        .expect("order-to-cash deployed")
        .clone();
    assert_eq!(o2c["instances"], json!(3));
    assert_eq!(o2c["latest"], json!(true));
    let (status, one) = api(admin, "/definitions/order-to-cash/1", Some(VIEWER));
    assert_eq!(status, 200);
    assert!(
        one["source"]
            .as_str()
            .is_some_and(|s| s.contains("process: order-to-cash"))
    );
    let (_, cluster) = api(admin, "/cluster", Some(VIEWER));
    assert_eq!(cluster["members"][0]["id"], json!("operate-1"));
    assert_eq!(cluster["members"][0]["shards"], json!([0, 1]));
    assert_eq!(cluster["members"][0]["ready"], json!(true));
    let (_, doc) = api(admin, "/openapi.json", Some(VIEWER));
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );

    // The CLI reads the same API.
    let (code, out) = cli(admin, &["instances", "--status", "failed"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("order-to-cash/o-3") && !out.contains("o-1"),
        "{out}"
    );
    let (code, out) = cli(admin, &["instance", "order-to-cash/o-2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reserve") && out.contains("active"), "{out}");
    let (code, _) = cli(admin, &["instance", "order-to-cash/o-404"]);
    assert_eq!(code, 3, "not found");
}

/// The status of one instance, and the attempt its first token is at.
fn state(admin: SocketAddr, key: &str) -> (String, u64, u64) {
    let (_, d) = api(
        admin,
        &format!("/instances/order-to-cash/{key}"),
        Some(VIEWER),
    );
    (
        d["status"].as_str().unwrap_or("").to_string(),
        d["tokens"][0]["attempt"].as_u64().unwrap_or(0),
        d["incidents"].as_array().map_or(0, |i| i.len() as u64),
    )
}

/// Waits until a request has an outcome; returns its state and reason.
fn outcome(admin: SocketAddr, request: &str) -> (String, String) {
    eventually(60, &format!("an outcome of request {request}"), || {
        let (_, r) = api(admin, &format!("/requests/{request}"), Some(VIEWER));
        let state = r["state"].as_str()?.to_string();
        (state != "pending").then(|| (state, r["reason"].as_str().unwrap_or("").to_string()))
    })
}

#[test]
fn operators_retry_skip_and_cancel_through_kafka_one_by_one_and_in_bulk() {
    let Setup {
        broker,
        t,
        group,
        admin,
        _baton: _running,
    } = start("act");
    let dead_letters = format!("{group}.baton.dead-letters");
    let (seen, stop_seen) = support::running::collector(
        &broker.bootstrap,
        &[dead_letters.clone(), t.commands[0].clone()],
    );
    // Five orders reach `charge`; o-1, o-2 and o-3 get a charge answer their
    // `set` cannot read (no paymentId): each is parked in an incident.
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    let orders = ["o-1", "o-2", "o-3", "o-4"];
    for n in orders {
        producer.send(&placed(&t, n)).expect("send");
        producer
            .send(&event(
                &t,
                "com.acme.inventory.reserved",
                &format!("reserved-{n}"),
                json!({"orderId": n, "reservationId": format!("r-{n}")}),
            ))
            .expect("send");
    }
    producer.flush().expect("flush");
    eventually(60, "every order at charge", || {
        orders
            .iter()
            .all(|n| {
                let (_, d) = api(
                    admin,
                    &format!("/instances/order-to-cash/{n}"),
                    Some(VIEWER),
                );
                d["steps"] == json!(["charge"])
            })
            .then_some(())
    });
    for n in ["o-1", "o-2", "o-3"] {
        producer
            .send(&event(
                &t,
                "com.acme.payment.charged",
                &format!("charged-bad-{n}"),
                json!({"orderId": n}),
            ))
            .expect("send");
    }
    producer.flush().expect("flush");
    let incidents = eventually(60, "three incidents", || {
        let (_, page) = api(admin, "/incidents", Some(VIEWER));
        let list = page["incidents"].as_array()?.clone();
        (list.len() == 3).then_some(list)
    });
    assert!(
        incidents.iter().all(|i| i["step"] == json!("charge")
            && i["reason"].as_str().is_some_and(|r| r.contains("set"))),
        "{incidents:?}"
    );

    // Validation happens before anything is published.
    let (status, body) = post(
        admin,
        "/instances/order-to-cash/o-1/actions",
        json!({"action": "retry", "reason": " "}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("reason")));
    let (status, body) = post(
        admin,
        "/instances/order-to-cash/o-1/actions",
        json!({"action": "explode", "reason": "x"}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        admin,
        "/instances/order-to-cash/o-404/actions",
        json!({"action": "retry", "reason": "x"}),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        admin,
        "/instances/order-to-cash/o-1/actions",
        json!({"action": "migrate", "to": 7, "reason": "x"}),
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = send(
        admin,
        "POST",
        "/instances/order-to-cash/o-1/actions",
        Some(VIEWER),
        json!({"action": "retry", "reason": "x"}),
    );
    assert_eq!(status, 403, "{body}");

    // Retry o-1: the charge goes out again (attempt 2), and o-1 completes.
    let (status, accepted) = post(
        admin,
        "/instances/order-to-cash/o-1/actions",
        json!({"action": "retry", "reason": "the PSP fixed its answers", "request": "fix-o-1"}),
    );
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["request"], json!("fix-o-1"));
    assert_eq!(outcome(admin, "fix-o-1").0, "applied");
    assert_eq!(state(admin, "o-1"), ("active".into(), 2, 0));
    // The same request again changes nothing.
    let (status, _) = post(
        admin,
        "/instances/order-to-cash/o-1/actions",
        json!({"action": "retry", "reason": "the PSP fixed its answers", "request": "fix-o-1"}),
    );
    assert_eq!(status, 202);
    for (kind, id, data) in [
        (
            "com.acme.payment.charged",
            "charged-o-1",
            json!({"orderId": "o-1", "paymentId": "p-1"}),
        ),
        (
            "com.acme.shipment.created",
            "created-o-1",
            json!({"orderRef": "o-1", "trackingId": "t-1"}),
        ),
        (
            "com.acme.invoice.created",
            "invoiced-o-1",
            json!({"orderId": "o-1", "invoiceId": "i-1"}),
        ),
        (
            "com.acme.shipment.delivered",
            "delivered-o-1",
            json!({"orderRef": "o-1"}),
        ),
    ] {
        producer.send(&event(&t, kind, id, data)).expect("send");
    }
    producer.flush().expect("flush");
    eventually(60, "o-1 completed", || {
        (state(admin, "o-1").0 == "completed").then_some(())
    });

    // Bulk retry of every charge incident: a job; sent twice, it is one job.
    let job = json!({
        "filter": {"process": "order-to-cash", "step": "charge", "incident": true},
        "action": {"action": "retry"},
        "reason": "the PSP fixed its answers",
    });
    let (status, started) = post(admin, "/jobs", job.clone());
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["matched"], json!(2));
    let id = started["id"].as_str().expect("job id").to_string();
    let done = eventually(60, "the job to complete", || {
        let (_, j) = api(admin, &format!("/jobs/{id}"), Some(VIEWER));
        (j["state"] == json!("completed")).then_some(j)
    });
    assert_eq!(done["applied"], json!(2), "{done}");
    assert_eq!(done["errors"], json!([]), "{done}");
    assert_eq!(done["by"], json!("ops"));
    let (status, again) = post(admin, "/jobs", job);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], json!(id));
    for n in ["o-2", "o-3"] {
        assert_eq!(state(admin, n), ("active".into(), 2, 0), "{n}");
    }
    let (_, listed) = api(admin, "/jobs", Some(VIEWER));
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1));

    // Cancel o-4 with compensation from the CLI: its reservation is released.
    let (code, out) = cli_as(
        admin,
        OPERATOR,
        &[
            "cancel",
            "order-to-cash/o-4",
            "--compensate",
            "--reason",
            "the customer called",
        ],
    );
    assert_eq!(code, 0, "{out}");
    eventually(60, "o-4 cancelled", || {
        (state(admin, "o-4").0 == "cancelled").then_some(())
    });
    eventually(60, "the release command of o-4", || {
        let seen = seen.lock().ok()?;
        seen.iter()
            .any(|m| {
                support::orders::header(m, "ce_type").as_deref()
                    == Some("com.acme.inventory.release")
                    && m.key.as_deref() == Some(b"o-4".as_slice())
            })
            .then_some(())
    });

    // An action that no longer applies is refused by the shard, with why,
    // and dead-lettered; so is a record on the operator topic that is not one.
    let (_, refused) = post(
        admin,
        "/instances/order-to-cash/o-4/actions",
        json!({"action": "skip", "reason": "too late", "request": "late-o-4"}),
    );
    assert_eq!(refused["request"], json!("late-o-4"));
    let (state_of, why) = outcome(admin, "late-o-4");
    assert_eq!(state_of, "refused");
    assert!(why.contains("cancelled"), "{why}");
    producer
        .send(&Outgoing {
            topic: format!("{group}.baton.operator"),
            partition: None,
            key: b"order-to-cash/o-2".to_vec(),
            payload: Some(b"{not json".to_vec()),
            headers: Vec::new(),
        })
        .expect("send");
    producer.flush().expect("flush");
    let kinds = eventually(60, "two operator dead letters", || {
        let seen = seen.lock().ok()?;
        let kinds: Vec<String> = seen
            .iter()
            .filter(|m| m.topic == dead_letters)
            .filter_map(|m| support::orders::header(m, "baton.dlq.kind"))
            .collect();
        (kinds.len() >= 2).then_some(kinds)
    });
    assert!(kinds.contains(&"operator-refused".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"undecodable".to_string()), "{kinds:?}");
    stop_seen.store(true, std::sync::atomic::Ordering::Relaxed);

    // The audit trail says who retried o-1 and why.
    let (status, trail) = api(admin, "/audit/order-to-cash/o-1", Some(VIEWER));
    assert_eq!(status, 200, "{trail}");
    let entries = trail["entries"].as_array().expect("entries").clone();
    let by_operator: Vec<&Value> = entries
        .iter()
        .filter(|e| e["input"]["kind"] == json!("operator"))
        .collect();
    assert_eq!(by_operator.len(), 1, "one retry applied: {entries:?}");
    let retry = serde_json::to_string(by_operator[0]).expect("json");
    assert!(
        retry.contains("\"ops\"") && retry.contains("the PSP fixed its answers"),
        "{retry}"
    );
    assert_eq!(
        entries.last().map(|e| e["status"].clone()),
        Some(json!("completed"))
    );
    let (_, detail) = api(
        admin,
        "/instances/order-to-cash/o-1?history=true",
        Some(VIEWER),
    );
    assert_eq!(
        detail["history"].as_array().map(Vec::len),
        Some(entries.len())
    );

    // The compliance check: every instance's trail rebuilds its snapshot.
    let mut checked = 0;
    for p in 0..PARTITIONS {
        let (status, r) = api(admin, &format!("/audit/replay?partition={p}"), Some(VIEWER));
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["mismatched"], json!([]), "partition {p}: {r}");
        checked += r["checked"].as_u64().expect("checked");
    }
    assert_eq!(checked, 4, "o-1 … o-4");
    let (code, out) = cli(
        admin,
        &[
            "audit",
            "replay",
            "--process",
            "order-to-cash",
            "--key",
            "o-4",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checked 1, matched 1, mismatched 0"), "{out}");
    let (status, body) = api(admin, "/audit/replay", Some(VIEWER));
    assert_eq!(status, 400, "{body}");
}

#[test]
fn definitions_deploy_at_run_time_and_instances_migrate_to_them() {
    let Setup {
        broker,
        t,
        admin,
        _baton: _running,
        ..
    } = start("deploy");
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    // o-1 and o-2 wait at `reserve`, o-3 at `charge`, all on version 1.
    for n in ["o-1", "o-2", "o-3"] {
        producer.send(&placed(&t, n)).expect("send");
    }
    producer
        .send(&event(
            &t,
            "com.acme.inventory.reserved",
            "reserved-o-3",
            json!({"orderId": "o-3", "reservationId": "r-3"}),
        ))
        .expect("send");
    producer.flush().expect("flush");
    let steps = |key: &str| {
        let (_, d) = api(
            admin,
            &format!("/instances/order-to-cash/{key}"),
            Some(VIEWER),
        );
        (d["version"].as_u64().unwrap_or(0), d["steps"].clone())
    };
    eventually(60, "o-1, o-2 at reserve and o-3 at charge", || {
        (steps("o-1") == (1, json!(["reserve"]))
            && steps("o-2") == (1, json!(["reserve"]))
            && steps("o-3") == (1, json!(["charge"])))
            .then_some(())
    });

    // Version 2 renames `reserve` and `charge`; deployed from the CLI.
    let v2 = t
        .definition()
        .replace("version: 1", "version: 2")
        .replace("- id: reserve\n", "- id: reserve-stock\n")
        .replace("- id: charge\n", "- id: pay\n")
        .replace("default: charge", "default: pay");
    let dir = broker.dir.join("v2");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("order-to-cash-v2.yaml");
    std::fs::write(&file, &v2).expect("v2 written");
    let path = file.to_str().expect("utf-8 path");
    let (code, out) = cli_as(admin, OPERATOR, &["deploy", path]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("created order-to-cash v2"), "{out}");
    let (code, out) = cli_as(admin, OPERATOR, &["deploy", path]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("already deployed"), "{out}");
    let (code, _) = cli_as(admin, VIEWER, &["deploy", path]);
    assert_eq!(code, 4, "a viewer may not deploy");
    std::fs::write(&file, v2.replace("From a placed order", "From an order")).expect("edited");
    let (code, out) = cli_as(admin, OPERATOR, &["deploy", path]);
    assert_eq!(
        code, 5,
        "the same version with other content is refused: {out}"
    );
    let (status, body) = post(
        admin,
        "/definitions",
        json!({"source": "process: broken\nversion: 1\nsteps: []\n", "file": "broken.yaml"}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["diagnostics"].as_array().is_some_and(|d| !d.is_empty()
            && d.iter()
                .all(|d| d.as_str().is_some_and(|d| d.starts_with("broken.yaml:")))),
        "{body}"
    );
    let (_, defs) = api(admin, "/definitions", Some(VIEWER));
    let versions: Vec<(u64, bool)> = defs["definitions"]
        .as_array()
        .expect("definitions")
        .iter()
        .filter(|d| d["process"] == json!("order-to-cash"))
        .map(|d| {
            (
                d["version"].as_u64().unwrap_or(0),
                d["latest"] == json!(true),
            )
        })
        .collect();
    assert_eq!(versions, [(1, false), (2, true)]);

    // New instances take version 2; running ones keep version 1.
    producer.send(&placed(&t, "o-4")).expect("send");
    producer.flush().expect("flush");
    eventually(60, "o-4 on version 2", || {
        (steps("o-4") == (2, json!(["reserve-stock"]))).then_some(())
    });
    assert_eq!(steps("o-1"), (1, json!(["reserve"])));

    // A dry run says who can move: o-3's `charge` has no place in v2.
    let migration = json!({
        "process": "order-to-cash", "from": 1, "to": 2,
        "steps": {"reserve": "reserve-stock"}, "dry_run": true,
    });
    let (status, dry) = post(admin, "/migrations", migration.clone());
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        dry["movable"],
        json!(["order-to-cash/o-1", "order-to-cash/o-2"])
    );
    assert_eq!(dry["blocked"][0]["instance"], json!("order-to-cash/o-3"));
    assert!(
        dry["blocked"][0]["reasons"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("charge")))),
        "{dry}"
    );
    assert!(dry["job"].is_null());
    assert_eq!(
        steps("o-1"),
        (1, json!(["reserve"])),
        "a dry run moves nothing"
    );

    // The real run, from the CLI: it moves o-1 and o-2, reports o-3 and
    // exits with the failed-check code.
    let (code, out) = cli_as(
        admin,
        OPERATOR,
        &[
            "migrate",
            "--process",
            "order-to-cash",
            "--from",
            "1",
            "--to",
            "2",
            "--map",
            "reserve=reserve-stock",
            "--reason",
            "v2 renames the steps",
        ],
    );
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("2 movable, 1 blocked"), "{out}");
    assert_eq!(steps("o-1"), (2, json!(["reserve-stock"])));
    assert_eq!(steps("o-2"), (2, json!(["reserve-stock"])));
    assert_eq!(steps("o-3"), (1, json!(["charge"])));
    // o-1 goes on under version 2.
    producer
        .send(&event(
            &t,
            "com.acme.inventory.reserved",
            "reserved-o-1",
            json!({"orderId": "o-1", "reservationId": "r-1"}),
        ))
        .expect("send");
    producer.flush().expect("flush");
    eventually(60, "o-1 at v2's pay", || {
        (steps("o-1") == (2, json!(["pay"]))).then_some(())
    });
    // Migrated trails replay too: the migration is one of their entries.
    for p in 0..PARTITIONS {
        let (_, r) = api(admin, &format!("/audit/replay?partition={p}"), Some(VIEWER));
        assert_eq!(r["mismatched"], json!([]), "partition {p}: {r}");
    }
}

#[test]
fn any_member_answers_for_instances_another_member_owns() {
    let broker = Broker::start();
    let group = unique("members");
    let t = Topics::of(&group);
    let (a, _first) = member(&broker, &group, "member-a");
    let (b, _second) = member(&broker, &group, "member-b");
    for admin in [a, b] {
        eventually(60, "the admin port to answer", || {
            support::admin::get(admin, "/healthz")
        });
    }
    // Both ready with one shard each, and each knowing the other.
    let shards = |admin: SocketAddr| -> Vec<Value> {
        let (_, c) = api(admin, "/cluster", Some(VIEWER));
        c["members"].as_array().cloned().unwrap_or_default()
    };
    eventually(
        90,
        "two members with one shard each, seen from both",
        || {
            [a, b]
                .iter()
                .all(|m| {
                    let list = shards(*m);
                    list.len() == 2
                        && list.iter().all(|x| {
                            x["ready"] == json!(true)
                                && x["shards"].as_array().is_some_and(|s| s.len() == 1)
                        })
                })
                .then_some(())
        },
    );
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    let orders: Vec<String> = (1..=8).map(|n| format!("o-{n}")).collect();
    for n in &orders {
        producer.send(&placed(&t, n)).expect("send");
    }
    producer.flush().expect("flush");
    let all: Vec<String> = orders
        .iter()
        .map(|n| format!("order-to-cash/{n}"))
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    for admin in [a, b] {
        let listed = eventually(60, "every order listed by either member", || {
            let (_, page) = api(admin, "/instances?process=order-to-cash", Some(VIEWER));
            let got = ids(&page);
            (got == sorted).then_some(got)
        });
        assert_eq!(listed.len(), 8);
        // Paging over both members: pages of three, nothing twice or missed.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(c) => format!("/instances?limit=3&after={c}"),
                None => "/instances?limit=3".to_string(),
            };
            let (_, page) = api(admin, &path, Some(VIEWER));
            seen.extend(ids(&page));
            match page["next"].as_str() {
                Some(c) => after = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, sorted);
        // Each instance in full from either member, whoever owns it.
        for id in &all {
            let (status, d) = api(admin, &format!("/instances/{id}"), Some(VIEWER));
            assert_eq!(status, 200, "{id} from {admin}: {d}");
            assert_eq!(d["id"], json!(id));
        }
        // Local views hold only the member's own.
        let (_, local) = api(admin, "/instances?local=true", Some(VIEWER));
        assert!(ids(&local).len() < 8, "{local}");
    }
    let owners: Vec<Value> = shards(a).iter().map(|m| m["id"].clone()).collect();
    assert_eq!(owners, [json!("member-a"), json!("member-b")]);

    // A bulk job sent to one member runs on both, and reads as one job.
    let (status, job) = post(
        a,
        "/jobs",
        json!({
            "filter": {"process": "order-to-cash", "key_prefix": "o-"},
            "action": {"action": "cancel"},
            "reason": "the shop closed",
        }),
    );
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["matched"], json!(8), "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    let done = eventually(60, "the job to complete on both members", || {
        let (_, j) = api(b, &format!("/jobs/{id}"), Some(VIEWER));
        (j["state"] == json!("completed")).then_some(j)
    });
    assert_eq!(
        (done["matched"].clone(), done["applied"].clone()),
        (json!(8), json!(8)),
        "{done}"
    );
    eventually(60, "every order cancelled", || {
        let (_, page) = api(b, "/instances?status=cancelled", Some(VIEWER));
        (ids(&page).len() == 8).then_some(())
    });
}

/// The schemathesis executable `bash scripts/test.sh` installs.
fn schemathesis() -> std::path::PathBuf {
    let path = std::env::var_os("BATON_SCHEMATHESIS")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(
                std::path::Path::new(&home)
                    .join(".cache/baton/schemathesis-4.32.5/bin/schemathesis"),
            )
        })
        .filter(|p| p.is_file());
    path.unwrap_or_else(|| {
        panic!("schemathesis is not installed: `bash scripts/test.sh` (or `bash scripts/schemathesis.sh`) installs it")
    })
}

#[test]
fn the_served_openapi_document_holds_under_schemathesis() {
    let Setup {
        broker,
        t,
        admin,
        _baton: _running,
        ..
    } = start("contract");
    // Something to list, detail and act on.
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in ["o-1", "o-2"] {
        producer.send(&placed(&t, n)).expect("send");
    }
    producer.flush().expect("flush");
    eventually(60, "two instances", || {
        let (_, page) = api(admin, "/instances", Some(VIEWER));
        (ids(&page).len() == 2).then_some(())
    });
    let report = broker.dir.join("schemathesis");
    let out = Command::new(schemathesis())
        .args(["run", &format!("http://{admin}/api/v1/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {OPERATOR}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "25", "--workers", "2", "--seed", "7"])
        .args(["--request-timeout", "20", "--no-color"])
        .arg("--report-dir")
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", "")
        // Its example cache goes beside the report, not into the checkout.
        .current_dir(&broker.dir)
        .output()
        .expect("schemathesis runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("passed"), "{text}");
}
