//! `runner test --list`: the plan as text, one job a line and its steps
//! indented below, after matrix expansion, `--filter` and `--shard`.
//! Nothing is booted and no image is needed.

use crate::plan::{Plan, PlannedJob};

pub fn render(plan: &Plan) -> String {
    let mut text = String::new();
    for job in &plan.jobs {
        text.push_str(&one_line(&job.name));
        text.push_str(&job_notes(job));
        text.push('\n');
        for step in &job.steps {
            text.push_str(&format!("    {}. {}", step.index + 1, one_line(&step.name)));
            if step.retry > 0 {
                text.push_str(&format!("  (retry {})", step.retry));
            }
            text.push('\n');
        }
    }
    text
}

fn job_notes(job: &PlannedJob) -> String {
    let mut notes = Vec::new();
    if job.allow_failure {
        notes.push("allowed to fail".to_string());
    }
    if job.retry > 0 {
        notes.push(format!("retry {}", job.retry));
    }
    // The keys as resolved: a `key: { files }` hash is only seen here.
    if !job.caches.is_empty() {
        let keys: Vec<&str> = job.caches.iter().map(|c| c.key.as_str()).collect();
        notes.push(format!("cache {}", keys.join(", ")));
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!("  ({})", notes.join(", "))
    }
}

/// Names may hold newlines (a step named after a multi-line script).
fn one_line(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::pipeline::Pipeline;

    #[test]
    fn lists_matrix_jobs_and_their_steps() {
        let yaml = "jobs:\n  t:\n    matrix: { N: [1, 2] }\n    allow_failure: true\n    retry: 1\n    steps: [make, {name: check, run: 'true', retry: 2}]\n";
        let pipeline = Pipeline::parse(yaml, Path::new("p.yml"), Path::new("/ws")).unwrap();
        let text = render(&Plan::new(&pipeline));
        assert_eq!(
            text,
            "t (N=1)  (allowed to fail, retry 1)\n    1. make\n    2. check  (retry 2)\nt (N=2)  (allowed to fail, retry 1)\n    1. make\n    2. check  (retry 2)\n"
        );
    }

    #[test]
    fn lists_cache_keys_as_resolved() {
        let yaml = "jobs:\n  t:\n    cache: [{ key: a, paths: [/a] }, { key: { files: [x.lock], prefix: b }, paths: [/b] }]\n    steps: [make]\n";
        let dir = tempfile::tempdir().unwrap();
        let pipeline = Pipeline::parse(yaml, Path::new("p.yml"), dir.path()).unwrap();
        let text = render(&Plan::new(&pipeline));
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("t  (cache a, b-"), "{text}");
        assert_eq!(first.len(), "t  (cache a, b-".len() + 16 + 1, "{text}");
    }
}
