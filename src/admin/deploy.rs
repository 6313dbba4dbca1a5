//! `POST /api/v1/definitions`: a definition deployed at run time. The text
//! is validated here, then published to the definitions topic, which every
//! process follows (`runtime::deploys`); the answer comes once this
//! member's runtime has taken it.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{Api, Caller};
use crate::engine::content_hash;
use crate::kafka::Outgoing;
use crate::runtime::now_ms;
use crate::wire::{DEPLOY_FORMAT, DeployRecord, encode_deploy};

/// How long a deploy waits for this member's runtime to take it.
const TAKEN_WITHIN: Duration = Duration::from_secs(15);

/// A definition to deploy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The definition's YAML text.
    pub source: String,
    /// The file name it came from, for diagnostics (default `definition.yaml`).
    #[serde(default)]
    pub file: Option<String>,
}

/// A deployed definition version.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deployed {
    pub process: String,
    pub version: u32,
    pub hash: String,
    /// false: this version was deployed before with the same text.
    pub created: bool,
}

/// A refused deploy: why, and the diagnostics (`file:line:col: …`).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeployError {
    pub error: String,
    pub diagnostics: Vec<String>,
}

fn refuse(status: StatusCode, error: String, diagnostics: Vec<String>) -> Response {
    (status, Json(DeployError { error, diagnostics })).into_response()
}

/// Validates and deploys one definition version.
#[utoipa::path(post, path = "/api/v1/definitions", request_body = DeployRequest,
    responses((status = 201, body = Deployed, description = "deployed"),
        (status = 200, body = Deployed, description = "deployed before with the same text"),
        (status = 400, body = DeployError), (status = 401, body = super::api::ApiError),
        (status = 403, body = super::api::ApiError),
        (status = 409, body = DeployError, description = "the version exists with other content"),
        (status = 422, body = DeployError, description = "the definition is invalid"),
        (status = 503, body = DeployError)))]
pub(super) async fn deploy(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the request body: {}", e.body_text()),
                Vec::new(),
            );
        }
    };
    let Some(acts) = api.actions.clone() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this member serves reads only: it has no producer for deploys".into(),
            Vec::new(),
        );
    };
    let file = body
        .file
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "definition.yaml".into());
    let def = match crate::dsl::parse(&file, &body.source) {
        Ok(d) => d,
        Err(diags) => {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{file}: {} error{} in the definition; nothing deployed",
                    diags.0.len(),
                    if diags.0.len() == 1 { "" } else { "s" }
                ),
                diags.0.iter().map(|d| d.to_string()).collect(),
            );
        }
    };
    let (process, version) = (def.process.clone(), def.version);
    let hash = content_hash(&body.source);
    let answer = |created: bool, hash: String| {
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let d = Deployed {
            process: process.clone(),
            version,
            hash,
            created,
        };
        (status, Json(d)).into_response()
    };
    let conflict = |existing: &str| {
        refuse(
            StatusCode::CONFLICT,
            format!(
                "{process} version {version} is already deployed with other content ({existing}); deploy the changed text as a new version"
            ),
            vec![format!(
                "{file}:1:1: error: version: {process} version {version} exists with content {existing}, this text has {hash}"
            )],
        )
    };
    if let Some(existing) = api.registry.get().get(&process, version) {
        if existing.hash == hash {
            return answer(false, hash);
        }
        return conflict(&existing.hash);
    }
    let record = DeployRecord {
        v: DEPLOY_FORMAT,
        process: process.clone(),
        version,
        hash: hash.clone(),
        file: file.clone(),
        source: body.source,
        by: caller.name,
        at: now_ms(),
    };
    let out = Outgoing {
        topic: acts.definitions_topic.clone(),
        partition: Some(0),
        key: record.key().into_bytes(),
        payload: Some(encode_deploy(&record)),
        headers: vec![("content-type".to_string(), b"application/json".to_vec())],
    };
    if let Err(e) = acts.publisher.publish(&out).await {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), Vec::new());
    }
    let deadline = tokio::time::Instant::now() + TAKEN_WITHIN;
    loop {
        if let Some(d) = api.registry.get().get(&process, version) {
            // Another deploy of this version may have come first.
            return if d.hash == hash {
                answer(true, hash)
            } else {
                conflict(&d.hash)
            };
        }
        if tokio::time::Instant::now() > deadline {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "published, but this member's runtime did not take it within {} s; `baton definitions` shows when it does",
                    TAKEN_WITHIN.as_secs()
                ),
                Vec::new(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
