//! Host <-> device copies of the candle-op forward, made in one counted place.
//!
//! On a GPU a decode step should copy only what it must: the step's token ids and positions
//! up (plus causal masks and last-row indices when a step prefills), and back the logits rows
//! that sampling reads. KV slots, RoPE tables, weights and every activation stay on the
//! device. Routing each per-step copy through [`Transfers`] makes that countable, and the
//! counts testable on the CPU build, where the same code runs with the copies as plain
//! constructions.

use candle_core::{Device, Result, Shape, Tensor, WithDType};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts of the copies made since the last [`Transfers::take`].
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Copies {
    pub uploads: usize,
    pub downloads: usize,
}

/// The model's link to its device for per-step data, with the counts. Atomics rather than
/// `Cell`s because the step runs inside candle's CPU thread pool (`Device::with_context`),
/// which needs the model to be `Sync`.
#[derive(Debug)]
pub(crate) struct Transfers {
    device: Device,
    uploads: AtomicUsize,
    downloads: AtomicUsize,
}

impl Transfers {
    pub fn new(device: &Device) -> Self {
        Self {
            device: device.clone(),
            uploads: AtomicUsize::new(0),
            downloads: AtomicUsize::new(0),
        }
    }

    /// Host data to a tensor on the device: one host-to-device copy.
    pub fn upload<D: WithDType>(&self, data: Vec<D>, shape: impl Into<Shape>) -> Result<Tensor> {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        Tensor::from_vec(data, shape, &self.device)
    }

    /// [`Transfers::upload`] of a vector as a 1-D tensor.
    pub fn upload_1d<D: WithDType>(&self, data: Vec<D>) -> Result<Tensor> {
        let n = data.len();
        self.upload(data, n)
    }

    /// `[rows, n]` f32 logits back to the host: one device-to-host copy.
    pub fn download_rows(&self, logits: &Tensor) -> Result<Vec<Vec<f32>>> {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        logits.to_vec2::<f32>()
    }

    /// The copies since the previous call, resetting the counts.
    #[cfg(test)]
    pub fn take(&self) -> Copies {
        Copies {
            uploads: self.uploads.swap(0, Ordering::Relaxed),
            downloads: self.downloads.swap(0, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::device::test_device;
    use crate::backend::llama::tests_int8::TinyGguf;
    use crate::backend::llama::{load_gguf_with_kernel, LlamaOptions};
    use crate::backend::Generator;
    use candle_core::quantized::GgmlDType;

    /// Per step, whatever the batch: ids and positions up, one `[rows, vocab]` logits block
    /// down; a multi-token prefill adds its causal mask and the index of its last row. Nothing
    /// per layer, per head or per row, so a GPU step costs a fixed handful of small copies.
    #[test]
    fn a_step_copies_ids_positions_and_the_logits_rows_only() {
        let tiny = TinyGguf::new("transfers", GgmlDType::Q8_0);
        let opts = LlamaOptions {
            max_slots: 3,
            max_seq_len: 64,
            cpu_weight_format: None,
        };
        let mut model = load_gguf_with_kernel(&tiny.0, &test_device(), &opts, None)
            .expect("load tiny model")
            .with_candle_forward();
        let copies = |uploads, downloads| Copies { uploads, downloads };
        assert_eq!(
            model.transfers.take(),
            copies(0, 0),
            "loading is not a step"
        );

        model.prefill(0, &[1, 5, 17, 42, 99]).expect("prefill");
        assert_eq!(
            model.transfers.take(),
            copies(4, 1),
            "ids, positions, mask, last row"
        );
        model.prefill(1, &[7]).expect("one-token prefill");
        assert_eq!(
            model.transfers.take(),
            copies(2, 1),
            "one token needs no mask"
        );
        model.prefill(2, &[3, 4]).expect("prefill");
        model.transfers.take();
        for _ in 0..3 {
            let rows = model.decode(&[(0, 9), (1, 8), (2, 7)]).expect("decode");
            assert_eq!(rows.len(), 3);
            assert_eq!(model.transfers.take(), copies(2, 1), "decode of three rows");
        }
    }
}
