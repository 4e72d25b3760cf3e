//! The machine policy's hold on a VM process: the knobs that would weaken
//! it are refused where the operator wrote a policy file.

use std::path::Path;

/// The knobs that weaken a VM process (`RUNNER_SECCOMP`, `RUNNER_JAIL`)
/// come from the environment, which a pull request's CI file may set: on
/// a machine whose owner wrote a policy file they are refused.
pub(crate) fn refuse_weakening_on_a_policed_machine(knob: &str) -> Result<(), String> {
    let policy = Path::new(crate::MACHINE_POLICY);
    if policy.exists() {
        return Err(format!(
            "{knob} may not weaken VM processes on a machine with a policy ({})",
            policy.display()
        ));
    }
    Ok(())
}
