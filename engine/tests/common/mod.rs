//! Shared by the engine's integration tests: the default model (fetched by scripts/setup.sh)
//! loaded once per test binary, and the reference fixtures.
#![allow(dead_code)]
use std::path::PathBuf;
use std::sync::OnceLock;

use ferrinfer_engine::Model;
use serde::Deserialize;

/// The repository root: the working directory when it is one (test executables carried to a
/// GPU machine run from a checkout at another path), else where the tests were built.
pub fn repo() -> PathBuf {
    if std::path::Path::new("engine/tests/fixtures").is_dir() {
        return PathBuf::from(".");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The model file: $FERRINFER_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf. Missing is a
/// test failure (CI's set-up fetches it), never a silent pass.
pub fn model_path() -> PathBuf {
    let p = std::env::var_os("FERRINFER_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (scripts/fetch-model.sh) first",
        p.display()
    );
    p
}

pub fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&model_path(), &mut |_, _| {}).expect("model loads"))
}

#[derive(Deserialize, Debug, Clone)]
pub struct RefRun {
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub top5: Vec<Vec<(u32, f32)>>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct RefMessage {
    pub role: String,
    pub content: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct RefPrompt {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub messages: Vec<RefMessage>,
    pub text: String,
    pub llama_cpp: RefRun,
    pub transformers: Option<RefRun>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Reference {
    pub prompts: Vec<RefPrompt>,
}

pub fn fixtures() -> PathBuf {
    repo().join("engine/tests/fixtures")
}

pub fn reference() -> Reference {
    let p = fixtures().join("reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("reference.json parses")
}

/// The f32 logits a reference stored for a prompt's last position, if present.
pub fn last_logits(name: &str, implementation: &str) -> Option<Vec<f32>> {
    let p = fixtures().join(format!("last_logits/{name}.{implementation}.f32"));
    let b = std::fs::read(p).ok()?;
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}
