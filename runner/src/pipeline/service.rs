//! The rules of `services:` that do not depend on YAML: what a service may
//! be named (the job reaches it by that name), how many a job may have, and
//! the defaults of a service's VM. The visitors in `de/services.rs` apply
//! them where the error can be located.

use std::time::Duration;

/// Most services of one job: each is a VM of its own, booted with the job's.
pub const MAX_SERVICES: usize = 8;
/// `ready_timeout` when a service does not say.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// Guest memory of a service without `memory`: enough for postgres (or a
/// redis, a small HTTP server) under TCG, where the runner's CI runs, while
/// eight of them stay well within what one job's machine can spare.
pub const DEFAULT_SERVICE_MEMORY_MIB: u64 = 256;
/// vCPUs of a service's VM: a test's backing service seldom needs more, and
/// the job's own VM should get the host's cores.
pub const SERVICE_VCPUS: u32 = 1;
/// Longest service name: one DNS label, as the guest's agent takes it.
pub const MAX_SERVICE_NAME_LEN: usize = agent_protocol::MAX_HOST_LABEL;

/// Checks a service name, which is the host name the job reaches it by: one
/// RFC 1123 label in lowercase, not `localhost`, and not a number the C
/// resolver would take for an IPv4 address.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(
            "a service name must not be empty: it is the host name the job reaches it by"
                .to_string(),
        );
    }
    if !agent_protocol::is_host_label(name) {
        return Err(format!(
            "invalid service name `{name}`: it is the service's host name, so 1 to {MAX_SERVICE_NAME_LEN} lowercase letters, digits and `-`, not starting or ending with `-`"
        ));
    }
    if name == "localhost" {
        return Err(
            "service name `localhost` is taken: it names each VM's own loopback; call the service something else, like `db`"
                .to_string(),
        );
    }
    if reads_as_ipv4(name) {
        return Err(format!(
            "service name `{name}` would be read as an IPv4 address, not a name: put a letter in it, like `db{name}`"
        ));
    }
    Ok(())
}

/// Whether `getaddrinfo` would take this one-label name for an IPv4
/// address (inet_aton's single-number form: decimal, octal or `0x` hex)
/// instead of looking it up.
fn reads_as_ipv4(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_digit())
        || name
            .strip_prefix("0x")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_lowercase_host_name_labels() {
        for good in [
            "db",
            "postgres-15",
            "a",
            "9lives",
            "0xdb-x",
            &"a".repeat(63),
        ] {
            assert_eq!(check_service_name(good), Ok(()), "{good:?}");
        }
        assert!(check_service_name("")
            .unwrap_err()
            .starts_with("a service name must not be empty"));
        for bad in [
            "Db",
            "db_1",
            "db.local",
            "-db",
            "db-",
            "db 1",
            "dé",
            &"a".repeat(64),
        ] {
            let err = check_service_name(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid service name `{bad}`: ")),
                "{err}"
            );
        }
        assert!(check_service_name("localhost")
            .unwrap_err()
            .contains("is taken"));
        for number in ["123", "0777", "0x1f", "0x"] {
            let err = check_service_name(number).unwrap_err();
            assert!(err.contains("read as an IPv4 address"), "{number}: {err}");
        }
    }
}
