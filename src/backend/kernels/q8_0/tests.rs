//! The Q8_0 kernel against references computed without it: the tests every int8 format runs
//! (`int8::harness`, where the tolerances are derived).

use super::Q8_0;
use crate::backend::kernels::int8::harness::{format_tests, Reference};

impl Reference for Q8_0 {
    fn ggml_weight(block: &[u8], j: usize) -> i32 {
        i32::from(block[2 + j] as i8)
    }
}

format_tests!(Q8_0);
