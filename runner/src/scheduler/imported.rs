//! Reading the test reports a job's steps leave in the guest (`reports:`)
//! into testcases of the job (see `crate::imported`).
//!
//! The files come out like artifacts, through the same hostile-input
//! unpacker and with a per-job budget of the same size as the artifacts'
//! own (so reports cannot eat the artifacts' budget, nor the other way
//! round). Each step's reports go to `<out>/reports/<job>/step-N/<format>/`
//! and the job's to `…/job/<format>/`, where they stay for people to read;
//! they are parsed at once, before a later step can overwrite them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::artifacts::artifact_request;
use super::context::Options;
use crate::imported::{self, Format, Imported, MAX_CASES_PER_JOB};
use crate::pipeline::ReportFiles;
use crate::plan::PlannedJob;
use crate::results::{JobLog, JobResult};
use crate::session::{AgentSession, ArtifactBudget, SessionError};

/// Whose reports are read: a step's (by index) or the job's.
#[derive(Clone, Copy, Debug)]
pub(super) enum Scope {
    Step(usize),
    Job,
}

pub(super) struct Importer {
    /// `<out>/reports/<job slug>`.
    root: PathBuf,
    budget: ArtifactBudget,
    text_limit: usize,
    /// Set when the connection can no longer carry a transfer.
    broken: Option<String>,
}

impl Importer {
    pub fn new(job: &PlannedJob, options: &Options) -> Importer {
        Importer {
            root: options.out_dir.join("reports").join(&job.slug),
            budget: ArtifactBudget::new(options.artifact_limits),
            text_limit: options.output_limit,
            broken: None,
        }
    }

    /// Fetches and parses the files `reports` names, relative to `workdir`,
    /// adding their testcases and warnings to `result`.
    pub fn collect(
        &mut self,
        scope: Scope,
        reports: &ReportFiles,
        workdir: &str,
        session: &mut AgentSession,
        log: &JobLog,
        result: &mut JobResult,
    ) {
        let scope_dir = match scope {
            Scope::Step(index) => format!("step-{}", index + 1),
            Scope::Job => "job".to_string(),
        };
        for (format, patterns) in [
            (Format::Junit, &reports.junit),
            (Format::Libtest, &reports.libtest),
        ] {
            if patterns.is_empty() {
                continue;
            }
            let dir = self.root.join(&scope_dir).join(format.key());
            // Only this fetch's files are read: nothing left from an
            // earlier attempt of the same job. (std's remove_dir_all does
            // not follow the links a guest may have left in there.)
            let _ = std::fs::remove_dir_all(&dir);
            let mut found = Imported::default();
            let clock = Instant::now();
            for pattern in patterns {
                self.fetch(
                    pattern,
                    workdir,
                    &dir,
                    session,
                    reports.required,
                    &mut found,
                );
            }
            let copied = clock.elapsed();
            for file in regular_files(&dir) {
                let shown = file
                    .strip_prefix(&dir)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                let imported = imported::import_file(format, &file, &shown, self.text_limit);
                found.cases.extend(imported.cases);
                found.notes.extend(imported.notes);
            }
            let step = match scope {
                Scope::Step(index) => Some(index),
                Scope::Job => None,
            };
            let reports = &mut result.imported;
            let room = MAX_CASES_PER_JOB.saturating_sub(reports.cases.len());
            if found.cases.len() > room {
                found.notes.push(format!(
                    "{} testcases of {} reports left out: a job imports at most {MAX_CASES_PER_JOB}",
                    found.cases.len() - room,
                    format.key()
                ));
                found.cases.truncate(room);
            }
            log.note(&format!(
                "==> {} testcases from {} reports ({scope_dir}) in {:.3}s: copied out in {:.3}s, parsed in {:.3}s",
                found.cases.len(),
                format.key(),
                clock.elapsed().as_secs_f64(),
                copied.as_secs_f64(),
                (clock.elapsed() - copied).as_secs_f64(),
            ));
            for note in &found.notes {
                log.note(&format!("==> {note}"));
                tracing::warn!(job = %result.name, "{note}");
            }
            for mut case in found.cases {
                case.step = step;
                reports.cases.push(case);
            }
            reports.notes.extend(found.notes);
        }
    }

    /// Copies what `pattern` matches into `dir`. A pattern that matches
    /// nothing is a warning, or an error testcase when `required`.
    fn fetch(
        &mut self,
        pattern: &str,
        workdir: &str,
        dir: &Path,
        session: &mut AgentSession,
        required: bool,
        found: &mut Imported,
    ) {
        if let Some(reason) = &self.broken {
            found
                .notes
                .push(format!("test report `{pattern}` not collected: {reason}"));
            return;
        }
        let (base, relative) = artifact_request(workdir, pattern);
        match session.get_files(&base, &[relative], dir, &mut self.budget) {
            Ok(unpacked) => {
                found
                    .notes
                    .extend(unpacked.refused.iter().map(|r| format!("test report {r}")));
                if let Some(e) = &unpacked.error {
                    found.notes.push(format!("test report `{pattern}`: {e}"));
                }
                if unpacked.hung_up() {
                    self.broken = Some("the transfer was stopped at the report limit".into());
                }
            }
            // The agent's answer to a pattern that matches nothing.
            Err(SessionError::Agent(message)) if required => {
                found.cases.push(imported::missing(pattern, &message))
            }
            Err(SessionError::Agent(message)) => found
                .notes
                .push(format!("test report `{pattern}` not found: {message}")),
            Err(e) => {
                found
                    .notes
                    .push(format!("test report `{pattern}` not collected: {e}"));
                self.broken = Some(format!("the agent connection broke ({e})"));
            }
        }
    }
}

/// The regular files under `dir`, sorted, never following a symlink (the
/// unpacker keeps downward links; a report is read through none).
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => todo.push(entry.path()),
                Ok(kind) if kind.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::regular_files;

    #[test]
    fn reports_are_read_from_regular_files_only_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.xml"), "<testsuites/>").unwrap();
        std::fs::create_dir_all(dir.path().join("b/deep")).unwrap();
        std::fs::write(dir.path().join("b/deep/z.xml"), "").unwrap();
        std::fs::write(dir.path().join("a.xml"), "").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("b/out")).unwrap();
        let link = dir.path().join("c.xml");
        std::os::unix::fs::symlink(outside.path().join("secret.xml"), link).unwrap();
        let found: Vec<_> = regular_files(dir.path())
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(found, ["a.xml", "b/deep/z.xml"]);
        assert!(regular_files(&dir.path().join("missing")).is_empty());
    }
}
