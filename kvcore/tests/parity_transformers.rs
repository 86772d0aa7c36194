//! Parity with Hugging Face transformers: tiny random Llama (plain, Llama-3.1 rope scaling, linear
//! rope scaling), Mistral (sliding window on) and Qwen2 models created by transformers and saved
//! as safetensors, in f32 and in f16 (the paper's dtype); and the real SmolLM2 GGUF loaded by both
//! from the same file.

mod common;

use common::*;
use kvcore::cache::FullCacheFactory;
use kvcore::device::{DType, RuntimeSettings};
use kvcore::generate::{all_logits, generate, new_caches, GenerateOptions};
use kvcore::loader::load;
use kvcore::model::Logits;
use kvcore::sources::ModelFiles;
use tch::{Device, Kind, Tensor};

fn cpu_f32() -> RuntimeSettings {
    RuntimeSettings { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 }
}

#[test]
fn tiny_random_models_match_transformers_at_1e4() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    run_reference("engine_parity.py", &["tiny", out]);
    let ids_t = npy(&tmp.path().join("input_ids.npy")).view([-1]);
    let ids: Vec<u32> = Vec::<i64>::try_from(&ids_t).unwrap().into_iter().map(|x| x as u32).collect();
    for case in ["llama", "llama31", "llama_linear", "mistral", "qwen2"] {
        let dir = tmp.path().join(case);
        write_smollm2_tokenizer(&dir);
        let mut lm = load(&ModelFiles::HfDir(dir.clone()), cpu_f32()).unwrap_or_else(|e| panic!("{case}: {e}"));
        let reference = npy(&dir.join("logits.npy"));

        // (1) whole sequence at once.
        let full = all_logits(&mut lm, &ids, &FullCacheFactory).unwrap();
        let d = max_abs_diff(&full, &reference);
        eprintln!("{case}: full-sequence max |logit diff| = {d:.3e}");
        assert!(d <= 1e-4, "{case}: max |logit diff| {d} > 1e-4");

        // (2) chunked prefill (16 tokens) then one token at a time: the cache path must agree.
        let _g = tch::no_grad_guard();
        let mut caches = new_caches(&lm, &FullCacheFactory, ids.len()).unwrap();
        let as_tensor = |s: &[u32]| Tensor::from_slice(&s.iter().map(|&t| t as i64).collect::<Vec<_>>()).unsqueeze(0);
        let mut worst = 0f64;
        let mut pos = 0;
        for chunk in ids[..40].chunks(16) {
            let l = lm.transformer_mut("test").unwrap().forward(&as_tensor(chunk), pos, &mut caches, Logits::All).unwrap().squeeze_dim(0);
            worst = worst.max(max_abs_diff(&l, &reference.narrow(0, pos as i64, chunk.len() as i64)));
            pos += chunk.len();
        }
        for &t in &ids[40..] {
            let l = lm.transformer_mut("test").unwrap().forward(&as_tensor(&[t]), pos, &mut caches, Logits::Last).unwrap().squeeze_dim(0);
            worst = worst.max(max_abs_diff(&l, &reference.get(pos as i64)));
            pos += 1;
        }
        eprintln!("{case}: chunked prefill + decode max |logit diff| = {worst:.3e}");
        assert!(worst <= 1e-4, "{case}: cached path differs by {worst}");

        // (3) f16 weights and compute (the paper's dtype), against transformers' `.half()`.
        let mut lm16 = load(&ModelFiles::HfDir(dir.clone()), RuntimeSettings { device: Device::Cpu, dtype: DType::F16, kv_dtype: DType::F16 }).unwrap();
        let ours16 = all_logits(&mut lm16, &ids, &FullCacheFactory).unwrap().to_kind(Kind::Float);
        let ref16 = npy(&dir.join("logits_f16.npy"));
        let (d16, rounding) = (max_abs_diff(&ours16, &ref16), max_abs_diff(&ref16, &reference));
        eprintln!("{case}: f16 max |logit diff| = {d16:.3e} (transformers' own f16 vs f32: {rounding:.3e})");
        // Two runs in f16 differ by their rounding, which is what f16 does to the f32 logits:
        // kvbench must be no farther from transformers' f16 than twice that (measured: 0.9-1.1x).
        assert!(d16 <= 2.0 * rounding, "{case}: f16 logits differ from transformers' f16 by {d16}, over twice f16's own rounding {rounding}");
    }
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let gguf = smollm2_gguf();
    let tmp = tempfile::tempdir().unwrap();
    run_reference("engine_parity.py", &["gguf", gguf.to_str().unwrap(), tmp.path().to_str().unwrap()]);
    let mut lm = load(&ModelFiles::Gguf(gguf.clone()), cpu_f32()).unwrap();

    // (b) logits over a 512-token text.
    let ids: Vec<u32> = Vec::<i64>::try_from(&npy(&tmp.path().join("text_ids.npy"))).unwrap().into_iter().map(|x| x as u32).collect();
    assert_eq!(ids.len(), 512);
    let reference = npy(&tmp.path().join("text_logits.npy")).to_kind(Kind::Float);
    let ours = all_logits(&mut lm, &ids, &FullCacheFactory).unwrap();
    let rel = ((&ours - &reference).norm().double_value(&[])) / reference.norm().double_value(&[]);
    let ours_top = ours.argmax(-1, false);
    let ref_top = reference.argmax(-1, false);
    let agree = ours_top.eq_tensor(&ref_top).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    eprintln!("SmolLM2 GGUF: relative logit error {rel:.3e}, argmax agreement {:.2}%", agree * 100.0);
    assert!(rel <= 1e-3, "relative logit error {rel} > 1e-3");
    assert!(agree >= 0.995, "argmax agreement {agree} < 99.5%");
    // Every flip must be a near-tie in the reference: the two candidates within 1% of the logit scale.
    let scale = reference.abs().max().double_value(&[]);
    for p in 0..512i64 {
        let (a, b) = (ours_top.int64_value(&[p]), ref_top.int64_value(&[p]));
        if a != b {
            let gap = reference.double_value(&[p, b]) - reference.double_value(&[p, a]);
            eprintln!("position {p}: kvbench {a}, transformers {b}, reference gap {gap:.2e}");
            assert!(gap <= 0.01 * scale, "position {p}: flip is not a near-tie (gap {gap})");
        }
    }

    // (c) 64 greedy tokens on 5 prompts, identical to transformers' generate.
    let gens: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("generations.json")).unwrap()).unwrap();
    let eos_ids = lm.eos_token_ids.clone();
    for g in gens["generations"].as_array().unwrap() {
        let prompt: Vec<u32> = g["prompt_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let mut expected: Vec<u32> = g["generated_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        // transformers keeps the EOS it stopped at; kvbench reports the tokens before it.
        if let Some(i) = expected.iter().position(|t| eos_ids.contains(t)) {
            assert_eq!(i + 1, expected.len(), "transformers went on after an EOS kvbench stops at");
            expected.truncate(i);
        }
        let opts = GenerateOptions { max_new_tokens: 64, ..Default::default() };
        let out = generate(&mut lm, &prompt, &opts, &FullCacheFactory).unwrap();
        eprintln!("{:?} -> {:?}", g["prompt"].as_str().unwrap(), out.text);
        assert_eq!(out.token_ids, expected, "prompt {:?}", g["prompt"]);
    }
}
