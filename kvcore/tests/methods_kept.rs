//! Method-level tests: which tokens each registered eviction method keeps on small hand-made
//! tensors, against expectations computed here independently (literal position lists for the
//! position-only methods, plain-Rust f64 softmax/pooling loops for the attention-scored ones), plus
//! the PyramidKV layer-budget schedule against hand-computed values and the attention mask that
//! evicting caches build from kept positions.

mod common;

use kvcore::cache::{attend_at_positions, attend_sinks_local, position_mask, AttentionStep, CacheFactory, CacheSpec, LayerCache, Visibility};
use kvcore::device::DType;
use kvcore::registry::{parse_settings, Registry};
use tch::{Device, Kind, Tensor};

use kvplugins as _;

const HQ: usize = 4;
const HKV: usize = 2;
const D: usize = 4;

fn spec(total: usize, context: usize, layers: usize) -> CacheSpec {
    CacheSpec {
        batch: 1,
        kv_heads: HKV,
        head_dim: D,
        kv_dtype: DType::F32,
        device: Device::Cpu,
        expected_tokens: total,
        query_heads: HQ,
        num_layers: layers,
        context_tokens: Some(context),
        rope: Some(kvcache::rope::Rope::from_theta(D, 10000.0)),
    }
}

fn cache(name: &str, set: &[&str], layer: usize, spec: &CacheSpec) -> Box<dyn LayerCache> {
    let table = parse_settings(&set.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let reg = Registry::builtin().unwrap();
    reg.build(name, &table).unwrap_or_else(|e| panic!("{name} {set:?}: {e}")).layer_cache(layer, spec).unwrap()
}

/// Queries, keys and values of `n` tokens, kept as plain vectors for the reference computations.
struct Qkv {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    qf: Vec<f32>,
    kf: Vec<f32>,
    n: usize,
}

impl Qkv {
    fn random(n: usize, seed: i64) -> Qkv {
        tch::manual_seed(seed);
        let q = Tensor::randn([1, HQ as i64, n as i64, D as i64], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([1, HKV as i64, n as i64, D as i64], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([1, HKV as i64, n as i64, D as i64], (Kind::Float, Device::Cpu));
        Qkv::from(q, k, v)
    }
    fn from(q: Tensor, k: Tensor, v: Tensor) -> Qkv {
        let flat = |t: &Tensor| Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap();
        let n = k.size()[2] as usize;
        Qkv { qf: flat(&q), kf: flat(&k), q, k, v, n }
    }
    fn qrow(&self, h: usize, i: usize) -> &[f32] {
        &self.qf[(h * self.n + i) * D..(h * self.n + i + 1) * D]
    }
    fn krow(&self, h: usize, p: usize) -> &[f32] {
        &self.kf[(h * self.n + p) * D..(h * self.n + p + 1) * D]
    }
    /// Feeds tokens `from..to` to the cache as one step.
    fn feed(&self, c: &mut dyn LayerCache, from: usize, to: usize) -> Tensor {
        let (a, l) = (from as i64, (to - from) as i64);
        let (q, k, v) = (self.q.narrow(2, a, l), self.k.narrow(2, a, l), self.v.narrow(2, a, l));
        let step = AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: from, sliding_window: None, scale: (D as f64).powf(-0.5) };
        c.attend(&step).unwrap()
    }
    /// Softmax attention (f64) of query head `h` at position `i` over the keys at `keys` (those not
    /// in its future), as `(position, probability)`.
    fn probs(&self, h: usize, i: usize, keys: &[usize]) -> Vec<(usize, f64)> {
        let kv = h / (HQ / HKV);
        let scale = (D as f64).powf(-0.5);
        let vis: Vec<usize> = keys.iter().copied().filter(|&p| p <= i).collect();
        let logits: Vec<f64> =
            vis.iter().map(|&p| self.qrow(h, i).iter().zip(self.krow(kv, p)).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale).collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        vis.into_iter().zip(e).map(|(p, x)| (p, x / z)).collect()
    }
}

/// The `k` positions with the highest score (no ties in these tests), ascending.
fn top(scores: &[(usize, f64)], k: usize) -> Vec<i64> {
    let mut s = scores.to_vec();
    s.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let mut out: Vec<i64> = s.iter().take(k).map(|(p, _)| *p as i64).collect();
    out.sort();
    out
}

fn range(a: i64, b: i64) -> Vec<i64> {
    (a..b).collect()
}

// ---------------------------------------------------------------------------------------------
// Position-only methods

#[test]
fn streamingllm_chunked_keeps_sinks_and_recent_and_masks_prefill() {
    let _g = tch::no_grad_guard();
    // 40-token context, ratio 4: budget 10 = 2 sinks + 8 local.
    let x = Qkv::random(43, 1);
    let sp = spec(43, 40, 2);
    let mut c = cache("streamingllm", &["ratio=4", "sinks=2"], 0, &sp);
    for chunk in 0..5 {
        let (a, b) = (chunk * 8, chunk * 8 + 8);
        let out = x.feed(c.as_mut(), a, b);
        // Every query sees the 2 sinks and the 8 newest keys up to itself: checked by hand.
        let vals = Vec::<f32>::try_from(&x.v.contiguous().view([-1])).unwrap();
        for h in 0..HQ {
            for i in a..b {
                let kv = h / 2;
                let keys: Vec<usize> = (0..=i).filter(|&p| p < 2 || i - p < 8).collect();
                let pr = x.probs(h, i, &keys);
                for d in 0..D {
                    let want: f64 = pr.iter().map(|(p, w)| w * vals[(kv * 43 + p) * D + d] as f64).sum();
                    let got = out.double_value(&[0, h as i64, (i - a) as i64, d as i64]);
                    assert!((got - want).abs() < 1e-5, "streamingllm prefill output head {h} query {i}: {got} vs {want}");
                }
            }
        }
        let kept = c.kept_positions();
        assert!(kept.iter().all(|r| r.len() <= 10), "after chunk {chunk}: {kept:?}");
    }
    c.end_prefill().unwrap();
    let want: Vec<i64> = [0, 1].into_iter().chain(32..40).collect();
    assert_eq!(c.kept_positions(), vec![want.clone(); HKV], "after prefill");
    for p in 40..43 {
        let _ = x.feed(c.as_mut(), p, p + 1);
    }
    let want: Vec<i64> = [0, 1].into_iter().chain(35..43).collect();
    assert_eq!(c.kept_positions(), vec![want; HKV], "the window slides while decoding");
}

/// The paper's StreamingLLM is InfLLM's stream-llm, which re-indexes positions: a query at `i`
/// attends the `local` keys up to itself at their true distance and each sink `j` outside that
/// window with its query rotated to `local + sinks` and the sink's key at `j` (InfLLM's
/// `apply_rotary_pos_emb_one_angle`), so the sink sits at distance `local + sinks - j`. The
/// reference below is that computation from unrotated queries and keys in f64; the cache gets
/// them rotated at their absolute positions, as the engine gives them, in chunks of 8 and then
/// decoding, and must match within 1e-5. The default (`positions = "absolute"`) must differ
/// where a sink is far, or the check would not see the re-indexing.
#[test]
fn streamingllm_reindexed_sees_far_sinks_at_infllms_distance() {
    let _g = tch::no_grad_guard();
    // 40-token context, ratio 4: budget 10 = 2 sinks + 8 local; 4 decode steps.
    let (n, sinks, local) = (44usize, 2usize, 8usize);
    let raw = Qkv::random(n, 11);
    let rotated = |t: &Tensor, heads: usize| -> Tensor {
        let f = Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap();
        let mut out = Vec::with_capacity(f.len());
        for h in 0..heads {
            for p in 0..n {
                out.extend(common::rotate_f64(&f[(h * n + p) * D..(h * n + p + 1) * D], p as f64).into_iter().map(|x| x as f32));
            }
        }
        Tensor::from_slice(&out).view([1, heads as i64, n as i64, D as i64])
    };
    let fed = Qkv::from(rotated(&raw.q, HQ), rotated(&raw.k, HKV), raw.v.shallow_clone());
    let vals = Vec::<f32>::try_from(&raw.v.contiguous().view([-1])).unwrap();
    let sp = spec(n, 40, 2);
    let mut reindexed = cache("streamingllm", &["ratio=4", "sinks=2", "positions=\"reindexed\""], 0, &sp);
    let mut absolute = cache("streamingllm", &["ratio=4", "sinks=2"], 0, &sp);
    let scale = (D as f64).powf(-0.5);
    let mut steps: Vec<(usize, usize)> = (0..5).map(|c| (c * 8, c * 8 + 8)).collect();
    steps.extend((40..n).map(|p| (p, p + 1)));
    let mut far_differs = false;
    for (a, b) in steps {
        if a == 40 {
            reindexed.end_prefill().unwrap();
            absolute.end_prefill().unwrap();
        }
        let got = fed.feed(reindexed.as_mut(), a, b);
        let plain = fed.feed(absolute.as_mut(), a, b);
        for h in 0..HQ {
            let kv = h / (HQ / HKV);
            for i in a..b {
                let near = common::rotate_f64(raw.qrow(h, i), i as f64);
                let turned = common::rotate_f64(raw.qrow(h, i), (local + sinks) as f64);
                // (logit, value position) over the keys the query sees.
                let mut seen: Vec<(f64, usize)> = Vec::new();
                for p in 0..=i {
                    let key = common::rotate_f64(raw.krow(kv, p), p as f64);
                    let dot = |q: &[f64]| q.iter().zip(&key).map(|(x, y)| x * y).sum::<f64>() * scale;
                    if i - p < local {
                        seen.push((dot(&near), p));
                    } else if p < sinks {
                        seen.push((dot(&turned), p));
                    }
                }
                let m = seen.iter().map(|s| s.0).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = seen.iter().map(|s| (s.0 - m).exp()).sum();
                for d in 0..D {
                    let want: f64 = seen.iter().map(|&(x, p)| (x - m).exp() / z * vals[(kv * n + p) * D + d] as f64).sum();
                    let at = [0, h as i64, (i - a) as i64, d as i64];
                    let g = got.double_value(&at);
                    assert!((g - want).abs() < 1e-5, "head {h} query {i} channel {d}: {g} vs InfLLM's {want}");
                    if i >= local && (plain.double_value(&at) - want).abs() > 1e-3 {
                        far_differs = true;
                    }
                }
            }
        }
    }
    assert!(far_differs, "absolute positions should give other outputs once the sinks are out of the window");
    let want: Vec<i64> = [0, 1].into_iter().chain(36..44).collect();
    assert_eq!(reindexed.kept_positions(), vec![want; HKV], "the same tokens kept as with absolute positions");
    // Refused where it cannot apply: a layer with its own sliding window, and a full prefill.
    let mut windowed = cache("streamingllm", &["ratio=4", "sinks=2", "positions=\"reindexed\""], 0, &sp);
    let (q, k, v) = (fed.q.narrow(2, 0, 8), fed.k.narrow(2, 0, 8), fed.v.narrow(2, 0, 8));
    let step = AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: 0, sliding_window: Some(4), scale };
    let err = windowed.attend(&step).expect_err("a model window is refused").to_string();
    assert!(err.contains("sliding window"), "{err}");
    let table = parse_settings(&["ratio=4".into(), "positions=\"reindexed\"".into(), "prefill=\"full\"".into()]).unwrap();
    let err = Registry::builtin().unwrap().build("streamingllm", &table).err().expect("reindexed needs the chunked prefill").to_string();
    assert!(err.contains("positions") && err.contains("chunked"), "{err}");
}

#[test]
fn streamingllm_default_sink_ratio_and_full_prefill_variant() {
    let _g = tch::no_grad_guard();
    // 200 tokens at ratio 2: budget 100, sinks = int(100 * 0.021) = 2, local 98.
    let x = Qkv::random(200, 2);
    let mut c = cache("streamingllm", &["ratio=2"], 0, &spec(200, 200, 2));
    let _ = x.feed(c.as_mut(), 0, 200);
    c.end_prefill().unwrap();
    let want: Vec<i64> = [0, 1].into_iter().chain(102..200).collect();
    assert_eq!(c.kept_positions(), vec![want; HKV]);
    // kvpress StreamingLLMPress(n_sink = 4) at compression 0.75 on 40 tokens: 4 sinks + 6 newest.
    let x = Qkv::random(40, 3);
    let mut c = cache("streamingllm", &["ratio=4", "sinks=4", "prefill=\"full\""], 0, &spec(40, 40, 2));
    let _ = x.feed(c.as_mut(), 0, 20);
    let _ = x.feed(c.as_mut(), 20, 40);
    assert_eq!(c.kept_positions(), vec![range(0, 40); HKV], "full prefill keeps everything until end_prefill");
    c.end_prefill().unwrap();
    let want: Vec<i64> = (0..4).chain(34..40).collect();
    assert_eq!(c.kept_positions(), vec![want; HKV]);
}

#[test]
fn streamingllm_at_6x_keeps_the_papers_0_17() {
    let _g = tch::no_grad_guard();
    // The paper's configs write 6x as compression_ratio 0.17: on 1,000 tokens, budget
    // int(0.17 * 1000) = 170 (floor(1000 / 6) would be 166); sinks int(170 * 0.021) = 3.
    let x = Qkv::random(1000, 4);
    let mut c = cache("streamingllm", &["ratio=6"], 0, &spec(1000, 1000, 2));
    let _ = x.feed(c.as_mut(), 0, 1000);
    c.end_prefill().unwrap();
    let want: Vec<i64> = (0..3).chain(833..1000).collect();
    assert_eq!(c.kept_positions(), vec![want; HKV]);
    // Other ratios are 1/N, unchanged: 1,000 tokens at 8x keep 125.
    let mut c = cache("streamingllm", &["ratio=8"], 0, &spec(1000, 1000, 2));
    let _ = x.feed(c.as_mut(), 0, 1000);
    c.end_prefill().unwrap();
    assert_eq!(c.kept_positions()[0].len(), 125);
}

#[test]
fn knorm_keeps_the_smallest_key_norms_per_head() {
    let _g = tch::no_grad_guard();
    // Key of token p on head 0 has norm (7p mod 16) + 1, on head 1 (5p + 3 mod 16) + 1.
    let norms = |h: usize, p: usize| if h == 0 { (7 * p % 16) as f32 + 1.0 } else { ((5 * p + 3) % 16) as f32 + 1.0 };
    let mut kf = Vec::new();
    for h in 0..HKV {
        for p in 0..16 {
            // Spread over two coordinates: (0.6n, -0.8n) has norm n.
            kf.extend_from_slice(&[0.6 * norms(h, p), 0.0, -0.8 * norms(h, p), 0.0]);
        }
    }
    let k = Tensor::from_slice(&kf).view([1, HKV as i64, 16, D as i64]);
    tch::manual_seed(4);
    let x = Qkv::from(
        Tensor::randn([1, HQ as i64, 16, D as i64], (Kind::Float, Device::Cpu)),
        k,
        Tensor::randn([1, HKV as i64, 16, D as i64], (Kind::Float, Device::Cpu)),
    );
    let mut c = cache("knorm", &["ratio=4"], 0, &spec(16, 16, 2));
    let _ = x.feed(c.as_mut(), 0, 16);
    c.end_prefill().unwrap();
    // Head 0: norms 1..4 at p = 0, 7, 14, 5; head 1: norms 1..4 at p = 9, 6, 3, 0.
    assert_eq!(c.kept_positions(), vec![vec![0, 5, 7, 14], vec![0, 3, 6, 9]]);
    // tokens = 6 keeps norms 1..6: head 0 adds p = 12, 3; head 1 adds p = 13, 10.
    let mut c = cache("knorm", &["tokens=6"], 0, &spec(16, 16, 2));
    let _ = x.feed(c.as_mut(), 0, 16);
    c.end_prefill().unwrap();
    assert_eq!(c.kept_positions(), vec![vec![0, 3, 5, 7, 12, 14], vec![0, 3, 6, 9, 10, 13]]);
}

#[test]
fn chunkkv_over_knorm_keeps_whole_chunks_ranked_by_head_summed_means() {
    let _g = tch::no_grad_guard();
    // The keys of knorm's test: norms (7p mod 16) + 1 on head 0 and ((5p + 3) mod 16) + 1 on head 1.
    // Summed over heads, chunks of 5 ([0, 5), [5, 10), [10, 15), [15]) have mean norms 16.2, 15.4,
    // 17.8 and 25; knorm scores are -norm, so the ranking is chunk 1, 0, 2, 3.
    let norms = |h: usize, p: usize| if h == 0 { (7 * p % 16) as f32 + 1.0 } else { ((5 * p + 3) % 16) as f32 + 1.0 };
    let mut kf = Vec::new();
    for h in 0..HKV {
        for p in 0..16 {
            kf.extend_from_slice(&[0.6 * norms(h, p), 0.0, -0.8 * norms(h, p), 0.0]);
        }
    }
    let k = Tensor::from_slice(&kf).view([1, HKV as i64, 16, D as i64]);
    tch::manual_seed(4);
    let x = Qkv::from(
        Tensor::randn([1, HQ as i64, 16, D as i64], (Kind::Float, Device::Cpu)),
        k,
        Tensor::randn([1, HKV as i64, 16, D as i64], (Kind::Float, Device::Cpu)),
    );
    let kept = |set: &[&str]| {
        let mut c = cache("chunkkv", set, 0, &spec(16, 16, 2));
        let _ = x.feed(c.as_mut(), 0, 16);
        c.end_prefill().unwrap();
        c.kept_positions()
    };
    // ratio 4: floor(4 chunks / 4) = 1 chunk, the same for both heads.
    assert_eq!(kept(&["ratio=4", "scorer=\"knorm\"", "chunk_length=5"]), vec![range(5, 10), range(5, 10)]);
    // ratio 2 and tokens = 12 (floor(12/5) = 2 chunks): chunks 1 and 0.
    assert_eq!(kept(&["ratio=2", "scorer=\"knorm\"", "chunk_length=5"]), vec![range(0, 10), range(0, 10)]);
    assert_eq!(kept(&["tokens=12", "scorer=\"knorm\"", "chunk_length=5"]), vec![range(0, 10), range(0, 10)]);
    // A budget under one chunk (tokens = 3 < 5) is selected token by token: knorm's own top 3 per
    // head (norms 1..3: head 0 at p = 0, 7, 14; head 1 at p = 3, 6, 9).
    assert_eq!(kept(&["tokens=3", "scorer=\"knorm\"", "chunk_length=5"]), vec![vec![0, 7, 14], vec![3, 6, 9]]);
}

/// ExpectedAttention's scores in plain f64, from the definition: per query head, the mean and
/// population covariance of the queries at positions `n_sink..s` with RoPE (base 10000 over `D`
/// channels, `rotate_half` layout) undone, carried by the rotation averaged over positions
/// `s..s+future`; `softmax_j(μ'·k_j/√D + k_jᵀΣ'k_j/2D)` over the non-sink keys, averaged over
/// each KV head's query heads, times `‖v_j‖`.
fn expected_attention_reference(x: &Qkv, s: usize, n_sink: usize, future: usize, covariance: bool) -> Vec<Vec<(usize, f64)>> {
    let half = D / 2;
    let inv: Vec<f64> = (0..half).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / D as f64)).collect();
    let vf = Vec::<f32>::try_from(&x.v.contiguous().view([-1])).unwrap();
    // Mean rotation: pair (i, i + half) turns by angle p·inv[i]; averaged cos and sin per pair.
    let cbar: Vec<f64> = (0..half).map(|i| (s..s + future).map(|p| (p as f64 * inv[i]).cos()).sum::<f64>() / future as f64).collect();
    let sbar: Vec<f64> = (0..half).map(|i| (s..s + future).map(|p| (p as f64 * inv[i]).sin()).sum::<f64>() / future as f64).collect();
    let mut r = [[0f64; D]; D];
    for i in 0..half {
        r[i][i] = cbar[i];
        r[i + half][i + half] = cbar[i];
        r[i][i + half] = -sbar[i];
        r[i + half][i] = sbar[i];
    }
    let mut out = vec![vec![0f64; s]; HKV];
    for h in 0..HQ {
        let pre: Vec<[f64; D]> = (n_sink..s)
            .map(|p| {
                let q = x.qrow(h, p);
                let mut o = [0f64; D];
                for i in 0..half {
                    let (c, sn) = ((p as f64 * inv[i]).cos(), (p as f64 * inv[i]).sin());
                    o[i] = q[i] as f64 * c + q[i + half] as f64 * sn;
                    o[i + half] = q[i + half] as f64 * c - q[i] as f64 * sn;
                }
                o
            })
            .collect();
        let n = pre.len() as f64;
        let mean: Vec<f64> = (0..D).map(|a| pre.iter().map(|q| q[a]).sum::<f64>() / n).collect();
        let cov: Vec<Vec<f64>> = (0..D).map(|a| (0..D).map(|b| pre.iter().map(|q| (q[a] - mean[a]) * (q[b] - mean[b])).sum::<f64>() / n).collect()).collect();
        let mu: Vec<f64> = (0..D).map(|a| (0..D).map(|b| r[a][b] * mean[b]).sum()).collect();
        let rc: Vec<Vec<f64>> = (0..D).map(|a| (0..D).map(|b| (0..D).map(|c| r[a][c] * cov[c][b]).sum()).collect()).collect();
        let covr: Vec<Vec<f64>> = (0..D).map(|a| (0..D).map(|b| (0..D).map(|c| rc[a][c] * r[b][c]).sum()).collect()).collect();
        let kv = h / (HQ / HKV);
        let logits: Vec<f64> = (n_sink..s)
            .map(|j| {
                let k: Vec<f64> = x.krow(kv, j).iter().map(|&v| v as f64).collect();
                let lin: f64 = (0..D).map(|a| mu[a] * k[a]).sum::<f64>() / (D as f64).sqrt();
                let quad: f64 = (0..D).map(|a| (0..D).map(|b| k[a] * covr[a][b] * k[b]).sum::<f64>()).sum();
                lin + if covariance { quad / D as f64 / 2.0 } else { 0.0 }
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        for (j, l) in (n_sink..s).zip(&logits) {
            out[kv][j] += (l - m).exp() / z / (HQ / HKV) as f64;
        }
    }
    (0..HKV)
        .map(|kv| {
            (0..s)
                .map(|j| {
                    let vn = (0..D).map(|d| (vf[(kv * x.n + j) * D + d] as f64).powi(2)).sum::<f64>().sqrt();
                    (j, if j < n_sink { f64::INFINITY } else { out[kv][j] * vn })
                })
                .collect()
        })
        .collect()
}

#[test]
fn expected_attention_keeps_what_the_rotated_query_gaussian_expects_in_any_chunking() {
    let _g = tch::no_grad_guard();
    let x = Qkv::random(40, 11);
    let reference = expected_attention_reference(&x, 40, 4, 512, true);
    let want: Vec<Vec<i64>> = reference.iter().map(|h| top(h, 10)).collect();
    // The statistics of a prompt prefilled in uneven chunks equal those of one pass.
    for chunks in [vec![0, 40], vec![0, 3, 10, 17, 29, 40]] {
        let mut c = cache("expected-attention", &["ratio=4"], 0, &spec(40, 40, 2));
        for w in chunks.windows(2) {
            let _ = x.feed(c.as_mut(), w[0], w[1]);
        }
        assert!(c.held_tensors().iter().any(|(n, _)| *n == "query_m2"), "the query statistics are held (and counted) until compression");
        c.end_prefill().unwrap();
        assert_eq!(c.kept_positions(), want, "chunks {chunks:?}: kept positions vs the f64 reference");
        assert!(c.held_tensors().iter().all(|(n, _)| !n.starts_with("query_")), "statistics are dropped after compressing");
    }
    // The mean alone (no covariance term), 2 sinks, 64 future positions.
    let reference = expected_attention_reference(&x, 40, 2, 64, false);
    let want_mean: Vec<Vec<i64>> = reference.iter().map(|h| top(h, 10)).collect();
    assert_ne!(want_mean, want, "the variant's reference must differ for this check to mean anything");
    let mut c = cache("expected-attention", &["ratio=4", "use_covariance=false", "n_sink=2", "n_future_positions=64"], 0, &spec(40, 40, 2));
    let _ = x.feed(c.as_mut(), 0, 40);
    c.end_prefill().unwrap();
    assert_eq!(c.kept_positions(), want_mean, "use_covariance = false, n_sink = 2");
    // A cache built without the model's RoPE cannot score this way: it says so.
    let mut bare = spec(40, 40, 2);
    bare.rope = None;
    let mut c = cache("expected-attention", &["ratio=4"], 0, &bare);
    let (q, k, v) = (x.q.narrow(2, 0, 8), x.k.narrow(2, 0, 8), x.v.narrow(2, 0, 8));
    let err = c.attend(&AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: 0, sliding_window: None, scale: 0.5 }).unwrap_err().to_string();
    assert!(err.contains("RoPE") && err.contains("expected-attention"), "{err}");
}

/// The `n` positions among `among` whose head-`h` keys have the smallest norm (Knorm's keep).
fn smallest_norms(x: &Qkv, h: usize, among: &[usize], n: usize) -> Vec<usize> {
    let norm = |p: usize| x.krow(h, p).iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
    let mut v = among.to_vec();
    v.sort_by(|a, b| norm(*a).partial_cmp(&norm(*b)).unwrap());
    v.truncate(n);
    v.sort();
    v
}

#[test]
fn block_size_compresses_during_prefill_and_later_blocks_attend_over_what_is_kept() {
    let _g = tch::no_grad_guard();
    // 40-token context, ratio 4: budget 10, blocks of 5 after the first 10 tokens (ends at 10, 15,
    // ..., 40), fed in engine chunks of 7 that do not line up with the blocks.
    let x = Qkv::random(40, 21);
    let vals = Vec::<f32>::try_from(&x.v.contiguous().view([-1])).unwrap();
    let mut c = cache("knorm", &["ratio=4", "block_size=5"], 0, &spec(40, 40, 2));
    let mut from = 0;
    while from < 40 {
        let to = (from + 7).min(40);
        let out = x.feed(c.as_mut(), from, to);
        let stored = c.kept_positions();
        assert!(stored.iter().all(|r| r.len() <= 15), "after tokens {from}..{to}: more than budget + block held: {stored:?}");
        let declared = c.budget_tokens().expect("a block-wise prefill declares its budget while prefilling");
        assert!(stored.iter().all(|r| r.len() <= declared), "after {to}: holds more than the declared {declared}");
        // Each query attends over what its block sees: the keys kept at the end of the previous
        // block (Knorm's smallest norms so far), plus its own block up to itself.
        for i in from..to {
            let block_start = if i < 10 { 0 } else { 10 + (i - 10) / 5 * 5 };
            for h in 0..HQ {
                let kv = h / (HQ / HKV);
                let before: Vec<usize> = if block_start == 0 { vec![] } else { smallest_norms(&x, kv, &(0..block_start).collect::<Vec<_>>(), 10) };
                let keys: Vec<usize> = before.into_iter().chain(block_start..=i).collect();
                let pr = x.probs(h, i, &keys);
                for d in 0..D {
                    let want: f64 = pr.iter().map(|(p, w)| w * vals[(kv * 40 + p) * D + d] as f64).sum();
                    let got = out.double_value(&[0, h as i64, (i - from) as i64, d as i64]);
                    assert!((got - want).abs() < 1e-5, "query {i} head {h}: output {got} vs {want} over the block's keys {keys:?}");
                }
            }
        }
        from = to;
    }
    c.end_prefill().unwrap();
    // Knorm's score does not depend on the other tokens, so block by block it keeps its global top.
    let want: Vec<Vec<i64>> = (0..HKV).map(|h| smallest_norms(&x, h, &(0..40).collect::<Vec<_>>(), 10).into_iter().map(|p| p as i64).collect()).collect();
    assert_eq!(c.kept_positions(), want);
    // Not shareable: its prefill attention is not plain full attention.
    let table = parse_settings(&["ratio=4".to_string(), "block_size=5".to_string()]).unwrap();
    assert!(!Registry::builtin().unwrap().build("knorm", &table).unwrap().shared_prefill());
}

#[test]
fn target_size_compresses_only_while_decoding_every_interval_steps() {
    let _g = tch::no_grad_guard();
    let x = Qkv::random(30, 22);
    let mut c = cache("knorm", &["target_size=12", "interval=3"], 0, &spec(30, 20, 2));
    let _ = x.feed(c.as_mut(), 0, 20);
    c.end_prefill().unwrap();
    assert!(c.kept_positions().iter().all(|r| r.len() == 20), "the prompt stays whole after prefill (kvpress DecodingPress)");
    for p in 20..26 {
        let _ = x.feed(c.as_mut(), p, p + 1);
        let n = c.kept_positions()[0].len();
        match p {
            20 | 21 => assert_eq!(n, p + 1, "no compression before the third decode step"),
            22 => {
                let want: Vec<Vec<i64>> =
                    (0..HKV).map(|h| smallest_norms(&x, h, &(0..23).collect::<Vec<_>>(), 12).into_iter().map(|q| q as i64).collect()).collect();
                assert_eq!(c.kept_positions(), want, "third decode step: cut to the 12 best");
            }
            23 | 24 => assert_eq!(n, 12 + p - 22),
            _ => assert_eq!(n, 12, "sixth decode step: cut again"),
        }
    }
    // It replaces the budget and decoding eviction knobs, so mixing them is refused by name.
    let reg = Registry::builtin().unwrap();
    for bad in [&["target_size=12", "ratio=4"][..], &["target_size=12", "decode_evict=true"], &["interval=3"]] {
        let table = parse_settings(&bad.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let err = reg.build("knorm", &table).err().unwrap_or_else(|| panic!("{bad:?} must be refused")).to_string();
        assert!(err.contains("target_size") || err.contains("interval"), "{bad:?}: {err}");
    }
}

#[test]
fn think_prunes_the_key_channels_with_the_lowest_query_key_energy_and_stores_narrower_keys() {
    let _g = tch::no_grad_guard();
    let x = Qkv::random(21, 31);
    let vals = Vec::<f32>::try_from(&x.v.contiguous().view([-1])).unwrap();
    // key_channel_ratio 0.5 of D = 4: two channels kept per KV head, chosen by
    // mean over the last 8 queries of the head's group of q_c^2, times the keys' mean k_c^2.
    let mut c = cache("think", &["key_channel_ratio=0.5", "channel_window=8"], 0, &spec(21, 20, 2));
    let _ = x.feed(c.as_mut(), 0, 20);
    c.end_prefill().unwrap();
    let group = HQ / HKV;
    let kept: Vec<Vec<usize>> = (0..HKV)
        .map(|kv| {
            let score = |ch: usize| {
                let qn: f64 =
                    (kv * group..(kv + 1) * group).flat_map(|h| (12..20).map(move |i| (h, i))).map(|(h, i)| (x.qrow(h, i)[ch] as f64).powi(2)).sum::<f64>()
                        / (8 * group) as f64;
                let kn: f64 = (0..20).map(|p| (x.krow(kv, p)[ch] as f64).powi(2)).sum::<f64>() / 20.0;
                qn * kn
            };
            let mut chans: Vec<usize> = (0..D).collect();
            chans.sort_by(|a, b| score(*b).partial_cmp(&score(*a)).unwrap());
            let mut top = chans[..2].to_vec();
            top.sort();
            top
        })
        .collect();
    let held = c.held_tensors();
    let k = &held.iter().find(|(n, _)| *n == "k").expect("keys held").1;
    assert_eq!(k.size(), vec![1, HKV as i64, 20, 2], "keys hold 2 of 4 channels");
    let chans = &held.iter().find(|(n, _)| *n == "key_channels").expect("kept channels held").1;
    let got: Vec<Vec<i64>> = (0..HKV as i64).map(|h| Vec::<i64>::try_from(&chans.get(0).get(h)).unwrap()).collect();
    assert_eq!(got, kept.iter().map(|v| v.iter().map(|&c| c as i64).collect()).collect::<Vec<Vec<i64>>>(), "kept channels vs the f64 reference");
    // The next query attends with q·k over the kept channels only, scale 1/sqrt(D), full values.
    let out = x.feed(c.as_mut(), 20, 21);
    for h in 0..HQ {
        let kv = h / group;
        let logits: Vec<f64> = (0..21).map(|p| kept[kv].iter().map(|&ch| x.qrow(h, 20)[ch] as f64 * x.krow(kv, p)[ch] as f64).sum::<f64>() * 0.5).collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        for d in 0..D {
            let want: f64 = (0..21).map(|p| (logits[p] - m).exp() / z * vals[(kv * 21 + p) * D + d] as f64).sum();
            let got = out.double_value(&[0, h as i64, 0, d as i64]);
            assert!((got - want).abs() < 1e-5, "head {h} channel {d}: {got} vs {want}");
        }
    }
    // It refuses what it cannot prune.
    let table = parse_settings(&["decode_evict=true".to_string(), "key_channel_ratio=0.5".to_string()]).unwrap();
    let f = Registry::builtin().unwrap().build("knorm", &table).unwrap();
    let err = f.layer_cache(0, &spec(21, 20, 2)).err().expect("decode_evict with key_channel_ratio is refused").to_string();
    assert!(err.contains("key_channel_ratio") && err.contains("decode_evict"), "{err}");
}

#[test]
fn adakv_over_knorm_gives_heads_different_budgets_and_really_stores_less() {
    let _g = tch::no_grad_guard();
    // Head 0's keys have norms 1..16 (as in the knorm test), head 1's 100..115: at ratio 4 the layer
    // keeps 2 heads x 4 = 8 tokens; alpha = 0.25 guarantees each head floor(0.25 * 4) = 1 token,
    // so head 1 keeps only its smallest norm (p = 9, norm 100) and head 0 takes the other 7.
    let norms = |h: usize, p: usize| if h == 0 { (7 * p % 16) as f32 + 1.0 } else { ((5 * p + 3) % 16) as f32 + 100.0 };
    let mut kf = Vec::new();
    for h in 0..HKV {
        for p in 0..16 {
            kf.extend_from_slice(&[0.0, norms(h, p), 0.0, 0.0]);
        }
    }
    let k = Tensor::from_slice(&kf).view([1, HKV as i64, 16, D as i64]);
    tch::manual_seed(5);
    let x = Qkv::from(
        Tensor::randn([1, HQ as i64, 16, D as i64], (Kind::Float, Device::Cpu)),
        k,
        Tensor::randn([1, HKV as i64, 16, D as i64], (Kind::Float, Device::Cpu)),
    );
    let mut c = cache("adakv", &["ratio=4", "scorer=\"knorm\"", "alpha=0.25"], 0, &spec(16, 16, 2));
    let _ = x.feed(c.as_mut(), 0, 16);
    c.end_prefill().unwrap();
    // Head 0, norms 1..7: p = 0, 7, 14, 5, 12, 3, 10.
    assert_eq!(c.kept_positions(), vec![vec![0, 3, 5, 7, 10, 12, 14], vec![9]]);
    assert_eq!(c.stored_tokens(), 7);
    // 8 tokens, each with K and V (4 f32 each) and an i64 position.
    assert_eq!(c.bytes_held(), 8 * (2 * 4 * 4 + 8));
    // Decoding attends over each head's own tokens; the output must be that of attention over them.
    let x2 = Qkv::from(
        Tensor::cat(&[&x.q, &Tensor::randn([1, HQ as i64, 1, D as i64], (Kind::Float, Device::Cpu))], 2),
        Tensor::cat(&[&x.k, &Tensor::randn([1, HKV as i64, 1, D as i64], (Kind::Float, Device::Cpu))], 2),
        Tensor::cat(&[&x.v, &Tensor::randn([1, HKV as i64, 1, D as i64], (Kind::Float, Device::Cpu))], 2),
    );
    let out = x2.feed(c.as_mut(), 16, 17);
    let vals = Vec::<f32>::try_from(&x2.v.contiguous().view([-1])).unwrap();
    let kept = [vec![0usize, 3, 5, 7, 10, 12, 14, 16], vec![9, 16]];
    for h in 0..HQ {
        let pr = x2.probs(h, 16, &kept[h / 2]);
        let want: f64 = pr.iter().map(|(p, w)| w * vals[((h / 2) * 17 + p) * D] as f64).sum();
        let got = out.double_value(&[0, h as i64, 0, 0]);
        assert!((got - want).abs() < 1e-5, "adakv decode output head {h}: {got} vs {want}");
    }
}

#[test]
fn random_keeps_the_top_of_its_seeded_hash_independently_of_chunking() {
    let _g = tch::no_grad_guard();
    let x = Qkv::random(16, 6);
    let kept = |seed: u64, layer: usize, chunks: &[usize]| {
        let s = format!("seed={seed}");
        let mut c = cache("random", &["ratio=4", &s], layer, &spec(16, 16, 3));
        let mut a = 0;
        for &b in chunks {
            let _ = x.feed(c.as_mut(), a, b);
            a = b;
        }
        c.end_prefill().unwrap();
        c.kept_positions()
    };
    for (seed, layer) in [(5u64, 1usize), (6, 1), (5, 2)] {
        // The score of (layer, row = b*Hkv + h, position) is the documented seeded hash; the
        // selection (4 best of 16 per row) is recomputed here.
        let want: Vec<Vec<i64>> = (0..HKV)
            .map(|row| top(&(0..16).map(|p| (p, kvcache::scorer::hash_unit(seed, layer as u64, row as u64, p as u64))).collect::<Vec<_>>(), 4))
            .collect();
        assert_eq!(kept(seed, layer, &[16]), want, "seed {seed} layer {layer}");
        assert_eq!(kept(seed, layer, &[3, 8, 15, 16]), want, "chunking changed the kept set (seed {seed})");
    }
    assert_ne!(kept(5, 1, &[16]), kept(6, 1, &[16]), "the seed must matter");
    assert_ne!(kept(5, 1, &[16]), kept(5, 2, &[16]), "the layer must matter");
    let rows = kept(5, 1, &[16]);
    assert_ne!(rows[0], rows[1], "heads draw independently");
}

// ---------------------------------------------------------------------------------------------
// Attention-scored methods (references in plain f64 loops)

/// SnapKV's kept set for each KV head: the last `w` queries' softmax over all keys, averaged over
/// the window, avg-pooled with zero padding (divided by `kernel`), averaged over the group; the
/// window is kept plus the best `keep - w` of the body.
fn snapkv_reference(x: &Qkv, s: usize, w: usize, kernel: usize, keep: usize) -> Vec<Vec<i64>> {
    let all: Vec<usize> = (0..s).collect();
    let body = s - w;
    (0..HKV)
        .map(|kv| {
            let mut pooled = vec![0f64; body];
            for h in kv * 2..kv * 2 + 2 {
                let mut vote = vec![0f64; body];
                for i in body..s {
                    for (p, pr) in x.probs(h, i, &all) {
                        if p < body {
                            vote[p] += pr / w as f64;
                        }
                    }
                }
                for (p, out) in pooled.iter_mut().enumerate() {
                    let lo = p.saturating_sub(kernel / 2);
                    let hi = (p + kernel / 2).min(body - 1);
                    *out += (lo..=hi).map(|j| vote[j]).sum::<f64>() / kernel as f64 / 2.0;
                }
            }
            let mut kept = top(&pooled.iter().cloned().enumerate().collect::<Vec<_>>(), keep - w);
            kept.extend(body as i64..s as i64);
            kept
        })
        .collect()
}

#[test]
fn snapkv_keeps_the_window_and_the_best_pooled_votes() {
    let _g = tch::no_grad_guard();
    let x = Qkv::random(24, 7);
    // 24 tokens at ratio 3: keep 8 = window 4 + 4 voted.
    for chunks in [vec![24usize], vec![10, 21, 24]] {
        let mut c = cache("snapkv", &["ratio=3", "window=4", "kernel=3"], 0, &spec(24, 24, 2));
        let mut a = 0;
        for &b in &chunks {
            let _ = x.feed(c.as_mut(), a, b);
            a = b;
        }
        c.end_prefill().unwrap();
        assert_eq!(c.kept_positions(), snapkv_reference(&x, 24, 4, 3, 8), "chunks {chunks:?}");
    }
    // Without pooling (kernel 1) the kept set is the raw votes' top: a different reference.
    assert_ne!(snapkv_reference(&x, 24, 4, 1, 8), snapkv_reference(&x, 24, 4, 3, 8), "pooling must matter on this input");
    let mut c = cache("snapkv", &["ratio=3", "window=4", "kernel=1"], 0, &spec(24, 24, 2));
    let _ = x.feed(c.as_mut(), 0, 24);
    c.end_prefill().unwrap();
    assert_eq!(c.kept_positions(), snapkv_reference(&x, 24, 4, 1, 8));
}

#[test]
fn pyramidkv_layer_budget_schedule_matches_hand_computed_values() {
    use kvplugins::snapkv::pyramid_budget;
    // len 1000, 5 layers, 400 kept on average, window 8, beta 2: min = 400/2 = 200,
    // max = 2*400 - 200 = 600, step (600-200)/4 = 100.
    assert_eq!((0..5).map(|l| pyramid_budget(l, 5, 1000, 400, 8, 2.0)).collect::<Vec<_>>(), vec![600, 500, 400, 300, 200]);
    // len 100, 4 layers, 25 on average, window 4, beta 3: min 8.33, max 41.67, step 11.11.
    assert_eq!((0..4).map(|l| pyramid_budget(l, 4, 100, 25, 4, 3.0)).collect::<Vec<_>>(), vec![42, 31, 19, 8]);
    // Python's round-half-to-even: min 10.5, max 31.5, step 10.5 -> 31.5, 21, 10.5 -> 32, 21, 10.
    assert_eq!((0..3).map(|l| pyramid_budget(l, 3, 100, 21, 1, 2.0)).collect::<Vec<_>>(), vec![32, 21, 10]);
    // max (78) exceeds len - window (56): clamped to 56, min = 80 - 56 = 24, step 16.
    assert_eq!((0..3).map(|l| pyramid_budget(l, 3, 60, 40, 4, 20.0)).collect::<Vec<_>>(), vec![56, 40, 24]);
    // SmolLM2 at 4x on 2,048 tokens with the defaults (window 64, beta 20): min = 512/20 = 25.6 < 64,
    // the pyramid does not fit and every layer keeps the uniform 512.
    assert!((0..30).all(|l| pyramid_budget(l, 30, 2048, 512, 64, 20.0) == 512));
}

#[test]
fn pyramidkv_layers_keep_their_budget_of_snapkv_scores() {
    let _g = tch::no_grad_guard();
    let x = Qkv::random(40, 8);
    // 40 tokens at ratio 2 over 3 layers, window 4, beta 2: min 10, max 30 -> 30, 20, 10.
    for (layer, keep) in [(0usize, 30usize), (1, 20), (2, 10)] {
        let mut c = cache("pyramidkv", &["ratio=2", "window=4", "kernel=3", "beta=2"], layer, &spec(40, 40, 3));
        let _ = x.feed(c.as_mut(), 0, 40);
        c.end_prefill().unwrap();
        assert_eq!(c.kept_positions(), snapkv_reference(&x, 40, 4, 3, keep), "layer {layer}");
    }
}

#[test]
fn tova_keeps_what_the_newest_query_attends_to_and_stays_at_budget() {
    let _g = tch::no_grad_guard();
    let x = Qkv::random(18, 9);
    // Score of key p: attention of the newest query averaged over all 4 query heads (each over
    // its own KV head's keys); the newest token is always kept; one ranking for both KV heads.
    let tova = |kept: &[usize], i: usize, n: usize| {
        let mut score: Vec<(usize, f64)> = kept.iter().map(|&p| (p, 0.0)).collect();
        for h in 0..HQ {
            for (p, pr) in x.probs(h, i, kept) {
                score.iter_mut().find(|e| e.0 == p).unwrap().1 += pr / HQ as f64;
            }
        }
        score.iter_mut().find(|e| e.0 == i).unwrap().1 = f64::INFINITY;
        top(&score, n)
    };
    let mut c = cache("tova", &["ratio=4"], 0, &spec(18, 16, 2));
    let _ = x.feed(c.as_mut(), 0, 16);
    c.end_prefill().unwrap();
    let mut want = tova(&(0..16).collect::<Vec<_>>(), 15, 4);
    assert_eq!(c.kept_positions(), vec![want.clone(); HKV], "after prefill");
    for p in 16..18 {
        let _ = x.feed(c.as_mut(), p, p + 1);
        let cand: Vec<usize> = want.iter().map(|&q| q as usize).chain([p]).collect();
        want = tova(&cand, p, 4);
        assert_eq!(c.kept_positions(), vec![want.clone(); HKV], "after decoding position {p}");
    }
}

#[test]
fn h2o_decode_mode_accumulates_from_the_first_decode_step() {
    let _g = tch::no_grad_guard();
    let x = Qkv::random(20, 10);
    let mut c = cache("h2o", &["ratio=4"], 0, &spec(20, 16, 2));
    let _ = x.feed(c.as_mut(), 0, 16);
    c.end_prefill().unwrap();
    assert_eq!(c.kept_positions(), vec![range(0, 16); HKV], "the paper's H2O does not compress the prefill");
    // First decode step: S = 17, keep floor(17/4) = 4 = recent floor(17*0.5/4) = 2 + heavy 2.
    let mut state: Vec<Vec<(usize, f64)>> = vec![(0..16).map(|p| (p, 0.0)).collect(); HKV];
    for p in 16..20 {
        let _ = x.feed(c.as_mut(), p, p + 1);
        for (kv, st) in state.iter_mut().enumerate() {
            st.push((p, 0.0));
            let keys: Vec<usize> = st.iter().map(|e| e.0).collect();
            for h in kv * 2..kv * 2 + 2 {
                for (q, pr) in x.probs(h, p, &keys) {
                    st.iter_mut().find(|e| e.0 == q).unwrap().1 += pr / 2.0;
                }
            }
            // The 2 newest are kept; the 2 best accumulated scores among the rest.
            let n = st.len();
            let heavy = top(&st[..n - 2], 2);
            st.retain(|e| e.0 >= p - 1 || heavy.contains(&(e.0 as i64)));
        }
        let want: Vec<Vec<i64>> = state.iter().map(|st| st.iter().map(|e| e.0 as i64).collect()).collect();
        assert_eq!(c.kept_positions(), want, "after decoding position {p}");
    }
}

#[test]
fn h2o_prefill_mode_ranks_by_summed_prompt_attention() {
    let _g = tch::no_grad_guard();
    let x = Qkv::random(16, 11);
    let mut c = cache("h2o", &["ratio=4", "mode=\"prefill\"", "recent_fraction=0", "decode_evict=false"], 0, &spec(16, 16, 2));
    let _ = x.feed(c.as_mut(), 0, 6);
    let _ = x.feed(c.as_mut(), 6, 16);
    c.end_prefill().unwrap();
    let all: Vec<usize> = (0..16).collect();
    let want: Vec<Vec<i64>> = (0..HKV)
        .map(|kv| {
            let mut score = vec![0f64; 16];
            for h in kv * 2..kv * 2 + 2 {
                for i in 0..16 {
                    for (p, pr) in x.probs(h, i, &all) {
                        score[p] += pr / 2.0;
                    }
                }
            }
            top(&score.into_iter().enumerate().collect::<Vec<_>>(), 4)
        })
        .collect();
    assert_eq!(c.kept_positions(), want);
}

#[test]
fn h2o_per_query_head_ranks_each_query_heads_own_attention() {
    // heads = "query" (the paper's code on GQA models): KV heads repeated per query head, each
    // query head keeps the top of its own summed attention, not its group's mean.
    let _g = tch::no_grad_guard();
    let x = Qkv::random(16, 11);
    let set = ["ratio=2", "mode=\"prefill\"", "recent_fraction=0", "decode_evict=false"];
    let mut c = cache("h2o", &[&set[..], &["heads=\"query\""]].concat(), 0, &spec(16, 16, 2));
    let _ = x.feed(c.as_mut(), 0, 6);
    let _ = x.feed(c.as_mut(), 6, 16);
    c.end_prefill().unwrap();
    let all: Vec<usize> = (0..16).collect();
    let want: Vec<Vec<i64>> = (0..HQ)
        .map(|h| {
            let mut score = vec![0f64; 16];
            for i in 0..16 {
                for (p, pr) in x.probs(h, i, &all) {
                    score[p] += pr;
                }
            }
            top(&score.into_iter().enumerate().collect::<Vec<_>>(), 8)
        })
        .collect();
    let kept = c.kept_positions();
    assert_eq!(kept, want, "one kept set per query head");
    assert!(kept[0] != kept[1] || kept[2] != kept[3], "this seed must separate two query heads of a group");
    // It holds the repeated heads: group (2) times the bytes of the per-KV-head variant.
    let mut per_kv = cache("h2o", &set, 0, &spec(16, 16, 2));
    let _ = x.feed(per_kv.as_mut(), 0, 16);
    per_kv.end_prefill().unwrap();
    assert_eq!(c.bytes_held(), 2 * per_kv.bytes_held());
    // Its attention output over what it keeps is grouped-query attention with each query head's
    // own kept keys: query head h at position 16 (a decode step) sees only kept[h] and itself.
    let y = Qkv::random(17, 12);
    let (q, k, v) = (y.q.narrow(2, 16, 1), y.k.narrow(2, 16, 1), y.v.narrow(2, 16, 1));
    let out = c.attend(&AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: 16, sliding_window: None, scale: (D as f64).powf(-0.5) }).unwrap();
    assert_eq!(out.size(), vec![1, HQ as i64, 1, D as i64]);
    for (h, kept_h) in kept.iter().enumerate() {
        let kv = (h / (HQ / HKV)) as i64;
        let idx = Tensor::from_slice(kept_h);
        let keys = Tensor::cat(&[x.k.get(0).get(kv).index_select(0, &idx), k.get(0).get(kv)], 0).to_kind(Kind::Double);
        let vals = Tensor::cat(&[x.v.get(0).get(kv).index_select(0, &idx), v.get(0).get(kv)], 0).to_kind(Kind::Double);
        let qh = q.get(0).get(h as i64).to_kind(Kind::Double);
        let p = (qh.matmul(&keys.transpose(0, 1)) * (D as f64).powf(-0.5)).softmax(-1, Kind::Double);
        let want = p.matmul(&vals);
        let got = out.get(0).get(h as i64).to_kind(Kind::Double);
        let diff = (got - want).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "query head {h}: attention over its own kept keys differs by {diff}");
    }
}

// ---------------------------------------------------------------------------------------------
// The mask of evicting caches

fn bools(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.to_kind(Kind::Int64).contiguous().view([-1])).unwrap()
}

#[test]
fn position_mask_is_small_when_heads_share_positions() {
    // Queries at 5, 6 (GQA group 2 folds them as 5, 6, 5, 6); keys at 0, 2, 4, 6 on both heads.
    let shared = Tensor::from_slice(&[0i64, 2, 4, 6, 0, 2, 4, 6]).view([1, 2, 4]);
    let m = position_mask(5, 2, 2, &shared, Visibility::default());
    assert_eq!(m.size(), vec![4, 4], "shared positions give one [G*L, S] mask");
    assert_eq!(m.kind(), Kind::Bool);
    assert_eq!(bools(&m), vec![1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1]);
    // Sinks 1, local 2: a key is visible if it is a sink or less than 2 behind.
    let m = position_mask(5, 2, 2, &shared, Visibility { window: None, sinks_local: Some((1, 2)) });
    assert_eq!(bools(&m), vec![1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1]);
    // Different positions per head: [B, Hkv, G*L, S]; head 1 holds 1, 3, 5, 7.
    let per_head = Tensor::from_slice(&[0i64, 2, 4, 6, 1, 3, 5, 7]).view([1, 2, 4]);
    let m = position_mask(5, 2, 2, &per_head, Visibility { window: Some(4), sinks_local: None });
    assert_eq!(m.size(), vec![1, 2, 4, 4]);
    assert_eq!(m.kind(), Kind::Bool);
    // Window 4: q - k < 4. Head 0: q5 sees 2, 4; q6 sees 4, 6. Head 1: q5 sees 3, 5; q6 sees 3, 5.
    let h0 = [0, 1, 1, 0, 0, 0, 1, 1];
    let h1 = [0, 1, 1, 0, 0, 1, 1, 0];
    let want: Vec<i64> = [&h0[..], &h0[..], &h1[..], &h1[..]].concat();
    assert_eq!(bools(&m), want);
}

#[test]
fn attention_at_shared_positions_equals_the_explicit_full_mask() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(12);
    let (b, s, l) = (2i64, 9i64, 3i64);
    let q = Tensor::randn([b, HQ as i64, l, D as i64], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([b, HKV as i64, s, D as i64], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([b, HKV as i64, s, D as i64], (Kind::Float, Device::Cpu));
    let pos = Tensor::from_slice(&[0i64, 1, 4, 5, 7, 8, 9, 10, 11]).view([1, 1, s]).expand([b, HKV as i64, s], true).contiguous();
    let step = AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: 9, sliding_window: None, scale: 0.5 };
    let vis = Visibility { window: None, sinks_local: Some((2, 4)) };
    let got = attend_at_positions(&step, &k, &v, &pos, vis);
    // The same attention with the mask spelled out per (batch, head, folded query, key).
    let mut mf = Vec::new();
    for _ in 0..b * HKV as i64 {
        for _g in 0..2 {
            for i in 9..9 + l {
                for &p in &[0i64, 1, 4, 5, 7, 8, 9, 10, 11] {
                    mf.push(p <= i && (p < 2 || i - p < 4));
                }
            }
        }
    }
    let mask = Tensor::from_slice(&mf).view([b, HKV as i64, 2 * l, s]);
    let qg = q.reshape([b, HKV as i64, 2 * l, D as i64]);
    let want = Tensor::scaled_dot_product_attention(&qg, &k, &v, Some(&mask), 0.0, false, 0.5, false).reshape([b, HQ as i64, l, D as i64]);
    assert!(got.equal(&want), "max diff {}", (&got - &want).abs().max().double_value(&[]));
}

/// StreamingLLM's blockwise prefill attention ([`attend_sinks_local`]) against one masked call
/// over everything held ([`attend_at_positions`], equal to the explicit mask above): the first
/// prefill chunk (positions from 0), a later chunk over a trimmed store (sinks, then the window
/// and the chunk), no sinks, a window shorter than a query block, and per-head positions (its
/// fallback, which must be the same call).
#[test]
fn streaming_attention_blockwise_equals_the_whole_mask() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(7);
    let d = 8i64;
    // (first query position, held positions, queries, sinks, local)
    let run = |a: i64, b: i64| (a..b).collect::<Vec<i64>>();
    let cases: Vec<(usize, Vec<i64>, usize, usize, usize)> = vec![
        (0, run(0, 700), 700, 4, 300),
        (0, run(0, 600), 600, 0, 257),
        (0, run(0, 520), 520, 3, 40),
        (500, [run(0, 4), run(200, 900)].concat(), 400, 4, 300),
        (500, [run(0, 2), run(460, 900)].concat(), 400, 2, 41),
        (300, run(0, 700), 400, 5, 1000),
    ];
    for (start, held, l, sinks, local) in cases {
        let s = held.len() as i64;
        let q = Tensor::randn([1, HQ as i64, l as i64, d], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([1, HKV as i64, s, d], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([1, HKV as i64, s, d], (Kind::Float, Device::Cpu));
        let pos = Tensor::from_slice(&held).view([1, 1, s]).expand([1, HKV as i64, s], true).contiguous();
        let step = AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: start, sliding_window: None, scale: 0.35 };
        let vis = Visibility { window: None, sinks_local: Some((sinks, local)) };
        let want = attend_at_positions(&step, &k, &v, &pos, vis);
        let got = attend_sinks_local(&step, &k, &v, &pos, vis);
        assert_eq!(got.size(), want.size());
        let diff = (&got - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "start {start}, {s} held, sinks {sinks}, local {local}: max diff {diff}");
    }
    // Heads holding different positions: the fallback is the one masked call itself.
    let l = 300i64;
    let held: Vec<i64> = [run(0, 400), (0..400).map(|p| p * 2).collect()].concat();
    let q = Tensor::randn([1, HQ as i64, l, d], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([1, HKV as i64, 400, d], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([1, HKV as i64, 400, d], (Kind::Float, Device::Cpu));
    let pos = Tensor::from_slice(&held).view([1, HKV as i64, 400]);
    let step = AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: 800, sliding_window: None, scale: 0.35 };
    let vis = Visibility { window: None, sinks_local: Some((4, 100)) };
    assert!(attend_sinks_local(&step, &k, &v, &pos, vis).equal(&attend_at_positions(&step, &k, &v, &pos, vis)));
}

// ---------------------------------------------------------------------------------------------
// KVzip: context reconstruction and a budget pooled over layers

/// KVzip's scores of one reconstruction pass (f64): per KV head, for each target position, the
/// most attention any query of the pass (`x`'s tokens from `s` on, any query head of the group)
/// pays it, the softmax over the first `min(sinks, target.start)` tokens, the target and the
/// pass's own tokens (causal).
fn kvzip_reference(x: &Qkv, s: usize, target: std::ops::Range<usize>, sinks: usize) -> Vec<Vec<(usize, f64)>> {
    let keys: Vec<usize> = (0..sinks.min(target.start)).chain(target.clone()).chain(s..x.n).collect();
    (0..HKV)
        .map(|kv| {
            target
                .clone()
                .map(|p| {
                    let best = (kv * HQ / HKV..(kv + 1) * HQ / HKV)
                        .flat_map(|h| (s..x.n).map(move |i| (h, i)))
                        .map(|(h, i)| x.probs(h, i, &keys).into_iter().find(|(q, _)| *q == p).map_or(0.0, |(_, w)| w))
                        .fold(0.0, f64::max);
                    (p, best)
                })
                .collect()
        })
        .collect()
}

#[test]
fn kvzip_scores_by_reconstruction_attention_and_pools_the_budget_over_layers() {
    let (s, n_sink, pass) = (12usize, 2usize, 5usize);
    for layerwise in [false, true] {
        let sp = spec(s + 4, s, 2);
        let lw = format!("layerwise={layerwise}");
        let set = ["ratio=3", "n_sink=2", lw.as_str()];
        let mut caches: Vec<Box<dyn LayerCache>> = (0..2).map(|l| cache("kvzip", &set, l, &sp)).collect();
        // expected[layer][kv head] = (position, score) for every context position.
        let mut expected: Vec<Vec<Vec<(usize, f64)>>> = Vec::new();
        for (l, c) in caches.iter_mut().enumerate() {
            let prompt = Qkv::random(s, 100 + l as i64);
            let _ = prompt.feed(c.as_mut(), 0, s);
            let mut sc: Vec<Vec<(usize, f64)>> = (0..HKV).map(|_| (0..s).map(|p| (p, 0.0)).collect()).collect();
            for (i, target) in [0..6usize, 6..12].into_iter().enumerate() {
                let a = Qkv::random(pass, 200 + 10 * l as i64 + i as i64);
                let x = Qkv::from(Tensor::cat(&[&prompt.q, &a.q], 2), Tensor::cat(&[&prompt.k, &a.k], 2), Tensor::cat(&[&prompt.v, &a.v], 2));
                let step = AttentionStep { layer: l, q: &a.q, k: &a.k, v: &a.v, start_pos: s, sliding_window: None, scale: (D as f64).powf(-0.5) };
                let rp = kvcore::cache::ReconstructionPass { step: &step, target: target.clone(), want_output: true, scores: None };
                let out = c.reconstruct(&rp).unwrap().output.unwrap();
                // The pass attends over the whole prompt and itself, as a full cache would.
                let mut full = kvcore::cache::FullCacheFactory.layer_cache(l, &sp).unwrap();
                let want = x.feed(full.as_mut(), 0, s + pass).narrow(2, s as i64, pass as i64);
                assert!(out.allclose(&want, 1e-5, 1e-6, false), "layer {l} pass {i}: reconstruction output differs from full attention");
                assert_eq!(c.stored_tokens(), s, "a reconstruction pass stores nothing");
                for (kv, row) in kvzip_reference(&x, s, target.clone(), n_sink).into_iter().enumerate() {
                    for (p, w) in row {
                        sc[kv][p].1 = w;
                    }
                }
            }
            for row in sc.iter_mut() {
                for e in row.iter_mut().take(n_sink) {
                    e.1 = 10.0;
                }
            }
            expected.push(sc);
        }
        kvcore::generate::end_prefill(&mut caches).unwrap();
        // Alone, each head would keep floor(12 / 3) = 4: pooled, 16 over the model, or 8 per layer.
        let pools: Vec<Vec<(usize, usize)>> = if layerwise {
            (0..2).map(|l| (0..HKV).map(|kv| (l, kv)).collect()).collect()
        } else {
            vec![(0..2).flat_map(|l| (0..HKV).map(move |kv| (l, kv))).collect()]
        };
        let mut counts = Vec::new();
        for pool in pools {
            let mut all: Vec<((usize, usize), usize, f64)> =
                pool.iter().flat_map(|&(l, kv)| expected[l][kv].iter().map(move |&(p, w)| ((l, kv), p, w))).collect();
            all.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap());
            let kept: Vec<_> = all.into_iter().take(4 * pool.len()).collect();
            for &(l, kv) in &pool {
                let mut want: Vec<i64> = kept.iter().filter(|(o, _, _)| *o == (l, kv)).map(|(_, p, _)| *p as i64).collect();
                want.sort();
                assert_eq!(caches[l].kept_positions()[kv], want, "layerwise={layerwise} layer {l} head {kv}");
                counts.push(want.len());
            }
        }
        assert_eq!(counts.iter().sum::<usize>(), 16, "layerwise={layerwise}: the pooled budget keeps what the heads would keep alone in all");
        assert!(counts.iter().any(|&n| n != 4), "layerwise={layerwise}: heads keep {counts:?}, the pooled budget should move tokens between them");
    }
}

#[test]
fn kvzip_scores_from_flash_normalisers_equal_the_explicit_softmax() {
    // The CPU path (normalisers from flash attention, -lse folded into one matmul) against the
    // explicit softmax of other devices, over passes longer than one 512-row block, with and
    // without sinks before the target.
    let _g = tch::no_grad_guard();
    tch::manual_seed(7);
    let (s, pass) = (700usize, 530usize);
    let stored_k = Tensor::randn([1, HKV as i64, s as i64, D as i64], (Kind::Float, Device::Cpu));
    let stored_v = Tensor::randn([1, HKV as i64, s as i64, D as i64], (Kind::Float, Device::Cpu));
    let q = Tensor::randn([1, HQ as i64, pass as i64, D as i64], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([1, HKV as i64, pass as i64, D as i64], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([1, HKV as i64, pass as i64, D as i64], (Kind::Float, Device::Cpu));
    let step = AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: s, sliding_window: None, scale: (D as f64).powf(-0.5) };
    for target in [0..300usize, 300..700] {
        let fast = kvmethods::eviction::reconstruction_scores(&step, &stored_k, &stored_v, target.clone(), 4);
        let plain = kvmethods::eviction::reconstruction_scores_softmax(&step, &stored_k, target.clone(), 4);
        assert_eq!(fast.size(), vec![1, HKV as i64, target.len() as i64]);
        let err = (&fast - &plain).abs().max().double_value(&[]);
        assert!(fast.allclose(&plain, 1e-4, 1e-7, false), "target {target:?}: largest difference {err:e}");
    }
}
