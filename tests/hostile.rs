//! Hostile guests and pipelines, and cleaning up after a killed runner:
//! `runner test` as a user runs it.
//!
//! The first tests need no VM (they stop before one boots); the others boot
//! real guests and need the images (see support.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use e2e_tests::{eventually, images, processes_mentioning, runner_bin, vm_dirs};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `runner test pipeline.yml` in `dir`, with `dir` as the temp dir too.
fn runner_test(dir: &Path, yaml: &str, args: &[&str], with_images: bool) -> Command {
    std::fs::write(dir.join("pipeline.yml"), yaml).unwrap();
    let mut cmd = Command::new(runner_bin());
    if with_images {
        let images = images();
        cmd.env("RUNNER_KERNEL", &images.kernel)
            .env("RUNNER_ROOTFS", &images.rootfs);
    }
    cmd.env("CI", "true")
        .env("TMPDIR", dir)
        .current_dir(dir)
        .args(["test", "pipeline.yml"])
        .args(args);
    cmd
}

fn one_line_error(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "expected one line:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

const TRIVIAL: &str = "name: t\ndefaults: { files: none }\njobs:\n  a:\n    steps: [\"true\"]\n";

#[test]
fn out_dot_never_deletes_the_user_s_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("logs/keep.txt"), "mine").unwrap();
    let out = runner_test(dir.path(), TRIVIAL, &["--out", "."], false)
        .output()
        .unwrap();
    let stderr = one_line_error(&out);
    assert!(stderr.contains("was not created by runner"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("logs/keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn files_from_outside_the_workspace_need_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: t\njobs:\n  a:\n    files:\n      - from: /etc/passwd\n        to: /tmp/\n    steps: [\"true\"]\n";
    let out = runner_test(dir.path(), yaml, &["--out", "out"], false)
        .output()
        .unwrap();
    let stderr = one_line_error(&out);
    assert!(
        stderr.contains("`/etc/passwd` is outside the workspace")
            && stderr.contains("--allow-host-files"),
        "{stderr}"
    );
    assert!(!dir.path().join("out/logs").exists());
}

/// A guest that returns every kind of hostile artifact.
const HOSTILE: &str = r#"
name: hostile
defaults: { files: none }
jobs:
  evil:
    workdir: /tmp
    steps:
      - name: plant
        run: |
          echo '#!/bin/sh' > suid && chmod 4755 suid
          ln -s /etc/shadow shadow
          mknod null c 1 3
          echo '<testsuite/>' > /tmp/pytest-junit.xml
          truncate -s 50G big
    artifacts:
      - suid
      - shadow
      - null
      - /tmp/pytest-junit.xml
      - missing.xml
      - big
      - suid
"#;

#[test]
fn hostile_artifacts_come_back_as_data_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner_test(dir.path(), HOSTILE, &["--out", "out"], true)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let got = dir.path().join("out/artifacts/01-evil");
    let mode = std::fs::metadata(got.join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert!(std::fs::symlink_metadata(got.join("shadow")).is_err());
    assert!(std::fs::symlink_metadata(got.join("null")).is_err());
    assert!(std::fs::symlink_metadata(got.join("big")).is_err());
    // An absolute artifact lands under its path minus the leading `/`.
    assert_eq!(
        std::fs::read_to_string(got.join("tmp/pytest-junit.xml")).unwrap(),
        "<testsuite/>\n"
    );
    for expected in [
        "==== evil: 5 artifact problems ====",
        "artifact refused: shadow: symlink to /etc/shadow leads out",
        "artifact `missing.xml` not collected",
        "artifact `big`: artifact limit reached: big",
        "artifact `suid` not collected: the transfer was stopped at the artifact limit",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    // The agent's tar builder cannot archive a device node at all (it
    // reports an error), so the host's own refusal of devices is only
    // reached by forged archives (runner/src/session/unpack_tests.rs).
    assert!(
        stdout.contains("artifact refused: null: device nodes are not copied out")
            || stdout.contains("artifact `null` not collected"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    assert!(xml.contains("symlink to /etc/shadow leads out"), "{xml}");
}

/// Polls `done` until it holds; the limit is only a backstop against a
/// hung test, far above what a slow machine needs.
#[test]
fn a_killed_runner_leaves_no_vm_behind_and_its_dir_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let slow = "name: t\ndefaults: { files: none }\njobs:\n  a:\n    steps: [\"sleep 3600\"]\n";
    let mut runner = runner_test(dir.path(), slow, &["--out", "out"], true)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The VM process names its sockets in the temp dir: once it runs, kill.
    let needle = dir.path().to_string_lossy().into_owned();
    eventually("a VM process to start", || {
        !processes_mentioning(&needle).is_empty()
    });
    runner.kill().unwrap(); // SIGKILL: no cleanup runs
    runner.wait().unwrap();
    eventually("the VM processes to die", || {
        processes_mentioning(&needle).is_empty()
    });
    assert_eq!(vm_dirs(dir.path()).len(), 1, "the dead runner's VM dir");

    // The next run sweeps it (and cleans up its own).
    let out = runner_test(dir.path(), TRIVIAL, &["--out", "out"], true)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}

// --- What a pull request may not reach (issue 18): each of these was open
// on main before the operator's grants, the trusted cache, the safe out
// directory, the OCI unpacker and the jail. ---

#[test]
fn an_image_path_or_a_network_the_operator_did_not_grant_is_refused_before_booting() {
    let dir = tempfile::tempdir().unwrap();
    for (image, flag) in [
        ("{ rootfs: /etc/shadow }", "--allow-host-files"),
        ("{ kernel: /boot/vmlinuz }", "--allow-host-files"),
        ("{ oci: /var/lib/containers }", "--allow-host-files"),
    ] {
        let yaml = format!("name: t\nimage: {image}\njobs:\n  a:\n    steps: [\"true\"]\n");
        let stderr = one_line_error(&runner_test(dir.path(), &yaml, &[], false).output().unwrap());
        assert!(
            stderr.contains("is outside the workspace") && stderr.contains(flag),
            "{stderr}"
        );
    }
    let open = "name: t\njobs:\n  a:\n    network: true\n    steps: [\"true\"]\n";
    let stderr = one_line_error(&runner_test(dir.path(), open, &[], false).output().unwrap());
    assert!(
        stderr.contains("pass --allow-network to grant it"),
        "{stderr}"
    );
    let host =
        "name: t\njobs:\n  a:\n    network: { allow: ['127.0.0.1:2375'] }\n    steps: [\"true\"]\n";
    let stderr = one_line_error(
        &runner_test(dir.path(), host, &["--allow-network"], false)
            .output()
            .unwrap(),
    );
    assert!(
        stderr.contains("--allow-network=127.0.0.1:2375"),
        "{stderr}"
    );
    assert!(!dir.path().join("runner-out").exists(), "nothing may start");
}

#[test]
fn a_committed_out_marker_symlink_never_lets_the_runner_write_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("passwd");
    std::fs::write(&victim, "root:x:0:0::/root:/bin/sh\n").unwrap();
    let out_dir = dir.path().join("runner-out");
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::symlink(&victim, out_dir.join(".runner-out")).unwrap();
    let stderr = one_line_error(
        &runner_test(dir.path(), TRIVIAL, &[], false)
            .output()
            .unwrap(),
    );
    assert!(stderr.contains("is a symlink"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    // A symlinked out directory: every report would go there.
    std::fs::remove_file(out_dir.join(".runner-out")).unwrap();
    std::fs::remove_dir(&out_dir).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), &out_dir).unwrap();
    let stderr = one_line_error(
        &runner_test(dir.path(), TRIVIAL, &[], false)
            .output()
            .unwrap(),
    );
    assert!(stderr.contains("is a symlink"), "{stderr}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn a_cache_another_user_could_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let yaml = "name: t\nimage: { base: minimal }\njobs:\n  a:\n    steps: [\"true\"]\n";
    let out = runner_test(dir.path(), yaml, &[], true)
        .env("RUNNER_CACHE", &cache)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("is writable by everyone") && stderr.contains("another user could plant"),
        "{stderr}"
    );
    assert!(!cache.join("images").exists(), "nothing was built there");
}

/// An OCI image layout whose one layer holds `entry` (a tar member made by
/// Python's tarfile, so no device file is needed to describe one).
fn oci_layout_with(dir: &Path, kind: &str) -> std::path::PathBuf {
    let layout = dir.join("layout");
    let script = r#"
import hashlib, io, json, os, sys, tarfile
layout, kind = sys.argv[1], sys.argv[2]
os.makedirs(f"{layout}/blobs/sha256")
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    open(f"{layout}/blobs/sha256/{digest}", "wb").write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as tar:
    sh = tarfile.TarInfo("bin/busybox"); sh.size = 0; sh.mode = 0o755
    tar.addfile(sh, io.BytesIO(b""))
    node = tarfile.TarInfo("dev/sda")
    node.type = tarfile.BLKTYPE if kind == "block" else tarfile.CHRTYPE
    node.devmajor, node.devminor, node.mode = 8, 0, 0o666
    tar.addfile(node)
layer_desc = blob(layer.getvalue())
layer_desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
config = blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode())
config["mediaType"] = "application/vnd.oci.image.config.v1+json"
manifest = blob(json.dumps({"schemaVersion": 2, "config": config, "layers": [layer_desc]}).encode())
manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
json.dump({"imageLayoutVersion": "1.0.0"}, open(f"{layout}/oci-layout", "w"))
json.dump({"schemaVersion": 2, "manifests": [manifest]}, open(f"{layout}/index.json", "w"))
"#;
    let status = Command::new(e2e_tests::require_tool("python3", "python3"))
        .args(["-c", script])
        .arg(&layout)
        .arg(kind)
        .status()
        .unwrap();
    assert!(status.success());
    layout
}

#[test]
fn an_oci_layer_with_a_device_node_is_refused_and_nothing_is_unpacked_as_root() {
    for kind in ["block", "char"] {
        let dir = tempfile::tempdir().unwrap();
        oci_layout_with(dir.path(), kind);
        let yaml = "name: t\nimage: { oci: layout }\njobs:\n  a:\n    steps: [\"true\"]\n";
        let out = runner_test(dir.path(), yaml, &[], true)
            .env("RUNNER_CACHE", dir.path().join("cache"))
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{kind}: {stderr}");
        assert!(
            stderr.contains("dev/sda: device node refused"),
            "{kind}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_image_setup_dies_with_a_killed_runner() {
    let dir = tempfile::tempdir().unwrap();
    // A unique sleep, to find it among the machine's processes.
    let marker = format!("{}", 86_000 + std::process::id() % 400);
    let yaml = format!(
        "name: t\nimage:\n  base: minimal\n  setup: |\n    sleep {marker} &\n    sleep {marker}\njobs:\n  a:\n    steps: [\"true\"]\n"
    );
    std::fs::write(dir.path().join("pipeline.yml"), &yaml).unwrap();
    let images = images();
    let mut runner = Command::new(runner_bin())
        .env("RUNNER_KERNEL", &images.kernel)
        .env("RUNNER_ROOTFS", &images.rootfs)
        .env("RUNNER_CACHE", dir.path().join("cache"))
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .args(["image", "build", "pipeline.yml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sleeping = || processes_mentioning(&format!("sleep {marker}"));
    eventually("setup's sleep to start", || !sleeping().is_empty());
    runner.kill().unwrap(); // SIGKILL: no cleanup runs in the runner
    runner.wait().unwrap();
    eventually("setup's processes to die with the runner", || {
        sleeping().is_empty()
    });
}

#[test]
fn a_jailed_vm_process_sees_no_host_file_and_no_network() {
    use runner_machine::vm_process::child::TEST_HOOK_JAIL_ENV;
    let dir = tempfile::tempdir().unwrap();
    let out = runner_test(dir.path(), TRIVIAL, &["--out", "out"], true)
        .env(TEST_HOOK_JAIL_ENV, "a")
        .env_remove("RUNNER_SECCOMP")
        .env_remove("RUNNER_JAIL")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    // The jail: no host file, no network.
    assert!(
        stderr.contains("jail probe: open /etc/passwd: No such file or directory"),
        "{stderr}"
    );
    assert!(
        stderr.contains("jail probe: connect to 1.1.1.1:53: Network is unreachable"),
        "{stderr}"
    );
    // Seccomp on top: an internet socket kills the process, and its job.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    assert!(
        xml.contains("the VM process was killed by seccomp"),
        "{xml}"
    );
    assert_eq!(vm_dirs(dir.path()), Vec::<String>::new());
}
