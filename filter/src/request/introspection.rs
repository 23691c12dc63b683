//! The introspection phase: a bearer that is not a JWT, on a route whose
//! `oidc` has `introspection`, is checked by asking the issuer (RFC 7662)
//! instead of by its keys. Answers are cached in shared data (`cache`);
//! concurrent requests with the same token on this worker wait on one
//! callout (`Flights`), each released, decided, when it lands, or with a
//! 503 if it never does. An endpoint that is down, slow or malformed gives
//! 503; the log names the step, never the token.

pub mod cache;
pub mod call;

use crate::edge::metrics::{Metric, Metrics};
use crate::exchange::singleflight::{Flight, Flights, Out};
use crate::host::{CalloutResponse, Host};
use crate::request::outcome::{Outcome, Passed, Released, Who};
use crate::request::policy::{IntrospectorId, Policies, PolicyId};
use crate::support::logsafe::excerpt;
use crate::token::claims;
use crate::token::introspection::{self, Answer};
use crate::token::verified::{TokenHash, Verified};
use crate::token::verify::Reject;
use cache::{AnswerCache, Verdict, NEGATIVE_MS};
use call::Fault;
use plugin_config::ClaimHeader;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// How long past its own timeout a callout may stay unanswered before its
/// waiters get a 503: the proxy's timeout answers first.
const CALLOUT_GRACE_MS: u64 = 2_000;
const UNAVAILABLE: &str = "token introspection unavailable";

type Key = (IntrospectorId, TokenHash);

/// What a flight keeps beside its waiters: the token, to send again if
/// the flight is restarted. Kept in memory only, never logged.
struct Job {
    token: Box<str>,
}

pub struct Introspection {
    policies: Rc<Policies>,
    cache: AnswerCache,
    flights: Flights<Key, PolicyId, Job>,
    claim_headers: Vec<ClaimHeader>,
}

impl Introspection {
    /// `plugin` names the shared-data keys; `max_entries` is `cache.maxEntries`.
    pub fn new(policies: Rc<Policies>, claim_headers: Vec<ClaimHeader>, plugin: &str, max_entries: u32) -> Self {
        Introspection {
            policies,
            cache: AnswerCache::new(plugin, max_entries),
            flights: Flights::default(),
            claim_headers,
        }
    }

    /// Whether this phase checks `token` on `policy`'s route: it is not a
    /// JWT, and the route introspects.
    pub fn takes(&self, token: &str, policy: PolicyId) -> bool {
        self.policies.policy(policy).introspector.is_some() && !introspection::is_jwt(token)
    }

    /// Checks `token` for `policy`: from the cache, or waiting for the
    /// endpoint (joining a callout already out for it).
    pub fn check(&mut self, host: &mut dyn Host, token: &str, policy: PolicyId, metrics: &mut Metrics) -> Outcome {
        let Some(id) = self.policies.policy(policy).introspector else {
            return self.settle(Err(Reject::Malformed), policy, [0; 32]);
        };
        let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        let now = host.now_ms();
        let key = AnswerCache::key(&self.policies.introspector(id).params(), &hash);
        if let Some(v) = self.cache.verdict(&key, now) {
            metrics.inc(Metric::IntrospectionCacheHit);
            return self.settle(v, policy, hash);
        }
        if let Some((answer, until)) = self.cache.answer(host, &key, now) {
            metrics.inc(Metric::IntrospectionCacheHit);
            let verdict = self.judge(id, &answer, now, until);
            self.cache.remember(key, &verdict, until, now);
            return self.settle(verdict, policy, hash);
        }
        let ctx = host.context_id();
        let Err(policy) = self.flights.join(&(id, hash), ctx, policy) else {
            return Outcome::Wait;
        };
        match self.policies.introspector(id).dispatch(host, token) {
            Ok(t) => {
                let flight = Flight {
                    out: Out::Callout(t),
                    owner: host.origin_id(),
                    started_ms: now,
                    waiters: vec![(ctx, policy)],
                    job: Job { token: token.into() },
                };
                self.flights.start((id, hash), flight);
                Outcome::Wait
            }
            Err(f) => {
                metrics.inc(Metric::IntrospectionsFailed);
                self.fault(id, f, policy)
            }
        }
    }

    /// A callout answered: `None` if no introspection made it; else the
    /// requests that waited for it, decided.
    pub fn on_callout(
        &mut self,
        host: &mut dyn Host,
        token: u32,
        resp: &CalloutResponse,
        metrics: &mut Metrics,
    ) -> Option<Vec<Released>> {
        let (key, flight) = self.flights.finish(token)?;
        Some(self.land(host, key, flight, resp, metrics))
    }

    /// Restarts flights whose owner went away, and answers the waiters of
    /// those that will never land with a 503.
    pub fn on_tick(&mut self, host: &mut dyn Host, metrics: &mut Metrics) -> Vec<Released> {
        if self.flights.is_empty() {
            return Vec::new();
        }
        for key in self.flights.orphans() {
            let Some(mut flight) = self.flights.remove(&key) else {
                continue;
            };
            if let Ok(t) = self.policies.introspector(key.0).dispatch(host, &flight.job.token) {
                flight.out = Out::Callout(t);
                (flight.owner, flight.started_ms) = (host.origin_id(), host.now_ms());
            }
            self.flights.start(key, flight);
        }
        let now = host.now_ms();
        let stuck = self.flights.take(|_, f| {
            f.out == Out::Orphaned || now.saturating_sub(f.started_ms) > call::TIMEOUT_MS + CALLOUT_GRACE_MS
        });
        let mut released = Vec::new();
        for (key, flight) in stuck {
            released.extend(self.land(host, key, flight, &CalloutResponse::default(), metrics));
        }
        released
    }

    /// The stream `ctx` ended: it waits no more.
    pub fn leave(&mut self, ctx: u32) {
        self.flights.leave(ctx);
    }

    /// A flight's answer (or its absence): cached, and each waiter decided.
    fn land(
        &mut self,
        host: &mut dyn Host,
        key: Key,
        flight: Flight<PolicyId, Job>,
        resp: &CalloutResponse,
        metrics: &mut Metrics,
    ) -> Vec<Released> {
        let (id, hash) = key;
        let now = host.now_ms();
        let read = call::read(resp);
        metrics.inc(match read {
            Ok(_) => Metric::IntrospectionsOk,
            Err(_) => Metric::IntrospectionsFailed,
        });
        let verdict = match read {
            Ok(answer) => {
                let cache_key = AnswerCache::key(&self.policies.introspector(id).params(), &hash);
                let until = self.until(id, &answer, now);
                let verdict = self.judge(id, &answer, now, until);
                let until = if verdict.is_ok() { until } else { now + NEGATIVE_MS };
                let body = matches!(answer, Answer::Active(_)).then_some(resp.body.as_slice());
                self.cache.store(host, &cache_key, body, until, now);
                self.cache.remember(cache_key, &verdict, until, now);
                Ok(verdict)
            }
            Err(f) => Err(f),
        };
        let token = String::from(flight.job.token);
        flight
            .waiters
            .into_iter()
            .map(|(ctx, policy)| Released {
                ctx,
                token: token.clone(),
                outcome: match &verdict {
                    Ok(v) => self.settle(v.clone(), policy, hash),
                    Err(f) => self.fault(id, *f, policy),
                },
            })
            .collect()
    }

    /// Until when (ms) an answer is used: an inactive one `NEGATIVE_MS`;
    /// an active one `cacheSeconds`, or less if the token expires first.
    fn until(&self, id: IntrospectorId, answer: &Answer, now: u64) -> u64 {
        match answer {
            Answer::Inactive => now + NEGATIVE_MS,
            Answer::Active(claims) => {
                let cap = now.saturating_add(self.policies.introspector(id).cache_ms());
                let exp = claims.get("exp").and_then(serde_json::Value::as_u64);
                exp.map_or(cap, |e| e.saturating_mul(1000).min(cap))
            }
        }
    }

    /// What an answer means on `id`'s route at `now`, used until `until`.
    fn judge(&self, id: IntrospectorId, answer: &Answer, now: u64, until: u64) -> Verdict {
        let Answer::Active(claims) = answer else {
            return Err(Reject::Inactive);
        };
        let expect = self.policies.introspector(id).expect();
        let mut p = introspection::check(claims, &expect, now / 1000, until / 1000)?;
        p.claim_headers = claims::from_claims(&self.claim_headers, claims);
        Ok(Rc::new(p))
    }

    /// A verdict on `policy`'s route: allowed with the scopes it needs, or refused.
    fn settle(&self, verdict: Verdict, policy: PolicyId, hash: TokenHash) -> Outcome {
        let p = self.policies.policy(policy);
        match verdict {
            Ok(principal) if principal.has_scopes(&p.required_scopes) => Outcome::Allow(Passed {
                verified: Verified { principal, hash },
                policy,
                forwarded: None,
            }),
            Ok(principal) => {
                log::info!(
                    "rejected: insufficient scope; sub={}",
                    excerpt(principal.sub.as_deref().unwrap_or("-"))
                );
                let who = Who {
                    principal: Some(principal),
                    ..Who::route(policy)
                };
                Outcome::Deny(p.challenges.insufficient_scope(), who)
            }
            Err(r) => {
                log::info!("rejected: {} (introspection)", r.description());
                Outcome::Deny(p.challenges.invalid_token(r.description()), Who::route(policy))
            }
        }
    }

    /// A 503 for `policy`'s route; the log names the step that failed.
    fn fault(&self, id: IntrospectorId, f: Fault, policy: PolicyId) -> Outcome {
        log::warn!(
            "rejected: {UNAVAILABLE}: {} at {}",
            f.step(),
            self.policies.introspector(id).url()
        );
        let d = self.policies.policy(policy).challenges.unavailable(UNAVAILABLE);
        Outcome::Deny(d, Who::route(policy))
    }
}
