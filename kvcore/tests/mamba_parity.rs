//! Parity of kvbench's Mamba (v1) with Hugging Face transformers on small random models created
//! and saved by `scripts/reference/mamba_parity.py` (tied and untied heads, with and without
//! projection biases): full-sequence logits, 32 greedy tokens, prefill-then-step and chunked
//! evaluation against the full sequence, both scan modes, and a state whose size does not grow.
//! An `#[ignore]`d test times `forward_full`/`prefill` at 1K/2K/4K tokens to show linear scaling.

mod common;

use common::*;
use kvcore::ssm::mamba::{MambaConfig, MambaModel, ScanMode};
use kvcore::ssm::{self, RecurrentLm};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn ids_from_npy(path: &Path) -> Vec<u32> {
    Vec::<i64>::try_from(&npy(path).view([-1])).unwrap().into_iter().map(|x| x as u32).collect()
}

#[test]
fn mamba_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    run_reference("mamba_parity.py", &[tmp.path().to_str().unwrap()]);
    let ids = ids_from_npy(&tmp.path().join("input_ids.npy"));
    assert_eq!(ids.len(), 64);
    eprintln!("libtorch threads: {}", tch::get_num_threads());

    for case in ["tied", "untied_bias"] {
        let dir = tmp.path().join(case);
        let mut m = MambaModel::load(&dir, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{case}: {e}"));
        let reference = npy(&dir.join("logits.npy"));
        let c = m.config.clone();
        assert_eq!(reference.size(), [64, c.vocab_size as i64]);

        // (1) whole sequence, both scan modes; small blocks so block boundaries are crossed.
        for (mode, block) in [(ScanMode::Sequential, 128), (ScanMode::Sequential, 5), (ScanMode::Doubling, 128), (ScanMode::Doubling, 24)] {
            m.scan_mode = mode;
            m.scan_block = block;
            let full = m.forward_full(&ids).unwrap();
            let d = max_abs_diff(&full, &reference);
            eprintln!("{case}: forward_full ({mode:?}, block {block}): max |logit diff| vs transformers = {d:.3e}");
            assert!(d <= 1e-4, "{case} {mode:?}/{block}: max |logit diff| {d} > 1e-4");
        }
        m.scan_mode = ScanMode::Sequential;
        m.scan_block = 128;
        let full = m.forward_full(&ids).unwrap();

        // (2) prefill 40 tokens, then one token at a time: must agree with the full sequence.
        let (last, mut state) = m.prefill(&ids[..40]).unwrap();
        let bytes_after_prefill = state.bytes();
        let mut worst_full = max_abs_diff(&last, &full.get(39));
        let mut worst_ref = max_abs_diff(&last, &reference.get(39));
        for (p, &t) in ids.iter().enumerate().skip(40) {
            let l = m.forward_step(t, &mut state).unwrap();
            worst_full = worst_full.max(max_abs_diff(&l, &full.get(p as i64)));
            worst_ref = worst_ref.max(max_abs_diff(&l, &reference.get(p as i64)));
        }
        assert_eq!(state.tokens, 64);
        eprintln!("{case}: prefill(40) + 24 steps: max |diff| vs forward_full = {worst_full:.3e}, vs transformers = {worst_ref:.3e}");
        assert!(worst_full <= 1e-4, "{case}: prefill+step differs from forward_full by {worst_full}");
        assert!(worst_ref <= 1e-4, "{case}: prefill+step differs from transformers by {worst_ref}");

        // (3) chunked prefill (chunks of 7, including a 1-token chunk at the end).
        let mut st = m.new_state(1);
        let mut pieces = Vec::new();
        for chunk in ids.chunks(7) {
            pieces.push(m.forward_chunk(chunk, &mut st).unwrap());
        }
        let d = max_abs_diff(&Tensor::cat(&pieces, 0), &full);
        eprintln!("{case}: chunks of 7: max |diff| vs forward_full = {d:.3e}");
        assert!(d <= 1e-4, "{case}: chunked evaluation differs by {d}");

        // (4) the state does not grow with the sequence.
        let one = m.prefill(&ids[..1]).unwrap().1.bytes();
        let expected = c.num_hidden_layers * c.intermediate_size * (c.conv_kernel + c.state_size) * 4;
        eprintln!("{case}: state bytes after 1 token {one}, after 40 {bytes_after_prefill}, after 64 {}, expected {expected}", state.bytes());
        assert_eq!(one, expected);
        assert_eq!(bytes_after_prefill, expected);
        assert_eq!(state.bytes(), expected);
        assert_eq!(st.bytes(), expected);
        assert_eq!(m.state_bytes(1), expected);

        // (5) 32 greedy tokens, identical to transformers' generate().
        let want = ids_from_npy(&dir.join("greedy.npy"));
        let got = m.greedy(&ids, 32).unwrap();
        eprintln!("{case}: greedy {:?}", got);
        assert_eq!(got, want, "{case}: greedy continuation differs from transformers");
        m.scan_mode = ScanMode::Doubling;
        assert_eq!(m.greedy(&ids, 32).unwrap(), want, "{case}: greedy (doubling scan) differs");
        m.scan_mode = ScanMode::Sequential;

        // (6) the same through the `RecurrentLm` trait the engine uses (generate, run).
        let lm: &dyn RecurrentLm = &m;
        assert_eq!(ssm::greedy(lm, &ids, 32).unwrap(), want, "{case}: greedy through RecurrentLm differs");
        let mut st = lm.new_state().unwrap();
        let all = lm.forward(&ids[..40], &mut st, true).unwrap();
        let last = lm.forward(&ids[40..], &mut st, false).unwrap();
        assert_eq!(all.size(), [40, c.vocab_size as i64]);
        assert_eq!(last.size(), [1, c.vocab_size as i64]);
        let d = max_abs_diff(&all, &reference.narrow(0, 0, 40)).max(max_abs_diff(&last.view([-1]), &reference.get(63)));
        assert!(d <= 1e-4, "{case}: RecurrentLm::forward differs from transformers by {d}");
        assert_eq!((st.tokens, st.bytes()), (64, expected as u64));
        assert_eq!(lm.state_bytes(), expected as u64);
    }
}

/// The original `mamba_ssm` layout (`d_model`/`n_layer`/`ssm_cfg` config, padded vocabulary,
/// `pytorch_model.bin`, `backbone.embedding`), as havenhq/mamba-chat is published: the same
/// logits as transformers on the same weights, found and loaded through the generic loader.
#[test]
fn mamba_ssm_checkpoints_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    run_reference("mamba_parity.py", &[tmp.path().to_str().unwrap()]);
    let ids = ids_from_npy(&tmp.path().join("input_ids.npy"));
    for case in ["tied", "untied_bias"] {
        let dir = tmp.path().join(format!("{case}_mamba_ssm"));
        assert!(dir.join("pytorch_model.bin").is_file() && !dir.join("model.safetensors").exists());
        assert_eq!(ssm::detect_family(&dir).unwrap(), Some("mamba"));
        let m = MambaModel::load(&dir, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(m.config.vocab_size, 1000, "997 padded to a multiple of 8");
        let reference = npy(&tmp.path().join(case).join("logits.npy"));
        let d = max_abs_diff(&m.forward_full(&ids).unwrap(), &reference);
        eprintln!("{case} (mamba_ssm layout): max |logit diff| vs transformers = {d:.3e}");
        assert!(d <= 1e-4, "{case}: mamba_ssm checkpoint differs by {d}");
        let boxed = ssm::load_dir(&dir, Kind::Float, Device::Cpu).unwrap();
        assert_eq!(ssm::greedy(boxed.as_ref(), &ids, 32).unwrap(), ids_from_npy(&tmp.path().join(case).join("greedy.npy")));
    }
    // A Mamba-2 mamba_ssm config is refused by name.
    let e = MambaConfig::from_json_str(r#"{"d_model":64,"n_layer":2,"vocab_size":100,"ssm_cfg":{"layer":"Mamba2"}}"#, Path::new("/m/config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ssm_cfg.layer") && e.contains("Mamba2"), "{e}");
}

#[test]
fn missing_tensor_and_bad_config_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type":"mamba","vocab_size":10,"num_hidden_layers":1}"#).unwrap();
    let e = MambaModel::load(tmp.path(), Kind::Float, Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("config.json") && e.contains("`hidden_size`"), "{e}");

    // A valid config but a safetensors file without the layer tensors.
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type":"mamba","vocab_size":10,"hidden_size":8,"num_hidden_layers":1}"#).unwrap();
    let emb = vec![0u8; 10 * 8 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![10, 8], &emb).unwrap();
    safetensors::serialize_to_file([("backbone.embeddings.weight", view)], None, &tmp.path().join("model.safetensors")).unwrap();
    let e = MambaModel::load(tmp.path(), Kind::Float, Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("missing tensor `backbone.layers.0.norm.weight`"), "{e}");
}

fn bench_config(name: &str) -> MambaConfig {
    let (vocab, hidden, layers) = match name {
        "small" => (1000, 64, 4),
        "130m" => (50280, 768, 24),
        other => panic!("KVBENCH_MAMBA_BENCH={other}: expected small or 130m"),
    };
    let json = format!(
        r#"{{"model_type":"mamba","vocab_size":{vocab},"hidden_size":{hidden},"num_hidden_layers":{layers},"state_size":16,"conv_kernel":4,"expand":2}}"#
    );
    MambaConfig::from_json_str(&json, Path::new("(bench)")).unwrap()
}

/// Timings at 1K/2K/4K tokens on random weights (CPU, f32), best of `reps` runs. Environment:
/// `KVBENCH_MAMBA_BENCH` = `small` (default: vocab 1000, hidden 64, 4 layers) and/or `130m`
/// (mamba-130m shapes), comma-separated; `KVBENCH_MAMBA_BENCH_MODES` = `sequential,doubling`
/// (default both); `KVBENCH_MAMBA_BENCH_REPS` (default 3); `KVBENCH_MAMBA_BENCH_THREADS` sets
/// libtorch's intra-op threads. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn mamba_scaling_timings() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    if let Ok(n) = std::env::var("KVBENCH_MAMBA_BENCH_THREADS") {
        tch::set_num_threads(n.parse().expect("KVBENCH_MAMBA_BENCH_THREADS: a number"));
    }
    let reps: usize = env("KVBENCH_MAMBA_BENCH_REPS", "3").parse().expect("KVBENCH_MAMBA_BENCH_REPS: a number");
    let modes: Vec<ScanMode> = env("KVBENCH_MAMBA_BENCH_MODES", "sequential,doubling")
        .split(',')
        .map(|m| match m {
            "sequential" => ScanMode::Sequential,
            "doubling" => ScanMode::Doubling,
            other => panic!("KVBENCH_MAMBA_BENCH_MODES: unknown mode {other}"),
        })
        .collect();
    eprintln!("libtorch threads: {}, best of {reps}", tch::get_num_threads());
    let best = |f: &mut dyn FnMut() -> f64| (0..reps.max(1)).map(|_| f()).fold(f64::INFINITY, f64::min);
    for name in env("KVBENCH_MAMBA_BENCH", "small").split(',') {
        let cfg = bench_config(name);
        let mut m = MambaModel::random(cfg.clone(), 11, Kind::Float, Device::Cpu).unwrap();
        eprintln!(
            "config {name}: vocab {}, hidden {}, d_inner {}, layers {}, d_state {}, weights {:.1} MiB, state {} bytes",
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers,
            cfg.state_size,
            m.weight_bytes as f64 / (1 << 20) as f64,
            m.state_bytes(1)
        );
        let ids: Vec<u32> = (0..4096u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
        let _ = m.forward_full(&ids[..64]).unwrap(); // warm-up
        for &mode in &modes {
            m.scan_mode = mode;
            for n in [1024usize, 2048, 4096] {
                let t_full = best(&mut || {
                    let t0 = Instant::now();
                    let full = m.forward_full(&ids[..n]).unwrap();
                    let t = t0.elapsed().as_secs_f64();
                    assert_eq!(full.isfinite().all().int64_value(&[]), 1);
                    t
                });
                let t_prefill = best(&mut || {
                    let t0 = Instant::now();
                    let _ = m.prefill(&ids[..n]).unwrap();
                    t0.elapsed().as_secs_f64()
                });
                let (_, mut state) = m.prefill(&ids[..n]).unwrap();
                let steps = 32;
                let t0 = Instant::now();
                for &t in &ids[..steps] {
                    let _ = m.forward_step(t, &mut state).unwrap();
                }
                let t_step = t0.elapsed().as_secs_f64() / steps as f64;
                let bytes = state.bytes();
                eprintln!(
                    "{name} {mode:?}: T={n:5}: forward_full {t_full:7.3} s ({:7.1} µs/token), prefill {t_prefill:7.3} s ({:7.1} µs/token), decode step {:6.2} ms, state {bytes} B",
                    t_full * 1e6 / n as f64,
                    t_prefill * 1e6 / n as f64,
                    t_step * 1e3
                );
                assert_eq!(bytes, m.state_bytes(1));
            }
        }
    }
}
