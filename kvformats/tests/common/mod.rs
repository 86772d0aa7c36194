//! Helpers shared by kvformats' integration tests: the workspace root, the reference Python, and
//! the real model files in kvbench's cache (the same places the engine looks).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate dir has a parent").to_path_buf()
}

/// The Python with the reference packages: `$KVBENCH_PYTHON`, else the project venv.
pub fn python() -> PathBuf {
    let python = std::env::var_os("KVBENCH_PYTHON").filter(|p| !p.is_empty()).map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "reference python {} not found: set KVBENCH_PYTHON or run scripts/bootstrap.sh --test \
         (scripts/requirements-test.txt lists the packages)",
        python.display()
    );
    python
}

/// kvbench's cache directory (the one rule every crate uses).
pub fn kvbench_home() -> PathBuf {
    kvformats::home::kvbench_home()
}

/// A model file under `$KVBENCH_HOME/models`, which the test command fetches first.
pub fn model(relative: &str) -> PathBuf {
    let path = kvbench_home().join("models").join(relative);
    assert!(path.exists(), "model file {} is missing: run `./kvbench model fetch smollm2-135m qwen2.5-0.5b` (scripts/test.sh does)", path.display());
    path
}
