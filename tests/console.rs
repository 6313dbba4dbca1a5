//! The web console in headless Chromium against `baton run` on Apache
//! Kafka with the order-to-cash example: sign in, find an order parked in an
//! incident, see it on its diagram, retry it until it completes, cancel a
//! filtered set in bulk, read the heat map, and a viewer sees no action.
//! The browser side is `tests/console/console.test.mjs` (playwright-core);
//! this test sets the scene, runs it, and checks its screenshots.
//!
//! `bash scripts/test.sh` installs Chromium and playwright-core
//! (`scripts/browser.sh`); without them this test fails, it never skips.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton::kafka::{Outgoing, PlainProducer};
use baton::wire::cloudevents;
use serde_json::{Value, json};

use support::admin::{OPERATOR, VIEWER};
use support::orders::{Behaviour, Topics, services_with};
use support::{Broker, eventually, unique};

const PARTITIONS: i32 = 2;
const STUCK: &str = "o-stuck";
const HOLD_PREFIX: &str = "hold-";
const HOLD: usize = 5;
const FLOWING: usize = 6;

fn placed(t: &Topics, key: &str, total: u64) -> Outgoing {
    let id = format!("placed-{key}");
    let data = json!({"orderId": key, "customerId": "c-1", "total": total,
        "lines": [{"sku": "A", "qty": 1}], "address": "1 Main St"});
    Outgoing {
        topic: t.input.clone(),
        partition: None,
        key: key.as_bytes().to_vec(),
        payload: Some(cloudevents::structured(
            &id,
            "com.acme.order.placed",
            "crm",
            0,
            &data,
        )),
        headers: vec![(
            "content-type".to_string(),
            b"application/cloudevents+json".to_vec(),
        )],
    }
}

fn api(admin: std::net::SocketAddr, path: &str) -> Option<Value> {
    let (status, body) = support::admin::get_as(
        admin,
        &format!("/api/v1{path}"),
        Some(VIEWER),
        Duration::from_secs(10),
    )?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// The Chromium the browser test drives: `BATON_CHROMIUM` (set by
/// `scripts/test.sh`), else Debian's.
fn chromium() -> PathBuf {
    let path = std::env::var_os("BATON_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "no Chromium at {}: run `bash scripts/browser.sh` (it installs Debian's chromium and playwright-core), or set BATON_CHROMIUM",
        path.display()
    );
    let playwright =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/node_modules/playwright-core");
    assert!(
        playwright.exists(),
        "playwright-core is not installed in tests/console: run `bash scripts/browser.sh`"
    );
    path
}

/// Width, height and the number of distinct colours of a PNG screenshot.
fn picture(path: &Path) -> (u32, u32, usize) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    let step = info.color_type.samples();
    let colours: std::collections::BTreeSet<&[u8]> =
        pixels[..info.buffer_size()].chunks(step).collect();
    (info.width, info.height, colours.len())
}

#[test]
fn the_console_finds_retries_and_cancels_instances_in_a_real_browser() {
    let chromium = chromium();
    let broker = Broker::start();
    let group = unique("console");
    let t = Topics::of(&group);
    let (admin, _baton) = support::admin::member(&broker, &group, "console-1", PARTITIONS);
    eventually(90, "/readyz to answer 200", || {
        support::admin::get(admin, "/readyz").filter(|(s, _)| *s == 200)
    });
    let _services = services_with(
        &broker.bootstrap,
        &t,
        Behaviour {
            deliver: true,
            bad_charge: Some(STUCK.to_string()),
            ..Behaviour::default()
        },
    );
    let producer = PlainProducer::new(&broker.bootstrap).expect("producer");
    for n in 1..=FLOWING {
        producer
            .send(&placed(&t, &format!("o-{n}"), 100 + n as u64))
            .expect("send");
    }
    producer.send(&placed(&t, STUCK, 120)).expect("send");
    // Above 10 000 an order waits for a person's approval at `manual-approval`.
    for n in 1..=HOLD {
        producer
            .send(&placed(&t, &format!("{HOLD_PREFIX}{n}"), 20_000))
            .expect("send");
    }
    producer.flush().expect("flush");
    eventually(
        120,
        "the stuck order in an incident, the held ones waiting, the others completed",
        || {
            let incident = api(admin, &format!("/instances/order-to-cash/{STUCK}"))?;
            let held = api(
                admin,
                &format!(
                    "/instances/count?key_prefix={HOLD_PREFIX}&step=manual-approval&status=active"
                ),
            )?;
            let done = api(admin, "/instances/count?status=completed")?;
            (incident["open_incidents"].as_array()?.len() == 1
                && held["count"] == json!(HOLD)
                && done["count"] == json!(FLOWING))
            .then_some(())
        },
    );

    // What the pages are drawn from.
    let overview = api(admin, "/overview?window_minutes=10").expect("overview");
    let row = overview["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["process"] == json!("order-to-cash") && p["version"] == json!(1))
        .cloned()
        .expect("order-to-cash v1 in the overview");
    assert_eq!(row["completed"], json!(FLOWING), "{row}");
    assert_eq!(row["running"], json!(HOLD + 1), "{row}");
    assert_eq!(
        (row["incidents"].clone(), row["cancelled"].clone()),
        (json!(1), json!(0)),
        "{row}"
    );
    let minutes = row["throughput"].as_array().expect("throughput");
    assert_eq!(minutes.len(), 10, "{row}");
    let started: u64 = minutes.iter().filter_map(|m| m["started"].as_u64()).sum();
    let ended: u64 = minutes.iter().filter_map(|m| m["ended"].as_u64()).sum();
    assert_eq!(
        (started, ended),
        ((FLOWING + HOLD + 1) as u64, FLOWING as u64),
        "{row}"
    );
    let groups = api(admin, "/incidents/groups").expect("groups");
    assert_eq!(groups["groups"][0]["step"], json!("charge"), "{groups}");
    assert_eq!(groups["groups"][0]["count"], json!(1), "{groups}");
    assert!(
        groups["groups"][0]["newest_reason"]
            .as_str()
            .is_some_and(|r| r.contains("paymentId")),
        "{groups}"
    );
    let diagram = api(admin, "/definitions/order-to-cash/1/diagram").expect("diagram");
    assert!(
        diagram["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["id"] == json!("charge")),
        "{diagram}"
    );
    let heat = api(admin, "/definitions/order-to-cash/1/heatmap").expect("heat map");
    let charge = heat["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"] == json!("charge"))
        .cloned()
        .expect("charge in the heat map");
    assert_eq!(charge["entered"], json!(FLOWING + 1), "{heat}");
    let invoiced = heat["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["from"] == json!("invoice") && e["to"] == json!("@completed"))
        .cloned()
        .expect("invoice → completed in the heat map");
    assert_eq!(invoiced["count"], json!(FLOWING), "{heat}");

    // The test's artifacts: kept after the run, under target/tmp.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let out = Command::new("node")
        .arg("tests/console/console.test.mjs")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BATON_CONSOLE_URL", format!("http://{admin}/"))
        .env("BATON_VIEWER_TOKEN", VIEWER)
        .env("BATON_OPERATOR_TOKEN", OPERATOR)
        .env("BATON_CHROMIUM", &chromium)
        .env("BATON_SCREENSHOTS", &shots)
        .env("BATON_STUCK", STUCK)
        .env("BATON_HOLD_PREFIX", HOLD_PREFIX)
        .env("BATON_HOLD_COUNT", HOLD.to_string())
        .output()
        .expect("node runs (Node.js is needed for the browser test)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser test failed (screenshots in {}):\n{said}",
        shots.display()
    );
    assert!(said.contains("console test passed"), "{said}");

    // What the browser did, seen from the server.
    let stuck = api(
        admin,
        &format!("/instances/order-to-cash/{STUCK}?history=true"),
    )
    .expect("the stuck order");
    assert_eq!(stuck["status"], json!("completed"), "{stuck}");
    let retried = stuck["history"]
        .as_array()
        .expect("history")
        .iter()
        .find(|e| e["input"]["kind"] == json!("operator"))
        .cloned()
        .expect("an operator's entry in the audit trail");
    assert_eq!(retried["input"]["by"], json!("ops"), "{retried}");
    let cancelled = api(
        admin,
        &format!("/instances/count?key_prefix={HOLD_PREFIX}&status=cancelled"),
    )
    .expect("count");
    assert_eq!(
        cancelled["count"],
        json!(HOLD),
        "every held order cancelled"
    );

    for (name, min_colours) in [("overview.png", 8), ("instance.png", 8)] {
        let (w, h, colours) = picture(&shots.join(name));
        assert_eq!((w, h), (1280, 800), "{name} is a 1280×800 screenshot");
        assert!(
            colours >= min_colours,
            "{name} has {colours} colours: a blank page?"
        );
    }
}
