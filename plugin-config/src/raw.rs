//! The configuration exactly as users write it: camelCase JSON, ToolHive's names.
//!
//! Every struct denies unknown keys, so a typo fails loudly instead of silently
//! disabling a check. Defaults and range checks live in `validate`, not here.
//!
//! Whole numbers are read with `number::opt_u64`: Istio hands `pluginConfig`
//! over as a protobuf `Struct`, whose numbers are all doubles, so `5000.0`
//! (or `1e+06`) must mean the same as `5000` (or `1000000`).

use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    /// Required, unless the last rule matches every request and every rule
    /// that is not skipped completes it with its own `oidc`.
    pub oidc: Option<RawOidc>,
    pub token_exchange: Option<RawTokenExchange>,
    pub cache: Option<RawCache>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub cors: Option<RawCors>,
    /// One JSON line per decision; on unless false.
    pub audit: Option<bool>,
    #[serde(default)]
    pub claim_to_headers: Vec<RawClaimHeader>,
    pub mcp: Option<RawMcp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCors {
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClaimHeader {
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMcp {
    /// Tool name -> scopes a `tools/call` of it needs.
    #[serde(default)]
    pub tool_scopes: std::collections::BTreeMap<String, Vec<String>>,
    /// Default: the path of oidc.resourceUrl.
    pub path: Option<String>,
    #[serde(default, deserialize_with = "number::opt_u64")]
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTokenExchange {
    pub provider: Option<String>,
    /// Required, except where the provider has a default (google-sts, entra-obo with tenantId).
    pub token_url: Option<String>,
    pub token_cluster: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret: Option<String>,
    pub client_auth_method: Option<String>,
    pub client_assertion_key_env: Option<String>,
    pub client_assertion_kid: Option<String>,
    pub client_assertion_alg: Option<String>,
    pub client_assertion_audience: Option<String>,
    pub client_assertion_cert_env: Option<String>,
    pub audience: Option<OneOrMany>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub subject_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub resource: Option<OneOrMany>,
    /// google-sts: a JSON object, or a string holding one.
    pub options: Option<serde_json::Value>,
    pub service_account_impersonation: Option<RawImpersonation>,
    pub external_token_header_name: Option<String>,
    #[serde(default, deserialize_with = "number::opt_u64")]
    pub timeout_ms: Option<u64>,
    /// Who acts for the user: `actor_token` (RFC 8693 §2.1).
    pub actor: Option<RawActor>,
    /// id-jag: the second step, an RFC 7523 JWT bearer grant at the resource
    /// authorization server. The same shape as this section (its endpoint
    /// and client keys, `scopes`, `resource`); validation refuses the rest.
    pub assertion_grant: Option<Box<RawTokenExchange>>,
}

/// The client keys of a section that authenticates at an endpoint
/// (`tokenExchange`, `assertionGrant`, `oidc.introspection`), as written.
#[derive(Debug, Clone, Default)]
pub struct RawClient {
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret: Option<String>,
    pub client_auth_method: Option<String>,
    pub client_assertion_key_env: Option<String>,
    pub client_assertion_kid: Option<String>,
    pub client_assertion_alg: Option<String>,
    pub client_assertion_audience: Option<String>,
    pub client_assertion_cert_env: Option<String>,
}

/// `oidc.introspection`: RFC 7662 for bearers that are not JWTs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIntrospection {
    pub url: Option<String>,
    pub cluster: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret: Option<String>,
    pub client_auth_method: Option<String>,
    pub client_assertion_key_env: Option<String>,
    pub client_assertion_kid: Option<String>,
    pub client_assertion_alg: Option<String>,
    pub client_assertion_audience: Option<String>,
    pub client_assertion_cert_env: Option<String>,
    #[serde(default, deserialize_with = "number::opt_u64")]
    pub cache_seconds: Option<u64>,
    pub require_audience: Option<bool>,
}

/// `client()`: the client keys of a section that has them all, in one place.
macro_rules! client_keys {
    ($($section:ty),*) => {$(
        impl $section {
            /// The keys that say how the filter authenticates as a client.
            pub fn client(&self) -> RawClient {
                RawClient {
                    client_id: self.client_id.clone(),
                    client_secret_env: self.client_secret_env.clone(),
                    client_secret: self.client_secret.clone(),
                    client_auth_method: self.client_auth_method.clone(),
                    client_assertion_key_env: self.client_assertion_key_env.clone(),
                    client_assertion_kid: self.client_assertion_kid.clone(),
                    client_assertion_alg: self.client_assertion_alg.clone(),
                    client_assertion_audience: self.client_assertion_audience.clone(),
                    client_assertion_cert_env: self.client_assertion_cert_env.clone(),
                }
            }
        }
    )*};
}
client_keys!(RawTokenExchange, RawIntrospection);

/// `tokenExchange.actor`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawActor {
    /// `clientCredentials` or `env`.
    pub source: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub env: Option<String>,
    pub token_type: Option<String>,
}

/// google-sts: the second step, IAM Credentials' generateAccessToken.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawImpersonation {
    pub url: String,
    pub cluster: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, deserialize_with = "number::opt_u64")]
    pub lifetime_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCache {
    #[serde(default, deserialize_with = "number::opt_u64")]
    pub max_entries: Option<u64>,
    #[serde(default, deserialize_with = "number::opt_u64")]
    pub expiry_skew_seconds: Option<u64>,
}

/// An `oidc` section, or a rule's partial one: every key is optional here,
/// since a rule's keys are merged over the top-level ones before the
/// result is validated.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawOidc {
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany>,
    pub jwks_url: Option<String>,
    pub jwks_cluster: Option<String>,
    pub required_scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "number::opt_u64")]
    pub clock_skew_seconds: Option<u64>,
    pub resource_url: Option<String>,
    pub scopes_supported: Option<Vec<String>>,
    #[serde(default, deserialize_with = "number::opt_u64")]
    pub jwks_refresh_seconds: Option<u64>,
    pub insecure_allow_http: Option<bool>,
    pub allowed_token_types: Option<Vec<String>>,
    /// Replaced whole by a rule's own, never merged key by key: each
    /// resource may have its own endpoint and client.
    pub introspection: Option<RawIntrospection>,
}

impl RawOidc {
    /// `self`'s keys over `base`'s, key by key.
    pub fn over(&self, base: &RawOidc) -> RawOidc {
        let b = base.clone();
        let s = self.clone();
        RawOidc {
            issuer: s.issuer.or(b.issuer),
            audience: s.audience.or(b.audience),
            jwks_url: s.jwks_url.or(b.jwks_url),
            jwks_cluster: s.jwks_cluster.or(b.jwks_cluster),
            required_scopes: s.required_scopes.or(b.required_scopes),
            clock_skew_seconds: s.clock_skew_seconds.or(b.clock_skew_seconds),
            resource_url: s.resource_url.or(b.resource_url),
            scopes_supported: s.scopes_supported.or(b.scopes_supported),
            jwks_refresh_seconds: s.jwks_refresh_seconds.or(b.jwks_refresh_seconds),
            insecure_allow_http: s.insecure_allow_http.or(b.insecure_allow_http),
            allowed_token_types: s.allowed_token_types.or(b.allowed_token_types),
            introspection: s.introspection.or(b.introspection),
        }
    }

    /// Whether the keys every `oidc` needs are there.
    pub fn is_complete(&self) -> bool {
        self.issuer.is_some() && self.audience.is_some()
    }
}

/// One entry of `rules`: which requests it matches, and what it changes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRule {
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    #[serde(default)]
    pub skip: bool,
    /// Merged over the top-level `oidc`.
    pub oidc: Option<RawOidc>,
    /// An alias of `oidc.requiredScopes`.
    pub required_scopes: Option<Vec<String>>,
    /// Absent: the top-level `tokenExchange`; `null`: validate only.
    #[serde(default, deserialize_with = "present")]
    pub token_exchange: Option<Option<RawTokenExchange>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMatch {
    pub hosts: Option<Vec<String>>,
    pub path_prefix: Option<String>,
}

/// Tells a key given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `audience` (and `resource`) may be one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
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

pub mod number {
    use serde::de::{Error, Unexpected};
    use serde::{Deserialize, Deserializer};

    /// Largest integer a double holds exactly.
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(u64),
        Float(f64),
    }

    /// A whole, non-negative number, written as an integer or as a double
    /// with no fractional part.
    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let Some(n) = Option::<serde_json::Value>::deserialize(d)? else {
            return Ok(None);
        };
        let expected = "a whole number";
        match Num::deserialize(&n) {
            Ok(Num::Int(i)) => Ok(Some(i)),
            Ok(Num::Float(f)) if f.fract() == 0.0 && (0.0..=MAX_EXACT).contains(&f) => Ok(Some(f as u64)),
            Ok(Num::Float(f)) => Err(D::Error::invalid_value(Unexpected::Float(f), &expected)),
            Err(_) => Err(D::Error::invalid_type(unexpected(&n), &expected)),
        }
    }

    fn unexpected(v: &serde_json::Value) -> Unexpected<'_> {
        match v {
            serde_json::Value::Bool(b) => Unexpected::Bool(*b),
            serde_json::Value::String(s) => Unexpected::Str(s),
            serde_json::Value::Array(_) => Unexpected::Seq,
            serde_json::Value::Object(_) => Unexpected::Map,
            _ => Unexpected::Other("a value"),
        }
    }
}
