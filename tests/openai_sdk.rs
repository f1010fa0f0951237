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

/// Runs a script of `tests/sdk` with `args`; it must print `passed` and exit 0.
fn run_sdk_script(name: &str, args: &[String]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name);
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
}

/// `BASE_URL MODEL` pairs of both chat models, as the scripts for both take them.
fn chat_model_args() -> Vec<String> {
    chat_models()
        .iter()
        .flat_map(|(server, model)| [server.url("/v1"), model.to_string()])
        .collect()
}

#[test]
fn openai_python_sdk_chat_stream_embeddings_and_typed_errors() {
    run_sdk_script("test_openai_sdk.py", &[server().url("/v1")]);
}

/// With real keys and a real clock: the SDK's automatic retry waits out a 429 and succeeds,
/// and gives up at once on `x-should-retry: false`.
#[test]
fn openai_python_sdk_retries_rate_limits_and_not_spent_budgets() {
    let mut config = tenant_config();
    config.models.retain(|m| m.name == CHAT_MODEL);
    let paced = create_key(&config, "t-one-per-second");
    let broke = create_key(&config, "t-no-budget");
    let server = spawn_server(config);
    run_sdk_script("test_sdk_limits.py", &[server.url("/v1"), paced, broke]);
}

/// logprobs, n, penalties, logit_bias and echo as the SDK's typed objects, on both chat models.
#[test]
fn openai_python_sdk_sampling_fields_on_both_chat_models() {
    run_sdk_script("test_sdk_sampling.py", &chat_model_args());
}

/// The Responses API (`responses.create`, whole and streamed, `responses.stream`, function
/// calls) as the SDK's typed objects, on both chat models.
#[test]
fn openai_python_sdk_responses_on_both_chat_models() {
    run_sdk_script("test_sdk_responses.py", &chat_model_args());
}

/// Structured outputs and tools as the SDK and langchain-openai use them, on both chat models:
/// `parse()` into pydantic models, required and named calls, streamed calls, 20 samples.
#[test]
fn openai_python_sdk_structured_outputs_and_tools_on_both_chat_models() {
    run_sdk_script("test_sdk_structured.py", &chat_model_args());
}
