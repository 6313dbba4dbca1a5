//! `baton import`: BPMN 2.0 models become definitions that validate, draw
//! the same flow and pass the same scenarios; every element it cannot
//! translate is reported with its id, name and line.

mod support;

use support::baton_cli as baton;

use std::path::Path;

use baton::bpmn::{self, ImportError, Mapping, Options, Problem, Severity};
use baton::diagram::{Graph, mermaid};
use baton::dsl;
use baton::engine::{Definition, Registry};
use baton::simulate::Simulation;

const EXAMPLES: [&str; 3] = ["order-to-cash", "customer-onboarding", "incident-response"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn original(name: &str) -> Definition {
    let path = root().join(format!("examples/{name}.yaml"));
    let text = std::fs::read_to_string(&path).expect("readable example");
    dsl::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"))
}

/// The seed process imported from its BPMN drawing: YAML and definition.
fn imported(name: &str) -> (String, Definition) {
    let file = format!("examples/bpmn/{name}.bpmn");
    let xml = std::fs::read_to_string(root().join(&file)).expect("readable model");
    let got = bpmn::import(&file, &xml, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(got.valid, "{}", got.yaml);
    assert_eq!(got.process, name);
    assert_eq!(
        got.problems,
        Vec::<Problem>::new(),
        "{name}: no warnings either"
    );
    let def = dsl::parse(&file, &got.yaml).unwrap_or_else(|e| panic!("{e}\n{}", got.yaml));
    (got.yaml, def)
}

#[test]
fn the_seed_processes_draw_the_same_flow_as_their_yaml() {
    for name in EXAMPLES {
        let (yaml, def) = imported(name);
        let want = Graph::of(&original(name));
        let got = Graph::of(&def);
        // Same nodes and edges, labels included, in the same order.
        assert_eq!(got.nodes, want.nodes, "{name}\n{yaml}");
        assert_eq!(got.edges, want.edges, "{name}\n{yaml}");
        assert_eq!(mermaid(&def), mermaid(&original(name)), "{name}");
    }
}

#[test]
fn the_seed_processes_pass_every_scenario_of_their_yaml() {
    for name in EXAMPLES {
        let (yaml, _) = imported(name);
        let dir = root().join("examples").join(name);
        let mut scenarios: Vec<_> = std::fs::read_dir(&dir)
            .expect("scenarios")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        scenarios.sort();
        assert!(scenarios.len() >= 4, "{name}: {scenarios:?}");
        for path in scenarios {
            let mut reg = Registry::default();
            let text = std::fs::read_to_string(&path).expect("readable scenario");
            let def = dsl::parse(name, &yaml).unwrap_or_else(|e| panic!("{e}"));
            reg.deploy(def, &yaml).expect("deploys");
            let mut sim = Simulation::new(reg);
            if let Err(e) = sim.run(&path.display().to_string(), &text) {
                panic!("{e}\n--- log ---\n{}", sim.render());
            }
        }
    }
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("baton-bpmn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn import_validate_graph_and_simulate_from_the_command_line() {
    for name in EXAMPLES {
        let out = temp(&format!("{name}.yaml"));
        let out = out.to_str().expect("utf-8 path");
        let model = format!("examples/bpmn/{name}.bpmn");
        let (code, _, err) = baton(&["import", &model, "-o", out]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains(&format!("process `{name}` written to")),
            "{err}"
        );
        let (code, stdout, err) = baton(&["validate", out]);
        assert_eq!(code, 0, "{stdout}{err}");
        // `baton graph` prints the same flowchart for both.
        let (_, drawn, _) = baton(&["graph", out]);
        let (_, want, _) = baton(&["graph", &format!("examples/{name}.yaml")]);
        assert_eq!(drawn, want, "{name}");
        assert!(drawn.starts_with("flowchart TD"), "{drawn}");
    }
    let out = temp("o2c.yaml");
    let out = out.to_str().expect("utf-8 path");
    let (code, yaml, _) = baton(&["import", "examples/bpmn/order-to-cash.bpmn"]);
    assert_eq!(code, 0);
    std::fs::write(out, &yaml).expect("write");
    let (code, stdout, err) = baton(&[
        "simulate",
        out,
        "--events",
        "examples/order-to-cash/payment-declined.jsonl",
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("com.acme.inventory.release"), "{stdout}");
    assert!(stdout.contains("scenario passed"), "{stdout}");
}

#[test]
fn the_yaml_names_the_elements_it_came_from() {
    let (yaml, _) = imported("order-to-cash");
    for line in [
        "# Imported by `baton import` from examples/bpmn/order-to-cash.bpmn (BPMN process `order-to-cash`, line 3).",
        "  # Service task `reserve` (\"Reserve inventory\"), line ",
        "      # Error boundary event `Event_Unavailable` (\"Out of stock\"), line ",
        "        # → error end event `EndEvent_OutOfStock` (\"Order failed: out of stock\")",
        "      # sequence flow `Flow_approval_manual_approval` (\"more than 10 000\"), FEEL `=total > 10000`",
        "      - when: vars.total > 10000",
        "    # No compensation boundary event in the model: nothing to undo.",
        "  # Note: Watchdog (baton:expect): delivered within 72h, else a support case is opened",
    ] {
        assert!(yaml.contains(line), "missing {line:?} in\n{yaml}");
    }
}

// ---- one row per BPMN element kind ----------------------------------------

const NAMESPACES: &str = r#"xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:baton="urn:baton:bpmn:1" xmlns:zeebe="http://camunda.org/schema/zeebe/1.0""#;

/// A model whose message start event (`begin`) flows into element `a`.
fn model(body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions {NAMESPACES} id="d" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="p" isExecutable="true">
    <bpmn:startEvent id="begin" name="Begin">
      <bpmn:extensionElements>
        <baton:start key="event.data.id"><baton:set name="count" value="event.data.count" /></baton:start>
      </bpmn:extensionElements>
      <bpmn:messageEventDefinition messageRef="m-start" />
    </bpmn:startEvent>
    <bpmn:sequenceFlow id="f0" sourceRef="begin" targetRef="a" />
{body}
  </bpmn:process>
  <bpmn:message id="m-start" name="t.started" />
  <bpmn:message id="m-done" name="t.done" />
  <bpmn:message id="m-other" name="t.other" />
  <bpmn:message id="m-nameless" />
  <bpmn:error id="e-bad" name="Bad" errorCode="t.bad" />
</bpmn:definitions>
"#
    )
}

/// A service task that sends `t.<id>` and awaits `t.<id>.done`.
fn task(id: &str) -> String {
    format!(
        r#"<bpmn:serviceTask id="{id}" name="Task {id}"><bpmn:extensionElements>
      <baton:command topic="t.commands" type="t.{id}" /><baton:await on="t.{id}.done" />
    </bpmn:extensionElements></bpmn:serviceTask>"#
    )
}

fn flow(id: &str, from: &str, to: &str) -> String {
    format!(r#"<bpmn:sequenceFlow id="{id}" sourceRef="{from}" targetRef="{to}" />"#)
}

fn end(id: &str) -> String {
    format!(r#"<bpmn:endEvent id="{id}" />"#)
}

/// Imports `xml`, which must translate without errors into valid YAML.
fn translate(what: &str, xml: &str, mapping: Mapping) -> String {
    let opts = Options {
        mapping,
        ..Options::default()
    };
    match bpmn::import("t.bpmn", xml, &opts) {
        Ok(i) => {
            assert!(i.valid, "{what}: {}", i.yaml);
            i.yaml
        }
        Err(e) => panic!("{what}: {e}\n{xml}"),
    }
}

/// `lines` appear in `yaml` in this order (each trimmed).
fn in_order(what: &str, yaml: &str, lines: &[&str]) {
    let got: Vec<&str> = yaml.lines().map(str::trim).collect();
    let mut at = 0;
    for want in lines {
        match got[at..].iter().position(|l| l == want) {
            Some(p) => at += p + 1,
            None => panic!("{what}: `{want}` not found (in order) in\n{yaml}"),
        }
    }
}

#[test]
fn every_supported_element_kind_translates() {
    let rows: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "message start event",
            [task("a"), flow("f1", "a", "z"), end("z")].join("\n"),
            vec!["start:", "on: t.started", "key: event.data.id", "vars:", "count: event.data.count"],
        ),
        (
            "service task with retries",
            [
                r#"<bpmn:serviceTask id="a"><bpmn:extensionElements>
                  <baton:command topic="t.commands" type="t.do"><baton:data name="order" value="key" /><baton:data name="who.name" value="vars.count" /></baton:command>
                  <baton:await on="t.done" when="event.data.ok"><baton:set name="r" value="event.data.r" /></baton:await>
                  <baton:retry attempts="3" backoff="2s" factor="2" maxBackoff="1m" />
                </bpmn:extensionElements></bpmn:serviceTask>"#
                    .to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            vec![
                "- id: a", "command:", "topic: t.commands", "type: t.do", "data:", "order: key",
                "who:", "name: vars.count", "await:", "- on: t.done", "when: event.data.ok", "set:",
                "r: event.data.r", "retry:", "attempts: 3", "backoff: 2s", "factor: 2",
                "max_backoff: 1m",
            ],
        ),
        (
            "send task (fire and forget)",
            [
                r#"<bpmn:sendTask id="a"><bpmn:extensionElements><baton:command topic="t.commands" type="t.tell" /></bpmn:extensionElements></bpmn:sendTask>"#.to_string(),
                flow("f1", "a", "b"),
                task("b"),
                flow("f2", "b", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "command:", "type: t.tell", "data: {}", "- id: b"],
        ),
        (
            "receive task",
            [
                r#"<bpmn:receiveTask id="a" messageRef="m-done" />"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "await:", "- on: t.done"],
        ),
        (
            "intermediate message catch event",
            [
                r#"<bpmn:intermediateCatchEvent id="a"><bpmn:extensionElements><baton:await><baton:set name="x" value="event.data.x" /></baton:await></bpmn:extensionElements><bpmn:messageEventDefinition messageRef="m-done" /></bpmn:intermediateCatchEvent>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "await:", "- on: t.done", "set:", "x: event.data.x"],
        ),
        (
            "user task",
            [
                r#"<bpmn:userTask id="a"><bpmn:extensionElements><baton:command topic="crm.tasks" type="t.review" /><baton:await on="t.reviewed" /></bpmn:extensionElements></bpmn:userTask>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "manual:", "topic: crm.tasks", "type: t.review", "- on: t.reviewed"],
        ),
        (
            "manual task",
            [
                r#"<bpmn:manualTask id="a"><bpmn:extensionElements><baton:command topic="crm.tasks" type="t.check" /><baton:await on="t.checked" /></bpmn:extensionElements></bpmn:manualTask>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "manual:", "type: t.check"],
        ),
        (
            "exclusive gateway with FEEL and CEL conditions",
            [
                r#"<bpmn:exclusiveGateway id="a" default="f-d" />"#.to_string(),
                r#"<bpmn:sequenceFlow id="f-big" sourceRef="a" targetRef="b"><bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">=count &gt; 10 and not(count = 99)</bpmn:conditionExpression></bpmn:sequenceFlow>"#.to_string(),
                r#"<bpmn:sequenceFlow id="f-cel" sourceRef="a" targetRef="c"><bpmn:conditionExpression xsi:type="bpmn:tFormalExpression" language="cel">vars.count in [1, 2]</bpmn:conditionExpression></bpmn:sequenceFlow>"#.to_string(),
                flow("f-d", "a", "z"),
                task("b"),
                flow("f2", "b", "z"),
                task("c"),
                flow("f3", "c", "z"),
                end("z"),
            ]
            .join("\n"),
            vec![
                "- id: a", "switch:", "- when: vars.count > 10 && !(vars.count == 99)", "goto: b",
                "- when: vars.count in [1, 2]", "goto: c", "default: complete",
            ],
        ),
        (
            "parallel gateway",
            [
                r#"<bpmn:parallelGateway id="a" />"#.to_string(),
                flow("f1", "a", "b"),
                flow("f2", "a", "c"),
                task("b"),
                task("c"),
                flow("f3", "b", "j"),
                flow("f4", "c", "j"),
                r#"<bpmn:parallelGateway id="j" />"#.to_string(),
                flow("f5", "j", "d"),
                task("d"),
                flow("f6", "d", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "parallel:", "join: all", "branches:", "- - id: b", "- - id: c", "- id: d"],
        ),
        (
            "event-based gateway",
            [
                r#"<bpmn:eventBasedGateway id="a" />"#.to_string(),
                flow("f1", "a", "m1"),
                flow("f2", "a", "t1"),
                r#"<bpmn:intermediateCatchEvent id="m1"><bpmn:messageEventDefinition messageRef="m-done" /></bpmn:intermediateCatchEvent>"#.to_string(),
                r#"<bpmn:intermediateCatchEvent id="t1"><bpmn:timerEventDefinition><bpmn:timeDuration>PT15M</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#.to_string(),
                flow("f3", "m1", "b"),
                flow("f4", "t1", "z"),
                task("b"),
                flow("f5", "b", "z2"),
                end("z"),
                end("z2"),
            ]
            .join("\n"),
            vec!["- id: a", "await:", "- on: t.done", "timeout: 15m", "on_timeout: complete", "- id: b"],
        ),
        (
            "intermediate timer catch event (duration, date)",
            [
                r#"<bpmn:intermediateCatchEvent id="a"><bpmn:timerEventDefinition><bpmn:timeDuration>PT1H30M</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#.to_string(),
                flow("f1", "a", "b"),
                r#"<bpmn:intermediateCatchEvent id="b"><bpmn:timerEventDefinition><bpmn:timeDate>=dueDate</bpmn:timeDate></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#.to_string(),
                flow("f2", "b", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "wait: 1h 30m", "- id: b", "wait:", "until: vars.dueDate"],
        ),
        (
            "timer boundary event (to a step, and back to its task)",
            [
                task("a"),
                r#"<bpmn:boundaryEvent id="late" attachedToRef="a"><bpmn:timerEventDefinition><bpmn:timeDuration>P2D</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:boundaryEvent>"#.to_string(),
                flow("f1", "a", "b"),
                flow("f2", "late", "c"),
                task("b"),
                r#"<bpmn:boundaryEvent id="again" attachedToRef="b"><bpmn:timerEventDefinition><bpmn:timeDuration>PT30S</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:boundaryEvent>"#.to_string(),
                flow("f3", "again", "b"),
                flow("f4", "b", "z"),
                task("c"),
                flow("f5", "c", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "timeout: 2d", "on_timeout: c", "- id: b", "timeout: 30s", "- id: c"],
        ),
        (
            "error boundary events (a code, and retries exhausted)",
            [
                task("a"),
                r#"<bpmn:boundaryEvent id="bad" attachedToRef="a"><bpmn:extensionElements><baton:await><baton:set name="why" value="event.data.reason" /></baton:await></bpmn:extensionElements><bpmn:errorEventDefinition errorRef="e-bad" /></bpmn:boundaryEvent>"#.to_string(),
                r#"<bpmn:boundaryEvent id="any" attachedToRef="a"><bpmn:errorEventDefinition /></bpmn:boundaryEvent>"#.to_string(),
                flow("f1", "a", "z"),
                flow("f2", "bad", "failed"),
                flow("f3", "any", "failed"),
                end("z"),
                r#"<bpmn:endEvent id="failed"><bpmn:errorEventDefinition /></bpmn:endEvent>"#.to_string(),
            ]
            .join("\n"),
            vec!["- on: t.a.done", "- on: t.bad", "why: event.data.reason", "then: fail", "on_exhausted: fail"],
        ),
        (
            "message boundary event",
            [
                task("a"),
                r#"<bpmn:boundaryEvent id="other" attachedToRef="a"><bpmn:extensionElements><baton:await when="event.data.kind == 'x'" /></bpmn:extensionElements><bpmn:messageEventDefinition messageRef="m-other" /></bpmn:boundaryEvent>"#.to_string(),
                flow("f1", "a", "b"),
                flow("f2", "other", "c"),
                task("b"),
                flow("f3", "b", "z"),
                task("c"),
                flow("f4", "c", "z"),
                end("z"),
            ]
            .join("\n"),
            vec![
                "- on: t.a.done", "- on: t.other", "when: event.data.kind == 'x'", "goto: c",
                "- id: b", "then: complete", "- id: c",
            ],
        ),
        (
            "compensation boundary event and handler",
            [
                task("a"),
                r#"<bpmn:boundaryEvent id="undo" attachedToRef="a"><bpmn:compensateEventDefinition /></bpmn:boundaryEvent>"#.to_string(),
                r#"<bpmn:serviceTask id="undo-a" isForCompensation="true"><bpmn:extensionElements><baton:command topic="t.commands" type="t.undo"><baton:data name="what" value="key" /></baton:command></bpmn:extensionElements></bpmn:serviceTask>"#.to_string(),
                r#"<bpmn:association id="as" associationDirection="One" sourceRef="undo" targetRef="undo-a" />"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "compensate:", "topic: t.commands", "type: t.undo", "what: key"],
        ),
        (
            "call activity",
            [
                r#"<bpmn:callActivity id="a" calledElement="kyc-check"><bpmn:extensionElements><baton:call key="key + '-kyc'"><baton:set name="customer" value="vars.count" /></baton:call></bpmn:extensionElements></bpmn:callActivity>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "call:", "process: kyc-check", "key: key + '-kyc'", "vars:", "customer: vars.count"],
        ),
        (
            "script task (zeebe:script, FEEL)",
            [
                r#"<bpmn:scriptTask id="a"><bpmn:extensionElements><zeebe:script expression="=count * 2" resultVariable="double" /></bpmn:extensionElements></bpmn:scriptTask>"#.to_string(),
                flow("f1", "a", "b"),
                task("b"),
                flow("f2", "b", "z"),
                end("z"),
            ]
            .join("\n"),
            vec!["- id: a", "set:", "double: vars.count * 2"],
        ),
        (
            "end events: none, terminate, error, escalation, compensation, message",
            [
                task("a"),
                r#"<bpmn:boundaryEvent id="b1" attachedToRef="a"><bpmn:messageEventDefinition messageRef="m-other" /></bpmn:boundaryEvent>"#.to_string(),
                r#"<bpmn:boundaryEvent id="b2" attachedToRef="a"><bpmn:errorEventDefinition errorRef="e-bad" /></bpmn:boundaryEvent>"#.to_string(),
                r#"<bpmn:boundaryEvent id="b3" attachedToRef="a"><bpmn:timerEventDefinition><bpmn:timeDuration>PT1M</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:boundaryEvent>"#.to_string(),
                r#"<bpmn:boundaryEvent id="b4" attachedToRef="a"><bpmn:errorEventDefinition /></bpmn:boundaryEvent>"#.to_string(),
                flow("f1", "a", "tell"),
                flow("f2", "b1", "stop"),
                flow("f3", "b2", "op"),
                flow("f4", "b3", "undo"),
                flow("f5", "b4", "z"),
                r#"<bpmn:endEvent id="tell"><bpmn:extensionElements><baton:command topic="t.commands" type="t.finished" /></bpmn:extensionElements><bpmn:messageEventDefinition messageRef="m-done" /></bpmn:endEvent>"#.to_string(),
                r#"<bpmn:endEvent id="stop"><bpmn:terminateEventDefinition /></bpmn:endEvent>"#.to_string(),
                r#"<bpmn:endEvent id="op"><bpmn:escalationEventDefinition /></bpmn:endEvent>"#.to_string(),
                r#"<bpmn:endEvent id="undo"><bpmn:compensateEventDefinition /></bpmn:endEvent>"#.to_string(),
                end("z"),
            ]
            .join("\n"),
            vec![
                "- on: t.a.done", "- on: t.other", "then: complete", "- on: t.bad",
                "then: incident", "timeout: 1m", "on_timeout: fail", "on_exhausted: complete",
                "- id: tell", "type: t.finished",
            ],
        ),
        (
            "event sub-process (observe) and baton:expect",
            [
                r#"<bpmn:serviceTask id="a"><bpmn:extensionElements>
                  <baton:command topic="t.commands" type="t.ship" /><baton:await on="t.shipped" />
                  <baton:expect on="t.delivered" within="72h"><baton:command topic="support.commands" type="t.case"><baton:data name="o" value="key" /></baton:command></baton:expect>
                </bpmn:extensionElements></bpmn:serviceTask>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
                r#"<bpmn:subProcess id="sp" triggeredByEvent="true">
                  <bpmn:startEvent id="sp-s" isInterrupting="false"><bpmn:extensionElements><baton:await when="has(event.data.x)"><baton:set name="x" value="event.data.x" /></baton:await></bpmn:extensionElements><bpmn:messageEventDefinition messageRef="m-other" /></bpmn:startEvent>
                  <bpmn:endEvent id="sp-e" />
                  <bpmn:sequenceFlow id="sp-f" sourceRef="sp-s" targetRef="sp-e" />
                </bpmn:subProcess>"#.to_string(),
            ]
            .join("\n"),
            vec![
                "observe:", "- on: t.other", "when: has(event.data.x)", "x: event.data.x", "expect:",
                "- after: a", "on: t.delivered", "within: 72h", "otherwise:", "command:",
                "type: t.case",
            ],
        ),
    ];
    for (what, body, lines) in rows {
        let yaml = translate(what, &model(&body), Mapping::default());
        in_order(what, &yaml, &lines);
    }
}

#[test]
fn a_mapping_file_fills_in_what_a_camunda_model_does_not_say() {
    let mapping = Mapping::from_toml(
        "m.toml",
        r#"
[topics]
"com.acme.*" = "acme.commands"
"com.acme.pay.*" = "payments.commands"

[events]
"Payment received" = "com.acme.pay.received"

[commands.notify]
type = "com.acme.mail.send"
data = { to = "vars.email", template = "'paid'" }
"#,
    )
    .expect("valid mapping");
    let body = [
        // Camunda 8: the job type is the command type; the topic comes from the mapping.
        r#"<bpmn:serviceTask id="a"><bpmn:extensionElements><zeebe:taskDefinition type="com.acme.pay.charge" /><baton:await on="com.acme.pay.charged" /></bpmn:extensionElements></bpmn:serviceTask>"#.to_string(),
        flow("f1", "a", "b"),
        // A message named for people; the mapping gives its event type.
        r#"<bpmn:receiveTask id="b" messageRef="m-paid" />"#.to_string(),
        flow("f2", "b", "notify"),
        r#"<bpmn:sendTask id="notify" />"#.to_string(),
        flow("f3", "notify", "z"),
        end("z"),
    ]
    .join("\n");
    let xml = model(&body).replace(
        r#"<bpmn:message id="m-nameless" />"#,
        r#"<bpmn:message id="m-paid" name="Payment received" />"#,
    );
    let yaml = translate("mapping", &xml, mapping);
    in_order(
        "mapping",
        &yaml,
        &[
            "- id: a",
            "topic: payments.commands",
            "type: com.acme.pay.charge",
            "- on: com.acme.pay.charged",
            "- id: b",
            "- on: com.acme.pay.received",
            "- id: notify",
            "topic: acme.commands",
            "type: com.acme.mail.send",
            "template: \"'paid'\"",
            "to: vars.email",
        ],
    );
}

// ---- what is not translated is reported -----------------------------------

/// The line of `id="<id>"` in `xml`.
fn line_of(xml: &str, id: &str) -> usize {
    let needle = format!("id=\"{id}\"");
    xml.lines()
        .position(|l| l.contains(&needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no {needle}"))
}

fn errors(xml: &str) -> Vec<Problem> {
    match bpmn::import("t.bpmn", xml, &Options::default()) {
        Err(ImportError::Untranslatable { problems, .. }) => problems
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .collect(),
        Err(other) => panic!("expected untranslatable elements, got {other}"),
        Ok(i) => panic!("expected untranslatable elements, got\n{}", i.yaml),
    }
}

#[test]
fn every_element_it_cannot_translate_is_reported_with_id_name_and_line() {
    // (what, model body, the element reported, its name, what the report says)
    let rows: Vec<(&str, String, &str, Option<&str>, &str)> = vec![
        (
            "inclusive gateway",
            [
                r#"<bpmn:inclusiveGateway id="a" name="Which channels?" />"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            Some("Which channels?"),
            "inclusive gateways are not translated",
        ),
        (
            "complex gateway",
            [r#"<bpmn:complexGateway id="a" />"#.to_string(), flow("f1", "a", "z"), end("z")].join("\n"),
            "a",
            None,
            "complex gateways are not translated",
        ),
        (
            "embedded sub-process",
            [r#"<bpmn:subProcess id="a" name="Pack" />"#.to_string(), flow("f1", "a", "z"), end("z")].join("\n"),
            "a",
            Some("Pack"),
            "embedded sub-processes are not translated",
        ),
        (
            "business rule task",
            [r#"<bpmn:businessRuleTask id="a" name="Score" />"#.to_string(), flow("f1", "a", "z"), end("z")].join("\n"),
            "a",
            Some("Score"),
            "business rule tasks (DMN decisions) are not translated",
        ),
        (
            "task without a type",
            [r#"<bpmn:task id="a" name="Think" />"#.to_string(), flow("f1", "a", "z"), end("z")].join("\n"),
            "a",
            Some("Think"),
            "a task without a type does nothing baton can do",
        ),
        (
            "script task with a script",
            [
                r#"<bpmn:scriptTask id="a" scriptFormat="groovy"><bpmn:script>x = 1</bpmn:script></bpmn:scriptTask>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            None,
            "script tasks are not translated",
        ),
        (
            "signal intermediate catch event",
            [
                r#"<bpmn:intermediateCatchEvent id="a" name="Go"><bpmn:signalEventDefinition /></bpmn:intermediateCatchEvent>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            Some("Go"),
            "signal intermediate catch events are not translated",
        ),
        (
            "conditional intermediate catch event",
            [
                r#"<bpmn:intermediateCatchEvent id="a"><bpmn:conditionalEventDefinition /></bpmn:intermediateCatchEvent>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            None,
            "conditional intermediate catch events are not translated",
        ),
        (
            "link event",
            [
                r#"<bpmn:intermediateThrowEvent id="a"><bpmn:linkEventDefinition /></bpmn:intermediateThrowEvent>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            None,
            "link intermediate throw events are not translated",
        ),
        (
            "signal end event",
            [r#"<bpmn:endEvent id="a"><bpmn:signalEventDefinition /></bpmn:endEvent>"#.to_string()].join("\n"),
            "a",
            None,
            "signal end events are not translated",
        ),
        (
            "multi-instance task",
            [
                r#"<bpmn:serviceTask id="a" name="Each"><bpmn:extensionElements><baton:command topic="t" type="t.x" /></bpmn:extensionElements><bpmn:multiInstanceLoopCharacteristics /></bpmn:serviceTask>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            Some("Each"),
            "its multi-instance marker is not translated",
        ),
        (
            "escalation boundary event",
            [
                task("a"),
                r#"<bpmn:boundaryEvent id="esc" attachedToRef="a"><bpmn:escalationEventDefinition /></bpmn:boundaryEvent>"#.to_string(),
                flow("f1", "a", "z"),
                flow("f2", "esc", "z"),
                end("z"),
            ]
            .join("\n"),
            "esc",
            None,
            "escalation boundary events are not translated",
        ),
        (
            "non-interrupting boundary event",
            [
                task("a"),
                r#"<bpmn:boundaryEvent id="nb" name="Reminder" attachedToRef="a" cancelActivity="false"><bpmn:timerEventDefinition><bpmn:timeDuration>PT1H</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:boundaryEvent>"#.to_string(),
                flow("f1", "a", "z"),
                flow("f2", "nb", "z"),
                end("z"),
            ]
            .join("\n"),
            "nb",
            Some("Reminder"),
            "non-interrupting boundary events are not translated",
        ),
        (
            "timer cycle",
            [
                r#"<bpmn:intermediateCatchEvent id="a"><bpmn:timerEventDefinition><bpmn:timeCycle>R3/PT10M</bpmn:timeCycle></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            None,
            "timer cycles are not translated",
        ),
        (
            "duration in months",
            [
                r#"<bpmn:intermediateCatchEvent id="a"><bpmn:timerEventDefinition><bpmn:timeDuration>P1M</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            None,
            "years and months have no fixed length",
        ),
        (
            "FEEL condition with a function call",
            [
                r#"<bpmn:exclusiveGateway id="a" default="f2" />"#.to_string(),
                r#"<bpmn:sequenceFlow id="f1" name="Many" sourceRef="a" targetRef="z"><bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">=count(items) &gt; 3</bpmn:conditionExpression></bpmn:sequenceFlow>"#.to_string(),
                flow("f2", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "f1",
            Some("Many"),
            "FEEL `=count(items) > 3` is not translated to CEL: function calls",
        ),
        (
            "JUEL condition (Camunda 7)",
            [
                r#"<bpmn:exclusiveGateway id="a" default="f2" />"#.to_string(),
                r#"<bpmn:sequenceFlow id="f1" sourceRef="a" targetRef="z"><bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">${total &gt; 10}</bpmn:conditionExpression></bpmn:sequenceFlow>"#.to_string(),
                flow("f2", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "f1",
            None,
            "is a JUEL expression (Camunda 7), which is not translated",
        ),
        (
            "condition in another language",
            [
                r#"<bpmn:exclusiveGateway id="a" default="f2" />"#.to_string(),
                r#"<bpmn:sequenceFlow id="f1" sourceRef="a" targetRef="z"><bpmn:conditionExpression xsi:type="bpmn:tFormalExpression" language="javascript">total &gt; 10</bpmn:conditionExpression></bpmn:sequenceFlow>"#.to_string(),
                flow("f2", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "f1",
            None,
            "conditions in `javascript` are not translated",
        ),
        (
            "unreachable element",
            [task("a"), flow("f1", "a", "z"), end("z"), task("lost")].join("\n"),
            "lost",
            Some("Task lost"),
            "not reached from the start event",
        ),
        (
            "message without a name",
            [
                r#"<bpmn:receiveTask id="a" messageRef="m-nameless" />"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            None,
            "message `m-nameless` has no name",
        ),
        (
            "task without a command type",
            [
                r#"<bpmn:serviceTask id="a" name="Do"><bpmn:extensionElements><baton:await on="t.done" /></bpmn:extensionElements></bpmn:serviceTask>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            Some("Do"),
            "no command type: give baton:command type=",
        ),
        (
            "a fork without a gateway",
            [task("a"), flow("f1", "a", "y"), flow("f2", "a", "z"), end("y"), end("z")].join("\n"),
            "a",
            Some("Task a"),
            "several sequence flows leave it without a gateway",
        ),
        (
            "a misspelt baton element",
            [
                r#"<bpmn:serviceTask id="a"><bpmn:extensionElements><baton:command topic="t" type="t.x" /><baton:retries attempts="3" /></bpmn:extensionElements></bpmn:serviceTask>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            None,
            "baton:retries: does not apply to a service task",
        ),
        (
            "an unknown attribute of a baton element",
            [
                r#"<bpmn:serviceTask id="a"><bpmn:extensionElements><baton:command topic="t" type="t.x" /><baton:retry attempts="3" backof="2s" /></bpmn:extensionElements></bpmn:serviceTask>"#.to_string(),
                flow("f1", "a", "z"),
                end("z"),
            ]
            .join("\n"),
            "a",
            None,
            "baton:retry: unknown attribute `backof`",
        ),
    ];
    for (what, body, id, name, message) in rows {
        let xml = model(&body);
        let problems = errors(&xml);
        let found = problems
            .iter()
            .find(|p| p.id == id && p.message.contains(message));
        let Some(p) = found else {
            panic!("{what}: no error on `{id}` saying {message:?}; got {problems:#?}");
        };
        assert_eq!(p.name.as_deref(), name, "{what}");
        if !p.message.starts_with("baton:") {
            assert_eq!(p.line, line_of(&xml, id), "{what}: {p:?}");
        }
        let text = p.render("t.bpmn");
        assert!(
            text.starts_with(&format!("t.bpmn:{}: error: ", p.line))
                && text.contains(&format!("`{id}`")),
            "{what}: {text}"
        );
    }
}

#[test]
fn keep_going_writes_the_rest_with_an_incident_where_an_element_is_missing() {
    let xml = model(
        &[
            task("a"),
            flow("f1", "a", "odd"),
            r#"<bpmn:inclusiveGateway id="odd" name="Odd" />"#.to_string(),
            flow("f2", "odd", "z"),
            end("z"),
        ]
        .join("\n"),
    );
    let opts = Options {
        keep_going: true,
        ..Options::default()
    };
    let got = bpmn::import("t.bpmn", &xml, &opts).expect("written anyway");
    assert!(got.valid, "{}", got.yaml);
    let errors: Vec<(&str, &str)> = got
        .errors()
        .map(|p| (p.id.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0]
            .1
            .starts_with("inclusive gateways are not translated"),
        "{errors:?}"
    );
    assert_eq!(
        errors[1],
        (
            "z",
            "the flow reaches it only through `odd`, which is not translated"
        )
    );
    in_order(
        "keep going",
        &got.yaml,
        &[
            "- on: t.a.done",
            "# → `odd`, which is not translated (see the import's report)",
            "then: incident",
        ],
    );
}

#[test]
fn what_changes_nothing_is_a_warning_and_the_import_goes_on() {
    let xml = model(
        &[
            r#"<bpmn:laneSet id="ls"><bpmn:lane id="lane-ops" name="Ops" /></bpmn:laneSet>"#
                .to_string(),
            r#"<bpmn:serviceTask id="a"><bpmn:extensionElements>
              <baton:command topic="t" type="t.x" /><baton:await on="t.y" />
              <zeebe:ioMapping><zeebe:input source="=x" target="y" /></zeebe:ioMapping>
            </bpmn:extensionElements></bpmn:serviceTask>"#
                .to_string(),
            r#"<bpmn:dataObjectReference id="doc" name="Order document" />"#.to_string(),
            flow("f1", "a", "mid"),
            r#"<bpmn:intermediateThrowEvent id="mid" name="Milestone" />"#.to_string(),
            flow("f2", "mid", "z"),
            end("z"),
        ]
        .join("\n"),
    );
    let got = bpmn::import("t.bpmn", &xml, &Options::default()).expect("imported");
    assert!(got.valid);
    let warnings: Vec<(String, String)> = got
        .problems
        .iter()
        .map(|p| {
            assert_eq!(p.severity, Severity::Warning, "{p:?}");
            (p.id.clone(), p.message.clone())
        })
        .collect();
    for (id, says) in [
        ("lane-ops", "lanes are not translated"),
        ("a", "`zeebe:ioMapping` is not translated"),
        ("doc", "data and groups are not translated"),
        ("mid", "the flow passes through it"),
    ] {
        assert!(
            warnings.iter().any(|(i, m)| i == id && m.contains(says)),
            "{id}: {says}: {warnings:?}"
        );
    }
}

#[test]
fn files_that_are_not_one_bpmn_process_are_refused_with_the_reason() {
    let opts = Options::default();
    match bpmn::import("x.bpmn", "<a>\n<b></a>", &opts) {
        Err(e @ ImportError::Read { .. }) => {
            assert!(e.to_string().starts_with("x.bpmn: line 2, column "), "{e}")
        }
        other => panic!("{other:?}"),
    }
    match bpmn::import("x.bpmn", "<definitions/>", &opts) {
        Err(e @ ImportError::Read { .. }) => {
            assert!(e.to_string().contains("not BPMN 2.0 `definitions`"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let two = model(&[task("a"), flow("f1", "a", "z"), end("z")].join("\n")).replace(
        "</bpmn:process>",
        r#"</bpmn:process><bpmn:process id="q"><bpmn:startEvent id="s2" /></bpmn:process>"#,
    );
    match bpmn::import("x.bpmn", &two, &opts) {
        Err(e @ ImportError::SeveralProcesses { .. }) => {
            assert!(
                e.to_string().contains("(p, q); choose one with --process"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
    let chosen = Options {
        process: Some("p".into()),
        ..Options::default()
    };
    assert!(bpmn::import("x.bpmn", &two, &chosen).is_ok());
    let none = model("").replace(
        r#"<bpmn:messageEventDefinition messageRef="m-start" />"#,
        "",
    );
    let problems = errors(&none);
    assert!(
        problems
            .iter()
            .any(|p| p.id == "begin" && p.message.contains("none start events are not translated")),
        "{problems:?}"
    );
}

#[test]
fn the_command_line_reports_and_exits_1_unless_asked_to_keep_going() {
    let model_path = temp("odd.bpmn");
    let xml = model(
        &[
            task("a"),
            flow("f1", "a", "odd"),
            r#"<bpmn:inclusiveGateway id="odd" name="Odd" />"#.to_string(),
            flow("f2", "odd", "z"),
            end("z"),
        ]
        .join("\n"),
    );
    std::fs::write(&model_path, &xml).expect("write");
    let m = model_path.to_str().expect("utf-8 path");
    let out = temp("odd.yaml");
    let o = out.to_str().expect("utf-8 path");
    let (code, stdout, err) = baton(&["import", m, "-o", o]);
    assert_eq!(code, 1, "{stdout}{err}");
    let line = line_of(&xml, "odd");
    assert!(
        err.contains(&format!("{m}:{line}: error: inclusive gateway `odd` (\"Odd\"): inclusive gateways are not translated")),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
    let (code, _, err) = baton(&["import", m, "-o", o, "--keep-going"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("error: inclusive gateway `odd`"), "{err}");
    let (code, stdout, err) = baton(&["validate", o]);
    assert_eq!(code, 0, "{stdout}{err}");
    // A mapping file that does not parse is the user's to fix: exit 2.
    let bad = temp("bad.toml");
    std::fs::write(&bad, "[topic]\n").expect("write");
    let (code, _, err) = baton(&[
        "import",
        "examples/bpmn/order-to-cash.bpmn",
        "--mapping",
        bad.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `topic`"), "{err}");
}
