//! Parity of kvbench's Mamba-2 with Hugging Face transformers on small random models created and
//! saved by `scripts/reference/mamba2_parity.py` (tied and untied heads, one or several B/C
//! groups, projection biases, a clamped dt, no conv bias): full-sequence logits at several SSD
//! chunk sizes, 32 greedy tokens through the generic `ssm::greedy`, prefill-then-step and chunked
//! prefill against the full sequence, and a state whose size does not grow. An `#[ignore]`d test
//! times prefill at 1K/2K/4K tokens and decode steps at those context lengths.

mod common;

use common::*;
use kvcore::ssm::mamba2::{Mamba2Config, Mamba2Model};
use kvcore::ssm::{self, RecurrentLm};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn ids_from_npy(path: &Path) -> Vec<u32> {
    Vec::<i64>::try_from(&npy(path).view([-1])).unwrap().into_iter().map(|x| x as u32).collect()
}

#[test]
fn mamba2_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    run_reference("mamba2_parity.py", &[tmp.path().to_str().unwrap()]);
    let ids = ids_from_npy(&tmp.path().join("input_ids.npy"));
    assert_eq!(ids.len(), 64);
    eprintln!("libtorch threads: {}", tch::get_num_threads());

    for case in ["tied_g1", "untied_g2_bias_clamp", "g_per_head_no_conv_bias"] {
        let dir = tmp.path().join(case);
        assert_eq!(ssm::detect_family(&dir).unwrap(), Some("mamba2"), "{case}");
        let mut m = Mamba2Model::load(&dir, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{case}: {e}"));
        let reference = npy(&dir.join("logits.npy"));
        let c = m.config.clone();
        assert_eq!(reference.size(), [64, c.vocab_size as i64]);
        let full_from = |m: &Mamba2Model, ids: &[u32]| {
            let mut st = m.new_state().unwrap();
            m.forward(ids, &mut st, true).unwrap()
        };

        // (1) whole sequence at the config's chunk size and others: one chunk, chunks that
        // divide 64, a chunk size that does not, single steps through the chunked path.
        let default_chunk = m.chunk_size;
        for chunk in [c.chunk_size, 64, 16, 5, 1] {
            m.chunk_size = chunk;
            let d = max_abs_diff(&full_from(&m, &ids), &reference);
            eprintln!("{case}: full sequence (SSD chunk {chunk}): max |logit diff| vs transformers = {d:.3e}");
            assert!(d <= 1e-4, "{case} chunk {chunk}: max |logit diff| {d} > 1e-4");
        }
        m.chunk_size = default_chunk;
        let full = full_from(&m, &ids);
        // The generic loader picks the same model.
        let boxed = ssm::load_dir(&dir, Kind::Float, Device::Cpu).unwrap();
        assert_eq!(boxed.family(), "mamba2");
        let mut st = boxed.new_state().unwrap();
        let last = boxed.forward(&ids, &mut st, false).unwrap();
        assert_eq!(last.size(), [1, c.vocab_size as i64]);
        assert!(max_abs_diff(&last, &full.narrow(0, 63, 1)) <= 1e-5, "{case}: last-position logits differ");

        // (2) prefill 40 tokens, then one token at a time (the recurrent step).
        let mut state = m.new_state().unwrap();
        let last = m.forward(&ids[..40], &mut state, false).unwrap();
        let bytes_after_prefill = state.bytes();
        let mut worst_full = max_abs_diff(&last, &full.narrow(0, 39, 1));
        let mut worst_ref = max_abs_diff(&last, &reference.narrow(0, 39, 1));
        for (p, &t) in ids.iter().enumerate().skip(40) {
            let l = m.forward(&[t], &mut state, false).unwrap();
            worst_full = worst_full.max(max_abs_diff(&l, &full.narrow(0, p as i64, 1)));
            worst_ref = worst_ref.max(max_abs_diff(&l, &reference.narrow(0, p as i64, 1)));
        }
        assert_eq!(state.tokens, 64);
        eprintln!("{case}: prefill(40) + 24 steps: max |diff| vs full sequence = {worst_full:.3e}, vs transformers = {worst_ref:.3e}");
        assert!(worst_full <= 1e-4, "{case}: prefill+step differs from the full sequence by {worst_full}");
        assert!(worst_ref <= 1e-4, "{case}: prefill+step differs from transformers by {worst_ref}");

        // (3) chunked prefill: pieces of 7 (the last one a single token), all positions.
        let mut st = m.new_state().unwrap();
        let pieces: Vec<Tensor> = ids.chunks(7).map(|piece| m.forward(piece, &mut st, true).unwrap()).collect();
        let d = max_abs_diff(&Tensor::cat(&pieces, 0), &full);
        eprintln!("{case}: prefill in pieces of 7: max |diff| vs full sequence = {d:.3e}");
        assert!(d <= 1e-4, "{case}: chunked prefill differs by {d}");

        // (4) the state does not grow with the sequence.
        let mut one = m.new_state().unwrap();
        let fresh = one.bytes();
        let _ = m.forward(&ids[..1], &mut one, false).unwrap();
        let expected = (c.num_hidden_layers * (c.conv_dim() * c.conv_kernel + c.num_heads * c.head_dim * c.state_size) * 4) as u64;
        eprintln!(
            "{case}: state bytes fresh {fresh}, after 1 token {}, after 40 {bytes_after_prefill}, after 64 {}, expected {expected}",
            one.bytes(),
            state.bytes()
        );
        for b in [fresh, one.bytes(), bytes_after_prefill, state.bytes(), st.bytes(), m.state_bytes()] {
            assert_eq!(b, expected, "{case}");
        }

        // (5) 32 greedy tokens through the trait, identical to transformers' generate().
        let want = ids_from_npy(&dir.join("greedy.npy"));
        let got = ssm::greedy(&m, &ids, 32).unwrap();
        eprintln!("{case}: greedy {got:?}");
        assert_eq!(got, want, "{case}: greedy continuation differs from transformers");
    }
}

#[test]
fn missing_tensor_and_bad_config_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type":"mamba2","vocab_size":10,"num_hidden_layers":1}"#).unwrap();
    let e = Mamba2Model::load(tmp.path(), Kind::Float, Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("config.json") && e.contains("`hidden_size`"), "{e}");

    // A valid config but a safetensors file without the layer tensors.
    let config = r#"{"model_type":"mamba2","vocab_size":10,"hidden_size":8,"num_heads":2,"head_dim":8,"n_groups":1,
        "state_size":4,"num_hidden_layers":1,"time_step_limit":[0.0, Infinity]}"#;
    std::fs::write(tmp.path().join("config.json"), config).unwrap();
    let emb = vec![0u8; 10 * 8 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![10, 8], &emb).unwrap();
    safetensors::serialize_to_file([("backbone.embeddings.weight", view)], None, &tmp.path().join("model.safetensors")).unwrap();
    let e = Mamba2Model::load(tmp.path(), Kind::Float, Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("missing tensor `backbone.layers.0.norm.weight`"), "{e}");
}

fn bench_config(name: &str) -> Mamba2Config {
    let (vocab, hidden, layers, heads, state) = match name {
        "small" => (1000, 64, 4, 2, 16),
        "130m" => (50280, 768, 24, 24, 128),
        other => panic!("KVBENCH_MAMBA2_BENCH={other}: expected small or 130m"),
    };
    let json = format!(
        r#"{{"model_type":"mamba2","vocab_size":{vocab},"hidden_size":{hidden},"num_hidden_layers":{layers},"num_heads":{heads},
            "head_dim":64,"expand":2,"n_groups":1,"state_size":{state},"conv_kernel":4,"chunk_size":256,"tie_word_embeddings":true}}"#
    );
    Mamba2Config::from_json_str(&json, Path::new("(bench)")).unwrap()
}

/// Timings on random weights (CPU, f32), best of `reps` runs: prefill (logits at the last
/// position only) of 1K/2K/4K tokens, then the mean decode step after each. Environment:
/// `KVBENCH_MAMBA2_BENCH` = `130m` (default: mamba2-130m shapes) and/or `small`, comma-separated;
/// `KVBENCH_MAMBA2_BENCH_CHUNKS` = SSD chunk sizes (default: the model's); `KVBENCH_MAMBA2_BENCH_REPS`
/// (default 2); `KVBENCH_MAMBA2_BENCH_THREADS` sets libtorch's intra-op threads. Run with
/// `--ignored --nocapture`.
#[test]
#[ignore]
fn mamba2_scaling_timings() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    if let Ok(n) = std::env::var("KVBENCH_MAMBA2_BENCH_THREADS") {
        tch::set_num_threads(n.parse().expect("KVBENCH_MAMBA2_BENCH_THREADS: a number"));
    }
    let reps: usize = env("KVBENCH_MAMBA2_BENCH_REPS", "2").parse().expect("KVBENCH_MAMBA2_BENCH_REPS: a number");
    let chunks: Option<Vec<usize>> =
        std::env::var("KVBENCH_MAMBA2_BENCH_CHUNKS").ok().map(|v| v.split(',').map(|c| c.parse().expect("KVBENCH_MAMBA2_BENCH_CHUNKS: numbers")).collect());
    eprintln!("libtorch threads: {}, best of {reps}", tch::get_num_threads());
    let best = |f: &mut dyn FnMut() -> f64| (0..reps.max(1)).map(|_| f()).fold(f64::INFINITY, f64::min);
    for name in env("KVBENCH_MAMBA2_BENCH", "130m").split(',') {
        let cfg = bench_config(name);
        let mut m = Mamba2Model::random(cfg.clone(), 11, Kind::Float, Device::Cpu).unwrap();
        eprintln!(
            "config {name}: vocab {}, hidden {}, heads {} x {}, layers {}, state {}, weights {:.1} MiB, state {} bytes",
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.num_heads,
            cfg.head_dim,
            cfg.num_hidden_layers,
            cfg.state_size,
            m.weight_bytes as f64 / (1 << 20) as f64,
            m.state_bytes()
        );
        let ids: Vec<u32> = (0..4096u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
        let mut warm = m.new_state().unwrap();
        let _ = m.forward(&ids[..64], &mut warm, false).unwrap();
        for chunk in chunks.clone().unwrap_or_else(|| vec![m.chunk_size]) {
            m.chunk_size = chunk;
            for n in [1024usize, 2048, 4096] {
                let mut state = m.new_state().unwrap();
                let t_prefill = best(&mut || {
                    state = m.new_state().unwrap();
                    let t0 = Instant::now();
                    let logits = m.forward(&ids[..n], &mut state, false).unwrap();
                    let t = t0.elapsed().as_secs_f64();
                    assert_eq!(logits.isfinite().all().int64_value(&[]), 1);
                    t
                });
                let steps = 32;
                let t0 = Instant::now();
                for &t in &ids[..steps] {
                    let _ = m.forward(&[t], &mut state, false).unwrap();
                }
                let t_step = t0.elapsed().as_secs_f64() / steps as f64;
                let bytes = state.bytes();
                eprintln!(
                    "{name} chunk {chunk}: T={n:5}: prefill {t_prefill:7.3} s ({:7.1} µs/token), decode step after T {:6.2} ms, state {bytes} B",
                    t_prefill * 1e6 / n as f64,
                    t_step * 1e3
                );
                assert_eq!(bytes, m.state_bytes());
            }
        }
    }
}
