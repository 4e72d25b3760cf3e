//! A job's artifacts: fetched from the guest pattern by pattern into
//! `<out>/artifacts/<job>`, and where each pattern is fetched from (the
//! guest's own test reports are fetched the same way).

use super::context::RunContext;
use crate::plan::PlannedJob;
use crate::report::RunEvent;
use crate::results::{JobLog, JobResult};
use crate::session::{AgentSession, ArtifactBudget, SessionError};

/// Artifacts are copied out after a failure too: that is when they matter
/// most. Each pattern is fetched on its own, so that one missing artifact
/// neither hides the others nor goes unreported: problems are kept in
/// `result.artifact_notes` for the console and JUnit. They do not fail the
/// job: the steps decide that, and a test that failed early often leaves
/// its report unwritten.
pub(super) fn collect_artifacts(
    job: &PlannedJob,
    ctx: &RunContext,
    session: &mut AgentSession,
    log: &JobLog,
    result: &mut JobResult,
) {
    if job.artifacts.is_empty() {
        return;
    }
    ctx.reporter.report(&RunEvent::JobProgress {
        job,
        activity: "collecting artifacts",
    });
    let dest = ctx.options.out_dir.join("artifacts").join(&job.slug);
    let mut budget = ArtifactBudget::new(ctx.options.artifact_limits);
    let mut notes = Vec::new();
    let mut hung_up = None;
    let mut collected = 0;
    for pattern in &job.artifacts {
        if let Some(reason) = &hung_up {
            notes.push(format!("artifact `{pattern}` not collected: {reason}"));
            continue;
        }
        let (base, relative) = artifact_request(&job.workdir, pattern);
        match session.get_files(&base, &[relative], &dest, &mut budget) {
            Ok(unpacked) => {
                collected += unpacked.entries;
                notes.extend(unpacked.refused.iter().map(|r| format!("artifact {r}")));
                if let Some(e) = &unpacked.error {
                    notes.push(format!("artifact `{pattern}`: {e}"));
                }
                if unpacked.hung_up() {
                    hung_up = Some("the transfer was stopped at the artifact limit".to_string());
                }
            }
            Err(SessionError::Agent(message)) => {
                notes.push(format!("artifact `{pattern}` not collected: {message}"));
            }
            Err(e) => {
                notes.push(format!("artifact `{pattern}` not collected: {e}"));
                hung_up = Some(format!("the agent connection broke ({e})"));
            }
        }
    }
    log.note(&format!(
        "==> artifacts: {collected} entries into {}",
        dest.display()
    ));
    for note in &notes {
        log.note(&format!("==> {note}"));
        tracing::warn!(job = %job.name, "{note}");
    }
    if collected > 0 {
        result.artifacts.push(dest);
    }
    result.artifact_notes = notes;
}

/// The `GetFiles` base and pattern for an `artifacts` entry. The agent takes
/// patterns relative to a base; an absolute path is taken relative to `/`,
/// so `/var/log/app.log` lands at `<job artifacts>/var/log/app.log`, while
/// `report.xml` (relative to the workdir) lands at `<job artifacts>/report.xml`.
pub(super) fn artifact_request(workdir: &str, pattern: &str) -> (String, String) {
    match pattern.strip_prefix('/') {
        Some(rest) => ("/".to_string(), rest.trim_start_matches('/').to_string()),
        None => (workdir.to_string(), pattern.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::artifact_request;

    #[test]
    fn absolute_artifacts_are_fetched_relative_to_the_root() {
        let request = |p| artifact_request("/workspace", p);
        assert_eq!(
            request("/var/log/app.log"),
            ("/".into(), "var/log/app.log".into())
        );
        assert_eq!(request("//tmp/x*.xml"), ("/".into(), "tmp/x*.xml".into()));
        assert_eq!(
            request("out/report.xml"),
            ("/workspace".into(), "out/report.xml".into())
        );
    }
}
