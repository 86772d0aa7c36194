//! The conformance suite every registered method runs (in-tree ones and the external template,
//! linked statically here): on a tiny random GQA model, through chunked prefill, `end_prefill`
//! and decoding, the budget is respected after every step, held bytes equal the tensors held,
//! kept positions are sane, logits are finite, runs are deterministic, and `ratio = 1` gives
//! logits bit-identical to the full cache. A cache-level check covers batch 2 and GQA shapes.

mod common;

use kvcore::cache::{tensor_bytes, AttentionStep, CacheFactory, CacheSpec, FullCacheFactory, LayerCache};
use kvcore::device::{DType, RuntimeSettings};
use kvcore::generate::{end_prefill, new_caches_for};
use kvcore::loader::{load, LoadedModel};
use kvcore::model::Logits;
use kvcore::registry::{parse_settings, Registry};
use kvcore::sources::ModelFiles;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

use kvplugin_baseline as _;
use kvplugin_example_external as _;
use kvplugin_h2o as _;
use kvplugin_knorm as _;
use kvplugin_quant as _;
use kvplugin_retrieval as _;
use kvplugin_snapkv as _;
use kvplugin_streamingllm as _;
use kvplugin_tova as _;

const EXPECTED: &[&str] = &["adakv", "example-recent", "flexgen", "full", "h2o", "infllm", "int4", "int8", "kivi", "knorm", "pyramidkv", "quest", "random", "snapkv", "streamingllm", "tova"];

/// Parameter sets each method runs with; the tiny model has head_dim 16, so quantizers use
/// groups of 8 and a short KIVI residual (so the 48-token prompt really gets quantized).
fn cases(name: &str, family: &str) -> Vec<Vec<&'static str>> {
    match (name, family) {
        ("full", _) => vec![vec![]],
        ("kivi", _) => vec![vec!["group_size=8", "residual_length=16"], vec!["bits=4", "group_size=8", "residual_length=8"]],
        ("flexgen", _) => vec![vec!["group_size=8"], vec!["group_size=8", "fake=true"], vec!["bits=2", "group_size=16"]],
        (_, "quant") => vec![vec![]],
        // Retrieval caches hold every token and attend to a budget; small blocks/pages so the
        // 48-token prompt forms blocks, retrieves among them and selects pages.
        ("infllm", _) => vec![
            vec![],
            vec!["ratio=4", "block_size=4", "n_init=2", "n_local=8", "topk=2", "repr_topk=2", "exc_block_size=4"],
            vec!["tokens=24", "block_size=4", "min_local=4", "exc_block_size=8", "shared_blocks=false"],
        ],
        ("quest", _) => vec![vec![], vec!["ratio=4", "page_size=4", "skip_layers=0"], vec!["tokens=10", "page_size=2", "skip_layers=1", "gqa=mean"]],
        _ => vec![vec![], vec!["ratio=4"], vec!["tokens=10"], vec!["ratio=3", "decode_evict=true", "decode_interval=3"]],
    }
}

/// Eviction methods whose survivors can be stored quantized, with the settings that allow it.
const COMPOSABLE: &[(&str, &[&str])] = &[
    ("random", &[]),
    ("snapkv", &[]),
    ("pyramidkv", &[]),
    ("knorm", &[]),
    ("tova", &["decode_evict=false"]),
    ("streamingllm", &["decode_evict=false"]),
    ("h2o", &["mode=prefill", "decode_evict=false"]),
];

fn tiny_model(dir: &std::path::Path) -> LoadedModel {
    let preset = kvcore::random_init::PRESETS.iter().find(|p| p.name == "tiny").copied().unwrap();
    let opts = kvcore::random_init::InitOptions {
        arch: kvcore::config::Architecture::Llama,
        preset,
        seed: 3,
        dtype: Kind::Float,
        tokenizer_gguf: common::smollm2_gguf(),
        sliding_window: None,
    };
    kvcore::random_init::write_random_model(&opts, dir).unwrap();
    load(&ModelFiles::HfDir(dir.to_path_buf()), RuntimeSettings { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 }).unwrap()
}

fn ids(n: usize) -> Vec<i64> {
    (0..n as i64).map(|i| (i * 37 + 11) % 1000 + 5).collect()
}

/// Checks every layer's invariants; `pos` is the number of tokens that went through.
fn check_caches(name: &str, caches: &[Box<dyn LayerCache>], pos: usize, when: &str) {
    for (l, c) in caches.iter().enumerate() {
        let rows = c.kept_positions();
        assert_eq!(rows.len(), 2, "{name} layer {l} {when}: one row per (batch, KV head)");
        for r in &rows {
            assert!(r.windows(2).all(|w| w[0] < w[1]), "{name} layer {l} {when}: positions not strictly ascending: {r:?}");
            assert!(r.iter().all(|&p| p >= 0 && (p as usize) < pos), "{name} layer {l} {when}: position out of range");
        }
        let held: usize = rows.iter().map(|r| r.len()).sum();
        assert_eq!(c.stored_tokens(), rows.iter().map(|r| r.len()).max().unwrap(), "{name} layer {l} {when}: stored_tokens");
        if let Some(b) = c.budget_tokens() {
            assert!(held <= b * rows.len(), "{name} layer {l} {when}: holds {held} tokens over {} rows, budget {b}", rows.len());
        }
        let tensors = c.held_tensors();
        let bytes: u64 = tensors.iter().map(|(_, t)| tensor_bytes(t)).sum();
        assert_eq!(c.bytes_held(), bytes, "{name} layer {l} {when}: bytes_held differs from the tensors held");
        let kv_tokens: i64 = tensors.iter().filter(|(n, _)| *n == "k").map(|(_, t)| t.size()[0] * t.size()[1] * t.size()[2]).sum();
        if tensors.iter().any(|(n, _)| *n == "k") {
            assert_eq!(kv_tokens as usize, held, "{name} layer {l} {when}: K tensors hold {kv_tokens} token slots, positions say {held}");
        }
        assert!(c.bytes_allocated() >= c.bytes_held(), "{name} layer {l} {when}: allocated < held");
    }
}

/// Chunked prefill of 48 tokens, end_prefill, 12 greedy decode steps; returns every logits row.
fn run(lm: &mut LoadedModel, name: &str, f: &dyn CacheFactory, check: bool) -> Vec<Tensor> {
    let _g = tch::no_grad_guard();
    let prompt = ids(48);
    let mut caches = new_caches_for(lm, f, 48 + 12, Some(48)).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    for chunk in prompt.chunks(16) {
        let x = Tensor::from_slice(chunk).unsqueeze(0);
        let l = lm.transformer_mut("test").unwrap().forward(&x, pos, &mut caches, Logits::All).unwrap();
        pos += chunk.len();
        out.push(l);
        if check {
            check_caches(name, &caches, pos, &format!("after prefill chunk ending at {pos}"));
        }
    }
    end_prefill(&mut caches).unwrap();
    if check {
        check_caches(name, &caches, pos, "after end_prefill");
    }
    let mut next = out.last().unwrap().get(0).get(-1).argmax(-1, false).int64_value(&[]);
    for step in 0..12 {
        let x = Tensor::from_slice(&[next]).unsqueeze(0);
        let l = lm.transformer_mut("test").unwrap().forward(&x, pos, &mut caches, Logits::Last).unwrap();
        pos += 1;
        next = l.argmax(-1, false).int64_value(&[0]);
        out.push(l);
        if check {
            check_caches(name, &caches, pos, &format!("after decode step {step}"));
        }
    }
    for l in &out {
        assert!(l.isfinite().all().int64_value(&[]) == 1, "{name}: non-finite logits");
    }
    out
}

fn settings(kv: &[&str]) -> toml::Table {
    parse_settings(&kv.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

#[test]
fn every_expected_method_is_registered() {
    let r = Registry::builtin().unwrap();
    let names = r.names();
    for e in EXPECTED {
        assert!(names.iter().any(|n| n == e), "method `{e}` is not registered (registered: {names:?})");
    }
}

#[test]
fn every_method_conforms_on_a_tiny_gqa_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lm = tiny_model(tmp.path());
    assert!(lm.transformer("test").unwrap().config.num_attention_heads > lm.transformer("test").unwrap().config.num_key_value_heads, "the tiny model must use GQA");
    let reg = Registry::builtin().unwrap();
    let full = run(&mut lm, "full", &FullCacheFactory, false);
    for m in reg.iter() {
        let name = m.name.as_str();
        for case in &cases(name, &m.family) {
            let label = format!("{name} {case:?}");
            let f = m.build(&settings(case)).unwrap_or_else(|e| panic!("{label}: {e}"));
            let a = run(&mut lm, &label, f.as_ref(), true);
            let b = run(&mut lm, &label, m.build(&settings(case)).unwrap().as_ref(), false);
            for (x, y) in a.iter().zip(&b) {
                assert!(x.equal(y), "{label}: two runs differ");
            }
        }
        if name != "full" && m.family != "quant" {
            // ratio = 1 is no compression: logits bit-identical to the full cache at every step.
            let f = m.build(&settings(&["ratio=1"])).unwrap();
            let one = run(&mut lm, &format!("{name} ratio=1"), f.as_ref(), true);
            for (i, (x, y)) in one.iter().zip(&full).enumerate() {
                assert!(x.equal(y), "{name}: ratio = 1 differs from full at step {i} (max diff {})", (x - y).abs().max().double_value(&[]));
            }
        }
        eprintln!("{name}: conforms");
    }
}

#[test]
fn eviction_with_quantized_storage_conforms() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lm = tiny_model(tmp.path());
    let reg = Registry::builtin().unwrap();
    for (name, extra) in COMPOSABLE {
        for storage in ["storage={method=\"kivi\", group_size=8, residual_length=8}", "storage={method=\"int4\"}"] {
            let mut case = vec!["ratio=4", storage];
            case.extend(extra.iter().copied());
            let label = format!("{name} {case:?}");
            let f = reg.build(name, &settings(&case)).unwrap_or_else(|e| panic!("{label}: {e}"));
            let a = run(&mut lm, &label, f.as_ref(), true);
            let b = run(&mut lm, &label, reg.build(name, &settings(&case)).unwrap().as_ref(), false);
            for (x, y) in a.iter().zip(&b) {
                assert!(x.equal(y), "{label}: two runs differ");
            }
            eprintln!("{label}: conforms");
        }
    }
}

#[test]
fn batch_and_gqa_shapes_at_the_cache_level() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(7);
    let spec = CacheSpec { batch: 2, kv_heads: 2, head_dim: 8, kv_dtype: DType::F32, device: Device::Cpu, expected_tokens: 40, query_heads: 6, num_layers: 2, context_tokens: Some(32) };
    let reg = Registry::builtin().unwrap();
    for m in reg.iter() {
        let quant: Vec<Vec<&str>> = match m.name.as_str() {
            "kivi" => vec![vec!["group_size=8", "residual_length=8"]],
            "flexgen" => vec![vec!["group_size=8"]],
            _ => vec![vec![]],
        };
        let eviction = vec![vec!["ratio=1"], vec!["ratio=4"]];
        for case in if m.family == "quant" { quant } else { eviction } {
            if m.name == "full" && case.first() != Some(&"ratio=1") {
                continue;
            }
            let f: Arc<dyn CacheFactory> = if m.name == "full" { Arc::new(FullCacheFactory) } else { m.build(&settings(&case)).unwrap() };
            let mut c = f.layer_cache(1, &spec).unwrap();
            let mut full = FullCacheFactory.layer_cache(1, &spec).unwrap();
            let mut pos = 0;
            for l in [16usize, 16, 1, 1, 1] {
                let q = Tensor::randn([2, 6, l as i64, 8], (Kind::Float, Device::Cpu));
                let k = Tensor::randn([2, 2, l as i64, 8], (Kind::Float, Device::Cpu));
                let v = Tensor::randn([2, 2, l as i64, 8], (Kind::Float, Device::Cpu));
                let step = AttentionStep { layer: 1, q: &q, k: &k, v: &v, start_pos: pos, sliding_window: None, scale: 8f64.powf(-0.5) };
                let o = c.attend(&step).unwrap();
                let of = full.attend(&step).unwrap();
                assert_eq!(o.size(), vec![2, 6, l as i64, 8], "{} {case:?}: output shape", m.name);
                if case.first() == Some(&"ratio=1") {
                    assert!(o.equal(&of), "{} ratio=1: batch-2 output differs from full", m.name);
                }
                pos += l;
                if pos == 32 {
                    c.end_prefill().unwrap();
                }
                assert_eq!(c.kept_positions().len(), 4, "{}: rows for batch 2 x 2 KV heads", m.name);
            }
        }
    }
}
