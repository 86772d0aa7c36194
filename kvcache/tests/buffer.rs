//! The K/V buffer against a plain model of it (per head, a list of (position, key, value, score)):
//! appends, accumulated scores, and evictions, both in place (decoding's one in, one out, when the
//! storage already has the slots needed) and into fresh storage, keep exactly the right tokens,
//! bit for bit, in position order, with the right capacity.

use kvcache::buffer::KvBuffer;
use kvcache::cache::CacheSpec;
use kvcache::dtype::DType;
use tch::{Device, Kind, Tensor};

const B: i64 = 2;
const H: i64 = 3;
const D: i64 = 4;

fn spec(expected_tokens: usize, kv_dtype: DType) -> CacheSpec {
    CacheSpec {
        batch: B as usize,
        kv_heads: H as usize,
        head_dim: D as usize,
        kv_dtype,
        device: Device::Cpu,
        expected_tokens,
        query_heads: H as usize,
        num_layers: 1,
        context_tokens: None,
        rope: None,
    }
}

/// Per `[B·H]` row: (position, key bits, value bits, score bits).
type Model = Vec<Vec<(i64, Vec<f32>, Vec<f32>, f32)>>;

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_kind(Kind::Float).contiguous();
    let s = t.size();
    let flat = Vec::<f32>::try_from(t.view([-1])).unwrap();
    let per = (s[2] * s.get(3).copied().unwrap_or(1)) as usize;
    flat.chunks(per.max(1)).map(|c| c.to_vec()).collect()
}

fn check(buf: &KvBuffer, model: &Model, what: &str) {
    let (k, v) = buf.views().unwrap();
    let (k, v) = (rows(&k), rows(&v));
    let pos = Vec::<i64>::try_from(buf.positions().contiguous().view([-1])).unwrap();
    let aux = rows(&buf.aux().unwrap());
    let n = model[0].len();
    assert_eq!(buf.len(), n, "{what}");
    for (r, toks) in model.iter().enumerate() {
        for (i, (p, kk, vv, a)) in toks.iter().enumerate() {
            assert_eq!(pos[r * n + i], *p, "{what}: row {r} slot {i} position");
            let (gk, gv) = (&k[r][i * D as usize..(i + 1) * D as usize], &v[r][i * D as usize..(i + 1) * D as usize]);
            assert!(gk.iter().zip(kk).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: row {r} slot {i} key");
            assert!(gv.iter().zip(vv).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: row {r} slot {i} value");
            assert_eq!(aux[r][i].to_bits(), a.to_bits(), "{what}: row {r} slot {i} score");
        }
    }
    assert_eq!(buf.first_pos() as i64, model.iter().map(|t| t[0].0).min().unwrap(), "{what}: first position");
}

fn append(buf: &mut KvBuffer, model: &mut Model, start: usize, l: i64, seed: i64) {
    tch::manual_seed(seed);
    let k = Tensor::randn([B, H, l, D], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([B, H, l, D], (Kind::Float, Device::Cpu));
    buf.append(&k, &v, start);
    let (k, v) = (rows(&k.to_kind(buf.spec().kv_dtype.kind())), rows(&v.to_kind(buf.spec().kv_dtype.kind())));
    for (r, toks) in model.iter_mut().enumerate() {
        for i in 0..l as usize {
            let d = D as usize;
            toks.push(((start + i) as i64, k[r][i * d..(i + 1) * d].to_vec(), v[r][i * d..(i + 1) * d].to_vec(), 0.0));
        }
    }
}

fn add_scores(buf: &mut KvBuffer, model: &mut Model, seed: i64) {
    tch::manual_seed(seed);
    let n = buf.len() as i64;
    let delta = Tensor::rand([B, H, n], (Kind::Float, Device::Cpu));
    buf.aux_add(&delta);
    for (r, d) in rows(&delta).iter().enumerate() {
        for (t, x) in model[r].iter_mut().zip(d) {
            t.3 += x;
        }
    }
}

/// Keeps `n` of each row's tokens, a different (ascending) choice per row.
fn keep(buf: &mut KvBuffer, model: &mut Model, n: usize, headroom: usize, seed: u64) {
    let len = buf.len();
    let mut idx = Vec::new();
    for (r, toks) in model.iter_mut().enumerate() {
        // A seeded choice of n slots, always keeping the newest.
        let mut chosen: Vec<usize> = (0..len).filter(|&i| i == len - 1 || !(i as u64 * 7 + r as u64 * 13 + seed).is_multiple_of(5)).collect();
        chosen.truncate(n - 1);
        if !chosen.contains(&(len - 1)) {
            chosen.push(len - 1);
        }
        while chosen.len() < n {
            let extra = (0..len).find(|i| !chosen.contains(i)).unwrap();
            chosen.push(extra);
        }
        chosen.sort_unstable();
        *toks = chosen.iter().map(|&i| toks[i].clone()).collect();
        idx.extend(chosen.iter().map(|&i| i as i64));
    }
    buf.keep(&Tensor::from_slice(&idx).view([B, H, n as i64]), headroom);
    assert_eq!(buf.capacity(), n + headroom.max(1), "storage of n + headroom slots");
}

#[test]
fn evictions_keep_the_right_tokens_in_place_and_in_fresh_storage() {
    for dtype in [DType::F32, DType::Bf16] {
        let mut buf = KvBuffer::new(spec(12, dtype));
        buf.enable_aux();
        let mut model: Model = vec![Vec::new(); (B * H) as usize];
        append(&mut buf, &mut model, 0, 12, 1);
        add_scores(&mut buf, &mut model, 2);
        check(&buf, &model, "after the prefill");
        // Fresh storage: 12 slots, 8 kept with headroom 1 (capacity shrinks to 9).
        keep(&mut buf, &mut model, 8, 1, 3);
        check(&buf, &model, "first eviction");
        // Decoding: one token in, one out, in the same 9 slots (in place).
        for step in 0..6 {
            append(&mut buf, &mut model, 12 + step, 1, 10 + step as i64);
            add_scores(&mut buf, &mut model, 20 + step as i64);
            keep(&mut buf, &mut model, 8, 1, 30 + step as u64);
            check(&buf, &model, &format!("decode step {step}"));
        }
        // 5 kept with headroom 5 in 9 slots: fresh storage of 10 slots again.
        keep(&mut buf, &mut model, 5, 5, 40);
        check(&buf, &model, "eviction with more headroom");
    }
}

#[test]
fn an_eviction_of_a_contiguous_buffer_in_place_materialises_positions() {
    let mut buf = KvBuffer::new(spec(6, DType::F32));
    buf.enable_aux();
    let mut model: Model = vec![Vec::new(); (B * H) as usize];
    append(&mut buf, &mut model, 100, 6, 5);
    assert!(buf.is_contiguous());
    // 6 slots, 5 kept with headroom 1: in place.
    keep(&mut buf, &mut model, 5, 1, 6);
    assert!(!buf.is_contiguous());
    check(&buf, &model, "in place from contiguous");
}
