//! What the console shows beyond the plain listings: who is signed in, the
//! overview per process and version, the size of a filtered set (for a bulk
//! action's confirmation), incidents grouped by process and step, a
//! definition's diagram laid out, and its heat map from the audit trail.
//!
//! Figures over instances are this member's, added up over the members it
//! fans out to (like the listings); the heat map reads the audit topic,
//! which every member can read whole.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Extension, Path, Query, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::{Api, ApiError, Caller, Fail, InstanceQuery, LocalQuery, bad, time};
use crate::config::Role;
use crate::diagram::{self, Heat, Layout};
use crate::engine::{self, Millis, Status};
use crate::index::Filter;

/// The token's holder and role.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub name: String,
    /// `viewer` (reads) or `operator` (also acts and deploys).
    pub role: String,
}

/// Who the presented token belongs to (the console signs in with it).
#[utoipa::path(get, path = "/api/v1/whoami",
    responses((status = 200, body = WhoAmI), (status = 401, body = ApiError)))]
pub(super) async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: match caller.role {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
        .to_string(),
    })
}

const MINUTE: Millis = 60_000;
/// 9999-12-31T23:59:59.999Z: the latest time an RFC 3339 date can show.
const LATEST: Millis = 253_402_300_799_999;
const MAX_WINDOW_MINUTES: u64 = 24 * 60;

/// Options of the overview.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct OverviewQuery {
    /// Minutes of throughput, 1 to 1440 (default 15).
    pub window_minutes: Option<u64>,
    /// The window's last minute, epoch ms (default: now; members asked by
    /// another get the asker's, so their buckets line up).
    pub at: Option<u64>,
    /// Only this member's instances (no fan-out to the others).
    pub local: Option<bool>,
}

/// Instances started and ended in one minute.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Minute {
    /// The minute's start, RFC 3339.
    pub minute: String,
    pub started: u64,
    pub ended: u64,
}

/// One process version at a glance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessOverview {
    pub process: String,
    pub version: u32,
    /// Pending or active.
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    /// Ended (failed or cancelled) after compensating completed tasks.
    pub compensated: u64,
    pub cancelled: u64,
    /// Open incidents.
    pub incidents: u64,
    /// One bucket per minute of the window, oldest first.
    pub throughput: Vec<Minute>,
}

/// Every process version this member (and those it asked) holds instances of.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub processes: Vec<ProcessOverview>,
    pub window_minutes: u64,
    /// Members that did not answer (their instances are missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// The overview of the instances held here, for a window of `minutes`
/// minutes ending with the minute of `at`.
fn overview_here(api: &Api, minutes: u64, at: Millis) -> Vec<ProcessOverview> {
    let last = at - at % MINUTE;
    let first = last.saturating_sub((minutes - 1) * MINUTE);
    let bucket = |t: Millis| {
        (first..last + MINUTE)
            .contains(&t)
            .then(|| ((t - first) / MINUTE) as usize)
    };
    let empty = || -> Vec<Minute> {
        (0..minutes)
            .map(|i| Minute {
                minute: engine::format_rfc3339(first + i * MINUTE),
                started: 0,
                ended: 0,
            })
            .collect()
    };
    let mut by: BTreeMap<(String, u32), ProcessOverview> = BTreeMap::new();
    // Every deployed version shows, also one without instances.
    for d in api.registry.get().all() {
        by.insert(
            (d.process.clone(), d.version),
            blank(&d.process, d.version, empty()),
        );
    }
    api.index.scan(|id, e| {
        let process = id.split_once('/').map_or(id, |(p, _)| p);
        let o = by
            .entry((process.to_string(), e.version))
            .or_insert_with(|| blank(process, e.version, empty()));
        match e.status {
            Status::Pending | Status::Active => o.running += 1,
            Status::Completed => o.completed += 1,
            Status::Failed => o.failed += 1,
            Status::Cancelled => o.cancelled += 1,
        }
        if e.compensated && e.status.is_ended() {
            o.compensated += 1;
        }
        o.incidents += e.incidents.len() as u64;
        if let Some(b) = bucket(e.started_at) {
            o.throughput[b].started += 1;
        }
        if let Some(b) = e.ended_at().and_then(bucket) {
            o.throughput[b].ended += 1;
        }
    });
    by.into_values().collect()
}

fn blank(process: &str, version: u32, throughput: Vec<Minute>) -> ProcessOverview {
    ProcessOverview {
        process: process.to_string(),
        version,
        running: 0,
        completed: 0,
        failed: 0,
        compensated: 0,
        cancelled: 0,
        incidents: 0,
        throughput,
    }
}

/// Adds `other` into `into`, bucket by bucket.
fn add(into: &mut ProcessOverview, other: &ProcessOverview) {
    into.running += other.running;
    into.completed += other.completed;
    into.failed += other.failed;
    into.compensated += other.compensated;
    into.cancelled += other.cancelled;
    into.incidents += other.incidents;
    for m in &other.throughput {
        if let Some(mine) = into.throughput.iter_mut().find(|x| x.minute == m.minute) {
            mine.started += m.started;
            mine.ended += m.ended;
        }
    }
}

/// Instances per process and version by status, open incidents, and
/// instances started and ended per minute.
#[utoipa::path(get, path = "/api/v1/overview", params(OverviewQuery),
    responses((status = 200, body = Overview), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub(super) async fn overview(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<OverviewQuery>,
) -> Result<Json<Overview>, Fail> {
    let minutes = q.window_minutes.unwrap_or(15);
    if !(1..=MAX_WINDOW_MINUTES).contains(&minutes) {
        return Err(bad(format!(
            "window_minutes: {minutes} is not between 1 and {MAX_WINDOW_MINUTES}"
        )));
    }
    let at = q.at.unwrap_or_else(crate::runtime::now_ms);
    if at > LATEST {
        return Err(bad(format!("at: {at} is after the year 9999")));
    }
    let mut processes = overview_here(&api, minutes, at);
    let raw = Some(format!("window_minutes={minutes}&at={at}"));
    let mut unreachable = Vec::new();
    for (member, answer) in api.fan_out("/overview", raw, q.local, &caller).await {
        match answer.and_then(|v| serde_json::from_value::<Overview>(v).map_err(|e| e.to_string()))
        {
            Ok(other) => {
                for p in other.processes {
                    match processes.iter_mut().find(|x| {
                        (x.process.as_str(), x.version) == (p.process.as_str(), p.version)
                    }) {
                        Some(mine) => add(mine, &p),
                        None => processes.push(p),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(member, error = %e, "a member did not answer the overview");
                unreachable.push(member);
            }
        }
    }
    processes.sort_by(|a, b| (&a.process, a.version).cmp(&(&b.process, b.version)));
    Ok(Json(Overview {
        processes,
        window_minutes: minutes,
        unreachable,
    }))
}

/// How many instances a filter matches.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Count {
    pub count: u64,
    /// Members that did not answer (their instances are not counted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// Counts the instances `/instances` would list with the same filters
/// (`limit` and `after` are ignored): what a bulk action would act on.
#[utoipa::path(get, path = "/api/v1/instances/count", params(InstanceQuery),
    responses((status = 200, body = Count), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub(super) async fn count(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    Query(q): Query<InstanceQuery>,
) -> Result<Json<Count>, Fail> {
    let filter = q.filter()?;
    let steps = |p: &str, v: u32| api.step_names(p, v);
    let mut count = api.index.count(&filter, &steps) as u64;
    let mut unreachable = Vec::new();
    for (member, answer) in api.fan_out("/instances/count", raw, q.local, &caller).await {
        match answer.and_then(|v| serde_json::from_value::<Count>(v).map_err(|e| e.to_string())) {
            Ok(c) => count += c.count,
            Err(e) => {
                tracing::warn!(member, error = %e, "a member did not answer a count");
                unreachable.push(member);
            }
        }
    }
    Ok(Json(Count { count, unreachable }))
}

/// Open incidents of one process step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncidentGroup {
    pub process: String,
    pub version: u32,
    /// The step the incidents are parked on (`null`: not on a step).
    pub step: Option<String>,
    pub count: u64,
    pub newest_reason: String,
    pub newest_at: String,
    /// Epoch ms of `newest_at`, to merge members' groups.
    pub newest_ms: u64,
}

/// Open incidents grouped by process, version and step, most first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IncidentGroups {
    pub groups: Vec<IncidentGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// Open incidents grouped by process and step, with counts and the newest reason.
#[utoipa::path(get, path = "/api/v1/incidents/groups", params(LocalQuery),
    responses((status = 200, body = IncidentGroups), (status = 401, body = ApiError)))]
pub(super) async fn incident_groups(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<LocalQuery>,
) -> Json<IncidentGroups> {
    type GroupKey = (String, u32, Option<String>);
    let mut groups: BTreeMap<GroupKey, IncidentGroup> = BTreeMap::new();
    let mut merge = |g: IncidentGroup| {
        let key = (g.process.clone(), g.version, g.step.clone());
        match groups.get_mut(&key) {
            Some(mine) => {
                mine.count += g.count;
                if g.newest_ms > mine.newest_ms {
                    mine.newest_ms = g.newest_ms;
                    mine.newest_at = g.newest_at;
                    mine.newest_reason = g.newest_reason;
                }
            }
            None => {
                groups.insert(key, g);
            }
        }
    };
    let open = Filter {
        incident: Some(true),
        ..Filter::default()
    };
    let none = |_: &str, _: u32| None;
    for id in api.index.ids(&open, &none) {
        let Some(e) = api.index.get(&id) else {
            continue;
        };
        let process = id.split_once('/').map_or(&*id, |(p, _)| p);
        for i in e.incidents.iter() {
            merge(IncidentGroup {
                process: process.to_string(),
                version: e.version,
                step: i.step.map(|s| api.step_name(process, e.version, s)),
                count: 1,
                newest_reason: i.reason.clone(),
                newest_at: engine::format_rfc3339(i.at),
                newest_ms: i.at,
            });
        }
    }
    let mut unreachable = Vec::new();
    for (member, answer) in api
        .fan_out("/incidents/groups", None, q.local, &caller)
        .await
    {
        match answer
            .and_then(|v| serde_json::from_value::<IncidentGroups>(v).map_err(|e| e.to_string()))
        {
            Ok(other) => other.groups.into_iter().for_each(&mut merge),
            Err(e) => {
                tracing::warn!(member, error = %e, "a member did not answer");
                unreachable.push(member);
            }
        }
    }
    let mut groups: Vec<IncidentGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (&a.process, &a.step).cmp(&(&b.process, &b.step)))
    });
    Json(IncidentGroups {
        groups,
        unreachable,
    })
}

fn version_of(v: &str) -> Result<u32, Fail> {
    v.parse()
        .map_err(|_| bad(format!("version: `{v}` is not a whole number")))
}

fn definition(
    api: &Api,
    process: &str,
    version: &str,
) -> Result<std::sync::Arc<engine::Definition>, Fail> {
    let version = version_of(version)?;
    api.registry
        .get()
        .get(process, version)
        .cloned()
        .ok_or_else(|| {
            Fail(
                StatusCode::NOT_FOUND,
                format!("no definition `{process}` version {version}"),
            )
        })
}

/// A definition version laid out for drawing: nodes with their boxes,
/// edges with their routes (node ids as in the heat map).
#[utoipa::path(get, path = "/api/v1/definitions/{process}/{version}/diagram",
    params(("process" = String, Path), ("version" = u32, Path)),
    responses((status = 200, body = Layout), (status = 400, body = ApiError),
        (status = 404, body = ApiError), (status = 401, body = ApiError)))]
pub(super) async fn diagram(
    State(api): State<Api>,
    Path((process, version)): Path<(String, String)>,
) -> Result<Json<Layout>, Fail> {
    let def = definition(&api, &process, &version)?;
    Ok(Json(diagram::layout(&def)))
}

/// The window of a heat map; RFC 3339 or epoch ms.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct HeatQuery {
    /// From (default: an hour before `to`).
    pub from: Option<String>,
    /// To (default: now).
    pub to: Option<String>,
}

/// A heat map and its window.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeatView {
    pub process: String,
    pub version: u32,
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub heat: Heat,
}

/// How many instances of a definition version passed each step and
/// transition in a window, and the p50/p95 time spent in each step, from
/// the audit trail.
#[utoipa::path(get, path = "/api/v1/definitions/{process}/{version}/heatmap",
    params(("process" = String, Path), ("version" = u32, Path), HeatQuery),
    responses((status = 200, body = HeatView), (status = 400, body = ApiError),
        (status = 404, body = ApiError), (status = 401, body = ApiError),
        (status = 503, body = ApiError)))]
pub(super) async fn heatmap(
    State(api): State<Api>,
    Path((process, version)): Path<(String, String)>,
    Query(q): Query<HeatQuery>,
) -> Result<Json<HeatView>, Fail> {
    let def = definition(&api, &process, &version)?;
    let to = time("to", &q.to)?.unwrap_or_else(crate::runtime::now_ms);
    if to > LATEST {
        return Err(bad(format!("to: {to} is after the year 9999")));
    }
    let from = time("from", &q.from)?.unwrap_or(to.saturating_sub(60 * MINUTE));
    if from > to {
        return Err(bad("from: after `to`"));
    }
    let cfg = super::audit::config(&api)?;
    let (d, p) = (def.clone(), process.clone());
    let heat = tokio::task::spawn_blocking(move || -> Result<Heat, Fail> {
        let trail = super::audit::trail_since(&cfg, from)?;
        let mine = trail
            .values()
            .filter(|list| list.first().is_some_and(|e| e.process == p))
            .map(Vec::as_slice);
        Ok(diagram::heat(&d, mine, from, to))
    })
    .await
    .map_err(|e| Fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))??;
    Ok(Json(HeatView {
        process,
        version: def.version,
        from: engine::format_rfc3339(from),
        to: engine::format_rfc3339(to),
        heat,
    }))
}
