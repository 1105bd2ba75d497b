//! Format stages on real media generated at test time.

#[cfg(feature = "video")]
mod audio;
#[cfg(feature = "video")]
mod hostile;
mod images;
#[cfg(feature = "video")]
mod video;

/// A batch of `file://` references to `paths` (`ref`) and a `label` column (the path).
#[cfg(feature = "video")]
fn refs(paths: &[&std::path::Path]) -> alluvium_core::arrow::array::RecordBatch {
    use alluvium_core::arrow::array::{RecordBatch, StringArray, StructArray};
    use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
    use alluvium_core::types::{ObjectRef, ObjectRefType};
    let col: StructArray = paths.iter().map(|p| ObjectRef::new(format!("file://{}", p.display()))).collect();
    let label = StringArray::from_iter_values(paths.iter().map(|p| p.display().to_string()));
    let schema = Schema::new(vec![ObjectRefType::field("ref", false), Field::new("label", DataType::Utf8, false)]);
    RecordBatch::try_new(std::sync::Arc::new(schema), vec![std::sync::Arc::new(col), std::sync::Arc::new(label)]).unwrap()
}

/// Every output `op` emits for `batch` through `process_into`, in order (as the runtime sends
/// them on).
fn pieces(op: &mut impl alluvium_core::Operator, batch: alluvium_core::arrow::array::RecordBatch) -> Vec<alluvium_core::Output> {
    let mut out = Vec::new();
    op.process_into(batch, &mut |o| {
        out.push(o);
        Ok(())
    })
    .expect("process_into");
    out
}
