//! The C interface of external method plugins, plugin side: a `cdylib` exports one C symbol,
//! `kvbench_plugin_entry` (written by [`export_plugin!`]), returning a table of `extern "C"`
//! functions whose first field is a handshake made of C types only (plugin ABI version, kvcache
//! version, libtorch version). The host (the engine's plugin loader) refuses a mismatch before
//! touching anything else. Tensors cross as libtorch handles (`*mut C_tensor`), which is sound
//! because both sides call into the same loaded libtorch; no Rust type crosses. Every function
//! here catches panics and reports them through `last_error`, so a panic never unwinds into the
//! host.

use crate::cache::{AttentionStep, CacheFactory, CacheSpec, LayerCache};
use crate::dtype::DType;
use crate::registration::{registrations, MethodRegistration};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::{Arc, OnceLock};
use tch::Tensor;
use torch_sys::C_tensor;

/// Version of the table layout below; bump on any change to it.
pub const ABI_VERSION: u32 = 1;
pub const API_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
pub const LIBTORCH_VERSION: &str = concat!(env!("KVCACHE_LIBTORCH_VERSION"), "\0");

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
            kvcore_version: API_VERSION.trim_end_matches('\0').to_string(),
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
        pub extern "C" fn kvbench_plugin_entry() -> *const $crate::ffi::KvPluginVTable {
            $crate::ffi::plugin_vtable()
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
        let regs: Vec<&'static MethodRegistration> = registrations();
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
        // Not carried by the C interface (version 1): external methods see no RoPE.
        rope: None,
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
                kvcore_version: API_VERSION.as_ptr() as *const c_char,
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
