//! Mamba (v1) language model on libtorch, loaded from a Hugging Face `MambaForCausalLM` directory
//! (config.json + safetensors): full-sequence evaluation with a selective scan, and a fixed-size
//! recurrent state (per layer: the last `conv_kernel` conv inputs and the `[d_inner, d_state]` SSM
//! state) for prefill-then-step decoding, so linear-time models can sit next to KV-cache methods.
//!
//! Per layer, with `x` the residual stream `[B, T, H]`:
//!
//! ```text
//! h        = rmsnorm(x)
//! u, z     = split(in_proj(h))                      // [B, T, I] each, I = d_inner
//! u        = silu(causal_depthwise_conv(u) + b)     // kernel K over time, per channel
//! dt, B, C = split(x_proj(u))                       // [.., R], [.., N], [.., N]
//! dt       = softplus(dt_proj(dt))                  // [B, T, I]
//! s_t      = exp(dt_t * A) * s_{t-1} + (dt_t * u_t) ⊗ B_t     // s: [B, I, N], A = -exp(A_log)
//! y_t      = s_t · C_t + D * u_t
//! x       += out_proj(y * silu(z))
//! ```
//!
//! then `logits = lm_head(rmsnorm_f(x))`. The recurrence is evaluated over blocks of time steps
//! (bounded memory); within a block either step by step ([`ScanMode::Sequential`]) or by
//! recursive doubling in `log2(block)` whole-block tensor ops ([`ScanMode::Doubling`]). Parity
//! with transformers is checked in `kvcore/tests/mamba_parity.rs`.

use super::tensor_map::TensorMap;
use super::{RecurrentLm, RecurrentState};
use crate::error::{Error, Result};
use crate::norm::{rms_norm, RmsScale};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The shapes and switches of a Mamba model, from a Hugging Face `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct MambaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// `d_inner` (`expand * hidden_size` unless given).
    pub intermediate_size: usize,
    /// `d_state`, N.
    pub state_size: usize,
    pub num_hidden_layers: usize,
    /// `d_conv`, K.
    pub conv_kernel: usize,
    /// R, the rank of the `dt` projection (`ceil(hidden_size / 16)` for `"auto"`).
    pub time_step_rank: usize,
    pub layer_norm_epsilon: f64,
    /// Bias on `in_proj` and `out_proj`.
    pub use_bias: bool,
    /// Bias on the depthwise convolution.
    pub use_conv_bias: bool,
    /// Keep the residual stream in f32 whatever the weight dtype.
    pub residual_in_fp32: bool,
    /// The LM head is the embedding matrix (`lm_head.weight` may be absent from the files).
    pub tie_word_embeddings: bool,
    /// End-of-sequence token ids (informational: [`MambaModel::greedy`] does not stop at them).
    pub eos_token_ids: Vec<u32>,
}

impl MambaConfig {
    /// The `config.json` a Hugging Face `MambaForCausalLM` checkpoint of this shape carries.
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["MambaForCausalLM"],
            "model_type": "mamba",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "state_size": self.state_size,
            "num_hidden_layers": self.num_hidden_layers,
            "conv_kernel": self.conv_kernel,
            "time_step_rank": self.time_step_rank,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "use_bias": self.use_bias,
            "use_conv_bias": self.use_conv_bias,
            "residual_in_fp32": self.residual_in_fp32,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "eos_token_id": self.eos_token_ids,
        })
    }

    /// The tensor dimensions as i64: vocabulary, hidden, d_inner, d_state, conv kernel, dt rank.
    fn dims(&self) -> (i64, i64, i64, i64, i64, i64) {
        (
            self.vocab_size as i64,
            self.hidden_size as i64,
            self.intermediate_size as i64,
            self.state_size as i64,
            self.conv_kernel as i64,
            self.time_step_rank as i64,
        )
    }

    /// Reads `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config JSON (Hugging Face `MambaConfig`, or the original `mamba_ssm` layout:
    /// `d_model`, `n_layer`, `ssm_cfg`, ...); `path` names the file in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let err = |key: &str, problem: String| Error::Config { file: path.to_path_buf(), key: key.into(), problem };
        let root: Value = serde_json::from_str(text).map_err(|e| err("(file)", format!("not valid JSON: {e}")))?;
        let root = if is_mamba_ssm_config(&root) { from_mamba_ssm_config(&root, path)? } else { root };
        let obj = root.as_object().ok_or_else(|| err("(file)", "expected a JSON object".into()))?;
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());

        if let Some(v) = get("model_type") {
            let mt = v.as_str().ok_or_else(|| err("model_type", format!("expected a string, found {v}")))?;
            if mt != "mamba" {
                return Err(err("model_type", format!("`{mt}` is not Mamba v1 (expected `mamba`)")));
            }
        }
        let uint = |key: &str, v: &Value| -> Result<usize> {
            v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| err(key, format!("expected a non-negative integer, found {v}")))
        };
        let req = |key: &str| -> Result<usize> {
            let v = get(key).ok_or_else(|| err(key, "missing (required for Mamba)".into()))?;
            uint(key, v)
        };
        let opt = |key: &str, default: usize| -> Result<usize> { get(key).map_or(Ok(default), |v| uint(key, v)) };
        let flag = |key: &str, default: bool| -> Result<bool> {
            get(key).map_or(Ok(default), |v| v.as_bool().ok_or_else(|| err(key, format!("expected true or false, found {v}"))))
        };
        let positive = |key: &str, n: usize| -> Result<usize> {
            if n == 0 {
                Err(err(key, "must be at least 1".into()))
            } else {
                Ok(n)
            }
        };

        let vocab_size = positive("vocab_size", req("vocab_size")?)?;
        let hidden_size = positive("hidden_size", req("hidden_size")?)?;
        let num_hidden_layers = positive("num_hidden_layers", req("num_hidden_layers")?)?;
        let state_size = positive("state_size", opt("state_size", 16)?)?;
        let conv_kernel = positive("conv_kernel", opt("conv_kernel", 4)?)?;
        let expand = positive("expand", opt("expand", 2)?)?;
        let intermediate_size = positive("intermediate_size", opt("intermediate_size", expand * hidden_size)?)?;
        let time_step_rank = match get("time_step_rank") {
            None => hidden_size.div_ceil(16),
            Some(Value::String(s)) if s == "auto" => hidden_size.div_ceil(16),
            Some(v) => positive(
                "time_step_rank",
                uint("time_step_rank", v).map_err(|_| err("time_step_rank", format!("expected a positive integer or \"auto\", found {v}")))?,
            )?,
        };
        let layer_norm_epsilon = match get("layer_norm_epsilon") {
            None => 1e-5,
            Some(v) => v
                .as_f64()
                .filter(|e| *e >= 0.0 && e.is_finite())
                .ok_or_else(|| err("layer_norm_epsilon", format!("expected a non-negative number, found {v}")))?,
        };
        if let Some(v) = get("hidden_act") {
            let act = v.as_str().ok_or_else(|| err("hidden_act", format!("expected a string, found {v}")))?;
            if act != "silu" && act != "swish" {
                return Err(err("hidden_act", format!("`{act}` is not supported (only silu)")));
            }
        }
        let eos_token_ids = match get("eos_token_id") {
            None => vec![],
            Some(Value::Array(a)) => a.iter().map(|v| uint("eos_token_id", v).map(|n| n as u32)).collect::<Result<Vec<_>>>()?,
            Some(v) => vec![uint("eos_token_id", v)? as u32],
        };
        Ok(MambaConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            state_size,
            num_hidden_layers,
            conv_kernel,
            time_step_rank,
            layer_norm_epsilon,
            use_bias: flag("use_bias", false)?,
            use_conv_bias: flag("use_conv_bias", true)?,
            residual_in_fp32: flag("residual_in_fp32", true)?,
            tie_word_embeddings: flag("tie_word_embeddings", true)?,
            eos_token_ids,
        })
    }
}

/// Whether `config` is the original `mamba_ssm` `MambaConfig` (as saved by `MambaLMHeadModel`,
/// e.g. havenhq/mamba-chat): `d_model` and `n_layer` instead of Hugging Face's keys.
pub fn is_mamba_ssm_config(config: &Value) -> bool {
    config.get("model_type").is_none() && config.get("d_model").is_some() && config.get("n_layer").is_some()
}

/// The Hugging Face `MambaConfig` keys for an original `mamba_ssm` config: `d_model`, `n_layer`,
/// `vocab_size` rounded up to `pad_vocab_size_multiple` (the embedding's rows), `ssm_cfg`'s
/// `d_state`/`d_conv`/`expand`/`dt_rank`/`bias`/`conv_bias`, `rms_norm` (must be true),
/// `residual_in_fp32`, `tie_embeddings`, `norm_epsilon`. A Mamba-2 `ssm_cfg` is refused.
fn from_mamba_ssm_config(c: &Value, path: &Path) -> Result<Value> {
    let err = |key: &str, problem: String| Error::Config { file: path.to_path_buf(), key: key.into(), problem };
    let uint = |v: &Value, key: &str| v.as_u64().ok_or_else(|| err(key, format!("expected a non-negative integer, found {v}")));
    let empty = Value::Object(Default::default());
    let ssm = c.get("ssm_cfg").filter(|v| !v.is_null()).unwrap_or(&empty);
    if let Some(layer) = ssm.get("layer").and_then(Value::as_str) {
        if layer != "Mamba1" {
            return Err(err(
                "ssm_cfg.layer",
                format!("`{layer}` is not Mamba v1 (this reader takes Mamba1 mamba_ssm checkpoints; use a Hugging Face Mamba2 conversion for Mamba-2)"),
            ));
        }
    }
    if c.get("rms_norm").and_then(Value::as_bool) == Some(false) {
        return Err(err("rms_norm", "false (LayerNorm) is not supported: Mamba models use RMSNorm".into()));
    }
    let vocab = uint(c.get("vocab_size").ok_or_else(|| err("vocab_size", "missing".into()))?, "vocab_size")?;
    let multiple = c.get("pad_vocab_size_multiple").map(|v| uint(v, "pad_vocab_size_multiple")).transpose()?.unwrap_or(8).max(1);
    let mut out = serde_json::json!({
        "model_type": "mamba",
        "hidden_size": c["d_model"],
        "num_hidden_layers": c["n_layer"],
        "vocab_size": vocab.div_ceil(multiple) * multiple,
        "state_size": ssm.get("d_state").cloned().unwrap_or(16.into()),
        "conv_kernel": ssm.get("d_conv").cloned().unwrap_or(4.into()),
        "expand": ssm.get("expand").cloned().unwrap_or(2.into()),
        "time_step_rank": ssm.get("dt_rank").cloned().unwrap_or("auto".into()),
        "use_bias": ssm.get("bias").cloned().unwrap_or(false.into()),
        "use_conv_bias": ssm.get("conv_bias").cloned().unwrap_or(true.into()),
        "residual_in_fp32": c.get("residual_in_fp32").cloned().unwrap_or(true.into()),
        "tie_word_embeddings": c.get("tie_embeddings").cloned().unwrap_or(true.into()),
        "layer_norm_epsilon": c.get("norm_epsilon").cloned().unwrap_or(1e-5.into()),
    });
    if let Some(eos) = c.get("eos_token_id") {
        out["eos_token_id"] = eos.clone();
    }
    Ok(out)
}

/// How the recurrence is evaluated within a block of time steps. Both give the same result up to
/// float rounding; they differ in speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// One fused multiply-add over `[B, I, N]` per time step.
    Sequential,
    /// Recursive doubling (Hillis–Steele) over the block: `log2(block)` rounds of whole-block
    /// tensor ops, `O(block * log block)` work. Fewer, larger ops: pays off where per-op overhead
    /// dominates (small models, GPUs).
    Doubling,
}

/// The recurrent state of a batch of sequences: everything a Mamba model needs to go on from
/// where it stopped. Its size does not depend on how many tokens it has seen.
#[derive(Debug)]
pub struct MambaState {
    /// Per layer, the last `conv_kernel` inputs of the convolution, oldest first:
    /// `[B, d_inner, d_conv]`, in the weights' dtype (zeros before the first token).
    pub conv: Vec<Tensor>,
    /// Per layer, the SSM state `[B, d_inner, d_state]`, f32.
    pub ssm: Vec<Tensor>,
    /// Tokens consumed so far.
    pub tokens: usize,
}

impl MambaState {
    /// Bytes held by the state tensors (constant in sequence length).
    pub fn bytes(&self) -> usize {
        self.conv.iter().chain(&self.ssm).map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum()
    }

    /// A deep copy (e.g. to branch several continuations from one prefix).
    pub fn deep_clone(&self) -> Self {
        MambaState { conv: self.conv.iter().map(Tensor::copy).collect(), ssm: self.ssm.iter().map(Tensor::copy).collect(), tokens: self.tokens }
    }
}

struct Layer {
    norm: Tensor,
    in_proj_w: Tensor,
    in_proj_b: Option<Tensor>,
    /// `[I, 1, K]`, for a depthwise `conv1d` (groups = I).
    conv_w: Tensor,
    conv_b: Option<Tensor>,
    x_proj_w: Tensor,
    dt_proj_w: Tensor,
    dt_proj_b: Tensor,
    /// `A = -exp(A_log)`, f32 `[I, N]`.
    a: Tensor,
    /// f32 `[I]`.
    d: Tensor,
    out_proj_w: Tensor,
    out_proj_b: Option<Tensor>,
}

/// A Mamba (v1) causal language model.
pub struct MambaModel {
    pub config: MambaConfig,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm_f: Tensor,
    /// `[vocab, hidden]`; shares storage with `embeddings` when tied.
    lm_head: Tensor,
    pub kind: Kind,
    pub device: Device,
    /// Bytes of the weights as held in memory (a tied head counted once).
    pub weight_bytes: usize,
    /// How the recurrence is evaluated within a block.
    pub scan_mode: ScanMode,
    /// Time steps per scan block: bounds the `[block, B, I, N]` temporaries.
    pub scan_block: usize,
}

/// `h_t = a_t * h_{t-1} + b_t` over the leading (time) axis of `a`, `b` (`[L, B, I, N]`, `b`
/// contiguous and owned: overwritten with the result), from `h0` (`[B, I, N]`).
fn scan_sequential(a: &Tensor, b: Tensor, h0: &Tensor) -> Tensor {
    let l = b.size()[0];
    let _ = b.get(0).addcmul_(&a.get(0), h0);
    for t in 1..l {
        let prev = b.get(t - 1);
        let _ = b.get(t).addcmul_(&a.get(t), &prev);
    }
    b
}

/// Same as [`scan_sequential`] by recursive doubling: after the round with offset `d`, element
/// `t` holds the composition of steps `(t - 2d, t]`; `h0` is folded into step 0 first.
fn scan_doubling(a: Tensor, b: Tensor, h0: &Tensor) -> Tensor {
    let l = b.size()[0];
    let _ = b.get(0).addcmul_(&a.get(0), h0);
    let mut d = 1;
    while d < l {
        let n = l - d;
        let a_hi = a.narrow(0, d, n);
        let inc = &a_hi * b.narrow(0, 0, n);
        let _ = b.narrow(0, d, n).g_add_(&inc);
        if 2 * d < l {
            let prod = &a_hi * a.narrow(0, 0, n);
            a.narrow(0, d, n).copy_(&prod);
        }
        d *= 2;
    }
    b
}

impl Layer {
    /// One block over `x` `[B, T, H]` (residual stream), advancing `conv` and `ssm` in place.
    fn forward(&self, x: &Tensor, conv: &mut Tensor, ssm: &mut Tensor, cfg: &MambaConfig, mode: ScanMode, block: i64) -> Tensor {
        let (i, k, n, r) = (cfg.intermediate_size as i64, cfg.conv_kernel as i64, cfg.state_size as i64, cfg.time_step_rank as i64);
        let t = x.size()[1];
        let h = rms_norm(x, &self.norm, cfg.layer_norm_epsilon, RmsScale::InWeightDtype);
        let proj = h.linear(&self.in_proj_w, self.in_proj_b.as_ref()); // [B, T, 2I]
        let u = proj.narrow(2, 0, i).transpose(1, 2); // [B, I, T]
        let gate = proj.narrow(2, i, i); // [B, T, I]

        // Causal depthwise convolution continuing from the last K-1 inputs of the state.
        let xcat = Tensor::cat(&[conv.narrow(2, 1, k - 1), u], 2); // [B, I, K-1+T]
        *conv = xcat.narrow(2, t - 1, k).contiguous();
        let u = xcat.conv1d(&self.conv_w, self.conv_b.as_ref(), [1], [0], [1], i).silu().transpose(1, 2); // [B, T, I]

        // Input-dependent dt, B, C.
        let p = u.linear::<Tensor>(&self.x_proj_w, None); // [B, T, R + 2N]
        let dt = p.narrow(2, 0, r).linear(&self.dt_proj_w, Some(&self.dt_proj_b)).softplus(); // [B, T, I]
        let to_time_major = |x: Tensor| x.to_kind(Kind::Float).transpose(0, 1);
        let (uf, dt) = (to_time_major(u.shallow_clone()), to_time_major(dt));
        let bm = to_time_major(p.narrow(2, r, n)); // [T, B, N]
        let cm = to_time_major(p.narrow(2, r + n, n));

        let mut ys = Vec::with_capacity(((t + block - 1) / block) as usize);
        let mut s = 0;
        while s < t {
            let l = block.min(t - s);
            let dt_c = dt.narrow(0, s, l); // [L, B, I]
            let da = (dt_c.unsqueeze(-1) * &self.a).exp(); // [L, B, I, N]
            let dbu = (&dt_c * uf.narrow(0, s, l)).unsqueeze(-1) * bm.narrow(0, s, l).unsqueeze(2); // [L, B, I, N]
            let hs = match mode {
                ScanMode::Sequential => scan_sequential(&da, dbu, ssm),
                ScanMode::Doubling => scan_doubling(da, dbu, ssm),
            };
            *ssm = hs.get(l - 1).copy();
            ys.push(hs.matmul(&cm.narrow(0, s, l).unsqueeze(-1)).squeeze_dim(-1)); // [L, B, I]
            s += l;
        }
        let y = Tensor::cat(&ys, 0).transpose(0, 1); // [B, T, I] f32
        let y = (y + uf.transpose(0, 1) * &self.d) * gate.to_kind(Kind::Float).silu();
        let out = y.to_kind(self.out_proj_w.kind()).linear(&self.out_proj_w, self.out_proj_b.as_ref());
        x + out
    }
}

impl MambaModel {
    /// Loads a Hugging Face `MambaForCausalLM` directory (`config.json` and `model.safetensors`, or
    /// shards listed in `model.safetensors.index.json`), weights converted to `kind` on `device`.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let config = MambaConfig::from_file(&dir.join("config.json"))?;
        let mut w = TensorMap::load_dir(dir, kind, device)?;
        // Some conversions name the table `embedding` (transformers renames it on load too).
        w.rename("backbone.embedding.weight", "backbone.embeddings.weight");
        Self::from_tensors(config, w, kind, device)
    }

    /// A model with random weights in the usual Mamba initialisation ranges, for benchmarks and
    /// tests that need no files. Seeds libtorch's global generator with `seed`.
    pub fn random(config: MambaConfig, seed: i64, kind: Kind, device: Device) -> Result<Self> {
        let map = Self::random_tensors(&config, seed, device).into_iter().map(|(name, t)| (name, t.to_kind(kind))).collect();
        Self::from_tensors(config, TensorMap::from_map(map, "(random weights)"), kind, device)
    }

    /// The named f32 tensors of a random model in the Hugging Face layout (what [`random`](Self::random)
    /// builds the model from, and what `kvbench model init --arch mamba` saves).
    pub fn random_tensors(config: &MambaConfig, seed: i64, device: Device) -> HashMap<String, Tensor> {
        let _g = tch::no_grad_guard();
        let _rng = super::seeded_rng(seed);
        let c = config;
        let (v, h, i, n, k, r) = c.dims();
        let opts = (Kind::Float, device);
        let normal = |shape: &[i64], std: f64| Tensor::randn(shape, opts) * std;
        let uniform = |shape: &[i64], bound: f64| (Tensor::rand(shape, opts) * 2.0 - 1.0) * bound;
        let mut map = HashMap::new();
        map.insert("backbone.embeddings.weight".to_string(), normal(&[v, h], 0.02));
        map.insert("backbone.norm_f.weight".to_string(), Tensor::ones([h], opts));
        if !c.tie_word_embeddings {
            map.insert("lm_head.weight".to_string(), normal(&[v, h], 0.02));
        }
        for l in 0..c.num_hidden_layers {
            let p = format!("backbone.layers.{l}");
            let mut put = |name: &str, t: Tensor| map.insert(format!("{p}.{name}"), t);
            put("norm.weight", Tensor::ones([h], opts));
            put("mixer.in_proj.weight", normal(&[2 * i, h], 0.02));
            put("mixer.conv1d.weight", uniform(&[i, 1, k], 1.0 / (k as f64).sqrt()));
            if c.use_conv_bias {
                put("mixer.conv1d.bias", Tensor::zeros([i], opts));
            }
            put("mixer.x_proj.weight", normal(&[r + 2 * n, i], 0.02));
            put("mixer.dt_proj.weight", uniform(&[i, r], (r as f64).powf(-0.5)));
            // dt in [1e-3, 1e-1] log-uniformly, stored through the inverse softplus.
            let dt = (Tensor::rand([i], opts) * (0.1f64.ln() - 0.001f64.ln()) + 0.001f64.ln()).exp();
            put("mixer.dt_proj.bias", &dt + (-(-&dt).expm1()).log());
            put("mixer.A_log", Tensor::arange_start(1, n + 1, opts).log().unsqueeze(0).expand([i, n], true).contiguous());
            put("mixer.D", Tensor::ones([i], opts));
            put("mixer.out_proj.weight", normal(&[h, i], 0.02 / (c.num_hidden_layers as f64).sqrt()));
            if c.use_bias {
                put("mixer.in_proj.bias", Tensor::zeros([2 * i], opts));
                put("mixer.out_proj.bias", Tensor::zeros([h], opts));
            }
        }
        map
    }

    fn from_tensors(config: MambaConfig, mut w: TensorMap, kind: Kind, device: Device) -> Result<Self> {
        let c = &config;
        let (v, h, i, n, k, r) = c.dims();
        let mut weight_bytes = 0usize;
        let mut count = |t: &Tensor| weight_bytes += t.numel() * t.kind().elt_size_in_bytes();
        let to_f32 = |t: Tensor| t.to_kind(Kind::Float);

        let embeddings = w.take("backbone.embeddings.weight", &[v, h])?;
        count(&embeddings);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("backbone.layers.{l}");
            let name = |s: &str| format!("{p}.{s}");
            let layer = Layer {
                norm: w.take(&name("norm.weight"), &[h])?,
                in_proj_w: w.take(&name("mixer.in_proj.weight"), &[2 * i, h])?,
                in_proj_b: if c.use_bias { Some(w.take(&name("mixer.in_proj.bias"), &[2 * i])?) } else { None },
                conv_w: w.take(&name("mixer.conv1d.weight"), &[i, 1, k])?,
                conv_b: if c.use_conv_bias { Some(w.take(&name("mixer.conv1d.bias"), &[i])?) } else { None },
                x_proj_w: w.take(&name("mixer.x_proj.weight"), &[r + 2 * n, i])?,
                dt_proj_w: w.take(&name("mixer.dt_proj.weight"), &[i, r])?,
                dt_proj_b: w.take(&name("mixer.dt_proj.bias"), &[i])?,
                a: -to_f32(w.take(&name("mixer.A_log"), &[i, n])?).exp(),
                d: to_f32(w.take(&name("mixer.D"), &[i])?),
                out_proj_w: w.take(&name("mixer.out_proj.weight"), &[h, i])?,
                out_proj_b: if c.use_bias { Some(w.take(&name("mixer.out_proj.bias"), &[h])?) } else { None },
            };
            for t in [&layer.norm, &layer.in_proj_w, &layer.conv_w, &layer.x_proj_w, &layer.dt_proj_w, &layer.dt_proj_b]
                .into_iter()
                .chain([&layer.a, &layer.d, &layer.out_proj_w])
                .chain(layer.in_proj_b.iter())
                .chain(layer.conv_b.iter())
                .chain(layer.out_proj_b.iter())
            {
                count(t);
            }
            layers.push(layer);
        }
        let norm_f = w.take("backbone.norm_f.weight", &[h])?;
        count(&norm_f);
        let lm_head = if c.tie_word_embeddings {
            // transformers ties the head to the embeddings, ignoring any stored `lm_head.weight`.
            w.remove("lm_head.weight");
            embeddings.shallow_clone()
        } else {
            let t = w.take("lm_head.weight", &[v, h])?;
            count(&t);
            t
        };
        w.warn_unused("Mamba");
        Ok(MambaModel {
            config,
            embeddings,
            layers,
            norm_f,
            lm_head,
            kind,
            device,
            weight_bytes,
            scan_mode: if device.is_cuda() { ScanMode::Doubling } else { ScanMode::Sequential },
            scan_block: 128,
        })
    }

    /// A fresh (all-zero) state for `batch` sequences.
    pub fn new_state(&self, batch: usize) -> MambaState {
        let c = &self.config;
        let (b, i) = (batch as i64, c.intermediate_size as i64);
        MambaState {
            conv: (0..c.num_hidden_layers).map(|_| Tensor::zeros([b, i, c.conv_kernel as i64], (self.kind, self.device))).collect(),
            ssm: (0..c.num_hidden_layers).map(|_| Tensor::zeros([b, i, c.state_size as i64], (Kind::Float, self.device))).collect(),
            tokens: 0,
        }
    }

    /// Bytes of the recurrent state for `batch` sequences (what [`MambaState::bytes`] reports).
    pub fn state_bytes(&self, batch: usize) -> usize {
        let c = &self.config;
        let per_layer = c.intermediate_size * (c.conv_kernel * self.kind.elt_size_in_bytes() + c.state_size * 4);
        batch * c.num_hidden_layers * per_layer
    }

    fn ids_tensor(&self, ids: &[u32]) -> Result<Tensor> {
        super::ids_tensor(ids, self.config.vocab_size, self.device)
    }

    /// Runs `ids` (`[B, T]`) through the model from `state`, advancing it; returns the final
    /// hidden states after `norm_f`, `[B, T, H]`.
    fn run(&self, ids: &Tensor, state: &mut MambaState) -> Result<Tensor> {
        let c = &self.config;
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let expect = [b, c.intermediate_size as i64, c.conv_kernel as i64];
        if state.conv.len() != c.num_hidden_layers || state.ssm.len() != c.num_hidden_layers || state.conv[0].size() != expect {
            return Err(Error::InvalidArgument {
                what: "Mamba state",
                value: format!("{} layers, conv {:?}", state.conv.len(), state.conv.first().map(Tensor::size)),
                expected: format!("{} layers, conv {:?} (from new_state({b}))", c.num_hidden_layers, expect),
            });
        }
        let _g = tch::no_grad_guard();
        let mut x = Tensor::embedding(&self.embeddings, ids, -1, false, false);
        if c.residual_in_fp32 {
            x = x.to_kind(Kind::Float);
        }
        let block = self.scan_block.max(1) as i64;
        for (l, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &mut state.conv[l], &mut state.ssm[l], c, self.scan_mode, block);
        }
        state.tokens += t as usize;
        Ok(rms_norm(&x, &self.norm_f, c.layer_norm_epsilon, RmsScale::InWeightDtype))
    }

    fn logits(&self, h: &Tensor) -> Tensor {
        h.to_kind(self.kind).linear::<Tensor>(&self.lm_head, None).to_kind(Kind::Float)
    }

    /// Logits `[T, vocab]` (f32) for every position of `ids`, from an empty state.
    pub fn forward_full(&self, ids: &[u32]) -> Result<Tensor> {
        let mut state = self.new_state(1);
        self.forward_chunk(ids, &mut state)
    }

    /// Feeds `ids` on top of `state` (chunked prefill), returning logits `[T, vocab]` (f32).
    pub fn forward_chunk(&self, ids: &[u32], state: &mut MambaState) -> Result<Tensor> {
        let ids = self.ids_tensor(ids)?;
        let h = self.run(&ids, state)?;
        let _g = tch::no_grad_guard();
        Ok(self.logits(&h).squeeze_dim(0))
    }

    /// Consumes the prompt `ids` from an empty state: the logits after its last token `[vocab]`
    /// (f32; the LM head runs on that position only) and the state to decode from.
    pub fn prefill(&self, ids: &[u32]) -> Result<(Tensor, MambaState)> {
        let mut state = self.new_state(1);
        let ids = self.ids_tensor(ids)?;
        let h = self.run(&ids, &mut state)?;
        let _g = tch::no_grad_guard();
        let last = h.narrow(1, h.size()[1] - 1, 1);
        Ok((self.logits(&last).view([-1]), state))
    }

    /// One decoding step: feeds `token`, advancing `state`; returns the next-token logits `[vocab]`.
    pub fn forward_step(&self, token: u32, state: &mut MambaState) -> Result<Tensor> {
        let ids = self.ids_tensor(&[token])?;
        let h = self.run(&ids, state)?;
        let _g = tch::no_grad_guard();
        Ok(self.logits(&h).view([-1]))
    }

    /// Greedy decoding: exactly `n` new tokens after `ids` (argmax each step; no stop at EOS).
    pub fn greedy(&self, ids: &[u32], n: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return Ok(out);
        }
        let (mut logits, mut state) = self.prefill(ids)?;
        loop {
            let next = logits.argmax(-1, false).int64_value(&[]) as u32;
            out.push(next);
            if out.len() == n {
                return Ok(out);
            }
            logits = self.forward_step(next, &mut state)?;
        }
    }
}

impl RecurrentLm for MambaModel {
    fn family(&self) -> &'static str {
        "mamba"
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

    /// Per layer the conv window, then per layer the SSM state.
    fn new_state(&self) -> Result<RecurrentState> {
        let s = MambaModel::new_state(self, 1);
        let mut tensors = s.conv;
        tensors.extend(s.ssm);
        Ok(RecurrentState { tensors, tokens: s.tokens })
    }

    fn forward(&self, ids: &[u32], state: &mut RecurrentState, all_positions: bool) -> Result<Tensor> {
        let n = self.config.num_hidden_layers;
        if state.tensors.len() != 2 * n {
            return Err(Error::InvalidArgument {
                what: "Mamba state",
                value: format!("{} tensors", state.tensors.len()),
                expected: format!("{} (from new_state)", 2 * n),
            });
        }
        let input = self.ids_tensor(ids)?;
        let mut conv = std::mem::take(&mut state.tensors);
        let ssm = conv.split_off(n);
        let mut ms = MambaState { conv, ssm, tokens: state.tokens };
        let hidden = self.run(&input, &mut ms);
        state.tensors = ms.conv;
        state.tensors.extend(ms.ssm);
        state.tokens = ms.tokens;
        let h = hidden?;
        let _g = tch::no_grad_guard();
        let h = if all_positions { h } else { h.narrow(1, h.size()[1] - 1, 1) };
        Ok(self.logits(&h).squeeze_dim(0))
    }

    fn state_bytes(&self) -> u64 {
        MambaModel::state_bytes(self, 1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<MambaConfig> {
        MambaConfig::from_json_str(json, Path::new("/m/config.json"))
    }

    #[test]
    fn config_defaults_and_auto_rank() {
        let c = cfg(r#"{"model_type":"mamba","vocab_size":100,"hidden_size":40,"num_hidden_layers":2,"time_step_rank":"auto"}"#).unwrap();
        assert_eq!((c.intermediate_size, c.state_size, c.conv_kernel, c.time_step_rank), (80, 16, 4, 3));
        assert!(c.tie_word_embeddings && c.use_conv_bias && !c.use_bias && c.residual_in_fp32);
    }

    #[test]
    fn config_errors_name_file_and_key() {
        let e = cfg(r#"{"vocab_size":100,"num_hidden_layers":2}"#).unwrap_err().to_string();
        assert!(e.contains("/m/config.json") && e.contains("`hidden_size`") && e.contains("missing"), "{e}");
        let e = cfg(r#"{"vocab_size":100,"hidden_size":8,"num_hidden_layers":2,"time_step_rank":"big"}"#).unwrap_err().to_string();
        assert!(e.contains("`time_step_rank`"), "{e}");
        let e = cfg(r#"{"model_type":"mamba2","vocab_size":100,"hidden_size":8,"num_hidden_layers":2}"#).unwrap_err().to_string();
        assert!(e.contains("`model_type`") && e.contains("mamba2"), "{e}");
    }

    #[test]
    fn doubling_scan_matches_sequential() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(3);
        for l in [1, 2, 5, 8, 13] {
            let a = Tensor::rand([l, 2, 3, 4], (Kind::Float, Device::Cpu));
            let b = Tensor::randn([l, 2, 3, 4], (Kind::Float, Device::Cpu));
            let h0 = Tensor::randn([2, 3, 4], (Kind::Float, Device::Cpu));
            let s = scan_sequential(&a, b.copy(), &h0);
            let d = scan_doubling(a.copy(), b.copy(), &h0);
            let mut h = h0.copy();
            for t in 0..l {
                h = a.get(t) * &h + b.get(t);
                assert!((&h - s.get(t)).abs().max().double_value(&[]) < 1e-5);
            }
            assert!((&s - &d).abs().max().double_value(&[]) < 1e-5, "l = {l}");
        }
    }
}
