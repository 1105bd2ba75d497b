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
//! | `row`      | Utf8        | the input row as JSON (binary values as hex up to 4 KiB, texts up to 64 KiB; larger ones are replaced by their size: the object stays at `ref`) |
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
    let json = rows_as_json(&capped(&rows)?)?;
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

/// Binary values up to this size are kept (as hex) in a dead letter's `row`.
pub const MAX_BINARY_BYTES: usize = 4 << 10;
/// Texts up to this size are kept whole in a dead letter's `row`.
pub const MAX_TEXT_BYTES: usize = 64 << 10;

/// `rows` with every binary column (at any depth of structs) as text: hex up to
/// [`MAX_BINARY_BYTES`], else a note of the size; and texts over [`MAX_TEXT_BYTES`] cut. A dead
/// letter keeps the reference and the reason, not a copy of a 60 MB object as 120 MB of hex.
fn capped(rows: &RecordBatch) -> Result<RecordBatch> {
    let (fields, columns): (Vec<_>, Vec<_>) = rows
        .schema()
        .fields()
        .iter()
        .zip(rows.columns())
        .map(|(f, c)| cap_column(f, c))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

fn cap_column(field: &arrow::datatypes::FieldRef, column: &ArrayRef) -> Result<(arrow::datatypes::FieldRef, ArrayRef)> {
    use arrow::array::{AsArray, StructArray};
    let text = |values: Vec<Option<String>>| -> (arrow::datatypes::FieldRef, ArrayRef) {
        (Arc::new(Field::new(field.name(), DataType::Utf8, true)), Arc::new(StringArray::from(values)))
    };
    let binary = |v: Option<&[u8]>| {
        v.map(|b| {
            if b.len() <= MAX_BINARY_BYTES {
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            } else {
                format!("<{} bytes, not kept: over the dead-letter cap of {MAX_BINARY_BYTES} bytes>", b.len())
            }
        })
    };
    let cut = |v: Option<&str>| {
        v.map(|t| {
            if t.len() <= MAX_TEXT_BYTES {
                t.to_string()
            } else {
                let mut end = MAX_TEXT_BYTES;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…<cut: {} bytes in all>", &t[..end], t.len())
            }
        })
    };
    Ok(match column.data_type() {
        DataType::Binary => text(column.as_binary::<i32>().iter().map(binary).collect()),
        DataType::LargeBinary => text(column.as_binary::<i64>().iter().map(binary).collect()),
        DataType::BinaryView => text(column.as_binary_view().iter().map(binary).collect()),
        DataType::FixedSizeBinary(_) => text(column.as_fixed_size_binary().iter().map(binary).collect()),
        DataType::Utf8 if column.as_string::<i32>().value_data().len() > MAX_TEXT_BYTES => {
            text(column.as_string::<i32>().iter().map(cut).collect())
        }
        DataType::LargeUtf8 if column.as_string::<i64>().value_data().len() > MAX_TEXT_BYTES => {
            text(column.as_string::<i64>().iter().map(cut).collect())
        }
        DataType::Struct(_) => {
            let s = column.as_struct();
            let DataType::Struct(children) = s.data_type() else { unreachable!() };
            let (fields, columns): (Vec<_>, Vec<_>) =
                children.iter().zip(s.columns()).map(|(f, c)| cap_column(f, c)).collect::<Result<Vec<_>>>()?.into_iter().unzip();
            let capped = StructArray::try_new(fields.clone().into(), columns, s.nulls().cloned())?;
            (Arc::new(Field::new(field.name(), DataType::Struct(fields.into()), field.is_nullable())), Arc::new(capped))
        }
        _ => (field.clone(), column.clone()),
    })
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
    fn large_binary_and_text_values_are_not_copied_into_dead_letters() {
        let small: &[u8] = &[0xde, 0xad];
        let big = vec![7u8; 60 << 20];
        let bytes: ArrayRef = Arc::new(arrow::array::BinaryArray::from(vec![small, big.as_slice()]));
        let long = "é".repeat(MAX_TEXT_BYTES);
        let texts: ArrayRef = Arc::new(StringArray::from(vec!["short", long.as_str()]));
        let uris: ArrayRef = Arc::new(StringArray::from(vec!["s3://b/a", "s3://b/big"]));
        let input = RecordBatch::try_from_iter([("bytes", bytes), ("text", texts), ("uri", uris)]).unwrap();
        let failures = [RowFailure::new(0, ErrorKind::Data, "bad"), RowFailure::new(1, ErrorKind::Data, "undecodable")];
        let dl = build("p", "decode", &input, &failures).unwrap();
        let rows = dl.column_by_name("row").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        let first: serde_json::Value = serde_json::from_str(rows.value(0)).unwrap();
        assert_eq!(first["bytes"], "dead");
        assert_eq!(first["text"], "short");
        let second: serde_json::Value = serde_json::from_str(rows.value(1)).unwrap();
        assert!(second["bytes"].as_str().unwrap().contains(&format!("{} bytes, not kept", 60 << 20)), "{second}");
        assert!(second["text"].as_str().unwrap().ends_with(&format!("<cut: {} bytes in all>", long.len())));
        assert!(rows.value(1).len() < MAX_TEXT_BYTES + 1024, "{}", rows.value(1).len());
        assert_eq!(dl.column_by_name("ref").unwrap().as_any().downcast_ref::<StringArray>().unwrap().value(1), "s3://b/big");
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
