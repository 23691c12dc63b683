//! What the client is told when it may not pass: RFC 6750 `WWW-Authenticate`
//! challenges, JSON error bodies, and the RFC 9728 protected-resource metadata
//! that tells an MCP client where to get a token.

use base64::Engine;
use plugin_config::{Metadata, Oidc};
use serde_json::json;

pub const MISSING_TOKEN: &str = "missing bearer token";
/// The IdP refused to exchange the caller's token.
pub const EXCHANGE_REFUSED: &str = "token exchange refused";

/// Why a request was refused, as metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    MissingToken,
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
    InsufficientClaims,
    BodyTooLarge,
    /// The IdP refused to exchange the caller's token (`invalid_grant`).
    ExchangeRefused,
    BadGateway,
    Unavailable,
    Timeout,
}

/// A local response that stops the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenialKind,
    pub status: u32,
    pub www_authenticate: Option<String>,
    pub retry_after: Option<u32>,
    pub error: &'static str,
    pub description: &'static str,
}

impl Denial {
    /// `{"error": …, "error_description": …}`; both are fixed strings of ours.
    pub fn body(&self) -> String {
        json!({"error": self.error, "error_description": self.description}).to_string()
    }
}

/// Builds challenges for one configuration; the parts that never change are
/// rendered once.
#[derive(Debug, Clone)]
pub struct Challenges {
    /// `resource_metadata="…"`, if a resource is configured.
    metadata_param: Option<String>,
    scope_param: Option<String>,
}

impl Challenges {
    /// The challenges of a route checked against `o`.
    pub fn new(o: &Oidc) -> Challenges {
        Challenges {
            metadata_param: o
                .resource
                .as_ref()
                .map(|r| format!("resource_metadata=\"{}\"", r.metadata_url)),
            scope_param: scope_param(&o.required_scopes),
        }
    }

    /// Challenges naming no resource and no scope, for refusals made before
    /// a route is known.
    pub fn bare() -> Challenges {
        Challenges {
            metadata_param: None,
            scope_param: None,
        }
    }

    /// The same challenges for a route that requires `scopes` instead.
    pub fn with_scopes(&self, scopes: &[String]) -> Challenges {
        Challenges {
            metadata_param: self.metadata_param.clone(),
            scope_param: scope_param(scopes),
        }
    }

    fn header(&self, error: Option<(&str, &str)>, scope: bool) -> String {
        let mut params: Vec<String> = Vec::new();
        if let Some((code, desc)) = error {
            params.push(format!("error=\"{code}\""));
            params.push(format!("error_description=\"{desc}\""));
        }
        if scope {
            params.extend(self.scope_param.clone());
        }
        params.extend(self.metadata_param.clone());
        if params.is_empty() {
            "Bearer".to_string()
        } else {
            format!("Bearer {}", params.join(", "))
        }
    }

    /// No credentials at all: RFC 6750 §3.1 says no error code.
    pub fn missing_token(&self) -> Denial {
        Denial {
            kind: DenialKind::MissingToken,
            status: 401,
            www_authenticate: Some(self.header(None, true)),
            retry_after: None,
            error: "invalid_token",
            description: MISSING_TOKEN,
        }
    }

    pub fn invalid_token(&self, description: &'static str) -> Denial {
        Denial {
            kind: DenialKind::InvalidToken,
            status: 401,
            www_authenticate: Some(self.header(Some(("invalid_token", description)), false)),
            retry_after: None,
            error: "invalid_token",
            description,
        }
    }

    /// The IdP refused to exchange the caller's token: to the client, its
    /// token is not good here.
    pub fn exchange_refused(&self) -> Denial {
        Denial {
            kind: DenialKind::ExchangeRefused,
            ..self.invalid_token(EXCHANGE_REFUSED)
        }
    }

    pub fn invalid_request(&self, description: &'static str) -> Denial {
        Denial {
            kind: DenialKind::InvalidRequest,
            status: 400,
            www_authenticate: Some(self.header(Some(("invalid_request", description)), false)),
            retry_after: None,
            error: "invalid_request",
            description,
        }
    }

    /// 403 naming every required scope, so the client can step up.
    pub fn insufficient_scope(&self) -> Denial {
        Denial {
            kind: DenialKind::InsufficientScope,
            status: 403,
            www_authenticate: Some(self.header(Some(("insufficient_scope", "insufficient scope")), true)),
            retry_after: None,
            error: "insufficient_scope",
            description: "insufficient scope",
        }
    }

    /// The IdP wants more of the user (Entra's Conditional Access): the
    /// client should sign the user in again asking for `claims`, which Entra
    /// gives as JSON and challenges carry base64-encoded, as Microsoft's own
    /// do, so no quoting can break the header.
    pub fn insufficient_claims(&self, claims: Option<&str>) -> Denial {
        let mut header = self.header(Some(("insufficient_claims", "additional claims are required")), false);
        if let Some(c) = claims {
            header.push_str(&format!(
                ", claims=\"{}\"",
                base64::engine::general_purpose::STANDARD.encode(c)
            ));
        }
        Denial {
            kind: DenialKind::InsufficientClaims,
            status: 401,
            www_authenticate: Some(header),
            retry_after: None,
            error: "insufficient_claims",
            description: "additional claims are required",
        }
    }

    /// We could not check the token (keys unavailable): not the client's fault.
    pub fn unavailable(&self, description: &'static str) -> Denial {
        Denial {
            kind: DenialKind::Unavailable,
            status: 503,
            www_authenticate: None,
            retry_after: Some(5),
            error: "temporarily_unavailable",
            description,
        }
    }
}

fn scope_param(scopes: &[String]) -> Option<String> {
    (!scopes.is_empty()).then(|| format!("scope=\"{}\"", scopes.join(" ")))
}

/// The token exchange failed on the IdP's or our configuration's side.
pub fn bad_gateway() -> Denial {
    Denial {
        kind: DenialKind::BadGateway,
        status: 502,
        www_authenticate: None,
        retry_after: None,
        error: "bad_gateway",
        description: "token exchange failed",
    }
}

/// A body the filter must read (a tool call) is larger than `mcp.maxBodyBytes`.
pub fn payload_too_large() -> Denial {
    Denial {
        kind: DenialKind::BodyTooLarge,
        status: 413,
        www_authenticate: None,
        retry_after: None,
        error: "invalid_request",
        description: "request body too large",
    }
}

/// The token endpoint did not answer in time.
pub fn gateway_timeout() -> Denial {
    Denial {
        kind: DenialKind::Timeout,
        status: 504,
        www_authenticate: None,
        retry_after: None,
        error: "gateway_timeout",
        description: "token exchange timed out",
    }
}

/// An RFC 9728 metadata document.
pub fn metadata_document(m: &Metadata) -> String {
    json!({
        "resource": m.resource,
        "authorization_servers": [m.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": m.scopes_supported,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> plugin_config::Config {
        let mut v = json!({"oidc": {
            "issuer": "https://idp.example.com", "audience": "mcp",
            "jwksUrl": "https://idp.example.com/keys"
        }});
        for (k, val) in extra.as_object().unwrap() {
            v["oidc"][k] = val.clone();
        }
        plugin_config::parse(v.to_string().as_bytes()).unwrap()
    }

    fn full() -> Challenges {
        let c = config(json!({
            "resourceUrl": "https://mcp.example.com/mcp",
            "requiredScopes": ["mcp:tools:call", "openid"]
        }));
        Challenges::new(c.oidc.as_ref().unwrap())
    }

    const META: &str = r#"resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#;

    #[test]
    fn missing_token_has_no_error_code() {
        let d = full().missing_token();
        assert_eq!(d.status, 401);
        assert_eq!(
            d.www_authenticate.unwrap(),
            format!(r#"Bearer scope="mcp:tools:call openid", {META}"#)
        );
    }

    #[test]
    fn invalid_token_challenge() {
        let d = full().invalid_token("token expired");
        assert_eq!(
            d.www_authenticate.as_deref().unwrap(),
            format!(r#"Bearer error="invalid_token", error_description="token expired", {META}"#)
        );
        assert_eq!(
            d.body(),
            r#"{"error":"invalid_token","error_description":"token expired"}"#
        );
    }

    #[test]
    fn insufficient_scope_names_required_scopes() {
        let d = full().insufficient_scope();
        assert_eq!(d.status, 403);
        assert_eq!(
            d.www_authenticate.unwrap(),
            format!(
                r#"Bearer error="insufficient_scope", error_description="insufficient scope", scope="mcp:tools:call openid", {META}"#
            )
        );
    }

    #[test]
    fn without_resource_or_scopes_the_challenge_is_bare() {
        let c = Challenges::new(config(json!({})).oidc.as_ref().unwrap());
        assert_eq!(Challenges::bare().missing_token(), c.missing_token());
        assert_eq!(c.missing_token().www_authenticate.unwrap(), "Bearer");
        assert_eq!(
            c.invalid_request("multiple authorization headers")
                .www_authenticate
                .unwrap(),
            r#"Bearer error="invalid_request", error_description="multiple authorization headers""#
        );
    }

    #[test]
    fn a_route_names_its_own_scopes() {
        let d = full().with_scopes(&["admin".into()]).insufficient_scope();
        assert_eq!(
            d.www_authenticate.unwrap(),
            format!(
                r#"Bearer error="insufficient_scope", error_description="insufficient scope", scope="admin", {META}"#
            )
        );
        let bare = full().with_scopes(&[]).missing_token();
        assert_eq!(bare.www_authenticate.unwrap(), format!("Bearer {META}"));
    }

    #[test]
    fn unavailable_is_503_with_retry_after() {
        let d = full().unavailable("signing keys unavailable");
        assert_eq!((d.status, d.retry_after, d.www_authenticate), (503, Some(5), None));
    }

    #[test]
    fn metadata_document_fields() {
        let cfg = config(json!({"resourceUrl": "https://mcp.example.com/mcp", "scopesSupported": ["a", "b"]}));
        let doc: serde_json::Value = serde_json::from_str(&metadata_document(&cfg.metadata[0])).unwrap();
        assert_eq!(
            doc,
            json!({
                "resource": "https://mcp.example.com/mcp",
                "authorization_servers": ["https://idp.example.com"],
                "bearer_methods_supported": ["header"],
                "scopes_supported": ["a", "b"]
            })
        );
    }
}
