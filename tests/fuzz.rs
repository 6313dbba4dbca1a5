//! The fuzz targets on stable Rust: every input saved under
//! `fuzz/regressions/<target>/` (crashes cargo fuzz found, kept once fixed)
//! and a run of generated inputs through each target's body. The long runs
//! are `bash scripts/fuzz.sh` (cargo fuzz, libFuzzer, nightly).

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

/// A small deterministic generator (xorshift), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Inputs for a target: the seed corpus, mutated (bytes flipped, cut,
/// spliced), and plain random bytes.
fn generated(seeds: &[Vec<u8>], n: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            if seeds.is_empty() || i % 4 == 0 {
                let len = rng.below(256);
                return (0..len).map(|_| rng.next() as u8).collect();
            }
            let mut v = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(8) {
                if v.is_empty() {
                    break;
                }
                let at = rng.below(v.len());
                match rng.below(4) {
                    0 => v[at] = rng.next() as u8,
                    1 => v.truncate(at),
                    2 => {
                        let other = &seeds[rng.below(seeds.len())];
                        let from = rng.below(other.len());
                        v.splice(at..at, other[from..].iter().take(32).copied());
                    }
                    _ => {
                        v.remove(at);
                    }
                }
            }
            v
        })
        .collect()
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            out.push(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
        }
    }
    if target == "dsl" {
        for name in ["order-to-cash", "customer-onboarding", "incident-response"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.yaml"));
            out.push(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
        }
    }
    out
}

fn target(name: &str) -> fn(&[u8]) {
    harness::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

fn exercise(name: &str, n: usize) {
    let f = target(name);
    let saved = seeds(name);
    for input in &saved {
        f(input);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    for input in generated(&saved, n, &mut rng) {
        f(&input);
    }
}

#[test]
fn definitions_never_panic_the_parser_or_validator() {
    exercise("dsl", 3000);
}

#[test]
fn records_never_panic_the_cloudevents_decoder() {
    exercise("cloudevents", 5000);
}

#[test]
fn stored_records_decode_without_panic_and_round_trip() {
    exercise("records", 5000);
}

#[test]
fn the_examples_run_any_input_deterministically_with_unique_command_ids() {
    exercise("engine", 1500);
}

#[test]
fn the_engine_target_reaches_commands() {
    // The engine target's vocabulary really drives the examples: the
    // scenarios' first events start instances that emit commands.
    let mut input = Vec::new();
    for i in 0..harness::templates().len() as u8 {
        input.extend([0, i, 0]);
        input.extend([0u8; 16]);
    }
    let mut sim = baton::simulate::Simulation::new(harness::registry().clone());
    for e in harness::templates() {
        sim.deliver(e.clone());
    }
    assert!(!sim.commands.is_empty());
    harness::engine(&input);
}
