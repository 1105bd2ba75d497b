//! Text for models: a model's tokenizer ([`TextTokenizer`]), and [`ChunkText`], the stage that cuts
//! long documents into overlapping chunks counted in that tokenizer's tokens, so that each chunk
//! fits the model that embeds it.
//!
//! ```text
//!  ref │ bytes (a 40 KB article)          ref │ chunk_index │ text
//!  ────┼─────────────────────     ──▶     ────┼─────────────┼──────────────────────────
//!  a   │ "It was the best of…"            a   │ 0           │ "It was the best of …"   tokens 0..128
//!                                         a   │ 1           │ "… of times, it was …"   tokens 112..240
//! ```
//!
//! A chunk is the exact span of the original text from its first token to its last (the tokenizer's
//! offsets), so nothing is lowercased or rewritten. Rows whose text is null, empty, or (from a binary
//! column) not UTF-8 become dead letters with the reason.
//!
//! **Bounded fan-out.** Overlapping chunks repeat text: with `overlap` close to `max_tokens` one
//! document becomes many times its size. A document with more than `max_outputs_per_input` chunks
//! (100,000) or more than `max_output_bytes_per_input` bytes of chunks (1 GiB) is a dead letter
//! naming the key; the chunks go out in batches of at most [`OUTPUT_BATCH_BYTES`] of text (through
//! [`Operator::process_into`]), so no Arrow array overflows however large the batch.

use std::path::Path;
use std::sync::Arc;

use alluvium_core::arrow::array::{
    Array, ArrayRef, BinaryArray, Int32Array, LargeBinaryArray, LargeStringArray, StringArray, UInt32Array,
};
use alluvium_core::arrow::compute::take_record_batch;
use alluvium_core::arrow::datatypes::{DataType, Field};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::operator::with_columns;
use alluvium_core::{Error, ErrorKind, Operator, Output, Result, RowFailure};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// A model's tokenizer (`tokenizer.json`), set up as sentence-transformers uses it: truncation at
/// the model's `max_seq_length` and padding to the longest text of a batch.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Arc<Tokenizer>,
    /// The same tokenizer without truncation or padding, for chunking.
    plain: Arc<Tokenizer>,
    max_tokens: usize,
}

#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`; the longest input is `max_seq_length` from
    /// `sentence_bert_config.json` when there is one, else `max_positions`.
    pub fn load(dir: &Path, max_positions: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let t = Tokenizer::from_file(&path).map_err(|e| Error::config(format!("cannot load {}: {e}", path.display())))?;
        let max_tokens = if dir.join("sentence_bert_config.json").is_file() {
            crate::read_json::<SentenceBertConfig>(dir, "sentence_bert_config.json")?.max_seq_length
        } else {
            max_positions
        };
        Self::new(t, max_tokens.min(max_positions), &path)
    }

    /// `t` cutting inputs at `max_tokens` (special tokens included) and padding a batch to its
    /// longest; `from` names where it came from, for errors.
    pub fn new(mut t: Tokenizer, max_tokens: usize, from: &Path) -> Result<Self> {
        let mut plain = t.clone();
        plain.with_truncation(None).map_err(|e| Error::config(format!("{}: {e}", from.display())))?;
        plain.with_padding(None);
        t.with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| Error::config(format!("{}: {e}", from.display())))?;
        t.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        Ok(Self { inner: Arc::new(t), plain: Arc::new(plain), max_tokens })
    }

    /// The longest input in tokens, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token ids and attention masks of `texts`, padded to the longest: `(ids, mask, width)`, row-major.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<(Vec<u32>, Vec<u32>, usize)> {
        let enc = self.inner.encode_batch(texts.to_vec(), true).map_err(|e| Error::data(format!("tokenizer: {e}")))?;
        let width = enc.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(width * enc.len());
        let mut mask = Vec::with_capacity(width * enc.len());
        for e in &enc {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        Ok((ids, mask, width))
    }

    /// The tokens of `texts` as the model sees them (special tokens in, padding out, cut at
    /// [`Self::max_tokens`]).
    pub fn count_tokens(&self, texts: &[&str]) -> Result<usize> {
        let (_, mask, _) = self.encode_batch(texts)?;
        Ok(mask.iter().map(|&m| m as usize).sum())
    }

    /// The byte spans of `text`'s tokens, without special tokens and without truncation.
    pub fn token_spans(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        let enc = self.plain.encode(text, false).map_err(|e| Error::data(format!("tokenizer: {e}")))?;
        Ok(enc.get_offsets().to_vec())
    }
}

/// `max_outputs_per_input` by default: chunks per document.
pub const MAX_OUTPUTS_PER_INPUT: u64 = 100_000;
/// `max_output_bytes_per_input` by default: bytes of chunks per document.
pub const MAX_OUTPUT_BYTES_PER_INPUT: u64 = 1 << 30;
/// Bytes of chunk text per output batch at most (a document over it goes out alone).
pub const OUTPUT_BATCH_BYTES: usize = 256 << 20;

/// Cuts texts into chunks of at most `max_tokens` tokens, each overlapping the one before by
/// `overlap` tokens. See the module docs.
#[derive(Clone)]
pub struct ChunkText {
    tokenizer: TextTokenizer,
    column: String,
    output: String,
    max_tokens: usize,
    overlap: usize,
    max_outputs: u64,
    max_bytes: u64,
}

impl ChunkText {
    /// Chunks column `text` into 128-token chunks overlapping by 16, counted by `tokenizer`.
    pub fn new(tokenizer: TextTokenizer) -> Self {
        Self {
            tokenizer,
            column: "text".into(),
            output: "text".into(),
            max_tokens: 128,
            overlap: 16,
            max_outputs: MAX_OUTPUTS_PER_INPUT,
            max_bytes: MAX_OUTPUT_BYTES_PER_INPUT,
        }
    }
    /// A document with more chunks is a dead letter ([`MAX_OUTPUTS_PER_INPUT`]).
    pub fn max_outputs_per_input(mut self, n: u64) -> Self {
        self.max_outputs = n;
        self
    }
    /// A document whose chunks come to more bytes is a dead letter ([`MAX_OUTPUT_BYTES_PER_INPUT`]).
    pub fn max_output_bytes_per_input(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }
    /// The input column: Utf8, or Binary holding UTF-8 (what `fetch` gives).
    pub fn column(mut self, column: impl Into<String>) -> Self {
        self.column = column.into();
        self
    }
    /// The chunk column (`text`); the input column is dropped.
    pub fn output(mut self, output: impl Into<String>) -> Self {
        self.output = output.into();
        self
    }
    /// Tokens per chunk at most (128), and tokens shared with the previous chunk (16).
    pub fn tokens(mut self, max_tokens: usize, overlap: usize) -> Self {
        self.max_tokens = max_tokens;
        self.overlap = overlap;
        self
    }
    /// Checks the settings; errors name the key and the fix.
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(Error::config("chunk_text: `max_tokens` must be at least 1"));
        }
        if self.overlap >= self.max_tokens {
            return Err(Error::config(format!(
                "chunk_text: `overlap` ({}) must be less than `max_tokens` ({})",
                self.overlap, self.max_tokens
            )));
        }
        if self.max_outputs == 0 || self.max_bytes == 0 {
            return Err(Error::config("chunk_text: `max_outputs_per_input` and `max_output_bytes_per_input` must be 1 or more"));
        }
        Ok(())
    }

    /// Byte ranges of the chunks of `text`.
    fn chunks(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        let spans = self.tokenizer.token_spans(text)?;
        let step = self.max_tokens - self.overlap;
        let mut out = Vec::new();
        let mut first = 0;
        while first < spans.len() {
            let last = (first + self.max_tokens).min(spans.len()) - 1;
            out.push((spans[first].0, spans[last].1));
            if last + 1 == spans.len() {
                break;
            }
            first += step;
        }
        Ok(out)
    }
}

/// The text of row `row` of a Utf8 or Binary column: `Err` (a reason) when it has none.
fn text_at(col: &dyn Array, row: usize) -> std::result::Result<&str, String> {
    if col.is_null(row) {
        return Err("the text is null".into());
    }
    let bytes = match col.data_type() {
        DataType::Utf8 => return Ok(col.as_any().downcast_ref::<StringArray>().expect("utf8").value(row)),
        DataType::LargeUtf8 => return Ok(col.as_any().downcast_ref::<LargeStringArray>().expect("utf8").value(row)),
        DataType::Binary => col.as_any().downcast_ref::<BinaryArray>().expect("binary").value(row),
        DataType::LargeBinary => col.as_any().downcast_ref::<LargeBinaryArray>().expect("binary").value(row),
        _ => unreachable!("checked in process"),
    };
    std::str::from_utf8(bytes).map_err(|e| format!("the bytes are not UTF-8 text ({e})"))
}

impl ChunkText {
    /// The chunks of row `r`, within the fan-out limits; `Err`: the dead letter's reason.
    fn row_chunks(&self, col: &dyn Array, r: usize) -> std::result::Result<Vec<String>, String> {
        let text = text_at(col, r)?;
        let ranges = self.chunks(text).map_err(|e| e.to_string())?;
        if ranges.is_empty() {
            return Err("the text is empty (no tokens)".to_string());
        }
        if ranges.len() as u64 > self.max_outputs {
            return Err(format!(
                "the text makes {} chunks, over max_outputs_per_input = {}; raise it, or `max_tokens` / lower `overlap`",
                ranges.len(),
                self.max_outputs
            ));
        }
        let bytes: u64 = ranges.iter().map(|(a, b)| (b - a) as u64).sum();
        if bytes > self.max_bytes {
            return Err(format!(
                "the text's {} chunks come to {bytes} bytes ({}× the text), over max_output_bytes_per_input = {}; \
                 lower `overlap` or raise the limit",
                ranges.len(),
                bytes / text.len().max(1) as u64,
                self.max_bytes
            ));
        }
        Ok(ranges.into_iter().map(|(a, b)| text[a..b].to_string()).collect())
    }

    /// The output batch of `batch`'s rows `rows` (repeated per chunk) with their chunks.
    fn piece(&self, batch: &RecordBatch, rows: Vec<u32>, index: Vec<i32>, texts: Vec<String>) -> Result<RecordBatch> {
        let repeated = take_record_batch(batch, &UInt32Array::from(rows))?;
        let text: ArrayRef = Arc::new(StringArray::from(texts));
        let index: ArrayRef = Arc::new(Int32Array::from(index));
        with_columns(
            &repeated,
            Some(&self.column),
            vec![
                (Field::new(&self.output, DataType::Utf8, false), text),
                (Field::new("chunk_index", DataType::Int32, false), index),
            ],
        )
    }
}

impl Operator for ChunkText {
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        let mut pieces = Vec::new();
        self.process_into(batch, &mut |out| {
            pieces.push(out);
            Ok(())
        })?;
        let failures = pieces.iter().flat_map(|p| p.failures.iter().cloned()).collect();
        let schema = pieces[0].batch.schema();
        let batch = alluvium_core::arrow::compute::concat_batches(&schema, pieces.iter().map(|p| &p.batch))?;
        Ok(Output::with_failures(batch, failures))
    }

    fn process_into(&mut self, batch: RecordBatch, emit: &mut dyn FnMut(Output) -> Result<()>) -> Result<()> {
        let col = batch.column_by_name(&self.column).ok_or_else(|| {
            Error::config(format!("chunk_text: the input has no column `{}`; set `column` (fetch gives `bytes`)", self.column))
        })?;
        if !matches!(col.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary) {
            return Err(Error::config(format!(
                "chunk_text: column `{}` is {}, not text (Utf8) or bytes (Binary)",
                self.column,
                col.data_type()
            )));
        }
        let (mut rows, mut index, mut texts, mut bytes, mut failures) = (Vec::new(), Vec::new(), Vec::new(), 0usize, Vec::new());
        for r in 0..batch.num_rows() {
            match self.row_chunks(col.as_ref(), r) {
                Ok(chunks) => {
                    let size: usize = chunks.iter().map(String::len).sum();
                    if !texts.is_empty() && bytes + size > OUTPUT_BATCH_BYTES {
                        let piece = self.piece(
                            &batch,
                            std::mem::take(&mut rows),
                            std::mem::take(&mut index),
                            std::mem::take(&mut texts),
                        )?;
                        emit(Output::new(piece))?;
                        bytes = 0;
                    }
                    bytes += size;
                    for (i, c) in chunks.into_iter().enumerate() {
                        rows.push(r as u32);
                        index.push(i as i32);
                        texts.push(c);
                    }
                }
                Err(why) => failures.push(RowFailure::new(r, ErrorKind::Data, format!("chunk_text: {why}"))),
            }
        }
        emit(Output::with_failures(self.piece(&batch, rows, index, texts)?, failures))
    }
}
