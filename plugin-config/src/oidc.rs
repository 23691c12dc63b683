//! The `oidc` section: who issues the caller's token, which audiences and
//! scopes it must carry, where the signing keys are, and the protected
//! resource that RFC 9728 metadata and challenges describe.

use crate::endpoint;
use crate::error::ConfigError;
use crate::field::{non_empty, scope_list, token_type_name};
use crate::introspection::{self, Introspection};
use crate::keys::{Discovery, KeySource};
use crate::raw::{OneOrMany, RawOidc};

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
    /// `insecureAllowHttp`: plain-HTTP URLs allowed everywhere (local demos).
    pub allow_http: bool,
    /// Opaque bearers are introspected here; without it they are refused.
    pub introspection: Option<Introspection>,
}

/// The protected resource, for RFC 9728 metadata and `resource_metadata` challenges.
#[derive(Debug, Clone)]
pub struct Resource {
    pub url: String,
    /// The URL's host, lower-case, with its port when one is written.
    pub host: String,
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

/// Validates an `oidc` section found at `at` (`oidc`, or a rule's merged
/// one, `rules[2].oidc`), so every error names its real path. `env`
/// gives the introspection client's secrets.
pub fn oidc(mut o: RawOidc, at: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Oidc, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    let allow_http = o.insecure_allow_http.unwrap_or(false);
    let Some(issuer) = o.issuer.clone() else {
        return Err(ConfigError::new(
            field("issuer"),
            "is required: the URL of the token issuer",
        ));
    };
    non_empty(&field("issuer"), &issuer)?;
    let issuer_url = endpoint::parse_url(&field("issuer"), &issuer, allow_http)?;
    let keys = key_source(&o, &issuer_url, &field)?;
    let audiences = audiences(o.audience.take(), &field("audience"))?;
    let required_scopes = o.required_scopes.unwrap_or_default();
    scope_list(&field("requiredScopes"), &required_scopes)?;
    let clock_skew_seconds = o.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS);
    within(
        &field("clockSkewSeconds"),
        clock_skew_seconds,
        0,
        MAX_CLOCK_SKEW_SECONDS,
    )?;
    let jwks_refresh_seconds = o.jwks_refresh_seconds.unwrap_or(DEFAULT_JWKS_REFRESH_SECONDS);
    within(
        &field("jwksRefreshSeconds"),
        jwks_refresh_seconds,
        MIN_JWKS_REFRESH_SECONDS,
        MAX_JWKS_REFRESH_SECONDS,
    )?;
    let allowed_token_types = match &o.allowed_token_types {
        None => None,
        Some(list) => Some(token_types(&field("allowedTokenTypes"), list)?),
    };
    let resource = protected_resource(
        o.resource_url.as_deref(),
        o.scopes_supported,
        &required_scopes,
        &field,
        allow_http,
    )?;
    let introspection = o
        .introspection
        .take()
        .map(|i| introspection::introspection(i, &field("introspection"), allow_http, env))
        .transpose()?;
    Ok(Oidc {
        introspection,
        issuer,
        audiences,
        keys,
        required_scopes,
        clock_skew_seconds,
        resource,
        jwks_refresh_seconds,
        allowed_token_types,
        allow_http,
    })
}

/// `jwksUrl`, else discovery from the issuer; `jwksCluster` serves either.
fn key_source(o: &RawOidc, issuer: &url::Url, field: &dyn Fn(&str) -> String) -> Result<KeySource, ConfigError> {
    let allow_http = o.insecure_allow_http.unwrap_or(false);
    if let Some(c) = &o.jwks_cluster {
        non_empty(&field("jwksCluster"), c)?;
    }
    Ok(match o.jwks_url.as_deref() {
        Some(u) => {
            let url = endpoint::parse_url(&field("jwksUrl"), u, allow_http)?;
            KeySource::Jwks(endpoint::endpoint(&url, o.jwks_cluster.clone()))
        }
        None => KeySource::Discovery(Discovery::new(issuer, o.jwks_cluster.clone(), allow_http)?),
    })
}

fn audiences(audience: Option<OneOrMany>, path: &str) -> Result<Vec<String>, ConfigError> {
    let audiences = audience.map(OneOrMany::into_vec).unwrap_or_default();
    if audiences.is_empty() {
        return Err(ConfigError::new(path, "must name at least one audience"));
    }
    for (i, a) in audiences.iter().enumerate() {
        non_empty(&format!("{path}[{i}]"), a)?;
    }
    Ok(audiences)
}

fn within(path: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            format!("must be between {min} and {max}, got {value}"),
        ))
    }
}

/// `allowedTokenTypes`: a non-empty list, compared as `token_type_name` does.
fn token_types(path: &str, list: &[String]) -> Result<Vec<String>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(
            path,
            "is empty, so no token would pass; list types such as at+jwt, or remove it",
        ));
    }
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        non_empty(&format!("{path}[{i}]"), t)?;
        out.push(token_type_name(t));
    }
    Ok(out)
}

/// `resourceUrl` and `scopesSupported`: the RFC 9728 resource, if any.
fn protected_resource(
    url: Option<&str>,
    scopes_supported: Option<Vec<String>>,
    required_scopes: &[String],
    field: &dyn Fn(&str) -> String,
    allow_http: bool,
) -> Result<Option<Resource>, ConfigError> {
    if let Some(s) = &scopes_supported {
        scope_list(&field("scopesSupported"), s)?;
    }
    let Some(r) = url else {
        if scopes_supported.is_some() {
            return Err(ConfigError::new(
                field("scopesSupported"),
                format!(
                    "is only used in protected-resource metadata; set {} too",
                    field("resourceUrl")
                ),
            ));
        }
        return Ok(None);
    };
    let parsed = endpoint::parse_url(&field("resourceUrl"), r, allow_http)?;
    if parsed.query().is_some() {
        return Err(ConfigError::new(
            field("resourceUrl"),
            "must not have a query (RFC 9728 §3); remove it",
        ));
    }
    let scopes = scopes_supported.unwrap_or_else(|| required_scopes.to_vec());
    Ok(Some(resource(&parsed, r, scopes)))
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
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    Resource {
        url: configured.to_string(),
        host: match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        },
        metadata_url: format!("{origin}{metadata_path}"),
        metadata_path,
        scopes_supported,
    }
}
