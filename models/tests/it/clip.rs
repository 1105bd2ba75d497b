//! The CLIP image model with a small random model written the way Hugging Face lays CLIP out (no
//! registry ships real CLIP weights; see `alluvium_models::image`): it loads from a directory,
//! gives one unit vector per image whatever the image's form or its batch, and the embed stage
//! makes dead letters of rows that are not images.

use std::path::Path;
use std::sync::Arc;

use alluvium_core::arrow::array::{Array, ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, StructArray, UInt32Array};
use alluvium_core::arrow::datatypes::{DataType, Field, Fields, Schema};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_models::image::write_random_clip;
use alluvium_models::{ClipTextEmbedder, Embed, EmbeddingModel, ImageEmbedder, Modality, Preprocess};
use candle_core::Device;

/// Writes a random CLIP model into `dir`; returns the same model in memory.
fn tiny_clip(dir: &Path) -> ImageEmbedder {
    write_random_clip(dir).unwrap()
}

/// Three images unlike each other: a colour gradient, a gray checkerboard, a translucent disc.
fn images() -> Vec<image::DynamicImage> {
    let gradient = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 128]));
    let checker = image::GrayImage::from_fn(40, 40, |x, y| image::Luma([if (x / 5 + y / 5) % 2 == 0 { 230 } else { 20 }]));
    let disc = image::RgbaImage::from_fn(50, 70, |x, y| {
        let inside = (x as i32 - 25).pow(2) + (y as i32 - 35).pow(2) < 400;
        image::Rgba(if inside { [250, 40, 40, 200] } else { [10, 90, 200, 255] })
    });
    vec![gradient.into(), checker.into(), disc.into()]
}

fn png(i: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    i.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn rows(vectors: &[f32], dims: usize) -> Vec<&[f32]> {
    vectors.chunks(dims).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn a_clip_model_loads_from_a_directory_and_embeds_any_form_of_image_alike() {
    let dir = tempfile::tempdir().unwrap();
    let in_memory = tiny_clip(dir.path());
    let model = ImageEmbedder::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!((model.info().dimensions, model.info().modality), (16, Modality::Image));
    assert_eq!((model.preprocess().size, model.preprocess().crop), (40, 32));

    let imgs = images();
    let rgb: Vec<image::RgbImage> = imgs.iter().map(|i| i.to_rgb8()).collect();
    let all = model.embed_images(&rgb).unwrap();
    let all = rows(&all, 16);
    // Unit vectors (cosine), and different images give different vectors.
    for v in &all {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(cos(all[0], all[1]) < 0.999 && cos(all[1], all[2]) < 0.999);
    // The saved and loaded weights are the ones made: the same vectors.
    assert!(max_diff(&in_memory.embed_images(&rgb).unwrap(), &all.concat()) < 1e-6);
    // Alone or in company: the same vector.
    let alone = model.embed_images(&rgb[1..2]).unwrap();
    assert!(max_diff(&alone, all[1]) < 1e-5);

    // As PNG bytes, as an encoded alluvium.image and as decoded pixels (gray and RGBA as they are).
    let bytes: Vec<Vec<u8>> = imgs.iter().map(png).collect();
    let binary = BinaryArray::from_iter_values(bytes.iter());
    let from_bytes = model.embed(&binary).unwrap();
    assert!(max_diff(&from_bytes, &all.concat()) < 1e-5);
    let encoded = StructArray::new(
        Fields::from(vec![Field::new("data", DataType::Binary, false), Field::new("format", DataType::Utf8, false)]),
        vec![Arc::new(binary.clone()) as ArrayRef, Arc::new(alluvium_core::arrow::array::StringArray::from(vec!["png"; 3]))],
        None,
    );
    assert!(max_diff(&model.embed(&encoded).unwrap(), &all.concat()) < 1e-5);
    let pixels = BinaryArray::from_iter_values(imgs.iter().map(|i| i.as_bytes().to_vec()));
    let decoded = StructArray::new(
        Fields::from(vec![
            Field::new("pixels", DataType::Binary, false),
            Field::new("width", DataType::UInt32, false),
            Field::new("height", DataType::UInt32, false),
        ]),
        vec![
            Arc::new(pixels) as ArrayRef,
            Arc::new(UInt32Array::from(imgs.iter().map(|i| i.width()).collect::<Vec<_>>())),
            Arc::new(UInt32Array::from(imgs.iter().map(|i| i.height()).collect::<Vec<_>>())),
        ],
        None,
    );
    assert!(max_diff(&model.embed(&decoded).unwrap(), &all.concat()) < 1e-5);
}

#[test]
fn preprocessing_resizes_the_short_side_crops_the_centre_and_normalises() {
    let p = Preprocess { size: 4, crop: 2, mean: [0.5, 0.5, 0.5], std: [0.5, 0.25, 1.0] };
    // 4×6 already at size: no resize; the centre 2×2 is x 1..3, y 2..4.
    let img = image::RgbImage::from_fn(4, 6, |x, y| image::Rgb([(x * 60) as u8, (y * 40) as u8, 255]));
    let t = p.apply(&img);
    assert_eq!(t.len(), 3 * 2 * 2);
    let want_r = |x: u32| ((x * 60) as f32 / 255.0 - 0.5) / 0.5;
    let want_g = |y: u32| ((y * 40) as f32 / 255.0 - 0.5) / 0.25;
    assert_eq!(&t[0..4], &[want_r(1), want_r(2), want_r(1), want_r(2)]);
    assert_eq!(&t[4..8], &[want_g(2), want_g(2), want_g(3), want_g(3)]);
    assert_eq!(&t[8..12], &[0.5; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_embed_stage_makes_dead_letters_of_rows_that_are_not_images() {
    let dir = tempfile::tempdir().unwrap();
    tiny_clip(dir.path());
    let model = dir.path().to_str().unwrap().to_string();
    // `Embed::local` tells a CLIP model from a text model by its config.json.
    let embed = Embed::local(model.clone(), None).unwrap().column("bytes").batch_rows(8);
    assert_eq!(embed.model_dir().unwrap(), dir.path());
    let pool = embed.pool("embed").unwrap();
    let mut bytes: Vec<Vec<u8>> = images().iter().map(png).collect();
    bytes.insert(1, b"not an image at all".to_vec());
    let column: ArrayRef = Arc::new(BinaryArray::from_iter_values(bytes.iter()));
    let batch =
        RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("bytes", DataType::Binary, true)])), vec![column]).unwrap();
    let answer = pool.call(batch).await.unwrap();
    assert_eq!(answer.failures.len(), 1, "{:?}", answer.failures);
    assert_eq!(answer.failures[0].row, 1);
    assert!(answer.failures[0].message.contains("not a readable image"), "{}", answer.failures[0].message);
    let v = answer.values.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    assert_eq!((v.len(), v.value_length(), v.null_count()), (4, 16, 1));
    let direct = ImageEmbedder::load(&model, &Device::Cpu).unwrap();
    let want = direct.embed_images(&images().iter().map(|i| i.to_rgb8()).collect::<Vec<_>>()).unwrap();
    for (k, row) in [0, 2, 3].into_iter().enumerate() {
        let got = v.value(row);
        let got = got.as_any().downcast_ref::<Float32Array>().unwrap();
        assert!(max_diff(got.values(), &want[k * 16..(k + 1) * 16]) < 1e-5, "row {row}");
    }

    // A column that holds no images at all is the job's mistake, not the rows': the stage stops
    // with a config error naming `column`, instead of making every row a dead letter.
    let texts: ArrayRef = Arc::new(alluvium_core::arrow::array::StringArray::from(vec!["a cat", "a dog"]));
    let batch =
        RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("bytes", DataType::Utf8, true)])), vec![texts]).unwrap();
    let err = pool.call(batch).await.unwrap_err();
    assert_eq!(err.kind(), alluvium_core::ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("not Utf8; set the stage's `column`"), "{err}");
}

/// What transformers computed with the model `write_random_clip` writes
/// (`models/tests/fixtures/make_clip_reference.py`).
#[derive(serde::Deserialize)]
struct Reference {
    made_by: String,
    texts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    text_embeddings: Vec<Vec<f32>>,
    pixel_values: Vec<Vec<f32>>,
    image_embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The text tower of `dir`'s model; the CLIP vocabulary must be installed (`models/install.sh
/// clip-vocab`, which `.ci/run` runs): the tests fail, they do not skip, without it.
fn text_tower(dir: &Path) -> ClipTextEmbedder {
    ClipTextEmbedder::load(dir.to_str().unwrap(), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn clip_vectors_match_transformers_for_images_and_texts() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let vision = tiny_clip(dir.path());

    // The vision tower on transformers' own pixel values: the same vectors.
    let worst = |got: &[f32], want: &[Vec<f32>]| max_diff(got, &want.concat());
    let from_pixels = vision.embed_pixels(r.pixel_values.concat()).unwrap();
    assert!(worst(&from_pixels, &r.image_embeddings) < 1e-4, "{} ({})", worst(&from_pixels, &r.image_embeddings), r.made_by);

    // Our preprocessing against CLIPImageProcessor's: Pillow's bicubic resize, centre crop and
    // normalisation, the same to the rounding of the fixture's six decimals.
    let rgb: Vec<image::RgbImage> = images().iter().map(|i| i.to_rgb8()).collect();
    for (i, img) in rgb.iter().enumerate() {
        let diff = max_diff(&vision.preprocess().apply(img), &r.pixel_values[i]);
        assert!(diff < 2e-5, "image {i}: pixel values differ by {diff}");
    }
    // And so images to vectors end to end.
    let ours = vision.embed_images(&rgb).unwrap();
    assert!(worst(&ours, &r.image_embeddings) < 1e-4, "{}", worst(&ours, &r.image_embeddings));

    // The text tower: token ids and vectors, in a padded batch and alone.
    let text = text_tower(dir.path());
    assert_eq!((text.info().dimensions, text.info().modality), (16, Modality::Text));
    let texts: Vec<&str> = r.texts.iter().map(String::as_str).collect();
    for (t, want) in texts.iter().zip(&r.input_ids) {
        let (ids, _, _) = text.tokenizer().encode_batch(&[t]).unwrap();
        assert_eq!(&ids, want, "{t:?}");
    }
    let all = text.embed_texts(&texts).unwrap();
    assert!(worst(&all, &r.text_embeddings) < 1e-4, "{}", worst(&all, &r.text_embeddings));
    let alone = text.embed_texts(&texts[3..4]).unwrap();
    assert!(max_diff(&alone, &r.text_embeddings[3]) < 1e-4);
}

#[test]
fn the_clip_tokenizer_loads_from_each_form_clip_models_ship_it_in() {
    let dir = tempfile::tempdir().unwrap();
    tiny_clip(dir.path());
    let r = reference();
    let texts: Vec<&str> = r.texts.iter().map(String::as_str).collect();
    let ids_of = |t: &ClipTextEmbedder| texts.iter().map(|s| t.tokenizer().encode_batch(&[s]).unwrap().0).collect::<Vec<_>>();
    // From the model cache's OpenAI vocabulary (the directory has no tokenizer of its own).
    let from_cache = text_tower(dir.path());
    assert_eq!(ids_of(&from_cache), r.input_ids);

    // As Hugging Face's vocab.json and merges.txt, written from the same vocabulary.
    let hf = tempfile::tempdir().unwrap();
    tiny_clip(hf.path());
    let tokenizer = alluvium_models::clip::clip_tokenizer(dir.path()).unwrap();
    let bpe = match tokenizer.get_model() {
        tokenizers::ModelWrapper::BPE(bpe) => bpe.clone(),
        _ => unreachable!("CLIP's tokenizer is BPE"),
    };
    tokenizers::Model::save(&bpe, hf.path(), None).unwrap();
    assert!(hf.path().join("vocab.json").is_file() && hf.path().join("merges.txt").is_file());
    assert_eq!(ids_of(&text_tower(hf.path())), r.input_ids);

    // As a tokenizer.json, which takes precedence.
    tokenizer.save(hf.path().join("tokenizer.json"), false).unwrap();
    std::fs::remove_file(hf.path().join("merges.txt")).unwrap();
    assert_eq!(ids_of(&text_tower(hf.path())), r.input_ids);

    // A broken merges file is named.
    std::fs::write(dir.path().join(alluvium_models::clip::OPENAI_BPE), b"not gzip").unwrap();
    let err = ClipTextEmbedder::load(dir.path().to_str().unwrap(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("bpe_simple_vocab_16e6.txt.gz is not CLIP's merges file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_text_stage_puts_texts_in_the_space_of_the_image_stage() {
    let dir = tempfile::tempdir().unwrap();
    tiny_clip(dir.path());
    let model = dir.path().to_str().unwrap().to_string();
    let embed = Embed::local(model.clone(), Some(Modality::Text)).unwrap().batch_rows(4);
    let pool = embed.pool("embed").unwrap();
    let texts: ArrayRef = Arc::new(alluvium_core::arrow::array::StringArray::from(vec!["a photo of a cat", "a dog"]));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)])), vec![texts]).unwrap();
    let answer = pool.call(batch).await.unwrap();
    assert!(answer.failures.is_empty(), "{:?}", answer.failures);
    let v = answer.values.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    let first = v.value(0);
    let got = first.as_any().downcast_ref::<Float32Array>().unwrap();
    let want = reference().text_embeddings[0].clone();
    assert!(max_diff(got.values(), &want) < 1e-4);

    // A column of bytes is the job's mistake, not the rows': a config error naming `column`.
    let bytes: ArrayRef = Arc::new(BinaryArray::from_iter_values([b"\x89PNG".as_slice()]));
    let batch =
        RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("text", DataType::Binary, true)])), vec![bytes]).unwrap();
    let err = pool.call(batch).await.unwrap_err();
    assert_eq!(err.kind(), alluvium_core::ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("takes text") && err.to_string().contains("set the stage's `column`"), "{err}");

    // A text model cannot embed images.
    let minilm = crate::minilm();
    let err = Embed::local(minilm, Some(Modality::Image)).err().unwrap().to_string();
    assert!(err.contains("is a text model; images need a CLIP model"), "{err}");
}
