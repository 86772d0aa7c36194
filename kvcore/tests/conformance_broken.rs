//! The conformance suite tested on deliberately broken methods: each must fail exactly the named
//! trial that covers its fault (and a correct method, the full cache wrapped the same way, must
//! pass them), so no trial of `kvcore::conformance` passes without checking.

mod common;

use kvcache::cache::{AttentionStep, CacheFactory, CacheSpec, FullCache, LayerCache};
use kvcache::MethodError;
use kvcore::conformance::{run_all, trials, Bench, Subject};
use std::sync::Arc;
use tch::Tensor;

/// What is wrong with a broken cache.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Claims a budget it ignores (keeps everything).
    IgnoresBudget,
    /// Reports half the bytes it holds.
    MisreportsBytes,
    /// Perturbs attention at ratio 1.
    DiffersAtRatio1,
    /// Declares no budget at all.
    DeclaresNoBudget,
}

struct Broken {
    inner: FullCache,
    fault: Fault,
    ratio: f64,
}

impl LayerCache for Broken {
    fn attend(&mut self, step: &AttentionStep<'_>) -> kvcache::Result<Tensor> {
        let out = self.inner.attend(step)?;
        Ok(if self.fault == Fault::DiffersAtRatio1 { out * 1.001 } else { out })
    }
    fn stored_tokens(&self) -> usize {
        self.inner.stored_tokens()
    }
    fn bytes_held(&self) -> u64 {
        let b = self.inner.bytes_held();
        if self.fault == Fault::MisreportsBytes {
            b / 2
        } else {
            b
        }
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn budget_tokens(&self) -> Option<usize> {
        match self.fault {
            Fault::DeclaresNoBudget => None,
            // Claims floor(S/N) of what it stores, but never evicts.
            _ if self.ratio > 1.0 => Some(((self.inner.stored_tokens() as f64 / self.ratio) as usize).max(1)),
            _ => Some(self.inner.stored_tokens()),
        }
    }
    fn kept_positions(&self) -> Vec<Vec<i64>> {
        self.inner.kept_positions()
    }
    fn held_tensors(&self) -> Vec<(&'static str, Tensor)> {
        self.inner.held_tensors()
    }
}

struct BrokenFactory(Fault, f64);

impl CacheFactory for BrokenFactory {
    fn name(&self) -> &str {
        "broken"
    }
    fn layer_cache(&self, _layer: usize, spec: &CacheSpec) -> kvcache::Result<Box<dyn LayerCache>> {
        Ok(Box::new(Broken { inner: FullCache::new(*spec), fault: self.0, ratio: self.1 }))
    }
}

fn subject(name: &str, fault: Fault) -> Subject {
    Subject {
        name: name.into(),
        family: "test".into(),
        params: vec![("ratio".into(), "4".into()), ("tokens".into(), "(unset)".into())],
        build: Arc::new(move |t: &toml::Table| -> Result<Arc<dyn CacheFactory>, MethodError> {
            let ratio =
                t.get("ratio").and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64))).unwrap_or(if t.contains_key("tokens") { 2.0 } else { 4.0 });
            Ok(Arc::new(BrokenFactory(fault, ratio)))
        }),
    }
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let test = libtest_mimic::Trial::test("broken-methods-fail-the-trials-that-cover-them", || {
        let bench = Bench::new(&common::smollm2_gguf()).map_err(|e| e.to_string())?;
        let subjects = [
            subject("ignores-budget", Fault::IgnoresBudget),
            subject("misreports-bytes", Fault::MisreportsBytes),
            subject("differs-at-ratio1", Fault::DiffersAtRatio1),
            subject("declares-no-budget", Fault::DeclaresNoBudget),
        ];
        let outcomes = run_all(&bench, trials(&subjects), |_| {});
        let failed = |name: &str| outcomes.iter().find(|o| o.name == name).map(|o| o.result.is_err());
        let mut problems = Vec::new();
        for (trial, want_fail) in [
            ("ignores-budget/ratio=4/budget", true),
            ("ignores-budget/tokens=10/budget", true),
            ("ignores-budget/ratio4/fewer-bytes", true),
            ("ignores-budget/ratio=4/bytes", false),
            ("ignores-budget/ratio1/identical-to-full", false),
            ("misreports-bytes/default/bytes", true),
            ("misreports-bytes/default/positions", false),
            ("differs-at-ratio1/ratio1/identical-to-full", true),
            ("differs-at-ratio1/default/deterministic", false),
            ("differs-at-ratio1/default/finite", false),
            ("declares-no-budget/ratio=4/budget", true),
        ] {
            match failed(trial) {
                None => problems.push(format!("no trial named {trial}")),
                Some(f) if f != want_fail => {
                    problems.push(format!("{trial}: {} but should {}", if f { "failed" } else { "passed" }, if want_fail { "fail" } else { "pass" }))
                }
                _ => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n").into())
        }
    });
    libtest_mimic::run(&args, vec![test]).exit();
}
