//! Devices a replica can be pinned to.

use super::{BackendError, Result};
use candle_core::Device;

/// A parsed `device` string from the config: `cpu` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("must be `cpu` or `cuda:N`, not {other:?}")),
        }
    }

    /// Opens the device. `cuda:N` fails clearly in a build without the `cuda` feature or on a
    /// machine without that GPU; `replica` names the replica in the message.
    pub fn open(self, replica: &str) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal, replica),
        }
    }
}

/// Names the device the test suites run their models on: `cpu` (unset) or `cuda:N`, so that
/// one suite checks both (`loadtests/gpu-check.sh` runs it with `cuda:0`).
pub const TEST_DEVICE_VAR: &str = "TIERGATE_TEST_DEVICE";

impl DeviceSpec {
    /// The device [`TEST_DEVICE_VAR`] names, `cpu` when it is unset. Only test code calls
    /// this, so a malformed value panics: a typo must not quietly test the CPU instead.
    pub fn for_tests() -> Self {
        match std::env::var(TEST_DEVICE_VAR) {
            Err(std::env::VarError::NotPresent) => DeviceSpec::Cpu,
            Ok(text) => Self::parse(&text).unwrap_or_else(|e| panic!("{TEST_DEVICE_VAR} {e}")),
            Err(e) => panic!("{TEST_DEVICE_VAR}: {e}"),
        }
    }
}

/// The opened test device for unit tests of models and ops, one instance per test binary:
/// candle gives each `Device::new_cuda` call its own identity, and tensors of two instances
/// cannot meet in one op, so a model and its inputs must share this one.
///
/// Bounds: f32 work (BERT, the safetensors llama, attention and RoPE units) keeps the CPU
/// bounds on CUDA, where candle's f32 GEMM runs without TF32 and only summation order
/// differs (~1e-6 on these values). Quantized GGUF weights on CUDA run candle's MMVQ/MMQ
/// kernels, which round activations to Q8_1; tests compare two forwards on the same device
/// and state the GPU bound where one differs (`tests_gguf`). Options that exist only on the
/// CPU (`cpu_weight_format`, the int8 kernel, the plain-Rust forward) are tested on the CPU
/// whatever this says.
#[cfg(test)]
pub(crate) fn test_device() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let spec = DeviceSpec::for_tests();
            spec.open("tests")
                .unwrap_or_else(|e| panic!("{TEST_DEVICE_VAR}={spec}: {e}"))
        })
        .clone()
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize, replica: &str) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        BackendError::Device(format!(
            "replica {replica}: cannot open cuda:{ordinal}: {e}"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize, replica: &str) -> Result<Device> {
    Err(BackendError::Device(format!(
        "replica {replica} asks for cuda:{ordinal}, but this build has no `cuda` feature \
         (rebuild with `cargo build --release --features cuda`)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_cuda_ordinals() {
        assert_eq!(DeviceSpec::parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("cuda:1"), Ok(DeviceSpec::Cuda(1)));
        assert!(DeviceSpec::parse("cuda").is_err());
        assert!(DeviceSpec::parse("gpu:0").is_err());
    }

    #[test]
    fn test_device_is_the_one_the_environment_names() {
        let named = std::env::var(TEST_DEVICE_VAR).unwrap_or_else(|_| "cpu".into());
        assert_eq!(DeviceSpec::for_tests().to_string(), named.trim());
        assert_eq!(test_device().is_cpu(), named.trim() == "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error_naming_the_replica() {
        let err = DeviceSpec::Cuda(0)
            .open("smollm2#0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("smollm2#0") && err.contains("cuda"), "{err}");
    }
}
