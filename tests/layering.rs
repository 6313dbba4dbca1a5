//! Keeps the architecture honest: the engine and the process language are pure.

use std::path::Path;

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

#[test]
fn engine_and_dsl_do_no_io_and_read_no_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for layer in ["src/engine", "src/dsl"] {
        rust_files(&root.join(layer), &mut files);
    }
    assert!(
        files.len() >= 5,
        "expected the engine and dsl sources, found {files:?}"
    );
    let mut hits = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source is readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    hits.push(format!("{}:{}: uses `{word}`", f.display(), n + 1));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "the pure layers must not do this:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_check_catches_a_violation() {
    // The scanner itself must see a forbidden word when one is there.
    let code = "use tokio::time::sleep;";
    assert!(FORBIDDEN.iter().any(|w| code.contains(w)));
}
