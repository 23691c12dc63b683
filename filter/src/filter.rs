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

use crate::bearer::{self, Bearer};
use crate::cache::TokenCache;
use crate::challenge::{self, metadata_document, Challenges, Denial};
use crate::exchange::{Call, Exchanged, Exchanger, Failure, Next, Step as ExchangeStep};
use crate::host::{CalloutResponse, Host};
use crate::jwks_cache::{Fetch, JwksCache, FETCH_TIMEOUT_MS};
use crate::routes::{Route, Routes};
use crate::singleflight::{Flight, Flights, Key as FlightKey};
use crate::verified::{Verified, VerifiedCache};
use crate::verify::{Principal, Reject, Verifier};
use plugin_config::{Config, ConfigError, RuleAction, RuleExchange, TokenExchange};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
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

struct Waiter {
    token: String,
    since_ms: u64,
    policy: usize,
}

enum Verdict {
    Allow(Verified),
    Deny(Reject),
    /// The token names a key we do not have, and no refetch is allowed now.
    UnknownKey,
    /// Keys are missing, or a refetch may find the token's key.
    NeedKeys,
}

struct Metadata {
    path: String,
    body: String,
}

/// What happens next to a request that passed validation.
enum Step {
    Continue,
    /// Waiting on an exchange.
    Wait,
    Deny(Denial),
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
        })
    }

    /// Signature checks done so far on this worker.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
    }

    pub fn on_request_headers(&mut self, host: &mut dyn Host) -> Action {
        // Each header read is a call into the proxy: read `:path` once, and
        // only when the metadata or a rule needs it.
        let path = if self.metadata.is_some() || self.routes.by_path() {
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
        let policy = match self.routes.select(authority.as_deref(), path.as_deref()) {
            Ok(Route::Policy(p)) => p,
            Ok(Route::Skip) => return Action::Continue,
            Err(_) => {
                log::info!("rejected: path not in normal form");
                let d = self.policies[0].challenges.invalid_request("path not in normal form");
                return deny(host, &d);
            }
        };
        let challenges = &self.policies[policy].challenges;
        let authorization = host.request_header("authorization");
        let token = match bearer::extract(authorization.as_deref()) {
            Bearer::Token(t) => t,
            Bearer::Missing => {
                log::debug!("rejected: no bearer token");
                return deny(host, &challenges.missing_token());
            }
            Bearer::Multiple => {
                log::info!("rejected: multiple authorization headers");
                return deny(host, &challenges.invalid_request("multiple authorization headers"));
            }
            Bearer::Malformed => {
                log::info!("rejected: malformed authorization header");
                return deny(host, &challenges.invalid_request("malformed authorization header"));
            }
        };
        let now_ms = host.now_ms();
        let verdict = match self.judge(token, now_ms, true) {
            Verdict::NeedKeys => match self.jwks.fetch(host) {
                Fetch::Adopted => {
                    self.prune_verified();
                    self.judge(token, now_ms, false)
                }
                Fetch::Failed => Verdict::NeedKeys,
                Fetch::Pending => {
                    self.waiting.insert(
                        host.context_id(),
                        Waiter {
                            token: token.to_string(),
                            since_ms: now_ms,
                            policy,
                        },
                    );
                    return Action::Pause;
                }
            },
            v => v,
        };
        match self.settle(verdict, false, policy) {
            Ok(verified) => match self.pass(host, token, verified, now_ms, policy) {
                Step::Continue => Action::Continue,
                Step::Wait => Action::Pause,
                Step::Deny(d) => deny(host, &d),
            },
            Err(d) => deny(host, &d),
        }
    }

    /// A callout answered (or failed: no headers).
    pub fn on_callout(&mut self, host: &mut dyn Host, token: u32, resp: &CalloutResponse) {
        match self.jwks.on_response(host, token, resp) {
            Some(true) => {
                self.prune_verified();
                self.wake(host, false);
            }
            Some(false) => self.wake(host, true),
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
            return Step::Continue;
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
            log::debug!("{} cache=hit", audit(&x.exchanger, &principal));
            return Step::Continue;
        }
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
                        waiters: vec![ctx],
                    },
                );
                Step::Wait
            }
            Err(f) => {
                log::warn!("{} outcome={} cache=miss", audit(&x.exchanger, &principal), f.outcome());
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
            audit(&x.exchanger, &flight.principal),
            flight.waiters.len()
        );
        let header = x.exchanger.forward_header().to_string();
        let value = result
            .as_ref()
            .map(|ex| Rc::<str>::from(format!("Bearer {}", ex.access_token)));
        if let (Ok(ex), Ok(v), true) = (&result, &value, answered) {
            let until = cache_until(ex, &flight.principal, self.verifier.skew(), self.skew_ms, now);
            x.cache.put(host, &hash, v, until, now);
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
                    host.resume_request();
                }
                Err(d) => {
                    deny(host, d);
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
            Failure::InvalidGrant => challenges.invalid_token("token exchange refused"),
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
        let tick = self.jwks.on_tick(host);
        if tick.adopted {
            self.prune_verified();
        }
        if tick.adopted || tick.lost {
            self.wake(host, !tick.adopted);
        } else if !self.waiting.is_empty() && !self.jwks.fetching() {
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
        self.flights.leave(id);
        if self.jwks.forget_owner(host, id) {
            log::debug!("JWKS fetch owner {id} went away; the next tick fetches again");
        }
    }

    fn judge(&mut self, token: &str, now_ms: u64, may_refetch: bool) -> Verdict {
        let now = now_ms / 1000;
        let skew = self.verifier.skew();
        if let Some(v) = self.verified.get(token, now, skew) {
            return Verdict::Allow(v.clone());
        }
        let Some(keys) = self.jwks.keys() else {
            return Verdict::NeedKeys;
        };
        match self.verifier.verify(keys, token, now, &mut self.signature_checks) {
            Ok(p) => {
                log::debug!("accepted token for sub={}", p.sub.as_deref().unwrap_or("-"));
                let v = Verified {
                    principal: Rc::new(p),
                    hash: Sha256::digest(token.as_bytes()).into(),
                };
                self.verified.insert(token, v.clone(), now, skew);
                Verdict::Allow(v)
            }
            Err(f) if f.reject == Reject::UnknownKey => {
                if may_refetch && self.jwks.refetch_allowed(now_ms) {
                    Verdict::NeedKeys
                } else {
                    Verdict::UnknownKey
                }
            }
            Err(f) => {
                log::info!(
                    "rejected: {}; sub={}",
                    f.reject.description(),
                    f.sub.as_deref().unwrap_or("-")
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
                    v.principal.sub.as_deref().unwrap_or("-")
                );
                Err(p.challenges.insufficient_scope())
            }
            Verdict::Deny(r) => Err(p.challenges.invalid_token(r.description())),
            Verdict::UnknownKey if !fetch_failed => {
                log::info!("rejected: {}", Reject::UnknownKey.description());
                Err(p.challenges.invalid_token(Reject::UnknownKey.description()))
            }
            Verdict::UnknownKey | Verdict::NeedKeys => {
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
            let verdict = self.judge(&w.token, now_ms, false);
            let step = match self.settle(verdict, fetch_failed, w.policy) {
                Ok(v) => self.pass(host, &w.token, v, now_ms, w.policy),
                Err(d) => Step::Deny(d),
            };
            match step {
                Step::Continue => host.resume_request(),
                Step::Wait => {}
                Step::Deny(d) => {
                    deny(host, &d);
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
                deny(host, &unavailable);
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

/// The audit line's fixed part: who, through which client, for which
/// target (the audiences, else the resources, else the scopes: Entra names
/// its target by scope).
fn audit(exchanger: &Exchanger, p: &Principal) -> String {
    let c = exchanger.config();
    let target = [&c.audiences, &c.resources, &c.scopes]
        .into_iter()
        .find(|l| !l.is_empty())
        .map_or_else(|| "-".to_string(), |l| l.join(","));
    format!(
        "exchange sub={} client={} audience={target}",
        p.sub.as_deref().unwrap_or("-"),
        p.client.as_deref().unwrap_or("-"),
    )
}

fn deny(host: &mut dyn Host, d: &Denial) -> Action {
    let retry;
    let mut headers = vec![("content-type", "application/json")];
    if let Some(w) = &d.www_authenticate {
        headers.push(("www-authenticate", w.as_str()));
    }
    if let Some(r) = d.retry_after {
        retry = r.to_string();
        headers.push(("retry-after", retry.as_str()));
    }
    host.send_response(d.status, &headers, d.body().as_bytes());
    Action::Pause
}

#[cfg(test)]
mod tests;
