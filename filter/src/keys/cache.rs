//! Keeping the issuer's keys fresh on every worker with one fetch.
//!
//! The JWKS is fetched with an HTTP callout and published in proxy-wasm shared
//! data as `fetched_at_ms | refresh_at_ms | body` (two little-endian u64s, then
//! the document), under a key named for the issuer and where its keys are,
//! so a config push that keeps them keeps the keys too. Each worker
//! parses the published copy once per change. A lease entry (`until_ms`,
//! written with CAS) makes one worker at a time do the fetch; the others see
//! the result on their next tick.
//!
//! A callout dies with the context that made it (Envoy cancels it when the
//! stream ends), so the cache remembers which context owns the fetch: if that
//! client goes away, the fetch is forgotten and the next tick starts another.
//!
//! Without `oidc.jwksUrl`, the worker that fetches first reads the JWKS URL
//! from the issuer's metadata (`discovery`), with callouts made under the
//! same lease, and keeps it for the VM's life. To the filter, those callouts
//! are part of the fetch: it stays pending until keys come or it fails.

use crate::host::{CalloutResponse, Host, MAX_CALLOUT_BODY};
use crate::keys::discovery::{Discovery, Outcome};
use crate::keys::jwks::{self, KeySet};
use plugin_config::{Endpoint, KeySource, Oidc};

/// How long a JWKS (or issuer metadata) callout may take.
pub const FETCH_TIMEOUT_MS: u64 = 5_000;
/// A token with an unknown `kid` triggers a refetch at most this often.
pub const KID_REFETCH_INTERVAL_MS: u64 = 5_000;
/// Lower bound on an IdP-supplied max-age.
const MIN_MAX_AGE_MS: u64 = 30_000;
/// Retry back-off after a failed fetch: 1 s, doubling, capped.
const RETRY_MIN_MS: u64 = 1_000;
const RETRY_MAX_MS: u64 = 10_000;
/// How long past its callout timeout a fetch (and its lease) may run before
/// it is given up: the proxy's own timeout answers first.
const LEASE_GRACE_MS: u64 = 1_000;

struct InFlight {
    token: u32,
    owner: u32,
    started_ms: u64,
}

/// Where the JWKS is.
enum Source {
    Known(Endpoint),
    /// Not known yet: the issuer's metadata will say.
    Discovering(Discovery),
}

/// The result of asking for a fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetch {
    /// A fetch is under way, here or on another worker.
    Pending,
    /// Another worker had already published newer keys; they are loaded now.
    Adopted,
    /// No fetch could be started (back-off after failures, or the callout was refused).
    Failed,
}

/// What a callout answer meant to the key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not our callout.
    NotOurs,
    /// A discovery step: the fetch goes on with the next callout.
    Continuing,
    /// Usable keys came back (or a newer copy was adopted on the way).
    Fetched,
    /// The fetch failed.
    Failed,
}

/// What a tick changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Newer keys were loaded from shared data.
    pub adopted: bool,
    /// Our fetch was lost (owner gone, or no answer in time).
    pub lost: bool,
}

pub struct JwksCache {
    source: Source,
    refresh_ms: u64,
    data_key: String,
    lease_key: String,
    /// When any worker last started a fetch (shared, for `refetch_allowed`).
    attempt_key: String,
    keys: Option<KeySet>,
    /// `fetched_at_ms` of the copy in `keys`.
    version: u64,
    refresh_at_ms: u64,
    in_flight: Option<InFlight>,
    failures: u32,
    retry_at_ms: u64,
}

impl JwksCache {
    /// The cache of `oidc`'s issuer's keys, published in shared data under
    /// `key` (and `key.lease`, `key.attempt`).
    pub fn new(oidc: &Oidc, key: &str) -> JwksCache {
        let source = match &oidc.keys {
            KeySource::Jwks(e) => Source::Known(e.clone()),
            KeySource::Discovery(d) => Source::Discovering(Discovery::new(d.clone(), oidc.issuer.clone())),
        };
        JwksCache {
            source,
            refresh_ms: oidc.jwks_refresh_seconds.saturating_mul(1000),
            data_key: key.to_string(),
            lease_key: format!("{key}.lease"),
            attempt_key: format!("{key}.attempt"),
            keys: None,
            version: 0,
            refresh_at_ms: 0,
            in_flight: None,
            failures: 0,
            retry_at_ms: 0,
        }
    }

    pub fn keys(&self) -> Option<&KeySet> {
        self.keys.as_ref()
    }

    /// When the keys we hold were fetched (0: none yet), ms.
    pub fn fetched_at(&self) -> u64 {
        self.version
    }

    pub fn fetching(&self) -> bool {
        self.in_flight.is_some()
    }

    /// An unknown `kid` may refetch only if our keys are not brand new, no
    /// worker of this proxy started a fetch within the interval, and a
    /// failing endpoint's back-off is over: whatever the traffic, the IdP
    /// sees at most one GET per interval from a proxy.
    pub fn refetch_allowed(&self, host: &dyn Host, now_ms: u64) -> bool {
        let attempted = host
            .shared_get(&self.attempt_key)
            .0
            .as_deref()
            .and_then(read_u64)
            .unwrap_or(0);
        now_ms >= self.retry_at_ms && now_ms.saturating_sub(self.version.max(attempted)) >= KID_REFETCH_INTERVAL_MS
    }

    /// Loads the shared copy if it is newer than ours. True if it was.
    pub fn sync(&mut self, host: &dyn Host) -> bool {
        let (Some(value), _) = host.shared_get(&self.data_key) else {
            return false;
        };
        let Some((fetched_at, refresh_at, body)) = split(&value) else {
            return false;
        };
        if fetched_at <= self.version {
            return false;
        }
        match KeySet::parse(body) {
            Ok((keys, _)) => {
                self.adopt(keys, fetched_at, refresh_at);
                true
            }
            Err(_) => false,
        }
    }

    fn adopt(&mut self, keys: KeySet, fetched_at: u64, refresh_at: u64) {
        self.keys = Some(keys);
        self.version = fetched_at;
        self.refresh_at_ms = refresh_at;
        self.failures = 0;
    }

    /// Makes sure keys newer than ours are on their way: adopts another
    /// worker's newer copy, or takes the lease and starts a callout.
    pub fn fetch(&mut self, host: &mut dyn Host) -> Fetch {
        if self.in_flight.is_some() {
            return Fetch::Pending;
        }
        if self.sync(host) {
            return Fetch::Adopted;
        }
        let now = host.now_ms();
        if self.keys.is_none() && now < self.retry_at_ms {
            return Fetch::Failed;
        }
        self.start(host, now)
    }

    /// Takes the lease and starts a callout (for the JWKS, or for the
    /// metadata that names it), having just synced.
    fn start(&mut self, host: &mut dyn Host, now: u64) -> Fetch {
        if !self.take_lease(host, now) {
            return Fetch::Pending;
        }
        let (e, what, accept) = match &self.source {
            Source::Known(e) => (e, "JWKS", "application/json, application/jwk-set+json"),
            Source::Discovering(d) => (d.endpoint(), "oidc discovery", "application/json"),
        };
        let headers = [
            (":method", "GET"),
            (":path", e.path.as_str()),
            (":authority", e.authority.as_str()),
            (":scheme", e.scheme.as_str()),
            ("accept", accept),
        ];
        match host.dispatch(e, &headers, None, FETCH_TIMEOUT_MS) {
            Some(token) => {
                host.shared_set(&self.attempt_key, &now.to_le_bytes(), None);
                self.in_flight = Some(InFlight {
                    token,
                    owner: host.origin_id(),
                    started_ms: now,
                });
                Fetch::Pending
            }
            None => {
                log::warn!(
                    "{what} fetch from {} could not start: is cluster {:?} defined?",
                    e.url,
                    e.cluster
                );
                self.release_lease(host);
                self.failed(now);
                Fetch::Failed
            }
        }
    }

    /// Handles a callout answer.
    pub fn on_response(&mut self, host: &mut dyn Host, token: u32, resp: &CalloutResponse) -> Answer {
        if self.in_flight.as_ref().map(|f| f.token) != Some(token) {
            return Answer::NotOurs;
        }
        self.in_flight = None;
        let now = host.now_ms();
        let url = match &mut self.source {
            Source::Known(e) => e.url.clone(),
            Source::Discovering(d) => {
                let outcome = d.on_response(resp);
                self.release_lease(host);
                match outcome {
                    Outcome::Found(e) => self.source = Source::Known(e),
                    Outcome::Fallback => {}
                    Outcome::Failed => {
                        self.failed(now);
                        return Answer::Failed;
                    }
                }
                // The next callout at once, under a fresh lease.
                return match self.start(host, now) {
                    Fetch::Pending => Answer::Continuing,
                    Fetch::Adopted => Answer::Fetched,
                    Fetch::Failed => Answer::Failed,
                };
            }
        };
        let answer = self.publish(host, resp, &url, now);
        // Freed only now: a worker that takes the lease next finds the keys
        // published (it syncs first) instead of fetching them again.
        self.release_lease(host);
        answer
    }

    /// Parses a JWKS answer, publishes it in shared data and loads it.
    fn publish(&mut self, host: &mut dyn Host, resp: &CalloutResponse, url: &str, now: u64) -> Answer {
        match self.accept(resp, now) {
            Ok((keys, skipped, refresh_at, body)) => {
                if skipped > 0 {
                    log::info!("JWKS from {url}: skipped {skipped} unusable key(s)");
                }
                let mut value = Vec::with_capacity(16 + body.len());
                value.extend_from_slice(&now.to_le_bytes());
                value.extend_from_slice(&refresh_at.to_le_bytes());
                value.extend_from_slice(body);
                if !host.shared_set(&self.data_key, &value, None) {
                    log::warn!("could not publish JWKS in shared data; this worker keeps its copy");
                }
                self.adopt(keys, now, refresh_at);
                Answer::Fetched
            }
            Err(why) => {
                log::warn!("JWKS fetch from {url} failed: {why}");
                self.failed(now);
                Answer::Failed
            }
        }
    }

    fn accept<'r>(&self, resp: &'r CalloutResponse, now: u64) -> Result<(KeySet, usize, u64, &'r [u8]), String> {
        let status = resp
            .status()
            .ok_or("no response (connection failed, reset or timed out)")?;
        if status != 200 {
            return Err(format!("HTTP status {status}"));
        }
        if resp.truncated {
            return Err(format!("document larger than {MAX_CALLOUT_BODY} bytes"));
        }
        let (keys, skipped) = KeySet::parse(&resp.body).map_err(|e| e.to_string())?;
        let max_age_ms = resp
            .header("cache-control")
            .and_then(jwks::max_age)
            .map(|s| s.saturating_mul(1000).max(MIN_MAX_AGE_MS));
        let ttl = max_age_ms.map_or(self.refresh_ms, |m| m.min(self.refresh_ms));
        Ok((keys, skipped, now.saturating_add(ttl), &resp.body))
    }

    /// Periodic upkeep: adopt what other workers fetched, give up on a fetch
    /// that will never answer, and refresh or retry when due (the shared copy
    /// was read once already, so straight to the lease).
    pub fn on_tick(&mut self, host: &mut dyn Host) -> Tick {
        let mut tick = Tick {
            adopted: self.sync(host),
            lost: false,
        };
        let now = host.now_ms();
        if let Some(f) = &self.in_flight {
            if now > f.started_ms + FETCH_TIMEOUT_MS + LEASE_GRACE_MS {
                self.in_flight = None;
                self.release_lease(host);
                self.failed(now);
                tick.lost = true;
            }
        }
        let due = match self.keys {
            Some(_) => now >= self.refresh_at_ms && now >= self.retry_at_ms,
            None => now >= self.retry_at_ms,
        };
        if due && self.in_flight.is_none() {
            self.start(host, now);
        }
        tick
    }

    /// The context `id` is gone; if it owned the fetch, the fetch went with it.
    pub fn forget_owner(&mut self, host: &mut dyn Host, id: u32) -> bool {
        if self.in_flight.as_ref().map(|f| f.owner) == Some(id) {
            self.in_flight = None;
            self.release_lease(host);
            return true;
        }
        false
    }

    fn failed(&mut self, now: u64) {
        let backoff = RETRY_MIN_MS.saturating_mul(1 << self.failures.min(4)).min(RETRY_MAX_MS);
        self.failures = self.failures.saturating_add(1);
        self.retry_at_ms = now + backoff;
    }

    fn take_lease(&self, host: &mut dyn Host, now: u64) -> bool {
        let (value, cas) = host.shared_get(&self.lease_key);
        let held_until = value.as_deref().and_then(read_u64).unwrap_or(0);
        if held_until > now {
            return false;
        }
        let until = now + FETCH_TIMEOUT_MS + LEASE_GRACE_MS;
        host.shared_set(&self.lease_key, &until.to_le_bytes(), cas)
    }

    fn release_lease(&self, host: &mut dyn Host) {
        host.shared_set(&self.lease_key, &0u64.to_le_bytes(), None);
    }
}

fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn split(value: &[u8]) -> Option<(u64, u64, &[u8])> {
    Some((read_u64(value)?, read_u64(value.get(8..)?)?, value.get(16..)?))
}
