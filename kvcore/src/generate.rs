//! Generation: prefill (optionally in chunks), then greedy decoding with stop tokens and stop
//! strings, through the per-layer caches of a cache method, with the timings and byte counts the
//! benchmark reports.

use crate::cache::{CacheFactory, CacheSpec, LayerCache};
use crate::error::{Error, Result};
use crate::loader::{Decoder, LoadedModel};
use crate::model::Logits;
use crate::ssm::RecurrentState;
use tch::{Kind, Tensor};

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// End-of-sequence tokens are suppressed until this many tokens are generated.
    pub min_new_tokens: usize,
    /// Strings that end generation; the text is cut before the first one.
    pub stop_strings: Vec<String>,
    /// Token ids that end generation (in addition to the model's EOS ids).
    pub extra_stop_token_ids: Vec<u32>,
    /// Prefill in chunks of this many tokens (None: all at once).
    pub prefill_chunk: Option<usize>,
    /// Reset the process's peak RSS after the prompt, so `peak_rss_decode_bytes` measures decoding
    /// alone (the peak before the reset is kept in `peak_rss_prefill_bytes`).
    pub measure_decode_rss: bool,
    /// Caches size their budgets from at most this many prompt tokens
    /// ([`crate::cache::CacheSpec::context_tokens`] is `min(prompt, cap)`): the paper's
    /// `ratio × min(length, model max length)` for the methods it never truncates (None: the
    /// prompt's length).
    pub budget_context_cap: Option<usize>,
    /// Presence/frequency penalties on the logits before each greedy choice (None: plain greedy).
    pub penalties: Option<Penalties>,
}

/// Presence and frequency penalties as the `rwkv` package's `PIPELINE.generate` applies them
/// (the paper's RWKV runs keep `PIPELINE_ARGS`' defaults): before each choice, every token `n`
/// generated so far loses `presence + occurrence[n] · frequency` from its logit (in the logits'
/// dtype); after each choice every occurrence decays by `decay`, then the chosen token's grows by
/// 1, or by 0 when it decodes to text inside `" \t0123456789"` (a space, a tab or digits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalties {
    pub presence: f64,
    pub frequency: f64,
    pub decay: f64,
}

impl Penalties {
    /// `rwkv.utils.PIPELINE_ARGS` defaults: `alpha_presence = 0.2`, `alpha_frequency = 0.2`,
    /// `alpha_decay = 0.996`.
    pub const RWKV_PIPELINE: Penalties = Penalties { presence: 0.2, frequency: 0.2, decay: 0.996 };

    /// The penalties a model config's `penalties` or `kvbench generate --penalties` names
    /// (`rwkv-pipeline`); None for any other name.
    pub fn by_name(name: &str) -> Option<Penalties> {
        match name {
            "rwkv-pipeline" => Some(Self::RWKV_PIPELINE),
            _ => None,
        }
    }
}

/// One sequence's [`Penalties`] state: each generated token's weight, in first-seen order.
#[derive(Clone, Debug)]
pub struct PenaltyState {
    pub penalties: Penalties,
    occurrence: Vec<(u32, f64)>,
}

impl PenaltyState {
    pub fn new(penalties: Penalties) -> Self {
        PenaltyState { penalties, occurrence: Vec::new() }
    }

    /// Subtracts each generated token's penalty from `logits` (`[..., vocab]`, one row), in the
    /// logits' dtype, as `out[n] -= presence + occurrence[n] * frequency` does.
    pub fn apply(&self, logits: &mut Tensor) {
        if self.occurrence.is_empty() {
            return;
        }
        let p = self.penalties;
        let ids: Vec<i64> = self.occurrence.iter().map(|&(t, _)| t as i64).collect();
        let minus: Vec<f32> = self.occurrence.iter().map(|&(_, w)| -((p.presence + w * p.frequency) as f32)).collect();
        let mut flat = logits.view([-1]);
        let delta = Tensor::from_slice(&minus).to_kind(flat.kind()).to_device(flat.device());
        let _ = flat.index_add_(0, &Tensor::from_slice(&ids).to_device(flat.device()), &delta);
    }

    /// Records a chosen token whose text is `text` (None when it does not decode to valid
    /// UTF-8 on its own): every weight decays, then the token's grows by 1, or by 0 when its
    /// text lies inside `" \t0123456789"` (the `rwkv` package's rule for spaces and digits).
    pub fn observe(&mut self, token: u32, text: Option<&str>) {
        for (_, w) in &mut self.occurrence {
            *w *= self.penalties.decay;
        }
        let weight = match text {
            Some(t) if !t.is_empty() && " \t0123456789".contains(t) => 0.0,
            _ => 1.0,
        };
        match self.occurrence.iter_mut().find(|(t, _)| *t == token) {
            Some((_, w)) => *w += weight,
            None => self.occurrence.push((token, weight)),
        }
    }
}

impl GenerateOptions {
    /// The context length caches size their budgets from, for a prompt of `tokens`.
    pub fn budget_context(&self, tokens: usize) -> usize {
        self.budget_context_cap.map_or(tokens, |cap| tokens.min(cap))
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 128,
            min_new_tokens: 0,
            stop_strings: vec![],
            extra_stop_token_ids: vec![],
            prefill_chunk: None,
            measure_decode_rss: false,
            budget_context_cap: None,
            penalties: None,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EosToken,
    StopString,
    MaxNewTokens,
}

/// What a generation produced and what it cost.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerationOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub stop_reason: StopReason,
    /// Seconds from the start of prefill to the first generated token.
    pub prefill_seconds: f64,
    /// Seconds spent on the tokens after the first.
    pub decode_seconds: f64,
    /// KV bytes held at the end, everything the caches keep (a retrieval cache's block store too).
    pub kv_bytes_held: u64,
    /// KV bytes the last decoding step attended to (less than `kv_bytes_held` for retrieval caches).
    pub kv_bytes_attended: u64,
    pub kv_bytes_allocated: u64,
    /// Bytes a full cache in the same storage dtype would hold for the same tokens.
    pub kv_bytes_full: u64,
    /// Bytes held once the prompt is in (after compression), before the first decode step.
    pub kv_bytes_held_prompt: u64,
    /// Bytes a full cache would hold for the prompt.
    pub kv_bytes_full_prompt: u64,
    /// Bytes offloaded to host memory at the end.
    pub kv_bytes_offloaded: u64,
    /// Peak RSS up to the end of the prompt (with `measure_decode_rss`).
    pub peak_rss_prefill_bytes: Option<u64>,
    /// Peak RSS during decoding alone (with `measure_decode_rss`).
    pub peak_rss_decode_bytes: Option<u64>,
    /// Resident set at the end of decoding (with `measure_decode_rss`): what the run holds once
    /// a method's budget is in force (H2O's decoding peak includes the full prompt cache it
    /// holds until its first decode step; this shows the memory it then gives back).
    pub rss_end_bytes: Option<u64>,
}

impl GenerationOutput {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        if self.prefill_seconds > 0.0 {
            self.prompt_tokens as f64 / self.prefill_seconds
        } else {
            0.0
        }
    }
    /// Measured compression ratio at the end: full-cache bytes over held bytes.
    pub fn compression_ratio(&self) -> f64 {
        if self.kv_bytes_held > 0 {
            self.kv_bytes_full as f64 / self.kv_bytes_held as f64
        } else {
            0.0
        }
    }
    /// Generated tokens per second, counting the tokens after the first (which prefill produces).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.generated_tokens.saturating_sub(1);
        if n > 0 && self.decode_seconds > 0.0 {
            n as f64 / self.decode_seconds
        } else {
            0.0
        }
    }
}

/// What a sequence carries from one forward call to the next: the per-layer caches of a cache
/// method (transformers) or a recurrent model's fixed-size state.
pub enum SequenceState {
    Caches(Vec<Box<dyn LayerCache>>),
    Recurrent(RecurrentState),
}

impl SequenceState {
    /// Calls every layer's `end_prefill` hook (a recurrent state has none).
    pub fn end_prefill(&mut self) -> Result<()> {
        match self {
            SequenceState::Caches(c) => end_prefill(c),
            SequenceState::Recurrent(_) => Ok(()),
        }
    }
    /// Bytes held: the caches' (a retrieval cache's block store too), or the recurrent state's.
    pub fn bytes_held(&self) -> u64 {
        match self {
            SequenceState::Caches(c) => held_bytes(c),
            SequenceState::Recurrent(s) => s.bytes(),
        }
    }
    /// Bytes the last step attended to (the whole state for a recurrent model).
    pub fn bytes_attended(&self) -> u64 {
        match self {
            SequenceState::Caches(c) => c.iter().map(|c| c.bytes_attended()).sum(),
            SequenceState::Recurrent(s) => s.bytes(),
        }
    }
    /// Bytes allocated (capacity included).
    pub fn bytes_allocated(&self) -> u64 {
        match self {
            SequenceState::Caches(c) => c.iter().map(|c| c.bytes_allocated()).sum(),
            SequenceState::Recurrent(s) => s.bytes(),
        }
    }
    /// Bytes offloaded to host memory.
    pub fn bytes_offloaded(&self) -> u64 {
        match self {
            SequenceState::Caches(c) => c.iter().map(|c| c.bytes_offloaded()).sum(),
            SequenceState::Recurrent(_) => 0,
        }
    }
    /// An independent copy, if every part can be copied.
    pub fn fork(&self) -> Option<SequenceState> {
        match self {
            SequenceState::Caches(c) => c.iter().map(|c| c.fork()).collect::<Option<Vec<_>>>().map(SequenceState::Caches),
            SequenceState::Recurrent(s) => Some(SequenceState::Recurrent(s.deep_clone())),
        }
    }
}

/// Fresh per-layer caches of `factory` for a model.
pub fn new_caches(lm: &LoadedModel, factory: &dyn CacheFactory, expected_tokens: usize) -> Result<Vec<Box<dyn LayerCache>>> {
    new_caches_for(lm, factory, expected_tokens, None)
}

/// Fresh per-layer caches, telling the method how many context tokens prefill will bring.
pub fn new_caches_for(lm: &LoadedModel, factory: &dyn CacheFactory, expected_tokens: usize, context_tokens: Option<usize>) -> Result<Vec<Box<dyn LayerCache>>> {
    let model = lm.transformer(&format!("cache method `{}`", factory.name()))?;
    let c = &model.config;
    let spec = CacheSpec {
        batch: 1,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        kv_dtype: lm.settings.kv_dtype,
        device: lm.settings.device,
        expected_tokens,
        query_heads: c.num_attention_heads,
        num_layers: c.num_hidden_layers,
        context_tokens,
        rope: Some(model.rope()),
    };
    (0..c.num_hidden_layers).map(|i| factory.layer_cache(i, &spec).map_err(Error::from)).collect()
}

/// A fresh sequence for `lm` with the method of `factory`: its caches for a transformer; for a
/// recurrent model, which has no KV cache to compress, an empty state (only `full` applies).
pub fn new_sequence(lm: &LoadedModel, factory: &dyn CacheFactory, expected_tokens: usize, context_tokens: Option<usize>) -> Result<SequenceState> {
    match lm.recurrent() {
        None => Ok(SequenceState::Caches(new_caches_for(lm, factory, expected_tokens, context_tokens)?)),
        Some(r) => {
            if factory.name() != "full" {
                return Err(Error::Unsupported(format!(
                    "method `{}` compresses a KV cache; {} is a {} model with a fixed-size recurrent state: use method `full`",
                    factory.name(),
                    lm.files.path().display(),
                    r.family()
                )));
            }
            Ok(SequenceState::Recurrent(r.new_state()?))
        }
    }
}

fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits.view([-1]).argmax(-1, false).int64_value(&[]) as u32)
}

/// Runs `ids` through the model on top of `seq` (whose tokens end at `pos`), in chunks of `chunk`
/// tokens; returns the logits of every position (`[T, vocab]`, f32) with `all_positions`, else
/// of the last position only (`[1, vocab]`, the model's dtype).
pub fn forward_sequence(lm: &mut LoadedModel, seq: &mut SequenceState, ids: &[u32], pos: usize, chunk: Option<usize>, all_positions: bool) -> Result<Tensor> {
    if ids.is_empty() {
        return Err(Error::InvalidArgument { what: "token ids", value: "[]".into(), expected: "at least one token".into() });
    }
    let device = lm.settings.device;
    let chunk = chunk.unwrap_or(ids.len()).max(1);
    let mut parts = Vec::new();
    let mut pos = pos;
    for part in ids.chunks(chunk) {
        let out = match (&mut lm.decoder, &mut *seq) {
            (Decoder::Transformer(m), SequenceState::Caches(caches)) => {
                let input = Tensor::from_slice(&part.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(device).unsqueeze(0);
                let which = if all_positions { Logits::All } else { Logits::Last };
                let l = m.forward(&input, pos, caches, which)?;
                if all_positions {
                    l.squeeze_dim(0).to_kind(Kind::Float)
                } else {
                    l
                }
            }
            (Decoder::Recurrent(r), SequenceState::Recurrent(state)) => r.forward(part, state, all_positions)?,
            _ => return Err(Error::Other("internal: a sequence state of the wrong kind for this model".into())),
        };
        parts.push(out);
        pos += part.len();
    }
    Ok(if all_positions && parts.len() > 1 { Tensor::cat(&parts, 0) } else { parts.pop().expect("at least one chunk") })
}

/// Runs `ids` through a transformer's `caches` in chunks starting at `pos`; returns the last
/// position's logits.
pub fn prefill(lm: &mut LoadedModel, caches: &mut Vec<Box<dyn LayerCache>>, ids: &[u32], pos: usize, chunk: Option<usize>) -> Result<Tensor> {
    let mut seq = SequenceState::Caches(std::mem::take(caches));
    let out = forward_sequence(lm, &mut seq, ids, pos, chunk, false);
    if let SequenceState::Caches(c) = seq {
        *caches = c;
    }
    out
}

/// Ends a sequence's prefill: the budget pooled over layers, for the layers that pool it
/// ([`pool_budgets`]), then every layer's `end_prefill` hook (where most methods compress the
/// context). Methods with context reconstruction (KVzip) need
/// [`crate::reconstruct::finish_prefill`], which runs it first.
pub fn end_prefill(caches: &mut [Box<dyn LayerCache>]) -> Result<()> {
    pool_budgets(caches)?;
    caches.iter_mut().try_for_each(|c| c.end_prefill())?;
    Ok(())
}

/// A budget pooled over the layers of a sequence ([`LayerCache::pooled_scores`]): per batch row,
/// the best scores of all pooling layers together, as many as those layers would keep alone in
/// all, each head first keeping its own best token; each layer is told how many tokens of each
/// head survive.
pub fn pool_budgets(caches: &mut [Box<dyn LayerCache>]) -> Result<()> {
    let mut parts = Vec::new();
    for (i, c) in caches.iter_mut().enumerate() {
        if let Some(p) = c.pooled_scores()? {
            parts.push((i, p));
        }
    }
    let Some((_, first)) = parts.first() else { return Ok(()) };
    let batch = first.scores.size()[0];
    let mut counts: Vec<Vec<usize>> = parts.iter().map(|(_, p)| vec![0; (p.scores.size()[0] * p.scores.size()[1]) as usize]).collect();
    for b in 0..batch {
        let mut flat = Vec::new();
        let mut owner = Vec::new(); // (part, head) of each flat segment
        let mut total = 0usize;
        for (pi, (_, p)) in parts.iter().enumerate() {
            let (_, h, s) = p.scores.size3()?;
            let mut sc = p.scores.get(b).to_kind(Kind::Float).copy(); // [H, S]
                                                                      // Every head keeps its best token, whatever the other layers score.
            let best = sc.argmax(-1, true);
            let _ = sc.scatter_value_(-1, &best, f64::INFINITY);
            flat.push(sc.view([-1]));
            for hi in 0..h {
                owner.push((pi, (b * h + hi) as usize, s as usize));
            }
            total += p.keep.min(s as usize) * h as usize;
        }
        let flat = Tensor::cat(&flat, 0);
        let total = total.min(flat.size()[0] as usize);
        let (_, top) = flat.topk(total as i64, 0, true, true);
        // Segment of each kept index: owner segments are laid out one after another.
        let mut bounds = Vec::with_capacity(owner.len());
        let mut end = 0usize;
        for &(_, _, s) in &owner {
            end += s;
            bounds.push(end as i64);
        }
        let seg = top.bucketize(&Tensor::from_slice(&bounds).to_device(top.device()), false, true);
        let per_seg = Vec::<i64>::try_from(&seg.bincount(None::<&Tensor>, owner.len() as i64))?;
        for (&(pi, row, _), &n) in owner.iter().zip(&per_seg) {
            counts[pi][row] = n as usize;
        }
    }
    for ((i, _), n) in parts.iter().zip(&counts) {
        caches[*i].keep_pooled(n)?;
    }
    Ok(())
}

/// Total bytes the caches hold.
pub fn held_bytes(caches: &[Box<dyn LayerCache>]) -> u64 {
    caches.iter().map(|c| c.bytes_held()).sum()
}

/// Generates greedily from `prompt_ids` with the caches of `factory`: the whole prompt is the
/// context (prefilled, then `end_prefill`), then decoding. A recurrent model runs with its state
/// (method `full` only).
pub fn generate(lm: &mut LoadedModel, prompt_ids: &[u32], opts: &GenerateOptions, factory: &dyn CacheFactory) -> Result<GenerationOutput> {
    let _guard = tch::no_grad_guard();
    if prompt_ids.is_empty() {
        return Err(Error::InvalidArgument { what: "prompt", value: String::new(), expected: "at least one token".into() });
    }
    let t0 = std::time::Instant::now();
    let mut seq = new_sequence(lm, factory, prompt_ids.len() + opts.max_new_tokens, Some(opts.budget_context(prompt_ids.len())))?;
    let logits = forward_sequence(lm, &mut seq, prompt_ids, 0, opts.prefill_chunk, false)?;
    crate::reconstruct::finish_sequence_prefill(lm, &mut seq, factory, prompt_ids)?;
    decode(lm, &mut seq, logits, prompt_ids.len(), opts, t0)
}

/// Bytes a full cache holds per token (a recurrent model: 0, its state does not grow).
fn full_bytes_per_token(lm: &LoadedModel) -> u64 {
    match &lm.decoder {
        Decoder::Transformer(m) => m.config.kv_bytes_per_token(lm.settings.kv_dtype.size_in_bytes()),
        Decoder::Recurrent(_) => 0,
    }
}

/// What an uncompressed run would hold after `tokens` tokens: a full KV cache, or (recurrent) the
/// same fixed-size state `seq` holds.
fn full_bytes(lm: &LoadedModel, seq: &SequenceState, tokens: usize) -> u64 {
    match seq {
        SequenceState::Recurrent(s) => s.bytes(),
        SequenceState::Caches(_) => full_bytes_per_token(lm) * tokens as u64,
    }
}

/// One sequence's greedy choices and stop rules (EOS ids, stop strings, `min_new_tokens`,
/// `max_new_tokens`), a token at a time: single-sequence and batched decoding share it.
pub(crate) struct Greedy<'o> {
    opts: &'o GenerateOptions,
    stop_ids: Vec<u32>,
    pub(crate) out_ids: Vec<u32>,
    pub(crate) stop_reason: StopReason,
    /// The text cut before a stop string (set when one ended generation).
    cut_text: Option<String>,
    /// [`GenerateOptions::penalties`]' state.
    penalties: Option<PenaltyState>,
}

impl<'o> Greedy<'o> {
    pub(crate) fn new(lm: &LoadedModel, opts: &'o GenerateOptions) -> Self {
        let mut stop_ids = lm.eos_token_ids.clone();
        stop_ids.extend(&opts.extra_stop_token_ids);
        Greedy { opts, stop_ids, out_ids: Vec::new(), stop_reason: StopReason::MaxNewTokens, cut_text: None, penalties: opts.penalties.map(PenaltyState::new) }
    }

    /// Whether another token may be chosen (fewer than `max_new_tokens` so far).
    pub(crate) fn wants_token(&self) -> bool {
        self.out_ids.len() < self.opts.max_new_tokens
    }

    /// Chooses the next token from `logits` (the last position's); returns it when it must be
    /// fed back to the model, `None` when generation ends here.
    pub(crate) fn choose(&mut self, lm: &LoadedModel, logits: &mut Tensor) -> Result<Option<u32>> {
        if let Some(p) = &self.penalties {
            p.apply(logits);
        }
        if self.out_ids.len() < self.opts.min_new_tokens {
            let vocab = logits.size().last().copied().unwrap_or(0);
            for &id in &self.stop_ids {
                if (id as i64) < vocab {
                    let _ = logits.narrow(-1, id as i64, 1).fill_(f64::NEG_INFINITY);
                }
            }
        }
        let next = argmax(logits)?;
        if self.stop_ids.contains(&next) {
            self.stop_reason = StopReason::EosToken;
            return Ok(None);
        }
        self.out_ids.push(next);
        if let Some(p) = &mut self.penalties {
            // A token that is not valid UTF-8 on its own decodes to replacement characters.
            let text = lm.tokenizer.decode(&[next], true).map_err(|e| Error::Tokenizer(e.to_string()))?;
            p.observe(next, (!text.contains('\u{fffd}')).then_some(text.as_str()));
        }
        if !self.opts.stop_strings.is_empty() {
            let mut text = lm.tokenizer.decode(&self.out_ids, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
            if let Some(cut) = self.opts.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
                self.cut_text = Some(text);
                self.stop_reason = StopReason::StopString;
                return Ok(None);
            }
        }
        Ok(self.wants_token().then_some(next))
    }

    /// The generated text (cut before the stop string that ended it, if any).
    pub(crate) fn text(&mut self, lm: &LoadedModel) -> Result<String> {
        match self.cut_text.take() {
            Some(t) => Ok(t),
            None => lm.tokenizer.decode(&self.out_ids, true).map_err(|e| Error::Tokenizer(e.to_string())),
        }
    }
}

/// What a sequence's prompt left, measured before its first decode step.
pub(crate) struct PromptMeasure {
    pub(crate) prompt_tokens: usize,
    pub(crate) kv_bytes_held_prompt: u64,
    pub(crate) kv_bytes_full_prompt: u64,
}

impl PromptMeasure {
    pub(crate) fn of(lm: &LoadedModel, seq: &SequenceState, pos: usize) -> Self {
        PromptMeasure { prompt_tokens: pos, kv_bytes_held_prompt: seq.bytes_held(), kv_bytes_full_prompt: full_bytes(lm, seq, pos) }
    }

    /// The output of a finished sequence that went through the model up to `stored` tokens.
    pub(crate) fn output(
        self,
        lm: &LoadedModel,
        seq: &SequenceState,
        mut g: Greedy<'_>,
        stored: usize,
        prefill_seconds: f64,
        total: f64,
    ) -> Result<GenerationOutput> {
        Ok(GenerationOutput {
            text: g.text(lm)?,
            generated_tokens: g.out_ids.len(),
            token_ids: std::mem::take(&mut g.out_ids),
            prompt_tokens: self.prompt_tokens,
            stop_reason: g.stop_reason,
            prefill_seconds,
            decode_seconds: (total - prefill_seconds).max(0.0),
            kv_bytes_held: seq.bytes_held(),
            kv_bytes_attended: seq.bytes_attended(),
            kv_bytes_allocated: seq.bytes_allocated(),
            kv_bytes_full: full_bytes(lm, seq, stored),
            kv_bytes_held_prompt: self.kv_bytes_held_prompt,
            kv_bytes_full_prompt: self.kv_bytes_full_prompt,
            kv_bytes_offloaded: seq.bytes_offloaded(),
            peak_rss_prefill_bytes: None,
            peak_rss_decode_bytes: None,
            rss_end_bytes: None,
        })
    }
}

/// Greedy decoding from `logits` (the last prompt position's) with `seq` already holding `pos`
/// tokens; `t0` is when the prompt started (for the prefill time).
pub fn decode(
    lm: &mut LoadedModel,
    seq: &mut SequenceState,
    mut logits: Tensor,
    mut pos: usize,
    opts: &GenerateOptions,
    t0: std::time::Instant,
) -> Result<GenerationOutput> {
    let _guard = tch::no_grad_guard();
    let device = lm.settings.device;
    let prompt = PromptMeasure::of(lm, seq, pos);
    let peak_rss_prefill_bytes = if opts.measure_decode_rss { crate::memory::peak_rss_bytes() } else { None };
    if opts.measure_decode_rss {
        // Return the memory freed by compression to the OS first, so decoding's peak is its own.
        crate::memory::release_free_memory();
        crate::memory::reset_peak_rss();
    }

    let mut g = Greedy::new(lm, opts);
    let mut prefill_seconds = 0.0;
    while g.wants_token() {
        if g.out_ids.is_empty() {
            crate::device::synchronize(device);
            prefill_seconds = t0.elapsed().as_secs_f64();
        }
        let Some(next) = g.choose(lm, &mut logits)? else { break };
        logits = forward_sequence(lm, seq, &[next], pos, None, false)?;
        pos += 1;
    }
    crate::device::synchronize(device);
    let total = t0.elapsed().as_secs_f64();
    if g.out_ids.is_empty() {
        prefill_seconds = total;
    }
    let stored = pos; // every token that went through the model
    let mut out = prompt.output(lm, seq, g, stored, prefill_seconds, total)?;
    if opts.measure_decode_rss {
        out.peak_rss_prefill_bytes = peak_rss_prefill_bytes;
        out.peak_rss_decode_bytes = crate::memory::peak_rss_bytes();
        out.rss_end_bytes = crate::memory::current_rss_bytes();
    }
    Ok(out)
}

/// Logits of every position of `ids` (for parity checks and `--dump-logits --all-positions`).
pub fn all_logits(lm: &mut LoadedModel, ids: &[u32], factory: &dyn CacheFactory) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let mut seq = new_sequence(lm, factory, ids.len(), None)?;
    forward_sequence(lm, &mut seq, ids, 0, None, true)
}

/// What [`perplexity`] measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PerplexityOutput {
    /// Tokens prefilled (and compressed at `end_prefill`) before scoring starts.
    pub prefill_tokens: usize,
    /// Tokens scored (each predicted from everything before it, through the cache).
    pub scored_tokens: usize,
    /// Mean negative log-likelihood (nats per token) and its exponential.
    pub nll: f64,
    pub perplexity: f64,
    /// Bytes the caches hold at the end, and what a full cache of the same tokens holds.
    pub kv_bytes_held: u64,
    pub kv_bytes_full: u64,
    pub seconds: f64,
}

/// Perplexity of `ids[prefill..]`: the first `prefill` tokens are prefilled (in `chunk`s) and
/// `end_prefill` runs, then the rest is fed `step` tokens at a time through the method's cache,
/// so every scored token is predicted by a model attending to the compressed cache.
pub fn perplexity(
    lm: &mut LoadedModel,
    factory: &dyn CacheFactory,
    ids: &[u32],
    prefill_len: usize,
    step: usize,
    chunk: Option<usize>,
) -> Result<PerplexityOutput> {
    let _guard = tch::no_grad_guard();
    if prefill_len == 0 || prefill_len >= ids.len() {
        return Err(Error::InvalidArgument {
            what: "prefill tokens",
            value: prefill_len.to_string(),
            expected: format!("between 1 and {} (the text has {} tokens)", ids.len().saturating_sub(1), ids.len()),
        });
    }
    let t0 = std::time::Instant::now();
    let device = lm.settings.device;
    let mut seq = new_sequence(lm, factory, ids.len(), Some(prefill_len))?;
    let mut last = forward_sequence(lm, &mut seq, &ids[..prefill_len], 0, chunk, false)?.to_kind(Kind::Float).view([1, -1]);
    crate::reconstruct::finish_sequence_prefill(lm, &mut seq, factory, &ids[..prefill_len])?;
    let mut nll = 0f64;
    let mut pos = prefill_len;
    while pos < ids.len() {
        let n = step.max(1).min(ids.len() - pos);
        let part: Vec<i64> = ids[pos..pos + n].iter().map(|&t| t as i64).collect();
        let out = forward_sequence(lm, &mut seq, &ids[pos..pos + n], pos, None, true)?;
        // Row i predicts ids[pos + i]: the previous step's last row, then this step's first n-1.
        let rows = Tensor::cat(&[&last, &out.narrow(0, 0, n as i64 - 1)], 0);
        let targets = Tensor::from_slice(&part).to_device(device).unsqueeze(1);
        nll -= rows.log_softmax(-1, Kind::Float).gather(1, &targets, false).sum(Kind::Double).double_value(&[]);
        last = out.narrow(0, n as i64 - 1, 1);
        pos += n;
    }
    let scored = ids.len() - prefill_len;
    let mean = nll / scored as f64;
    Ok(PerplexityOutput {
        prefill_tokens: prefill_len,
        scored_tokens: scored,
        nll: mean,
        perplexity: mean.exp(),
        kv_bytes_held: seq.bytes_held(),
        kv_bytes_full: full_bytes(lm, &seq, ids.len()),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Self-information `-ln p(ids[i] | ids[..i])` of every token after the first (entry `i - 1` is
/// token `i`'s), under the full cache, computed `chunk` tokens at a time so the logits of a long
/// text never exist all at once (8,192 positions × a 49K vocabulary would be 1.6 GB).
pub fn token_surprisal(lm: &mut LoadedModel, ids: &[u32], chunk: usize) -> Result<Vec<f32>> {
    let _guard = tch::no_grad_guard();
    if ids.len() < 2 {
        return Ok(Vec::new());
    }
    let device = lm.settings.device;
    let mut seq = new_sequence(lm, &crate::cache::FullCacheFactory, ids.len(), Some(ids.len()))?;
    let mut out = Vec::with_capacity(ids.len() - 1);
    let mut last: Option<Tensor> = None;
    let mut pos = 0;
    for part in ids.chunks(chunk.max(1)) {
        let part: Vec<i64> = part.iter().map(|&t| t as i64).collect();
        let n = part.len() as i64;
        let ids_part: Vec<u32> = part.iter().map(|&t| t as u32).collect();
        let logits = forward_sequence(lm, &mut seq, &ids_part, pos, None, true)?;
        // Row j predicts part[j]: the previous chunk's last row, then this chunk's first n-1 rows.
        let (rows, targets) = match &last {
            Some(prev) => (Tensor::cat(&[prev, &logits.narrow(0, 0, n - 1)], 0), Tensor::from_slice(&part)),
            None => (logits.narrow(0, 0, n - 1), Tensor::from_slice(&part[1..])),
        };
        if targets.numel() > 0 {
            let lp = rows.log_softmax(-1, Kind::Float).gather(1, &targets.to_device(device).unsqueeze(1), false).neg().view([-1]);
            out.extend(Vec::<f32>::try_from(&lp.to_device(tch::Device::Cpu))?);
        }
        last = Some(logits.narrow(0, n - 1, 1));
        pos += part.len();
    }
    Ok(out)
}
