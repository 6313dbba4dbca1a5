//! Keeps the architecture honest: the engine, the process language and the
//! shard are pure; the shard is the only interpreter of engine effects; only
//! `src/wire` knows the protobuf types.

use std::path::{Path, PathBuf};

/// Words that mean I/O, async runtimes, Kafka, wall clocks or randomness.
const FORBIDDEN: [&str; 12] = [
    "tokio",
    "rdkafka",
    "SystemTime",
    "Instant",
    "rand::",
    "std::fs",
    "std::net",
    "std::io",
    "std::process",
    "std::env",
    "std::thread",
    "Utc::now",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// What the shard must not know besides [`FORBIDDEN`]: Kafka, the runtime,
/// spans, logs and metrics.
const NOT_IN_THE_SHARD: [&str; 9] = [
    "crate::kafka",
    "crate::runtime",
    "crate::telemetry",
    "crate::admin",
    "opentelemetry",
    "tracing",
    "metrics",
    "prometheus",
    "now_ms",
];

/// Every line of `files` (comments cut off, unit tests left out) that holds
/// one of `words`.
fn uses(files: &[PathBuf], words: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("source is readable");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in words {
                if code.contains(word) {
                    hits.push(format!("{}:{}: uses `{word}`", f.display(), n + 1));
                }
            }
        }
    }
    hits
}

fn sources(layers: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for layer in layers {
        let path = root.join(layer);
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            assert!(path.is_file(), "{} is missing", path.display());
            files.push(path);
        }
    }
    files
}

#[test]
fn engine_and_dsl_do_no_io_and_read_no_clock() {
    let files = sources(&["src/engine", "src/dsl"]);
    assert!(
        files.len() >= 5,
        "expected the engine and dsl sources, found {files:?}"
    );
    let hits = uses(&files, &FORBIDDEN);
    assert!(
        hits.is_empty(),
        "the pure layers must not do this:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_shard_knows_no_kafka_clock_or_telemetry() {
    let files = sources(&["src/shard.rs"]);
    let words: Vec<&str> = FORBIDDEN.into_iter().chain(NOT_IN_THE_SHARD).collect();
    let hits = uses(&files, &words);
    assert!(
        hits.is_empty(),
        "the shard must stay pure:\n{}",
        hits.join("\n")
    );
}

#[test]
fn only_the_shard_interprets_engine_effects() {
    // `baton run` and `baton simulate` both drive `shard::Shard`: no second
    // caller of the engine's step may grow elsewhere.
    let files: Vec<PathBuf> = sources(&["src"])
        .into_iter()
        .filter(|f| {
            !f.ends_with("src/shard.rs") && !f.components().any(|c| c.as_os_str() == "engine")
        })
        .collect();
    assert!(files.len() > 20, "expected the sources, found {files:?}");
    let hits = uses(&files, &["engine::apply(", "engine::step("]);
    assert!(
        hits.is_empty(),
        "only src/shard.rs steps the engine:\n{}",
        hits.join("\n")
    );
}

#[test]
fn only_wire_knows_the_protobuf_types() {
    let files: Vec<PathBuf> = sources(&["src"])
        .into_iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "wire"))
        .collect();
    let hits = uses(
        &files,
        &["prost::", "pb::", "include!(concat!(env!(\"OUT_DIR\")"],
    );
    assert!(
        hits.is_empty(),
        "records are encoded and decoded in src/wire only:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_check_catches_a_violation() {
    // The scanner itself must see a forbidden word when one is there.
    let code = "use tokio::time::sleep;";
    assert!(FORBIDDEN.iter().any(|w| code.contains(w)));
}
