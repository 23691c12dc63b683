//! Configuration for token-exchange-filter: parsed and validated once, up front,
//! so the filter never meets a half-valid setting at request time.
//!
//! Every error names the JSON path of the field at fault and says how to fix it,
//! because the only place a user sees it is one line of an Envoy log. Each
//! section has its module (`oidc`, `exchange` with its provider presets,
//! `rules`, `edge`, `keys`, `endpoint`, `introspection`); `raw` is the JSON as written, and
//! this module assembles the sections.

mod edge;
pub mod endpoint;
mod error;
mod exchange;
mod field;
mod introspection;
mod keys;
mod metadata;
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
pub use introspection::{Introspection, DEFAULT_INTROSPECTION_CACHE_SECONDS, MAX_INTROSPECTION_CACHE_SECONDS};
pub use keys::{Discovery, KeySource};
pub use metadata::Metadata;
pub use oidc::{
    Oidc, Resource, DEFAULT_CLOCK_SKEW_SECONDS, DEFAULT_JWKS_REFRESH_SECONDS, MAX_CLOCK_SKEW_SECONDS,
    MAX_JWKS_REFRESH_SECONDS, MIN_JWKS_REFRESH_SECONDS,
};
pub use rules::{Action as RuleAction, Exchange as RuleExchange, Match, Rule};

use raw::{RawConfig, RawOidc};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The top-level section; `None` where it is partial or absent, which
    /// only a config whose last rule matches every request may do.
    pub oidc: Option<Oidc>,
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
    /// Every protected resource's RFC 9728 document.
    pub metadata: Vec<Metadata>,
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
    let raw: RawConfig = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, describe_serde_error(e.inner()))
    })?;
    validate(raw, env)
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

fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let catch_all = raw.rules.last().is_some_and(rules::matches_everything);
    let top = match raw.oidc {
        Some(o) => o,
        None if catch_all => RawOidc::default(),
        None => {
            return Err(ConfigError::new(
                "oidc",
                "is required, unless the last rule matches every request ({\"match\": {}}) and every \
                 rule that is not skipped has a complete oidc of its own",
            ))
        }
    };
    // A partial top-level section is only a base for the rules' own, and
    // only where no request can fall through to it.
    let oidc = if top.is_complete() || !catch_all {
        Some(oidc::oidc(top.clone(), "oidc", env)?)
    } else {
        None
    };
    let allow_http = top.insecure_allow_http.unwrap_or(false);
    let token_exchange = raw
        .token_exchange
        .map(|t| exchange::token_exchange(t, "tokenExchange", allow_http, env))
        .transpose()?;
    let cache = exchange::cache(raw.cache)?;
    let rules = rules::rules(raw.rules, &top, env)?;
    let metadata = metadata::documents(sections(oidc.as_ref(), &rules))?;
    let cors = edge::cors(raw.cors)?;
    let claim_to_headers = edge::claim_headers(raw.claim_to_headers)?;
    let first_resource = sections(oidc.as_ref(), &rules).find_map(|(_, o)| o.resource.as_ref());
    let mcp = edge::mcp(raw.mcp, first_resource)?;

    Ok(Config {
        token_exchange,
        cache,
        rules,
        cors,
        audit: raw.audit.unwrap_or(true),
        claim_to_headers,
        mcp,
        metadata,
        oidc,
    })
}

/// Every validated `oidc` section with its path: the top-level one, then
/// each rule's.
fn sections<'a>(top: Option<&'a Oidc>, rules: &'a [Rule]) -> impl Iterator<Item = (String, &'a Oidc)> {
    let rule_sections = rules.iter().enumerate().filter_map(|(i, r)| match &r.action {
        RuleAction::Apply { oidc, .. } => Some((format!("rules[{i}].oidc"), oidc.as_ref())),
        RuleAction::Skip => None,
    });
    top.map(|o| ("oidc".to_string(), o)).into_iter().chain(rule_sections)
}

#[cfg(test)]
mod tests;
