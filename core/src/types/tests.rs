//! Every type: constructors, accessors, and an Arrow IPC round trip that keeps the extension
//! metadata. (The Parquet round trip is tested in `alluvium-parquet`.)

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, StructArray};
use arrow::datatypes::{DataType, Field};

use super::*;
use arrow_schema::extension::ExtensionType;

#[test]
fn every_type_survives_an_ipc_round_trip() {
    let batch = sample_batch();
    assert_sample_batch(&batch);
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
    }
    let mut r = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(buf), None).unwrap();
    let back = r.next().unwrap().unwrap();
    assert_sample_batch(&back);
    assert_eq!(back, batch);
}

#[test]
fn wrong_layouts_and_metadata_are_refused_with_the_expected_layout() {
    let e = Field::new("x", DataType::Utf8, false).try_with_extension_type(ObjectRefType).unwrap_err().to_string();
    assert!(e.contains("alluvium.object_ref") && e.contains("uri"), "{e}");
    let e = DecodedImageType::new(2).unwrap_err().to_string();
    assert!(e.contains("2 channels"), "{e}");
    let e = EmbeddingType::deserialize_metadata(Some(r#"{"model":"m","metric":"manhattan"}"#)).unwrap_err().to_string();
    assert!(e.contains("manhattan"), "{e}");
    let e = Field::new("e", EmbeddingType::data_type(4), false)
        .try_with_extension_type(EmbeddingType::new("m", Metric::L2, 3).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 dimensions"), "{e}");
    assert!(embedding_array(3, vec![1.0; 4]).is_err());
    let not_refs: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
    assert!(ObjectRefArray::try_new(&not_refs).unwrap_err().to_string().contains("ObjectRef"));
}

#[test]
fn frames_have_the_documented_schema() {
    let s = frame_schema();
    let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["source", "frame_index", "pts_ms", "keyframe", "image"]);
    s.field(0).try_extension_type::<ObjectRefType>().unwrap();
    s.field(4).try_extension_type::<EncodedImageType>().unwrap();
    AudioRefType::field("audio", true).try_extension_type::<AudioRefType>().unwrap();
}

#[test]
fn null_refs_read_back_as_none() {
    let refs: StructArray = vec![ObjectRef::new("a")].into_iter().collect();
    let with_null = StructArray::try_new(ObjectRefType::fields(), refs.columns().to_vec(), Some(vec![false].into())).unwrap();
    let arr = ObjectRefArray::try_new(&(Arc::new(with_null) as ArrayRef)).unwrap();
    assert!(arr.is_null(0));
    assert_eq!(arr.get(0), None);
}

/// A batch read back from IPC (every column slicing one message buffer) has the data size of the
/// batch written, where the buffers' capacity counts the message once per column.
#[test]
fn data_bytes_counts_each_value_once() {
    let values: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 10_000]).collect();
    let blob: ArrayRef = Arc::new(arrow::array::BinaryArray::from_iter_values(values.iter()));
    let ids: ArrayRef = Arc::new(arrow::array::Int64Array::from_iter_values(0..64));
    let batch = arrow::record_batch::RecordBatch::try_from_iter([("id", ids), ("blob", blob)]).unwrap();
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
    }
    let back = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(buf), None).unwrap().next().unwrap().unwrap();
    // Values, then offsets and ids as the slice counts them (four and eight bytes a row).
    let expected = 64 * 10_000 + 64 * 4 + 64 * 8;
    assert_eq!(data_bytes(&batch), expected);
    assert_eq!(data_bytes(&back), expected);
    assert!(back.get_array_memory_size() as u64 > 2 * expected, "the capacity counts the message per column");
}
