//! Gives kvcache's own test binary an rpath to libtorch (and links libtorch_cuda), and records
//! the libtorch version that the plugin handshake carries (`KVCACHE_LIBTORCH_VERSION`, read from
//! `torch/version.py` next to `torch/lib`).
//!
//! torch-sys does not give the final link an rpath, and `--as-needed` drops `libtorch_cuda.so`.
//! `DEP_TCH_LIBTORCH_LIB` reaches only packages that depend directly on torch-sys, which is why
//! kvcache lists it.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // Canonical path: torch's own libraries find the nvidia wheels through $ORIGIN/../../nvidia,
        // which only works from the real site-packages directory, not through the .venv/libtorch link.
        let dir = std::fs::canonicalize(&dir).map(|p| p.display().to_string()).unwrap_or(dir);
        println!("cargo:rustc-link-arg=-Wl,-rpath={dir}");
        // The libtorch version, for the external-plugin handshake (plugin_ffi): torch/version.py
        // sits next to torch/lib.
        let version_py = std::path::Path::new(&dir).join("../version.py");
        println!("cargo:rerun-if-changed={}", version_py.display());
        let version = std::fs::read_to_string(&version_py)
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim().trim_matches('\'').to_string())))
            .unwrap_or_else(|| "unknown".into());
        println!("cargo:rustc-env=KVCACHE_LIBTORCH_VERSION={version}");
    } else {
        println!("cargo:rustc-env=KVCACHE_LIBTORCH_VERSION=unknown");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
