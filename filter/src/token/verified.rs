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
//! Per worker, not in shared data: a hit must cost no host call. Bounded in
//! entries and in token bytes (`bounded`); a miss only costs one signature
//! check. Each entry carries a tag (the filter's: which verifier took the
//! token), and is found only under it: a token checked for one resource is
//! never taken for another.

use crate::support::bounded::Bounded;
use crate::token::verify::Principal;
use std::rc::Rc;

pub type TokenHash = [u8; 32];

/// A verified token: who it is, and its SHA-256 (the exchange cache's key).
#[derive(Clone)]
pub struct Verified {
    pub principal: Rc<Principal>,
    pub hash: TokenHash,
}

pub struct VerifiedCache<T> {
    entries: Bounded<Box<str>, (T, Verified)>,
}

impl<T: Copy + PartialEq> VerifiedCache<T> {
    /// At most `capacity` tokens of at most `max_bytes` in all.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        VerifiedCache {
            entries: Bounded::new(capacity, max_bytes),
        }
    }

    /// The principal, if the token was verified under `tag` and has not
    /// expired (with skew).
    pub fn get(&self, tag: T, token: &str, now: u64, skew: u64) -> Option<&Verified> {
        self.entries
            .get(token)
            .filter(|(t, v)| *t == tag && now <= v.principal.exp.saturating_add(skew))
            .map(|(_, v)| v)
    }

    /// Remembers a token verified under `tag` (replacing what it had under another).
    pub fn insert(&mut self, tag: T, token: &str, verified: Verified, now: u64, skew: u64) {
        self.entries
            .insert(token.into(), (tag, verified), token.len(), |(_, v)| {
                now <= v.principal.exp.saturating_add(skew)
            });
    }

    /// Forgets tokens whose key is no longer published: a dropped key must
    /// stop passing at once, cached or not. `keep` sees each entry's tag
    /// and the id of the key that verified it.
    pub fn retain_keys(&mut self, keep: impl Fn(T, u64) -> bool) {
        self.entries.retain(|(t, v)| keep(*t, v.principal.key_id));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
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
                scopes: vec![],
                claim_headers: vec![],
            }),
            hash: [0; 32],
        }
    }

    #[test]
    fn expires_with_skew() {
        let mut c: VerifiedCache<u8> = VerifiedCache::new(10, 1 << 20);
        c.insert(0, "t1", v(100, 1), 50, 5);
        assert!(c.get(0, "t1", 105, 5).is_some());
        assert!(c.get(0, "t1", 106, 5).is_none());
        assert!(c.get(0, "t2", 50, 5).is_none());
    }

    #[test]
    fn bounded() {
        let mut c: VerifiedCache<u8> = VerifiedCache::new(3, 1 << 20);
        c.insert(0, "t1", v(10, 1), 0, 0);
        c.insert(0, "t2", v(1000, 1), 0, 0);
        c.insert(0, "t3", v(1000, 1), 0, 0);
        // Full: the expired entry goes first.
        c.insert(0, "t4", v(1000, 1), 20, 0);
        assert_eq!(c.len(), 3);
        assert!(c.get(0, "t2", 20, 0).is_some());
        // Full of live entries: start over rather than grow.
        c.insert(0, "t5", v(1000, 1), 20, 0);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bounded_in_token_bytes() {
        let mut c: VerifiedCache<u8> = VerifiedCache::new(100, 10);
        c.insert(0, "aaaa", v(1000, 1), 0, 0);
        c.insert(0, "bbbb", v(1000, 1), 0, 0);
        c.insert(0, "cccc", v(1000, 1), 0, 0);
        assert_eq!(c.len(), 1, "12 bytes of tokens do not fit in 10");
        c.insert(0, &"x".repeat(11), v(1000, 1), 0, 0);
        assert!(c.get(0, &"x".repeat(11), 0, 0).is_none());
    }

    #[test]
    fn a_token_is_found_only_under_the_tag_it_was_verified_with() {
        let mut c: VerifiedCache<u8> = VerifiedCache::new(10, 1 << 20);
        c.insert(1, "t1", v(100, 1), 0, 0);
        assert!(c.get(1, "t1", 0, 0).is_some());
        assert!(c.get(2, "t1", 0, 0).is_none(), "checked for another resource");
        c.insert(2, "t1", v(100, 1), 0, 0);
        assert!(c.get(1, "t1", 0, 0).is_none(), "replaced");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn dropped_keys_forget_their_tokens() {
        let mut c: VerifiedCache<u8> = VerifiedCache::new(10, 1 << 20);
        c.insert(0, "t1", v(100, 1), 0, 0);
        c.insert(0, "t2", v(100, 2), 0, 0);
        c.retain_keys(|_, id| id == 2);
        assert!(c.get(0, "t1", 0, 0).is_none());
        assert!(c.get(0, "t2", 0, 0).is_some());
    }
}
