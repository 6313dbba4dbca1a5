//! Test support: a real Kafka-protocol broker (nisshi, SQLite storage) per test.
//!
//! The broker is installed by `scripts/test.sh`; a test that needs it fails,
//! never skips, when it is missing.

#![allow(dead_code)]

pub mod admin;
pub mod oracle;
pub mod orders;
pub mod otlp;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker process that is killed when dropped.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
    pub dir: PathBuf,
}

fn nisshi() -> PathBuf {
    if let Ok(p) = std::env::var("BATON_NISSHI") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/baton/nisshi/bin/nisshi")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

impl Broker {
    pub fn start() -> Broker {
        let bin = nisshi();
        assert!(
            bin.exists(),
            "the test broker is missing at {}: `bash scripts/test.sh` installs it (nisshi 0.7.0), or set BATON_NISSHI",
            bin.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(unique("baton-broker"));
        std::fs::create_dir_all(&dir).expect("broker directory");
        let log = std::fs::File::create(dir.join("broker.log")).expect("broker log");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "sqlite://broker.db",
                "--group-initial-rebalance-delay",
                "0s",
            ])
            .current_dir(&dir)
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the test broker starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test broker did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` until it returns `Some`, or fails after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
