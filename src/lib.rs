//! baton: a process orchestrator for event-driven enterprises.
//!
//! Domain events come in, process instances advance, command events go out.
//!
//! - [`engine`]: the pure, deterministic state machine (`step`).
//! - [`shard`]: a partition's instances and timers as a pure state machine
//!   (`Shard::apply`), driven by `baton run` and `baton simulate` alike.
//! - [`deadletters`]: the dead-letter topic read back, and letters replayed to where they came from.
//! - [`audit`]: the audit trail's entries (every input in full, what it did)
//!   and their replay against the changelog.
//! - [`dsl`]: process definitions in YAML, parsed and validated into the engine's model.
//! - [`bpmn`]: `baton import`: BPMN 2.0 models translated into definitions.
//! - [`asyncapi`]: `baton asyncapi`: the event contract (AsyncAPI 3.1) of definitions.
//! - [`wire`]: protobuf snapshots of instance state, CloudEvents in and out.
//! - [`config`]: `baton.toml` with environment overrides.
//! - [`kafka`]: the only place that knows rdkafka.
//! - [`runtime`]: consume → step → produce, exactly once, sharded by partition.
//! - [`telemetry`]: traces (OTLP), Prometheus metrics, logs.
//! - [`admin`]: the admin HTTP port: health, metrics and the admin API (`/api/v1`).
//! - [`connect`]: `baton connect`, the HTTP connector: command events become
//!   HTTP calls (at least once, with idempotency keys) and their outcomes
//!   events again (exactly once).
//! - [`index`]: the live index of the instances a process holds, read by the admin API.
//! - [`simulate`]: runs definitions in memory on a virtual clock (`baton simulate`).
//! - [`diagram`]: definitions as graphs: Mermaid flowcharts (`baton graph`),
//!   the console's laid-out diagrams and heat maps from the audit trail.

pub mod admin;
pub mod asyncapi;
pub mod audit;
pub mod bpmn;
pub mod config;
pub mod connect;
pub mod deadletters;
pub mod diagram;
pub mod dsl;
pub mod engine;
pub mod index;
pub mod kafka;
pub mod runtime;
pub mod shard;
pub mod simulate;
pub mod telemetry;
pub mod wire;

// The command line, the embedded demo and `baton bench` are the binary's
// (`src/main.rs`), not the library's.
