//! Google's second step after STS (which `rfc8693` speaks): with
//! `serviceAccountImpersonation`, the federated token buys a service
//! account's access token from IAM Credentials' generateAccessToken, in the
//! same pause. The forwarded token and its cache lifetime come from this
//! answer; the federated token is used once and never cached.

use super::answer::{access_token, Exchanged, Failure};
use super::{post_headers, Call, Step};
use plugin_config::Impersonation;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    access_token: Option<String>,
    expire_time: Option<String>,
}

/// Google's JSON error: `{"error": {"code", "message", "status"}}`.
#[derive(Deserialize)]
struct GoogleError {
    error: Option<GoogleErrorBody>,
}

#[derive(Deserialize)]
struct GoogleErrorBody {
    status: Option<String>,
    message: Option<String>,
}

/// `{"scope": [...], "lifetime": "3600s"}`.
pub fn impersonation_body(i: &Impersonation) -> String {
    json!({"scope": i.scopes, "lifetime": format!("{}s", i.lifetime_seconds)}).to_string()
}

pub fn impersonate<'a>(i: &'a Impersonation, federated_token: &str) -> Call<'a> {
    let e = &i.endpoint;
    Call {
        step: Step::Impersonate,
        endpoint: e,
        headers: [
            post_headers(e, "application/json"),
            vec![("authorization", format!("Bearer {federated_token}"))],
        ]
        .concat(),
        body: impersonation_body(i).into_bytes(),
    }
}

/// generateAccessToken's answer. A refusal of this user (403) is a 403 to
/// the caller; anything else that is not a token is our setup's problem.
pub fn impersonated(status: u16, body: &[u8]) -> Result<Exchanged, Failure> {
    if !(200..300).contains(&status) {
        let err = serde_json::from_slice::<GoogleError>(body).ok().and_then(|e| e.error);
        let label = err.as_ref().and_then(|e| e.status.clone()).unwrap_or_default();
        let message: String = err
            .and_then(|e| e.message)
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        log::info!("generateAccessToken answered HTTP {status} status={label:?} message={message:?}");
        return Err(match status {
            403 => Failure::InsufficientScope,
            429 => Failure::Unavailable("impersonation: HTTP 429".into()),
            _ => Failure::BadGateway(format!("impersonation: HTTP {status} {label}")),
        });
    }
    let ok: Answer =
        serde_json::from_slice(body).map_err(|_| Failure::BadGateway("impersonation: response is not JSON".into()))?;
    let access_token = access_token(ok.access_token).map_err(|f| f.at(Step::Impersonate))?;
    let expires_at = ok
        .expire_time
        .as_deref()
        .and_then(rfc3339)
        .ok_or_else(|| Failure::BadGateway("impersonation: no valid expireTime".into()))?;
    Ok(Exchanged {
        access_token,
        expires_in: None,
        expires_at: Some(expires_at),
        jwt_exp: None,
    })
}

/// Seconds since the epoch of an RFC 3339 UTC time as Google writes it
/// (`2014-10-02T15:01:23.045123456Z`; fractions ignored). Offsets other than
/// `Z` are refused rather than misread.
pub fn rfc3339(s: &str) -> Option<u64> {
    let (date, time) = s.split_once(['T', 't'])?;
    let time = time.strip_suffix(['Z', 'z'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<u64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || sec > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years ≥ 1970.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3_600 + m * 60 + sec)
}
