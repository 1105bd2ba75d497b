//! all-MiniLM-L6-v2 on candle against sentence-transformers' reference vectors.

use std::sync::Arc;

use alluvium_core::arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, StringArray};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_models::{Embed, EmbeddingModel, TextEmbedder};
use candle_core::Device;

struct Reference {
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm_reference.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts = v["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let vectors = v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    Reference { texts, vectors }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn embeddings_match_sentence_transformers_and_do_not_depend_on_the_batch() {
    let r = reference();
    let model = TextEmbedder::load(&crate::minilm(), &Device::Cpu).unwrap();
    assert_eq!(model.info().dimensions, 384);
    let texts: Vec<&str> = r.texts.iter().map(|t| t.as_str()).collect();
    let all = model.embed_texts(&texts).unwrap();
    for (i, want) in r.vectors.iter().enumerate() {
        let got = &all[i * 384..(i + 1) * 384];
        let d = max_diff(got, want);
        assert!(d < 1e-4, "text {i} ({:?}): differs from sentence-transformers by {d}", r.texts[i]);
    }
    // Alone, and in other company and order: the same vectors.
    for (i, t) in texts.iter().enumerate() {
        let alone = model.embed_texts(&[t]).unwrap();
        assert!(max_diff(&alone, &all[i * 384..(i + 1) * 384]) < 1e-5, "text {i} alone");
    }
    let reversed: Vec<&str> = texts.iter().rev().take(5).copied().collect();
    let again = model.embed_texts(&reversed).unwrap();
    for (k, i) in (0..texts.len()).rev().take(5).enumerate() {
        assert!(max_diff(&again[k * 384..(k + 1) * 384], &all[i * 384..(i + 1) * 384]) < 1e-5, "text {i} reordered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_stage_pool_answers_vectors_and_isolates_bad_rows() {
    let r = reference();
    let embed = Embed::text(crate::minilm()).batch_rows(4).workers(2, 2);
    let pool = embed.pool("embed").unwrap();
    let texts: ArrayRef = Arc::new(StringArray::from(r.texts.clone()));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)])), vec![texts]).unwrap();
    let answer = pool.call(batch).await.unwrap();
    assert!(answer.failures.is_empty());
    let v = answer.values.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    assert_eq!((v.len(), v.value_length()), (r.texts.len(), 384));
    for (i, want) in r.vectors.iter().enumerate() {
        let got = v.value(i);
        let got = got.as_any().downcast_ref::<Float32Array>().unwrap();
        assert!(max_diff(got.values(), want) < 1e-4, "row {i}");
    }
    let stats = pool.stats();
    assert_eq!(stats.workers, 2);
    assert!(stats.calls >= 3, "12 rows in calls of at most 4: {stats:?}");

    // A number column is not text: no row could succeed, so the stage stops with a config error
    // that says what to fix (rather than making every row a dead letter), and nothing hangs.
    let numbers: ArrayRef = Arc::new(alluvium_core::arrow::array::Int64Array::from(vec![1, 2]));
    let bad =
        RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("text", DataType::Int64, true)])), vec![numbers]).unwrap();
    let err = pool.call(bad).await.unwrap_err();
    assert_eq!(err.kind(), alluvium_core::ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("embeds text (Utf8), not Int64; set the stage's `column`"), "{err}");
}

#[test]
fn a_missing_model_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = TextEmbedder::load(dir.path().join("all-MiniLM-L6-v2").to_str().unwrap(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("has no config.json, model.safetensors, tokenizer.json"), "{err}");
    assert!(err.contains("models/install.sh all-MiniLM-L6-v2"), "{err}");
    let err = TextEmbedder::load("./no/such/model", &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("point `model` at a directory"), "{err}");
    // A missing CLIP model: only its files, and where to get one.
    let clip = dir.path().join("clip-vit-base-patch32");
    let err = Embed::local(clip.to_str().unwrap(), None).unwrap().build("embed").err().unwrap().to_string();
    assert!(err.contains("has no config.json, model.safetensors;"), "{err}");
    assert!(err.contains("huggingface-cli download openai/clip-vit-base-patch32") && err.contains("alluvium demo-clip"), "{err}");
}

/// The embedding column records the metric the model declares (`similarity_fn_name`), not
/// always cosine; `metric` overrides it; an unknown one is a config error naming the key.
#[test]
fn the_embedding_column_records_the_models_own_metric() {
    use alluvium_core::types::Metric;
    let minilm = std::path::PathBuf::from(crate::minilm());
    assert_eq!(alluvium_models::model_metric(&minilm).unwrap(), Metric::Cosine, "all-MiniLM-L6-v2 says nothing: cosine");
    // The same weights, declared for the dot product (as msmarco-style models are).
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&minilm).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "config_sentence_transformers.json" {
            std::os::unix::fs::symlink(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    let declare = |name: &str| {
        std::fs::write(dir.path().join("config_sentence_transformers.json"), format!(r#"{{"similarity_fn_name": "{name}"}}"#))
            .unwrap()
    };
    declare("dot");
    let model = dir.path().to_str().unwrap();
    assert_eq!(TextEmbedder::load(model, &Device::Cpu).unwrap().info().metric, Metric::Dot);
    assert_eq!(Embed::text(model).column_metric().unwrap(), Metric::Dot);
    assert_eq!(Embed::text(model).metric(Metric::L2).column_metric().unwrap(), Metric::L2);
    declare("euclidean");
    assert_eq!(Embed::text(model).column_metric().unwrap(), Metric::L2);
    declare("manhattan");
    let err = Embed::text(model).column_metric().unwrap_err().to_string();
    assert!(err.contains("`similarity_fn_name` is `manhattan`") && err.contains("`metric`"), "{err}");
}
