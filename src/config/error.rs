//! Why a configuration was rejected: [`ConfigError`], which names the field path, the problem
//! and what is allowed, and the file and line when known.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a configuration was rejected. `Display` is one line: the field path
/// (when there is one), the problem and what is allowed, then the file and
/// line/column when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub(super) field: String,
    pub(super) message: String,
    pub(super) file: Option<PathBuf>,
    pub(super) location: Option<(usize, usize)>,
    /// The message already says where (libyaml syntax errors do), so
    /// `Display` must not repeat the location.
    pub(super) location_in_message: bool,
}

impl ConfigError {
    pub(super) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
            file: None,
            location: None,
            location_in_message: false,
        }
    }

    /// Turn a serde_yaml error into ours, splitting off the field path serde_yaml
    /// puts in front (`targets[0].luns[1]: unknown field ...`) and the trailing
    /// `at line L column C`, which we keep as structured data instead.
    pub(super) fn from_yaml(err: serde_yaml::Error) -> Self {
        let mut text = err.to_string();
        let location = err.location().map(|l| (l.line(), l.column()));
        if let Some((line, column)) = location {
            let suffix = format!(" at line {line} column {column}");
            if let Some(stripped) = text.strip_suffix(&suffix) {
                text = stripped.to_string();
            }
        }
        // libyaml syntax errors carry their own marks ("... at line 2 column 1,
        // while parsing a flow sequence at line 1 column 10") and no path.
        if text.contains(" at line ") {
            return ConfigError {
                field: String::new(),
                message: format!("YAML syntax error: {text}"),
                file: None,
                location,
                location_in_message: true,
            };
        }
        let mut field = String::new();
        if let Some((head, rest)) = text.split_once(": ") {
            let looks_like_path = !head.is_empty()
                && head
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_[].-?".contains(c));
            if looks_like_path {
                field = head.to_string();
                text = rest.to_string();
            }
        }
        // Point unknown/duplicate-key errors at the key itself rather than its
        // parent, so `targets[0].luns[0].blocksize: unknown field ...` reads naturally.
        let key = ["unknown field `", "duplicate field `"]
            .iter()
            .find_map(|p| text.strip_prefix(p))
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k.to_string());
        if let Some(key) = key {
            field = if field.is_empty() {
                key
            } else {
                format!("{field}.{key}")
            };
        }
        // Do not leak our private type names into user-facing messages.
        for raw in [
            "RawConfig",
            "RawPortal",
            "RawTarget",
            "RawLun",
            "RawBacking",
            "RawLimits",
            "RawAuth",
            "RawCredentials",
        ] {
            text = text.replace(&format!("struct {raw}"), "a mapping");
        }
        // A YAML integer beyond u64 reaches serde_yaml::Value as u128.
        if let Some(n) = text
            .strip_prefix("invalid type: integer `")
            .and_then(|r| r.split_once("` as u128"))
            .map(|(n, _)| n.to_string())
        {
            text = format!("{n} is too large; numbers must fit in 64 bits");
        }
        ConfigError {
            field,
            message: text,
            file: None,
            location,
            location_in_message: false,
        }
    }

    /// Dotted path of the offending field, e.g. `targets[0].luns[1].backing.size`;
    /// empty when the error is not about one field (I/O, YAML syntax).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The problem and what is allowed, without the field path or location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The configuration file, when loaded with [`Config::load`](super::Config::load).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// 1-based (line, column) in the YAML text, when the parser reported one.
    pub fn location(&self) -> Option<(usize, usize)> {
        self.location
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        let location = self.location.filter(|_| !self.location_in_message);
        match (&self.file, location) {
            (Some(file), Some((l, c))) => {
                write!(f, " (in {} at line {l} column {c})", file.display())
            }
            (Some(file), None) => write!(f, " (in {})", file.display()),
            (None, Some((l, c))) => write!(f, " (at line {l} column {c})"),
            (None, None) => Ok(()),
        }
    }
}

impl std::error::Error for ConfigError {}

pub(super) type CResult<T> = std::result::Result<T, ConfigError>;

pub(super) fn err<T>(field: &str, message: impl Into<String>) -> CResult<T> {
    Err(ConfigError::new(field, message))
}
