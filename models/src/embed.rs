//! Embedding models and the `embed` stage.
//!
//! * [`EmbeddingModel`] is what a local model implements: its [`ModelInfo`] (name, dimensions,
//!   metric, what it embeds) and `embed`, one batch of inputs → one vector per row.
//! * [`TextEmbedder`] is a sentence-transformers BERT model (all-MiniLM-L6-v2 and its kind) on
//!   candle: tokenise, encode, mean-pool, normalise. Its output matches sentence-transformers'
//!   within 1e-4 (tested against committed reference vectors).
//! * [`Embed`] builds the pipeline stage: a [`ServicePool`] whose workers each load the model once,
//!   shared by every lane (dynamic batching, backpressure, resizing, unaligned checkpoints), with
//!   the vectors in an `alluvium.embedding` column.
//!
//! ```no_run
//! # fn demo() -> alluvium_core::Result<()> {
//! use alluvium_models::{Embed, MINILM};
//! let stage = Embed::text(MINILM).column("text").output("embedding").batch_rows(32).workers(1, 2).build("embed")?;
//! # Ok(()) }
//! ```
//!
//! **Devices.** With the `cuda` feature and `gpus > 0`, a worker runs its model on a GPU it leases
//! from [`alluvium_gpu::GpuPool`]; otherwise on the CPU, saying so once in the log
//! ([`alluvium_gpu::fall_back`]). CPU threads come from `RAYON_NUM_THREADS` (all cores by default).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alluvium_core::arrow::array::{Array, ArrayRef, AsArray};
use alluvium_core::arrow::datatypes::DataType;
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::service::{PoolSettings, Service, ServiceError, ServicePool, ServiceStage};
use alluvium_core::types::{embedding_array, EmbeddingType, Metric};
use alluvium_core::{Error, ErrorKind, Result, Stage};
use async_trait::async_trait;
use candle_core::{Device, Tensor};

use crate::bert::{l2_normalize, mean_pool, Bert, BertConfig};
use crate::clip::ClipTextEmbedder;
use crate::image::ImageEmbedder;
use crate::remote::Endpoint;
use crate::text::TextTokenizer;
use crate::{candle, read_json, resolve};

/// What a model embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    /// Utf8 text.
    Text,
    /// Decoded images (`alluvium.image`, RGB).
    Image,
}

/// What a model is: its name, output size, metric and input.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Registry name or path, written into the embedding column's metadata.
    pub name: String,
    /// Floats per vector.
    pub dimensions: usize,
    /// The metric the vectors are meant for.
    pub metric: Metric,
    /// What it embeds.
    pub modality: Modality,
}

/// A local embedding model. `embed` is CPU (or GPU) work: the pool runs it off the async reactor.
pub trait EmbeddingModel: Send + Sync + 'static {
    /// The model's name, dimensions, metric and input.
    fn info(&self) -> &ModelInfo;
    /// One vector per row of `inputs`, row-major (`inputs.len() × dimensions` floats). A row the
    /// model cannot take makes the call fail (a data error); the pool then isolates that row as a
    /// dead letter. A column of a type the model cannot take at all is a config error: the stage
    /// stops and says to change its `column`.
    fn embed(&self, inputs: &dyn Array) -> Result<Vec<f32>>;
    /// The tokens `texts` take, as the model counts them (reported as `usage` by the model
    /// server); `None` when the model has no tokenizer.
    fn count_tokens(&self, texts: &[&str]) -> Option<usize> {
        let _ = texts;
        None
    }
}

/// A sentence-transformers BERT text model on candle. See the module docs.
pub struct TextEmbedder {
    info: ModelInfo,
    bert: Bert,
    tokenizer: TextTokenizer,
    normalize: bool,
}

#[derive(serde::Deserialize)]
struct Pooling {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

/// The similarity a sentence-transformers model was trained for: `similarity_fn_name` in
/// `config_sentence_transformers.json` (sentence-transformers ≥ 3), cosine when it says nothing
/// (the library's default, and what a directory without the file, a CLIP model, is for).
pub fn model_metric(dir: &Path) -> Result<Metric> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        similarity_fn_name: Option<String>,
    }
    if !dir.join("config_sentence_transformers.json").is_file() {
        return Ok(Metric::Cosine);
    }
    let c: Config = read_json(dir, "config_sentence_transformers.json")?;
    match c.similarity_fn_name.as_deref() {
        None | Some("cosine") => Ok(Metric::Cosine),
        Some("dot" | "dot_product") => Ok(Metric::Dot),
        Some("euclidean") => Ok(Metric::L2),
        Some(other) => Err(Error::config(format!(
            "{}: `similarity_fn_name` is `{other}`; embedding columns record cosine, dot or euclidean (l2): set the \
             stage's `metric` to the one to record",
            dir.join("config_sentence_transformers.json").display()
        ))),
    }
}

#[derive(serde::Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

impl TextEmbedder {
    /// The files a model directory must hold.
    pub const FILES: [&'static str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

    /// Loads the model `model` (a path or a registry name, see [`crate::resolve`]) onto `device`.
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        let dir = resolve(model, &Self::FILES)?;
        Self::load_dir(model, &dir, device)
    }

    fn load_dir(name: &str, dir: &Path, device: &Device) -> Result<Self> {
        let config: BertConfig = read_json(dir, "config.json")?;
        if dir.join("1_Pooling/config.json").is_file()
            && !read_json::<Pooling>(dir, "1_Pooling/config.json")?.pooling_mode_mean_tokens
        {
            return Err(Error::config(format!("model `{name}`: only mean pooling is supported (1_Pooling/config.json)")));
        }
        let normalize = dir.join("modules.json").is_file()
            && read_json::<Vec<Module>>(dir, "modules.json")?.iter().any(|m| m.kind.ends_with(".Normalize"));
        let (vb, weights) = crate::read_weights(dir, device)?;
        let bert = Bert::load(vb, &config).map_err(|e| Error::config(format!("model `{name}` ({}): {e}", weights.display())))?;
        let tokenizer = TextTokenizer::load(dir, config.max_position_embeddings)?;
        let info = ModelInfo {
            name: name.to_string(),
            dimensions: config.hidden_size,
            metric: model_metric(dir)?,
            modality: Modality::Text,
        };
        Ok(Self { info, bert, tokenizer, normalize })
    }

    /// The model's tokenizer (for [`crate::ChunkText`]).
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Embeds `texts`: `texts.len() × dimensions` floats, in the order of `texts`.
    ///
    /// The texts are sorted by token count and run in groups of similar length (at most
    /// [`GROUP_ROWS`] rows and [`GROUP_TOKENS`] padded tokens a pass), so a short text is not padded
    /// to the longest of the whole batch, and a pass's memory is bounded whatever the batch size.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, mask, width) = self.tokenizer.encode_batch(texts)?;
        // Padding is on the right: a row's tokens are the first `lens[i]` of its `width`.
        let lens: Vec<usize> = mask.chunks(width.max(1)).map(|m| m.iter().filter(|&&x| x != 0).count()).collect();
        let dims = self.info.dimensions;
        let mut out = vec![0f32; texts.len() * dims];
        for group in length_groups(&lens) {
            let w = group.iter().map(|&i| lens[i]).max().unwrap_or(0).max(1);
            let (mut g_ids, mut g_mask) = (Vec::with_capacity(group.len() * w), Vec::with_capacity(group.len() * w));
            for &i in &group {
                g_ids.extend_from_slice(&ids[i * width..i * width + w]);
                g_mask.extend_from_slice(&mask[i * width..i * width + w]);
            }
            let vectors = self.forward(g_ids, g_mask, (group.len(), w)).map_err(candle)?;
            for (k, &i) in group.iter().enumerate() {
                out[i * dims..(i + 1) * dims].copy_from_slice(&vectors[k * dims..(k + 1) * dims]);
            }
        }
        Ok(out)
    }

    /// One forward pass over padded `ids` and `mask` of `shape` (rows, tokens): pooled vectors.
    fn forward(&self, ids: Vec<u32>, mask: Vec<u32>, shape: (usize, usize)) -> candle_core::Result<Vec<f32>> {
        let dev = self.bert.device();
        let ids = Tensor::from_vec(ids, shape, dev)?;
        let mask = Tensor::from_vec(mask, shape, dev)?;
        let pooled = mean_pool(&self.bert.forward(&ids, &mask)?, &mask)?;
        let out = if self.normalize { l2_normalize(&pooled)? } else { pooled };
        out.flatten_all()?.to_vec1::<f32>()
    }
}

/// Rows a forward pass takes at most: small groups of similar length waste little on padding,
/// and on the CPU they cost no more per row than large ones (measured with the `minilm` bench).
pub const GROUP_ROWS: usize = 8;
/// Padded tokens (rows × longest) a forward pass takes at most, bounding its activations.
pub const GROUP_TOKENS: usize = 4096;

/// The row indexes of `lens` sorted by length and cut into groups of at most [`GROUP_ROWS`] rows
/// and [`GROUP_TOKENS`] padded tokens (a longer row goes alone).
fn length_groups(lens: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match groups.last_mut() {
            // Sorted ascending: with row `i`, the group's longest is `lens[i]`.
            Some(g) if g.len() < GROUP_ROWS && (g.len() + 1) * lens[i] <= GROUP_TOKENS => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups
}

impl EmbeddingModel for TextEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn embed(&self, inputs: &dyn Array) -> Result<Vec<f32>> {
        let texts = texts_of(inputs)
            .ok_or_else(|| Error::config(format!("model `{}` embeds text (Utf8), not {}", self.info.name, inputs.data_type())))?;
        self.embed_texts(&texts)
    }
    fn count_tokens(&self, texts: &[&str]) -> Option<usize> {
        self.tokenizer.count_tokens(texts).ok()
    }
}

/// The stage's column is not what its model takes: no row can succeed, so the stage stops with
/// `message` and the fix (local and remote models alike).
pub(crate) fn wrong_column(message: impl std::fmt::Display) -> ServiceError {
    ServiceError::fatal(format!("{message}; set the stage's `column` to one it takes"))
}

/// The strings of a Utf8 or LargeUtf8 column (a null as ""); `None` for any other type.
pub(crate) fn texts_of(inputs: &dyn Array) -> Option<Vec<&str>> {
    match inputs.data_type() {
        DataType::Utf8 => Some(inputs.as_string::<i32>().iter().map(|t| t.unwrap_or("")).collect()),
        DataType::LargeUtf8 => Some(inputs.as_string::<i64>().iter().map(|t| t.unwrap_or("")).collect()),
        _ => None,
    }
}

/// Whether `model` (a path or a registry name) is a CLIP model, from its `config.json`; a missing
/// model named like CLIP counts as one, so that it is reported as a missing CLIP model.
pub fn is_clip(model: &str) -> bool {
    match resolve(model, &["config.json"]).and_then(|dir| read_json::<serde_json::Value>(&dir, "config.json")) {
        Ok(c) => c.get("vision_config").is_some() || c["model_type"].as_str().is_some_and(|t| t.starts_with("clip")),
        Err(_) => model.to_ascii_lowercase().contains("clip"),
    }
}

/// A local model as a [`Service`]: calls run on tokio's blocking pool.
struct Local(Arc<dyn EmbeddingModel>);

#[async_trait]
impl Service for Local {
    async fn call(&self, requests: RecordBatch) -> std::result::Result<ArrayRef, ServiceError> {
        let model = self.0.clone();
        let dims = model.info().dimensions;
        let out = tokio::task::spawn_blocking(move || model.embed(requests.column(0).as_ref()))
            .await
            .map_err(|e| ServiceError::permanent(format!("the model panicked: {e}")))?;
        let values = out.map_err(|e| match e.kind() {
            ErrorKind::Config => wrong_column(e.message()),
            _ => ServiceError::permanent(e.to_string()),
        })?;
        let array = embedding_array(dims, values).map_err(|e| ServiceError::permanent(e.to_string()))?;
        Ok(Arc::new(array))
    }
}

/// How a worker makes its model: from a name and a device.
type Loader = Arc<dyn Fn(&str, &Device) -> Result<Arc<dyn EmbeddingModel>> + Send + Sync>;

/// Where the vectors come from.
#[derive(Clone)]
enum Source {
    /// A model each worker loads, from a directory with these files.
    Local(Loader, &'static [&'static str]),
    /// An endpoint every worker calls.
    Remote(Endpoint),
}

/// Builds an embedding stage. See the module docs.
#[derive(Clone)]
pub struct Embed {
    model: String,
    source: Source,
    column: String,
    output: String,
    settings: PoolSettings,
    gpus: f64,
    metric: Option<Metric>,
}

impl Embed {
    /// A text embedding stage with a sentence-transformers model (a path or a registry name).
    pub fn text(model: impl Into<String>) -> Self {
        let loader: Loader = Arc::new(|m: &str, d: &Device| Ok(Arc::new(TextEmbedder::load(m, d)?) as Arc<dyn EmbeddingModel>));
        Self::new(model.into(), Source::Local(loader, &TextEmbedder::FILES))
    }

    /// An image embedding stage with a CLIP model (a path or a registry name, see
    /// [`crate::image`]); the input column is `image` by default.
    pub fn image(model: impl Into<String>) -> Self {
        let loader: Loader = Arc::new(|m: &str, d: &Device| Ok(Arc::new(ImageEmbedder::load(m, d)?) as Arc<dyn EmbeddingModel>));
        Self::new(model.into(), Source::Local(loader, &ImageEmbedder::FILES)).column("image")
    }

    /// A text stage with a CLIP model's text tower ([`crate::clip`]): texts as vectors in the
    /// space of [`Embed::image`]'s, for searching images by text.
    pub fn clip_text(model: impl Into<String>) -> Self {
        let loader: Loader =
            Arc::new(|m: &str, d: &Device| Ok(Arc::new(ClipTextEmbedder::load(m, d)?) as Arc<dyn EmbeddingModel>));
        Self::new(model.into(), Source::Local(loader, &ClipTextEmbedder::FILES))
    }

    /// A stage from what the model's `config.json` says it is: a CLIP model embeds images, or,
    /// with `modality` [`Modality::Text`], texts with its text tower; any other model embeds text.
    pub fn local(model: impl Into<String>, modality: Option<Modality>) -> Result<Self> {
        let model = model.into();
        match (is_clip(&model), modality) {
            (true, None | Some(Modality::Image)) => Ok(Self::image(model)),
            (true, Some(Modality::Text)) => Ok(Self::clip_text(model)),
            (false, None | Some(Modality::Text)) => Ok(Self::text(model)),
            (false, Some(Modality::Image)) => Err(Error::config(format!(
                "model `{model}` is a text model; images need a CLIP model (see `alluvium demo-clip`), or leave out `modality`"
            ))),
        }
    }

    /// An embedding stage with any [`EmbeddingModel`]: `loader` makes one instance per worker.
    pub fn with_loader(model: impl Into<String>, loader: Loader) -> Self {
        Self::new(model.into(), Source::Local(loader, &[]))
    }

    /// An embedding stage calling a remote endpoint ([`crate::remote`]); each worker has one call in
    /// flight, so `workers` is the stage's concurrency.
    pub fn remote(endpoint: Endpoint) -> Self {
        Self::new(endpoint.model().to_string(), Source::Remote(endpoint))
    }

    fn new(model: String, source: Source) -> Self {
        let settings = PoolSettings { max_batch_rows: 32, max_wait: Duration::from_millis(10), ..Default::default() };
        Self { model, source, column: "text".into(), output: "embedding".into(), settings, gpus: 0.0, metric: None }
    }
    /// The metric the embedding column records (`alluvium.embedding` metadata). By default, a
    /// local model's own ([`model_metric`]), and cosine for a remote endpoint (OpenAI's vectors
    /// are normalised).
    pub fn metric(mut self, metric: Metric) -> Self {
        self.metric = Some(metric);
        self
    }

    /// The input column (`text`).
    pub fn column(mut self, column: impl Into<String>) -> Self {
        self.column = column.into();
        self
    }
    /// The embedding column (`embedding`).
    pub fn output(mut self, output: impl Into<String>) -> Self {
        self.output = output.into();
        self
    }
    /// Rows per model call at most (32).
    pub fn batch_rows(mut self, rows: usize) -> Self {
        self.settings.max_batch_rows = rows;
        self.settings.queue_rows = self.settings.queue_rows.max(4 * rows);
        self
    }
    /// Longest wait for a batch to fill (10 ms).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.settings.max_wait = wait;
        self
    }
    /// Workers (model instances): starts with `min`, scales itself up to `max` (1, 1).
    pub fn workers(mut self, min: usize, max: usize) -> Self {
        self.settings.workers = min;
        self.settings.min_workers = min;
        self.settings.max_workers = max;
        self
    }
    /// GPUs per worker (0: the CPU). Needs the `cuda` feature; without it, or without a GPU, the
    /// stage runs on the CPU and says so once.
    pub fn gpus(mut self, gpus: f64) -> Self {
        self.gpus = gpus;
        self
    }
    /// Time one call may take before it is retried (60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }
    /// How long the stage waits for an endpoint that is down before it fails, stopping the job
    /// (10 minutes; see [`alluvium_core::service::outage`]). Meanwhile its input is held, nothing
    /// becomes a dead letter, and checkpoints go on.
    pub fn outage_timeout(mut self, timeout: Duration) -> Self {
        self.settings.outage_timeout = timeout;
        self
    }
    /// All pool settings at once (timeouts, retries, queue).
    pub fn settings(mut self, settings: PoolSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The pool whose workers each load the model once. A local model's files, or an endpoint's
    /// settings and secrets, are checked here, before a run starts.
    pub fn pool(&self, name: &str) -> Result<ServicePool> {
        let loader = match &self.source {
            Source::Local(loader, _) => {
                self.model_dir().map_err(|e| e.context(format!("stage `{name}`")))?;
                loader.clone()
            }
            Source::Remote(endpoint) => {
                // One client (connections, rate limits) for every worker.
                let client: Arc<dyn Service> = Arc::new(endpoint.connect().map_err(|e| e.context(format!("stage `{name}`")))?);
                return ServicePool::new(name, self.settings.clone(), move |_| {
                    let client = client.clone();
                    async move { Ok(client) }
                });
            }
        };
        let (model, gpus, stage) = (self.model.clone(), self.gpus, name.to_string());
        ServicePool::new(name, self.settings.clone(), move |worker| {
            let (model, loader, stage) = (model.clone(), loader.clone(), stage.clone());
            async move {
                let loaded = tokio::task::spawn_blocking(move || {
                    let device = device_for(&stage, gpus);
                    let start = std::time::Instant::now();
                    let m = loader(&model, &device)?;
                    tracing::info!(stage = %stage, worker, model = %model, device = ?device, took_ms = start.elapsed().as_millis() as u64, "model loaded");
                    Ok::<_, Error>(m)
                })
                .await
                .map_err(|e| Error::internal(format!("loading the model panicked: {e}")))??;
                Ok(Arc::new(Local(loaded)) as Arc<dyn Service>)
            }
        })
    }

    /// The stage named `name`: the pool, with the vectors as an `alluvium.embedding` column.
    pub fn build(&self, name: &str) -> Result<Stage> {
        let pool = self.pool(name)?;
        let model = self.model.clone();
        let metric = self.column_metric().map_err(|e| e.context(format!("stage `{name}`")))?;
        let op = ServiceStage::new(pool, &[self.column.as_str()], self.output.clone()).output_field(move |name, ty| {
            let DataType::FixedSizeList(_, dims) = ty else {
                return Err(Error::internal(format!("the model answered {ty}, not vectors")));
            };
            Ok(EmbeddingType::new(model.clone(), metric, *dims as usize)?.field(name, false))
        });
        Ok(Stage::new_async(name, op).unaligned())
    }

    /// The metric the embedding column records: the one set with [`Embed::metric`], else a local
    /// model's own ([`model_metric`]), else cosine (a remote endpoint).
    pub fn column_metric(&self) -> Result<Metric> {
        match (self.metric, &self.source) {
            (Some(m), _) => Ok(m),
            (None, Source::Local(..)) => model_metric(&self.model_dir()?),
            (None, Source::Remote(_)) => Ok(Metric::Cosine),
        }
    }

    /// Where the model's files are, when it is a path or a registry name of the cache.
    pub fn model_dir(&self) -> Result<PathBuf> {
        match &self.source {
            Source::Local(_, files) => resolve(&self.model, files),
            Source::Remote(_) => Err(Error::config(format!("model `{}` is remote; it has no directory", self.model))),
        }
    }
}

/// The device for a worker asking for `gpus`: a GPU with the `cuda` feature and one free, else the CPU.
fn device_for(stage: &str, gpus: f64) -> Device {
    if gpus <= 0.0 {
        return Device::Cpu;
    }
    #[cfg(feature = "cuda")]
    {
        match alluvium_gpu::discover() {
            Ok(devices) if !devices.is_empty() => match Device::new_cuda(0) {
                Ok(d) => return d,
                Err(e) => alluvium_gpu::fall_back(stage, &format!("candle cannot use the GPU: {e}")),
            },
            _ => alluvium_gpu::fall_back(stage, "no GPU was found"),
        }
        Device::Cpu
    }
    #[cfg(not(feature = "cuda"))]
    {
        alluvium_gpu::fall_back(stage, "this build has no `cuda` feature (alluvium-models)");
        Device::Cpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_grouped_by_length_within_row_and_token_bounds() {
        let lens: Vec<usize> = (0..20).map(|i| (i * 7) % 20 + 1).collect();
        let groups = length_groups(&lens);
        let mut seen: Vec<usize> = groups.concat();
        let sorted: Vec<usize> = seen.iter().map(|&i| lens[i]).collect();
        assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "ascending: {sorted:?}");
        seen.sort();
        assert_eq!(seen, (0..20).collect::<Vec<_>>(), "every row once");
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [GROUP_ROWS, GROUP_ROWS, 20 - 2 * GROUP_ROWS]);
        // Long rows: the token bound splits groups, and a row longer than it goes alone.
        let long = [GROUP_TOKENS / 2, 10, GROUP_TOKENS / 2, GROUP_TOKENS * 2, GROUP_TOKENS / 2];
        assert_eq!(length_groups(&long), [vec![1, 0], vec![2, 4], vec![3]]);
        assert!(length_groups(&[]).is_empty());
    }
}
