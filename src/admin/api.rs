//! The read side of the admin API under `/api/v1`: instances (filtered and
//! paged from the live [`Index`]), one instance in full (decoded from its
//! committed changelog record), open incidents, definitions and this
//! member's shards, documented by the OpenAPI 3.1 document at
//! `/api/v1/openapi.json`. Every call carries a bearer token (see [`Tokens`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, Query, RawQuery, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::config::Role;
use crate::engine::{self, Millis, Registry, Status};
use crate::index::{Entry, Filter, Index};
use crate::telemetry::Health;

use super::act;

/// The most items one page holds.
pub const MAX_PAGE: usize = 1_000;
const DEFAULT_PAGE: usize = 100;

/// The tokens the API accepts, each with its holder's name and role.
#[derive(Clone, Default)]
pub struct Tokens(Vec<(String, Role, Vec<u8>)>);

impl Tokens {
    /// `(name, role, secret)` triples.
    pub fn new(tokens: impl IntoIterator<Item = (String, Role, String)>) -> Tokens {
        Tokens(
            tokens
                .into_iter()
                .map(|(n, r, s)| (n, r, s.into_bytes()))
                .collect(),
        )
    }

    /// The holder and role of `presented`. Every token is compared in full,
    /// in time that depends on the lengths only, so timing tells nothing of
    /// how much of a secret was right.
    pub fn check(&self, presented: &str) -> Option<(&str, Role)> {
        let mut found = None;
        for (name, role, secret) in &self.0 {
            if same(secret, presented.as_bytes()) && found.is_none() {
                found = Some((name.as_str(), *role));
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Constant-time equality over the longer of the two lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

/// What the API reads.
#[derive(Clone)]
pub struct Api {
    pub index: Arc<Index>,
    /// The deployed definitions, as the runtime last published them.
    pub registry: Arc<crate::index::Current<Registry>>,
    /// Operator actions and deploys (`None`: this API only reads).
    pub actions: Option<super::act::Actions>,
    /// The other members, to forward and fan out to (`None`: this member alone).
    pub members: Option<Arc<super::members::Members>>,
    pub health: Arc<Health>,
    pub tokens: Arc<Tokens>,
    /// This member's id and advertised admin address.
    pub member: String,
    pub admin: String,
}

impl Api {
    /// The API of a running `runtime`, accepting `tokens`, advertised at `admin`.
    pub fn for_runtime(
        runtime: &crate::runtime::Runtime,
        tokens: Tokens,
        admin: String,
    ) -> Result<Api, crate::kafka::KafkaFailure> {
        let cfg = runtime.config();
        let members = Arc::new(super::members::Members::new(
            cfg.instance_id(),
            admin.clone(),
        ));
        super::members::start(cfg, runtime.health(), members.clone())?;
        Ok(Api {
            members: Some(members),
            index: runtime.index(),
            registry: runtime.definitions(),
            health: runtime.health(),
            tokens: Arc::new(tokens),
            member: cfg.instance_id(),
            admin,
            actions: Some(act::Actions {
                publisher: Arc::new(crate::kafka::Publisher::new(cfg)?),
                operator_topic: cfg.topics.operator(),
                definitions_topic: cfg.topics.definitions(),
                config: Arc::new(cfg.clone()),
                partitions: cfg.topics.partitions,
                outcomes: runtime.outcomes(),
                jobs: Arc::default(),
            }),
        })
    }
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    pub error: String,
}

/// A failed call: its status and what went wrong.
pub(super) struct Fail(pub StatusCode, pub String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(ApiError { error: self.1 })).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"baton\""),
            );
        }
        r
    }
}

pub(super) fn bad(why: impl Into<String>) -> Fail {
    Fail(StatusCode::BAD_REQUEST, why.into())
}

/// The `/api/v1` routes, behind the token check.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/instances", get(instances))
        .route("/api/v1/instances/{process}/{key}", get(instance))
        .route("/api/v1/incidents", get(incidents))
        .route(
            "/api/v1/definitions",
            get(definitions).post(super::deploy::deploy),
        )
        .route("/api/v1/definitions/{process}/{version}", get(definition))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/instances/{process}/{key}/actions", post(act::act))
        .route("/api/v1/requests/{request}", get(act::request))
        .route("/api/v1/jobs", get(act::jobs).post(act::start_job))
        .route("/api/v1/jobs/{id}", get(act::job))
        .route("/api/v1/migrations", post(act::migrate))
        .route("/api/v1/audit/replay", get(super::audit::replay_check))
        .route("/api/v1/audit/{process}/{key}", get(super::audit::trail))
        .route("/api/v1/whoami", get(super::insight::whoami))
        .route("/api/v1/overview", get(super::insight::overview))
        .route("/api/v1/instances/count", get(super::insight::count))
        .route(
            "/api/v1/incidents/groups",
            get(super::insight::incident_groups),
        )
        .route(
            "/api/v1/definitions/{process}/{version}/diagram",
            get(super::insight::diagram),
        )
        .route(
            "/api/v1/definitions/{process}/{version}/heatmap",
            get(super::insight::heatmap),
        )
        .fallback(|| async { Fail(StatusCode::NOT_FOUND, "no such API path".into()) })
        .method_not_allowed_fallback(|| async {
            Fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not served on this path".into(),
            )
        })
        .layer(middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api)
}

/// Reads need a viewer's or operator's token; anything else an operator's.
async fn authorize(State(api): State<Api>, req: Request, next: Next) -> Response {
    if api.tokens.is_empty() {
        return Fail(
            StatusCode::UNAUTHORIZED,
            "no admin tokens are configured: add [[admin.tokens]] to the configuration".into(),
        )
        .into_response();
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        return Fail(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>`".into(),
        )
        .into_response();
    };
    let Some((name, role)) = api.tokens.check(presented.trim()) else {
        return Fail(StatusCode::UNAUTHORIZED, "unknown token".into()).into_response();
    };
    let caller = Caller {
        name: name.to_string(),
        role,
        token: presented.trim().to_string(),
    };
    let needs = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Role::Viewer
    } else {
        Role::Operator
    };
    if role < needs {
        return Fail(
            StatusCode::FORBIDDEN,
            format!(
                "{} {} needs an operator token",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    let mut req = req;
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The token a call came with: its holder's name (who asked, in the audit
/// trail) and the token itself (to forward the call to another member).
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub name: String,
    pub role: Role,
    pub token: String,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "baton admin API", version = "1"),
    paths(instances, instance, incidents, definitions, definition, cluster,
        act::act, act::request, act::start_job, act::jobs, act::job, act::migrate, super::deploy::deploy,
        super::audit::trail, super::audit::replay_check,
        super::insight::whoami, super::insight::overview, super::insight::count,
        super::insight::incident_groups, super::insight::diagram, super::insight::heatmap),
    components(schemas(ApiError)),
    modifiers(&Bearer)
)]
pub struct Doc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

async fn openapi() -> Response {
    Json(Doc::openapi()).into_response()
}

/// Filters of `/instances`; times are RFC 3339 or epoch milliseconds.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceQuery {
    pub process: Option<String>,
    pub version: Option<u32>,
    /// pending, active, completed, failed or cancelled.
    pub status: Option<String>,
    /// A step id one of the instance's tokens is at (or an incident is parked on).
    pub step: Option<String>,
    pub key_prefix: Option<String>,
    /// true: only instances with an open incident; false: only without.
    pub incident: Option<bool>,
    pub started_after: Option<String>,
    pub started_before: Option<String>,
    pub ended_after: Option<String>,
    pub ended_before: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Only this member's instances (no fan-out to the others).
    pub local: Option<bool>,
}

pub(super) fn time(field: &str, v: &Option<String>) -> Result<Option<Millis>, Fail> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(ms) = v.parse::<Millis>() {
        return Ok(Some(ms));
    }
    engine::parse_rfc3339(v)
        .map(Some)
        .ok_or_else(|| bad(format!("{field}: `{v}` is neither RFC 3339 nor epoch ms")))
}

fn status(v: &str) -> Result<Status, Fail> {
    Status::parse(v).ok_or_else(|| {
        bad(format!(
            "status: `{v}` is not one of pending, active, completed, failed, cancelled"
        ))
    })
}

pub(super) fn limit(v: Option<usize>) -> Result<usize, Fail> {
    match v {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(bad(format!("limit: {n} is not between 1 and {MAX_PAGE}"))),
    }
}

impl InstanceQuery {
    pub(super) fn filter(&self) -> Result<Filter, Fail> {
        Ok(Filter {
            process: self.process.clone(),
            version: self.version,
            status: self.status.as_deref().map(status).transpose()?,
            step: self.step.clone(),
            key_prefix: self.key_prefix.clone(),
            incident: self.incident,
            started_after: time("started_after", &self.started_after)?,
            started_before: time("started_before", &self.started_before)?,
            ended_after: time("ended_after", &self.ended_after)?,
            ended_before: time("ended_before", &self.ended_before)?,
        })
    }
}

/// One instance as listed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    /// `process/key`.
    pub id: String,
    pub process: String,
    pub key: String,
    pub version: u32,
    pub status: String,
    /// The steps its tokens are at.
    pub steps: Vec<String>,
    /// Open incidents.
    pub incidents: usize,
    pub started_at: String,
    pub updated_at: String,
    pub ended_at: Option<String>,
    pub shard: i32,
}

/// A page of instances; `next` is the cursor of the following page.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstancePage {
    pub instances: Vec<Summary>,
    pub next: Option<String>,
    /// Members that did not answer (their instances are missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

impl Api {
    pub(super) fn step_names(&self, process: &str, version: u32) -> Option<Arc<[String]>> {
        let registry = self.registry.get();
        let def = registry.get(process, version)?;
        Some(def.steps.iter().map(|s| s.id.clone()).collect())
    }

    pub(super) fn step_name(&self, process: &str, version: u32, step: usize) -> String {
        self.registry
            .get()
            .get(process, version)
            .and_then(|d| d.steps.get(step))
            .map_or_else(|| format!("#{step}"), |s| s.id.clone())
    }

    /// Up to `limit` matching instances after `after`, and the cursor of
    /// the next page if there is one.
    fn page(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(Arc<str>, Entry)>, Option<String>) {
        let steps = |p: &str, v: u32| self.step_names(p, v);
        let mut page = self.index.page(filter, after, limit + 1, &steps);
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more
            .then(|| page.last().map(|(id, _)| id.to_string()))
            .flatten();
        (page, next)
    }

    fn summary(&self, id: &str, e: &Entry) -> Summary {
        let (process, key) = id.split_once('/').unwrap_or((id, ""));
        Summary {
            id: id.to_string(),
            process: process.to_string(),
            key: key.to_string(),
            version: e.version,
            status: e.status.as_str().to_string(),
            steps: e
                .steps
                .iter()
                .map(|s| self.step_name(process, e.version, *s))
                .collect(),
            incidents: e.incidents.len(),
            started_at: engine::format_rfc3339(e.started_at),
            updated_at: engine::format_rfc3339(e.updated_at),
            ended_at: e.ended_at().map(engine::format_rfc3339),
            shard: e.shard,
        }
    }
}

/// Lists instances in id order, filtered, one page at a time.
#[utoipa::path(get, path = "/api/v1/instances", params(InstanceQuery),
    responses((status = 200, body = InstancePage), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn instances(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    Query(q): Query<InstanceQuery>,
) -> Result<Json<InstancePage>, Fail> {
    let limit = limit(q.limit)?;
    let (page, next) = api.page(&q.filter()?, q.after.as_deref(), limit);
    let mine = InstancePage {
        instances: page.iter().map(|(id, e)| api.summary(id, e)).collect(),
        next,
        unreachable: Vec::new(),
    };
    let answers = api.fan_out("/instances", raw, q.local, &caller).await;
    if answers.is_empty() {
        return Ok(Json(mine));
    }
    let mut pages = vec![(mine.instances, mine.next)];
    let mut unreachable = Vec::new();
    for (member, answer) in answers {
        match answer
            .and_then(|v| serde_json::from_value::<InstancePage>(v).map_err(|e| e.to_string()))
        {
            Ok(p) => pages.push((p.instances, p.next)),
            Err(e) => {
                tracing::warn!(member, error = %e, "a member did not answer a listing");
                unreachable.push(member);
            }
        }
    }
    let (instances, next) = merge(pages, limit, |s: &Summary| s.id.clone());
    Ok(Json(InstancePage {
        instances,
        next,
        unreachable,
    }))
}

/// Merges pages of several members, each in id order: the `limit` smallest
/// distinct ids (an id listed by two members, during a hand-over, once),
/// and the cursor of the next page if any member has more.
fn merge<T>(
    pages: Vec<(Vec<T>, Option<String>)>,
    limit: usize,
    id: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let mut more = pages.iter().any(|(_, next)| next.is_some());
    // Each id's items from the first member that listed it.
    let mut by_id: BTreeMap<String, (usize, Vec<T>)> = BTreeMap::new();
    for (n, (items, _)) in pages.into_iter().enumerate() {
        for t in items {
            let entry = by_id.entry(id(&t)).or_insert((n, Vec::new()));
            if entry.0 == n {
                entry.1.push(t);
            }
        }
    }
    if by_id.len() > limit {
        more = true;
    }
    let kept: Vec<(String, (usize, Vec<T>))> = by_id.into_iter().take(limit).collect();
    let next = more
        .then(|| kept.last().map(|(id, _)| id.clone()))
        .flatten();
    (
        kept.into_iter().flat_map(|(_, (_, items))| items).collect(),
        next,
    )
}

impl Api {
    /// The same GET on every other member (with `local=true`), unless this
    /// call is itself `local` or there are no others.
    pub(super) async fn fan_out(
        &self,
        path: &str,
        raw: Option<String>,
        local: Option<bool>,
        caller: &Caller,
    ) -> Vec<(String, Result<Value, String>)> {
        self.fan_out_with("GET", path, raw, local, caller, None)
            .await
    }

    /// [`Api::fan_out`] with any method and body.
    pub(super) async fn fan_out_with(
        &self,
        method: &'static str,
        path: &str,
        raw: Option<String>,
        local: Option<bool>,
        caller: &Caller,
        body: Option<Value>,
    ) -> Vec<(String, Result<Value, String>)> {
        let Some(members) = &self.members else {
            return Vec::new();
        };
        if local == Some(true) {
            return Vec::new();
        }
        let peers = members.peers();
        if peers.is_empty() {
            return Vec::new();
        }
        let query = match raw.filter(|q| !q.is_empty()) {
            Some(q) => format!("{q}&local=true"),
            None => "local=true".to_string(),
        };
        super::members::send_all(
            &peers,
            method,
            &format!("{path}?{query}"),
            &caller.token,
            body,
        )
        .await
    }
}

/// An open incident.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IncidentView {
    /// The instance, `process/key`.
    pub instance: String,
    pub id: u32,
    pub step: Option<String>,
    pub reason: String,
    pub at: String,
    pub age_seconds: f64,
}

/// A token of an instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub step: String,
    /// awaiting, backoff, waiting, calling, joining or parked.
    pub phase: String,
    pub attempt: u32,
}

/// A pending timer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimerView {
    pub id: String,
    pub due: String,
    pub kind: String,
}

/// An event buffered until the instance can take it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BufferedView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub expires: String,
}

/// The definition version an instance runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct DefinitionRef {
    pub version: u32,
    pub hash: String,
}

/// A called instance's caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParentView {
    pub process: String,
    pub key: String,
    pub version: u32,
}

/// One instance in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    pub definition: DefinitionRef,
    #[schema(value_type = Object)]
    pub vars: Value,
    pub tokens: Vec<TokenView>,
    /// Steps completed, in order.
    pub completed: Vec<String>,
    pub timers: Vec<TimerView>,
    pub buffered: Vec<BufferedView>,
    pub open_incidents: Vec<IncidentView>,
    pub transitions: u64,
    pub parent: Option<ParentView>,
    /// Its audit trail, oldest first (with `?history=true`; it is read
    /// from the audit topic).
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<Value>,
}

/// Options of one instance's view.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct DetailQuery {
    /// Add the audit trail (one read of the instance's audit partition).
    pub history: bool,
    /// Only this member (no forwarding to the shard's owner).
    pub local: Option<bool>,
}

fn incident_view(api: &Api, id: &str, version: u32, i: &engine::Incident) -> IncidentView {
    let process = id.split_once('/').map_or(id, |(p, _)| p);
    IncidentView {
        instance: id.to_string(),
        id: i.id,
        step: i.step.map(|s| api.step_name(process, version, s)),
        reason: i.reason.clone(),
        at: engine::format_rfc3339(i.at),
        age_seconds: crate::runtime::now_ms().saturating_sub(i.at) as f64 / 1000.0,
    }
}

fn phase(p: &engine::Phase) -> &'static str {
    use engine::Phase::*;
    match p {
        Awaiting => "awaiting",
        Backoff => "backoff",
        Waiting => "waiting",
        Calling(_) => "calling",
        Joining(_) => "joining",
        Parked(_) => "parked",
    }
}

fn timer_kind(k: &engine::TimerKind) -> &'static str {
    use engine::TimerKind::*;
    match k {
        Timeout(_) => "timeout",
        Backoff(_) => "backoff",
        Wait(_) => "wait",
        Expect(_) => "expect",
        Buffer => "buffer",
    }
}

/// One instance in full, from its committed state.
#[utoipa::path(get, path = "/api/v1/instances/{process}/{key}",
    params(("process" = String, Path), ("key" = String, Path), DetailQuery),
    responses((status = 200, body = Detail), (status = 404, body = ApiError), (status = 401, body = ApiError)))]
async fn instance(
    State(api): State<Api>,
    Path((process, key)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<DetailQuery>,
) -> Result<Response, Fail> {
    let id = format!("{process}/{key}");
    let Some(e) = api.index.get(&id) else {
        // Another member's shard: its owner answers (by its advert; an
        // advert lags a hand-over by a second or so, so the others are
        // asked when the owner has no such instance).
        if let (Some(m), None | Some(false)) = (&api.members, q.local) {
            let partitions = api.actions.as_ref().map_or(1, |a| a.partitions);
            let mut peers = m.peers();
            if let Some(owner) = m.owner_of(crate::runtime::shard_of(&id, partitions)) {
                peers.retain(|p| p.id != owner.id);
                peers.insert(0, owner);
            }
            let path = format!(
                "/instances/{}/{}?local=true&history={}",
                super::members::segment(&process),
                super::members::segment(&key),
                q.history
            );
            for peer in peers {
                match super::members::ask(&peer, "GET", path.clone(), caller.token.clone(), None)
                    .await
                {
                    Ok((StatusCode::NOT_FOUND, _)) => {}
                    Ok((status, body)) => return Ok((status, Json(body)).into_response()),
                    Err(e) => {
                        tracing::warn!(member = %peer.id, error = %e, "a member did not answer")
                    }
                }
            }
        }
        return Err(Fail(StatusCode::NOT_FOUND, format!("no instance `{id}`")));
    };
    let (_, _, inst) = crate::wire::decode_changelog_at(&e.record).map_err(|err| {
        Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the committed state of `{id}` does not decode: {err}"),
        )
    })?;
    let name = |s: usize| api.step_name(&process, inst.version, s);
    let detail = Detail {
        summary: api.summary(&id, &e),
        definition: DefinitionRef {
            version: inst.version,
            hash: inst.definition.clone(),
        },
        vars: Value::Object(inst.vars.clone().into_iter().collect()),
        tokens: inst
            .tokens
            .iter()
            .map(|t| TokenView {
                step: name(t.step),
                phase: phase(&t.phase).to_string(),
                attempt: t.attempt,
            })
            .collect(),
        completed: inst.completed.iter().map(|c| name(c.step)).collect(),
        timers: inst
            .timers
            .iter()
            .map(|t| TimerView {
                id: t.id.clone(),
                due: engine::format_rfc3339(t.due),
                kind: timer_kind(&t.kind).to_string(),
            })
            .collect(),
        buffered: inst
            .buffer
            .iter()
            .map(|b| BufferedView {
                id: b.event.id.clone(),
                kind: b.event.kind.clone(),
                expires: engine::format_rfc3339(b.expires),
            })
            .collect(),
        open_incidents: inst
            .incidents
            .iter()
            .map(|i| incident_view(&api, &id, inst.version, i))
            .collect(),
        transitions: inst.transitions,
        parent: inst.parent.as_ref().map(|p| ParentView {
            process: p.process.clone(),
            key: p.key.clone(),
            version: p.version,
        }),
        history: if q.history {
            super::audit::history(&api, &id).await?
        } else {
            Vec::new()
        },
    };
    Ok(Json(detail).into_response())
}

/// Filters of `/incidents`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct IncidentQuery {
    pub process: Option<String>,
    pub step: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// The `next` cursor of the previous page (an instance id).
    pub after: Option<String>,
    /// Only this member's incidents (no fan-out to the others).
    pub local: Option<bool>,
}

/// Open incidents, oldest instance id first, with the cursor of the next page.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IncidentPage {
    pub incidents: Vec<IncidentView>,
    pub next: Option<String>,
    /// Members that did not answer (their incidents are missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// Open incidents with reason and age, paged by instance.
#[utoipa::path(get, path = "/api/v1/incidents", params(IncidentQuery),
    responses((status = 200, body = IncidentPage), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn incidents(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    Query(q): Query<IncidentQuery>,
) -> Result<Json<IncidentPage>, Fail> {
    let filter = Filter {
        process: q.process.clone(),
        step: q.step.clone(),
        incident: Some(true),
        ..Filter::default()
    };
    let limit = limit(q.limit)?;
    let (page, next) = api.page(&filter, q.after.as_deref(), limit);
    let incidents: Vec<IncidentView> = page
        .iter()
        .flat_map(|(id, e)| {
            e.incidents
                .iter()
                .map(|i| incident_view(&api, id, e.version, i))
        })
        .filter(|v| q.step.is_none() || v.step == q.step)
        .collect();
    let answers = api.fan_out("/incidents", raw, q.local, &caller).await;
    if answers.is_empty() {
        return Ok(Json(IncidentPage {
            incidents,
            next,
            unreachable: Vec::new(),
        }));
    }
    let mut pages = vec![(incidents, next)];
    let mut unreachable = Vec::new();
    for (member, answer) in answers {
        match answer
            .and_then(|v| serde_json::from_value::<IncidentPage>(v).map_err(|e| e.to_string()))
        {
            Ok(p) => pages.push((p.incidents, p.next)),
            Err(e) => {
                tracing::warn!(member, error = %e, "a member did not answer a listing");
                unreachable.push(member);
            }
        }
    }
    let (incidents, next) = merge(pages, limit, |i: &IncidentView| i.instance.clone());
    Ok(Json(IncidentPage {
        incidents,
        next,
        unreachable,
    }))
}

/// A deployed definition version.
#[derive(Debug, Serialize, ToSchema)]
pub struct DefinitionView {
    pub process: String,
    pub version: u32,
    pub hash: String,
    pub steps: Vec<String>,
    /// The newest version of its process (new instances start on it).
    pub latest: bool,
    /// Instances of this version this member holds.
    pub instances: usize,
    /// Who deployed it at run time (`null`: read from a file at start).
    pub deployed_by: Option<String>,
    /// When it was deployed at run time.
    pub deployed_at: Option<String>,
    /// Its source text (in `/definitions/{process}/{version}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The deployed definitions.
#[derive(Debug, Serialize, ToSchema)]
pub struct DefinitionList {
    pub definitions: Vec<DefinitionView>,
}

impl Api {
    fn definition_view(&self, def: &engine::Definition, source: bool) -> DefinitionView {
        let latest = self
            .registry
            .get()
            .latest(&def.process)
            .is_some_and(|l| l.version == def.version);
        let counted = Filter {
            process: Some(def.process.clone()),
            version: Some(def.version),
            ..Filter::default()
        };
        let none = |_: &str, _: u32| None;
        let registry = self.registry.get();
        let origin = registry.origin(&def.process, def.version);
        DefinitionView {
            deployed_by: origin.map(|(by, _)| by.to_string()),
            deployed_at: origin.map(|(_, at)| engine::format_rfc3339(at)),
            process: def.process.clone(),
            version: def.version,
            hash: def.hash.clone(),
            steps: def.steps.iter().map(|s| s.id.clone()).collect(),
            latest,
            instances: self.index.count(&counted, &none),
            source: source
                .then(|| {
                    self.registry
                        .get()
                        .source(&def.process, def.version)
                        .map(str::to_string)
                })
                .flatten(),
        }
    }
}

/// Every deployed version of every process.
#[utoipa::path(get, path = "/api/v1/definitions",
    responses((status = 200, body = DefinitionList), (status = 401, body = ApiError)))]
async fn definitions(State(api): State<Api>) -> Json<DefinitionList> {
    Json(DefinitionList {
        definitions: api
            .registry
            .get()
            .all()
            .map(|d| api.definition_view(d, false))
            .collect(),
    })
}

/// One definition version with its source.
#[utoipa::path(get, path = "/api/v1/definitions/{process}/{version}",
    params(("process" = String, Path), ("version" = u32, Path)),
    responses((status = 200, body = DefinitionView), (status = 404, body = ApiError), (status = 401, body = ApiError)))]
async fn definition(
    State(api): State<Api>,
    Path((process, version)): Path<(String, String)>,
) -> Result<Json<DefinitionView>, Fail> {
    let version: u32 = version
        .parse()
        .map_err(|_| bad(format!("version: `{version}` is not a whole number")))?;
    let registry = api.registry.get();
    let def = registry.get(&process, version).ok_or_else(|| {
        Fail(
            StatusCode::NOT_FOUND,
            format!("no definition `{process}` version {version}"),
        )
    })?;
    Ok(Json(api.definition_view(def, true)))
}

/// A member of the consumer group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub id: String,
    /// Its admin address.
    pub admin: String,
    /// Shards it owns and has restored.
    pub shards: Vec<i32>,
    /// Shards it owns and still restores.
    pub restoring: Vec<i32>,
    pub ready: bool,
    /// The member that answered.
    #[serde(rename = "self")]
    pub this: bool,
    /// Instances it holds.
    pub instances: usize,
}

/// The group's members as this member knows them.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    pub members: Vec<MemberView>,
    /// Open incidents per process.
    pub incidents: BTreeMap<String, usize>,
    /// Members that did not answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// Shard ownership and readiness.
#[utoipa::path(get, path = "/api/v1/cluster", params(LocalQuery),
    responses((status = 200, body = ClusterView), (status = 401, body = ApiError)))]
async fn cluster(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<LocalQuery>,
) -> Json<ClusterView> {
    let r = api.health.readiness();
    let none = |_: &str, _: u32| None;
    let mut incidents = BTreeMap::new();
    let open = Filter {
        incident: Some(true),
        ..Filter::default()
    };
    for id in api.index.ids(&open, &none) {
        let process = id.split_once('/').map_or(&*id, |(p, _)| p);
        *incidents.entry(process.to_string()).or_insert(0) += 1;
    }
    let mut view = ClusterView {
        members: vec![MemberView {
            id: api.member.clone(),
            admin: api.admin.clone(),
            shards: r.shards.clone(),
            restoring: r.restoring.clone(),
            ready: r.ready(),
            this: true,
            instances: api.index.len(),
        }],
        incidents,
        unreachable: Vec::new(),
    };
    for (member, answer) in api.fan_out("/cluster", None, q.local, &caller).await {
        match answer
            .and_then(|v| serde_json::from_value::<ClusterView>(v).map_err(|e| e.to_string()))
        {
            Ok(other) => {
                for mut m in other.members {
                    m.this = false;
                    view.members.push(m);
                }
                for (p, n) in other.incidents {
                    *view.incidents.entry(p).or_insert(0) += n;
                }
            }
            Err(e) => {
                tracing::warn!(member, error = %e, "a member did not answer");
                view.unreachable.push(member);
            }
        }
    }
    view.members.sort_by(|a, b| a.id.cmp(&b.id));
    Json(view)
}

/// Only this member's view (no fan-out to the others).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct LocalQuery {
    pub local: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_in_full_only_and_carry_their_role() {
        let t = Tokens::new([
            (
                "ana".into(),
                Role::Viewer,
                "viewer-secret-0123456789".into(),
            ),
            (
                "ops".into(),
                Role::Operator,
                "operator-secret-0123456789".into(),
            ),
        ]);
        assert_eq!(
            t.check("viewer-secret-0123456789"),
            Some(("ana", Role::Viewer))
        );
        assert_eq!(
            t.check("operator-secret-0123456789"),
            Some(("ops", Role::Operator))
        );
        assert_eq!(t.check("viewer-secret-012345678"), None, "a prefix");
        assert_eq!(t.check("viewer-secret-01234567890"), None, "longer");
        assert_eq!(t.check(""), None);
        assert!(Role::Viewer < Role::Operator);
    }

    #[test]
    fn the_document_is_openapi_3_1_and_names_every_route() {
        let doc = serde_json::to_value(Doc::openapi()).expect("serializes");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        for p in [
            "/api/v1/instances",
            "/api/v1/instances/{process}/{key}",
            "/api/v1/incidents",
            "/api/v1/definitions",
            "/api/v1/definitions/{process}/{version}",
            "/api/v1/cluster",
            "/api/v1/instances/{process}/{key}/actions",
            "/api/v1/requests/{request}",
            "/api/v1/jobs",
            "/api/v1/jobs/{id}",
        ] {
            assert!(doc["paths"].get(p).is_some(), "{p} documented");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn bad_filters_say_which_field_and_why() {
        let q = InstanceQuery {
            status: Some("running".into()),
            ..InstanceQuery::default()
        };
        assert!(q.filter().err().is_some_and(|f| f.1.contains("status")));
        let q = InstanceQuery {
            started_after: Some("yesterday".into()),
            ..InstanceQuery::default()
        };
        assert!(
            q.filter()
                .err()
                .is_some_and(|f| f.1.contains("started_after"))
        );
        assert!(limit(Some(0)).is_err() && limit(Some(MAX_PAGE + 1)).is_err());
        assert_eq!(limit(None).ok(), Some(DEFAULT_PAGE));
    }
}
