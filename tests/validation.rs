//! The process language reports every mistake at once, each located.

use baton::dsl::{self, Diagnostic};

fn errors(src: &str) -> Vec<Diagnostic> {
    match dsl::parse("test.yaml", src) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d.0,
    }
}

fn ok(src: &str) {
    if let Err(d) = dsl::parse("test.yaml", src) {
        panic!("expected a valid definition, got:\n{d}");
    }
}

const HEAD: &str = "process: p\nversion: 1\nstart: { on: a.started, key: event.data.id }\n";

#[test]
fn five_mistakes_give_five_located_errors() {
    let src = "\
process: broken
version: 1
start: { on: a.started, key: event.data.id }
steps:
  - id: first
    command: { topic: t, type: c.do, data: { x: vars.total +  } }
    await:
      - on: c.done
        goto: nowhere
    timout: 30s
  - id: first
    end: failed
  - id: orphan
    end: completed
";
    let errs = errors(src);
    let got: Vec<(usize, usize, &str)> = errs
        .iter()
        .map(|d| (d.line, d.column, d.path.as_str()))
        .collect();
    assert_eq!(errs.len(), 5, "{errs:#?}");
    // CEL that does not parse.
    assert!(errs[0].message.contains("does not parse"), "{}", errs[0]);
    assert_eq!(got[0], (6, 49, "steps[0].command.data.x"));
    // Unknown goto target, with its location.
    assert_eq!(got[1], (9, 15, "steps[0].await[0].goto"));
    assert!(errs[1].message.contains("unknown step `nowhere`"));
    // Misspelt field, with a suggestion.
    assert_eq!(got[2], (10, 5, "steps[0].timout"));
    assert!(
        errs[2].message.contains("did you mean `timeout`"),
        "{}",
        errs[2]
    );
    // Duplicate id.
    assert_eq!(got[3], (11, 9, "steps[1].id"));
    assert!(
        errs[3]
            .message
            .contains("duplicate step id `first` (first defined on line 5)")
    );
    // Unreachable step.
    assert_eq!(got[4], (13, 9, "steps[2].id"));
    assert!(errs[4].message.contains("can never run"));
    // Each renders like a compiler message.
    assert_eq!(
        errs[2].to_string(),
        "test.yaml:10:5: error: steps[0].timout: unknown field `timout` (did you mean `timeout`?); expected one of: id, description, then, goto, command, manual, call, await, timeout, on_timeout, retry, on_exhausted, compensate"
    );
}

#[test]
fn unknown_cel_roots_are_reported() {
    let errs = errors(&format!(
        "{HEAD}steps:\n  - id: a\n    command: {{ topic: t, type: x, data: {{ v: varz.total }} }}\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].message.contains("unknown name `varz`"),
        "{}",
        errs[0]
    );
    // Comprehension variables are not roots.
    ok(&format!(
        "{HEAD}vars: {{ n: \"event.data.items.filter(i, i.qty > 0).size()\" }}\nsteps:\n  - id: a\n    end: completed\n"
    ));
}

#[test]
fn event_outside_an_event_is_reported() {
    let errs = errors(&format!(
        "{HEAD}steps:\n  - id: a\n    command: {{ topic: t, type: x, data: {{ v: event.data.x }} }}\n"
    ));
    assert!(errs[0].message.contains("uses `event`"), "{}", errs[0]);
}

#[test]
fn loops_without_a_wait_are_reported() {
    let errs = errors(&format!(
        "{HEAD}steps:\n  - id: a\n    set: {{ n: vars.n + 1 }}\n  - id: b\n    switch:\n      - when: vars.n < 10\n        goto: a\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].message.contains("a → b form a loop"), "{}", errs[0]);
    // The same loop through a wait is fine.
    ok(&format!(
        "{HEAD}steps:\n  - id: a\n    set: {{ n: vars.n + 1 }}\n  - id: w\n    wait: 1m\n  - id: b\n    switch:\n      - when: vars.n < 10\n        goto: a\n"
    ));
}

#[test]
fn parallel_branches_that_cannot_join_are_reported() {
    let src = format!(
        "{HEAD}steps:
  - id: fork
    parallel:
      branches:
        - - id: left
            command: {{ topic: t, type: l }}
            await: [ {{ on: l.done, goto: after }} ]
        - - id: right
            command: {{ topic: t, type: r }}
            await: [ {{ on: r.done }} ]
  - id: after
    switch:
      - when: 'true'
        goto: right
"
    );
    let errs = errors(&src);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0]
            .message
            .contains("leaves branch 0 of parallel step `fork`"),
        "{}",
        errs[0]
    );
    assert!(errs[1].message.contains("enters branch 1"), "{}", errs[1]);
    let errs = errors(&format!(
        "{HEAD}steps:\n  - id: fork\n    parallel:\n      join: 3\n      branches:\n        - - {{ id: a, wait: 1m }}\n"
    ));
    assert!(errs[0].message.contains("from 1 to 1"), "{}", errs[0]);
}

#[test]
fn sagas_need_compensation() {
    let errs = errors(&format!(
        "saga: true\n{HEAD}steps:\n  - id: a\n    command: {{ topic: t, type: x }}\n    await: [ {{ on: x.done }} ]\n  - id: b\n    command: {{ topic: t, type: y }}\n    compensate: none\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].message.contains("task `a` has no `compensate`"),
        "{}",
        errs[0]
    );
}

#[test]
fn yaml_errors_are_located() {
    let errs = errors("process: p\nversion: 1\nsteps: [\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.contains("invalid YAML"), "{}", errs[0]);
    let errs = errors("process: p\nprocess: q\n");
    assert!(
        errs[0].message.contains("duplicate key `process`"),
        "{}",
        errs[0]
    );
}

#[test]
fn missing_and_malformed_fields() {
    let errs = errors("process: p\nversion: zero\nsteps: []\n");
    let messages: Vec<&str> = errs.iter().map(|d| d.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("missing field `start`")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`zero` is not a whole number")),
        "{messages:?}"
    );
    let errs = errors(&format!("{HEAD}steps:\n  - id: a\n    wait: soon\n"));
    assert!(errs[0].message.contains("not a duration"), "{}", errs[0]);
    let errs = errors(&format!(
        "{HEAD}steps:\n  - id: a\n    wait: 1m\n    set: {{ x: '1' }}\n"
    ));
    assert!(errs[0].message.contains("does one thing"), "{}", errs[0]);
    let errs = errors(&format!("{HEAD}steps:\n  - id: retry\n    wait: 1m\n"));
    assert!(errs[0].message.contains("reserved word"), "{}", errs[0]);
}

#[test]
fn the_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            if let Err(d) = dsl::parse(&path.display().to_string(), &text) {
                panic!("{d}");
            }
            n += 1;
        }
    }
    assert!(n >= 3, "expected the three seed examples, found {n}");
}
