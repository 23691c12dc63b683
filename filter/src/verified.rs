//! Tokens already verified on this worker, keyed by SHA-256 of the token, so a
//! repeat request skips the signature check (RSA in pure-Rust wasm is the
//! costliest thing the filter does).
//!
//! Per worker, not in shared data: a hit must cost no host call. The bound is
//! kept by dropping expired entries when full, and everything if that is not
//! enough; a miss only costs one signature check.

use crate::verify::Principal;
use std::collections::HashMap;
use std::rc::Rc;

pub type TokenHash = [u8; 32];

pub struct VerifiedCache {
    entries: HashMap<TokenHash, Rc<Principal>>,
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
    pub fn get(&self, hash: &TokenHash, now: u64, skew: u64) -> Option<&Rc<Principal>> {
        self.entries.get(hash).filter(|p| now <= p.exp.saturating_add(skew))
    }

    pub fn insert(&mut self, hash: TokenHash, principal: Rc<Principal>, now: u64, skew: u64) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            self.entries.retain(|_, p| now <= p.exp.saturating_add(skew));
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(hash, principal);
    }

    /// Forgets tokens whose key is no longer published: a dropped key must
    /// stop passing at once, cached or not.
    pub fn retain_keys(&mut self, keep: impl Fn(u64) -> bool) {
        self.entries.retain(|_, p| keep(p.key_id));
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

    fn p(exp: u64, key_id: u64) -> Rc<Principal> {
        Rc::new(Principal {
            sub: None,
            client: None,
            exp,
            key_id,
        })
    }

    #[test]
    fn expires_with_skew() {
        let mut c = VerifiedCache::new(10);
        c.insert([1; 32], p(100, 1), 50, 5);
        assert!(c.get(&[1; 32], 105, 5).is_some());
        assert!(c.get(&[1; 32], 106, 5).is_none());
    }

    #[test]
    fn bounded() {
        let mut c = VerifiedCache::new(3);
        c.insert([1; 32], p(10, 1), 0, 0);
        c.insert([2; 32], p(1000, 1), 0, 0);
        c.insert([3; 32], p(1000, 1), 0, 0);
        // Full: the expired entry goes first.
        c.insert([4; 32], p(1000, 1), 20, 0);
        assert_eq!(c.len(), 3);
        assert!(c.get(&[2; 32], 20, 0).is_some());
        // Full of live entries: start over rather than grow.
        c.insert([5; 32], p(1000, 1), 20, 0);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn dropped_keys_forget_their_tokens() {
        let mut c = VerifiedCache::new(10);
        c.insert([1; 32], p(100, 1), 0, 0);
        c.insert([2; 32], p(100, 2), 0, 0);
        c.retain_keys(|id| id == 2);
        assert!(c.get(&[1; 32], 0, 0).is_none());
        assert!(c.get(&[2; 32], 0, 0).is_some());
    }
}
