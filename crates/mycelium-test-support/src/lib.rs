//! Test support shared by Mycelium's crates. It is a dev-dependency only: no crate's normal
//! dependencies may name it (the tidy test `crate_graph_is_the_documented_one` checks).
//!
//! Its own tests are the repository's tidy checks (`tests/tidy.rs`): the crate graph drawn in
//! ARCHITECTURE.md, dependencies used by the code that lists them, and the broker's layers.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Every `.rs` file under `dir`, sorted (empty if `dir` does not exist).
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
