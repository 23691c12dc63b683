//! What a phase decided about a request. Phases return these and never act
//! on the request themselves; `apply` is the one place that does.

use crate::edge::challenge::Denial;
use crate::request::policy::{PolicyId, TargetId};
use crate::token::verified::Verified;
use crate::token::verify::Principal;
use std::rc::Rc;

#[derive(Clone)]
pub enum Outcome {
    /// The request may go on.
    Allow(Passed),
    /// Paused until a callout answers (the issuer's keys, or an exchange).
    Wait,
    /// Refused with this answer; what is known of the request.
    Deny(Denial, Who),
    /// Passes upstream without being judged.
    Pass(Unjudged),
    /// The filter answers it itself (RFC 9728 metadata).
    Answer(Reply),
}

/// A request that waited for a callout (its issuer's keys, its token's
/// introspection), decided.
pub struct Released {
    pub ctx: u32,
    /// The caller's token, for the phases after this one.
    pub token: String,
    pub outcome: Outcome,
}

/// A local answer that is not a refusal.
#[derive(Clone)]
pub struct Reply {
    pub status: u32,
    pub headers: &'static [(&'static str, &'static str)],
    pub body: Rc<str>,
}

/// Why a request passes unjudged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unjudged {
    /// A `skip` rule.
    SkipRoute,
    /// A CORS preflight: it never carries credentials.
    Preflight,
}

/// A request that passed validation (and its exchange, if any).
#[derive(Clone)]
pub struct Passed {
    pub verified: Verified,
    pub policy: PolicyId,
    /// The exchanged token to forward, once the policy's exchange is done.
    pub forwarded: Option<Forwarded>,
}

impl Passed {
    pub fn principal(&self) -> &Rc<Principal> {
        &self.verified.principal
    }
}

/// The exchanged token a request forwards, and how it was had.
#[derive(Clone)]
pub struct Forwarded {
    pub target: TargetId,
    /// `Bearer <token>`, ready for the target's header.
    pub value: Rc<str>,
    pub cache: CacheUse,
    /// How long the exchange took, when this request waited for it.
    pub latency_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
}

impl CacheUse {
    pub fn name(self) -> &'static str {
        match self {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
        }
    }
}

/// What is known of a refused request, for the audit line: its route,
/// who it was once its token was checked, and its exchange target.
#[derive(Clone, Default)]
pub struct Who {
    pub policy: Option<PolicyId>,
    pub principal: Option<Rc<Principal>>,
    pub target: Option<TargetId>,
}

impl Who {
    /// A request refused on `policy`'s route, before its token was read.
    pub fn route(policy: PolicyId) -> Who {
        Who {
            policy: Some(policy),
            ..Who::default()
        }
    }

    /// A request that passed, refused later (its exchange, its body).
    pub fn passed(p: &Passed, target: Option<TargetId>) -> Who {
        Who {
            policy: Some(p.policy),
            principal: Some(Rc::clone(p.principal())),
            target,
        }
    }
}
