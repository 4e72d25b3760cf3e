use super::*;

fn new_cache() -> (tempfile::TempDir, TrustedCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = TrustedCache::at(dir.path().join("cache")).unwrap();
    (dir, cache)
}

#[test]
fn a_cache_another_user_could_write_is_refused() {
    let (dir, cache) = new_cache();
    assert!(cache.subdir("images").is_ok());
    let images = cache.root().join("images");
    std::fs::set_permissions(&images, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let err = cache.subdir("images").unwrap_err();
    assert!(err.contains("is writable by everyone (mode 777)"), "{err}");
    assert!(err.contains("another user could plant"), "{err}");

    // A symlink in place of a directory of the cache.
    std::fs::remove_dir(&images).unwrap();
    std::os::unix::fs::symlink(dir.path(), &images).unwrap();
    let err = cache.subdir("images").unwrap_err();
    assert!(err.contains("is not a directory"), "{err}");

    // A directory above it that others may change.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let err = TrustedCache::at(shared.join("cache")).unwrap_err();
    assert!(err.contains("which another user may change"), "{err}");
    // ... unless it is sticky, as /tmp is.
    std::fs::set_permissions(
        &shared,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    assert!(TrustedCache::at(shared.join("cache")).is_ok());
    assert!(TrustedCache::at(PathBuf::from("relative")).is_err());
}

#[test]
fn a_file_that_changed_or_was_sealed_elsewhere_fails_its_seal() {
    let (dir, cache) = new_cache();
    let file = dir.path().join("snap");
    let seal = dir.path().join("snap.seal");
    std::fs::write(&file, b"memory").unwrap();
    cache.seal(&file, &seal, "snapshot k", "abc").unwrap();
    assert_eq!(cache.check_seal(&file, &seal, "snapshot k").unwrap(), "abc");
    assert_eq!(
        cache.check_seal(&file, &seal, "snapshot j").unwrap_err(),
        "its seal is for something else"
    );

    // Another host's key (another cache) made it.
    let (_other_dir, other) = new_cache();
    assert_eq!(
        other.check_seal(&file, &seal, "snapshot k").unwrap_err(),
        "its seal was not made on this host"
    );

    // The same bytes written again: a new change time.
    std::thread::sleep(std::time::Duration::from_millis(10));
    std::fs::write(&file, b"memory").unwrap();
    assert_eq!(
        cache.check_seal(&file, &seal, "snapshot k").unwrap_err(),
        "it changed after it was sealed"
    );
    // A planted file in place of the original, with the seal left as it was.
    let planted = dir.path().join("planted");
    std::fs::write(&planted, b"evil").unwrap();
    std::fs::rename(&planted, &file).unwrap();
    assert!(cache.check_seal(&file, &seal, "snapshot k").is_err());
    std::fs::write(&seal, "snapshot k\nforged\nabc\n00\n").unwrap();
    assert!(cache.check_seal(&file, &seal, "snapshot k").is_err());
}

#[test]
fn a_copied_file_is_trusted_again_only_if_its_content_has_the_sealed_hash() {
    let (dir, cache) = new_cache();
    let file = dir.path().join("image.ext4");
    let seal = dir.path().join("image.seal");
    std::fs::write(&file, b"ext4 bytes").unwrap();
    let digest = crate::digest::sha256_bytes(b"ext4 bytes");
    cache.seal(&file, &seal, "image k", &digest).unwrap();

    // A restored cache: the same bytes in a new inode.
    let copy = dir.path().join("copy");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::rename(&copy, &file).unwrap();
    assert!(cache.check_seal(&file, &seal, "image k").is_err());
    let mut hashed = 0;
    let checked = cache.check_seal_or_content(&file, &seal, "image k", || hashed += 1);
    assert_eq!(checked.unwrap(), digest);
    assert_eq!(hashed, 1);
    // Sealed again for the new inode: no second hashing.
    assert_eq!(cache.check_seal(&file, &seal, "image k").unwrap(), digest);

    // Other bytes in its place are refused, and stay refused.
    let planted = dir.path().join("planted");
    std::fs::write(&planted, b"evil bytes").unwrap();
    std::fs::rename(&planted, &file).unwrap();
    let refused = cache.check_seal_or_content(&file, &seal, "image k", || ());
    assert_eq!(refused.unwrap_err(), "it changed after it was sealed");
    assert!(cache.check_seal(&file, &seal, "image k").is_err());

    // A seal without a content hash (a snapshot's) is never re-checked.
    std::fs::write(&file, b"memory").unwrap();
    cache.seal(&file, &seal, "snapshot k", "identity").unwrap();
    std::fs::copy(&file, &copy).unwrap();
    std::fs::rename(&copy, &file).unwrap();
    let snapshot = cache.check_seal_or_content(&file, &seal, "snapshot k", || panic!("hashed"));
    assert!(snapshot.is_err());
    // Nor is a seal made with another host's key.
    let (_other_dir, other) = new_cache();
    let foreign = other.check_seal_or_content(&file, &seal, "snapshot k", || panic!("hashed"));
    assert_eq!(foreign.unwrap_err(), "its seal was not made on this host");
}

#[test]
fn content_digests_are_hashed_once_per_version_of_a_file() {
    let (dir, cache) = new_cache();
    let file = dir.path().join("vmlinux");
    std::fs::write(&file, b"kernel one").unwrap();
    let one = cache.content_digest(&file).unwrap();
    assert_eq!(one, crate::digest::sha256_bytes(b"kernel one"));
    assert_eq!(
        std::fs::read_dir(cache.root().join("digests"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(cache.content_digest(&file).unwrap(), one);
    // Same size and, if the clock is coarse, the same mtime: the change
    // time and the content still tell.
    std::fs::write(&file, b"kernel two").unwrap();
    assert_eq!(
        cache.content_digest(&file).unwrap(),
        crate::digest::sha256_bytes(b"kernel two")
    );
}

#[test]
fn the_host_key_is_private_and_stable() {
    let (_dir, cache) = new_cache();
    let key = host_key(cache.root()).unwrap();
    assert_eq!(key.len(), KEY_BYTES);
    assert_eq!(host_key(cache.root()).unwrap(), key);
    let path = cache.root().join(HOST_KEY);
    let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert!(host_key(cache.root())
        .unwrap_err()
        .contains("readable by nobody else"));
}

#[test]
fn lock_files_are_never_opened_through_a_symlink_nor_truncated() {
    let (dir, _cache) = new_cache();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let lock = dir.path().join("k.lock");
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let err = open_no_follow(&lock).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(&lock, b"old").unwrap();
    drop(open_no_follow(&lock).unwrap());
    assert_eq!(std::fs::read(&lock).unwrap(), b"old");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
}
