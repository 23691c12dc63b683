//! The validation phase: find the caller's token, check it with its route's
//! verifier against its issuer's keys and the route's scopes, and hold the
//! request while keys it needs are on their way (Envoy's jwt_authn calls
//! this the authenticator). Each issuer has its own keys, refresh schedule
//! and unknown-kid rate limit; waiting requests are released, decided, when
//! their issuer's fetch ends or they waited too long.

use crate::edge::cors;
use crate::edge::metrics::{Metric, Metrics};
use crate::host::{CalloutResponse, Host};
use crate::keys::cache::{Answer, Fetch, JwksCache, FETCH_TIMEOUT_MS};
use crate::request::keyring::{Keyring, LastFetch};
use crate::request::outcome::{Outcome, Passed, Released, Unjudged, Who};
use crate::request::policy::{IssuerId, Policies, PolicyId, VerifierId};
use crate::support::logsafe::excerpt;
use crate::token::bearer::{self, Bearer};
use crate::token::claims;
use crate::token::verified::{Verified, VerifiedCache};
use crate::token::verify::Reject;
use plugin_config::ClaimHeader;
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

pub struct Validation {
    policies: Rc<Policies>,
    keys: Keyring,
    verified: VerifiedCache<VerifierId>,
    claim_headers: Vec<ClaimHeader>,
    waiting: BTreeMap<u32, Waiter>,
    signature_checks: u64,
}

impl Validation {
    /// `plugin` names the shared-data keys: Istio gives all plugins on a
    /// proxy one keyspace.
    pub fn new(policies: Rc<Policies>, claim_headers: Vec<ClaimHeader>, plugin: &str) -> Validation {
        let keys = Keyring::new(&policies, plugin);
        Validation {
            policies,
            keys,
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
        Err(Outcome::Deny(denial, Who::route(policy)))
    }

    /// Checks `token` for `policy`: allowed, refused, or waiting for keys.
    pub fn validate(&mut self, host: &mut dyn Host, token: &str, policy: PolicyId) -> Outcome {
        let now_ms = host.now_ms();
        let issuer = self.issuer(policy);
        let verdict = match self.judge(host, token, now_ms, policy, UnknownKid::MayRefetch) {
            Verdict::NeedKeys => match self.keys.get_mut(issuer).map(|c| c.fetch(host)) {
                Some(Fetch::Adopted) => {
                    self.prune_verified(issuer);
                    // Another worker's copy: its kid may still be too new for it.
                    match self.judge(host, token, now_ms, policy, UnknownKid::MayRefetch) {
                        Verdict::NeedKeys | Verdict::HoldForKeys => return self.hold(host, token, now_ms, policy),
                        v => v,
                    }
                }
                Some(Fetch::Failed) | None => Verdict::NeedKeys,
                Some(Fetch::Pending) => return self.hold(host, token, now_ms, policy),
            },
            Verdict::HoldForKeys => return self.hold(host, token, now_ms, policy),
            v => v,
        };
        self.settle(verdict, LastFetch::Succeeded, policy)
    }

    /// A callout answered: `None` if it was no key fetch's; else the
    /// waiting requests it decided.
    pub fn on_callout(
        &mut self,
        host: &mut dyn Host,
        token: u32,
        resp: &CalloutResponse,
        metrics: &mut Metrics,
    ) -> Option<Vec<Released>> {
        let (issuer, answer) = self.keys.answer(host, token, resp)?;
        match answer {
            Answer::NotOurs | Answer::Continuing => Some(Vec::new()),
            Answer::Fetched => {
                metrics.inc(Metric::JwksFetchOk);
                let keys = self.keys.get(issuer).and_then(|c| c.keys()).map_or(0, |k| k.len());
                metrics.record(host, Metric::JwksKeys, keys as u64);
                self.prune_verified(issuer);
                Some(self.wake(host, issuer, LastFetch::Succeeded))
            }
            Answer::Failed => {
                metrics.inc(Metric::JwksFetchFailed);
                Some(self.wake(host, issuer, LastFetch::Failed))
            }
        }
    }

    /// Upkeep: adopt other workers' keys, refresh on schedule, start the
    /// fetch waiting requests need, and release those that waited too long.
    pub fn on_tick(&mut self, host: &mut dyn Host) -> Vec<Released> {
        let issuers: Vec<IssuerId> = self.policies.issuers().map(|(id, _)| id).collect();
        let mut released = Vec::new();
        for issuer in issuers {
            released.extend(self.tend(host, issuer));
        }
        released.extend(self.expire(host));
        released
    }

    /// The stream `id` ended: it waits no more. If it owned a key fetch,
    /// that fetch was cancelled with it and the next tick starts another.
    pub fn leave(&mut self, host: &mut dyn Host, id: u32) {
        self.waiting.remove(&id);
        self.keys.forget_owner(host, id);
    }

    fn issuer(&self, policy: PolicyId) -> IssuerId {
        self.policies.policy(policy).issuer
    }

    /// One issuer's upkeep on the tick: its waiters are decided when the
    /// fetch they wait for ends.
    fn tend(&mut self, host: &mut dyn Host, issuer: IssuerId) -> Vec<Released> {
        let waiting = self.waiting.values().any(|w| self.issuer(w.policy) == issuer);
        match self.keys.tick(host, issuer, waiting) {
            Some(last) => {
                if last == LastFetch::Succeeded {
                    self.prune_verified(issuer);
                }
                self.wake(host, issuer, last)
            }
            // Keys adopted while serving a later request (its fetch found
            // them published) decide the requests that waited before it and
            // whose kid they have; the others wait on for a fetch.
            None if waiting && self.keys.get(issuer).is_some_and(|c| c.keys().is_some()) => {
                self.decide(host, issuer, LastFetch::Succeeded, &|v, _| {
                    matches!(v, Verdict::UnknownKey)
                })
            }
            None => Vec::new(),
        }
    }

    /// Pauses the current request until keys come (or `MAX_WAIT_MS` passes);
    /// at most `MAX_WAITERS` wait, so unknown kids cannot grow memory.
    fn hold(&mut self, host: &dyn Host, token: &str, now_ms: u64, policy: PolicyId) -> Outcome {
        if self.waiting.len() >= MAX_WAITERS {
            log::warn!("rejected: too many requests waiting for signing keys");
            let d = self.policies.policy(policy).challenges.unavailable(KEYS_UNAVAILABLE);
            return Outcome::Deny(d, Who::route(policy));
        }
        let waiter = Waiter {
            token: token.to_string(),
            since_ms: now_ms,
            policy,
        };
        self.waiting.insert(host.context_id(), waiter);
        Outcome::Wait
    }

    fn judge(&mut self, host: &dyn Host, token: &str, now_ms: u64, policy: PolicyId, unknown: UnknownKid) -> Verdict {
        let now = now_ms / 1000;
        let id = self.policies.policy(policy).verifier;
        let issuer = self.issuer(policy);
        let policies = Rc::clone(&self.policies);
        let verifier = policies.verifier(id);
        let skew = verifier.skew();
        if let Some(v) = self.verified.get(id, token, now, skew) {
            return Verdict::Allow(v.clone());
        }
        let Some(keys) = self.keys.get(issuer).and_then(JwksCache::keys) else {
            return Verdict::NeedKeys;
        };
        match verifier.verify(keys, token, now, &mut self.signature_checks) {
            Ok(mut p) => {
                log::debug!("accepted token for sub={}", excerpt(p.sub.as_deref().unwrap_or("-")));
                p.claim_headers = claims::extract(&self.claim_headers, token);
                let v = Verified {
                    principal: Rc::new(p),
                    hash: Sha256::digest(token.as_bytes()).into(),
                };
                self.verified.insert(id, token, v.clone(), now, skew);
                Verdict::Allow(v)
            }
            Err(f) if f.reject == Reject::UnknownKey => match unknown {
                UnknownKid::IsUnknown => Verdict::UnknownKey,
                UnknownKid::MayRefetch if self.keys.get(issuer).is_some_and(|c| c.refetch_allowed(host, now_ms)) => {
                    Verdict::NeedKeys
                }
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
        let (denial, principal) = match verdict {
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
                (p.challenges.insufficient_scope(), Some(v.principal))
            }
            Verdict::Deny(r) => (p.challenges.invalid_token(r.description()), None),
            Verdict::UnknownKey if last == LastFetch::Succeeded => {
                log::info!("rejected: {}", Reject::UnknownKey.description());
                (p.challenges.invalid_token(Reject::UnknownKey.description()), None)
            }
            Verdict::UnknownKey | Verdict::NeedKeys | Verdict::HoldForKeys => {
                log::warn!("rejected: {KEYS_UNAVAILABLE}");
                (p.challenges.unavailable(KEYS_UNAVAILABLE), None)
            }
        };
        let who = Who {
            principal,
            ..Who::route(policy)
        };
        Outcome::Deny(denial, who)
    }

    /// Decides every request waiting for `issuer`'s keys, now that a fetch ended.
    fn wake(&mut self, host: &dyn Host, issuer: IssuerId, last: LastFetch) -> Vec<Released> {
        let fetched_at = self.keys.get(issuer).map_or(0, JwksCache::fetched_at);
        // Keys older than the request (another worker's earlier copy) cannot
        // say its kid is unknown: it waits for a fetch that started after it came.
        self.decide(host, issuer, last, &|v, since| {
            matches!(v, Verdict::UnknownKey) && last == LastFetch::Succeeded && fetched_at < since
        })
    }

    /// The requests waiting for `issuer`'s keys that the keys in hand decide,
    /// each with `last` as the fetch it waited for; `keep(verdict, since)`
    /// says which wait on.
    fn decide(
        &mut self,
        host: &dyn Host,
        issuer: IssuerId,
        last: LastFetch,
        keep: &dyn Fn(&Verdict, u64) -> bool,
    ) -> Vec<Released> {
        let now_ms = host.now_ms();
        let mine: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(_, w)| self.issuer(w.policy) == issuer)
            .map(|(ctx, _)| *ctx)
            .collect();
        let mut released = Vec::new();
        for ctx in mine {
            let Some(w) = self.waiting.remove(&ctx) else {
                continue;
            };
            let verdict = self.judge(host, &w.token, now_ms, w.policy, UnknownKid::IsUnknown);
            if keep(&verdict, w.since_ms) {
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
                    outcome: Outcome::Deny(d, Who::route(w.policy)),
                });
            }
        }
        released
    }

    /// Drops tokens verified with `issuer`'s keys whose key its current set
    /// no longer has.
    fn prune_verified(&mut self, issuer: IssuerId) {
        let Some(keys) = self.keys.get(issuer).and_then(JwksCache::keys) else {
            return;
        };
        let policies = &self.policies;
        self.verified
            .retain_keys(|verifier, key| policies.issuer_of(verifier) != issuer || keys.contains_id(key));
    }
}
