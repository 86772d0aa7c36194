//! Method-specific checks of the retrieval caches (InfLLM, Quest) on hand-built K/Q tensors: the
//! paper's budget split, retrieval of a planted key's block or page, Quest's bound, exactness
//! when everything is retrieved, and byte accounting (held vs attended, held = tensors held).

mod common;

use kvcache::params::Budget;
use kvcore::cache::{tensor_bytes, AttentionStep, CacheSpec, FullCache, LayerCache};
use kvcore::device::DType;
use kvcore::registry::{parse_settings, Registry};
use kvplugins::retrieval::infllm::{paper_fraction, InfLlmCache, InfLlmConfig, Knobs};
use kvplugins::retrieval::quest::{page_upper_bound, QuestCache, QuestConfig};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

const D: i64 = 8;

fn spec(context: usize) -> CacheSpec {
    CacheSpec {
        batch: 1,
        kv_heads: 2,
        head_dim: D as usize,
        kv_dtype: DType::F32,
        device: Device::Cpu,
        expected_tokens: context + 16,
        query_heads: 4,
        num_layers: 4,
        context_tokens: Some(context),
        rope: None,
    }
}

fn settings(kv: &[&str]) -> toml::Table {
    parse_settings(&kv.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

fn step<'a>(q: &'a Tensor, k: &'a Tensor, v: &'a Tensor, pos: usize) -> AttentionStep<'a> {
    AttentionStep { layer: 2, q, k, v, start_pos: pos, sliding_window: None, scale: (D as f64).powf(-0.5) }
}

fn basis(i: i64, scale: f64) -> Tensor {
    Tensor::zeros([D], (Kind::Float, Device::Cpu)).index_fill(0, &Tensor::from_slice(&[i]), scale)
}

fn held_sum(c: &dyn LayerCache) -> u64 {
    c.held_tensors().iter().map(|(_, t)| tensor_bytes(t)).sum()
}

/// The budget split of the paper's InfLLM/StreamingLLM table for a 7,500-token prompt.
#[test]
fn infllm_budget_split_matches_the_paper_table() {
    let expect = [(2.0, 78, 9, 2520), (4.0, 39, 4, 1324), (6.0, 26, 3, 865), (8.0, 19, 2, 662)];
    for (ratio, n_init, topk, n_local) in expect {
        let k = InfLlmConfig::new(Budget::Ratio(ratio)).knobs(7500);
        assert_eq!((k.n_init, k.topk, k.n_local), (n_init, topk, n_local), "ratio {ratio}: {k:?}");
    }
    // The paper codes 6x as 0.17 (1/6 would give a 840-token local window).
    assert_eq!(paper_fraction(6.0), 0.17);
    assert_eq!(InfLlmConfig::new(Budget::Ratio(6.0)).knobs(7500).budget, 1275);
    // max_len caps the length the fraction applies to; the local window never drops below 512.
    let mut cfg = InfLlmConfig::new(Budget::Ratio(4.0));
    cfg.max_len = Some(4000);
    assert_eq!(cfg.knobs(7500), Knobs { budget: 1000, n_init: 21, topk: 2, n_local: 723 });
    assert_eq!(InfLlmConfig::new(Budget::Ratio(8.0)).knobs(2000).n_local, 512);
}

/// Blocks formed from a hand-built sequence: the representative token is the one the local
/// queries attended to most, and a query aligned with a planted key retrieves its block.
#[test]
fn infllm_retrieves_the_block_of_a_planted_key() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(1);
    let mut cfg = InfLlmConfig::new(Budget::Ratio(4.0));
    (cfg.block_size, cfg.repr_topk, cfg.exc_block_size, cfg.n_init, cfg.n_local, cfg.topk) = (4, 1, 4, Some(1), Some(4), Some(1));
    let mut c = InfLlmCache::new(Arc::new(cfg), spec(41));
    // Keys: small noise, a large e1 component on every key of block 2 (positions 9..13), and the
    // planted key e0 at position 10. Queries are aligned with e0, so position 10 gets the most
    // local attention although its block-mates have larger norms.
    let planted = basis(0, 3.0);
    let k = Tensor::randn([1, 2, 41, D], (Kind::Float, Device::Cpu)) * 0.1;
    let _ = k.narrow(2, 9, 4).g_add_(&basis(1, 5.0));
    k.narrow(2, 10, 1).copy_(&planted.view([1, 1, 1, D]));
    let v = Tensor::randn([1, 2, 41, D], (Kind::Float, Device::Cpu));
    let q = planted.view([1, 1, 1, D]).expand([1, 4, 41, D], false).contiguous();
    let out = c.attend(&step(&q, &k, &v, 0)).unwrap();
    assert_eq!(out.size(), vec![1, 4, 41, D]);
    // 41 tokens: 1 init, blocks of 4 while the rest holds >= 4 + 4: 9 blocks (positions 1..37).
    assert_eq!(c.num_blocks(), 9);
    let repr = c.held_tensors().into_iter().find(|(n, _)| *n == "repr_k").unwrap().1;
    assert_eq!(repr.size(), vec![1, 4, 9, D]);
    for h in 0..4 {
        assert!(repr.get(0).get(h).get(2).allclose(&planted, 1e-6, 1e-6, false), "head {h}: representative of block 2 is not the planted key");
    }
    // A decode query along e0 retrieves block 2.
    let qd = planted.view([1, 1, 1, D]).expand([1, 4, 1, D], false).contiguous();
    let ids = c.select_blocks(&qd, 41).unwrap();
    assert_eq!(Vec::<i64>::try_from(ids.flatten(0, -1)).unwrap(), vec![2, 2]);
    let kd = Tensor::randn([1, 2, 1, D], (Kind::Float, Device::Cpu)) * 0.1;
    let vd = Tensor::randn([1, 2, 1, D], (Kind::Float, Device::Cpu));
    let o = c.attend(&step(&(&qd * 10.0), &kd, &vd, 41)).unwrap();
    // The query attends almost only to the planted key: the output is close to its value.
    let want = v.get(0).narrow(1, 10, 1).squeeze_dim(1); // [Hkv, D]
    let got = o.get(0).squeeze_dim(1).view([2, 2, D]).select(1, 0);
    assert!((got - want).abs().max().double_value(&[]) < 0.05, "decode output does not come from the planted key");
    // Accounting after compression: reads init + 1 block + the resident window, holds it all.
    assert_eq!(c.stored_tokens(), 42);
    assert_eq!(c.bytes_attended(), (1 + 4 + 5) * 2 * 2 * D as u64 * 4);
    assert!(c.bytes_attended() < c.bytes_held());
    assert_eq!(c.bytes_held(), held_sum(&c));
    assert_eq!(c.bytes_offloaded(), 0, "nothing is offloaded on a CPU run");
    assert_eq!(c.kept_positions(), vec![(0..42).collect::<Vec<i64>>(); 2]);
}

/// When every block is retrieved and the resident part covers the rest, InfLLM's chunked,
/// block-wise attention is exact full attention (up to rounding).
#[test]
fn infllm_retrieving_everything_equals_full_attention() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(2);
    let reg = Registry::builtin().unwrap();
    for case in [
        &["ratio=4", "block_size=4", "n_local=8", "topk=1000", "exc_block_size=5"][..],
        &["ratio=4", "block_size=8", "n_init=3", "n_local=9", "topk=1000", "shared_blocks=false"],
    ] {
        let f = reg.build("infllm", &settings(case)).unwrap();
        let sp = spec(60);
        let mut c = f.layer_cache(2, &sp).unwrap();
        let mut full = FullCache::new(sp);
        let mut pos = 0;
        for l in [23i64, 37, 1, 1, 1] {
            let q = Tensor::randn([1, 4, l, D], (Kind::Float, Device::Cpu));
            let k = Tensor::randn([1, 2, l, D], (Kind::Float, Device::Cpu));
            let v = Tensor::randn([1, 2, l, D], (Kind::Float, Device::Cpu));
            let a = c.attend(&step(&q, &k, &v, pos)).unwrap();
            let b = full.attend(&step(&q, &k, &v, pos)).unwrap();
            assert!(a.allclose(&b, 1e-5, 1e-5, false), "{case:?} at {pos}: max diff {}", (a - b).abs().max().double_value(&[]));
            pos += l as usize;
            if pos == 60 {
                c.end_prefill().unwrap();
            }
        }
        assert_eq!(c.bytes_held(), held_sum(c.as_ref()));
        assert_eq!(c.stored_tokens(), 63);
    }
}

/// With a small top-k the prefill really is restricted (it differs from full attention), and a
/// fork evolves exactly like the original.
#[test]
fn infllm_restricts_prefill_and_forks() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(3);
    let f = Registry::builtin().unwrap().build("infllm", &settings(&["tokens=20", "block_size=4", "min_local=4", "exc_block_size=8"])).unwrap();
    let sp = spec(80);
    let mut c = f.layer_cache(2, &sp).unwrap();
    let mut full = FullCache::new(sp);
    let (q, k, v) = (
        Tensor::randn([1, 4, 80, D], (Kind::Float, Device::Cpu)),
        Tensor::randn([1, 2, 80, D], (Kind::Float, Device::Cpu)),
        Tensor::randn([1, 2, 80, D], (Kind::Float, Device::Cpu)),
    );
    let a = c.attend(&step(&q, &k, &v, 0)).unwrap();
    let b = full.attend(&step(&q, &k, &v, 0)).unwrap();
    // The first 20 queries see everything before them; later ones do not.
    assert!(a.narrow(2, 0, 16).allclose(&b.narrow(2, 0, 16), 1e-5, 1e-5, false));
    assert!((a.narrow(2, 40, 40) - b.narrow(2, 40, 40)).abs().max().double_value(&[]) > 1e-3);
    c.end_prefill().unwrap();
    let mut g = c.fork().expect("infllm forks");
    for pos in 80..84 {
        let (q, k, v) = (
            Tensor::randn([1, 4, 1, D], (Kind::Float, Device::Cpu)),
            Tensor::randn([1, 2, 1, D], (Kind::Float, Device::Cpu)),
            Tensor::randn([1, 2, 1, D], (Kind::Float, Device::Cpu)),
        );
        assert!(c.attend(&step(&q, &k, &v, pos)).unwrap().equal(&g.attend(&step(&q, &k, &v, pos)).unwrap()));
    }
    assert!(c.bytes_attended() < c.bytes_held());
    assert_eq!(c.bytes_held(), held_sum(c.as_ref()));
    assert_eq!(g.bytes_held(), c.bytes_held());
}

/// Quest's bound is never below the true best score of a page, and exact for one-token pages.
#[test]
fn quest_upper_bound_bounds_the_page_max() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(4);
    let (b, h, g, p, ps) = (2i64, 3, 3, 10, 16);
    let keys = Tensor::randn([b, h, p, ps, D], (Kind::Float, Device::Cpu));
    let q = Tensor::randn([b, h, g, D], (Kind::Float, Device::Cpu));
    let ub = page_upper_bound(&q, &keys.amin(3, false), &keys.amax(3, false)); // [B, H, G, P]
    let exact = (q.view([b, h, g, 1, 1, D]) * keys.unsqueeze(2)).sum_dim_intlist(-1, false, Kind::Float).amax(-1, false); // [B, H, G, P]
    assert!(ub.ge_tensor(&(&exact - 1e-5)).all().int64_value(&[]) == 1, "upper bound below the true max");
    assert!((&ub - &exact).abs().max().double_value(&[]) > 1e-3, "bound should be loose for 16-token pages");
    let one = keys.narrow(3, 0, 1);
    let ub1 = page_upper_bound(&q, &one.amin(3, false), &one.amax(3, false));
    let exact1 = (q.view([b, h, g, 1, D]) * one.squeeze_dim(3).unsqueeze(2)).sum_dim_intlist(-1, false, Kind::Float);
    assert!(ub1.allclose(&exact1, 1e-5, 1e-5, false), "bound is exact for one-token pages");
}

/// Quest selects the page of a planted key (plus the page being filled) and reads only those.
#[test]
fn quest_selects_the_page_of_a_planted_key() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(5);
    let cfg = QuestConfig { budget: Budget::Tokens(8), page_size: 4, skip_layers: 0, gqa_max: true };
    let mut c = QuestCache::new(Arc::new(cfg), 0, spec(32));
    let k = Tensor::randn([1, 2, 32, D], (Kind::Float, Device::Cpu)) * 0.1;
    k.narrow(2, 13, 1).copy_(&basis(0, 3.0).view([1, 1, 1, D]));
    let v = Tensor::randn([1, 2, 32, D], (Kind::Float, Device::Cpu));
    let q = Tensor::randn([1, 4, 32, D], (Kind::Float, Device::Cpu));
    let _prefill = c.attend(&step(&q, &k, &v, 0)).unwrap();
    assert_eq!(c.bytes_attended(), c.bytes_held() - 2 * 8 * 2 * D as u64 * 4, "prefill reads every token (not the min/max)");
    c.end_prefill().unwrap();
    assert_eq!(c.budget_pages(), Some(2));
    let qd = (basis(0, 10.0).view([1, 1, 1, D]).expand([1, 4, 1, D], false)).contiguous();
    let (kd, vd) = (Tensor::randn([1, 2, 1, D], (Kind::Float, Device::Cpu)) * 0.1, Tensor::randn([1, 2, 1, D], (Kind::Float, Device::Cpu)));
    let o = c.attend(&step(&qd, &kd, &vd, 32)).unwrap();
    // Page 3 (positions 12..16) and the page being filled (position 32) were read.
    assert_eq!(c.bytes_attended(), 5 * 2 * 2 * D as u64 * 4);
    // Re-running the selection on the state after the step picks the same pages.
    let idx = Vec::<i64>::try_from(c.select(&qd).unwrap().get(0).get(0)).unwrap();
    assert_eq!(idx, vec![12, 13, 14, 15, 32]);
    let want = v.get(0).narrow(1, 13, 1).squeeze_dim(1);
    let got = o.get(0).squeeze_dim(1).view([2, 2, D]).select(1, 0);
    assert!((got - want).abs().max().double_value(&[]) < 0.1, "decode output does not come from the planted key");
    assert!(c.bytes_attended() < c.bytes_held());
    assert_eq!(c.bytes_held(), held_sum(&c));
    let g = c.fork().expect("quest forks");
    assert_eq!(g.bytes_held(), c.bytes_held());
    assert_eq!(c.kept_positions(), vec![(0..33).collect::<Vec<i64>>(); 2]);
}

/// With `rope_theta`, retrieval compares un-rotated keys: RoPE's rotation round-trips, and a
/// planted block among post-RoPE keys is retrieved by a post-RoPE query far from it.
#[test]
fn infllm_rope_theta_scores_without_positions() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(6);
    let theta = 10_000.0;
    let x = Tensor::randn([1, 2, 50, D], (Kind::Float, Device::Cpu));
    let pos = Tensor::arange(50, (Kind::Int64, Device::Cpu));
    let there = kvplugins::retrieval::infllm::rotate(&x, &pos, theta);
    assert!((&there - &x).abs().max().double_value(&[]) > 0.1, "rotation must move the vectors");
    let back = kvplugins::retrieval::infllm::rotate(&there, &pos.neg(), theta);
    assert!(back.allclose(&x, 1e-4, 1e-4, false), "un-rotation restores the raw vectors");

    let mut cfg = InfLlmConfig::new(Budget::Ratio(4.0));
    (cfg.block_size, cfg.repr_topk, cfg.exc_block_size, cfg.n_init, cfg.n_local, cfg.topk) = (4, 4, 4, Some(1), Some(6), Some(1));
    cfg.rope_theta = Some(theta);
    let mut c = InfLlmCache::new(Arc::new(cfg), spec(81));
    // Raw keys: noise, block 2 (positions 9..13) all along e0; then RoPE at their positions.
    let raw = Tensor::randn([1, 2, 81, D], (Kind::Float, Device::Cpu)) * 0.1;
    raw.narrow(2, 9, 4).copy_(&basis(0, 3.0).view([1, 1, 1, D]));
    let k = kvplugins::retrieval::infllm::rotate(&raw, &Tensor::arange(81, (Kind::Int64, Device::Cpu)), theta);
    let v = Tensor::randn([1, 2, 81, D], (Kind::Float, Device::Cpu));
    let q = Tensor::randn([1, 4, 81, D], (Kind::Float, Device::Cpu)) * 0.1;
    let _prefill = c.attend(&step(&q, &k, &v, 0)).unwrap();
    assert!(c.num_blocks() >= 15);
    // A raw e0 query at position 81 (72 tokens after the block), rotated like the model would.
    let qd =
        kvplugins::retrieval::infllm::rotate(&basis(0, 3.0).view([1, 1, 1, D]).expand([1, 4, 1, D], false).contiguous(), &Tensor::from_slice(&[81i64]), theta);
    let ids = c.select_blocks(&qd, 81).unwrap();
    assert_eq!(Vec::<i64>::try_from(ids.flatten(0, -1)).unwrap(), vec![2, 2]);
}

/// `model_rope = true` (the paper's InfLLM takes the model's own rotary embedding, scaling
/// included): retrieval un-rotates with the model's frequencies. Keys rotated with a linearly
/// scaled RoPE (LongChat's factor 8) are retrieved by their planted block; an unscaled base would
/// un-rotate them wrongly.
#[test]
fn infllm_model_rope_uses_the_models_own_frequencies() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(7);
    let theta = 10_000.0f64;
    // LongChat-style linear scaling: every frequency divided by 8.
    let inv: Vec<f32> = (0..D / 2).map(|i| (1.0 / theta.powf(2.0 * i as f64 / D as f64) / 8.0) as f32).collect();
    let rope = kvcache::rope::Rope::new(&inv);
    let rotate_model = |x: &Tensor, positions: &[i64]| {
        let (cos, sin) = rope.cos_sin(positions, Device::Cpu);
        kvcache::rope::apply_rotary(x, &cos, &sin)
    };
    let all: Vec<i64> = (0..81).collect();
    let raw = Tensor::randn([1, 2, 81, D], (Kind::Float, Device::Cpu)) * 0.1;
    raw.narrow(2, 9, 4).copy_(&basis(0, 3.0).view([1, 1, 1, D]));
    let k = rotate_model(&raw, &all);
    let v = Tensor::randn([1, 2, 81, D], (Kind::Float, Device::Cpu));
    let q = Tensor::randn([1, 4, 81, D], (Kind::Float, Device::Cpu)) * 0.1;
    let qd = rotate_model(&basis(0, 3.0).view([1, 1, 1, D]).expand([1, 4, 1, D], false).contiguous(), &[81]);
    let retrieved = |model_rope: bool, theta: Option<f64>| {
        let mut cfg = InfLlmConfig::new(Budget::Ratio(4.0));
        (cfg.block_size, cfg.repr_topk, cfg.exc_block_size, cfg.n_init, cfg.n_local, cfg.topk) = (4, 4, 4, Some(1), Some(6), Some(1));
        (cfg.model_rope, cfg.rope_theta) = (model_rope, theta);
        let mut c = InfLlmCache::new(Arc::new(cfg), CacheSpec { rope: Some(rope), ..spec(81) });
        let _prefill = c.attend(&step(&q, &k, &v, 0)).unwrap();
        Vec::<i64>::try_from(c.select_blocks(&qd, 81).unwrap().flatten(0, -1)).unwrap()
    };
    assert_eq!(retrieved(true, None), vec![2, 2], "the model's scaled frequencies find the planted block");
    assert_ne!(retrieved(false, None), vec![2, 2], "absolute-position scores miss it (this seed)");
    // With an unscaled model RoPE, model_rope and rope_theta = its base select the same blocks,
    // for arbitrary queries too.
    let plain = kvcache::rope::Rope::from_theta(D as usize, theta);
    for seed in 0..4 {
        tch::manual_seed(100 + seed);
        let qr = Tensor::randn([1, 4, 1, D], (Kind::Float, Device::Cpu));
        let pick = |model_rope: bool, theta: Option<f64>| {
            let mut cfg = InfLlmConfig::new(Budget::Ratio(4.0));
            (cfg.block_size, cfg.repr_topk, cfg.exc_block_size, cfg.n_init, cfg.n_local, cfg.topk) = (4, 4, 4, Some(1), Some(6), Some(3));
            (cfg.model_rope, cfg.rope_theta) = (model_rope, theta);
            let mut c = InfLlmCache::new(Arc::new(cfg), CacheSpec { rope: Some(plain), ..spec(81) });
            let _prefill = c.attend(&step(&q, &k, &v, 0)).unwrap();
            Vec::<i64>::try_from(c.select_blocks(&qr, 81).unwrap().flatten(0, -1)).unwrap()
        };
        assert_eq!(pick(true, None), pick(false, Some(theta)), "seed {seed}");
    }
    // Through the registry: needs the model's RoPE, and refuses rope_theta beside it.
    let reg = Registry::builtin().unwrap();
    let f = reg.build("infllm", &settings(&["model_rope=true"])).unwrap();
    let err = f.layer_cache(0, &spec(81)).err().expect("no RoPE in the spec").to_string();
    assert!(err.contains("model_rope") && err.contains("rope_theta"), "{err}");
    assert!(f.layer_cache(0, &CacheSpec { rope: Some(rope), ..spec(81) }).is_ok());
    let err = reg.build("infllm", &settings(&["model_rope=true", "rope_theta=10000"])).err().expect("both refused").to_string();
    assert!(err.contains("model_rope") && err.contains("not both"), "{err}");
}

/// The paper's InfLLM re-indexes positions in attention: a key within `n_local` of the query at
/// its true distance, and every other key it attends (init tokens, retrieved blocks, the
/// remainder) at the one distance `n_local`: the query rotated to `n_local`
/// (`apply_rotary_pos_emb_one_angle`) against the unrotated key. With every block retrieved, the
/// reference is that rule over all earlier tokens, computed here in f64 from unrotated queries
/// and keys; the cache gets them rotated at their absolute positions (as the engine gives them),
/// in chunks of 8 and then decoding, and must match within 1e-5. Absolute positions must give
/// other outputs, or the check would not see the re-indexing.
#[test]
fn infllm_reindexed_attends_far_keys_at_distance_n_local() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(21);
    let (n, n_local, d) = (44usize, 8usize, D as usize);
    let (hq, hkv) = (4usize, 2usize);
    let raw_q = Tensor::randn([1, hq as i64, n as i64, D], (Kind::Float, Device::Cpu));
    let raw_k = Tensor::randn([1, hkv as i64, n as i64, D], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([1, hkv as i64, n as i64, D], (Kind::Float, Device::Cpu));
    let flat = |t: &Tensor| Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap();
    let (qf, kf, vf) = (flat(&raw_q), flat(&raw_k), flat(&v));
    let row = |f: &[f32], h: usize, p: usize| f[(h * n + p) * d..(h * n + p + 1) * d].to_vec();
    let rotated = |f: &[f32], heads: usize| -> Tensor {
        let out: Vec<f32> = (0..heads)
            .flat_map(|h| (0..n).flat_map(move |p| common::rotate_f64(&f[(h * n + p) * d..(h * n + p + 1) * d], p as f64)))
            .map(|x| x as f32)
            .collect();
        Tensor::from_slice(&out).view([1, heads as i64, n as i64, D])
    };
    let (q, k) = (rotated(&qf, hq), rotated(&kf, hkv));
    let sp = CacheSpec { rope: Some(kvcache::rope::Rope::from_theta(d, 10000.0)), ..spec(40) };
    let base = ["ratio=2", "n_init=2", "n_local=8", "topk=100", "block_size=4", "exc_block_size=8"];
    let make = |extra: &[&str]| {
        let set: Vec<&str> = base.iter().chain(extra).copied().collect();
        Registry::builtin().unwrap().build("infllm", &settings(&set)).unwrap().layer_cache(2, &sp).unwrap()
    };
    let (mut reindexed, mut absolute) = (make(&["positions=\"reindexed\""]), make(&[]));
    let mut steps: Vec<(usize, usize)> = (0..5).map(|c| (c * 8, c * 8 + 8)).collect();
    steps.extend((40..n).map(|p| (p, p + 1)));
    let scale = (D as f64).powf(-0.5);
    let mut differs = false;
    for (a, b) in steps {
        let (qs, ks, vs) = (q.narrow(2, a as i64, (b - a) as i64), k.narrow(2, a as i64, (b - a) as i64), v.narrow(2, a as i64, (b - a) as i64));
        let got = reindexed.attend(&step(&qs, &ks, &vs, a)).unwrap();
        let plain = absolute.attend(&step(&qs, &ks, &vs, a)).unwrap();
        for h in 0..hq {
            let kv = h / (hq / hkv);
            for i in a..b {
                let (near, turned) = (common::rotate_f64(&row(&qf, h, i), i as f64), common::rotate_f64(&row(&qf, h, i), n_local as f64));
                let logits: Vec<f64> = (0..=i)
                    .map(|p| {
                        let (qv, kv_) = if i - p < n_local {
                            (&near, common::rotate_f64(&row(&kf, kv, p), p as f64))
                        } else {
                            (&turned, common::rotate_f64(&row(&kf, kv, p), 0.0))
                        };
                        qv.iter().zip(&kv_).map(|(x, y)| x * y).sum::<f64>() * scale
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = logits.iter().map(|x| (x - m).exp()).sum();
                for c in 0..d {
                    let want: f64 = logits.iter().enumerate().map(|(p, x)| (x - m).exp() / z * vf[(kv * n + p) * d + c] as f64).sum();
                    let at = [0, h as i64, (i - a) as i64, c as i64];
                    let g = got.double_value(&at);
                    assert!((g - want).abs() < 1e-5, "head {h} query {i} channel {c}: {g} vs InfLLM's {want}");
                    differs |= (plain.double_value(&at) - want).abs() > 1e-3;
                }
            }
        }
    }
    assert!(differs, "absolute positions should give other outputs once keys are past n_local");
    // A model without rotary frequencies is refused by name.
    let err = Registry::builtin().unwrap().build("infllm", &settings(&["positions=\"reindexed\""])).unwrap().layer_cache(0, &spec(40)).err().expect("no RoPE");
    assert!(err.to_string().contains("reindexed"), "{err}");
}
