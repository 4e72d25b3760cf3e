//! Sharding: one `runner test` runs the K-th of N slices of a plan, so that
//! N CI machines together run every job exactly once.
//!
//! The split is a pure function of the job names (in plan order), N and,
//! optionally, the durations of an earlier run. Every machine computes the
//! same split without talking to the others:
//! * **by count** (no timings): job i of the plan goes to shard i mod N,
//!   so shard sizes differ by at most one;
//! * **by duration** (`--timings junit.xml`): greedy longest processing
//!   time first. Jobs are taken longest first (ties: plan order) and each
//!   goes to the least-loaded shard (ties: the lowest shard). A job the
//!   earlier run does not know is assumed to take the mean of those it does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::plan::Plan;

/// `--shard K/N`: the K-th (1-based, as GitLab's `CI_NODE_INDEX`) of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub total: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.total)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `2/3`. Both numbers are positive and K ≤ N.
    fn from_str(text: &str) -> Result<Shard, String> {
        let invalid = |why: &str| format!("invalid shard `{text}`: {why}");
        let (index, total) = text
            .split_once('/')
            .ok_or_else(|| invalid("expected K/N, like `1/3`"))?;
        let number = |part: &str| -> Result<usize, String> {
            part.trim()
                .parse()
                .map_err(|_| invalid("expected K/N with whole numbers, like `1/3`"))
        };
        Shard::new(number(index)?, number(total)?).map_err(|why| invalid(&why))
    }
}

impl Shard {
    pub fn new(index: usize, total: usize) -> Result<Shard, String> {
        if total == 0 {
            return Err("the number of shards must be at least 1".to_string());
        }
        if index == 0 || index > total {
            return Err(format!("the shard must be from 1 to {total} (1-based)"));
        }
        Ok(Shard { index, total })
    }

    /// The shard GitLab's parallel jobs give: `CI_NODE_INDEX` (1-based) of
    /// `CI_NODE_TOTAL`. `None` when either is unset or empty.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Shard>, String> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        match (get("CI_NODE_INDEX"), get("CI_NODE_TOTAL")) {
            (Some(index), Some(total)) => {
                let text = format!("{}/{}", index.trim(), total.trim());
                text.parse::<Shard>()
                    .map(Some)
                    .map_err(|e| format!("from CI_NODE_INDEX/CI_NODE_TOTAL: {e}"))
            }
            _ => Ok(None),
        }
    }
}

/// Per-job durations of an earlier run, by job display name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings {
    pub by_job: HashMap<String, Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum TimingsError {
    #[error("--timings {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        // Not named `source`: the message already says it, and anyhow
        // would print it twice.
        cause: std::io::Error,
    },
    #[error("--timings {}: not a JUnit report ({reason})", path.display())]
    NotJunit { path: PathBuf, reason: String },
}

impl Timings {
    /// Reads a JUnit report: each `<testsuite>` is one job (as the runner
    /// writes them), its `time` the job's duration.
    pub fn from_junit(path: &Path) -> Result<Timings, TimingsError> {
        let text = std::fs::read_to_string(path).map_err(|cause| TimingsError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let not_junit = |reason: String| TimingsError::NotJunit {
            path: path.to_path_buf(),
            reason: one_line(&reason),
        };
        let report = crate::report::junit::merge::parse_report(&text).map_err(not_junit)?;
        let mut by_job = HashMap::new();
        for suite in &report.test_suites {
            by_job.insert(
                suite.name.as_str().to_string(),
                suite.time.unwrap_or_default(),
            );
        }
        Ok(Timings { by_job })
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// For each job (by display name, in plan order), the 0-based shard it
/// belongs to, out of `total`.
pub fn assign(names: &[&str], total: usize, timings: Option<&Timings>) -> Vec<usize> {
    let total = total.max(1);
    let Some(timings) = timings else {
        return (0..names.len()).map(|i| i % total).collect();
    };
    let known: Vec<Duration> = names
        .iter()
        .filter_map(|name| timings.by_job.get(*name).copied())
        .collect();
    let mean = match known.len() {
        0 => Duration::from_secs(1),
        n => known.iter().sum::<Duration>() / n as u32,
    };
    let cost = |name: &str| timings.by_job.get(name).copied().unwrap_or(mean);
    let mut order: Vec<usize> = (0..names.len()).collect();
    // Stable: equal durations keep plan order.
    order.sort_by_key(|&i| std::cmp::Reverse(cost(names[i])));
    let mut load = vec![Duration::ZERO; total];
    let mut shard_of = vec![0; names.len()];
    for i in order {
        let lightest = (0..total)
            .min_by_key(|&s| (load[s], s))
            .expect("at least one shard");
        load[lightest] += cost(names[i]);
        shard_of[i] = lightest;
    }
    shard_of
}

/// Keeps the jobs of `shard` (after `--filter`: the shards split what
/// the filters selected).
pub fn select(mut plan: Plan, shard: Shard, timings: Option<&Timings>) -> Plan {
    let names: Vec<&str> = plan.jobs.iter().map(|job| job.name.as_str()).collect();
    let shard_of = assign(&names, shard.total, timings);
    let mut position = 0;
    plan.jobs.retain(|_| {
        let keep = shard_of[position] == shard.index - 1;
        position += 1;
        keep
    });
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("job{i}")).collect()
    }

    fn refs(names: &[String]) -> Vec<&str> {
        names.iter().map(String::as_str).collect()
    }

    #[test]
    fn shard_specs_parse_and_bad_ones_say_why() {
        assert_eq!("2/3".parse(), Ok(Shard { index: 2, total: 3 }));
        assert_eq!("1/1".parse(), Ok(Shard { index: 1, total: 1 }));
        for bad in ["0/3", "4/3", "1/0", "a/3", "1/b", "3", "", "-1/3", "1/3/4"] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.starts_with("invalid shard"), "{bad}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn gitlab_variables_give_a_one_based_shard() {
        // An empty value counts as unset, as in GitLab.
        let gitlab = |index: &'static str, total: &'static str| {
            move |name: &str| match name {
                "CI_NODE_INDEX" => Some(index.to_string()),
                "CI_NODE_TOTAL" => Some(total.to_string()),
                _ => None,
            }
        };
        assert_eq!(
            Shard::from_env(gitlab("1", "3")),
            Ok(Some(Shard { index: 1, total: 3 }))
        );
        assert_eq!(Shard::from_env(gitlab("1", "")), Ok(None));
        assert!(Shard::from_env(gitlab("0", "3")).is_err());
        assert!(Shard::from_env(gitlab("4", "3")).is_err());
    }

    /// Every job lands in exactly one shard, for many sizes, both ways.
    #[test]
    fn every_job_is_in_exactly_one_shard() {
        for jobs in 0..20 {
            let names = names(jobs);
            let timings = Timings {
                by_job: names
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 3 != 0)
                    .map(|(i, n)| (n.clone(), Duration::from_millis(100 * (i as u64 % 7 + 1))))
                    .collect(),
            };
            for total in 1..7 {
                for t in [None, Some(&timings)] {
                    let shard_of = assign(&refs(&names), total, t);
                    assert_eq!(shard_of.len(), jobs);
                    assert!(shard_of.iter().all(|&s| s < total));
                    let mut seen = vec![0; jobs];
                    for shard in 0..total {
                        for (i, _) in shard_of.iter().enumerate().filter(|(_, &s)| s == shard) {
                            seen[i] += 1;
                        }
                    }
                    assert!(seen.iter().all(|&n| n == 1));
                }
            }
        }
    }

    #[test]
    fn by_count_shards_differ_by_at_most_one() {
        let names = names(10);
        let shard_of = assign(&refs(&names), 3, None);
        let sizes: Vec<usize> = (0..3)
            .map(|s| shard_of.iter().filter(|&&x| x == s).count())
            .collect();
        assert_eq!(sizes, [4, 3, 3]);
    }

    #[test]
    fn the_split_is_deterministic() {
        let names = names(13);
        let timings = Timings {
            by_job: names
                .iter()
                .map(|n| (n.clone(), Duration::from_secs(5)))
                .collect(),
        };
        let first = assign(&refs(&names), 4, Some(&timings));
        for _ in 0..10 {
            // HashMap iteration order changes between maps; the split must not.
            let again = Timings {
                by_job: timings.by_job.clone().into_iter().collect(),
            };
            assert_eq!(assign(&refs(&names), 4, Some(&again)), first);
        }
    }

    #[test]
    fn durations_balance_the_load_longest_first() {
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let secs = [("a", 10), ("b", 6), ("c", 5), ("d", 4), ("e", 1)];
        let timings = Timings {
            by_job: secs
                .iter()
                .map(|(n, s)| (n.to_string(), Duration::from_secs(*s)))
                .collect(),
        };
        // a → 0; b → 1; c → 1 (6 < 10); d → 0? loads 10 vs 11: d → 0 (14);
        // e → 1 (11 < 14). Shards: {a, d} = 14 s, {b, c, e} = 12 s.
        assert_eq!(assign(&refs(&names), 2, Some(&timings)), [0, 1, 1, 0, 1]);
    }

    #[test]
    fn unknown_jobs_cost_the_mean() {
        let names: Vec<String> = ["old1", "old2", "new"].map(String::from).to_vec();
        let timings = Timings {
            by_job: [("old1", 9), ("old2", 3)]
                .iter()
                .map(|(n, s)| (n.to_string(), Duration::from_secs(*s)))
                .collect(),
        };
        // new costs 6: old1 → 0, new → 1, old2 → 1 (6 < 9).
        assert_eq!(assign(&refs(&names), 2, Some(&timings)), [0, 1, 1]);
    }

    #[test]
    fn timings_come_from_junit_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junit = dir.path().join("junit.xml");
        std::fs::write(
            &junit,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="p" tests="1" failures="0" errors="0">
  <testsuite name="build (N=1)" tests="1" failures="0" errors="0" time="12.5">
    <testcase name="make" classname="build (N=1)" time="12.0"/>
  </testsuite>
</testsuites>"#,
        )
        .unwrap();
        let timings = Timings::from_junit(&junit).unwrap();
        assert_eq!(
            timings.by_job.get("build (N=1)"),
            Some(&Duration::from_millis(12500))
        );
        for (name, text) in [
            ("yaml", "jobs:\n  a: {}\n"),
            ("html", "<html><body>hi</body></html>"),
            ("empty", ""),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let err = Timings::from_junit(&path).unwrap_err().to_string();
            assert!(err.contains("not a JUnit report"), "{name}: {err}");
            assert!(!err.contains('\n'), "{name}: {err}");
        }
    }
}
