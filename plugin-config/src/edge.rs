//! What the filter adds at the edge besides validation and exchange: CORS
//! for its own replies, the audit log, claims copied into headers, and the
//! MCP-aware checks (per-tool scopes).

use crate::error::ConfigError;
use crate::field::{non_empty, plain_path, scope_list};
use crate::oidc::Resource;
use crate::raw::{RawClaimHeader, RawCors, RawMcp};

pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
pub const MAX_MAX_BODY_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Exact origins (`https://app.example`, lower-case scheme and host), or `*`.
    pub allowed_origins: Vec<String>,
}

impl Cors {
    /// Whether a request's `Origin` may read the filter's replies.
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// A claim of the validated token, copied into a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// Dotted path into the claims: `sub`, `realm_access.roles`.
    pub claim: Vec<String>,
    /// Lower-case header name.
    pub header: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mcp {
    /// The MCP endpoint's path, where `tools/call` bodies are read (for
    /// the policy the section belongs to).
    pub path: String,
    /// Tool name -> scopes its `tools/call` needs, besides the route's.
    pub tool_scopes: Vec<(String, Vec<String>)>,
    pub max_body_bytes: usize,
}

pub fn cors(raw: Option<RawCors>) -> Result<Option<Cors>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.allowed_origins.is_empty() {
        return Err(ConfigError::new(
            "cors.allowedOrigins",
            "is empty; list origins such as https://app.example, or \"*\", or remove cors",
        ));
    }
    for (i, o) in raw.allowed_origins.iter().enumerate() {
        let ok = o == "*"
            || url::Url::parse(o).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !o.ends_with('/')
                    && u.query().is_none()
                    && u.username().is_empty()
            });
        if !ok {
            return Err(ConfigError::new(
                format!("cors.allowedOrigins[{i}]"),
                format!("{o:?} is not an origin; write scheme://host[:port] with no path, or \"*\""),
            ));
        }
    }
    Ok(Some(Cors {
        allowed_origins: raw.allowed_origins,
    }))
}

pub fn claim_headers(raw: Vec<RawClaimHeader>) -> Result<Vec<ClaimHeader>, ConfigError> {
    let mut out: Vec<ClaimHeader> = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let at = format!("claimToHeaders[{i}]");
        non_empty(&format!("{at}.claim"), &c.claim)?;
        let claim: Vec<String> = c.claim.split('.').map(String::from).collect();
        if claim.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                format!("{at}.claim"),
                format!(
                    "{:?} is not a claim name; use a name or a dotted path like realm_access.roles",
                    c.claim
                ),
            ));
        }
        let header = c.header.to_ascii_lowercase();
        let valid = !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            return Err(ConfigError::new(
                format!("{at}.header"),
                format!("{:?} is not a valid header name", c.header),
            ));
        }
        // Headers the filter or the proxy own must not be settable from a token.
        if matches!(
            header.as_str(),
            "authorization" | "host" | "content-length" | "transfer-encoding"
        ) || header.starts_with(':')
        {
            return Err(ConfigError::new(
                format!("{at}.header"),
                format!("{header} is not a header a claim may set; pick another name, e.g. x-user-sub"),
            ));
        }
        if out.iter().any(|o| o.header == header) {
            return Err(ConfigError::new(
                format!("{at}.header"),
                format!("{header} is already set by another claimToHeaders entry"),
            ));
        }
        out.push(ClaimHeader { claim, header });
    }
    Ok(out)
}

/// An `mcp` section's keys, each checked where it is written. A rule's
/// are merged over the top-level ones (`over`), then the path's default
/// is filled in from the section's resource (`resolve`).
#[derive(Debug, Clone, Default)]
pub struct McpKeys {
    path: Option<String>,
    tool_scopes: Option<Vec<(String, Vec<String>)>>,
    max_body_bytes: Option<usize>,
}

/// Checks the keys of an `mcp` section written at `at` (`mcp`, `rules[1].mcp`).
pub fn mcp_keys(raw: RawMcp, at: &str) -> Result<McpKeys, ConfigError> {
    if let Some(p) = &raw.path {
        plain_path(&format!("{at}.path"), p)?;
    }
    let tool_scopes = match raw.tool_scopes {
        None => None,
        Some(map) => {
            let mut tools = Vec::new();
            for (tool, scopes) in map {
                let at = format!("{at}.toolScopes.{tool}");
                non_empty(&at, &tool)?;
                if scopes.is_empty() {
                    return Err(ConfigError::new(at, "lists no scopes; list them or remove the tool"));
                }
                scope_list(&at, &scopes)?;
                tools.push((tool, scopes));
            }
            Some(tools)
        }
    };
    let max_body_bytes = match raw.max_body_bytes {
        None => None,
        Some(n) if (1..=MAX_MAX_BODY_BYTES).contains(&n) => Some(n as usize),
        Some(n) => {
            return Err(ConfigError::new(
                format!("{at}.maxBodyBytes"),
                format!("must be between 1 and {MAX_MAX_BODY_BYTES}, got {n}"),
            ))
        }
    };
    Ok(McpKeys {
        path: raw.path,
        tool_scopes,
        max_body_bytes,
    })
}

impl McpKeys {
    /// `self`'s keys over `base`'s, key by key (a tool map replaces the
    /// other whole), but the path: a rule's endpoint is its own resource's
    /// unless it names one, never the top-level one, which its requests
    /// would not reach.
    pub fn over(self, base: Option<&McpKeys>) -> McpKeys {
        let b = base.cloned().unwrap_or_default();
        McpKeys {
            path: self.path,
            tool_scopes: self.tool_scopes.or(b.tool_scopes),
            max_body_bytes: self.max_body_bytes.or(b.max_body_bytes),
        }
    }

    /// The section in force: its path defaults to `resource`'s.
    pub fn resolve(self, at: &str, resource: Option<&Resource>) -> Result<Mcp, ConfigError> {
        let path = match (self.path, resource) {
            (Some(p), _) => p,
            (None, Some(r)) => url::Url::parse(&r.url)
                .map(|u| u.path().to_string())
                .unwrap_or_default(),
            (None, None) => {
                return Err(ConfigError::new(
                    format!("{at}.path"),
                    "is required without oidc.resourceUrl: the MCP endpoint's path, e.g. /mcp",
                ))
            }
        };
        plain_path(&format!("{at}.path"), &path)?;
        Ok(Mcp {
            path,
            tool_scopes: self.tool_scopes.unwrap_or_default(),
            max_body_bytes: self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES as usize),
        })
    }
}
