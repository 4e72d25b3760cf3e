//! Parsers for the scalar values of a pipeline file: durations, memory sizes,
//! environment variable names and image references. They return plain
//! `String` errors; the visitors in `de.rs` attach the file position.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::suggest;
pub use runner_machine::images::{ImageKind, ImageRef};

/// Longest accepted timeout; longer ones are almost certainly a unit mix-up.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Smallest guest memory a Linux guest with the agent can boot in.
pub const MIN_MEMORY_MIB: u64 = 16;
/// 1 TiB: above that the value is a typo, not a plan.
const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Parses a timeout: `30s`, `5m`, `1h30m`, `500ms`, `1.5s` (humantime's
/// units, so `2d` and `1w` too); a bare number is seconds. More than zero
/// and at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_unbounded_duration(text).map_err(|e| match e {
        // humantime adds fractions up in whole nanoseconds (whole seconds
        // for hours and longer units) and overflows on what does not divide.
        humantime::DurationError::NumberOverflow if text.contains('.') => format!(
            "invalid duration `{text}`: longer than 7 days, or a fraction finer than its unit allows (hours to the second, smaller units to the nanosecond)"
        ),
        humantime::DurationError::NumberOverflow => {
            format!("invalid duration `{text}`: longer than 7 days")
        }
        _ => format!("invalid duration `{text}`: expected a number with a unit, like `30s`, `5m`, `1h30m` or `500ms`"),
    })?;
    if duration.is_zero() {
        return Err(format!(
            "invalid duration `{text}`: must be greater than zero"
        ));
    }
    if duration > MAX_DURATION {
        return Err(format!("invalid duration `{text}`: longer than 7 days"));
    }
    Ok(duration)
}

/// Any duration, zero and past [`MAX_DURATION`] too: humantime's reading,
/// except that a bare number is seconds and a space between two numbers is
/// an error (humantime reads `1 30s` as 130 seconds; here it is a mistake,
/// like `1m 30s` missing its `m`).
pub fn parse_unbounded_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    let trimmed = text.trim();
    let numeric = |c: char| c.is_ascii_digit() || c == '.';
    let mut previous = None;
    let mut spaced = false;
    for (at, c) in trimmed.char_indices() {
        if c.is_whitespace() {
            spaced = true;
            continue;
        }
        if spaced && numeric(c) && previous.is_some_and(numeric) {
            return Err(humantime::DurationError::InvalidCharacter(at));
        }
        previous = Some(c);
        spaced = false;
    }
    if !trimmed.is_empty() && trimmed.chars().all(numeric) {
        return humantime::parse_duration(&format!("{trimmed}s"));
    }
    humantime::parse_duration(trimmed)
}

/// Short human form: `850ms`, `4.2s`, `2m05s`, `1h02m`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{secs}s")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Parses a byte count: `4096`, `200M`, `1G` (binary units; bytes without one).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let invalid = || format!("invalid size `{text}`: expected a size like `4096`, `200M` or `1G`");
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(invalid()),
    };
    number.checked_mul(1 << shift).ok_or_else(invalid)
}

/// Parses `512M`, `1G`, `2GiB`, `768` (MiB when there is no unit) into MiB.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let invalid =
        || format!("invalid memory size `{text}`: expected a size like `512M`, `1G` or `2GiB`");
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let mib = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mi" | "mib" => Some(number),
        "g" | "gb" | "gi" | "gib" => number.checked_mul(1024),
        _ => return Err(invalid()),
    }
    .ok_or_else(invalid)?;
    if mib < MIN_MEMORY_MIB {
        return Err(format!(
            "memory size `{text}` is too small: a guest needs at least {MIN_MEMORY_MIB}M"
        ));
    }
    if mib > MAX_MEMORY_MIB {
        return Err(format!("memory size `{text}` is larger than 1 TiB"));
    }
    Ok(mib)
}

/// Environment variable names the shell can reference: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid environment variable name `{name}`: use letters, digits and `_`, not starting with a digit"
        ))
    }
}

/// A kernel or rootfs reference: a value with a `/` or starting with `.` or
/// `~` is a path; anything else must be a known name.
pub fn parse_image_ref(kind: ImageKind, text: &str, workspace: &Path) -> Result<ImageRef, String> {
    let text = text.trim();
    if text.contains('/') || text.starts_with('.') || text.starts_with('~') {
        return Ok(ImageRef::Path(resolve_host_path(text, workspace)));
    }
    let known = kind.known_names();
    if known.contains(&text) {
        return Ok(ImageRef::Named(text.to_string()));
    }
    let noun = kind.noun();
    let hint = match suggest(text, known) {
        Some(name) => format!(" (did you mean `{name}`?)"),
        None => String::new(),
    };
    Err(format!(
            "unknown {noun} image `{text}`{hint}: known {noun} images are {}; a file is given by path, like `./images/{noun}.img`",
            known.join(", ")
        ))
}

/// Host paths in a pipeline are relative to the workspace root; `~/` is the
/// user's home directory.
pub fn resolve_host_path(text: &str, workspace: &Path) -> PathBuf {
    if let Some(rest) = text.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let path = Path::new(text);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        workspace.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_written_as_before_the_switch_to_humantime_read_the_same() {
        let secs = Duration::from_secs;
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("30s", secs(30)),
            ("5m", secs(300)),
            ("1h", secs(3600)),
            ("1h30m", secs(5400)),
            ("1m 30s", secs(90)),
            ("1h 30 m", secs(5400)),
            ("500ms", ms(500)),
            ("1.5s", ms(1500)),
            ("0.25m", secs(15)),
            ("1.5h", secs(5400)),
            ("2hrs", secs(7200)),
            ("1 hr", secs(3600)),
            ("5mins", secs(300)),
            ("10 secs", secs(10)),
            ("3sec", secs(3)),
            ("45", secs(45)),
            ("1.5", ms(1500)),
            (" 30s ", secs(30)),
            ("168h", secs(7 * 24 * 3600)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn what_was_refused_is_refused() {
        for bad in [
            "",
            " ",
            "5x",
            "s",
            "m5",
            "1..2s",
            "-3s",
            "+3s",
            "0s",
            "0",
            "8d",
            "9999h",
            "169h",
            "inf",
            "NaN",
            "1.2.3",
            "1e3s",
            "1m30",
            "99999999999999999999s",
            // humantime would read these as 10s and 130s.
            "1 0s",
            "1 30s",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid duration `{bad}`: ")),
                "{err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(parse_duration("5x").unwrap_err().contains("like `30s`"));
        assert!(parse_duration("0s")
            .unwrap_err()
            .ends_with("must be greater than zero"));
        assert!(parse_duration("8d")
            .unwrap_err()
            .ends_with("longer than 7 days"));
        assert!(parse_duration("99999999999999999999s")
            .unwrap_err()
            .ends_with("longer than 7 days"));
    }

    #[test]
    fn humantime_adds_units_and_needs_digits_around_a_point() {
        // Accepted since humantime (docs/pipeline-format.md, Durations).
        let secs = Duration::from_secs;
        assert_eq!(parse_duration("2d"), Ok(secs(2 * 86400)));
        assert_eq!(parse_duration("1w"), Ok(secs(7 * 86400)));
        assert_eq!(parse_duration("90 seconds"), Ok(secs(90)));
        assert_eq!(parse_duration("2 minutes"), Ok(secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        // Refused since: a point without a digit on both sides, and a
        // fraction humantime cannot add up exactly.
        for bad in [".5s", "5.s", ".5"] {
            assert!(
                parse_duration(bad).unwrap_err().contains("like `30s`"),
                "{bad:?}"
            );
        }
        assert!(parse_duration("1.333h")
            .unwrap_err()
            .contains("a fraction finer than its unit allows"));
    }

    #[test]
    fn unbounded_durations_take_zero_and_long_ages() {
        assert_eq!(parse_unbounded_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_unbounded_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_unbounded_duration("30d"),
            Ok(Duration::from_secs(30 * 86400))
        );
        assert!(parse_unbounded_duration("1 30s").is_err());
        assert!(parse_unbounded_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn formats_durations_compactly() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(4240)), "4.2s");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Ok(512));
        assert_eq!(parse_memory("512"), Ok(512));
        assert_eq!(parse_memory("1G"), Ok(1024));
        assert_eq!(parse_memory("2GiB"), Ok(2048));
        assert_eq!(parse_memory("256 MB"), Ok(256));
        for bad in ["", "G", "1T", "12x", "8M", "-1G", "99999999999999999999G"] {
            assert!(parse_memory(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_memory("8M").unwrap_err().contains("at least 16M"));
    }

    #[test]
    fn env_names() {
        assert!(check_env_name("RUST_LOG").is_ok());
        assert!(check_env_name("_x1").is_ok());
        for bad in ["", "1X", "A-B", "A B", "É"] {
            assert!(check_env_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn image_refs() {
        let ws = Path::new("/repo");
        assert_eq!(
            parse_image_ref(ImageKind::Rootfs, "debian", ws),
            Ok(ImageRef::Named("debian".into()))
        );
        assert_eq!(
            parse_image_ref(ImageKind::Kernel, "./k/vmlinux", ws),
            Ok(ImageRef::Path("/repo/./k/vmlinux".into()))
        );
        assert_eq!(
            parse_image_ref(ImageKind::Rootfs, "/img/r.ext4", ws),
            Ok(ImageRef::Path("/img/r.ext4".into()))
        );
        let err = parse_image_ref(ImageKind::Rootfs, "debain", ws).unwrap_err();
        assert!(err.starts_with("unknown rootfs image `debain` (did you mean `debian`?)"));
        assert!(err.contains("known rootfs images are minimal, debian"));
    }
}
