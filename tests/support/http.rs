#![allow(dead_code)]

//! A small HTTP/1.1 server for the connector's tests: every request is
//! recorded (with the time it arrived) and answered by the test's function,
//! on a thread per connection, so an answer may take its time or wait for
//! the test. Plain, or TLS with a certificate the test makes (`openssl`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Seen {
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// An answer.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            body: v.to_string(),
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: String::new(),
        }
    }
}

/// Decides the answer to a request; the number is how many requests with
/// the same path came before it.
pub type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// Holds answers back until the test opens it.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    pub fn open(&self) {
        if let Ok(mut o) = self.open.lock() {
            *o = true;
        }
        self.changed.notify_all();
    }

    /// Blocks until opened (or a minute passes: a test that forgot is not left hanging).
    pub fn wait(&self) {
        let Ok(guard) = self.open.lock() else { return };
        let _ = self
            .changed
            .wait_timeout_while(guard, Duration::from_secs(60), |o| !*o);
    }
}

struct State {
    seen: Mutex<Vec<Seen>>,
    busy: AtomicUsize,
    max_busy: AtomicUsize,
    stop: AtomicBool,
}

/// The server; it stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
}

impl Server {
    /// A plain HTTP server on a free loopback port.
    pub fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Server {
        Server::launch(None, Arc::new(handler))
    }

    /// An HTTPS server presenting `identity`.
    pub fn start_tls(
        identity: native_tls::Identity,
        handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let acceptor = native_tls::TlsAcceptor::new(identity).expect("TLS acceptor");
        Server::launch(Some(Arc::new(acceptor)), Arc::new(handler))
    }

    fn launch(tls: Option<Arc<native_tls::TlsAcceptor>>, handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            busy: AtomicUsize::new(0),
            max_busy: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        let secure = tls.is_some();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (s, handler, tls) = (s.clone(), handler.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream) {
                                serve(stream, &s, &handler);
                            }
                        }
                        None => serve(stream, &s, &handler),
                    }
                });
            }
        });
        Server {
            addr,
            tls: secure,
            state,
        }
    }

    /// `http://127.0.0.1:<port>` (`https://` for TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The requests to paths starting with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    /// The most requests that were being answered at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.max_busy.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut s: impl Read + Write, state: &State, handler: &Handler) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let seen = Seen {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    };
    let before = {
        let Ok(mut all) = state.seen.lock() else {
            return;
        };
        let n = all.iter().filter(|r| r.path == seen.path).count();
        all.push(seen.clone());
        n
    };
    let busy = state.busy.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_busy.fetch_max(busy, Ordering::SeqCst);
    let reply = handler(&seen, before);
    state.busy.fetch_sub(1, Ordering::SeqCst);
    let response = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.status,
        reply.body.len(),
        reply.body
    );
    let _ = s.write_all(response.as_bytes());
    let _ = s.flush();
}

/// A certificate authority and a server certificate for 127.0.0.1 it
/// signed, made with the `openssl` command: (the CA's PEM file, the
/// server's identity).
pub fn certificates(dir: &Path) -> (PathBuf, native_tls::Identity) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=baton test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions written");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let cert = std::fs::read(dir.join("server.pem")).expect("server certificate");
    let key = std::fs::read(dir.join("server.key")).expect("server key");
    let identity = native_tls::Identity::from_pkcs8(&cert, &key).expect("server identity");
    (dir.join("ca.pem"), identity)
}
