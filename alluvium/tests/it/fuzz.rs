//! The fuzz targets' seeds and every input that once failed a target (`fuzz/seeds/TARGET/`,
//! `fuzz/regressions/TARGET/`, and the example job files for `job_file`), replayed through the
//! same bodies `cargo fuzz` runs (fuzz/targets.rs) on every `cargo test`.

use std::path::{Path, PathBuf};

#[path = "../../../fuzz/targets.rs"]
mod targets;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|es| es.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect()).unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_fuzz_seed_and_past_failure_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for (name, target) in targets::TARGETS {
        let mut inputs = files(&root.join("fuzz/seeds").join(name));
        assert!(!inputs.is_empty(), "fuzz/seeds/{name} has no seeds");
        inputs.extend(files(&root.join("fuzz/regressions").join(name)));
        if *name == "job_file" {
            inputs.extend(files(&root.join("examples")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")));
        }
        for input in inputs {
            eprintln!("fuzz target {name}: {}", input.display());
            target(&std::fs::read(&input).unwrap());
        }
    }
}

/// The seeds are worth fuzzing from: the good media decode, the manifests parse, the job parses.
#[test]
fn the_fuzz_seeds_are_valid_inputs() {
    use alluvium::core::checkpoint::{parse_assignment, parse_manifest};
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("fuzz/seeds");
    parse_manifest(&std::fs::read(seeds.join("manifest/region.json")).unwrap()).unwrap();
    parse_assignment(&std::fs::read(seeds.join("manifest/assignment.json")).unwrap()).unwrap();
    let job = std::fs::read_to_string(seeds.join("job_file/overrides.toml")).unwrap();
    let (text, set) = job.split_once("\n--set\n").unwrap();
    let set: Vec<String> = set.lines().map(str::to_string).collect();
    let parsed = alluvium::job::JobFile::parse_with_env(text, &set, |_| Some("/tmp/x".into())).unwrap();
    assert_eq!(parsed.pipeline.parallelism, Some(3));
    for image in files(&seeds.join("image")) {
        let bytes = std::fs::read(&image).unwrap();
        let decoded = image::load_from_memory(&bytes);
        assert!(decoded.is_ok(), "{}: {:?}", image.display(), decoded.err());
    }
    for video in files(&seeds.join("video")) {
        let media = Box::new(std::io::Cursor::new(std::fs::read(&video).unwrap()));
        alluvium::formats::video::probe(media, &Default::default()).unwrap();
    }
    for audio in files(&seeds.join("audio")) {
        let media = Box::new(std::io::Cursor::new(std::fs::read(&audio).unwrap()));
        alluvium::formats::audio::probe(media, std::time::Duration::from_secs(5)).unwrap();
    }
}
