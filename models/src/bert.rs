//! A BERT encoder with sentence-transformers pooling, on candle: what `all-MiniLM-L6-v2` (and
//! other sentence-transformers BERT models) compute.
//!
//! ```text
//!  token ids ─▶ word + position + type embeddings ─▶ LayerNorm
//!            ─▶ N × [ self-attention (masked) ─▶ add & LayerNorm ─▶ GELU MLP ─▶ add & LayerNorm ]
//!            ─▶ mean over the real tokens (the attention mask) ─▶ L2 normalise  (if the model says so)
//! ```
//!
//! The weights are the Hugging Face layout (`embeddings.word_embeddings.weight`,
//! `encoder.layer.N.attention.self.query.weight`, …), read from `model.safetensors` with the sizes
//! from `config.json`. Padding is masked out of attention and pooling, so a text's embedding does
//! not depend on the other texts of its batch beyond float rounding.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// The parts of a Hugging Face `config.json` a BERT encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of every layer (384 for MiniLM-L6).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Longest input in tokens.
    pub max_position_embeddings: usize,
    /// Token types (segments).
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// The MLP's activation: only `gelu` (the exact, erf form) is supported.
    #[serde(default = "gelu")]
    pub hidden_act: String,
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The encoder with its weights. `forward` is pure: one instance serves any number of batches.
pub struct Bert {
    words: Embedding,
    positions: Embedding,
    types: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_size: usize,
    device: Device,
}

impl Bert {
    /// Builds the encoder from weights in the Hugging Face layout.
    pub fn load(vb: VarBuilder, config: &BertConfig) -> candle_core::Result<Self> {
        if config.hidden_act != "gelu" {
            candle_core::bail!("activation `{}` is not supported (only `gelu`)", config.hidden_act);
        }
        if !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            candle_core::bail!("hidden_size {} is not a multiple of {} heads", config.hidden_size, config.num_attention_heads);
        }
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let e = vb.pp("embeddings");
        let words = embedding(config.vocab_size, h, e.pp("word_embeddings"))?;
        let positions = embedding(config.max_position_embeddings, h, e.pp("position_embeddings"))?;
        let types = embedding(config.type_vocab_size, h, e.pp("token_type_embeddings"))?;
        let norm = layer_norm(h, eps, e.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            layers.push(Layer {
                query: linear(h, h, a.pp("self.query"))?,
                key: linear(h, h, a.pp("self.key"))?,
                value: linear(h, h, a.pp("self.value"))?,
                attention_out: linear(h, h, a.pp("output.dense"))?,
                attention_norm: layer_norm(h, eps, a.pp("output.LayerNorm"))?,
                intermediate: linear(h, config.intermediate_size, l.pp("intermediate.dense"))?,
                output: linear(config.intermediate_size, h, l.pp("output.dense"))?,
                output_norm: layer_norm(h, eps, l.pp("output.LayerNorm"))?,
            });
        }
        let heads = config.num_attention_heads;
        Ok(Self { words, positions, types, norm, layers, heads, head_size: h / heads, device: vb.device().clone() })
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token states `[batch, tokens, hidden]` for `ids` and `mask` (`[batch, tokens]`, u32; mask 1
    /// for real tokens, 0 for padding).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let positions = Tensor::arange(0u32, n as u32, &self.device)?.unsqueeze(0)?.broadcast_as((b, n))?;
        let types = ids.zeros_like()?;
        let x = self.words.forward(ids)?.add(&self.positions.forward(&positions)?)?.add(&self.types.forward(&types)?)?;
        let mut x = self.norm.forward(&x)?;
        // 0 where attended, the lowest float where padded: [b, 1, 1, n], added to the scores.
        let bias = ((mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * f32::MIN as f64)?).reshape((b, 1, 1, n))?;
        let scale = 1.0 / (self.head_size as f64).sqrt();
        for l in &self.layers {
            let split = |t: Tensor| t.reshape((b, n, self.heads, self.head_size))?.transpose(1, 2)?.contiguous();
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, n, self.heads * self.head_size))?;
            let attended = l.attention_norm.forward(&(l.attention_out.forward(&context)? + &x)?)?;
            let inner = l.intermediate.forward(&attended)?.gelu_erf()?;
            x = l.output_norm.forward(&(l.output.forward(&inner)? + &attended)?)?;
        }
        Ok(x)
    }
}

/// Mean of the token states over the real tokens: `[batch, hidden]`.
pub fn mean_pool(states: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let sum = states.broadcast_mul(&mask)?.sum(1)?;
    let count = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    sum.broadcast_div(&count)
}

/// Each row divided by its L2 norm (at least 1e-12), as sentence-transformers' `Normalize`.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}
