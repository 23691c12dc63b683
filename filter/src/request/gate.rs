//! The body gate: a POST to a policy's MCP endpoint may call a tool that
//! needs scopes of its own (its `mcp.toolScopes`), so its body must be
//! judged, by that policy's tools. Envoy
//! delivers a body to a proxy-wasm filter only after its headers went on,
//! so the headers (with the exchanged token) reach the upstream first; the
//! body, which is the call, is held until it is judged, and a refusal
//! resets the upstream request before any of it is sent.
//!
//! A gated request is decided once: when its body is judged, or, if no
//! body ever comes, when it ends.

use crate::edge::challenge::{self, Denial};
use crate::edge::tools::{BodyError, Tools};
use crate::host::Host;
use crate::request::outcome::{Passed, Who};
use crate::request::policy::{Policies, PolicyId};
use crate::support::logsafe::excerpt;
use std::collections::HashMap;
use std::rc::Rc;

/// A gated request, by context id, with its policy's tools.
enum Held {
    /// Its headers are still being decided.
    Open(Rc<Tools>),
    /// Its headers went on; its body decides.
    Passed(Passed, Rc<Tools>),
}

/// What the gate makes of body data.
pub enum Body {
    /// Not a gated request: the body goes on.
    NotHeld,
    /// Keep buffering until the whole body is here.
    Buffer,
    /// The call may go on: the request's decision, now to be recorded.
    Allowed(Passed),
    Refused(Denial, Who),
}

pub struct Gate {
    policies: Rc<Policies>,
    /// Whether any policy has tool scopes; without, nothing is ever gated.
    any: bool,
    held: HashMap<u32, Held>,
}

impl Gate {
    pub fn new(policies: Rc<Policies>) -> Gate {
        Gate {
            any: policies.gates().is_some(),
            policies,
            held: HashMap::new(),
        }
    }

    /// Gates the current request, of `policy`: its body will be judged by
    /// the policy's tools.
    pub fn open(&mut self, ctx: u32, policy: PolicyId) {
        if let Some(tools) = &self.policies.policy(policy).tools {
            self.held.insert(ctx, Held::Open(Rc::clone(tools)));
        }
    }

    /// The request `ctx` passed at its headers. A gated one is held for its
    /// body (`None`); any other is handed back, decided.
    pub fn hold(&mut self, ctx: u32, passed: Passed) -> Option<Passed> {
        // Gates exist only with tool scopes: no map lookup on the hot path otherwise.
        if !self.any {
            return Some(passed);
        }
        match self.held.remove(&ctx) {
            Some(Held::Open(tools) | Held::Passed(_, tools)) => {
                self.held.insert(ctx, Held::Passed(passed, tools));
                None
            }
            None => Some(passed),
        }
    }

    /// The request `ctx` was refused: nothing left to judge.
    pub fn close(&mut self, ctx: u32) {
        if self.any {
            self.held.remove(&ctx);
        }
    }

    /// The request `ctx` ended; if it passed but its body never came to be
    /// judged, its decision is handed back to be recorded.
    pub fn leave(&mut self, ctx: u32) -> Option<Passed> {
        match self.held.remove(&ctx)? {
            Held::Passed(p, _) => Some(p),
            Held::Open(_) => None,
        }
    }

    /// Body data of the current request, `size` bytes so far.
    pub fn judge(&mut self, host: &dyn Host, size: usize, end_of_stream: bool) -> Body {
        let ctx = host.context_id();
        if !self.any {
            return Body::NotHeld;
        }
        let tools = match self.held.get(&ctx) {
            Some(Held::Open(t) | Held::Passed(_, t)) => Rc::clone(t),
            None => return Body::NotHeld,
        };
        let needed = if size > tools.max_body_bytes {
            Err(BodyError::TooLarge)
        } else if !end_of_stream {
            // Envoy buffers it until the end.
            return Body::Buffer;
        } else {
            let encoded = host
                .request_header("content-encoding")
                .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
            match host.request_body(size) {
                Some(body) if !encoded => tools.required(&body),
                _ => Err(BodyError::Unreadable),
            }
        };
        let passed = match self.held.remove(&ctx) {
            Some(Held::Passed(p, _)) => Some(p),
            _ => None,
        };
        let Some(p) = passed else {
            // Its headers never passed: cannot happen, but never let a
            // call through unjudged.
            let challenges = self.policies.fallback_challenges();
            return Body::Refused(challenges.insufficient_scope(), Who::default());
        };
        match needed {
            Err(e) => {
                let d = match e {
                    BodyError::TooLarge => challenge::payload_too_large(),
                    BodyError::Unreadable => self
                        .policies
                        .policy(p.policy)
                        .challenges
                        .invalid_request("request body is not readable JSON"),
                };
                log::info!("rejected: {}", d.description);
                Body::Refused(d, who(&p))
            }
            Ok(needed) if p.principal().has_scopes(&needed) => Body::Allowed(p),
            Ok(needed) => {
                log::info!(
                    "rejected: the tool needs scopes {}; sub={}",
                    needed.join(" "),
                    excerpt(p.principal().sub.as_deref().unwrap_or("-"))
                );
                Body::Refused(self.insufficient(&p, &needed), who(&p))
            }
        }
    }

    /// Whether no request is held (tests: nothing leaks).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// 403 naming the route's scopes and the tool's, so the client can step up.
    fn insufficient(&self, p: &Passed, needed: &[String]) -> Denial {
        let policy = self.policies.policy(p.policy);
        let mut scopes = policy.required_scopes.clone();
        for n in needed {
            if !scopes.contains(n) {
                scopes.push(n.clone());
            }
        }
        policy.challenges.with_scopes(&scopes).insufficient_scope()
    }
}

fn who(p: &Passed) -> Who {
    Who::passed(p, p.forwarded.as_ref().map(|f| f.target))
}
