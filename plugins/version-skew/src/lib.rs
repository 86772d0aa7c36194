//! A plugin library as kvbench 0.0.1 would have built it: same C table layout (ABI version 1),
//! but its handshake names kvcore `0.0.1`. It links neither kvcore nor libtorch, so it can be built
//! alongside the current kvcore; the host must refuse it by reading the handshake alone, with a
//! message naming the field and both versions, and must never call into its table.
//!
//! Every function in the table fails with a message saying it should not have been called, so a
//! host that skipped the check would fail loudly in the test rather than pass by accident.

use std::ffi::{c_char, c_void};

/// The handshake (layout of `kvcore::plugin_ffi::KvPluginHeader`).
#[repr(C)]
pub struct Header {
    pub abi_version: u32,
    pub n_methods: u32,
    pub kvcore_version: *const c_char,
    pub libtorch_version: *const c_char,
}

type Opaque = *mut c_void;

/// The function table (layout of `kvcore::plugin_ffi::KvPluginVTable`, ABI version 1).
#[repr(C)]
pub struct VTable {
    pub header: Header,
    pub method_info: extern "C" fn(u32, u32) -> *const c_char,
    pub create_factory: extern "C" fn(u32, *const c_char, *mut Opaque) -> i32,
    pub destroy_factory: extern "C" fn(Opaque),
    pub layer_cache: extern "C" fn(Opaque, u32, *const c_void, *mut Opaque) -> i32,
    pub destroy_cache: extern "C" fn(Opaque),
    pub attend: extern "C" fn(Opaque, *const c_void, *mut Opaque) -> i32,
    pub end_prefill: extern "C" fn(Opaque) -> i32,
    pub reset: extern "C" fn(Opaque) -> i32,
    pub stats: extern "C" fn(Opaque, *mut c_void) -> i32,
    pub kept_positions: extern "C" fn(Opaque, u32, *mut i64, u64, *mut u64) -> i32,
    pub held_tensor: extern "C" fn(Opaque, u32, *mut Opaque) -> i32,
    pub last_error: extern "C" fn() -> *const c_char,
}

// SAFETY: the table holds only pointers to static strings and functions.
unsafe impl Sync for VTable {}

/// The kvcore release this fixture claims to be built against.
pub const CLAIMED_KVCORE_VERSION: &str = "0.0.1";

const NOT_CALLED: &[u8] = b"version-skew fixture: the host called into a plugin it should have refused\0";

extern "C" fn method_info(_: u32, _: u32) -> *const c_char {
    NOT_CALLED.as_ptr().cast()
}
extern "C" fn create_factory(_: u32, _: *const c_char, _: *mut Opaque) -> i32 {
    -1
}
extern "C" fn destroy(_: Opaque) {}
extern "C" fn layer_cache(_: Opaque, _: u32, _: *const c_void, _: *mut Opaque) -> i32 {
    -1
}
extern "C" fn attend(_: Opaque, _: *const c_void, _: *mut Opaque) -> i32 {
    -1
}
extern "C" fn one(_: Opaque) -> i32 {
    -1
}
extern "C" fn stats(_: Opaque, _: *mut c_void) -> i32 {
    -1
}
extern "C" fn kept_positions(_: Opaque, _: u32, _: *mut i64, _: u64, _: *mut u64) -> i32 {
    -1
}
extern "C" fn held_tensor(_: Opaque, _: u32, _: *mut Opaque) -> i32 {
    -1
}
extern "C" fn last_error() -> *const c_char {
    NOT_CALLED.as_ptr().cast()
}

static TABLE: VTable = VTable {
    header: Header { abi_version: 1, n_methods: 1, kvcore_version: c"0.0.1".as_ptr(), libtorch_version: c"2.13.0".as_ptr() },
    method_info,
    create_factory,
    destroy_factory: destroy,
    layer_cache,
    destroy_cache: destroy,
    attend,
    end_prefill: one,
    reset: one,
    stats,
    kept_positions,
    held_tensor,
    last_error,
};

/// The entry point every kvbench plugin exports.
#[no_mangle]
pub extern "C" fn kvbench_plugin_entry() -> *const VTable {
    &TABLE
}
