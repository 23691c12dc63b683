//! RFC 7662 introspection answers, read as a verifier must: JSON without
//! duplicate keys, `active` a boolean, dates whole seconds. An active
//! token passes only if it has not expired (`exp`, with skew) and is not
//! yet to come (`nbf`), names our issuer in `iss` when it names one, and
//! our audience in `aud` (a string or a list) when it has one, or always
//! with `requireAudience`. Its subject is `sub`, else `client_id` (a
//! client acting for itself); a token with neither is refused.
//!
//! A bearer is introspected only when it is not a JWT (`is_jwt`): JWTs go
//! through their issuer's keys, on the same route.

use crate::token::strict_json;
use crate::token::verify::{Principal, Reject, MAX_NUMERIC_DATE};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// Largest answer accepted; larger ones are a fault of the endpoint.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// What an answer says, before our checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `active: true`, with the answer's members.
    Active(Value),
    /// `active: false`: revoked, expired, unknown, or not for us to know.
    Inactive,
}

/// Why an answer could not be read: the endpoint's fault, not the token's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// What a route expects of an active token.
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub require_audience: bool,
    pub skew: u64,
}

/// Whether a bearer is a JWT: three segments whose first is a base64url
/// JSON object. Anything else is opaque.
pub fn is_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v.is_object())
}

/// Reads an answer's body.
pub fn parse(body: &[u8]) -> Result<Answer, Malformed> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(Malformed("answer too large"));
    }
    let Some(Value::Object(members)) = strict_json::parse(body) else {
        return Err(Malformed("answer is not a JSON object"));
    };
    match members.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(Answer::Inactive),
        _ => return Err(Malformed("answer has no boolean active")),
    }
    for date in ["exp", "nbf", "iat"] {
        if members
            .get(date)
            .is_some_and(|v| v.as_u64().is_none_or(|n| n >= MAX_NUMERIC_DATE))
        {
            return Err(Malformed("a date is not whole seconds"));
        }
    }
    Ok(Answer::Active(Value::Object(members)))
}

/// Checks an active answer's members at `now` (seconds). `until` (seconds)
/// stands in for `exp` when the answer has none: how long it is trusted.
pub fn check(claims: &Value, expect: &Expect, now: u64, until: u64) -> Result<Principal, Reject> {
    let date = |name: &str| claims.get(name).and_then(Value::as_u64);
    if date("exp").is_some_and(|exp| now > exp.saturating_add(expect.skew)) {
        return Err(Reject::Expired);
    }
    if date("nbf").is_some_and(|nbf| nbf > now.saturating_add(expect.skew)) {
        return Err(Reject::NotYetValid);
    }
    match claims.get("iss") {
        None => {}
        Some(Value::String(iss)) if iss == expect.issuer => {}
        Some(_) => return Err(Reject::Issuer),
    }
    let audience_ok = match claims.get("aud") {
        None => !expect.require_audience,
        Some(Value::String(a)) => expect.audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| expect.audiences.iter().any(|e| e == a))),
        Some(_) => false,
    };
    if !audience_ok {
        return Err(Reject::Audience);
    }
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(String::from)
    };
    let (sub, client) = (text("sub"), text("client_id"));
    if sub.is_none() && client.is_none() {
        return Err(Reject::NoSubject);
    }
    let scopes = match claims.get("scope") {
        None => Vec::new(),
        Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).map(String::from).collect(),
        Some(_) => return Err(Reject::ScopeClaim),
    };
    Ok(Principal {
        sub: sub.or_else(|| client.clone()),
        client,
        exp: date("exp").unwrap_or(until),
        key_id: 0,
        scopes,
        claim_headers: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
