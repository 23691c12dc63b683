//! `oidc.introspection`: bearers that are not JWTs (opaque access tokens)
//! are checked at the issuer's RFC 7662 introspection endpoint, with the
//! same client authentication keys as `tokenExchange` (`client_auth`).
//! Each `oidc` section, a rule's merged one included, has its own.

use crate::endpoint::{self, Endpoint};
use crate::error::ConfigError;
use crate::exchange::client_auth::client_auth;
use crate::exchange::{Client, ClientAuthMethod};
use crate::raw::RawIntrospection;

pub const DEFAULT_INTROSPECTION_CACHE_SECONDS: u64 = 60;
pub const MAX_INTROSPECTION_CACHE_SECONDS: u64 = 300;

#[derive(Debug, Clone)]
pub struct Introspection {
    /// Where it is in the config (`oidc.introspection`, `rules[1].oidc.introspection`).
    pub at: String,
    pub endpoint: Endpoint,
    pub client: Client,
    /// Longest an answer is used, if the token's `exp` is not sooner.
    pub cache_seconds: u64,
    /// An answer without `aud` is refused.
    pub require_audience: bool,
}

pub fn introspection(
    raw: RawIntrospection,
    at: &str,
    allow_http: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Introspection, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    let parsed = endpoint::required(
        &field("url"),
        raw.url.as_deref(),
        "the issuer's introspection endpoint (introspection_endpoint in its metadata)",
        &field("cluster"),
        raw.cluster.as_deref(),
        allow_http,
    )?;
    let url = raw.url.as_deref().unwrap_or_default();
    // RFC 7662 §2.1: the endpoint requires client authentication, so a
    // public client is refused here rather than by every introspection.
    let client = client_auth(&raw.client(), ClientAuthMethod::ClientSecretBasic, &field, url, env)?;
    if client.method == ClientAuthMethod::None {
        return Err(ConfigError::new(
            field("clientId"),
            "and clientSecretEnv (or private_key_jwt keys) are required: introspection endpoints \
             authenticate their callers (RFC 7662 §2.1)",
        ));
    }
    let cache_seconds = raw.cache_seconds.unwrap_or(DEFAULT_INTROSPECTION_CACHE_SECONDS);
    if !(1..=MAX_INTROSPECTION_CACHE_SECONDS).contains(&cache_seconds) {
        return Err(ConfigError::new(
            field("cacheSeconds"),
            format!("must be between 1 and {MAX_INTROSPECTION_CACHE_SECONDS}, got {cache_seconds}"),
        ));
    }
    Ok(Introspection {
        at: at.to_string(),
        endpoint: endpoint::endpoint(&parsed, raw.cluster),
        client,
        cache_seconds,
        require_audience: raw.require_audience.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests;
