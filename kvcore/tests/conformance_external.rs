//! External plugins through the C ABI: the `plugins/example-external` cdylib (built by cargo as
//! a dev-dependency of kvcore) loads, its method computes exactly what the statically linked copy
//! computes, a version mismatch is refused with a message naming the field, and a panic inside the
//! plugin comes back as an error.

use kvcore::cache::{AttentionStep, CacheSpec};
use kvcore::device::DType;
use kvcore::plugin_ffi::Handshake;
use kvcore::registry::{parse_settings, MethodError, Registry};
use tch::{Device, Kind, Tensor};

use kvplugin_example_external as _;

fn plugin_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps.to_path_buf(), deps.parent().unwrap().to_path_buf()] {
        let p = dir.join("libkvplugin_example_external.so");
        if p.is_file() {
            return p;
        }
    }
    panic!("libkvplugin_example_external.so not found next to {}: build the workspace (cargo test --workspace builds it)", exe.display());
}

#[test]
fn external_plugin_loads_and_matches_the_static_copy() {
    let _g = tch::no_grad_guard();
    let path = plugin_path();
    let mut external = Registry::default();
    let names = external.load_plugin(&path).unwrap();
    assert_eq!(names, vec!["example-recent".to_string()]);
    let builtin = Registry::builtin().unwrap();
    let params = parse_settings(&["ratio=4".into()]).unwrap();
    let fe = external.build("example-recent", &params).unwrap();
    let fs = builtin.build("example-recent", &params).unwrap();
    let spec = CacheSpec {
        batch: 1,
        kv_heads: 2,
        head_dim: 8,
        kv_dtype: DType::F32,
        device: Device::Cpu,
        expected_tokens: 40,
        query_heads: 4,
        num_layers: 1,
        context_tokens: Some(32),
        rope: None,
    };
    let (mut ce, mut cs) = (fe.layer_cache(0, &spec).unwrap(), fs.layer_cache(0, &spec).unwrap());
    tch::manual_seed(1);
    let mut pos = 0;
    for l in [32usize, 1, 1, 1] {
        let q = Tensor::randn([1, 4, l as i64, 8], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([1, 2, l as i64, 8], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([1, 2, l as i64, 8], (Kind::Float, Device::Cpu));
        let step = AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: pos, sliding_window: None, scale: 0.35 };
        let (oe, os) = (ce.attend(&step).unwrap(), cs.attend(&step).unwrap());
        assert!(oe.equal(&os), "plugin output differs from the static copy at position {pos}");
        pos += l;
        if pos == 32 {
            ce.end_prefill().unwrap();
            cs.end_prefill().unwrap();
        }
        assert_eq!(ce.kept_positions(), cs.kept_positions());
        assert_eq!(ce.bytes_held(), cs.bytes_held());
        assert_eq!(ce.budget_tokens(), cs.budget_tokens());
        let held: u64 = ce.held_tensors().iter().map(|(_, t)| kvcore::cache::tensor_bytes(t)).sum();
        assert_eq!(held, ce.bytes_held());
    }
    // ratio 4 of 32 context tokens, sliding while decoding: the newest 8.
    assert_eq!(ce.kept_positions()[0], (27..35).collect::<Vec<i64>>());
}

#[test]
fn mismatched_versions_are_refused_with_a_clear_message() {
    let path = plugin_path();
    let host = Handshake::host();
    for (field, hs) in [
        ("kvcore version", Handshake { kvcore_version: "0.0.0-other".into(), ..host.clone() }),
        ("libtorch version", Handshake { libtorch_version: "1.0.0".into(), ..host.clone() }),
        ("plugin ABI version", Handshake { abi_version: host.abi_version + 1, ..host.clone() }),
    ] {
        let err = Registry::default().load_plugin_checked(&path, &hs).unwrap_err();
        assert!(matches!(err, MethodError::Incompatible { .. }), "{field}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(field) && msg.contains("rebuild the plugin"), "{msg}");
        eprintln!("{msg}");
    }
    let err = Registry::default().load_plugin(std::path::Path::new("/nonexistent/libx.so")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/libx.so"));
}

#[test]
fn a_panic_inside_the_plugin_becomes_an_error() {
    let mut r = Registry::default();
    r.load_plugin(&plugin_path()).unwrap();
    let err = r.build("example-recent", &parse_settings(&["panic=true".into()]).unwrap()).err().expect("must fail");
    assert!(err.to_string().contains("asked to panic"), "{err}");
    let err = r.build("example-recent", &parse_settings(&["ratio=0".into()]).unwrap()).err().expect("must fail");
    assert!(err.to_string().contains("ratio"), "{err}");
}
