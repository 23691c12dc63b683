//! Tokens already verified on this worker, so a repeat request skips the
//! signature check (the costliest thing the filter does).
//!
//! Keyed by the token itself, as Envoy's jwt_authn cache is: on a hit the
//! filter does little else, and SHA-256 over an 800-byte token cost more
//! under V8 (≈3.6 µs) than all the rest of the hit path; the map's SipHash
//! and one comparison cost a fraction of that. The token stays in this
//! worker's memory, where the request had it anyway; shared data, which
//! every plugin on the proxy can read, only ever sees SHA-256 values. The
//! token's SHA-256 is computed once, at verification, and kept with it.
//!
//! Per worker, not in shared data: a hit must cost no host call. The bound is
//! kept by dropping expired entries when full, and everything if that is not
//! enough; a miss only costs one signature check. Tokens longer than
//! `MAX_TOKEN_BYTES` are verified every time rather than kept.

use crate::verify::Principal;
use std::collections::HashMap;
use std::rc::Rc;

pub type TokenHash = [u8; 32];

/// Longest token kept; with `capacity` it bounds the memory.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A verified token: who it is, and its SHA-256 (the exchange cache's key).
#[derive(Clone)]
pub struct Verified {
    pub principal: Rc<Principal>,
    pub hash: TokenHash,
}

pub struct VerifiedCache {
    entries: HashMap<Box<str>, Verified>,
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The principal, if the token was verified and has not expired (with skew).
    pub fn get(&self, token: &str, now: u64, skew: u64) -> Option<&Verified> {
        self.entries.get(token).filter(|v| now <= v.principal.exp.saturating_add(skew))
    }

    pub fn insert(&mut self, token: &str, verified: Verified, now: u64, skew: u64) {
        if token.len() > MAX_TOKEN_BYTES {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(token) {
            self.entries.retain(|_, v| now <= v.principal.exp.saturating_add(skew));
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(token.into(), verified);
    }

    /// Forgets tokens whose key is no longer published: a dropped key must
    /// stop passing at once, cached or not.
    pub fn retain_keys(&mut self, keep: impl Fn(u64) -> bool) {
        self.entries.retain(|_, v| keep(v.principal.key_id));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(exp: u64, key_id: u64) -> Verified {
        Verified {
            principal: Rc::new(Principal {
                sub: None,
                client: None,
                exp,
                key_id,
            }),
            hash: [0; 32],
        }
    }

    #[test]
    fn expires_with_skew() {
        let mut c = VerifiedCache::new(10);
        c.insert("t1", v(100, 1), 50, 5);
        assert!(c.get("t1", 105, 5).is_some());
        assert!(c.get("t1", 106, 5).is_none());
        assert!(c.get("t2", 50, 5).is_none());
    }

    #[test]
    fn bounded() {
        let mut c = VerifiedCache::new(3);
        c.insert("t1", v(10, 1), 0, 0);
        c.insert("t2", v(1000, 1), 0, 0);
        c.insert("t3", v(1000, 1), 0, 0);
        // Full: the expired entry goes first.
        c.insert("t4", v(1000, 1), 20, 0);
        assert_eq!(c.len(), 3);
        assert!(c.get("t2", 20, 0).is_some());
        // Full of live entries: start over rather than grow.
        c.insert("t5", v(1000, 1), 20, 0);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn oversize_tokens_are_not_kept() {
        let mut c = VerifiedCache::new(3);
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        c.insert(&long, v(1000, 1), 0, 0);
        assert!(c.get(&long, 0, 0).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn dropped_keys_forget_their_tokens() {
        let mut c = VerifiedCache::new(10);
        c.insert("t1", v(100, 1), 0, 0);
        c.insert("t2", v(100, 2), 0, 0);
        c.retain_keys(|id| id == 2);
        assert!(c.get("t1", 0, 0).is_none());
        assert!(c.get("t2", 0, 0).is_some());
    }
}
