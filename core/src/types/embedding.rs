//! Embeddings: `FixedSizeList<Float32, D>` with the model that made them and their metric.

use std::sync::Arc;

use arrow::array::{FixedSizeListArray, Float32Array};
use arrow::datatypes::{DataType, Field};
use arrow::error::ArrowError;
use arrow_schema::extension::ExtensionType;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How embeddings are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cosine similarity.
    Cosine,
    /// Euclidean distance.
    L2,
    /// Dot product.
    Dot,
}

/// Metadata of an embedding column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingMetadata {
    /// The model (a registry name or a path), e.g. `all-MiniLM-L6-v2`.
    pub model: String,
    /// The metric the model was trained for.
    pub metric: Metric,
}

/// The `alluvium.embedding` extension type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingType {
    metadata: EmbeddingMetadata,
    dimensions: usize,
}

impl EmbeddingType {
    /// Embeddings of `dimensions` floats made by `model`.
    pub fn new(model: impl Into<String>, metric: Metric, dimensions: usize) -> Result<Self> {
        Ok(Self::try_new(&Self::data_type(dimensions), EmbeddingMetadata { model: model.into(), metric })?)
    }
    /// The physical type for `dimensions`.
    pub fn data_type(dimensions: usize) -> DataType {
        DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), dimensions as i32)
    }
    /// Number of dimensions.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }
    /// The model.
    pub fn model(&self) -> &str {
        &self.metadata.model
    }
    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metadata.metric
    }
    /// A field of these embeddings named `name`.
    pub fn field(&self, name: &str, nullable: bool) -> Field {
        Field::new(name, Self::data_type(self.dimensions), nullable).with_extension_type(self.clone())
    }
}

impl ExtensionType for EmbeddingType {
    const NAME: &'static str = "alluvium.embedding";
    type Metadata = EmbeddingMetadata;
    fn metadata(&self) -> &EmbeddingMetadata {
        &self.metadata
    }
    fn serialize_metadata(&self) -> Option<String> {
        super::json_metadata(&self.metadata)
    }
    fn deserialize_metadata(metadata: Option<&str>) -> Result<EmbeddingMetadata, ArrowError> {
        super::parse_json_metadata(Self::NAME, metadata, "{\"model\", \"metric\"}")
    }
    fn supports_data_type(&self, data_type: &DataType) -> Result<(), ArrowError> {
        match data_type {
            DataType::FixedSizeList(item, d) if *item.data_type() == DataType::Float32 && *d as usize == self.dimensions => {
                Ok(())
            }
            other => Err(ArrowError::InvalidArgumentError(format!(
                "{} of {} dimensions expects {}, found {other}",
                Self::NAME,
                self.dimensions,
                Self::data_type(self.dimensions)
            ))),
        }
    }
    fn try_new(data_type: &DataType, metadata: EmbeddingMetadata) -> Result<Self, ArrowError> {
        match data_type {
            DataType::FixedSizeList(item, d) if *item.data_type() == DataType::Float32 && *d > 0 => {
                Ok(Self { metadata, dimensions: *d as usize })
            }
            other => Err(ArrowError::InvalidArgumentError(format!(
                "{} expects FixedSizeList<Float32, D> with D > 0, found {other}",
                Self::NAME
            ))),
        }
    }
}

/// A column of embeddings from row-major values (`values.len()` must be a multiple of `dimensions`).
pub fn embedding_array(dimensions: usize, values: Vec<f32>) -> Result<FixedSizeListArray> {
    if dimensions == 0 || !values.len().is_multiple_of(dimensions) {
        return Err(Error::data(format!("{} values do not make rows of {dimensions} dimensions", values.len())));
    }
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(FixedSizeListArray::try_new(item, dimensions as i32, Arc::new(Float32Array::from(values)), None)?)
}
