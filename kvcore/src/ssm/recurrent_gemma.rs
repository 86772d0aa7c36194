//! RecurrentGemma (Griffin) language model on libtorch, loaded from a Hugging Face
//! `RecurrentGemmaForCausalLM` directory (config.json + safetensors): residual blocks that are
//! either an RG-LRU recurrence or local (sliding-window) multi-query attention, so its state per
//! sequence is bounded (conv window + RG-LRU state, and a key/value ring of at most
//! `attention_window_size` tokens) and it can sit next to KV-cache methods as a linear-time model.
//!
//! Per layer, with `x` the residual stream `[B, T, H]` (`norm` is Gemma's RMSNorm, scale `1 + w`):
//!
//! ```text
//! h  = temporal_block(norm(x))              // recurrent or attention, per `block_types`
//! r  = x + h
//! x  = r + down(gelu_tanh(gate(norm(r))) * up(norm(r)))
//!
//! recurrent:  y = gelu_tanh(linear_y(h));  u = causal_depthwise_conv(linear_x(h)) + b
//!             i_t = sigmoid(u_t W_i + b_i),  r_t = sigmoid(u_t W_r + b_r)   (block-diagonal, per head)
//!             a_t = exp(-8 r_t softplus(Λ));  s_t = a_t s_{t-1} + sqrt(1 - a_t²) (i_t u_t)
//!             (at position 0: s_0 = i_0 u_0)
//!             out = linear_out(s * y)
//! attention:  q, k, v = proj(h), rotary on the first `partial_rotary_factor` of each head;
//!             each token attends to itself and the `attention_window_size - 1` tokens before it
//!             (transformers' cached semantics), MQA/GQA; out = o_proj(attn)
//! ```
//!
//! The input is `embed(ids) * sqrt(H)` (the scale rounded to bf16, as transformers stores it) and
//! the output `cap * tanh(lm_head(norm(x)) / cap)` with `cap = logits_soft_cap`; the head is the
//! embedding when tied. Attention over a long chunk runs in blocks of queries, each against only
//! the keys its window reaches, so prefill time is linear in length. Parity with transformers is
//! checked in `kvcore/tests/recurrent_gemma_parity.rs`.

use super::tensor_map::TensorMap;
use super::{RecurrentLm, RecurrentState};
use crate::error::{Error, Result};
use crate::norm::{rms_norm, RmsScale};
use std::collections::HashMap;
use std::path::Path;

mod config;
pub use config::{BlockType, RecurrentGemmaConfig};
use tch::{Device, Kind, Tensor};

/// `linear` with an optional bias, the shape most projections here have.
struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, self.b.as_ref())
    }
}

/// The checkpoint's tensors being taken, with the bytes of what the model keeps.
struct Weights {
    map: TensorMap,
    bytes: usize,
}

impl Weights {
    fn keep(&mut self, t: Tensor) -> Tensor {
        self.bytes += t.numel() * t.kind().elt_size_in_bytes();
        t
    }

    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.map.take(name, shape)?;
        Ok(self.keep(t))
    }

    /// A tensor kept in f32 whatever the weights' dtype, after `prepare`.
    fn take_f32(&mut self, name: &str, shape: &[i64], prepare: impl FnOnce(Tensor) -> Tensor) -> Result<Tensor> {
        let t = prepare(self.map.take(name, shape)?.to_kind(Kind::Float));
        Ok(self.keep(t))
    }

    /// `{prefix}.weight` `[out, inp]` and, with `bias`, `{prefix}.bias` `[out]`.
    fn linear(&mut self, prefix: &str, out: i64, inp: i64, bias: bool) -> Result<Linear> {
        let w = self.take(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias { Some(self.take(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(Linear { w, b })
    }
}

struct RecurrentBlock {
    linear_y: Linear,
    linear_x: Linear,
    linear_out: Linear,
    /// `[lru, 1, width]`, for a depthwise `conv1d` (groups = lru).
    conv_w: Tensor,
    conv_b: Tensor,
    /// `-8 * softplus(recurrent_param)`, f32 `[lru]`: `log a_t = r_t * this`.
    log_a_scale: Tensor,
    /// Block-diagonal gates, f32: weights `[heads, bw, bw]` (applied as `x @ W`), biases `[heads, bw]`.
    input_gate_w: Tensor,
    input_gate_b: Tensor,
    recurrent_gate_w: Tensor,
    recurrent_gate_b: Tensor,
}

struct AttentionBlock {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

enum Temporal {
    Recurrent(RecurrentBlock),
    Attention(AttentionBlock),
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Layer {
    /// `1 + temporal_pre_norm.weight`, f32.
    temporal_norm: Tensor,
    temporal: Temporal,
    /// `1 + channel_pre_norm.weight`, f32.
    channel_norm: Tensor,
    mlp: Mlp,
}

/// A RecurrentGemma causal language model (batch 1).
pub struct RecurrentGemmaModel {
    pub config: RecurrentGemmaConfig,
    embeddings: Tensor,
    /// `sqrt(hidden_size)` rounded to bf16, as transformers' `normalizer` buffer holds it.
    embed_scale: f64,
    layers: Vec<Layer>,
    /// `1 + final_norm.weight`, f32.
    final_norm: Tensor,
    /// `[vocab, hidden]`; shares storage with `embeddings` when tied.
    lm_head: Tensor,
    /// Rotary inverse frequencies, f32 `[rotary_dim / 2]`.
    inv_freq: Tensor,
    pub kind: Kind,
    pub device: Device,
    /// Bytes of the weights as held in memory (a tied head counted once).
    pub weight_bytes: usize,
    /// Queries per block when a chunk attends (bounds the `[queries, window + queries]` scores).
    pub attention_block: usize,
}

/// Where one attention layer's key/value ring stands: the chunk starts at absolute position
/// `start`; the ring holds the last `min(start, window)` tokens, token `p` in slot `p % window`.
struct Ring {
    start: i64,
    window: i64,
}

impl Ring {
    fn len(&self) -> i64 {
        self.start.min(self.window)
    }

    /// The ring's contents oldest first.
    fn chronological(&self, ring: &Tensor) -> Tensor {
        if self.start <= self.window {
            ring.shallow_clone()
        } else {
            ring.roll([-(self.start % self.window)], [2])
        }
    }

    /// The new ring after a chunk of `t` tokens, from everything in order (`[.., len + t, ..]`).
    fn after(&self, all: &Tensor, t: i64) -> Tensor {
        let end = self.start + t;
        let keep = end.min(self.window);
        let last = all.narrow(2, self.len() + t - keep, keep);
        if end > self.window {
            last.roll([end % self.window], [2])
        } else {
            last.copy()
        }
    }
}

impl RecurrentBlock {
    /// `x` `[1, T, H]` (normed); advances `conv` (`[1, lru, width-1]`) and `s` (`[1, lru]` f32).
    fn forward(&self, x: &Tensor, conv: &mut Tensor, s: &mut Tensor, start: i64, cfg: &RecurrentGemmaConfig) -> Tensor {
        let (lru, width) = (cfg.lru_width as i64, cfg.conv1d_width as i64);
        let t = x.size()[1];
        let y = self.linear_y.forward(x).gelu("tanh");
        let u = self.linear_x.forward(x).transpose(1, 2); // [1, lru, T]

        // Causal depthwise convolution continuing from the last width-1 inputs.
        let ucat = Tensor::cat(&[&*conv, &u], 2); // [1, lru, width-1+T]
        *conv = ucat.narrow(2, t, width - 1).copy();
        let u = ucat.conv1d(&self.conv_w, Some(&self.conv_b), [1], [0], [1], lru).transpose(1, 2); // [1, T, lru]

        let h = self.rg_lru(&u, s, start, cfg);
        self.linear_out.forward(&(h.to_kind(y.kind()) * y))
    }

    /// The RG-LRU over `u` `[1, T, lru]` from state `s`, in f32; returns `[1, T, lru]` f32.
    fn rg_lru(&self, u: &Tensor, s: &mut Tensor, start: i64, cfg: &RecurrentGemmaConfig) -> Tensor {
        let (heads, lru) = (cfg.num_attention_heads as i64, cfg.lru_width as i64);
        let t = u.size()[1];
        let uf = u.to_kind(Kind::Float);
        let per_head = uf.view([t, heads, lru / heads]).transpose(0, 1); // [heads, T, bw]
        let gate = |w: &Tensor, b: &Tensor| b.unsqueeze(1).baddbmm(&per_head, w, 1.0, 1.0).transpose(0, 1).reshape([1, t, lru]).sigmoid();
        let input_gate = gate(&self.input_gate_w, &self.input_gate_b);
        let recurrent_gate = gate(&self.recurrent_gate_w, &self.recurrent_gate_b);
        let log_a = recurrent_gate * &self.log_a_scale;
        let a = log_a.exp();
        let multiplier = ((&log_a * 2.0).exp().neg() + 1.0).sqrt();
        if start == 0 {
            // Reset at the first token: no decay from the (zero) state, input not normalised.
            let _ = a.narrow(1, 0, 1).fill_(0.0);
            let _ = multiplier.narrow(1, 0, 1).fill_(1.0);
        }
        let b = (uf * input_gate * multiplier).transpose(0, 1).contiguous(); // [T, 1, lru]
        let a = a.transpose(0, 1);
        let _ = b.get(0).addcmul_(&a.get(0), &*s);
        for i in 1..t {
            let prev = b.get(i - 1);
            let _ = b.get(i).addcmul_(&a.get(i), &prev);
        }
        *s = b.get(t - 1).copy();
        b.transpose(0, 1)
    }
}

/// Rotary embedding on the first `rot` dims of each head of `x` `[1, heads, T, hd]`.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor, rot: i64) -> Tensor {
    let hd = x.size()[3];
    let xr = x.narrow(3, 0, rot);
    let (x1, x2) = (xr.narrow(3, 0, rot / 2), xr.narrow(3, rot / 2, rot / 2));
    let rotated = Tensor::cat(&[-x2, x1], 3);
    let xr = xr * cos + rotated * sin;
    if rot == hd {
        xr
    } else {
        Tensor::cat(&[xr, x.narrow(3, rot, hd - rot)], 3)
    }
}

impl AttentionBlock {
    /// `x` `[1, T, H]` (normed) at positions `start..start+T`; advances the rings `keys`,
    /// `values` (`[1, kv, min(tokens, window), hd]`, rotary applied).
    #[allow(clippy::too_many_arguments)]
    fn forward(&self, x: &Tensor, keys: &mut Tensor, values: &mut Tensor, start: i64, inv_freq: &Tensor, block: i64, cfg: &RecurrentGemmaConfig) -> Tensor {
        let (heads, kv, hd, rot) = (cfg.num_attention_heads as i64, cfg.num_key_value_heads as i64, cfg.head_dim as i64, cfg.rotary_dim as i64);
        let t = x.size()[1];
        let split = |y: Tensor, n: i64| y.view([1, t, n, hd]).transpose(1, 2); // [1, n, T, hd]
        let q = split(self.q.forward(x), heads);
        let k = split(self.k.forward(x), kv);
        let v = split(self.v.forward(x), kv);

        // Rotary at absolute positions, computed in f32 as transformers does.
        let pos = Tensor::arange_start(start, start + t, (Kind::Float, x.device()));
        let freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0); // [T, rot/2]
        let emb = Tensor::cat(&[&freqs, &freqs], 1);
        let (cos, sin) = (emb.cos().to_kind(x.kind()), emb.sin().to_kind(x.kind()));
        let q = apply_rotary(&q, &cos, &sin, rot);
        let k = apply_rotary(&k, &cos, &sin, rot);

        let ring = Ring { start, window: cfg.attention_window_size as i64 };
        let scale = (hd as f64).powf(-0.5);
        let out = if t == 1 {
            // Decoding: write the token into its slot; everything in the ring is in its window.
            if ring.len() < ring.window {
                *keys = Tensor::cat(&[&*keys, &k], 2);
                *values = Tensor::cat(&[&*values, &v], 2);
            } else {
                let slot = start % ring.window;
                keys.narrow(2, slot, 1).copy_(&k);
                values.narrow(2, slot, 1).copy_(&v);
            }
            attend(&q, keys, values, None, scale)
        } else {
            let k_all = Tensor::cat(&[ring.chronological(keys), k], 2); // positions start-len .. start+T-1
            let v_all = Tensor::cat(&[ring.chronological(values), v], 2);
            let n = ring.len();
            let mut outs = Vec::with_capacity(((t + block - 1) / block) as usize);
            let mut i0 = 0;
            while i0 < t {
                let tb = block.min(t - i0);
                let lo = (n + i0 - ring.window + 1).max(0); // first key index the block's first query sees
                let hi = n + i0 + tb;
                let q_pos = Tensor::arange_start(start + i0, start + i0 + tb, (Kind::Int64, x.device())).unsqueeze(1);
                let k_pos = Tensor::arange_start(start - n + lo, start - n + hi, (Kind::Int64, x.device())).unsqueeze(0);
                let hidden = k_pos.gt_tensor(&q_pos).logical_or(&k_pos.le_tensor(&(&q_pos - ring.window))); // [tb, S]
                outs.push(attend(&q.narrow(2, i0, tb), &k_all.narrow(2, lo, hi - lo), &v_all.narrow(2, lo, hi - lo), Some(&hidden), scale));
                i0 += tb;
            }
            *keys = ring.after(&k_all, t);
            *values = ring.after(&v_all, t);
            Tensor::cat(&outs, 2)
        }; // [1, heads, T, hd]
        self.o.forward(&out.transpose(1, 2).reshape([1, t, heads * hd]))
    }
}

/// Softmax attention of `q` `[1, heads, T, hd]` over `k`, `v` `[1, kv, S, hd]` (a query head
/// `h` reads KV head `h / (heads / kv)`); `hidden` `[T, S]` marks keys a query must not see.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, hidden: Option<&Tensor>, scale: f64) -> Tensor {
    let (heads, t, hd) = (q.size()[1], q.size()[2], q.size()[3]);
    let (kv, s) = (k.size()[1], k.size()[2]);
    let rep = heads / kv;
    // Scaling the queries, not the scores: `S / (window + block)` times fewer multiplies.
    let qg = (q * scale).reshape([1, kv, rep * t, hd]);
    let mut scores = qg.matmul(&k.transpose(2, 3)).to_kind(Kind::Float).view([1, kv, rep, t, s]);
    if let Some(m) = hidden {
        let _ = scores.masked_fill_(m, f64::NEG_INFINITY);
    }
    let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind()).view([1, kv, rep * t, s]);
    probs.matmul(v).view([1, heads, t, hd])
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down.forward(&(self.gate.forward(x).gelu("tanh") * self.up.forward(x)))
    }
}

impl RecurrentGemmaModel {
    /// Loads a Hugging Face `RecurrentGemmaForCausalLM` directory (`config.json` and
    /// `model.safetensors`, or shards listed in `model.safetensors.index.json`), weights
    /// converted to `kind` on `device` (the RG-LRU's gates and decay stay f32).
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let config = RecurrentGemmaConfig::from_file(&dir.join("config.json"))?;
        let w = TensorMap::load_dir(dir, kind, device)?;
        Self::from_tensors(config, w, kind, device)
    }

    /// A model with random weights in transformers' initialisation ranges, for benchmarks and
    /// tests that need no files. Seeds libtorch's global generator with `seed`.
    pub fn random(config: RecurrentGemmaConfig, seed: i64, kind: Kind, device: Device) -> Result<Self> {
        let map = Self::random_tensors(&config, seed, device).into_iter().map(|(name, t)| (name, t.to_kind(kind))).collect();
        Self::from_tensors(config, TensorMap::from_map(map, "(random weights)"), kind, device)
    }

    /// The named f32 tensors of a random model in the Hugging Face layout (what
    /// [`random`](Self::random) builds from, and what `kvbench model init --arch recurrent_gemma` saves).
    pub fn random_tensors(config: &RecurrentGemmaConfig, seed: i64, device: Device) -> HashMap<String, Tensor> {
        let _g = tch::no_grad_guard();
        let _rng = super::seeded_rng(seed);
        let c = config;
        let (v, h, m, lru, w) = (c.vocab_size as i64, c.hidden_size as i64, (c.intermediate_size / 2) as i64, c.lru_width as i64, c.conv1d_width as i64);
        let (heads, kv, hd) = (c.num_attention_heads as i64, c.num_key_value_heads as i64, c.head_dim as i64);
        let bw = lru / heads;
        let opts = (Kind::Float, device);
        let normal = |shape: &[i64], std: f64| Tensor::randn(shape, opts) * std;
        let zeros = |shape: &[i64]| Tensor::zeros(shape, opts);
        // transformers: variance 0.01 / conv1d_width by default, 1 / hidden into the blocks,
        // (2 / layers) / width out of them.
        let std = (0.01 / w as f64).sqrt();
        let std_in = (1.0 / h as f64).sqrt();
        let final_scale = 2.0 / c.num_hidden_layers as f64;
        let mut map = HashMap::new();
        map.insert("model.embed_tokens.weight".to_string(), normal(&[v, h], std));
        map.insert("model.final_norm.weight".to_string(), zeros(&[h]));
        if !c.tie_word_embeddings {
            map.insert("lm_head.weight".to_string(), normal(&[v, h], std));
        }
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut put = |name: &str, t: Tensor| map.insert(format!("{p}.{name}"), t);
            put("temporal_pre_norm.weight", zeros(&[h]));
            put("channel_pre_norm.weight", zeros(&[h]));
            match c.block_type(l) {
                BlockType::Recurrent => {
                    for (name, shape, s) in
                        [("linear_x", [lru, h], std_in), ("linear_y", [lru, h], std_in), ("linear_out", [h, lru], (final_scale / lru as f64).sqrt())]
                    {
                        put(&format!("temporal_block.{name}.weight"), normal(&shape, s));
                        put(&format!("temporal_block.{name}.bias"), zeros(&[shape[0]]));
                    }
                    put("temporal_block.conv_1d.weight", normal(&[lru, 1, w], std));
                    put("temporal_block.conv_1d.bias", zeros(&[lru]));
                    for g in ["input_gate", "recurrent_gate"] {
                        put(&format!("temporal_block.rg_lru.{g}_weight"), normal(&[heads, bw, bw], (0.01 / bw as f64).sqrt()));
                        put(&format!("temporal_block.rg_lru.{g}_bias"), zeros(&[heads, bw]));
                    }
                    // As transformers: Λ = log(u^(-1/2) - 1) for u uniform in [0.9², 0.999²].
                    let u = Tensor::rand([lru], opts) * (0.999f64.powi(2) - 0.9f64.powi(2)) + 0.9f64.powi(2) + 1e-8;
                    put("temporal_block.rg_lru.recurrent_param", (u.pow_tensor_scalar(-0.5) - 1.0).log());
                }
                BlockType::Attention => {
                    put("temporal_block.q_proj.weight", normal(&[heads * hd, h], std_in));
                    put("temporal_block.k_proj.weight", normal(&[kv * hd, h], std_in));
                    put("temporal_block.v_proj.weight", normal(&[kv * hd, h], std_in));
                    if c.attention_bias {
                        put("temporal_block.q_proj.bias", zeros(&[heads * hd]));
                        put("temporal_block.k_proj.bias", zeros(&[kv * hd]));
                        put("temporal_block.v_proj.bias", zeros(&[kv * hd]));
                    }
                    put("temporal_block.o_proj.weight", normal(&[h, heads * hd], (final_scale / h as f64).sqrt()));
                    put("temporal_block.o_proj.bias", zeros(&[h]));
                }
            }
            for (name, shape) in [("gate_proj", [m, h]), ("up_proj", [m, h]), ("down_proj", [h, m])] {
                put(&format!("mlp_block.{name}.weight"), normal(&shape, std));
                put(&format!("mlp_block.{name}.bias"), zeros(&[shape[0]]));
            }
        }
        map
    }

    fn from_tensors(config: RecurrentGemmaConfig, w: TensorMap, kind: Kind, device: Device) -> Result<Self> {
        let _g = tch::no_grad_guard();
        let c = &config;
        let (v, h, m, lru, width) = (c.vocab_size as i64, c.hidden_size as i64, (c.intermediate_size / 2) as i64, c.lru_width as i64, c.conv1d_width as i64);
        let (heads, kv, hd) = (c.num_attention_heads as i64, c.num_key_value_heads as i64, c.head_dim as i64);
        let bw = lru / heads;
        let mut w = Weights { map: w, bytes: 0 };

        let embeddings = w.take("model.embed_tokens.weight", &[v, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}.");
            let temporal = match c.block_type(l) {
                BlockType::Recurrent => {
                    let t = format!("{p}temporal_block.");
                    Temporal::Recurrent(RecurrentBlock {
                        linear_y: w.linear(&format!("{t}linear_y"), lru, h, true)?,
                        linear_x: w.linear(&format!("{t}linear_x"), lru, h, true)?,
                        linear_out: w.linear(&format!("{t}linear_out"), h, lru, true)?,
                        conv_w: w.take(&format!("{t}conv_1d.weight"), &[lru, 1, width])?,
                        conv_b: w.take(&format!("{t}conv_1d.bias"), &[lru])?,
                        log_a_scale: w.take_f32(&format!("{t}rg_lru.recurrent_param"), &[lru], |p| p.softplus() * -8.0)?,
                        input_gate_w: w.take_f32(&format!("{t}rg_lru.input_gate_weight"), &[heads, bw, bw], |t| t)?,
                        input_gate_b: w.take_f32(&format!("{t}rg_lru.input_gate_bias"), &[heads, bw], |t| t)?,
                        recurrent_gate_w: w.take_f32(&format!("{t}rg_lru.recurrent_gate_weight"), &[heads, bw, bw], |t| t)?,
                        recurrent_gate_b: w.take_f32(&format!("{t}rg_lru.recurrent_gate_bias"), &[heads, bw], |t| t)?,
                    })
                }
                BlockType::Attention => {
                    let t = format!("{p}temporal_block.");
                    Temporal::Attention(AttentionBlock {
                        q: w.linear(&format!("{t}q_proj"), heads * hd, h, c.attention_bias)?,
                        k: w.linear(&format!("{t}k_proj"), kv * hd, h, c.attention_bias)?,
                        v: w.linear(&format!("{t}v_proj"), kv * hd, h, c.attention_bias)?,
                        o: w.linear(&format!("{t}o_proj"), h, heads * hd, true)?,
                    })
                }
            };
            layers.push(Layer {
                temporal_norm: w.take_f32(&format!("{p}temporal_pre_norm.weight"), &[h], |t| t + 1.0)?,
                temporal,
                channel_norm: w.take_f32(&format!("{p}channel_pre_norm.weight"), &[h], |t| t + 1.0)?,
                mlp: Mlp {
                    gate: w.linear(&format!("{p}mlp_block.gate_proj"), m, h, true)?,
                    up: w.linear(&format!("{p}mlp_block.up_proj"), m, h, true)?,
                    down: w.linear(&format!("{p}mlp_block.down_proj"), h, m, true)?,
                },
            });
        }
        let final_norm = w.take_f32("model.final_norm.weight", &[h], |t| t + 1.0)?;
        let lm_head = if c.tie_word_embeddings {
            // transformers ties the head to the embeddings, ignoring any stored `lm_head.weight`.
            w.map.remove("lm_head.weight");
            embeddings.shallow_clone()
        } else {
            w.take("lm_head.weight", &[v, h])?
        };
        w.map.warn_unused("RecurrentGemma");

        let rot = c.rotary_dim as i64;
        let exponents = Tensor::arange_start_step(0, rot, 2, (Kind::Int64, device)).to_kind(Kind::Float) / rot as f64;
        let inv_freq = Tensor::pow_scalar(c.rope_theta, &exponents).reciprocal();
        let embed_scale = f64::from(half::bf16::from_f32((c.hidden_size as f64).sqrt() as f32).to_f32());
        Ok(RecurrentGemmaModel {
            config,
            embeddings,
            embed_scale,
            layers,
            final_norm,
            lm_head,
            inv_freq,
            kind,
            device,
            weight_bytes: w.bytes,
            attention_block: 512,
        })
    }

    /// Fails unless `state` has this model's layout, with ring lengths matching its token count.
    fn check_state(&self, state: &RecurrentState) -> Result<()> {
        let c = &self.config;
        let bad = |problem: String| {
            Err(Error::InvalidArgument { what: "RecurrentGemma state", value: problem, expected: "a state from this model's new_state".into() })
        };
        if state.tensors.len() != 2 * c.num_hidden_layers {
            return bad(format!("{} tensors (expected {})", state.tensors.len(), 2 * c.num_hidden_layers));
        }
        let ring = state.tokens.min(c.attention_window_size) as i64;
        for l in 0..c.num_hidden_layers {
            let (first, second) = (&state.tensors[2 * l], &state.tensors[2 * l + 1]);
            let (a, b) = match c.block_type(l) {
                BlockType::Recurrent => (vec![1, c.lru_width as i64, c.conv1d_width as i64 - 1], vec![1, c.lru_width as i64]),
                BlockType::Attention => {
                    let s = vec![1, c.num_key_value_heads as i64, ring, c.head_dim as i64];
                    (s.clone(), s)
                }
            };
            if first.size() != a || second.size() != b {
                return bad(format!("layer {l}: {:?} and {:?} after {} tokens (expected {a:?} and {b:?})", first.size(), second.size(), state.tokens));
            }
        }
        Ok(())
    }

    fn logits(&self, h: &Tensor) -> Tensor {
        let cap = self.config.logits_soft_cap;
        let logits = h.linear::<Tensor>(&self.lm_head, None).to_kind(Kind::Float);
        (logits / cap).tanh() * cap
    }
}

impl RecurrentLm for RecurrentGemmaModel {
    fn family(&self) -> &'static str {
        "recurrent_gemma"
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn weight_bytes(&self) -> u64 {
        self.weight_bytes as u64
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        self.config.eos_token_ids.clone()
    }

    /// Two tensors per layer: a recurrent layer's conv window `[1, lru, width-1]` (weights'
    /// dtype) and RG-LRU state `[1, lru]` (f32); an attention layer's key and value rings
    /// `[1, kv_heads, n, head_dim]`, `n = min(tokens, window)` (empty at first).
    fn new_state(&self) -> Result<RecurrentState> {
        let c = &self.config;
        let (lru, opts) = (c.lru_width as i64, (self.kind, self.device));
        let mut tensors = Vec::with_capacity(2 * c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            match c.block_type(l) {
                BlockType::Recurrent => {
                    tensors.push(Tensor::zeros([1, lru, c.conv1d_width as i64 - 1], opts));
                    tensors.push(Tensor::zeros([1, lru], (Kind::Float, self.device)));
                }
                BlockType::Attention => {
                    for _ in 0..2 {
                        tensors.push(Tensor::zeros([1, c.num_key_value_heads as i64, 0, c.head_dim as i64], opts));
                    }
                }
            }
        }
        Ok(RecurrentState { tensors, tokens: 0 })
    }

    fn forward(&self, ids: &[u32], state: &mut RecurrentState, all_positions: bool) -> Result<Tensor> {
        let input = super::ids_tensor(ids, self.config.vocab_size, self.device)?;
        self.check_state(state)?;
        let _g = tch::no_grad_guard();
        let c = &self.config;
        let start = state.tokens as i64;
        let block = self.attention_block.max(1) as i64;
        let mut x = Tensor::embedding(&self.embeddings, &input, -1, false, false) * self.embed_scale;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.temporal_norm, c.rms_norm_eps, RmsScale::InF32);
            let (first, rest) = state.tensors[2 * l..].split_at_mut(1);
            let (a, b) = (&mut first[0], &mut rest[0]);
            let h = match &layer.temporal {
                Temporal::Recurrent(r) => r.forward(&h, a, b, start, c),
                Temporal::Attention(att) => att.forward(&h, a, b, start, &self.inv_freq, block, c),
            };
            let residual = h + &x;
            x = layer.mlp.forward(&rms_norm(&residual, &layer.channel_norm, c.rms_norm_eps, RmsScale::InF32)) + residual;
        }
        state.tokens += ids.len();
        let x = if all_positions { x } else { x.narrow(1, x.size()[1] - 1, 1) };
        Ok(self.logits(&rms_norm(&x, &self.final_norm, c.rms_norm_eps, RmsScale::InF32)).squeeze_dim(0))
    }

    fn state_bytes(&self) -> u64 {
        self.config.state_bytes(self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<RecurrentGemmaConfig> {
        RecurrentGemmaConfig::from_json_str(json, Path::new("/m/config.json"))
    }

    const BASE: &str = r#""vocab_size":100,"hidden_size":32,"intermediate_size":96,"num_hidden_layers":4,"num_attention_heads":4"#;

    #[test]
    fn config_defaults_and_legacy_rope_keys() {
        let c = cfg(&format!("{{\"model_type\":\"recurrent_gemma\",{BASE}}}")).unwrap();
        assert_eq!((c.head_dim, c.lru_width, c.num_key_value_heads, c.rotary_dim), (8, 32, 4, 4));
        assert_eq!((c.attention_window_size, c.conv1d_width, c.rope_theta, c.logits_soft_cap), (2048, 4, 10000.0, 30.0));
        assert_eq!(c.block_type(2), BlockType::Attention);
        assert_eq!(c.block_type(3), BlockType::Recurrent);
        assert!(c.tie_word_embeddings && !c.attention_bias);
        assert_eq!(c.eos_token_ids, vec![1]);
        let c = cfg(&format!("{{{BASE},\"rope_theta\":500.0,\"partial_rotary_factor\":0.25}}")).unwrap();
        assert_eq!((c.rope_theta, c.rotary_dim), (500.0, 2));
        let c = cfg(&format!("{{{BASE},\"rope_parameters\":{{\"rope_type\":\"default\",\"rope_theta\":20.0}},\"rope_theta\":500.0}}")).unwrap();
        assert_eq!(c.rope_theta, 20.0);
    }

    #[test]
    fn config_errors_name_file_and_key() {
        let e = cfg(r#"{"vocab_size":100,"num_hidden_layers":2}"#).unwrap_err().to_string();
        assert!(e.contains("/m/config.json") && e.contains("`hidden_size`") && e.contains("missing"), "{e}");
        let e = cfg(&format!("{{{BASE},\"block_types\":[\"recurrent\",\"mlp\"]}}")).unwrap_err().to_string();
        assert!(e.contains("`block_types`") && e.contains("mlp"), "{e}");
        let e = cfg(&format!("{{{BASE},\"num_key_value_heads\":3}}")).unwrap_err().to_string();
        assert!(e.contains("`num_key_value_heads`"), "{e}");
        let e = cfg(&format!("{{{BASE},\"rope_parameters\":{{\"rope_type\":\"yarn\"}}}}")).unwrap_err().to_string();
        assert!(e.contains("`rope_parameters.rope_type`"), "{e}");
        let e = cfg(&format!("{{{BASE},\"model_type\":\"gemma\"}}")).unwrap_err().to_string();
        assert!(e.contains("`model_type`") && e.contains("gemma"), "{e}");
        let e = cfg(&format!("{{{BASE},\"hidden_activation\":\"relu\"}}")).unwrap_err().to_string();
        assert!(e.contains("`hidden_activation`"), "{e}");
    }

    #[test]
    fn state_bytes_count_full_rings() {
        let c = cfg(&format!("{{{BASE},\"num_key_value_heads\":1,\"attention_window_size\":16,\"lru_width\":24}}")).unwrap();
        // 3 recurrent layers (conv 3 x 24 f32 + 24 f32) and 1 attention layer (2 x 16 x 8 f32).
        assert_eq!(c.state_bytes(Kind::Float), 3 * (24 * 3 * 4 + 24 * 4) + 2 * 16 * 8 * 4);
    }
}
