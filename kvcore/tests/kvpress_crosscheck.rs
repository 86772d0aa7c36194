//! Cross-check against NVIDIA kvpress (PyPI `kvpress==0.5.5`): on SmolLM2 (the same GGUF, f32),
//! three prompts, compression 0.75 = kvbench `ratio = 4`, the positions each layer/KV head keeps
//! after the prefill are compared with kvpress's (`scripts/reference/kvpress_reference.py`):
//!
//! | kvpress                              | kvbench                                              |
//! |--------------------------------------|------------------------------------------------------|
//! | `StreamingLLMPress(n_sink = 4)`      | `streamingllm ratio=4 sinks=4 prefill="full"`        |
//! | `KnormPress`                         | `knorm ratio=4`                                      |
//! | `SnapKVPress(window 64, kernel 5)`   | `snapkv ratio=4` (defaults)                          |
//! | `TOVAPress`                          | `tova ratio=4`                                       |
//! | `ObservedAttentionPress`             | `h2o mode="prefill" recent_fraction=0 ratio=4`       |
//! | `KeyDiffPress`                       | `keydiff ratio=4`                                    |
//! | `ExpectedAttentionPress` (defaults)  | `expected-attention ratio=4` (defaults)              |
//! | `ChunkKVPress(KnormPress, 20)`       | `chunkkv scorer="knorm" ratio=4` (chunk_length 20)   |
//! | `ChunkKVPress(SnapKVPress(64, 5), 20)` | `chunkkv ratio=4` (snapkv, window 64, kernel 5)    |
//! | `KVzipPress` (defaults)              | `kvzip ratio=4` (defaults)                           |
//! | `KVzipPress(chunk_size = 64)`        | `kvzip ratio=4 chunk_size=64`                        |
//!
//! KVzip runs on each prompt behind SmolLM2's chat-template prefix (cut to a multiple of 4
//! tokens), through the engine's reconstruction stage (`kvcore::reconstruct::finish_prefill`). Its
//! budget is pooled over layers and heads, so its near-ties are against the one cut-off score of
//! the whole model, and its kept count per head is compared as kvpress's.
//!
//! Sets must be identical, except for one explained difference each:
//! * Float noise at the selection boundary: the two engines compute keys and attention in f32
//!   with different kernels (≈1e-6 relative), so a token whose kvpress score is within `TOL` of
//!   the cut-off score (the last kept one) may fall on either side. Every differing position must
//!   be such a near-tie, and the sets may differ by at most 2 positions per head.
//! * `h2o` (prefill mode) ranks keys by the attention summed over the prompt's queries; kvpress's
//!   ObservedAttentionPress divides that sum by the number of queries that see each key
//!   (`S - j`). The expectation for `h2o` is therefore kvpress's own scores times `S - j`,
//!   re-ranked here — which checks the documented difference exactly, not loosely.
//! * `chunkkv` keeps whole chunks, so its near-ties are between chunks: a chunk kept by only one
//!   side must have a mean head-summed kvpress score within `TOL` of the cut-off chunk's.
//!
//! Needs the reference python with kvpress (`scripts/bootstrap.sh --test`). If kvpress cannot be
//! imported there, the test prints why and returns, except under `CI=true` (the test command's
//! environment in CI), where a missing reference is a failure: no check passes without checking.

mod common;

use kvcore::device::{DType, RuntimeSettings};
use kvcore::generate::{end_prefill, new_caches_for, prefill};
use kvcore::loader::{load, LoadedModel};
use kvcore::reconstruct::finish_prefill;
use kvcore::registry::{parse_settings, Registry};
use kvcore::sources::ModelFiles;
use std::process::Command;
use tch::Device;

use kvplugins as _;

/// Relative score gap to the cut-off below which the two engines may disagree.
const TOL: f64 = 1e-3;

const CASES: &[(&str, &str, &[&str])] = &[
    ("streamingllm", "streamingllm", &["ratio=4", "sinks=4", "prefill=\"full\""]),
    ("knorm", "knorm", &["ratio=4"]),
    ("snapkv", "snapkv", &["ratio=4"]),
    ("tova", "tova", &["ratio=4"]),
    ("observed_attention", "h2o", &["ratio=4", "mode=\"prefill\"", "recent_fraction=0"]),
    ("keydiff", "keydiff", &["ratio=4"]),
    ("expected_attention", "expected-attention", &["ratio=4"]),
    ("chunkkv_knorm", "chunkkv", &["ratio=4", "scorer=\"knorm\"", "chunk_length=20"]),
    ("chunkkv_snapkv", "chunkkv", &["ratio=4", "chunk_length=20"]),
];

/// ChunkKV's chunk length in the cases above.
const CHUNK: usize = 20;

/// ChunkKV's ranking of a layer from kvpress's per-head scores `[H][S]`: each chunk's mean of
/// the head-summed scores (the last chunk may be shorter).
fn chunk_scores(heads: &[Vec<f64>]) -> Vec<f64> {
    let s = heads[0].len();
    let summed: Vec<f64> = (0..s).map(|j| heads.iter().map(|h| h[j]).sum()).collect();
    summed.chunks(CHUNK).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
}

/// Compares kvbench's chunkkv kept positions of one layer with kvpress's: identical for every
/// head, except whole chunks whose kvpress chunk score is within `TOL` of the cut-off chunk's.
/// Returns the number of swapped chunks.
fn check_chunks(label: &str, ours: &[Vec<i64>], theirs: &[Vec<i64>], heads: &[Vec<f64>]) -> usize {
    let cs = chunk_scores(heads);
    let chunks_of = |kept: &[i64]| -> Vec<usize> {
        let mut c: Vec<usize> = kept.iter().map(|&p| p as usize / CHUNK).collect();
        c.dedup();
        c
    };
    let want = chunks_of(&theirs[0]);
    for (h, t) in theirs.iter().enumerate() {
        assert_eq!(chunks_of(t), want, "{label}: kvpress keeps other chunks in head {h} than in head 0");
        // Whole chunks only.
        let s = heads[0].len();
        let whole: Vec<i64> = want.iter().flat_map(|&c| (c * CHUNK) as i64..((c + 1) * CHUNK).min(s) as i64).collect();
        assert_eq!(t, &whole, "{label}: kvpress head {h} does not keep whole chunks");
    }
    let cut = want.iter().map(|&c| cs[c]).fold(f64::INFINITY, f64::min);
    let got = chunks_of(&ours[0]);
    for (h, o) in ours.iter().enumerate() {
        assert_eq!(o, &ours[0], "{label}: kvbench head {h} keeps other positions than head 0");
    }
    let diff: Vec<usize> = got.iter().filter(|c| !want.contains(c)).chain(want.iter().filter(|c| !got.contains(c))).copied().collect();
    for &c in &diff {
        let gap = (cs[c] - cut).abs() / cut.abs().max(1e-30);
        assert!(
            gap <= TOL,
            "{label}: chunk {c} kept by only one side and not a near-tie (score {:e}, cut-off {cut:e}, gap {gap:e})\n kvbench {got:?}\n kvpress {want:?}",
            cs[c]
        );
    }
    assert!(diff.len() <= 2, "{label}: {} chunks differ", diff.len());
    diff.len() / 2
}

fn kvpress_available() -> Result<(), String> {
    let py = common::python();
    let out = Command::new(&py).args(["-c", "import kvpress"]).output().map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} cannot import kvpress: {}", py.display(), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")))
    }
}

/// The top `n` positions of `scores`, ascending, and the cut-off (n-th largest) score.
fn top(scores: &[f64], n: usize) -> (Vec<i64>, f64) {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
    let cut = scores[idx[n - 1]];
    let mut kept: Vec<i64> = idx[..n].iter().map(|&i| i as i64).collect();
    kept.sort();
    (kept, cut)
}

#[test]
fn kept_positions_match_kvpress_on_smollm2() {
    if let Err(why) = kvpress_available() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "CI=true but the kvpress cross-check cannot run: {why}. scripts/bootstrap.sh --test installs kvpress==0.5.5");
        eprintln!("SKIPPED kvpress_crosscheck: {why}. Install the test requirements (scripts/bootstrap.sh --test) to run it.");
        return;
    }
    let _g = tch::no_grad_guard();
    let gguf = common::smollm2_gguf();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("kvpress.json");
    common::run_reference("kvpress_reference.py", &[gguf.to_str().unwrap(), json.to_str().unwrap()]);
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut lm = load(&ModelFiles::Gguf(gguf), RuntimeSettings { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 }).unwrap();
    let reg = Registry::builtin().unwrap();
    let mut report = Vec::new();
    for (pi, prompt) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = prompt["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let s = ids.len();
        for (press, method, set) in CASES {
            let r = &prompt["presses"][press];
            let table = parse_settings(&set.iter().map(|x| x.to_string()).collect::<Vec<_>>()).unwrap();
            let f = reg.build(method, &table).unwrap();
            let mut caches = new_caches_for(&lm, f.as_ref(), s, Some(s)).unwrap();
            let _ = prefill(&mut lm, &mut caches, &ids, 0, None).unwrap();
            end_prefill(&mut caches).unwrap();
            let (mut differing, mut heads, mut vs_kvpress) = (0usize, 0usize, 0usize);
            for (layer, cache) in caches.iter().enumerate() {
                let ours = cache.kept_positions();
                if press.starts_with("chunkkv") {
                    let as_vec = |v: &serde_json::Value| -> Vec<Vec<f64>> {
                        v.as_array().unwrap().iter().map(|h| h.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
                    };
                    let theirs: Vec<Vec<i64>> = as_vec(&r["kept"][layer]).iter().map(|h| h.iter().map(|&x| x as i64).collect()).collect();
                    let label = format!("prompt {pi} {press} → {method} layer {layer}");
                    differing += check_chunks(&label, &ours, &theirs, &as_vec(&r["scores"][layer]));
                    heads += ours.len();
                    vs_kvpress += ours.iter().zip(&theirs).map(|(o, t)| o.iter().filter(|p| !t.contains(p)).count()).sum::<usize>();
                    continue;
                }
                for (h, got) in ours.iter().enumerate() {
                    heads += 1;
                    let theirs: Vec<i64> = r["kept"][layer][h].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                    let mut scores: Vec<f64> = r["scores"][layer][h].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                    assert_eq!(scores.len(), s, "{press}: one kvpress score per position");
                    if *press == "observed_attention" {
                        // Undo kvpress's division by the number of queries that see key j.
                        for (j, x) in scores.iter_mut().enumerate() {
                            *x *= (s - j) as f64;
                        }
                    }
                    let n = theirs.len();
                    let (want, cut) = top(&scores, n);
                    if *press != "observed_attention" {
                        // kvpress's kept set is the top of its own scores (ties aside).
                        let d = want.iter().filter(|p| !theirs.contains(p)).count();
                        assert!(
                            d == 0 || scores.iter().filter(|&&x| x == cut).count() > 1,
                            "{press} layer {layer} head {h}: kvpress kept set is not the top of its scores"
                        );
                    }
                    let expected = if *press == "observed_attention" { want } else { theirs.clone() };
                    vs_kvpress += got.iter().filter(|p| !theirs.contains(p)).count();
                    assert_eq!(got.len(), n, "prompt {pi} {press} layer {layer} head {h}: kvbench keeps {} positions, kvpress {n}", got.len());
                    let diff: Vec<i64> = got.iter().filter(|p| !expected.contains(p)).chain(expected.iter().filter(|p| !got.contains(p))).copied().collect();
                    for &p in &diff {
                        let x = scores[p as usize];
                        let gap = (x - cut).abs() / cut.abs().max(1e-30);
                        assert!(
                            gap <= TOL,
                            "prompt {pi} {press} → {method} layer {layer} head {h}: position {p} kept by only one side and not a near-tie \
                             (score {x:e}, cut-off {cut:e}, relative gap {gap:e})\n kvbench {got:?}\n expected {expected:?}"
                        );
                    }
                    assert!(diff.len() <= 4, "prompt {pi} {press} layer {layer} head {h}: {} boundary differences", diff.len());
                    differing += diff.len() / 2;
                }
            }
            report.push(format!("prompt {pi} ({s} tokens) {press} vs {method}: {differing} boundary swaps over {heads} heads; {vs_kvpress} positions differ from kvpress's own set"));
        }
    }
    for (pi, prompt) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        check_kvzip(&mut lm, &reg, pi, &prompt["kvzip"], &mut report);
    }
    for line in &report {
        eprintln!("{line}");
    }
}

/// KVzip on one prompt: kvbench's kept positions per layer and head equal kvpress's, except
/// positions whose kvpress score is within `TOL` of the cut-off of the whole model's pooled
/// selection; the counts per head may move by those swaps only, the total not at all.
fn check_kvzip(lm: &mut LoadedModel, reg: &Registry, pi: usize, r: &serde_json::Value, report: &mut Vec<String>) {
    let ids: Vec<u32> = r["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let s = ids.len();
    for (press, set) in [("kvzip", &["ratio=4"][..]), ("kvzip_chunk64", &["ratio=4", "chunk_size=64"][..])] {
        let r = &r["presses"][press];
        let table = parse_settings(&set.iter().map(|x| x.to_string()).collect::<Vec<_>>()).unwrap();
        let f = reg.build("kvzip", &table).unwrap();
        let mut caches = new_caches_for(lm, f.as_ref(), s, Some(s)).unwrap();
        let _ = prefill(lm, &mut caches, &ids, 0, None).unwrap();
        finish_prefill(lm, &mut caches, f.as_ref(), &ids).unwrap();
        let as_i64 = |v: &serde_json::Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
        let scores = |layer: usize, h: usize| -> Vec<f64> { r["scores"][layer][h].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
        // The cut-off: the lowest kvpress score kept anywhere.
        let mut cut = f64::INFINITY;
        let (mut total_ours, mut total_theirs, mut swaps) = (0usize, 0usize, 0usize);
        for (layer, _) in caches.iter().enumerate() {
            for (h, kept) in r["kept"][layer].as_array().unwrap().iter().enumerate() {
                let sc = scores(layer, h);
                for p in as_i64(kept) {
                    cut = cut.min(sc[p as usize]);
                }
            }
        }
        for (layer, cache) in caches.iter().enumerate() {
            let ours = cache.kept_positions();
            for (h, got) in ours.iter().enumerate() {
                let theirs = as_i64(&r["kept"][layer][h]);
                let sc = scores(layer, h);
                total_ours += got.len();
                total_theirs += theirs.len();
                let diff: Vec<i64> = got.iter().filter(|p| !theirs.contains(p)).chain(theirs.iter().filter(|p| !got.contains(p))).copied().collect();
                for &p in &diff {
                    let gap = (sc[p as usize] - cut).abs() / cut.abs().max(1e-30);
                    assert!(
                        gap <= TOL,
                        "prompt {pi} {press} layer {layer} head {h}: position {p} kept by only one side and not a near-tie \
                         (kvpress score {:e}, pooled cut-off {cut:e}, relative gap {gap:e})\n kvbench {got:?}\n kvpress {theirs:?}",
                        sc[p as usize]
                    );
                }
                swaps += diff.len();
            }
        }
        assert_eq!(total_ours, total_theirs, "prompt {pi} {press}: kvbench keeps {total_ours} tokens over all layers and heads, kvpress {total_theirs}");
        assert!(swaps <= 8, "prompt {pi} {press}: {swaps} positions on one side only");
        report.push(format!("prompt {pi} ({s} tokens with the chat prefix) {press} vs kvzip: {total_ours} kept over all layers and heads, {swaps} positions on one side only (near-ties)"));
    }
}
