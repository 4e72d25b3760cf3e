//! `reports:`: test report files a job or step leaves in the guest, whose
//! testcases become testcases of the job's JUnit testsuite (see
//! `crate::imported`).

/// Guest paths or globs of test reports, by format. Relative paths are
/// taken from the job's `workdir`, as for `artifacts`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportFiles {
    /// JUnit XML files (pytest, cargo-nextest, go-junit-report, Maven
    /// Surefire, jest-junit and the like).
    pub junit: Vec<String>,
    /// Output of a Rust test binary (`cargo test`, or the binary itself),
    /// human or `--format json`.
    pub libtest: Vec<String>,
    /// A pattern that matches nothing is an error testcase, not a warning.
    pub required: bool,
}

impl ReportFiles {
    pub fn is_empty(&self) -> bool {
        self.junit.is_empty() && self.libtest.is_empty()
    }
}

// `reports:` in a pipeline file: where it may stand, its shorthands, and
// its mistakes with their `file:line:col`.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::pipeline::{Pipeline, ReportFiles};
    use crate::plan::Plan;

    fn parse(source: &str) -> Result<Pipeline, String> {
        Pipeline::parse(source, Path::new("pipelines/x.yml"), Path::new("/repo"))
            .map_err(|e| e.to_string())
    }

    fn files(junit: &[&str], libtest: &[&str], required: bool) -> ReportFiles {
        let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        ReportFiles {
            junit: own(junit),
            libtest: own(libtest),
            required,
        }
    }

    #[test]
    fn reports_on_defaults_jobs_and_steps() {
        let pipeline = parse(
            r#"
    defaults:
      reports: { junit: out/*.xml }
    jobs:
      a:
        steps:
          - name: unit
            run: ./t > unit.txt
            reports:
              libtest: [unit.txt, more.txt]
              required: true
          - "true"
      b:
        reports:
          junit: [reports/*.xml]
          libtest: b.txt
        steps: ["true"]
    "#,
        )
        .unwrap();
        let plan = Plan::new(&pipeline);
        let (a, b) = (&plan.jobs[0], &plan.jobs[1]);
        assert_eq!(a.reports, files(&["out/*.xml"], &[], false));
        assert_eq!(
            a.steps[0].reports,
            files(&[], &["unit.txt", "more.txt"], true)
        );
        assert!(a.steps[1].reports.is_empty());
        // A job's own `reports` replaces the default, like `artifacts`.
        assert_eq!(b.reports, files(&["reports/*.xml"], &["b.txt"], false));
    }

    #[test]
    fn mistakes_in_reports_are_located() {
        let err = |yaml: &str| parse(yaml).unwrap_err();
        assert_eq!(
            err("jobs:\n  a:\n    reports: { junt: x.xml }\n    steps: [\"true\"]\n"),
            "pipelines/x.yml:3:16: unknown key `junt` in `reports` in job `a` (did you mean `junit`?)"
        );
        assert_eq!(
            err("jobs:\n  a:\n    steps:\n      - run: \"true\"\n        reports: { required: true }\n"),
            "pipelines/x.yml:5:18: `reports` in step 1 of job `a` lists no files: give `junit` or `libtest` paths"
        );
        let wrong_type = err("jobs:\n  a:\n    reports: [x.xml]\n    steps: [\"true\"]\n");
        assert!(wrong_type.starts_with("pipelines/x.yml:3:"), "{wrong_type}");
        let empty = err("jobs:\n  a:\n    reports: { junit: [] }\n    steps: [\"true\"]\n");
        assert!(empty.contains("`junit` must not be empty"), "{empty}");
        let flag =
            err("jobs:\n  a:\n    reports: { junit: x, required: yes }\n    steps: [\"true\"]\n");
        assert!(flag.contains("expected `true` or `false`"), "{flag}");
    }
}
