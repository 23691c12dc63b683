//! Google Security Token Service (workload or workforce identity
//! federation): an external token (an ID token or JWT) for a federated
//! Google access token, with no client authentication. Optionally a second
//! step turns that into a service account's access token
//! (`serviceAccountImpersonation`, IAM Credentials' generateAccessToken).

use super::kind::Provider;
use super::{short, Field};
use crate::endpoint;
use crate::error::ConfigError;
use crate::exchange::model::{ClientAuthMethod, Impersonation, TokenExchange};
use crate::field::scope_list;
use crate::raw::{RawImpersonation, RawTokenExchange};

pub const STS_URL: &str = "https://sts.googleapis.com/v1/token";
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const DEFAULT_LIFETIME_SECONDS: u64 = 3_600;
/// Google's ceiling, reachable only where an org policy allows more than an hour.
pub const MAX_LIFETIME_SECONDS: u64 = 43_200;
const WORKLOAD: &str =
    "//iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>";

pub fn defaults(raw: &mut RawTokenExchange, _field: Field) -> Result<(), ConfigError> {
    raw.token_url.get_or_insert_with(|| STS_URL.to_string());
    raw.subject_token_type.get_or_insert_with(|| "jwt".to_string());
    if raw.scopes.is_empty() {
        raw.scopes.push(CLOUD_PLATFORM.to_string());
    }
    Ok(())
}

pub fn check(te: &TokenExchange, field: Field) -> Result<(), ConfigError> {
    let p = Provider::GoogleSts;
    if te.client.method != ClientAuthMethod::None || te.client.id.is_some() {
        return Err(p.error(
            field,
            if te.client.id.is_some() {
                "clientId"
            } else {
                "clientAuthMethod"
            },
            "takes no client authentication: the subject token is the credential; remove the client settings",
        ));
    }
    match te.audiences.as_slice() {
        [a] if is_provider(a) => {}
        _ => {
            return Err(p.error(
                field,
                "audience",
                &format!("requires the workload identity provider, {WORKLOAD}"),
            ))
        }
    }
    if !matches!(short(&te.subject_token_type), "id_token" | "jwt") {
        return Err(p.error(
            field,
            "subjectTokenType",
            &format!(
                "federates OIDC tokens: use id_token or jwt, got {}",
                short(&te.subject_token_type)
            ),
        ));
    }
    if te.requested_token_type.as_deref().map(short) != Some("access_token") {
        return Err(p.error(
            field,
            "requestedTokenType",
            "issues access tokens only: use access_token",
        ));
    }
    if !te.resources.is_empty() {
        return Err(p.error(field, "resource", "does not take resource; remove it"));
    }
    Ok(())
}

/// `//iam.googleapis.com/projects/<n>/locations/global/workloadIdentityPools/<pool>/providers/<p>`
/// or the workforce form `//iam.googleapis.com/locations/global/workforcePools/<pool>/providers/<p>`.
fn is_provider(audience: &str) -> bool {
    let Some(rest) = audience.strip_prefix("//iam.googleapis.com/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let named = |i: usize| parts.get(i).is_some_and(|s| !s.is_empty());
    match parts.as_slice() {
        ["projects", n, "locations", "global", "workloadIdentityPools", _, "providers", _] => {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && named(5) && named(7)
        }
        ["locations", "global", "workforcePools", _, "providers", _] => named(3) && named(5),
        _ => false,
    }
}

pub fn impersonation(at: &str, raw: RawImpersonation, allow_http: bool) -> Result<Impersonation, ConfigError> {
    let path = format!("{at}.url");
    let url = endpoint::parse_url(&path, &raw.url, allow_http)?;
    let ok = url
        .path()
        .strip_prefix("/v1/projects/")
        .and_then(|p| p.split_once("/serviceAccounts/"))
        .and_then(|(_, sa)| sa.strip_suffix(":generateAccessToken"))
        .is_some_and(|sa| !sa.is_empty() && !sa.contains('/'));
    if !ok {
        return Err(ConfigError::new(
            path,
            "must be https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/<SA email>:generateAccessToken",
        ));
    }
    if let Some(c) = &raw.cluster {
        crate::field::non_empty(&format!("{at}.cluster"), c)?;
    }
    let mut scopes = raw.scopes;
    scope_list(&format!("{at}.scopes"), &scopes)?;
    if scopes.is_empty() {
        scopes.push(CLOUD_PLATFORM.to_string());
    }
    let lifetime_seconds = raw.lifetime_seconds.unwrap_or(DEFAULT_LIFETIME_SECONDS);
    if !(1..=MAX_LIFETIME_SECONDS).contains(&lifetime_seconds) {
        return Err(ConfigError::new(
            format!("{at}.lifetimeSeconds"),
            format!("must be between 1 and {MAX_LIFETIME_SECONDS}, got {lifetime_seconds}"),
        ));
    }
    Ok(Impersonation {
        endpoint: endpoint::endpoint(&url, raw.cluster),
        scopes,
        lifetime_seconds,
    })
}
