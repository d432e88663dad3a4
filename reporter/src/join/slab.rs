//! The join's storage: a hasher for keys that are already well spread (pointers,
//! thread ids), and a slab whose references carry a generation, so a reference kept
//! past its record's end finds nothing instead of a newer record in the same slot.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast hasher for pointer and id keys (already well spread).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        // Both halves of the 128-bit product, folded: hashbrown picks the bucket from
        // the low bits, and those of a plain product depend only on the key's low
        // bits, which are all zero in aligned pointers (every key in one bucket).
        let p = (v as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64)
    }
}

pub(super) type Map<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A slab with generation-checked references: a stale reference finds nothing.
pub(super) struct Slab<T> {
    /// Generation (never 0) and item.
    items: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    pub(super) live: usize,
}

/// A slab slot and its generation in one word (generation high, never 0): an
/// `Option<Ref>` is then one word too, written and read whole. Two halves written
/// apart and read as one word cannot be forwarded from the store buffer, and that
/// stall showed in the join's profile wherever a context field was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Ref(std::num::NonZeroU64);

impl Ref {
    pub(super) fn new(idx: u32, generation: u32) -> Ref {
        let g = std::num::NonZeroU64::new((generation as u64) << 32).expect("generation 0");
        Ref(g | idx as u64)
    }
    fn idx(self) -> usize {
        self.0.get() as u32 as usize
    }
    fn generation(self) -> u32 {
        (self.0.get() >> 32) as u32
    }
}

impl<T> Slab<T> {
    pub(super) fn new() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
    pub(super) fn insert(&mut self, t: T) -> Ref {
        self.live += 1;
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.items[idx as usize];
            slot.0 = slot.0.checked_add(1).unwrap_or(1);
            slot.1 = Some(t);
            Ref::new(idx, slot.0)
        } else {
            self.items.push((1, Some(t)));
            Ref::new(self.items.len() as u32 - 1, 1)
        }
    }
    pub(super) fn get(&self, r: Ref) -> Option<&T> {
        match self.items.get(r.idx()) {
            Some((g, Some(t))) if *g == r.generation() => Some(t),
            _ => None,
        }
    }
    pub(super) fn get_mut(&mut self, r: Ref) -> Option<&mut T> {
        match self.items.get_mut(r.idx()) {
            Some((g, Some(t))) if *g == r.generation() => Some(t),
            _ => None,
        }
    }
    pub(super) fn remove(&mut self, r: Ref) -> Option<T> {
        match self.items.get_mut(r.idx()) {
            Some((g, slot @ Some(_))) if *g == r.generation() => {
                self.free.push(r.idx() as u32);
                self.live -= 1;
                slot.take()
            }
            _ => None,
        }
    }
    /// Remove without handing the item back: dropped where it is. False if it was
    /// not there.
    pub(super) fn discard(&mut self, r: Ref) -> bool {
        if let Some((g, slot @ Some(_))) = self.items.get_mut(r.idx())
            && *g == r.generation()
        {
            *slot = None;
            self.free.push(r.idx() as u32);
            self.live -= 1;
            return true;
        }
        false
    }
}
