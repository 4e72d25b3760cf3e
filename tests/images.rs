//! Images as code: pipelines whose `image:` is a spec the runner builds
//! (Debian packages, an OCI image, files, setup), cached by hash.
//!
//! The Debian builds fetch from deb.debian.org and take minutes, so they
//! share one spec ([`DEBIAN_GCC`]) and the user's image cache: after the
//! first run it is a cache hit. The rest use `base: minimal` or an OCI
//! layout, in a private cache (`RUNNER_CACHE`), built in about a second.

use std::path::Path;
use std::process::{Command, Output};

use e2e_tests::{both, require_tool, runner_bin, runner_test};

/// The one Debian spec of these tests: gcc, a file, a setup that uses both.
const DEBIAN_GCC: &str = "\
image:
  base: debian
  packages: [gcc, libc6-dev]
  files: [{ from: greeting.h, to: /usr/local/include/greeting.h }]
  setup: |
    echo 'setup: building the image' > /etc/runner-setup-ran
    id -u > /etc/setup-uid
    cat /proc/self/uid_map > /etc/setup-uid-map
    if echo escaped > /proc/1/root/etc/runner-escape-debian-gcc; then echo ESCAPED > /etc/setup-escaped; fi
";

const HELLO_C: &str = "#include <stdio.h>\n#include <greeting.h>\nint main(void) { printf(\"%s %d\\n\", GREETING, 6 * 7); return 0; }\n";

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write_gcc_workspace(dir: &Path) {
    std::fs::write(
        dir.join("greeting.h"),
        "#define GREETING \"hello from gcc\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("hello.c"), HELLO_C).unwrap();
}

fn gcc_pipeline() -> String {
    format!(
        "{DEBIAN_GCC}defaults: {{ files: [hello.c], timeout: 10m }}\njobs:\n  compile:\n    steps:\n      - cat /etc/runner-setup-ran\n      - gcc -Wall -o /tmp/hello hello.c && /tmp/hello\n      - echo uid=$(cat /etc/setup-uid); echo uid_map=$(cat /etc/setup-uid-map); cat /etc/setup-escaped 2>/dev/null || true\n"
    )
}

#[test]
fn a_debian_image_with_gcc_compiles_and_runs_c_and_the_second_run_is_cached() {
    require_tool("mmdebstrap", "mmdebstrap");
    let dir = tempfile::tempdir().unwrap();
    write_gcc_workspace(dir.path());
    let first = runner_test(dir.path(), &gcc_pipeline()).output().unwrap();
    let text = both(&first);
    assert_eq!(first.status.code(), Some(0), "{text}");
    assert!(text.contains("hello from gcc 42"), "{text}");
    assert!(text.contains("setup: building the image"), "{text}");
    assert_setup_was_not_host_root(&text, Path::new("/etc/runner-escape-debian-gcc"));

    let second = runner_test(dir.path(), &gcc_pipeline()).output().unwrap();
    let text = both(&second);
    assert_eq!(second.status.code(), Some(0), "{text}");
    assert!(
        text.contains("(debian + gcc libc6-dev, 1 file, setup): cached"),
        "the second run must reuse the image and say so:\n{text}"
    );
    assert!(!text.contains("): building"), "{text}");
}

/// What a job printed about its image's setup (`uid=…`, `uid_map=…`):
/// setup ran as root *in a user namespace*, whose root is not the host's,
/// and its write through /proc/1/root to a host path only root may write
/// (`escape`) failed.
fn assert_setup_was_not_host_root(text: &str, escape: &Path) {
    let value = |key: &str| {
        text.lines()
            .find_map(|line| {
                line.split_once(&format!("] {key}="))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("the job printed no {key}=:\n{text}"))
    };
    assert_eq!(
        value("uid"),
        "0",
        "setup runs as root in the image:\n{text}"
    );
    // Lines of `inside outside count`: the host's uid 0 must not be mapped
    // in (the initial namespace's map is `0 0 4294967295`).
    let map = value("uid_map");
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert!(
        !fields.is_empty() && fields.len().is_multiple_of(3),
        "uid_map: {map}"
    );
    assert!(
        fields.chunks(3).all(|m| m[1] != "0"),
        "setup's root must not be the host's root; its uid_map is `{map}`"
    );
    assert!(
        !text.contains("ESCAPED"),
        "setup wrote a host file:\n{text}"
    );
    assert!(
        !escape.exists(),
        "setup created {} on the host",
        escape.display()
    );
}

#[test]
fn setup_runs_as_root_of_a_user_namespace_and_cannot_write_host_files() {
    let dir = tempfile::tempdir().unwrap();
    // Not in the workspace, which the job copies into the guest.
    let cache = tempfile::tempdir().unwrap();
    // Unique per run, in directories only the host's root may write.
    let tag = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let escapes = [
        format!("/etc/runner-escape-{tag}"),
        format!("/root/runner-escape-{tag}"),
    ];
    let mut setup =
        String::from("id -u > /etc/setup-uid\ncat /proc/self/uid_map > /etc/setup-uid-map\n");
    for path in &escapes {
        setup.push_str(&format!(
            "if echo escaped > /proc/1/root{path}; then echo ESCAPED {path} >> /etc/setup-escaped; fi\n"
        ));
    }
    let yaml = format!(
        "image:\n  base: minimal\n  setup: |\n{}jobs:\n  probe:\n    steps:\n      - echo uid=$(cat /etc/setup-uid); echo uid_map=$(cat /etc/setup-uid-map); cat /etc/setup-escaped 2>/dev/null || true\n",
        setup.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    let out = runner_test(dir.path(), &yaml)
        .env("RUNNER_CACHE", cache.path())
        .output()
        .unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for path in &escapes {
        assert_setup_was_not_host_root(&text, Path::new(path));
    }
}

#[test]
fn as_root_a_missing_build_user_fails_with_one_line_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "image:\n  base: minimal\n  setup: echo hi\njobs:\n  never: { steps: [echo job-started] }\n";
    let out = runner_test(dir.path(), yaml)
        .env("RUNNER_CACHE", dir.path().join("cache"))
        .env("RUNNER_BUILD_USER", "runner-no-such-user")
        .output()
        .unwrap();
    let text = both(&out);
    if !nix::unistd::geteuid().is_root() {
        // Without root the build runs as the caller and needs no build user.
        assert_eq!(out.status.code(), Some(0), "{text}");
        return;
    }
    assert_ne!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("runner-no-such-user"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("does not exist: run scripts/setup-host"),
        "{text}"
    );
    assert!(!text.contains("job-started"), "{text}");
    assert!(
        !text.contains("setup: hi"),
        "setup must not run as root:\n{text}"
    );
}

#[test]
fn image_files_from_outside_the_workspace_are_refused_like_job_files() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "a host secret\n").unwrap();
    std::os::unix::fs::symlink(
        outside.path().parent().unwrap(),
        dir.path().join("tmp-link"),
    )
    .unwrap();
    let name = outside.path().file_name().unwrap().to_string_lossy();
    for from in [
        outside.path().display().to_string(),
        format!("tmp-link/{name}"),
    ] {
        let yaml = format!(
            "image:\n  base: minimal\n  files: [{{ from: {from}, to: /leak }}]\njobs:\n  j: {{ steps: [cat /leak] }}\n"
        );
        let out = runner_test(dir.path(), &yaml)
            .env("RUNNER_CACHE", cache.path())
            .output()
            .unwrap();
        let text = both(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("--allow-host-files"), "{text}");
        assert!(!text.contains("a host secret"), "{text}");
        assert!(!text.contains("building"), "nothing is built:\n{text}");
    }
}

#[test]
fn an_unknown_package_exits_2_with_apts_error_before_any_job() {
    require_tool("mmdebstrap", "mmdebstrap");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let yaml = "image:\n  base: debian\n  packages: [no-such-package-runner-e2e]\njobs:\n  never: { steps: [echo job-started] }\n";
    let out = runner_test(dir.path(), yaml)
        .env("RUNNER_CACHE", &cache)
        .output()
        .unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("E: Unable to locate package no-such-package-runner-e2e"),
        "{text}"
    );
    assert!(
        !text.contains("job-started") && !text.contains("[never]"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(cache.join("images"))
            .unwrap()
            .flatten()
            // The lock file and the downloaded-.deb cache may stay.
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !name.ends_with(".lock") && name != "debs"
            })
            .map(|e| e.file_name())
            .collect::<Vec<_>>(),
        Vec::<std::ffi::OsString>::new(),
        "a failed build leaves nothing behind"
    );
}

#[test]
fn a_failing_setup_exits_2_with_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "image:\n  base: minimal\n  setup: |\n    echo preparing the toolchain\n    echo no space for the toolchain >&2\n    exit 3\njobs:\n  never: { steps: [echo job-started] }\n";
    let out = runner_test(dir.path(), yaml)
        .env("RUNNER_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("preparing the toolchain"), "{text}");
    assert!(text.contains("no space for the toolchain"), "{text}");
    assert!(text.contains("setup failed (exit status 3)"), "{text}");
    assert!(!text.contains("job-started"), "{text}");
}

#[test]
fn an_image_larger_than_its_size_says_by_how_much() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 40 << 20]).unwrap();
    let yaml = "image:\n  base: minimal\n  files: [{ from: big.bin, to: /opt/big.bin }]\n  size: 32M\njobs:\n  never: { steps: [true] }\n";
    let out = runner_test(dir.path(), yaml)
        .env("RUNNER_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("more than its size: 32M"))
        .unwrap_or_else(|| panic!("no size line in:\n{text}"));
    assert!(line.contains("the image needs "), "{line}");
}

/// An OCI layout made by umoci: a lower layer with three files, an upper
/// one that deletes one of them (a `.wh.` whiteout) and adds another.
fn make_oci_layout(dir: &Path) -> std::path::PathBuf {
    let umoci = require_tool("umoci", "umoci");
    let run = |args: &[&str]| {
        let out = Command::new(&umoci)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "umoci {args:?}: {}", stderr(&out));
    };
    run(&["init", "--layout", "layout"]);
    run(&["new", "--image", "layout:test"]);
    run(&["unpack", "--rootless", "--image", "layout:test", "bundle"]);
    let rootfs = dir.join("bundle/rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    // A busybox image, as Alpine's: the binary and a link per applet.
    let busybox = require_tool("/bin/busybox", "busybox-static");
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    let applets = Command::new(&busybox).arg("--list-full").output().unwrap();
    for applet in stdout(&applets)
        .lines()
        .filter(|a| !a.is_empty() && *a != "bin/busybox")
    {
        let link = rootfs.join(applet);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = std::os::unix::fs::symlink("/bin/busybox", link);
    }
    std::fs::write(rootfs.join("etc/lower.txt"), "from the lower layer\n").unwrap();
    std::fs::write(rootfs.join("etc/deleted.txt"), "must be hidden\n").unwrap();
    // --refresh-bundle: the next repack diffs against this layer.
    run(&[
        "repack",
        "--refresh-bundle",
        "--image",
        "layout:test",
        "bundle",
    ]);
    std::fs::remove_file(rootfs.join("etc/deleted.txt")).unwrap();
    std::fs::write(rootfs.join("etc/upper.txt"), "from the upper layer\n").unwrap();
    run(&["repack", "--image", "layout:test", "bundle"]);
    dir.join("layout")
}

#[test]
fn an_oci_images_files_are_visible_and_its_whiteout_hides_the_lower_file() {
    let dir = tempfile::tempdir().unwrap();
    let layout = make_oci_layout(dir.path());
    // The second layer really holds a whiteout for the file.
    let listing = Command::new("sh")
        .arg("-c")
        .arg("for b in blobs/sha256/*; do tar -tzf $b 2>/dev/null; done")
        .current_dir(&layout)
        .output()
        .unwrap();
    assert!(
        stdout(&listing).contains("etc/.wh.deleted.txt"),
        "{}",
        stdout(&listing)
    );
    let yaml = "image: { oci: layout }\ndefaults: { files: none }\njobs:\n  look:\n    steps:\n      - cat /etc/lower.txt /etc/upper.txt\n      - test ! -e /etc/deleted.txt && echo deleted-is-gone\n";
    let out = runner_test(dir.path(), yaml)
        .env("RUNNER_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("from the lower layer"), "{text}");
    assert!(text.contains("from the upper layer"), "{text}");
    assert!(text.contains("deleted-is-gone"), "{text}");
}

fn image_build(dir: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(runner_bin());
    cmd.env("RUNNER_CACHE", cache)
        .env("RUNNER_KERNEL", &e2e_tests::images().kernel)
        .env("RUNNER_ROOTFS", &e2e_tests::images().rootfs)
        .current_dir(dir)
        .args(["image", "build", "pipeline.yml"]);
    cmd
}

#[test]
fn concurrent_builds_of_one_spec_build_once_and_a_corrupt_entry_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::write(
        dir.path().join("pipeline.yml"),
        "image:\n  base: minimal\n  setup: sleep 2\njobs:\n  a: { steps: [true] }\n",
    )
    .unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            image_build(dir.path(), &cache)
                .stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let all: String = outputs.iter().map(both).collect();
    for out in &outputs {
        assert_eq!(out.status.code(), Some(0), "{all}");
    }
    assert_eq!(all.matches("): building").count(), 1, "{all}");
    // One path a line: the kernel, then the built root file system.
    let paths: Vec<String> = outputs
        .iter()
        .map(|o| stdout(o).lines().last().unwrap_or_default().to_string())
        .collect();
    assert!(paths[0].ends_with(".ext4"), "{paths:?}");
    assert!(paths.iter().all(|p| p == &paths[0]), "{paths:?}");

    // Half the image gone: the size no longer matches the manifest.
    let image = std::fs::OpenOptions::new()
        .write(true)
        .open(&paths[0])
        .unwrap();
    let len = image.metadata().unwrap().len();
    image.set_len(len / 2).unwrap();
    let out = image_build(dir.path(), &cache).output().unwrap();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("cache entry is corrupt"), "{text}");
    assert_eq!(std::fs::metadata(&paths[0]).unwrap().len(), len, "{text}");

    let list = Command::new(runner_bin())
        .env("RUNNER_CACHE", &cache)
        .args(["image", "list"])
        .output()
        .unwrap();
    assert!(
        stdout(&list).contains("minimal + setup"),
        "{}",
        stdout(&list)
    );
    // The rebuilt image matches its manifest's sha256 too.
    let verified = image_build(dir.path(), &cache)
        .arg("--verify")
        .output()
        .unwrap();
    assert_eq!(verified.status.code(), Some(0), "{}", both(&verified));
    assert!(stderr(&verified).contains("cached"), "{}", both(&verified));

    // Kept: the pipeline passed to --keep uses it.
    let kept = Command::new(runner_bin())
        .env("RUNNER_CACHE", &cache)
        .env("RUNNER_ROOTFS", &e2e_tests::images().rootfs)
        .current_dir(dir.path())
        .args(["image", "prune", "--keep", "pipeline.yml"])
        .output()
        .unwrap();
    assert_eq!(kept.status.code(), Some(0), "{}", both(&kept));
    assert!(Path::new(&paths[0]).exists(), "{}", both(&kept));

    let prune = Command::new(runner_bin())
        .env("RUNNER_CACHE", &cache)
        .args(["image", "prune", "--older-than", "0s"])
        .output()
        .unwrap();
    assert_eq!(prune.status.code(), Some(0), "{}", both(&prune));
    assert!(!Path::new(&paths[0]).exists(), "{}", both(&prune));
}
