//! Exchanged tokens in proxy-wasm shared data, so every worker serves a
//! user's next request without an IdP round trip.
//!
//! # Slots
//! The table is `support::slots`: `maxEntries` keys named `<prefix>x<slot>`,
//! whatever the churn. An entry's key is a SHA-256 over the exchange
//! parameters and the subject token's SHA-256, so another config's entry
//! is never found.
//!
//! Values are stored ready to forward (`Bearer <token>`). In front of the
//! shared table, each worker keeps the entries it used recently in memory
//! (at most `LOCAL_CAPACITY` and `LOCAL_BYTES`, and no more entries than
//! `maxEntries`), keyed by the subject token's SHA-256 (the
//! parameters are the same for the whole cache), so a returning user costs no
//! shared-data read, no copy and no hashing beyond the map's.

use crate::host::Host;
use crate::support::bounded::Bounded;
pub use crate::support::slots::Put;
use crate::support::slots::{SlotKey, SlotTable};
use crate::token::verified::TokenHash;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// Exchanged tokens larger than this are used but not cached.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Entries each worker keeps in memory in front of shared data, and the
/// bytes their tokens may hold.
pub const LOCAL_CAPACITY: usize = 10_000;
pub const LOCAL_BYTES: usize = 16 << 20;

pub struct TokenCache {
    table: SlotTable,
    /// SHA-256 of everything but the subject token that shapes an exchange.
    params: [u8; 32],
    local: Bounded<TokenHash, (Rc<str>, u64)>,
}

impl TokenCache {
    /// One exchange target's cache. Every target of a config shares the
    /// `max_entries` shared-data slots (their keys differ by `params`) and
    /// gets a `1/targets` share of the per-worker bounds.
    pub fn new(prefix: &str, max_entries: u32, params: [u8; 32], targets: usize) -> TokenCache {
        let targets = targets.max(1);
        TokenCache {
            table: SlotTable::new(format!("{prefix}x"), max_entries, MAX_TOKEN_BYTES),
            params,
            local: Bounded::new(
                (LOCAL_CAPACITY.min(max_entries.max(1) as usize) / targets).max(1),
                LOCAL_BYTES / targets,
            ),
        }
    }

    fn shared_key(&self, subject: &TokenHash) -> SlotKey {
        let mut h = Sha256::new();
        h.update(self.params);
        h.update(subject);
        h.finalize().into()
    }

    /// The cached value for the subject token with SHA-256 `subject`, if
    /// present and not expired at `now_ms`.
    pub fn get(&mut self, host: &dyn Host, subject: &TokenHash, now_ms: u64) -> Option<Rc<str>> {
        if let Some((value, exp)) = self.local.get(subject) {
            if now_ms < *exp {
                return Some(Rc::clone(value));
            }
            self.local.remove(subject);
        }
        let (value, exp) = self.table.get(host, &self.shared_key(subject), now_ms)?;
        let value: Rc<str> = String::from_utf8_lossy(&value).into();
        self.remember(subject, Rc::clone(&value), exp, now_ms);
        Some(value)
    }

    /// Keeps an entry in this worker's memory, within its bound.
    fn remember(&mut self, subject: &TokenHash, value: Rc<str>, exp: u64, now_ms: u64) {
        let size = value.len();
        self.local.insert(*subject, (value, exp), size, |(_, e)| now_ms < *e);
    }

    /// Stores `value` for the subject until `expires_at_ms`: in shared data
    /// unless it is too large, already expired, or another worker wrote the
    /// slot first.
    pub fn put(
        &mut self,
        host: &mut dyn Host,
        subject: &TokenHash,
        value: &Rc<str>,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Put {
        if value.len() > MAX_TOKEN_BYTES || expires_at_ms <= now_ms {
            return Put::NotStored;
        }
        self.remember(subject, Rc::clone(value), expires_at_ms, now_ms);
        let key = self.shared_key(subject);
        self.table.put(host, &key, value.as_bytes(), expires_at_ms, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TokenCache {
        fn stored(&mut self, host: &mut dyn Host, subject: &TokenHash, value: &Rc<str>, exp: u64, now: u64) -> bool {
            self.put(host, subject, value, exp, now) != Put::NotStored
        }
    }
    use crate::host::mock::Mock;

    fn key(i: u32) -> TokenHash {
        Sha256::digest(i.to_le_bytes()).into()
    }

    fn v(s: &str) -> Rc<str> {
        s.into()
    }

    /// A cache as another worker sees it: no local entries.
    fn fresh(prefix: &str, n: u32) -> TokenCache {
        TokenCache::new(prefix, n, [7; 32], 1)
    }

    #[test]
    fn stores_and_finds_until_expiry() {
        let mut m = Mock::new();
        let mut c = fresh("p:", 100);
        assert!(c.stored(&mut m, &key(1), &v("tok1"), 2_000, 1_000));
        assert_eq!(c.get(&m, &key(1), 1_500).as_deref(), Some("tok1"));
        assert_eq!(c.get(&m, &key(1), 2_000), None, "a hit past its lifetime is a miss");
        assert_eq!(c.get(&m, &key(2), 1_500), None);
        // Another worker finds it in shared data.
        assert_eq!(fresh("p:", 100).get(&m, &key(1), 1_500).as_deref(), Some("tok1"));
        assert_eq!(fresh("p:", 100).get(&m, &key(1), 2_000), None);
    }

    #[test]
    fn never_more_keys_than_max_entries_under_churn() {
        let mut m = Mock::new();
        let mut c = fresh("p:", 50);
        for i in 0..5_000 {
            c.put(&mut m, &key(i), &v("t"), 1_000_000, 0);
        }
        let keys = m.shared.borrow().len();
        assert!(keys <= 50, "{keys} keys");
        // The most recent entries are findable, also from another worker.
        assert_eq!(fresh("p:", 50).get(&m, &key(4_999), 1).as_deref(), Some("t"));
        assert!(c.local.len() <= 50, "the local copy is bounded too");
    }

    #[test]
    fn two_ways_keep_colliding_users_apart() {
        // With 2 slots, any two keys can live side by side.
        let mut m = Mock::new();
        let mut c = fresh("p:", 2);
        assert!(c.stored(&mut m, &key(1), &v("a"), 10_000, 0));
        assert!(c.stored(&mut m, &key(2), &v("b"), 10_000, 0));
        assert_eq!(c.get(&m, &key(1), 1).as_deref(), Some("a"));
        assert_eq!(c.get(&m, &key(2), 1).as_deref(), Some("b"));
        // A third evicts the one that expires first.
        assert_eq!(c.put(&mut m, &key(3), &v("c"), 20_000, 0), Put::Evicted);
        let mut other = fresh("p:", 2);
        assert_eq!(other.get(&m, &key(3), 1).as_deref(), Some("c"));
        assert_eq!(
            [other.get(&m, &key(1), 1), other.get(&m, &key(2), 1)]
                .iter()
                .filter(|x| x.is_some())
                .count(),
            1
        );
    }

    #[test]
    fn refresh_overwrites_the_same_slot() {
        let mut m = Mock::new();
        let mut c = fresh("p:", 1_000);
        c.put(&mut m, &key(1), &v("old"), 10_000, 0);
        c.put(&mut m, &key(1), &v("new"), 20_000, 0);
        assert_eq!(c.get(&m, &key(1), 1).as_deref(), Some("new"));
        assert_eq!(fresh("p:", 1_000).get(&m, &key(1), 1).as_deref(), Some("new"));
        assert_eq!(m.shared.borrow().len(), 1);
    }

    #[test]
    fn refuses_oversize_and_expired() {
        let mut m = Mock::new();
        let mut c = fresh("p:", 10);
        assert!(!c.stored(&mut m, &key(1), &v(&"x".repeat(MAX_TOKEN_BYTES + 1)), 10_000, 0));
        assert!(!c.stored(&mut m, &key(1), &v("x"), 5, 5));
        assert!(m.shared.borrow().is_empty());
    }

    #[test]
    fn prefixes_keep_configs_apart() {
        let mut m = Mock::new();
        let mut old = fresh("tef:a:1111:", 10);
        let mut new = fresh("tef:a:2222:", 10);
        old.put(&mut m, &key(1), &v("old-config-token"), 10_000, 0);
        assert_eq!(new.get(&m, &key(1), 1), None);
    }

    #[test]
    fn parameters_keep_exchanges_apart() {
        // Same prefix and subject, other exchange parameters (another audience).
        let mut m = Mock::new();
        let mut a = TokenCache::new("p:", 10, [1; 32], 2);
        let mut b = TokenCache::new("p:", 10, [2; 32], 2);
        a.put(&mut m, &key(1), &v("for-audience-a"), 10_000, 0);
        assert_eq!(b.get(&m, &key(1), 1), None);
        assert_eq!(
            TokenCache::new("p:", 10, [1; 32], 2).get(&m, &key(1), 1).as_deref(),
            Some("for-audience-a")
        );
    }
}
