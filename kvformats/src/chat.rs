//! Renders a model's chat template (Jinja, as Hugging Face `transformers` runs it) so prompts are
//! formatted exactly as the model was trained to see them, from a GGUF file or an HF directory.
//!
//! The environment mirrors `transformers`' `apply_chat_template`: `trim_blocks` and
//! `lstrip_blocks`, Python string/dict methods (`.strip()`, `.items()`, ...), `raise_exception`,
//! a `tojson` filter that formats like Python's `json.dumps`, and `strftime_now`, pinned to
//! [`PINNED_DATE`] so renders are reproducible.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde_json::Value as Json;

/// The date `strftime_now` reports (a Friday, midnight), instead of the wall clock.
pub const PINNED_DATE: (i32, u32, u32) = (2024, 7, 26);

const TEMPLATE_NAME: &str = "chat_template";

/// The names [`ChatTemplate::builtin`] knows.
pub const BUILTIN_FORMATS: &[&str] = &["vicuna", "rwkv"];

/// The paper's RWKV prompt (longctx_bench `pipeline/model_utils.py::build_chat`, `"rwkv"`): a
/// hand-written first exchange, then the user's prompt, each line after a blank one indented by
/// the 16 spaces of the Python f-string it was written in.
pub const RWKV_PREAMBLE: &str = "User: hi\n\n                Assistant: Hi. I am your assistant and I will provide expert full response in full details. Please feel free to ask any question and I will always answer it.\n\n                User: ";
/// What follows the user's prompt in [`RWKV_PREAMBLE`]'s conversation.
pub const RWKV_SUFFIX: &str = "\n\n                Assistant:";
const RWKV_TEMPLATE: &str =
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ preamble + m['content'] + suffix }}{% else %}{{ m['content'] }}{% endif %}{% endfor %}";

/// fastchat `vicuna_v1.1` (`SeparatorStyle.ADD_COLON_TWO`, separators " " and "</s>"): the
/// system message and a space, then each turn as `ROLE: text` followed by the role's separator,
/// and `ASSISTANT:` with nothing after it for the turn to generate.
pub const VICUNA_SYSTEM: &str =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";
const VICUNA_TEMPLATE: &str = concat!(
    "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}",
    "{% else %}{% set system = \"",
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "\" %}{% set turns = messages %}{% endif %}",
    "{{ bos_token }}{{ system + ' ' }}",
    "{% for m in turns %}{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}{% else %}{{ 'ASSISTANT: ' + m['content'] + '</s>' }}{% endif %}{% endfor %}",
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
);

/// Everything that can go wrong loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: key {key:?}: {reason}", path.display())]
    BadConfig { path: PathBuf, key: String, reason: String },
    #[error("chat template does not parse: {0:#}")]
    Syntax(#[source] minijinja::Error),
    #[error("unknown built-in chat format `{name}` (known: {known})")]
    UnknownBuiltin { name: String, known: String },
    #[error("chat template failed to render: {0:#}")]
    Render(#[source] minijinja::Error),
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template with the BOS/EOS strings it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported here, not at render time.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(ChatError::Syntax)?;
        Ok(ChatTemplate { env, bos_token, eos_token })
    }

    /// Reads an HF `tokenizer_config.json`: `chat_template` may be a string or a list of
    /// `{name, template}` (the one named `default` is used); without it, a `chat_template.jinja`
    /// next to the file is used. `bos_token`/`eos_token` may be strings or `{content: ...}` objects.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self, ChatError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChatError::Io { path: path.into(), source })?;
        let config: Json = serde_json::from_str(&text).map_err(|source| ChatError::Json { path: path.into(), source })?;
        let bad = |key: &str, reason: &str| ChatError::BadConfig { path: path.into(), key: key.to_string(), reason: reason.to_string() };
        let special = |key: &str| -> Result<Option<String>, ChatError> {
            match config.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(Json::Object(o)) => match o.get("content") {
                    Some(Json::String(s)) => Ok(Some(s.clone())),
                    _ => Err(bad(key, "expected a string or an object with a string \"content\"")),
                },
                Some(_) => Err(bad(key, "expected a string or an object with a string \"content\"")),
            }
        };
        let source = match config.get("chat_template") {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(list)) => {
                let named = list.iter().find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
                let template = named
                    .and_then(|t| t.get("template"))
                    .and_then(Json::as_str)
                    .ok_or_else(|| bad("chat_template", "a list of templates must hold one named \"default\" with a string \"template\""))?;
                template.to_string()
            }
            None | Some(Json::Null) => {
                let jinja = path.with_file_name("chat_template.jinja");
                std::fs::read_to_string(&jinja).map_err(|_| bad("chat_template", "missing, and there is no chat_template.jinja next to the file"))?
            }
            Some(_) => return Err(bad("chat_template", "expected a string or a list of {name, template}")),
        };
        Self::new(&source, special("bos_token")?, special("eos_token")?)
    }

    /// A conversation format built into kvbench, by name, for checkpoints that ship no chat
    /// template but were evaluated with one. `vicuna`: fastchat's `vicuna_v1.1` conversation,
    /// which LongBench's `build_chat` and the paper use for LongChat:
    /// `<bos>{system} USER: {user} ASSISTANT: {assistant}</s>USER: {user} ASSISTANT:`, with
    /// fastchat's default system message unless the first message is a system one. `bos` is the
    /// BOS token's text (fastchat leaves it to the tokenizer, which prepends it).
    /// `rwkv`: the paper's hand-written RWKV conversation ([`RWKV_PREAMBLE`], the prompt,
    /// [`RWKV_SUFFIX`]) for a single user message.
    pub fn builtin(name: &str, bos_token: Option<String>) -> Result<Self, ChatError> {
        match name {
            "vicuna" => Self::new(VICUNA_TEMPLATE, bos_token, Some("</s>".into())),
            "rwkv" => {
                Self::new(&RWKV_TEMPLATE.replace("preamble", &format!("{RWKV_PREAMBLE:?}")).replace("suffix", &format!("{RWKV_SUFFIX:?}")), bos_token, None)
            }
            other => Err(ChatError::UnknownBuiltin { name: other.to_string(), known: BUILTIN_FORMATS.join(", ") }),
        }
    }

    /// Renders `messages`, ending with the assistant header when `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ChatError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(ChatError::Render)?;
        // Like transformers, an unset BOS/EOS is left undefined (renders as ""), not `None`.
        let mut ctx = std::collections::BTreeMap::<&str, Value>::new();
        ctx.insert("messages", messages.iter().map(|m| Value::from_object(MessageValue(m.clone()))).collect());
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        for (name, token) in [("bos_token", &self.bos_token), ("eos_token", &self.eos_token)] {
            if let Some(token) = token {
                ctx.insert(name, Value::from(token.as_str()));
            }
        }
        template.render(ctx).map_err(ChatError::Render)
    }
}

/// A message as the template sees it: a map whose keys keep Python's order (`role`, `content`),
/// so `message | tojson` and `message.items()` match transformers.
#[derive(Debug)]
struct MessageValue(ChatMessage);

impl Object for MessageValue {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from(out))
}

/// Writes `value` the way Python's `json.dumps` does: keys in insertion order, `", "`/`": "`
/// separators without indent, `","` and one item per line with it.
fn write_python_json(value: &Value, indent: Option<usize>, sort_keys: bool, depth: usize, out: &mut String) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    let scalar = |v: &Value| serde_json::to_string(v).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")));
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                // Python turns non-string keys into strings.
                let name = key.as_str().map_or_else(|| key.to_string(), str::to_string);
                out.push_str(&scalar(&Value::from(name))?);
                out.push_str(": ");
                write_python_json(&value.get_item(key)?, indent, sort_keys, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, sort_keys, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => out.push_str(&scalar(value)?),
    }
    Ok(())
}

/// `datetime.now().strftime(format)` with "now" pinned to [`PINNED_DATE`] at 00:00:00.
fn strftime_now(format: String) -> Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let (year, month, day) = PINNED_DATE;
    let month_name = MONTHS[(month - 1) as usize];
    let weekday = DAYS[4]; // 2024-07-26 is a Friday
    let day_of_year = 208; // 31+29+31+30+31+30 days before July, plus 26
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let spec = chars.next().ok_or_else(|| minijinja::Error::new(ErrorKind::InvalidOperation, "strftime_now: format ends with a lone '%'"))?;
        match spec {
            'Y' => out.push_str(&year.to_string()),
            'y' => out.push_str(&format!("{:02}", year % 100)),
            'm' => out.push_str(&format!("{month:02}")),
            'd' => out.push_str(&format!("{day:02}")),
            'e' => out.push_str(&format!("{day:>2}")),
            'j' => out.push_str(&format!("{day_of_year:03}")),
            'B' => out.push_str(month_name),
            'b' | 'h' => out.push_str(&month_name[..3]),
            'A' => out.push_str(weekday),
            'a' => out.push_str(&weekday[..3]),
            'H' | 'M' | 'S' => out.push_str("00"),
            'I' => out.push_str("12"),
            'p' => out.push_str("AM"),
            'F' => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            '%' => out.push('%'),
            other => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: unsupported directive %{other}"))),
        }
    }
    Ok(out)
}
