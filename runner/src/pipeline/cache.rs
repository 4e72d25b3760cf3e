//! The rules of `cache:` that do not depend on YAML: what a key may be
//! (the store makes directories of them), how big a cache may be, and which
//! guest paths may be cached. The visitors in `de/cache.rs` apply them where
//! the error can be located.

use super::scalars::parse_byte_size;
use super::{CachePolicy, CacheWhen};
/// Most caches of one job (each is a disk of the VM) and most `paths` of
/// one cache: what the agent accepts.
pub use agent_protocol::{MAX_CACHES, MAX_CACHE_PATHS};

/// `size` when a cache does not say.
pub const DEFAULT_CACHE_SIZE: u64 = 4 << 30;
/// The smallest `size`: an ext4 file system with room for its journal and
/// a few files. Below that a cache is a mistake.
pub const MIN_CACHE_SIZE: u64 = 16 << 20;
/// `size` is a whole number of these, so the disk is whole sectors and
/// whole chunks of the copy-on-write layer.
pub const CACHE_SIZE_UNIT: u64 = 1 << 20;
/// Longest key or fallback key.
pub const MAX_CACHE_KEY_LEN: usize = 128;
/// Most `fallback_keys` of one cache.
pub const MAX_FALLBACK_KEYS: usize = 16;
/// The key of a cache that names none (GitLab's default too).
pub const DEFAULT_CACHE_KEY: &str = "default";
/// Longest guest path accepted (Linux's PATH_MAX).
const MAX_GUEST_PATH: usize = 4096;

/// The characters a key may have, for messages.
pub const KEY_CHARSET: &str =
    "letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 128 characters";

/// Checks a cache key (or a fallback key, or a cache scope: all three name
/// directories of the store). `what` names it in the message.
pub fn check_cache_key(text: &str, what: &str) -> Result<(), String> {
    let valid_start = text
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric);
    let valid_rest = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid_start && valid_rest && text.len() <= MAX_CACHE_KEY_LEN {
        Ok(())
    } else {
        Err(format!("invalid {what} `{text}`: a key has {KEY_CHARSET}"))
    }
}

/// A cache's `size`: a byte size like `8G`, at least [`MIN_CACHE_SIZE`],
/// a whole number of MiB.
pub fn parse_cache_size(text: &str) -> Result<u64, String> {
    let size = parse_byte_size(text)?;
    if size < MIN_CACHE_SIZE {
        return Err(format!(
            "cache `size: {}` is too small: a cache needs at least {}M",
            text.trim(),
            MIN_CACHE_SIZE >> 20
        ));
    }
    if !size.is_multiple_of(CACHE_SIZE_UNIT) {
        return Err(format!(
            "cache `size: {}` is not a whole number of MiB (write e.g. `512M` or `8G`)",
            text.trim()
        ));
    }
    Ok(size)
}

pub fn parse_cache_policy(text: &str) -> Result<CachePolicy, String> {
    match text.trim() {
        "pull" => Ok(CachePolicy::Pull),
        "push" => Ok(CachePolicy::Push),
        "pull-push" => Ok(CachePolicy::PullPush),
        other => Err(format!(
            "invalid cache `policy: {other}`: expected `pull`, `push` or `pull-push`"
        )),
    }
}

pub fn parse_cache_when(text: &str) -> Result<CacheWhen, String> {
    match text.trim() {
        "on_success" => Ok(CacheWhen::OnSuccess),
        "on_failure" => Ok(CacheWhen::OnFailure),
        "always" => Ok(CacheWhen::Always),
        other => Err(format!(
            "invalid cache `when: {other}`: expected `on_success`, `on_failure` or `always`"
        )),
    }
}

/// A cache path as written, normalized: `.` and empty components dropped,
/// `..` applied. Absolute paths stay absolute (refused when `..` climbs
/// above `/`); relative ones stay relative to the job's `workdir` and may
/// keep leading `..` (checked once the workdir is known), `.` for the
/// workdir itself.
pub fn parse_cache_path(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("a cache path must not be empty".to_string());
    }
    if text.len() > MAX_GUEST_PATH || text.chars().any(char::is_control) {
        return Err(format!(
            "cache path {text:?} is not a usable guest path (too long, or control characters)"
        ));
    }
    if text.starts_with('/') {
        return match normalize(text) {
            Normalized::Inside(path) => Ok(path),
            Normalized::AboveRoot => Err(format!("cache path `{text}` climbs above `/`")),
        };
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|last| *last != "..") => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    Ok(if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    })
}

enum Normalized {
    Inside(String),
    AboveRoot,
}

/// Normalizes an absolute path lexically.
fn normalize(path: &str) -> Normalized {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Normalized::AboveRoot;
                }
            }
            part => parts.push(part),
        }
    }
    Normalized::Inside(format!("/{}", parts.join("/")))
}

/// A path from [`parse_cache_path`] made absolute against `workdir` and
/// normalized; `Err` when it climbs above `/`.
pub fn resolve_cache_path(workdir: &str, path: &str) -> Result<String, String> {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{workdir}/{path}")
    };
    match normalize(&joined) {
        Normalized::Inside(resolved) => Ok(resolved),
        Normalized::AboveRoot => Err(format!(
            "cache path `{path}` climbs above `/` from the workdir `{workdir}`"
        )),
    }
}

/// Trees the guest's kernel and init own: nothing there survives a boot.
const SYSTEM_TREES: &[&str] = &["/proc", "/sys", "/dev", "/run"];
/// The runner's own files in the guest: a cache holding them could
/// replace the agent for the next job.
const RUNNER_FILES: &[&str] = &[
    "/etc/runner",
    "/sbin/runner-agent",
    "/sbin/runner-init",
    "/usr/sbin/runner-agent",
    "/usr/sbin/runner-init",
];

/// Why an absolute, normalized guest path cannot be cached, if it cannot.
pub fn refusal(path: &str) -> Option<String> {
    let outside = "is outside the guest's writable tree";
    if path == "/" {
        return Some(format!(
            "cache path `/` {outside}: name the directories to keep"
        ));
    }
    if let Some(tree) = SYSTEM_TREES.iter().find(|tree| within(path, tree)) {
        return Some(format!(
            "cache path `{path}` {outside}: {tree} is made anew at every boot"
        ));
    }
    for file in RUNNER_FILES {
        if within(path, file) {
            return Some(format!(
                "cache path `{path}` {outside}: it is in the runner's own {file}"
            ));
        }
        if within(file, path) {
            return Some(format!(
                "cache path `{path}` {outside}: it holds the runner's own {file}"
            ));
        }
    }
    None
}

/// Whether the absolute, normalized `path` is `dir` or inside it.
pub fn within(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return true;
    }
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether two absolute, normalized paths are equal or one holds the other.
pub fn overlap(a: &str, b: &str) -> bool {
    within(a, b) || within(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_directory_names() {
        for good in ["cargo", "a", "0", "x.y_z-1", &"k".repeat(128)] {
            assert_eq!(check_cache_key(good, "key"), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "a b",
            "ké",
            "a\0",
            &"k".repeat(129),
        ] {
            let err = check_cache_key(bad, "cache key").unwrap_err();
            assert!(err.starts_with("invalid cache key `"), "{err}");
            assert!(err.contains("at most 128 characters"), "{err}");
        }
    }

    #[test]
    fn sizes_are_whole_mib_from_16m() {
        assert_eq!(parse_cache_size("8G"), Ok(8 << 30));
        assert_eq!(parse_cache_size("16M"), Ok(16 << 20));
        assert!(parse_cache_size("15M")
            .unwrap_err()
            .contains("at least 16M"));
        assert!(parse_cache_size("17000000")
            .unwrap_err()
            .contains("whole number of MiB"));
        assert!(parse_cache_size("big")
            .unwrap_err()
            .contains("invalid size"));
        assert!(parse_cache_size("99999999999T").is_err());
    }

    #[test]
    fn policy_and_when_use_gitlabs_words() {
        assert_eq!(parse_cache_policy("pull"), Ok(CachePolicy::Pull));
        assert_eq!(parse_cache_policy("push"), Ok(CachePolicy::Push));
        assert_eq!(parse_cache_policy("pull-push"), Ok(CachePolicy::PullPush));
        assert!(parse_cache_policy("pull_push").is_err());
        assert_eq!(parse_cache_when("on_success"), Ok(CacheWhen::OnSuccess));
        assert_eq!(parse_cache_when("on_failure"), Ok(CacheWhen::OnFailure));
        assert_eq!(parse_cache_when("always"), Ok(CacheWhen::Always));
        assert!(parse_cache_when("never").is_err());
    }

    #[test]
    fn paths_are_normalized_and_kept_relative_until_the_workdir_is_known() {
        assert_eq!(parse_cache_path("/a/./b//c/").unwrap(), "/a/b/c");
        assert_eq!(parse_cache_path("/a/../b").unwrap(), "/b");
        assert_eq!(
            parse_cache_path("/..").unwrap_err(),
            "cache path `/..` climbs above `/`"
        );
        assert_eq!(parse_cache_path("target/").unwrap(), "target");
        assert_eq!(parse_cache_path("./a/../../b").unwrap(), "../b");
        assert_eq!(parse_cache_path("../../x").unwrap(), "../../x");
        assert_eq!(parse_cache_path(".").unwrap(), ".");
        assert!(parse_cache_path(" ").is_err());
        assert!(parse_cache_path("a\nb").is_err());

        assert_eq!(
            resolve_cache_path("/workspace", "target").unwrap(),
            "/workspace/target"
        );
        assert_eq!(resolve_cache_path("/workspace", ".").unwrap(), "/workspace");
        assert_eq!(resolve_cache_path("/w/x", "../y").unwrap(), "/w/y");
        assert_eq!(resolve_cache_path("/w", "/abs").unwrap(), "/abs");
        assert!(resolve_cache_path("/w", "../../y")
            .unwrap_err()
            .contains("climbs above `/` from the workdir `/w`"));
    }

    #[test]
    fn system_trees_and_the_runners_files_are_refused() {
        for refused in [
            "/",
            "/proc",
            "/proc/1",
            "/sys/fs",
            "/dev",
            "/run/x",
            "/etc",
            "/etc/runner",
            "/etc/runner/x",
            "/sbin",
            "/usr",
            "/usr/sbin",
        ] {
            let why = refusal(refused).unwrap_or_else(|| panic!("{refused} accepted"));
            assert!(why.contains("outside the guest's writable tree"), "{why}");
        }
        for fine in [
            "/root/.cargo",
            "/usr/local/cargo",
            "/tmp/x",
            "/workspace/target",
            "/procfs",
            "/devel",
        ] {
            assert_eq!(refusal(fine), None, "{fine}");
        }
    }

    #[test]
    fn overlap_is_equality_or_nesting_by_components() {
        assert!(overlap("/a", "/a"));
        assert!(overlap("/a", "/a/b"));
        assert!(overlap("/a/b", "/a"));
        assert!(!overlap("/a", "/ab"));
        assert!(!overlap("/a/b", "/a/c"));
    }

    #[test]
    fn commits_needs_a_pushing_policy_and_a_matching_outcome() {
        assert!(CachePolicy::PullPush.pushes() && CachePolicy::Push.pushes());
        assert!(!CachePolicy::Pull.pushes());
        assert!(CachePolicy::Pull.pulls() && !CachePolicy::Push.pulls());
        assert!(CacheWhen::OnSuccess.matches(true) && !CacheWhen::OnSuccess.matches(false));
        assert!(!CacheWhen::OnFailure.matches(true) && CacheWhen::OnFailure.matches(false));
        assert!(CacheWhen::Always.matches(true) && CacheWhen::Always.matches(false));
    }
}
