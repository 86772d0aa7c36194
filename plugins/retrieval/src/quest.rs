//! Quest (`quest`): query-aware sparsity. The cache keeps every token in pages of `page_size`
//! with the elementwise min and max of each page's keys; each decode step bounds every page's
//! attention score by `sum_d max(q_d min_d, q_d max_d)` and attends only to the top pages (the
//! page being filled always included). Tang et al., "Quest: Query-Aware Sparsity for Efficient
//! Long-Context LLM Inference", ICML 2024 (arXiv 2406.10774).

use crate::store::KvBuf;
use kvcache::cache::{attend_at_positions, attend_contiguous, tensor_bytes, AttentionStep, CacheFactory, CacheSpec, LayerCache, Visibility};
use kvcache::params::Budget;
use kvcache::params::{ParamDoc, Params};
use kvcache::registration::MethodRegistration;
use kvcache::MethodError;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Quest's settings.
#[derive(Clone, Debug)]
pub struct QuestConfig {
    pub budget: Budget,
    pub page_size: usize,
    /// Layers (from the first) that always attend fully (Quest skips the first two).
    pub skip_layers: usize,
    /// Combine the query heads of a GQA group by max (true) or mean of their bounds.
    pub gqa_max: bool,
}

/// Builds [`QuestCache`]s.
pub struct QuestFactory(pub Arc<QuestConfig>);

impl CacheFactory for QuestFactory {
    fn name(&self) -> &str {
        "quest"
    }
    fn layer_cache(&self, layer: usize, spec: &CacheSpec) -> kvcache::Result<Box<dyn LayerCache>> {
        Ok(Box::new(QuestCache::new(self.0.clone(), layer, *spec)))
    }
    /// Quest attends fully during prefill (and to appended question tokens); it selects pages
    /// only for decoded tokens.
    fn shared_prefill(&self) -> bool {
        true
    }
}

/// Quest's upper bound of `q · k` over a page: `sum_d max(q_d * min_d, q_d * max_d)`.
/// `q` is `[B, Hkv, G, D]`, `min`/`max` are `[B, Hkv, P, D]`; returns `[B, Hkv, G, P]` (f32).
pub fn page_upper_bound(q: &Tensor, min: &Tensor, max: &Tensor) -> Tensor {
    let q = q.to_kind(Kind::Float).unsqueeze(3); // [B, Hkv, G, 1, D]
    let lo = &q * min.to_kind(Kind::Float).unsqueeze(2); // [B, Hkv, G, P, D]
    let hi = &q * max.to_kind(Kind::Float).unsqueeze(2);
    lo.maximum(&hi).sum_dim_intlist(-1, false, Kind::Float)
}

/// One layer's Quest cache.
pub struct QuestCache {
    cfg: Arc<QuestConfig>,
    spec: CacheSpec,
    /// Whether this layer selects pages at all (false: skipped layer or unbounded budget).
    active: bool,
    store: KvBuf,
    first_pos: usize,
    /// Per complete page and KV head, the elementwise min and max of its keys, `[B, Hkv, P, D]`.
    page_min: Option<Tensor>,
    page_max: Option<Tensor>,
    /// Context length the budget is a fraction of (fixed at `end_prefill` or the first decode
    /// step unless the caller gave it up front).
    context: Option<usize>,
    attended_tokens: usize,
}

impl QuestCache {
    /// Appends the step's K/V (in the cache dtype) to the token store.
    fn store_step(&mut self, step: &AttentionStep<'_>) {
        if self.store.len() == 0 {
            self.first_pos = step.start_pos;
        }
        let kind = self.spec.kv_dtype.kind();
        self.store.append(&step.k.to_kind(kind), &step.v.to_kind(kind));
    }

    pub fn new(cfg: Arc<QuestConfig>, layer: usize, spec: CacheSpec) -> Self {
        let active = layer >= cfg.skip_layers && !cfg.budget.is_unbounded();
        QuestCache {
            active,
            store: KvBuf::new(&spec, spec.device),
            first_pos: 0,
            page_min: None,
            page_max: None,
            context: spec.context_tokens,
            attended_tokens: 0,
            cfg,
            spec,
        }
    }

    /// Pages a decode step attends to (the page being filled included).
    pub fn budget_pages(&self) -> Option<usize> {
        let ctx = self.context?;
        Some((self.cfg.budget.keep(ctx) / self.cfg.page_size).max(1))
    }

    fn complete_pages(&self) -> usize {
        self.page_min.as_ref().map_or(0, |t| t.size()[2] as usize)
    }

    /// Adds the min/max of pages completed since the last call.
    fn update_pages(&mut self) {
        let ps = self.cfg.page_size;
        let have = self.complete_pages();
        let now = self.store.len() / ps;
        if now <= have {
            return;
        }
        let (k, _) = self.store.views().expect("tokens stored");
        let (b, h, _, d) = k.size4().expect("[B, H, S, D]");
        let cnt = (now - have) as i64;
        let pages = k.narrow(2, (have * ps) as i64, cnt * ps as i64).reshape([b, h, cnt, ps as i64, d]);
        let (mn, mx) = (pages.amin(3, false), pages.amax(3, false));
        let cat = |old: &Option<Tensor>, new: Tensor| match old {
            Some(o) => Tensor::cat(&[o, &new], 2),
            None => new,
        };
        self.page_min = Some(cat(&self.page_min, mn));
        self.page_max = Some(cat(&self.page_max, mx));
    }

    /// Token indices (into the store) a one-query step at the end of the store attends to:
    /// the top pages by upper bound plus the last (partial or just completed) page, ascending,
    /// `[B, Hkv, S]`; `None` when the budget covers every page.
    pub fn select(&self, q: &Tensor) -> Option<Tensor> {
        let ps = self.cfg.page_size as i64;
        let n = self.store.len() as i64;
        let last = (n - 1) / ps; // page of the newest token; pages 0..last are candidates
        let k_sel = self.budget_pages()? as i64 - 1;
        if k_sel >= last {
            return None;
        }
        let (b, hkv, d) = (self.spec.batch as i64, self.spec.kv_heads as i64, self.spec.head_dim as i64);
        let hq = q.size()[1];
        let dev = self.spec.device;
        let qg = q.view([b, hkv, hq / hkv, d]);
        let mn = self.page_min.as_ref()?.narrow(2, 0, last);
        let mx = self.page_max.as_ref()?.narrow(2, 0, last);
        let ub = page_upper_bound(&qg, &mn, &mx);
        let ub = if self.cfg.gqa_max { ub.amax(2, false) } else { ub.mean_dim(2, false, Kind::Float) };
        let pages = if k_sel > 0 { Some(ub.topk(k_sel, -1, true, false).1.sort(-1, false).0) } else { None };
        let tail = Tensor::arange_start(last * ps, n, (Kind::Int64, dev)).view([1, 1, -1]).expand([b, hkv, n - last * ps], false);
        Some(match pages {
            Some(p) => Tensor::cat(&[(p.unsqueeze(-1) * ps + Tensor::arange(ps, (Kind::Int64, dev))).flatten(2, 3), tail], 2),
            None => tail.contiguous(),
        })
    }

    fn token_bytes(&self) -> u64 {
        let s = &self.spec;
        (2 * s.batch * s.kv_heads * s.head_dim * s.kv_dtype.size_in_bytes()) as u64
    }
}

impl LayerCache for QuestCache {
    /// A multi-token step (a prefill chunk, question tokens) attends fully, so a shared prefill
    /// only needs its K/V and page bounds stored; single tokens select pages, as in `attend`.
    fn observe(&mut self, step: &AttentionStep<'_>) -> kvcache::Result<()> {
        if step.q.size()[2] == 1 {
            return self.attend(step).map(drop);
        }
        self.store_step(step);
        if self.active {
            self.update_pages();
        }
        self.attended_tokens = self.store.len();
        Ok(())
    }

    fn attend(&mut self, step: &AttentionStep<'_>) -> kvcache::Result<Tensor> {
        self.store_step(step);
        let (k, v) = self.store.views().expect("tokens stored");
        let l = step.q.size()[2];
        if !self.active {
            self.attended_tokens = self.store.len();
            return Ok(attend_contiguous(step, &k, &v, self.first_pos));
        }
        self.update_pages();
        if l == 1 && self.context.is_none() {
            // Decoding without end_prefill or a known context: the budget is a fraction of what
            // was prefilled.
            self.context = Some(self.store.len() - 1);
        }
        // Prefill (and appended question tokens) attend fully, as in Quest.
        let idx = if l == 1 { self.select(step.q) } else { None };
        match idx {
            None => {
                self.attended_tokens = self.store.len();
                Ok(attend_contiguous(step, &k, &v, self.first_pos))
            }
            Some(idx) => {
                let (b, h, s) = idx.size3().expect("[B, Hkv, S]");
                let d = self.spec.head_dim as i64;
                let gi = idx.unsqueeze(-1).expand([b, h, s, d], false);
                let (ks, vs) = (k.gather(2, &gi, false), v.gather(2, &gi, false));
                self.attended_tokens = s as usize;
                Ok(attend_at_positions(step, &ks, &vs, &(idx + self.first_pos as i64), Visibility::default()))
            }
        }
    }

    fn end_prefill(&mut self) -> kvcache::Result<()> {
        if self.context.is_none() {
            self.context = Some(self.store.len());
        }
        Ok(())
    }

    fn stored_tokens(&self) -> usize {
        self.store.len()
    }

    fn bytes_held(&self) -> u64 {
        self.store.bytes() + self.page_min.as_ref().map_or(0, tensor_bytes) + self.page_max.as_ref().map_or(0, tensor_bytes)
    }

    fn bytes_attended(&self) -> u64 {
        self.attended_tokens as u64 * self.token_bytes()
    }

    fn bytes_allocated(&self) -> u64 {
        self.store.bytes_allocated() + self.page_min.as_ref().map_or(0, tensor_bytes) + self.page_max.as_ref().map_or(0, tensor_bytes)
    }

    fn reset(&mut self) {
        self.store.clear();
        self.first_pos = 0;
        self.page_min = None;
        self.page_max = None;
        self.context = self.spec.context_tokens;
        self.attended_tokens = 0;
    }

    fn kept_positions(&self) -> Vec<Vec<i64>> {
        let row: Vec<i64> = (self.first_pos as i64..(self.first_pos + self.store.len()) as i64).collect();
        vec![row; self.spec.batch * self.spec.kv_heads]
    }

    fn held_tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut out = Vec::new();
        if let Some((k, v)) = self.store.views() {
            out.push(("k", k));
            out.push(("v", v));
        }
        if let (Some(mn), Some(mx)) = (&self.page_min, &self.page_max) {
            out.push(("page_min", mn.shallow_clone()));
            out.push(("page_max", mx.shallow_clone()));
        }
        out
    }

    fn fork(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(QuestCache {
            cfg: self.cfg.clone(),
            spec: self.spec,
            active: self.active,
            store: self.store.deep_copy(),
            first_pos: self.first_pos,
            page_min: self.page_min.as_ref().map(|t| t.copy()),
            page_max: self.page_max.as_ref().map(|t| t.copy()),
            context: self.context,
            attended_tokens: self.attended_tokens,
        }))
    }
}

fn build(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("quest", t);
    let budget = p.budget(4.0)?;
    let page_size = p.int("page_size", 16, 1, 1 << 16)?;
    let skip_layers = p.int("skip_layers", 2, 0, 1 << 16)?;
    let gqa_max = p.choice("gqa", "max", &["max", "mean"])? == "max";
    p.finish()?;
    Ok(Arc::new(QuestFactory(Arc::new(QuestConfig { budget, page_size, skip_layers, gqa_max }))))
}

const PARAMS: &[ParamDoc] = &[
    ParamDoc { name: "ratio", default: "4", help: "attend to 1/N of the context while decoding (token budget = floor(S/N), in pages); 1 = full attention" },
    ParamDoc { name: "tokens", default: "(unset)", help: "absolute token budget per decode step instead of ratio" },
    ParamDoc { name: "page_size", default: "16", help: "tokens per page" },
    ParamDoc { name: "skip_layers", default: "2", help: "the first layers attend fully (Quest skips 2)" },
    ParamDoc { name: "gqa", default: "max", help: "combine the page bounds of a GQA group's query heads: max or mean" },
];

kvcache::inventory::submit! {
    MethodRegistration {
        name: "quest",
        family: "retrieval",
        summary: "query-aware page selection by per-page key min/max bounds at every decode step (Tang et al. 2024)",
        detail: "Quest (arXiv 2406.10774). Holds every token in pages of page_size with the per-page, per-KV-head \
                 elementwise min and max of the keys. Prefill and appended question tokens attend fully (as Quest); each \
                 decode step scores every complete page by sum_d max(q_d min_d, q_d max_d), combines a GQA group's query \
                 heads by max (gqa), and attends to the top k - 1 pages plus the page holding the newest token, \
                 k = max(1, floor(S/N) / page_size) for an S-token context (the caller's context length, else the tokens \
                 prefilled by end_prefill). The first skip_layers layers attend fully. bytes_held counts all tokens plus \
                 min/max metadata; bytes_attended the KV of the selected pages. Deviations: selection per KV head (Quest \
                 is MHA, per head); budget as a fraction of the context rather than a fixed token count. ratio = 1 is the \
                 full cache.",
        params: PARAMS,
        build,
        scorer: None,
    }
}
