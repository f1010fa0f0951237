//! Projections of the forward pass, and which matmul runs them.
//!
//! On a CPU with VNNI, Q8_0 and Q4_0 weights (from the file or converted at load) run on our
//! own int8 kernels (`backend::kernels::{q8_0, q4_0}`), which are ~2× candle's on this
//! model's shapes; every other case (CUDA, dense f32/f16 weights, other quantized formats,
//! CPUs without VNNI) keeps candle's `QMatMul`, whose AVX2 code beats our portable kernels
//! there.
//!
//! Projections that read the same input are loaded as one `Linear` of several parts (q|k|v,
//! gate|up): the int8 kernels stack them into one matrix, so the input is quantized once and
//! the weights stream in one pass; candle runs the parts one by one, as before.

use crate::backend::kernels::q4_0::PackedQ4_0;
use crate::backend::kernels::q8_0::PackedQ8_0;
use crate::backend::kernels::Isa;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use std::sync::Arc;

/// One projection weight as loaded, before it is grouped with the others of its input.
pub(crate) enum Weight {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

/// Projections sharing one input, `[tokens, k] -> [tokens, n_part]` each.
#[derive(Debug)]
pub(crate) enum Linear {
    /// candle's matmul, one per part.
    Candle(Vec<QMatMul>),
    /// An int8 kernel on the parts stacked along n; `widths` splits its output.
    Int8 { op: Int8Matmul, widths: Vec<usize> },
}

impl Linear {
    /// Groups `parts`; with `int8` set, CPU weights that are all Q8_0 or all Q4_0 go to that
    /// int8 kernel.
    pub fn new(parts: Vec<Weight>, int8: Option<Isa>) -> Result<Self> {
        if let Some(isa) = int8 {
            if let Some((packed, widths)) = Packed::stack(&parts, isa)? {
                return Ok(Linear::Int8 {
                    op: Int8Matmul(Arc::new(packed)),
                    widths,
                });
            }
        }
        let matmuls = parts
            .into_iter()
            .map(|p| match p {
                Weight::Quantized(q) => QMatMul::from_arc(q),
                Weight::Dense(t) => Ok(QMatMul::Tensor(t)),
            })
            .collect::<Result<_>>()?;
        Ok(Linear::Candle(matmuls))
    }

    /// The output of a single-part projection.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(parts) if parts.len() == 1 => parts[0].forward(x),
            Linear::Int8 { op, widths } if widths.len() == 1 => op.forward(x),
            _ => candle_core::bail!("forward on a projection of several parts"),
        }
    }

    /// One output per part, in load order (views into one tensor on the int8 path).
    pub fn forward_split<const N: usize>(&self, x: &Tensor) -> Result<[Tensor; N]> {
        let outputs: Vec<Tensor> = match self {
            Linear::Candle(parts) => parts.iter().map(|p| p.forward(x)).collect::<Result<_>>()?,
            Linear::Int8 { op, widths } => {
                let y = op.forward(x)?;
                let mut start = 0;
                let mut outputs = Vec::with_capacity(widths.len());
                for &w in widths {
                    outputs.push(y.narrow(1, start, w)?);
                    start += w;
                }
                outputs
            }
        };
        let parts = outputs.len();
        outputs
            .try_into()
            .map_err(|_| candle_core::Error::Msg(format!("projection has {parts} parts, not {N}")))
    }
}

/// Weights packed for one of the int8 kernels.
#[derive(Debug)]
pub(crate) enum Packed {
    Q8_0(PackedQ8_0),
    Q4_0(PackedQ4_0),
}

impl Packed {
    /// The parts stacked for `isa` and their widths, if all are CPU tensors of one format
    /// that a kernel exists for; `None` leaves them to candle.
    fn stack(parts: &[Weight], isa: Isa) -> Result<Option<(Self, Vec<usize>)>> {
        let quantized: Option<Vec<&QTensor>> = parts
            .iter()
            .map(|p| match p {
                Weight::Quantized(q) if q.device().is_cpu() => Some(q.as_ref()),
                _ => None,
            })
            .collect();
        let Some(qs) = quantized.filter(|qs| !qs.is_empty()) else {
            return Ok(None);
        };
        let dtype = qs[0].dtype();
        if qs.iter().any(|q| q.dtype() != dtype) {
            return Ok(None);
        }
        let packed = match dtype {
            GgmlDType::Q8_0 => Packed::Q8_0(PackedQ8_0::from_qtensors(&qs)?.with_isa(isa)?),
            GgmlDType::Q4_0 => Packed::Q4_0(PackedQ4_0::from_qtensors(&qs)?.with_isa(isa)?),
            _ => return Ok(None),
        };
        let widths = qs.iter().map(|q| q.shape().dims()[0]).collect();
        Ok(Some((packed, widths)))
    }

    pub fn n(&self) -> usize {
        match self {
            Packed::Q8_0(p) => p.n(),
            Packed::Q4_0(p) => p.n(),
        }
    }

    pub fn k(&self) -> usize {
        match self {
            Packed::Q8_0(p) => p.k(),
            Packed::Q4_0(p) => p.k(),
        }
    }

    /// `out[r][..n] = x[r] · Wᵀ` for `rows` rows of `x` (`rows × k`), on slices.
    pub fn matmul(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        match self {
            Packed::Q8_0(p) => p.matmul(x, rows, out),
            Packed::Q4_0(p) => p.matmul(x, rows, out),
        }
    }
}

/// An int8 kernel as a candle op, so that it reads the activation in place.
#[derive(Debug, Clone)]
pub(crate) struct Int8Matmul(Arc<Packed>);

impl Int8Matmul {
    /// `[tokens, k]` in the model's dtype -> `[tokens, n]` in the same dtype (the kernel
    /// itself takes and returns f32).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        x32.apply_op1_no_bwd(self)?.to_dtype(x.dtype())
    }
}

impl CustomOp1 for Int8Matmul {
    fn name(&self) -> &'static str {
        match self.0.as_ref() {
            Packed::Q8_0(_) => "q8_0-int8-matmul",
            Packed::Q4_0(_) => "q4_0-int8-matmul",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("int8 matmul takes f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("int8 matmul takes a contiguous activation");
        };
        let (rows, k) = layout.shape().dims2()?;
        if k != self.0.k() {
            candle_core::bail!("int8 matmul: input width {k}, weights take {}", self.0.k());
        }
        let mut out = vec![0f32; rows * self.0.n()];
        self.0.matmul(&data[start..end], rows, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((rows, self.0.n()))))
    }
}

/// Direct access for the plain-Rust CPU forward (`cpu`), which calls the kernel on slices
/// instead of through candle tensors. A block of its own, apart from the forms above.
impl Linear {
    /// The int8 kernel's stacked weights and the width of each part (its columns of the
    /// kernel's output, in load order), when this projection runs on that kernel.
    pub fn int8_parts(&self) -> Option<(&Arc<Packed>, &[usize])> {
        match self {
            Linear::Int8 { op, widths } => Some((&op.0, widths)),
            _ => None,
        }
    }
}
