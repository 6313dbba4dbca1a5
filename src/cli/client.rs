//! A blocking client for baton's admin HTTP API (`/api/v1`): the bearer
//! token, JSON in and out, and every way a call can fail as a [`Failure`]
//! that knows its exit code.
//!
//! It knows URLs and status codes, not what the answers mean: the commands
//! in `admin.rs` read the bodies.

use std::time::Duration;

use serde_json::Value;

/// Why an admin command did not succeed; [`Failure::exit_code`] is what the
/// process exits with (the table is in `admin.rs`).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No HTTP answer: connection refused, DNS, timeout, bad URL.
    #[error(
        "cannot reach the admin API at {url}: {reason} (point --server or BATON_ADMIN_URL at a baton admin port)"
    )]
    Unreachable { url: String, reason: String },
    /// 401: no token, or one the server does not know.
    #[error("not authorised (401): {message}; set an API token with --token or BATON_TOKEN")]
    Unauthorised { message: String },
    /// 403: the token's role may not do this.
    #[error(
        "forbidden (403): {message}; this token's role may not do this, use an operator token (--token or BATON_TOKEN)"
    )]
    Forbidden { message: String },
    /// 404.
    #[error("not found: {message}")]
    NotFound { message: String },
    /// 409 or 422: a conflict or an invalid definition, with the server's diagnostics.
    #[error("refused ({status}): {message}")]
    Refused {
        status: u16,
        message: String,
        diagnostics: Vec<String>,
    },
    /// Any other error status (400, 5xx, ...).
    #[error("the server answered {status}: {message}")]
    Server { status: u16, message: String },
    /// A 2xx answer that is not the JSON the API promises.
    #[error("unexpected answer to {what}: {reason}")]
    Unexpected { what: String, reason: String },
    /// Arguments that clap accepts but that do not make a request.
    #[error("{0}")]
    Usage(String),
    /// A definition failed local validation (its diagnostics are printed already).
    #[error("{0}")]
    Invalid(String),
    /// The call worked and reported a failed check (mismatches, blocked instances, job errors).
    #[error("{0}")]
    Check(String),
    /// Several calls, each failure printed as it happened; `code` is the first one's.
    #[error("{message}")]
    Reported { code: u8, message: String },
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Unreachable { .. } | Failure::Server { .. } | Failure::Unexpected { .. } => 1,
            Failure::Usage(_) => 2,
            Failure::NotFound { .. } => 3,
            Failure::Unauthorised { .. } | Failure::Forbidden { .. } => 4,
            Failure::Refused { .. } | Failure::Invalid(_) => 5,
            Failure::Check(_) => 6,
            Failure::Reported { code, .. } => *code,
        }
    }

    /// The server's diagnostics, if it sent any.
    pub fn diagnostics(&self) -> &[String] {
        match self {
            Failure::Refused { diagnostics, .. } => diagnostics,
            _ => &[],
        }
    }
}

/// One admin server and the token to present to it.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Client {
        let config = ureq::Agent::config_builder()
            // Error statuses carry the server's message: read them as answers.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)))
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// `GET /api/v1{path}?query`; `path` segments must be encoded already ([`segment`]).
    pub fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        let url = self.url(path);
        let mut req = self.agent.get(&url);
        for (k, v) in query {
            req = req.query(k, v);
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        answer(&self.base, &url, req.call())
    }

    /// `POST /api/v1{path}` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let url = self.url(path);
        let mut req = self.agent.post(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        answer(&self.base, &url, req.send_json(body))
    }
}

/// Reads an answer: 2xx gives its JSON body, anything else its [`Failure`].
fn answer(
    base: &str,
    url: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, Failure> {
    let mut response = result.map_err(|e| Failure::Unreachable {
        url: base.to_string(),
        reason: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| Failure::Unreachable {
            url: base.to_string(),
            reason: format!("reading the answer to {url}: {e}"),
        })?;
    if (200..300).contains(&status) {
        return serde_json::from_str(&text).map_err(|e| Failure::Unexpected {
            what: url.to_string(),
            reason: format!("not JSON ({e})"),
        });
    }
    let body: Option<Value> = serde_json::from_str(&text).ok();
    let message = body
        .as_ref()
        .and_then(|b| b.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                format!("no message ({url})")
            } else {
                t.to_string()
            }
        });
    Err(match status {
        401 => Failure::Unauthorised { message },
        403 => Failure::Forbidden { message },
        404 => Failure::NotFound { message },
        409 | 422 => Failure::Refused {
            status,
            message,
            diagnostics: body
                .as_ref()
                .and_then(|b| b.get("diagnostics"))
                .and_then(Value::as_array)
                .map(|d| {
                    d.iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        },
        _ => Failure::Server { status, message },
    })
}

/// One path segment, percent-encoded (everything but RFC 3986's unreserved characters).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_encode_everything_but_unreserved() {
        assert_eq!(segment("o-42_a.b~c"), "o-42_a.b~c");
        assert_eq!(segment("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }

    #[test]
    fn each_failure_has_its_exit_code() {
        let m = || "m".to_string();
        let codes = [
            (
                Failure::Unreachable {
                    url: m(),
                    reason: m(),
                },
                1,
            ),
            (
                Failure::Server {
                    status: 500,
                    message: m(),
                },
                1,
            ),
            (Failure::Usage(m()), 2),
            (Failure::NotFound { message: m() }, 3),
            (Failure::Unauthorised { message: m() }, 4),
            (Failure::Forbidden { message: m() }, 4),
            (
                Failure::Refused {
                    status: 409,
                    message: m(),
                    diagnostics: vec![],
                },
                5,
            ),
            (Failure::Invalid(m()), 5),
            (Failure::Check(m()), 6),
        ];
        for (f, code) in codes {
            assert_eq!(f.exit_code(), code, "{f}");
        }
    }
}
