//! Every scenario under `examples/<process>/` runs against `examples/<process>.yaml`
//! (plus any other example it calls) and all its expectations hold.

use std::path::Path;

use baton::dsl;
use baton::engine::Registry;
use baton::simulate::Simulation;

fn registry() -> Registry {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut reg = Registry::default();
    for entry in std::fs::read_dir(&dir).expect("examples directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable example");
            let def =
                dsl::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
            reg.deploy(def, &text).expect("no version conflict");
        }
    }
    reg
}

fn run_all(process: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(process);
    let mut ran = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("readable scenario");
        let mut sim = Simulation::new(registry());
        if let Err(e) = sim.run(&path.display().to_string(), &text) {
            panic!("{e}\n--- log ---\n{}", sim.render());
        }
        ran += 1;
    }
    ran
}

#[test]
fn order_to_cash_scenarios() {
    assert!(run_all("order-to-cash") >= 4);
}

#[test]
fn customer_onboarding_scenarios() {
    assert!(run_all("customer-onboarding") >= 3);
}

#[test]
fn incident_response_scenarios() {
    assert!(run_all("incident-response") >= 2);
}

#[test]
fn a_wrong_expectation_fails_the_scenario() {
    let mut sim = Simulation::new(registry());
    let scenario = r#"{"event": {"type": "com.acme.order.placed", "data": {"orderId": "x", "total": 1, "lines": [], "customerId": "c", "address": "a"}}}
{"expect": {"commands": ["com.acme.payment.charge"]}}"#;
    let err = sim
        .run("inline", scenario)
        .expect_err("the first command is reserve, not charge");
    assert_eq!(err.line, 2);
    assert!(
        err.message.contains("com.acme.inventory.reserve"),
        "{}",
        err.message
    );
}
