//! Quantized storage: round trips within the analytic bound, lossless packing, KIVI's residual
//! rules at every step (which tokens are quantized after a prefill of T tokens and after each of
//! 300 decode steps, and that decoding attends to exactly those decoded values), FlexGen's fake
//! mode against a direct implementation of the paper's formula, the bytes held at SmolLM2's shape,
//! and eviction + quantized storage composed.

use kvcore::cache::{tensor_bytes, AttentionStep, CacheSpec, LayerCache};
use kvcore::device::DType;
use kvcore::registry::{parse_settings, Registry};
use kvmethods::quant::{fake_quantize, pack_codes, unpack_codes, Quantizer};
use kvmethods::quantized::{QuantCache, QuantConfig};
use tch::{Device, Kind, Tensor};

use kvplugins as _;

fn spec(kv_heads: usize, head_dim: usize, kv: DType, tokens: usize) -> CacheSpec {
    CacheSpec {
        batch: 1,
        kv_heads,
        head_dim,
        kv_dtype: kv,
        device: Device::Cpu,
        expected_tokens: tokens,
        query_heads: kv_heads * 3,
        num_layers: 1,
        context_tokens: None,
        rope: None,
    }
}

#[test]
fn asymmetric_round_trip_is_within_half_a_step() {
    tch::manual_seed(11);
    for bits in [2u32, 4, 8] {
        for group in [32usize, 64] {
            let q = Quantizer::new(bits, group, false);
            // Different magnitudes per row, an outlier channel, and one constant group.
            let x =
                Tensor::randn([2, 3, 40, 128], (Kind::Float, Device::Cpu)) * Tensor::linspace(0.1, 20.0, 40, (Kind::Float, Device::Cpu)).view([1, 1, 40, 1]);
            let _ = x.narrow(3, 5, 1).g_mul_scalar_(30.0);
            let _ = x.narrow(2, 0, 1).narrow(3, 0, group as i64).fill_(1.25);
            let p = q.quantize(&x, Kind::Float);
            assert_eq!(p.codes.size(), vec![2, 3, 40, 128 * bits as i64 / 8], "{bits}-bit codes are packed");
            let y = q.dequantize(&p, &q.code_table(Kind::Float, Device::Cpu), Kind::Float);
            assert!(y.isfinite().all().int64_value(&[]) == 1, "no NaN/Inf");
            let xg = x.view([2, 3, 40, -1, group as i64]);
            let range = xg.amax(-1, true) - xg.amin(-1, true);
            let bound = range / q.max_code() / 2.0 + 1e-5;
            let err = (&y - &x).abs().view([2, 3, 40, -1, group as i64]);
            let worst = (err - bound).max().double_value(&[]);
            assert!(worst <= 0.0, "bits {bits} group {group}: error exceeds range/(2^b-1)/2 by {worst}");
            let constant = y.narrow(2, 0, 1).narrow(3, 0, group as i64);
            assert!(constant.eq(1.25).all().int64_value(&[]) == 1, "a constant group decodes exactly");
        }
    }
}

#[test]
fn symmetric_round_trip_is_within_half_a_step() {
    tch::manual_seed(12);
    for bits in [4u32, 8] {
        let q = Quantizer::new(bits, 64, true);
        let x = Tensor::randn([1, 2, 50, 64], (Kind::Float, Device::Cpu)) * 3.0;
        let _ = x.narrow(2, 7, 1).zero_();
        let p = q.quantize(&x, Kind::Float);
        assert!(p.min.is_none());
        let y = q.dequantize(&p, &q.code_table(Kind::Float, Device::Cpu), Kind::Float);
        let amax = x.abs().amax(-1, true);
        let bound = amax / q.max_code() / 2.0 + 1e-5;
        let worst = ((&y - &x).abs() - bound).max().double_value(&[]);
        assert!(worst <= 0.0, "int{bits}: error exceeds max|x|/(2^(b-1)-1)/2 by {worst}");
        assert!(y.narrow(2, 7, 1).eq(0.0).all().int64_value(&[]) == 1, "an all-zero token decodes to zeros");
    }
}

#[test]
fn packing_is_lossless() {
    tch::manual_seed(13);
    for bits in [2u32, 4, 8] {
        let codes = Tensor::randint(1 << bits, [3, 5, 64], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8);
        let packed = pack_codes(&codes, bits);
        assert_eq!(packed.size(), vec![3, 5, 64 * bits as i64 / 8]);
        assert!(unpack_codes(&packed, bits).equal(&codes), "{bits}-bit pack/unpack");
        // Little end first, as KIVI packs.
        if bits == 2 {
            let one = Tensor::from_slice(&[1u8, 2, 3, 0]).to_kind(Kind::Uint8);
            assert_eq!(pack_codes(&one, 2).int64_value(&[0]), 1 + (2 << 2) + (3 << 4));
        }
    }
}

/// The paper's `AsymGroupedQuantizer` written out element by element.
fn flexgen_direct(x: &[f32], group: usize, bits: u32) -> Vec<f32> {
    let levels = ((1u32 << bits) - 1) as f32;
    let mut out = vec![0f32; x.len()];
    for (g, chunk) in x.chunks(group).enumerate() {
        let mn = chunk.iter().cloned().fold(f32::INFINITY, f32::min);
        let mx = chunk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let scale = (mx - mn) / levels;
        for (i, &v) in chunk.iter().enumerate() {
            let q = ((v - mn) / scale).max(0.0).round();
            out[g * group + i] = q * scale + mn;
        }
    }
    out
}

#[test]
fn flexgen_fake_mode_matches_the_formula() {
    tch::manual_seed(14);
    let x = Tensor::randn([1, 2, 33, 64], (Kind::Float, Device::Cpu)) * 4.0;
    let ours = fake_quantize(&x, 4, 32);
    let flat = Vec::<f32>::try_from(&x.contiguous().view([-1])).unwrap();
    let direct = Tensor::from_slice(&flexgen_direct(&flat, 32, 4)).view([1, 2, 33, 64]);
    let diff = (&ours - &direct).abs().max().double_value(&[]);
    assert!(diff <= 1e-6, "fake quantization differs from the formula by {diff}");
    // Its groups are per token: tokens fake-quantized a few at a time are the bits of all of them
    // fake-quantized at once (what lets the cache quantize each token once, as it arrives).
    let pieces: Vec<Tensor> = [(0, 16), (16, 1), (17, 16)].iter().map(|&(s, n)| fake_quantize(&x.narrow(2, s, n), 4, 32)).collect();
    let bits = |t: &Tensor| Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap().iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&Tensor::cat(&pieces, 2)), bits(&ours), "fake quantization depends on the tokens around");
    // The cache in fake mode attends to exactly the fake-quantized K/V of everything so far.
    let s = spec(2, 64, DType::F32, 40);
    let mut c = QuantCache::new(&QuantConfig::flexgen(4, 32, true), s).unwrap();
    let mut all_k = Vec::new();
    let mut all_v = Vec::new();
    let mut pos = 0;
    for l in [16i64, 1, 1] {
        let q = Tensor::randn([1, 6, l, 64], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([1, 2, l, 64], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([1, 2, l, 64], (Kind::Float, Device::Cpu));
        all_k.push(k.shallow_clone());
        all_v.push(v.shallow_clone());
        let step = AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: pos, sliding_window: None, scale: 0.125 };
        let out = c.attend(&step).unwrap();
        let kf = fake_quantize(&Tensor::cat(&all_k, 2), 4, 32).repeat_interleave_self_int(3, 1, None);
        let vf = fake_quantize(&Tensor::cat(&all_v, 2), 4, 32).repeat_interleave_self_int(3, 1, None);
        let n = pos as i64 + l;
        let mask = Tensor::ones([l, n], (Kind::Bool, Device::Cpu)).tril(n - l);
        let expect = Tensor::scaled_dot_product_attention(&q, &kf, &vf, Some(&mask), 0.0, false, 0.125, false);
        let d = (&out - &expect).abs().max().double_value(&[]);
        assert!(d < 1e-5, "fake-mode attention differs by {d}");
        pos += l as usize;
        if pos == 16 {
            c.end_prefill().unwrap();
        }
        assert_eq!(c.bytes_held(), (n * 2 * 64 * 4 * 2) as u64, "fake mode holds the full-precision cache");
        // What it holds: the bits of every token so far fake-quantized at this step.
        let held = c.held_tensors();
        let k_held = &held.iter().find(|(name, _)| *name == "k").expect("fake mode holds keys").1;
        assert_eq!(bits(k_held), bits(&fake_quantize(&Tensor::cat(&all_k, 2), 4, 32)), "held keys after {n} tokens");
    }
}

/// Attention of one query over decoded K/V `[1, H, n, D]` (reference for the blockwise path).
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    let g = q.size()[1] / k.size()[1];
    // In f64, so the reference's own rounding does not count against the cache's f32 result.
    let (q, k, v) = (q.to_kind(Kind::Double), k.to_kind(Kind::Double), v.to_kind(Kind::Double));
    let (k, v) = (k.repeat_interleave_self_int(g, 1, None), v.repeat_interleave_self_int(g, 1, None));
    (q.matmul(&k.transpose(-1, -2)) * scale).softmax(-1, Kind::Double).matmul(&v).to_kind(Kind::Float)
}

#[test]
fn kivi_residual_follows_the_rules_at_every_step() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(15);
    let (g, r) = (32usize, 128usize);
    for t in [100usize, 256, 300] {
        let s = spec(2, 64, DType::F32, t + 300);
        let mut c = QuantCache::new(&QuantConfig::kivi(2, g, r), s).unwrap();
        // Chunked prefill attends to the exact K/V.
        let mut pos = 0;
        while pos < t {
            let l = 64.min(t - pos) as i64;
            let q = Tensor::randn([1, 6, l, 64], (Kind::Float, Device::Cpu));
            let k = Tensor::randn([1, 2, l, 64], (Kind::Float, Device::Cpu));
            let v = Tensor::randn([1, 2, l, 64], (Kind::Float, Device::Cpu));
            let _ = c.attend(&AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: pos, sliding_window: None, scale: 0.125 }).unwrap();
            pos += l as usize;
        }
        assert_eq!(c.quantized_positions(), (vec![], vec![]), "T={t}: nothing is quantized during prefill");
        c.end_prefill().unwrap();
        let keys_q = if t >= r { t - t % r } else { 0 };
        let vals_q = t.saturating_sub(r);
        let (kq, vq) = c.quantized_positions();
        assert_eq!(kq, (0..keys_q as i64).collect::<Vec<_>>(), "T={t}: keys quantized after prefill");
        assert_eq!(vq, (0..vals_q as i64).collect::<Vec<_>>(), "T={t}: values quantized after prefill");
        let mut key_residual = t - keys_q;
        let mut worst = 0f64;
        for step in 0..300 {
            let (k_before, v_before) = c.decoded();
            let q = Tensor::randn([1, 6, 1, 64], (Kind::Float, Device::Cpu));
            let k = Tensor::randn([1, 2, 1, 64], (Kind::Float, Device::Cpu));
            let v = Tensor::randn([1, 2, 1, 64], (Kind::Float, Device::Cpu));
            let out = c.attend(&AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: pos, sliding_window: None, scale: 0.125 }).unwrap();
            // The new token is attended in full precision, everything before as decoded.
            let expect = reference_attention(&q, &Tensor::cat(&[&k_before, &k], 2), &Tensor::cat(&[&v_before, &v], 2), 0.125);
            let d = (&out - &expect).abs().max().double_value(&[]);
            worst = worst.max(d);
            assert!(d < 1e-5, "T={t} step {step}: blockwise attention differs from the reference by {d}");
            pos += 1;
            key_residual += 1;
            if key_residual == r {
                key_residual = 0;
            }
            let (kq, vq) = c.quantized_positions();
            assert_eq!(kq.len(), pos - key_residual, "T={t} step {step}: quantized keys");
            assert_eq!(vq.len(), pos.saturating_sub(r), "T={t} step {step}: quantized values");
            assert_eq!(c.stored_tokens(), pos);
            let held: u64 = c.held_tensors().iter().map(|(_, t)| tensor_bytes(t)).sum();
            assert_eq!(held, c.bytes_held());
        }
        eprintln!("T={t}: largest difference from the f64 reference over 300 steps {worst:.2e}");
    }
}

/// Bytes a quantized cache holds after a prefill of `t` random tokens at SmolLM2's KV shape
/// (3 KV heads, head_dim 64) with a bf16 cache, over the bytes of a 16-bit full cache.
fn ratio_at_smollm2_shape(cfg: &QuantConfig, t: usize) -> f64 {
    let _g = tch::no_grad_guard();
    tch::manual_seed(16);
    let s = spec(3, 64, DType::Bf16, t);
    let mut c = QuantCache::new(cfg, s).unwrap();
    let q = Tensor::randn([1, 9, t as i64, 64], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([1, 3, t as i64, 64], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([1, 3, t as i64, 64], (Kind::Float, Device::Cpu));
    let _ = c.attend(&AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: 0, sliding_window: None, scale: 0.125 }).unwrap();
    c.end_prefill().unwrap();
    let full = (t * 3 * 64 * 2 * 2) as f64;
    full / c.bytes_held() as f64
}

#[test]
fn bytes_held_against_a_16_bit_cache_at_4096_tokens() {
    let kivi2 = ratio_at_smollm2_shape(&QuantConfig::kivi(2, 32, 128), 4096);
    let kivi4 = ratio_at_smollm2_shape(&QuantConfig::kivi(4, 32, 128), 4096);
    let flex4 = ratio_at_smollm2_shape(&QuantConfig::flexgen(4, 32, false), 4096);
    let int8 = ratio_at_smollm2_shape(&QuantConfig::symmetric(8, 0), 4096);
    let int4 = ratio_at_smollm2_shape(&QuantConfig::symmetric(4, 0), 4096);
    eprintln!("ratio vs 16-bit full at 4096 tokens: kivi2 {kivi2:.3} kivi4 {kivi4:.3} flexgen4 {flex4:.3} int8 {int8:.3} int4 {int4:.3}");
    assert!((4.5..=5.6).contains(&kivi2), "KIVI-2 {kivi2}");
    assert!((2.9..=3.4).contains(&kivi4), "KIVI-4 {kivi4}");
    assert!(int8 >= 1.9, "int8 {int8}");
    // Exact arithmetic: FlexGen-4 holds 4 + 32/32 bits per element; int4 4 + 16/64.
    assert!((flex4 - 16.0 / 5.0).abs() < 1e-9, "FlexGen-4 {flex4}");
    assert!((int4 - 16.0 / 4.25).abs() < 1e-9, "int4 {int4}");
}

#[test]
fn eviction_composes_with_quantized_storage() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(17);
    let reg = Registry::builtin().unwrap();
    let plain = reg.build("snapkv", &parse_settings(&["ratio=4".into()]).unwrap()).unwrap();
    let composed = reg.build("snapkv", &parse_settings(&["ratio=4".into(), "storage={method=\"kivi\", bits=2}".into()]).unwrap()).unwrap();
    let s = CacheSpec { context_tokens: Some(1024), ..spec(2, 64, DType::F32, 1030) };
    let (mut a, mut b) = (plain.layer_cache(0, &s).unwrap(), composed.layer_cache(0, &s).unwrap());
    let mut pos = 0;
    for l in [512i64, 512, 1, 1, 1, 1] {
        let q = Tensor::randn([1, 6, l, 64], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([1, 2, l, 64], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([1, 2, l, 64], (Kind::Float, Device::Cpu));
        let step = AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: pos, sliding_window: None, scale: 0.125 };
        let (oa, ob) = (a.attend(&step).unwrap(), b.attend(&step).unwrap());
        pos += l as usize;
        if pos == 1024 {
            a.end_prefill().unwrap();
            b.end_prefill().unwrap();
        } else if pos > 1024 {
            // Same kept tokens; the composed cache attends to them quantized.
            let d = (&oa - &ob).abs().max().double_value(&[]);
            assert!(d > 0.0 && d < 0.5, "composed output should be close to, not equal to, the exact one (diff {d})");
        }
        assert_eq!(a.kept_positions(), b.kept_positions(), "the same tokens are kept");
    }
    let names: Vec<&str> = b.held_tensors().iter().map(|(n, _)| *n).collect();
    assert!(names.contains(&"k_codes") && names.contains(&"v_codes"), "{names:?}");
    let (ba, bb) = (a.bytes_held(), b.bytes_held());
    eprintln!("snapkv ratio 4: {ba} bytes exact, {bb} bytes with kivi-2 storage");
    assert!(bb * 2 < ba, "KIVI-2 storage of 256 kept tokens (128 of them values in full precision) should hold under half the bytes ({bb} vs {ba})");
    // Decode-time eviction cannot be combined: a clear error, not a silent change.
    let bad = reg.build("h2o", &parse_settings(&["ratio=4".into(), "storage={method=\"int8\"}".into()]).unwrap()).unwrap_or_else(|e| panic!("{e}"));
    let err = bad.layer_cache(0, &s).err().expect("h2o's decode eviction cannot store quantized").to_string();
    assert!(err.contains("decode_evict"), "{err}");
}

#[test]
fn per_token_caches_attend_to_exactly_what_they_hold() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(18);
    for cfg in [QuantConfig::flexgen(4, 32, false), QuantConfig::flexgen(2, 16, false), QuantConfig::symmetric(8, 0), QuantConfig::symmetric(4, 0)] {
        let s = spec(2, 64, DType::F32, 140);
        let mut c = QuantCache::new(&cfg, s).unwrap();
        let q = Tensor::randn([1, 6, 100, 64], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([1, 2, 100, 64], (Kind::Float, Device::Cpu)) * 2.0;
        let v = Tensor::randn([1, 2, 100, 64], (Kind::Float, Device::Cpu));
        let _ = c.attend(&AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: 0, sliding_window: None, scale: 0.125 }).unwrap();
        c.end_prefill().unwrap();
        for step in 0..20 {
            let q = Tensor::randn([1, 6, 1, 64], (Kind::Float, Device::Cpu));
            let k = Tensor::randn([1, 2, 1, 64], (Kind::Float, Device::Cpu));
            let v = Tensor::randn([1, 2, 1, 64], (Kind::Float, Device::Cpu));
            let out = c.attend(&AttentionStep { layer: 0, q: &q, k: &k, v: &v, start_pos: 100 + step, sliding_window: None, scale: 0.125 }).unwrap();
            // No residual: the new token is stored quantized before it is attended to.
            let (kd, vd) = c.decoded();
            let expect = reference_attention(&q, &kd, &vd, 0.125);
            let d = (&out - &expect).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{} step {step}: attention differs from the reference over the decoded cache by {d}", cfg.name);
            assert_eq!(c.quantized_positions().0.len(), 101 + step);
        }
    }
}

/// Time per decode step of each quantized cache at 4,096 tokens (SmolLM2's KV shape), one layer.
/// A measurement aid, not a pass/fail check: `cargo test --release --test quant -- --ignored --nocapture`.
#[test]
#[ignore]
fn decode_step_time_per_layer() {
    let _g = tch::no_grad_guard();
    for cfg in [QuantConfig::kivi(4, 32, 128), QuantConfig::kivi(2, 32, 128), QuantConfig::flexgen(4, 32, false), QuantConfig::symmetric(8, 0)] {
        let s = spec(3, 64, DType::F32, 4200);
        let mut c = QuantCache::new(&cfg, s).unwrap();
        let k = Tensor::randn([1, 3, 4096, 64], (Kind::Float, Device::Cpu));
        let q = Tensor::randn([1, 9, 4096, 64], (Kind::Float, Device::Cpu));
        let _ = c.attend(&AttentionStep { layer: 0, q: &q, k: &k, v: &k, start_pos: 0, sliding_window: None, scale: 0.125 }).unwrap();
        c.end_prefill().unwrap();
        let q1 = Tensor::randn([1, 9, 1, 64], (Kind::Float, Device::Cpu));
        let k1 = Tensor::randn([1, 3, 1, 64], (Kind::Float, Device::Cpu));
        let t0 = std::time::Instant::now();
        for i in 0..50 {
            let _ = c.attend(&AttentionStep { layer: 0, q: &q1, k: &k1, v: &k1, start_pos: 4096 + i, sliding_window: None, scale: 0.125 }).unwrap();
        }
        eprintln!("{}: {:.3} ms per decode step per layer", cfg.name, t0.elapsed().as_secs_f64() * 1000.0 / 50.0);
    }
}

/// The packed-code attention (`kvmethods::quant_attend`) gives the same bits whichever vector
/// unit runs it (here the widest this CPU has, AVX2 where that is AVX-512, against the baseline
/// build) and however many threads split it, for per-channel keys (KIVI, 2 and 4 bits),
/// per-token keys and values (FlexGen, int8 with its offset), 1 to 9 queries per KV head, and
/// with full-precision residuals; and it is within float rounding of attention over the decoded
/// tensors.
#[test]
fn packed_attention_is_the_same_bits_on_every_instruction_set() {
    use kvcache::team::Pool;
    use kvmethods::quant_attend::{attend_one, attend_one_baseline, attend_one_on, residual, Build, Dims, Held};
    use kvmethods::quantized::KeyLayout;
    let _g = tch::no_grad_guard();
    tch::manual_seed(21);
    let (d, n, r) = (64i64, 192i64, 5i64);
    // Queries per KV head: SmolLM2's 3, Qwen2.5's 7 (a tile of 4 and one of 3), 1 and 9 (tiles
    // of 4, 4, 1); key groups of 32 and 48 tokens (whole chunks of 16, and a short last chunk);
    // value groups of 32 (32-channel items under AVX-512), 16 and 8 (16-channel and general).
    for (hkv, group, kq, layout, vq) in [
        (2i64, 3i64, Quantizer::new(2, 32, false), KeyLayout::PerChannel, Quantizer::new(2, 32, false)),
        (2, 3, Quantizer::new(4, 32, false), KeyLayout::PerChannel, Quantizer::new(4, 32, false)),
        (2, 3, Quantizer::new(4, 32, false), KeyLayout::PerToken, Quantizer::new(4, 32, false)),
        (2, 3, Quantizer::new(8, 64, true), KeyLayout::PerToken, Quantizer::new(8, 64, true)),
        (2, 7, Quantizer::new(4, 32, false), KeyLayout::PerChannel, Quantizer::new(4, 32, false)),
        (2, 7, Quantizer::new(2, 48, false), KeyLayout::PerChannel, Quantizer::new(2, 16, false)),
        (1, 1, Quantizer::new(4, 32, false), KeyLayout::PerChannel, Quantizer::new(4, 8, false)),
        (1, 9, Quantizer::new(2, 32, false), KeyLayout::PerChannel, Quantizer::new(4, 64, true)),
    ] {
        let dims = Dims { batch: 1, kv_heads: hkv as usize, group: group as usize, head_dim: d as usize };
        let k = Tensor::randn([1, hkv, n, d], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([1, hkv, n, d], (Kind::Float, Device::Cpu));
        let q = Tensor::randn([1, hkv * group, 1, d], (Kind::Float, Device::Cpu));
        let (kr, vr) = (Tensor::randn([1, hkv, r, d], (Kind::Float, Device::Cpu)), Tensor::randn([1, hkv, r, d], (Kind::Float, Device::Cpu)));
        // Keys as the caches store them: per channel, groups of G tokens of each channel.
        let (pk, kd) = match layout {
            KeyLayout::PerChannel => {
                let g = kq.group as i64;
                let p = kq.quantize(&k.reshape([1, hkv, n / g, g, d]).transpose(-1, -2), Kind::Float);
                let dec = kq.dequantize(&p, &kq.code_table(Kind::Float, Device::Cpu), Kind::Float).transpose(-1, -2).reshape([1, hkv, n, d]);
                (p, dec)
            }
            KeyLayout::PerToken => {
                let p = kq.quantize(&k, Kind::Float);
                let dec = kq.dequantize(&p, &kq.code_table(Kind::Float, Device::Cpu), Kind::Float);
                (p, dec)
            }
        };
        let pv = vq.quantize(&v, Kind::Float);
        let vd = vq.dequantize(&pv, &vq.code_table(Kind::Float, Device::Cpu), Kind::Float);
        let keys = Held::of(kq, layout, &pk.codes, &pk.scale, pk.min.as_ref(), n as usize).unwrap();
        let values = Held::of(vq, KeyLayout::PerToken, &pv.codes, &pv.scale, pv.min.as_ref(), n as usize).unwrap();
        let qf = q.contiguous();
        let qs = residual(&qf).unwrap();
        let (krs, vrs) = (residual(&kr).unwrap(), residual(&vr).unwrap());
        let wide = attend_one(qs, &keys, Some(krs), &values, Some(vrs), dims, 0.125);
        let base = attend_one_baseline(qs, &keys, Some(krs), &values, Some(vrs), dims, 0.125);
        assert!(wide.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()), "{layout:?} {}-bit, {group} queries: builds differ", kq.bits);
        if Build::detect() == Build::Avx512 {
            // AVX2's copy too (tiles of 16 channels and one chunk of keys, where AVX-512's hold 32
            // channels and two chunks).
            let avx2 = attend_one_on(Build::Avx2, Pool::Auto, 2, qs, &keys, Some(krs), &values, Some(vrs), dims, 0.125);
            assert!(avx2.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()), "{layout:?} {}-bit, {group} queries: AVX2 differs", kq.bits);
        }
        // Split across 1, 2, 3 or 7 threads, on libtorch's team or rayon's pool: the same bits.
        for (threads, pool) in [(1, Pool::Auto), (2, Pool::Auto), (3, Pool::Rayon), (7, Pool::Rayon), (2, Pool::Rayon)] {
            let split = attend_one_on(Build::detect(), pool, threads, qs, &keys, Some(krs), &values, Some(vrs), dims, 0.125);
            assert!(
                split.iter().zip(&wide).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{layout:?} {}-bit: {threads} threads on {pool:?} differ from libtorch's thread count",
                kq.bits
            );
        }
        let expect = reference_attention(&q, &Tensor::cat(&[&kd, &kr], 2), &Tensor::cat(&[&vd, &vr], 2), 0.125);
        let got = Tensor::from_slice(&wide).view([1, hkv * group, 1, d]);
        let diff = (&got - &expect).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{layout:?} {}-bit: differs from attention over the decoded tensors by {diff}", kq.bits);
    }
}
