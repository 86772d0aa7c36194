//! One parameterised decoder for the Llama family (Llama 2/3/3.1, Mistral, Qwen2/2.5, SmolLM2):
//! RMSNorm, rotary attention with grouped KV heads, SwiGLU MLP. Differences between the variants
//! are data in `ModelConfig` (q/k/v biases, sliding windows, tied embeddings, RoPE scaling), not
//! copies of code. Attention goes through each layer's `LayerCache`, so compression methods plug
//! in without touching the model.

use crate::cache::{AttentionStep, LayerCache};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::norm::{rms_norm, RmsScale};
use crate::rope::{apply_rotary, RotaryEmbedding};
use crate::weights::Weights;
use tch::{Device, Kind, Tensor};

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's `[B, vocab]` (generation: the lm_head over all positions of a
    /// long prompt would cost more than the rest of the model).
    Last,
    /// Every position's `[B, L, vocab]`.
    All,
}

/// Projection weights are stored transposed, `[in, out]` contiguous, and applied as `x @ W`:
/// for one decoded token that matrix-vector product runs about 2x faster in libtorch (MKL) than
/// `linear` on the `[out, in]` layout (measured on 2 cores: 0.13 vs 0.28 ms for SmolLM2's fused
/// gate/up, 5.3 vs 10.1 ms for its LM head), and prefill is no slower.
struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    /// q, k and v projections fused and transposed: `[hidden, (Hq + 2 Hkv) D]`.
    wqkv: Tensor,
    bqkv: Option<Tensor>,
    /// `[Hq D, hidden]`.
    wo: Tensor,
    bo: Option<Tensor>,
    /// gate and up projections fused and transposed: `[hidden, 2 I]`.
    w_gate_up: Tensor,
    /// `[I, hidden]`.
    w_down: Tensor,
}

/// `x @ w_t (+ b)` with `w_t` in `[in, out]` layout.
///
/// A decode step (`[B, 1, in]`, f32 on the CPU) goes through `decode_matmul`, whose every output
/// sums in one fixed order whatever `B`: a sequence decoded in a batch gets the bits it gets
/// alone, and the batch reads each matrix once per step. (libtorch cannot promise that: MKL
/// picks its kernel, and so its summation order, by shape and CPU; on an AVX-512 Xeon a `bmm`
/// row differs from the single-row product by up to 1.4e-4 for SmolLM2's projections.)
/// Everything else (prefill, other dtypes and devices, CPUs without vector FMA, or
/// `KVBENCH_DECODE_MATMUL=libtorch`) goes through libtorch; a batch of several sequences there
/// is multiplied row by row, each row through the very call it makes alone.
///
/// Weights stored in 16 bits under f32 compute ([`Model::store_weights_as`]) are widened as the
/// decode kernel reads them; on the libtorch path they are widened to a temporary f32 matrix.
fn project(x: &Tensor, w_t: &Tensor, b: Option<&Tensor>) -> Tensor {
    let y = match decode_project(x, w_t) {
        Some(y) => y,
        None if w_t.kind() != x.kind() => return project(x, &w_t.to_kind(x.kind()), b),
        None => {
            let batch = x.size()[0];
            if x.dim() == 3 && batch > 1 {
                let x = x.contiguous();
                let rows: Vec<Tensor> = (0..batch).map(|r| x.narrow(0, r, 1).matmul(w_t)).collect();
                Tensor::cat(&rows, 0)
            } else {
                x.matmul(w_t)
            }
        }
    };
    match b {
        Some(b) => y + b,
        None => y,
    }
}

/// Whether decode steps use `decode_matmul` (the default where the CPU has vector FMA);
/// `KVBENCH_DECODE_MATMUL=libtorch` keeps them on libtorch, for side-by-side measurements.
/// The two differ in the last bits of every logit.
pub fn decode_matmul_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        let libtorch = std::env::var("KVBENCH_DECODE_MATMUL").is_ok_and(|v| v.eq_ignore_ascii_case("libtorch"));
        !libtorch && crate::decode_matmul::Isa::detect().is_fast()
    })
}

/// How this process multiplies a decode step's projections for a model on `device` computing in
/// `kind`: `"kernel"` (`decode_matmul`, f32 on a CPU with vector FMA) or `"libtorch"`. The last
/// bits of decoded logits depend on it (run.json records it per sitting).
pub fn decode_matmul_path(device: Device, kind: Kind) -> &'static str {
    if uses_decode_kernel(device, kind) {
        "kernel"
    } else {
        "libtorch"
    }
}

/// Whether a decode step on `device` in `kind` goes through `decode_matmul`.
fn uses_decode_kernel(device: Device, kind: Kind) -> bool {
    device == Device::Cpu && kind == Kind::Float && decode_matmul_enabled()
}

/// `x @ w_t` through `decode_matmul` for a decode step (`[B, 1, in]`) of f32 CPU tensors.
fn decode_project(x: &Tensor, w_t: &Tensor) -> Option<Tensor> {
    let stored = matches!(w_t.kind(), Kind::Float | Kind::Half | Kind::BFloat16) && w_t.device() == Device::Cpu;
    if x.dim() != 3 || x.size()[1] != 1 || w_t.dim() != 2 || !uses_decode_kernel(x.device(), x.kind()) || !stored {
        return None;
    }
    let (rows, k) = (x.size()[0], x.size()[2]);
    let n = w_t.size()[1];
    if w_t.size()[0] != k || !w_t.is_contiguous() {
        return None;
    }
    let x = x.contiguous();
    let y = Tensor::empty([rows, 1, n], (Kind::Float, Device::Cpu));
    let (rows, k, n) = (rows as usize, k as usize, n as usize);
    // SAFETY: all three are contiguous CPU tensors of these sizes (x and y f32, w_t of the
    // element type matched below), `y` freshly allocated and not aliased; the views live only
    // for this call.
    unsafe {
        let xs = std::slice::from_raw_parts(x.data_ptr() as *const f32, rows * k);
        let ys = std::slice::from_raw_parts_mut(y.data_ptr() as *mut f32, rows * n);
        let threads = tch::get_num_threads().max(1) as usize;
        use crate::decode_matmul::{matmul_weights, Bf16, F16};
        match w_t.kind() {
            Kind::Half => matmul_weights(xs, rows, std::slice::from_raw_parts(w_t.data_ptr() as *const F16, k * n), k, n, ys, threads),
            Kind::BFloat16 => matmul_weights(xs, rows, std::slice::from_raw_parts(w_t.data_ptr() as *const Bf16, k * n), k, n, ys, threads),
            _ => matmul_weights(xs, rows, std::slice::from_raw_parts(w_t.data_ptr() as *const f32, k * n), k, n, ys, threads),
        }
    }
    Some(y)
}

/// A `[out, in]` weight as the contiguous `[in, out]` matrix `project` wants.
fn transposed(t: Tensor, kind: Kind) -> Tensor {
    t.to_kind(kind).transpose(0, 1).contiguous()
}

/// A loaded decoder.
pub struct Model {
    pub config: ModelConfig,
    /// Token embeddings `[vocab, hidden]`; `None` when tied to the LM head, whose transposed
    /// matrix then serves lookups too (one copy of the table in memory).
    embed: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Tensor,
    /// The LM head, transposed: `[hidden, vocab]`.
    lm_head_t: Tensor,
    rope: RotaryEmbedding,
    pub kind: Kind,
    pub device: Device,
    /// Bytes of the weights as held in memory.
    pub weight_bytes: u64,
}

impl Model {
    /// Builds the decoder from weights with Hugging Face names.
    pub fn new(config: ModelConfig, mut w: Weights, kind: Kind, device: Device) -> Result<Self> {
        let c = &config;
        let (h, d) = (c.hidden_size as i64, c.head_dim as i64);
        let (hq, hkv) = (c.num_attention_heads as i64, c.num_key_value_heads as i64);
        let inter = c.intermediate_size as i64;
        let vec_kind = |t: Tensor| t.to_kind(kind);
        let mut weight_bytes = 0u64;
        let mut count = |t: &Tensor| weight_bytes += (t.numel() * t.kind().elt_size_in_bytes()) as u64;

        w.check_shape("model.embed_tokens.weight", &[c.vocab_size as i64, h])?;
        let embed = w.take("model.embed_tokens.weight")?.to_kind(kind);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for (n, shape) in [
                ("self_attn.q_proj.weight", [hq * d, h]),
                ("self_attn.k_proj.weight", [hkv * d, h]),
                ("self_attn.v_proj.weight", [hkv * d, h]),
                ("self_attn.o_proj.weight", [h, hq * d]),
                ("mlp.gate_proj.weight", [inter, h]),
                ("mlp.up_proj.weight", [inter, h]),
                ("mlp.down_proj.weight", [h, inter]),
            ] {
                w.check_shape(&format!("{p}.{n}"), &shape)?;
            }
            let q = w.take(&format!("{p}.self_attn.q_proj.weight"))?;
            let k = w.take(&format!("{p}.self_attn.k_proj.weight"))?;
            let v = w.take(&format!("{p}.self_attn.v_proj.weight"))?;
            let wqkv = transposed(Tensor::cat(&[q, k, v], 0), kind);
            let bqkv = if c.qkv_bias {
                let qb = w.take(&format!("{p}.self_attn.q_proj.bias"))?;
                let kb = w.take(&format!("{p}.self_attn.k_proj.bias"))?;
                let vb = w.take(&format!("{p}.self_attn.v_proj.bias"))?;
                Some(vec_kind(Tensor::cat(&[qb, kb, vb], 0)))
            } else {
                None
            };
            let bo = if c.o_bias { Some(vec_kind(w.take(&format!("{p}.self_attn.o_proj.bias"))?)) } else { None };
            let gate = w.take(&format!("{p}.mlp.gate_proj.weight"))?;
            let up = w.take(&format!("{p}.mlp.up_proj.weight"))?;
            let layer = Layer {
                input_norm: vec_kind(w.take(&format!("{p}.input_layernorm.weight"))?),
                post_norm: vec_kind(w.take(&format!("{p}.post_attention_layernorm.weight"))?),
                wqkv,
                bqkv,
                wo: transposed(w.take(&format!("{p}.self_attn.o_proj.weight"))?, kind),
                bo,
                w_gate_up: transposed(Tensor::cat(&[gate, up], 0), kind),
                w_down: transposed(w.take(&format!("{p}.mlp.down_proj.weight"))?, kind),
            };
            for t in [&layer.wqkv, &layer.wo, &layer.w_gate_up, &layer.w_down, &layer.input_norm, &layer.post_norm] {
                count(t);
            }
            layers.push(layer);
        }
        let norm = vec_kind(w.take("model.norm.weight")?);
        let (embed, lm_head_t) = match w.take_opt("lm_head.weight") {
            Some(t) if !config.tie_word_embeddings => {
                let t = transposed(t, kind);
                count(&embed);
                count(&t);
                (Some(embed), t)
            }
            _ if config.tie_word_embeddings => {
                let t = embed.transpose(0, 1).contiguous();
                count(&t);
                (None, t)
            }
            _ => return Err(Error::MissingTensor { file: w.source.clone(), tensor: "lm_head.weight".into() }),
        };
        let freq_factors = w.take_opt("rope_freqs");
        let rope = RotaryEmbedding::new(&config, kind, device, freq_factors.as_ref(), config.max_position_embeddings.min(8192));
        Ok(Model { config, embed, layers, norm, lm_head_t, rope, kind, device, weight_bytes })
    }

    /// Stores the projection matrices (q/k/v, o, gate/up, down and the LM head, which is also the
    /// tied embedding table) in `kind` (`Half` or `BFloat16`) while computing in f32: a decode
    /// step streams half the bytes, the decode kernel widening each weight exactly as it reads
    /// it; prefill widens each matrix to a temporary f32 copy. Norms, biases and an untied
    /// embedding table stay f32. The logits change by the weights' rounding, nothing else.
    ///
    /// # Errors
    /// When the model does not compute in f32 on the CPU, or `kind` is not a 16-bit float.
    pub fn store_weights_as(&mut self, kind: Kind) -> Result<()> {
        if self.kind != Kind::Float || self.device != Device::Cpu {
            return Err(Error::InvalidArgument {
                what: "weight dtype",
                value: format!("{kind:?}"),
                expected: format!("f32 compute on the CPU (this model computes in {:?} on {:?})", self.kind, self.device),
            });
        }
        if !matches!(kind, Kind::Half | Kind::BFloat16) {
            return Err(Error::InvalidArgument { what: "weight dtype", value: format!("{kind:?}"), expected: "f16 or bf16".into() });
        }
        let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        let mut store = |t: &mut Tensor| {
            let before = bytes(t);
            *t = t.to_kind(kind).contiguous();
            self.weight_bytes = self.weight_bytes - before + bytes(t);
        };
        for layer in &mut self.layers {
            for t in [&mut layer.wqkv, &mut layer.wo, &mut layer.w_gate_up, &mut layer.w_down] {
                store(t);
            }
        }
        store(&mut self.lm_head_t);
        Ok(())
    }

    /// Runs `input_ids` (`[B, L]`, int64) whose first token sits at absolute position `start_pos`,
    /// through every layer, each attending through its cache in `caches`.
    pub fn forward(&mut self, input_ids: &Tensor, start_pos: usize, caches: &mut [Box<dyn LayerCache>], logits: Logits) -> Result<Tensor> {
        if caches.len() != self.layers.len() {
            return Err(Error::Other(format!("{} layer caches for {} layers", caches.len(), self.layers.len())));
        }
        let b = input_ids.size2()?.0 as usize;
        self.forward_with(input_ids, &vec![start_pos; b], logits, &mut |step| caches[step.layer].attend(step).map_err(Error::from))
    }

    /// Runs a batch of sequences (`input_ids` `[B, L]`), row `i` starting at absolute position
    /// `starts[i]`; `attend` receives each layer's step for row `i` alone (`[1, H, L, D]`, its
    /// own position), so every sequence attends through its own cache, of any method and length.
    /// Norms, rotary embeddings, the MLP's activations and (on CPU in f32) the projections run
    /// once for the whole batch, the projections through the batch-invariant decode kernel (see
    /// [`project`]): each row's logits are bit-identical to the row run alone.
    pub fn forward_batch(
        &mut self,
        input_ids: &Tensor,
        starts: &[usize],
        logits: Logits,
        attend: &mut dyn FnMut(usize, &AttentionStep<'_>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let b = input_ids.size2()?.0;
        if starts.len() != b as usize {
            return Err(Error::Other(format!("{} start positions for a batch of {b}", starts.len())));
        }
        if b == 1 {
            return self.forward_with(input_ids, starts, logits, &mut |step| attend(0, step));
        }
        self.forward_with(input_ids, starts, logits, &mut |step| {
            let mut outs = Vec::with_capacity(b as usize);
            for (row, &start_pos) in starts.iter().enumerate() {
                let r = row as i64;
                let (q, k, v) = (step.q.narrow(0, r, 1), step.k.narrow(0, r, 1), step.v.narrow(0, r, 1));
                outs.push(attend(row, &AttentionStep { q: &q, k: &k, v: &v, start_pos, ..*step })?);
            }
            Ok(Tensor::cat(&outs, 0))
        })
    }

    /// The decoder with attention delegated to `attend` (one call per layer, the whole batch).
    /// With different `starts` per row, the step's `start_pos` is row 0's and the rotary tables
    /// are per row.
    pub fn forward_with(
        &mut self,
        input_ids: &Tensor,
        starts: &[usize],
        logits: Logits,
        attend: &mut dyn FnMut(&AttentionStep<'_>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, l) = input_ids.size2()?;
        let (hq, hkv, d) = (c.num_attention_heads as i64, c.num_key_value_heads as i64, c.head_dim as i64);
        let eps = c.rms_norm_eps;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let start_pos = starts.first().copied().unwrap_or(0);
        let (cos, sin) = if starts.iter().all(|&s| s == start_pos) {
            self.rope.table(start_pos, l as usize)
        } else {
            let tables: Vec<(Tensor, Tensor)> = starts.iter().map(|&s| self.rope.table(s, l as usize)).collect();
            let (cs, ss): (Vec<Tensor>, Vec<Tensor>) = tables.into_iter().unzip();
            (Tensor::cat(&cs, 0), Tensor::cat(&ss, 0))
        };
        let mut x = match &self.embed {
            Some(e) => Tensor::embedding(e, input_ids, -1, false, false),
            None if b == 1 => self.lm_head_t.index_select(1, &input_ids.reshape([-1])).transpose(0, 1).reshape([b, l, -1]).to_kind(self.kind),
            // A batch: each row laid out in memory as it is alone (a row's RMSNorm sums in the
            // order of its memory layout, so the same row in another layout sums differently).
            None => {
                let rows: Vec<Tensor> = (0..b).map(|r| self.lm_head_t.index_select(1, &input_ids.get(r))).collect();
                Tensor::stack(&rows, 0).transpose(1, 2).to_kind(self.kind)
            }
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let hn = rms_norm(&x, &layer.input_norm, eps, RmsScale::AfterCast);
            let qkv = project(&hn, &layer.wqkv, layer.bqkv.as_ref()).view([b, l, hq + 2 * hkv, d]).transpose(1, 2);
            let q = apply_rotary(&qkv.narrow(1, 0, hq), &cos, &sin);
            let k = apply_rotary(&qkv.narrow(1, hq, hkv), &cos, &sin);
            let v = qkv.narrow(1, hq + hkv, hkv);
            let step = AttentionStep { layer: i, q: &q, k: &k, v: &v, start_pos, sliding_window: c.sliding_window.get(i).copied().flatten(), scale };
            let attn = attend(&step)?;
            let attn = attn.transpose(1, 2).reshape([b, l, hq * d]);
            x += project(&attn, &layer.wo, layer.bo.as_ref());
            let hn = rms_norm(&x, &layer.post_norm, eps, RmsScale::AfterCast);
            let gate_up = project(&hn, &layer.w_gate_up, None);
            let inter = c.intermediate_size as i64;
            let act = gate_up.narrow(-1, 0, inter).silu() * gate_up.narrow(-1, inter, inter);
            x += project(&act, &layer.w_down, None);
        }
        let x = match logits {
            Logits::Last => x.narrow(1, l - 1, 1),
            Logits::All => x,
        };
        let x = rms_norm(&x, &self.norm, eps, RmsScale::AfterCast);
        let out = project(&x, &self.lm_head_t, None).to_kind(Kind::Float);
        Ok(match logits {
            Logits::Last => out.squeeze_dim(1),
            Logits::All => out,
        })
    }

    /// Number of decoder layers.
    /// The model's RoPE frequencies, as caches receive them (`CacheSpec::rope`).
    pub fn rope(&self) -> kvcache::rope::Rope {
        self.rope.handle()
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
