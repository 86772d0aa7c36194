//! The pure half of the external-plugin handshake (`kvcore::plugin_ffi`): checking the versions a
//! plugin library reports against the host's, and turning its method-info C strings (name,
//! family, summary, detail, and parameter lines `name\tdefault\thelp`) into owned values. It works
//! on raw byte strings, so it has no libtorch or FFI in it and can be fuzzed; `kvcore` only reads
//! the C strings out of the library and maps the errors onto its own.

use std::borrow::Cow;

/// Most methods one plugin may declare; a larger `n_methods` is a corrupt table, not a plugin.
pub const MAX_METHODS: u32 = 4096;

/// What the host expects of a plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected<'a> {
    pub abi_version: u32,
    pub kvcore_version: &'a str,
    pub libtorch_version: &'a str,
}

/// Why a plugin's handshake or method table is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The plugin was built against something else; `field` names what.
    #[error("plugin was built for {field} {plugin}, but the host has {host}")]
    Incompatible { field: &'static str, plugin: String, host: String },
    /// The table is malformed.
    #[error("{0}")]
    Malformed(String),
}

/// A C string's text as the host reads it: null is empty, the text stops at the first NUL, and
/// invalid UTF-8 is replaced (U+FFFD).
pub fn c_text(bytes: Option<&[u8]>) -> Cow<'_, str> {
    let b = bytes.unwrap_or_default();
    let b = b.iter().position(|&c| c == 0).and_then(|i| b.get(..i)).unwrap_or(b);
    String::from_utf8_lossy(b)
}

/// Checks the plugin's ABI version; nothing else of the table may be read before this passes.
pub fn check_abi(plugin_abi: u32, host: &Expected<'_>) -> Result<(), HandshakeError> {
    if plugin_abi != host.abi_version {
        return Err(HandshakeError::Incompatible { field: "plugin ABI version", plugin: plugin_abi.to_string(), host: host.abi_version.to_string() });
    }
    Ok(())
}

/// Checks the kvcore and libtorch versions (C strings; None for a null pointer) and the method
/// count the plugin declares.
pub fn check_versions(kvcore: Option<&[u8]>, libtorch: Option<&[u8]>, n_methods: u32, host: &Expected<'_>) -> Result<(), HandshakeError> {
    let kv = c_text(kvcore);
    if kv != host.kvcore_version {
        return Err(HandshakeError::Incompatible { field: "kvcore version", plugin: kv.into_owned(), host: host.kvcore_version.to_string() });
    }
    let lt = c_text(libtorch);
    if lt != host.libtorch_version {
        return Err(HandshakeError::Incompatible { field: "libtorch version", plugin: lt.into_owned(), host: host.libtorch_version.to_string() });
    }
    if n_methods > MAX_METHODS {
        return Err(HandshakeError::Malformed(format!("declares {n_methods} methods (at most {MAX_METHODS})")));
    }
    Ok(())
}

/// The whole handshake in order: the ABI version first, then the rest.
pub fn check_handshake(abi: u32, kvcore: Option<&[u8]>, libtorch: Option<&[u8]>, n_methods: u32, host: &Expected<'_>) -> Result<(), HandshakeError> {
    check_abi(abi, host)?;
    check_versions(kvcore, libtorch, n_methods, host)
}

/// One method a plugin declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodInfo {
    pub name: String,
    pub family: String,
    pub summary: String,
    pub detail: String,
    /// (name, default, help) per parameter line.
    pub params: Vec<(String, String, String)>,
}

/// Parameter lines `name\tdefault\thelp` (blank lines skipped; missing fields are empty; the
/// help keeps any further tabs).
pub fn parse_params(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut it = l.splitn(3, '\t');
            let mut next = || it.next().unwrap_or_default().to_string();
            (next(), next(), next())
        })
        .collect()
}

/// Method `index`'s info from its five `method_info` fields (name, family, summary, detail,
/// parameters; None for a null pointer). A method must have a name.
pub fn method_info(index: u32, fields: [Option<&[u8]>; 5]) -> Result<MethodInfo, HandshakeError> {
    let [name, family, summary, detail, params] = fields.map(|f| c_text(f).into_owned());
    if name.is_empty() {
        return Err(HandshakeError::Malformed(format!("method {index} has no name")));
    }
    Ok(MethodInfo { name, family, summary, detail, params: parse_params(&params) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Expected<'static> = Expected { abi_version: 1, kvcore_version: "0.1.0", libtorch_version: "2.13.0" };

    #[test]
    fn versions_are_checked_in_order() {
        assert!(check_handshake(1, Some(b"0.1.0"), Some(b"2.13.0\0junk"), 3, &HOST).is_ok());
        let e = check_handshake(2, None, None, 0, &HOST).unwrap_err();
        assert_eq!(e, HandshakeError::Incompatible { field: "plugin ABI version", plugin: "2".into(), host: "1".into() });
        let e = check_handshake(1, Some(b"0.0.1"), None, 0, &HOST).unwrap_err();
        assert!(matches!(e, HandshakeError::Incompatible { field: "kvcore version", .. }), "{e}");
        let e = check_handshake(1, Some(b"0.1.0"), None, 0, &HOST).unwrap_err();
        assert!(matches!(e, HandshakeError::Incompatible { field: "libtorch version", ref plugin, .. } if plugin.is_empty()), "{e}");
        let e = check_handshake(1, Some(b"0.1.0"), Some(b"2.13.0"), u32::MAX, &HOST).unwrap_err();
        assert!(e.to_string().contains("4294967295 methods"), "{e}");
    }

    #[test]
    fn method_info_and_params() {
        let m = method_info(0, [Some(b"m"), Some(b"fam"), None, Some(b"d\xff"), Some(b"ratio\t8\tkeep 1/N\n\nk\n\ta\tb\tc")]).unwrap();
        assert_eq!(m.detail, "d\u{fffd}");
        assert_eq!(m.summary, "");
        assert_eq!(m.params, vec![("ratio".into(), "8".into(), "keep 1/N".into()), ("k".into(), "".into(), "".into()), ("".into(), "a".into(), "b\tc".into())]);
        assert!(method_info(3, [None, None, None, None, None]).unwrap_err().to_string().contains("method 3 has no name"));
    }
}
