//! The `oidc` section: who issues the caller's token, which audiences and
//! scopes it must carry, where the signing keys are, and the protected
//! resource that RFC 9728 metadata and challenges describe.

use crate::endpoint;
use crate::error::ConfigError;
use crate::field::{non_empty, scope_list, token_type_name};
use crate::keys::{Discovery, KeySource};
use crate::raw::RawOidc;

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

/// Validates the `oidc` section.
pub fn oidc(o: RawOidc) -> Result<Oidc, ConfigError> {
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

    Ok(Oidc {
        issuer: o.issuer,
        audiences,
        keys,
        required_scopes: o.required_scopes,
        clock_skew_seconds,
        resource,
        jwks_refresh_seconds,
        allowed_token_types,
        allow_http,
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
