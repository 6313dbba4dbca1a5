//! The write side of the admin API: operator actions on one instance, bulk
//! jobs over the instances a filter matches, and what became of a request.
//!
//! Nothing here changes an instance: an action is published to the operator
//! topic, keyed and partitioned like its instance, and the shard that owns
//! the instance applies it in order with its events, inside the same kind
//! of transaction (see `wire::operator`). Every request carries an id; an
//! instance applies a request id once, so a client that retries, or a job
//! sent twice, changes nothing twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{Api, ApiError, Caller, Fail, InstanceQuery, LocalQuery, bad, time};
use crate::engine::{self, Registry, content_hash};
use crate::index::{Filter, Outcome, Outcomes};
use crate::kafka::{Outgoing, Publisher};
use crate::runtime::{now_ms, shard_of};
use crate::wire::{ActionBody, OPERATOR_FORMAT, OperatorRequest, encode_operator};

/// What the write side needs besides what the API reads.
#[derive(Clone)]
pub struct Actions {
    pub publisher: Arc<Publisher>,
    /// The operator topic and the shard count (the partition of an instance).
    pub operator_topic: String,
    pub partitions: i32,
    /// Where deployed definitions are published.
    pub definitions_topic: String,
    /// For reading the audit trail and the changelog.
    pub config: Arc<crate::config::Config>,
    /// What became of the requests this member's shards applied.
    pub outcomes: Arc<Outcomes>,
    pub jobs: Arc<Jobs>,
}

/// How long a job waits for outcomes that stop arriving.
const CONFIRM_WITHIN: Duration = Duration::from_secs(60);
/// How many records a job has in flight at once.
const IN_FLIGHT: usize = 500;

/// A random id: 32 hex digits from the standard library's per-process
/// random hasher keys and the clock.
pub fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(u128::from(now_ms()));
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Fail> {
    body.map(|Json(b)| b)
        .map_err(|e| bad(format!("the request body: {}", e.body_text())))
}

fn unavailable() -> Fail {
    Fail(
        StatusCode::SERVICE_UNAVAILABLE,
        "this member serves reads only: it has no producer for operator actions".into(),
    )
}

/// Checks an action against the deployed definitions; the engine's action.
fn check_action(
    registry: &Registry,
    process: &str,
    action: &ActionBody,
    reason: &str,
) -> Result<engine::Action, Fail> {
    if reason.trim().is_empty() {
        return Err(bad(
            "`reason` is required: say why (it is kept in the audit trail)",
        ));
    }
    if registry.latest(process).is_none() {
        return Err(Fail(
            StatusCode::NOT_FOUND,
            format!("process `{process}` is not deployed"),
        ));
    }
    let engine_action = action.to_action(reason).map_err(bad)?;
    if let ActionBody::Migrate { to, .. } = action
        && registry.get(process, *to).is_none()
    {
        return Err(Fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("version {to} of process `{process}` is not deployed"),
        ));
    }
    Ok(engine_action)
}

/// The operator record of one request.
fn record(acts: &Actions, r: &OperatorRequest) -> Outgoing {
    let id = r.instance();
    Outgoing {
        topic: acts.operator_topic.clone(),
        partition: Some(shard_of(&id, acts.partitions)),
        key: id.into_bytes(),
        payload: Some(encode_operator(r)),
        headers: vec![("content-type".to_string(), b"application/json".to_vec())],
    }
}

/// An operator action on one instance.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ActionRequest {
    #[serde(flatten)]
    pub action: ActionBody,
    /// Why (required; kept in the audit trail with the token's name).
    pub reason: String,
    /// An id of the caller's choosing: sending the same id again applies
    /// nothing twice (default: a fresh id).
    #[serde(default)]
    pub request: Option<String>,
}

/// The action was published; the owning shard applies it shortly.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub request: String,
    /// `process/key`.
    pub instance: String,
    /// The shard (operator and repartition partition) that applies it.
    pub partition: i32,
}

/// Publishes an operator action for one instance.
#[utoipa::path(post, path = "/api/v1/instances/{process}/{key}/actions",
    params(("process" = String, Path), ("key" = String, Path)),
    request_body = ActionRequest,
    responses((status = 202, body = Accepted), (status = 400, body = ApiError),
        (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 422, body = ApiError),
        (status = 503, body = ApiError)))]
pub(super) async fn act(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path((process, key)): Path<(String, String)>,
    body: Result<Json<ActionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Accepted>), Fail> {
    let body = json_body(body)?;
    let acts = api.actions.clone().ok_or_else(unavailable)?;
    check_action(&api.registry.get(), &process, &body.action, &body.reason)?;
    let id = format!("{process}/{key}");
    let partition = shard_of(&id, acts.partitions);
    if api.health.readiness().shards.contains(&partition) && api.index.get(&id).is_none() {
        // This member owns the instance's shard and holds no such instance.
        return Err(Fail(StatusCode::NOT_FOUND, format!("no instance {id}")));
    }
    let request = match body.request {
        Some(r) if r.trim().is_empty() => return Err(bad("`request` is empty")),
        Some(r) => r,
        None => random_id(),
    };
    let r = OperatorRequest {
        v: OPERATOR_FORMAT,
        process,
        key,
        action: body.action,
        by: caller.name,
        reason: body.reason,
        request: request.clone(),
    };
    acts.publisher
        .publish(&record(&acts, &r))
        .await
        .map_err(|e| Fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            request,
            instance: id,
            partition,
        }),
    ))
}

/// What became of one request, as far as this member knows.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestView {
    pub request: String,
    /// `pending` (not applied by a shard of this member yet), `applied`,
    /// `repeated` (applied before) or `refused`.
    pub state: String,
    pub reason: Option<String>,
}

/// The outcome of an operator request.
#[utoipa::path(get, path = "/api/v1/requests/{request}",
    params(("request" = String, Path)),
    responses((status = 200, body = RequestView), (status = 401, body = ApiError),
        (status = 503, body = ApiError)))]
pub(super) async fn request(
    State(api): State<Api>,
    Path(request): Path<String>,
) -> Result<Json<RequestView>, Fail> {
    let acts = api.actions.clone().ok_or_else(unavailable)?;
    let (state, reason) = match acts.outcomes.get(&request) {
        None => ("pending", None),
        Some(Outcome::Applied) => ("applied", None),
        Some(Outcome::Repeated) => ("repeated", None),
        Some(Outcome::Refused(why)) => ("refused", Some(why)),
    };
    Ok(Json(RequestView {
        request,
        state: state.to_string(),
        reason,
    }))
}

/// Which instances a job acts on; every field that is set must match.
/// Times are RFC 3339 or epoch milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// A step a token is at or an incident is parked on; with retry or
    /// skip, only incidents at this step are resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_before: Option<String>,
    /// Only incidents raised after this time (retry and skip).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident_after: Option<String>,
    /// Only incidents raised before this time (retry and skip).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident_before: Option<String>,
}

impl JobFilter {
    fn is_empty(&self) -> bool {
        *self == JobFilter::default()
    }

    fn index_filter(&self) -> Result<Filter, Fail> {
        InstanceQuery {
            process: self.process.clone(),
            version: self.version,
            status: self.status.clone(),
            step: self.step.clone(),
            key_prefix: self.key_prefix.clone(),
            incident: self.incident,
            started_after: self.started_after.clone(),
            started_before: self.started_before.clone(),
            ended_after: self.ended_after.clone(),
            ended_before: self.ended_before.clone(),
            limit: None,
            after: None,
            local: None,
        }
        .filter()
    }
}

/// One action for every instance a filter matches.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub filter: JobFilter,
    pub action: ActionBody,
    /// Why (required; kept in the audit trail of every instance).
    pub reason: String,
}

/// A bulk job and its progress (on every member: each acts on the
/// instances it holds).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub action: ActionBody,
    pub filter: JobFilter,
    pub reason: String,
    pub by: String,
    /// `running`, `completed` (every request has an outcome) or
    /// `unconfirmed` (some outcomes did not arrive within a minute: their
    /// shards are owned by another member, or it is down).
    pub state: String,
    /// Requests the filter matched (one per instance; with retry or skip,
    /// one per matching incident).
    pub matched: u64,
    /// Requests on the operator topic.
    pub published: u64,
    /// Requests their instances applied (now or before).
    pub applied: u64,
    /// Requests refused, each with its instance and reason.
    pub errors: Vec<String>,
    pub created_at: String,
}

/// The jobs this member started, newest last.
#[derive(Default)]
pub struct Jobs(Mutex<BTreeMap<String, JobView>>);

impl Jobs {
    fn get(&self, id: &str) -> Option<JobView> {
        self.0.lock().ok()?.get(id).cloned()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut JobView)) {
        if let Ok(mut jobs) = self.0.lock()
            && let Some(j) = jobs.get_mut(id)
        {
            f(j);
        }
    }

    /// Adds `job` unless one with its id exists; the job under that id.
    fn insert(&self, job: JobView) -> (JobView, bool) {
        let Ok(mut jobs) = self.0.lock() else {
            return (job, false);
        };
        match jobs.get(&job.id) {
            Some(existing) => (existing.clone(), false),
            None => {
                jobs.insert(job.id.clone(), job.clone());
                (job, true)
            }
        }
    }

    fn all(&self) -> Vec<JobView> {
        self.0
            .lock()
            .map(|j| j.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// The list of jobs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// The requests of a job: for retry and skip without an incident id, one
/// per matching open incident; else one per matching instance.
fn targets(
    api: &Api,
    filter: &JobFilter,
    action: &ActionBody,
) -> Result<Vec<(String, ActionBody)>, Fail> {
    let index_filter = filter.index_filter()?;
    let after = time("incident_after", &filter.incident_after)?;
    let before = time("incident_before", &filter.incident_before)?;
    let registry = api.registry.get();
    let steps = |p: &str, v: u32| -> Option<Arc<[String]>> {
        let def = registry.get(p, v)?;
        Some(def.steps.iter().map(|s| s.id.clone()).collect())
    };
    let mut out = Vec::new();
    for id in api.index.ids(&index_filter, &steps) {
        let per_incident = match action {
            ActionBody::Retry { incident: None } => Some(true),
            ActionBody::Skip { incident: None } => Some(false),
            _ => None,
        };
        let Some(retry) = per_incident else {
            out.push((id.to_string(), action.clone()));
            continue;
        };
        let Some(entry) = api.index.get(&id) else {
            continue;
        };
        let process = id.split_once('/').map_or(&*id, |(p, _)| p);
        let names = steps(process, entry.version);
        for inc in entry.incidents.iter() {
            let step = inc
                .step
                .and_then(|s| names.as_ref().and_then(|n| n.get(s).cloned()));
            let fits = filter
                .step
                .as_ref()
                .is_none_or(|s| step.as_ref() == Some(s))
                && after.is_none_or(|t| inc.at > t)
                && before.is_none_or(|t| inc.at < t);
            if fits {
                let incident = Some(inc.id);
                let a = if retry {
                    ActionBody::Retry { incident }
                } else {
                    ActionBody::Skip { incident }
                };
                out.push((id.to_string(), a));
            }
        }
    }
    Ok(out)
}

/// Starts a bulk job; the same job sent again (same filter, action, reason
/// and token) is the same job, and is not run twice.
#[utoipa::path(post, path = "/api/v1/jobs", request_body = JobRequest, params(LocalQuery),
    responses((status = 202, body = JobView, description = "started"),
        (status = 200, body = JobView, description = "the same job was started before"),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub(super) async fn start_job(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Query(l): Query<LocalQuery>,
    body: Result<Json<JobRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<JobView>), Fail> {
    let body = json_body(body)?;
    let forward = serde_json::to_value(&body).ok();
    let acts = api.actions.clone().ok_or_else(unavailable)?;
    if body.filter.is_empty() {
        return Err(bad(
            "an empty filter would match every instance; name at least one field",
        ));
    }
    match &body.filter.process {
        Some(p) => {
            check_action(&api.registry.get(), p, &body.action, &body.reason)?;
        }
        None if matches!(body.action, ActionBody::Migrate { .. }) => {
            return Err(bad("a migration job needs `filter.process`"));
        }
        None => {
            body.action.to_action(&body.reason).map_err(bad)?;
            if body.reason.trim().is_empty() {
                return Err(bad(
                    "`reason` is required: say why (it is kept in the audit trail)",
                ));
            }
        }
    }
    let targets = targets(&api, &body.filter, &body.action)?;
    let (job, created) = launch(
        &acts,
        caller.name.clone(),
        body.filter,
        body.action,
        body.reason,
        targets,
    );
    // Every other member runs the same job (same id) on the instances it holds.
    let mut parts = vec![job];
    for (member, answer) in api
        .fan_out_with("POST", "/jobs", None, l.local, &caller, forward)
        .await
    {
        match answer.and_then(|v| serde_json::from_value::<JobView>(v).map_err(|e| e.to_string())) {
            Ok(j) => parts.push(j),
            Err(e) => parts[0]
                .errors
                .push(format!("member {member}: the job did not start: {e}")),
        }
    }
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(combine(parts))))
}

/// One job's parts on several members as one.
fn combine(parts: Vec<JobView>) -> JobView {
    let mut parts = parts.into_iter();
    let Some(mut all) = parts.next() else {
        return JobView {
            id: String::new(),
            action: ActionBody::Retry { incident: None },
            filter: JobFilter::default(),
            reason: String::new(),
            by: String::new(),
            state: "completed".into(),
            matched: 0,
            published: 0,
            applied: 0,
            errors: Vec::new(),
            created_at: String::new(),
        };
    };
    for p in parts {
        all.matched += p.matched;
        all.published += p.published;
        all.applied += p.applied;
        all.errors.extend(p.errors);
        let rank = |s: &str| match s {
            "running" => 2,
            "unconfirmed" => 1,
            _ => 0,
        };
        if rank(&p.state) > rank(&all.state) {
            all.state = p.state;
        }
        if p.created_at < all.created_at {
            all.created_at = p.created_at;
        }
    }
    all
}

/// Starts a job over `targets` unless the same job (same filter, action,
/// reason and caller) was started before; the job, and whether it is new.
fn launch(
    acts: &Actions,
    by: String,
    filter: JobFilter,
    action: ActionBody,
    reason: String,
    targets: Vec<(String, ActionBody)>,
) -> (JobView, bool) {
    let identity = serde_json::json!({
        "filter": filter, "action": action, "reason": reason, "by": by,
    });
    let id = format!("j-{}", content_hash(&identity.to_string()));
    let (job, created) = acts.jobs.insert(JobView {
        id,
        action,
        filter,
        reason,
        by,
        state: "running".into(),
        matched: targets.len() as u64,
        published: 0,
        applied: 0,
        errors: Vec::new(),
        created_at: engine::format_rfc3339(now_ms()),
    });
    if created {
        tokio::spawn(run_job(acts.clone(), job.clone(), targets));
    }
    (job, created)
}

/// A migration of the active instances of one version to another.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationRequest {
    pub process: String,
    pub from: u32,
    pub to: u32,
    /// Step ids of `from` → step ids of `to`; unmapped steps keep their id.
    #[serde(default)]
    pub steps: BTreeMap<String, String>,
    /// List which instances can move and why others cannot; move none.
    #[serde(default)]
    pub dry_run: bool,
    /// Why (required unless `dry_run`).
    #[serde(default)]
    pub reason: String,
}

/// An instance that cannot move, and every reason.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Blocked {
    pub instance: String,
    pub reasons: Vec<String>,
}

/// What a migration found, and the job that moves the movable instances
/// (none on a dry run, or when nothing can move).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MigrationView {
    pub movable: Vec<String>,
    pub blocked: Vec<Blocked>,
    pub job: Option<JobView>,
}

/// Checks every active instance of `from` against `to`; unless a dry run,
/// migrates the movable ones as operator actions (a job).
#[utoipa::path(post, path = "/api/v1/migrations", request_body = MigrationRequest, params(LocalQuery),
    responses((status = 200, body = MigrationView, description = "a dry run, or the same migration started before"),
        (status = 202, body = MigrationView, description = "the migration job started"),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub(super) async fn migrate(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Query(l): Query<LocalQuery>,
    body: Result<Json<MigrationRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<MigrationView>), Fail> {
    let body = json_body(body)?;
    let forward = serde_json::to_value(&body).ok();
    let (status, mut view) = migrate_here(&api, &caller, body)?;
    // Every other member checks (and moves) the instances it holds.
    let mut jobs: Vec<JobView> = view.job.take().into_iter().collect();
    for (member, answer) in api
        .fan_out_with("POST", "/migrations", None, l.local, &caller, forward)
        .await
    {
        match answer
            .and_then(|v| serde_json::from_value::<MigrationView>(v).map_err(|e| e.to_string()))
        {
            Ok(other) => {
                view.movable.extend(other.movable);
                view.blocked.extend(other.blocked);
                jobs.extend(other.job);
            }
            Err(e) => view.blocked.push(Blocked {
                instance: format!("(the instances of member {member})"),
                reasons: vec![format!("not checked: {e}")],
            }),
        }
    }
    view.movable.sort();
    view.blocked.sort_by(|a, b| a.instance.cmp(&b.instance));
    view.job = (!jobs.is_empty()).then(|| combine(jobs));
    Ok((status, Json(view)))
}

/// [`migrate`] on this member's instances.
fn migrate_here(
    api: &Api,
    caller: &Caller,
    body: MigrationRequest,
) -> Result<(StatusCode, MigrationView), Fail> {
    let acts = api.actions.clone().ok_or_else(unavailable)?;
    let registry = api.registry.get();
    let version = |v: u32| {
        registry.get(&body.process, v).cloned().ok_or_else(|| {
            Fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("version {v} of process `{}` is not deployed", body.process),
            )
        })
    };
    if registry.latest(&body.process).is_none() {
        return Err(Fail(
            StatusCode::NOT_FOUND,
            format!("process `{}` is not deployed", body.process),
        ));
    }
    let (from, to) = (version(body.from)?, version(body.to)?);
    if from.version == to.version {
        return Err(bad("`from` and `to` are the same version"));
    }
    if !body.dry_run && body.reason.trim().is_empty() {
        return Err(bad(
            "`reason` is required: say why (it is kept in the audit trail)",
        ));
    }
    let filter = JobFilter {
        process: Some(body.process.clone()),
        version: Some(body.from),
        status: Some("active".into()),
        ..JobFilter::default()
    };
    let none = |_: &str, _: u32| None;
    let (mut movable, mut blocked) = (Vec::new(), Vec::new());
    for id in api.index.ids(&filter.index_filter()?, &none) {
        let Some(entry) = api.index.get(&id) else {
            continue;
        };
        let checked = crate::wire::decode_changelog_at(&entry.record)
            .map_err(|e| vec![format!("its state does not decode: {e}")])
            .and_then(|(_, _, inst)| {
                engine::migrate(&from, &to, &inst, &body.steps)
                    .map_err(|m| m.iter().map(|m| m.to_string()).collect())
            });
        match checked {
            Ok(_) => movable.push(id.to_string()),
            Err(reasons) => blocked.push(Blocked {
                instance: id.to_string(),
                reasons,
            }),
        }
    }
    if body.dry_run || movable.is_empty() {
        return Ok((
            StatusCode::OK,
            MigrationView {
                movable,
                blocked,
                job: None,
            },
        ));
    }
    let action = ActionBody::Migrate {
        to: body.to,
        steps: body.steps,
    };
    let targets = movable
        .iter()
        .map(|id| (id.clone(), action.clone()))
        .collect();
    let (job, created) = launch(
        &acts,
        caller.name.clone(),
        filter,
        action,
        body.reason,
        targets,
    );
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        MigrationView {
            movable,
            blocked,
            job: Some(job),
        },
    ))
}

/// Publishes a job's requests, then follows their outcomes.
async fn run_job(acts: Actions, job: JobView, targets: Vec<(String, ActionBody)>) {
    let mut requests = Vec::with_capacity(targets.len());
    for (n, (instance, action)) in targets.into_iter().enumerate() {
        let (process, key) = instance
            .split_once('/')
            .map_or((instance.as_str(), ""), |(p, k)| (p, k));
        let request = format!("{}/{n}/{instance}", job.id);
        requests.push(OperatorRequest {
            v: OPERATOR_FORMAT,
            process: process.to_string(),
            key: key.to_string(),
            action,
            by: job.by.clone(),
            reason: job.reason.clone(),
            request,
        });
    }
    let mut sent = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(IN_FLIGHT) {
        let mut set = tokio::task::JoinSet::new();
        for r in chunk {
            let (publisher, rec, r) = (acts.publisher.clone(), record(&acts, r), r.clone());
            set.spawn(async move { (publisher.publish(&rec).await, r) });
        }
        while let Some(done) = set.join_next().await {
            match done {
                Ok((Ok(_), r)) => sent.push(r),
                Ok((Err(e), r)) => acts.jobs.update(&job.id, |j| {
                    j.errors
                        .push(format!("{}: not published: {e}", r.instance()))
                }),
                Err(e) => acts
                    .jobs
                    .update(&job.id, |j| j.errors.push(format!("not published: {e}"))),
            }
        }
        let published = sent.len() as u64;
        acts.jobs.update(&job.id, |j| j.published = published);
    }
    // Outcomes arrive as the owning shards commit.
    let mut waiting: Vec<OperatorRequest> = sent;
    let mut quiet_since = tokio::time::Instant::now();
    while !waiting.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = waiting.len();
        let mut applied = 0;
        let mut refused = Vec::new();
        waiting.retain(|r| match acts.outcomes.get(&r.request) {
            None => true,
            Some(Outcome::Applied | Outcome::Repeated) => {
                applied += 1;
                false
            }
            Some(Outcome::Refused(why)) => {
                refused.push(format!("{}: {why}", r.instance()));
                false
            }
        });
        acts.jobs.update(&job.id, |j| {
            j.applied += applied;
            j.errors.extend(refused);
        });
        if waiting.len() < before {
            quiet_since = tokio::time::Instant::now();
        } else if quiet_since.elapsed() > CONFIRM_WITHIN {
            let n = waiting.len();
            acts.jobs.update(&job.id, |j| {
                j.state = "unconfirmed".into();
                j.errors.push(format!(
                    "{n} request{} published but not confirmed by this member within {} s (their shards may be owned by another member)",
                    if n == 1 { "" } else { "s" },
                    CONFIRM_WITHIN.as_secs()
                ));
            });
            return;
        }
    }
    acts.jobs.update(&job.id, |j| j.state = "completed".into());
}

/// The jobs of every member, each combined over the members.
#[utoipa::path(get, path = "/api/v1/jobs", params(LocalQuery),
    responses((status = 200, body = JobList), (status = 401, body = ApiError),
        (status = 503, body = ApiError)))]
pub(super) async fn jobs(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Query(l): Query<LocalQuery>,
) -> Result<Json<JobList>, Fail> {
    let acts = api.actions.clone().ok_or_else(unavailable)?;
    let mut by_id: BTreeMap<String, Vec<JobView>> = BTreeMap::new();
    for j in acts.jobs.all() {
        by_id.entry(j.id.clone()).or_default().push(j);
    }
    for (_, answer) in api.fan_out("/jobs", None, l.local, &caller).await {
        if let Ok(list) =
            answer.and_then(|v| serde_json::from_value::<JobList>(v).map_err(|e| e.to_string()))
        {
            for j in list.jobs {
                by_id.entry(j.id.clone()).or_default().push(j);
            }
        }
    }
    Ok(Json(JobList {
        jobs: by_id.into_values().map(combine).collect(),
    }))
}

/// One job and its progress, over every member.
#[utoipa::path(get, path = "/api/v1/jobs/{id}",
    params(("id" = String, Path), LocalQuery),
    responses((status = 200, body = JobView), (status = 401, body = ApiError),
        (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub(super) async fn job(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(l): Query<LocalQuery>,
) -> Result<Json<JobView>, Fail> {
    let acts = api.actions.clone().ok_or_else(unavailable)?;
    let mut parts: Vec<JobView> = acts.jobs.get(&id).into_iter().collect();
    let path = format!("/jobs/{}", super::members::segment(&id));
    for (_, answer) in api.fan_out(&path, None, l.local, &caller).await {
        if let Ok(j) =
            answer.and_then(|v| serde_json::from_value::<JobView>(v).map_err(|e| e.to_string()))
        {
            parts.push(j);
        }
    }
    if parts.is_empty() {
        return Err(Fail(StatusCode::NOT_FOUND, format!("no job {id}")));
    }
    Ok(Json(combine(parts)))
}
