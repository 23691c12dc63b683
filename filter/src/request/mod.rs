//! One request's way through the filter: pick the route's policy, validate
//! the caller's token, then (when the policy says so) exchange it and
//! forward the exchanged one.
//!
//! One `Filter` lives per worker (proxy-wasm VM) and is shared by its root and
//! stream contexts. A request may pause twice: for the issuer's keys, and for
//! its exchange. Paused requests are remembered by context id; when the
//! callout they wait for ends, each is made current with `Host::switch_to`
//! and resumed or answered. A paused request whose client leaves is simply
//! forgotten (`on_done`).
//!
//! Every request ends in one decision, `allow` or `refuse` (or a skip), which
//! is where claims become headers, CORS headers go on refusals, a tool's
//! scopes are checked once its body is read (`edge::tools`), and metrics and
//! the audit line are recorded.

pub mod path;
pub mod routes;

use crate::edge::audit;
use crate::edge::challenge::{self, metadata_document, Challenges, Denial};
use crate::edge::cors;
use crate::edge::metrics::{Metric, Metrics};
use crate::edge::tools::{BodyError, Tools};
use crate::exchange::singleflight::{Flight, Flights, Key as FlightKey};
use crate::exchange::token_cache::{Put, TokenCache};
use crate::exchange::{Call, Exchanged, Exchanger, Failure, Next, Step as ExchangeStep};
use crate::host::{CalloutResponse, Host};
use crate::keys::cache::{Fetch, JwksCache, FETCH_TIMEOUT_MS};
use crate::request::path::Target;
use crate::request::routes::{Route, Routes};
use crate::support::logsafe::excerpt;
use crate::token::bearer::{self, Bearer};
use crate::token::claims;
use crate::token::verified::{Verified, VerifiedCache};
use crate::token::verify::{Principal, Reject, Verifier};
use plugin_config::{ClaimHeader, Config, ConfigError, Cors, RuleAction, RuleExchange, TokenExchange};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// What the proxy should do with the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Paused: either waiting, or answered locally.
    Pause,
}

/// Longest a request waits for keys before it gets a 503, whatever happens
/// to the fetch it waits for.
pub const MAX_WAIT_MS: u64 = FETCH_TIMEOUT_MS + 3_000;
/// Verified tokens remembered per worker, and the bytes they may hold.
pub const VERIFIED_CAPACITY: usize = 10_000;
pub const VERIFIED_BYTES: usize = 16 << 20;
/// Requests that may wait for keys at once, per worker.
pub const MAX_WAITERS: usize = 10_000;

struct Waiter {
    token: String,
    since_ms: u64,
    policy: usize,
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

struct Metadata {
    path: String,
    body: String,
}

/// What happens next to a request that passed validation.
enum Step {
    Continue(Passed),
    /// Waiting on an exchange.
    Wait,
    Deny(Denial),
}

/// A request that may go on: who it is, and how its token was found.
struct Passed {
    principal: Rc<Principal>,
    policy: usize,
    target: Option<usize>,
    /// `hit` or `miss`, when an exchange was involved.
    cache: Option<&'static str>,
    latency_ms: Option<u64>,
}

/// A request whose body must be read (a `tools/call` of a tool with
/// scopes may be in it): who passed, once allowed. Envoy delivers a body to
/// a proxy-wasm filter only after its headers went on, so the headers (with
/// the exchanged token) reach the upstream first; the body, which is the
/// call, is held until it is judged, and a refusal resets the upstream
/// request before any of it is sent.
#[derive(Default)]
struct Gate {
    passed: Option<(Rc<Principal>, usize)>,
}

/// One exchange target: the request builder and its cache.
struct Exchange {
    exchanger: Exchanger,
    cache: TokenCache,
}

/// What a route asks of a request: its scopes, its exchange target (an
/// index into `Filter::exchanges`), and the challenges that name them.
struct Policy {
    required_scopes: Vec<String>,
    exchange: Option<usize>,
    challenges: Challenges,
}

pub struct Filter {
    /// Policy 0 is the top-level sections; the others come from `rules`.
    policies: Vec<Policy>,
    routes: Routes,
    exchanges: Vec<Exchange>,
    flights: Flights,
    /// `cache.expirySkewSeconds`, in ms.
    skew_ms: u64,
    verifier: Verifier,
    metadata: Option<Metadata>,
    jwks: JwksCache,
    verified: VerifiedCache,
    waiting: BTreeMap<u32, Waiter>,
    signature_checks: u64,
    issuer: String,
    cors: Option<Cors>,
    audit: bool,
    claim_headers: Vec<ClaimHeader>,
    tools: Option<Tools>,
    gates: HashMap<u32, Gate>,
    metrics: Metrics,
}

impl Filter {
    /// `plugin_name` and the config's fingerprint prefix every shared-data key:
    /// Istio gives all plugins on a proxy one keyspace, and a changed config
    /// must never read state written under the old one. Fails on what only
    /// the filter can check: a client assertion key that does not fit.
    pub fn new(config: &Config, plugin_name: &str) -> Result<Filter, ConfigError> {
        let prefix = shared_prefix(config, plugin_name);
        let o = &config.oidc;
        // Exchange targets: the default's first, then each rule's own.
        let mut targets: Vec<&TokenExchange> = config.token_exchange.iter().collect();
        let default_target = (!targets.is_empty()).then_some(0);
        let challenges = Challenges::new(config);
        let mut policies = vec![Policy {
            required_scopes: o.required_scopes.clone(),
            exchange: default_target,
            challenges: challenges.clone(),
        }];
        let mut rules = Vec::new();
        for rule in &config.rules {
            let route = match &rule.action {
                RuleAction::Skip => Route::Skip,
                RuleAction::Apply {
                    required_scopes,
                    exchange,
                } => {
                    let exchange = match exchange {
                        RuleExchange::Default => default_target,
                        RuleExchange::None => None,
                        RuleExchange::Replace(t) => {
                            targets.push(t);
                            Some(targets.len() - 1)
                        }
                    };
                    let required_scopes = required_scopes.clone().unwrap_or_else(|| o.required_scopes.clone());
                    policies.push(Policy {
                        challenges: challenges.with_scopes(&required_scopes),
                        required_scopes,
                        exchange,
                    });
                    Route::Policy(policies.len() - 1)
                }
            };
            rules.push((rule.matcher.clone(), route));
        }
        let n = targets.len();
        let exchanges = targets
            .into_iter()
            .map(|t| {
                let exchanger = Exchanger::new(t)?;
                Ok(Exchange {
                    cache: TokenCache::new(&prefix, config.cache.max_entries, exchanger.params_digest(), n),
                    exchanger,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Filter {
            exchanges,
            policies,
            routes: Routes::new(rules),
            flights: Flights::default(),
            skew_ms: config.cache.expiry_skew_seconds.saturating_mul(1000),
            verifier: Verifier::new(o),
            metadata: o.resource.as_ref().map(|r| Metadata {
                path: r.metadata_path.clone(),
                body: metadata_document(r, &o.issuer),
            }),
            jwks: JwksCache::new(o, &prefix),
            verified: VerifiedCache::new(VERIFIED_CAPACITY, VERIFIED_BYTES),
            waiting: BTreeMap::new(),
            signature_checks: 0,
            issuer: o.issuer.clone(),
            cors: config.cors.clone(),
            audit: config.audit,
            claim_headers: config.claim_to_headers.clone(),
            tools: config.mcp.as_ref().and_then(Tools::new),
            gates: HashMap::new(),
            metrics: Metrics::default(),
        })
    }

    /// Signature checks done so far on this worker.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
    }

    /// A request's headers; `body_follows` unless they end the request.
    pub fn on_request_headers(&mut self, host: &mut dyn Host, body_follows: bool) -> Action {
        // Each header read is a call into the proxy: read `:path` once, and
        // only when the metadata, a rule or the tool scopes need it.
        let path = if self.metadata.is_some() || self.routes.by_path() || self.tools.is_some() {
            host.request_header(":path")
        } else {
            None
        };
        if let Some(action) = self.serve_metadata(host, path.as_deref()) {
            return action;
        }
        let authority = if self.routes.by_host() {
            host.request_header(":authority")
        } else {
            None
        };
        // A POST with a body to the MCP endpoint may call a tool with scopes.
        let gate = (self.tools.as_ref().filter(|_| body_follows && is_post(host))).map(Tools::endpoint);
        let (authority, path) = (authority.unwrap_or_default(), path.unwrap_or_default());
        let (policy, gated) = match path::target(&self.routes, &authority, &path, gate) {
            Ok(Target {
                route: Route::Policy(p),
                gated,
            }) => (p, gated),
            Ok(Target { route: Route::Skip, .. }) => return self.skip(host),
            Err(refusal) => {
                log::info!("rejected: {}", refusal.description());
                let d = self.policies[0].challenges.invalid_request(refusal.description());
                return self.refuse(host, &d, None);
            }
        };
        let authorization = host.request_header("authorization");
        let token = match bearer::extract(authorization.as_deref()) {
            Bearer::Token(t) => t,
            Bearer::Missing if cors::is_preflight(host) => {
                // Preflights never carry credentials: whatever answers CORS
                // answers them.
                return Action::Continue;
            }
            Bearer::Missing => {
                log::debug!("rejected: no bearer token");
                let d = self.policies[policy].challenges.missing_token();
                return self.refuse(host, &d, None);
            }
            Bearer::Multiple => {
                log::info!("rejected: multiple authorization headers");
                let d = self.policies[policy]
                    .challenges
                    .invalid_request("multiple authorization headers");
                return self.refuse(host, &d, None);
            }
            Bearer::Malformed => {
                log::info!("rejected: malformed authorization header");
                let d = self.policies[policy]
                    .challenges
                    .invalid_request("malformed authorization header");
                return self.refuse(host, &d, None);
            }
        };
        if gated {
            self.gates.insert(host.context_id(), Gate::default());
        }
        let now_ms = host.now_ms();
        let verdict = match self.judge(host, token, now_ms, true) {
            Verdict::NeedKeys => match self.jwks.fetch(host) {
                Fetch::Adopted => {
                    self.prune_verified();
                    // Another worker's copy: its kid may still be too new for it.
                    match self.judge(host, token, now_ms, true) {
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
        match self.settle(verdict, false, policy) {
            Ok(verified) => match self.pass(host, token, verified, now_ms, policy) {
                Step::Continue(p) => self.allow(host, p, false),
                Step::Wait => Action::Pause,
                Step::Deny(d) => self.refuse(host, &d, None),
            },
            Err(d) => self.refuse(host, &d, None),
        }
    }

    /// Body data of the current request; only gated requests (a tool with
    /// scopes may be called) are held for it, so the hot path reads nothing.
    pub fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Action {
        let ctx = host.context_id();
        let Some(tools) = self.tools.as_ref() else {
            return Action::Continue;
        };
        if !self.gates.contains_key(&ctx) {
            return Action::Continue;
        }
        let needed = if size > tools.max_body_bytes {
            Err(BodyError::TooLarge)
        } else if !end_of_stream {
            // Envoy buffers it until the end.
            return Action::Pause;
        } else {
            let encoded = host
                .request_header("content-encoding")
                .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
            match host.request_body(size) {
                Some(body) if !encoded => tools.required(&body),
                _ => Err(BodyError::Unreadable),
            }
        };
        let needed = match needed {
            Ok(n) => n,
            Err(e) => {
                self.gates.remove(&ctx);
                let d = match e {
                    BodyError::TooLarge => challenge::payload_too_large(),
                    BodyError::Unreadable => self.policies[0]
                        .challenges
                        .invalid_request("request body is not readable JSON"),
                };
                log::info!("rejected: {}", d.description);
                return self.refuse(host, &d, None);
            }
        };
        let passed = self.gates.remove(&ctx).and_then(|g| g.passed);
        match passed {
            Some((principal, _)) if principal.has_scopes(&needed) => Action::Continue,
            Some((principal, policy)) => {
                let mut scopes = self.policies[policy].required_scopes.clone();
                scopes.extend(
                    needed
                        .iter()
                        .filter(|n| !scopes.contains(n))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                let d = self.policies[policy]
                    .challenges
                    .with_scopes(&scopes)
                    .insufficient_scope();
                log::info!(
                    "rejected: the tool needs scopes {}; sub={}",
                    needed.join(" "),
                    excerpt(principal.sub.as_deref().unwrap_or("-"))
                );
                self.refuse(host, &d, None)
            }
            // Not allowed through `allow`: cannot happen, but never let a
            // call through unjudged.
            None => {
                let d = self.policies[0].challenges.insufficient_scope();
                self.refuse(host, &d, None)
            }
        }
    }

    /// A callout answered (or failed: no headers).
    pub fn on_callout(&mut self, host: &mut dyn Host, token: u32, resp: &CalloutResponse) {
        match self.jwks.on_response(host, token, resp) {
            Some(true) => {
                self.metrics.inc(Metric::JwksFetchOk);
                let keys = self.jwks.keys().map_or(0, |k| k.len());
                self.metrics.record(host, Metric::JwksKeys, keys as u64);
                self.prune_verified();
                self.wake(host, false);
            }
            Some(false) => {
                self.metrics.inc(Metric::JwksFetchFailed);
                self.wake(host, true);
            }
            None => {
                let flight = self.flights.finish(token);
                match flight {
                    Some((key, flight)) => self.land(host, key, true, flight, resp),
                    None => log::debug!("ignoring answer to unknown callout {token}"),
                }
            }
        }
    }

    /// After validation: pass as is, or forward a cached exchanged token, or
    /// join or start the exchange for this token and the policy's target.
    fn pass(&mut self, host: &mut dyn Host, token: &str, verified: Verified, now: u64, policy: usize) -> Step {
        let Some(target) = self.policies[policy].exchange else {
            return Step::Continue(Passed {
                principal: verified.principal,
                policy,
                target: None,
                cache: None,
                latency_ms: None,
            });
        };
        let Some(x) = self.exchanges.get_mut(target) else {
            // Cannot happen (targets are built with the policies), but never
            // forward the caller's token where an exchange was configured.
            return Step::Deny(
                self.policies[policy]
                    .challenges
                    .unavailable("token exchange unavailable"),
            );
        };
        let Verified { principal, hash } = verified;
        if let Some(value) = x.cache.get(host, &hash, now) {
            host.set_request_header(x.exchanger.forward_header(), &value);
            log::debug!("{} cache=hit", exchange_line(&x.exchanger, &principal));
            self.metrics.inc(Metric::CacheHit);
            return Step::Continue(Passed {
                principal,
                policy,
                target: Some(target),
                cache: Some("hit"),
                latency_ms: None,
            });
        }
        self.metrics.inc(Metric::CacheMiss);
        let key = (target, hash);
        let ctx = host.context_id();
        if self.flights.join(&key, ctx) {
            return Step::Wait;
        }
        match start(host, &x.exchanger, token) {
            Ok(id) => {
                self.flights.start(
                    key,
                    Flight {
                        token: Some(id),
                        step: ExchangeStep::Token,
                        owner: host.origin_id(),
                        started_ms: now,
                        begun_ms: now,
                        subject: token.to_string(),
                        principal,
                        policy,
                        waiters: vec![ctx],
                    },
                );
                Step::Wait
            }
            Err(f) => {
                log::warn!(
                    "{} outcome={} cache=miss",
                    exchange_line(&x.exchanger, &principal),
                    f.outcome()
                );
                self.metrics.inc(Metric::ExchangesFailed);
                Step::Deny(self.exchange_denial(&f))
            }
        }
    }

    /// A callout of an exchange answered (`answered`), or never will: make
    /// the next callout in the same pause, or cache the token and release
    /// every waiter.
    fn land(
        &mut self,
        host: &mut dyn Host,
        key: FlightKey,
        answered: bool,
        mut flight: Flight,
        resp: &CalloutResponse,
    ) {
        let (target, hash) = key;
        let Some(x) = self.exchanges.get_mut(target) else {
            return;
        };
        let now = host.now_ms();
        let elapsed = now.saturating_sub(flight.started_ms);
        let latency = now.saturating_sub(flight.begun_ms);
        let result = match x.exchanger.answer(flight.step, resp, elapsed, &flight.subject) {
            Ok(Next::Done(ex)) => Ok(ex),
            Ok(Next::Then(call)) => match send(host, &call, x.exchanger.config().timeout_ms) {
                Ok(id) => {
                    flight.token = Some(id);
                    flight.step = call.step;
                    flight.owner = host.origin_id();
                    flight.started_ms = now;
                    self.flights.start(key, flight);
                    return;
                }
                Err(f) => Err(f),
            },
            Err(f) => Err(f),
        };
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(f) => f.outcome(),
        };
        log::info!(
            "{} outcome={outcome} cache=miss latency_ms={latency} waiters={}",
            exchange_line(&x.exchanger, &flight.principal),
            flight.waiters.len()
        );
        let header = x.exchanger.forward_header().to_string();
        let value = result
            .as_ref()
            .map(|ex| Rc::<str>::from(format!("Bearer {}", ex.access_token)));
        let mut evicted = false;
        if let (Ok(ex), Ok(v), true) = (&result, &value, answered) {
            let until = cache_until(ex, &flight.principal, self.verifier.skew(), self.skew_ms, now);
            evicted = x.cache.put(host, &hash, v, until, now) == Put::Evicted;
        }
        let metric = if result.is_ok() {
            Metric::ExchangesOk
        } else {
            Metric::ExchangesFailed
        };
        self.metrics.inc(metric);
        self.metrics.record(host, Metric::ExchangeLatency, latency);
        if evicted {
            self.metrics.inc(Metric::CacheOverwrite);
        }
        // What every waiter gets: the value to forward, or the denial.
        let release = value.map_err(|f| self.exchange_denial(f));
        let origin = host.context_id();
        for w in flight.waiters {
            if !host.switch_to(w) {
                continue;
            }
            match &release {
                Ok(v) => {
                    host.set_request_header(&header, v);
                    let passed = Passed {
                        principal: Rc::clone(&flight.principal),
                        policy: flight.policy,
                        target: Some(target),
                        cache: Some("miss"),
                        latency_ms: Some(latency),
                    };
                    self.allow(host, passed, true);
                }
                Err(d) => {
                    self.refuse(host, d, Some((&flight.principal, target)));
                }
            }
        }
        host.switch_to(origin);
    }

    /// The answer to an exchange failure. The IdP's `invalid_scope` concerns
    /// the exchange's scopes, not the route's, so its 403 names the default ones.
    fn exchange_denial(&self, f: &Failure) -> Denial {
        let challenges = &self.policies[0].challenges;
        match f {
            Failure::InvalidGrant => challenges.invalid_token(challenge::EXCHANGE_REFUSED),
            Failure::InsufficientScope => challenges.insufficient_scope(),
            Failure::ClaimsChallenge(claims) => challenges.insufficient_claims(claims.as_deref()),
            Failure::BadGateway(_) => challenge::bad_gateway(),
            Failure::Unavailable(_) => challenges.unavailable("token exchange unavailable"),
            Failure::Timeout => challenge::gateway_timeout(),
        }
    }

    /// Restarts flights whose owner went away, and fails those that will
    /// never be answered.
    fn tend_flights(&mut self, host: &mut dyn Host) {
        if self.flights.is_empty() {
            return;
        }
        let now = host.now_ms();
        for key in self.flights.orphans() {
            let restarted = match (self.flights.get(&key), self.exchanges.get(key.0)) {
                (Some(f), Some(x)) => start(host, &x.exchanger, &f.subject),
                _ => Err(Failure::Unavailable("no such exchange".into())),
            };
            match restarted {
                Ok(id) => {
                    log::debug!("restarted an exchange whose owner went away");
                    self.flights.restarted(&key, id, host.origin_id(), now);
                }
                Err(f) => log::warn!("could not restart an orphaned exchange: {}", f.outcome()),
            }
        }
        let exchanges = &self.exchanges;
        let stuck = self.flights.take(|key, f| {
            let limit = exchanges.get(key.0).map_or(0, |x| x.exchanger.config().timeout_ms) + 2_000;
            f.token.is_none() || now.saturating_sub(f.started_ms) > limit
        });
        for (key, flight) in stuck {
            self.land(host, key, false, flight, &CalloutResponse::default());
        }
    }

    pub fn on_tick(&mut self, host: &mut dyn Host) {
        self.metrics.flush(host);
        let tick = self.jwks.on_tick(host);
        if tick.adopted {
            self.prune_verified();
        }
        if tick.adopted || tick.lost {
            self.wake(host, !tick.adopted);
        } else if !self.waiting.is_empty()
            && !self.jwks.fetching()
            && (self.jwks.keys().is_none() || self.jwks.refetch_allowed(host, host.now_ms()))
        {
            // Waiters whose fetch was elsewhere (another worker's lease) or
            // went away with its owner.
            match self.jwks.fetch(host) {
                Fetch::Adopted => {
                    self.prune_verified();
                    self.wake(host, false);
                }
                Fetch::Failed => self.wake(host, true),
                Fetch::Pending => {}
            }
        }
        self.expire_waiters(host);
        self.tend_flights(host);
    }

    /// The stream `id` ended. If it was waiting, forget it; if it owned the
    /// key fetch, that fetch was cancelled with it and the next tick restarts it.
    pub fn on_done(&mut self, host: &mut dyn Host, id: u32) {
        self.waiting.remove(&id);
        self.gates.remove(&id);
        self.flights.leave(id);
        if self.jwks.forget_owner(host, id) {
            log::debug!("JWKS fetch owner {id} went away; the next tick fetches again");
        }
    }

    /// Lets the current request go on (`resume`: it was paused). Sets the
    /// claim headers, remembers who passed for a body still to be judged,
    /// and records the decision.
    fn allow(&mut self, host: &mut dyn Host, passed: Passed, resume: bool) -> Action {
        // Gates exist only with tool scopes: no map lookup on the hot path otherwise.
        if self.tools.is_some() {
            if let Some(gate) = self.gates.get_mut(&host.context_id()) {
                gate.passed = Some((Rc::clone(&passed.principal), passed.policy));
            }
        }
        for h in &self.claim_headers {
            match passed.principal.claim_headers.iter().find(|(k, _)| *k == h.header) {
                Some((k, v)) => host.set_request_header(k, v),
                None => host.remove_request_header(&h.header),
            }
        }
        self.metrics.inc(Metric::Allowed);
        if self.audit && log::log_enabled!(log::Level::Info) {
            let target = passed
                .target
                .and_then(|t| self.exchanges.get(t))
                .map(|x| target_of(&x.exchanger));
            let p = &passed.principal;
            log::info!(
                "audit {}",
                audit::Entry {
                    now_ms: host.now_ms(),
                    sub: p.sub.as_deref(),
                    client: p.client.as_deref(),
                    issuer: &self.issuer,
                    decision: "allow",
                    reason: "ok",
                    status: None,
                    target: target.as_deref(),
                    cache: passed.cache,
                    latency_ms: passed.latency_ms,
                }
                .line()
            );
        }
        if resume {
            host.resume_request();
        }
        Action::Continue
    }

    /// Answers the current request with `d`, and records the decision;
    /// `known` is who it was and the exchange target, when known.
    fn refuse(&mut self, host: &mut dyn Host, d: &Denial, known: Option<(&Rc<Principal>, usize)>) -> Action {
        self.gates.remove(&host.context_id());
        self.metrics.inc(Metric::for_denial(d));
        if self.audit && log::log_enabled!(log::Level::Info) {
            let p = known.map(|(p, _)| p);
            let target = known
                .and_then(|(_, t)| self.exchanges.get(t))
                .map(|x| target_of(&x.exchanger));
            log::info!(
                "audit {}",
                audit::Entry {
                    now_ms: host.now_ms(),
                    sub: p.and_then(|p| p.sub.as_deref()),
                    client: p.and_then(|p| p.client.as_deref()),
                    issuer: &self.issuer,
                    decision: "deny",
                    reason: d.description,
                    status: Some(d.status),
                    target: target.as_deref(),
                    cache: None,
                    latency_ms: None,
                }
                .line()
            );
        }
        deny(host, d, self.cors.as_ref())
    }

    /// A route the config skips: untouched, except that no client may
    /// supply the claim headers.
    fn skip(&mut self, host: &mut dyn Host) -> Action {
        for h in &self.claim_headers {
            host.remove_request_header(&h.header);
        }
        self.metrics.inc(Metric::Skipped);
        Action::Continue
    }

    /// Pauses the current request until keys come (or `MAX_WAIT_MS` passes);
    /// at most `MAX_WAITERS` wait, so unknown kids cannot grow memory.
    fn hold(&mut self, host: &mut dyn Host, token: &str, now_ms: u64, policy: usize) -> Action {
        if self.waiting.len() >= MAX_WAITERS {
            log::warn!("rejected: too many requests waiting for signing keys");
            let d = self.policies[policy].challenges.unavailable("signing keys unavailable");
            return self.refuse(host, &d, None);
        }
        self.waiting.insert(
            host.context_id(),
            Waiter {
                token: token.to_string(),
                since_ms: now_ms,
                policy,
            },
        );
        Action::Pause
    }

    fn judge(&mut self, host: &dyn Host, token: &str, now_ms: u64, may_refetch: bool) -> Verdict {
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
            Err(f) if f.reject == Reject::UnknownKey => {
                if !may_refetch {
                    Verdict::UnknownKey
                } else if self.jwks.refetch_allowed(host, now_ms) {
                    Verdict::NeedKeys
                } else {
                    Verdict::HoldForKeys
                }
            }
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

    /// The principal of a valid token with the scopes `policy` requires, or
    /// the denial. After a failed fetch, an unknown key is our problem, not
    /// the client's.
    fn settle(&self, verdict: Verdict, fetch_failed: bool, policy: usize) -> Result<Verified, Denial> {
        let p = &self.policies[policy];
        match verdict {
            Verdict::Allow(v) if v.principal.has_scopes(&p.required_scopes) => Ok(v),
            Verdict::Allow(v) => {
                log::info!(
                    "rejected: insufficient scope; sub={}",
                    excerpt(v.principal.sub.as_deref().unwrap_or("-"))
                );
                Err(p.challenges.insufficient_scope())
            }
            Verdict::Deny(r) => Err(p.challenges.invalid_token(r.description())),
            Verdict::UnknownKey if !fetch_failed => {
                log::info!("rejected: {}", Reject::UnknownKey.description());
                Err(p.challenges.invalid_token(Reject::UnknownKey.description()))
            }
            Verdict::UnknownKey | Verdict::NeedKeys | Verdict::HoldForKeys => {
                log::warn!("rejected: signing keys unavailable");
                Err(p.challenges.unavailable("signing keys unavailable"))
            }
        }
    }

    /// Resumes or answers every waiting request, now that a fetch ended.
    fn wake(&mut self, host: &mut dyn Host, fetch_failed: bool) {
        if self.waiting.is_empty() {
            return;
        }
        let origin = host.context_id();
        let now_ms = host.now_ms();
        for (id, w) in std::mem::take(&mut self.waiting) {
            if !host.switch_to(id) {
                continue;
            }
            let verdict = self.judge(host, &w.token, now_ms, false);
            if matches!(verdict, Verdict::UnknownKey) && !fetch_failed && self.jwks.fetched_at() < w.since_ms {
                // Keys older than the request (another worker's earlier
                // copy) cannot say its kid is unknown: wait for a fetch
                // that started after it came.
                self.waiting.insert(id, w);
                continue;
            }
            let step = match self.settle(verdict, fetch_failed, w.policy) {
                Ok(v) => self.pass(host, &w.token, v, now_ms, w.policy),
                Err(d) => Step::Deny(d),
            };
            match step {
                Step::Continue(p) => {
                    self.allow(host, p, true);
                }
                Step::Wait => {}
                Step::Deny(d) => {
                    self.refuse(host, &d, None);
                }
            }
        }
        host.switch_to(origin);
    }

    fn expire_waiters(&mut self, host: &mut dyn Host) {
        let now_ms = host.now_ms();
        let stale: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(_, w)| now_ms.saturating_sub(w.since_ms) > MAX_WAIT_MS)
            .map(|(id, _)| *id)
            .collect();
        if stale.is_empty() {
            return;
        }
        let origin = host.context_id();
        let unavailable = self.policies[0].challenges.unavailable("signing keys unavailable");
        for id in stale {
            self.waiting.remove(&id);
            if host.switch_to(id) {
                log::warn!("rejected: waited too long for signing keys");
                self.refuse(host, &unavailable, None);
            }
        }
        host.switch_to(origin);
    }

    /// Drops verified tokens whose key the current set no longer has.
    fn prune_verified(&mut self) {
        if let Some(keys) = self.jwks.keys() {
            self.verified.retain_keys(|id| keys.contains_id(id));
        }
    }

    /// Answers RFC 9728 metadata requests without authentication.
    fn serve_metadata(&self, host: &mut dyn Host, path: Option<&str>) -> Option<Action> {
        let meta = self.metadata.as_ref()?;
        if path?.split('?').next() != Some(meta.path.as_str()) {
            return None;
        }
        let cors = ("access-control-allow-origin", "*");
        match host.request_header(":method").as_deref().unwrap_or_default() {
            "GET" | "HEAD" => host.send_response(
                200,
                &[
                    ("content-type", "application/json"),
                    ("cache-control", "max-age=300"),
                    cors,
                ],
                meta.body.as_bytes(),
            ),
            "OPTIONS" => host.send_response(
                204,
                &[
                    cors,
                    ("access-control-allow-methods", "GET, HEAD, OPTIONS"),
                    ("access-control-allow-headers", "authorization, mcp-protocol-version"),
                    ("access-control-max-age", "86400"),
                ],
                b"",
            ),
            _ => host.send_response(405, &[("allow", "GET, HEAD, OPTIONS")], b""),
        }
        Some(Action::Pause)
    }
}

/// `tef:<plugin name>:<first 16 hex of the config hash>:`.
pub fn shared_prefix(config: &Config, plugin_name: &str) -> String {
    let fp = config.fingerprint.get(..16).unwrap_or(&config.fingerprint);
    format!("tef:{plugin_name}:{fp}:")
}

/// Starts an exchange's first callout.
fn start(host: &mut dyn Host, exchanger: &Exchanger, subject: &str) -> Result<u32, Failure> {
    let mut jti = [0u8; 16];
    if exchanger.signs() && !host.random(&mut jti) {
        return Err(Failure::Unavailable("no random source for the client assertion".into()));
    }
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let call = exchanger.request(subject, host.now_ms(), &jti)?;
    send(host, &call, exchanger.config().timeout_ms)
}

fn send(host: &mut dyn Host, call: &Call, timeout_ms: u64) -> Result<u32, Failure> {
    host.dispatch(call.endpoint, &call.header_pairs(), Some(&call.body), timeout_ms)
        .ok_or_else(|| {
            Failure::Unavailable(format!(
                "callout refused: is cluster {:?} defined?",
                call.endpoint.cluster
            ))
        })
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
fn cache_until(ex: &Exchanged, subject: &Principal, clock_skew_s: u64, skew_ms: u64, now_ms: u64) -> u64 {
    let subject_ms = subject.exp.saturating_add(clock_skew_s).saturating_mul(1000);
    let issued_ms = match (ex.expires_in, ex.expires_at.or(ex.jwt_exp)) {
        (Some(s), _) => Some(now_ms.saturating_add(s.saturating_mul(1000))),
        (None, Some(at)) => Some(at.saturating_mul(1000)),
        (None, None) => None,
    };
    issued_ms.map_or(subject_ms, |i| i.saturating_sub(skew_ms).min(subject_ms))
}

/// What an exchange is for: the audiences, else the resources, else the
/// scopes (Entra names its target by scope).
fn target_of(exchanger: &Exchanger) -> String {
    let c = exchanger.config();
    [&c.audiences, &c.resources, &c.scopes]
        .into_iter()
        .find(|l| !l.is_empty())
        .map_or_else(|| "-".to_string(), |l| l.join(","))
}

/// The exchange log line's fixed part: who, through which client, for which target.
fn exchange_line(exchanger: &Exchanger, p: &Principal) -> String {
    format!(
        "exchange sub={} client={} audience={}",
        excerpt(p.sub.as_deref().unwrap_or("-")),
        excerpt(p.client.as_deref().unwrap_or("-")),
        target_of(exchanger)
    )
}

fn is_post(host: &dyn Host) -> bool {
    host.request_header(":method")
        .is_some_and(|m| m.eq_ignore_ascii_case("POST"))
}

/// Answers the current request with `d`, readable by an allowed origin.
fn deny(host: &mut dyn Host, d: &Denial, cors: Option<&Cors>) -> Action {
    let retry;
    let mut headers = vec![("content-type", "application/json")];
    if let Some(w) = &d.www_authenticate {
        headers.push(("www-authenticate", w.as_str()));
    }
    if let Some(r) = d.retry_after {
        retry = r.to_string();
        headers.push(("retry-after", retry.as_str()));
    }
    let cors_headers = cors.and_then(|c| cors::reply_headers(c, host));
    if let Some(ch) = &cors_headers {
        headers.extend(ch.iter().map(|(k, v)| (*k, v.as_str())));
    }
    host.send_response(d.status, &headers, d.body().as_bytes());
    Action::Pause
}

#[cfg(test)]
mod tests;
