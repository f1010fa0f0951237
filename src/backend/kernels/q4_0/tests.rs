//! The 4-bit kernel against references computed without it: the tests every int8 format runs
//! (`int8::harness`, where the tolerances are derived), and its size against Q8_0.

use super::Q4_0;
use crate::backend::kernels::int8::harness::{case, format_tests, packed, Reference};
use crate::backend::kernels::int8::{Format, BLOCK};
use crate::backend::kernels::q8_0::{PackedQ8_0, Q8_0};
use crate::backend::kernels::Isa;

impl Reference for Q4_0 {
    /// Low nibbles hold weights 0..16, high nibbles 16..32, both `w + 8`.
    fn ggml_weight(block: &[u8], j: usize) -> i32 {
        let qs = &block[2..];
        let nibble = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        i32::from(nibble) - 8
    }
}

format_tests!(Q4_0);

#[test]
fn packed_weights_take_half_the_bytes_of_q8_0_plus_the_same_scales() {
    let (n, k) = (576, 576);
    let q4 = packed::<Q4_0>(&case::<Q4_0>(n, k, 13), Isa::Portable);
    let q8 = PackedQ8_0::from_ggml_bytes(&vec![0; n * (k / BLOCK) * Q8_0::BLOCK_BYTES], n, k)
        .expect("q8_0");
    let scales = n * (k / BLOCK) * 2;
    assert_eq!(q4.weight_bytes() - scales, (q8.weight_bytes() - scales) / 2);
    assert_eq!(q4.weight_bytes(), n * (k / BLOCK) * Q4_0::BLOCK_BYTES);
}
