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
