//! The RWKV "World" tokenizer (`rwkv_vocab_v20230424.txt`, 65,529 byte strings), so RWKV-5/6
//! World models can be fed and read without Python: greedy longest match over the bytes of the
//! UTF-8 text, the same rule as the reference `TRIE_TOKENIZER` of BlinkDL's `rwkv` package.
//!
//! Each line of the vocabulary file is `<id> <python literal> <byte length>`, the literal a `str`
//! (`'…'`/`"…"`, its UTF-8 bytes) or a `bytes` (`b'…'`) value. Id 0 has no line: the World
//! models use it as end-of-text, and it decodes to nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Everything that can be wrong with a vocabulary file.
#[derive(Debug, thiserror::Error)]
pub enum WorldTokenizerError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: line {line}: {problem}")]
    Line { path: PathBuf, line: usize, problem: String },
    #[error("{path}: {problem}")]
    Vocab { path: PathBuf, problem: String },
}

/// One trie node: children sorted by byte, and the token ending here, if any.
#[derive(Default)]
struct Node {
    children: Vec<(u8, u32)>,
    token: Option<u32>,
}

/// The World tokenizer: id ↔ bytes tables and a byte trie for greedy longest-match encoding.
pub struct WorldTokenizer {
    /// Index = id; `None` for ids without a line (0, gaps).
    id_to_bytes: Vec<Option<Vec<u8>>>,
    bytes_to_id: HashMap<Vec<u8>, u32>,
    nodes: Vec<Node>,
    /// Children of the root by byte, for the first step of every match.
    root: [u32; 256],
}

impl WorldTokenizer {
    /// Reads a vocabulary file such as `rwkv_vocab_v20230424.txt`.
    pub fn from_vocab_file(path: &Path) -> Result<Self, WorldTokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorldTokenizerError::Io { path: path.into(), source })?;
        Self::from_vocab_str(&text, path)
    }

    /// Parses vocabulary text; `path` names the source in errors.
    pub fn from_vocab_str(text: &str, path: &Path) -> Result<Self, WorldTokenizerError> {
        let mut entries: Vec<(u32, Vec<u8>)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let bad = |problem: String| WorldTokenizerError::Line { path: path.into(), line: n + 1, problem };
            let first = line.find(' ').ok_or_else(|| bad("expected `<id> <literal> <length>`".into()))?;
            let last = line.rfind(' ').filter(|&l| l > first).ok_or_else(|| bad("expected `<id> <literal> <length>`".into()))?;
            let id: u32 = line[..first].parse().map_err(|_| bad(format!("id `{}` is not a number", &line[..first])))?;
            let len: usize = line[last + 1..].trim().parse().map_err(|_| bad(format!("length `{}` is not a number", &line[last + 1..])))?;
            let bytes = parse_python_literal(line[first + 1..last].trim()).map_err(bad)?;
            if bytes.len() != len {
                return Err(bad(format!("the literal has {} bytes, the line says {len}", bytes.len())));
            }
            if bytes.is_empty() {
                return Err(bad("empty token".into()));
            }
            entries.push((id, bytes));
        }
        let max_id = entries.iter().map(|(id, _)| *id).max().ok_or_else(|| WorldTokenizerError::Vocab { path: path.into(), problem: "no tokens".into() })?;
        // The id table is sized by the largest id: a hostile line `4294967295 'x' 1` must not
        // allocate 100 GB. Real vocabularies are dense (65,529 lines, largest id 65,529).
        if max_id as usize > 2 * entries.len() + 1024 {
            return Err(WorldTokenizerError::Vocab {
                path: path.into(),
                problem: format!("id {max_id} with only {} tokens: ids must be (nearly) dense", entries.len()),
            });
        }
        let mut id_to_bytes: Vec<Option<Vec<u8>>> = vec![None; max_id as usize + 1];
        let mut bytes_to_id = HashMap::with_capacity(entries.len());
        for (id, bytes) in entries {
            if id_to_bytes[id as usize].is_some() {
                return Err(WorldTokenizerError::Vocab { path: path.into(), problem: format!("id {id} is defined twice") });
            }
            // As the reference: for a byte string listed twice, the later id wins.
            bytes_to_id.insert(bytes.clone(), id);
            id_to_bytes[id as usize] = Some(bytes);
        }

        let mut nodes = vec![Node::default()];
        for (bytes, &id) in &bytes_to_id {
            let mut at = 0usize;
            for &b in bytes {
                at = match nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => nodes[at].children[i].1 as usize,
                    Err(i) => {
                        let next = nodes.len();
                        nodes[at].children.insert(i, (b, next as u32));
                        nodes.push(Node::default());
                        next
                    }
                };
            }
            nodes[at].token = Some(id);
        }
        let mut root = [0u32; 256];
        for &(b, child) in &nodes[0].children {
            root[b as usize] = child;
        }
        // Greedy matching needs every single byte as a token, so any input can be encoded.
        if let Some(b) = (0..=255u8).find(|&b| !bytes_to_id.contains_key(&[b][..])) {
            return Err(WorldTokenizerError::Vocab { path: path.into(), problem: format!("no token for the single byte 0x{b:02x}") });
        }
        Ok(WorldTokenizer { id_to_bytes, bytes_to_id, nodes, root })
    }

    /// One more than the largest id with a token (65,530 for `rwkv_vocab_v20230424.txt`; the
    /// models' embedding tables have 65,536 rows).
    pub fn vocab_size(&self) -> usize {
        self.id_to_bytes.len()
    }

    /// Token ids of the UTF-8 bytes of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_bytes(text.as_bytes())
    }

    /// Token ids of `bytes`: at each position the longest token that matches (linear in the input,
    /// times the longest token, 128 bytes).
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let mut out = Vec::with_capacity(bytes.len() / 3 + 1);
        let mut pos = 0;
        while pos < bytes.len() {
            let mut node = self.root[bytes[pos] as usize] as usize;
            // Every single byte is a token (checked at load), so the first step always matches.
            let mut best = (pos + 1, self.nodes[node].token.expect("single-byte tokens are checked at load"));
            let mut end = pos + 1;
            while end < bytes.len() {
                let children = &self.nodes[node].children;
                match children.binary_search_by_key(&bytes[end], |c| c.0) {
                    Ok(i) => node = children[i].1 as usize,
                    Err(_) => break,
                }
                end += 1;
                if let Some(id) = self.nodes[node].token {
                    best = (end, id);
                }
            }
            out.push(best.1);
            pos = best.0;
        }
        out
    }

    /// The bytes of `ids` joined. Ids without a token (0, the end-of-text id, and ids past the
    /// vocabulary, which the models' larger embedding tables allow) add nothing.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if let Some(b) = self.id_to_token(id) {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// [`decode`](Self::decode) as text, invalid UTF-8 replaced by U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode(ids)).into_owned()
    }

    /// The id of the token whose bytes are exactly the UTF-8 of `token`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.bytes_to_id.get(token.as_bytes()).copied()
    }

    /// The bytes of token `id`, if it has one.
    pub fn id_to_token(&self, id: u32) -> Option<&[u8]> {
        self.id_to_bytes.get(id as usize).and_then(|b| b.as_deref())
    }
}

/// The value of a Python `str` or `bytes` literal, as bytes (a `str` as UTF-8): single or double
/// quotes, the `b` prefix, and the escapes Python knows except `\N{name}`. Unknown escapes stay as
/// written, as in Python.
fn parse_python_literal(lit: &str) -> Result<Vec<u8>, String> {
    let (is_bytes, rest) = match lit.strip_prefix('b').or_else(|| lit.strip_prefix('B')) {
        Some(r) => (true, r),
        None => (false, lit),
    };
    let quote = rest.chars().next().filter(|&q| q == '\'' || q == '"').ok_or_else(|| format!("`{lit}` is not a quoted literal"))?;
    let body = rest[1..].strip_suffix(quote).ok_or_else(|| format!("`{lit}` does not end with its opening quote"))?;
    if is_bytes && !body.is_ascii() {
        return Err(format!("`{lit}`: a bytes literal may only hold ASCII"));
    }
    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    let hex = |chars: &mut std::iter::Peekable<std::str::Chars>, n: usize| -> Result<u32, String> {
        let digits: String = (0..n).filter_map(|_| chars.next()).collect();
        if digits.len() != n || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("`{lit}`: bad escape digits `{digits}`"));
        }
        Ok(u32::from_str_radix(&digits, 16).expect("checked hex digits"))
    };
    let push_char = |out: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    while let Some(c) = chars.next() {
        if c == quote {
            return Err(format!("`{lit}`: unescaped quote inside the literal"));
        }
        if c != '\\' {
            push_char(&mut out, c);
            continue;
        }
        let e = chars.next().ok_or_else(|| format!("`{lit}`: ends in a lone backslash"))?;
        let simple = match e {
            '\\' => Some(b'\\'),
            '\'' => Some(b'\''),
            '"' => Some(b'"'),
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        let code = match e {
            '\n' => continue,
            'x' => hex(&mut chars, 2)?,
            '0'..='7' => {
                let mut v = e.to_digit(8).expect("octal digit");
                for _ in 0..2 {
                    match chars.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            v = v * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                v
            }
            'u' if !is_bytes => hex(&mut chars, 4)?,
            'U' if !is_bytes => hex(&mut chars, 8)?,
            'N' if !is_bytes => return Err(format!("`{lit}`: \\N{{…}} escapes are not supported")),
            other => {
                out.push(b'\\');
                push_char(&mut out, other);
                continue;
            }
        };
        if is_bytes {
            out.push(u8::try_from(code).map_err(|_| format!("`{lit}`: escape value {code} is not a byte"))?);
        } else {
            let c = char::from_u32(code).ok_or_else(|| format!("`{lit}`: U+{code:X} is not a character"))?;
            push_char(&mut out, c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals() {
        assert_eq!(parse_python_literal(r"'\x00'").unwrap(), vec![0]);
        assert_eq!(parse_python_literal(r"'\x80'").unwrap(), vec![0xc2, 0x80]); // str: U+0080
        assert_eq!(parse_python_literal(r"b'\x80'").unwrap(), vec![0x80]);
        assert_eq!(parse_python_literal(r#""it's""#).unwrap(), b"it's".to_vec());
        assert_eq!(parse_python_literal(r"'\'\\\n\t\r'").unwrap(), b"'\\\n\t\r".to_vec());
        assert_eq!(parse_python_literal(r"'\u4e2d'").unwrap(), "中".as_bytes().to_vec());
        assert_eq!(parse_python_literal(r"b'\u4e2d'").unwrap(), br"\u4e2d".to_vec());
        assert_eq!(parse_python_literal("'中文 '").unwrap(), "中文 ".as_bytes().to_vec());
        assert_eq!(parse_python_literal(r"'\q'").unwrap(), br"\q".to_vec());
        assert!(parse_python_literal("'abc").is_err());
        assert!(parse_python_literal(r"'\x4'").is_err());
    }

    #[test]
    fn longest_match_and_errors() {
        let mut vocab = String::new();
        for b in 0..=255u8 {
            vocab.push_str(&format!("{} b'\\x{b:02x}' 1\n", b as u32 + 1));
        }
        vocab.push_str("300 'ab' 2\n301 'abcd' 4\n302 'bc' 2\n");
        let t = WorldTokenizer::from_vocab_str(&vocab, Path::new("v.txt")).unwrap();
        let (a, c, d) = (b'a' as u32 + 1, b'c' as u32 + 1, b'd' as u32 + 1);
        // "abc": `ab` then `c` (greedy, no backtracking to `a` + `bc`).
        assert_eq!(t.encode("abc"), vec![300, c]);
        assert_eq!(t.encode("abcd"), vec![301]);
        assert_eq!(t.encode("abcabd"), vec![300, c, 300, d]);
        assert_eq!(t.encode("a"), vec![a]);
        assert_eq!(t.decode(&[0, 300, 9999, c]), b"abc".to_vec());
        assert_eq!(t.vocab_size(), 302 + 1);
        assert_eq!(t.token_to_id("bc"), Some(302));

        let e = WorldTokenizer::from_vocab_str("1 'a' 2\n", Path::new("v.txt")).err().unwrap().to_string();
        assert!(e.contains("v.txt: line 1") && e.contains("1 bytes"), "{e}");
        let e = WorldTokenizer::from_vocab_str("1 'a' 1\n", Path::new("v.txt")).err().unwrap().to_string();
        assert!(e.contains("single byte 0x00"), "{e}"); // A huge id is refused before its table is allocated.
        let e = WorldTokenizer::from_vocab_str(&format!("{vocab}4294967295 'zz' 2\n"), Path::new("v.txt")).err().unwrap().to_string();
        assert!(e.contains("4294967295") && e.contains("dense"), "{e}");
    }
}
