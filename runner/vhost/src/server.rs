//! Serves one device to one vhost-user frontend (QEMU), in background threads
//! of the calling process.
//!
//! Threads: the server thread waits for the frontend, then handles its
//! vhost-user messages; vhost-user-backend's worker thread runs the device.
//! [`VhostUserServer::stop`] (or dropping the server) ends both and removes
//! the socket file.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use runner_devices::virtio::VirtioDevice;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::DeviceBackend;

/// Why a server could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0} is in use by a running vhost-user server")]
    SocketInUse(PathBuf),
    #[error("cannot listen on {path}: {reason}")]
    Listen { path: PathBuf, reason: String },
    #[error("cannot set up the vhost-user daemon: {0}")]
    Daemon(String),
    #[error("cannot watch the device's host-side events: {0}")]
    BackendFd(#[source] std::io::Error),
    #[error("cannot start the server thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the vhost-user connection failed: {0}")]
    Connection(String),
    #[error("the server thread panicked")]
    Panicked,
}

type Backend<D> = Arc<RwLock<DeviceBackend<D>>>;

/// State shared between the server thread and whoever stops it.
struct StopState {
    requested: AtomicBool,
    connection: Mutex<Option<ShutdownHandle>>,
    wakeup: EventFd,
}

/// One device served to one vhost-user frontend.
pub struct VhostUserServer {
    socket_path: PathBuf,
    stop: Arc<StopState>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

/// Refuses a socket path somebody is serving on; a leftover file is replaced.
fn check_socket_free(path: &Path) -> Result<(), ServerError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && UnixStream::connect(path).is_ok() {
            return Err(ServerError::SocketInUse(path.to_path_buf()));
        }
    }
    Ok(())
}

/// Blocks until `listener` has a connection (true) or a stop was requested (false).
fn wait_for_frontend(listener: RawFd, wakeup: RawFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: listener,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wakeup,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ret < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

impl VhostUserServer {
    /// Binds `socket_path` and serves `device` to the first frontend that
    /// connects. Returns once the socket exists, so the frontend can be started
    /// right away.
    pub fn start<D>(
        name: &str,
        socket_path: &Path,
        device: D,
    ) -> Result<VhostUserServer, ServerError>
    where
        D: VirtioDevice<GuestMemoryMmap<()>> + 'static,
    {
        check_socket_free(socket_path)?;
        let backend_fd = device.backend_fd();
        let backend: Backend<D> = Arc::new(RwLock::new(DeviceBackend::new(device)));
        let backend_event = backend
            .read()
            .map_err(|_| ServerError::Panicked)?
            .backend_event();
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(name.to_string(), backend, mem)
            .map_err(|e| ServerError::Daemon(e.to_string()))?;
        if let Some(fd) = backend_fd {
            let handlers = daemon.get_epoll_handlers();
            let handler = handlers
                .first()
                .ok_or_else(|| ServerError::Daemon("no worker thread".into()))?;
            handler
                .register_listener(fd, EventSet::IN, u64::from(backend_event))
                .map_err(ServerError::BackendFd)?;
        }
        let mut listener = Listener::new(socket_path, true).map_err(|e| ServerError::Listen {
            path: socket_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ServerError::Listen {
                path: socket_path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let stop = Arc::new(StopState {
            requested: AtomicBool::new(false),
            connection: Mutex::new(None),
            wakeup: EventFd::new(EFD_NONBLOCK).map_err(ServerError::Thread)?,
        });
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-user-{name}"))
            .spawn(move || {
                if !wait_for_frontend(listener.as_raw_fd(), thread_stop.wakeup.as_raw_fd()) {
                    return Ok(());
                }
                daemon
                    .start(&mut listener)
                    .map_err(|e| ServerError::Connection(e.to_string()))?;
                // One frontend only: nobody else may connect, so the socket goes.
                drop(listener);
                if let Ok(mut slot) = thread_stop.connection.lock() {
                    *slot = daemon.shutdown_handle();
                }
                if thread_stop.requested.load(Ordering::Acquire) {
                    daemon.request_shutdown();
                }
                let result = match daemon.wait() {
                    // The frontend going away is how a VM normally ends.
                    Ok(())
                    | Err(DaemonError::HandleRequest(
                        VhostUserError::Disconnected | VhostUserError::PartialMessage,
                    )) => Ok(()),
                    Err(e) => Err(ServerError::Connection(e.to_string())),
                };
                // Dropping the daemon stops and joins the worker thread.
                drop(daemon);
                result
            })
            .map_err(ServerError::Thread)?;
        Ok(VhostUserServer {
            socket_path: socket_path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// True once the frontend disconnected (or the server was stopped).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Disconnects the frontend if any, ends the threads and removes the
    /// socket file. Calling it again does nothing.
    pub fn stop(&mut self) -> Result<(), ServerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.requested.store(true, Ordering::Release);
        let _ = self.stop.wakeup.write(1);
        if let Ok(slot) = self.stop.connection.lock() {
            if let Some(handle) = slot.as_ref() {
                handle.shutdown();
            }
        }
        // The listener, and with it the socket file, went with the thread.
        thread.join().map_err(|_| ServerError::Panicked)?
    }
}

impl Drop for VhostUserServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("vhost-user server {}: {e}", self.socket_path.display());
        }
    }
}
