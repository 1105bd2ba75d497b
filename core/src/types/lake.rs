//! Mapping multimodal columns into lake-table schemas.
//!
//! Lance stores any Arrow type, so batches go in unchanged: embeddings stay `FixedSizeList<Float32, D>`
//! (what its vector indexes need) and extension metadata is kept. Iceberg and Delta have a smaller
//! type system, so [`LakeTypes::Widened`] maps what they lack:
//!
//! | Arrow | Iceberg / Delta |
//! |---|---|
//! | `UInt8`, `UInt16` | `Int32` |
//! | `UInt32`, `UInt64` | `Int64` (a `UInt64` above `i64::MAX` is an error, not a silent null) |
//! | `FixedSizeList<T, D>` (embeddings, tensors) | `List<T>` |
//! | `LargeUtf8`, `LargeBinary`, views | `Utf8`, `Binary` |
//! | structs (ObjectRef, images, video) | structs of the mapped fields |
//!
//! A mapped field whose type changed loses its `ARROW:extension:*` keys (an `arrow.fixed_shape_tensor`
//! that is no longer fixed-size would be invalid) and keeps the name under `alluvium.extension` so
//! the original type stays documented in the table's schema.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};

use crate::error::{Error, Result};

const EXTENSION_NAME: &str = "ARROW:extension:name";
const EXTENSION_METADATA: &str = "ARROW:extension:metadata";
/// The field-metadata key that keeps an extension type's name after mapping.
pub const ORIGINAL_EXTENSION: &str = "alluvium.extension";

/// Which Arrow types a table format stores as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LakeTypes {
    /// Every Arrow type (Lance).
    All,
    /// Signed integers, variable-size lists and plain strings/binaries only (Iceberg, Delta).
    Widened,
}

fn map_type(t: &DataType) -> DataType {
    match t {
        DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::FixedSizeList(item, _) | DataType::LargeList(item) | DataType::ListView(item) => {
            DataType::List(Arc::new(map_field(item)))
        }
        DataType::List(item) => DataType::List(Arc::new(map_field(item))),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(|f| Arc::new(map_field(f))).collect::<Fields>()),
        other => other.clone(),
    }
}

fn map_field(f: &Field) -> Field {
    let mapped = map_type(f.data_type());
    if &mapped == f.data_type() {
        return f.clone();
    }
    let mut md: HashMap<String, String> = f.metadata().clone();
    if let Some(name) = md.remove(EXTENSION_NAME) {
        md.remove(EXTENSION_METADATA);
        md.insert(ORIGINAL_EXTENSION.to_string(), name);
    }
    Field::new(f.name(), mapped, f.is_nullable()).with_metadata(md)
}

/// The schema a table of `types` stores for batches of `schema`.
pub fn lake_schema(schema: &Schema, types: LakeTypes) -> SchemaRef {
    match types {
        LakeTypes::All => Arc::new(schema.clone()),
        LakeTypes::Widened => {
            let fields: Vec<FieldRef> = schema.fields().iter().map(|f| Arc::new(map_field(f))).collect();
            Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
        }
    }
}

/// The schema a pipeline reads from a table whose schema is `schema`: a struct column with the
/// fields of an ObjectRef (what [`lake_schema`] stores for one) is an ObjectRef again, so that a
/// pipeline fed by another's table can fetch what it references. Read batches are cast to it with
/// [`to_lake`].
pub fn from_lake_schema(schema: &Schema) -> SchemaRef {
    let object_ref = crate::types::ObjectRefType::fields();
    let names = |fields: &Fields| fields.iter().map(|f| f.name().clone()).collect::<Vec<_>>();
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Struct(children) if names(children) == names(&object_ref) => {
                Arc::new(crate::types::ObjectRefType::field(f.name(), f.is_nullable()))
            }
            _ => f.clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Casts `batch` to `target` (a schema from [`lake_schema`] or the table's own, matched by column
/// name). A column the table has and the batch lacks must be nullable and is filled with nulls.
pub fn to_lake(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let strict = CastOptions { safe: false, ..Default::default() };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(c) if c.data_type() == field.data_type() => c.clone(),
            Some(c) => cast_with_options(c, field.data_type(), &strict).map_err(|e| {
                Error::data(format!(
                    "column `{}` ({}) cannot be stored as {} in the table: {e}",
                    field.name(),
                    c.data_type(),
                    field.data_type()
                ))
            })?,
            None if field.is_nullable() => arrow::array::new_null_array(field.data_type(), batch.num_rows()),
            None => {
                return Err(Error::config(format!(
                    "the table has a required column `{}` that the pipeline does not produce; add it to the \
                     pipeline or make it nullable in the table",
                    field.name()
                )))
            }
        };
        columns.push(retag(column, field.data_type())?);
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(target.clone(), columns, &options)
        .map_err(|e| Error::data(format!("batch does not fit the table's schema: {e}")))
}

/// Gives `array` exactly the type `target` when they differ only in nested field names, nullability
/// flags or metadata (a cast keeps its own names for list items, `item` where a table says
/// `element`).
fn retag(array: ArrayRef, target: &DataType) -> Result<ArrayRef> {
    use arrow::array::{Array, AsArray, FixedSizeListArray, ListArray, StructArray};
    if array.data_type() == target {
        return Ok(array);
    }
    let mismatch = || Error::data(format!("a column of type {} cannot be stored as {target}", array.data_type()));
    Ok(match target {
        DataType::List(item) => {
            let list = array.as_list_opt::<i32>().ok_or_else(mismatch)?;
            let values = retag(list.values().clone(), item.data_type())?;
            Arc::new(ListArray::try_new(item.clone(), list.offsets().clone(), values, list.nulls().cloned())?)
        }
        DataType::FixedSizeList(item, n) => {
            let list = array.as_fixed_size_list_opt().ok_or_else(mismatch)?;
            let values = retag(list.values().clone(), item.data_type())?;
            Arc::new(FixedSizeListArray::try_new(item.clone(), *n, values, list.nulls().cloned())?)
        }
        DataType::Struct(fields) => {
            let s = array.as_struct_opt().ok_or_else(mismatch)?;
            let children =
                fields.iter().zip(s.columns()).map(|(f, c)| retag(c.clone(), f.data_type())).collect::<Result<Vec<_>>>()?;
            Arc::new(StructArray::try_new(fields.clone(), children, s.nulls().cloned())?)
        }
        _ => array,
    })
}

/// How the columns of an incoming schema relate to a table's.
#[derive(Debug, Default, PartialEq)]
pub struct SchemaDiff {
    /// Columns the table lacks; they can be added when nullable.
    pub added: Vec<FieldRef>,
}

/// Compares `incoming` (already mapped with [`lake_schema`]) with the `table`'s schema by name.
///
/// Compatible: the same columns, or new nullable ones (returned in [`SchemaDiff::added`]), with types
/// the table can take ([`can_store`]). Anything else is an error that names the column.
pub fn diff_schema(table: &Schema, incoming: &Schema, what: &str) -> Result<SchemaDiff> {
    let mut diff = SchemaDiff::default();
    for f in incoming.fields() {
        match table.field_with_name(f.name()) {
            Ok(t) => {
                if !can_store(t.data_type(), f.data_type()) {
                    return Err(Error::config(format!(
                        "{what} has column `{}` of type {}, but the pipeline writes {}: an incompatible change; \
                         write to a new table or cast the column in the pipeline",
                        f.name(),
                        t.data_type(),
                        f.data_type()
                    )));
                }
            }
            Err(_) if f.is_nullable() => diff.added.push(f.clone()),
            Err(_) => {
                return Err(Error::config(format!(
                    "the pipeline writes a new column `{}` that {what} lacks; only nullable columns can be added \
                     to an existing table: make it nullable or write to a new table",
                    f.name()
                )))
            }
        }
    }
    Ok(diff)
}

/// Whether a table column of type `table` can store values of type `incoming` (equal up to
/// nullability and field metadata, or a lossless widening of integers).
pub fn can_store(table: &DataType, incoming: &DataType) -> bool {
    use DataType::*;
    match (table, incoming) {
        (a, b) if a == b => true,
        (Int64, Int32 | Int16 | Int8 | UInt32 | UInt16 | UInt8) | (Int32, Int16 | Int8 | UInt16 | UInt8) => true,
        (Float64, Float32) => true,
        (List(a), List(b) | LargeList(b) | FixedSizeList(b, _)) => can_store(a.data_type(), b.data_type()),
        (FixedSizeList(a, n), FixedSizeList(b, m)) => n == m && can_store(a.data_type(), b.data_type()),
        (Struct(a), Struct(b)) => {
            b.iter().all(|f| a.iter().find(|t| t.name() == f.name()).is_some_and(|t| can_store(t.data_type(), f.data_type())))
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (Timestamp(u1, _), Timestamp(u2, _)) => u1 == u2,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::sample_batch;

    #[test]
    fn widened_schema_has_only_lake_types_and_casts() {
        let batch = sample_batch();
        let schema = lake_schema(&batch.schema(), LakeTypes::Widened);
        let emb = schema.field_with_name("embedding").unwrap();
        assert!(matches!(emb.data_type(), DataType::List(i) if i.data_type() == &DataType::Float32));
        assert_eq!(emb.metadata().get(ORIGINAL_EXTENSION).map(String::as_str), Some("alluvium.embedding"));
        assert!(!emb.metadata().contains_key(EXTENSION_NAME));
        let DataType::Struct(r) = schema.field_with_name("ref").unwrap().data_type() else { panic!() };
        assert_eq!(r.find("size").unwrap().1.data_type(), &DataType::Int64);
        let out = to_lake(&batch, &schema).unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(out.schema(), schema);
        // Same schema in, nothing to add; the original (unmapped) batch fits the mapped table too.
        assert_eq!(diff_schema(&schema, &schema, "t").unwrap(), SchemaDiff::default());
        assert_eq!(lake_schema(&batch.schema(), LakeTypes::All), batch.schema());
        // Read back, the ObjectRef column is an ObjectRef again.
        let read = from_lake_schema(&schema);
        let back = to_lake(&out, &read).unwrap();
        let refs = crate::types::ObjectRefArray::try_new(back.column_by_name("ref").unwrap()).unwrap();
        let original = crate::types::ObjectRefArray::try_new(batch.column_by_name("ref").unwrap()).unwrap();
        assert_eq!(refs.get(1), original.get(1));
        assert_eq!(read.field_with_name("ref").unwrap().extension_type_name(), Some("alluvium.object_ref"));
        assert_eq!(read.field_with_name("embedding").unwrap(), schema.field_with_name("embedding").unwrap());
    }

    #[test]
    fn diff_finds_added_and_rejects_incompatible() {
        let table = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        let more = Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("note", DataType::Utf8, true)]);
        assert_eq!(diff_schema(&table, &more, "t").unwrap().added.len(), 1);
        let required = Schema::new(vec![Field::new("x", DataType::Int64, false)]);
        let e = diff_schema(&table, &required, "table `t`").unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("nullable"), "{e}");
        let changed = Schema::new(vec![Field::new("id", DataType::Utf8, false)]);
        let e = diff_schema(&table, &changed, "table `t`").unwrap_err().to_string();
        assert!(e.contains("`id`") && e.contains("incompatible"), "{e}");
        // A missing required column is a config error at write time.
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("note", DataType::Utf8, true)])),
            vec![Arc::new(arrow::array::StringArray::from(vec!["a"]))],
        )
        .unwrap();
        assert!(to_lake(&batch, &Arc::new(table)).is_err());
    }

    #[test]
    fn overflowing_unsigned_is_an_error_not_a_null() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)])),
            vec![Arc::new(arrow::array::UInt64Array::from(vec![u64::MAX]))],
        )
        .unwrap();
        let schema = lake_schema(&batch.schema(), LakeTypes::Widened);
        let e = to_lake(&batch, &schema).unwrap_err().to_string();
        assert!(e.contains("`n`"), "{e}");
    }
}
