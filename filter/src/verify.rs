//! Verifying one bearer token against the issuer's keys and our policy:
//! algorithm allow-list, key choice, signature, `iss`, `aud`, `exp`/`nbf`/`iat`
//! with skew, and required scopes.
//!
//! Rejections carry a short, fixed description that is safe to send to the
//! client and to log: nothing in it comes from the token.

use crate::jwks::{Alg, KeySet};
use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use plugin_config::Oidc;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    /// `none`, HS*, or anything else off the allow-list.
    UnsupportedAlg,
    /// The token names a `kid` we do not have (or, without a kid, we have no
    /// key of its algorithm): the keys may have rotated, so a refetch may help.
    UnknownKey,
    BadSignature,
    Expired,
    NoExpiry,
    NotYetValid,
    Issuer,
    Audience,
    /// Valid, but without every required scope: a 403, not a 401.
    InsufficientScope,
}

impl Reject {
    pub fn description(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed token",
            Reject::UnsupportedAlg => "unsupported signing algorithm",
            Reject::UnknownKey => "unknown signing key",
            Reject::BadSignature => "invalid signature",
            Reject::Expired => "token expired",
            Reject::NoExpiry => "token has no expiry",
            Reject::NotYetValid => "token not yet valid",
            Reject::Issuer => "issuer not accepted",
            Reject::Audience => "audience not accepted",
            Reject::InsufficientScope => "insufficient scope",
        }
    }
}

/// Who a verified token speaks for, kept for logs and the verified cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: Option<String>,
    /// `azp` or `client_id`.
    pub client: Option<String>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// The key that verified it (`jwks::Key::id`).
    pub key_id: u64,
}

/// Claims beyond the registered ones that we read.
#[derive(Deserialize)]
struct Extra {
    scope: Option<Value>,
    scp: Option<Value>,
    azp: Option<String>,
    client_id: Option<String>,
}

pub struct Verifier {
    issuer: String,
    audiences: HashSet<String>,
    required_scopes: Vec<String>,
    skew: u64,
}

/// What a failed verification knows about the token, for the log line.
#[derive(Debug)]
pub struct Failure {
    pub reject: Reject,
    /// `sub`, when the signature was good but a claim was not.
    pub sub: Option<String>,
}

impl From<Reject> for Failure {
    fn from(reject: Reject) -> Self {
        Failure { reject, sub: None }
    }
}

impl Verifier {
    pub fn new(oidc: &Oidc) -> Verifier {
        Verifier {
            issuer: oidc.issuer.clone(),
            audiences: oidc.audiences.iter().cloned().collect(),
            required_scopes: oidc.required_scopes.clone(),
            skew: oidc.clock_skew_seconds,
        }
    }

    pub fn skew(&self) -> u64 {
        self.skew
    }

    /// Verifies `token` at time `now` (seconds). Counts signature checks in
    /// `signatures` so callers (and tests) can see the cache at work.
    pub fn verify(&self, keys: &KeySet, token: &str, now: u64, signatures: &mut u64) -> Result<Principal, Failure> {
        let meta = Token::decode_metadata(token).map_err(|_| Reject::Malformed)?;
        let alg = Alg::from_name(meta.algorithm()).ok_or(Reject::UnsupportedAlg)?;
        let kid = meta.key_id();
        if let Some(kid) = kid {
            if !keys.has_kid(kid) {
                return Err(Reject::UnknownKey.into());
            }
        }
        let mut tried = false;
        for key in keys.candidates(alg, kid) {
            tried = true;
            *signatures += 1;
            match key.verify::<Extra>(token, self.options(now)) {
                Ok(claims) => return self.check(claims, key.id),
                Err(e) => match e.downcast_ref::<JWTError>() {
                    // Without a kid, another key of the algorithm may fit.
                    Some(JWTError::InvalidSignature) => continue,
                    Some(other) => {
                        return Err(Failure {
                            reject: claims_reject(other),
                            sub: None,
                        })
                    }
                    None => return Err(Reject::Malformed.into()),
                },
            }
        }
        Err(if tried {
            Reject::BadSignature
        } else if kid.is_some() {
            // The kid exists, but its key is not for this algorithm.
            Reject::UnsupportedAlg
        } else {
            Reject::UnknownKey
        }
        .into())
    }

    fn options(&self, now: u64) -> VerificationOptions {
        VerificationOptions {
            allowed_issuers: Some(HashSet::from([self.issuer.clone()])),
            allowed_audiences: Some(self.audiences.clone()),
            time_tolerance: Some(Duration::from_secs(self.skew)),
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            ..Default::default()
        }
    }

    fn check(&self, claims: JWTClaims<Extra>, key_id: u64) -> Result<Principal, Failure> {
        let sub = claims.subject.clone();
        let Some(exp) = claims.expires_at else {
            return Err(Failure {
                reject: Reject::NoExpiry,
                sub,
            });
        };
        let granted = scopes(&claims.custom);
        if !self.required_scopes.iter().all(|r| granted.contains(&r.as_str())) {
            return Err(Failure {
                reject: Reject::InsufficientScope,
                sub,
            });
        }
        Ok(Principal {
            sub,
            client: claims.custom.azp.or(claims.custom.client_id),
            exp: exp.as_secs(),
            key_id,
        })
    }
}

/// Scopes from `scope` (space-separated, RFC 8693/9068) or `scp` (Okta and
/// Entra: a string or a list).
fn scopes(extra: &Extra) -> Vec<&str> {
    let mut out = Vec::new();
    for v in [&extra.scope, &extra.scp].into_iter().flatten() {
        match v {
            Value::String(s) => out.extend(s.split(' ').filter(|s| !s.is_empty())),
            Value::Array(a) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

fn claims_reject(e: &JWTError) -> Reject {
    match e {
        JWTError::TokenHasExpired => Reject::Expired,
        JWTError::TokenNotValidYet | JWTError::ClockDrift => Reject::NotYetValid,
        JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing => Reject::Issuer,
        JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing => Reject::Audience,
        JWTError::AlgorithmMismatch => Reject::UnsupportedAlg,
        _ => Reject::Malformed,
    }
}

#[cfg(test)]
mod tests;
