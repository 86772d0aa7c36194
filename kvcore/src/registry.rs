//! The method registry: every compression method is registered by name, in-tree ones with a
//! `kvcache` [`MethodRegistration`] from their family crate under `plugins/` (linked through the
//! `kvplugins` facade), external ones by loading a `cdylib` ([`crate::plugin_ffi`]). Parameters
//! arrive as a TOML table and are read with `kvcache`'s typed getters ([`Params`]), which reject
//! unknown keys and out-of-range values with a message naming the method, the key and what is
//! allowed.

use kvcache::cache::CacheFactory;
pub use kvcache::error::MethodError;
pub use kvcache::params::{parse_settings, ParamDoc, Params};
pub use kvcache::registration::{builtin_scorer, BuildFn, MethodRegistration, ScorerFn};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

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
    /// sha256 of the plugin library the method comes from (`None`: built in).
    pub plugin_sha256: Option<String>,
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
            plugin_sha256: None,
            builder,
        };
        for reg in kvcache::registration::registrations() {
            let family = reg.family.strip_prefix("kvplugin-").unwrap_or(reg.family);
            r.insert(builtin(reg.name, family, reg.summary, reg.detail, reg.params, Builder::Builtin(reg)))?;
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
        let sha = crate::sources::sha256_file(path).map_err(|e| MethodError::Plugin { path: path.to_path_buf(), problem: format!("cannot hash: {e}") })?;
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
                plugin_sha256: Some(sha.clone()),
                builder: Builder::External(Arc::new(m)),
            })?;
        }
        Ok(names)
    }

    /// Every loaded plugin: (path, sha256, its methods), sorted by path.
    pub fn plugins(&self) -> Vec<(String, String, Vec<String>)> {
        let mut by: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for m in self.methods.values() {
            if let Some(h) = &m.plugin_sha256 {
                by.entry((m.origin.clone(), h.clone())).or_default().push(m.name.clone());
            }
        }
        by.into_iter().map(|((p, h), ms)| (p, h, ms)).collect()
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
