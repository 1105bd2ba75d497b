//! Chunking by tokens, with overlap, against the model's own tokenizer.

use std::sync::Arc;

use alluvium_core::arrow::array::{Array, ArrayRef, BinaryArray, Int32Array, StringArray};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::Operator;
use alluvium_models::{ChunkText, TextTokenizer};

fn tokenizer() -> TextTokenizer {
    TextTokenizer::load(std::path::Path::new(&crate::minilm()), 512).unwrap()
}

#[test]
fn long_texts_become_overlapping_chunks_of_the_original_text() {
    let t = tokenizer();
    assert_eq!(t.max_tokens(), 256, "sentence_bert_config.json's max_seq_length");
    let long: String = (0..300).map(|i| format!("Sentence number {i} tells of the River Ouse. ")).collect();
    let docs: ArrayRef = Arc::new(BinaryArray::from_iter(vec![
        Some(long.as_bytes()),
        Some("Short note.".as_bytes()),
        None,
        Some("   ".as_bytes()),
        Some(&[0xff, 0xfe, 0x00][..]),
    ]));
    let ids: ArrayRef = Arc::new(Int32Array::from(vec![10, 11, 12, 13, 14]));
    let schema = Schema::new(vec![Field::new("id", DataType::Int32, false), Field::new("bytes", DataType::Binary, true)]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![ids, docs]).unwrap();
    let mut op = ChunkText::new(t.clone()).column("bytes").tokens(100, 20);
    op.validate().unwrap();
    let out = op.process(batch).unwrap();

    // Bad rows are dead letters with reasons.
    let reasons: Vec<(usize, &str)> = out.failures.iter().map(|f| (f.row, f.message.as_str())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].1.contains("null") && reasons[1].1.contains("empty") && reasons[2].1.contains("not UTF-8"), "{reasons:?}");

    let b = out.batch;
    assert!(b.column_by_name("bytes").is_none(), "the input column is replaced");
    let text = b.column_by_name("text").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    let index = b.column_by_name("chunk_index").unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
    let id = b.column_by_name("id").unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
    let spans = t.token_spans(&long).unwrap();
    let chunks: Vec<&str> = (0..b.num_rows()).filter(|&r| id.value(r) == 10).map(|r| text.value(r)).collect();
    // 100 tokens, then every 80: ceil((n - 100) / 80) + 1 chunks.
    let expect = (spans.len() - 100).div_ceil(80) + 1;
    assert_eq!(chunks.len(), expect, "{} tokens", spans.len());
    assert_eq!(index.values()[..chunks.len()].to_vec(), (0..chunks.len() as i32).collect::<Vec<_>>());
    for (k, c) in chunks.iter().enumerate() {
        let n = t.token_spans(c).unwrap().len();
        assert!(n <= 100, "chunk {k} has {n} tokens");
        // Each chunk is the exact original text of its tokens.
        let first = spans[k * 80].0;
        assert_eq!(&long[first..first + c.len()], *c);
    }
    assert!(long.trim_end().ends_with(chunks.last().unwrap()));
    // The short note is one chunk.
    let short: Vec<&str> = (0..b.num_rows()).filter(|&r| id.value(r) == 11).map(|r| text.value(r)).collect();
    assert_eq!(short, ["Short note."]);

    let err = ChunkText::new(t).tokens(10, 10).validate().unwrap_err().to_string();
    assert!(err.contains("`overlap` (10) must be less than `max_tokens` (10)"), "{err}");
}

/// Overlap close to `max_tokens` repeats the text many times: a document over
/// `max_outputs_per_input` chunks or `max_output_bytes_per_input` bytes of chunks is a dead letter
/// naming the key, and the documents beside it go on.
#[test]
fn a_document_over_the_fan_out_limits_is_a_dead_letter_naming_the_key() {
    let t = tokenizer();
    let long: String = (0..300).map(|i| format!("Sentence number {i} tells of the River Ouse. ")).collect();
    let docs: ArrayRef = Arc::new(StringArray::from(vec!["Short note.", long.as_str(), "Another short note."]));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)])), vec![docs]).unwrap();

    // 100 tokens a chunk, each 1 new: about as many chunks as tokens, each ~100 tokens of text.
    let op = || ChunkText::new(t.clone()).tokens(100, 99);
    let out = op().max_outputs_per_input(500).process(batch.clone()).unwrap();
    assert_eq!(out.batch.num_rows(), 2, "the short notes go on");
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].row, 1);
    let m = &out.failures[0].message;
    assert!(m.starts_with("chunk_text: the text makes ") && m.contains("over max_outputs_per_input = 500"), "{m}");

    let out = op().max_output_bytes_per_input(1 << 20).process(batch.clone()).unwrap();
    assert_eq!((out.batch.num_rows(), out.failures.len()), (2, 1));
    let m = &out.failures[0].message;
    assert!(m.contains("over max_output_bytes_per_input = 1048576"), "{m}");

    // Within the defaults, the long document goes on in full.
    let out = op().process(batch).unwrap();
    assert!(out.failures.is_empty());
    assert!(out.batch.num_rows() > 1000, "{}", out.batch.num_rows());
    let err = ChunkText::new(t).max_outputs_per_input(0).validate().unwrap_err().to_string();
    assert!(err.contains("`max_outputs_per_input`"), "{err}");
}
