//! An outbound HTTP endpoint, resolved once at configure time into what a
//! proxy-wasm callout needs: cluster name and the four pseudo-headers.

use crate::error::ConfigError;
use std::net::IpAddr;
use url::{Host, Url};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as configured.
    pub url: String,
    /// Envoy cluster the callout goes to.
    pub cluster: String,
    pub scheme: String,
    /// `host[:port]`, the port only when it is not the scheme's default.
    pub authority: String,
    /// Path plus query, as sent in `:path`.
    pub path: String,
}

/// Parses an absolute http(s) URL for the field at `path`.
///
/// Plain http is accepted only for loopback hosts, unless `allow_http` is set:
/// a bearer token or client secret must not cross a network in clear text by accident.
pub fn parse_url(path: &str, value: &str, allow_http: bool) -> Result<Url, ConfigError> {
    let bad = || ConfigError::new(path, format!("must be an absolute http(s) URL, got {value:?}"));
    // Host names are ASCII here (no IDNA tables in the module, see
    // Cargo.toml): an internationalized name is written in its xn-- form.
    let url = Url::parse(value).map_err(|_| match value.is_ascii() {
        true => bad(),
        false => ConfigError::new(
            path,
            format!("must be an absolute http(s) URL with an ASCII host name (write an internationalized one in its xn-- form), got {value:?}"),
        ),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            path,
            "must not carry credentials in the URL; remove the user:password@ part",
        ));
    }
    if url.fragment().is_some() {
        return Err(ConfigError::new(path, "must not have a #fragment; remove it"));
    }
    if url.scheme() == "http" && !allow_http && !is_loopback(&url) {
        return Err(ConfigError::new(
            path,
            format!(
                "plain http is only allowed for loopback hosts, got {value:?}; \
                 use https, or set oidc.insecureAllowHttp: true"
            ),
        ));
    }
    Ok(url)
}

/// A required URL key (`url_key`, naming `what` in its error) and the
/// optional cluster key beside it, checked.
pub fn required(
    url_key: &str,
    url: Option<&str>,
    what: &str,
    cluster_key: &str,
    cluster: Option<&str>,
    allow_http: bool,
) -> Result<Url, ConfigError> {
    let Some(url) = url else {
        return Err(ConfigError::new(url_key, format!("is required: {what}")));
    };
    let parsed = parse_url(url_key, url, allow_http)?;
    if cluster.is_some_and(|c| c.trim().is_empty()) {
        return Err(ConfigError::new(cluster_key, "must not be empty"));
    }
    Ok(parsed)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Builds the endpoint for `url`; without an explicit cluster, uses Istio's
/// outbound cluster name for the URL's host, `outbound|<port>||<host>`, so that
/// under Istio a ServiceEntry is all it takes.
pub fn endpoint(url: &Url, cluster: Option<String>) -> Endpoint {
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    Endpoint {
        url: url.to_string(),
        cluster: cluster.unwrap_or_else(|| format!("outbound|{port}||{host}")),
        scheme: url.scheme().to_string(),
        authority,
        path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(u: &str) -> Endpoint {
        endpoint(&parse_url("x", u, false).unwrap(), None)
    }

    #[test]
    fn istio_cluster_name_defaults_from_scheme_port() {
        let e = ep("https://idp.example.com/oauth2/v1/keys?x=1");
        assert_eq!(e.cluster, "outbound|443||idp.example.com");
        assert_eq!(e.authority, "idp.example.com");
        assert_eq!(e.path, "/oauth2/v1/keys?x=1");
        assert_eq!(e.scheme, "https");
        let e = ep("http://127.0.0.1:9000/jwks");
        assert_eq!(e.cluster, "outbound|9000||127.0.0.1");
        assert_eq!(e.authority, "127.0.0.1:9000");
        assert_eq!(ep("http://localhost/k").cluster, "outbound|80||localhost");
    }

    #[test]
    fn explicit_cluster_wins() {
        let u = parse_url("x", "https://idp.example.com/k", false).unwrap();
        assert_eq!(endpoint(&u, Some("idp".into())).cluster, "idp");
    }

    #[test]
    fn rejects_relative_and_other_schemes() {
        for bad in ["keys", "/keys", "ftp://h/k", "file:///etc/passwd", ""] {
            let e = parse_url("oidc.jwksUrl", bad, false).unwrap_err();
            assert_eq!(e.path, "oidc.jwksUrl");
            assert!(e.message.contains("absolute http(s) URL"), "{e}");
        }
    }

    #[test]
    fn http_only_on_loopback_unless_allowed() {
        assert!(parse_url("x", "http://127.0.0.2:1/k", false).is_ok());
        assert!(parse_url("x", "http://[::1]:1/k", false).is_ok());
        let e = parse_url("x", "http://idp.internal/k", false).unwrap_err();
        assert!(e.message.contains("insecureAllowHttp"), "{e}");
        assert!(parse_url("x", "http://idp.internal/k", true).is_ok());
    }

    #[test]
    fn internationalized_host_names_in_their_ascii_form() {
        let e = parse_url("oidc.issuer", "https://bücher.example/", false).unwrap_err();
        assert_eq!(e.path, "oidc.issuer");
        assert!(e.message.contains("xn-- form"), "{e}");
        assert_eq!(
            ep("https://xn--bcher-kva.example/k").cluster,
            "outbound|443||xn--bcher-kva.example"
        );
        assert_eq!(ep("https://idp.example/ü").path, "/%C3%BC");
    }

    #[test]
    fn rejects_credentials_and_fragments() {
        assert!(parse_url("x", "https://u:p@h/k", false).is_err());
        assert!(parse_url("x", "https://h/k#f", false).is_err());
    }
}
