//! `baton asyncapi`: the contracts of the example processes validate against
//! AsyncAPI 3.1's JSON Schema (from @asyncapi/specs on npm, which
//! `bash scripts/asyncapi.sh` fetches; `scripts/test.sh` exports its path as
//! BATON_ASYNCAPI_SCHEMA), every reference in them resolves, and they say
//! what the definitions do.

mod support;

use support::baton_cli as baton;

use std::path::{Path, PathBuf};

use baton::asyncapi::{self, Options};
use baton::dsl;
use baton::engine::Definition;
use serde_json::{Value, json};

const EXAMPLES: [&str; 3] = ["order-to-cash", "customer-onboarding", "incident-response"];

fn example(name: &str) -> Definition {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.yaml"));
    let text = std::fs::read_to_string(&path).expect("readable example");
    dsl::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"))
}

/// AsyncAPI 3.1.0's JSON Schema; the test fails when it is not installed.
fn schema_path() -> PathBuf {
    std::env::var_os("BATON_ASYNCAPI_SCHEMA")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(Path::new(&home).join(".cache/baton/asyncapi-specs-6.11.1/package/schemas/3.1.0.json"))
        })
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("AsyncAPI 3.1's JSON Schema is not installed: `bash scripts/test.sh` (or `bash scripts/asyncapi.sh`) fetches it")
        })
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema_path()).expect("readable schema");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    assert_eq!(
        schema["$id"], "http://asyncapi.com/definitions/3.1.0/asyncapi.json",
        "the schema of AsyncAPI 3.1.0"
    );
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

/// Schema errors, then references that do not resolve, then operations
/// whose messages are not their channel's.
fn problems(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    for r in &refs {
        let pointer = r.strip_prefix('#').unwrap_or(r);
        if doc.pointer(pointer).is_none() {
            out.push(format!("$ref {r} does not resolve"));
        }
    }
    for (id, op) in doc["operations"].as_object().into_iter().flatten() {
        let channel = op["channel"]["$ref"].as_str().unwrap_or_default();
        for m in op["messages"].as_array().into_iter().flatten() {
            let r = m["$ref"].as_str().unwrap_or_default();
            if !r.starts_with(&format!("{channel}/messages/")) {
                out.push(format!("operation {id}: message {r} is not on {channel}"));
            }
        }
    }
    out
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.push(r.clone());
            }
            o.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_example_and_their_set_validate_against_asyncapi_3_1() {
    let v = validator();
    let defs: Vec<Definition> = EXAMPLES.iter().map(|n| example(n)).collect();
    for d in &defs {
        for topic in [None, Some("crm.events".to_string())] {
            let doc = asyncapi::document(
                &[d],
                &Options {
                    events_topic: topic.clone(),
                },
            );
            assert_eq!(problems(&v, &doc), Vec::<String>::new(), "{}", d.process);
            assert_eq!(doc["asyncapi"], "3.1.0");
            let events = topic.as_deref().unwrap_or("events");
            assert_eq!(
                doc["channels"][events]["address"],
                topic.map_or(Value::Null, Value::from)
            );
        }
    }
    let all: Vec<&Definition> = defs.iter().collect();
    let doc = asyncapi::document(&all, &Options::default());
    assert_eq!(problems(&v, &doc), Vec::<String>::new());
    // A topic two processes send to is one channel with both's commands.
    let erp = &doc["channels"]["erp.commands"]["messages"];
    for kind in ["com.acme.inventory.reserve", "com.acme.erp.customer.create"] {
        assert_eq!(erp[kind]["name"], kind, "{erp}");
    }
    assert_eq!(
        doc["info"]["version"],
        "order-to-cash v1, customer-onboarding v1, incident-response v1"
    );
}

#[test]
fn the_schema_rejects_what_asyncapi_forbids() {
    // The validator is the real thing: a document without an operation's
    // action, or with a send that is neither, fails it.
    let v = validator();
    let mut doc = asyncapi::document(&[&example("order-to-cash")], &Options::default());
    doc["operations"]["order-to-cash.start"]["action"] = json!("publish");
    assert!(!problems(&v, &doc).is_empty());
    // Deep inside: a message's correlation id and its Kafka binding.
    let mut doc = asyncapi::document(&[&example("order-to-cash")], &Options::default());
    let placed = &mut doc["channels"]["events"]["messages"]["com.acme.order.placed"];
    placed["correlationId"]["location"] = json!("payload.orderId");
    assert!(!problems(&v, &doc).is_empty());
    let mut doc = asyncapi::document(&[&example("order-to-cash")], &Options::default());
    let placed = &mut doc["channels"]["events"]["messages"]["com.acme.order.placed"];
    placed["bindings"]["kafka"]["partitionKey"] = json!("orderId");
    assert!(!problems(&v, &doc).is_empty());
    let mut doc = asyncapi::document(&[&example("order-to-cash")], &Options::default());
    doc["operations"]["order-to-cash.start"]["channel"] = json!({ "$ref": "#/channels/nowhere" });
    assert!(
        problems(&v, &doc)
            .iter()
            .any(|p| p.contains("does not resolve")),
        "{:?}",
        problems(&v, &doc)
    );
}

#[test]
fn operations_say_what_each_part_of_the_definition_receives_and_sends() {
    let doc = asyncapi::document(&[&example("order-to-cash")], &Options::default());
    // (operation, action, channel, message types)
    let rows: [(&str, &str, &str, &[&str]); 9] = [
        ("start", "receive", "events", &["com.acme.order.placed"]),
        (
            "await.reserve",
            "receive",
            "events",
            &[
                "com.acme.inventory.reserved",
                "com.acme.inventory.unavailable",
            ],
        ),
        (
            "await.charge",
            "receive",
            "events",
            &[
                "com.acme.payment.charged",
                "com.acme.payment.declined",
                "com.acme.payment.error",
            ],
        ),
        (
            "observe",
            "receive",
            "events",
            &[
                "com.acme.order.address-changed",
                "com.acme.shipment.delivered",
            ],
        ),
        (
            "expect.0",
            "receive",
            "events",
            &["com.acme.shipment.delivered"],
        ),
        (
            "command.reserve",
            "send",
            "erp.commands",
            &["com.acme.inventory.reserve"],
        ),
        (
            "task.manual-approval",
            "send",
            "crm.tasks",
            &["com.acme.task.approve-order"],
        ),
        (
            "compensate.charge",
            "send",
            "payments.commands",
            &["com.acme.payment.refund"],
        ),
        (
            "escalate.0",
            "send",
            "support.commands",
            &["com.acme.case.open"],
        ),
    ];
    for (id, action, channel, kinds) in rows {
        let op = &doc["operations"][format!("order-to-cash.{id}")];
        assert_eq!(op["action"], action, "{id}: {op}");
        assert_eq!(
            op["channel"]["$ref"],
            format!("#/channels/{channel}"),
            "{id}"
        );
        let got: Vec<String> = op["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                let r = m["$ref"].as_str().expect("a reference");
                let pointer = r.strip_prefix('#').expect("local");
                doc.pointer(pointer).expect("resolves")["name"]
                    .as_str()
                    .expect("a name")
                    .to_string()
            })
            .collect();
        assert_eq!(got, kinds, "{id}");
    }
    // Correlation: every event a running instance awaits, and only those.
    let correlated = doc["operations"]["order-to-cash.correlate"]["messages"]
        .as_array()
        .expect("messages")
        .len();
    assert_eq!(correlated, 10);
    // Command topics are channels with their addresses.
    for topic in [
        "erp.commands",
        "payments.commands",
        "wms.commands",
        "crm.tasks",
        "support.commands",
    ] {
        assert_eq!(doc["channels"][topic]["address"], topic);
        assert_eq!(doc["channels"][topic]["bindings"]["kafka"]["topic"], topic);
    }
}

#[test]
fn payloads_come_from_the_data_mappings_and_headers_are_cloudevents() {
    let doc = asyncapi::document(&[&example("order-to-cash")], &Options::default());
    let events = &doc["channels"]["events"]["messages"];
    // The start event: key and variables read from it, the key as the
    // correlation id and as the Kafka key.
    let placed = &events["com.acme.order.placed"];
    assert_eq!(
        placed["payload"]["required"],
        json!(["address", "customerId", "lines", "orderId", "total"])
    );
    assert_eq!(
        placed["payload"]["properties"]["orderId"]["type"],
        json!(["string", "integer"])
    );
    assert_eq!(
        placed["correlationId"]["location"],
        "$message.payload#/orderId"
    );
    assert!(
        placed["bindings"]["kafka"]["key"]["description"]
            .as_str()
            .expect("a description")
            .contains("`event.data.orderId`")
    );
    assert_eq!(
        placed["headers"]["properties"]["ce_type"]["const"],
        "com.acme.order.placed"
    );
    // Shipment events are correlated by another field.
    let created = &events["com.acme.shipment.created"];
    assert_eq!(
        created["correlationId"]["location"],
        "$message.payload#/orderRef"
    );
    assert_eq!(
        created["payload"]["required"],
        json!(["orderRef", "trackingId"])
    );
    // A field read under a `when` is there, but not required.
    let completed = &events["com.acme.task.completed"];
    assert!(
        completed["payload"]["properties"]["user"].is_object(),
        "{completed}"
    );
    assert_eq!(completed["payload"]["required"], json!(["orderId"]));

    // Commands: every field of the data mapping, typed where the
    // expression shows it; baton's binary-mode CloudEvents headers.
    let case = &doc["channels"]["support.commands"]["messages"]["com.acme.case.open"];
    assert_eq!(
        case["payload"]["required"],
        json!(["order", "reason", "tracking"])
    );
    assert_eq!(
        case["payload"]["properties"]["reason"],
        json!({ "type": "string", "const": "delivery SLA missed", "description": "`'delivery SLA missed'`" })
    );
    assert_eq!(case["payload"]["properties"]["order"]["type"], "string");
    let charge = &doc["channels"]["payments.commands"]["messages"]["com.acme.payment.charge"];
    assert_eq!(
        charge["payload"]["properties"]["attempt"]["type"],
        "integer"
    );
    let headers = &charge["headers"];
    assert_eq!(
        headers["properties"]["ce_source"]["enum"],
        json!(["baton/order-to-cash"])
    );
    assert_eq!(
        headers["properties"]["content-type"]["const"],
        "application/json"
    );
    for h in [
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ce_source",
        "ce_time",
        "ce_subject",
    ] {
        assert!(
            headers["required"]
                .as_array()
                .expect("required")
                .contains(&json!(h)),
            "{h}"
        );
    }
}

#[test]
fn the_command_writes_one_document_per_definition_or_one_for_a_set() {
    let v = validator();
    let dir = std::env::temp_dir().join(format!("baton-asyncapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files: Vec<String> = EXAMPLES
        .iter()
        .map(|n| format!("examples/{n}.yaml"))
        .collect();
    let mut args = vec!["asyncapi"];
    args.extend(files.iter().map(String::as_str));

    // Several definitions need --merge or --out-dir.
    let (code, _, err) = baton(&args);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("give --merge for one document, or --out-dir"),
        "{err}"
    );

    let out_dir = dir.join("each");
    let out_dir = out_dir.to_str().expect("utf-8 path");
    let mut each = args.clone();
    each.extend(["--out-dir", out_dir, "--events-topic", "acme.events"]);
    let (code, out, err) = baton(&each);
    assert_eq!(code, 0, "{err}");
    for n in EXAMPLES {
        let path = Path::new(out_dir).join(format!("{n}.asyncapi.json"));
        assert!(out.contains(&path.display().to_string()), "{out}");
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("written")).expect("JSON");
        assert_eq!(problems(&v, &doc), Vec::<String>::new(), "{n}");
        assert_eq!(doc["channels"]["acme.events"]["address"], "acme.events");
    }

    let merged = dir.join("all.json");
    let mut one = args.clone();
    one.extend(["--merge", "-o", merged.to_str().expect("utf-8 path")]);
    let (code, _, err) = baton(&one);
    assert_eq!(code, 0, "{err}");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&merged).expect("written")).expect("JSON");
    assert_eq!(problems(&v, &doc), Vec::<String>::new());
    assert_eq!(doc["info"]["tags"].as_array().map(Vec::len), Some(3));

    // One definition goes to standard output; a broken one is reported.
    let (code, out, _) = baton(&["asyncapi", "examples/incident-response.yaml"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(doc["info"]["title"], "baton process incident-response");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "process: bad\nversion: 1\n").expect("write");
    let (code, _, err) = baton(&["asyncapi", bad.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing field `start`"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
