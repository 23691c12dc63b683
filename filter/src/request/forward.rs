//! The forwarding phase: a request that passed validation goes on as it
//! came, or with its policy's exchanged token, from the cache or from an
//! exchange that concurrent requests for the same user and target share.
//! An exchange may take several callouts in one pause: the filter's own
//! actor token first, shared by every exchange of its target (`launch`),
//! then the exchange, then a provider's second step (`land`). A flight that
//! lands releases every request waiting on it, decided.

mod land;
mod launch;

use crate::edge::challenge::{self, Denial};
use crate::edge::metrics::{Metric, Metrics};
use crate::exchange::actor_tokens::ActorTokens;
use crate::exchange::singleflight::{Flight, Flights, Out};
use crate::exchange::token_cache::{Put, TokenCache};
use crate::exchange::{Exchanged, Exchanger, Failure, Step};
use crate::host::{CalloutResponse, Host};
use crate::request::outcome::{CacheUse, Forwarded, Outcome, Passed, Who};
use crate::request::policy::{Policies, PolicyId, TargetId};
use crate::support::logsafe::excerpt;
use crate::token::verified::{TokenHash, Verified};
use crate::token::verify::Principal;
use std::rc::Rc;

/// How long past its own timeout an exchange callout may stay unanswered
/// before the flight is failed: the proxy's timeout answers first.
const CALLOUT_GRACE_MS: u64 = 2_000;

type Key = (TargetId, TokenHash);

/// What an exchange's flight keeps beside its waiters.
pub(super) struct Job {
    /// Which callout of the exchange is out, or waited on.
    step: Step,
    /// When the exchange started, for the log.
    begun_ms: u64,
    /// The caller's token, to send again if the flight is restarted. Kept in
    /// memory only, never logged.
    subject: Box<str>,
    principal: Rc<Principal>,
}

type ExchangeFlight = Flight<PolicyId, Job>;

/// What a callout answer meant to the flights.
pub enum Answered {
    /// No flight made that callout.
    NotOurs,
    /// The flight made its next callout, in the same pause.
    InFlight,
    /// Flights that ended (an actor token's failure ends every flight
    /// parked on it).
    Landed(Vec<Landed>),
}

/// Requests an exchange released: where they are, and what each gets.
pub struct Landed {
    pub waiters: Vec<(u32, PolicyId)>,
    verified: Verified,
    target: TargetId,
    /// The exchanged token, or why there is none.
    result: Result<Forwarded, Failure>,
    policies: Rc<Policies>,
}

impl Landed {
    /// The outcome for one waiter, on its own route.
    pub fn outcome(&self, policy: PolicyId) -> Outcome {
        match &self.result {
            Ok(forwarded) => Outcome::Allow(Passed {
                verified: self.verified.clone(),
                policy,
                forwarded: Some(forwarded.clone()),
            }),
            Err(f) => {
                let who = Who {
                    policy: Some(policy),
                    principal: Some(Rc::clone(&self.verified.principal)),
                    target: Some(self.target),
                };
                Outcome::Deny(denial(&self.policies, f, policy), who)
            }
        }
    }
}

pub struct Forward {
    policies: Rc<Policies>,
    /// One per exchange target, by `TargetId`.
    caches: Vec<TokenCache>,
    flights: Flights<Key, PolicyId, Job>,
    /// The filter's own actor tokens, by target.
    actors: ActorTokens<Key>,
    /// `cache.expirySkewSeconds`, in ms.
    skew_ms: u64,
}

impl Forward {
    /// `plugin` names the shared-data keys: Istio gives all plugins on a
    /// proxy one keyspace.
    pub fn new(policies: Rc<Policies>, plugin: &str, max_entries: u32, skew_ms: u64) -> Forward {
        let n = policies.targets().count();
        let prefix = format!("tef:{plugin}:");
        let caches = policies
            .targets()
            .map(|x| TokenCache::new(&prefix, max_entries, x.params_digest(), n))
            .collect();
        Forward {
            policies,
            caches,
            flights: Flights::default(),
            actors: ActorTokens::new(n),
            skew_ms,
        }
    }

    /// After validation: go on as is, or with a cached exchanged token, or
    /// join or start the exchange for this token and the policy's target.
    pub fn forward(&mut self, host: &mut dyn Host, token: &str, mut passed: Passed, metrics: &mut Metrics) -> Outcome {
        let Some(target) = self.policies.policy(passed.policy).target else {
            return Outcome::Allow(passed);
        };
        let policies = Rc::clone(&self.policies);
        let x = policies.target(target);
        let now = host.now_ms();
        let hash = passed.verified.hash;
        if let Some(value) = self.cache(target).and_then(|c| c.get(host, &hash, now)) {
            log::debug!("{} cache=hit", exchange_line(x, passed.principal()));
            metrics.inc(Metric::CacheHit);
            passed.forwarded = Some(Forwarded {
                target,
                value,
                cache: CacheUse::Hit,
                latency_ms: None,
            });
            return Outcome::Allow(passed);
        }
        metrics.inc(Metric::CacheMiss);
        let key = (target, hash);
        let ctx = host.context_id();
        let Err(policy) = self.flights.join(&key, ctx, passed.policy) else {
            return Outcome::Wait;
        };
        let flight = Flight {
            out: Out::Orphaned,
            owner: host.origin_id(),
            started_ms: now,
            waiters: vec![(ctx, policy)],
            job: Job {
                step: Step::Token,
                begun_ms: now,
                subject: token.into(),
                principal: Rc::clone(&passed.verified.principal),
            },
        };
        match self.launch(host, key, flight) {
            Ok(()) => Outcome::Wait,
            Err((f, _)) => {
                log::warn!(
                    "{} outcome={} cache=miss",
                    exchange_line(x, passed.principal()),
                    f.outcome()
                );
                metrics.inc(Metric::ExchangesFailed);
                let denial = denial(&self.policies, &f, passed.policy);
                Outcome::Deny(denial, Who::passed(&passed, Some(target)))
            }
        }
    }

    pub fn on_callout(
        &mut self,
        host: &mut dyn Host,
        token: u32,
        resp: &CalloutResponse,
        metrics: &mut Metrics,
    ) -> Answered {
        if let Some((key, flight)) = self.flights.finish(token) {
            return match self.land(host, key, flight, resp, metrics) {
                Some(landed) => Answered::Landed(vec![landed]),
                None => Answered::InFlight,
            };
        }
        match self.actors.finish(token) {
            Some((target, fetch)) => Answered::Landed(self.actor_landed(host, target, fetch, resp, metrics)),
            None => Answered::NotOurs,
        }
    }

    /// Restarts flights (and actor token fetches) whose owner went away,
    /// and fails those that will never be answered.
    pub fn on_tick(&mut self, host: &mut dyn Host, metrics: &mut Metrics) -> Vec<Landed> {
        if self.flights.is_empty() {
            return Vec::new();
        }
        let now = host.now_ms();
        let mut landed = self.actor_tick(host, now, metrics);
        self.restart_orphans(host);
        let policies = Rc::clone(&self.policies);
        let stuck = self.flights.take(|key, f| {
            let limit = policies.target(key.0).config().timeout_ms + CALLOUT_GRACE_MS;
            f.out == Out::Orphaned || now.saturating_sub(f.started_ms) > limit
        });
        for (key, flight) in stuck {
            landed.extend(self.land(host, key, flight, &CalloutResponse::default(), metrics));
        }
        landed
    }

    /// The stream `ctx` ended: it waits no more, and a flight (or actor
    /// token fetch) it owned lost its callout.
    pub fn leave(&mut self, ctx: u32) {
        self.flights.leave(ctx);
        self.actors.leave(ctx);
    }

    fn cache(&mut self, target: TargetId) -> Option<&mut TokenCache> {
        self.caches.get_mut(target.index())
    }

    /// Caches an exchanged token until `until_ms`.
    fn store(
        &mut self,
        host: &mut dyn Host,
        target: TargetId,
        hash: &TokenHash,
        value: &Rc<str>,
        until_ms: u64,
        metrics: &mut Metrics,
    ) {
        let now = host.now_ms();
        let stored = self.cache(target).map(|c| c.put(host, hash, value, until_ms, now));
        if stored == Some(Put::Evicted) {
            metrics.inc(Metric::CacheOverwrite);
        }
    }
}

/// The answer to an exchange failure on `policy`'s route.
fn denial(policies: &Policies, f: &Failure, policy: PolicyId) -> Denial {
    let challenges = &policies.policy(policy).challenges;
    match f {
        Failure::InvalidGrant => challenges.exchange_refused(),
        Failure::InsufficientScope => challenges.insufficient_scope(),
        Failure::ClaimsChallenge(claims) => challenges.insufficient_claims(claims.as_deref()),
        Failure::BadGateway(_) => challenge::bad_gateway(),
        Failure::Unavailable(_) => challenges.unavailable("token exchange unavailable"),
        Failure::Timeout => challenge::gateway_timeout(),
    }
}

/// Until when (ms) an exchanged token may be served from the cache: the
/// sooner of the exchanged token's own expiry (`expires_in`, else an
/// absolute expiry such as Google's `expireTime`, else its JWT `exp`) less
/// `skew_ms`, and the end of the caller's token's validity
/// (`exp` plus the clock skew that validation allows).
///
/// The skew applies to the exchanged token, which is what the upstream will
/// check. Subtracting it from the caller's `exp` as well would make every
/// request in that token's last `expirySkewSeconds` miss the cache and call
/// the IdP; the caller's token is checked on every request anyway, and the
/// cache key is its hash, so a cached entry is never reached once it fails.
pub fn cache_until(ex: &Exchanged, subject: &Principal, clock_skew_s: u64, skew_ms: u64, now_ms: u64) -> u64 {
    let subject_ms = subject.exp.saturating_add(clock_skew_s).saturating_mul(1000);
    ex.expires_at_ms(now_ms)
        .map_or(subject_ms, |i| i.saturating_sub(skew_ms).min(subject_ms))
}

/// The exchange log line's fixed part: who, through which client, for which target.
fn exchange_line(exchanger: &Exchanger, p: &Principal) -> String {
    format!(
        "exchange sub={} client={} audience={}",
        excerpt(p.sub.as_deref().unwrap_or("-")),
        excerpt(p.client.as_deref().unwrap_or("-")),
        exchanger.target_name()
    )
}
