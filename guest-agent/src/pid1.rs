//! What the agent does because it is the guest's init: the mounts a test
//! expects, the hostname, the loopback interface, and powering off.
//!
//! Every step tolerates "already done" (runner-init may have mounted some
//! of it before `switch_root`) and failure (a minimal kernel may lack
//! cgroup2, say): a missing extra is logged, never fatal, because an init
//! that exits panics the kernel.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Whether this process is the guest's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Guest uptime (CLOCK_BOOTTIME), for `Pong`.
pub fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In order: each target must exist on what the previous ones mounted.
const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// Sets up the guest like an init would. Only call as PID 1.
pub fn setup() {
    let root_on_disk = root_is_a_writable_disk();
    for m in MOUNTS {
        // A root on the disk has room for the job's writes (runner-init):
        // /tmp stays there rather than in RAM, as on an installed Debian.
        if m.target == "/tmp" && root_on_disk {
            tmp_on_disk();
            continue;
        }
        mount_once(m);
    }
    delegate_cgroup_controllers();
    share_mounts();
    open_devices_to_users();
    attach_console();
    if let Err(e) = nix::unistd::sethostname("runner") {
        crate::console!("cannot set the hostname: {e}");
    }
    if let Err(e) = loopback_up() {
        crate::console!("cannot bring up the loopback interface: {e}");
    }
}

/// runner-init's marker of an image whose free space is for the job's
/// writes: it mounted the root itself read-write instead of an overlay.
const ROOT_ON_DISK_MARKER: &str = "/etc/runner/root-on-disk";

/// Whether runner-init left the root file system itself writable (an image
/// made for writes on its disk) rather than an overlay in RAM. The marker,
/// not the file system type, decides, as it did for runner-init.
fn root_is_a_writable_disk() -> bool {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let writable = statvfs("/").is_ok_and(|s| !s.flags().contains(FsFlags::ST_RDONLY));
    writable && Path::new(ROOT_ON_DISK_MARKER).exists()
}

/// /tmp as a directory of the root, world-writable and sticky whatever
/// mode the image gave it.
fn tmp_on_disk() {
    use std::os::unix::fs::PermissionsExt;
    let made = std::fs::create_dir_all("/tmp")
        .and_then(|()| std::fs::set_permissions("/tmp", std::fs::Permissions::from_mode(0o1777)));
    if let Err(e) = made {
        crate::console!("cannot prepare /tmp on the root disk: {e}");
    }
}

/// A mount point sits on another device than its parent directory.
fn is_mountpoint(path: &Path) -> bool {
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(here), Some(Ok(parent))) => here.dev() != parent.dev(),
        _ => false,
    }
}

fn mount_once(m: &Mount) {
    let target = Path::new(m.target);
    if is_mountpoint(target) {
        return;
    }
    if let Err(e) = std::fs::create_dir_all(target) {
        crate::console!("cannot create {}: {e}", m.target);
        return;
    }
    match mount(Some(m.source), target, Some(m.fstype), m.flags, m.data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
        Err(e) => crate::console!("cannot mount {} on {}: {e}", m.fstype, m.target),
    }
}

/// Where the agent mounted cgroup2 (see MOUNTS).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Enables every controller the kernel offers for the root cgroup's
/// children, as systemd does on a host: container runtimes (runc, crun,
/// Podman, Docker) create their cgroups under the root and can only set
/// memory, cpu, io, pids or cpuset limits on them if the root delegates
/// those controllers. Each is enabled on its own, so a controller the
/// kernel refuses costs only itself.
fn delegate_cgroup_controllers() {
    let root = Path::new(CGROUP_ROOT);
    let Ok(available) = std::fs::read_to_string(root.join("cgroup.controllers")) else {
        return;
    };
    for controller in available.split_whitespace() {
        if let Err(e) = std::fs::write(
            root.join("cgroup.subtree_control"),
            format!("+{controller}"),
        ) {
            crate::console!("cannot delegate the {controller} cgroup controller: {e}");
        }
    }
}

/// Makes every mount shared (`mount --make-rshared /`), as systemd does on
/// a host: rootless Podman and other tools that set up mount namespaces
/// expect mounts made in one to propagate where they are shared.
fn share_mounts() {
    let flags = MsFlags::MS_REC.union(MsFlags::MS_SHARED);
    if let Err(e) = mount(None::<&str>, "/", None::<&str>, flags, None::<&str>) {
        crate::console!("cannot make the mounts shared: {e}");
    }
}

/// Device nodes that udev makes world-usable on a host, and devtmpfs
/// creates root-only: `/dev/net/tun` is how rootless Podman (slirp4netns,
/// pasta) gives a user's containers a network.
const USER_DEVICES: &[&str] = &["/dev/net/tun"];

fn open_devices_to_users() {
    use std::os::unix::fs::PermissionsExt;
    for device in USER_DEVICES {
        if !Path::new(device).exists() {
            continue;
        }
        if let Err(e) = std::fs::set_permissions(device, std::fs::Permissions::from_mode(0o666)) {
            crate::console!("cannot open {device} to users: {e}");
        }
    }
}

/// Points stdin/stdout/stderr at the console when the agent was started
/// without a usable stderr (closed, or /dev/null), so its messages reach the
/// serial log. A stderr that runner-init (or a test) handed over is kept.
fn attach_console() {
    if stderr_is_usable() {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which we own.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

fn stderr_is_usable() -> bool {
    use std::os::unix::fs::FileTypeExt;
    // SAFETY: an all-zero stat is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into `st`.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    let is_char_dev = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    let devnull = std::fs::metadata("/dev/null")
        .ok()
        .filter(|m| m.file_type().is_char_device())
        .map(|m| m.rdev());
    !(is_char_dev && devnull == Some(st.st_rdev))
}

/// `ip link set lo up`. The kernel gives an up loopback 127.0.0.1 by itself.
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket call; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero ifreq is valid; the name is copied in bounds.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req` only.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Syncs, then powers the guest off (PID 1) or exits (otherwise).
pub fn power_off() -> ! {
    nix::unistd::sync();
    if is_pid1() {
        crate::console!("powering off");
        // RB_AUTOBOOT: QEMU runs with -no-reboot and exits; our VMM sees
        // the i8042 reset that `reboot=k` makes the kernel use.
        let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        crate::console!("reboot failed: {e}");
        // An init must not return; wait for the end.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    std::process::exit(0)
}

/// Makes sure fds 0..=2 are open, so that no socket or pipe the agent
/// creates later can land on them (it would then double as a command's
/// stdio or collect stray output).
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: open with a valid C string; the lowest free fd is `fd`.
            let opened = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if opened < 0 {
                return;
            }
        }
    }
}
