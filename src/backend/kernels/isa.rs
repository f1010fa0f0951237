//! Run-time choice of the instruction set a kernel uses.

/// Instruction sets our int8 kernels have code for, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 with VNNI (`vpdpbusd` on 512-bit registers): 16 output rows per instruction.
    Avx512Vnni,
    /// AVX-VNNI (the VEX-encoded `vpdpbusd` on 256-bit registers, e.g. Alder Lake and later).
    AvxVnni,
    /// Plain Rust, any CPU. Bit-identical to the SIMD paths and the reference they are tested
    /// against, but slow: the model forward prefers candle's own SIMD matmul on such CPUs.
    Portable,
}

impl Isa {
    /// Every variant, fastest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Portable];

    /// The fastest instruction set this CPU has.
    pub fn best() -> Isa {
        Self::ALL
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Isa::Portable)
    }

    /// The fastest SIMD instruction set this CPU has, if any.
    pub fn best_simd() -> Option<Isa> {
        Some(Self::best()).filter(|isa| *isa != Isa::Portable)
    }

    /// Whether this CPU can run the variant. Checked by the kernels before they run SIMD
    /// code, which is what makes their `unsafe` calls sound.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512Vnni | Isa::AvxVnni => false,
        }
    }
}

/// Test record: appends the instruction sets a kernel test ran to the file
/// `TIERGATE_ISA_LOG` names, one line per test, so a CI log shows which kernels were really
/// checked (on a CPU without VNNI only the portable one is).
#[cfg(test)]
pub(crate) fn note_tested(isas: &[Isa]) {
    use std::io::Write;
    let Ok(path) = std::env::var("TIERGATE_ISA_LOG") else {
        return;
    };
    let test = std::thread::current().name().unwrap_or("?").to_string();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{test}: {isas:?}");
    }
}
