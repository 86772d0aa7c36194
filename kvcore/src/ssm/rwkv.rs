//! RWKV-5 ("Eagle", v5.2) and RWKV-6 ("Finch", v6.0) World language models on libtorch, loaded from
//! the `.pth` checkpoints BlinkDL publishes (or a safetensors copy with the same tensor names), with
//! a fixed-size recurrent state, so these linear-time models can sit next to KV-cache methods.
//!
//! Per layer, with `x` the residual stream `[T, C]` and `prev(·)` the input shifted by one token
//! (the state's last token first):
//!
//! ```text
//! h          = layernorm1(x)
//! r,k,v,g,w  = token-shift mixes of h and prev(h), projected   // v6: data-dependent (LoRA) mixes and decay
//! per head:  y_t = r_t · (S + u ⊙ k_t ⊗ v_t);   S = diag(w_t) S + k_t ⊗ v_t      // S: [N, N], f32
//! x         += W_o (groupnorm_H(y) * silu(g))
//! h          = layernorm2(x)
//! x         += sigmoid(W_r h_r) * W_v relu(W_k h_k)^2                          // h_r, h_k: token-shift mixes
//! ```
//!
//! `w = exp(-exp(time_decay))` (v6: plus a LoRA of the input), `u = time_faaaa` (or
//! `exp(time_first)` in older files); the group norm uses eps 64e-5; the embedding table is
//! layer-normed by `blocks.0.ln0` once at load time; then `logits = head(layernorm_out(x))`.
//! The state per layer is what the reference keeps: the attention shift `[C]`, the WKV state
//! `[H, N, N]` and the feed-forward shift `[C]`. The recurrence runs token by token (three small
//! batched ops per token and layer), so time is linear in length. Parity with BlinkDL's `rwkv`
//! package is checked in `kvcore/tests/rwkv_parity.rs`.

use super::tensor_map::TensorMap;
use super::{RecurrentLm, RecurrentState};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The World vocabulary file a model directory carries (tokenized by
/// `kvformats::world_tokenizer::WorldTokenizer`).
pub const WORLD_VOCAB_FILE: &str = "rwkv_vocab_v20230424.txt";

/// Eps of the per-head group norm after the WKV (`ln_x`), as in the reference for v5.2 and v6.
const GROUP_NORM_EPS: f64 = 64e-5;
const LAYER_NORM_EPS: f64 = 1e-5;

/// The RWKV generation, from the tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwkvVersion {
    /// v5.2: fixed token-shift mixes, per-channel constant decay.
    V5,
    /// v6.0: data-dependent token shift and decay (low-rank adapters).
    V6,
}

/// The shapes of an RWKV model, read from the tensor shapes of its checkpoint (RWKV files carry
/// no config).
#[derive(Clone, Debug, PartialEq)]
pub struct RwkvConfig {
    pub version: RwkvVersion,
    pub vocab_size: usize,
    /// C, `n_embd`.
    pub hidden_size: usize,
    /// A, the attention width (`dim_att`; equal to C in every RWKV-5/6 model, and required so).
    pub attention_size: usize,
    /// F, the feed-forward width (`dim_ffn`).
    pub ffn_size: usize,
    pub num_layers: usize,
    /// H; the head size is `attention_size / num_heads`.
    pub num_heads: usize,
    /// v6: rank of the token-shift LoRA (`time_maa_w1` is `[C, 5 * rank]`); 0 for v5.
    pub mix_rank: usize,
    /// v6: rank of the decay LoRA (`time_decay_w1` is `[C, rank]`); 0 for v5.
    pub decay_rank: usize,
    /// The file stores `time_faaaa` (the bonus `u` itself) rather than `time_first` (`ln u`).
    pub faaaa: bool,
    /// The file carries a tuned initial state per layer (`att.time_state`).
    pub time_state: bool,
}

impl RwkvConfig {
    pub fn head_size(&self) -> usize {
        self.attention_size / self.num_heads
    }

    /// Infers the configuration from tensor names and shapes; `file` names the source in errors.
    pub fn from_shapes(shapes: &HashMap<String, Vec<i64>>, file: &Path) -> Result<Self> {
        let err = |key: &str, problem: String| Error::Config { file: file.to_path_buf(), key: key.into(), problem };
        let shape = |name: &str| shapes.get(name).ok_or_else(|| Error::MissingTensor { file: file.to_path_buf(), tensor: name.into() });
        // Size-1 dims are layout only (the reference squeezes `time_*` tensors).
        let dims = |name: &str| -> Result<Vec<usize>> { Ok(shape(name)?.iter().filter(|&&d| d != 1).map(|&d| d as usize).collect()) };
        let matrix = |name: &str| -> Result<(usize, usize)> {
            match shape(name)?.as_slice() {
                &[a, b] if a > 0 && b > 0 => Ok((a as usize, b as usize)),
                other => Err(err(name, format!("shape {other:?}, expected a non-empty matrix"))),
            }
        };
        let has = |suffix: &str| shapes.keys().any(|k| k.ends_with(suffix));
        let version = if has(".time_maa_x") {
            RwkvVersion::V6
        } else if has(".ln_x.weight") && has(".att.gate.weight") {
            RwkvVersion::V5
        } else {
            return Err(err(
                "blocks.0.att",
                "neither RWKV-6 (`time_maa_x`) nor RWKV-5.2 (`ln_x` and `gate`): RWKV-4 and v5.0/5.1 files are not supported".into(),
            ));
        };
        let num_layers = shapes
            .keys()
            .filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map(|l| l + 1)
            .ok_or_else(|| err("blocks", "no `blocks.N.*` tensors".into()))?;
        let (vocab_size, hidden_size) = matrix("emb.weight")?;
        let (attention_size, c) = matrix("blocks.0.att.key.weight")?;
        if c != hidden_size || attention_size != hidden_size {
            // The reference splits heads by n_embd, so a wider attention is not a model it runs.
            return Err(err(
                "blocks.0.att.key.weight",
                format!("shape [{attention_size}, {c}], expected [{hidden_size}, {hidden_size}] (attention width = n_embd)"),
            ));
        }
        let (ffn_size, _) = matrix("blocks.0.ffn.key.weight")?;
        let faaaa = has(".att.time_faaaa");
        let first = if faaaa { "blocks.0.att.time_faaaa" } else { "blocks.0.att.time_first" };
        let num_heads = match shape(first)?.as_slice() {
            &[h, n] if h > 0 && (h * n) as usize == attention_size => h as usize,
            other => return Err(err(first, format!("shape {other:?}, expected [heads, head size] covering {attention_size} channels"))),
        };
        let (mix_rank, decay_rank) = match version {
            RwkvVersion::V5 => {
                if dims("blocks.0.att.time_decay")? != [num_heads, attention_size / num_heads] {
                    return Err(err("blocks.0.att.time_decay", "expected [heads, head size] (v5.2); v5.0/5.1 files are not supported".into()));
                }
                (0, 0)
            }
            RwkvVersion::V6 => {
                let (_, m) = matrix("blocks.0.att.time_maa_w1")?;
                let (_, d) = matrix("blocks.0.att.time_decay_w1")?;
                if m % 5 != 0 {
                    return Err(err("blocks.0.att.time_maa_w1", format!("{m} columns, expected 5 × rank")));
                }
                (m / 5, d)
            }
        };
        Ok(RwkvConfig {
            version,
            vocab_size,
            hidden_size,
            attention_size,
            ffn_size,
            num_layers,
            num_heads,
            mix_rank,
            decay_rank,
            faaaa,
            time_state: has(".att.time_state"),
        })
    }
}

/// The token-shift mixes of the attention block.
enum AttentionMix {
    /// v5: `h * mix + prev * (1 - mix)` for k, v, r, g (each `[C]`, with `1 - mix` kept).
    V5 { mix: [(Tensor, Tensor); 4] },
    /// v6: `h + (prev - h) * (maa_i + lora_i(h + (prev - h) * maa_x))` for w, k, v, r, g.
    V6 {
        maa_x: Tensor,
        /// `[5, C]`: w, k, v, r, g.
        maa: Tensor,
        /// `[C, 5 R]`.
        w1: Tensor,
        /// `[5, R, C]`.
        w2: Tensor,
        /// `[C, D]`, `[D, A]`.
        decay_w1: Tensor,
        decay_w2: Tensor,
    },
}

struct Layer {
    ln1: (Tensor, Tensor),
    ln2: (Tensor, Tensor),
    mix: AttentionMix,
    /// v5: `exp(-exp(time_decay))` `[A]`; v6: `time_decay` `[A]` (the input's LoRA is added). f32.
    decay: Tensor,
    /// The bonus `u`, f32 `[H, N]`.
    bonus: Tensor,
    receptance: Tensor,
    key: Tensor,
    value: Tensor,
    gate: Tensor,
    output: Tensor,
    /// Group norm weight and bias, f32 `[A]`.
    ln_x: (Tensor, Tensor),
    /// Feed-forward token-shift mixes for k and r: v5 `(mix, Some(1 - mix))`, v6 `(maa, None)`.
    ffn_mix_k: (Tensor, Option<Tensor>),
    ffn_mix_r: (Tensor, Option<Tensor>),
    ffn_key: Tensor,
    ffn_receptance: Tensor,
    ffn_value: Tensor,
    /// The tuned initial WKV state `[H, N(k), N(v)]`, f32, when the file has one.
    time_state: Option<Tensor>,
}

/// An RWKV-5.2 or RWKV-6 causal language model.
pub struct RwkvModel {
    pub config: RwkvConfig,
    /// `emb.weight` layer-normed by `blocks.0.ln0`.
    embeddings: Tensor,
    layers: Vec<Layer>,
    ln_out: (Tensor, Tensor),
    head: Tensor,
    pub kind: Kind,
    pub device: Device,
    pub weight_bytes: usize,
}

fn layer_norm(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Tensor {
    x.layer_norm([x.size()[1]], Some(w), Some(b), LAYER_NORM_EPS, false)
}

/// `[T, C]` → the previous token's row for each row: `shift` (`[C]`) first, then `x[..T-1]`;
/// `shift` becomes `x[T-1]`.
fn token_shift(x: &Tensor, shift: &mut Tensor) -> Tensor {
    let t = x.size()[0];
    let prev = Tensor::cat(&[shift.unsqueeze(0), x.narrow(0, 0, t - 1)], 0);
    *shift = x.get(t - 1).copy();
    prev
}

impl Layer {
    /// One block over `x` `[T, C]`, advancing the state tensors in place.
    fn forward(&self, x: &Tensor, att_shift: &mut Tensor, wkv: &mut Tensor, ffn_shift: &mut Tensor, cfg: &RwkvConfig) -> Tensor {
        let (h, n) = (cfg.num_heads as i64, cfg.head_size() as i64);
        let t = x.size()[0];

        // Time mixing.
        let xx = layer_norm(x, &self.ln1);
        let prev = token_shift(&xx, att_shift);
        let (wx, kx, vx, rx, gx) = match &self.mix {
            AttentionMix::V5 { mix } => {
                let m = |(a, b): &(Tensor, Tensor)| &xx * a + &prev * b;
                (None, m(&mix[0]), m(&mix[1]), m(&mix[2]), m(&mix[3]))
            }
            AttentionMix::V6 { maa_x, maa, w1, w2, .. } => {
                let sx = &prev - &xx;
                let lora = (&xx + &sx * maa_x).matmul(w1).tanh().view([t, 5, -1]).transpose(0, 1).bmm(w2); // [5, T, C]
                let m = |i: i64| &xx + &sx * (maa.get(i) + lora.get(i));
                (Some(m(0)), m(1), m(2), m(3), m(4))
            }
        };
        let f32 = |x: &Tensor, w: &Tensor| x.linear::<Tensor>(w, None).to_kind(Kind::Float);
        let r = f32(&rx, &self.receptance);
        let k = f32(&kx, &self.key);
        let v = f32(&vx, &self.value);
        let g = gx.linear::<Tensor>(&self.gate, None).silu();
        let decay = match (&self.mix, wx) {
            (AttentionMix::V6 { decay_w1, decay_w2, .. }, Some(wx)) => {
                (&self.decay + wx.matmul(decay_w1).tanh().matmul(decay_w2).to_kind(Kind::Float)).exp().neg().exp().view([t, h, n, 1])
            }
            _ => self.decay.view([1, h, n, 1]).expand([t, h, n, 1], false),
        };

        // The WKV recurrence, one token at a time; the bonus term for all tokens at once.
        let rt = r.view([t, h, 1, n]);
        let kt = k.view([t, h, n, 1]);
        let vt = v.view([t, h, 1, n]);
        let ys = Tensor::empty([t, h, 1, n], (Kind::Float, x.device()));
        for i in 0..t {
            let _ = rt.get(i).bmm_out(&ys.get(i), wkv);
            let _ = wkv.g_mul_(&decay.get(i));
            let _ = wkv.baddbmm_(&kt.get(i), &vt.get(i));
        }
        let bonus = (&r * self.bonus.view([1, -1]) * &k).view([t, h, n]).sum_dim_intlist(-1, true, Kind::Float) * v.view([t, h, n]);
        let y = (ys.view([t, h, n]) + bonus).view([t, -1]);
        let y = y.group_norm(h, Some(&self.ln_x.0), Some(&self.ln_x.1), GROUP_NORM_EPS, false);
        let x = x + (y.to_kind(x.kind()) * g).linear::<Tensor>(&self.output, None);

        // Channel mixing.
        let xx = layer_norm(&x, &self.ln2);
        let prev = token_shift(&xx, ffn_shift);
        let (kx, rx) = match (&self.ffn_mix_k, &self.ffn_mix_r) {
            ((mk, Some(ck)), (mr, Some(cr))) => (&xx * mk + &prev * ck, &xx * mr + &prev * cr),
            ((mk, _), (mr, _)) => {
                let sx = &prev - &xx;
                (&xx + &sx * mk, &xx + &sx * mr)
            }
        };
        let rr = rx.linear::<Tensor>(&self.ffn_receptance, None).sigmoid();
        let kk = kx.linear::<Tensor>(&self.ffn_key, None).relu().square();
        &x + rr * kk.linear::<Tensor>(&self.ffn_value, None)
    }
}

/// The one `*.pth` file in `dir`, if there is exactly one.
fn pth_file(dir: &Path) -> Result<Option<PathBuf>> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().is_some_and(|x| x == "pth") && p.is_file() {
            found.push(p);
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::File { file: dir.into(), problem: format!("{} .pth files; an RWKV model directory holds one", found.len()) }),
    }
}

/// Names and shapes of the tensors of a safetensors file (header only).
fn safetensors_shapes(path: &Path) -> Result<HashMap<String, Vec<i64>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only mapping, used only inside this function.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let header = kvformats::safetensors_header::read_header(&mmap, &path.display().to_string())
        .map_err(|e| Error::File { file: path.into(), problem: format!("not a valid safetensors file: {}: {}", e.key, e.problem) })?;
    Ok(header.tensors.iter().map(|t| (t.name.clone(), t.shape.iter().map(|&d| d as i64).collect())).collect())
}

/// A checkpoint file and the shape of each tensor in it, by name.
type CheckpointShapes = (PathBuf, HashMap<String, Vec<i64>>);

/// Where an RWKV directory keeps its weights, and their names and shapes (no tensor data read:
/// a `.pth`'s pickle, or a safetensors header).
fn checkpoint_shapes(dir: &Path) -> Result<Option<CheckpointShapes>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    if let Some(p) = pth_file(dir)? {
        let shapes = super::pth::read_index(&p)?.into_iter().map(|t| (t.name, t.shape)).collect();
        return Ok(Some((p, shapes)));
    }
    let st = dir.join("model.safetensors");
    if st.is_file() {
        let shapes = safetensors_shapes(&st)?;
        return Ok(Some((st, shapes)));
    }
    Ok(None)
}

/// The RWKV version of the checkpoint in `dir` (no `config.json`): its one `*.pth`, or a
/// `model.safetensors` with the same tensor names. Reads only the names of the tensors (the
/// `.pth`'s pickle, the safetensors header); None when they are not RWKV-5/6 names.
pub fn detect_version(dir: &Path) -> Result<Option<RwkvVersion>> {
    let Some((_, shapes)) = checkpoint_shapes(dir)? else { return Ok(None) };
    let has = |suffix: &str| shapes.keys().any(|k| k.ends_with(suffix));
    Ok(if has(".att.time_maa_x") {
        Some(RwkvVersion::V6)
    } else if has(".att.time_faaaa") || (has(".att.ln_x.weight") && has(".att.gate.weight")) {
        Some(RwkvVersion::V5)
    } else {
        None
    })
}

/// Removes `name` and checks it has `shape` up to size-1 dims (the reference squeezes them);
/// returns it in `shape`.
fn take_squeezed(w: &mut TensorMap, name: &str, shape: &[i64]) -> Result<Tensor> {
    let t = w.remove(name).ok_or_else(|| Error::MissingTensor { file: w.source().into(), tensor: name.into() })?;
    let got: Vec<i64> = t.size().into_iter().filter(|&d| d != 1).collect();
    let want: Vec<i64> = shape.iter().copied().filter(|&d| d != 1).collect();
    if got != want {
        return Err(Error::Tensor { file: w.source().into(), tensor: name.into(), problem: format!("shape {:?}, expected {:?}", t.size(), shape) });
    }
    Ok(t.reshape(shape))
}

impl RwkvModel {
    /// Loads the RWKV model in `dir`: its one `*.pth` (`torch.save` of the state dict, as
    /// published), or a `model.safetensors` with the same tensor names. Weights converted to
    /// `kind` on `device`. (The World vocabulary, [`WORLD_VOCAB_FILE`], sits next to it.)
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let (file, shapes) = checkpoint_shapes(dir)?.ok_or_else(|| Error::File {
            file: dir.into(),
            problem: "no RWKV checkpoint: expected one `*.pth`, or a `model.safetensors` with the same tensor names".into(),
        })?;
        let config = RwkvConfig::from_shapes(&shapes, &file)?;
        let w = if file.extension().is_some_and(|x| x == "pth") { super::pth::load_pth(&file, kind, device)? } else { TensorMap::load_dir(dir, kind, device)? };
        Self::from_tensors(config, w, kind, device)
    }

    /// Loads one `.pth` file.
    pub fn load_pth(path: &Path, kind: Kind, device: Device) -> Result<Self> {
        let shapes = super::pth::read_index(path)?.into_iter().map(|t| (t.name, t.shape)).collect();
        let config = RwkvConfig::from_shapes(&shapes, path)?;
        Self::from_tensors(config, super::pth::load_pth(path, kind, device)?, kind, device)
    }

    /// A model with random weights in plausible RWKV ranges (decays spread over channels, mixes
    /// in (0, 1)), for benchmarks that need no files. Seeds libtorch's global generator with `seed`.
    pub fn random(config: RwkvConfig, seed: i64, kind: Kind, device: Device) -> Result<Self> {
        let map = Self::random_tensors(&config, seed, device).into_iter().map(|(name, t)| (name, t.to_kind(kind))).collect();
        let config = RwkvConfig { faaaa: true, time_state: false, ..config };
        Self::from_tensors(config, TensorMap::from_map(map, "(random weights)"), kind, device)
    }

    /// The named f32 tensors of a random model in the published checkpoint layout (what
    /// [`random`](Self::random) builds from, and what `kvbench model init --arch rwkv6` saves).
    pub fn random_tensors(config: &RwkvConfig, seed: i64, device: Device) -> HashMap<String, Tensor> {
        let _g = tch::no_grad_guard();
        let _rng = super::seeded_rng(seed);
        let c = config;
        let (v, e, a, f, hh, n) =
            (c.vocab_size as i64, c.hidden_size as i64, c.attention_size as i64, c.ffn_size as i64, c.num_heads as i64, c.head_size() as i64);
        let opts = (Kind::Float, device);
        let normal = |shape: &[i64], std: f64| Tensor::randn(shape, opts) * std;
        let unit = |shape: &[i64]| Tensor::rand(shape, opts);
        let mut map = HashMap::new();
        let mut put = |name: String, t: Tensor| map.insert(name, t);
        put("emb.weight".into(), normal(&[v, e], 1e-2));
        put("blocks.0.ln0.weight".into(), Tensor::ones([e], opts));
        put("blocks.0.ln0.bias".into(), Tensor::zeros([e], opts));
        for l in 0..c.num_layers {
            let p = |s: &str| format!("blocks.{l}.{s}");
            for ln in ["ln1", "ln2"] {
                put(p(&format!("{ln}.weight")), Tensor::ones([e], opts));
                put(p(&format!("{ln}.bias")), Tensor::zeros([e], opts));
            }
            // Decay exponents from -6 (slow) to -1 (fast) across channels.
            let decay = Tensor::linspace(-6.0, -1.0, a, opts) + normal(&[a], 0.1);
            // Stored as the trainers do: [H, N] in v5.2, [1, 1, A] in v6.
            put(p("att.time_decay"), if c.version == RwkvVersion::V5 { decay.view([hh, n]) } else { decay.view([1, 1, a]) });
            put(p("att.time_faaaa"), normal(&[hh, n], 0.1) + 0.5);
            match c.version {
                RwkvVersion::V5 => {
                    for m in ["k", "v", "r", "g"] {
                        put(p(&format!("att.time_mix_{m}")), unit(&[1, 1, e]));
                    }
                    put(p("ffn.time_mix_k"), unit(&[1, 1, e]));
                    put(p("ffn.time_mix_r"), unit(&[1, 1, e]));
                }
                RwkvVersion::V6 => {
                    for m in ["x", "w", "k", "v", "r", "g"] {
                        put(p(&format!("att.time_maa_{m}")), unit(&[1, 1, e]));
                    }
                    put(p("att.time_maa_w1"), normal(&[e, 5 * c.mix_rank as i64], 1e-2));
                    put(p("att.time_maa_w2"), normal(&[5, c.mix_rank as i64, e], 1e-1));
                    put(p("att.time_decay_w1"), normal(&[e, c.decay_rank as i64], 1e-2));
                    put(p("att.time_decay_w2"), normal(&[c.decay_rank as i64, a], 1e-1));
                    put(p("ffn.time_maa_k"), unit(&[1, 1, e]));
                    put(p("ffn.time_maa_r"), unit(&[1, 1, e]));
                }
            }
            for m in ["receptance", "key", "value", "gate"] {
                put(p(&format!("att.{m}.weight")), normal(&[a, e], (e as f64).powf(-0.5)));
            }
            put(p("att.output.weight"), normal(&[e, a], (a as f64).powf(-0.5) / (c.num_layers as f64).sqrt()));
            put(p("att.ln_x.weight"), Tensor::ones([a], opts));
            put(p("att.ln_x.bias"), Tensor::zeros([a], opts));
            put(p("ffn.key.weight"), normal(&[f, e], (e as f64).powf(-0.5)));
            put(p("ffn.receptance.weight"), normal(&[e, e], (e as f64).powf(-0.5)));
            put(p("ffn.value.weight"), normal(&[e, f], (f as f64).powf(-0.5) / (c.num_layers as f64).sqrt()));
        }
        put("ln_out.weight".into(), Tensor::ones([e], opts));
        put("ln_out.bias".into(), Tensor::zeros([e], opts));
        put("head.weight".into(), normal(&[v, e], (e as f64).powf(-0.5)));
        map
    }

    fn from_tensors(config: RwkvConfig, mut w: TensorMap, kind: Kind, device: Device) -> Result<Self> {
        let _g = tch::no_grad_guard();
        let c = &config;
        let (v, e, a, f, h, n) =
            (c.vocab_size as i64, c.hidden_size as i64, c.attention_size as i64, c.ffn_size as i64, c.num_heads as i64, c.head_size() as i64);
        let f32 = |t: Tensor| t.to_kind(Kind::Float);
        let mut weight_bytes = 0usize;

        let ln0 = (w.take("blocks.0.ln0.weight", &[e])?, w.take("blocks.0.ln0.bias", &[e])?);
        let embeddings = layer_norm(&w.take("emb.weight", &[v, e])?, &ln0);
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = |s: &str| format!("blocks.{l}.{s}");
            let pair = |w: &mut TensorMap, s: &str| -> Result<(Tensor, Tensor)> {
                Ok((w.take(&p(&format!("{s}.weight")), &[e])?, w.take(&p(&format!("{s}.bias")), &[e])?))
            };
            let ln1 = pair(&mut w, "ln1")?;
            let ln2 = pair(&mut w, "ln2")?;
            let vec_c = |w: &mut TensorMap, s: &str| take_squeezed(w, &p(s), &[e]);
            let with_complement = |t: Tensor| {
                let one_minus = t.ones_like() - &t;
                (t, one_minus)
            };
            let (mix, decay, ffn_mix_k, ffn_mix_r) = match c.version {
                RwkvVersion::V5 => {
                    let mut m = Vec::with_capacity(4);
                    for s in ["att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_mix_g"] {
                        m.push(with_complement(vec_c(&mut w, s)?));
                    }
                    let mix: [(Tensor, Tensor); 4] = m.try_into().map_err(|_| Error::Other("four mixes".into()))?;
                    let decay = f32(take_squeezed(&mut w, &p("att.time_decay"), &[h, n])?).view([a]).exp().neg().exp();
                    let (k, ck) = with_complement(vec_c(&mut w, "ffn.time_mix_k")?);
                    let (r, cr) = with_complement(vec_c(&mut w, "ffn.time_mix_r")?);
                    (AttentionMix::V5 { mix }, decay, (k, Some(ck)), (r, Some(cr)))
                }
                RwkvVersion::V6 => {
                    let maa_x = vec_c(&mut w, "att.time_maa_x")?;
                    let mut m = Vec::with_capacity(5);
                    for s in ["att.time_maa_w", "att.time_maa_k", "att.time_maa_v", "att.time_maa_r", "att.time_maa_g"] {
                        m.push(vec_c(&mut w, s)?);
                    }
                    let (mr, dr) = (c.mix_rank as i64, c.decay_rank as i64);
                    let mix = AttentionMix::V6 {
                        maa_x,
                        maa: Tensor::stack(&m, 0),
                        w1: w.take(&p("att.time_maa_w1"), &[e, 5 * mr])?,
                        w2: w.take(&p("att.time_maa_w2"), &[5, mr, e])?,
                        decay_w1: w.take(&p("att.time_decay_w1"), &[e, dr])?,
                        decay_w2: w.take(&p("att.time_decay_w2"), &[dr, a])?,
                    };
                    let decay = f32(take_squeezed(&mut w, &p("att.time_decay"), &[a])?);
                    let k = vec_c(&mut w, "ffn.time_maa_k")?;
                    let r = vec_c(&mut w, "ffn.time_maa_r")?;
                    (mix, decay, (k, None), (r, None))
                }
            };
            let bonus = if c.faaaa { f32(w.take(&p("att.time_faaaa"), &[h, n])?) } else { f32(w.take(&p("att.time_first"), &[h, n])?).exp() };
            let time_state = if c.time_state { Some(f32(w.take(&p("att.time_state"), &[h, n, n])?).transpose(1, 2).contiguous()) } else { None };
            let layer = Layer {
                ln1,
                ln2,
                mix,
                decay,
                bonus,
                receptance: w.take(&p("att.receptance.weight"), &[a, e])?,
                key: w.take(&p("att.key.weight"), &[a, e])?,
                value: w.take(&p("att.value.weight"), &[a, e])?,
                gate: w.take(&p("att.gate.weight"), &[a, e])?,
                output: w.take(&p("att.output.weight"), &[e, a])?,
                ln_x: (f32(w.take(&p("att.ln_x.weight"), &[a])?), f32(w.take(&p("att.ln_x.bias"), &[a])?)),
                ffn_mix_k,
                ffn_mix_r,
                ffn_key: w.take(&p("ffn.key.weight"), &[f, e])?,
                ffn_receptance: w.take(&p("ffn.receptance.weight"), &[e, e])?,
                ffn_value: w.take(&p("ffn.value.weight"), &[e, f])?,
                time_state,
            };
            weight_bytes += layer.tensors().iter().map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum::<usize>();
            layers.push(layer);
        }
        let ln_out = (w.take("ln_out.weight", &[e])?, w.take("ln_out.bias", &[e])?);
        let head = w.take("head.weight", &[v, e])?;
        for t in [&embeddings, &ln_out.0, &ln_out.1, &head] {
            weight_bytes += t.numel() * t.kind().elt_size_in_bytes();
        }
        w.warn_unused("RWKV");
        Ok(RwkvModel { config, embeddings, layers, ln_out, head, kind, device, weight_bytes })
    }

    /// Feeds `ids` on top of `state` (from [`RecurrentLm::new_state`]), returning the hidden states
    /// after `ln_out`: `[T, C]`, or `[1, C]` for the last token only.
    fn run(&self, ids: &[u32], state: &mut RecurrentState, all_positions: bool) -> Result<Tensor> {
        let c = &self.config;
        let expected = 3 * c.num_layers;
        if state.tensors.len() != expected || state.tensors[1].size() != [c.num_heads as i64, c.head_size() as i64, c.head_size() as i64] {
            return Err(Error::InvalidArgument {
                what: "RWKV state",
                value: format!("{} tensors", state.tensors.len()),
                expected: format!("{expected} (per layer: attention shift, WKV state, feed-forward shift; from new_state)"),
            });
        }
        let input = super::ids_tensor(ids, c.vocab_size, self.device)?.squeeze_dim(0);
        let _g = tch::no_grad_guard();
        let mut x = self.embeddings.index_select(0, &input);
        for (l, layer) in self.layers.iter().enumerate() {
            let [att, wkv, ffn] = &mut state.tensors[3 * l..3 * l + 3] else { unreachable!("three state tensors per layer") };
            x = layer.forward(&x, att, wkv, ffn, c);
        }
        state.tokens += ids.len();
        if !all_positions {
            x = x.narrow(0, x.size()[0] - 1, 1);
        }
        Ok(layer_norm(&x, &self.ln_out))
    }
}

impl Layer {
    fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![
            &self.ln1.0,
            &self.ln1.1,
            &self.ln2.0,
            &self.ln2.1,
            &self.decay,
            &self.bonus,
            &self.receptance,
            &self.key,
            &self.value,
            &self.gate,
            &self.output,
        ];
        v.extend([&self.ln_x.0, &self.ln_x.1, &self.ffn_mix_k.0, &self.ffn_mix_r.0, &self.ffn_key, &self.ffn_receptance, &self.ffn_value]);
        match &self.mix {
            AttentionMix::V5 { mix } => v.extend(mix.iter().map(|m| &m.0)),
            AttentionMix::V6 { maa_x, maa, w1, w2, decay_w1, decay_w2 } => v.extend([maa_x, maa, w1, w2, decay_w1, decay_w2]),
        }
        v.extend(self.time_state.iter());
        v
    }
}

impl RecurrentLm for RwkvModel {
    fn family(&self) -> &'static str {
        match self.config.version {
            RwkvVersion::V5 => "rwkv5",
            RwkvVersion::V6 => "rwkv6",
        }
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn num_layers(&self) -> usize {
        self.config.num_layers
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn weight_bytes(&self) -> u64 {
        self.weight_bytes as u64
    }
    /// The World models end a text with token 0 (`<|endoftext|>`, no entry in the vocabulary file).
    fn eos_token_ids(&self) -> Vec<u32> {
        vec![0]
    }

    /// Per layer, as the reference orders them: the attention shift `[C]` (weights' dtype), the WKV
    /// state `[H, N, N]` (f32; the tuned `time_state` when the file has one, else zeros) and the
    /// feed-forward shift `[C]`.
    fn new_state(&self) -> Result<RecurrentState> {
        let c = &self.config;
        let (e, h, n) = (c.hidden_size as i64, c.num_heads as i64, c.head_size() as i64);
        let mut tensors = Vec::with_capacity(3 * c.num_layers);
        for layer in &self.layers {
            tensors.push(Tensor::zeros([e], (self.kind, self.device)));
            tensors.push(match &layer.time_state {
                Some(s) => s.copy(),
                None => Tensor::zeros([h, n, n], (Kind::Float, self.device)),
            });
            tensors.push(Tensor::zeros([e], (self.kind, self.device)));
        }
        Ok(RecurrentState { tensors, tokens: 0 })
    }

    fn forward(&self, ids: &[u32], state: &mut RecurrentState, all_positions: bool) -> Result<Tensor> {
        let h = self.run(ids, state, all_positions)?;
        let _g = tch::no_grad_guard();
        Ok(h.linear::<Tensor>(&self.head, None).to_kind(Kind::Float))
    }

    fn state_bytes(&self) -> u64 {
        let c = &self.config;
        let per_layer = 2 * c.hidden_size * self.kind.elt_size_in_bytes() + c.attention_size * c.head_size() * 4;
        (c.num_layers * per_layer) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6_shapes() -> HashMap<String, Vec<i64>> {
        let mut s = HashMap::new();
        for (k, v) in [
            ("emb.weight", vec![100, 32]),
            ("blocks.0.att.key.weight", vec![32, 32]),
            ("blocks.0.ffn.key.weight", vec![112, 32]),
            ("blocks.0.att.time_faaaa", vec![4, 8]),
            ("blocks.0.att.time_maa_x", vec![1, 1, 32]),
            ("blocks.0.att.time_maa_w1", vec![32, 40]),
            ("blocks.0.att.time_decay_w1", vec![32, 16]),
            ("blocks.1.ln1.weight", vec![32]),
        ] {
            s.insert(k.to_string(), v);
        }
        s
    }

    #[test]
    fn config_from_shapes() {
        let c = RwkvConfig::from_shapes(&v6_shapes(), Path::new("/m/x.pth")).unwrap();
        assert_eq!((c.version, c.vocab_size, c.hidden_size, c.ffn_size, c.num_layers, c.num_heads, c.head_size()), (RwkvVersion::V6, 100, 32, 112, 2, 4, 8));
        assert_eq!((c.mix_rank, c.decay_rank, c.faaaa, c.time_state), (8, 16, true, false));

        let mut bad = v6_shapes();
        bad.insert("blocks.0.att.time_faaaa".into(), vec![3, 8]);
        let e = RwkvConfig::from_shapes(&bad, Path::new("/m/x.pth")).unwrap_err().to_string();
        assert!(e.contains("/m/x.pth") && e.contains("time_faaaa"), "{e}");
        let mut v4 = v6_shapes();
        v4.remove("blocks.0.att.time_maa_x");
        let e = RwkvConfig::from_shapes(&v4, Path::new("/m/x.pth")).unwrap_err().to_string();
        assert!(e.contains("not supported"), "{e}");
    }
}
