//! Parity of kvbench's RecurrentGemma (Griffin) with Hugging Face transformers on small random
//! models created and saved by `scripts/reference/recurrent_gemma_parity.py` (windows of 8, 16
//! and 128 so that 64 tokens wrap the KV ring several times; MQA and GQA; tied and untied heads;
//! q/k/v biases; several block patterns and conv widths): logits at every position, 32 greedy
//! tokens through the generic `ssm::greedy`, prefill-then-step and chunked prefill (across the
//! window's wrap) against the full sequence, and a state whose size stops growing at the window.
//! An `#[ignore]`d test times prefill at 1K/2K/4K tokens and decode steps at several contexts.

mod common;

use common::*;
use kvcore::ssm::recurrent_gemma::{BlockType, RecurrentGemmaConfig, RecurrentGemmaModel};
use kvcore::ssm::{self, RecurrentLm, RecurrentState};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const CASES: [&str; 3] = ["mqa_window8", "gqa_bias_untied_window128", "window16_att_att_rec"];

fn ids_from_npy(path: &Path) -> Vec<u32> {
    Vec::<i64>::try_from(&npy(path).view([-1])).unwrap().into_iter().map(|x| x as u32).collect()
}

/// The state's bytes after `tokens` tokens, from the config (f32 weights): conv window and RG-LRU
/// state per recurrent layer, keys and values of the last min(tokens, window) per attention layer.
fn expected_state_bytes(c: &RecurrentGemmaConfig, tokens: usize) -> u64 {
    let ring = tokens.min(c.attention_window_size);
    (0..c.num_hidden_layers)
        .map(|l| match c.block_type(l) {
            BlockType::Recurrent => c.lru_width * (c.conv1d_width - 1) * 4 + c.lru_width * 4,
            BlockType::Attention => 2 * c.num_key_value_heads * ring * c.head_dim * 4,
        } as u64)
        .sum()
}

fn full_logits(m: &RecurrentGemmaModel, ids: &[u32]) -> Tensor {
    let mut state = m.new_state().unwrap();
    let logits = m.forward(ids, &mut state, true).unwrap();
    assert_eq!(state.tokens, ids.len());
    logits
}

#[test]
fn recurrent_gemma_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    run_reference("recurrent_gemma_parity.py", &[tmp.path().to_str().unwrap()]);
    let ids = ids_from_npy(&tmp.path().join("input_ids.npy"));
    assert_eq!(ids.len(), 64);
    eprintln!("libtorch threads: {}", tch::get_num_threads());

    for case in CASES {
        let dir = tmp.path().join(case);
        assert_eq!(ssm::detect_family(&dir).unwrap(), Some("recurrent_gemma"));
        let boxed = ssm::load_dir(&dir, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(boxed.family(), "recurrent_gemma");
        let mut m = RecurrentGemmaModel::load(&dir, Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{case}: {e}"));
        let c = m.config.clone();
        let reference = npy(&dir.join("logits.npy"));
        assert_eq!(reference.size(), [64, c.vocab_size as i64]);
        eprintln!(
            "{case}: window {}, blocks {:?}, heads {}/{} kv, lru {}, weights {} B, state at the window {} B",
            c.attention_window_size,
            c.block_types,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.lru_width,
            m.weight_bytes,
            m.state_bytes()
        );

        // (1) the whole sequence through the generic loader, and with small query blocks.
        let mut s = boxed.new_state().unwrap();
        let d = max_abs_diff(&boxed.forward(&ids, &mut s, true).unwrap(), &reference);
        eprintln!("{case}: full sequence (ssm::load_dir): max |logit diff| vs transformers = {d:.3e}");
        assert!(d <= 1e-4, "{case}: max |logit diff| {d} > 1e-4");
        for block in [512, 5, 1] {
            m.attention_block = block;
            let d = max_abs_diff(&full_logits(&m, &ids), &reference);
            eprintln!("{case}: full sequence, attention blocks of {block}: max |logit diff| = {d:.3e}");
            assert!(d <= 1e-4, "{case} block {block}: max |logit diff| {d} > 1e-4");
        }
        m.attention_block = 512;
        let full = full_logits(&m, &ids);

        // (2) prefill 40 tokens (past every small window), then one token at a time; the state
        // reaches its largest at the window and stays there.
        let mut state = m.new_state().unwrap();
        let last = m.forward(&ids[..40], &mut state, false).unwrap();
        assert_eq!(last.size(), [1, c.vocab_size as i64]);
        let mut worst_full = max_abs_diff(&last, &full.get(39));
        let mut worst_ref = max_abs_diff(&last, &reference.get(39));
        assert_eq!(state.bytes(), expected_state_bytes(&c, 40));
        for (p, &t) in ids.iter().enumerate().skip(40) {
            let l = m.forward(&[t], &mut state, false).unwrap();
            worst_full = worst_full.max(max_abs_diff(&l, &full.get(p as i64)));
            worst_ref = worst_ref.max(max_abs_diff(&l, &reference.get(p as i64)));
            assert_eq!(state.bytes(), expected_state_bytes(&c, p + 1), "{case}: state bytes after {} tokens", p + 1);
            assert!(state.bytes() <= m.state_bytes());
        }
        assert_eq!(state.tokens, 64);
        eprintln!("{case}: prefill(40) + 24 steps: max |diff| vs full = {worst_full:.3e}, vs transformers = {worst_ref:.3e}");
        assert!(worst_full <= 1e-4, "{case}: prefill+step differs from the full sequence by {worst_full}");
        assert!(worst_ref <= 1e-4, "{case}: prefill+step differs from transformers by {worst_ref}");
        if c.attention_window_size <= 40 {
            assert_eq!(state.bytes(), m.state_bytes(), "{case}: past the window the state is at its largest");
        }

        // (3) chunked prefill: chunks of 7 (the window-8 ring wraps inside chunks) and of 20
        // (longer than the small windows), then every position from a 1-token start.
        for size in [7, 20, 1] {
            let mut st = m.new_state().unwrap();
            let pieces: Vec<Tensor> = ids.chunks(size).map(|chunk| m.forward(chunk, &mut st, true).unwrap()).collect();
            let d = max_abs_diff(&Tensor::cat(&pieces, 0), &full);
            eprintln!("{case}: chunks of {size}: max |diff| vs full = {d:.3e}");
            assert!(d <= 1e-4, "{case}: chunks of {size} differ by {d}");
            assert_eq!(st.bytes(), expected_state_bytes(&c, 64));
        }

        // (4) 32 greedy tokens through the trait, identical to transformers' cached decoding.
        let want = ids_from_npy(&dir.join("greedy.npy"));
        let got = ssm::greedy(&m, &ids, 32).unwrap();
        eprintln!("{case}: greedy {got:?}");
        assert_eq!(got, want, "{case}: greedy continuation differs from transformers");
        assert_eq!(ssm::greedy(boxed.as_ref(), &ids, 32).unwrap(), want, "{case}: greedy (ssm::load_dir) differs");
    }
}

#[test]
fn foreign_state_and_bad_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type":"recurrent_gemma","vocab_size":10,"num_hidden_layers":1}"#).unwrap();
    let e = RecurrentGemmaModel::load(tmp.path(), Kind::Float, Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("config.json") && e.contains("`hidden_size`"), "{e}");

    // A valid config but a safetensors file without the layer tensors.
    let config = r#"{"model_type":"recurrent_gemma","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":3,"num_attention_heads":2}"#;
    std::fs::write(tmp.path().join("config.json"), config).unwrap();
    let emb = vec![0u8; 10 * 8 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![10, 8], &emb).unwrap();
    safetensors::serialize_to_file([("model.embed_tokens.weight", view)], None, &tmp.path().join("model.safetensors")).unwrap();
    let e = RecurrentGemmaModel::load(tmp.path(), Kind::Float, Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("missing tensor `model.layers.0.temporal_block.linear_y.weight`"), "{e}");

    // A state that does not belong to the model (wrong ring length for its token count).
    let c = RecurrentGemmaConfig::from_json_str(config, Path::new("(test)")).unwrap();
    let m = RecurrentGemmaModel::random(c, 1, Kind::Float, Device::Cpu).unwrap();
    let mut state = m.new_state().unwrap();
    state.tokens = 3;
    let e = m.forward(&[1], &mut state, false).expect_err("must fail").to_string();
    assert!(e.contains("RecurrentGemma state"), "{e}");
    let mut empty = RecurrentState::default();
    assert!(m.forward(&[1], &mut empty, false).is_err());
    assert!(m.forward(&[10], &mut m.new_state().unwrap(), false).is_err(), "token id past the vocabulary");
}

/// Shapes for the timing test. `reduced-2b`: recurrentgemma-2b's structure (pattern recurrent,
/// recurrent, attention; MQA; window 2048; MLP 3x hidden) at hidden 1024, 6 layers, 8 heads,
/// vocab 32000 (the 2B model, hidden 2560 x 26 layers x vocab 256000, is too big for this
/// machine's time). `small`: a quick check.
fn bench_config(name: &str) -> RecurrentGemmaConfig {
    let (vocab, hidden, layers, heads, window) = match name {
        "reduced-2b" => (32000, 1024, 6, 8, 2048),
        "small" => (1000, 128, 3, 4, 256),
        other => panic!("KVBENCH_RGEMMA_BENCH={other}: expected reduced-2b or small"),
    };
    let json = format!(
        r#"{{"model_type":"recurrent_gemma","vocab_size":{vocab},"hidden_size":{hidden},"intermediate_size":{},"num_hidden_layers":{layers},"num_attention_heads":{heads},"num_key_value_heads":1,"lru_width":{hidden},"attention_window_size":{window},"conv1d_width":4,"block_types":["recurrent","recurrent","attention"]}}"#,
        6 * hidden
    );
    RecurrentGemmaConfig::from_json_str(&json, Path::new("(bench)")).unwrap()
}

/// Timings on random weights (CPU, f32), best of `reps`: prefill (logits at the last position)
/// of 1K/2K/4K tokens, and the decode step after each. Environment: `KVBENCH_RGEMMA_BENCH` =
/// `reduced-2b` (default) and/or `small`, comma-separated; `KVBENCH_RGEMMA_BENCH_REPS` (default
/// 2); `KVBENCH_RGEMMA_BENCH_THREADS` sets libtorch's intra-op threads. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn recurrent_gemma_scaling_timings() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    if let Ok(n) = std::env::var("KVBENCH_RGEMMA_BENCH_THREADS") {
        tch::set_num_threads(n.parse().expect("KVBENCH_RGEMMA_BENCH_THREADS: a number"));
    }
    let reps: usize = env("KVBENCH_RGEMMA_BENCH_REPS", "2").parse().expect("KVBENCH_RGEMMA_BENCH_REPS: a number");
    eprintln!("libtorch threads: {}, best of {reps}", tch::get_num_threads());
    for name in env("KVBENCH_RGEMMA_BENCH", "reduced-2b").split(',') {
        let cfg = bench_config(name);
        let m = RecurrentGemmaModel::random(cfg.clone(), 11, Kind::Float, Device::Cpu).unwrap();
        eprintln!(
            "config {name}: vocab {}, hidden {}, layers {} {:?}, heads {} (kv {}), window {}, weights {:.1} MiB, state at the window {} B",
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.block_types,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.attention_window_size,
            m.weight_bytes as f64 / (1 << 20) as f64,
            m.state_bytes()
        );
        let ids: Vec<u32> = (0..4096u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
        let _ = m.forward(&ids[..64], &mut m.new_state().unwrap(), false).unwrap(); // warm-up
        for n in [1024usize, 2048, 4096] {
            let mut state = m.new_state().unwrap();
            let mut t_prefill = f64::INFINITY;
            for _ in 0..reps.max(1) {
                state = m.new_state().unwrap();
                let t0 = Instant::now();
                let last = m.forward(&ids[..n], &mut state, false).unwrap();
                t_prefill = t_prefill.min(t0.elapsed().as_secs_f64());
                assert_eq!(last.isfinite().all().int64_value(&[]), 1);
            }
            let steps = 16;
            let t0 = Instant::now();
            for &t in &ids[..steps] {
                let _ = m.forward(&[t], &mut state, false).unwrap();
            }
            let t_step = t0.elapsed().as_secs_f64() / steps as f64;
            eprintln!(
                "{name}: T={n:5}: prefill {t_prefill:7.3} s ({:7.1} µs/token), decode step at {n} {:6.2} ms, state {} B",
                t_prefill * 1e6 / n as f64,
                t_step * 1e3,
                state.bytes()
            );
            assert_eq!(state.bytes(), expected_state_bytes(&cfg, n + steps));
        }
    }
}

/// bf16 weights (f32 RG-LRU gates and f32 softmax inside) follow the f32 model closely, across
/// a window wrap and through decode steps.
#[test]
fn bf16_weights_follow_f32() {
    let json = r#"{"model_type":"recurrent_gemma","vocab_size":300,"hidden_size":64,"intermediate_size":192,"num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":1,"attention_window_size":8}"#;
    let c = RecurrentGemmaConfig::from_json_str(json, Path::new("(test)")).unwrap();
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 37 + 5) % 300).collect();
    let run = |kind: Kind| {
        let m = RecurrentGemmaModel::random(c.clone(), 5, kind, Device::Cpu).unwrap();
        let mut state = m.new_state().unwrap();
        let mut rows = vec![m.forward(&ids[..20], &mut state, true).unwrap()];
        for &t in &ids[20..] {
            rows.push(m.forward(&[t], &mut state, true).unwrap());
        }
        assert_eq!(state.bytes(), m.state_bytes());
        Tensor::cat(&rows, 0)
    };
    let (f32_logits, bf16_logits) = (run(Kind::Float), run(Kind::BFloat16));
    assert_eq!(bf16_logits.kind(), Kind::Float);
    let d = max_abs_diff(&f32_logits, &bf16_logits);
    let scale = f32_logits.abs().max().double_value(&[]);
    eprintln!("bf16 vs f32: max |logit diff| {d:.3e} (max |logit| {scale:.3e})");
    assert!(d <= 0.05 * scale, "bf16 logits differ from f32 by {d} (max |logit| {scale})");
}
