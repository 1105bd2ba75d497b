//! A batch with one column of every multimodal type, for conformance tests of sinks and formats:
//! write [`sample_batch`] through a sink or a file format, read it back, and check it with
//! [`assert_sample_batch`].

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, StringArray, StructArray, UInt32Array, UInt8Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use super::*;

/// Two rows with columns `ref` (ObjectRef), `image` (encoded), `pixels` (decoded, 3 channels),
/// `embedding` (3 dimensions), `tensor` (2×2 UInt8) and `video` (VideoRef).
pub fn sample_batch() -> RecordBatch {
    let refs: StructArray = vec![
        ObjectRef::new("s3://b/a.jpg").etag("\"e1\"").size(1234).content_type("image/jpeg"),
        ObjectRef::new("file:///data/b.mp4").range(100, 50).version("v7"),
    ]
    .into_iter()
    .collect();
    let images = EncodedImageType::array(
        BinaryArray::from(vec![&b"\xff\xd8jpeg"[..], b"\x89PNG"]),
        StringArray::from(vec!["jpeg", "png"]),
        UInt32Array::from(vec![Some(640), None]),
        UInt32Array::from(vec![Some(480), None]),
    )
    .unwrap();
    let decoded = DecodedImageType::new(3).unwrap();
    let pixels = StructArray::try_new(
        DecodedImageType::fields(),
        vec![
            Arc::new(BinaryArray::from(vec![&[1u8, 2, 3, 4, 5, 6][..], &[7, 8, 9, 10, 11, 12]])) as ArrayRef,
            Arc::new(UInt32Array::from(vec![2, 1])),
            Arc::new(UInt32Array::from(vec![1, 2])),
        ],
        None,
    )
    .unwrap();
    let emb = EmbeddingType::new("all-MiniLM-L6-v2", Metric::Cosine, 3).unwrap();
    let embeddings = embedding_array(3, vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).unwrap();
    let tensor = tensor_field("tensor", DataType::UInt8, &[2, 2], false).unwrap();
    let tensors = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::UInt8, false)),
        4,
        Arc::new(UInt8Array::from_iter_values(0..8)),
        None,
    )
    .unwrap();
    let video_ref = |uri: &str| -> StructArray { vec![ObjectRef::new(uri)].into_iter().collect() };
    let videos = StructArray::try_new(
        video_ref_fields(),
        vec![
            Arc::new(arrow::compute::concat(&[&video_ref("s3://b/v1.mp4"), &video_ref("s3://b/v2.mp4")]).unwrap()) as ArrayRef,
            Arc::new(arrow::array::Int64Array::from(vec![Some(10_000), None])),
            Arc::new(arrow::array::Float64Array::from(vec![Some(29.97), None])),
            Arc::new(StringArray::from(vec![Some("h264"), None])),
            Arc::new(UInt32Array::from(vec![Some(1920), None])),
            Arc::new(UInt32Array::from(vec![Some(1080), None])),
            Arc::new(arrow::array::Int32Array::from(vec![Some(90), None])),
        ],
        None,
    )
    .unwrap();
    let schema = Schema::new(vec![
        ObjectRefType::field("ref", false),
        EncodedImageType::field("image", false),
        decoded.field("pixels", false),
        emb.field("embedding", false),
        tensor,
        VideoRefType::field("video", false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(refs), Arc::new(images), Arc::new(pixels), Arc::new(embeddings), Arc::new(tensors), Arc::new(videos)],
    )
    .unwrap()
}

/// Checks that `batch` (after a round trip) still carries every extension type and value of
/// [`sample_batch`].
///
/// # Panics
/// When a type or a value did not survive, naming which.
pub fn assert_sample_batch(batch: &RecordBatch) {
    let schema = batch.schema();
    let f = |n: &str| schema.field_with_name(n).unwrap().clone();
    f("ref").try_extension_type::<ObjectRefType>().unwrap();
    f("image").try_extension_type::<EncodedImageType>().unwrap();
    assert_eq!(f("pixels").try_extension_type::<DecodedImageType>().unwrap().channels(), 3);
    let emb = f("embedding").try_extension_type::<EmbeddingType>().unwrap();
    assert_eq!((emb.model(), emb.metric(), emb.dimensions()), ("all-MiniLM-L6-v2", Metric::Cosine, 3));
    let t = f("tensor").try_extension_type::<FixedShapeTensor>().unwrap();
    assert_eq!(t.dimensions(), 2);
    f("video").try_extension_type::<VideoRefType>().unwrap();

    let refs = ObjectRefArray::try_new(batch.column_by_name("ref").unwrap()).unwrap();
    assert_eq!(refs.len(), 2);
    assert_eq!(refs.get(0).unwrap(), ObjectRef::new("s3://b/a.jpg").etag("\"e1\"").size(1234).content_type("image/jpeg"));
    assert_eq!(refs.get(1).unwrap(), ObjectRef::new("file:///data/b.mp4").range(100, 50).version("v7"));
    let e = batch.column_by_name("embedding").unwrap().as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    let v = e.value(1);
    assert_eq!(v.as_any().downcast_ref::<Float32Array>().unwrap().values(), &[0.4, 0.5, 0.6]);
}
