//! The forward pass over a mixed batch of sequences.
//!
//! All new tokens of a step are stacked into one `[tokens, hidden]` activation: embeddings,
//! norms, every projection and the MLP run once for the whole step (one matmul per weight),
//! while RoPE positions, KV writes and attention are done per sequence ("segment").

use super::attention::{attend, causal_mask, heads_first};
use super::weights::LayerWeights;
use super::LlamaModel;
use crate::backend::Result;
use candle_core::{DType, Tensor};

/// New tokens of one sequence in a step: `tokens` go to `slot` at positions
/// `start..start + tokens.len()` (`start` is the slot's current length).
#[derive(Debug, Clone, Copy)]
pub(super) struct Segment<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
    pub start: usize,
}

/// Per-step values shared by all layers.
struct StepInputs<'s, 'a> {
    segments: &'s [Segment<'a>],
    /// Row of each segment's first token in the stacked activation.
    offsets: Vec<usize>,
    cos: Tensor,
    sin: Tensor,
    masks: Vec<Option<Tensor>>,
}

impl LlamaModel {
    /// Runs one step on candle ops. The caller has validated the segments (slots exist,
    /// distinct, room left). Returns the f32 logits of each segment's last token when
    /// `want_logits` (a non-final prefill chunk needs none).
    pub(super) fn run_candle(
        &mut self,
        segments: &[Segment<'_>],
        want_logits: bool,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        for seg in segments {
            self.slots[seg.slot].reserve(seg.start + seg.tokens.len(), &self.kv_layout)?;
        }
        // candle's CPU kernels dispatch to its own thread pool; entering it once per step
        // instead of once per op avoids waking rayon workers hundreds of times a step.
        let device = self.device.clone();
        let this = &*self;
        let logits = device.with_context(|| this.forward(segments, want_logits))?;
        // Lengths move only after every layer wrote its K/V, so a failed step leaves each
        // slot as it was (the partial writes lie beyond `len` and are overwritten later).
        for seg in segments {
            self.slots[seg.slot].commit(seg.tokens.len());
        }
        Ok(logits
            .map(|l| self.transfers.download_rows(&l))
            .transpose()?)
    }

    fn forward(
        &self,
        segments: &[Segment<'_>],
        want_logits: bool,
    ) -> candle_core::Result<Option<Tensor>> {
        let inputs = self.step_inputs(segments)?;
        let ids: Vec<u32> = segments.iter().flat_map(|s| s.tokens).copied().collect();
        let n_tokens = ids.len();
        let ids = self.transfers.upload_1d(ids)?;
        let mut x = self.weights.embed.embedding(&ids)?.to_dtype(self.dtype)?;
        let eps = self.cfg.rms_norm_eps as f32;
        for (index, layer) in self.weights.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            x = (x + self.attention(index, layer, &h, &inputs)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            x = (x + layer.mlp(&h)?)?;
        }
        if !want_logits {
            return Ok(None);
        }
        // Only each segment's last position predicts the next token.
        let x = if n_tokens == segments.len() {
            x
        } else {
            let last: Vec<u32> = segments
                .iter()
                .zip(&inputs.offsets)
                .map(|(s, off)| (off + s.tokens.len() - 1) as u32)
                .collect();
            x.index_select(&self.transfers.upload_1d(last)?, 0)?
        };
        let x = candle_nn::ops::rms_norm(&x, &self.weights.norm, eps)?;
        let logits = self.weights.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        Ok(Some(logits))
    }

    fn step_inputs<'s, 'a>(
        &self,
        segments: &'s [Segment<'a>],
    ) -> candle_core::Result<StepInputs<'s, 'a>> {
        let mut offsets = Vec::with_capacity(segments.len());
        let mut positions = Vec::new();
        for seg in segments {
            offsets.push(positions.len());
            positions.extend((seg.start..seg.start + seg.tokens.len()).map(|p| p as u32));
        }
        let positions = self.transfers.upload_1d(positions)?;
        let (cos, sin) = self.rope.tables_at(&positions)?;
        let masks = segments
            .iter()
            .map(|s| causal_mask(s.start, s.tokens.len(), self.dtype, &self.transfers))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(StepInputs {
            segments,
            offsets,
            cos,
            sin,
            masks,
        })
    }

    /// Self-attention of one layer for the whole step; returns `[tokens, hidden]`.
    fn attention(
        &self,
        index: usize,
        layer: &LayerWeights,
        h: &Tensor,
        inputs: &StepInputs<'_, '_>,
    ) -> candle_core::Result<Tensor> {
        let (heads, kv_heads, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let [q, k, v] = layer.qkv(h)?;
        let q = self.rope.apply(&q, heads, &inputs.cos, &inputs.sin)?;
        let k = self.rope.apply(&k, kv_heads, &inputs.cos, &inputs.sin)?;
        let mut outputs = Vec::with_capacity(inputs.segments.len());
        for ((seg, &off), mask) in inputs
            .segments
            .iter()
            .zip(&inputs.offsets)
            .zip(&inputs.masks)
        {
            let t = seg.tokens.len();
            let slot = &self.slots[seg.slot];
            let k_new = heads_first(&k.narrow(0, off, t)?, t, kv_heads, hd)?;
            let v_new = heads_first(&v.narrow(0, off, t)?, t, kv_heads, hd)?;
            slot.write(index, seg.start, &k_new, &v_new)?;
            let (keys, values) = slot.view(index, seg.start + t)?;
            let q_seg = heads_first(&q.narrow(0, off, t)?, t, heads, hd)?;
            outputs.push(attend(&q_seg, &keys, &values, mask.as_ref())?);
        }
        let y = if outputs.len() == 1 {
            outputs.swap_remove(0)
        } else {
            Tensor::cat(&outputs, 0)?
        };
        layer.wo.forward(&y)
    }
}
