//! The prefix cache of a loaded model (see `backend::prefix_cache`): it lives and dies with
//! the `LlamaModel`, so a reload (new weights) always starts with an empty cache.
//!
//! Only the plain-Rust CPU forward (`cpu`) has one: its KV is plain memory, a cached block
//! is a copy of a slot's positions and reuse copies it back. The candle-op forward (CUDA,
//! dense weights) runs uncached: `with_prefix_cache` leaves its budget at 0.

use super::LlamaModel;
use crate::backend::prefix_cache::{PrefixCache, BLOCK_TOKENS};
use crate::backend::{BackendError, PrefixStats, Result};

impl LlamaModel {
    /// Gives the model a prefix cache of `budget_bytes` (0: none). Before any request.
    pub fn with_prefix_cache(mut self, budget_bytes: usize) -> Self {
        let budget = if self.cpu.is_some() { budget_bytes } else { 0 };
        self.prefix = PrefixCache::new(budget);
        self
    }

    /// `Generator::reuse_prefix`.
    pub(super) fn reuse_cached(
        &mut self,
        slot: usize,
        scope: &str,
        tokens: &[u32],
    ) -> Result<usize> {
        let len = self.slot_len(slot).ok_or_else(|| BackendError::Slot {
            slot,
            reason: "no such slot".into(),
        })?;
        let Some(cpu) = &mut self.cpu else {
            return Ok(0);
        };
        if len != 0 || !self.prefix.enabled() {
            return Ok(0);
        }
        // The last token is always prefilled: its logits choose the first output token.
        let usable = tokens.len().saturating_sub(1) / BLOCK_TOKENS * BLOCK_TOKENS;
        let keys = self.prefix.lookup(scope, &tokens[..usable]);
        for key in &keys {
            if let Some(block) = self.prefix.payload(*key) {
                cpu.push_block(slot, block);
            }
        }
        self.prefix.pin(&keys);
        let reused = keys.len() * BLOCK_TOKENS;
        self.pinned[slot] = keys;
        Ok(reused)
    }

    /// `Generator::keep_prefix`.
    pub(super) fn keep_cached(&mut self, slot: usize, scope: &str, tokens: &[u32]) {
        let Some(cpu) = &self.cpu else {
            return;
        };
        let Some(kv) = cpu.slots().get(slot) else {
            return;
        };
        let stored = kv.len().min(tokens.len());
        let bytes = cpu.block_bytes();
        self.prefix
            .insert(scope, &tokens[..stored], bytes, |block| {
                cpu.export_block(slot, block)
            });
    }

    /// Lets the blocks `slot` reused be evicted again (its sequence ended).
    pub(super) fn unpin_slot(&mut self, slot: usize) {
        if let Some(keys) = self.pinned.get_mut(slot) {
            let keys = std::mem::take(keys);
            self.prefix.unpin(&keys);
        }
    }

    pub(super) fn cache_stats(&self) -> PrefixStats {
        self.prefix.stats()
    }
}
