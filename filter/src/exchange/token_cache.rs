//! Exchanged tokens in proxy-wasm shared data, so every worker serves a
//! user's next request without an IdP round trip.
//!
//! # Slots
//! The ABI cannot delete a shared-data key, so the cache never creates more
//! keys than `maxEntries`: it is a 2-way set-associative table of
//! `maxEntries` slots, keyed `<prefix>x<slot>`. An entry's two candidate
//! slots come from its 32-byte key (SHA-256 over the exchange parameters and
//! the subject token's SHA-256). A slot holds `key (32) | expires_at_ms (8, LE) |
//! value`. A lookup reads the first slot and, on a mismatch, the second; a
//! store takes the candidate that already holds this key, else an empty or
//! expired one, else the one that expires first. Slots are overwritten in
//! place, so memory stays flat however many users churn through: at most
//! `maxEntries` keys of at most `MAX_TOKEN_BYTES + 40` bytes each.
//!
//! Writes use CAS: if another worker wrote the slot since we read it, our
//! write is dropped (the token is still used for the request at hand).
//!
//! Values are stored ready to forward (`Bearer <token>`). In front of the
//! shared table, each worker keeps the entries it used recently in memory
//! (at most `LOCAL_CAPACITY` and `LOCAL_BYTES`, and no more entries than
//! `maxEntries`), keyed by the subject token's SHA-256 (the
//! parameters are the same for the whole cache), so a returning user costs no
//! shared-data read, no copy and no hashing beyond the map's.

use crate::host::Host;
use crate::support::bounded::Bounded;
use crate::token::verified::TokenHash;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// Exchanged tokens larger than this are used but not cached.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Entries each worker keeps in memory in front of shared data, and the
/// bytes their tokens may hold.
pub const LOCAL_CAPACITY: usize = 10_000;
pub const LOCAL_BYTES: usize = 16 << 20;

/// A shared-data entry's key: SHA-256(parameters digest ‖ subject hash).
type Key = [u8; 32];

/// What `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Stored,
    /// Stored over another user's live entry: the table is too small for the load.
    Evicted,
    NotStored,
}

pub struct TokenCache {
    prefix: String,
    /// SHA-256 of everything but the subject token that shapes an exchange.
    params: [u8; 32],
    slots: u64,
    local: Bounded<TokenHash, (Rc<str>, u64)>,
}

struct Slot {
    name: String,
    key: Option<Key>,
    expires_at_ms: u64,
    cas: Option<u32>,
}

impl TokenCache {
    /// One exchange target's cache. Every target of a config shares the
    /// `max_entries` shared-data slots (their keys differ by `params`) and
    /// gets a `1/targets` share of the per-worker bounds.
    pub fn new(prefix: &str, max_entries: u32, params: [u8; 32], targets: usize) -> TokenCache {
        let targets = targets.max(1);
        TokenCache {
            prefix: format!("{prefix}x"),
            params,
            slots: u64::from(max_entries.max(1)),
            local: Bounded::new(
                (LOCAL_CAPACITY.min(max_entries.max(1) as usize) / targets).max(1),
                LOCAL_BYTES / targets,
            ),
        }
    }

    fn slot_names(&self, key: &Key) -> [String; 2] {
        let a = u64::from_le_bytes(word(key, 0)) % self.slots;
        let mut b = u64::from_le_bytes(word(key, 8)) % self.slots;
        if b == a && self.slots > 1 {
            b = (a + 1) % self.slots;
        }
        [format!("{}{a}", self.prefix), format!("{}{b}", self.prefix)]
    }

    fn shared_key(&self, subject: &TokenHash) -> Key {
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
        let key = self.shared_key(subject);
        for name in self.slot_names(&key) {
            let (Some(raw), _) = host.shared_get(&name) else {
                continue;
            };
            if let Some((k, exp, value)) = decode(&raw) {
                if k == key {
                    if now_ms >= exp {
                        return None;
                    }
                    let value: Rc<str> = String::from_utf8_lossy(value).into();
                    self.remember(subject, Rc::clone(&value), exp, now_ms);
                    return Some(value);
                }
            }
        }
        None
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
        let slots = self.slot_names(&key).map(|name| {
            let (value, cas) = host.shared_get(&name);
            let decoded = value.as_deref().and_then(decode).map(|(k, exp, _)| (k, exp));
            Slot {
                name,
                key: decoded.map(|(k, _)| k),
                expires_at_ms: decoded.map_or(0, |(_, exp)| exp),
                cas,
            }
        });
        let rank = |s: &Slot| -> (u8, u64) {
            if s.key == Some(key) {
                (0, 0)
            } else if s.key.is_none() || s.expires_at_ms <= now_ms {
                (1, 0)
            } else {
                (2, s.expires_at_ms)
            }
        };
        let [a, b] = slots;
        let target = if rank(&b) < rank(&a) { b } else { a };
        let evicts = rank(&target).0 == 2;
        let mut raw = Vec::with_capacity(40 + value.len());
        raw.extend_from_slice(&key);
        raw.extend_from_slice(&expires_at_ms.to_le_bytes());
        raw.extend_from_slice(value.as_bytes());
        match (host.shared_set(&target.name, &raw, target.cas), evicts) {
            (false, _) => Put::NotStored,
            (true, false) => Put::Stored,
            (true, true) => Put::Evicted,
        }
    }
}

fn word(key: &Key, at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&key[at..at + 8]);
    w
}

fn decode(value: &[u8]) -> Option<(Key, u64, &[u8])> {
    let key: Key = value.get(..32)?.try_into().ok()?;
    let exp = u64::from_le_bytes(value.get(32..40)?.try_into().ok()?);
    Some((key, exp, value.get(40..)?))
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
