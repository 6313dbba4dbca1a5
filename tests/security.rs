//! baton against Apache Kafka over SASL_SSL: a SCRAM-SHA-512 user and a
//! certificate the test makes (keytool), orders end to end through the
//! encrypted, authenticated listener, the password read from a file and
//! never in the logs or `/metrics`, and a wrong password an error and exit
//! code, never a hang.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use baton::kafka::PlainProducer;
use support::admin::get;
use support::broker::LocalKafka;
use support::orders::{Topics, config, services};
use support::running::{assert_each_command_once, collector, orders_with};
use support::{RunConfig, baton_run, eventually, free_addr, unique, write_config};

const PASSWORD: &str = "scram-Pa55word-7d1e93";
const STORE_PASSWORD: &str = "keystore-pw-4411";
const ORDERS: u64 = 6;

/// A self-signed certificate for 127.0.0.1 in a PKCS#12 keystore for the
/// broker, and the certificate alone (PEM) for baton to trust.
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let store = dir.join("broker.p12");
    let ca = dir.join("ca.pem");
    let keytool = |args: &[&str]| {
        let out = Command::new("keytool")
            .args(args)
            .output()
            .expect("keytool (from the JDK) runs");
        assert!(
            out.status.success(),
            "keytool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let store_s = store.to_string_lossy().into_owned();
    keytool(&[
        "-genkeypair",
        "-alias",
        "broker",
        "-keyalg",
        "RSA",
        "-keysize",
        "2048",
        "-validity",
        "7",
        "-dname",
        "CN=localhost",
        "-ext",
        "SAN=dns:localhost,ip:127.0.0.1",
        "-storetype",
        "PKCS12",
        "-keystore",
        &store_s,
        "-storepass",
        STORE_PASSWORD,
        "-keypass",
        STORE_PASSWORD,
    ]);
    keytool(&[
        "-exportcert",
        "-rfc",
        "-alias",
        "broker",
        "-keystore",
        &store_s,
        "-storepass",
        STORE_PASSWORD,
        "-file",
        &ca.to_string_lossy(),
    ]);
    (store, ca)
}

/// The `[kafka.options]` and `[kafka.secret_files]` of a client of the SASL_SSL listener.
fn client_tables(ca: &Path, password_file: &Path) -> String {
    format!(
        "[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"baton\"\n\"ssl.ca.location\" = \"{}\"\n\
         [kafka.secret_files]\n\"sasl.password\" = \"{}\"\n",
        ca.display(),
        password_file.display()
    )
}

#[test]
fn orders_flow_through_a_sasl_ssl_listener_and_a_wrong_password_fails_clearly() {
    let dir = std::env::temp_dir().join(unique("baton-sasl"));
    std::fs::create_dir_all(&dir).expect("test directory");
    let (store, ca) = certificate(&dir);
    let sasl_port = free_addr().port();
    let props = format!(
        "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
         listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
         ssl.keystore.type=PKCS12\nssl.keystore.location={}\nssl.keystore.password={STORE_PASSWORD}\nssl.key.password={STORE_PASSWORD}\n",
        store.display()
    );
    let sasl_port_s = sasl_port.to_string();
    let scram = format!("SCRAM-SHA-512=[name=baton,password={PASSWORD}]");
    let kafka = LocalKafka::start_with(
        &dir.join("kafka"),
        &props,
        &[
            ("BATON_KAFKA_SASL_SSL_PORT", sasl_port_s.as_str()),
            ("BATON_KAFKA_SCRAM", scram.as_str()),
        ],
    )
    .unwrap_or_else(|e| panic!("the test broker (Apache Kafka) could not start: {e}"));
    // The test's own clients (topics, orders, services, the checking
    // consumer) use the plaintext listener; baton only the SASL_SSL one.
    let plain = kafka.bootstrap();
    let secure = format!("127.0.0.1:{sasl_port}");
    let group = unique("sasl");
    let setup = config(&plain, &group, "setup");
    let t = support::orders::create_input(&setup);
    assert_eq!(t.input, Topics::of(&group).input);

    let password_file = dir.join("kafka-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    let admin = free_addr();
    let cfg_path = write_config(
        &dir,
        &RunConfig {
            bootstrap: &secure,
            group: &group,
            instance: "sasl-1",
            partitions: 2,
            in_place: false,
            admin: admin.to_string(),
            extra: &client_tables(&ca, &password_file),
        },
    );
    let log = dir.join("sasl-1.log");
    let mut baton = baton_run(&cfg_path, &log);
    let services = services(&plain, &t);
    let (seen, stop_collector) = collector(&plain, &t.commands);
    eventually(90, "baton ready over SASL_SSL", || {
        get(admin, "/readyz").filter(|(s, _)| *s == 200)
    });
    let producer = PlainProducer::new(&plain).expect("producer");
    for n in 0..ORDERS {
        producer.send(&t.placed(n)).expect("send");
    }
    producer.flush().expect("flush");
    let all = eventually(120, "every order invoiced", || {
        let v = seen.lock().ok()?.clone();
        (orders_with(&v, "com.acme.invoice.create") as u64 >= ORDERS).then_some(v)
    });
    assert_each_command_once(&all, ORDERS);
    let (_, metrics) = get(admin, "/metrics").expect("metrics");
    assert!(!metrics.contains(PASSWORD), "the password is in /metrics");
    let _ = baton.kill();
    let _ = baton.wait();
    stop_collector.store(true, Ordering::Relaxed);
    services.store(true, Ordering::Relaxed);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains(PASSWORD),
        "the password is in the log:\n{text}"
    );
    assert!(
        !text.contains(STORE_PASSWORD),
        "a keystore password is in the log"
    );

    // A wrong password: a clear error and exit code, within the connect timeout.
    let wrong_file = dir.join("wrong-password");
    std::fs::write(&wrong_file, "not-the-password-0000").expect("password file");
    let wrong_cfg = write_config(
        &dir,
        &RunConfig {
            bootstrap: &secure,
            group: &group,
            instance: "sasl-wrong",
            partitions: 2,
            in_place: false,
            admin: free_addr().to_string(),
            extra: &client_tables(&ca, &wrong_file),
        },
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "--config"])
        .arg(&wrong_cfg)
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("baton runs");
    // It must give up by itself; a process still trying after two minutes hangs.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("baton kept trying with a wrong password instead of failing");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a wrong password must fail:\n{stderr}"
    );
    // It names the step that failed and why: authentication.
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.contains("cannot start the runtime: fetch metadata")
            && last.to_ascii_lowercase().contains("authentication"),
        "the error names what failed, and why:\n{stderr}"
    );
    assert!(!stderr.contains("not-the-password-0000"), "{stderr}");
    drop(kafka);
    let _ = std::fs::remove_dir_all(&dir);
}
