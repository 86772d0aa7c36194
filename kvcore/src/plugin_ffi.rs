//! External method plugins, host side: loads a `cdylib` that exported its methods with
//! `kvcache::export_plugin!()` (the C table and the plugin side are `kvcache::ffi`), checks the
//! handshake (ABI version, kvcache version, libtorch version) before touching anything else, and
//! wraps the plugin's factories and caches as ordinary [`CacheFactory`]/[`LayerCache`] objects.
//! Tensors cross as libtorch handles; no Rust type crosses.

use kvcache::cache::{AttentionStep, CacheFactory, CacheSpec, LayerCache};
pub use kvcache::ffi::{Handshake, ABI_VERSION};
use kvcache::ffi::{KvCacheSpecC, KvCacheStatsC, KvPluginVTable, KvStepC};
use kvcache::{DType, Error, MethodError, Result};
use kvformats::plugin_header::{self, HandshakeError};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::sync::Arc;
use tch::Tensor;
use torch_sys::C_tensor;

// =============================================================================================
// Host side

/// A method found in a loaded plugin.
pub struct ExternalMethod {
    pub name: String,
    pub family: String,
    pub summary: String,
    pub detail: String,
    pub params: Vec<(String, String, String)>,
    index: u32,
    vt: &'static KvPluginVTable,
}

// SAFETY: the table a method points to holds static strings and function pointers only, and
// the library is never unloaded.
unsafe impl Send for ExternalMethod {}
unsafe impl Sync for ExternalMethod {}

/// The bytes of a C string the plugin returned (None for null), without the NUL.
fn c_bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the plugin returns NUL-terminated strings that live as long as the library.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
}

fn c_str(p: *const c_char) -> String {
    plugin_header::c_text(c_bytes(p)).into_owned()
}

fn plugin_error(vt: &KvPluginVTable, what: &str) -> Error {
    Error::Other(format!("plugin {what}: {}", c_str((vt.last_error)())))
}

/// Opens `path`, checks the handshake against `host`, and lists its methods. The library is
/// never unloaded (unloading libraries that use libtorch is unsound). The checks and the parsing
/// of the method strings are `kvformats::plugin_header`'s (fuzzed there); this reads the C table.
pub fn load(path: &Path, host: &Handshake) -> std::result::Result<Vec<ExternalMethod>, MethodError> {
    let perr = |problem: String| MethodError::Plugin { path: path.to_path_buf(), problem };
    let herr = |e: HandshakeError| match e {
        HandshakeError::Incompatible { field, plugin, host } => MethodError::Incompatible { path: path.to_path_buf(), field, plugin, host },
        HandshakeError::Malformed(problem) => perr(problem),
    };
    let expected = plugin_header::Expected { abi_version: host.abi_version, kvcore_version: &host.kvcore_version, libtorch_version: &host.libtorch_version };
    if !path.is_file() {
        return Err(perr("no such file".into()));
    }
    // SAFETY: loading runs the library's initialisers; plugins are trusted code the user names.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| perr(format!("cannot load: {e}")))?;
    let vt: &'static KvPluginVTable = {
        // SAFETY: the symbol's type is fixed by this ABI; only the first field is read before the
        // version check below.
        let entry: libloading::Symbol<extern "C" fn() -> *const KvPluginVTable> =
            unsafe { lib.get(b"kvbench_plugin_entry\0") }.map_err(|e| perr(format!("not a kvbench plugin (no `kvbench_plugin_entry` symbol: {e})")))?;
        let p = entry();
        if p.is_null() {
            return Err(perr("kvbench_plugin_entry returned null".into()));
        }
        // SAFETY: abi_version is the first field of every ABI version's table.
        let abi = unsafe { *(p as *const u32) };
        plugin_header::check_abi(abi, &expected).map_err(herr)?;
        // SAFETY: same ABI version, so the layout is this one; the library is leaked below.
        unsafe { &*p }
    };
    let h = &vt.header;
    plugin_header::check_versions(c_bytes(h.kvcore_version), c_bytes(h.libtorch_version), h.n_methods, &expected).map_err(herr)?;
    std::mem::forget(lib);
    let mut methods = Vec::new();
    for i in 0..h.n_methods {
        let fields = [0, 1, 2, 3, 4].map(|f| c_bytes((vt.method_info)(i, f)));
        let m = plugin_header::method_info(i, fields).map_err(herr)?;
        methods.push(ExternalMethod { name: m.name, family: m.family, summary: m.summary, detail: m.detail, params: m.params, index: i, vt });
    }
    Ok(methods)
}

impl ExternalMethod {
    /// Builds the method's factory inside the plugin.
    pub fn build(&self, params: &toml::Table) -> std::result::Result<Arc<dyn CacheFactory>, MethodError> {
        let text = CString::new(toml::to_string(params).unwrap_or_default()).unwrap_or_default();
        let mut handle: *mut c_void = std::ptr::null_mut();
        let rc = (self.vt.create_factory)(self.index, text.as_ptr(), &mut handle);
        if rc != 0 || handle.is_null() {
            return Err(MethodError::Plugin { path: self.name.clone().into(), problem: c_str((self.vt.last_error)()) });
        }
        Ok(Arc::new(ExternalFactory { name: self.name.clone(), vt: self.vt, handle }))
    }
}

struct ExternalFactory {
    name: String,
    vt: &'static KvPluginVTable,
    handle: *mut c_void,
}

// SAFETY: the plugin's factory is `Send + Sync` on its side (CacheFactory requires it).
unsafe impl Send for ExternalFactory {}
unsafe impl Sync for ExternalFactory {}

impl Drop for ExternalFactory {
    fn drop(&mut self) {
        (self.vt.destroy_factory)(self.handle);
    }
}

impl CacheFactory for ExternalFactory {
    fn name(&self) -> &str {
        &self.name
    }
    fn layer_cache(&self, layer: usize, spec: &CacheSpec) -> Result<Box<dyn LayerCache>> {
        let c = KvCacheSpecC {
            batch: spec.batch as u32,
            kv_heads: spec.kv_heads as u32,
            head_dim: spec.head_dim as u32,
            query_heads: spec.query_heads as u32,
            num_layers: spec.num_layers as u32,
            kv_dtype: match spec.kv_dtype {
                DType::F32 => 0,
                DType::Bf16 => 1,
                DType::F16 => 2,
            },
            device: match spec.device {
                tch::Device::Cuda(i) => i as i32,
                _ => -1,
            },
            expected_tokens: spec.expected_tokens as u64,
            context_tokens: spec.context_tokens.map_or(-1, |t| t as i64),
        };
        let mut handle: *mut c_void = std::ptr::null_mut();
        if (self.vt.layer_cache)(self.handle, layer as u32, &c, &mut handle) != 0 || handle.is_null() {
            return Err(plugin_error(self.vt, &format!("method `{}`: layer_cache", self.name)));
        }
        Ok(Box::new(ExternalCache { name: self.name.clone(), vt: self.vt, handle }))
    }
}

struct ExternalCache {
    name: String,
    vt: &'static KvPluginVTable,
    handle: *mut c_void,
}

// SAFETY: the plugin's cache is `Send` on its side (LayerCache requires it).
unsafe impl Send for ExternalCache {}

impl Drop for ExternalCache {
    fn drop(&mut self) {
        (self.vt.destroy_cache)(self.handle);
    }
}

impl ExternalCache {
    fn stats(&self) -> KvCacheStatsC {
        let mut s = KvCacheStatsC::default();
        (self.vt.stats)(self.handle, &mut s);
        s
    }
}

impl LayerCache for ExternalCache {
    fn attend(&mut self, step: &AttentionStep<'_>) -> Result<Tensor> {
        let c = KvStepC {
            layer: step.layer as u32,
            q: step.q.as_ptr() as *mut C_tensor,
            k: step.k.as_ptr() as *mut C_tensor,
            v: step.v.as_ptr() as *mut C_tensor,
            start_pos: step.start_pos as u64,
            sliding_window: step.sliding_window.map_or(-1, |w| w as i64),
            scale: step.scale,
        };
        let mut out: *mut C_tensor = std::ptr::null_mut();
        if (self.vt.attend)(self.handle, &c, &mut out) != 0 || out.is_null() {
            return Err(plugin_error(self.vt, &format!("method `{}`: attend", self.name)));
        }
        // SAFETY: the plugin handed over ownership of a fresh handle.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
    fn stored_tokens(&self) -> usize {
        self.stats().stored_tokens as usize
    }
    fn bytes_held(&self) -> u64 {
        self.stats().bytes_held
    }
    fn bytes_allocated(&self) -> u64 {
        self.stats().bytes_allocated
    }
    fn bytes_offloaded(&self) -> u64 {
        self.stats().bytes_offloaded
    }
    fn budget_tokens(&self) -> Option<usize> {
        let b = self.stats().budget_tokens;
        if b < 0 {
            None
        } else {
            Some(b as usize)
        }
    }
    fn reset(&mut self) {
        (self.vt.reset)(self.handle);
    }
    fn end_prefill(&mut self) -> Result<()> {
        if (self.vt.end_prefill)(self.handle) != 0 {
            return Err(plugin_error(self.vt, &format!("method `{}`: end_prefill", self.name)));
        }
        Ok(())
    }
    fn kept_positions(&self) -> Vec<Vec<i64>> {
        let mut rows = Vec::new();
        for r in 0.. {
            let mut n = 0u64;
            if (self.vt.kept_positions)(self.handle, r, std::ptr::null_mut(), 0, &mut n) != 0 {
                break;
            }
            let mut buf = vec![0i64; n as usize];
            (self.vt.kept_positions)(self.handle, r, buf.as_mut_ptr(), n, &mut n);
            rows.push(buf);
        }
        rows
    }
    fn held_tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut out = Vec::new();
        for i in 0.. {
            let mut t: *mut C_tensor = std::ptr::null_mut();
            if (self.vt.held_tensor)(self.handle, i, &mut t) != 0 || t.is_null() {
                break;
            }
            // SAFETY: a fresh handle owned by us now.
            out.push(("plugin", unsafe { Tensor::from_ptr(t) }));
        }
        out
    }
}
