//! Exchanged tokens in proxy-wasm shared data, so every worker serves a
//! user's next request without an IdP round trip.
//!
//! # Slots
//! The ABI cannot delete a shared-data key, so the cache never creates more
//! keys than `maxEntries`: it is a 2-way set-associative table of
//! `maxEntries` slots, keyed `<prefix>x<slot>`. An entry's two candidate
//! slots come from its 32-byte key (SHA-256 over the subject token's hash and
//! the exchange parameters). A slot holds `key (32) | expires_at_ms (8, LE) |
//! token`. A lookup reads the first slot and, on a mismatch, the second; a
//! store takes the candidate that already holds this key, else an empty or
//! expired one, else the one that expires first. Slots are overwritten in
//! place, so memory stays flat however many users churn through: at most
//! `maxEntries` keys of at most `MAX_TOKEN_BYTES + 40` bytes each.
//!
//! Writes use CAS: if another worker wrote the slot since we read it, our
//! write is dropped (the token is still used for the request at hand).

use crate::host::Host;

/// Exchanged tokens larger than this are used but not cached.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

pub type Key = [u8; 32];

pub struct TokenCache {
    prefix: String,
    slots: u64,
}

struct Slot {
    name: String,
    key: Option<Key>,
    expires_at_ms: u64,
    cas: Option<u32>,
}

impl TokenCache {
    pub fn new(prefix: &str, max_entries: u32) -> TokenCache {
        TokenCache {
            prefix: format!("{prefix}x"),
            slots: u64::from(max_entries.max(1)),
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

    /// The cached token for `key`, if present and not expired at `now_ms`.
    pub fn get(&self, host: &dyn Host, key: &Key, now_ms: u64) -> Option<String> {
        for name in self.slot_names(key) {
            let (Some(value), _) = host.shared_get(&name) else {
                continue;
            };
            if let Some((k, exp, token)) = decode(&value) {
                if &k == key {
                    return (now_ms < exp).then(|| String::from_utf8_lossy(token).into_owned());
                }
            }
        }
        None
    }

    /// Stores `token` for `key` until `expires_at_ms`. False if it was not
    /// stored (too large, already expired, or lost a race with another worker).
    pub fn put(&self, host: &mut dyn Host, key: &Key, token: &str, expires_at_ms: u64, now_ms: u64) -> bool {
        if token.len() > MAX_TOKEN_BYTES || expires_at_ms <= now_ms {
            return false;
        }
        let slots = self.slot_names(key).map(|name| {
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
            if s.key.as_ref() == Some(key) {
                (0, 0)
            } else if s.key.is_none() || s.expires_at_ms <= now_ms {
                (1, 0)
            } else {
                (2, s.expires_at_ms)
            }
        };
        let [a, b] = slots;
        let target = if rank(&b) < rank(&a) { b } else { a };
        let mut value = Vec::with_capacity(40 + token.len());
        value.extend_from_slice(key);
        value.extend_from_slice(&expires_at_ms.to_le_bytes());
        value.extend_from_slice(token.as_bytes());
        host.shared_set(&target.name, &value, target.cas)
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
    use crate::mock::Mock;
    use sha2::{Digest, Sha256};

    fn key(i: u32) -> Key {
        Sha256::digest(i.to_le_bytes()).into()
    }

    #[test]
    fn stores_and_finds_until_expiry() {
        let mut m = Mock::new();
        let c = TokenCache::new("p:", 100);
        assert!(c.put(&mut m, &key(1), "tok1", 2_000, 1_000));
        assert_eq!(c.get(&m, &key(1), 1_500).as_deref(), Some("tok1"));
        assert_eq!(c.get(&m, &key(1), 2_000), None, "a hit past its lifetime is a miss");
        assert_eq!(c.get(&m, &key(2), 1_500), None);
    }

    #[test]
    fn never_more_keys_than_max_entries_under_churn() {
        let mut m = Mock::new();
        let c = TokenCache::new("p:", 50);
        for i in 0..5_000 {
            c.put(&mut m, &key(i), "t", 1_000_000, 0);
        }
        let keys = m.shared.borrow().len();
        assert!(keys <= 50, "{keys} keys");
        // The most recent entries are findable.
        assert_eq!(c.get(&m, &key(4_999), 1).as_deref(), Some("t"));
    }

    #[test]
    fn two_ways_keep_colliding_users_apart() {
        // With 2 slots, any two keys can live side by side.
        let mut m = Mock::new();
        let c = TokenCache::new("p:", 2);
        assert!(c.put(&mut m, &key(1), "a", 10_000, 0));
        assert!(c.put(&mut m, &key(2), "b", 10_000, 0));
        assert_eq!(c.get(&m, &key(1), 1).as_deref(), Some("a"));
        assert_eq!(c.get(&m, &key(2), 1).as_deref(), Some("b"));
        // A third evicts the one that expires first.
        assert!(c.put(&mut m, &key(3), "c", 20_000, 0));
        assert_eq!(c.get(&m, &key(3), 1).as_deref(), Some("c"));
        assert_eq!(
            [c.get(&m, &key(1), 1), c.get(&m, &key(2), 1)].iter().filter(|x| x.is_some()).count(),
            1
        );
    }

    #[test]
    fn refresh_overwrites_the_same_slot() {
        let mut m = Mock::new();
        let c = TokenCache::new("p:", 1_000);
        c.put(&mut m, &key(1), "old", 10_000, 0);
        c.put(&mut m, &key(1), "new", 20_000, 0);
        assert_eq!(c.get(&m, &key(1), 1).as_deref(), Some("new"));
        assert_eq!(m.shared.borrow().len(), 1);
    }

    #[test]
    fn refuses_oversize_and_expired() {
        let mut m = Mock::new();
        let c = TokenCache::new("p:", 10);
        assert!(!c.put(&mut m, &key(1), &"x".repeat(MAX_TOKEN_BYTES + 1), 10_000, 0));
        assert!(!c.put(&mut m, &key(1), "x", 5, 5));
        assert!(m.shared.borrow().is_empty());
    }

    #[test]
    fn prefixes_keep_configs_apart() {
        let mut m = Mock::new();
        let old = TokenCache::new("tef:a:1111:", 10);
        let new = TokenCache::new("tef:a:2222:", 10);
        old.put(&mut m, &key(1), "old-config-token", 10_000, 0);
        assert_eq!(new.get(&m, &key(1), 1), None);
    }
}
