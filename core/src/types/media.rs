//! Video and audio references with probed metadata, and the schema of extracted frames.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

use super::{struct_extension, EncodedImageType, ObjectRefType};

/// The struct fields of [`VideoRefType`].
pub fn video_ref_fields() -> Fields {
    Fields::from(vec![
        ObjectRefType::field("ref", false),
        Field::new("duration_ms", DataType::Int64, true),
        Field::new("fps", DataType::Float64, true),
        Field::new("codec", DataType::Utf8, true),
        Field::new("width", DataType::UInt32, true),
        Field::new("height", DataType::UInt32, true),
        Field::new("rotation", DataType::Int32, true),
    ])
}

/// The struct fields of [`AudioRefType`].
pub fn audio_ref_fields() -> Fields {
    Fields::from(vec![
        ObjectRefType::field("ref", false),
        Field::new("duration_ms", DataType::Int64, true),
        Field::new("sample_rate", DataType::UInt32, true),
        Field::new("channels", DataType::UInt16, true),
        Field::new("codec", DataType::Utf8, true),
    ])
}

/// The `alluvium.video` extension type: a video's ObjectRef plus what probing found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VideoRefType;

impl VideoRefType {
    /// A field of video references named `name`.
    pub fn field(name: &str, nullable: bool) -> Field {
        Field::new(name, DataType::Struct(video_ref_fields()), nullable).with_extension_type(VideoRefType)
    }
}

struct_extension!(VideoRefType, "alluvium.video", video_ref_fields);

/// The `alluvium.audio` extension type: an audio object's ObjectRef plus what probing found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AudioRefType;

impl AudioRefType {
    /// A field of audio references named `name`.
    pub fn field(name: &str, nullable: bool) -> Field {
        Field::new(name, DataType::Struct(audio_ref_fields()), nullable).with_extension_type(AudioRefType)
    }
}

struct_extension!(AudioRefType, "alluvium.audio", audio_ref_fields);

/// The schema of frame rows, as frame extraction emits them: the source video, the frame's index
/// and presentation time, whether it is a keyframe, and the (encoded) frame.
pub fn frame_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ObjectRefType::field("source", false),
        Field::new("frame_index", DataType::UInt64, false),
        Field::new("pts_ms", DataType::Int64, false),
        Field::new("keyframe", DataType::Boolean, false),
        EncodedImageType::field("image", false),
    ]))
}
