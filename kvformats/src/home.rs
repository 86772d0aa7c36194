//! Where kvbench keeps what it downloads (models, data sets) and how a download is verified: one
//! rule for every crate, so models and data never end up in different places. `$KVBENCH_HOME` if set, else `<user cache>/kvbench`
//! (`$XDG_CACHE_HOME/kvbench` or `~/.cache/kvbench` on Linux).

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// kvbench's cache directory.
pub fn kvbench_home() -> PathBuf {
    if let Some(h) = std::env::var_os("KVBENCH_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir().unwrap_or_else(|| PathBuf::from(".kvbench")).join("kvbench")
}

/// The sha256 of a file, as lowercase hex, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
