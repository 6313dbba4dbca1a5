//! The admin API of `baton run` against the test broker: tokens and roles,
//! instances listed, filtered and paged from the live index, one instance in
//! full, definitions, this member's shards and the OpenAPI document, read
//! over HTTP and through the `baton` CLI.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton::config::Config;
use baton::kafka::{self, Outgoing, PlainProducer};
use baton::wire::cloudevents;
use serde_json::{Value, json};

use support::orders::Topics;
use support::{Broker, eventually, free_addr, unique};

const PARTITIONS: i32 = 2;
const VIEWER: &str = "viewer-token-5f1c0d9a8b7e";
const OPERATOR: &str = "operator-token-2a4b6c8d0e1f";

/// `baton run`, killed when dropped.
struct Baton(Child);

impl Drop for Baton {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /api/v1{path}` with `token` → (status, JSON body).
fn api(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    call(admin, "GET", path, token)
}

fn call(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
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
            r.send_json(json!({}))
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
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env("BATON_ADMIN_URL", format!("http://{admin}"))
        .env("BATON_TOKEN", VIEWER)
        .output()
        .expect("baton runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_admin_api_lists_filters_pages_and_details_live_instances() {
    let broker = Broker::start();
    let group = unique("operate");
    let t = Topics::of(&group);
    let dir = broker.dir.join("baton");
    std::fs::create_dir_all(&dir).expect("dir");
    let admin = free_addr();
    let secret = dir.join("operator.token");
    std::fs::write(&secret, format!("{OPERATOR}\n")).expect("token file");
    let viewer = dir.join("viewer.token");
    std::fs::write(&viewer, VIEWER).expect("token file");
    let extra = format!(
        "[[admin.tokens]]\nname = \"ana\"\nrole = \"viewer\"\nfile = \"{}\"\n\n\
         [[admin.tokens]]\nname = \"ops\"\nrole = \"operator\"\nfile = \"{}\"\n",
        viewer.display(),
        secret.display()
    );
    let config = support::write_config(
        &dir,
        &support::RunConfig {
            bootstrap: &broker.bootstrap,
            group: &group,
            instance: "operate-1",
            partitions: PARTITIONS,
            in_place: false,
            admin: admin.to_string(),
            extra: &extra,
        },
    );
    let cfg = Config::load(
        "baton.toml",
        &std::fs::read_to_string(&config).expect("config"),
        [],
    );
    let cfg = cfg.expect("valid config");
    kafka::ensure_topics(&cfg, &[(t.input.clone(), PARTITIONS, false)]).expect("input topic");
    let log = std::fs::File::create(dir.join("baton.log")).expect("log");
    let _baton = Baton(
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("baton starts"),
    );
    eventually(60, "/readyz to answer 200", || {
        support::admin::get(admin, "/readyz").filter(|(s, _)| *s == 200)
    });

    // Tokens and roles; health stays open.
    assert_eq!(
        support::admin::get(admin, "/healthz").map(|r| r.0),
        Some(200)
    );
    let (status, body) = api(admin, "/instances", None);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("Bearer")));
    assert_eq!(api(admin, "/instances", Some("not-a-token-at-all")).0, 401);
    let (status, body) = call(admin, "POST", "/definitions", Some(VIEWER));
    assert_eq!(status, 403, "a viewer may not act: {body}");
    let (status, body) = call(admin, "POST", "/definitions", Some(OPERATOR));
    assert_eq!(status, 405, "an operator passes the role check: {body}");

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
