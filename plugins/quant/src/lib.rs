//! Quantized KV caches: `kivi` (Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for
//! KV Cache", ICML 2024, arXiv 2402.02750), `flexgen` (Sheng et al., "FlexGen", ICML 2023,
//! arXiv 2303.06865, as the paper's simulated 4-bit group quantization), and the simple
//! references `int8` and `int4`. The cache itself is `kvmethods::quantized::QuantCache`; eviction
//! methods reuse it through their `storage` parameter.
//!
//! These methods have no token budget (`ratio` does not apply): the compression comes from bits
//! per element. What each costs per token and KV head of `head_dim` D, with 16-bit scales and
//! minimums (a bf16/f16 cache; f32 parameters for an f32 cache):
//! KIVI-b: keys b + 32/G bits per element (per channel, G tokens per group), values the same (per
//! token, G channels per group), plus the full-precision residual (≤ R keys, R values);
//! FlexGen-b: b + 32/G per element for both; int8: 8 + 16/D; int4: 4 + 16/D.

use kvcache::cache::CacheFactory;
use kvcache::params::{ParamDoc, Params};
use kvcache::registration::MethodRegistration;
use kvcache::MethodError;
use kvmethods::quantized::{quant_config, QuantFactory};
use std::sync::Arc;

fn build_named(name: &str, t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new(name, t);
    let mut cfg = quant_config(name, &mut p)?;
    p.finish()?;
    cfg.name = name.to_string();
    Ok(Arc::new(QuantFactory(Arc::new(cfg))))
}

fn build_kivi(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    build_named("kivi", t)
}
fn build_flexgen(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    build_named("flexgen", t)
}
fn build_int8(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    build_named("int8", t)
}
fn build_int4(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    build_named("int4", t)
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "kivi",
        family: "quant",
        summary: "KIVI: keys per channel, values per token, 2/4-bit, full-precision residual (Liu et al. 2024)",
        detail: "Keys are quantized per channel in groups of group_size consecutive tokens, values per token in groups of \
                 group_size channels (asymmetric min-max, codes packed 4 or 2 per byte, f16 scales and minimums for a 16-bit \
                 cache). Prefill attends to the exact K/V; at its end keys [0, T - T mod R) and values [0, T - R) are \
                 quantized. While decoding, keys collect in a residual that is quantized as a block when it reaches R = \
                 residual_length tokens; values keep the newest R in full precision and quantize the oldest one as each new \
                 one arrives. Decoding attends block by block over the packed codes (no full dequantized copy). The paper \
                 runs G = 32, R = 128 (paper-protocol.md §2.2, §6). Measured on SmolLM2-135M after a 4,097-token prompt \
                 (scripts/measure_quant.sh): held bytes 4.99x below a bf16 full cache with bits = 2 and 3.09x with \
                 bits = 4 (7.21x and 4.99x below an f32 cache); perplexity on 1,024 tokens after a 2,048-token prefill \
                 +0.12% (bits = 4) and +16.2% (bits = 2) over the full cache. arXiv 2402.02750.",
        params: &[
            ParamDoc { name: "bits", default: "2", help: "bits per key and value code: 2 or 4" },
            ParamDoc { name: "group_size", default: "32", help: "tokens per key group (per channel) and channels per value group (per token)" },
            ParamDoc { name: "residual_length", default: "128", help: "full-precision recent tokens R (a multiple of group_size)" },
        ],
        build: build_kivi,
        scorer: None,
    }
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "flexgen",
        family: "quant",
        summary: "FlexGen-style per-token group quantization of all K/V, prefill included (the paper's 4-bit)",
        detail: "Keys and values are quantized per token in groups of group_size channels (asymmetric min-max), every token \
                 on arrival, and prefill queries already attend to the quantized K/V, as in the paper's FlexGen pipeline \
                 (paper-protocol.md §2.3). fake = true reproduces the paper's simulation exactly: the cache keeps the \
                 originals and fake-quantizes all of K and V at every step, so it saves no memory (its held bytes are the \
                 full cache's); fake = false stores packed codes for real. Zero-range groups decode to their value (the \
                 paper's code gives NaN there). Measured on SmolLM2-135M after a 4,097-token prompt (bits = 4, \
                 fake = false): held bytes 3.20x below a bf16 full cache (5.33x below f32); perplexity +6.0% over the full \
                 cache. arXiv 2303.06865.",
        params: &[
            ParamDoc { name: "bits", default: "4", help: "bits per code: 2, 4 or 8" },
            ParamDoc { name: "group_size", default: "32", help: "channels per group" },
            ParamDoc { name: "fake", default: "false", help: "simulate (keep originals, fake-quantize every step) as the paper did" },
        ],
        build: build_flexgen,
        scorer: None,
    }
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "int8",
        family: "quant",
        summary: "symmetric int8 per token and head (llama.cpp q8_0-like), a simple reference",
        detail: "Each token's key and value of each KV head is quantized symmetrically to 8 bits with one scale over its \
                 head_dim channels (scale = max|x|/127). Prefill attends to the exact K/V; everything is quantized at the end \
                 of prefill, and each decoded token before it is attended to. Measured on SmolLM2-135M after a 4,097-token \
                 prompt: held bytes 1.94x below a bf16 full cache (3.77x below f32); perplexity +0.21% over the full cache \
                 (1,024 tokens after a 2,048-token prefill).",
        params: &[],
        build: build_int8,
        scorer: None,
    }
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "int4",
        family: "quant",
        summary: "symmetric int4 per token and head, a simple reference",
        detail: "As int8 with 4-bit codes (scale = max|x|/7, two codes per byte). Measured on SmolLM2-135M after a \
                 4,097-token prompt: held bytes 3.77x below a bf16 full cache (7.11x below f32); perplexity +32.3% over the \
                 full cache (per-token scales suffer from SmolLM2's outlier key channels).",
        params: &[],
        build: build_int4,
        scorer: None,
    }
}
