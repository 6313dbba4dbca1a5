//! The deployment files against what baton really is: `docker-compose.yml`,
//! `deploy/Dockerfile` and `deploy/kubernetes/`. No Docker engine or
//! cluster runs here, so each file is read the way its tool reads it and
//! checked against the binary: every `BATON_*` variable and the mounted
//! configuration load through `baton check` exactly as `baton run` loads
//! them (from a directory laid out as the container's file system), ports
//! and probe paths are the ones baton serves, image names and versions
//! agree with the crate and the tested Kafka, the image's build context
//! builds, and the image's run steps (its command, `HEALTHCHECK` and stop
//! signal, with the compose environment) run against Apache Kafka.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Broker;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A YAML document as JSON (scalars as strings), the way the tools see it.
fn yaml(rel: &str) -> Value {
    let text = read(rel);
    let node = marked_yaml::parse_yaml(0, &text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    fn to_json(n: &marked_yaml::Node) -> Value {
        match n {
            marked_yaml::Node::Scalar(s) => Value::String(s.as_str().to_string()),
            marked_yaml::Node::Sequence(s) => Value::Array(s.iter().map(to_json).collect()),
            marked_yaml::Node::Mapping(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                    .collect(),
            ),
        }
    }
    to_json(&node)
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {v}"))
}

fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// The Apache Kafka version the tests run (scripts/kafka/pom.xml).
fn kafka_version() -> String {
    let pom = read("scripts/kafka/pom.xml");
    let from = pom
        .find("<kafka.version>")
        .expect("kafka.version in the pom")
        + 15;
    let to = pom[from..].find('<').expect("closing tag") + from;
    pom[from..to].to_string()
}

/// What `baton check` says of a configuration under an environment.
fn check(config: &Path, env: &BTreeMap<String, String>) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .env_clear()
        .envs(env)
        .output()
        .expect("baton check runs");
    assert!(
        out.status.success(),
        "baton check --config {} with {env:?} failed: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("baton check prints JSON")
}

/// `${VAR:-default}` as compose expands it when VAR is unset.
fn compose_default(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("closing brace") + at;
        let inner = &rest[at + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, d)| d));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// One instruction of a Dockerfile, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    op: String,
    args: String,
}

/// The Dockerfile's stages, each a list of instructions (ARGs before the
/// first FROM are in stage 0's list too, with their defaults applied).
fn dockerfile() -> (BTreeMap<String, String>, Vec<Vec<Instruction>>) {
    let text = read("deploy/Dockerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.starts_with('#') || t.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(t);
            joined.push(std::mem::take(&mut current));
        }
    }
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in joined {
        let (op, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let mut rest = rest.trim().to_string();
        for (k, v) in &args {
            rest = rest.replace(&format!("${{{k}}}"), v);
        }
        let op = op.to_ascii_uppercase();
        if op == "ARG" && stages.is_empty() {
            if let Some((k, v)) = rest.split_once('=') {
                args.insert(k.to_string(), v.to_string());
            }
            continue;
        }
        if op == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("an instruction after FROM")
            .push(Instruction { op, args: rest });
    }
    (args, stages)
}

/// An exec-form argument list (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args.trim()).unwrap_or_else(|e| panic!("{args}: not exec form: {e}"))
}

/// `COPY` instructions of a stage as (sources, destination), flags dropped.
fn copies(stage: &[Instruction]) -> Vec<(Vec<String>, String, bool)> {
    stage
        .iter()
        .filter(|i| i.op == "COPY")
        .map(|i| {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let from_stage = words.iter().any(|w| w.starts_with("--from="));
            let paths: Vec<String> = words
                .iter()
                .filter(|w| !w.starts_with("--"))
                .map(|w| w.to_string())
                .collect();
            let (dest, sources) = paths.split_last().expect("COPY has a destination");
            (sources.to_vec(), dest.clone(), from_stage)
        })
        .collect()
}

/// Copies `sources` (repository paths) to `dest` under `root`, as COPY does.
fn copy_into(root: &Path, sources: &[String], dest: &str, workdir: &str) {
    let dest = if dest.starts_with('/') {
        root.join(dest.trim_start_matches('/'))
    } else {
        root.join(workdir.trim_start_matches('/')).join(dest)
    };
    let into_dir = sources.len() > 1 || dest.to_string_lossy().ends_with('/');
    for src in sources {
        let from = repo().join(src);
        assert!(
            from.exists(),
            "deploy/Dockerfile copies {src}, which does not exist"
        );
        let to = if into_dir || from.is_dir() && dest.exists() {
            dest.join(from.file_name().expect("a file name"))
        } else {
            dest.clone()
        };
        copy_tree(&from, &to);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("create directory");
        for e in std::fs::read_dir(from).expect("list directory") {
            let e = e.expect("entry");
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).expect("create directory");
        }
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// The runtime image's file system (the last stage's COPYs from the
/// repository) under `root`, and `/etc/baton` in its configuration
/// pointed there.
fn image_root(root: &Path) -> PathBuf {
    let (_, stages) = dockerfile();
    let last = stages.last().expect("a runtime stage");
    for (sources, dest, from_stage) in copies(last) {
        if !from_stage {
            copy_into(root, &sources, &dest, "/");
        }
    }
    relocate(root, "etc/baton/baton.toml")
}

/// Rewrites the absolute paths of a configuration at `root/rel` to lie
/// under `root`, as a container's mounts put them; returns its path.
fn relocate(root: &Path, rel: &str) -> PathBuf {
    let path = root.join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let prefix = root.display().to_string();
    std::fs::write(&path, text.replace("\"/etc/", &format!("\"{prefix}/etc/")))
        .expect("write the configuration");
    path
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("{addr}: no port"))
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split([':', '/']).next().unwrap_or(rest)
}

fn baton_services(compose: &Value) -> Vec<(String, Value)> {
    let services = compose["services"].as_object().expect("services");
    services
        .iter()
        .filter(|(name, _)| name.starts_with("baton-"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

fn compose_env(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .expect("environment as a mapping")
        .iter()
        .map(|(k, v)| (k.clone(), compose_default(s(v, k))))
        .collect()
}

/// The value after a flag in an argument list.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("{name} in {args:?}"));
    &args[at + 1]
}

#[test]
fn the_compose_file_runs_what_baton_exposes() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let version = env!("CARGO_PKG_VERSION");

    // Kafka: the official image, the version the tests run, KRaft.
    let kafka = &services["kafka"];
    assert_eq!(
        s(&kafka["image"], "kafka image"),
        format!("apache/kafka:{}", kafka_version())
    );
    let kenv = kafka["environment"].as_object().expect("kafka environment");
    assert_eq!(
        s(&kenv["KAFKA_PROCESS_ROLES"], "roles"),
        "broker,controller"
    );
    for internal in [
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ] {
        assert_eq!(s(&kenv[internal], internal), "1", "{internal} on one node");
    }
    let advertised = s(&kenv["KAFKA_ADVERTISED_LISTENERS"], "listeners");

    // The simulated systems: baton's own image and subcommand.
    let sim = &services["services"];
    assert_eq!(s(&sim["image"], "image"), format!("baton:{version}"));
    let sim_args: Vec<String> = list(&sim["command"])
        .iter()
        .map(|a| s(a, "command").to_string())
        .collect();
    assert_eq!(sim_args[0], "services");
    let help = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["services", "--help"])
        .output()
        .expect("baton services --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for a in sim_args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(a.as_str()), "baton services has no {a}");
    }

    // Every depends_on and mounted file exists.
    for (name, svc) in services {
        if let Some(deps) = svc["depends_on"].as_object() {
            for d in deps.keys() {
                assert!(services.contains_key(d), "{name} depends on unknown {d}");
            }
        }
        for v in list(&svc["volumes"]) {
            let src = s(&v, "volume").split(':').next().expect("source");
            assert!(repo().join(src).exists(), "{name} mounts {src}, missing");
        }
        if let Some(build) = svc["build"].as_object() {
            let file = s(&build["dockerfile"], "dockerfile");
            assert!(repo().join(file).exists(), "{name} builds {file}, missing");
            assert_eq!(s(&svc["image"], "image"), format!("baton:{version}"));
        }
    }

    // Three baton processes, one group, their own instance ids and ports,
    // each configuration loading in the image as `baton run` loads it.
    let batons = baton_services(&compose);
    assert_eq!(batons.len(), 3, "three baton processes");
    let mut ids = std::collections::BTreeSet::new();
    let prometheus = read("deploy/prometheus.yml");
    let collector = read("deploy/otel-collector.yaml");
    for (name, svc) in &batons {
        let dir = std::env::temp_dir().join(support::unique("compose-root"));
        let config = image_root(&dir);
        let env = compose_env(svc);
        let c = check(&config, &env);
        assert!(
            ids.insert(c["instance_id"].to_string()),
            "{name}: instance id shared"
        );
        assert_eq!(
            c["instance_id"],
            json!(name),
            "{name}: instance id is its name"
        );
        assert_eq!(c["group_id"], json!("baton"));
        assert_eq!(c["group_protocol"], json!("consumer"), "KIP-848");
        let bootstrap = s(&c["bootstrap_servers"], "bootstrap");
        assert!(
            advertised.contains(&format!("PLAINTEXT://{bootstrap}")),
            "{name} reaches Kafka at {bootstrap}, advertised {advertised}"
        );
        assert_eq!(
            c["input_topics"],
            json!([flag(&sim_args, "--topic")]),
            "{name} consumes what the simulated systems publish"
        );
        assert_eq!(
            c["partitions"].to_string(),
            flag(&sim_args, "--partitions"),
            "the simulated systems create topics with baton's partitions"
        );
        assert_eq!(
            c["definitions"],
            json!([
                "customer-onboarding v1",
                "incident-response v1",
                "order-to-cash v1"
            ])
        );
        for var in list(&c["token_variables"]) {
            assert!(
                env.contains_key(s(&var, "token variable")),
                "{name}: {var} unset"
            );
        }
        // Ports: the published container port is admin.listen's.
        let admin = port_of(s(&c["admin_listen"], "admin listen"));
        let ports: Vec<String> = list(&svc["ports"])
            .iter()
            .map(|p| s(p, "port").to_string())
            .collect();
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{admin}"))),
            "{name} publishes {ports:?}, baton listens on {admin}"
        );
        let advertised_admin = s(&c["admin_advertised"], "advertised");
        assert_eq!(host_of(advertised_admin), s(&svc["hostname"], "hostname"));
        assert_eq!(port_of(advertised_admin), admin);
        // Traces go to the collector's OTLP/HTTP receiver, metrics are scraped.
        let otlp = s(&c["otlp_endpoint"], "otlp endpoint");
        assert!(
            services.contains_key(host_of(otlp)),
            "{otlp}: no such service"
        );
        assert!(
            collector.contains(&format!(":{}", port_of(otlp))),
            "collector port"
        );
        assert!(
            prometheus.contains(&format!("\"{name}:{admin}\"")),
            "Prometheus scrapes {name}:{admin}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(prometheus.contains("metrics_path: /metrics"));
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_probes_healthz() {
    let (args, stages) = dockerfile();
    assert!(stages.len() >= 2, "multi-stage");
    let last = stages.last().expect("runtime stage");
    let base = &last[0].args;
    assert!(
        base.contains("-slim") || base.contains("distroless"),
        "small runtime image, got {base}"
    );
    // The image's toolchain is no older than the one these tests were built with.
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .expect("rustc");
    let tested: Vec<u32> = String::from_utf8_lossy(&rustc.stdout)
        .split_whitespace()
        .nth(1)
        .expect("rustc version")
        .split('.')
        .take(2)
        .map(|p| p.parse().expect("number"))
        .collect();
    let image: Vec<u32> = args["RUST_VERSION"]
        .split('.')
        .map(|p| p.parse().expect("number"))
        .collect();
    assert!(
        image >= tested,
        "deploy/Dockerfile builds with Rust {image:?}, older than the tested {tested:?}"
    );
    let find = |op: &str| -> String {
        last.iter()
            .rev()
            .find(|i| i.op == op)
            .map(|i| i.args.clone())
            .unwrap_or_else(|| panic!("no {op} in the runtime stage"))
    };
    let user = find("USER");
    let uid = user.split(':').next().unwrap_or("");
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u > 0),
        "runs as a numeric non-root user, got {user}"
    );
    assert_eq!(find("STOPSIGNAL"), "SIGTERM");

    // The configuration it runs, as the image holds it.
    let dir = std::env::temp_dir().join(support::unique("image-root"));
    let config = image_root(&dir);
    let env: BTreeMap<String, String> = [
        ("BATON_OPERATOR_TOKEN", "o".repeat(20)),
        ("BATON_VIEWER_TOKEN", "v".repeat(20)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let c = check(&config, &env);
    let admin = port_of(s(&c["admin_listen"], "admin listen"));
    assert_eq!(find("EXPOSE"), admin.to_string());
    let health = find("HEALTHCHECK");
    let cmd = exec_form(health.split_once("CMD").expect("HEALTHCHECK CMD").1);
    assert_eq!(cmd[..2], ["baton".to_string(), "probe".to_string()]);
    assert_eq!(cmd[2], format!("http://127.0.0.1:{admin}/healthz"));
    let mut run = exec_form(&find("ENTRYPOINT"));
    run.extend(exec_form(&find("CMD")));
    assert_eq!(run, ["baton", "run", "--config", "/etc/baton/baton.toml"]);
    // The binary comes from the build stage, where the build put it.
    let binary = copies(last)
        .into_iter()
        .find(|c| c.2)
        .expect("a COPY --from of the build stage");
    assert_eq!(binary.0, ["/usr/local/bin/baton"]);
    assert!(
        stages[0].iter().any(|i| i.op == "RUN"
            && i.args
                .contains("cp target/release/baton /usr/local/bin/baton")),
        "the build stage leaves the binary at /usr/local/bin/baton"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The build stage copies everything `cargo build --bin baton` reads: a
/// directory holding only what it copies type-checks with the lock file
/// as it is (`--locked`) and no network (`--offline`).
#[test]
fn the_image_build_context_builds() {
    let (_, stages) = dockerfile();
    let build = &stages[0];
    let workdir = build
        .iter()
        .rev()
        .find(|i| i.op == "WORKDIR")
        .map_or("/".to_string(), |i| i.args.clone());
    let cargo = build
        .iter()
        .find(|i| i.op == "RUN" && i.args.contains("cargo build"))
        .expect("a cargo build step");
    for f in ["--locked", "--release", "--bin baton"] {
        assert!(cargo.args.contains(f), "the image builds with {f}");
    }
    let dir = std::env::temp_dir().join(support::unique("image-build"));
    for (sources, dest, from_stage) in copies(build) {
        assert!(!from_stage);
        copy_into(&dir, &sources, &dest, &workdir);
    }
    let src = dir.join(workdir.trim_start_matches('/'));
    // The tests' own target directory: dependencies are already compiled.
    let target = Path::new(env!("CARGO_BIN_EXE_baton"))
        .ancestors()
        .nth(2)
        .expect("target directory")
        .to_path_buf();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "check",
            "--locked",
            "--offline",
            "--bin",
            "baton",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(&src)
        .stdout(Stdio::null())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "the image's build context does not build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The image's run steps with baton-1's compose environment against
/// Apache Kafka: `baton run` as the image starts it becomes healthy by its
/// `HEALTHCHECK`, ready, serves `/metrics`, runs instances of the three
/// examples for the simulated systems of the compose file, and stops on
/// SIGTERM, committing first, well inside the compose stop grace period.
#[test]
fn the_image_runs_against_kafka_and_stops_on_sigterm() {
    let b = Broker::start();
    let compose = yaml("docker-compose.yml");
    let (_, svc) = baton_services(&compose).remove(0);
    let config = image_root(&b.dir.join("root"));
    let group = support::unique("compose");
    let topic = format!("{group}.events");
    let admin = support::free_addr();
    let mut env = compose_env(&svc);
    env.remove("BATON_TELEMETRY__OTLP_ENDPOINT");
    env.extend(
        [
            ("BATON_KAFKA__BOOTSTRAP_SERVERS", b.bootstrap.clone()),
            ("BATON_KAFKA__GROUP_ID", group.clone()),
            ("BATON_KAFKA__INPUT_TOPICS", format!("[\"{topic}\"]")),
            ("BATON_TOPICS__PREFIX", format!("{group}.baton")),
            ("BATON_ADMIN__LISTEN", admin.to_string()),
            ("RUST_LOG", "info,rdkafka=warn".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let (_, stages) = dockerfile();
    let last = stages.last().expect("runtime stage");
    let cmd = last
        .iter()
        .rev()
        .find(|i| i.op == "CMD")
        .map(|i| exec_form(&i.args))
        .expect("CMD");
    let cmd: Vec<String> = cmd
        .into_iter()
        .map(|a| {
            if a == "/etc/baton/baton.toml" {
                config.display().to_string()
            } else {
                a
            }
        })
        .collect();
    let log = b.dir.join("baton.log");
    let log_file = std::fs::File::create(&log).expect("log");
    let baton = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(&cmd)
        .env_clear()
        .envs(&env)
        .stdout(Stdio::from(log_file.try_clone().expect("log")))
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("baton run starts");
    let mut baton = Reaped(baton);

    // The simulated systems as compose runs them, on the test's topic.
    let sim: Vec<String> = list(&compose["services"]["services"]["command"])
        .iter()
        .map(|a| s(a, "command").to_string())
        .collect();
    let mut sim_args = sim.clone();
    let at = sim_args
        .iter()
        .position(|a| a == "--brokers")
        .expect("--brokers")
        + 1;
    sim_args[at] = b.bootstrap.clone();
    let at = sim_args
        .iter()
        .position(|a| a == "--topic")
        .expect("--topic")
        + 1;
    sim_args[at] = topic.clone();
    sim_args.extend(["--seconds".to_string(), "8".to_string()]);
    let sim_log = std::fs::File::create(b.dir.join("services.log")).expect("log");
    let services = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(&sim_args)
        .stdout(Stdio::from(sim_log.try_clone().expect("log")))
        .stderr(Stdio::from(sim_log))
        .spawn()
        .expect("baton services starts");
    let mut services = Reaped(services);

    // HEALTHCHECK, as the image declares it, on the test's admin port.
    let health = last
        .iter()
        .find(|i| i.op == "HEALTHCHECK")
        .expect("HEALTHCHECK");
    let mut probe = exec_form(health.args.split_once("CMD").expect("CMD").1);
    probe[2] = probe[2].replace("127.0.0.1:8080", &admin.to_string());
    support::eventually(60, "the HEALTHCHECK passes", || {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(&probe[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
    });
    support::eventually(90, "/readyz answers 200", || {
        support::admin::get(admin, "/readyz").filter(|(code, _)| *code == 200)
    });
    // Instances of all three examples start; orders and onboardings end
    // (an incident stays open for ten quiet minutes after it recovers).
    let completed = support::eventually(120, "instances of the examples start and end", || {
        let (_, text) = support::admin::get(admin, "/metrics")?;
        let m = support::admin::parse_metrics(&text).ok()?;
        let count = |name: &str, p: &str| support::admin::sum(&m, name, &[("process", p)]);
        let started = ["order-to-cash", "customer-onboarding", "incident-response"]
            .iter()
            .all(|p| count("baton_instances_started_total", p) > 0.0);
        let done: Vec<f64> = ["order-to-cash", "customer-onboarding"]
            .iter()
            .map(|p| count("baton_instances_completed_total", p))
            .collect();
        (started && done.iter().all(|n| *n > 0.0)).then_some(done)
    });
    // The simulated systems stop on SIGTERM too.
    terminate(&services);
    let sim_status = services.wait().expect("baton services ends");
    assert!(sim_status.success(), "baton services failed; see its log");

    // SIGTERM: a clean exit within the compose grace period.
    let grace = s(&svc["stop_grace_period"], "stop_grace_period");
    let grace = humantime::parse_duration(grace).expect("a duration");
    let started = Instant::now();
    terminate(&baton);
    let status = loop {
        if let Some(st) = baton.try_wait().expect("wait") {
            break st;
        }
        assert!(
            started.elapsed() < grace,
            "baton did not stop within the stop grace period {grace:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "baton run exited with {status}: {text}");
    assert!(
        !text.contains("panicked"),
        "no panic in the log of the run: {text}"
    );
    eprintln!(
        "completed per example {completed:?}, stopped in {:?}",
        started.elapsed()
    );
}

/// A child process that is killed if the test ends before it does.
struct Reaped(std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM, what a container runtime sends to stop a container.
fn terminate(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {}", child.id());
}

/// One Kubernetes object of deploy/kubernetes by file.
fn k8s(file: &str) -> Value {
    yaml(&format!("deploy/kubernetes/{file}"))
}

#[test]
fn the_kubernetes_manifests_run_what_baton_exposes() {
    let kustomization = k8s("kustomization.yaml");
    let namespace = s(&kustomization["namespace"], "namespace").to_string();
    let mut objects: BTreeMap<(String, String), Value> = BTreeMap::new();
    for r in list(&kustomization["resources"]) {
        let o = k8s(s(&r, "resource"));
        let kind = s(&o["kind"], "kind").to_string();
        let name = s(&o["metadata"]["name"], "name").to_string();
        objects.insert((kind, name), o);
    }
    let get = |kind: &str, name: &str| -> &Value {
        objects
            .get(&(kind.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no {kind} {name} among the resources"))
    };
    let version = env!("CARGO_PKG_VERSION");
    let images = list(&kustomization["images"]);
    assert_eq!(images.len(), 1);
    assert_eq!(s(&images[0]["newTag"], "newTag"), version);

    let set = get("StatefulSet", "baton");
    let spec = &set["spec"];
    let pod = &spec["template"];
    let labels = pod["metadata"]["labels"].as_object().expect("pod labels");
    let selects = |sel: &Value, what: &str| {
        for (k, v) in sel
            .as_object()
            .unwrap_or_else(|| panic!("{what}: selector"))
        {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{what} selects {k}={v}, pods lack it"
            );
        }
    };
    selects(&spec["selector"]["matchLabels"], "StatefulSet");
    let members = get("Service", s(&spec["serviceName"], "serviceName"));
    assert_eq!(members["spec"]["clusterIP"], json!("None"), "headless");
    selects(&members["spec"]["selector"], "members Service");
    selects(
        &get("Service", "baton-admin")["spec"]["selector"],
        "admin Service",
    );
    let pdb = get("PodDisruptionBudget", "baton");
    selects(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    let replicas: u32 = s(&spec["replicas"], "replicas").parse().expect("number");
    let unavailable: u32 = s(&pdb["spec"]["maxUnavailable"], "maxUnavailable")
        .parse()
        .expect("number");
    assert!(unavailable < replicas);

    let containers = list(&pod["spec"]["containers"]);
    let c = &containers[0];
    assert_eq!(s(&c["image"], "image"), s(&images[0]["name"], "image name"));
    let args: Vec<String> = list(&c["args"])
        .iter()
        .map(|a| s(a, "arg").to_string())
        .collect();
    assert_eq!(
        args[..3],
        [
            "run".to_string(),
            "--config".into(),
            "/etc/baton/baton.toml".into()
        ]
    );

    // The pod's file system: ConfigMaps and the Secret as mounted.
    let secret = get("Secret", "baton-secrets");
    let secret_data = secret["stringData"].as_object().expect("stringData");
    let root = std::env::temp_dir().join(support::unique("pod-root"));
    let volumes: BTreeMap<String, Value> = list(&pod["spec"]["volumes"])
        .into_iter()
        .map(|v| (s(&v["name"], "volume").to_string(), v))
        .collect();
    let generated: BTreeMap<String, Vec<String>> = list(&kustomization["configMapGenerator"])
        .iter()
        .map(|g| {
            let files = list(&g["files"])
                .iter()
                .map(|f| s(f, "file").to_string())
                .collect();
            (s(&g["name"], "name").to_string(), files)
        })
        .collect();
    for m in list(&c["volumeMounts"]) {
        let at = root.join(s(&m["mountPath"], "mountPath").trim_start_matches('/'));
        let v = &volumes[s(&m["name"], "mount name")];
        if let Some(name) = v["configMap"]["name"].as_str() {
            let files = generated
                .get(name)
                .unwrap_or_else(|| panic!("ConfigMap {name} is not generated"));
            for f in files {
                let src = repo().join("deploy/kubernetes").join(f);
                let key = Path::new(f)
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .to_string();
                match m["subPath"].as_str() {
                    Some(sub) if sub == key => copy_tree(&src, &at),
                    Some(_) => {}
                    None => copy_tree(&src, &at.join(&key)),
                }
            }
        } else if let Some(name) = v["secret"]["secretName"].as_str() {
            assert_eq!(name, "baton-secrets");
            for item in list(&v["secret"]["items"]) {
                let key = s(&item["key"], "key");
                let text = s(
                    secret_data
                        .get(key)
                        .unwrap_or_else(|| panic!("Secret has no {key}")),
                    key,
                );
                let to = at.join(s(&item["path"], "path"));
                std::fs::create_dir_all(&at).expect("mount");
                std::fs::write(to, text).expect("secret file");
            }
        } else {
            panic!("volume {v} is neither a ConfigMap nor the Secret");
        }
    }
    // The definitions it mounts are the repository's examples, unchanged.
    for f in &generated["baton-definitions"] {
        let name = Path::new(f)
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        assert_eq!(
            read(&format!("deploy/kubernetes/{f}")),
            read(&format!("examples/{name}")),
            "deploy/kubernetes/{f} differs from examples/{name}"
        );
    }
    let config = relocate(&root, "etc/baton/baton.toml");

    // The environment of pod baton-0, as the kubelet builds it.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in list(&c["env"]) {
        let name = s(&e["name"], "env name").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_string();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.name" => "baton-0".to_string(),
                "metadata.namespace" => namespace.clone(),
                other => panic!("unexpected fieldRef {other}"),
            }
        } else if let Some(key) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            assert_eq!(
                e["valueFrom"]["secretKeyRef"]["name"],
                json!("baton-secrets")
            );
            s(
                secret_data
                    .get(key)
                    .unwrap_or_else(|| panic!("Secret has no {key}")),
                key,
            )
            .to_string()
        } else {
            panic!("env {name}: no value");
        };
        env.insert(name, value);
    }
    let checked = check(&config, &env);
    assert_eq!(
        checked["instance_id"],
        json!("baton-0"),
        "instance id is the pod name"
    );
    assert_eq!(
        checked["admin_advertised"],
        json!(format!(
            "http://baton-0.{}.{namespace}.svc:8080",
            s(&spec["serviceName"], "serviceName")
        ))
    );
    assert_eq!(checked["definitions"].as_array().map(Vec::len), Some(3));
    for var in list(&checked["token_variables"]) {
        assert!(
            env.contains_key(s(&var, "token")),
            "{var} is not set in the pod"
        );
    }
    let admin = port_of(s(&checked["admin_listen"], "admin listen"));
    let ports = list(&c["ports"]);
    assert_eq!(s(&ports[0]["containerPort"], "port"), admin.to_string());
    let port_name = s(&ports[0]["name"], "port name");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"], json!(path), "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], json!(port_name), "{probe}");
    }
    for svc in ["baton-admin", s(&spec["serviceName"], "serviceName")] {
        let p = &list(&get("Service", svc)["spec"]["ports"])[0];
        assert_eq!(p["targetPort"], json!(port_name));
    }
    // The grace period covers a commit interval and a commit up to the
    // transaction timeout, after which the broker aborts it anyway.
    let grace_ms: u64 = s(&pod["spec"]["terminationGracePeriodSeconds"], "grace")
        .parse::<u64>()
        .expect("seconds")
        * 1000;
    let needed = checked["transaction_timeout_ms"].as_u64().expect("ms")
        + checked["commit_interval_ms"].as_u64().expect("ms");
    assert!(grace_ms > needed, "grace {grace_ms} ms ≤ {needed} ms");

    // KEDA: lag of baton's group on its input topic, at most one pod per shard.
    let scaled = get("ScaledObject", "baton");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], json!("StatefulSet"));
    assert_eq!(target["name"], json!("baton"));
    assert_eq!(
        s(&scaled["spec"]["maxReplicaCount"], "max").to_string(),
        checked["partitions"].to_string(),
        "the ceiling is the partition count"
    );
    let triggers = list(&scaled["spec"]["triggers"]);
    let t = &triggers[0];
    assert_eq!(t["type"], json!("kafka"));
    assert_eq!(t["metadata"]["consumerGroup"], checked["group_id"]);
    assert_eq!(
        t["metadata"]["bootstrapServers"],
        checked["bootstrap_servers"]
    );
    assert!(
        list(&checked["input_topics"]).contains(&t["metadata"]["topic"]),
        "the scaler watches an input topic"
    );
    let auth = get(
        "TriggerAuthentication",
        s(&t["authenticationRef"]["name"], "authenticationRef"),
    );
    for r in list(&auth["spec"]["secretTargetRef"]) {
        assert_eq!(r["name"], json!("baton-secrets"));
        assert!(
            secret_data.contains_key(s(&r["key"], "key")),
            "Secret lacks {}",
            r["key"]
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
