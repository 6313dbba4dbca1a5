//! baton: a process orchestrator for event-driven enterprises.
//!
//! Domain events come in, process instances advance, command events go out.
//!
//! - [`engine`]: the pure, deterministic state machine (`step`).
//! - [`dsl`]: process definitions in YAML, parsed and validated into the engine's model.
//! - [`wire`]: protobuf snapshots of instance state, CloudEvents in and out.
//! - [`config`]: `baton.toml` with environment overrides.
//! - [`kafka`]: the only place that knows rdkafka.
//! - [`runtime`]: consume → step → produce, exactly once, sharded by partition.
//! - [`telemetry`]: traces (OTLP), Prometheus metrics, logs.
//! - [`admin`]: the admin HTTP port (`/healthz`, `/readyz`, `/metrics`).
//! - [`demo`]: the embedded demo on an in-process Kafka.
//! - [`simulate`]: runs definitions in memory on a virtual clock (`baton simulate`).
//! - [`diagram`]: Mermaid flowcharts of definitions (`baton graph`).
//! - [`bench`]: `baton bench`, end-to-end figures as ratios against a baseline.
//! - [`cli`]: the command line.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diagram;
pub mod dsl;
pub mod engine;
pub mod kafka;
pub mod runtime;
pub mod simulate;
pub mod telemetry;
pub mod wire;
