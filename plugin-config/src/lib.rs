//! Configuration for token-exchange-filter: parsed and validated once, up front,
//! so the filter never meets a half-valid setting at request time.
//!
//! Every error names the JSON path of the field at fault and says how to fix it,
//! because the only place a user sees it is one line of an Envoy log.

mod edge;
pub mod endpoint;
mod exchange;
mod keys;
pub mod provider;
mod raw;
mod rules;

pub use edge::{ClaimHeader, Cors, Mcp};
pub use endpoint::Endpoint;
pub use exchange::{AssertionAlg, Cache, ClientAssertion, ClientAuthMethod, Impersonation, Secret, TokenExchange};
pub use keys::{Discovery, KeySource};
pub use provider::Provider;
pub use rules::{Action as RuleAction, Exchange as RuleExchange, Match, Rule};

use raw::RawConfig;
use sha2::{Digest, Sha256};
use std::fmt;

/// A configuration error: the field's path and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub oidc: Oidc,
    /// Without it, the filter validates only.
    pub token_exchange: Option<TokenExchange>,
    pub cache: Cache,
    /// Per-route policy, first match wins; no match means the sections above.
    pub rules: Vec<Rule>,
    /// Origins that may read the filter's own replies.
    pub cors: Option<Cors>,
    /// One JSON line per decision.
    pub audit: bool,
    pub claim_to_headers: Vec<ClaimHeader>,
    pub mcp: Option<Mcp>,
    /// Hex SHA-256 of the canonical JSON: any change to the config changes it,
    /// so state keyed by it (shared data) never outlives the config that made it.
    pub fingerprint: String,
}

#[derive(Debug, Clone)]
pub struct Oidc {
    pub issuer: String,
    /// A token passes if its `aud` contains any of these.
    pub audiences: Vec<String>,
    /// Where the signing keys come from.
    pub keys: KeySource,
    pub required_scopes: Vec<String>,
    pub clock_skew_seconds: u64,
    pub resource: Option<Resource>,
    /// Upper bound on how long fetched keys are used before a refresh.
    pub jwks_refresh_seconds: u64,
    /// Accepted `typ` values, lower-case without `application/`; `None`:
    /// none or `JWT` or `at+jwt` (no other kind of JWT).
    pub allowed_token_types: Option<Vec<String>>,
}

/// The protected resource, for RFC 9728 metadata and `resource_metadata` challenges.
#[derive(Debug, Clone)]
pub struct Resource {
    pub url: String,
    /// Request path the filter answers with the metadata document.
    pub metadata_path: String,
    /// Absolute URL of that document, as advertised in challenges.
    pub metadata_url: String,
    pub scopes_supported: Vec<String>,
}

pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 300;
pub const DEFAULT_JWKS_REFRESH_SECONDS: u64 = 600;
pub const MIN_JWKS_REFRESH_SECONDS: u64 = 30;
pub const MAX_JWKS_REFRESH_SECONDS: u64 = 86_400;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// Parses and validates the plugin configuration (Envoy's `configuration`
/// string, or Istio's `pluginConfig` rendered as JSON). Secrets named by
/// `*Env` keys are read from the process environment (in wasm: the VM's,
/// set by `vm_config.environment_variables` or Istio's `vmConfig.env`).
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    parse_with_env(bytes, &|name| std::env::var(name).ok())
}

/// `parse`, with environment variables looked up by `env`.
pub fn parse_with_env(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ConfigError::new("", format!("configuration is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ConfigError::new("", "configuration must be a JSON object"));
    }
    // serde_json's maps are sorted, so this text is canonical.
    let fingerprint = hex(&Sha256::digest(value.to_string().as_bytes()));
    let raw: RawConfig = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, describe_serde_error(e.inner()))
    })?;
    validate(raw, fingerprint, env)
}

/// Turns serde's message into one that reads well after a field path.
fn describe_serde_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // serde_json appends " at line L column C", which means nothing for a value
    // that was already parsed once.
    let msg = match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    if msg.starts_with("unknown field") {
        format!("{msg}; remove it or fix its spelling")
    } else if msg.starts_with("data did not match any variant") {
        "must be a string or a list of strings".to_string()
    } else {
        msg
    }
}

fn validate(raw: RawConfig, fingerprint: String, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let o = raw.oidc;
    let allow_http = o.insecure_allow_http;

    non_empty("oidc.issuer", &o.issuer)?;
    let issuer_url = endpoint::parse_url("oidc.issuer", &o.issuer, allow_http)?;

    let audiences = o.audience.into_vec();
    if audiences.is_empty() {
        return Err(ConfigError::new("oidc.audience", "must name at least one audience"));
    }
    for (i, a) in audiences.iter().enumerate() {
        non_empty(&format!("oidc.audience[{i}]"), a)?;
    }

    if let Some(c) = &o.jwks_cluster {
        non_empty("oidc.jwksCluster", c)?;
    }
    let keys = match o.jwks_url.as_deref() {
        Some(u) => {
            let url = endpoint::parse_url("oidc.jwksUrl", u, allow_http)?;
            KeySource::Jwks(endpoint::endpoint(&url, o.jwks_cluster))
        }
        None => KeySource::Discovery(Discovery::new(&issuer_url, o.jwks_cluster, allow_http)?),
    };

    scope_list("oidc.requiredScopes", &o.required_scopes)?;

    let clock_skew_seconds = o.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS);
    if clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        return Err(ConfigError::new(
            "oidc.clockSkewSeconds",
            format!("must be between 0 and {MAX_CLOCK_SKEW_SECONDS}, got {clock_skew_seconds}"),
        ));
    }
    let allowed_token_types = match &o.allowed_token_types {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new(
                "oidc.allowedTokenTypes",
                "is empty, so no token would pass; list types such as at+jwt, or remove it",
            ))
        }
        Some(list) => {
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                non_empty(&format!("oidc.allowedTokenTypes[{i}]"), t)?;
                out.push(token_type_name(t));
            }
            Some(out)
        }
    };
    let jwks_refresh_seconds = o.jwks_refresh_seconds.unwrap_or(DEFAULT_JWKS_REFRESH_SECONDS);
    if !(MIN_JWKS_REFRESH_SECONDS..=MAX_JWKS_REFRESH_SECONDS).contains(&jwks_refresh_seconds) {
        return Err(ConfigError::new(
            "oidc.jwksRefreshSeconds",
            format!(
                "must be between {MIN_JWKS_REFRESH_SECONDS} and {MAX_JWKS_REFRESH_SECONDS}, \
                 got {jwks_refresh_seconds}"
            ),
        ));
    }

    if let Some(s) = &o.scopes_supported {
        scope_list("oidc.scopesSupported", s)?;
    }
    let resource = match o.resource_url {
        None => {
            if o.scopes_supported.is_some() {
                return Err(ConfigError::new(
                    "oidc.scopesSupported",
                    "is only used in protected-resource metadata; set oidc.resourceUrl too",
                ));
            }
            None
        }
        Some(r) => {
            let url = endpoint::parse_url("oidc.resourceUrl", &r, allow_http)?;
            if url.query().is_some() {
                return Err(ConfigError::new(
                    "oidc.resourceUrl",
                    "must not have a query (RFC 9728 §3); remove it",
                ));
            }
            Some(resource(
                &url,
                &r,
                o.scopes_supported.unwrap_or_else(|| o.required_scopes.clone()),
            ))
        }
    };

    let token_exchange = raw
        .token_exchange
        .map(|t| exchange::token_exchange(t, "tokenExchange", allow_http, env))
        .transpose()?;
    let cache = exchange::cache(raw.cache)?;
    let rules = rules::rules(raw.rules, allow_http, env)?;
    let cors = edge::cors(raw.cors)?;
    let claim_to_headers = edge::claim_headers(raw.claim_to_headers)?;
    let mcp = edge::mcp(raw.mcp, resource.as_ref())?;

    Ok(Config {
        token_exchange,
        cache,
        rules,
        cors,
        audit: raw.audit.unwrap_or(true),
        claim_to_headers,
        mcp,
        oidc: Oidc {
            issuer: o.issuer,
            audiences,
            keys,
            required_scopes: o.required_scopes,
            clock_skew_seconds,
            resource,
            jwks_refresh_seconds,
            allowed_token_types,
        },
        fingerprint,
    })
}

/// RFC 9728 §3.1: the well-known segment goes between the host and the
/// resource's path, so `https://h/mcp` is described at
/// `https://h/.well-known/oauth-protected-resource/mcp`.
fn resource(url: &url::Url, configured: &str, scopes_supported: Vec<String>) -> Resource {
    let path = url.path().trim_end_matches('/');
    let metadata_path = format!("{WELL_KNOWN}{path}");
    let origin = url.origin().ascii_serialization();
    // The configured string, not url's re-serialization, which adds a trailing
    // slash to a bare origin: `resource` must match what clients were told.
    Resource {
        url: configured.to_string(),
        metadata_url: format!("{origin}{metadata_path}"),
        metadata_path,
        scopes_supported,
    }
}

/// A `typ` value as compared: lower-case, without `application/` (RFC 7515 §4.1.9).
pub fn token_type_name(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    t.strip_prefix("application/").map(String::from).unwrap_or(t)
}

pub(crate) fn non_empty(path: &str, v: &str) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    Ok(())
}

/// Scopes end up inside quoted header parameters, so they must be RFC 6749
/// scope-tokens: printable ASCII without space, `"` or `\`.
pub(crate) fn scope_list(path: &str, scopes: &[String]) -> Result<(), ConfigError> {
    for (i, s) in scopes.iter().enumerate() {
        let p = format!("{path}[{i}]");
        non_empty(&p, s)?;
        let ok = s
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(ConfigError::new(
                p,
                format!("{s:?} is not a valid scope: use printable ASCII without spaces, '\"' or '\\'"),
            ));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
