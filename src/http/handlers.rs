//! Route handlers.

use super::answer::Generated;
use super::dto::{
    chat_messages, ChatRequest, CompletionRequest, DetokenizeRequest, EmbeddingInput,
    EmbeddingRequest, PromptField, SamplingFields, StreamOptions, TokenizeRequest,
};
use super::extract::ApiJson;
use super::generation::{respond, Call, Shape};
use super::AppState;
use crate::account::Caller;
use crate::account::Meter;
use crate::error::ApiError;
use crate::infer::{
    Constraint, EmbedInput, EmbedModel, GenRequest, GenerateModel, InferError, ModelHandle,
    PromptInput,
};
use crate::outcome::Outcome;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::Arc;

type AppResult = Result<Response, ApiError>;

fn generator<'a>(state: &'a AppState, name: &str) -> Result<&'a GenerateModel, ApiError> {
    match state.engine.model(name)? {
        ModelHandle::Generate(m) => Ok(m),
        ModelHandle::Embed(_) => Err(InferError::WrongKind {
            model: name.to_string(),
            what: "text generation (it is an embedding model)",
        }
        .into()),
    }
}

fn embedder<'a>(state: &'a AppState, name: &str) -> Result<&'a EmbedModel, ApiError> {
    match state.engine.model(name)? {
        ModelHandle::Embed(m) => Ok(m),
        ModelHandle::Generate(_) => Err(InferError::WrongKind {
            model: name.to_string(),
            what: "embeddings (it is a generation model)",
        }
        .into()),
    }
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> AppResult {
    chat_generation(&state, &caller, req)
        .await
        .map(Generated::into_response)
}

/// A chat request's answer before its encoding (`/v1/responses` reshapes it).
pub async fn chat_generation(
    state: &Arc<AppState>,
    caller: &Caller,
    req: ChatRequest,
) -> Result<Generated, ApiError> {
    req.unsupported.check()?;
    req.ignored.check()?;
    let output = req.output.output_spec()?;
    let tools = output.tools.as_ref();
    let prompt = PromptInput::Chat {
        messages: req.messages()?,
        tools: tools.map(|t| t.defs.clone()).unwrap_or_default(),
    };
    let stream = (req.stream, req.stream_options.as_ref());
    let mut call = Call::new(&req.model, Shape::Chat, include_usage(stream.1));
    call.tools = tools.map(|t| t.may_answer());
    let constraint = output.constraint;
    generate(
        state,
        caller,
        prompt,
        &req.sampling,
        constraint,
        call,
        stream.0,
    )
    .await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> AppResult {
    req.unsupported.check()?;
    req.ignored.check()?;
    let output = req.output.output_spec()?;
    if output.tools.is_some() {
        return Err(ApiError::unsupported(
            "tools",
            "tools are served by /v1/chat/completions",
        ));
    }
    let prompt = match req.prompt {
        PromptField::Text(t) => PromptInput::Text(t),
        PromptField::Tokens(ids) => PromptInput::Tokens(ids),
        PromptField::Texts(mut v) if v.len() == 1 => PromptInput::Text(v.remove(0)),
        PromptField::TokenLists(mut v) if v.len() == 1 => PromptInput::Tokens(v.remove(0)),
        _ => return Err(ApiError::unsupported("prompt", "one prompt per request")),
    };
    let mut call = Call::new(
        &req.model,
        Shape::Completion,
        include_usage(req.stream_options.as_ref()),
    );
    if req.echo == Some(true) {
        call.echo = Some(match &prompt {
            PromptInput::Text(t) => t.clone(),
            PromptInput::Tokens(ids) => generator(&state, &req.model)?.detokenize(ids)?,
            PromptInput::Chat { .. } => String::new(),
        });
    }
    let constraint = output.constraint;
    generate(
        &state,
        &caller,
        prompt,
        &req.sampling,
        constraint,
        call,
        req.stream,
    )
    .await
    .map(Generated::into_response)
}

fn include_usage(options: Option<&StreamOptions>) -> bool {
    options.is_some_and(|o| o.include_usage)
}

/// What chat and completions share once the prompt is known: validate, admit against the
/// tenant's limits, queue, answer; the meter bills whatever happens.
async fn generate(
    state: &Arc<AppState>,
    caller: &Caller,
    prompt: PromptInput,
    fields: &SamplingFields,
    constraint: Option<(Constraint, &'static str)>,
    mut call: Call,
    stream: bool,
) -> Result<Generated, ApiError> {
    let model = generator(state, &call.model)?;
    let logprobs = fields.logprobs(call.shape == Shape::Chat)?;
    call.logprobs = logprobs.is_some();
    let gen = GenRequest {
        prompt,
        max_tokens: fields.max_tokens(),
        sampling: fields.sampling()?,
        stop: fields.stops()?,
        ignore_eos: fields.ignore_eos,
        n: fields.n.unwrap_or(1),
        logprobs,
        prompt_logprobs: logprobs.is_some() && call.echo.is_some(),
        constraint,
        class: caller.tenant.class,
        pool: caller.tenant.pool().map(str::to_string),
        tier: caller.tenant.tier.clone(),
        prefix_scope: caller.tenant.prefix_scope(),
    };
    let mut meter = Meter::open(state, caller, &call.model)?;
    let prepared = model.prepare(gen).await?;
    // The prompt once, and every choice's output budget.
    let status = meter
        .admit(prepared.prompt_tokens(), prepared.output_budget())
        .await?;
    respond(model, prepared, call, stream, meter, status).await
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> AppResult {
    let model = embedder(&state, &req.model)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("`encoding_format` must be float or base64, not {other:?}"),
                "encoding_format",
            ))
        }
    };
    if let Some(d) = req.dimensions.filter(|&d| d != model.dim) {
        return Err(ApiError::unsupported(
            "dimensions",
            &format!(
                "{} returns {}-dimensional vectors only (asked for {d})",
                model.name, model.dim
            ),
        ));
    }
    let input = match req.input {
        EmbeddingInput::Text(t) => EmbedInput::Texts(vec![t]),
        EmbeddingInput::Texts(v) => EmbedInput::Texts(v),
        EmbeddingInput::Tokens(ids) if ids.is_empty() => EmbedInput::Tokens(Vec::new()),
        EmbeddingInput::Tokens(ids) => EmbedInput::Tokens(vec![ids]),
        EmbeddingInput::TokenLists(v) => EmbedInput::Tokens(v),
    };
    let mut meter = Meter::open(&state, &caller, &req.model)?;
    let ids = model.tokenize(input, req.truncate).await?;
    let tokens = ids.iter().map(Vec::len).sum();
    let status = meter.admit(tokens, 0).await?;
    let pool = caller.tenant.pool();
    let out = match model.embed_ids(ids, caller.tenant.class, pool).await {
        Ok(out) => out,
        Err(e) => {
            meter.fail(&e);
            return Err(e.into());
        }
    };
    meter.ran(out.replica, out.queued, out.device_seconds);
    let bill = meter.end(Outcome::Ok, 0, None);
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                json!(encode_base64(v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let mut response = Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens},
    }))
    .into_response();
    crate::tenancy::headers::insert_status(response.headers_mut(), &status);
    if let Some(bill) = bill {
        bill.insert_headers(response.headers_mut());
    }
    Ok(response)
}

/// Little-endian f32 bytes in standard base64, as OpenAI's SDK decodes them.
fn encode_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn model_card(state: &AppState, name: &str, handle: &ModelHandle) -> Value {
    let (kind, max_len) = match handle {
        ModelHandle::Generate(m) => ("generate", m.context_length),
        ModelHandle::Embed(m) => ("embed", m.max_tokens),
    };
    json!({
        "id": name,
        "object": "model",
        "created": state.started,
        "owned_by": "tiergate",
        "kind": kind,
        "max_model_len": max_len,
    })
}

pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .engine
        .models()
        .map(|(n, h)| model_card(&state, n, h))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> AppResult {
    let handle = state.engine.model(&id)?;
    Ok(Json(model_card(&state, &id, handle)).into_response())
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> AppResult {
    let (tokens, max_len) = match state.engine.model(&req.model)? {
        ModelHandle::Generate(m) => {
            let input = match (req.prompt, req.messages) {
                (Some(p), None) => PromptInput::Text(p),
                (None, Some(messages)) => PromptInput::Chat {
                    messages: chat_messages(&messages)?,
                    tools: Vec::new(),
                },
                _ => {
                    return Err(ApiError::invalid(
                        "give exactly one of `prompt` or `messages`",
                        "prompt",
                    ))
                }
            };
            (
                m.tokenize(input, req.add_special_tokens).await?,
                m.context_length,
            )
        }
        ModelHandle::Embed(m) => {
            let prompt = req
                .prompt
                .ok_or_else(|| ApiError::invalid("`prompt` is required", "prompt"))?;
            let enc = m
                .tokenizer
                .encode(prompt, req.add_special_tokens)
                .map_err(|e| ApiError::invalid(e.to_string(), "prompt"))?;
            (enc.get_ids().to_vec(), m.max_tokens)
        }
    };
    Ok(
        Json(json!({"count": tokens.len(), "max_model_len": max_len, "tokens": tokens}))
            .into_response(),
    )
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> AppResult {
    let model = generator(&state, &req.model)?;
    Ok(Json(json!({"prompt": model.detokenize(&req.tokens)?})).into_response())
}

/// Liveness: the process answers.
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 only when every replica has loaded its model. Without a key (a probe) only
/// the status; with one, each replica and each model's request counters too.
pub async fn ready(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
) -> Response {
    let code = if state.engine.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = state.engine.status();
    if caller.is_none() {
        return (code, Json(json!({"status": status}))).into_response();
    }
    let replicas: Vec<Value> = state
        .engine
        .replicas
        .iter()
        .map(|r| json!({"model": r.model, "replica": r.index, "device": r.device, "ready": r.is_ready(), "state": r.state()}))
        .collect();
    let models: serde_json::Map<String, Value> = state
        .engine
        .models()
        .filter_map(|(name, handle)| match handle {
            ModelHandle::Generate(m) => Some((name.clone(), generation_stats(&state, m))),
            ModelHandle::Embed(_) => None,
        })
        .collect();
    let body = Json(json!({"status": status, "replicas": replicas, "models": models}));
    (code, body).into_response()
}

/// Queue length, request outcomes and the tokens admitted per tier (the share each tier
/// actually got) of a generation model (until the metrics endpoint).
fn generation_stats(state: &AppState, model: &GenerateModel) -> Value {
    let mut stats: serde_json::Map<String, Value> = model
        .counters
        .snapshot()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    stats.insert("queued".into(), json!(model.queued()));
    let tiers = state.tenancy.directory().classes.names().to_vec();
    let served: serde_json::Map<String, Value> = model
        .served_tokens()
        .into_iter()
        .enumerate()
        .filter(|&(_, tokens)| tokens > 0)
        .map(|(class, tokens)| {
            let tier = tiers
                .get(class)
                .cloned()
                .unwrap_or_else(|| format!("class-{class}"));
            (tier, json!(tokens))
        })
        .collect();
    stats.insert("admitted_tokens_by_tier".into(), Value::Object(served));
    Value::Object(stats)
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("Unknown route").with_code("unknown_url")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "Method not allowed on this route",
    )
}
