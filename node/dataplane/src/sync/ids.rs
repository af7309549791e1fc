//! Id allocation for backends (`u32`) and reverse-NAT entries (`u16`).
//!
//! The kernel's conntrack, affinity and socket reverse-NAT entries refer to
//! these ids, so an id must mean the same thing for as long as those entries
//! may use it. Two rules follow:
//! - ids already in the pinned maps are adopted on start ([`IdAllocator::adopt`]),
//!   so a restarted agent never renumbers;
//! - a released id comes back only after the counter has gone once round the
//!   whole id space, which leaves the longest possible time for stale kernel
//!   state that names it to expire.

use std::collections::HashSet;

use crate::{Error, Result};

/// Hands out ids in `1..=max`, never 0, each at most once until released.
#[derive(Debug)]
pub(crate) struct IdAllocator {
    /// What the ids are for, in errors.
    what: &'static str,
    /// The largest id.
    max: u32,
    /// The next id to try.
    next: u32,
    /// Ids in use.
    used: HashSet<u32>,
    /// How many ids were ever released.
    releases: u64,
}

impl IdAllocator {
    /// An allocator of ids `1..=max` (`max` at least 1).
    pub(crate) fn new(what: &'static str, max: u32) -> Self {
        Self {
            what,
            max: max.max(1),
            next: 1,
            used: HashSet::new(),
            releases: 0,
        }
    }

    /// Records an id found in the maps as used, and moves the counter past
    /// it so that fresh ids come after the adopted ones. Returns false for an
    /// id out of range or already taken.
    pub(crate) fn adopt(&mut self, id: u32) -> bool {
        if id == 0 || id > self.max || !self.used.insert(id) {
            return false;
        }
        if id >= self.next {
            self.next = if id == self.max { 1 } else { id + 1 };
        }
        true
    }

    /// A fresh id, or [`Error::IdsExhausted`] when all `max` are in use.
    pub(crate) fn allocate(&mut self) -> Result<u32> {
        if self.used.len() >= self.max as usize {
            return Err(Error::IdsExhausted {
                what: self.what,
                max: self.max,
            });
        }
        // Not every id is used, so this finds one within `max` steps.
        loop {
            let id = self.next;
            self.next = if id >= self.max { 1 } else { id + 1 };
            if self.used.insert(id) {
                return Ok(id);
            }
        }
    }

    /// Gives an id back; call only once nothing in the maps names it.
    pub(crate) fn release(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.releases += 1;
        }
    }

    /// How many ids were ever released: a change means one is free again.
    pub(crate) fn releases(&self) -> u64 {
        self.releases
    }

    /// Whether `id` is in use.
    #[cfg(test)]
    pub(crate) fn is_used(&self, id: u32) -> bool {
        self.used.contains(&id)
    }

    /// How many ids are in use.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.used.len()
    }
}
