//! The seeds for `cache:` (in `defaults` or a job): one mapping or a list.
//!
//! Relative `paths` depend on the workdir of the job using the cache, which
//! is only known once the whole file is read (`defaults` may come after
//! `jobs`, `workdir` after `cache`). So the pipeline is read twice when it
//! has caches: first with no [`CacheTarget`]s, then with the workdir of
//! every job each cache list applies to, so that every check is made while
//! its node is visited and its error is located (see `Pipeline::parse`).

use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::super::cache::{
    check_cache_key, overlap, parse_cache_path, parse_cache_policy, parse_cache_size,
    parse_cache_when, refusal, resolve_cache_path, within, DEFAULT_CACHE_KEY, DEFAULT_CACHE_SIZE,
    MAX_CACHES, MAX_CACHE_KEY_LEN, MAX_CACHE_PATHS, MAX_FALLBACK_KEYS,
};
use super::super::cache_key::{files_key, parse_key_file, KEY_HASH_HEX, MAX_KEY_FILES};
use super::super::error::located;
use super::super::{Cache, CachePolicy, CacheWhen};
use super::fields::{next_key, non_empty, parse_value, Parse};

/// A job a cache list applies to, as the second reading knows it.
#[derive(Clone, Debug)]
pub(crate) struct CacheTarget {
    pub job: String,
    /// The job's resolved `workdir`.
    pub workdir: String,
    /// Where the job's `files` land in the guest (`FileEntry::to`).
    pub file_destinations: Vec<String>,
}

pub(crate) struct CacheListSeed<'a> {
    pub workspace: &'a Path,
    pub context: &'a str,
    /// The jobs this list applies to; empty on the first reading.
    pub targets: &'a [CacheTarget],
}

impl<'de> DeserializeSeed<'de> for CacheListSeed<'_> {
    type Value = Vec<Cache>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Cache>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CacheListSeed<'_> {
    type Value = Vec<Cache>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a cache (a mapping with `key` and `paths`) or a list of them")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Vec<Cache>, E> {
        Err(located(format!(
            "`cache` {} is empty: write `cache: []` for no cache",
            self.context
        )))
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<Cache>, E> {
        Err(located(format!(
            "`cache` {} must be a mapping with `key` and `paths`, or a list of them, not `{text}`",
            self.context
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<Cache>, A::Error> {
        let cache = CacheSeed {
            list: &self,
            earlier: &[],
        }
        .visit_map(map)?;
        Ok(vec![cache])
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Cache>, A::Error> {
        let mut caches: Vec<Cache> = Vec::new();
        loop {
            let seed = CacheSeed {
                list: &self,
                earlier: &caches,
            };
            let Some(cache) = seq.next_element_seed(seed)? else {
                break;
            };
            if caches.len() == MAX_CACHES {
                return Err(located(format!(
                    "more than {MAX_CACHES} caches {}: each is a disk of the VM",
                    self.context
                )));
            }
            caches.push(cache);
        }
        Ok(caches)
    }
}

/// One cache; `earlier` are the caches before it in the same list.
struct CacheSeed<'a> {
    list: &'a CacheListSeed<'a>,
    earlier: &'a [Cache],
}

impl<'de> DeserializeSeed<'de> for CacheSeed<'_> {
    type Value = Cache;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cache, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CacheSeed<'_> {
    type Value = Cache;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a cache: a mapping with `key` and `paths`")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Cache, E> {
        Err(located(format!(
            "a cache is a mapping with `key` and `paths`, not `{text}`"
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cache, A::Error> {
        const KEYS: &[&str] = &["key", "paths", "policy", "when", "fallback_keys", "size"];
        let context = format!("in a `cache` {}", self.list.context);
        let mut seen = Vec::new();
        let mut key = None;
        let mut paths = None;
        let (mut policy, mut when) = (CachePolicy::default(), CacheWhen::default());
        let (mut fallback_keys, mut size) = (Vec::new(), DEFAULT_CACHE_SIZE);
        while let Some(name) = next_key(&mut map, KEYS, &context, &mut seen, &[])? {
            match name {
                "key" => {
                    key = Some(map.next_value_seed(KeySeed {
                        workspace: self.list.workspace,
                        earlier: self.earlier,
                    })?)
                }
                "paths" => {
                    paths = Some(map.next_value_seed(PathsSeed {
                        targets: self.list.targets,
                        earlier: self.earlier,
                    })?)
                }
                "policy" => policy = parse_value(&mut map, "a cache policy", &parse_cache_policy)?,
                "when" => when = parse_value(&mut map, "when to save", &parse_cache_when)?,
                "fallback_keys" => fallback_keys = map.next_value_seed(FallbackKeysSeed)?,
                _ => size = parse_value(&mut map, "a size", &parse_cache_size)?,
            }
        }
        let Some(paths) = paths else {
            return Err(located(format!(
                "missing `paths` {context}: list the guest directories to keep"
            )));
        };
        let key = match key {
            Some(key) => key,
            None => {
                check_unique_key(DEFAULT_CACHE_KEY, self.earlier)?;
                DEFAULT_CACHE_KEY.to_string()
            }
        };
        Ok(Cache {
            key,
            fallback_keys,
            paths,
            policy,
            when,
            size,
        })
    }
}

fn check_unique_key<E: de::Error>(key: &str, earlier: &[Cache]) -> Result<(), E> {
    if earlier.iter().any(|cache| cache.key == key) {
        return Err(located(format!(
            "two caches of one job have the key `{key}`: each needs its own"
        )));
    }
    Ok(())
}

/// `key: NAME` or `key: { files: [...], prefix: NAME }`.
struct KeySeed<'a> {
    workspace: &'a Path,
    earlier: &'a [Cache],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a cache key, or a mapping with `files` and `prefix`")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
        check_cache_key(text, "cache key").map_err(located)?;
        check_unique_key(text, self.earlier)?;
        Ok(text.to_string())
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<String, E> {
        self.visit_str(&n.to_string())
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<String, E> {
        self.visit_str(&n.to_string())
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<String, E> {
        self.visit_str(&b.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(located(format!(
            "a cache `key` is empty: write one, or leave `key` out for `{DEFAULT_CACHE_KEY}`"
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        const KEYS: &[&str] = &["files", "prefix"];
        let context = "in a cache `key`";
        let mut seen = Vec::new();
        let (mut files, mut prefix) = (None, None);
        while let Some(name) = next_key(&mut map, KEYS, context, &mut seen, &[])? {
            if name == "files" {
                files = Some(map.next_value_seed(KeyFilesSeed {
                    workspace: self.workspace,
                })?);
            } else {
                prefix = Some(parse_value(&mut map, "a key prefix", &parse_prefix)?);
            }
        }
        let Some(files) = files else {
            return Err(located(
                "missing `files` in a cache `key`: list the files whose contents make the key, or write the key itself",
            ));
        };
        let key = files_key(self.workspace, &files, prefix.as_deref()).map_err(located)?;
        check_unique_key(&key, self.earlier)?;
        Ok(key)
    }
}

/// Room left for `-` and the hash after a prefix.
const MAX_PREFIX_LEN: usize = MAX_CACHE_KEY_LEN - 1 - KEY_HASH_HEX;

fn parse_prefix(text: &str) -> Result<String, String> {
    check_cache_key(text, "cache key prefix")?;
    if text.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "cache key prefix `{text}` is longer than {MAX_PREFIX_LEN} characters: the key adds `-` and {KEY_HASH_HEX} hex digits to it"
        ));
    }
    Ok(text.to_string())
}

/// `files:` of a key: 1 to [`MAX_KEY_FILES`] workspace files, no repeats.
struct KeyFilesSeed<'a> {
    workspace: &'a Path,
}

impl<'de> DeserializeSeed<'de> for KeyFilesSeed<'_> {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyFilesSeed<'_> {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of workspace files")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
        Err(located(format!(
            "`files` of a cache `key` is a list: write `files: [{text}]`"
        )))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut files: Vec<String> = Vec::new();
        loop {
            let file = seq.next_element_seed(Parse {
                what: "a workspace file",
                parse: &|text: &str| {
                    if files.len() == MAX_KEY_FILES {
                        return Err(format!("more than {MAX_KEY_FILES} files in a cache `key`"));
                    }
                    let file = parse_key_file(text, self.workspace)?;
                    if files.contains(&file) {
                        return Err(format!("cache key file `{file}` is listed twice"));
                    }
                    Ok(file)
                },
            })?;
            let Some(file) = file else { break };
            files.push(file);
        }
        if files.is_empty() {
            return Err(located("`files` of a cache `key` must not be empty"));
        }
        Ok(files)
    }
}

/// `fallback_keys:`, keys tried in order when `key` has nothing yet.
struct FallbackKeysSeed;

impl<'de> DeserializeSeed<'de> for FallbackKeysSeed {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FallbackKeysSeed {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of cache keys")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
        Err(located(format!(
            "`fallback_keys` is a list: write `fallback_keys: [{text}]`"
        )))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut keys: Vec<String> = Vec::new();
        loop {
            let key = seq.next_element_seed(Parse {
                what: "a cache key",
                parse: &|text: &str| {
                    if keys.len() == MAX_FALLBACK_KEYS {
                        return Err(format!(
                            "more than {MAX_FALLBACK_KEYS} `fallback_keys` in a cache"
                        ));
                    }
                    check_cache_key(text, "fallback key")?;
                    if keys.iter().any(|k| k == text) {
                        return Err(format!("fallback key `{text}` is listed twice"));
                    }
                    Ok(text.to_string())
                },
            })?;
            let Some(key) = key else { break };
            keys.push(key);
        }
        Ok(keys)
    }
}

/// `paths:` of one cache, checked against each other and against the
/// caches before it, in every job the list applies to.
struct PathsSeed<'a> {
    targets: &'a [CacheTarget],
    earlier: &'a [Cache],
}

impl<'de> DeserializeSeed<'de> for PathsSeed<'_> {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathsSeed<'_> {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of guest paths")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
        Err(located(format!(
            "`paths` of a cache is a list: write `paths: [{text}]`"
        )))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut paths: Vec<String> = Vec::new();
        let not_empty = non_empty("a cache path".to_string());
        loop {
            let path = seq.next_element_seed(Parse {
                what: "a guest path",
                parse: &|text: &str| {
                    if paths.len() == MAX_CACHE_PATHS {
                        return Err(format!("more than {MAX_CACHE_PATHS} paths in a cache"));
                    }
                    let path = parse_cache_path(&not_empty(text)?)?;
                    self.check(&path, &paths)?;
                    Ok(path)
                },
            })?;
            let Some(path) = path else { break };
            paths.push(path);
        }
        if paths.is_empty() {
            return Err(located(
                "`paths` of a cache must not be empty: list the guest directories to keep",
            ));
        }
        Ok(paths)
    }
}

impl PathsSeed<'_> {
    /// Checks `path` (from [`parse_cache_path`]) against the rules and
    /// against `before` (this cache's paths so far) and the earlier caches,
    /// in each target job; relative paths are only checked once the
    /// targets are known.
    fn check(&self, path: &str, before: &[String]) -> Result<(), String> {
        let others: Vec<&String> = self
            .earlier
            .iter()
            .flat_map(|cache| &cache.paths)
            .chain(before)
            .collect();
        let no_target = [None];
        let views: Vec<Option<&CacheTarget>> = if self.targets.is_empty() {
            no_target.to_vec()
        } else {
            self.targets.iter().map(Some).collect()
        };
        for target in views {
            let Some(resolved) = resolve(path, target)? else {
                continue;
            };
            let from = origin(path, target);
            if let Some(why) = refusal(&resolved) {
                return Err(format!("{why}{from}"));
            }
            for other in &others {
                let Some(other_resolved) = resolve(other, target)? else {
                    continue;
                };
                if resolved == other_resolved {
                    return Err(format!("cache path `{resolved}` is listed twice{from}"));
                }
                if overlap(&resolved, &other_resolved) {
                    return Err(format!(
                        "cache path `{resolved}` overlaps `{other_resolved}`{from}: one is inside the other, and a directory can be in one cache path only"
                    ));
                }
            }
            if let Some(target) = target {
                for destination in &target.file_destinations {
                    let destination = destination.trim_end_matches('/');
                    let destination = if destination.is_empty() {
                        "/"
                    } else {
                        destination
                    };
                    if within(destination, &resolved) {
                        return Err(format!(
                            "cache path `{resolved}` would hide `{destination}`, where `files` copies to{from}: cache a directory inside it"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `path` made absolute for `target`; `None` for a relative path while the
/// workdir is unknown.
fn resolve(path: &str, target: Option<&CacheTarget>) -> Result<Option<String>, String> {
    if path.starts_with('/') {
        return Ok(Some(path.to_string()));
    }
    let Some(target) = target else {
        return Ok(None);
    };
    resolve_cache_path(&target.workdir, path)
        .map(Some)
        .map_err(|e| format!("{e} of job `{}`", target.job))
}

/// For messages about a relative path: where it was resolved.
fn origin(path: &str, target: Option<&CacheTarget>) -> String {
    match target {
        Some(target) if !path.starts_with('/') => format!(
            " (`{path}` from the workdir `{}` of job `{}`)",
            target.workdir, target.job
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
