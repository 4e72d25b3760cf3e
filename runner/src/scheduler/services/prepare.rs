//! A service's VM prepared for its snapshot (kvm warm start): booted on a
//! stand-in of its NIC, it runs `run` and polls `ready` as a job's service
//! would, and is saved once `ready` passed and `run` returned. Later jobs
//! restore a clone of it that is ready already.
//!
//! A snapshot holds no agent connection, and the agent ends what a lost
//! connection ran: only a service whose `run` returns (one that starts a
//! daemon, like `pg_ctlcluster … start`) can be snapshotted. One whose
//! `run` stays in the foreground is found out once, and boots cold from
//! then on (`runner_machine::Unprepared::Never`).

use std::cell::RefCell;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use agent_protocol::NetworkConfig;
use runner_machine::network::segment::SegmentNic;
use runner_machine::{Preparation, Unprepared, Vm};

use super::guest::{open_session, poll_ready, request};
use crate::plan::PlannedService;
use crate::results::JobLog;

/// How long `run` may take to return once `ready` passed before it is
/// judged to stay in the foreground: its last commands may still be
/// finishing (slowly, under emulation).
const RUN_RETURN_GRACE: Duration = Duration::from_secs(30);

/// What a service's snapshot is prepared with.
#[derive(Debug)]
pub(super) struct ServicePreparation {
    service: PlannedService,
    /// Its NIC as the snapshot has it: its member's address, and no names
    /// (the restoring job's are added after the restore).
    network: NetworkConfig,
    /// The log of the service whose job builds the snapshot: the snapshot
    /// VM's `run` and `ready` show there.
    log: JobLog,
}

impl ServicePreparation {
    pub(super) fn new(
        service: &PlannedService,
        nic: &SegmentNic,
        log: JobLog,
    ) -> ServicePreparation {
        ServicePreparation {
            service: service.clone(),
            network: nic.guest_config(&[]),
            log,
        }
    }
}

impl Preparation for ServicePreparation {
    fn identity(&self) -> String {
        let mut env: Vec<_> = self.service.env.iter().collect();
        env.sort();
        format!(
            "service run {:?}\nready {:?}\nenv {env:?}\nnetwork {:?}",
            self.service.run, self.service.ready, self.network
        )
    }

    fn prepare(&self, vm: &mut dyn Vm) -> Result<(), Unprepared> {
        let failed = |what: &str, why: String| Unprepared::Failed(format!("{what}: {why}"));
        self.log.note(
            "==> preparing this service's snapshot (warm start): `run`, then `ready`, in a VM \
             of its own",
        );
        let mut session = open_session(vm).map_err(|e| failed("connecting to its agent", e))?;
        session
            .configure_network(&self.network)
            .map_err(|e| failed("configuring its network", e.to_string()))?;
        let mut run = open_session(vm).map_err(|e| failed("starting `run`", e))?;
        let (ran_tx, ran_rx) = mpsc::channel();
        let run_request = request(&self.service, &self.service.run, None);
        let log = self.log.clone();
        // Ends with `run`, or with the snapshot VM (its connection breaks).
        std::thread::spawn(move || {
            let exit = run.exec(run_request, None, &mut |_, bytes| log.write(bytes));
            let _ = ran_tx.send(match exit {
                Ok(exit) if exit.success() => Ok(()),
                Ok(exit) => Err(format!("`run` failed: {}", exit.describe())),
                Err(e) => Err(format!("lost its agent while `run` ran: {e}")),
            });
        });
        let ran = RefCell::new(None);
        let run_failed = || {
            if ran.borrow().is_none() {
                *ran.borrow_mut() = ran_rx.try_recv().ok();
            }
            ran.borrow().clone().and_then(Result::err)
        };
        poll_ready(&mut session, &self.service, &self.log, run_failed)
            .map_err(Unprepared::Failed)?;
        // The snapshot waits for every connection to close.
        drop(session);
        let ran = match ran.into_inner() {
            Some(ran) => ran,
            None => match ran_rx.recv_timeout(RUN_RETURN_GRACE) {
                Ok(ran) => ran,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let why = format!(
                        "its `run` was still running {}s after `ready` passed; a snapshot \
                         holds no agent connection, so only a service whose `run` returns \
                         (one that starts a daemon) is warm-started",
                        RUN_RETURN_GRACE.as_secs()
                    );
                    self.log.note(&format!("==> no snapshot: {why}"));
                    return Err(Unprepared::Never(why));
                }
            },
        };
        ran.map_err(Unprepared::Failed)?;
        self.log
            .note("==> prepared: the snapshot is taken now, and this job gets a clone of it");
        Ok(())
    }
}
