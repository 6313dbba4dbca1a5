//! Reading baton's admin port: plain HTTP GET and a strict parser of the
//! Prometheus/OpenMetrics text format; and `baton run` with admin tokens.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` → (status, body); `None` if nothing answers.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    get_as(addr, path, None, Duration::from_secs(5))
}

/// [`get`] with a bearer token, waiting up to `wait` for the answer.
pub fn get_as(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    wait: Duration,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        body = rest.get(n + 2..)?;
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the exposition: every line a comment (`# HELP/TYPE/UNIT`, `# EOF`
/// last) or a sample of a declared family. Returns `series → value`, where a
/// series is written `name{label="value",…}` exactly as exposed.
pub fn parse_metrics(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line}", i + 1);
        if eof {
            return Err(at("content after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) {
                return Err(at("bad metric name"));
            }
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                        "gaugehistogram",
                    ]
                    .contains(&t)
                    {
                        return Err(at("unknown type"));
                    }
                    families.insert(name.to_string(), t.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        let (series, value) = match line.find('}') {
            Some(close) => (&line[..=close], line[close + 1..].trim()),
            None => line
                .split_once(' ')
                .map(|(a, b)| (a, b.trim()))
                .ok_or_else(|| at("no value"))?,
        };
        let name = series.split('{').next().unwrap_or("");
        if !valid_name(name) {
            return Err(at("bad metric name"));
        }
        if let Some(labels) = series
            .strip_prefix(name)
            .and_then(|l| l.strip_prefix('{'))
            .and_then(|l| l.strip_suffix('}'))
        {
            for pair in split_labels(labels).map_err(|e| at(&e))? {
                let (k, v) = pair.split_once('=').ok_or_else(|| at("label without ="))?;
                let quoted = v.starts_with('"') && v.ends_with('"') && v.len() >= 2;
                if !(valid_name(k) && quoted) {
                    return Err(at("bad label"));
                }
            }
        }
        let family = ["_total", "_bucket", "_count", "_sum", "_created", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains_key(*f)))
            .unwrap_or(name);
        if !families.contains_key(family) {
            return Err(at("sample of an undeclared family"));
        }
        let value = value.split(' ').next().unwrap_or("");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at("value is not a number"))?,
        };
        out.insert(series.to_string(), v);
    }
    if !eof {
        return Err("no # EOF at the end".to_string());
    }
    Ok(out)
}

fn split_labels(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated label value".into());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// The sum of every series of `name` whose labels include all of `labels`.
pub fn sum(metrics: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            let n = series.split('{').next().unwrap_or("");
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let good = "# HELP a_total x\n# TYPE a counter\na_total{p=\"x,y\"} 3\n# EOF\n";
    let m = parse_metrics(good).expect("valid");
    assert_eq!(sum(&m, "a_total", &[("p", "x,y")]), 3.0);
    for bad in [
        "# TYPE a counter\na_total 3\n",
        "b 1\n# EOF\n",
        "# TYPE a counter\na_total{p=x} 1\n# EOF\n",
        "# TYPE a counter\na_total one\n# EOF\n",
        "# EOF\n# TYPE a counter\n",
    ] {
        assert!(parse_metrics(bad).is_err(), "accepted: {bad}");
    }
}

/// The viewer token of [`member`].
pub const VIEWER: &str = "viewer-token-5f1c0d9a8b7e";
/// The operator token of [`member`].
pub const OPERATOR: &str = "operator-token-2a4b6c8d0e1f";

/// `baton run`, killed when dropped.
pub struct Baton(pub std::process::Child);

impl Drop for Baton {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `baton run` with the order-to-cash example as member `instance`
/// of `group` (`partitions` shards), with a viewer (`ana`, [`VIEWER`]) and
/// an operator token (`ops`, [`OPERATOR`]), its log in its directory;
/// returns its admin address.
pub fn member(
    broker: &super::Broker,
    group: &str,
    instance: &str,
    partitions: i32,
) -> (SocketAddr, Baton) {
    let t = super::orders::Topics::of(group);
    let dir = broker.dir.join(instance);
    std::fs::create_dir_all(&dir).expect("dir");
    let admin = super::free_addr();
    let secret = dir.join("operator.token");
    std::fs::write(&secret, format!("{OPERATOR}\n")).expect("token file");
    let viewer = dir.join("viewer.token");
    std::fs::write(&viewer, VIEWER).expect("token file");
    let extra = format!(
        "[[admin.tokens]]\nname = \"ana\"\nrole = \"viewer\"\nfile = \"{}\"\n\n\
         [[admin.tokens]]\nname = \"ops\"\nrole = \"operator\"\nfile = \"{}\"\n",
        viewer.display(),
        secret.display()
    );
    let config = super::write_config(
        &dir,
        &super::RunConfig {
            bootstrap: &broker.bootstrap,
            group,
            instance,
            partitions,
            in_place: false,
            admin: admin.to_string(),
            extra: &extra,
        },
    );
    let cfg = baton::config::Config::load(
        "baton.toml",
        &std::fs::read_to_string(&config).expect("config"),
        [],
    );
    let cfg = cfg.expect("valid config");
    baton::kafka::ensure_topics(&cfg, &[(t.input.clone(), partitions, false)])
        .expect("input topic");
    let log = std::fs::File::create(dir.join("baton.log")).expect("log");
    let baton = Baton(
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("baton starts"),
    );
    (admin, baton)
}
