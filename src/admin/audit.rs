//! The audit trail over the API: one instance's entries
//! (`GET /api/v1/audit/{process}/{key}`), and the compliance check
//! (`GET /api/v1/audit/replay`): every instance of a shard, or one, rebuilt
//! from its audit entries and compared with its changelog snapshot.
//!
//! Both read the audit and changelog partitions from Kafka, committed
//! records only, so any member answers for any shard; the cost is one read
//! of the partitions concerned per call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::{Api, ApiError, Fail, bad};
use crate::audit::{self, Verdict};
use crate::config::Config;
use crate::engine::{Instance, Registry};
use crate::kafka;
use crate::runtime::shard_of;

fn kafka_failed(e: impl std::fmt::Display) -> Fail {
    Fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The audit entries of shard `p`, by instance, in the order they were applied.
fn entries(cfg: &Config, p: i32) -> Result<BTreeMap<String, Vec<audit::Entry>>, Fail> {
    let mut records = Vec::new();
    kafka::scan_partition(cfg, &cfg.topics.audit(), p, |m| {
        // Records of another format version are not this build's to replay.
        if let Some(r) = m.payload.as_deref().and_then(|b| audit::decode(b).ok()) {
            records.push(r);
        }
    })
    .map_err(kafka_failed)?;
    Ok(audit::by_instance(records))
}

/// The audit entries of every shard written at or after `since` (epoch
/// ms), by instance, each instance's in the order they were applied.
pub(super) fn trail_since(
    cfg: &Config,
    since: u64,
) -> Result<BTreeMap<String, Vec<audit::Entry>>, Fail> {
    let mut records = Vec::new();
    for p in 0..cfg.topics.partitions {
        kafka::scan_partition_since(cfg, &cfg.topics.audit(), p, Some(since), |m| {
            if let Some(r) = m.payload.as_deref().and_then(|b| audit::decode(b).ok()) {
                records.push(r);
            }
        })
        .map_err(kafka_failed)?;
    }
    Ok(audit::by_instance(records))
}

/// The latest committed snapshot of every instance of shard `p`.
fn snapshots(cfg: &Config, p: i32) -> Result<BTreeMap<String, Option<Instance>>, Fail> {
    let mut out = BTreeMap::new();
    kafka::scan_partition(cfg, &cfg.topics.changelog(), p, |m| {
        let Some(key) = m.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
            return;
        };
        let inst = m
            .payload
            .as_deref()
            .and_then(|b| crate::wire::decode_changelog_at(b).ok())
            .map(|(_, _, i)| i);
        out.insert(key.to_string(), inst);
    })
    .map_err(kafka_failed)?;
    Ok(out)
}

/// One instance's audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub instance: String,
    /// Entries as `proto/baton/v1/audit.schema.json` describes them.
    pub entries: Vec<serde_json::Value>,
}

pub(super) fn config(api: &Api) -> Result<Arc<Config>, Fail> {
    api.actions
        .as_ref()
        .map(|a| a.config.clone())
        .ok_or_else(|| {
            Fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "this member has no Kafka configuration to read the audit trail with".into(),
            )
        })
}

/// The audit entries of instance `id`, oldest first, as JSON.
pub(super) async fn history(api: &Api, id: &str) -> Result<Vec<serde_json::Value>, Fail> {
    let cfg = config(api)?;
    let p = shard_of(id, cfg.topics.partitions);
    let found = tokio::task::spawn_blocking(move || entries(&cfg, p))
        .await
        .map_err(kafka_failed)??;
    Ok(found
        .get(id)
        .map(|list| {
            list.iter()
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect()
        })
        .unwrap_or_default())
}

/// The audit trail of one instance, oldest first.
#[utoipa::path(get, path = "/api/v1/audit/{process}/{key}",
    params(("process" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = AuditView), (status = 401, body = ApiError),
        (status = 503, body = ApiError)))]
pub(super) async fn trail(
    State(api): State<Api>,
    Path((process, key)): Path<(String, String)>,
) -> Result<Json<AuditView>, Fail> {
    let id = format!("{process}/{key}");
    let entries = history(&api, &id).await?;
    Ok(Json(AuditView {
        instance: id,
        entries,
    }))
}

/// Which instances to replay: one (`process` and `key`) or a whole shard.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayQuery {
    pub process: Option<String>,
    pub key: Option<String>,
    pub partition: Option<i32>,
}

/// An instance whose trail does not rebuild its snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct Mismatch {
    pub instance: String,
    pub reason: String,
}

/// What a replay found.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayView {
    pub checked: u64,
    pub matched: u64,
    pub mismatched: Vec<Mismatch>,
}

/// Replays `ids` of shard `p` (`None`: all of it): every instance with
/// entries or a snapshot. An instance that changes while it is read may
/// look different in the two partitions; those are read and checked once
/// more before they count as mismatched.
fn replay(
    cfg: &Config,
    registry: &Registry,
    p: i32,
    ids: Option<BTreeSet<String>>,
) -> Result<ReplayView, Fail> {
    let check = |ids: &Option<BTreeSet<String>>| -> Result<Vec<(String, Verdict)>, Fail> {
        let trail = entries(cfg, p)?;
        let held = snapshots(cfg, p)?;
        let all: BTreeSet<String> = match ids {
            Some(ids) => ids.clone(),
            None => trail.keys().chain(held.keys()).cloned().collect(),
        };
        Ok(all
            .into_iter()
            .map(|id| {
                let list = trail.get(&id).map_or(&[][..], Vec::as_slice);
                let snapshot = held.get(&id).and_then(Option::as_ref);
                let verdict = audit::replay(registry, &id, list, snapshot);
                (id, verdict)
            })
            .collect())
    };
    let first = check(&ids)?;
    let checked = first.len() as u64;
    let again: BTreeSet<String> = first
        .iter()
        .filter(|(_, v)| *v != Verdict::Match)
        .map(|(id, _)| id.clone())
        .collect();
    let mismatched = if again.is_empty() {
        Vec::new()
    } else {
        check(&Some(again))?
            .into_iter()
            .filter_map(|(instance, v)| match v {
                Verdict::Match => None,
                Verdict::Mismatch { reason } => Some(Mismatch { instance, reason }),
            })
            .collect()
    };
    Ok(ReplayView {
        checked,
        matched: checked - mismatched.len() as u64,
        mismatched,
    })
}

/// Rebuilds instances from their audit trail and compares them with the
/// changelog: the compliance check.
#[utoipa::path(get, path = "/api/v1/audit/replay", params(ReplayQuery),
    responses((status = 200, body = ReplayView), (status = 400, body = ApiError),
        (status = 401, body = ApiError), (status = 503, body = ApiError)))]
pub(super) async fn replay_check(
    State(api): State<Api>,
    Query(q): Query<ReplayQuery>,
) -> Result<Json<ReplayView>, Fail> {
    let cfg = config(&api)?;
    let n = cfg.topics.partitions;
    let (p, ids) = match (q.process, q.key, q.partition) {
        (Some(process), Some(key), None) => {
            let id = format!("{process}/{key}");
            (shard_of(&id, n), Some(BTreeSet::from([id])))
        }
        (None, None, Some(p)) if (0..n).contains(&p) => (p, None),
        (None, None, Some(p)) => {
            return Err(bad(format!(
                "partition: {p} is not between 0 and {}",
                n - 1
            )));
        }
        _ => {
            return Err(bad(
                "give `process` and `key` (one instance) or `partition` (a whole shard)",
            ));
        }
    };
    let registry = api.registry.get();
    let view = tokio::task::spawn_blocking(move || replay(&cfg, &registry, p, ids))
        .await
        .map_err(kafka_failed)??;
    Ok(Json(view))
}
