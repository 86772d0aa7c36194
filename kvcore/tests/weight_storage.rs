//! 16-bit weight storage under f32 compute (`Model::store_weights_as`, `--weight-dtype`): the
//! decode kernel widens each f16/bf16 weight exactly as it reads it, and prefill widens each
//! matrix to f32 before libtorch multiplies, so a model whose weights are already f16 (bf16)
//! values gives the very same bits stored in 16 bits as stored in f32 — over a prefill, every
//! decode step and greedy generation — while holding fewer weight bytes.

mod common;

use kvcore::cache::FullCacheFactory;
use kvcore::decode_matmul::{matmul, matmul_weights, Bf16, Weight, F16};
use kvcore::device::{DType, RuntimeSettings};
use kvcore::generate::{forward_sequence, generate, new_sequence, GenerateOptions};
use kvcore::loader::{load, LoadedModel};
use kvcore::sources::ModelFiles;
use tch::{Device, Kind, Tensor};

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap();
    v.iter().map(|f| f.to_bits()).collect()
}

/// Every f16 and bf16 bit pattern widens to the f32 libtorch converts it to (NaNs to NaNs).
#[test]
fn widening_equals_libtorchs_conversion_for_every_16_bit_pattern() {
    let all: Vec<i16> = (0..=u16::MAX).map(|b| b as i16).collect();
    let raw = Tensor::from_slice(&all);
    for kind in [Kind::Half, Kind::BFloat16] {
        // Reinterpret the int16 bits as the 16-bit float kind, then let libtorch widen.
        let want: Vec<f32> = Vec::<f32>::try_from(raw.view_dtype(kind).to_kind(Kind::Float)).unwrap();
        for (b, w) in (0..=u16::MAX).zip(&want) {
            let got = if kind == Kind::Half { F16(b).widen() } else { Bf16(b).widen() };
            assert!(got.to_bits() == w.to_bits() || (got.is_nan() && w.is_nan()), "{kind:?} {b:#06x}: {got} against libtorch's {w}");
        }
    }
}

/// `matmul_weights` over 16-bit weights is `matmul` over the widened matrix, bit for bit.
#[test]
fn sixteen_bit_weights_multiply_as_their_f32_values() {
    let (k, n) = (200usize, 371usize);
    let seed = Tensor::randn([k as i64, n as i64], (Kind::Float, Device::Cpu));
    for rows in [1usize, 3, 7] {
        let x: Vec<f32> = Vec::<f32>::try_from(Tensor::randn([(rows * k) as i64], (Kind::Float, Device::Cpu))).unwrap();
        for threads in [1usize, 2] {
            let half = seed.to_kind(Kind::Half).contiguous();
            let h: Vec<F16> = Vec::<i16>::try_from(half.view_dtype(Kind::Int16).reshape([-1])).unwrap().into_iter().map(|b| F16(b as u16)).collect();
            let bf = seed.to_kind(Kind::BFloat16).contiguous();
            let b: Vec<Bf16> = Vec::<i16>::try_from(bf.view_dtype(Kind::Int16).reshape([-1])).unwrap().into_iter().map(|b| Bf16(b as u16)).collect();
            for (stored, wide) in [(&half, None), (&bf, Some(()))] {
                let w32: Vec<f32> = Vec::<f32>::try_from(stored.to_kind(Kind::Float).reshape([-1])).unwrap();
                let mut want = vec![0f32; rows * n];
                matmul(&x, rows, &w32, k, n, &mut want, threads);
                let mut got = vec![f32::NAN; rows * n];
                match wide {
                    None => matmul_weights(&x, rows, &h, k, n, &mut got, threads),
                    Some(()) => matmul_weights(&x, rows, &b, k, n, &mut got, threads),
                }
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{:?} weights, {rows} rows, {threads} threads: not the f32 product's bits", stored.kind());
            }
        }
    }
}

fn settings() -> RuntimeSettings {
    RuntimeSettings { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 }
}

/// A tiny random model whose weights are stored in `file_kind` (so every weight is a value of it).
fn random_model(dir: &std::path::Path, arch: kvcore::config::Architecture, file_kind: Kind) {
    let preset = kvcore::random_init::PRESETS.iter().find(|p| p.name == "tiny").copied().unwrap();
    let opts = kvcore::random_init::InitOptions { arch, preset, seed: 5, dtype: file_kind, tokenizer_gguf: common::smollm2_gguf(), sliding_window: None };
    kvcore::random_init::write_random_model(&opts, dir).unwrap();
}

/// The logits of a prefill of all but the last token, then of that token as a decode step.
fn prefill_and_step(lm: &mut LoadedModel, ids: &[u32]) -> (Tensor, Tensor) {
    let _g = tch::no_grad_guard();
    let n = ids.len();
    let mut seq = new_sequence(lm, &FullCacheFactory, n, None).unwrap();
    let pre = forward_sequence(lm, &mut seq, &ids[..n - 1], 0, None, true).unwrap();
    let step = forward_sequence(lm, &mut seq, &ids[n - 1..], n - 1, None, false).unwrap();
    (pre, step)
}

#[test]
fn weights_stored_in_16_bits_give_the_f32_models_bits() {
    for arch in [kvcore::config::Architecture::Llama, kvcore::config::Architecture::Qwen2] {
        for (file_kind, dtype) in [(Kind::Half, DType::F16), (Kind::BFloat16, DType::Bf16)] {
            let tmp = tempfile::tempdir().unwrap();
            random_model(tmp.path(), arch, file_kind);
            let files = ModelFiles::HfDir(tmp.path().to_path_buf());
            let mut wide = load(&files, settings()).unwrap();
            let mut narrow = load(&files, settings()).unwrap();
            narrow.store_weights_as(dtype).unwrap();
            let what = format!("{arch:?} with {file_kind:?} weights");
            assert!(
                narrow.weight_bytes() < wide.weight_bytes() * 3 / 4,
                "{what}: {} weight bytes stored in 16 bits against {} in f32",
                narrow.weight_bytes(),
                wide.weight_bytes()
            );
            let ids: Vec<u32> = (0..40u32).map(|i| 100 + i * 37 % 900).collect();
            let (pre_w, step_w) = prefill_and_step(&mut wide, &ids);
            let (pre_n, step_n) = prefill_and_step(&mut narrow, &ids);
            assert_eq!(bits(&pre_n), bits(&pre_w), "{what}: prefill logits differ");
            assert_eq!(bits(&step_n), bits(&step_w), "{what}: decode-step logits differ");
            let opts = GenerateOptions { max_new_tokens: 24, min_new_tokens: 24, ..Default::default() };
            let gw = generate(&mut wide, &ids, &opts, &FullCacheFactory).unwrap();
            let gn = generate(&mut narrow, &ids, &opts, &FullCacheFactory).unwrap();
            assert_eq!(gn.token_ids, gw.token_ids, "{what}: greedy tokens differ");
        }
    }
}

/// Weight storage is for f32 compute on the CPU, and for 16-bit kinds only.
#[test]
fn weight_storage_refuses_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    random_model(tmp.path(), kvcore::config::Architecture::Llama, Kind::Float);
    let files = ModelFiles::HfDir(tmp.path().to_path_buf());
    let mut bf16_compute = load(&files, RuntimeSettings { device: Device::Cpu, dtype: DType::Bf16, kv_dtype: DType::Bf16 }).unwrap();
    let err = bf16_compute.store_weights_as(DType::F16).unwrap_err().to_string();
    assert!(err.contains("f32 compute on the CPU"), "{err}");
    let mut f32_model = load(&files, settings()).unwrap();
    let bytes = f32_model.weight_bytes();
    f32_model.store_weights_as(DType::F32).unwrap();
    assert_eq!(f32_model.weight_bytes(), bytes, "f32 storage leaves the weights as loaded");
}
