//! The prefix cache of one model replica: KV of whole token blocks, kept after their
//! sequence ended so that a later prompt starting with the same tokens skips their prefill.
//!
//! A block is [`BLOCK_TOKENS`] positions. Its key hashes its tokens and its parent's key (the
//! block before it), and the first block's key hashes the *scope* instead of a parent: so a
//! key stands for the whole prefix up to its block, and two scopes never share a key. The
//! scope is chosen by the server from the tenant's tier (`tenant:<id>`, `tier:<name>`,
//! `global`); nothing in a request reaches it. Keys come from a hasher with per-process
//! random keys, and every entry also stores its tokens and its parent, which a lookup
//! compares: a hash collision is a miss, never another prefix's KV.
//!
//! Memory is bounded by a byte budget. When a block does not fit, the least recently used
//! *leaf* that no running sequence pins is evicted (a leaf: no cached block continues it; an
//! inner block is worth at least as much as any block after it, which cannot be reached
//! without it). Pinned blocks are those a running sequence reused; a chain being inserted is
//! pinned while it is inserted, so making room never evicts the block being extended.
//!
//! The payload type `T` is the backend's copy of a block's KV; this module never looks
//! inside it, so the policy is tested here without a model.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

/// Positions per block. 16, as vLLM's default: a cached prefix is used in whole blocks, so a
/// larger block wastes up to a block of reusable tokens per request (and a conversation turn
/// re-prefills the tail of the previous one), while a smaller one costs one lookup, hash and
/// copy call per block. It is also the plain-Rust forward's transposed key block
/// (`cpu::kv::KEY_BLOCK`), so a cached block's keys copy in and out as one slice per head.
pub const BLOCK_TOKENS: usize = 16;

/// A block's key: the hash of its tokens and of everything before them (see module docs).
pub type BlockKey = u64;

/// What precedes a block: the scope for the first block of a prompt, else the block before.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Parent {
    Scope(Arc<str>),
    Block(BlockKey),
}

#[derive(Debug)]
struct Entry<T> {
    parent: Parent,
    tokens: Box<[u32]>,
    payload: T,
    bytes: usize,
    /// Cached blocks whose parent this is; only a block with none may be evicted.
    children: u32,
    /// Running sequences that reused it (plus an insertion in progress).
    pins: u32,
    /// Tick of the last lookup or insert that touched it (LRU order).
    last_used: u64,
}

/// Size and churn of a cache, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub bytes: usize,
    pub blocks: usize,
    /// Blocks evicted since the cache was created.
    pub evictions: u64,
}

/// Cached blocks of one replica within a byte budget (0: disabled).
#[derive(Debug)]
pub struct PrefixCache<T> {
    budget: usize,
    bytes: usize,
    hasher: RandomState,
    entries: HashMap<BlockKey, Entry<T>>,
    /// Unpinned leaves by `(last_used, key)`: the eviction order, oldest first.
    evictable: BTreeSet<(u64, BlockKey)>,
    tick: u64,
    evictions: u64,
}

impl<T> PrefixCache<T> {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget: budget_bytes,
            bytes: 0,
            hasher: RandomState::new(),
            entries: HashMap::new(),
            evictable: BTreeSet::new(),
            tick: 0,
            evictions: 0,
        }
    }

    /// False with a budget of 0: lookups miss and nothing is kept.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    pub fn stats(&self) -> PrefixStats {
        PrefixStats {
            bytes: self.bytes,
            blocks: self.entries.len(),
            evictions: self.evictions,
        }
    }

    fn key_of(&self, parent: &Parent, tokens: &[u32]) -> BlockKey {
        self.hasher.hash_one((parent, tokens))
    }

    /// The keys of the longest cached prefix of `tokens` (whole blocks only) under `scope`,
    /// first block first, and marks them used. Pin them before using their payloads across
    /// calls that may insert (and so evict).
    pub fn lookup(&mut self, scope: &str, tokens: &[u32]) -> Vec<BlockKey> {
        let mut found = Vec::new();
        if !self.enabled() {
            return found;
        }
        let mut parent = Parent::Scope(scope.into());
        for block in tokens.chunks_exact(BLOCK_TOKENS) {
            let key = self.key_of(&parent, block);
            match self.entries.get(&key) {
                Some(e) if e.parent == parent && *e.tokens == *block => {}
                _ => break,
            }
            self.touch(key);
            found.push(key);
            parent = Parent::Block(key);
        }
        found
    }

    pub fn payload(&self, key: BlockKey) -> Option<&T> {
        self.entries.get(&key).map(|e| &e.payload)
    }

    /// Keeps `keys` from eviction until as many `unpin`s (a running sequence uses them).
    pub fn pin(&mut self, keys: &[BlockKey]) {
        for &key in keys {
            self.update(key, |e| e.pins += 1);
        }
    }

    pub fn unpin(&mut self, keys: &[BlockKey]) {
        for &key in keys {
            self.update(key, |e| e.pins = e.pins.saturating_sub(1));
        }
    }

    /// Offers the whole blocks of `tokens` under `scope`; `payload(i)` makes block `i`'s
    /// copy, `bytes` what one block takes. Blocks already cached are marked used; new ones
    /// are added while room can be made (evicting others, never this chain). Returns the
    /// number of blocks added. A chain longer than the budget keeps the blocks that fit.
    pub fn insert(
        &mut self,
        scope: &str,
        tokens: &[u32],
        bytes: usize,
        mut payload: impl FnMut(usize) -> T,
    ) -> usize {
        if !self.enabled() || bytes > self.budget {
            return 0;
        }
        let mut parent = Parent::Scope(scope.into());
        let mut chain = Vec::new();
        let mut added = 0;
        for (i, block) in tokens.chunks_exact(BLOCK_TOKENS).enumerate() {
            let key = self.key_of(&parent, block);
            match self.entries.get(&key) {
                Some(e) if e.parent == parent && *e.tokens == *block => self.touch(key),
                // A collision with another prefix: its key is taken, so is every later one.
                Some(_) => break,
                None => {
                    if !self.make_room(bytes) {
                        break;
                    }
                    self.add(key, parent, block, bytes, payload(i));
                    added += 1;
                }
            }
            self.pin(&[key]);
            chain.push(key);
            parent = Parent::Block(key);
        }
        self.unpin(&chain);
        added
    }

    /// Evicts until `bytes` more fit; false if the unpinned leaves do not free enough.
    fn make_room(&mut self, bytes: usize) -> bool {
        while self.bytes + bytes > self.budget {
            let Some((_, key)) = self.evictable.pop_first() else {
                return false;
            };
            let Some(entry) = self.entries.remove(&key) else {
                continue;
            };
            self.bytes -= entry.bytes;
            self.evictions += 1;
            if let Parent::Block(parent) = entry.parent {
                self.update(parent, |p| p.children -= 1);
            }
        }
        true
    }

    fn add(&mut self, key: BlockKey, parent: Parent, tokens: &[u32], bytes: usize, payload: T) {
        if let Parent::Block(p) = &parent {
            self.update(*p, |p| p.children += 1);
        }
        self.tick += 1;
        self.entries.insert(
            key,
            Entry {
                parent,
                tokens: tokens.into(),
                payload,
                bytes,
                children: 0,
                pins: 0,
                last_used: self.tick,
            },
        );
        self.bytes += bytes;
        self.evictable.insert((self.tick, key));
    }

    fn touch(&mut self, key: BlockKey) {
        self.tick += 1;
        let tick = self.tick;
        self.update(key, |e| e.last_used = tick);
    }

    /// Applies `change` to an entry, keeping its place in the eviction order in step.
    fn update(&mut self, key: BlockKey, change: impl FnOnce(&mut Entry<T>)) {
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        self.evictable.remove(&(e.last_used, key));
        change(e);
        if e.pins == 0 && e.children == 0 {
            self.evictable.insert((e.last_used, key));
        }
    }
}

#[cfg(test)]
#[path = "prefix_cache_tests.rs"]
mod tests;
