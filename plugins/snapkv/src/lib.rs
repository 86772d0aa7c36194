//! The observation-window family: SnapKV, PyramidKV and the AdaKV head-adaptive wrapper.
//!
//! * `snapkv` — Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", 2024
//!   (arXiv 2404.14469). The last `window` context queries vote: their softmax attention over the
//!   earlier keys, averaged over the window, smoothed by 1-D pooling (`kernel`, avg as kvpress or
//!   max as the paper), combined over the query heads of each KV head; window tokens are always
//!   kept. Scoring matches kvpress `SnapKVPress` (window 64, kernel 5).
//!   Cross-checked: kept positions equal `SnapKVPress`'s on SmolLM2, 3 prompts
//!   (`kvcore/tests/kvpress_crosscheck.rs`; near-ties at the cut-off may swap, float noise).
//! * `pyramidkv` — Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
//!   Information Funneling", 2024 (arXiv 2406.02069). SnapKV scores with a per-layer budget falling
//!   linearly from the first to the last layer, same total; the schedule is kvpress's
//!   `PyramidKVPress.get_layer_budget` (from KVCache-Factory), including its fall-back to a
//!   uniform budget when the pyramid would not fit (e.g. window 64, beta 20 at small budgets).
//! * `adakv` — Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation",
//!   2024 (arXiv 2407.11550). Wraps any scoring method (`scorer = "snapkv"`, `knorm`, `tova`,
//!   `random`): each head keeps its best `floor(alpha·budget)`, then the layer's remaining budget
//!   goes to the best tokens of any head. Heads hold different numbers of tokens and store only
//!   those (kvpress simulates this by masking; here memory really drops).
//!
//! Budget: `ratio = N` keeps `floor(S/N)` per head (on average over heads for adakv, over layers for
//! pyramidkv) of the `S`-token context after prefill; `tokens = K` keeps K.

use kvcore::cache::CacheFactory;
use kvcore::methods::{in_window, window_probs, Budget, EvictionConfig, EvictionFactory, ScoreInput, Scorer};
use kvcore::registry::{builtin_scorer, eviction_params, MethodError, MethodRegistration, Params};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// SnapKV's observation-window scores.
pub struct SnapScorer {
    pub window: usize,
    pub kernel: usize,
    pub max_pool: bool,
}

impl SnapScorer {
    fn from_params(p: &mut Params) -> Result<Self, MethodError> {
        let window = p.int("window", 64, 1, 1 << 20)?;
        let kernel = p.int("kernel", 5, 1, 1 << 10)?;
        let max_pool = p.choice("pooling", "avg", &["avg", "max"])? == "max";
        if kernel % 2 == 0 {
            return Err(MethodError::BadParam { method: "snapkv".into(), key: "kernel".into(), value: kernel.to_string(), expected: "an odd integer in [1, 1024]".into() });
        }
        Ok(SnapScorer { window, kernel, max_pool })
    }
}

impl Scorer for SnapScorer {
    fn query_window(&self) -> usize {
        self.window
    }
    fn score(&self, input: &ScoreInput<'_>) -> kvcore::Result<Tensor> {
        let probs = window_probs(input)?; // [B, Hq, W, S]
        let (b, hkv, s) = input.positions.size3()?;
        // Window tokens are the newest slots (positions ≥ the first window query).
        let n_win = in_window(input).sum_dim_intlist(-1, false, Kind::Int64).max().int64_value(&[]).min(s);
        let body = s - n_win;
        if body == 0 {
            return Ok(Tensor::ones([b, hkv, s], (Kind::Float, input.positions.device())));
        }
        let votes = probs.mean_dim(2, false, Kind::Float).narrow(-1, 0, body); // [B, Hq, body]
        let k = self.kernel as i64;
        let pooled = if self.max_pool {
            votes.max_pool1d([k].as_slice(), [1i64].as_slice(), [k / 2].as_slice(), [1i64].as_slice(), false)
        } else {
            votes.avg_pool1d([k].as_slice(), [1i64].as_slice(), [k / 2].as_slice(), false, true)
        };
        let scores = input.gqa.reduce(&pooled, hkv);
        let top = scores.max().double_value(&[]) + 1.0;
        let win = Tensor::full([b, hkv, n_win], top, (Kind::Float, scores.device()));
        Ok(Tensor::cat(&[scores, win], -1))
    }
}

fn snap_config(name: &str, p: &mut Params) -> Result<EvictionConfig, MethodError> {
    let budget = p.budget(4.0)?;
    let scorer = SnapScorer::from_params(p)?;
    let mut cfg = EvictionConfig::new(name, budget, Arc::new(scorer));
    eviction_params(p, &mut cfg, false)?;
    Ok(cfg)
}

fn build_snapkv(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("snapkv", t);
    let cfg = snap_config("snapkv", &mut p)?;
    p.finish()?;
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

/// PyramidKV's per-layer budget (kvpress `get_layer_budget`, Python rounding half to even).
pub fn pyramid_budget(layer: usize, num_layers: usize, len: usize, avg_keep: usize, window: usize, beta: f64) -> usize {
    let (q, w) = (len as f64, window as f64);
    let mcp = w + avg_keep as f64;
    let mut min_num = (mcp - w) / beta;
    let mut max_num = (mcp - w) * 2.0 - min_num;
    if max_num >= q - w {
        max_num = q - w;
        min_num = (mcp - w) * 2.0 - max_num;
    }
    if !(q >= max_num && max_num >= min_num && min_num >= w) {
        return avg_keep.max(1);
    }
    let steps = if num_layers > 1 { (max_num - min_num) / (num_layers - 1) as f64 } else { 0.0 };
    (max_num - layer as f64 * steps).round_ties_even().max(1.0) as usize
}

fn build_pyramidkv(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("pyramidkv", t);
    let beta = p.float("beta", 20.0, 1.0, 1e6)?;
    let mut cfg = snap_config("pyramidkv", &mut p)?;
    p.finish()?;
    let window = cfg.scorer.query_window();
    cfg.layer_budget = Some(Arc::new(move |layer, layers, len, budget: &Budget| pyramid_budget(layer, layers, len, budget.keep(len), window, beta)));
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

fn build_adakv(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("adakv", t);
    let budget = p.budget(4.0)?;
    let alpha = p.float("alpha", 0.2, 0.0, 1.0)?;
    let inner: String = p.get("scorer", "snapkv".to_string(), "the name of a scoring method")?;
    let mut cfg = EvictionConfig::new("adakv", budget, Arc::new(SnapScorer { window: 1, kernel: 1, max_pool: false }));
    eviction_params(&mut p, &mut cfg, false)?;
    let rest = p.take_rest();
    p.finish()?;
    cfg.scorer = builtin_scorer("adakv", &inner, &rest)?;
    cfg.head_adaptive = Some(alpha);
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

fn snap_scorer(t: &toml::Table) -> Result<Arc<dyn Scorer>, MethodError> {
    let mut p = Params::new("snapkv", t);
    let s = SnapScorer::from_params(&mut p)?;
    p.finish()?;
    Ok(Arc::new(s))
}

inventory::submit! {
    MethodRegistration {
        name: "snapkv",
        family: "snapkv",
        summary: "keep what the last context queries attend to, pooled (Li et al. 2024)",
        detail: "After the context prefill, the last `window` queries' attention (softmax, f32) is averaged over the window, \
                 pooled with `kernel` (avg, as kvpress; max as the paper), combined per KV head by `gqa`; the window itself is \
                 always kept; top floor(S/N) per head. kvpress SnapKVPress with compression_ratio = 1 - 1/N. arXiv 2404.14469.",
        params: kvcore::eviction_param_docs!(decode_evict = "false";
            ("window", "64", "observation window (last queries of the context)"),
            ("kernel", "5", "pooling kernel (odd)"),
            ("pooling", "avg", "avg or max")),
        build: build_snapkv,
        scorer: Some(snap_scorer),
    }
}

inventory::submit! {
    MethodRegistration {
        name: "pyramidkv",
        family: "snapkv",
        summary: "SnapKV scores with a budget falling linearly over layers (Cai et al. 2024)",
        detail: "Per-layer budget from kvpress PyramidKVPress.get_layer_budget: capacity = window + S/N, min = (capacity - window)/beta, \
                 max = 2(capacity - window) - min, linear from layer 0 (max) to the last (min), uniform S/N when the pyramid does \
                 not fit. Same total as snapkv. arXiv 2406.02069.",
        params: kvcore::eviction_param_docs!(decode_evict = "false";
            ("window", "64", "observation window"),
            ("kernel", "5", "pooling kernel (odd)"),
            ("pooling", "avg", "avg or max"),
            ("beta", "20", "pyramid steepness (>= 1)")),
        build: build_pyramidkv,
        scorer: None,
    }
}

inventory::submit! {
    MethodRegistration {
        name: "adakv",
        family: "snapkv",
        summary: "head-adaptive budgets over a scorer such as SnapKV; heads store different token counts (Feng et al. 2024)",
        detail: "Each KV head keeps its top floor(alpha * S/N) (at least 1); the rest of the layer's H * S/N budget goes to the \
                 best tokens of any head (kvpress AdaKVPress). Heads then hold only their own tokens, so bytes really drop. \
                 `scorer` names any scoring method (snapkv, knorm, tova, random); other keys go to it. arXiv 2407.11550.",
        params: kvcore::eviction_param_docs!(decode_evict = "false";
            ("scorer", "snapkv", "scoring method to wrap"),
            ("alpha", "0.2", "safeguard: share of the budget every head keeps")),
        build: build_adakv,
        scorer: None,
    }
}
