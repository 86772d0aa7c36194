//! Mamba-2 (SSD) language model on libtorch, loaded from a Hugging Face `Mamba2ForCausalLM`
//! directory (config.json + safetensors): prefill with the chunked state-space-duality algorithm,
//! decoding with the recurrent step, and a fixed-size state per layer (the last `conv_kernel`
//! conv inputs and the `[num_heads, head_dim, state_size]` SSM state), so Mamba-2 can sit next to
//! KV-cache methods as a linear-time baseline.
//!
//! Per layer, with `x` the residual stream `[B, T, D]`, `I = num_heads * head_dim`, heads
//! `h = 1..H` in `n_groups` groups that share `B` and `C`:
//!
//! ```text
//! z, xBC, dt = split(in_proj(rmsnorm(x)))                 // [.., I], [.., I + 2GN], [.., H]
//! u, B, C    = split(silu(causal_depthwise_conv(xBC) + b)) // [.., H, P], [.., G, N], [.., G, N]
//! dt         = clamp(softplus(dt + dt_bias), time_step_limit)          // per head
//! s_t        = exp(dt_t A) s_{t-1} + dt_t u_t ⊗ B_t        // s: [H, P, N] per sequence, A = -exp(A_log)
//! y_t        = s_t · C_t + D u_t
//! x         += out_proj(gated_rmsnorm(y, z))               // rmsnorm(y * silu(z)) over all of I
//! ```
//!
//! then `logits = lm_head(rmsnorm_f(x))`. A prompt is processed in chunks of `chunk_size` steps
//! (SSD): inside a chunk the outputs are a masked, decay-weighted `C Bᵀ` product (quadratic in
//! the chunk, a few matmuls), the state enters through `C` and leaves as a decay-weighted `uᵀB`;
//! chunks follow each other through the state, so time and memory are linear in the length. A
//! single token takes the recurrence directly. Parity with transformers is checked in
//! `kvcore/tests/mamba2_parity.rs`.

use super::tensor_map::TensorMap;
use super::{RecurrentLm, RecurrentState};
use crate::error::{Error, Result};
use crate::norm::{rms_norm, RmsScale};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The shapes and switches of a Mamba-2 model, from a Hugging Face `config.json`. Keys that are
/// absent take transformers' `Mamba2Config` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Mamba2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// `num_heads * head_dim` (= `expand * hidden_size`, checked).
    pub intermediate_size: usize,
    /// H.
    pub num_heads: usize,
    /// P, channels per head.
    pub head_dim: usize,
    /// N.
    pub state_size: usize,
    /// G, groups of heads sharing `B` and `C` (divides `num_heads`).
    pub n_groups: usize,
    pub num_hidden_layers: usize,
    /// K, the depthwise convolution's width.
    pub conv_kernel: usize,
    /// Time steps per SSD chunk (the result does not depend on it, only speed and memory).
    pub chunk_size: usize,
    /// `dt` is clamped to `[min, max]` (`(0, inf)`: no clamp).
    pub time_step_limit: (f64, f64),
    pub layer_norm_epsilon: f64,
    /// Bias on `in_proj` and `out_proj`.
    pub use_bias: bool,
    /// Bias on the depthwise convolution.
    pub use_conv_bias: bool,
    /// Keep the residual stream in f32 whatever the weight dtype.
    pub residual_in_fp32: bool,
    /// The LM head is the embedding matrix (`lm_head.weight` may be absent from the files).
    pub tie_word_embeddings: bool,
    /// End-of-sequence token ids (informational: greedy decoding does not stop at them).
    pub eos_token_ids: Vec<u32>,
}

impl Mamba2Config {
    /// Channels through the convolution: `u`, `B` and `C`.
    pub fn conv_dim(&self) -> usize {
        self.intermediate_size + 2 * self.n_groups * self.state_size
    }

    /// Reads `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config JSON; `path` names the file in errors. Accepts the spellings of infinity that
    /// transformers writes into `time_step_limit`: a bare `Infinity` (Python's `json`, not JSON),
    /// `{"__float__": "Infinity"}` (transformers 5) and the string `"Infinity"`.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let err = |key: &str, problem: String| Error::Config { file: path.to_path_buf(), key: key.into(), problem };
        let root: Value = serde_json::from_str(&quote_bare_non_finite(text)).map_err(|e| err("(file)", format!("not valid JSON: {e}")))?;
        let obj = root.as_object().ok_or_else(|| err("(file)", "expected a JSON object".into()))?;
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());

        if let Some(v) = get("model_type") {
            let mt = v.as_str().ok_or_else(|| err("model_type", format!("expected a string, found {v}")))?;
            if mt != "mamba2" {
                return Err(err("model_type", format!("`{mt}` is not Mamba-2 (expected `mamba2`)")));
            }
        }
        let uint = |key: &str, v: &Value| -> Result<usize> {
            v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| err(key, format!("expected a non-negative integer, found {v}")))
        };
        let positive = |key: &str, n: usize| -> Result<usize> {
            if n == 0 {
                Err(err(key, "must be at least 1".into()))
            } else {
                Ok(n)
            }
        };
        let req = |key: &str| -> Result<usize> {
            let v = get(key).ok_or_else(|| err(key, "missing (required for Mamba-2)".into()))?;
            positive(key, uint(key, v)?)
        };
        let opt = |key: &str, default: usize| -> Result<usize> { positive(key, get(key).map_or(Ok(default), |v| uint(key, v))?) };
        let flag = |key: &str, default: bool| -> Result<bool> {
            get(key).map_or(Ok(default), |v| v.as_bool().ok_or_else(|| err(key, format!("expected true or false, found {v}"))))
        };
        let float = |key: &str, v: &Value| -> Result<f64> {
            let spelled = match v {
                Value::Object(o) if o.len() == 1 => o.get("__float__").and_then(Value::as_str),
                Value::String(s) => Some(s.as_str()),
                _ => None,
            };
            v.as_f64()
                .or_else(|| spelled.and_then(|s| s.parse::<f64>().ok()))
                .filter(|x| !x.is_nan())
                .ok_or_else(|| err(key, format!("expected a number, found {v}")))
        };

        let vocab_size = req("vocab_size")?;
        let hidden_size = req("hidden_size")?;
        let num_hidden_layers = req("num_hidden_layers")?;
        let num_heads = opt("num_heads", 128)?;
        let head_dim = opt("head_dim", 64)?;
        let state_size = opt("state_size", 128)?;
        let n_groups = opt("n_groups", 8)?;
        let conv_kernel = opt("conv_kernel", 4)?;
        let chunk_size = opt("chunk_size", 256)?;
        let intermediate_size = num_heads * head_dim;
        let expand = match get("expand") {
            None => 2.0,
            Some(v) => float("expand", v)?,
        };
        if expand * hidden_size as f64 != intermediate_size as f64 {
            return Err(err("expand", format!("expand * hidden_size = {expand} * {hidden_size} must equal num_heads * head_dim = {num_heads} * {head_dim}")));
        }
        if num_heads % n_groups != 0 {
            return Err(err("n_groups", format!("{n_groups} groups do not divide num_heads = {num_heads}")));
        }
        let time_step_limit = match get("time_step_limit") {
            None => (0.0, f64::INFINITY),
            Some(Value::Array(a)) if a.len() == 2 => {
                let (lo, hi) = (float("time_step_limit", &a[0])?, float("time_step_limit", &a[1])?);
                if !(lo >= 0.0 && lo <= hi && lo.is_finite()) {
                    return Err(err("time_step_limit", format!("expected 0 <= min <= max, found [{lo}, {hi}]")));
                }
                (lo, hi)
            }
            Some(v) => return Err(err("time_step_limit", format!("expected [min, max], found {v}"))),
        };
        let layer_norm_epsilon = match get("layer_norm_epsilon") {
            None => 1e-5,
            Some(v) => Some(float("layer_norm_epsilon", v)?)
                .filter(|e| *e >= 0.0 && e.is_finite())
                .ok_or_else(|| err("layer_norm_epsilon", format!("expected a non-negative number, found {v}")))?,
        };
        if let Some(v) = get("hidden_act") {
            let act = v.as_str().ok_or_else(|| err("hidden_act", format!("expected a string, found {v}")))?;
            if act != "silu" && act != "swish" {
                return Err(err("hidden_act", format!("`{act}` is not supported (only silu)")));
            }
        }
        // transformers normalises `y * silu(z)` whatever this says; a model trained without the
        // norm would silently compute something else, so refuse it.
        if !flag("rms_norm", true)? {
            return Err(err("rms_norm", "false is not supported (the gated RMSNorm is always applied)".into()));
        }
        let eos_token_ids = match obj.get("eos_token_id") {
            None => vec![2], // transformers' default
            Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a.iter().map(|v| uint("eos_token_id", v).map(|n| n as u32)).collect::<Result<Vec<_>>>()?,
            Some(v) => vec![uint("eos_token_id", v)? as u32],
        };
        Ok(Mamba2Config {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_heads,
            head_dim,
            state_size,
            n_groups,
            num_hidden_layers,
            conv_kernel,
            chunk_size,
            time_step_limit,
            layer_norm_epsilon,
            use_bias: flag("use_bias", false)?,
            use_conv_bias: flag("use_conv_bias", true)?,
            residual_in_fp32: flag("residual_in_fp32", true)?,
            tie_word_embeddings: flag("tie_word_embeddings", false)?,
            eos_token_ids,
        })
    }
}

/// `text` with the bare `Infinity`, `-Infinity` and `NaN` that Python's `json` writes (outside
/// strings) turned into strings, so a strict JSON parser reads them.
pub(crate) fn quote_bare_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(word) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|w| rest.starts_with(w)) {
                out.push('"');
                out.push_str(word);
                out.push('"');
                rest = &rest[word.len()..];
                continue;
            }
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

struct Layer {
    norm: Tensor,
    /// `[I + conv_dim + H, D]`: `z`, then `xBC`, then `dt`.
    in_proj_w: Tensor,
    in_proj_b: Option<Tensor>,
    /// `[conv_dim, 1, K]`, for a depthwise `conv1d` (groups = conv_dim).
    conv_w: Tensor,
    conv_b: Option<Tensor>,
    /// f32 `[H]`.
    dt_bias: Tensor,
    /// `A = -exp(A_log)`, f32 `[H]`.
    a: Tensor,
    /// f32 `[H]`.
    d: Tensor,
    /// The gated RMSNorm's weight, `[I]`.
    gated_norm: Tensor,
    out_proj_w: Tensor,
    out_proj_b: Option<Tensor>,
}

/// `rmsnorm(y * silu(gate))` over the whole last axis (`y` f32), as transformers'
/// `MambaRMSNormGated`.
fn gated_rms_norm(y: &Tensor, gate: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let g = y * gate.to_kind(Kind::Float).silu();
    let var = g.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    weight * (g * (var + eps).rsqrt())
}

/// `[B, G, L, N]` → `[B, H, L, N]`: each group's rows repeated for its `H / G` consecutive heads.
fn per_head(t: &Tensor, heads: i64) -> Tensor {
    let s = t.size();
    let (b, g, l, n) = (s[0], s[1], s[2], s[3]);
    t.unsqueeze(2).expand([b, g, heads / g, l, n], false).reshape([b, heads, l, n])
}

/// For per-step log decays `a` `[.., L]`: `[.., L, L]` with `[t, s] = a_{s+1} + … + a_t` for
/// `s <= t` and `-inf` above the diagonal, summed from masked copies rather than as a difference
/// of cumulative sums (no cancellation).
fn segment_sums(a: &Tensor) -> Tensor {
    let l = *a.size().last().unwrap();
    let mut shape = a.size();
    shape.push(l);
    let ones = Tensor::ones([l, l], (Kind::Bool, a.device()));
    let terms = a.unsqueeze(-1).expand(shape.as_slice(), false).masked_fill(&ones.tril(-1).logical_not(), 0.0); // [k, s] = a_k for k > s
    terms.cumsum(-2, Kind::Float).masked_fill(&ones.tril(0).logical_not(), f64::NEG_INFINITY)
}

impl Layer {
    /// One block over `x` `[B, T, D]` (residual stream), advancing `conv` `[B, conv_dim, K]` and
    /// `ssm` `[B, H, P, N]` in place.
    fn forward(&self, x: &Tensor, conv: &mut Tensor, ssm: &mut Tensor, cfg: &Mamba2Config, chunk: i64) -> Tensor {
        let (i, h, p, n, g, k) =
            (cfg.intermediate_size as i64, cfg.num_heads as i64, cfg.head_dim as i64, cfg.state_size as i64, cfg.n_groups as i64, cfg.conv_kernel as i64);
        let (b, t) = (x.size()[0], x.size()[1]);
        let conv_dim = i + 2 * g * n;
        let residual = if cfg.residual_in_fp32 { x.to_kind(Kind::Float) } else { x.shallow_clone() };
        let normed = rms_norm(&x.to_kind(self.norm.kind()), &self.norm, cfg.layer_norm_epsilon, RmsScale::AfterCast);
        let proj = normed.linear(&self.in_proj_w, self.in_proj_b.as_ref()); // [B, T, I + conv_dim + H]
        let gate = proj.narrow(2, 0, i);
        let xbc = proj.narrow(2, i, conv_dim).transpose(1, 2); // [B, conv_dim, T]

        // Causal depthwise convolution continuing from the last K-1 inputs of the state.
        let window = Tensor::cat(&[conv.narrow(2, 1, k - 1), xbc], 2); // [B, conv_dim, K-1+T]
        *conv = window.narrow(2, t - 1, k).contiguous();
        let xbc = window.conv1d(&self.conv_w, self.conv_b.as_ref(), [1], [0], [1], conv_dim).silu().to_kind(Kind::Float);
        // Head-major f32: u [B, H, T, P], B and C [B, G, T, N], dt [B, H, T].
        let u = xbc.narrow(1, 0, i).view([b, h, p, t]).transpose(2, 3);
        let bm = xbc.narrow(1, i, g * n).view([b, g, n, t]).transpose(2, 3);
        let cm = xbc.narrow(1, i + g * n, g * n).view([b, g, n, t]).transpose(2, 3);
        let mut dt = (proj.narrow(2, i + conv_dim, h).to_kind(Kind::Float) + &self.dt_bias).softplus().transpose(1, 2);
        let (lo, hi) = cfg.time_step_limit;
        if lo > 0.0 || hi.is_finite() {
            dt = dt.clamp(lo, hi);
        }

        let y = if t == 1 { self.step(&u, &bm, &cm, &dt, ssm) } else { self.chunked(&u, &bm, &cm, &dt, ssm, chunk) };
        let y = (y + &u * self.d.view([1, h, 1, 1])).transpose(1, 2).reshape([b, t, i]); // [B, T, I] f32
        let y = gated_rms_norm(&y, &gate, &self.gated_norm, cfg.layer_norm_epsilon);
        residual + y.to_kind(self.out_proj_w.kind()).linear(&self.out_proj_w, self.out_proj_b.as_ref())
    }

    /// The recurrence for one time step (`T = 1`): `y` `[B, H, 1, P]` without the `D` term.
    fn step(&self, u: &Tensor, bm: &Tensor, cm: &Tensor, dt: &Tensor, ssm: &mut Tensor) -> Tensor {
        let h = self.a.size()[0];
        let decay = (dt * self.a.view([1, h, 1])).exp().unsqueeze(-1); // [B, H, 1, 1]
        let input = (u * dt.unsqueeze(-1)).transpose(2, 3).matmul(&per_head(bm, h)); // [B, H, P, N]
        *ssm = &*ssm * decay + input;
        per_head(cm, h).matmul(&ssm.transpose(2, 3)) // [B, H, 1, P]
    }

    /// SSD over chunks of `chunk` steps: `y` `[B, H, T, P]` without the `D` term.
    fn chunked(&self, u: &Tensor, bm: &Tensor, cm: &Tensor, dt: &Tensor, ssm: &mut Tensor, chunk: i64) -> Tensor {
        let (b, h, t) = (u.size()[0], u.size()[1], u.size()[2]);
        let g = bm.size()[1];
        let mut ys = Vec::with_capacity(((t + chunk - 1) / chunk) as usize);
        let mut s = 0;
        while s < t {
            let l = chunk.min(t - s);
            let dt_c = dt.narrow(2, s, l); // [B, H, L]
            let log_decay = &dt_c * self.a.view([1, h, 1]); // [B, H, L]
            let cum = log_decay.cumsum(2, Kind::Float); // decay from the chunk's start through step t
            let u_dt = u.narrow(2, s, l) * dt_c.unsqueeze(-1); // [B, H, L, P]
            let (b_c, c_c) = (bm.narrow(2, s, l), cm.narrow(2, s, l)); // [B, G, L, N]

            // Within the chunk: y_t = Σ_{s<=t} exp(Σ_{s<k<=t} a_k) (C_t·B_s) dt_s u_s.
            let scores = c_c.matmul(&b_c.transpose(2, 3)).unsqueeze(2); // [B, G, 1, L, L]
            let weights = (segment_sums(&log_decay).exp().view([b, g, h / g, l, l]) * scores).view([b, h, l, l]);
            let y_within = weights.matmul(&u_dt); // [B, H, L, P]
                                                  // From the state at the chunk's start: y_t += exp(cum_t) C_t · s.
            let y_state = per_head(&c_c, h).matmul(&ssm.transpose(2, 3)) * cum.exp().unsqueeze(-1);
            ys.push(y_within + y_state);

            // The state at the chunk's end.
            let total = cum.narrow(2, l - 1, 1); // [B, H, 1]
            let to_end = (&total - &cum).exp().unsqueeze(-1); // [B, H, L, 1]
            let added = (u_dt * to_end).transpose(2, 3).matmul(&per_head(&b_c, h)); // [B, H, P, N]
            *ssm = &*ssm * total.exp().unsqueeze(-1) + added;
            s += l;
        }
        Tensor::cat(&ys, 2)
    }
}

/// The largest SSD chunk [`Mamba2Model`] uses on CPU.
pub const CPU_CHUNK_SIZE: usize = 64;

/// A Mamba-2 causal language model (batch 1 through [`RecurrentLm`]).
pub struct Mamba2Model {
    pub config: Mamba2Config,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm_f: Tensor,
    /// `[vocab, hidden]`; shares storage with `embeddings` when tied.
    lm_head: Tensor,
    pub kind: Kind,
    pub device: Device,
    /// Bytes of the weights as held in memory (a tied head counted once).
    pub weight_bytes: usize,
    /// Time steps per SSD chunk in prefill (the config's, at most [`CPU_CHUNK_SIZE`] on CPU;
    /// results agree for any value).
    pub chunk_size: usize,
}

impl Mamba2Model {
    /// Loads a Hugging Face `Mamba2ForCausalLM` directory (`config.json` and `model.safetensors`,
    /// or shards listed in `model.safetensors.index.json`), weights converted to `kind` on `device`.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let config = Mamba2Config::from_file(&dir.join("config.json"))?;
        let mut w = TensorMap::load_dir(dir, kind, device)?;
        // Some conversions name the table `embedding` (transformers renames it on load too).
        w.rename("backbone.embedding.weight", "backbone.embeddings.weight");
        Self::from_tensors(config, w, kind, device)
    }

    /// A model with random weights in transformers' initialisation ranges, for benchmarks that
    /// need no files. Seeds libtorch's global generator with `seed`.
    pub fn random(config: Mamba2Config, seed: i64, kind: Kind, device: Device) -> Result<Self> {
        let map = Self::random_tensors(&config, seed, device).into_iter().map(|(name, t)| (name, t.to_kind(kind))).collect();
        Self::from_tensors(config, TensorMap::from_map(map, "(random weights)"), kind, device)
    }

    /// The named f32 tensors of a random model in the Hugging Face layout (what
    /// [`random`](Self::random) builds from, and what `kvbench model init --arch mamba2` saves).
    pub fn random_tensors(config: &Mamba2Config, seed: i64, device: Device) -> HashMap<String, Tensor> {
        let _g = tch::no_grad_guard();
        let _rng = super::seeded_rng(seed);
        let c = config;
        let (v, d, i, h, k) = (c.vocab_size as i64, c.hidden_size as i64, c.intermediate_size as i64, c.num_heads as i64, c.conv_kernel as i64);
        let conv_dim = c.conv_dim() as i64;
        let opts = (Kind::Float, device);
        let normal = |shape: &[i64], std: f64| Tensor::randn(shape, opts) * std;
        let uniform = |shape: &[i64], bound: f64| (Tensor::rand(shape, opts) * 2.0 - 1.0) * bound;
        let mut map = HashMap::new();
        map.insert("backbone.embeddings.weight".to_string(), normal(&[v, d], 0.1));
        map.insert("backbone.norm_f.weight".to_string(), Tensor::ones([d], opts));
        if !c.tie_word_embeddings {
            map.insert("lm_head.weight".to_string(), normal(&[v, d], 0.1));
        }
        for l in 0..c.num_hidden_layers {
            let p = format!("backbone.layers.{l}");
            let mut put = |name: &str, t: Tensor| map.insert(format!("{p}.{name}"), t);
            put("norm.weight", Tensor::ones([d], opts));
            put("mixer.in_proj.weight", normal(&[i + conv_dim + h, d], 0.1));
            put("mixer.conv1d.weight", uniform(&[conv_dim, 1, k], 1.0 / (k as f64).sqrt()));
            if c.use_conv_bias {
                put("mixer.conv1d.bias", Tensor::zeros([conv_dim], opts));
            }
            // dt in [1e-3, 1e-1] log-uniformly, stored through the inverse softplus.
            let dt = (Tensor::rand([h], opts) * (0.1f64.ln() - 0.001f64.ln()) + 0.001f64.ln()).exp();
            put("mixer.dt_bias", &dt + (-(-&dt).expm1()).log());
            put("mixer.A_log", Tensor::arange_start(1, h + 1, opts).log());
            put("mixer.D", Tensor::ones([h], opts));
            put("mixer.norm.weight", Tensor::ones([i], opts));
            put("mixer.out_proj.weight", normal(&[d, i], 0.1 / (c.num_hidden_layers as f64).sqrt()));
            if c.use_bias {
                put("mixer.in_proj.bias", Tensor::zeros([i + conv_dim + h], opts));
                put("mixer.out_proj.bias", Tensor::zeros([d], opts));
            }
        }
        map
    }

    fn from_tensors(config: Mamba2Config, mut w: TensorMap, kind: Kind, device: Device) -> Result<Self> {
        let c = &config;
        let (v, d, i, h, k) = (c.vocab_size as i64, c.hidden_size as i64, c.intermediate_size as i64, c.num_heads as i64, c.conv_kernel as i64);
        let conv_dim = c.conv_dim() as i64;
        let mut weight_bytes = 0usize;
        let mut count = |t: &Tensor| weight_bytes += t.numel() * t.kind().elt_size_in_bytes();
        let to_f32 = |t: Tensor| t.to_kind(Kind::Float);

        let embeddings = w.take("backbone.embeddings.weight", &[v, d])?;
        count(&embeddings);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("backbone.layers.{l}");
            let name = |s: &str| format!("{p}.{s}");
            let layer = Layer {
                norm: w.take(&name("norm.weight"), &[d])?,
                in_proj_w: w.take(&name("mixer.in_proj.weight"), &[i + conv_dim + h, d])?,
                in_proj_b: if c.use_bias { Some(w.take(&name("mixer.in_proj.bias"), &[i + conv_dim + h])?) } else { None },
                conv_w: w.take(&name("mixer.conv1d.weight"), &[conv_dim, 1, k])?,
                conv_b: if c.use_conv_bias { Some(w.take(&name("mixer.conv1d.bias"), &[conv_dim])?) } else { None },
                dt_bias: to_f32(w.take(&name("mixer.dt_bias"), &[h])?),
                a: -to_f32(w.take(&name("mixer.A_log"), &[h])?).exp(),
                d: to_f32(w.take(&name("mixer.D"), &[h])?),
                gated_norm: w.take(&name("mixer.norm.weight"), &[i])?,
                out_proj_w: w.take(&name("mixer.out_proj.weight"), &[d, i])?,
                out_proj_b: if c.use_bias { Some(w.take(&name("mixer.out_proj.bias"), &[d])?) } else { None },
            };
            for t in [&layer.norm, &layer.in_proj_w, &layer.conv_w, &layer.dt_bias, &layer.a, &layer.d, &layer.gated_norm, &layer.out_proj_w]
                .into_iter()
                .chain(layer.in_proj_b.iter())
                .chain(layer.conv_b.iter())
                .chain(layer.out_proj_b.iter())
            {
                count(t);
            }
            layers.push(layer);
        }
        let norm_f = w.take("backbone.norm_f.weight", &[d])?;
        count(&norm_f);
        let lm_head = if c.tie_word_embeddings {
            // transformers ties the head to the embeddings, ignoring any stored `lm_head.weight`.
            w.remove("lm_head.weight");
            embeddings.shallow_clone()
        } else {
            let t = w.take("lm_head.weight", &[v, d])?;
            count(&t);
            t
        };
        w.warn_unused("Mamba-2");
        // On CPU the quadratic in-chunk work dominates at the configs' 256: chunks of 64 prefill
        // mamba2-130m shapes about twice as fast (the ignored timing test in mamba2_parity.rs).
        let chunk_size = if device.is_cuda() { config.chunk_size } else { config.chunk_size.min(CPU_CHUNK_SIZE) };
        Ok(Mamba2Model { config, embeddings, layers, norm_f, lm_head, kind, device, weight_bytes, chunk_size })
    }

    fn conv_shape(&self) -> [i64; 3] {
        [1, self.config.conv_dim() as i64, self.config.conv_kernel as i64]
    }

    fn ssm_shape(&self) -> [i64; 4] {
        let c = &self.config;
        [1, c.num_heads as i64, c.head_dim as i64, c.state_size as i64]
    }
}

impl RecurrentLm for Mamba2Model {
    fn family(&self) -> &'static str {
        "mamba2"
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

    /// Per layer the conv window `[1, conv_dim, K]` (weights' dtype, oldest input first), then per
    /// layer the SSM state `[1, H, P, N]` (f32); all zeros.
    fn new_state(&self) -> Result<RecurrentState> {
        let n = self.config.num_hidden_layers;
        let mut tensors: Vec<Tensor> = (0..n).map(|_| Tensor::zeros(self.conv_shape(), (self.kind, self.device))).collect();
        tensors.extend((0..n).map(|_| Tensor::zeros(self.ssm_shape(), (Kind::Float, self.device))));
        Ok(RecurrentState { tensors, tokens: 0 })
    }

    fn forward(&self, ids: &[u32], state: &mut RecurrentState, all_positions: bool) -> Result<Tensor> {
        let n = self.config.num_hidden_layers;
        let shapes_ok = state.tensors.len() == 2 * n
            && state.tensors[..n].iter().all(|t| t.size() == self.conv_shape())
            && state.tensors[n..].iter().all(|t| t.size() == self.ssm_shape());
        if !shapes_ok {
            return Err(Error::InvalidArgument {
                what: "Mamba-2 state",
                value: format!("{} tensors, first {:?}", state.tensors.len(), state.tensors.first().map(Tensor::size)),
                expected: format!("{n} conv windows {:?} then {n} SSM states {:?} (from new_state)", self.conv_shape(), self.ssm_shape()),
            });
        }
        let input = super::ids_tensor(ids, self.config.vocab_size, self.device)?;
        let _g = tch::no_grad_guard();
        let (conv, ssm) = state.tensors.split_at_mut(n);
        let chunk = self.chunk_size.max(1) as i64;
        let mut x = Tensor::embedding(&self.embeddings, &input, -1, false, false);
        for (l, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &mut conv[l], &mut ssm[l], &self.config, chunk);
        }
        state.tokens += ids.len();
        let x = if all_positions { x } else { x.narrow(1, x.size()[1] - 1, 1) };
        let h = rms_norm(&x, &self.norm_f, self.config.layer_norm_epsilon, RmsScale::AfterCast);
        Ok(h.to_kind(self.lm_head.kind()).linear::<Tensor>(&self.lm_head, None).to_kind(Kind::Float).squeeze_dim(0))
    }

    fn state_bytes(&self) -> u64 {
        let c = &self.config;
        let per_layer = c.conv_dim() * c.conv_kernel * self.kind.elt_size_in_bytes() + c.num_heads * c.head_dim * c.state_size * 4;
        (c.num_hidden_layers * per_layer) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<Mamba2Config> {
        Mamba2Config::from_json_str(json, Path::new("/m/config.json"))
    }

    #[test]
    fn config_defaults_and_infinity_spellings() {
        let base = r#""model_type":"mamba2","vocab_size":100,"hidden_size":32,"num_hidden_layers":2,"num_heads":8,"head_dim":8"#;
        let c = cfg(&format!("{{{base}}}")).unwrap();
        assert_eq!((c.intermediate_size, c.state_size, c.n_groups, c.conv_kernel, c.chunk_size), (64, 128, 8, 4, 256));
        assert_eq!(c.conv_dim(), 64 + 2 * 8 * 128);
        assert!(!c.tie_word_embeddings && c.use_conv_bias && !c.use_bias && c.residual_in_fp32);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.time_step_limit, (0.0, f64::INFINITY));
        for limit in [r#"[0.0, Infinity]"#, r#"[0.0, {"__float__": "Infinity"}]"#, r#"[0.0, "Infinity"]"#] {
            let c = cfg(&format!(r#"{{{base},"n_groups":2,"time_step_limit":{limit},"note":"Infinity NaN \" x"}}"#)).unwrap();
            assert_eq!(c.time_step_limit, (0.0, f64::INFINITY), "{limit}");
        }
        let c = cfg(&format!(r#"{{{base},"n_groups":1,"time_step_limit":[0.01, 0.5],"eos_token_id":null}}"#)).unwrap();
        assert_eq!(c.time_step_limit, (0.01, 0.5));
        assert!(c.eos_token_ids.is_empty());
    }

    #[test]
    fn config_errors_name_file_and_key() {
        let check = |json: &str, key: &str| {
            let e = cfg(json).unwrap_err().to_string();
            assert!(e.contains("/m/config.json") && e.contains(&format!("`{key}`")), "{e}");
        };
        check(r#"{"vocab_size":100,"num_hidden_layers":2}"#, "hidden_size");
        check(r#"{"model_type":"mamba","vocab_size":100,"hidden_size":8,"num_hidden_layers":2}"#, "model_type");
        check(r#"{"vocab_size":100,"hidden_size":32,"num_hidden_layers":2,"num_heads":4,"head_dim":8}"#, "expand");
        check(r#"{"vocab_size":100,"hidden_size":32,"num_hidden_layers":2,"num_heads":4,"head_dim":16,"n_groups":3}"#, "n_groups");
        check(
            r#"{"vocab_size":100,"hidden_size":32,"num_hidden_layers":2,"num_heads":4,"head_dim":16,"n_groups":1,"time_step_limit":[0.5,0.1]}"#,
            "time_step_limit",
        );
        check(r#"{"vocab_size":100,"hidden_size":32,"num_hidden_layers":2,"num_heads":4,"head_dim":16,"n_groups":1,"rms_norm":false}"#, "rms_norm");
    }

    #[test]
    fn segment_sums_are_partial_sums_masked_above_the_diagonal() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 4.0]);
        let s = segment_sums(&a);
        let want = [[0.0, f64::NEG_INFINITY, f64::NEG_INFINITY], [2.0, 0.0, f64::NEG_INFINITY], [6.0, 4.0, 0.0]];
        for (t, row) in want.iter().enumerate() {
            for (j, &w) in row.iter().enumerate() {
                assert_eq!(s.double_value(&[t as i64, j as i64]), w, "[{t}, {j}]");
            }
        }
    }
}
