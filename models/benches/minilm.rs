//! MiniLM throughput on the CPU, and what the service stage costs on top of calling the model.
//!
//! ```text
//! cargo bench -p alluvium-models --bench minilm                          # all cores
//! RAYON_NUM_THREADS=1 cargo bench -p alluvium-models --bench minilm      # one thread
//! HF_HUB_OFFLINE=1 python models/benches/minilm_st.py                    # sentence-transformers, same inputs
//! ```
//!
//! The same 1024 sentences (8 to 45 words) in batches of 32: (1) `TextEmbedder::embed_texts`
//! directly; (2) through a `ServicePool` with one worker, the requests of 4 lanes batched
//! dynamically, as a pipeline's `embed` stage calls it. The overhead is (2) against (1). (3) The
//! same through the OpenAI-compatible client and the model server over HTTP on 127.0.0.1, with a
//! pool of 1 and 2 workers (and as many compute slots at the server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use alluvium_core::arrow::array::{ArrayRef, StringArray};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::service::ServicePool;
use alluvium_models::{Device, Embed, Endpoint, ModelServer, ServeOptions, TextEmbedder, MINILM};

const WORDS: &str = "river delta silt flood plain channel current bank levee tide estuary meander water sand \
                     gravel clay stream valley basin marsh reed heron ferry bridge mill harbour";

fn sentences(n: usize) -> Vec<String> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    (0..n)
        .map(|i| {
            let body: Vec<&str> = (0..5 + i % 40).map(|k| words[(i * 7 + k) % words.len()]).collect();
            format!("Sentence {i}: {}", body.join(" "))
        })
        .collect()
}

fn best_of(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn main() {
    let texts = sentences(1024);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let model = TextEmbedder::load(MINILM, &Device::Cpu).expect("install the model: models/install.sh all-MiniLM-L6-v2");
    let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
    model.embed_texts(&refs[..64]).unwrap();
    let direct = best_of(3, || {
        let start = Instant::now();
        for chunk in refs.chunks(32) {
            model.embed_texts(chunk).unwrap();
        }
        start.elapsed()
    });
    let rate = |d: Duration| texts.len() as f64 / d.as_secs_f64();
    println!("minilm CPU ({threads} threads), direct:        {:>6.0} sentences/s", rate(direct));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pool = Embed::text(MINILM).batch_rows(32).workers(1, 1).pool("embed").unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let batches: Vec<RecordBatch> = texts
        .chunks(64)
        .map(|c| RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(c.to_vec())) as ArrayRef]).unwrap())
        .collect();
    let service = rt.block_on(four_lanes(&pool, &batches));
    let overhead = (service.as_secs_f64() / direct.as_secs_f64() - 1.0) * 100.0;
    println!("minilm CPU ({threads} threads), service stage: {:>6.0} sentences/s ({overhead:+.1}% time)", rate(service));

    let model: Arc<TextEmbedder> = Arc::new(model);
    for workers in [1, 2] {
        let took = rt.block_on(async {
            let options = ServeOptions { listen: "127.0.0.1:0".parse().unwrap(), workers, ..Default::default() };
            let server = ModelServer::start(model.clone(), options).await.unwrap();
            let endpoint = Endpoint::openai(server.url(), server.model_name());
            let pool = Embed::remote(endpoint).batch_rows(32).workers(workers, workers).pool("embed").unwrap();
            four_lanes(&pool, &batches).await
        });
        let overhead = (took.as_secs_f64() / direct.as_secs_f64() - 1.0) * 100.0;
        println!(
            "minilm CPU ({threads} threads), over HTTP, {workers} worker(s): {:>6.0} sentences/s ({overhead:+.1}% time)",
            rate(took)
        );
    }
}

/// The best of three runs of four lanes, each calling `pool` with its share of the batches, one
/// call at a time (after a warm-up call).
async fn four_lanes(pool: &ServicePool, batches: &[RecordBatch]) -> Duration {
    pool.call(batches[0].clone()).await.unwrap();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let lanes: Vec<_> = (0..4)
            .map(|lane| {
                let (pool, mine) = (pool.clone(), batches.iter().skip(lane).step_by(4).cloned().collect::<Vec<_>>());
                tokio::spawn(async move {
                    for b in mine {
                        pool.call(b).await.unwrap();
                    }
                })
            })
            .collect();
        for l in lanes {
            l.await.unwrap();
        }
        best = best.min(start.elapsed());
    }
    best
}
