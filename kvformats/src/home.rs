//! Where kvbench keeps what it downloads (models, data sets): one rule for every crate, so models
//! and data never end up in different places. `$KVBENCH_HOME` if set, else `<user cache>/kvbench`
//! (`$XDG_CACHE_HOME/kvbench` or `~/.cache/kvbench` on Linux).

use std::path::PathBuf;

/// kvbench's cache directory.
pub fn kvbench_home() -> PathBuf {
    if let Some(h) = std::env::var_os("KVBENCH_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir().unwrap_or_else(|| PathBuf::from(".kvbench")).join("kvbench")
}
