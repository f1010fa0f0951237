//! CPU compute kernels of our own, for the places where candle's stock kernels leave speed
//! on the table (see `shared/reference/README.md` for the measurements behind each one).
//!
//! Kernels here know nothing about models or tensors: they take plain slices, so that they
//! can be tested against plain references and benchmarked alone (`loadtests/kernel_bench`).
//! Which instruction set a kernel uses is decided at run time ([`Isa`]), never at compile
//! time, so one binary is correct on every x86-64 CPU whatever `target-cpu` it was built for.

mod int8;
mod isa;
pub mod q4_0;
pub mod q8_0;

pub use int8::{QuantizedRows, TILE_ROWS};
#[cfg(test)]
pub(crate) use isa::note_tested;
pub use isa::Isa;
