//! Configuration for token-exchange-filter: parsed and validated once, up front,
//! so the filter never meets a half-valid setting at request time.
//!
//! Every error names the JSON path of the field at fault and says how to fix it,
//! because the only place a user sees it is one line of an Envoy log. Each
//! section has its module (`oidc`, `exchange` with its provider presets,
//! `rules`, `edge`, `keys`, `endpoint`); `raw` is the JSON as written, and
//! this module assembles the sections.

mod edge;
pub mod endpoint;
mod error;
mod exchange;
mod field;
mod keys;
mod oidc;
mod raw;
mod rules;

pub use edge::{ClaimHeader, Cors, Mcp};
pub use endpoint::Endpoint;
pub use error::ConfigError;
pub use exchange::{
    Actor, AssertionAlg, AssertionGrant, Cache, Client, ClientAssertion, ClientAuthMethod, Impersonation, Provider,
    Secret, TokenExchange, ID_JAG,
};
pub use field::token_type_name;
pub use keys::{Discovery, KeySource};
pub use oidc::{
    Oidc, Resource, DEFAULT_CLOCK_SKEW_SECONDS, DEFAULT_JWKS_REFRESH_SECONDS, MAX_CLOCK_SKEW_SECONDS,
    MAX_JWKS_REFRESH_SECONDS, MIN_JWKS_REFRESH_SECONDS,
};
pub use rules::{Action as RuleAction, Exchange as RuleExchange, Match, Rule};

use raw::RawConfig;
use sha2::{Digest, Sha256};

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
    let oidc = oidc::oidc(raw.oidc, "oidc")?;
    let allow_http = oidc.allow_http;
    let token_exchange = raw
        .token_exchange
        .map(|t| exchange::token_exchange(t, "tokenExchange", allow_http, env))
        .transpose()?;
    let cache = exchange::cache(raw.cache)?;
    let rules = rules::rules(raw.rules, allow_http, env)?;
    let cors = edge::cors(raw.cors)?;
    let claim_to_headers = edge::claim_headers(raw.claim_to_headers)?;
    let mcp = edge::mcp(raw.mcp, oidc.resource.as_ref())?;

    Ok(Config {
        token_exchange,
        cache,
        rules,
        cors,
        audit: raw.audit.unwrap_or(true),
        claim_to_headers,
        mcp,
        oidc,
        fingerprint,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
