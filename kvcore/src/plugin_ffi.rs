//! External method plugins: a `cdylib` exports one C symbol, `kvbench_plugin_entry`, returning a
//! table of `extern "C"` functions whose first field is a handshake made of C types only (plugin
//! ABI version, kvcore version, libtorch version). The host refuses a mismatch before touching
//! anything else. Tensors cross as libtorch handles (`*mut C_tensor`), which is sound because both
//! sides call into the same loaded libtorch; no Rust type crosses. Every plugin-side function
//! catches panics and reports them through `last_error`, so a panic never unwinds into the host.
//!
//! A plugin crate registers its methods exactly like an in-tree family crate (with
//! `inventory::submit!`) and adds `kvcore::export_plugin!();` — see `plugins/example-external`.

use crate::cache::{AttentionStep, CacheFactory, CacheSpec, LayerCache};
use crate::device::DType;
use crate::error::{Error, Result};
use crate::registry::{MethodError, MethodRegistration};
use kvformats::plugin_header::{self, HandshakeError};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tch::Tensor;
use torch_sys::C_tensor;

/// Version of the table layout below; bump on any change to it.
pub const ABI_VERSION: u32 = 1;
const KVCORE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
const LIBTORCH_VERSION: &str = concat!(env!("KVCORE_LIBTORCH_VERSION"), "\0");

/// The handshake, first in the table.
#[repr(C)]
pub struct KvPluginHeader {
    pub abi_version: u32,
    pub n_methods: u32,
    pub kvcore_version: *const c_char,
    pub libtorch_version: *const c_char,
}

/// A cache spec in C types. `device`: -1 CPU, n ≥ 0 CUDA n; `kv_dtype`: 0 f32, 1 bf16, 2 f16;
/// `context_tokens`: -1 unknown.
#[repr(C)]
pub struct KvCacheSpecC {
    pub batch: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub query_heads: u32,
    pub num_layers: u32,
    pub kv_dtype: i32,
    pub device: i32,
    pub expected_tokens: u64,
    pub context_tokens: i64,
}

/// An attention step in C types; `sliding_window`: -1 none.
#[repr(C)]
pub struct KvStepC {
    pub layer: u32,
    pub q: *mut C_tensor,
    pub k: *mut C_tensor,
    pub v: *mut C_tensor,
    pub start_pos: u64,
    pub sliding_window: i64,
    pub scale: f64,
}

/// A cache's counters in C types; `budget_tokens`: -1 unbounded.
#[repr(C)]
#[derive(Default)]
pub struct KvCacheStatsC {
    pub stored_tokens: u64,
    pub bytes_held: u64,
    pub bytes_allocated: u64,
    pub bytes_offloaded: u64,
    pub budget_tokens: i64,
}

/// The function table a plugin exports. Return codes: 0 ok, 1 "no such item", -1 error (message
/// from `last_error`).
#[repr(C)]
pub struct KvPluginVTable {
    pub header: KvPluginHeader,
    /// Method `i`'s field: 0 name, 1 family, 2 summary, 3 detail, 4 parameters (one per line,
    /// `name\tdefault\thelp`). Null when out of range.
    pub method_info: extern "C" fn(u32, u32) -> *const c_char,
    pub create_factory: extern "C" fn(u32, *const c_char, *mut *mut c_void) -> i32,
    pub destroy_factory: extern "C" fn(*mut c_void),
    pub layer_cache: extern "C" fn(*mut c_void, u32, *const KvCacheSpecC, *mut *mut c_void) -> i32,
    pub destroy_cache: extern "C" fn(*mut c_void),
    pub attend: extern "C" fn(*mut c_void, *const KvStepC, *mut *mut C_tensor) -> i32,
    pub end_prefill: extern "C" fn(*mut c_void) -> i32,
    pub reset: extern "C" fn(*mut c_void) -> i32,
    pub stats: extern "C" fn(*mut c_void, *mut KvCacheStatsC) -> i32,
    /// Positions of row `r` (batch·head) into `out[..cap]`; `*n` receives the row's length.
    pub kept_positions: extern "C" fn(*mut c_void, u32, *mut i64, u64, *mut u64) -> i32,
    /// The `i`-th held tensor (a new handle), or 1 past the end.
    pub held_tensor: extern "C" fn(*mut c_void, u32, *mut *mut C_tensor) -> i32,
    pub last_error: extern "C" fn() -> *const c_char,
}

/// What the host expects of a plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub abi_version: u32,
    pub kvcore_version: String,
    pub libtorch_version: String,
}

impl Handshake {
    /// This build's values.
    pub fn host() -> Self {
        Handshake {
            abi_version: ABI_VERSION,
            kvcore_version: KVCORE_VERSION.trim_end_matches('\0').to_string(),
            libtorch_version: LIBTORCH_VERSION.trim_end_matches('\0').to_string(),
        }
    }
}

// =============================================================================================
// Plugin side

/// Exports the plugin entry point of a `cdylib` whose crate submits `MethodRegistration`s.
#[macro_export]
macro_rules! export_plugin {
    () => {
        /// The kvbench plugin entry point (see `kvcore::plugin_ffi`).
        #[no_mangle]
        pub extern "C" fn kvbench_plugin_entry() -> *const $crate::plugin_ffi::KvPluginVTable {
            $crate::plugin_ffi::plugin_vtable()
        }
    };
}

thread_local! {
    static LAST_ERROR: std::cell::RefCell<CString> = std::cell::RefCell::new(CString::default());
}

fn set_error(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning errors and panics into -1 plus a message.
fn guard(f: impl FnOnce() -> std::result::Result<i32, String>) -> i32 {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(code)) => code,
        Ok(Err(msg)) => {
            set_error(msg);
            -1
        }
        Err(p) => {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into());
            set_error(format!("panic in plugin: {msg}"));
            -1
        }
    }
}

struct PluginMethods {
    regs: Vec<&'static MethodRegistration>,
    strings: Vec<[CString; 5]>,
}

fn plugin_methods() -> &'static PluginMethods {
    static M: OnceLock<PluginMethods> = OnceLock::new();
    M.get_or_init(|| {
        let mut regs: Vec<&'static MethodRegistration> = inventory::iter::<MethodRegistration>.into_iter().collect();
        regs.sort_by_key(|r| r.name);
        let c = |s: &str| CString::new(s.replace('\0', " ")).unwrap_or_default();
        let strings = regs
            .iter()
            .map(|r| {
                let params: Vec<String> = r.params.iter().map(|p| format!("{}\t{}\t{}", p.name, p.default, p.help.replace(['\t', '\n'], " "))).collect();
                [c(r.name), c(r.family), c(r.summary), c(r.detail), c(&params.join("\n"))]
            })
            .collect();
        PluginMethods { regs, strings }
    })
}

extern "C" fn p_method_info(i: u32, field: u32) -> *const c_char {
    let m = plugin_methods();
    match m.strings.get(i as usize).and_then(|s| s.get(field as usize)) {
        Some(s) => s.as_ptr(),
        None => std::ptr::null(),
    }
}

extern "C" fn p_create_factory(i: u32, params: *const c_char, out: *mut *mut c_void) -> i32 {
    guard(|| {
        let reg = plugin_methods().regs.get(i as usize).ok_or("no such method")?;
        if params.is_null() || out.is_null() {
            return Err("null argument".into());
        }
        // SAFETY: the host passes a NUL-terminated string it owns for the duration of the call.
        let text = unsafe { CStr::from_ptr(params) }.to_str().map_err(|e| e.to_string())?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let f = (reg.build)(&table).map_err(|e| e.to_string())?;
        // SAFETY: `out` is a valid pointer from the host.
        unsafe { *out = Box::into_raw(Box::new(f)) as *mut c_void };
        Ok(0)
    })
}

extern "C" fn p_destroy_factory(f: *mut c_void) {
    if !f.is_null() {
        guard(|| {
            // SAFETY: created by p_create_factory, destroyed once by the host.
            drop(unsafe { Box::from_raw(f as *mut Arc<dyn CacheFactory>) });
            Ok(0)
        });
    }
}

fn spec_from_c(s: &KvCacheSpecC) -> std::result::Result<CacheSpec, String> {
    let kv_dtype = match s.kv_dtype {
        0 => DType::F32,
        1 => DType::Bf16,
        2 => DType::F16,
        d => return Err(format!("unknown dtype code {d}")),
    };
    let device = if s.device < 0 { tch::Device::Cpu } else { tch::Device::Cuda(s.device as usize) };
    Ok(CacheSpec {
        batch: s.batch as usize,
        kv_heads: s.kv_heads as usize,
        head_dim: s.head_dim as usize,
        kv_dtype,
        device,
        expected_tokens: s.expected_tokens as usize,
        query_heads: s.query_heads as usize,
        num_layers: s.num_layers as usize,
        context_tokens: if s.context_tokens < 0 { None } else { Some(s.context_tokens as usize) },
    })
}

extern "C" fn p_layer_cache(f: *mut c_void, layer: u32, spec: *const KvCacheSpecC, out: *mut *mut c_void) -> i32 {
    guard(|| {
        if f.is_null() || spec.is_null() || out.is_null() {
            return Err("null argument".into());
        }
        // SAFETY: pointers come from this plugin (f) and the host (spec, out), valid for the call.
        let (f, spec) = unsafe { (&*(f as *const Arc<dyn CacheFactory>), &*spec) };
        let cache = f.layer_cache(layer as usize, &spec_from_c(spec)?).map_err(|e| e.to_string())?;
        unsafe { *out = Box::into_raw(Box::new(cache)) as *mut c_void };
        Ok(0)
    })
}

extern "C" fn p_destroy_cache(c: *mut c_void) {
    if !c.is_null() {
        guard(|| {
            // SAFETY: created by p_layer_cache, destroyed once by the host.
            drop(unsafe { Box::from_raw(c as *mut Box<dyn LayerCache>) });
            Ok(0)
        });
    }
}

fn cache<'a>(c: *mut c_void) -> std::result::Result<&'a mut Box<dyn LayerCache>, String> {
    if c.is_null() {
        return Err("null cache".into());
    }
    // SAFETY: created by p_layer_cache; the host uses a cache from one thread at a time.
    Ok(unsafe { &mut *(c as *mut Box<dyn LayerCache>) })
}

extern "C" fn p_attend(c: *mut c_void, step: *const KvStepC, out: *mut *mut C_tensor) -> i32 {
    guard(|| {
        let cache = cache(c)?;
        if step.is_null() || out.is_null() {
            return Err("null argument".into());
        }
        // SAFETY: the host passes live tensor handles; clone_from_ptr takes a new reference.
        let s = unsafe { &*step };
        let (q, k, v) = unsafe { (Tensor::clone_from_ptr(s.q), Tensor::clone_from_ptr(s.k), Tensor::clone_from_ptr(s.v)) };
        let st = AttentionStep {
            layer: s.layer as usize,
            q: &q,
            k: &k,
            v: &v,
            start_pos: s.start_pos as usize,
            sliding_window: if s.sliding_window < 0 { None } else { Some(s.sliding_window as usize) },
            scale: s.scale,
        };
        let _guard = tch::no_grad_guard();
        let r = cache.attend(&st).map_err(|e| e.to_string())?;
        let mut r = std::mem::ManuallyDrop::new(r);
        // SAFETY: ownership of the handle passes to the host, which frees it.
        unsafe { *out = r.as_mut_ptr() };
        Ok(0)
    })
}

extern "C" fn p_end_prefill(c: *mut c_void) -> i32 {
    guard(|| cache(c)?.end_prefill().map(|_| 0).map_err(|e| e.to_string()))
}

extern "C" fn p_reset(c: *mut c_void) -> i32 {
    guard(|| {
        cache(c)?.reset();
        Ok(0)
    })
}

extern "C" fn p_stats(c: *mut c_void, out: *mut KvCacheStatsC) -> i32 {
    guard(|| {
        let cache = cache(c)?;
        if out.is_null() {
            return Err("null argument".into());
        }
        let s = KvCacheStatsC {
            stored_tokens: cache.stored_tokens() as u64,
            bytes_held: cache.bytes_held(),
            bytes_allocated: cache.bytes_allocated(),
            bytes_offloaded: cache.bytes_offloaded(),
            budget_tokens: cache.budget_tokens().map_or(-1, |b| b as i64),
        };
        // SAFETY: valid pointer from the host.
        unsafe { *out = s };
        Ok(0)
    })
}

extern "C" fn p_kept_positions(c: *mut c_void, row: u32, out: *mut i64, cap: u64, n: *mut u64) -> i32 {
    guard(|| {
        let cache = cache(c)?;
        let rows = cache.kept_positions();
        let Some(r) = rows.get(row as usize) else { return Ok(1) };
        if n.is_null() {
            return Err("null argument".into());
        }
        // SAFETY: `out` holds `cap` slots (host contract); `n` is valid.
        unsafe {
            *n = r.len() as u64;
            if !out.is_null() {
                for (i, &p) in r.iter().take(cap as usize).enumerate() {
                    *out.add(i) = p;
                }
            }
        }
        Ok(0)
    })
}

extern "C" fn p_held_tensor(c: *mut c_void, i: u32, out: *mut *mut C_tensor) -> i32 {
    guard(|| {
        let cache = cache(c)?;
        let Some((_, t)) = cache.held_tensors().into_iter().nth(i as usize) else { return Ok(1) };
        let mut t = std::mem::ManuallyDrop::new(t);
        // SAFETY: ownership of the new handle passes to the host.
        unsafe { *out = t.as_mut_ptr() };
        Ok(0)
    })
}

extern "C" fn p_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The table [`export_plugin!`] returns (built over this library's own registrations).
pub fn plugin_vtable() -> *const KvPluginVTable {
    static VT: OnceLock<VTableBox> = OnceLock::new();
    let vt = VT.get_or_init(|| {
        VTableBox(KvPluginVTable {
            header: KvPluginHeader {
                abi_version: ABI_VERSION,
                n_methods: plugin_methods().regs.len() as u32,
                kvcore_version: KVCORE_VERSION.as_ptr() as *const c_char,
                libtorch_version: LIBTORCH_VERSION.as_ptr() as *const c_char,
            },
            method_info: p_method_info,
            create_factory: p_create_factory,
            destroy_factory: p_destroy_factory,
            layer_cache: p_layer_cache,
            destroy_cache: p_destroy_cache,
            attend: p_attend,
            end_prefill: p_end_prefill,
            reset: p_reset,
            stats: p_stats,
            kept_positions: p_kept_positions,
            held_tensor: p_held_tensor,
            last_error: p_last_error,
        })
    });
    &vt.0
}

struct VTableBox(KvPluginVTable);
// SAFETY: the table holds static strings and function pointers only.
unsafe impl Sync for VTableBox {}
unsafe impl Send for VTableBox {}

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
    let expected = plugin_header::Expected {
        abi_version: host.abi_version,
        kvcore_version: &host.kvcore_version,
        libtorch_version: &host.libtorch_version,
    };
    if !path.is_file() {
        return Err(perr("no such file".into()));
    }
    // SAFETY: loading runs the library's initialisers; plugins are trusted code the user names.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| perr(format!("cannot load: {e}")))?;
    let vt: &'static KvPluginVTable = {
        // SAFETY: the symbol's type is fixed by this ABI; only the first field is read before the
        // version check below.
        let entry: libloading::Symbol<extern "C" fn() -> *const KvPluginVTable> = unsafe { lib.get(b"kvbench_plugin_entry\0") }
            .map_err(|e| perr(format!("not a kvbench plugin (no `kvbench_plugin_entry` symbol: {e})")))?;
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
        if b < 0 { None } else { Some(b as usize) }
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
