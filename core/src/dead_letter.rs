//! Dead letters: rows that a stage could not process, kept with the reason.
//!
//! Every dead letter is a row of [`schema`]:
//!
//! | column     | type        | meaning                                                        |
//! |------------|-------------|----------------------------------------------------------------|
//! | `pipeline` | Utf8        | the pipeline's name                                            |
//! | `stage`    | Utf8        | the stage that failed the row                                  |
//! | `kind`     | Utf8        | the error kind (`data`, `external`, …)                         |
//! | `message`  | Utf8        | what failed and why                                            |
//! | `attempts` | UInt32      | how many times the stage tried                                 |
//! | `ref`      | Utf8?       | the row's object URI, from its ObjectRef column (or `uri`)     |
//! | `row`      | Utf8        | the whole input row as JSON, so nothing is lost                |
//! | `failed_at_ms` | Int64   | when (milliseconds since the Unix epoch)                       |
//!
//! Dead letters go to the pipeline's dead-letter sink, which is written and committed under the same
//! two-phase protocol as the main sink: a dead letter is committed exactly once, with the
//! checkpoint that covers the row.

use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, Int64Array, StringArray, StringBuilder, UInt32Array, UInt64Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::operator::RowFailure;

/// The schema of dead-letter batches.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("pipeline", DataType::Utf8, false),
                Field::new("stage", DataType::Utf8, false),
                Field::new("kind", DataType::Utf8, false),
                Field::new("message", DataType::Utf8, false),
                Field::new("attempts", DataType::UInt32, false),
                Field::new("ref", DataType::Utf8, true),
                Field::new("row", DataType::Utf8, false),
                Field::new("failed_at_ms", DataType::Int64, false),
            ]))
        })
        .clone()
}

/// Builds the dead-letter batch for `failures` of `input` at `stage`.
pub fn build(pipeline: &str, stage: &str, input: &RecordBatch, failures: &[RowFailure]) -> Result<RecordBatch> {
    let n = failures.len();
    let indices = UInt64Array::from_iter_values(failures.iter().map(|f| f.row as u64));
    let rows = take_rows(input, &indices)?;
    let json = rows_as_json(&rows)?;
    let refs = uri_column(&rows);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![pipeline; n])),
        Arc::new(StringArray::from(vec![stage; n])),
        Arc::new(StringArray::from_iter_values(failures.iter().map(|f| f.kind.as_str()))),
        Arc::new(StringArray::from_iter_values(failures.iter().map(|f| crate::error::redact(&f.message)))),
        Arc::new(UInt32Array::from_iter_values(failures.iter().map(|f| f.attempts))),
        Arc::new(refs),
        Arc::new(StringArray::from(json)),
        Arc::new(Int64Array::from(vec![now; n])),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

fn take_rows(input: &RecordBatch, indices: &UInt64Array) -> Result<RecordBatch> {
    let columns = input.columns().iter().map(|c| take(c, indices, None)).collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(input.schema(), columns)?)
}

fn rows_as_json(rows: &RecordBatch) -> Result<Vec<String>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(rows)?;
        w.finish()?;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.resize(rows.num_rows(), "{}".to_string());
    Ok(lines)
}

/// The object URI of each row: from the first ObjectRef column (`alluvium.object_ref`), else a
/// `uri` column, else the `uri` field of a struct column named `ref`.
fn uri_column(rows: &RecordBatch) -> StringArray {
    let find = || -> Option<StringArray> {
        let schema = rows.schema();
        if let Some(i) = schema.fields().iter().position(|f| f.extension_type_name() == Some("alluvium.object_ref")) {
            let refs = crate::types::ObjectRefArray::try_new(rows.column(i)).ok()?;
            return Some((0..refs.len()).map(|r| refs.get(r).map(|o| o.uri)).collect());
        }
        if let Some(c) = rows.column_by_name("uri") {
            return c.as_any().downcast_ref::<StringArray>().cloned();
        }
        let r = rows.column_by_name("ref")?;
        let s = r.as_any().downcast_ref::<arrow::array::StructArray>()?;
        s.column_by_name("uri")?.as_any().downcast_ref::<StringArray>().cloned()
    };
    find().unwrap_or_else(|| {
        let mut b = StringBuilder::new();
        (0..rows.num_rows()).for_each(|_| b.append_null());
        b.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn keeps_the_failed_rows_with_their_reasons() {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![10, 11, 12]));
        let uris: ArrayRef = Arc::new(StringArray::from(vec!["s3://b/a", "s3://b/b", "s3://b/c"]));
        let input = RecordBatch::try_from_iter([("id", ids), ("uri", uris)]).unwrap();
        let failures = vec![RowFailure::new(2, ErrorKind::Data, "corrupt JPEG").attempts(3)];
        let dl = build("p", "decode", &input, &failures).unwrap();
        assert_eq!(dl.num_rows(), 1);
        let col =
            |name: &str| dl.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap().value(0).to_string();
        assert_eq!(col("stage"), "decode");
        assert_eq!(col("kind"), "data");
        assert_eq!(col("message"), "corrupt JPEG");
        assert_eq!(col("ref"), "s3://b/c");
        assert_eq!(col("row"), r#"{"id":12,"uri":"s3://b/c"}"#);
    }

    #[test]
    fn the_ref_comes_from_an_object_ref_column_whatever_its_name() {
        use crate::types::{ObjectRef, ObjectRefType};
        let refs: arrow::array::StructArray =
            vec![ObjectRef::new("s3://b/x.jpg"), ObjectRef::new("s3://b/y.jpg")].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![ObjectRefType::field("photo", false)]));
        let input = RecordBatch::try_new(schema, vec![Arc::new(refs)]).unwrap();
        let dl = build("p", "decode", &input, &[RowFailure::new(1, ErrorKind::Data, "corrupt")]).unwrap();
        let r = dl.column_by_name("ref").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(r.value(0), "s3://b/y.jpg");
    }
}
