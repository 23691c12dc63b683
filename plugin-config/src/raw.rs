//! The configuration exactly as users write it: camelCase JSON, ToolHive's names.
//!
//! Every struct denies unknown keys, so a typo fails loudly instead of silently
//! disabling a check. Defaults and range checks live in `validate`, not here.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    pub oidc: RawOidc,
    pub token_exchange: Option<RawTokenExchange>,
    pub cache: Option<RawCache>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTokenExchange {
    pub token_url: String,
    pub token_cluster: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret: Option<String>,
    pub client_auth_method: Option<String>,
    pub audience: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub subject_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub resource: Option<String>,
    pub external_token_header_name: Option<String>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCache {
    pub max_entries: Option<u64>,
    pub expiry_skew_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawOidc {
    pub issuer: String,
    pub audience: OneOrMany,
    pub jwks_url: String,
    pub jwks_cluster: Option<String>,
    #[serde(default)]
    pub required_scopes: Vec<String>,
    pub clock_skew_seconds: Option<u64>,
    pub resource_url: Option<String>,
    pub scopes_supported: Option<Vec<String>>,
    pub jwks_refresh_seconds: Option<u64>,
    #[serde(default)]
    pub insecure_allow_http: bool,
}

/// `audience` may be one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}
