//! [`ObjectRef`]: a reference to a (part of a) large object, not its bytes.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StringBuilder, StructArray, UInt64Array, UInt64Builder};
use arrow::datatypes::{DataType, Field, Fields};
use serde::{Deserialize, Serialize};

use super::struct_extension;
use crate::error::{Error, Result};

/// One reference. Only `uri` is required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// `s3://bucket/key`, `file:///path`, `https://host/path`, …
    pub uri: String,
    /// Start of the byte range, when the reference is to part of the object.
    pub offset: Option<u64>,
    /// Length of the byte range.
    pub length: Option<u64>,
    /// Size of the whole object, when known.
    pub size: Option<u64>,
    /// The object's ETag when the reference was made (a pin: a changed object is detected).
    pub etag: Option<String>,
    /// The object's version id when the reference was made (a pin on versioned stores).
    pub version: Option<String>,
    /// The MIME type, when known.
    pub content_type: Option<String>,
}

impl ObjectRef {
    /// A reference to the whole object at `uri`.
    pub fn new(uri: impl Into<String>) -> Self {
        Self { uri: uri.into(), ..Default::default() }
    }
    /// Selects the byte range `offset..offset + length`.
    pub fn range(mut self, offset: u64, length: u64) -> Self {
        self.offset = Some(offset);
        self.length = Some(length);
        self
    }
    /// Pins the object's ETag.
    pub fn etag(mut self, etag: impl Into<String>) -> Self {
        self.etag = Some(etag.into());
        self
    }
    /// Records the object's size.
    pub fn size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }
    /// Pins the object's version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }
    /// Records the content type.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }
}

/// The `alluvium.object_ref` extension type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectRefType;

impl ObjectRefType {
    /// The struct fields of the physical layout.
    pub fn fields() -> Fields {
        Fields::from(vec![
            Field::new("uri", DataType::Utf8, false),
            Field::new("offset", DataType::UInt64, true),
            Field::new("length", DataType::UInt64, true),
            Field::new("size", DataType::UInt64, true),
            Field::new("etag", DataType::Utf8, true),
            Field::new("version", DataType::Utf8, true),
            Field::new("content_type", DataType::Utf8, true),
        ])
    }
    /// A field of ObjectRefs named `name`.
    pub fn field(name: &str, nullable: bool) -> Field {
        Field::new(name, DataType::Struct(Self::fields()), nullable).with_extension_type(ObjectRefType)
    }
}

struct_extension!(ObjectRefType, "alluvium.object_ref", ObjectRefType::fields);

/// Builds an ObjectRef column.
#[derive(Debug, Default)]
pub struct ObjectRefBuilder {
    uri: StringBuilder,
    offset: UInt64Builder,
    length: UInt64Builder,
    size: UInt64Builder,
    etag: StringBuilder,
    version: StringBuilder,
    content_type: StringBuilder,
}

impl ObjectRefBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends one reference.
    pub fn append(&mut self, r: &ObjectRef) {
        self.uri.append_value(&r.uri);
        self.offset.append_option(r.offset);
        self.length.append_option(r.length);
        self.size.append_option(r.size);
        self.etag.append_option(r.etag.as_deref());
        self.version.append_option(r.version.as_deref());
        self.content_type.append_option(r.content_type.as_deref());
    }
    /// The column (no nulls at the struct level).
    pub fn finish(&mut self) -> StructArray {
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(self.uri.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.length.finish()),
            Arc::new(self.size.finish()),
            Arc::new(self.etag.finish()),
            Arc::new(self.version.finish()),
            Arc::new(self.content_type.finish()),
        ];
        StructArray::new(ObjectRefType::fields(), arrays, None)
    }
}

impl FromIterator<ObjectRef> for StructArray {
    fn from_iter<I: IntoIterator<Item = ObjectRef>>(iter: I) -> Self {
        let mut b = ObjectRefBuilder::new();
        iter.into_iter().for_each(|r| b.append(&r));
        b.finish()
    }
}

/// Typed read access to an ObjectRef column.
#[derive(Debug, Clone)]
pub struct ObjectRefArray {
    inner: StructArray,
    uri: StringArray,
    offset: UInt64Array,
    length: UInt64Array,
    size: UInt64Array,
    etag: StringArray,
    version: StringArray,
    content_type: StringArray,
}

fn opt<T>(a: &impl Array, i: usize, v: impl FnOnce() -> T) -> Option<T> {
    a.is_valid(i).then(v)
}

impl ObjectRefArray {
    /// Wraps a column; fails unless it has the ObjectRef layout.
    pub fn try_new(array: &ArrayRef) -> Result<Self> {
        let fail = || {
            Error::data(format!(
                "expected an ObjectRef column ({}), found {}",
                DataType::Struct(ObjectRefType::fields()),
                array.data_type()
            ))
        };
        let s = array.as_any().downcast_ref::<StructArray>().ok_or_else(fail)?;
        super::check_struct("alluvium.object_ref", s.data_type(), &ObjectRefType::fields()).map_err(|_| fail())?;
        let str_col = |i: usize| s.column(i).as_any().downcast_ref::<StringArray>().cloned().ok_or_else(fail);
        let u64_col = |i: usize| s.column(i).as_any().downcast_ref::<UInt64Array>().cloned().ok_or_else(fail);
        Ok(Self {
            inner: s.clone(),
            uri: str_col(0)?,
            offset: u64_col(1)?,
            length: u64_col(2)?,
            size: u64_col(3)?,
            etag: str_col(4)?,
            version: str_col(5)?,
            content_type: str_col(6)?,
        })
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.inner.len()
    }
    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
    /// Whether row `i` is null.
    pub fn is_null(&self, i: usize) -> bool {
        self.inner.is_null(i)
    }
    /// The URI of row `i`.
    pub fn uri(&self, i: usize) -> &str {
        self.uri.value(i)
    }
    /// Row `i`, or `None` when it is null.
    pub fn get(&self, i: usize) -> Option<ObjectRef> {
        if self.inner.is_null(i) {
            return None;
        }
        Some(ObjectRef {
            uri: self.uri.value(i).to_string(),
            offset: opt(&self.offset, i, || self.offset.value(i)),
            length: opt(&self.length, i, || self.length.value(i)),
            size: opt(&self.size, i, || self.size.value(i)),
            etag: opt(&self.etag, i, || self.etag.value(i).to_string()),
            version: opt(&self.version, i, || self.version.value(i).to_string()),
            content_type: opt(&self.content_type, i, || self.content_type.value(i).to_string()),
        })
    }
}
