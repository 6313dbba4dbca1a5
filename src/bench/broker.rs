//! The broker a run measures against: the test broker (nisshi), started for
//! the run on a free port with SQLite storage, or a Kafka the user names.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BenchError, io};

/// How to install the test broker (design: nisshi 0.7.0, SQLite storage).
const INSTALL: &str = "cargo +nightly install nisshi@0.7.0 --locked --features dynostore,libsql --root ~/.cache/baton/nisshi";

/// The test broker's executable: `BATON_NISSHI`, then
/// `~/.cache/baton/nisshi/bin/nisshi`, then `nisshi` on the `PATH`.
pub fn find_nisshi() -> Result<PathBuf, BenchError> {
    if let Some(p) = std::env::var_os("BATON_NISSHI") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(BenchError::Broker(format!(
            "BATON_NISSHI names {}, which does not exist; install the test broker with `{INSTALL}`, or pass --bootstrap-servers",
            p.display()
        )));
    }
    let cached = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/baton/nisshi/bin/nisshi"))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("nisshi"))
                .find(|p| p.is_file())
        })
    };
    cached.or_else(on_path).ok_or_else(|| {
        BenchError::Broker(format!(
            "nisshi was found neither through BATON_NISSHI, nor in ~/.cache/baton/nisshi/bin, nor on the PATH; install it with `{INSTALL}`, or pass --bootstrap-servers to measure against another Kafka"
        ))
    })
}

pub enum Broker {
    /// Started for this run; killed when dropped.
    Started {
        child: Child,
        bootstrap: String,
        dir: PathBuf,
    },
    External(String),
}

impl Broker {
    /// Starts nisshi on a free port, with a store of its own in the temporary directory.
    pub fn start() -> Result<Broker, BenchError> {
        let bin = find_nisshi()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(io("find a free port"))?;
        // A fresh store each run (old topics would slow every phase down),
        // removed when the run ends.
        let dir = std::env::temp_dir().join(format!("baton-bench-broker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let log_path = dir.join("broker.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("create {}", log_path.display())))?;
        let log2 = log.try_clone().map_err(io("broker log"))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://broker.db"])
            .args(["--group-initial-rebalance-delay", "0s"])
            .current_dir(&dir)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(io(format!("start {}", bin.display())))?;
        let broker = Broker::Started {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Broker(format!(
                    "nisshi did not listen on port {port} within 30 s; see {}",
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Started { bootstrap, .. } => bootstrap.clone(),
            Broker::External(b) => b.clone(),
        }
    }

    /// For the report.
    pub fn describe(&self) -> String {
        match self {
            Broker::Started { .. } => "nisshi 0.7 (SQLite storage), started by baton bench".into(),
            Broker::External(b) => format!("Kafka at {b}"),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Started { child, dir, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
