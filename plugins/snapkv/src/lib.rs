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

use kvcache::registration::builtin_scorer;
use kvmethods::eviction::{Allocation, EvictionConfig, EvictionFactory};
use kvmethods::prelude::*;
use kvmethods::scoring::{eviction_params, typed_scorer, SharedKnobs};

/// How SnapKV smooths the window's votes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average pooling, as kvpress.
    #[default]
    Avg,
    /// Max pooling, as the paper.
    Max,
}

/// SnapKV's observation-window scores.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Snap {
    /// Observation window: the last context queries that vote.
    pub window: usize,
    /// Pooling kernel (odd).
    pub kernel: usize,
    pub pooling: Pooling,
}

impl Default for Snap {
    fn default() -> Self {
        Snap { window: 64, kernel: 5, pooling: Pooling::Avg }
    }
}

impl Scorer for Snap {
    fn query_window(&self) -> usize {
        self.window
    }
    fn validate(&self, method: &str) -> std::result::Result<(), MethodError> {
        let bad = |key: &str, value: usize, expected: &str| MethodError::BadParam {
            method: method.into(),
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        };
        if !(1..=1 << 20).contains(&self.window) {
            return Err(bad("window", self.window, "an integer in [1, 1048576]"));
        }
        if !(1..=1 << 10).contains(&self.kernel) || self.kernel.is_multiple_of(2) {
            return Err(bad("kernel", self.kernel, "an odd integer in [1, 1024]"));
        }
        Ok(())
    }
    fn score(&self, input: &ScoreInput<'_>) -> Result<Tensor> {
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
        let pooled = match self.pooling {
            Pooling::Max => votes.max_pool1d([k].as_slice(), [1i64].as_slice(), [k / 2].as_slice(), [1i64].as_slice(), false),
            Pooling::Avg => votes.avg_pool1d([k].as_slice(), [1i64].as_slice(), [k / 2].as_slice(), false, true),
        };
        let scores = input.gqa.reduce(&pooled, hkv);
        let top = scores.max().double_value(&[]) + 1.0;
        let win = Tensor::full([b, hkv, n_win], top, (Kind::Float, scores.device()));
        Ok(Tensor::cat(&[scores, win], -1))
    }
}

register_scorer!(
    Snap,
    name = "snapkv",
    summary = "keep what the last context queries attend to, pooled (Li et al. 2024)",
    detail = "After the context prefill, the last `window` queries' attention (softmax, f32) is averaged over the window, \
              pooled with `kernel` (avg, as kvpress; max as the paper), combined per KV head by `gqa`; the window itself is \
              always kept; top floor(S/N) per head. kvpress SnapKVPress with compression_ratio = 1 - 1/N. arXiv 2404.14469.",
    params = [("window", "64", "observation window (last queries of the context)"), ("kernel", "5", "pooling kernel (odd)"), ("pooling", "avg", "avg or max"),],
);

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

fn build_pyramidkv(t: &toml::Table) -> std::result::Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("pyramidkv", t);
    let beta = p.float("beta", 20.0, 1.0, 1e6)?;
    let budget = p.budget(4.0)?;
    let scorer: Snap = typed_scorer("pyramidkv", &mut p)?;
    let window = scorer.query_window();
    let mut cfg = EvictionConfig::new("pyramidkv", budget, Arc::new(scorer));
    eviction_params(&mut p, &mut cfg, false)?;
    p.finish()?;
    cfg.allocation =
        Allocation::PerLayer(Arc::new(move |layer, layers, len, budget: &Budget| pyramid_budget(layer, layers, len, budget.keep(len), window, beta)));
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

fn build_adakv(t: &toml::Table) -> std::result::Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("adakv", t);
    let budget = p.budget(4.0)?;
    let alpha = p.float("alpha", 0.2, 0.0, 1.0)?;
    let inner: String = p.get("scorer", "snapkv".to_string(), "the name of a scoring method")?;
    let knobs = SharedKnobs::read("adakv", &mut p, false)?;
    let rest = p.take_rest();
    p.finish()?;
    let mut cfg = EvictionConfig::new("adakv", budget, builtin_scorer("adakv", &inner, &rest)?);
    knobs.apply(&mut cfg);
    cfg.allocation = Allocation::HeadAdaptive { alpha };
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "pyramidkv",
        family: "snapkv",
        summary: "SnapKV scores with a budget falling linearly over layers (Cai et al. 2024)",
        detail: "Per-layer budget from kvpress PyramidKVPress.get_layer_budget: capacity = window + S/N, min = (capacity - window)/beta, \
                 max = 2(capacity - window) - min, linear from layer 0 (max) to the last (min), uniform S/N when the pyramid does \
                 not fit. Same total as snapkv. arXiv 2406.02069.",
        params: kvmethods::eviction_param_docs!(decode_evict = "false";
            ("window", "64", "observation window"),
            ("kernel", "5", "pooling kernel (odd)"),
            ("pooling", "avg", "avg or max"),
            ("beta", "20", "pyramid steepness (>= 1)")),
        build: build_pyramidkv,
        scorer: None,
    }
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "adakv",
        family: "snapkv",
        summary: "head-adaptive budgets over a scorer such as SnapKV; heads store different token counts (Feng et al. 2024)",
        detail: "Each KV head keeps its top floor(alpha * S/N) (at least 1); the rest of the layer's H * S/N budget goes to the \
                 best tokens of any head (kvpress AdaKVPress). Heads then hold only their own tokens, so bytes really drop. \
                 `scorer` names any scoring method (snapkv, knorm, tova, random); other keys go to it. arXiv 2407.11550.",
        params: kvmethods::eviction_param_docs!(decode_evict = "false";
            ("scorer", "snapkv", "scoring method to wrap"),
            ("alpha", "0.2", "safeguard: share of the budget every head keeps")),
        build: build_adakv,
        scorer: None,
    }
}
