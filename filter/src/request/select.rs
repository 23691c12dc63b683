//! The first phase: which policy a request gets. RFC 9728 metadata requests
//! are answered here, before any rule is matched; then the rules pick the
//! policy (or a skip) from `:authority` and `:path`, read only when
//! something needs them, since each read is a call into the proxy.

use crate::edge::challenge::metadata_document;
use crate::host::Host;
use crate::request::outcome::{Outcome, Reply, Unjudged};
use crate::request::policy::{Policies, PolicyId, Selection};
use plugin_config::Oidc;
use std::rc::Rc;

/// Metadata is public: any page may read it.
const ANY_ORIGIN: (&str, &str) = ("access-control-allow-origin", "*");

/// The RFC 9728 document and the path it is served at.
struct Metadata {
    path: String,
    body: Rc<str>,
}

/// A request's policy, and its path when it was read.
pub struct Route {
    pub policy: PolicyId,
    pub path: Option<String>,
}

pub struct Select {
    policies: Rc<Policies>,
    metadata: Option<Metadata>,
    /// The body gate looks at the path too.
    gate_needs_path: bool,
}

impl Select {
    pub fn new(policies: Rc<Policies>, oidc: &Oidc, gate_needs_path: bool) -> Select {
        Select {
            policies,
            metadata: oidc.resource.as_ref().map(|r| Metadata {
                path: r.metadata_path.clone(),
                body: metadata_document(r, &oidc.issuer).into(),
            }),
            gate_needs_path,
        }
    }

    /// The current request's route, or what to do with it instead.
    pub fn route(&self, host: &dyn Host) -> Result<Route, Outcome> {
        let routes = self.policies.routes();
        let path = if self.metadata.is_some() || routes.by_path() || self.gate_needs_path {
            host.request_header(":path")
        } else {
            None
        };
        if let Some(reply) = self.metadata(host, path.as_deref()) {
            return Err(Outcome::Answer(reply));
        }
        let authority = if routes.by_host() {
            host.request_header(":authority")
        } else {
            None
        };
        match self.policies.select(authority.as_deref(), path.as_deref()) {
            Ok(Selection::Policy(policy)) => Ok(Route { policy, path }),
            Ok(Selection::Skip) => Err(Outcome::Pass(Unjudged::SkipRoute)),
            Err(_) => {
                log::info!("rejected: path not in normal form");
                let d = self
                    .policies
                    .default()
                    .challenges
                    .invalid_request("path not in normal form");
                Err(Outcome::Deny(d, None))
            }
        }
    }

    /// The answer to an RFC 9728 metadata request, which needs no
    /// authentication; `None` for any other request.
    fn metadata(&self, host: &dyn Host, path: Option<&str>) -> Option<Reply> {
        let meta = self.metadata.as_ref()?;
        if path?.split('?').next() != Some(meta.path.as_str()) {
            return None;
        }
        Some(match host.request_header(":method").as_deref().unwrap_or_default() {
            "GET" | "HEAD" => Reply {
                status: 200,
                headers: &[
                    ("content-type", "application/json"),
                    ("cache-control", "max-age=300"),
                    ANY_ORIGIN,
                ],
                body: Rc::clone(&meta.body),
            },
            "OPTIONS" => Reply {
                status: 204,
                headers: &[
                    ANY_ORIGIN,
                    ("access-control-allow-methods", "GET, HEAD, OPTIONS"),
                    ("access-control-allow-headers", "authorization, mcp-protocol-version"),
                    ("access-control-max-age", "86400"),
                ],
                body: Rc::from(""),
            },
            _ => Reply {
                status: 405,
                headers: &[("allow", "GET, HEAD, OPTIONS")],
                body: Rc::from(""),
            },
        })
    }
}
