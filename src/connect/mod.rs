//! `baton connect`: the HTTP connector. It consumes command topics and, per
//! command type, calls an HTTP endpoint, then publishes the outcome as a
//! CloudEvent (`<command type>.succeeded` or `.failed`) that a process
//! awaits like any other event.
//!
//! Consume → call → publish the outcome and commit the offset happen in one
//! Kafka transaction (as `baton run` does), so a crash never loses a
//! command and never publishes an outcome twice; the calls themselves are
//! at-least-once, each carrying the command id as its `Idempotency-Key`.
//!
//! - `config`: `connectors.toml`, checked and compiled.
//! - `request`: a command record and the HTTP request it becomes (CEL).
//! - `call`: one HTTP attempt, and a command's delivery with retries.
//! - `limits`: rate limit, circuit breaker, backoff.
//! - `outcome`: the outcome CloudEvent.
//! - `worker`: the consume → call → commit loop.
//! - `metrics`: the connector's metrics and its health port.
//!
//! It uses `crate::kafka` for every Kafka client and the engine's CEL;
//! it knows nothing of shards, definitions or instances.

mod call;
mod config;
mod limits;
mod metrics;
mod outcome;
mod request;
mod worker;

pub use call::{Delivery, Outcome};
pub use config::{
    AdminSettings, AuthConfig, BreakerConfig, CommandConfig, ConnectConfigError, ConnectFile,
    Connectors, EndpointConfig, EndpointPlan, Publish, RateLimitConfig, RetryConfig, Roots,
    SecretConfig, Settings, TlsConfig, load,
};
pub use metrics::ConnectMetrics;
pub use request::{Command, Request, Route};
pub use worker::Connector;

use crate::kafka::KafkaFailure;

/// Why the connector cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error("{0}")]
    Setup(String),
}
