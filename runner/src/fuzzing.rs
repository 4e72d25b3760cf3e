//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature):
//! the places where the runner reads what it must not trust, the pipeline
//! YAML (pull requests), and from the guest the artifact tar stream and
//! the test reports (JUnit XML, libtest output).
//!
//! They live here, not in the fuzz crate, so that this crate's own tests can
//! replay the inputs kept in `fuzz/regressions/` through exactly the code the
//! fuzzer ran, and so that the unpacker need not be public.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;

use crate::imported::{junit_xml, libtest, TextLimit};
use crate::pipeline::cache::{
    check_cache_key, overlap, refusal, resolve_cache_path, MIN_CACHE_SIZE,
};
use crate::pipeline::host_scope::lexically_inside;
use crate::pipeline::service::{check_service_name, MAX_SERVICES};
use crate::pipeline::{Pipeline, MIN_MEMORY_MIB};
use crate::plan::{Plan, PlannedCache, PlannedService};
use crate::results::{ImportedCase, ImportedResult, Output};
use crate::session::unpack::{unpack, ArtifactBudget, ArtifactLimits};

/// Parses `data` as a pipeline file and plans it. Bad YAML must give an
/// error, never a panic; a pipeline that parses must plan into uniquely
/// named jobs whose log directory names are safe, and whose caches have
/// keys the store can use as directory names and absolute, allowed,
/// non-overlapping paths, and whose services have distinct host names and
/// something to run. Returns whether it parsed.
pub fn pipeline(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    // An empty directory: relative host paths resolve, and find nothing.
    static WORKSPACE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let workspace = WORKSPACE.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    let Ok(pipeline) = Pipeline::parse(text, Path::new("fuzz.yml"), workspace.path()) else {
        return false;
    };
    let plan = Plan::new(&pipeline);
    let mut names = HashSet::new();
    let mut slugs = HashSet::new();
    for job in &plan.jobs {
        assert!(names.insert(&job.name), "duplicate job name {}", job.name);
        assert!(slugs.insert(&job.slug), "duplicate slug {}", job.slug);
        assert!(
            !job.slug.contains('/') && job.slug != "." && job.slug != "..",
            "unsafe slug {:?}",
            job.slug
        );
        for step in &job.steps {
            let _ = step.exec_request(None);
        }
        check_caches(&job.caches);
        check_services(&job.services);
    }
    true
}

fn check_services(services: &[PlannedService]) {
    assert!(
        services.len() <= MAX_SERVICES,
        "{} services",
        services.len()
    );
    let mut names = HashSet::new();
    for service in services {
        assert!(
            names.insert(&service.name),
            "service {} twice",
            service.name
        );
        assert_eq!(check_service_name(&service.name), Ok(()));
        assert!(!service.run.trim().is_empty(), "empty run");
        assert!(!service.ready_timeout.is_zero(), "zero ready_timeout");
        assert!(
            service.memory_mib >= MIN_MEMORY_MIB,
            "{}",
            service.memory_mib
        );
    }
}

fn check_caches(caches: &[PlannedCache]) {
    let mut keys = HashSet::new();
    let mut paths: Vec<&str> = Vec::new();
    for cache in caches {
        assert!(keys.insert(&cache.key), "key {} twice", cache.key);
        for key in std::iter::once(&cache.key).chain(&cache.fallback_keys) {
            assert_eq!(check_cache_key(key, "key"), Ok(()));
        }
        assert!(cache.size >= MIN_CACHE_SIZE, "size {}", cache.size);
        assert!(!cache.paths.is_empty());
        for path in &cache.paths {
            assert_eq!(
                resolve_cache_path("/", path).as_ref(),
                Ok(path),
                "not absolute and normalized"
            );
            assert_eq!(refusal(path), None);
            assert!(
                paths.iter().all(|other| !overlap(other, path)),
                "{path} overlaps"
            );
            paths.push(path);
        }
    }
}

/// The budget the fuzzer unpacks with: small, so that running out is reached.
pub const FUZZ_LIMITS: ArtifactLimits = ArtifactLimits {
    max_bytes: 64 * 1024,
    max_entries: 64,
};

/// Unpacks `data` as an artifact stream from the guest into a fresh
/// directory, twice over with one budget (a job fetches several patterns)
/// when the first byte is odd, then checks what a hostile guest must never
/// achieve: anything outside the directory, a setuid/setgid/sticky bit,
/// group/other write, a symlink leading out, more bytes than the budget.
/// Returns whether anything was unpacked.
pub fn unpack_tar(data: &[u8]) -> bool {
    let Some((&control, stream)) = data.split_first() else {
        return false;
    };
    let sandbox = tempfile::tempdir().expect("temp dir");
    let dest = sandbox.path().join("dest");
    std::fs::create_dir(&dest).expect("dest dir");
    let mut budget = ArtifactBudget::new(FUZZ_LIMITS);
    let mut written = 0;
    let mut created = 0;
    // Odd: the stream is unpacked twice into the same directory, so the
    // second pass meets what the first left (files, links, directories).
    let passes = if control & 1 == 1 { 2 } else { 1 };
    for _ in 0..passes {
        let done = unpack(stream, &dest, &mut budget);
        written += done.bytes;
        created += done.entries;
        if done.hung_up() {
            break;
        }
    }
    assert!(written <= FUZZ_LIMITS.max_bytes, "wrote {written} bytes");
    let (bytes, entries) = budget.used();
    assert!(bytes <= FUZZ_LIMITS.max_bytes && entries <= FUZZ_LIMITS.max_entries);

    let outside: Vec<_> = std::fs::read_dir(sandbox.path())
        .expect("read sandbox")
        .map(|e| e.expect("sandbox entry").file_name())
        .filter(|name| name != "dest")
        .collect();
    assert!(outside.is_empty(), "created outside dest: {outside:?}");
    let mut on_disk = 0;
    check_tree(&dest, &dest, &mut on_disk);
    assert!(on_disk <= FUZZ_LIMITS.max_bytes, "{on_disk} bytes on disk");
    created > 0
}

/// Walks `dir` (inside `root`) without following symlinks.
fn check_tree(root: &Path, dir: &Path, bytes: &mut u64) {
    for entry in std::fs::read_dir(dir).expect("read unpacked dir") {
        let path = entry.expect("dir entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("stat unpacked entry");
        let kind = meta.file_type();
        // A symlink's own mode is always 0777 and means nothing.
        let mode = meta.permissions().mode();
        if !kind.is_symlink() {
            assert_eq!(mode & 0o7022, 0, "{} has mode {mode:o}", path.display());
        }
        if kind.is_symlink() {
            let target = std::fs::read_link(&path).expect("read link");
            let inside = lexically_inside(&path.parent().unwrap().join(&target), root);
            assert!(inside, "{} -> {}", path.display(), target.display());
        } else if kind.is_dir() {
            check_tree(root, &path, bytes);
        } else {
            assert!(kind.is_file(), "{} is not a file", path.display());
            // Files were created by us, one link each: a hard link in the
            // archive is copied, never linked.
            assert_eq!(meta.nlink(), 1, "{} is hard-linked", path.display());
            *bytes += meta.len();
        }
    }
}

/// Text limits a report is read with (the runner's `--output-limit`,
/// which may be anything), picked by bits 0-1 of the input's first byte:
/// small ones, so that cutting is reached, and the default.
pub const REPORT_TEXT_LIMITS: [usize; 4] = [0, 7, 100, 64 * 1024];

/// The text limit and the report text of a report input: as
/// `imported::import_file` reads a file, invalid UTF-8 becomes U+FFFD.
fn report_input(data: &[u8]) -> Option<(usize, String)> {
    let (&control, bytes) = data.split_first()?;
    let limit = REPORT_TEXT_LIMITS[usize::from(control & 3)];
    Some((limit, String::from_utf8_lossy(bytes).into_owned()))
}

/// Where the fuzzed report pretends to be on the host.
const REPORT_SOURCE: &str = "out/reports/fuzz/report";

/// Parses the input (after the control byte) as a guest's JUnit XML
/// report. Whatever it holds, every testcase must be bounded (see
/// [`check_case`]), and there are no more testcases than the text names.
/// Returns whether the report parsed.
pub fn junit(data: &[u8]) -> bool {
    let Some((limit, text)) = report_input(data) else {
        return false;
    };
    let texts = TextLimit {
        limit,
        source: Path::new(REPORT_SOURCE),
    };
    let Ok(cases) = junit_xml::parse(&text, &texts) else {
        return false;
    };
    // Every testcase is an element, so its name is in the text.
    let named = text.matches("testcase").count();
    assert!(cases.len() <= named, "{} cases, {named} named", cases.len());
    for case in &cases {
        check_case(case, limit);
    }
    true
}

/// Parses the input (after the control byte) as a guest's libtest output.
/// Every testcase must be bounded (see [`check_case`]), at most one per
/// line, and every note bounded too. Returns whether it held a testcase.
pub fn libtest(data: &[u8]) -> bool {
    let Some((limit, text)) = report_input(data) else {
        return false;
    };
    let texts = TextLimit {
        limit,
        source: Path::new(REPORT_SOURCE),
    };
    let imported = libtest::parse(&text, "fuzz-0123456789abcdef", &texts);
    let lines = text.lines().count();
    let cases = imported.cases.len();
    assert!(cases <= lines, "{cases} cases from {lines} lines");
    // One note per section at most, and a section ends at a line or at
    // the end of the text.
    assert!(imported.notes.len() <= lines + 1);
    for note in &imported.notes {
        // The fixed wording and two counts around one cut text.
        assert!(note.len() <= limit + 200, "a note of {} bytes", note.len());
    }
    for case in &imported.cases {
        check_case(case, limit);
    }
    cases > 0
}

/// Longest wording the readers put in a testcase themselves, whatever the
/// limit (libtest's "test failed" before the failure's output is read).
const OWN_WORDING: usize = 16;

/// Asserts that everything `case` keeps from the report is cut to `limit`
/// (a one-line text may gain an ellipsis) and that its time is sane.
fn check_case(case: &ImportedCase, limit: usize) {
    let text_bound = limit.max(OWN_WORDING) + '…'.len_utf8();
    let mut texts = vec![("name", &case.name)];
    texts.extend(case.classname.iter().map(|c| ("classname", c)));
    texts.extend(case.file.iter().map(|f| ("file", f)));
    let mut outputs = vec![
        ("system-out", &case.system_out),
        ("system-err", &case.system_err),
    ];
    match &case.result {
        ImportedResult::Passed => {}
        ImportedResult::Failed(problem) | ImportedResult::Error(problem) => {
            texts.push(("message", &problem.message));
            texts.push(("type", &problem.kind));
            outputs.push(("body", &problem.body));
        }
        ImportedResult::Skipped { message } => texts.push(("skip message", message)),
    }
    for (what, text) in texts {
        assert!(
            text.len() <= text_bound,
            "{what} of {} bytes kept, the limit is {limit}",
            text.len()
        );
    }
    for (what, output) in outputs {
        check_output(what, output, limit);
    }
    if let Some(time) = case.time {
        assert!(time.as_secs() <= 366 * 24 * 3600, "a time of {time:?}");
    }
}

fn check_output(what: &str, output: &Output, limit: usize) {
    let kept = output.head.len() + output.tail.len();
    assert!(
        kept <= limit,
        "{what}: {kept} bytes kept, the limit is {limit}"
    );
    assert!(
        kept as u64 <= output.total_bytes,
        "{what}: more kept than seen"
    );
    assert_eq!(
        output.truncated,
        kept as u64 != output.total_bytes,
        "{what}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_devices::fuzzing::replay;

    #[test]
    fn replay_pipeline_inputs() {
        replay("pipeline", pipeline);
    }

    #[test]
    fn replay_unpack_inputs() {
        replay("unpack", unpack_tar);
    }

    #[test]
    fn replay_junit_inputs() {
        replay("junit", junit);
    }

    #[test]
    fn replay_libtest_inputs() {
        replay("libtest", libtest);
    }

    #[test]
    fn lexical_containment() {
        let root = Path::new("/r");
        assert!(lexically_inside(Path::new("/r/a/../b"), root));
        assert!(!lexically_inside(Path::new("/r/a/../../etc"), root));
        assert!(!lexically_inside(Path::new("/etc"), root));
    }
}
