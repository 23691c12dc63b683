//! The authenticator: one request's way through the filter, and the requests
//! paused while the issuer's keys are fetched.
//!
//! One `Filter` lives per worker (proxy-wasm VM) and is shared by its root and
//! stream contexts. A request that needs keys we do not have yet is paused and
//! remembered by context id; when the fetch ends, each is made current with
//! `Host::switch_to` and resumed or answered. A paused request whose client
//! leaves is simply forgotten (`on_done`).

use crate::bearer::{self, Bearer};
use crate::challenge::{metadata_document, Challenges, Denial};
use crate::host::{CalloutResponse, Host};
use crate::jwks_cache::{Fetch, JwksCache, FETCH_TIMEOUT_MS};
use crate::verified::{TokenHash, VerifiedCache};
use crate::verify::{Reject, Verifier};
use plugin_config::Config;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

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
/// Verified tokens remembered per worker.
pub const VERIFIED_CAPACITY: usize = 10_000;

struct Waiter {
    token: String,
    hash: TokenHash,
    since_ms: u64,
}

enum Verdict {
    Allow,
    Deny(Denial),
    /// The token names a key we do not have, and no refetch is allowed now.
    UnknownKey,
    /// Keys are missing, or a refetch may find the token's key.
    NeedKeys,
}

struct Metadata {
    path: String,
    body: String,
}

pub struct Filter {
    verifier: Verifier,
    challenges: Challenges,
    metadata: Option<Metadata>,
    jwks: JwksCache,
    verified: VerifiedCache,
    waiting: BTreeMap<u32, Waiter>,
    signature_checks: u64,
}

impl Filter {
    /// `plugin_name` and the config's fingerprint prefix every shared-data key:
    /// Istio gives all plugins on a proxy one keyspace, and a changed config
    /// must never read state written under the old one.
    pub fn new(config: &Config, plugin_name: &str) -> Filter {
        let prefix = shared_prefix(config, plugin_name);
        let o = &config.oidc;
        Filter {
            verifier: Verifier::new(o),
            challenges: Challenges::new(config),
            metadata: o.resource.as_ref().map(|r| Metadata {
                path: r.metadata_path.clone(),
                body: metadata_document(r, &o.issuer),
            }),
            jwks: JwksCache::new(o.jwks.clone(), o.jwks_refresh_seconds, &prefix),
            verified: VerifiedCache::new(VERIFIED_CAPACITY),
            waiting: BTreeMap::new(),
            signature_checks: 0,
        }
    }

    /// Signature checks done so far on this worker.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
    }

    pub fn on_request_headers(&mut self, host: &mut dyn Host) -> Action {
        let headers = host.request_headers();
        if let Some(action) = self.serve_metadata(host, &headers) {
            return action;
        }
        let token = match bearer::extract(&headers) {
            Bearer::Token(t) => t,
            Bearer::Missing => {
                log::debug!("rejected: no bearer token");
                return deny(host, &self.challenges.missing_token());
            }
            Bearer::Multiple => {
                log::info!("rejected: multiple authorization headers");
                return deny(host, &self.challenges.invalid_request("multiple authorization headers"));
            }
            Bearer::Malformed => {
                log::info!("rejected: malformed authorization header");
                return deny(host, &self.challenges.invalid_request("malformed authorization header"));
            }
        };
        let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        let now_ms = host.now_ms();
        let verdict = match self.judge(token, &hash, now_ms, true) {
            Verdict::NeedKeys => match self.jwks.fetch(host) {
                Fetch::Adopted => {
                    self.prune_verified();
                    self.judge(token, &hash, now_ms, false)
                }
                Fetch::Failed => Verdict::NeedKeys,
                Fetch::Pending => {
                    self.waiting.insert(
                        host.context_id(),
                        Waiter {
                            token: token.to_string(),
                            hash,
                            since_ms: now_ms,
                        },
                    );
                    return Action::Pause;
                }
            },
            v => v,
        };
        match self.settle(verdict, false) {
            None => Action::Continue,
            Some(d) => deny(host, &d),
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
            None => log::debug!("ignoring answer to unknown callout {token}"),
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
    }

    /// The stream `id` ended. If it was waiting, forget it; if it owned the
    /// key fetch, that fetch was cancelled with it and the next tick restarts it.
    pub fn on_done(&mut self, host: &mut dyn Host, id: u32) {
        self.waiting.remove(&id);
        if self.jwks.forget_owner(host, id) {
            log::debug!("JWKS fetch owner {id} went away; the next tick fetches again");
        }
    }

    fn judge(&mut self, token: &str, hash: &TokenHash, now_ms: u64, may_refetch: bool) -> Verdict {
        let now = now_ms / 1000;
        let skew = self.verifier.skew();
        if self.verified.get(hash, now, skew).is_some() {
            return Verdict::Allow;
        }
        let Some(keys) = self.jwks.keys() else {
            return Verdict::NeedKeys;
        };
        match self.verifier.verify(keys, token, now, &mut self.signature_checks) {
            Ok(p) => {
                log::debug!("accepted token for sub={}", p.sub.as_deref().unwrap_or("-"));
                self.verified.insert(*hash, p, now, skew);
                Verdict::Allow
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
                Verdict::Deny(self.denial(f.reject))
            }
        }
    }

    /// The denial for a verdict, or `None` to let the request pass. After a
    /// failed fetch, an unknown key is our problem, not the client's.
    fn settle(&self, verdict: Verdict, fetch_failed: bool) -> Option<Denial> {
        match verdict {
            Verdict::Allow => None,
            Verdict::Deny(d) => Some(d),
            Verdict::UnknownKey if !fetch_failed => {
                log::info!("rejected: {}", Reject::UnknownKey.description());
                Some(self.denial(Reject::UnknownKey))
            }
            Verdict::UnknownKey | Verdict::NeedKeys => {
                log::warn!("rejected: signing keys unavailable");
                Some(self.challenges.unavailable("signing keys unavailable"))
            }
        }
    }

    fn denial(&self, reject: Reject) -> Denial {
        match reject {
            Reject::InsufficientScope => self.challenges.insufficient_scope(),
            r => self.challenges.invalid_token(r.description()),
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
            let verdict = self.judge(&w.token, &w.hash, now_ms, false);
            match self.settle(verdict, fetch_failed) {
                None => host.resume_request(),
                Some(d) => {
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
        for id in stale {
            self.waiting.remove(&id);
            if host.switch_to(id) {
                log::warn!("rejected: waited too long for signing keys");
                deny(host, &self.challenges.unavailable("signing keys unavailable"));
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
    fn serve_metadata(&self, host: &mut dyn Host, headers: &[(String, String)]) -> Option<Action> {
        let meta = self.metadata.as_ref()?;
        let path = header(headers, ":path")?;
        if path.split('?').next() != Some(meta.path.as_str()) {
            return None;
        }
        let cors = ("access-control-allow-origin", "*");
        match header(headers, ":method").unwrap_or_default() {
            "GET" | "HEAD" => host.send_response(
                200,
                &[("content-type", "application/json"), ("cache-control", "max-age=300"), cors],
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

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
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
