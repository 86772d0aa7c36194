//! The full cache's storage behaviour: appends never copy the whole cache per token (capacity
//! grows geometrically), held bytes are exact, sliding-window layers stay bounded, and attention
//! over the cache equals a hand-written softmax(QKᵀ)V with the causal/window mask.

use kvcore::cache::{causal_window_mask, AttentionStep, CacheSpec, FullCache, LayerCache};
use kvcore::device::DType;
use tch::{Device, Kind, Tensor};

fn spec(expected: usize) -> CacheSpec {
    CacheSpec {
        batch: 1,
        kv_heads: 2,
        query_heads: 4,
        num_layers: 1,
        head_dim: 8,
        kv_dtype: DType::F32,
        device: Device::Cpu,
        expected_tokens: expected,
        context_tokens: None,
        rope: None,
    }
}

fn step<'a>(q: &'a Tensor, k: &'a Tensor, v: &'a Tensor, start: usize, window: Option<usize>) -> AttentionStep<'a> {
    AttentionStep { layer: 0, q, k, v, start_pos: start, sliding_window: window, scale: 1.0 / 8f64.sqrt() }
}

/// softmax(QKᵀ·scale + mask)·V with K/V repeated per query head: the textbook definition.
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, q_start: usize, k_start: usize, window: Option<usize>) -> Tensor {
    let (l, s) = (q.size()[2] as usize, k.size()[2] as usize);
    let group = q.size()[1] / k.size()[1];
    let k = k.repeat_interleave_self_int(group, 1, None);
    let v = v.repeat_interleave_self_int(group, 1, None);
    let mask = causal_window_mask(q_start, l, k_start, s, window, Device::Cpu);
    let scores = q.matmul(&k.transpose(-1, -2)) / 8f64.sqrt();
    let scores = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    scores.softmax(-1, Kind::Float).matmul(&v)
}

#[test]
fn token_by_token_growth_is_geometric_and_bytes_are_exact() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let mut cache = FullCache::new(spec(1));
    let mut capacities = std::collections::BTreeSet::new();
    for pos in 0..1000usize {
        let q = Tensor::randn([1, 4, 1, 8], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([1, 2, 1, 8], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([1, 2, 1, 8], (Kind::Float, Device::Cpu));
        let _ = cache.attend(&step(&q, &k, &v, pos, None)).unwrap();
        assert_eq!(cache.stored_tokens(), pos + 1);
        assert_eq!(cache.bytes_held(), (2 * 2 * 8 * 4 * (pos + 1)) as u64);
        assert!(cache.bytes_allocated() >= cache.bytes_held());
        capacities.insert(cache.bytes_allocated());
    }
    // Doubling from 1 token to 1000: at most ~11 distinct allocations, not one per token.
    assert!(capacities.len() <= 12, "{} reallocations for 1000 appends", capacities.len());
}

#[test]
fn attention_matches_the_textbook_definition_for_prefill_chunks_and_decode() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(1);
    for window in [None, Some(5)] {
        let mut cache = FullCache::new(spec(64));
        let n = 40usize;
        let q_all = Tensor::randn([1, 4, n as i64, 8], (Kind::Float, Device::Cpu));
        let k_all = Tensor::randn([1, 2, n as i64, 8], (Kind::Float, Device::Cpu));
        let v_all = Tensor::randn([1, 2, n as i64, 8], (Kind::Float, Device::Cpu));
        let expected = reference(&q_all, &k_all, &v_all, 0, 0, window);
        let mut pos = 0usize;
        for len in [16usize, 7, 1, 1, 10, 1, 1, 1, 1, 1] {
            let (q, k, v) = (q_all.narrow(2, pos as i64, len as i64), k_all.narrow(2, pos as i64, len as i64), v_all.narrow(2, pos as i64, len as i64));
            let out = cache.attend(&step(&q, &k, &v, pos, window)).unwrap();
            let diff = (&out - expected.narrow(2, pos as i64, len as i64)).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "window {window:?}, chunk at {pos}+{len}: diff {diff}");
            pos += len;
        }
        assert_eq!(pos, n);
        if let Some(w) = window {
            // Old tokens are dropped: at most about two windows are ever stored.
            assert!(cache.stored_tokens() <= 2 * w + 10, "sliding layer stores {} tokens", cache.stored_tokens());
        }
    }
}

#[test]
fn bf16_storage_halves_the_bytes_and_stays_close() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(2);
    let mut s = spec(8);
    s.kv_dtype = DType::Bf16;
    let mut cache = FullCache::new(s);
    let q = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([1, 2, 8, 8], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([1, 2, 8, 8], (Kind::Float, Device::Cpu));
    let out = cache.attend(&step(&q, &k, &v, 0, None)).unwrap();
    assert_eq!(out.kind(), Kind::Float, "output comes back in the compute dtype");
    assert_eq!(cache.bytes_held(), (2 * 2 * 8 * 8 * 2) as u64);
    let diff = (&out - reference(&q, &k, &v, 0, 0, None)).abs().max().double_value(&[]);
    assert!(diff < 0.05, "bf16 cache drifts by {diff}");
}
