//! The method registry: every compression method is registered by name, in-tree ones with
//! `inventory::submit!` from their family crate under `plugins/`, external ones by loading a
//! `cdylib` ([`crate::plugin_ffi`]). Parameters arrive as a TOML table and are read with typed
//! getters ([`Params`]) that reject unknown keys and out-of-range values with a message naming
//! the method, the key and what is allowed.

use crate::cache::CacheFactory;
use crate::methods::{Budget, GqaAgg, Scorer};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A method's parameter, for `kvbench methods --detail`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ParamDoc {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Builds a method's cache factory from its parameters.
pub type BuildFn = fn(&toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError>;
/// Builds a method's scorer (for wrappers such as AdaKV) from its parameters.
pub type ScorerFn = fn(&toml::Table) -> Result<Arc<dyn Scorer>, MethodError>;

/// An in-tree method, submitted with `inventory::submit!` by its family crate.
pub struct MethodRegistration {
    pub name: &'static str,
    /// The family crate (e.g. `snapkv`).
    pub family: &'static str,
    /// One line for `kvbench methods`.
    pub summary: &'static str,
    /// How the budget maps to the method's knobs, the paper reference, deviations.
    pub detail: &'static str,
    pub params: &'static [ParamDoc],
    pub build: BuildFn,
    /// The method's token scorer, when it is a scoring method other methods can wrap.
    pub scorer: Option<ScorerFn>,
}

inventory::collect!(MethodRegistration);

/// Why a method could not be found, configured or loaded.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error("unknown method `{name}` (known: {known})")]
    UnknownMethod { name: String, known: String },
    #[error("method `{method}`: unknown parameter `{key}` (accepted: {accepted})")]
    UnknownParam { method: String, key: String, accepted: String },
    #[error("method `{method}`: parameter `{key}` = {value}: expected {expected}")]
    BadParam { method: String, key: String, value: String, expected: String },
    #[error("method `{name}` is registered twice ({first} and {second})")]
    Duplicate { name: String, first: String, second: String },
    #[error("method `{method}` cannot wrap `{inner}`: it is not a scoring method (scorers: {known})")]
    NotAScorer { method: String, inner: String, known: String },
    #[error("--set {0}: expected key=value")]
    BadSetting(String),
    #[error("plugin {path}: {problem}")]
    Plugin { path: PathBuf, problem: String },
    #[error("plugin {path} was built for {field} {plugin}, but this kvbench has {host}; rebuild the plugin against this kvbench (same kvcore and libtorch)")]
    Incompatible { path: PathBuf, field: &'static str, plugin: String, host: String },
}

/// Typed access to a method's parameter table; every key read is recorded so [`Params::finish`]
/// can reject the rest.
pub struct Params {
    method: String,
    table: toml::Table,
    accepted: Vec<&'static str>,
}

impl Params {
    pub fn new(method: &str, table: &toml::Table) -> Self {
        Params { method: method.to_string(), table: table.clone(), accepted: Vec::new() }
    }

    fn bad(&self, key: &str, value: &toml::Value, expected: impl Into<String>) -> MethodError {
        MethodError::BadParam { method: self.method.clone(), key: key.to_string(), value: value.to_string(), expected: expected.into() }
    }

    /// An optional value of type `T`.
    pub fn opt<T: DeserializeOwned>(&mut self, key: &'static str, expected: &str) -> Result<Option<T>, MethodError> {
        self.accepted.push(key);
        match self.table.remove(key) {
            None => Ok(None),
            Some(v) => v.clone().try_into::<T>().map(Some).map_err(|_| self.bad(key, &v, expected)),
        }
    }

    /// A value of type `T` with a default.
    pub fn get<T: DeserializeOwned>(&mut self, key: &'static str, default: T, expected: &str) -> Result<T, MethodError> {
        Ok(self.opt(key, expected)?.unwrap_or(default))
    }

    /// A float in `[lo, hi]`.
    pub fn float(&mut self, key: &'static str, default: f64, lo: f64, hi: f64) -> Result<f64, MethodError> {
        let expected = format!("a number in [{lo}, {hi}]");
        let raw = self.table.get(key).cloned();
        let v = match raw {
            Some(toml::Value::Integer(i)) => {
                self.accepted.push(key);
                self.table.remove(key);
                i as f64
            }
            _ => self.get(key, default, &expected)?,
        };
        if !(lo..=hi).contains(&v) || v.is_nan() {
            return Err(self.bad(key, &toml::Value::Float(v), expected));
        }
        Ok(v)
    }

    /// An integer in `[lo, hi]`.
    pub fn int(&mut self, key: &'static str, default: usize, lo: usize, hi: usize) -> Result<usize, MethodError> {
        Ok(self.opt_int(key, lo, hi)?.unwrap_or(default))
    }

    /// An optional integer in `[lo, hi]`.
    pub fn opt_int(&mut self, key: &'static str, lo: usize, hi: usize) -> Result<Option<usize>, MethodError> {
        let expected = format!("an integer in [{lo}, {hi}]");
        let v: Option<i64> = self.opt(key, &expected)?;
        match v {
            None => Ok(None),
            Some(i) if i >= lo as i64 && i as u64 <= hi as u64 => Ok(Some(i as usize)),
            Some(i) => Err(self.bad(key, &toml::Value::Integer(i), expected)),
        }
    }

    /// A boolean.
    pub fn bool(&mut self, key: &'static str, default: bool) -> Result<bool, MethodError> {
        self.get(key, default, "true or false")
    }

    /// One of `choices`.
    pub fn choice(&mut self, key: &'static str, default: &str, choices: &[&str]) -> Result<String, MethodError> {
        let expected = format!("one of {}", choices.join(", "));
        let v: String = self.get(key, default.to_string(), &expected)?;
        if !choices.contains(&v.as_str()) {
            return Err(self.bad(key, &toml::Value::String(v), expected));
        }
        Ok(v)
    }

    /// The budget every eviction method takes: `ratio = N` (keep 1/N) or `tokens = K`.
    pub fn budget(&mut self, default_ratio: f64) -> Result<Budget, MethodError> {
        let has_ratio = self.table.contains_key("ratio");
        let tokens = self.opt_int("tokens", 1, usize::MAX >> 1)?;
        let ratio = self.float("ratio", default_ratio, 1.0, 1e6)?;
        match tokens {
            Some(_) if has_ratio => Err(MethodError::BadParam {
                method: self.method.clone(),
                key: "tokens".into(),
                value: "(with ratio)".into(),
                expected: "either `ratio` or `tokens`, not both".into(),
            }),
            Some(k) => Ok(Budget::Tokens(k)),
            None => Ok(Budget::Ratio(ratio)),
        }
    }

    /// How query-head scores are combined per KV head: `gqa = "mean" | "max"`.
    pub fn gqa(&mut self) -> Result<GqaAgg, MethodError> {
        Ok(match self.choice("gqa", "mean", &["mean", "max"])?.as_str() {
            "max" => GqaAgg::Max,
            _ => GqaAgg::Mean,
        })
    }

    /// The keys not read yet, taken out (for wrappers that hand them to an inner method).
    pub fn take_rest(&mut self) -> toml::Table {
        std::mem::take(&mut self.table)
    }

    /// Fails on any key that was not read.
    pub fn finish(self) -> Result<(), MethodError> {
        match self.table.keys().next() {
            None => Ok(()),
            Some(k) => {
                let mut acc = self.accepted.clone();
                acc.sort();
                acc.dedup();
                Err(MethodError::UnknownParam { method: self.method, key: k.clone(), accepted: acc.join(", ") })
            }
        }
    }
}

/// Reads the knobs every eviction method shares (`decode_evict`, `decode_interval`, `gqa`) into
/// `cfg`.
pub fn eviction_params(p: &mut Params, cfg: &mut crate::methods::EvictionConfig, decode_default: bool) -> Result<(), MethodError> {
    cfg.decode_evict = p.bool("decode_evict", decode_default)?;
    cfg.decode_interval = p.int("decode_interval", 1, 1, 1 << 20)?;
    cfg.gqa = p.gqa()?;
    cfg.storage = crate::quantized::storage_param(&cfg.name, p)?;
    Ok(())
}

/// The parameter docs of an eviction method: the shared knobs (with this method's
/// `decode_evict` default), then its own `(name, default, help)` triples.
#[macro_export]
macro_rules! eviction_param_docs {
    (decode_evict = $de:expr; $( ($n:expr, $d:expr, $h:expr) ),* $(,)?) => {
        &[
            $crate::registry::ParamDoc { name: "ratio", default: "4", help: "keep 1/N of the context tokens per head (the paper's N×); 1 = no compression" },
            $crate::registry::ParamDoc { name: "tokens", default: "(unset)", help: "keep this many tokens per head instead (absolute per-layer budget)" },
            $crate::registry::ParamDoc { name: "decode_evict", default: $de, help: "keep the cache at its budget while decoding" },
            $crate::registry::ParamDoc { name: "decode_interval", default: "1", help: "with decode_evict: evict every N decode steps" },
            $crate::registry::ParamDoc { name: "gqa", default: "mean", help: "combine query-head scores per KV head: mean or max" },
            $crate::registry::ParamDoc { name: "storage", default: "(none)", help: "keep the survivors quantized, e.g. {method = \"kivi\", bits = 2} (kivi, flexgen, int8, int4 and their parameters; needs decode_evict = false)" },
            $( $crate::registry::ParamDoc { name: $n, default: $d, help: $h } ),*
        ]
    };
}

/// Parses `key=value` settings (`--set`) into a TOML table; values are TOML (`4`, `true`,
/// `"x"`), and anything that is not valid TOML is taken as a string.
pub fn parse_settings(settings: &[String]) -> Result<toml::Table, MethodError> {
    let mut table = toml::Table::new();
    for s in settings {
        let (k, v) = s.split_once('=').ok_or_else(|| MethodError::BadSetting(s.clone()))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(MethodError::BadSetting(s.clone()));
        }
        let value = format!("v = {v}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(v.to_string()));
        table.insert(k.to_string(), value);
    }
    Ok(table)
}

/// A method as listed and built by the registry: in-tree or from an external plugin.
#[derive(Clone)]
pub struct MethodInfo {
    pub name: String,
    pub family: String,
    pub summary: String,
    pub detail: String,
    pub params: Vec<(String, String, String)>,
    /// `built-in` or the plugin's path.
    pub origin: String,
    builder: Builder,
}

#[derive(Clone)]
enum Builder {
    Builtin(&'static MethodRegistration),
    Prompt(&'static crate::prompt::PromptRegistration),
    External(Arc<crate::plugin_ffi::ExternalMethod>),
}

impl std::fmt::Debug for MethodInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodInfo").field("name", &self.name).field("origin", &self.origin).finish()
    }
}

impl MethodInfo {
    /// Builds the method's cache factory. A prompt compressor runs with the full cache (its
    /// parameters are checked here all the same).
    pub fn build(&self, params: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
        match &self.builder {
            Builder::Builtin(r) => (r.build)(params),
            Builder::Prompt(r) => {
                (r.build)(params)?;
                Ok(Arc::new(crate::cache::FullCacheFactory))
            }
            Builder::External(e) => e.build(params),
        }
    }
    /// The method's prompt compressor, if it is one (`None` for cache methods).
    pub fn build_prompt(&self, params: &toml::Table) -> Result<Option<Arc<dyn crate::prompt::PromptCompressor>>, MethodError> {
        match &self.builder {
            Builder::Prompt(r) => (r.build)(params).map(Some),
            _ => Ok(None),
        }
    }
    /// Whether the method compresses the prompt text rather than the cache.
    pub fn is_prompt(&self) -> bool {
        matches!(&self.builder, Builder::Prompt(_))
    }
    /// Whether the method can be wrapped as a scorer.
    pub fn is_scorer(&self) -> bool {
        matches!(&self.builder, Builder::Builtin(r) if r.scorer.is_some())
    }
}

/// All methods known to this process.
#[derive(Debug, Default)]
pub struct Registry {
    methods: BTreeMap<String, MethodInfo>,
}

impl Registry {
    /// The in-tree methods linked into this binary (fails if a name is registered twice).
    pub fn builtin() -> Result<Self, MethodError> {
        let mut r = Registry::default();
        let builtin = |name: &str, family: &str, summary: &str, detail: &str, params: &[ParamDoc], builder: Builder| MethodInfo {
            name: name.to_string(),
            family: family.to_string(),
            summary: summary.to_string(),
            detail: detail.to_string(),
            params: params.iter().map(|p| (p.name.to_string(), p.default.to_string(), p.help.to_string())).collect(),
            origin: "built-in".into(),
            builder,
        };
        for reg in inventory::iter::<MethodRegistration> {
            r.insert(builtin(reg.name, reg.family, reg.summary, reg.detail, reg.params, Builder::Builtin(reg)))?;
        }
        for reg in inventory::iter::<crate::prompt::PromptRegistration> {
            r.insert(builtin(reg.name, reg.family, reg.summary, reg.detail, reg.params, Builder::Prompt(reg)))?;
        }
        Ok(r)
    }

    fn insert(&mut self, m: MethodInfo) -> Result<(), MethodError> {
        if let Some(old) = self.methods.get(&m.name) {
            return Err(MethodError::Duplicate { name: m.name.clone(), first: old.origin.clone(), second: m.origin.clone() });
        }
        self.methods.insert(m.name.clone(), m);
        Ok(())
    }

    /// Loads an external plugin (`cdylib`) and registers its methods; returns their names.
    pub fn load_plugin(&mut self, path: &Path) -> Result<Vec<String>, MethodError> {
        self.load_plugin_checked(path, &crate::plugin_ffi::Handshake::host())
    }

    /// [`Registry::load_plugin`] against an explicit expected handshake (tests use it to check
    /// that a mismatch is refused).
    pub fn load_plugin_checked(&mut self, path: &Path, host: &crate::plugin_ffi::Handshake) -> Result<Vec<String>, MethodError> {
        let plugin = crate::plugin_ffi::load(path, host)?;
        let mut names = Vec::new();
        for m in plugin {
            names.push(m.name.clone());
            self.insert(MethodInfo {
                name: m.name.clone(),
                family: m.family.clone(),
                summary: m.summary.clone(),
                detail: m.detail.clone(),
                params: m.params.clone(),
                origin: path.display().to_string(),
                builder: Builder::External(Arc::new(m)),
            })?;
        }
        Ok(names)
    }

    /// Sorted method names.
    pub fn names(&self) -> Vec<String> {
        self.methods.keys().cloned().collect()
    }

    /// Every method, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &MethodInfo> {
        self.methods.values()
    }

    /// The method called `name`.
    pub fn get(&self, name: &str) -> Result<&MethodInfo, MethodError> {
        self.methods.get(name).ok_or_else(|| MethodError::UnknownMethod { name: name.to_string(), known: self.names().join(", ") })
    }

    /// Builds method `name` with `params`.
    pub fn build(&self, name: &str, params: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
        self.get(name)?.build(params)
    }

    /// The prompt compressor of method `name`, if it is one.
    pub fn build_prompt(&self, name: &str, params: &toml::Table) -> Result<Option<Arc<dyn crate::prompt::PromptCompressor>>, MethodError> {
        self.get(name)?.build_prompt(params)
    }
}

/// The scorer of in-tree method `name` (for wrappers such as AdaKV), built with `params`.
pub fn builtin_scorer(wrapper: &str, name: &str, params: &toml::Table) -> Result<Arc<dyn Scorer>, MethodError> {
    let scorers: Vec<&MethodRegistration> = inventory::iter::<MethodRegistration>.into_iter().filter(|r| r.scorer.is_some()).collect();
    match scorers.iter().find(|r| r.name == name).and_then(|r| r.scorer) {
        Some(f) => f(params),
        None => {
            let mut known: Vec<&str> = scorers.iter().map(|r| r.name).collect();
            known.sort();
            Err(MethodError::NotAScorer { method: wrapper.to_string(), inner: name.to_string(), known: known.join(", ") })
        }
    }
}
