//! A per-worker map with hard bounds on both its entries and the bytes its
//! values hold, for the caches in front of the expensive paths (signature
//! checks, shared-data reads). Tokens vary from a few hundred bytes to many
//! kilobytes, so a bound on entries alone would not bound memory.
//!
//! When an entry does not fit, entries that are no longer live go first, then
//! everything: a miss costs one signature check or one shared-data read, so
//! starting over is cheaper than tracking recency on every hit.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

pub struct Bounded<K, V> {
    entries: HashMap<K, (V, usize)>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
}

impl<K: Eq + Hash, V> Bounded<K, V> {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Bounded {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: 0,
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Keeps `value`, which holds `size` bytes, making room as described
    /// above; `live` tells which entries are still worth keeping. A value
    /// larger than the whole byte budget is not kept.
    pub fn insert(&mut self, key: K, value: V, size: usize, live: impl Fn(&V) -> bool) {
        self.remove(&key);
        if size > self.max_bytes {
            return;
        }
        if !self.fits(size) {
            self.retain(live);
            if !self.fits(size) {
                self.entries.clear();
                self.bytes = 0;
            }
        }
        self.bytes += size;
        self.entries.insert(key, (value, size));
    }

    fn fits(&self, size: usize) -> bool {
        self.entries.len() < self.max_entries && self.bytes + size <= self.max_bytes
    }

    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some((_, size)) = self.entries.remove(key) {
            self.bytes -= size;
        }
    }

    pub fn retain(&mut self, keep: impl Fn(&V) -> bool) {
        let mut freed = 0;
        self.entries.retain(|_, (v, size)| {
            let kept = keep(v);
            if !kept {
                freed += *size;
            }
            kept
        });
        self.bytes -= freed;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the values hold, as their sizes were given.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_entries_dead_ones_first() {
        let mut m: Bounded<u32, u64> = Bounded::new(3, 1_000);
        m.insert(1, 10, 1, |_| true);
        m.insert(2, 1_000, 1, |_| true);
        m.insert(3, 1_000, 1, |_| true);
        // Full: the entry that is no longer live goes first.
        m.insert(4, 1_000, 1, |exp| *exp > 20);
        assert_eq!(m.len(), 3);
        assert!(m.get(&1).is_none() && m.get(&2).is_some());
        // Full of live entries: start over rather than grow.
        m.insert(5, 1_000, 1, |exp| *exp > 20);
        assert_eq!(m.len(), 1);
        assert_eq!(m.bytes(), 1);
    }

    #[test]
    fn bounded_in_bytes() {
        let mut m: Bounded<u32, ()> = Bounded::new(100, 10);
        m.insert(1, (), 4, |_| true);
        m.insert(2, (), 4, |_| true);
        assert_eq!((m.len(), m.bytes()), (2, 8));
        m.insert(3, (), 4, |_| true);
        assert_eq!((m.len(), m.bytes()), (1, 4), "over the byte budget: start over");
        m.insert(4, (), 11, |_| true);
        assert!(m.get(&4).is_none(), "larger than the budget: not kept");
        assert_eq!(m.bytes(), 4);
    }

    #[test]
    fn replacing_and_removing_keep_the_count() {
        let mut m: Bounded<u32, u8> = Bounded::new(10, 100);
        m.insert(1, 1, 30, |_| true);
        m.insert(1, 2, 50, |_| true);
        assert_eq!((m.get(&1), m.bytes()), (Some(&2), 50));
        m.retain(|v| *v != 2);
        assert_eq!((m.len(), m.bytes()), (0, 0));
        m.insert(2, 3, 20, |_| true);
        m.remove(&2);
        assert_eq!((m.len(), m.bytes()), (0, 0));
    }
}
