//! Images end to end with embeddings: the images_to_lance_embeddings example (thumbnails → CLIP →
//! Lance) with the tiny random CLIP that `alluvium demo-clip` writes, exactly once across a
//! SIGKILL and two reruns, read back with pylance; each stored vector is the model's vector of the
//! stored thumbnail.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use alluvium::models::{Device, ImageEmbedder};

fn example(model: &Path, out: &Path) -> Command {
    let mut c = crate::bin();
    c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
        .args(["run", "examples/images_to_lance_embeddings.toml"])
        .env("ALLUVIUM_MODEL_DIR", model)
        .env("ALLUVIUM_OUTPUT", out)
        .env_remove("ALLUVIUM_INPUT");
    c
}

#[test]
fn the_images_with_embeddings_example_writes_each_image_once_with_its_thumbnails_vector() {
    let Some(py) = alluvium_integration::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("demo-clip");
    let wrote = crate::bin().arg("demo-clip").arg(&model).output().unwrap();
    assert!(wrote.status.success(), "{}", String::from_utf8_lossy(&wrote.stderr));
    assert!(String::from_utf8_lossy(&wrote.stdout).contains("random 16-d CLIP model"));

    let out = dir.path().join("lake");
    crate::killed_then_run_twice(|| example(&model, &out), Duration::from_millis(600));

    let script = r#"
import sys, os, json
import lance
t = lance.dataset(sys.argv[1] + "/image_embeddings.lance").to_table()
uris = [r["uri"].rsplit("/", 1)[1] for r in t.column("ref").to_pylist()]
print(t.num_rows, " ".join(sorted(set(uris))))
emb = t.column("embedding").to_pylist()
print(sorted({len(e) for e in emb}))
for i in range(t.num_rows):
    thumb = t.column("thumbnail")[i].as_py()
    print(json.dumps({"uri": uris[i], "jpeg": thumb["data"].hex(), "embedding": emb[i]}))
sys.stdout.flush(); os._exit(0)
"#;
    let seen = alluvium_integration::python_run(&py, script, &[out.to_str().unwrap()]);
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "3 portrait.jpg sunset.jpg wide.png", "each good image once:\n{seen}");
    assert_eq!(lines[1], "[16]", "{seen}");

    // Every stored vector is the model's vector of the stored thumbnail, and the images differ.
    let clip = ImageEmbedder::load(model.to_str().unwrap(), &Device::Cpu).unwrap();
    let mut vectors = Vec::new();
    for line in &lines[2..] {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let hex = row["jpeg"].as_str().unwrap();
        let jpeg: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let thumb = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(thumb.dimensions(), (224, 224), "{}", row["uri"]);
        let want = clip.embed_images(&[thumb]).unwrap();
        let got: Vec<f32> = row["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "{}: the stored vector is the thumbnail's ({diff})", row["uri"]);
        vectors.push(got);
    }
    assert!(vectors[0] != vectors[1] && vectors[1] != vectors[2], "different images, different vectors");

    let letters = crate::dead_letters(&out.join("_dead_letters/image_embeddings"));
    assert_eq!(letters.len(), 3, "{letters:?}");
    for bad in ["broken.jpg", "corrupt.jpg", "oversized.png"] {
        crate::dead_letter_message(&letters, bad);
    }
}

/// `alluvium serve-model` with a CLIP model serves its text tower: a text query comes back as the
/// vector transformers computes for it (the models crate's fixture), in the space of the images.
#[test]
fn serve_model_answers_text_queries_with_a_clip_models_text_tower() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("demo-clip");
    assert!(crate::bin().arg("demo-clip").arg(&model).output().unwrap().status.success());
    let server = crate::ServeModel::start(&["--name", "clip", "--model", model.to_str().unwrap()]);
    assert!(server.first.starts_with("serving `clip` (16-d) at http://127.0.0.1:"), "{}", server.first);
    let endpoint = alluvium::models::Endpoint::openai(server.url.clone(), "clip").connect().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (got, _) = rt.block_on(endpoint.embed_texts(&["a photo of a cat"])).unwrap();
    let last = server.stop();
    assert!(last.starts_with("served 1 requests, 1 inputs"), "{last}");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/clip_reference.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    assert_eq!(fixture["texts"][0], "a photo of a cat");
    let want: Vec<f32> = fixture["text_embeddings"][0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(got.len() == 16 && diff < 1e-4, "{got:?} against {want:?}");
}
