//! Multimodal types: Arrow extension types over plain Arrow layouts.
//!
//! Large assets travel through pipelines as **references** ([`ObjectRef`]); their bytes are fetched
//! and decoded only where a stage needs them. Every type is an Arrow *extension type*: a name (and
//! sometimes JSON metadata) in the field's `ARROW:extension:*` metadata, over an ordinary physical
//! layout. Readers that know nothing about Alluvium (pyarrow, DuckDB, Lance, Iceberg and Delta
//! readers) see ordinary structs, binaries and lists; the extension metadata survives Arrow IPC
//! and Parquet.
//!
//! | type | extension name | physical layout |
//! |---|---|---|
//! | [`ObjectRef`] | `alluvium.object_ref` | `Struct{uri: Utf8, offset: UInt64?, length: UInt64?, size: UInt64?, etag: Utf8?, version: Utf8?, content_type: Utf8?}` |
//! | [`EncodedImageType`] | `alluvium.image` | `Struct{data: Binary, format: Utf8, width: UInt32?, height: UInt32?}` |
//! | [`DecodedImageType`] | `alluvium.image.decoded` | `Struct{pixels: Binary (HWC, u8), width: UInt32, height: UInt32}`, metadata `{"channels": 1\|3\|4}` |
//! | [`EmbeddingType`] | `alluvium.embedding` | `FixedSizeList<Float32, D>`, metadata `{"model": …, "metric": "cosine"\|"l2"\|"dot"}` |
//! | tensor | `arrow.fixed_shape_tensor` (canonical) | `FixedSizeList<T, ∏shape>`, see [`tensor_field`] |
//! | [`VideoRefType`] | `alluvium.video` | `Struct{ref: ObjectRef, duration_ms: Int64?, fps: Float64?, codec: Utf8?, width: UInt32?, height: UInt32?, rotation: Int32?}` |
//! | [`AudioRefType`] | `alluvium.audio` | `Struct{ref: ObjectRef, duration_ms: Int64?, sample_rate: UInt32?, channels: UInt16?, codec: Utf8?}` |
//! | frame rows | (a schema) | [`frame_schema`]: `source: ObjectRef, frame_index: UInt64, pts_ms: Int64, keyframe: Boolean, image: Image` |
//!
//! `offset`/`length` select a byte range of the object; `etag`/`version` pin the object as it was
//! when the reference was made, so that a changed object is detected instead of silently read.

mod embedding;
mod image;
pub mod lake;
mod media;
mod object_ref;
mod sample;

pub use embedding::{embedding_array, EmbeddingMetadata, EmbeddingType, Metric};
pub use image::{DecodedImageType, EncodedImageType, ImageMetadata};
pub use media::{audio_ref_fields, frame_schema, video_ref_fields, AudioRefType, VideoRefType};
pub use object_ref::{ObjectRef, ObjectRefArray, ObjectRefBuilder, ObjectRefType};
pub use sample::{assert_sample_batch, sample_batch};

/// The canonical fixed-shape tensor extension type, re-exported.
pub use arrow_schema::extension::FixedShapeTensor;

use arrow::datatypes::{DataType, Field};

/// The bytes of data `batch` holds: the sizes of its columns' slices. Unlike
/// `RecordBatch::get_array_memory_size` (the capacity of every buffer a column points into), a
/// batch read from Arrow IPC, whose columns all slice one message buffer, is not counted once per
/// column; use this to size files, pages and checkpoints by data.
pub fn data_bytes(batch: &arrow::record_batch::RecordBatch) -> u64 {
    use arrow::array::Array;
    batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()) as u64).sum()
}

/// A field holding fixed-shape tensors (the canonical `arrow.fixed_shape_tensor`), e.g. shape
/// `[224, 224, 3]` of `UInt8` for images, `[n_mels, frames]` of `Float32` for audio features.
/// Dimensions are named `dim0`, `dim1`, … unless `dim_names` is given.
pub fn tensor_field(name: &str, value_type: DataType, shape: &[usize], nullable: bool) -> crate::Result<Field> {
    tensor_field_named(name, value_type, shape, None, nullable)
}

/// As [`tensor_field`], with dimension names (`["height", "width", "channels"]`).
pub fn tensor_field_named(
    name: &str,
    value_type: DataType,
    shape: &[usize],
    dim_names: Option<Vec<String>>,
    nullable: bool,
) -> crate::Result<Field> {
    // arrow-schema 58 writes absent names and permutations as JSON `null` but cannot read `null`
    // back, so both are always given (the identity permutation is the default order).
    let names = dim_names.unwrap_or_else(|| (0..shape.len()).map(|i| format!("dim{i}")).collect());
    let permutation = (0..shape.len()).collect();
    let ext = arrow_schema::extension::FixedShapeTensor::try_new(
        value_type.clone(),
        shape.iter().copied(),
        Some(names),
        Some(permutation),
    )?;
    let size: usize = shape.iter().product();
    let dt = DataType::FixedSizeList(std::sync::Arc::new(Field::new("item", value_type, false)), size as i32);
    Ok(Field::new(name, dt, nullable).with_extension_type(ext))
}

/// Implements `ExtensionType` (without metadata) for a struct layout given by `$fields()`.
macro_rules! struct_extension {
    ($ty:ident, $name:literal, $fields:path) => {
        impl arrow_schema::extension::ExtensionType for $ty {
            const NAME: &'static str = $name;
            type Metadata = ();
            fn metadata(&self) -> &Self::Metadata {
                &()
            }
            fn serialize_metadata(&self) -> Option<String> {
                None
            }
            fn deserialize_metadata(_metadata: Option<&str>) -> Result<(), arrow::error::ArrowError> {
                Ok(())
            }
            fn supports_data_type(&self, data_type: &arrow::datatypes::DataType) -> Result<(), arrow::error::ArrowError> {
                $crate::types::check_struct(Self::NAME, data_type, &$fields())
            }
            fn try_new(data_type: &arrow::datatypes::DataType, _metadata: ()) -> Result<Self, arrow::error::ArrowError> {
                let t = $ty;
                arrow_schema::extension::ExtensionType::supports_data_type(&t, data_type)?;
                Ok(t)
            }
        }
    };
}
pub(crate) use struct_extension;

/// Extension metadata as JSON.
pub(crate) fn json_metadata<T: serde::Serialize>(metadata: &T) -> Option<String> {
    Some(serde_json::to_string(metadata).expect("serializable"))
}

/// Parses JSON extension metadata of extension `name`; `expected` describes it for the error.
pub(crate) fn parse_json_metadata<T: serde::de::DeserializeOwned>(
    name: &str,
    metadata: Option<&str>,
    expected: &str,
) -> Result<T, arrow::error::ArrowError> {
    let m =
        metadata.ok_or_else(|| arrow::error::ArrowError::InvalidArgumentError(format!("{name} needs metadata {expected}")))?;
    serde_json::from_str(m).map_err(|e| arrow::error::ArrowError::InvalidArgumentError(format!("{name} metadata `{m}`: {e}")))
}

/// Checks that `data_type` is a struct with exactly `fields` (names, types and nullability).
pub(crate) fn check_struct(
    name: &str,
    data_type: &DataType,
    fields: &arrow::datatypes::Fields,
) -> Result<(), arrow::error::ArrowError> {
    match data_type {
        DataType::Struct(actual) if same_fields(actual, fields) => Ok(()),
        other => Err(arrow::error::ArrowError::InvalidArgumentError(format!(
            "{name} expects {}, found {other}",
            DataType::Struct(fields.clone())
        ))),
    }
}

fn same_fields(a: &arrow::datatypes::Fields, b: &arrow::datatypes::Fields) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type() && x.is_nullable() == y.is_nullable())
}

#[cfg(test)]
mod tests;
