//! A fixed table of shared-data slots, for caches every worker reads.
//!
//! The ABI cannot delete a shared-data key, so a cache never creates more
//! keys than it has slots: a 2-way set-associative table of `slots` keys,
//! named `<prefix><slot>`. An entry's two candidate slots come from its
//! 32-byte key (a SHA-256 the cache makes; never a raw token). A slot holds
//! `key (32) | expires_at_ms (8, LE) | value`. A lookup reads the first slot
//! and, on a mismatch, the second; a store takes the candidate that already
//! holds this key, else an empty or expired one, else the one that expires
//! first. Slots are overwritten in place, so memory stays flat however many
//! keys churn through: at most `slots` keys of at most `max_value + 40` bytes.
//!
//! Writes use CAS: if another worker wrote the slot since we read it, our
//! write is dropped (the caller still has its value for the request at hand).

use crate::host::Host;

/// An entry's key: a SHA-256 over whatever the entry depends on.
pub type SlotKey = [u8; 32];

/// What `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Stored,
    /// Stored over another live entry: the table is too small for the load.
    Evicted,
    NotStored,
}

pub struct SlotTable {
    prefix: String,
    slots: u64,
    max_value: usize,
}

struct Slot {
    name: String,
    key: Option<SlotKey>,
    expires_at_ms: u64,
    cas: Option<u32>,
}

impl SlotTable {
    /// `slots` keys named `<prefix><n>`, holding values of at most `max_value` bytes.
    pub fn new(prefix: String, slots: u32, max_value: usize) -> SlotTable {
        SlotTable {
            prefix,
            slots: u64::from(slots.max(1)),
            max_value,
        }
    }

    fn names(&self, key: &SlotKey) -> [String; 2] {
        let a = u64::from_le_bytes(word(key, 0)) % self.slots;
        let mut b = u64::from_le_bytes(word(key, 8)) % self.slots;
        if b == a && self.slots > 1 {
            b = (a + 1) % self.slots;
        }
        [format!("{}{a}", self.prefix), format!("{}{b}", self.prefix)]
    }

    /// The value stored under `key` and until when, if it is live at `now_ms`.
    pub fn get(&self, host: &dyn Host, key: &SlotKey, now_ms: u64) -> Option<(Vec<u8>, u64)> {
        for name in self.names(key) {
            let (Some(raw), _) = host.shared_get(&name) else {
                continue;
            };
            if let Some((k, exp, value)) = decode(&raw) {
                if k == *key {
                    return (now_ms < exp).then(|| (value.to_vec(), exp));
                }
            }
        }
        None
    }

    /// Stores `value` under `key` until `expires_at_ms`, unless it is too
    /// large, already expired, or another worker wrote the slot first.
    pub fn put(&self, host: &mut dyn Host, key: &SlotKey, value: &[u8], expires_at_ms: u64, now_ms: u64) -> Put {
        if value.len() > self.max_value || expires_at_ms <= now_ms {
            return Put::NotStored;
        }
        let slots = self.names(key).map(|name| {
            let (raw, cas) = host.shared_get(&name);
            let decoded = raw.as_deref().and_then(decode).map(|(k, exp, _)| (k, exp));
            Slot {
                name,
                key: decoded.map(|(k, _)| k),
                expires_at_ms: decoded.map_or(0, |(_, exp)| exp),
                cas,
            }
        });
        let rank = |s: &Slot| -> (u8, u64) {
            if s.key == Some(*key) {
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
        raw.extend_from_slice(key);
        raw.extend_from_slice(&expires_at_ms.to_le_bytes());
        raw.extend_from_slice(value);
        match (host.shared_set(&target.name, &raw, target.cas), evicts) {
            (false, _) => Put::NotStored,
            (true, false) => Put::Stored,
            (true, true) => Put::Evicted,
        }
    }
}

fn word(key: &SlotKey, at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&key[at..at + 8]);
    w
}

fn decode(value: &[u8]) -> Option<(SlotKey, u64, &[u8])> {
    let key: SlotKey = value.get(..32)?.try_into().ok()?;
    let exp = u64::from_le_bytes(value.get(32..40)?.try_into().ok()?);
    Some((key, exp, value.get(40..)?))
}
