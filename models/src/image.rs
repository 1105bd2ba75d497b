//! Image embeddings: the vision tower of a CLIP model (candle-transformers' implementation of
//! Hugging Face's `CLIPVisionModelWithProjection`) behind [`EmbeddingModel`].
//!
//! ## Loading weights
//!
//! No package registry this project can reach ships CLIP weights (PyPI's 100 MB file limit keeps
//! them out; the CLIP packages there download them at run time), so a CLIP model is a directory
//! you provide, as Hugging Face's `save_pretrained` writes it:
//!
//! ```text
//! clip-vit-base-patch32/
//!   config.json               # CLIPConfig (`vision_config`, `projection_dim`) or CLIPVisionConfig
//!   model.safetensors         # vision_model.* and visual_projection.weight (text weights are ignored)
//!   preprocessor_config.json  # optional: size, crop_size, image_mean, image_std (CLIP's by default)
//! ```
//!
//! ```text
//! huggingface-cli download openai/clip-vit-base-patch32 config.json model.safetensors \
//!     preprocessor_config.json --local-dir ~/.cache/alluvium/models/clip-vit-base-patch32
//! ```
//!
//! then `Embed::image("clip-vit-base-patch32")` (a registry name of the model cache) or a path.
//!
//! ## Inputs and preprocessing
//!
//! A row is an image: a decoded `alluvium.image.decoded` (gray, RGB or RGBA pixels), an encoded
//! `alluvium.image`, or plain bytes of an encoded image (`fetch`'s `bytes`), so a pipeline can embed
//! straight after `fetch`. Each is made RGB, resized so its shorter side is `size` (Pillow's
//! bicubic, to the bit, as CLIP's processor), centre-cropped to `crop_size`, scaled to [0, 1] and
//! normalised with `image_mean`/`image_std`. A row that is not an image makes the call fail; the pool then
//! finds it and makes it a dead letter. Vectors are L2-normalised (cosine).

use std::path::Path;

use alluvium_core::arrow::array::{Array, AsArray, BinaryArray, LargeBinaryArray, StructArray, UInt32Array};
use alluvium_core::arrow::datatypes::DataType;
use alluvium_core::types::Metric;
use alluvium_core::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::clip::text_model::Activation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};

use crate::bert::l2_normalize;
use crate::embed::{EmbeddingModel, Modality, ModelInfo};
use crate::{candle, read_json, resolve};

/// CLIP's normalisation (OpenAI's training set statistics).
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// How images are made tensors: `preprocessor_config.json`, with CLIP's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// The shorter side after resizing.
    pub size: u32,
    /// The centre crop's side.
    pub crop: u32,
    /// Per-channel mean, after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

/// A CLIP vision tower with its projection. See the module docs.
pub struct ImageEmbedder {
    info: ModelInfo,
    vision: ClipVisionTransformer,
    projection: Linear,
    preprocess: Preprocess,
    device: Device,
}

/// The vision part of a CLIP `config.json`.
pub fn vision_config(config: &serde_json::Value) -> Result<ClipVisionConfig> {
    let vision = config.get("vision_config").unwrap_or(config);
    let num = |key: &str, default: Option<usize>| -> Result<usize> {
        match vision.get(key).and_then(|v| v.as_u64()) {
            Some(n) => Ok(n as usize),
            None => default.ok_or_else(|| Error::config(format!("config.json has no `vision_config.{key}`"))),
        }
    };
    let act = vision.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("quick_gelu");
    if act != "quick_gelu" {
        return Err(Error::config(format!(
            "config.json: `hidden_act` is `{act}`; only CLIP's `quick_gelu` vision towers are supported"
        )));
    }
    let projection_dim = config.get("projection_dim").or_else(|| vision.get("projection_dim")).and_then(|v| v.as_u64());
    Ok(ClipVisionConfig {
        embed_dim: num("hidden_size", Some(768))?,
        activation: Activation::QuickGelu,
        intermediate_size: num("intermediate_size", Some(3072))?,
        num_hidden_layers: num("num_hidden_layers", Some(12))?,
        num_attention_heads: num("num_attention_heads", Some(12))?,
        projection_dim: projection_dim.map_or(512, |n| n as usize),
        num_channels: num("num_channels", Some(3))?,
        image_size: num("image_size", Some(224))?,
        patch_size: num("patch_size", Some(32))?,
    })
}

impl Preprocess {
    /// CLIP's preprocessing for images of side `side`.
    pub fn clip(side: u32) -> Self {
        Self { size: side, crop: side, mean: CLIP_MEAN, std: CLIP_STD }
    }

    /// Reads `preprocessor_config.json` (`size`, `crop_size` as a number or `{shortest_edge}` /
    /// `{height, width}`), falling back to CLIP's values for `side`.
    fn read(dir: &Path, side: u32) -> Result<Self> {
        let mut p = Self::clip(side);
        if !dir.join("preprocessor_config.json").is_file() {
            return Ok(p);
        }
        let v: serde_json::Value = read_json(dir, "preprocessor_config.json")?;
        let side_of = |v: &serde_json::Value| {
            v.as_u64().or_else(|| v.get("shortest_edge").or_else(|| v.get("height")).and_then(|s| s.as_u64())).map(|n| n as u32)
        };
        if let Some(s) = v.get("size").and_then(side_of) {
            p.size = s;
        }
        if let Some(c) = v.get("crop_size").and_then(side_of) {
            p.crop = c;
        }
        let triple = |key: &str| -> Option<[f32; 3]> {
            let a = v.get(key)?.as_array()?;
            (a.len() == 3).then(|| [0, 1, 2].map(|i| a[i].as_f64().unwrap_or(0.0) as f32))
        };
        if let Some(m) = triple("image_mean") {
            p.mean = m;
        }
        if let Some(s) = triple("image_std") {
            p.std = s;
        }
        if p.crop != side || p.size < p.crop || p.std.contains(&0.0) {
            return Err(Error::config(format!(
                "{}: crop_size {} must equal the model's image_size {side} and be at most size {}, and image_std must not be 0",
                dir.join("preprocessor_config.json").display(),
                p.crop,
                p.size
            )));
        }
        Ok(p)
    }

    /// An RGB image as a normalised `[3, crop, crop]` tensor's values (CHW).
    pub fn apply(&self, rgb: &image::RgbImage) -> Vec<f32> {
        let (w, h) = rgb.dimensions();
        // The shorter side becomes `size`, the longer `size × long / short` rounded down, as
        // transformers' `get_resize_output_image_size` does.
        let long = |side: u32| (self.size as f64 * side as f64 / w.min(h) as f64) as u32;
        let (nw, nh) = if w <= h { (self.size, long(h)) } else { (long(w), self.size) };
        let (nw, nh) = (nw.max(self.crop), nh.max(self.crop));
        let resized = if (nw, nh) == (w, h) { rgb.clone() } else { bicubic(rgb, nw, nh) };
        let (x0, y0) = ((nw - self.crop) / 2, (nh - self.crop) / 2);
        let side = self.crop as usize;
        let mut out = vec![0f32; 3 * side * side];
        for y in 0..side {
            for x in 0..side {
                let p = resized.get_pixel(x0 + x as u32, y0 + y as u32);
                for c in 0..3 {
                    out[c * side * side + y * side + x] = (p[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }
}

/// Pillow's bicubic resize (`Image.resize(size, BICUBIC)`, which CLIP's preprocessing uses), to
/// the bit: a = -0.5 cubic stretched over the source pixels a target pixel covers (anti-aliased),
/// coefficients in 22-bit fixed point, the horizontal pass first, rounded and clamped to bytes
/// before the vertical one. `image`'s Catmull-Rom differs from it by up to 8 levels at sharp edges,
/// enough to move a CLIP vector.
pub fn bicubic(src: &image::RgbImage, width: u32, height: u32) -> image::RgbImage {
    const PRECISION: u32 = 22;
    fn cubic(x: f64) -> f64 {
        let (a, x) = (-0.5, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    }
    // For each output index: the first source index and the fixed-point weights from there.
    let coefficients = |input: u32, output: u32| -> Vec<(usize, Vec<i64>)> {
        let scale = input as f64 / output as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        (0..output)
            .map(|i| {
                let center = (i as f64 + 0.5) * scale;
                let min = ((center - support + 0.5) as i64).max(0) as usize;
                let max = ((center + support + 0.5) as i64).min(input as i64) as usize;
                let weights: Vec<f64> = (min..max).map(|x| cubic((x as f64 - center + 0.5) / filter_scale)).collect();
                let total: f64 = weights.iter().sum();
                let fixed = weights
                    .iter()
                    .map(|w| {
                        let w = if total != 0.0 { w / total } else { *w } * (1u64 << PRECISION) as f64;
                        (if w < 0.0 { w - 0.5 } else { w + 0.5 }) as i64
                    })
                    .collect();
                (min, fixed)
            })
            .collect()
    };
    let clip = |sum: i64| -> u8 { (sum >> PRECISION).clamp(0, 255) as u8 };
    // One pass along one axis: each output pixel sums its taps along that axis.
    let pass = |src: &image::RgbImage, k: &[(usize, Vec<i64>)], horizontal: bool| {
        let (w, h) = src.dimensions();
        let (ow, oh) = if horizontal { (k.len() as u32, h) } else { (w, k.len() as u32) };
        image::RgbImage::from_fn(ow, oh, |x, y| {
            let (min, weights) = &k[if horizontal { x } else { y } as usize];
            let mut sum = [1i64 << (PRECISION - 1); 3];
            for (j, wt) in weights.iter().enumerate() {
                let at = (min + j) as u32;
                let p = if horizontal { src.get_pixel(at, y) } else { src.get_pixel(x, at) };
                (0..3).for_each(|c| sum[c] += p[c] as i64 * wt);
            }
            image::Rgb(sum.map(clip))
        })
    };
    let (w, h) = src.dimensions();
    let across = (width != w).then(|| pass(src, &coefficients(w, width), true));
    if height == h {
        return across.unwrap_or_else(|| src.clone());
    }
    pass(across.as_ref().unwrap_or(src), &coefficients(h, height), false)
}

impl ImageEmbedder {
    /// The files a model directory must hold.
    pub const FILES: [&'static str; 2] = ["config.json", "model.safetensors"];

    /// Loads the CLIP model `model` (a path or a registry name, see [`crate::resolve`]) onto `device`.
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        let dir = resolve(model, &Self::FILES)?;
        let config: serde_json::Value = read_json(&dir, "config.json")?;
        let c = vision_config(&config)?;
        let (vb, weights) = crate::read_weights(&dir, device)?;
        let preprocess = Preprocess::read(&dir, c.image_size as u32)?;
        Self::new(model, vb, &c, preprocess).map_err(|e| Error::config(format!("model `{model}` ({}): {e}", weights.display())))
    }

    /// A model from weights in `vb` (the keys of Hugging Face's CLIP: `vision_model.*`,
    /// `visual_projection.weight`).
    pub fn new(name: &str, vb: VarBuilder, c: &ClipVisionConfig, preprocess: Preprocess) -> Result<Self> {
        let build = || -> candle_core::Result<(ClipVisionTransformer, Linear)> {
            let vision = ClipVisionTransformer::new(vb.pp("vision_model"), c)?;
            let projection = candle_nn::linear_no_bias(c.embed_dim, c.projection_dim, vb.pp("visual_projection"))?;
            Ok((vision, projection))
        };
        let (vision, projection) = build().map_err(candle)?;
        let info =
            ModelInfo { name: name.to_string(), dimensions: c.projection_dim, metric: Metric::Cosine, modality: Modality::Image };
        Ok(Self { info, vision, projection, preprocess, device: vb.device().clone() })
    }

    /// The preprocessing in use.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Embeds RGB images: `images.len() × dimensions` floats, L2-normalised.
    pub fn embed_images(&self, images: &[image::RgbImage]) -> Result<Vec<f32>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        self.embed_pixels(images.iter().flat_map(|i| self.preprocess.apply(i)).collect())
    }

    /// Embeds images already preprocessed ([`Preprocess::apply`]): `n × [3, crop, crop]` values,
    /// row-major, as transformers' `pixel_values`.
    pub fn embed_pixels(&self, pixels: Vec<f32>) -> Result<Vec<f32>> {
        let side = self.preprocess.crop as usize;
        if pixels.is_empty() || !pixels.len().is_multiple_of(3 * side * side) {
            return Err(Error::data(format!("{} pixel values are not whole {side}×{side} RGB images", pixels.len())));
        }
        let n = pixels.len() / (3 * side * side);
        let run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::from_vec(pixels, (n, 3, side, side), &self.device)?;
            let pooled = self.vision.forward(&x)?;
            let projected = self.projection.forward(&pooled)?;
            l2_normalize(&projected)?.flatten_all()?.to_vec1::<f32>()
        };
        run().map_err(candle)
    }
}

/// The `config.json` of [`write_random_clip`]'s model: 32×32 images, 8×8 patches, 2 layers, 16-d;
/// a text tower of 2 layers over CLIP's vocabulary.
const RANDOM_CLIP_CONFIG: &str = r#"{
  "model_type": "clip",
  "architectures": ["CLIPModel"],
  "projection_dim": 16,
  "logit_scale_init_value": 2.6592,
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu"},
  "text_config": {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                  "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
}"#;

/// Writes a tiny CLIP model into `dir`, laid out as Hugging Face saves CLIP (`config.json`,
/// `model.safetensors`, `preprocessor_config.json`: shorter side 40, crop 32), and returns its image
/// tower, as [`ImageEmbedder::load`] would read it back. Its text tower
/// ([`ClipTextEmbedder`](crate::ClipTextEmbedder)) uses OpenAI's vocabulary from the model cache
/// (see [`crate::clip`]).
///
/// The weights are random but the same on every machine: each tensor's values come from a
/// generator seeded by the tensor's name, so the tests can compare with vectors transformers
/// computed from a model this function wrote (`models/tests/fixtures/make_clip_reference.py`).
///
/// **For tests and demos only**: it runs a whole image pipeline (loading, preprocessing, batching,
/// 16-d unit vectors that depend on the image) in milliseconds without real weights, but its
/// vectors carry no meaning. `alluvium demo-clip DIR` writes one.
pub fn write_random_clip(dir: &Path) -> Result<ImageEmbedder> {
    let io = |what: &str, e: &dyn std::fmt::Display| Error::config(format!("cannot write {what} in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| io("the model", &e))?;
    let config: serde_json::Value = serde_json::from_str(RANDOM_CLIP_CONFIG).expect("a valid config");
    let c = vision_config(&config)?;
    let vm = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    // Parameters, not modules: made here so that they are saved with the rest.
    vb.pp("vision_model.embeddings").get(c.embed_dim, "class_embedding").map_err(candle)?;
    vb.get((), "logit_scale").map_err(candle)?;
    crate::clip::tower(&vb, &crate::clip::text_config(&config)?).map_err(candle)?;
    let name = dir.to_string_lossy();
    let model = ImageEmbedder::new(&name, vb, &c, Preprocess { size: 40, ..Preprocess::clip(32) })?;
    for (key, var) in vm.data().lock().expect("not poisoned").iter() {
        var.set(&seeded(key, var.shape())).map_err(candle)?;
    }
    vm.save(dir.join("model.safetensors")).map_err(|e| io("model.safetensors", &e))?;
    std::fs::write(dir.join("config.json"), RANDOM_CLIP_CONFIG).map_err(|e| io("config.json", &e))?;
    let preprocessor = r#"{"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}"#;
    std::fs::write(dir.join("preprocessor_config.json"), preprocessor).map_err(|e| io("preprocessor_config.json", &e))?;
    Ok(model)
}

/// Values for the weight `name` of `shape`, the same on every machine: uniform from a xorshift
/// generator seeded by the name (FNV-1a), scaled so that activations stay near unit size (layer
/// norm gains near 1, small biases, linear weights by their fan-in).
fn seeded(name: &str, shape: &candle_core::Shape) -> Tensor {
    let mut state = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)) | 1;
    let dims = shape.dims();
    let fan_in = dims.iter().skip(1).product::<usize>().max(1);
    let (offset, scale) = if name == "logit_scale" {
        (2.6592, 0.0)
    } else if name.ends_with(".bias") {
        (0.0, 0.1)
    } else if name.contains("norm") {
        (1.0, 0.2)
    } else if name.contains("embedding") {
        (0.0, 0.5)
    } else {
        (0.0, (3.0 / fan_in as f64).sqrt())
    };
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            (offset + scale * unit) as f32
        })
        .collect();
    Tensor::from_vec(values, dims, &Device::Cpu).expect("sized to the shape")
}

/// The images of a column: decoded, encoded or bytes. See the module docs.
pub fn images_of(inputs: &dyn Array) -> Result<Vec<image::RgbImage>> {
    let decode = |i: usize, bytes: &[u8]| -> Result<image::RgbImage> {
        image::load_from_memory(bytes)
            .map(|d| d.to_rgb8())
            .map_err(|e| Error::data(format!("row {i}: not a readable image: {e}")))
    };
    match inputs.data_type() {
        DataType::Binary => {
            let a = inputs.as_any().downcast_ref::<BinaryArray>().expect("binary");
            (0..a.len()).map(|i| decode(i, a.value(i))).collect()
        }
        DataType::LargeBinary => {
            let a = inputs.as_any().downcast_ref::<LargeBinaryArray>().expect("binary");
            (0..a.len()).map(|i| decode(i, a.value(i))).collect()
        }
        DataType::Struct(_) => {
            let s: &StructArray = inputs.as_struct();
            if let (Some(pixels), Some(w), Some(h)) =
                (s.column_by_name("pixels"), s.column_by_name("width"), s.column_by_name("height"))
            {
                let pixels = pixels.as_any().downcast_ref::<BinaryArray>();
                let (w, h) = (w.as_any().downcast_ref::<UInt32Array>(), h.as_any().downcast_ref::<UInt32Array>());
                let (Some(pixels), Some(w), Some(h)) = (pixels, w, h) else {
                    return Err(Error::config("a decoded image has Binary `pixels` and UInt32 `width` and `height`"));
                };
                (0..s.len()).map(|i| from_pixels(i, pixels.value(i), w.value(i), h.value(i))).collect()
            } else if let Some(data) = s.column_by_name("data").and_then(|d| d.as_any().downcast_ref::<BinaryArray>()) {
                (0..s.len()).map(|i| decode(i, data.value(i))).collect()
            } else {
                Err(Error::config(format!(
                    "an image embedding model takes images (alluvium.image or alluvium.image.decoded) or bytes, not {}",
                    inputs.data_type()
                )))
            }
        }
        other => Err(Error::config(format!(
            "an image embedding model takes images (alluvium.image or alluvium.image.decoded) or bytes, not {other}"
        ))),
    }
}

/// Decoded HWC pixels (1, 3 or 4 channels) as RGB.
fn from_pixels(row: usize, pixels: &[u8], w: u32, h: u32) -> Result<image::RgbImage> {
    let n = w as usize * h as usize;
    if n == 0 || !pixels.len().is_multiple_of(n) {
        return Err(Error::data(format!("row {row}: {} bytes of pixels for a {w}×{h} image", pixels.len())));
    }
    let rgb: Vec<u8> = match pixels.len() / n {
        1 => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        3 => pixels.to_vec(),
        4 => pixels.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        c => return Err(Error::data(format!("row {row}: {c} channels; want 1, 3 or 4"))),
    };
    Ok(image::RgbImage::from_raw(w, h, rgb).expect("sized above"))
}

impl EmbeddingModel for ImageEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn embed(&self, inputs: &dyn Array) -> Result<Vec<f32>> {
        self.embed_images(&images_of(inputs)?)
    }
}
