//! Where the issuer's signing keys come from: a configured JWKS URL, or the
//! issuer's own metadata (OpenID Connect Discovery, then RFC 8414), the way
//! ToolHive finds them when `jwksUrl` is left out.

use crate::endpoint::{self, Endpoint};
use crate::error::ConfigError;
use std::fmt;
use url::Url;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `oidc.jwksUrl`.
    Jwks(Endpoint),
    /// No `oidc.jwksUrl`: the filter reads `jwks_uri` from the issuer's metadata.
    Discovery(Discovery),
}

/// The two metadata locations, tried in order, and what a discovered
/// `jwks_uri` is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery §4).
    pub openid: Endpoint,
    /// `/.well-known/oauth-authorization-server` between the issuer's host and
    /// path (RFC 8414 §3.1), asked for when the first is not there.
    pub oauth: Endpoint,
    /// `oidc.jwksCluster`: it serves the JWKS callout too. Without it, the
    /// JWKS goes to the default cluster of `jwks_uri`'s own host, which may
    /// differ from the issuer's.
    pub jwks_cluster: Option<String>,
    /// `oidc.insecureAllowHttp`, which a discovered `jwks_uri` obeys as a
    /// configured URL would.
    pub allow_http: bool,
}

impl Discovery {
    /// The metadata locations of `issuer`, a URL `parse_url` accepted.
    pub(crate) fn new(issuer: &Url, cluster: Option<String>, allow_http: bool) -> Result<Discovery, ConfigError> {
        if issuer.query().is_some() {
            // RFC 8414 §2: an issuer has no query, so there is nowhere to put one.
            return Err(ConfigError::new(
                "oidc.issuer",
                "must not have a query for discovery; remove it, or set oidc.jwksUrl",
            ));
        }
        let origin = issuer.origin().ascii_serialization();
        let path = issuer.path().trim_end_matches('/');
        let at = |url: String| -> Result<Endpoint, ConfigError> {
            let url = endpoint::parse_url("oidc.issuer", &url, allow_http)?;
            Ok(endpoint::endpoint(&url, cluster.clone()))
        };
        Ok(Discovery {
            openid: at(format!("{origin}{path}/.well-known/openid-configuration"))?,
            oauth: at(format!("{origin}/.well-known/oauth-authorization-server{path}"))?,
            jwks_cluster: cluster,
            allow_http,
        })
    }

    /// The endpoint for a `jwks_uri` read from the metadata, held to the
    /// rules of a configured URL; errors name the field `jwks_uri`.
    pub fn jwks(&self, jwks_uri: &str) -> Result<Endpoint, ConfigError> {
        let url = endpoint::parse_url("jwks_uri", jwks_uri, self.allow_http)?;
        Ok(endpoint::endpoint(&url, self.jwks_cluster.clone()))
    }
}

/// For the one line the filter logs when it is configured.
impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Jwks(e) => write!(f, "JWKS from {} via cluster {}", e.url, e.cluster),
            KeySource::Discovery(d) => write!(
                f,
                "JWKS URL from {} (else {}) via cluster {}",
                d.openid.url, d.oauth.url, d.openid.cluster
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(issuer: &str, cluster: Option<&str>) -> Discovery {
        let url = endpoint::parse_url("oidc.issuer", issuer, false).unwrap();
        Discovery::new(&url, cluster.map(str::to_string), false).unwrap()
    }

    #[test]
    fn issuer_without_path() {
        for issuer in ["https://idp.example.com", "https://idp.example.com/"] {
            let d = discovery(issuer, None);
            assert_eq!(d.openid.url, "https://idp.example.com/.well-known/openid-configuration");
            assert_eq!(d.openid.path, "/.well-known/openid-configuration");
            assert_eq!(
                d.oauth.url,
                "https://idp.example.com/.well-known/oauth-authorization-server"
            );
            assert_eq!(d.openid.cluster, "outbound|443||idp.example.com");
            assert_eq!(d.oauth.cluster, "outbound|443||idp.example.com");
        }
    }

    #[test]
    fn issuer_with_path_puts_rfc8414_between_host_and_path() {
        for issuer in ["http://127.0.0.1:9000/oauth2/mcp", "http://127.0.0.1:9000/oauth2/mcp/"] {
            let d = discovery(issuer, None);
            assert_eq!(d.openid.path, "/oauth2/mcp/.well-known/openid-configuration");
            assert_eq!(d.oauth.path, "/.well-known/oauth-authorization-server/oauth2/mcp");
            assert_eq!(d.oauth.authority, "127.0.0.1:9000");
            assert_eq!(d.oauth.scheme, "http");
            assert_eq!(d.oauth.cluster, "outbound|9000||127.0.0.1");
        }
    }

    #[test]
    fn jwks_cluster_serves_every_callout() {
        let d = discovery("https://idp.example.com/t", Some("idp"));
        assert_eq!(d.openid.cluster, "idp");
        assert_eq!(d.oauth.cluster, "idp");
        assert_eq!(d.jwks("https://keys.example.net/k").unwrap().cluster, "idp");
    }

    #[test]
    fn jwks_uri_defaults_to_its_own_hosts_cluster() {
        let d = discovery("https://idp.example.com", None);
        let e = d.jwks("https://keys.example.net:8443/k?v=1").unwrap();
        assert_eq!(e.cluster, "outbound|8443||keys.example.net");
        assert_eq!(e.authority, "keys.example.net:8443");
        assert_eq!(e.path, "/k?v=1");
    }

    #[test]
    fn jwks_uri_follows_the_config_url_rules() {
        let d = discovery("https://idp.example.com", None);
        for bad in ["/keys", "ftp://h/k", "https://u:p@h/k", "http://idp.example.com/k"] {
            assert_eq!(d.jwks(bad).unwrap_err().path, "jwks_uri", "{bad}");
        }
        assert!(d.jwks("http://127.0.0.1:1/k").is_ok(), "loopback may be http");
        let url = endpoint::parse_url("oidc.issuer", "https://idp.example.com", false).unwrap();
        let lax = Discovery::new(&url, None, true).unwrap();
        assert!(lax.jwks("http://idp.example.com/k").is_ok());
    }

    #[test]
    fn issuer_with_query_cannot_be_discovered() {
        let url = endpoint::parse_url("oidc.issuer", "https://idp.example.com/?t=1", false).unwrap();
        let e = Discovery::new(&url, None, false).unwrap_err();
        assert_eq!(e.path, "oidc.issuer");
        assert!(e.message.contains("oidc.jwksUrl"), "{e}");
    }
}
