//! Texts end to end: the texts_to_embeddings example (chunks → MiniLM → Delta), exactly once across
//! a SIGKILL and two reruns, read back with the deltalake Python package; with the model in the
//! job, and behind `alluvium serve-model` over HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The bundled texts plus a long document, copied into `dir/texts`.
fn texts_input(dir: &Path) -> PathBuf {
    let input = dir.join("texts");
    std::fs::create_dir_all(&input).unwrap();
    for e in std::fs::read_dir(root().join("examples/data/texts")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), input.join(e.file_name())).unwrap();
    }
    let long: String = (0..400).map(|i| format!("Paragraph {i}: the delta grew by a few metres that year. ")).collect();
    std::fs::write(input.join("long.txt"), &long).unwrap();
    input
}

/// `alluvium run examples/texts_to_embeddings.toml` on `input`, writing under `out`.
fn texts_example(input: &Path, out: &Path, set: &[String]) -> Command {
    let mut c = crate::bin();
    c.current_dir(root())
        .args(["run", "examples/texts_to_embeddings.toml"])
        .env("ALLUVIUM_INPUT", input)
        .env("ALLUVIUM_OUTPUT", out);
    for s in set {
        c.args(["--set", s]);
    }
    c
}

/// The bundled texts plus a long document → chunks → embeddings in Delta: every chunk once, 384
/// floats each, equal to what the model gives for the chunk's text; the bad files are dead letters.
#[test]
fn the_texts_example_writes_each_chunk_once_with_its_embedding() {
    let Some(py) = alluvium_integration::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = texts_input(dir.path());
    let out = dir.path().join("lake");
    crate::killed_then_run_twice(|| texts_example(&input, &out, &[]), Duration::from_millis(700));
    check_text_embeddings(&py, &out);
}

/// The same job with its `embed` stage calling `alluvium serve-model` over HTTP (OpenAI protocol,
/// a 503 on every 5th request, four workers and four rows a call), killed mid-run and run twice: the same table, each
/// chunk once with the model's vector.
#[test]
fn the_texts_example_through_serve_model_writes_each_chunk_once() {
    let Some(py) = alluvium_integration::python() else { return };
    let server = crate::ServeModel::start(&["--workers", "2", "--inject", "503:5"]);
    assert!(server.first.starts_with("serving `all-MiniLM-L6-v2` (384-d) at http://127.0.0.1:"), "{}", server.first);
    let url = server.url.clone();

    let dir = tempfile::tempdir().unwrap();
    let input = texts_input(dir.path());
    let out = dir.path().join("lake");
    let set = [
        format!("stages.3.url={url}"),
        "stages.3.workers=4".into(),
        "stages.3.max_workers=4".into(),
        "stages.3.batch_rows=4".into(),
    ];
    crate::killed_then_run_twice(|| texts_example(&input, &out, &set), Duration::from_millis(1500));
    check_text_embeddings(&py, &out);

    let served = server.stop();
    let numbers: Vec<u64> = served.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    assert!(served.starts_with("served ") && numbers[0] > 0 && numbers[2] > 0, "requests, and injected 503s: {served}");
}

/// Reads the example's table and dead letters with other readers, and checks every chunk is there
/// once with the model's vector.
fn check_text_embeddings(py: &str, out: &Path) {
    let script = r#"
import sys, os, json
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1] + "/text_embeddings").to_pyarrow_table()
rows = t.select(["ref", "chunk_index", "text"]).to_pylist()
name = lambda r: r["ref"]["uri"].rsplit("/", 1)[1]
keys = {(name(r), r["chunk_index"]) for r in rows}
print(len(rows), len(keys))
print(" ".join(sorted({name(r) for r in rows})))
print(sorted(i for n, i in keys if n == "long.txt") == list(range(sum(1 for n, _ in keys if n == "long.txt"))))
emb = t.column("embedding").to_pylist()
print(sorted({len(e) for e in emb}))
note = [i for i, r in enumerate(rows) if name(r) == "note.txt"][0]
print(json.dumps({"text": rows[note]["text"], "embedding": emb[note]}))
sys.stdout.flush(); os._exit(0)
"#;
    let seen = alluvium_integration::python_run(py, script, &[out.to_str().unwrap()]);
    let lines: Vec<&str> = seen.lines().collect();
    let counts: Vec<usize> = lines[0].split(' ').map(|n| n.parse().unwrap()).collect();
    assert_eq!(counts[0], counts[1], "every (file, chunk) once:\n{seen}");
    assert_eq!(lines[1], "README.txt lighthouse.txt long.txt note.txt rivers.md", "{seen}");
    assert_eq!(lines[2], "True", "the long text's chunks are 0..n, none missing: {seen}");
    assert_eq!(lines[3], "[384]");
    let note: serde_json::Value = serde_json::from_str(lines[4]).unwrap();
    let text = note["text"].as_str().unwrap();
    assert_eq!(text, "Short note: buy bread, milk and coffee.");
    let got: Vec<f32> = note["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let model = alluvium::models::TextEmbedder::load(alluvium::models::MINILM, &alluvium::models::Device::Cpu).unwrap();
    let want = model.embed_texts(&[text]).unwrap();
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-5, "the stored embedding is the model's: {diff}");

    let letters = crate::dead_letters(&out.join("_dead_letters/texts"));
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(crate::dead_letter_message(&letters, "empty.txt").contains("the text is empty"), "{letters:?}");
    assert!(crate::dead_letter_message(&letters, "latin1.txt").contains("not UTF-8"), "{letters:?}");
}
