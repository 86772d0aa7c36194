//! Prompt compression: methods that shorten the prompt *text* before it is tokenized (LLMLingua-2,
//! Selective-Context), instead of compressing the KV cache. The model then runs with the full
//! cache over the shorter prompt, so the KV bytes follow from the compressed token count.
//!
//! A prompt compressor is registered like a cache method ([`PromptRegistration`], listed by
//! `kvbench methods`), takes `ratio = N` (keep about 1/N of the tokens) and is applied by the
//! runner to the part of a sample the paper compresses: LongBench's `context` field, or the whole
//! input for the needle task.

use kvcache::params::ParamDoc;
use kvcache::MethodError;
use std::sync::{Arc, Mutex};

/// What a compressor returns for one text.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CompressedPrompt {
    /// The compressed text (what the model will read in place of the original).
    pub text: String,
    /// Tokens of the original text, counted by the compressor's own tokenizer.
    pub original_tokens: usize,
    /// Tokens of the compressed text, same tokenizer.
    pub compressed_tokens: usize,
    /// Wall-clock seconds the compression took (model loading excluded).
    pub seconds: f64,
}

impl CompressedPrompt {
    /// `original_tokens / compressed_tokens` (0 for an empty result).
    pub fn ratio(&self) -> f64 {
        if self.compressed_tokens == 0 {
            0.0
        } else {
            self.original_tokens as f64 / self.compressed_tokens as f64
        }
    }
}

/// A text-level compressor.
pub trait PromptCompressor: Send + Sync {
    /// Registered method name.
    fn name(&self) -> &str;
    /// The target fraction of tokens kept (`1/N` for `ratio = N`).
    fn rate(&self) -> f64;
    /// Compresses `text` to about `rate()` of its tokens.
    fn compress(&self, text: &str) -> crate::Result<CompressedPrompt>;
    /// What decides this compressor's scores apart from its rate (its scorer model, device and
    /// settings): compressors with equal keys score a text identically, so one scoring pass
    /// serves all their rates ([`PromptCompressor::compress_rates`]). `None`: no sharing.
    fn scoring_key(&self) -> Option<String> {
        None
    }
    /// `text` compressed at each of `rates` from one scoring pass, each exactly what a
    /// compressor of that rate returns from [`PromptCompressor::compress`]; a result's
    /// `seconds` is the scoring plus its own selection. The default serves only its own rate.
    fn compress_rates(&self, text: &str, rates: &[f64]) -> crate::Result<Vec<CompressedPrompt>> {
        rates
            .iter()
            .map(|&r| {
                if r == self.rate() {
                    self.compress(text)
                } else {
                    Err(crate::Error::Unsupported(format!("{}: one scoring pass for several rates", self.name())))
                }
            })
            .collect()
    }
}

/// A compressor's own model (a scorer, a classifier), loaded once per process and shared by every
/// compressor instance that asks with the same `key`: a grid builds one instance per cell, and
/// each holding its own copy kept every copy resident for the whole run (28 Selective-Context
/// cells of one grid held 28 scorers, and the peak memory measured for the last of them counted
/// all of them). The model is freed when the last instance holding it drops.
///
/// `load` runs only when no live instance holds the model for `key` (keys of different types
/// never meet: the type is part of the key).
pub fn shared_model<T: Send + 'static>(key: &str, load: impl FnOnce() -> crate::Result<T>) -> crate::Result<Arc<Mutex<T>>> {
    type Entries = std::collections::HashMap<(std::any::TypeId, String), Box<dyn std::any::Any + Send>>;
    static LOADED: Mutex<Option<Entries>> = Mutex::new(None);
    let mut guard = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let entries = guard.get_or_insert_with(Default::default);
    entries.retain(|_, w| w.downcast_ref::<std::sync::Weak<Mutex<T>>>().is_none_or(|w| w.strong_count() > 0));
    let slot = (std::any::TypeId::of::<T>(), key.to_string());
    if let Some(live) = entries.get(&slot).and_then(|w| w.downcast_ref::<std::sync::Weak<Mutex<T>>>()).and_then(std::sync::Weak::upgrade) {
        return Ok(live);
    }
    let model = Arc::new(Mutex::new(load()?));
    entries.insert(slot, Box::new(Arc::downgrade(&model)));
    Ok(model)
}

/// Builds a prompt compressor from its parameters (loading any model lazily, on first use).
pub type PromptBuildFn = fn(&toml::Table) -> Result<Arc<dyn PromptCompressor>, MethodError>;

/// An in-tree prompt compressor, submitted with `inventory::submit!` by its family crate.
pub struct PromptRegistration {
    pub name: &'static str,
    pub family: &'static str,
    pub summary: &'static str,
    pub detail: &'static str,
    pub params: &'static [ParamDoc],
    pub build: PromptBuildFn,
}

inventory::collect!(PromptRegistration);

/// The `ratio = N` every prompt compressor takes, as a keep rate `1/N` (N in [1, 1000]).
pub fn rate_param(p: &mut kvcache::params::Params, default_ratio: f64) -> Result<f64, MethodError> {
    Ok(1.0 / p.float("ratio", default_ratio, 1.0, 1000.0)?)
}

#[cfg(test)]
mod tests {
    use super::shared_model;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn shared_model_loads_once_per_key_while_held_and_again_after_the_last_drop() {
        static LOADS: AtomicUsize = AtomicUsize::new(0);
        let load = |v: u32| {
            move || {
                LOADS.fetch_add(1, Ordering::SeqCst);
                Ok(v)
            }
        };
        let a = shared_model("test-scorer-a", load(1)).unwrap();
        let b = shared_model("test-scorer-a", load(2)).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same key gives the same loaded model");
        assert_eq!(*b.lock().unwrap(), 1, "the second caller's loader did not run");
        assert_eq!(LOADS.load(Ordering::SeqCst), 1);
        let c = shared_model("test-scorer-b", load(3)).unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "another key loads its own");
        assert_eq!(LOADS.load(Ordering::SeqCst), 2);
        // Another type under the same key is another model.
        let d = shared_model("test-scorer-a", || Ok(String::from("other type"))).unwrap();
        assert_eq!(*d.lock().unwrap(), "other type");
        drop((a, b));
        let again = shared_model("test-scorer-a", load(4)).unwrap();
        assert_eq!(*again.lock().unwrap(), 4, "freed when the last holder dropped, so loaded again");
        assert_eq!(LOADS.load(Ordering::SeqCst), 3);
        assert!(shared_model::<u32>("test-scorer-c", || Err(crate::Error::Unsupported("no".into()))).is_err(), "a failed load is returned, not cached");
        assert_eq!(*shared_model("test-scorer-c", load(5)).unwrap().lock().unwrap(), 5);
    }
}
