use super::*;
use crate::pipeline::Pipeline;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    grants: GrantArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

fn cli(flags: &[&str]) -> Result<Cli, clap::Error> {
    use clap::Parser;
    let argv = std::iter::once("runner").chain(flags.iter().copied());
    Cli::try_parse_from(argv)
}

/// What `runner test` would resolve with these flags, and `machine_policy`.
fn resolve(flags: &[&str], machine_policy: &Path) -> Result<Grants, String> {
    let cli = cli(flags).unwrap();
    cli.grants.resolve_with(&cli.cache, machine_policy)
}

fn args(flags: &[&str]) -> GrantArgs {
    cli(flags).unwrap().grants
}

fn no_machine_policy() -> PathBuf {
    PathBuf::from("/nonexistent/runner/policy.yml")
}

fn grants(flags: &[&str]) -> Grants {
    resolve(flags, &no_machine_policy()).unwrap()
}

fn plan(dir: &Path, yaml: &str) -> Plan {
    let path = dir.join("ci.yml");
    std::fs::write(&path, yaml).unwrap();
    Plan::new(&Pipeline::load(&path).unwrap())
}

fn refusal(grants: &Grants, dir: &Path, yaml: &str) -> String {
    grants.check_plan(&plan(dir, yaml)).unwrap_err()
}

#[test]
fn the_network_flag_grants_public_addresses_and_named_destinations() {
    assert_eq!(grants(&[]).network, NetworkGrant::default());
    let public = grants(&["--allow-network"]).network;
    assert!(public.public && public.destinations.is_empty());
    let both = grants(&[
        "--allow-network=public,127.0.0.1:8080",
        "--allow-network=db:5432",
    ]);
    assert!(both.network.public);
    assert_eq!(
        both.network
            .destinations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["127.0.0.1:8080", "db:5432"]
    );
    let err = args(&["--allow-network=nope"])
        .resolve_with(&CacheArgs::default(), &no_machine_policy())
        .unwrap_err();
    assert!(
        err.starts_with("--allow-network: invalid `allow` entry `nope`"),
        "{err}"
    );
}

#[test]
fn a_job_asking_for_a_network_it_was_not_granted_is_refused_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let open = "name: n\njobs:\n  a: { network: true, steps: [true] }\n";
    let err = refusal(&grants(&[]), dir.path(), open);
    assert_eq!(
        err,
        "job `a`: `network: true` needs the network; pass --allow-network to grant it"
    );
    assert!(grants(&["--allow-network"])
        .check_plan(&plan(dir.path(), open))
        .is_ok());

    // Only some destinations granted: `true` asks for too much.
    let err = refusal(
        &grants(&["--allow-network=crates.io:443"]),
        dir.path(),
        open,
    );
    assert!(err.contains("only crates.io:443 is granted"), "{err}");

    let allow = "name: n\njobs:\n  a:\n    network: { allow: [crates.io:443, 127.0.0.1:8080] }\n    steps: [true]\n";
    // A public grant covers names, never the host's loopback.
    let err = refusal(&grants(&["--allow-network"]), dir.path(), allow);
    assert_eq!(
        err,
        "job `a`: `allow: 127.0.0.1:8080` is the host's loopback or a private address, which only a grant naming it opens; pass --allow-network=127.0.0.1:8080 to grant it"
    );
    let ok = grants(&["--allow-network=public,127.0.0.1:8080"]);
    assert!(ok.check_plan(&plan(dir.path(), allow)).is_ok());
    // Only destinations: everything listed must be among them.
    let err = refusal(
        &grants(&["--allow-network=127.0.0.1:8080"]),
        dir.path(),
        allow,
    );
    assert!(
        err.contains("`allow: crates.io:443` is not granted"),
        "{err}"
    );
    for special in ["10.1.2.3:5432", "169.254.169.254:80", "localhost:22"] {
        let yaml = format!(
            "name: n\njobs:\n  a:\n    network: {{ allow: ['{special}'] }}\n    steps: [true]\n"
        );
        let err = refusal(&grants(&["--allow-network"]), dir.path(), &yaml);
        assert!(
            err.contains("only a grant naming it opens"),
            "{special}: {err}"
        );
    }
    // An audit is an open network: it needs the public grant.
    let audit = "name: n\njobs:\n  a: { network: { audit: true }, steps: [true] }\n";
    let err = refusal(&grants(&[]), dir.path(), audit);
    assert!(
        err.contains("`network: { audit: true }` needs the network"),
        "{err}"
    );
    assert!(grants(&["--allow-network"])
        .check_plan(&plan(dir.path(), audit))
        .is_ok());
    // A wildcard the operator granted covers the names under it, and
    // makes them the operator's (their answers may be private).
    let wild = grants(&["--allow-network=*.internal.example:5432"]);
    let yaml = "name: n\njobs:\n  a:\n    network: { allow: ['db.internal.example:5432'] }\n    steps: [true]\n";
    assert!(wild.check_plan(&plan(dir.path(), yaml)).is_ok());
    let network = Network::Allow(vec![AllowEntry {
        host: "db.internal.example".into(),
        port: 5432,
    }]);
    let Nic::User(reach) = wild.nic(&network) else {
        panic!("no NIC");
    };
    assert!(reach.destinations[0].named_by_operator);
    let other_port = yaml.replace("5432']", "5433']");
    assert!(refusal(&wild, dir.path(), &other_port).contains("is not granted"));
}

#[test]
fn image_paths_outside_the_workspace_need_the_host_files_grant() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("images");
    std::fs::create_dir(&inside).unwrap();
    std::fs::write(inside.join("vmlinux"), b"k").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", inside.join("disk.ext4")).unwrap();
    for (image, shown) in [
        (
            "{ rootfs: /etc/shadow }",
            "image `rootfs: /etc/shadow` is outside the workspace",
        ),
        ("{ kernel: ../../boot/vmlinuz }", "is outside the workspace"),
        (
            "{ oci: /var/lib/images/x }",
            "image `oci: /var/lib/images/x` is outside",
        ),
        ("{ rootfs: images/disk.ext4 }", "leads out of the workspace"),
    ] {
        let yaml = format!("name: n\nimage: {image}\njobs:\n  a: {{ steps: [true] }}\n");
        let err = refusal(&grants(&[]), dir.path(), &yaml);
        assert!(err.contains(shown), "{image}: {err}");
        assert!(
            err.ends_with("pass --allow-host-files to grant it"),
            "{err}"
        );
        assert!(grants(&["--allow-host-files"])
            .check_plan(&plan(dir.path(), &yaml))
            .is_ok());
    }
    let yaml = "name: n\nimage: { kernel: images/vmlinux }\njobs:\n  a: { steps: [true] }\n";
    assert!(grants(&[]).check_plan(&plan(dir.path(), yaml)).is_ok());
}

#[test]
fn an_image_size_beyond_the_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: n\nimage: { base: minimal, size: 512G }\njobs:\n  a: { steps: [true] }\n";
    let err = refusal(&grants(&[]), dir.path(), yaml);
    assert_eq!(
        err,
        "job `a`: image `size: 524288M` is more than the 16384M allowed; pass --max-image-size to grant it"
    );
    assert!(grants(&["--max-image-size", "2T"])
        .check_plan(&plan(dir.path(), yaml))
        .is_ok());
}

#[test]
fn a_services_image_is_held_to_the_grants_like_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: n\njobs:\n  a:\n    services: [{ name: db, run: x, image: { base: minimal, size: 512G } }]\n    steps: [true]\n";
    let err = refusal(&grants(&[]), dir.path(), yaml);
    assert_eq!(
        err,
        "job `a`: service `db`: image `size: 524288M` is more than the 16384M allowed; pass --max-image-size to grant it"
    );
    let yaml = "name: n\njobs:\n  a:\n    services: [{ name: db, run: x, image: { rootfs: /etc/shadow } }]\n    steps: [true]\n";
    let err = refusal(&grants(&[]), dir.path(), yaml);
    assert!(
        err.starts_with(
            "job `a`: service `db`: image `rootfs: /etc/shadow` is outside the workspace"
        ),
        "{err}"
    );
    assert!(grants(&["--allow-host-files"])
        .check_plan(&plan(dir.path(), yaml))
        .is_ok());
}

#[test]
fn a_policy_file_grants_like_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yml");
    std::fs::write(
        &path,
        "host_files: true\nnetwork: [public, '127.0.0.1:9000']\nsetup_network: true\nmax_image_size: 40G\n",
    )
    .unwrap();
    let g = grants(&["--policy", path.to_str().unwrap()]);
    assert!(g.host_files && g.setup_network && g.network.public);
    assert_eq!(g.network.destinations.len(), 1);
    assert_eq!(g.max_image_size, 40 << 30);
    std::fs::write(&path, "network: everything\n").unwrap();
    let err = args(&["--policy", path.to_str().unwrap()])
        .resolve_with(&CacheArgs::default(), &no_machine_policy())
        .unwrap_err();
    assert!(
        err.contains("network: invalid `allow` entry `everything`"),
        "{err}"
    );
    std::fs::write(&path, "netwrok: true\n").unwrap();
    let err = args(&["--policy", path.to_str().unwrap()])
        .resolve_with(&CacheArgs::default(), &no_machine_policy())
        .unwrap_err();
    assert!(err.contains("unknown field `netwrok`"), "{err}");
}

#[test]
fn a_machine_policy_is_the_grant_and_flags_cannot_widen_it() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test writes a root-owned policy file: run it as root (CI does)");
    }
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("policy.yml");
    std::fs::write(&machine, "network: ['crates.io:443']\n").unwrap();
    std::fs::set_permissions(
        &machine,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();

    // Nothing on the command line: the machine's grant holds.
    let g = args(&[])
        .resolve_with(&CacheArgs::default(), &machine)
        .unwrap();
    assert_eq!(g.network.destinations.len(), 1);
    assert_eq!(g.source, Source::Machine(machine.clone()));
    // Within it: fine. Beyond it: one line naming the file.
    assert!(args(&["--allow-network=crates.io:443"])
        .resolve_with(&CacheArgs::default(), &machine)
        .is_ok());
    for flag in [
        "--allow-network",
        "--allow-host-files",
        "--allow-setup-network",
    ] {
        let err = args(&[flag])
            .resolve_with(&CacheArgs::default(), &machine)
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "{flag} goes beyond this machine's policy {}; only its owner can grant more",
                machine.display()
            )
        );
    }
    let d = tempfile::tempdir().unwrap();
    let err = refusal(
        &g,
        d.path(),
        "name: n\njobs:\n  a: { network: true, steps: [true] }\n",
    );
    assert!(err.contains("only crates.io:443 is granted"), "{err}");
    let err = refusal(
        &g,
        d.path(),
        "name: n\nimage: { rootfs: /etc/shadow }\njobs:\n  a: { steps: [true] }\n",
    );
    assert!(
        err.ends_with(&format!(
            "this machine's policy {} does not grant it",
            machine.display()
        )),
        "{err}"
    );

    // Anybody but root could change it: nothing runs.
    std::fs::set_permissions(
        &machine,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let err = args(&[])
        .resolve_with(&CacheArgs::default(), &machine)
        .unwrap_err();
    assert!(
        err.contains("must be owned by root and writable by nobody else"),
        "{err}"
    );
}

#[test]
fn the_cache_scope_is_a_name_and_protection_a_flag() {
    let g = grants(&[]);
    assert_eq!(g.cache, CacheGrant::default());
    assert_eq!(g.cache.scope, "default");
    assert_eq!(g.max_cache_size, 32 << 30);
    let g = grants(&[
        "--cache-scope",
        "feature-x",
        "--cache-protected",
        "--max-cache-size",
        "64G",
    ]);
    assert_eq!(
        g.cache,
        CacheGrant {
            scope: "feature-x".into(),
            protected: true
        }
    );
    assert_eq!(g.max_cache_size, 64 << 30);
    for bad in ["a/b", "..", "-x", ""] {
        let flag = format!("--cache-scope={bad}");
        let err = cli(&[&flag]).err().expect(bad).to_string();
        assert!(err.contains("invalid cache scope"), "{bad}: {err}");
    }
}

/// `RUNNER_CACHE_SCOPE` names the scope; nothing in the environment
/// protects it (`--cache-protected` has no variable).
#[test]
fn the_environment_names_the_scope_and_grants_nothing() {
    use clap::CommandFactory;
    let command = Cli::command();
    let env_of = |id: &str| {
        command
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .unwrap_or_else(|| panic!("no argument {id}"))
            .get_env()
            .map(|name| name.to_string_lossy().into_owned())
    };
    assert_eq!(env_of("cache_scope").as_deref(), Some("RUNNER_CACHE_SCOPE"));
    assert_eq!(env_of("cache_protected"), None);
    assert_eq!(env_of("max_cache_size"), None);
}

#[test]
fn a_cache_bigger_than_the_grant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: n\njobs:\n  a:\n    cache: { key: cargo, paths: [/a], size: 40G }\n    steps: [true]\n";
    let err = refusal(&grants(&[]), dir.path(), yaml);
    assert_eq!(
        err,
        "job `a`: cache `cargo` has `size: 40G`, more than the 32G allowed; pass --max-cache-size to grant it"
    );
    assert!(grants(&["--max-cache-size", "40G"])
        .check_plan(&plan(dir.path(), yaml))
        .is_ok());
    let err = refusal(&grants(&["--max-cache-size", "1500M"]), dir.path(), yaml);
    assert!(err.contains("more than the 1500M allowed"), "{err}");
    // The default size fits the default grant.
    let yaml = "name: n\njobs:\n  a:\n    cache: { paths: [/a] }\n    steps: [true]\n";
    assert!(grants(&[]).check_plan(&plan(dir.path(), yaml)).is_ok());
}

#[test]
fn a_policy_file_sets_the_cache_grant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yml");
    let policy = path.to_str().unwrap();
    std::fs::write(
        &path,
        "cache_scope: main\ncache_protected: true\nmax_cache_size: 100G\n",
    )
    .unwrap();
    let g = grants(&["--policy", policy]);
    assert_eq!(
        g.cache,
        CacheGrant {
            scope: "main".into(),
            protected: true
        }
    );
    assert_eq!(g.max_cache_size, 100 << 30);
    // Flags win over a --policy file (no machine policy).
    let g = grants(&["--policy", policy, "--cache-scope", "other"]);
    assert_eq!(g.cache.scope, "other");
    for (text, expected) in [
        (
            "cache_scope: a/b\n",
            "cache_scope: invalid cache scope `a/b`",
        ),
        (
            "max_cache_size: lots\n",
            "max_cache_size: invalid size `lots`",
        ),
        ("cache_protected: maybe\n", "cache_protected"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = resolve(&["--policy", policy], &no_machine_policy()).unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn a_machine_policy_decides_cache_protection_and_size() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test writes a root-owned policy file: run it as root (CI does)");
    }
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("policy.yml");
    let write = |text: &str| {
        std::fs::write(&machine, text).unwrap();
        std::fs::set_permissions(
            &machine,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    };
    let beyond = |flag: &str| {
        format!(
            "{flag} goes beyond this machine's policy {}; only its owner can grant more",
            machine.display()
        )
    };

    // An unprotected runner: a pull request's command line cannot protect.
    write("max_cache_size: 8G\n");
    let err = resolve(&["--cache-protected"], &machine).unwrap_err();
    assert_eq!(err, beyond("--cache-protected"));
    let err = resolve(&["--max-cache-size", "9G"], &machine).unwrap_err();
    assert_eq!(err, beyond("--max-cache-size"));
    let g = resolve(
        &["--cache-scope", "mr-12", "--max-cache-size", "2G"],
        &machine,
    )
    .unwrap();
    assert_eq!(
        g.cache,
        CacheGrant {
            scope: "mr-12".into(),
            protected: false
        }
    );
    assert_eq!(g.max_cache_size, 2 << 30, "a smaller ask is honoured");
    assert_eq!(resolve(&[], &machine).unwrap().max_cache_size, 8 << 30);
    let d = tempfile::tempdir().unwrap();
    let err = refusal(
        &resolve(&[], &machine).unwrap(),
        d.path(),
        "name: n\njobs:\n  a:\n    cache: { paths: [/a], size: 9G }\n    steps: [true]\n",
    );
    assert!(
        err.ends_with(&format!(
            "this machine's policy {} does not grant it",
            machine.display()
        )),
        "{err}"
    );

    // A protected runner: every run is protected, the flag is redundant.
    write("cache_protected: true\ncache_scope: main\n");
    assert!(resolve(&[], &machine).unwrap().cache.protected);
    let g = resolve(&["--cache-protected", "--cache-scope", "main"], &machine).unwrap();
    assert_eq!(
        g.cache,
        CacheGrant {
            scope: "main".into(),
            protected: true
        }
    );
    // Its scope is fixed.
    let err = resolve(&["--cache-scope", "mr-12"], &machine).unwrap_err();
    assert_eq!(
        err,
        format!(
            "--cache-scope mr-12 is not this machine's scope: its policy {} sets `cache_scope: main`",
            machine.display()
        )
    );
}

#[test]
fn the_cache_store_cap_comes_from_a_flag_or_a_policy_and_only_tightens_a_machine_one() {
    assert_eq!(grants(&[]).cache_store_max, None);
    let g = grants(&["--cache-store-max-size", "100G"]);
    assert_eq!(g.cache_store_max, Some(100 << 30));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yml");
    std::fs::write(&policy, "cache_store_max_size: 50G\n").unwrap();
    let g = grants(&["--policy", policy.to_str().unwrap()]);
    assert_eq!(g.cache_store_max, Some(50 << 30));
    std::fs::write(&policy, "cache_store_max_size: lots\n").unwrap();
    let err = resolve(
        &["--policy", policy.to_str().unwrap()],
        &no_machine_policy(),
    )
    .unwrap_err();
    assert!(
        err.contains("cache_store_max_size: invalid size `lots`"),
        "{err}"
    );

    if !nix::unistd::geteuid().is_root() {
        panic!("the rest writes a root-owned policy file: run it as root (CI does)");
    }
    let machine = dir.path().join("machine.yml");
    std::fs::write(&machine, "cache_store_max_size: 20G\n").unwrap();
    std::fs::set_permissions(
        &machine,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let err = resolve(&["--cache-store-max-size", "30G"], &machine).unwrap_err();
    assert!(
        err.starts_with("--cache-store-max-size goes beyond"),
        "{err}"
    );
    let g = resolve(&["--cache-store-max-size", "10G"], &machine).unwrap();
    assert_eq!(g.cache_store_max, Some(10 << 30));
    assert_eq!(
        resolve(&[], &machine).unwrap().cache_store_max,
        Some(20 << 30)
    );
}
