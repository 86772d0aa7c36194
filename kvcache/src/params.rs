//! Method parameters: the budget every compressing method takes ([`Budget`]), how query-head
//! scores are combined per KV head ([`GqaAgg`]), and typed access to a method's TOML table
//! ([`Params`]) that rejects unknown keys and out-of-range values with a message naming the
//! method, the key and what is allowed. [`typed`] reads a whole `#[derive(Deserialize)]` struct
//! the same way.

use crate::error::MethodError;
use serde::de::{DeserializeOwned, Visitor};
use tch::{Kind, Tensor};

/// A method's parameter, for `kvbench methods --detail`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ParamDoc {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// How many tokens a method keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Keep 1/N of the context (N ≥ 1; 1 = no compression).
    Ratio(f64),
    /// Keep this many tokens per head.
    Tokens(usize),
    /// Keep `floor(f · S)` of an `S`-token context (0 < f ≤ 1): the paper's configs write their
    /// budgets this way (`compression_ratio: 0.17` at 6x), see [`Budget::paper`].
    Fraction(f64),
}

/// The fraction of the context the paper's configs keep at `ratio = N`: `1/N`, except that
/// `ratio = 6` is written 0.17 there (1/6 would give a 840-token budget for a 5,000-token
/// prompt where the paper's has 850).
pub fn paper_fraction(ratio: f64) -> f64 {
    if is_paper_6x(ratio) {
        0.17
    } else {
        1.0 / ratio.max(1.0)
    }
}

/// Whether `ratio` is the paper's 6x, the one budget its configs do not write as exactly 1/N.
fn is_paper_6x(ratio: f64) -> bool {
    (ratio - 6.0).abs() < 1e-9
}

impl Budget {
    /// Whether the budget never evicts.
    pub fn is_unbounded(&self) -> bool {
        matches!(self, Budget::Ratio(r) if *r <= 1.0) || matches!(self, Budget::Fraction(f) if *f >= 1.0)
    }
    /// The budget as the paper's configs give it: `ratio = 6` becomes `Fraction(0.17)` (see
    /// [`paper_fraction`]); every other budget is unchanged (the paper's 0.5, 0.25 and 0.125 are
    /// exactly 1/2, 1/4 and 1/8).
    pub fn paper(self) -> Budget {
        match self {
            Budget::Ratio(r) if is_paper_6x(r) => Budget::Fraction(paper_fraction(r)),
            other => other,
        }
    }
    /// Tokens to keep out of `len`.
    pub fn keep(&self, len: usize) -> usize {
        match *self {
            Budget::Ratio(r) if r <= 1.0 => len,
            Budget::Ratio(r) => ((len as f64 / r).floor() as usize).max(1).min(len),
            Budget::Tokens(k) => k.min(len),
            Budget::Fraction(f) if f >= 1.0 => len,
            Budget::Fraction(f) => ((len as f64 * f).floor() as usize).max(1).min(len),
        }
    }
    /// The kept fraction as a float (`1/N`), or `None` for an absolute budget.
    pub fn fraction(&self) -> Option<f64> {
        match *self {
            Budget::Ratio(r) => Some(1.0 / r.max(1.0)),
            Budget::Tokens(_) => None,
            Budget::Fraction(f) => Some(f.min(1.0)),
        }
    }
}

/// How scores of the query heads sharing a KV head are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GqaAgg {
    Mean,
    Max,
}

impl GqaAgg {
    /// `[B, Hq, S]` → `[B, Hkv, S]`.
    pub fn reduce(&self, scores: &Tensor, kv_heads: i64) -> Tensor {
        let (b, hq, s) = scores.size3().expect("scores are [B, Hq, S]");
        let g = scores.view([b, kv_heads, hq / kv_heads, s]);
        match self {
            GqaAgg::Mean => g.mean_dim(2, false, Kind::Float),
            GqaAgg::Max => g.amax(2, false),
        }
    }
}

/// Typed access to a method's parameter table; every key read is recorded so [`Params::finish`]
/// can reject the rest.
pub struct Params {
    method: String,
    table: toml::Table,
    accepted: Vec<&'static str>,
    /// The keys the table came with (read or not).
    given: Vec<String>,
}

impl Params {
    pub fn new(method: &str, table: &toml::Table) -> Self {
        Params { method: method.to_string(), table: table.clone(), accepted: Vec::new(), given: table.keys().cloned().collect() }
    }

    /// Whether the table set `key` (whether or not it has been read yet).
    pub fn was_given(&self, key: &str) -> bool {
        self.given.iter().any(|k| k == key)
    }

    /// A `BadParam` error for `key` of this method.
    pub fn refuse(&self, key: &str, value: &str, expected: &str) -> MethodError {
        MethodError::BadParam { method: self.method.clone(), key: key.to_string(), value: value.to_string(), expected: expected.to_string() }
    }

    fn bad(&self, key: &str, value: &toml::Value, expected: impl Into<String>) -> MethodError {
        self.refuse(key, &value.to_string(), &expected.into())
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
            Some(_) if has_ratio => Err(self.refuse("tokens", "(with ratio)", "either `ratio` or `tokens`, not both")),
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

    /// The method's own parameters as a `#[derive(Deserialize)]` struct: every remaining key that
    /// is one of `T`'s fields is read into it (fields missing from the table take `T`'s serde
    /// defaults); [`Params::finish`] then rejects any other key, listing `T`'s fields among the
    /// accepted ones. A value of the wrong type is refused naming its key.
    pub fn typed<T: DeserializeOwned>(&mut self) -> Result<T, MethodError> {
        let fields = struct_fields::<T>();
        self.accepted.extend(fields.iter().copied());
        let mut own = toml::Table::new();
        for f in fields {
            if let Some(v) = self.table.remove(*f) {
                own.insert(f.to_string(), v);
            }
        }
        toml::Value::Table(own.clone()).try_into::<T>().map_err(|whole| {
            // Name the first key that fails on its own (the others at their defaults).
            for (k, v) in &own {
                let one: toml::Table = [(k.clone(), v.clone())].into_iter().collect();
                if let Err(e) = toml::Value::Table(one).try_into::<T>() {
                    return self.bad(k, v, e.to_string().trim().to_string());
                }
            }
            MethodError::BadParam {
                method: self.method.clone(),
                key: fields.join(", "),
                value: toml::Value::Table(own.clone()).to_string(),
                expected: whole.to_string(),
            }
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

/// The field names of a `#[derive(Deserialize)]` struct: serde hands them to
/// `deserialize_struct`, which this probe records before refusing to produce a value.
pub fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("field names recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}
