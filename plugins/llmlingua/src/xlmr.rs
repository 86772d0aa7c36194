//! The XLM-RoBERTa token classifier LLMLingua-2 runs (transformers' `XLMRobertaForTokenClassification`):
//! word + position + token-type embeddings, post-LN BERT encoder layers, a linear head; loaded
//! from a Hugging Face directory's `config.json` and safetensors, f32 on any libtorch device.

use kvcore::error::{Error, Result};
use kvcore::weights::Weights;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The fields of an XLM-R `config.json` the encoder needs.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct XlmrConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    #[serde(default = "one")]
    pub type_vocab_size: i64,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "one")]
    pub pad_token_id: i64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub model_type: String,
}

fn one() -> i64 {
    1
}
fn eps() -> f64 {
    1e-5
}
fn gelu() -> String {
    "gelu".into()
}

struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    fn load(w: &mut Weights, prefix: &str, out: i64, inp: i64) -> Result<Self> {
        w.check_shape(&format!("{prefix}.weight"), &[out, inp])?;
        w.check_shape(&format!("{prefix}.bias"), &[out])?;
        Ok(Linear { w: w.take(&format!("{prefix}.weight"))?, b: w.take(&format!("{prefix}.bias"))? })
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, Some(&self.b))
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `{prefix}.weight`/`.bias` (or the old `gamma`/`beta` names).
    fn load(w: &mut Weights, prefix: &str, dim: i64, eps: f64) -> Result<Self> {
        let (wn, bn) = if w.names().contains(&format!("{prefix}.gamma").as_str()) {
            (format!("{prefix}.gamma"), format!("{prefix}.beta"))
        } else {
            (format!("{prefix}.weight"), format!("{prefix}.bias"))
        };
        w.check_shape(&wn, &[dim])?;
        w.check_shape(&bn, &[dim])?;
        Ok(LayerNorm { w: w.take(&wn)?, b: w.take(&bn)?, eps })
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let d = *x.size().last().expect("non-scalar");
        x.layer_norm([d], Some(&self.w), Some(&self.b), self.eps, false)
    }
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    inter: Linear,
    out: Linear,
    out_ln: LayerNorm,
}

/// `XLMRobertaForTokenClassification` in inference mode (dropout off).
pub struct XlmrTokenClassifier {
    pub config: XlmrConfig,
    pub num_labels: i64,
    pub device: Device,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    classifier: Linear,
    tanh_gelu: bool,
}

impl XlmrTokenClassifier {
    /// Loads `config.json` and `model.safetensors` (or a sharded index) from `dir`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: XlmrConfig =
            serde_json::from_str(&text).map_err(|e| Error::File { file: cfg_path.clone(), problem: format!("not an XLM-RoBERTa config: {e}") })?;
        if !config.model_type.is_empty() && !["xlm-roberta", "roberta", "bert"].contains(&config.model_type.as_str()) {
            return Err(Error::File { file: cfg_path, problem: format!("model_type `{}`: expected xlm-roberta", config.model_type) });
        }
        let tanh_gelu = match config.hidden_act.as_str() {
            "gelu" => false,
            "gelu_new" | "gelu_pytorch_tanh" => true,
            other => return Err(Error::File { file: cfg_path, problem: format!("hidden_act `{other}` is not supported (gelu, gelu_new)") }),
        };
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err(Error::File { file: cfg_path, problem: "hidden_size is not a multiple of num_attention_heads".into() });
        }
        let mut w = Weights::from_safetensors_dir(dir, Kind::Float, device)?;
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        // Checkpoints saved from the bare classifier carry the `roberta.` prefix.
        let p = if w.names().iter().any(|n| n.starts_with("roberta.")) { "roberta." } else { "" };
        w.check_shape(&format!("{p}embeddings.word_embeddings.weight"), &[config.vocab_size, h])?;
        w.check_shape(&format!("{p}embeddings.position_embeddings.weight"), &[config.max_position_embeddings, h])?;
        w.check_shape(&format!("{p}embeddings.token_type_embeddings.weight"), &[config.type_vocab_size, h])?;
        let word = w.take(&format!("{p}embeddings.word_embeddings.weight"))?;
        let position = w.take(&format!("{p}embeddings.position_embeddings.weight"))?;
        let token_type = w.take(&format!("{p}embeddings.token_type_embeddings.weight"))?;
        let emb_ln = LayerNorm::load(&mut w, &format!("{p}embeddings.LayerNorm"), h, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = format!("{p}encoder.layer.{i}");
            layers.push(Layer {
                q: Linear::load(&mut w, &format!("{l}.attention.self.query"), h, h)?,
                k: Linear::load(&mut w, &format!("{l}.attention.self.key"), h, h)?,
                v: Linear::load(&mut w, &format!("{l}.attention.self.value"), h, h)?,
                attn_out: Linear::load(&mut w, &format!("{l}.attention.output.dense"), h, h)?,
                attn_ln: LayerNorm::load(&mut w, &format!("{l}.attention.output.LayerNorm"), h, eps)?,
                inter: Linear::load(&mut w, &format!("{l}.intermediate.dense"), config.intermediate_size, h)?,
                out: Linear::load(&mut w, &format!("{l}.output.dense"), h, config.intermediate_size)?,
                out_ln: LayerNorm::load(&mut w, &format!("{l}.output.LayerNorm"), h, eps)?,
            });
        }
        let cw = w.take("classifier.weight")?;
        let num_labels = cw.size()[0];
        if cw.size() != [num_labels, h] {
            return Err(Error::Tensor {
                file: dir.into(),
                tensor: "classifier.weight".into(),
                problem: format!("shape {:?}, expected [labels, {h}]", cw.size()),
            });
        }
        w.check_shape("classifier.bias", &[num_labels])?;
        let classifier = Linear { w: cw, b: w.take("classifier.bias")? };
        Ok(XlmrTokenClassifier { config, num_labels, device, word, position, token_type, emb_ln, layers, classifier, tanh_gelu })
    }

    /// Grows the word-embedding matrix to `n` rows for tokens added to the tokenizer, filling the
    /// new rows with the mean of the existing ones (transformers' `resize_token_embeddings` draws
    /// them around that mean at random, which cannot be reproduced; the released LLMLingua-2
    /// models already hold their `[NEWi]` rows, so this only serves other checkpoints).
    pub fn resize_vocab(&mut self, n: i64) -> Result<()> {
        let old = self.config.vocab_size;
        if n <= old {
            return Ok(());
        }
        tracing::warn!("XLM-RoBERTa: the tokenizer has {n} tokens but the model {old} embeddings; the {} new rows are set to the mean embedding", n - old);
        let mean = self.word.mean_dim(0, true, Kind::Float).expand([n - old, self.config.hidden_size], false);
        self.word = Tensor::f_cat(&[&self.word, &mean], 0)?;
        self.config.vocab_size = n;
        Ok(())
    }

    /// Logits `[B, L, num_labels]` for `ids` `[B, L]` (i64) with `mask` `[B, L]` (nonzero = a real
    /// token; masked positions are ignored as keys). Positions follow transformers'
    /// `create_position_ids_from_input_ids`: tokens other than `<pad>` are numbered from
    /// `pad_token_id + 1`, `<pad>` tokens sit at `pad_token_id`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let ids = ids.to_device(self.device).to_kind(Kind::Int64);
        let mask = mask.to_device(self.device);
        let (b, l) = ids.size2()?;
        let pad = self.config.pad_token_id;
        if l + pad + 1 > self.config.max_position_embeddings {
            return Err(Error::Other(format!("XLM-RoBERTa: {l} tokens exceed the model's {} positions", self.config.max_position_embeddings - pad - 1)));
        }
        let not_pad = ids.ne(pad).to_kind(Kind::Int64);
        let positions = not_pad.cumsum(1, Kind::Int64) * &not_pad + pad;
        let types = Tensor::zeros([b, l], (Kind::Int64, self.device));
        let mut x = Tensor::f_embedding(&self.word, &ids, pad, false, false)? + Tensor::f_embedding(&self.token_type, &types, -1, false, false)?;
        x += Tensor::f_embedding(&self.position, &positions, pad, false, false)?;
        let mut x = self.emb_ln.forward(&x);
        let heads = self.config.num_attention_heads;
        let hd = self.config.hidden_size / heads;
        let keep = mask.ne(0).view([b, 1, 1, l]);
        for layer in &self.layers {
            let split = |t: Tensor| t.view([b, l, heads, hd]).transpose(1, 2);
            let q = split(layer.q.forward(&x));
            let k = split(layer.k.forward(&x));
            let v = split(layer.v.forward(&x));
            let a = Tensor::f_scaled_dot_product_attention(&q, &k, &v, Some(&keep), 0.0, false, None::<f64>, false)?;
            let a = a.transpose(1, 2).contiguous().view([b, l, self.config.hidden_size]);
            let h1 = layer.attn_ln.forward(&(layer.attn_out.forward(&a) + &x));
            let inter = layer.inter.forward(&h1).gelu(if self.tanh_gelu { "tanh" } else { "none" });
            x = layer.out_ln.forward(&(layer.out.forward(&inter) + &h1));
        }
        Ok(self.classifier.forward(&x))
    }
}
