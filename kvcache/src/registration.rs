//! How a method makes itself known: a [`MethodRegistration`] submitted with `inventory::submit!`
//! (or, for scoring methods, `kvmethods::register_scorer!`, which writes it). The engine's
//! registry lists every registration linked into the binary, and a plugin's export table lists
//! the registrations linked into the plugin.

use crate::cache::CacheFactory;
use crate::error::MethodError;
use crate::params::ParamDoc;
use crate::scorer::Scorer;
use std::sync::Arc;

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

/// Every registration linked into this binary (or plugin), sorted by name.
pub fn registrations() -> Vec<&'static MethodRegistration> {
    let mut regs: Vec<&'static MethodRegistration> = inventory::iter::<MethodRegistration>.into_iter().collect();
    regs.sort_by_key(|r| r.name);
    regs
}

/// The scorer of the linked method `name` (for wrappers such as AdaKV), built with `params`.
pub fn builtin_scorer(wrapper: &str, name: &str, params: &toml::Table) -> Result<Arc<dyn Scorer>, MethodError> {
    let scorers: Vec<&MethodRegistration> = registrations().into_iter().filter(|r| r.scorer.is_some()).collect();
    match scorers.iter().find(|r| r.name == name).and_then(|r| r.scorer) {
        Some(f) => f(params),
        None => {
            let known: Vec<&str> = scorers.iter().map(|r| r.name).collect();
            Err(MethodError::NotAScorer { method: wrapper.to_string(), inner: name.to_string(), known: known.join(", ") })
        }
    }
}
