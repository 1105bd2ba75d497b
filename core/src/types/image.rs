//! Images: encoded (bytes as stored) and decoded (HWC pixels).

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray, StructArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::error::ArrowError;
use arrow_schema::extension::ExtensionType;
use serde::{Deserialize, Serialize};

use super::struct_extension;
use crate::error::Result;

/// The `alluvium.image` extension type: an encoded image (JPEG, PNG, …) with its format and size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodedImageType;

impl EncodedImageType {
    /// The struct fields of the physical layout.
    pub fn fields() -> Fields {
        Fields::from(vec![
            Field::new("data", DataType::Binary, false),
            Field::new("format", DataType::Utf8, false),
            Field::new("width", DataType::UInt32, true),
            Field::new("height", DataType::UInt32, true),
        ])
    }
    /// A field of encoded images named `name`.
    pub fn field(name: &str, nullable: bool) -> Field {
        Field::new(name, DataType::Struct(Self::fields()), nullable).with_extension_type(EncodedImageType)
    }
    /// A column from its parts (all of the same length).
    pub fn array(data: BinaryArray, format: StringArray, width: UInt32Array, height: UInt32Array) -> Result<StructArray> {
        let cols: Vec<ArrayRef> = vec![Arc::new(data), Arc::new(format), Arc::new(width), Arc::new(height)];
        Ok(StructArray::try_new(Self::fields(), cols, None)?)
    }
}

struct_extension!(EncodedImageType, "alluvium.image", EncodedImageType::fields);

/// Metadata of decoded images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// Channels per pixel: 1 (gray), 3 (RGB) or 4 (RGBA).
    pub channels: u8,
}

/// The `alluvium.image.decoded` extension type: pixels in HWC order, one `u8` per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedImageType {
    metadata: ImageMetadata,
}

impl DecodedImageType {
    /// Decoded images with `channels` channels (1, 3 or 4).
    pub fn new(channels: u8) -> Result<Self> {
        Ok(Self::try_new(&DataType::Struct(Self::fields()), ImageMetadata { channels })?)
    }
    /// Channels per pixel.
    pub fn channels(&self) -> u8 {
        self.metadata.channels
    }
    /// The struct fields of the physical layout.
    pub fn fields() -> Fields {
        Fields::from(vec![
            Field::new("pixels", DataType::Binary, false),
            Field::new("width", DataType::UInt32, false),
            Field::new("height", DataType::UInt32, false),
        ])
    }
    /// A field of decoded images named `name`.
    pub fn field(&self, name: &str, nullable: bool) -> Field {
        Field::new(name, DataType::Struct(Self::fields()), nullable).with_extension_type(*self)
    }
    /// The pixels, widths and heights of the decoded image column `name` of `batch`; a config
    /// error naming `stage` when there is no such column.
    pub fn columns<'a>(
        batch: &'a arrow::record_batch::RecordBatch,
        name: &str,
        stage: &str,
    ) -> Result<(&'a BinaryArray, &'a UInt32Array, &'a UInt32Array)> {
        let fail = || {
            crate::Error::config(format!(
                "{stage}: the input has no decoded image column `{name}` (from decode_image); set `column`"
            ))
        };
        let s = batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StructArray>()).ok_or_else(fail)?;
        let get = |n: &str| s.column_by_name(n).ok_or_else(fail);
        let px = get("pixels")?.as_any().downcast_ref::<BinaryArray>().ok_or_else(fail)?;
        let w = get("width")?.as_any().downcast_ref::<UInt32Array>().ok_or_else(fail)?;
        let h = get("height")?.as_any().downcast_ref::<UInt32Array>().ok_or_else(fail)?;
        Ok((px, w, h))
    }
}

impl ExtensionType for DecodedImageType {
    const NAME: &'static str = "alluvium.image.decoded";
    type Metadata = ImageMetadata;
    fn metadata(&self) -> &ImageMetadata {
        &self.metadata
    }
    fn serialize_metadata(&self) -> Option<String> {
        super::json_metadata(&self.metadata)
    }
    fn deserialize_metadata(metadata: Option<&str>) -> Result<ImageMetadata, ArrowError> {
        super::parse_json_metadata(Self::NAME, metadata, "{\"channels\": n}")
    }
    fn supports_data_type(&self, data_type: &DataType) -> Result<(), ArrowError> {
        super::check_struct(Self::NAME, data_type, &Self::fields())
    }
    fn try_new(data_type: &DataType, metadata: ImageMetadata) -> Result<Self, ArrowError> {
        if ![1, 3, 4].contains(&metadata.channels) {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{}: {} channels is not supported; use 1 (gray), 3 (RGB) or 4 (RGBA)",
                Self::NAME,
                metadata.channels
            )));
        }
        let t = Self { metadata };
        t.supports_data_type(data_type)?;
        Ok(t)
    }
}
