//! The `baton` binary: exit codes and what it prints.

mod support;

use support::baton_cli as baton;

#[test]
fn validate_accepts_the_examples() {
    let (code, out, err) = baton(&[
        "validate",
        "examples/order-to-cash.yaml",
        "examples/customer-onboarding.yaml",
        "examples/incident-response.yaml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(": ok").count(), 3, "{out}");
}

#[test]
fn validate_fails_with_located_errors() {
    let dir = std::env::temp_dir().join(format!("baton-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "process: bad\nversion: 1\nstart: { on: x, key: event.data.id }\nsteps:\n  - id: a\n    await: [ { on: y, goto: b } ]\n",
    )
    .expect("write");
    let (code, _, err) = baton(&["validate", bad.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "bad.yaml:6:29: error: steps[0].await[0].goto: unknown step `b` (did you mean `a`?)"
        ),
        "{err}"
    );
    assert!(err.contains("1 error"), "{err}");
}

#[test]
fn simulate_shows_the_compensation_path() {
    let (code, out, err) = baton(&[
        "simulate",
        "examples/order-to-cash.yaml",
        "--events",
        "examples/order-to-cash/payment-declined.jsonl",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("→ compensation erp.commands com.acme.inventory.release id=order-to-cash/o-1002/reserve/1/compensate"), "{out}");
    assert!(out.contains("order-to-cash/o-1002 v1: failed"), "{out}");
    assert!(out.contains("scenario passed"), "{out}");
}

#[test]
fn simulate_shows_the_timeout_path() {
    let (code, out, err) = baton(&[
        "simulate",
        "examples/order-to-cash.yaml",
        "--events",
        "examples/order-to-cash/reserve-timeout.jsonl",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("timer reserve/1/timeout/1.1 fired"), "{out}");
    assert!(out.contains("id=order-to-cash/o-1003/reserve/3"), "{out}");
    assert!(
        out.contains("! incident 1 at reserve: step 'reserve' timed out after 3 attempts"),
        "{out}"
    );
}

#[test]
fn simulate_fails_when_an_expectation_does_not_hold() {
    let dir = std::env::temp_dir().join(format!("baton-cli-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let scenario = dir.join("wrong.jsonl");
    std::fs::write(
        &scenario,
        "{\"event\": {\"type\": \"com.acme.order.placed\", \"data\": {\"orderId\": \"o\", \"total\": 1, \"lines\": [], \"customerId\": \"c\", \"address\": \"a\"}}}\n{\"expect\": {\"key\": \"o\", \"status\": \"completed\"}}\n",
    )
    .expect("write");
    let (code, _, err) = baton(&[
        "simulate",
        "examples/order-to-cash.yaml",
        "--events",
        scenario.to_str().expect("utf-8 path"),
        "--quiet",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("wrong.jsonl:2: expectation failed: status: expected completed, got active"),
        "{err}"
    );
}

#[test]
fn graph_prints_mermaid() {
    let (code, out, _) = baton(&["graph", "examples/order-to-cash.yaml"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("flowchart TD"), "{out}");
    assert!(
        out.contains("s0_reserve -->|\"com.acme.inventory.unavailable\"| failed"),
        "{out}"
    );
    assert!(
        out.contains("s1_approval -->|\"vars.total > 10000\"| s2_manual_approval"),
        "{out}"
    );
}

/// `baton run` takes its admin port before it joins the cluster: a port in
/// use is said at once, with the address, even with no broker to reach.
#[test]
fn run_says_at_once_that_its_admin_port_is_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("its address");
    let dir = std::env::temp_dir().join(support::unique("baton-cli-port"));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let config = dir.join("baton.toml");
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/order-to-cash.yaml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\ninput_topics = [\"orders\"]\n[definitions]\npaths = [\"{}\"]\n[admin]\nlisten = \"{addr}\"\n",
            examples.display()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("baton runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("baton run kept going with its admin port in use");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr reads");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&format!("admin port {addr}")), "{stderr}");
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}
