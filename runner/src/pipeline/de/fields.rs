//! Seeds for the small values of a pipeline file: checked keys, parsed
//! scalars, string lists, environment maps and file lists.
//!
//! Every check raises its error from inside `visit_*`, so serde_norway tags it
//! with the position of the offending key or value (see `error.rs`).

use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::super::error::{located, unknown_key};
use super::super::scalars::{check_env_name, resolve_host_path};
use super::super::{Env, FileEntry, Files, GUEST_WORKSPACE};

/// A mapping key, checked against the keys valid at this place. Duplicates
/// and mutually exclusive pairs are reported at the key itself.
pub(crate) struct KeySeed<'a> {
    pub valid: &'static [&'static str],
    pub context: &'a str,
    pub seen: &'a mut Vec<&'static str>,
    pub exclusive: &'static [(&'static str, &'static str)],
    /// Accept `x-…` keys (returned as [`EXTENSION_KEY`]): they exist only to
    /// hold YAML anchors for reuse, as in compose files.
    pub extensions: bool,
}

/// What [`KeySeed`] returns for an `x-…` key.
pub(crate) const EXTENSION_KEY: &str = "x-";

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = &'static str;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a key {}", self.context)
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if self.extensions && key.starts_with(EXTENSION_KEY) {
            return Ok(EXTENSION_KEY);
        }
        let Some(known) = self.valid.iter().find(|valid| **valid == key) else {
            return Err(unknown_key(key, self.context, self.valid));
        };
        if self.seen.contains(known) {
            return Err(located(format!("duplicate key `{key}` {}", self.context)));
        }
        for (a, b) in self.exclusive {
            let other = if key == *a {
                b
            } else if key == *b {
                a
            } else {
                continue;
            };
            if self.seen.contains(other) {
                return Err(located(format!(
                    "`{key}` and `{other}` cannot both be set {}",
                    self.context
                )));
            }
        }
        self.seen.push(known);
        Ok(known)
    }
}

/// Reads a mapping key with a [`KeySeed`].
pub(crate) fn next_key<'de, A: MapAccess<'de>>(
    map: &mut A,
    valid: &'static [&'static str],
    context: &str,
    seen: &mut Vec<&'static str>,
    exclusive: &'static [(&'static str, &'static str)],
) -> Result<Option<&'static str>, A::Error> {
    map.next_key_seed(KeySeed {
        valid,
        context,
        seen,
        exclusive,
        extensions: false,
    })
}

/// A scalar turned into a value by `parse`, whose error is located at the
/// scalar. serde_norway hands every scalar (`5`, `true`, `~`) over as text.
pub(crate) struct Parse<'a, T> {
    pub what: &'a str,
    pub parse: &'a dyn Fn(&str) -> Result<T, String>,
}

impl<'de, T> DeserializeSeed<'de> for Parse<'_, T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, T> Visitor<'de> for Parse<'_, T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.what)
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(located)
    }
}

/// Reads the value of the current key as a parsed scalar.
pub(crate) fn parse_value<'de, A: MapAccess<'de>, T>(
    map: &mut A,
    what: &str,
    parse: &dyn Fn(&str) -> Result<T, String>,
) -> Result<T, A::Error> {
    map.next_value_seed(Parse { what, parse })
}

pub(crate) fn non_empty(what: String) -> impl Fn(&str) -> Result<String, String> {
    move |text: &str| {
        if text.trim().is_empty() {
            Err(format!("{what} must not be empty"))
        } else {
            Ok(text.to_string())
        }
    }
}

pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        other => Err(format!("expected `true` or `false`, not `{other}`")),
    }
}

pub(crate) fn parse_vcpus(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid vcpus `{text}`: expected a number from 1 to 64"
        )),
    }
}

/// Most `retry` a job or step may ask for: retries hide flakiness, and a
/// pipeline from a pull request must not multiply the run's cost.
pub(crate) const MAX_RETRY: u32 = 10;

/// `retry: N`, extra attempts after a failure, 0 to [`MAX_RETRY`].
pub(crate) fn parse_retry(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if n <= MAX_RETRY => Ok(n),
        _ => Err(format!(
            "invalid retry `{text}`: expected a number of retries from 0 to {MAX_RETRY}"
        )),
    }
}

/// A guest directory: absolute, or relative to the guest workspace.
pub(crate) fn parse_guest_dir(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("a guest path must not be empty".to_string());
    }
    let path = if text.starts_with('/') {
        text.to_string()
    } else {
        format!("{GUEST_WORKSPACE}/{text}")
    };
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}

/// A copy destination in the guest: like [`parse_guest_dir`], but a
/// trailing `/` is kept because it means "into this directory".
pub(crate) fn parse_guest_target(text: &str) -> Result<String, String> {
    let dir = parse_guest_dir(text)?;
    Ok(if text.trim().ends_with('/') && dir != "/" {
        format!("{dir}/")
    } else {
        dir
    })
}

/// A list of strings; `what_item` names an element for the empty-list error.
pub(crate) struct StringList<'a> {
    pub what: &'a str,
    pub allow_empty: bool,
}

impl<'de> DeserializeSeed<'de> for StringList<'_> {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for StringList<'_> {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of strings ({})", self.what)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        let item = non_empty(format!("an entry of {}", self.what));
        while let Some(value) = seq.next_element_seed(Parse {
            what: "a string",
            parse: &item,
        })? {
            items.push(value);
        }
        if items.is_empty() && !self.allow_empty {
            return Err(located(format!("{} must not be empty", self.what)));
        }
        Ok(items)
    }
}

/// An `env:` mapping of variable names to scalar values.
pub(crate) struct EnvSeed<'a> {
    pub context: &'a str,
}

impl<'de> DeserializeSeed<'de> for EnvSeed<'_> {
    type Value = Env;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Env, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvSeed<'_> {
    type Value = Env;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a mapping of variable names to values ({})",
            self.context
        )
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Env, A::Error> {
        let mut env = Env::new();
        let context = self.context;
        loop {
            // A `let`, not `while let`: the key closure borrows `env`, and
            // temporaries of a `while let` head live through the body.
            let key = map.next_key_seed(Parse {
                what: "a variable name",
                parse: &|name: &str| {
                    check_env_name(name)?;
                    if env.contains_key(name) {
                        return Err(format!("duplicate variable `{name}` in `env` {context}"));
                    }
                    Ok(name.to_string())
                },
            })?;
            let Some(name) = key else { break };
            let value = map.next_value_seed(Parse {
                what: "a scalar value",
                parse: &|text: &str| Ok(text.to_string()),
            })?;
            env.insert(name, value);
        }
        Ok(env)
    }
}

/// `files: none`, `files: []`, or a list of workspace paths and
/// `{from, to, gitignore}` mappings.
pub(crate) struct FilesSeed<'a> {
    pub workspace: &'a Path,
    pub context: &'a str,
}

impl<'de> DeserializeSeed<'de> for FilesSeed<'_> {
    type Value = Files;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Files, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FilesSeed<'_> {
    type Value = Files;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`none` or a list of paths and {from, to} mappings")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Files, E> {
        if text.trim() == "none" {
            Ok(Files::Nothing)
        } else {
            Err(located(format!(
                "`files` {} must be `none` or a list, not `{text}` (write `files: [{text}]` for one path)",
                self.context
            )))
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<Files, E> {
        Err(located(format!(
            "`files` {} is empty: write `files: none` to copy nothing",
            self.context
        )))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Files, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = seq.next_element_seed(FileEntrySeed {
            workspace: self.workspace,
            context: self.context,
        })? {
            entries.push(entry);
        }
        Ok(if entries.is_empty() {
            Files::Nothing
        } else {
            Files::Entries(entries)
        })
    }
}

struct FileEntrySeed<'a> {
    workspace: &'a Path,
    context: &'a str,
}

impl<'de> DeserializeSeed<'de> for FileEntrySeed<'_> {
    type Value = FileEntry;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<FileEntry, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FileEntrySeed<'_> {
    type Value = FileEntry;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a workspace path or a mapping with `from` and `to`")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<FileEntry, E> {
        FileEntry::workspace_path(text, self.workspace).map_err(located)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileEntry, A::Error> {
        const KEYS: &[&str] = &["from", "to", "gitignore"];
        let context = format!("in a `files` entry {}", self.context);
        let mut seen = Vec::new();
        let (mut from, mut to, mut gitignore) = (None, None, true);
        while let Some(key) = next_key(&mut map, KEYS, &context, &mut seen, &[])? {
            match key {
                "from" => {
                    let text = parse_value(&mut map, "a host path", &non_empty("`from`".into()))?;
                    from = Some(resolve_host_path(text.trim(), self.workspace));
                }
                "to" => to = Some(parse_value(&mut map, "a guest path", &parse_guest_target)?),
                _ => gitignore = parse_value(&mut map, "true or false", &parse_bool)?,
            }
        }
        match (from, to) {
            (Some(from), Some(to)) => Ok(FileEntry {
                from,
                to,
                gitignore,
            }),
            (None, _) => Err(located(format!("missing `from` {context}"))),
            (_, None) => Err(located(format!("missing `to` {context}"))),
        }
    }
}
