//! Verifying one bearer token against the issuer's keys: algorithm
//! allow-list, key choice, signature, `iss`, `aud`, `exp`/`nbf`/`iat` with
//! skew. Which scopes a request needs depends on its route, so the granted
//! scopes travel with the principal and `Principal::has_scopes` checks them
//! on every request, verified just now or remembered.
//!
//! Each key checks its signature with its own library (`keys::signature`);
//! the header and claims are parsed once, and checked here the same way for
//! every algorithm.
//!
//! Rejections carry a short, fixed description that is safe to send to the
//! client and to log: nothing in it comes from the token.

use crate::keys::alg::Alg;
use crate::keys::jwks::{Key, KeySet};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use plugin_config::Oidc;
use serde_json::Value;
use std::collections::HashSet;

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
    /// No `sub`, or an empty one (RFC 9068 §2.2 requires it).
    NoSubject,
    /// A `typ` naming another kind of JWT (logout, security event, DPoP
    /// proof…), or not one of `oidc.allowedTokenTypes`.
    TokenType,
    /// `scope` that is not a space-separated string.
    ScopeClaim,
    /// Introspection said `active: false` (revoked, expired or unknown).
    Inactive,
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
            Reject::NoSubject => "token has no subject",
            Reject::TokenType => "token type not accepted",
            Reject::ScopeClaim => "scope claim is not a string",
            Reject::Inactive => "token not active",
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
    /// Granted scopes, from `scope` or `scp`.
    pub scopes: Vec<String>,
    /// `claimToHeaders` values, taken once at verification.
    pub claim_headers: Vec<(String, String)>,
}

impl Principal {
    /// Whether every scope in `required` was granted.
    pub fn has_scopes(&self, required: &[String]) -> bool {
        required.iter().all(|r| self.scopes.contains(r))
    }
}

/// The claims we read, with the types JWT gives them (RFC 7519 §4.1;
/// jwt-simple's `JWTClaims` reads them alike): a claim of another type makes
/// the token malformed. `null` is an absent claim, except for `aud`.
struct Claims<'a> {
    iat: Option<u64>,
    nbf: Option<u64>,
    exp: Option<u64>,
    iss: Option<&'a str>,
    sub: Option<&'a str>,
    /// `aud`: one audience or a list of them.
    aud: Option<Vec<&'a str>>,
    scope: Option<&'a Value>,
    scp: Option<&'a Value>,
    /// `azp`, else `client_id`.
    client: Option<&'a str>,
}

impl<'a> Claims<'a> {
    fn read(payload: &'a Value) -> Option<Claims<'a>> {
        let any = |name: &str| payload.get(name).filter(|v| !v.is_null());
        // `shape` made sure that any date is a whole number of seconds.
        let date = |name: &str| payload.get(name).and_then(Value::as_u64);
        let text = |name: &str| any(name).map(|v| v.as_str().ok_or(())).transpose().ok();
        for name in ["jti", "nonce"] {
            text(name)?;
        }
        let aud = match payload.get("aud") {
            None => None,
            Some(Value::String(a)) => Some(vec![a.as_str()]),
            Some(Value::Array(list)) => Some(list.iter().map(Value::as_str).collect::<Option<_>>()?),
            Some(_) => return None,
        };
        let (azp, client_id) = (text("azp")?, text("client_id")?);
        Some(Claims {
            iat: date("iat"),
            nbf: date("nbf"),
            exp: date("exp"),
            iss: text("iss")?,
            sub: text("sub")?,
            aud,
            scope: any("scope"),
            scp: any("scp"),
            client: azp.or(client_id),
        })
    }
}

/// Later than any date a token should name (year 2286).
pub const MAX_NUMERIC_DATE: u64 = 9_999_999_999;

#[derive(Debug, PartialEq, Eq)]
pub struct Verifier {
    issuer: String,
    audiences: HashSet<String>,
    skew: u64,
    allowed_types: Option<Vec<String>>,
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
            skew: oidc.clock_skew_seconds,
            allowed_types: oidc.allowed_token_types.clone(),
        }
    }

    /// The issuer whose tokens it takes.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn skew(&self) -> u64 {
        self.skew
    }

    /// Verifies `token` at time `now` (seconds). Counts signature checks in
    /// `signatures` so callers (and tests) can see the cache at work.
    pub fn verify(&self, keys: &KeySet, token: &str, now: u64, signatures: &mut u64) -> Result<Principal, Failure> {
        let (header, payload) = self.shape(token)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => Alg::from_name(a).ok_or(Reject::UnsupportedAlg)?,
            _ => return Err(Reject::Malformed.into()),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(Reject::Malformed.into()),
        };
        if let Some(kid) = kid {
            if !keys.has_kid(kid) {
                return Err(Reject::UnknownKey.into());
            }
        }
        let mut tried = false;
        for key in keys.candidates(alg, kid) {
            tried = true;
            *signatures += 1;
            if signed_by(key, token)? {
                let claims = Claims::read(&payload).ok_or(Reject::Malformed)?;
                return self.check(&claims, key.id, now);
            }
            // Without a kid, another key of the algorithm may fit.
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

    /// What holds before any key is tried: three segments of canonical
    /// base64url; a header and a payload that are JSON objects without
    /// duplicate keys, whose `exp`, `nbf` and `iat` are whole seconds; no `crit` (we implement no extension, and RFC 7515
    /// forbids an empty list); a `typ` that names an access token; our `iss`.
    fn shape(&self, token: &str) -> Result<(Value, Value), Reject> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reject::Malformed);
        };
        let object = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .ok()
                .and_then(|b| crate::token::strict_json::parse(&b))
                .filter(Value::is_object)
                .ok_or(Reject::Malformed)
        };
        let header = object(header)?;
        let payload = object(payload)?;
        // NumericDates as whole seconds within reach: a float, or a number
        // past u64, would be rounded or saturated into "never expires".
        for claim in ["exp", "nbf", "iat"] {
            if payload
                .get(claim)
                .is_some_and(|v| v.as_u64().is_none_or(|n| n >= MAX_NUMERIC_DATE))
            {
                return Err(Reject::Malformed);
            }
        }
        if header.get("crit").is_some() {
            return Err(Reject::Malformed);
        }
        let typ = match header.get("typ") {
            None => None,
            Some(Value::String(t)) => Some(plugin_config::token_type_name(t)),
            Some(_) => return Err(Reject::Malformed),
        };
        let ok = match (&self.allowed_types, typ.as_deref()) {
            (Some(allowed), Some(t)) => allowed.iter().any(|a| a == t),
            (Some(_), None) => false,
            (None, None | Some("jwt" | "at+jwt")) => true,
            (None, Some(_)) => false,
        };
        if !ok {
            return Err(Reject::TokenType);
        }
        // Another issuer's token never passes here, whatever its key: refused
        // before the key lookup, it neither waits for nor starts a refetch of
        // this issuer's keys (where one gateway has several issuers, a token
        // brought to the wrong route is common). `check` checks the signed one.
        if payload.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(Reject::Issuer);
        }
        Ok((header, payload))
    }

    /// The registered claims, with skew.
    fn check(&self, claims: &Claims, key_id: u64, now: u64) -> Result<Principal, Failure> {
        let sub = claims.sub.map(str::to_string);
        let fail = |reject| Failure {
            reject,
            sub: sub.clone(),
        };
        let skew = self.skew;
        let after_now = |t: Option<u64>| t.is_some_and(|t| t > now.saturating_add(skew));
        if after_now(claims.iat) || after_now(claims.nbf) {
            return Err(fail(Reject::NotYetValid));
        }
        let Some(exp) = claims.exp else {
            return Err(fail(Reject::NoExpiry));
        };
        if now > exp.saturating_add(skew) {
            return Err(fail(Reject::Expired));
        }
        if claims.iss != Some(self.issuer.as_str()) {
            return Err(fail(Reject::Issuer));
        }
        if !claims
            .aud
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| self.audiences.contains(*a)))
        {
            return Err(fail(Reject::Audience));
        }
        if claims.sub.is_none_or(|s| s.trim().is_empty()) {
            return Err(fail(Reject::NoSubject));
        }
        if claims.scope.is_some_and(|s| !s.is_string()) {
            return Err(fail(Reject::ScopeClaim));
        }
        Ok(Principal {
            scopes: scopes(claims),
            claim_headers: Vec::new(),
            client: claims.client.map(str::to_string),
            sub,
            exp,
            key_id,
        })
    }
}

/// Whether `key` made the token's signature. The header rules (no `crit`,
/// an access token's `typ`) were applied by `Verifier::shape`.
fn signed_by(key: &Key, token: &str) -> Result<bool, Reject> {
    let (signed, signature) = token.rsplit_once('.').ok_or(Reject::Malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| Reject::Malformed)?;
    Ok(key.verifies(signed.as_bytes(), &signature))
}

/// Scopes from `scope` (space-separated, RFC 8693/9068; `check` refuses any
/// other form) or `scp` (Okta and Entra: a string or a list).
fn scopes(claims: &Claims) -> Vec<String> {
    let mut out = Vec::new();
    for v in [claims.scope, claims.scp].into_iter().flatten() {
        match v {
            Value::String(s) => out.extend(s.split(' ').filter(|s| !s.is_empty()).map(String::from)),
            Value::Array(a) => out.extend(a.iter().filter_map(Value::as_str).map(String::from)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
