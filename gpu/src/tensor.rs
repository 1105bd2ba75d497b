//! [`ToTensor`]: decoded images → normalised `Float32` tensors `[3, height, width]`, the input of
//! vision models, on a GPU when the stage asks for one and gets it, else on the CPU.
//!
//! ```text
//!  image (alluvium.image.decoded, RGB) ──resize (bilinear)──▶ normalise ((v/255 − mean)/std)
//!      ──▶ tensor: arrow.fixed_shape_tensor<Float32>[3, height, width] (channel-major)
//! ```
//!
//! * Each subtask takes its GPU share ([`Resources`]) on its first batch and keeps it until it
//!   ends. Without a GPU, with the share taken by other subtasks, or when opening the device or
//!   compiling the kernels fails, the subtask runs on the CPU and the stage logs one line saying
//!   so and why. A GPU error part-way moves the subtask to the CPU the same way; no row is lost.
//! * Both paths give the same numbers (see [`crate::ops`] for the tolerance).
//! * A row whose pixels do not match its size, or that is null, is a dead letter.

use std::sync::Arc;

use alluvium_core::arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array};
use alluvium_core::arrow::datatypes::DataType;
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::operator::with_columns;
use alluvium_core::types::{tensor_field_named, DecodedImageType};
use alluvium_core::{Error, ErrorKind, Operator, Output, Result, RowResults, Stage};

use crate::device::{fall_back, GpuPool, Lease, Resources};
use crate::kernels::Gpu;
use crate::ops::{normalize_chw, resize_rgb, Rgb};

/// ImageNet's channel means, the usual normalisation of vision models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where a subtask runs, once decided.
enum Engine {
    Gpu(Gpu, #[allow(dead_code)] Lease),
    Cpu,
}

/// Decoded images → normalised tensors. See the module docs.
pub struct ToTensor {
    column: String,
    output: String,
    width: usize,
    height: usize,
    mean: [f32; 3],
    std: [f32; 3],
    resources: Resources,
    engine: Option<Engine>,
}

impl Clone for ToTensor {
    /// A copy of the settings; each copy (each subtask) takes its own GPU share.
    fn clone(&self) -> Self {
        Self { column: self.column.clone(), output: self.output.clone(), engine: None, ..*self }
    }
}

impl ToTensor {
    /// `width × height` tensors of the decoded `image` column, ImageNet normalisation, on the CPU.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            column: "image".into(),
            output: "tensor".into(),
            width,
            height,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            resources: Resources::cpu(),
            engine: None,
        }
    }
    /// The decoded image column.
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }
    /// The tensor column's name.
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.output = name.into();
        self
    }
    /// Per-channel mean and standard deviation, on the 0–1 scale.
    pub fn normalize(mut self, mean: [f32; 3], std: [f32; 3]) -> Self {
        self.mean = mean;
        self.std = std;
        self
    }
    /// What each subtask asks for: `Resources::gpu(0.5)` runs on half a GPU when there is one.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::config(format!("to_tensor: {m}")));
        if self.width == 0 || self.height == 0 {
            return bad(format!("{}×{} has a zero side; set `width` and `height` to 1 or more", self.width, self.height));
        }
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite()) || self.mean.iter().any(|m| !m.is_finite()) {
            return bad("`std` must be three non-zero numbers and `mean` three numbers".into());
        }
        self.resources.validate().or_else(bad)
    }

    /// Where this subtask runs: a GPU share, or the CPU (said once, with the reason).
    fn engine(&mut self) -> &Engine {
        if self.engine.is_none() {
            let engine = match self.resources.wants_gpu() {
                false => Engine::Cpu,
                true => {
                    let gpu = GpuPool::global()
                        .and_then(|pool| pool.acquire(&self.resources))
                        .and_then(|lease| Gpu::open(lease.ordinal()).map(|gpu| (gpu, lease)));
                    match gpu {
                        Ok((gpu, lease)) => {
                            tracing::info!(stage = "to_tensor", device = gpu.ordinal(), "runs on the GPU");
                            Engine::Gpu(gpu, lease)
                        }
                        Err(why) => {
                            fall_back("to_tensor", &why);
                            Engine::Cpu
                        }
                    }
                }
            };
            self.engine = Some(engine);
        }
        self.engine.as_ref().expect("set above")
    }

    /// Whether this subtask runs on a GPU (decided on the first batch).
    pub fn on_gpu(&mut self) -> bool {
        matches!(self.engine(), Engine::Gpu(..))
    }

    fn tensor(&mut self, src: &Rgb<&[u8]>) -> std::result::Result<Vec<f32>, String> {
        let (w, h, mean, std) = (self.width, self.height, self.mean, self.std);
        if let Engine::Gpu(gpu, _) = self.engine() {
            match gpu.to_tensor(src, w, h, mean, std) {
                Ok(t) => return Ok(t),
                Err(why) => {
                    fall_back("to_tensor", &format!("the GPU failed part-way: {why}"));
                    self.engine = Some(Engine::Cpu);
                }
            }
        }
        Ok(normalize_chw(&resize_rgb(src, w, h), mean, std))
    }
}

impl Operator for ToTensor {
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        let (px, w, h) = DecodedImageType::columns(&batch, &self.column, "to_tensor")?;
        let rows = RowResults::collect((0..px.len()).map(|i| {
            let (width, height) = (w.value(i) as usize, h.value(i) as usize);
            let image = if px.is_null(i) {
                Err("to_tensor: the image is null".to_string())
            } else if px.value(i).len() != width * height * 3 || width == 0 || height == 0 {
                Err(format!("to_tensor: {} bytes are not a {width}×{height} RGB image", px.value(i).len()))
            } else {
                Ok(Rgb { width, height, pixels: px.value(i) })
            };
            image.and_then(|img| self.tensor(&img)).map_err(|m| (ErrorKind::Data, m))
        }));
        let kept = rows.kept(&batch)?;
        let field = tensor_field_named(
            &self.output,
            DataType::Float32,
            &[3, self.height, self.width],
            Some(vec!["channels".into(), "height".into(), "width".into()]),
            false,
        )?;
        let DataType::FixedSizeList(item, size) = field.data_type().clone() else { unreachable!("a tensor field") };
        let values = Float32Array::from_iter_values(rows.ok.into_iter().flatten());
        let tensor = FixedSizeListArray::try_new(item, size, Arc::new(values), None)?;
        let out = with_columns(&kept, None, vec![(field, Arc::new(tensor) as ArrayRef)])?;
        Ok(Output::with_failures(out, rows.failures))
    }
}

impl From<ToTensor> for Stage {
    fn from(t: ToTensor) -> Stage {
        Stage::new("to_tensor", t)
    }
}
