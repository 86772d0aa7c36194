//! Parity of kvbench's RWKV-5.2/RWKV-6 with BlinkDL's `rwkv` package (strategy `cpu fp32`) on small
//! random checkpoints written in the published `.pth` layout by `scripts/reference/rwkv_parity.py`
//! (v6; v5.2 with bf16 matrices and non-contiguous stored views; v5.2 with `time_first` and a tuned
//! `time_state`): full-sequence logits, 32 greedy tokens through the generic `ssm::greedy`,
//! prefill-then-step and chunked evaluation against the full sequence, a state whose size does
//! not grow, family detection from the files, the safetensors copy, and errors that name the file.
//! An `#[ignore]`d test times prefill at 1K/2K/4K tokens and decode steps at those contexts.

mod common;

use common::*;
use kvcore::ssm::rwkv::{RwkvConfig, RwkvModel, RwkvVersion};
use kvcore::ssm::{self, RecurrentLm};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn ids_from_npy(path: &Path) -> Vec<u32> {
    Vec::<i64>::try_from(&npy(path).view([-1])).unwrap().into_iter().map(|x| x as u32).collect()
}

#[test]
fn rwkv_matches_rwkv_package() {
    let tmp = tempfile::tempdir().unwrap();
    run_reference("rwkv_parity.py", &[tmp.path().to_str().unwrap()]);
    let ids = ids_from_npy(&tmp.path().join("input_ids.npy"));
    assert_eq!(ids.len(), 64);
    eprintln!("libtorch threads: {}", tch::get_num_threads());

    for (case, family) in [("v6", "rwkv6"), ("v5", "rwkv5"), ("v5_first_state", "rwkv5")] {
        let dir = tmp.path().join(case);
        assert_eq!(ssm::detect_family(&dir).unwrap(), Some(family), "{case}: detected family");
        let m = ssm::load_dir(&dir, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(m.family(), family);
        let reference = npy(&dir.join("logits.npy"));
        let v = m.vocab_size();
        assert_eq!(reference.size(), [64, v as i64]);

        // (1) the whole sequence at once.
        let mut st = m.new_state().unwrap();
        let full = m.forward(&ids, &mut st, true).unwrap();
        let d = max_abs_diff(&full, &reference);
        let scale = reference.abs().max().double_value(&[]);
        eprintln!("{case}: full sequence: max |logit diff| vs rwkv package = {d:.3e} (max |logit| {scale:.2})");
        assert!(d <= 1e-4, "{case}: max |logit diff| {d} > 1e-4");

        // (2) prefill 40 tokens (last position only), then one token at a time.
        let mut state = m.new_state().unwrap();
        let last = m.forward(&ids[..40], &mut state, false).unwrap();
        assert_eq!(last.size(), [1, v as i64]);
        let bytes_after_prefill = state.bytes();
        let mut worst_full = max_abs_diff(&last.get(0), &full.get(39));
        let mut worst_ref = max_abs_diff(&last.get(0), &reference.get(39));
        for (p, &t) in ids.iter().enumerate().skip(40) {
            let l = m.forward(&[t], &mut state, false).unwrap().get(0);
            worst_full = worst_full.max(max_abs_diff(&l, &full.get(p as i64)));
            worst_ref = worst_ref.max(max_abs_diff(&l, &reference.get(p as i64)));
        }
        assert_eq!(state.tokens, 64);
        eprintln!("{case}: prefill(40) + 24 steps: max |diff| vs full sequence = {worst_full:.3e}, vs rwkv package = {worst_ref:.3e}");
        assert!(worst_full <= 1e-4, "{case}: prefill+step differs from the full sequence by {worst_full}");
        assert!(worst_ref <= 1e-4, "{case}: prefill+step differs from the package by {worst_ref}");

        // (3) chunked prefill (chunks of 7, a 1-token chunk at the end), all positions.
        let mut chunked = m.new_state().unwrap();
        let pieces: Vec<Tensor> = ids.chunks(7).map(|c| m.forward(c, &mut chunked, true).unwrap()).collect();
        let d = max_abs_diff(&Tensor::cat(&pieces, 0), &full);
        eprintln!("{case}: chunks of 7: max |diff| vs full sequence = {d:.3e}");
        assert!(d <= 1e-4, "{case}: chunked evaluation differs by {d}");
        // The final states agree too (the WKV state is what decoding continues from).
        let sd = st.tensors.iter().zip(&chunked.tensors).map(|(a, b)| max_abs_diff(a, b)).fold(0.0, f64::max);
        assert!(sd <= 1e-4, "{case}: chunked final state differs by {sd}");

        // (4) the state does not grow: per layer 2 shifts [C] and the WKV state [H, N, N], f32.
        let mut one = m.new_state().unwrap();
        let fresh = one.bytes();
        let _ = m.forward(&ids[..1], &mut one, false).unwrap();
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let (c, n, layers) = (cfg["n_embd"].as_u64().unwrap(), cfg["head_size"].as_u64().unwrap(), cfg["n_layer"].as_u64().unwrap());
        let expected = layers * (2 * c + c * n) * 4;
        eprintln!(
            "{case}: state bytes fresh {fresh}, after 1 token {}, after 40 {bytes_after_prefill}, after 64 {}, expected {expected}",
            one.bytes(),
            state.bytes()
        );
        for b in [fresh, one.bytes(), bytes_after_prefill, state.bytes(), chunked.bytes(), m.state_bytes()] {
            assert_eq!(b, expected, "{case}: state bytes");
        }

        // (5) 32 greedy tokens through the trait, identical to the package's.
        let want = ids_from_npy(&dir.join("greedy.npy"));
        let got = ssm::greedy(m.as_ref(), &ids, 32).unwrap();
        eprintln!("{case}: greedy {got:?}");
        assert_eq!(got, want, "{case}: greedy continuation differs from the rwkv package");
    }

    // The tuned initial state is used: without it the first logits differ.
    let with_state = RwkvModel::load(&tmp.path().join("v5_first_state"), Kind::Float, Device::Cpu).unwrap();
    assert!(with_state.config.time_state && !with_state.config.faaaa);
    let s = with_state.new_state().unwrap();
    assert!(s.tensors[1].abs().max().double_value(&[]) > 0.0, "time_state must seed the WKV state");

    // The safetensors copy of v6 loads to the same model.
    let st_dir = tmp.path().join("v6_safetensors");
    assert_eq!(ssm::detect_family(&st_dir).unwrap(), Some("rwkv6"));
    let a = RwkvModel::load(&st_dir, Kind::Float, Device::Cpu).unwrap();
    let b = RwkvModel::load_pth(&tmp.path().join("v6/model.pth"), Kind::Float, Device::Cpu).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.config.version, RwkvVersion::V6);
    let la = a.forward(&ids, &mut a.new_state().unwrap(), true).unwrap();
    let lb = b.forward(&ids, &mut b.new_state().unwrap(), true).unwrap();
    assert_eq!(max_abs_diff(&la, &lb), 0.0, "safetensors and .pth give different logits");
    assert_eq!(a.weight_bytes, b.weight_bytes);

    // A checkpoint without one tensor: the error names the file and the tensor.
    let e = ssm::load_dir(&tmp.path().join("broken"), Kind::Float, Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("broken/model.pth") && e.contains("missing tensor `blocks.1.ffn.value.weight`"), "{e}");
    // A truncated .pth: the error names the file.
    let cut = tmp.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    let bytes = std::fs::read(tmp.path().join("v6/model.pth")).unwrap();
    std::fs::write(cut.join("model.pth"), &bytes[..bytes.len() / 2]).unwrap();
    let e = ssm::load_dir(&cut, Kind::Float, Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("cut/model.pth"), "{e}");
}

#[test]
fn directories_without_rwkv_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(ssm::detect_family(tmp.path()).unwrap(), None);
    let e = ssm::load_dir(tmp.path(), Kind::Float, Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("RWKV"), "{e}");
    std::fs::write(tmp.path().join("a.pth"), b"not a zip").unwrap();
    let e = ssm::detect_family(tmp.path()).expect_err("must fail").to_string();
    assert!(e.contains("a.pth") && e.contains("zip"), "{e}");
    std::fs::write(tmp.path().join("b.pth"), b"").unwrap();
    let e = ssm::detect_family(tmp.path()).expect_err("must fail").to_string();
    assert!(e.contains("2 .pth files"), "{e}");
}

fn bench_config(name: &str) -> RwkvConfig {
    // RWKV-6 World 169M-ish (the smallest v6 World shapes), or a small one for a quick run.
    let (vocab, hidden, layers, ffn) = match name {
        "169m" => (65536, 768, 12, 2688),
        "small" => (1000, 64, 4, 224),
        other => panic!("KVBENCH_RWKV_BENCH={other}: expected 169m or small"),
    };
    RwkvConfig {
        version: RwkvVersion::V6,
        vocab_size: vocab,
        hidden_size: hidden,
        attention_size: hidden,
        ffn_size: ffn,
        num_layers: layers,
        num_heads: hidden / 64,
        mix_rank: 32,
        decay_rank: 64,
        faaaa: true,
        time_state: false,
    }
}

/// Timings on random weights (CPU, f32): prefill (last-position logits) of 1K/2K/4K tokens, best
/// of `reps`, and the mean decode step (32 steps) after each. Environment: `KVBENCH_RWKV_BENCH` =
/// `169m` (default) and/or `small`, comma-separated; `KVBENCH_RWKV_BENCH_REPS` (default 1);
/// `KVBENCH_RWKV_BENCH_THREADS` sets libtorch's intra-op threads. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn rwkv_scaling_timings() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    if let Ok(n) = std::env::var("KVBENCH_RWKV_BENCH_THREADS") {
        tch::set_num_threads(n.parse().expect("KVBENCH_RWKV_BENCH_THREADS: a number"));
    }
    let reps: usize = env("KVBENCH_RWKV_BENCH_REPS", "1").parse().expect("KVBENCH_RWKV_BENCH_REPS: a number");
    eprintln!("libtorch threads: {}, best of {reps}", tch::get_num_threads());
    for name in env("KVBENCH_RWKV_BENCH", "169m").split(',') {
        let cfg = bench_config(name);
        let m = RwkvModel::random(cfg.clone(), 11, Kind::Float, Device::Cpu).unwrap();
        eprintln!(
            "config {name}: RWKV-6, vocab {}, hidden {}, layers {}, heads {} x {}, ffn {}, weights {:.1} MiB, state {} bytes",
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.num_layers,
            cfg.num_heads,
            cfg.head_size(),
            cfg.ffn_size,
            m.weight_bytes as f64 / (1 << 20) as f64,
            m.state_bytes()
        );
        let ids: Vec<u32> = (0..4096u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
        let _ = m.forward(&ids[..64], &mut m.new_state().unwrap(), false).unwrap(); // warm-up
        for n in [1024usize, 2048, 4096] {
            let mut t_prefill = f64::INFINITY;
            let mut state = m.new_state().unwrap();
            for _ in 0..reps.max(1) {
                state = m.new_state().unwrap();
                let t0 = Instant::now();
                let l = m.forward(&ids[..n], &mut state, false).unwrap();
                t_prefill = t_prefill.min(t0.elapsed().as_secs_f64());
                assert_eq!(l.isfinite().all().int64_value(&[]), 1);
            }
            let steps = 32;
            let t0 = Instant::now();
            for &t in &ids[..steps] {
                let _ = m.forward(&[t], &mut state, false).unwrap();
            }
            let t_step = t0.elapsed().as_secs_f64() / steps as f64;
            eprintln!(
                "{name}: T={n:5}: prefill {t_prefill:7.3} s ({:7.1} µs/token), decode step at context {n} {:6.2} ms, state {} B",
                t_prefill * 1e6 / n as f64,
                t_step * 1e3,
                state.bytes()
            );
            assert_eq!(state.bytes(), m.state_bytes());
        }
    }
}

/// The paper's RWKV decoding (issue 24 item 4b) is `PIPELINE.generate` with
/// `PIPELINE_ARGS(top_p=0)`: greedy, with the package's default presence and frequency penalties.
/// `scripts/reference/rwkv_penalties_reference.py` runs that very function over synthetic logits
/// (a few candidates a little above the rest: a space, digits, words, a newline, unknown ids) and
/// records each choice; kvbench's `PenaltyState` with `Penalties::RWKV_PIPELINE` over the same
/// logits must choose the same token at every one of 300 steps. Without penalties the top
/// candidate would win every step.
#[test]
fn rwkv_pipeline_penalties_choose_the_rwkv_packages_tokens() {
    use kvcore::generate::{Penalties, PenaltyState};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("penalties.json");
    run_reference("rwkv_penalties_reference.py", &[out.to_str().unwrap(), "300"]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let tok = kvformats::world_tokenizer::WorldTokenizer::from_vocab_file(Path::new(r["vocab"].as_str().unwrap())).unwrap();
    let candidates: Vec<(u64, f64)> = r["candidates"].as_array().unwrap().iter().map(|c| (c[0].as_u64().unwrap(), c[1].as_f64().unwrap())).collect();
    let want: Vec<u32> = r["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    assert_eq!(want.len(), 300);
    let top = candidates.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0 as u32;
    assert!(want.iter().filter(|&&t| t != top).count() > 100, "the penalties should move the choice off the top candidate: {want:?}");
    let mut state = PenaltyState::new(Penalties::RWKV_PIPELINE);
    let mut last = r["prompt_last"].as_u64().unwrap();
    for (step, &expected) in want.iter().enumerate() {
        let x: Vec<f32> = (0..65536u64)
            .map(|j| {
                let h = (j * 2654435761 + last * 40503 + step as u64 * 97) % (1 << 24);
                let mut v = h as f64 / (1u64 << 24) as f64 * 0.05;
                if let Some((_, base)) = candidates.iter().find(|(t, _)| *t == j) {
                    v += base;
                }
                v as f32
            })
            .collect();
        let mut logits = Tensor::from_slice(&x);
        state.apply(&mut logits);
        let got = logits.argmax(-1, false).int64_value(&[]) as u32;
        assert_eq!(got, expected, "step {step}: kvbench chose {got}, the rwkv package {expected}\n(all: {want:?})");
        state.observe(got, tok.id_to_token(got).and_then(|b| std::str::from_utf8(b).ok()));
        last = got as u64;
    }
}
