//! What every token-endpoint answer is held to, whatever the dialect: it
//! came in time, whole and not as a 5xx; errors follow RFC 6749 §5.2; the
//! token is a header-safe bearer token with a sane lifetime. And the two
//! results an exchange can have: `Exchanged`, or a `Failure` as the caller
//! will see it.

use super::Step;
use crate::host::CalloutResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

/// Largest token-endpoint answer accepted.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A successful exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanged {
    pub access_token: String,
    /// `expires_in`, seconds.
    pub expires_in: Option<u64>,
    /// An absolute expiry, seconds since the epoch (Google's `expireTime`).
    pub expires_at: Option<u64>,
    /// `exp` of the issued token, when it is a JWT (read, not verified: it
    /// only bounds how long we cache it).
    pub jwt_exp: Option<u64>,
}

impl Exchanged {
    /// When the issued token expires (ms), if the answer says: its
    /// `expires_in`, else an absolute expiry such as Google's
    /// `expireTime`, else its JWT `exp`.
    pub fn expires_at_ms(&self, now_ms: u64) -> Option<u64> {
        match (self.expires_in, self.expires_at.or(self.jwt_exp)) {
            (Some(s), _) => Some(now_ms.saturating_add(s.saturating_mul(1000))),
            (None, Some(at)) => Some(at.saturating_mul(1000)),
            (None, None) => None,
        }
    }
}

/// Why an exchange failed, as the caller will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `invalid_grant`: the IdP refused the subject token → 401.
    InvalidGrant,
    /// `invalid_scope` / `invalid_target` → 403.
    InsufficientScope,
    /// Entra wants the user to satisfy more (MFA, a policy): 401 with
    /// `error="insufficient_claims"` and the claims to ask for, if any.
    ClaimsChallenge(Option<String>),
    /// Our configuration or the IdP is wrong (bad client, bad request,
    /// malformed or oversize answer) → 502. The reason is for the log.
    BadGateway(String),
    /// IdP 5xx, connection failure, no answer → 503.
    Unavailable(String),
    /// No answer within `timeoutMs` → 504.
    Timeout,
}

impl Failure {
    /// Short label for the audit log.
    pub fn outcome(&self) -> String {
        match self {
            Failure::InvalidGrant => "invalid_grant".into(),
            Failure::InsufficientScope => "insufficient_scope".into(),
            Failure::ClaimsChallenge(_) => "insufficient_claims".into(),
            Failure::BadGateway(why) => format!("bad_gateway ({why})"),
            Failure::Unavailable(why) => format!("unavailable ({why})"),
            Failure::Timeout => "timeout".into(),
        }
    }

    /// The same failure, its reason prefixed with the step it happened in
    /// (the first step's failures are the exchange's own).
    pub(super) fn at(self, step: Step) -> Failure {
        let label = match step {
            Step::Token => return self,
            Step::Actor => "actor token",
            Step::Impersonate => "impersonation",
            Step::Assertion => "assertion grant",
        };
        match self {
            Failure::BadGateway(why) => Failure::BadGateway(format!("{label}: {why}")),
            Failure::Unavailable(why) => Failure::Unavailable(format!("{label}: {why}")),
            f => f,
        }
    }
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
    /// Entra's claims challenge.
    claims: Option<String>,
}

/// The body of an answer that arrived in time, whole, and not as a 5xx.
pub(super) fn received(resp: &CalloutResponse, elapsed_ms: u64, timeout_ms: u64) -> Result<&[u8], Failure> {
    let timed_out = elapsed_ms.saturating_add(50) >= timeout_ms;
    let Some(status) = resp.status() else {
        return Err(if timed_out {
            Failure::Timeout
        } else {
            Failure::Unavailable("no response: connection failed or reset".into())
        });
    };
    if status == 504 && timed_out {
        return Err(Failure::Timeout);
    }
    if status >= 500 {
        return Err(Failure::Unavailable(format!("HTTP {status}")));
    }
    if resp.truncated || resp.body.len() > MAX_RESPONSE_BYTES {
        return Err(Failure::BadGateway(format!(
            "response larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    Ok(&resp.body)
}

/// An OAuth error answer (RFC 6749 §5.2), logged and mapped by `map`.
pub(super) fn oauth_error(
    status: u16,
    body: &[u8],
    subject_token: &str,
    map: impl Fn(&str, Option<String>) -> Option<Failure>,
) -> Failure {
    let Ok(err) = serde_json::from_slice::<ErrorResponse>(body) else {
        return Failure::BadGateway(format!("HTTP {status} without a JSON error"));
    };
    let code = err.error.unwrap_or_default();
    let description = safe_description(err.error_description.as_deref(), subject_token);
    log::info!("token endpoint answered HTTP {status} error={code:?} description={description:?}");
    map(&code, err.claims).unwrap_or_else(|| match code.as_str() {
        "invalid_grant" => Failure::InvalidGrant,
        "invalid_scope" | "invalid_target" => Failure::InsufficientScope,
        _ => Failure::BadGateway(format!("HTTP {status} {code}")),
    })
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

/// An OAuth 2.0 token answer (RFC 6749 §5.1, §5.2), as a JWT bearer or
/// client credentials grant gets it: no `issued_token_type`. `map` maps
/// the dialect's own error codes before the table does.
pub(super) fn token_response(
    status: u16,
    body: &[u8],
    subject_token: &str,
    map: impl Fn(&str, Option<String>) -> Option<Failure>,
) -> Result<Exchanged, Failure> {
    if !(200..300).contains(&status) {
        return Err(oauth_error(status, body, subject_token, map));
    }
    let ok: TokenResponse =
        serde_json::from_slice(body).map_err(|_| Failure::BadGateway("response is not JSON".into()))?;
    let access_token = access_token(ok.access_token)?;
    bearer_type(ok.token_type.as_deref())?;
    Ok(Exchanged {
        jwt_exp: jwt_exp(&access_token),
        expires_in: seconds(ok.expires_in)?,
        expires_at: None,
        access_token,
    })
}

/// An access token we can put in a header.
pub(super) fn access_token(token: Option<String>) -> Result<String, Failure> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Failure::BadGateway("no access_token".into()))?;
    if token.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(Failure::BadGateway("access_token is not a header-safe string".into()));
    }
    Ok(token)
}

/// `token_type` must say the token is a bearer token (RFC 8693 allows N_A).
pub(super) fn bearer_type(token_type: Option<&str>) -> Result<(), Failure> {
    match token_type {
        Some(t) if t.eq_ignore_ascii_case("bearer") || t == "N_A" => Ok(()),
        other => Err(Failure::BadGateway(format!(
            "token_type {other:?} is not Bearer or N_A"
        ))),
    }
}

/// `expires_in` as a number or a numeric string.
/// `expires_in`: absent, or a positive whole number of seconds (as a
/// number or a numeric string). Anything else (0, negative, fractional,
/// not a number) is a malformed answer: caching it would serve a token the
/// IdP says is already dead for the caller token's whole lifetime.
pub(super) fn seconds(v: Option<serde_json::Value>) -> Result<Option<u64>, Failure> {
    let n = match v {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(Failure::BadGateway("expires_in is not a positive whole number".into())),
    }
}

/// The IdP's error description, for our log only, and only if it cannot be
/// echoing the token.
pub(super) fn safe_description(d: Option<&str>, subject_token: &str) -> String {
    let Some(d) = d else {
        return String::new();
    };
    let echoes = subject_token
        .split('.')
        .any(|part| part.len() >= 16 && d.contains(part));
    if echoes || d.contains("eyJ") {
        return "(withheld: it may contain a token)".into();
    }
    d.chars().take(200).collect()
}

/// `exp` from a JWT's payload, unverified.
pub(super) fn jwt_exp(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: Option<u64>,
    }
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Exp>(&bytes).ok()?.exp
}
