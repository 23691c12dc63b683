//! The validation phase: find the caller's token, check it against the
//! issuer's keys and the policy's scopes, and hold the request while keys
//! it needs are on their way (Envoy's jwt_authn calls this the
//! authenticator). Waiting requests are released, decided, when a fetch
//! ends or they waited too long.

use crate::edge::cors;
use crate::edge::metrics::{Metric, Metrics};
use crate::host::{CalloutResponse, Host};
use crate::keys::cache::{Answer, Fetch, JwksCache, FETCH_TIMEOUT_MS};
use crate::request::outcome::{Outcome, Passed, Unjudged};
use crate::request::policy::{Policies, PolicyId};
use crate::support::logsafe::excerpt;
use crate::token::bearer::{self, Bearer};
use crate::token::claims;
use crate::token::verified::{Verified, VerifiedCache};
use crate::token::verify::{Reject, Verifier};
use plugin_config::{ClaimHeader, Oidc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::rc::Rc;

/// How long past a fetch's own timeout a request may wait for keys before
/// it gets a 503, whatever happens to the fetch.
const KEY_WAIT_GRACE_MS: u64 = 3_000;
/// Longest a request waits for keys.
pub const MAX_WAIT_MS: u64 = FETCH_TIMEOUT_MS + KEY_WAIT_GRACE_MS;
/// Verified tokens remembered per worker, and the bytes they may hold.
pub const VERIFIED_CAPACITY: usize = 10_000;
pub const VERIFIED_BYTES: usize = 16 << 20;
/// Requests that may wait for keys at once, per worker.
pub const MAX_WAITERS: usize = 10_000;
const KEYS_UNAVAILABLE: &str = "signing keys unavailable";

struct Waiter {
    token: String,
    since_ms: u64,
    policy: PolicyId,
}

/// A waiting request, decided.
pub struct Released {
    pub ctx: u32,
    /// The caller's token, for the phases after this one.
    pub token: String,
    pub outcome: Outcome,
}

enum Verdict {
    Allow(Verified),
    Deny(Reject),
    /// The token names a key we do not have, and keys were just fetched.
    UnknownKey,
    /// The token names a key we do not have, and no refetch is allowed yet:
    /// wait for the next one rather than refuse a key that was just rotated in.
    HoldForKeys,
    /// Keys are missing, or a refetch may find the token's key.
    NeedKeys,
}

/// What an unknown `kid` may lead to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UnknownKid {
    /// Ask for a refetch (when the rate limit allows).
    MayRefetch,
    /// Keys were just fetched: the kid is unknown.
    IsUnknown,
}

/// How the last fetch that a decision waited for ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LastFetch {
    Succeeded,
    /// An unknown key is then our problem, not the client's.
    Failed,
}

pub struct Validation {
    policies: Rc<Policies>,
    verifier: Verifier,
    jwks: JwksCache,
    verified: VerifiedCache,
    claim_headers: Vec<ClaimHeader>,
    waiting: BTreeMap<u32, Waiter>,
    signature_checks: u64,
}

impl Validation {
    pub fn new(policies: Rc<Policies>, oidc: &Oidc, claim_headers: Vec<ClaimHeader>, prefix: &str) -> Validation {
        Validation {
            policies,
            verifier: Verifier::new(oidc),
            jwks: JwksCache::new(oidc, prefix),
            verified: VerifiedCache::new(VERIFIED_CAPACITY, VERIFIED_BYTES),
            claim_headers,
            waiting: BTreeMap::new(),
            signature_checks: 0,
        }
    }

    /// Signature checks done so far on this worker.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
    }

    /// The clock skew validation allows, seconds.
    pub fn skew(&self) -> u64 {
        self.verifier.skew()
    }

    /// The caller's bearer token, or what to do with a request without one.
    pub fn extract(&self, host: &dyn Host, policy: PolicyId) -> Result<String, Outcome> {
        let challenges = &self.policies.policy(policy).challenges;
        let authorization = host.request_header("authorization");
        let denial = match bearer::extract(authorization.as_deref()) {
            Bearer::Token(t) => return Ok(t.to_string()),
            // Preflights never carry credentials: whatever answers CORS answers them.
            Bearer::Missing if cors::is_preflight(host) => return Err(Outcome::Pass(Unjudged::Preflight)),
            Bearer::Missing => {
                log::debug!("rejected: no bearer token");
                challenges.missing_token()
            }
            Bearer::Multiple => {
                log::info!("rejected: multiple authorization headers");
                challenges.invalid_request("multiple authorization headers")
            }
            Bearer::Malformed => {
                log::info!("rejected: malformed authorization header");
                challenges.invalid_request("malformed authorization header")
            }
        };
        Err(Outcome::Deny(denial, None))
    }

    /// Checks `token` for `policy`: allowed, refused, or waiting for keys.
    pub fn validate(&mut self, host: &mut dyn Host, token: &str, policy: PolicyId) -> Outcome {
        let now_ms = host.now_ms();
        let verdict = match self.judge(host, token, now_ms, UnknownKid::MayRefetch) {
            Verdict::NeedKeys => match self.jwks.fetch(host) {
                Fetch::Adopted => {
                    self.prune_verified();
                    // Another worker's copy: its kid may still be too new for it.
                    match self.judge(host, token, now_ms, UnknownKid::MayRefetch) {
                        Verdict::NeedKeys | Verdict::HoldForKeys => return self.hold(host, token, now_ms, policy),
                        v => v,
                    }
                }
                Fetch::Failed => Verdict::NeedKeys,
                Fetch::Pending => return self.hold(host, token, now_ms, policy),
            },
            Verdict::HoldForKeys => return self.hold(host, token, now_ms, policy),
            v => v,
        };
        self.settle(verdict, LastFetch::Succeeded, policy)
    }

    /// A callout answered: `None` if it was not a key fetch's; else the
    /// waiting requests it decided.
    pub fn on_callout(
        &mut self,
        host: &mut dyn Host,
        token: u32,
        resp: &CalloutResponse,
        metrics: &mut Metrics,
    ) -> Option<Vec<Released>> {
        match self.jwks.on_response(host, token, resp) {
            Answer::NotOurs => None,
            Answer::Continuing => Some(Vec::new()),
            Answer::Fetched => {
                metrics.inc(Metric::JwksFetchOk);
                let keys = self.jwks.keys().map_or(0, |k| k.len());
                metrics.record(host, Metric::JwksKeys, keys as u64);
                self.prune_verified();
                Some(self.wake(host, LastFetch::Succeeded))
            }
            Answer::Failed => {
                metrics.inc(Metric::JwksFetchFailed);
                Some(self.wake(host, LastFetch::Failed))
            }
        }
    }

    /// Upkeep: adopt other workers' keys, refresh on schedule, start the
    /// fetch waiting requests need, and release those that waited too long.
    pub fn on_tick(&mut self, host: &mut dyn Host) -> Vec<Released> {
        let tick = self.jwks.on_tick(host);
        if tick.adopted {
            self.prune_verified();
        }
        let mut released = if tick.adopted || tick.lost {
            let last = if tick.adopted {
                LastFetch::Succeeded
            } else {
                LastFetch::Failed
            };
            self.wake(host, last)
        } else if !self.waiting.is_empty()
            && !self.jwks.fetching()
            && (self.jwks.keys().is_none() || self.jwks.refetch_allowed(host, host.now_ms()))
        {
            // Waiters whose fetch was elsewhere (another worker's lease) or
            // went away with its owner.
            match self.jwks.fetch(host) {
                Fetch::Adopted => {
                    self.prune_verified();
                    self.wake(host, LastFetch::Succeeded)
                }
                Fetch::Failed => self.wake(host, LastFetch::Failed),
                Fetch::Pending => Vec::new(),
            }
        } else {
            Vec::new()
        };
        released.extend(self.expire(host));
        released
    }

    /// The stream `id` ended: it waits no more. If it owned the key fetch,
    /// that fetch was cancelled with it and the next tick starts another.
    pub fn leave(&mut self, host: &mut dyn Host, id: u32) {
        self.waiting.remove(&id);
        if self.jwks.forget_owner(host, id) {
            log::debug!("JWKS fetch owner {id} went away; the next tick fetches again");
        }
    }

    /// Pauses the current request until keys come (or `MAX_WAIT_MS` passes);
    /// at most `MAX_WAITERS` wait, so unknown kids cannot grow memory.
    fn hold(&mut self, host: &dyn Host, token: &str, now_ms: u64, policy: PolicyId) -> Outcome {
        if self.waiting.len() >= MAX_WAITERS {
            log::warn!("rejected: too many requests waiting for signing keys");
            let d = self.policies.policy(policy).challenges.unavailable(KEYS_UNAVAILABLE);
            return Outcome::Deny(d, None);
        }
        let waiter = Waiter {
            token: token.to_string(),
            since_ms: now_ms,
            policy,
        };
        self.waiting.insert(host.context_id(), waiter);
        Outcome::Wait
    }

    fn judge(&mut self, host: &dyn Host, token: &str, now_ms: u64, unknown: UnknownKid) -> Verdict {
        let now = now_ms / 1000;
        let skew = self.verifier.skew();
        if let Some(v) = self.verified.get(token, now, skew) {
            return Verdict::Allow(v.clone());
        }
        let Some(keys) = self.jwks.keys() else {
            return Verdict::NeedKeys;
        };
        match self.verifier.verify(keys, token, now, &mut self.signature_checks) {
            Ok(mut p) => {
                log::debug!("accepted token for sub={}", excerpt(p.sub.as_deref().unwrap_or("-")));
                p.claim_headers = claims::extract(&self.claim_headers, token);
                let v = Verified {
                    principal: Rc::new(p),
                    hash: Sha256::digest(token.as_bytes()).into(),
                };
                self.verified.insert(token, v.clone(), now, skew);
                Verdict::Allow(v)
            }
            Err(f) if f.reject == Reject::UnknownKey => match unknown {
                UnknownKid::IsUnknown => Verdict::UnknownKey,
                UnknownKid::MayRefetch if self.jwks.refetch_allowed(host, now_ms) => Verdict::NeedKeys,
                UnknownKid::MayRefetch => Verdict::HoldForKeys,
            },
            Err(f) => {
                log::info!(
                    "rejected: {}; sub={}",
                    f.reject.description(),
                    excerpt(f.sub.as_deref().unwrap_or("-"))
                );
                Verdict::Deny(f.reject)
            }
        }
    }

    /// A valid token with the scopes `policy` requires passes; else the denial.
    fn settle(&self, verdict: Verdict, last: LastFetch, policy: PolicyId) -> Outcome {
        let p = self.policies.policy(policy);
        let denial = match verdict {
            Verdict::Allow(verified) if verified.principal.has_scopes(&p.required_scopes) => {
                return Outcome::Allow(Passed {
                    verified,
                    policy,
                    forwarded: None,
                })
            }
            Verdict::Allow(v) => {
                let sub = excerpt(v.principal.sub.as_deref().unwrap_or("-"));
                log::info!("rejected: insufficient scope; sub={sub}");
                p.challenges.insufficient_scope()
            }
            Verdict::Deny(r) => p.challenges.invalid_token(r.description()),
            Verdict::UnknownKey if last == LastFetch::Succeeded => {
                log::info!("rejected: {}", Reject::UnknownKey.description());
                p.challenges.invalid_token(Reject::UnknownKey.description())
            }
            Verdict::UnknownKey | Verdict::NeedKeys | Verdict::HoldForKeys => {
                log::warn!("rejected: {KEYS_UNAVAILABLE}");
                p.challenges.unavailable(KEYS_UNAVAILABLE)
            }
        };
        Outcome::Deny(denial, None)
    }

    /// Decides every waiting request, now that a fetch ended.
    fn wake(&mut self, host: &dyn Host, last: LastFetch) -> Vec<Released> {
        let now_ms = host.now_ms();
        let mut released = Vec::new();
        for (ctx, w) in std::mem::take(&mut self.waiting) {
            let verdict = self.judge(host, &w.token, now_ms, UnknownKid::IsUnknown);
            if matches!(verdict, Verdict::UnknownKey)
                && last == LastFetch::Succeeded
                && self.jwks.fetched_at() < w.since_ms
            {
                // Keys older than the request (another worker's earlier
                // copy) cannot say its kid is unknown: wait for a fetch
                // that started after it came.
                self.waiting.insert(ctx, w);
                continue;
            }
            let outcome = self.settle(verdict, last, w.policy);
            released.push(Released {
                ctx,
                token: w.token,
                outcome,
            });
        }
        released
    }

    /// Refuses the requests that waited longer than `MAX_WAIT_MS`.
    fn expire(&mut self, host: &dyn Host) -> Vec<Released> {
        let now_ms = host.now_ms();
        let stale: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(_, w)| now_ms.saturating_sub(w.since_ms) > MAX_WAIT_MS)
            .map(|(id, _)| *id)
            .collect();
        let mut released = Vec::new();
        for ctx in stale {
            if let Some(w) = self.waiting.remove(&ctx) {
                log::warn!("rejected: waited too long for signing keys");
                let d = self.policies.policy(w.policy).challenges.unavailable(KEYS_UNAVAILABLE);
                released.push(Released {
                    ctx,
                    token: w.token,
                    outcome: Outcome::Deny(d, None),
                });
            }
        }
        released
    }

    /// Drops verified tokens whose key the current set no longer has.
    fn prune_verified(&mut self) {
        if let Some(keys) = self.jwks.keys() {
            self.verified.retain_keys(|id| keys.contains_id(id));
        }
    }
}
