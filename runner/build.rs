//! Makes the kvbench binary and its tests (and kvexperiment's, which builds with this file) find libtorch at run time and link libtorch_cuda.
//!
//! torch-sys does not give the final link an rpath, and `--as-needed` drops `libtorch_cuda.so`
//! (so CUDA silently looks unavailable). `DEP_TCH_LIBTORCH_LIB` reaches only packages that depend
//! directly on torch-sys, which is why this crate lists it.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // Canonical path: torch's own libraries find the nvidia wheels through $ORIGIN/../../nvidia,
        // which only works from the real site-packages directory, not through the .venv/libtorch link.
        let dir = std::fs::canonicalize(&dir).map(|p| p.display().to_string()).unwrap_or(dir);
        println!("cargo:rustc-link-arg=-Wl,-rpath={dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
