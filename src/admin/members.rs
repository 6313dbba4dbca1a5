//! The group's members as the admin API sees them: each member advertises
//! its admin address and the shards it owns in a small compacted topic
//! (`<prefix>.members`, keyed by member id) every few seconds, and follows
//! what the others advertise. A query about an instance on a shard another
//! member owns is forwarded to it; a listing fans out to every member and
//! merges their pages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kafka::{Follower, Outgoing, Publisher};
use crate::runtime::now_ms;
use crate::telemetry::Health;

/// How often a member advertises itself.
const ADVERTISE_EVERY: Duration = Duration::from_secs(3);
/// A member not heard of for this long is gone.
const GONE_AFTER_MS: u64 = 15_000;
/// How long a forwarded call may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// The membership record format this build writes and reads.
pub const MEMBER_FORMAT: u32 = 1;

/// What one member advertises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    pub v: u32,
    pub id: String,
    /// Its admin base URL, e.g. `http://10.0.0.7:8080`.
    pub admin: String,
    /// The shards it owns and has restored.
    pub shards: Vec<i32>,
    pub ready: bool,
    /// When it advertised, epoch milliseconds.
    pub at: u64,
}

/// The members this one has heard of.
pub struct Members {
    pub me: String,
    pub admin: String,
    known: Mutex<BTreeMap<String, Advert>>,
}

impl Members {
    pub fn new(me: String, admin: String) -> Members {
        Members {
            me,
            admin,
            known: Mutex::default(),
        }
    }

    /// The other members heard of recently, in id order.
    pub fn peers(&self) -> Vec<Advert> {
        let now = now_ms();
        self.known
            .lock()
            .map(|k| {
                k.values()
                    .filter(|a| a.id != self.me && now.saturating_sub(a.at) < GONE_AFTER_MS)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The other member that owns `shard`, by its latest advert.
    pub fn owner_of(&self, shard: i32) -> Option<Advert> {
        self.peers()
            .into_iter()
            .filter(|a| a.shards.contains(&shard))
            .max_by_key(|a| a.at)
    }

    fn take(&self, m: &crate::kafka::Incoming) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        let Some(key) = m.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
            return;
        };
        match m.payload.as_deref() {
            None => {
                known.remove(key);
            }
            Some(bytes) => match serde_json::from_slice::<Advert>(bytes) {
                Ok(a) if a.v == MEMBER_FORMAT => {
                    known.insert(a.id.clone(), a);
                }
                _ => tracing::debug!(key, "members topic: a record of another format, skipped"),
            },
        }
    }
}

/// Starts advertising this member and following the others, on a thread
/// of its own, for as long as the process runs.
pub fn start(
    cfg: &crate::config::Config,
    health: Arc<Health>,
    members: Arc<Members>,
) -> Result<(), crate::kafka::KafkaFailure> {
    let topic = cfg.topics.members();
    crate::kafka::ensure_topics(cfg, &[(topic.clone(), 1, true)])?;
    let follower = Follower::new(cfg, &topic, 0)?;
    let publisher = Arc::new(Publisher::new(cfg)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::kafka::KafkaFailure::Topic {
            topic: topic.clone(),
            problem: format!("cannot start the membership thread: {e}"),
        })?;
    let spawned = std::thread::Builder::new()
        .name("baton-members".into())
        .spawn(move || rt.block_on(run(members, health, follower, publisher, topic)));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "membership thread did not start: queries stay on this member");
    }
    Ok(())
}

/// Advertises this member and follows the others.
pub async fn run(
    members: Arc<Members>,
    health: Arc<Health>,
    follower: Follower,
    publisher: Arc<Publisher>,
    topic: String,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut advertised_at: Option<tokio::time::Instant> = None;
    let mut last: Option<(Vec<i32>, bool)> = None;
    loop {
        tick.tick().await;
        match follower.poll() {
            Ok(records) => records.iter().for_each(|m| members.take(m)),
            Err(e) => tracing::debug!(error = %e, "members topic: read failed"),
        }
        let r = health.readiness();
        let now = (r.shards.clone(), r.ready());
        let due = advertised_at.is_none_or(|t| t.elapsed() >= ADVERTISE_EVERY);
        if !due && last.as_ref() == Some(&now) {
            continue;
        }
        let advert = Advert {
            v: MEMBER_FORMAT,
            id: members.me.clone(),
            admin: members.admin.clone(),
            shards: now.0.clone(),
            ready: now.1,
            at: now_ms(),
        };
        let record = Outgoing {
            topic: topic.clone(),
            partition: Some(0),
            key: advert.id.clone().into_bytes(),
            payload: serde_json::to_vec(&advert).ok(),
            headers: Vec::new(),
        };
        match publisher.publish(&record).await {
            Ok(_) => {
                advertised_at = Some(tokio::time::Instant::now());
                last = Some(now);
            }
            Err(e) => tracing::debug!(error = %e, "members topic: advertising failed"),
        }
    }
}

/// Calls another member's API (`path` with its query, under `/api/v1`)
/// with the caller's token; its status and JSON body.
pub async fn ask(
    peer: &Advert,
    method: &'static str,
    path: String,
    token: String,
    body: Option<Value>,
) -> Result<(StatusCode, Value), String> {
    let url = format!("{}/api/v1{path}", peer.admin.trim_end_matches('/'));
    let id = peer.id.clone();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PEER_TIMEOUT))
            .build()
            .into();
        let auth = format!("Bearer {token}");
        let answer = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            (_, body) => agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body.unwrap_or(Value::Null)),
        };
        let mut answer = answer.map_err(|e| format!("member {id} at {url}: {e}"))?;
        let status =
            StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let text = answer
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("member {id}: {e}"))?;
        let value = serde_json::from_str(&text)
            .map_err(|e| format!("member {id} answered no JSON: {e}"))?;
        Ok((status, value))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Asks every peer the same GET; each answer or why there is none.
pub async fn ask_all(
    peers: &[Advert],
    path: &str,
    token: &str,
) -> Vec<(String, Result<Value, String>)> {
    send_all(peers, "GET", path, token, None).await
}

/// Sends every peer the same call; each answer (2xx only) or why there is none.
pub async fn send_all(
    peers: &[Advert],
    method: &'static str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Vec<(String, Result<Value, String>)> {
    let mut set = tokio::task::JoinSet::new();
    for p in peers {
        let (p, path, token, body) = (p.clone(), path.to_string(), token.to_string(), body.clone());
        set.spawn(async move {
            let answer = ask(&p, method, path, token, body).await;
            let answer = match answer {
                Ok((s, v)) if s.is_success() => Ok(v),
                Ok((s, v)) => Err(format!("member {} answered {s}: {v}", p.id)),
                Err(e) => Err(e),
            };
            (p.id, answer)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A path segment with everything but unreserved characters percent-encoded.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
