//! Start-up of every configured model: manifests, verified files, tokenizers and templates,
//! queues, and one worker thread per replica that loads its model and reports back.

use super::embed::{self, EmbedKnobs, EmbedModel};
use super::gen_worker::{self, WorkerContext};
use super::generate::GenerateModel;
use super::grammar::{GrammarLimits, Grammars};
use super::policy::FairQueue;
use super::queue::{ModelQueue, Pools, Supervised};
use super::supervise::{supervise, LoadSpec, LoadState};
use super::InferError;
use crate::backend::chat_template::ChatTemplate;
use crate::backend::device::DeviceSpec;
use crate::backend::{bert, gguf_tokenizer, llama, BackendError, Embedder, Generator};
use crate::config::{Config, ModelConfig};
use crate::models::{self, Manifest, ModelKind, WeightFormat};
use anyhow::{anyhow, bail, Context};
use candle_core::quantized::GgmlDType;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokenizers::Tokenizer;
use tokio::sync::watch;

#[derive(Clone)]
pub enum ModelHandle {
    Generate(Arc<GenerateModel>),
    Embed(Arc<EmbedModel>),
}

/// One replica as seen from outside its thread.
pub struct ReplicaInfo {
    pub model: String,
    pub index: usize,
    pub device: String,
    state: watch::Receiver<LoadState>,
}

impl ReplicaInfo {
    pub fn is_ready(&self) -> bool {
        *self.state.borrow() == LoadState::Ready
    }

    /// `loading`, `ready`, `down` (died after loading; being loaded again) or `failed`.
    pub fn state(&self) -> &'static str {
        match *self.state.borrow() {
            LoadState::Loading => "loading",
            LoadState::Ready => "ready",
            LoadState::Down(_) => "down",
            LoadState::Failed(_) => "failed",
        }
    }
}

/// Every model of the gateway. Dropping it closes the queues, which ends the worker threads.
pub struct Engine {
    models: BTreeMap<String, ModelHandle>,
    pub replicas: Vec<ReplicaInfo>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Set by `drain`: `/ready` answers 503 `draining`.
    draining: std::sync::atomic::AtomicBool,
    /// Scheduling weight of each request class (the tenancy layer's tiers, in class order).
    weights: Vec<f64>,
}

impl Engine {
    /// Prepares every model and starts the replica threads; returns before they finish
    /// loading (see `wait_ready`). With `fetch`, missing model files are installed first.
    pub fn start(config: &Config, fetch: bool) -> anyhow::Result<Engine> {
        Self::start_with(config, fetch, &[1.0])
    }

    /// `start` with one scheduling class per entry of `weights` (the tiers' weights).
    pub fn start_with(config: &Config, fetch: bool, weights: &[f64]) -> anyhow::Result<Engine> {
        let mut engine = Engine {
            models: BTreeMap::new(),
            replicas: Vec::new(),
            threads: Mutex::new(Vec::new()),
            draining: Default::default(),
            weights: if weights.is_empty() {
                vec![1.0]
            } else {
                weights.to_vec()
            },
        };
        for mc in &config.models {
            let manifest =
                Manifest::load(&mc.manifest_path(&config.models_dir)).map_err(|e| anyhow!(e))?;
            if manifest.name != mc.name {
                bail!(
                    "model {:?}: its manifest names {:?}",
                    mc.name,
                    manifest.name
                );
            }
            let cache = config.cache_dir();
            let dir = if fetch {
                models::fetch(&manifest, &cache, &mut |line| tracing::info!("{line}"))?
            } else {
                models::resolve(&manifest, &cache)?
            };
            let handle = match manifest.kind {
                ModelKind::Generate => {
                    ModelHandle::Generate(engine.start_generate(config, mc, manifest, dir)?)
                }
                ModelKind::Embed => {
                    ModelHandle::Embed(engine.start_embed(config, mc, manifest, dir)?)
                }
            };
            engine.models.insert(mc.name.clone(), handle);
        }
        Ok(engine)
    }

    pub fn model(&self, name: &str) -> Result<&ModelHandle, InferError> {
        self.models
            .get(name)
            .ok_or_else(|| InferError::UnknownModel(name.to_string()))
    }

    pub fn models(&self) -> impl Iterator<Item = (&String, &ModelHandle)> {
        self.models.iter()
    }

    /// The class weights each queue holds now, one list per queue of every model (a reload
    /// changes them through `set_weights`).
    pub fn class_weights(&self) -> Vec<Vec<f64>> {
        let mut all = Vec::new();
        for handle in self.models.values() {
            match handle {
                ModelHandle::Generate(m) => all.extend(m.queues.weights()),
                ModelHandle::Embed(m) => all.extend(m.queues.weights()),
            }
        }
        all
    }

    /// Retry-After for a client of `model` refused now: its queues' backlog estimate.
    pub fn retry_after(&self, model: &str) -> Duration {
        match self.models.get(model) {
            Some(ModelHandle::Generate(m)) => m.retry_after(),
            Some(ModelHandle::Embed(m)) => m.retry_after(),
            None => super::backlog::MIN_RETRY_AFTER,
        }
    }

    /// Applies new class weights to every model's queue (a tier reload).
    pub fn set_weights(&self, weights: &[f64]) {
        for handle in self.models.values() {
            match handle {
                ModelHandle::Generate(m) => m.queues.set_weights(weights),
                ModelHandle::Embed(m) => m.queues.set_weights(weights),
            }
        }
    }

    /// The device of a model's replica, as configured (`cpu`, `cuda:0`).
    pub fn device_of(&self, model: &str, index: usize) -> Option<String> {
        self.replicas
            .iter()
            .find(|r| r.model == model && r.index == index)
            .map(|r| r.device.clone())
    }

    pub fn is_ready(&self) -> bool {
        self.status() == "ready"
    }

    /// What `/ready` says: `draining` once shutdown began, `ready` when every replica
    /// serves, `down` when one died or failed, else `loading`.
    pub fn status(&self) -> &'static str {
        if self.draining.load(std::sync::atomic::Ordering::Acquire) {
            return "draining";
        }
        let states: Vec<&str> = self.replicas.iter().map(ReplicaInfo::state).collect();
        if states.iter().all(|s| *s == "ready") {
            "ready"
        } else if states.iter().any(|s| *s == "down" || *s == "failed") {
            "down"
        } else {
            "loading"
        }
    }

    /// Waits until every replica has loaded; the first load error ends the wait.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        for r in &self.replicas {
            let mut state = r.state.clone();
            let settled = state.wait_for(|s| *s != LoadState::Loading).await;
            let settled = settled
                .map(|s| s.clone())
                .map_err(|_| anyhow!("replica thread vanished"));
            if let LoadState::Failed(e) = settled? {
                bail!(
                    "replica {}#{} on {} failed to load: {e}",
                    r.model,
                    r.index,
                    r.device
                );
            }
        }
        Ok(())
    }

    /// Shutdown, first step: every queue refuses new requests and answers its waiting ones
    /// 503 `shutting_down` at once; running requests go on. `/ready` says `draining`.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        for handle in self.models.values() {
            match handle {
                ModelHandle::Generate(m) => m.queues.close_and_refuse(),
                ModelHandle::Embed(m) => m.queues.close_and_refuse(),
            }
        }
    }

    /// Shutdown, at the end of the grace period: replicas end their running requests at
    /// their next step (an embedding batch, seconds at most, finishes).
    pub fn interrupt(&self) {
        self.drain();
        for handle in self.models.values() {
            match handle {
                ModelHandle::Generate(m) => m.queues.interrupt(),
                ModelHandle::Embed(m) => m.queues.interrupt(),
            }
        }
    }

    /// Joins the replica threads; call after `drain` (they exit once their queue is closed
    /// and their running requests have ended). Blocks.
    pub fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }

    fn start_generate(
        &mut self,
        config: &Config,
        mc: &ModelConfig,
        manifest: Manifest,
        dir: PathBuf,
    ) -> anyhow::Result<Arc<GenerateModel>> {
        let assets = TextAssets::load(&manifest, &dir)?;
        let tokenizer = Arc::new(assets.tokenizer);
        let context_length = manifest.context_length.min(mc.max_seq_len);
        let knobs = super::BatchKnobs::of(mc);
        // Waiting requests are bounded by `max_queue` per pool: beyond it, 503 at once. One
        // class per tier, served by weight.
        let mut queues = Pools::default();
        for spec in self.load_specs(mc, &manifest, &dir, context_length)? {
            let queue = queues.get_or_insert(spec.pool.as_deref(), || {
                ModelQueue::new(FairQueue::new(
                    &self.weights,
                    mc.max_queue,
                    knobs.max_batch_tokens,
                ))
            });
            queue
                .lock()
                .add_replica_slots(knobs.max_batch_size, mc.fair_share_grace_ms);
            queue.add_slots(knobs.max_batch_size);
            let ctx = Arc::new(WorkerContext {
                name: mc.name.clone(),
                tokenizer: tokenizer.clone(),
                eos_ids: assets.eos_ids.clone(),
                queue: queue.clone(),
                knobs,
            });
            self.spawn(spec, queue, move |spec| {
                let mut model = load_generator(spec)?;
                let (index, ctx) = (spec.index, ctx.clone());
                Ok(Box::new(move || gen_worker::run(&mut *model, &ctx, index)))
            })?;
        }
        let limits = &config.limits;
        let grammar_limits = GrammarLimits {
            max_bytes: limits.max_grammar_bytes,
            max_size: limits.max_grammar_size,
            compile_fuel: limits.grammar_compile_fuel,
        };
        let grammars = Grammars::new(tokenizer.clone(), &assets.eos_ids, grammar_limits)?;
        Ok(Arc::new(GenerateModel {
            name: mc.name.clone(),
            grammars: Arc::new(grammars),
            tokenizer,
            template: assets.template.map(Arc::new),
            context_length,
            max_n: config.limits.max_n.min(mc.max_batch_size).max(1),
            limits: config.limits.clone(),
            queue_timeout: queue_timeout(config, mc),
            queues,
            counters: Default::default(),
        }))
    }

    fn start_embed(
        &mut self,
        config: &Config,
        mc: &ModelConfig,
        manifest: Manifest,
        dir: PathBuf,
    ) -> anyhow::Result<Arc<EmbedModel>> {
        let tokenizer = Arc::new(bert::load_tokenizer(&dir)?);
        let dim = read_hidden_size(&dir)?;
        let knobs = EmbedKnobs {
            max_batch_tokens: mc.embed_batch_tokens(),
            max_batch_rows: mc.max_batch_size,
        };
        let mut queues = Pools::default();
        for spec in self.load_specs(mc, &manifest, &dir, manifest.context_length)? {
            // Embedding requests are admitted whatever their size (the batcher splits them).
            let queue = queues.get_or_insert(spec.pool.as_deref(), || {
                ModelQueue::new(FairQueue::new(&self.weights, mc.max_queue, usize::MAX))
            });
            // One round at a time per replica; each job records its share of the round.
            queue.add_slots(1);
            let name = mc.name.clone();
            self.spawn(spec, queue.clone(), move |spec| {
                let device = spec.device.open(&spec.replica)?;
                let mut model: Box<dyn Embedder> = Box::new(bert::load(&spec.dir, &device)?);
                let (index, name, queue) = (spec.index, name.clone(), queue.clone());
                Ok(Box::new(move || {
                    embed::run(&mut *model, &name, &queue, knobs, index)
                }))
            })?;
        }
        Ok(Arc::new(EmbedModel {
            name: mc.name.clone(),
            tokenizer,
            max_tokens: manifest.context_length,
            dim,
            limits: config.limits.clone(),
            queue_timeout: queue_timeout(config, mc),
            queues,
        }))
    }

    fn load_specs(
        &self,
        mc: &ModelConfig,
        manifest: &Manifest,
        dir: &Path,
        max_seq_len: usize,
    ) -> anyhow::Result<Vec<LoadSpec>> {
        let dtype = mc
            .dtype
            .clone()
            .unwrap_or_else(|| manifest.default_dtype.clone());
        check_dtype(manifest.format, &dtype).with_context(|| format!("model {}", mc.name))?;
        let mut specs = Vec::new();
        for (i, r) in mc.replicas.iter().enumerate() {
            let device = DeviceSpec::parse(&r.device)
                .map_err(|e| anyhow!("model {} replica {i}: {e}", mc.name))?;
            specs.push(LoadSpec {
                manifest: manifest.clone(),
                dir: dir.to_path_buf(),
                dtype: dtype.clone(),
                max_slots: mc.max_batch_size,
                max_seq_len,
                prefix_cache_bytes: mc.prefix_cache_bytes,
                device,
                replica: format!("{}#{i}", mc.name),
                index: i,
                pool: r.tier.clone(),
            });
        }
        Ok(specs)
    }

    /// Starts one replica thread: it loads the model (`load`), reports ready or the load
    /// error (the thread then ends: no zombie), and runs the returned serving loop.
    /// Starts the thread of one replica: it loads the model, serves, and, if it dies (a
    /// panic outside a guarded model call), is marked down and loaded again with backoff.
    /// A load that fails at start-up fails the start (`wait_ready`).
    fn spawn(
        &mut self,
        spec: LoadSpec,
        queue: Arc<dyn Supervised>,
        load: impl Fn(&LoadSpec) -> Result<Box<dyn FnOnce() + Send>, BackendError> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (state_tx, state_rx) = watch::channel(LoadState::Loading);
        self.replicas.push(ReplicaInfo {
            model: spec.manifest.name.clone(),
            index: self
                .replicas
                .iter()
                .filter(|r| r.model == spec.manifest.name)
                .count(),
            device: spec.device.to_string(),
            state: state_rx,
        });
        let handle = std::thread::Builder::new()
            .name(spec.replica.clone())
            .spawn(move || supervise(&spec, &*queue, &state_tx, load))
            .context("cannot spawn a replica thread")?;
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        Ok(())
    }

    /// Test hook: makes a replica of `model`'s shared pool die (panic) at its next look for
    /// work, as a bug would. False if `model` is not a generation model.
    #[doc(hidden)]
    pub fn inject_fault(&self, model: &str) -> bool {
        match self.models.get(model) {
            Some(ModelHandle::Generate(m)) => {
                m.queues.get(None).map(|q| q.inject_fault()).is_some()
            }
            _ => false,
        }
    }
}

fn queue_timeout(config: &Config, mc: &ModelConfig) -> Duration {
    Duration::from_secs(
        mc.queue_timeout_secs
            .unwrap_or(config.limits.queue_timeout_secs),
    )
}

fn load_generator(spec: &LoadSpec) -> Result<Box<dyn Generator>, BackendError> {
    let device = spec.device.open(&spec.replica)?;
    let opts = llama::LlamaOptions {
        max_slots: spec.max_slots,
        max_seq_len: spec.max_seq_len,
        cpu_weight_format: gguf_dtype(&spec.dtype),
    };
    let weights = spec
        .manifest
        .file("weights")
        .ok_or_else(|| BackendError::Files("manifest lists no weights file".into()))?;
    Ok(match spec.manifest.format {
        WeightFormat::Gguf => {
            let path = spec.dir.join(&weights.path);
            let model = llama::load_gguf(&path, &device, &opts)
                .map_err(|e| BackendError::Files(format!("{}: {e}", path.display())))?;
            Box::new(model.with_prefix_cache(spec.prefix_cache_bytes))
        }
        WeightFormat::Safetensors => {
            let dtype = float_dtype(&spec.dtype).unwrap_or(candle_core::DType::F32);
            let model = llama::load_safetensors(&spec.dir, &device, dtype, &opts)?;
            Box::new(model.with_prefix_cache(spec.prefix_cache_bytes))
        }
    })
}

fn gguf_dtype(name: &str) -> Option<GgmlDType> {
    match name {
        "q8_0" => Some(GgmlDType::Q8_0),
        "q4_0" => Some(GgmlDType::Q4_0),
        "f16" => Some(GgmlDType::F16),
        "f32" => Some(GgmlDType::F32),
        _ => None,
    }
}

fn float_dtype(name: &str) -> Option<candle_core::DType> {
    match name {
        "f32" => Some(candle_core::DType::F32),
        "f16" => Some(candle_core::DType::F16),
        "bf16" => Some(candle_core::DType::BF16),
        _ => None,
    }
}

fn check_dtype(format: WeightFormat, dtype: &str) -> anyhow::Result<()> {
    let ok = match format {
        WeightFormat::Gguf => dtype == "native" || gguf_dtype(dtype).is_some(),
        WeightFormat::Safetensors => float_dtype(dtype).is_some(),
    };
    if ok {
        Ok(())
    } else {
        bail!("dtype {dtype:?} is not available for {format:?} weights")
    }
}

/// The GGUF must be of the family its manifest names: a mix-up is stopped at start with the
/// file and both names, instead of serving a model nobody reviewed.
fn check_architecture(
    manifest: &Manifest,
    content: &candle_core::quantized::gguf_file::Content,
    path: &Path,
) -> anyhow::Result<()> {
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .map_or("(none)", String::as_str);
    let expected = manifest.architecture.name();
    if expected != arch {
        bail!(
            "{} is a `{arch}` GGUF, but its manifest says `{expected}`",
            path.display()
        );
    }
    Ok(())
}

fn read_hidden_size(dir: &Path) -> anyhow::Result<usize> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    value["hidden_size"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| anyhow!("{} has no hidden_size", path.display()))
}

/// Tokenizer, chat template and end-of-sequence ids of a generation model.
struct TextAssets {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    eos_ids: Vec<u32>,
}

impl TextAssets {
    fn load(manifest: &Manifest, dir: &Path) -> anyhow::Result<Self> {
        let (tokenizer, gguf_template, bos, mut eos_ids) = match manifest.format {
            WeightFormat::Gguf => {
                let weights = manifest
                    .file("weights")
                    .ok_or_else(|| anyhow!("no weights file"))?;
                let path = dir.join(&weights.path);
                let mut file = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let content = candle_core::quantized::gguf_file::Content::read(&mut file)
                    .with_context(|| format!("reading GGUF metadata of {}", path.display()))?;
                check_architecture(manifest, &content, &path)?;
                let info = gguf_tokenizer::chat_info(&content)?;
                let tokenizer = gguf_tokenizer::tokenizer_from_gguf(&content)?;
                (
                    tokenizer,
                    info.chat_template,
                    info.bos_token,
                    info.eos_token_ids,
                )
            }
            WeightFormat::Safetensors => {
                let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
                    .map_err(|e| anyhow!("tokenizer.json: {e}"))?;
                (tokenizer, None, None, Vec::new())
            }
        };
        for token in &manifest.eos_tokens {
            let id = tokenizer
                .token_to_id(token)
                .ok_or_else(|| anyhow!("eos token {token:?} is not in the vocabulary"))?;
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let source = match manifest.chat_template.as_deref() {
            None => None,
            Some("gguf") => {
                Some(gguf_template.ok_or_else(|| anyhow!("the GGUF has no chat template"))?)
            }
            Some(text) => match manifest.manifest_dir.join(text) {
                path if path.is_file() => Some(std::fs::read_to_string(path)?),
                _ => Some(text.to_string()),
            },
        };
        let eos_text = eos_ids
            .first()
            .and_then(|&id| tokenizer.id_to_token(id))
            .unwrap_or_default();
        let template = source
            .map(|src| ChatTemplate::new(&src, bos.as_deref().unwrap_or(""), &eos_text))
            .transpose()?;
        Ok(TextAssets {
            tokenizer,
            template,
            eos_ids,
        })
    }
}
