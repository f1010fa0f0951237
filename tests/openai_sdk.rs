//! The official `openai` Python SDK, as our users run it, against the real gateway.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

/// `$TIERGATE_TEST_PYTHON`, else the `.venv` that `.ci/run` creates with the SDK installed.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TIERGATE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing: run `bash .ci/run` once (it creates .venv with tests/sdk/requirements.txt)",
        venv.display()
    );
    venv
}

#[test]
fn openai_python_sdk_chat_stream_embeddings_and_typed_errors() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/test_openai_sdk.py");
    let base_url = server().url("/v1");
    let out = Command::new(python())
        .arg(&script)
        .arg(&base_url)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
}
