//! `alluvium inspect JOB`: the job's sink table as it is now (read-only): version, rows, files,
//! schema, and the last commits with the idempotency keys our regions wrote with them.

use super::rfc3339_ms;
use alluvium::core::arrow::datatypes::{DataType, Field};
use alluvium::core::sink::{Sink, TableInfo};
use alluvium::Result;

/// Prints what `sink` tells of its table.
pub async fn inspect(sink: &dyn Sink) -> Result<()> {
    print!("{}", render(&sink.inspect().await?));
    Ok(())
}

fn render(t: &TableInfo) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} ({})", t.table, t.format);
    if !t.exists {
        let _ = writeln!(out, "  does not exist yet: the job creates it with its first commit");
        return out;
    }
    let some = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    let _ = writeln!(
        out,
        "  version {}, {} rows in {} data files",
        t.version.map_or("?".to_string(), |v| v.to_string()),
        some(t.rows),
        some(t.files)
    );
    if let Some(schema) = &t.schema {
        let _ = writeln!(out, "  schema");
        for f in schema.fields() {
            let _ = writeln!(out, "    {}", field_text(f));
        }
    }
    let _ = writeln!(out, "  last commits, newest first");
    let _ = writeln!(out, "    {:<20} {:<20} {:<10} {:>10}  idempotency key", "version", "time (UTC)", "operation", "rows");
    for c in &t.commits {
        let time = c.timestamp_ms.map_or("?".to_string(), rfc3339_ms);
        let key = c.key.as_ref().map_or("-".to_string(), |(k, cp)| format!("{k} @ checkpoint {cp}"));
        let _ = writeln!(out, "    {:<20} {:<20} {:<10} {:>10}  {key}", c.version, time, c.operation, some(c.rows_added));
    }
    out
}

/// `name: type` (` not null` when it is), as [`type_name`] writes the type.
fn field_text(f: &Field) -> String {
    format!("{}: {}{}", f.name(), type_name(f.data_type()), if f.is_nullable() { "" } else { " not null" })
}

/// A type as a reader would write it, without the field metadata formats attach (Iceberg's ids).
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields.iter().map(|f| field_text(f)).collect();
            format!("struct<{}>", inner.join(", "))
        }
        DataType::List(item) | DataType::LargeList(item) => format!("list<{}>", type_name(item.data_type())),
        DataType::FixedSizeList(item, n) => format!("fixed_size_list<{}, {n}>", type_name(item.data_type())),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn types_read_without_field_metadata() {
        let id =
            Field::new("uri", DataType::Utf8, false).with_metadata([("PARQUET:field_id".to_string(), "7".to_string())].into());
        let t = DataType::Struct(vec![id, Field::new("size", DataType::Int64, true)].into());
        assert_eq!(type_name(&t), "struct<uri: Utf8 not null, size: Int64>");
        let v = DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), 384);
        assert_eq!(type_name(&v), "fixed_size_list<Float32, 384>");
    }
}
