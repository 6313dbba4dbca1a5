//! One table row per language construct: a small definition and a scenario
//! whose `expect` lines state what the engine must do.

use baton::dsl;
use baton::engine::Registry;
use baton::simulate::Simulation;

struct Case {
    name: &'static str,
    definitions: &'static [&'static str],
    scenario: &'static str,
}

const HEAD: &str =
    "version: 1\nstart: { on: go, key: event.data.id }\ncorrelate: { \"*\": event.data.id }\n";

fn run(case: &Case) {
    let mut reg = Registry::default();
    for (i, body) in case.definitions.iter().enumerate() {
        let text = if body.starts_with("process:") {
            body.to_string()
        } else {
            format!("process: p{i}\n{HEAD}{body}")
        };
        let def = dsl::parse(case.name, &text).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        reg.deploy(def, &text).expect("deploy");
    }
    let mut sim = Simulation::new(reg);
    if let Err(e) = sim.run(case.name, case.scenario) {
        panic!("{e}\n--- log ---\n{}", sim.render());
    }
}

const CASES: &[Case] = &[
    Case {
        name: "task awaits one of several outcomes and maps event data into vars",
        definitions: &["steps:
  - id: check
    command: { topic: t, type: check, data: { id: key } }
    await:
      - on: checked
        when: event.data.score >= 700
        set: { score: event.data.score }
        goto: good
      - on: checked
        set: { score: event.data.score }
        goto: bad
  - id: good
    command: { topic: t, type: welcome, data: { score: vars.score } }
  - id: done
    end: completed
  - id: bad
    command: { topic: t, type: decline }
    then: fail
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k"}}}
{"event": {"type": "checked", "data": {"id": "k", "score": 512}}}
{"expect": {"commands": ["check", "decline"], "key": "k", "status": "failed", "vars": {"score": 512}}}
{"event": {"type": "go", "data": {"id": "k2"}}}
{"event": {"type": "checked", "data": {"id": "k2", "score": 801}}}
{"expect": {"commands": ["check", "welcome"], "key": "k2", "status": "completed", "vars": {"score": 801}}}"#,
    },
    Case {
        name: "switch and goto decide on variables",
        definitions: &["vars: { amount: event.data.amount }
steps:
  - id: route
    switch:
      - when: vars.amount > 100
        goto: big
      - when: vars.amount > 10
        goto: medium
    default: small
  - id: big
    command: { topic: t, type: big }
    then: complete
  - id: medium
    command: { topic: t, type: medium }
  - id: medium-end
    end: completed
  - id: small
    set: { tiny: 'true' }
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "a", "amount": 500}}}
{"expect": {"commands": ["big"], "key": "a", "status": "completed"}}
{"event": {"type": "go", "data": {"id": "b", "amount": 50}}}
{"expect": {"commands": ["medium"], "key": "b", "status": "completed"}}
{"event": {"type": "go", "data": {"id": "c", "amount": 5}}}
{"expect": {"commands": [], "key": "c", "status": "completed", "vars": {"tiny": true}}}"#,
    },
    Case {
        name: "parallel join all waits for every branch",
        definitions: &["steps:
  - id: fork
    parallel:
      branches:
        - - id: crm
            command: { topic: t, type: crm }
            await: [ { on: crm.done } ]
        - - id: erp
            command: { topic: t, type: erp }
            await: [ { on: erp.done } ]
          - id: erp-check
            command: { topic: t, type: erp.check }
  - id: after
    command: { topic: t, type: after }
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k"}}}
{"expect": {"commands": ["crm", "erp"], "key": "k", "at": ["fork", "crm", "erp"]}}
{"event": {"type": "erp.done", "data": {"id": "k"}}}
{"expect": {"commands": ["erp.check"], "key": "k", "at": ["fork", "crm"]}}
{"event": {"type": "crm.done", "data": {"id": "k"}}}
{"expect": {"commands": ["after"], "key": "k", "status": "completed"}}"#,
    },
    Case {
        name: "parallel join any cancels the other branches and their timers",
        definitions: &["steps:
  - id: race
    parallel:
      join: any
      branches:
        - - id: quote-a
            command: { topic: t, type: a }
            await: [ { on: a.quoted, set: { winner: \"'a'\" } } ]
            timeout: 1m
        - - id: quote-b
            command: { topic: t, type: b }
            await: [ { on: b.quoted, set: { winner: \"'b'\" } } ]
            timeout: 1m
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k"}}}
{"event": {"type": "b.quoted", "data": {"id": "k"}}}
{"expect": {"commands": ["a", "b"], "key": "k", "status": "completed", "vars": {"winner": "b"}}}
{"advance": "5m"}
{"expect": {"commands": [], "key": "k", "status": "completed", "incidents": 0}}"#,
    },
    Case {
        name: "parallel join n",
        definitions: &["steps:
  - id: votes
    parallel:
      join: 2
      branches:
        - - { id: v1, await: [ { on: v1 } ] }
        - - { id: v2, await: [ { on: v2 } ] }
        - - { id: v3, await: [ { on: v3 } ] }
  - id: tally
    command: { topic: t, type: tally }
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k"}}}
{"event": {"type": "v3", "data": {"id": "k"}}}
{"expect": {"commands": [], "key": "k", "at": ["votes", "v1", "v2"]}}
{"event": {"type": "v1", "data": {"id": "k"}}}
{"expect": {"commands": ["tally"], "key": "k", "status": "completed"}}"#,
    },
    Case {
        name: "wait for a duration and until a time",
        definitions: &["vars: { due: event.data.due }
steps:
  - id: cool-off
    wait: 10m
  - id: first
    command: { topic: t, type: first }
  - id: until
    wait: { until: vars.due }
  - id: second
    command: { topic: t, type: second }
"],
        scenario: r#"{"clock": "2026-01-05T09:00:00Z"}
{"event": {"type": "go", "data": {"id": "k", "due": "2026-01-05T12:00:00Z"}}}
{"advance": "9m"}
{"expect": {"commands": [], "key": "k", "at": ["cool-off"]}}
{"advance": "1m"}
{"expect": {"commands": ["first"], "key": "k", "at": ["until"]}}
{"advance": "2h49m"}
{"expect": {"commands": [], "key": "k", "at": ["until"]}}
{"advance": "1m"}
{"expect": {"commands": ["second"], "key": "k", "status": "completed"}}"#,
    },
    Case {
        name: "retries back off exponentially and count attempts",
        definitions: &["steps:
  - id: call
    command: { topic: t, type: call, data: { attempt: attempt } }
    await: [ { on: ok }, { on: transient, then: retry } ]
    timeout: 10s
    retry: { attempts: 4, backoff: 1s, factor: 3 }
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k"}}}
{"expect": {"commands": ["call"]}}
{"event": {"type": "transient", "data": {"id": "k"}}}
{"advance": "999ms"}
{"expect": {"commands": []}}
{"advance": "1ms"}
{"expect": {"commands": ["call"]}}
{"advance": "10s"}
{"advance": "2999ms"}
{"expect": {"commands": []}}
{"advance": "1ms"}
{"expect": {"commands": ["call"]}}
{"advance": "10s"}
{"advance": "9s"}
{"expect": {"commands": ["call"], "key": "k", "at": ["call"], "incidents": 0}}
{"advance": "10s"}
{"expect": {"commands": [], "key": "k", "status": "active", "incidents": 1}}
{"operator": {"process": "p0", "key": "k", "action": "retry"}}
{"expect": {"commands": ["call"], "key": "k", "incidents": 0}}
{"event": {"type": "ok", "data": {"id": "k"}}}
{"expect": {"key": "k", "status": "completed"}}"#,
    },
    Case {
        name: "timeout goes to another step",
        definitions: &["steps:
  - id: credit
    command: { topic: t, type: credit }
    await: [ { on: credit.ok } ]
    timeout: 2h
    on_timeout: review
  - id: approved
    end: completed
  - id: review
    manual: { topic: tasks, type: review }
    await: [ { on: review.done } ]
    then: complete
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k"}}}
{"advance": "2h"}
{"expect": {"commands": ["credit", "review"], "key": "k", "at": ["review"]}}
{"event": {"type": "credit.ok", "data": {"id": "k"}}}
{"expect": {"commands": [], "key": "k", "at": ["review"]}}
{"event": {"type": "review.done", "data": {"id": "k"}}}
{"expect": {"key": "k", "status": "completed"}}"#,
    },
    Case {
        name: "failure compensates completed tasks newest first",
        definitions: &["steps:
  - id: a
    command: { topic: t, type: do.a }
    await: [ { on: a.ok } ]
    compensate: { topic: t, type: undo.a }
  - id: b
    command: { topic: t, type: do.b }
    compensate: { topic: t, type: undo.b }
  - id: c
    command: { topic: t, type: do.c }
    await: [ { on: c.ok }, { on: c.failed, then: fail } ]
    compensate: { topic: t, type: undo.c }
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k"}}}
{"event": {"type": "a.ok", "data": {"id": "k"}}}
{"event": {"type": "c.failed", "data": {"id": "k"}}}
{"expect": {"commands": ["do.a", "do.b", "do.c", "undo.b", "undo.a"], "key": "k", "status": "failed"}}"#,
    },
    Case {
        name: "end states and operator cancel with compensation",
        definitions: &["steps:
  - id: a
    command: { topic: t, type: do.a }
    await: [ { on: a.ok }, { on: a.cancel, goto: stop } ]
    compensate: { topic: t, type: undo.a }
  - id: b
    await: [ { on: b.ok } ]
  - id: stop
    end: cancelled
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "x"}}}
{"event": {"type": "a.cancel", "data": {"id": "x"}}}
{"expect": {"commands": ["do.a"], "key": "x", "status": "cancelled"}}
{"event": {"type": "go", "data": {"id": "y"}}}
{"event": {"type": "a.ok", "data": {"id": "y"}}}
{"operator": {"process": "p0", "key": "y", "action": "cancel", "compensate": true}}
{"expect": {"commands": ["do.a", "undo.a"], "key": "y", "status": "cancelled"}}"#,
    },
    Case {
        name: "a CEL error on real data parks the step as an incident until an operator acts",
        definitions: &["vars: { amount: event.data.amount }
steps:
  - id: charge
    command: { topic: t, type: charge, data: { cents: vars.amount * 100 } }
    await: [ { on: charged } ]
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k", "amount": "12"}}}
{"expect": {"commands": [], "key": "k", "status": "active", "at": ["charge"], "incidents": 1}}
{"operator": {"process": "p0", "key": "k", "action": "set", "name": "amount", "value": 12}}
{"operator": {"process": "p0", "key": "k", "action": "retry"}}
{"expect": {"commands": ["charge"], "key": "k", "incidents": 0}}
{"event": {"type": "charged", "data": {"id": "k"}}}
{"expect": {"key": "k", "status": "completed"}}"#,
    },
    Case {
        name: "skip resolves an incident by moving on",
        definitions: &["steps:
  - id: flaky
    command: { topic: t, type: flaky }
    await: [ { on: flaky.ok }, { on: flaky.broken, then: incident } ]
  - id: after
    command: { topic: t, type: after }
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k"}}}
{"event": {"type": "flaky.broken", "data": {"id": "k"}}}
{"expect": {"commands": ["flaky"], "key": "k", "incidents": 1}}
{"operator": {"process": "p0", "key": "k", "action": "skip"}}
{"expect": {"commands": ["after"], "key": "k", "status": "completed", "incidents": 0}}"#,
    },
    Case {
        name: "observe keeps variables current from events nobody commanded",
        definitions: &["vars: { email: event.data.email }
steps:
  - id: wait-for-it
    await: [ { on: done } ]
  - id: mail
    command: { topic: t, type: mail, data: { to: vars.email } }
observe:
  - on: contact.changed
    when: has(event.data.email)
    set: { email: event.data.email }
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k", "email": "old@x"}}}
{"event": {"type": "contact.changed", "data": {"id": "k", "phone": "1"}}}
{"expect": {"key": "k", "vars": {"email": "old@x"}}}
{"event": {"type": "contact.changed", "data": {"id": "k", "email": "new@x"}}}
{"event": {"type": "done", "data": {"id": "k"}}}
{"expect": {"commands": ["mail"], "key": "k", "status": "completed", "vars": {"email": "new@x"}}}"#,
    },
    Case {
        name: "expect watchdog escalates when the expected event is late and is disarmed when it comes",
        definitions: &["steps:
  - id: ship
    command: { topic: t, type: ship }
    await: [ { on: shipped } ]
expect:
  - after: ship
    on: delivered
    within: 72h
    otherwise:
      command: { topic: support, type: case.open, data: { order: key } }
      then: incident
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "late"}}}
{"event": {"type": "shipped", "data": {"id": "late"}}}
{"expect": {"commands": ["ship"], "key": "late", "status": "active"}}
{"advance": "72h"}
{"expect": {"commands": ["case.open"], "key": "late", "status": "active", "incidents": 1}}
{"operator": {"process": "p0", "key": "late", "action": "skip"}}
{"expect": {"key": "late", "status": "completed"}}
{"event": {"type": "go", "data": {"id": "ok"}}}
{"event": {"type": "shipped", "data": {"id": "ok"}}}
{"advance": "1h"}
{"event": {"type": "delivered", "data": {"id": "ok"}}}
{"advance": "100h"}
{"expect": {"commands": ["ship"], "key": "ok", "status": "completed", "incidents": 0}}"#,
    },
    Case {
        name: "call of another process awaits its end and reads its variables",
        definitions: &[
            "steps:
  - id: kyc
    call: { process: kyc, key: \"key + '-kyc'\", vars: { customer: key } }
    await:
      - on: baton.process.completed
        set: { risk: event.data.vars.risk }
      - on: baton.process.failed
        then: fail
  - id: open
    command: { topic: t, type: open, data: { risk: vars.risk } }
",
            "process: kyc
version: 1
start: { on: kyc.never, key: event.data.id }
correlate: { \"kyc.*\": event.data.ref }
steps:
  - id: verify
    command: { topic: t, type: kyc.verify, data: { customer: vars.customer } }
    await: [ { on: kyc.verified, set: { risk: event.data.risk } } ]
",
        ],
        scenario: r#"{"event": {"type": "go", "data": {"id": "c1"}}}
{"expect": {"commands": ["kyc.verify"], "process": "kyc", "key": "c1-kyc", "status": "active", "vars": {"customer": "c1"}}}
{"event": {"type": "kyc.verified", "data": {"ref": "c1-kyc", "risk": "low"}}}
{"expect": {"commands": ["open"], "process": "p0", "key": "c1", "status": "completed", "vars": {"risk": "low"}}}"#,
    },
    Case {
        name: "early events are buffered; a repeated event id is ignored even after the end, other events for ended instances are rejected",
        definitions: &["buffer: { size: 2, ttl: 10m }
steps:
  - id: first
    await: [ { on: one } ]
  - id: second
    await: [ { on: two } ]
"],
        scenario: r#"{"event": {"type": "two", "id": "t2", "data": {"id": "k"}}}
{"expect": {"key": "k", "status": "pending"}}
{"event": {"type": "go", "id": "g", "data": {"id": "k"}}}
{"event": {"type": "one", "id": "o1", "data": {"id": "k"}}}
{"expect": {"key": "k", "status": "completed", "rejected": 0}}
{"event": {"type": "one", "id": "o1", "data": {"id": "k"}}}
{"expect": {"rejected": 0, "duplicates": 1}}
{"event": {"type": "one", "id": "o2", "data": {"id": "k"}}}
{"expect": {"rejected": 1, "key": "k", "status": "completed"}}
{"event": {"type": "go", "id": "g2", "data": {"id": "m"}}}
{"event": {"type": "two", "id": "m1", "data": {"id": "m"}}}
{"event": {"type": "two", "id": "m2", "data": {"id": "m"}}}
{"event": {"type": "two", "id": "m3", "data": {"id": "m"}}}
{"expect": {"rejected": 1, "key": "m", "at": ["first"]}}
{"advance": "10m"}
{"expect": {"rejected": 2, "key": "m", "at": ["first"]}}
{"event": {"type": "go", "id": "g2", "data": {"id": "m"}}}
{"event": {"type": "go", "id": "g3", "data": {"id": "m"}}}
{"expect": {"rejected": 1, "duplicates": 1, "key": "m", "at": ["first"]}}"#,
    },
    Case {
        name: "a buffered event is delivered when a timer moves the flow to the step awaiting it",
        definitions: &["steps:
  - id: hold
    wait: 10m
  - id: get-b
    await: [ { on: b } ]
"],
        scenario: r#"{"event": {"type": "go", "data": {"id": "k"}}}
{"event": {"type": "b", "data": {"id": "k"}}}
{"expect": {"key": "k", "at": ["hold"]}}
{"advance": "10m"}
{"expect": {"key": "k", "status": "completed", "rejected": 0}}"#,
    },
    Case {
        name: "a correlation failing in one process does not dead-letter an event another process took",
        definitions: &[
            "process: a\nversion: 1\nstart: { on: a.go, key: event.data.aId }\ncorrelate: { \"x.*\": event.data.aId }\nsteps:\n  - { id: w, await: [ { on: x.done } ] }\n",
            "process: b\nversion: 1\nstart: { on: b.go, key: event.data.bId }\ncorrelate: { \"x.*\": event.data.bId }\nsteps:\n  - { id: w, await: [ { on: x.done } ] }\n",
        ],
        scenario: r#"{"event": {"type": "a.go", "data": {"aId": "1"}}}
{"event": {"type": "x.done", "data": {"aId": "1"}}}
{"expect": {"process": "a", "key": "1", "status": "completed", "rejected": 0}}
{"event": {"type": "x.done", "data": {"nobody": "1"}}}
{"expect": {"rejected": 1}}"#,
    },
    Case {
        name: "events that match no process are dead letters",
        definitions: &["steps:\n  - id: a\n    await: [ { on: a } ]\n"],
        scenario: r#"{"event": {"type": "go", "data": {"nokey": true}}}
{"expect": {"rejected": 1}}"#,
    },
];

#[test]
fn every_construct_behaves_as_specified() {
    for case in CASES {
        run(case);
    }
}
