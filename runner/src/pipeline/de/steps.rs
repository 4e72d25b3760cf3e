//! Seeds for a job's `steps` and `matrix`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::super::error::located;
use super::super::scalars::{check_env_name, parse_duration};
use super::super::{Env, MatrixAxis, Step, StepCommand};
use super::fields::{
    next_key, non_empty, parse_guest_dir, parse_retry, parse_value, EnvSeed, Parse, StringList,
};
use super::reports::ReportsSeed;

/// Longest generated step name; longer scripts are cut with `…`.
const MAX_GENERATED_NAME: usize = 60;

pub(crate) struct StepsSeed<'a> {
    pub job: &'a str,
}

impl<'de> DeserializeSeed<'de> for StepsSeed<'_> {
    type Value = Vec<Step>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Step>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for StepsSeed<'_> {
    type Value = Vec<Step>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of steps")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Step>, A::Error> {
        let mut steps = Vec::new();
        while let Some(step) = seq.next_element_seed(StepSeed {
            job: self.job,
            number: steps.len() + 1,
        })? {
            steps.push(step);
        }
        if steps.is_empty() {
            return Err(located(format!("job `{}` has no steps", self.job)));
        }
        Ok(steps)
    }
}

struct StepSeed<'a> {
    job: &'a str,
    /// 1-based, as people count.
    number: usize,
}

impl StepSeed<'_> {
    fn context(&self) -> String {
        format!("in step {} of job `{}`", self.number, self.job)
    }

    fn script<E: de::Error>(&self, script: &str) -> Result<Step, E> {
        if script.trim().is_empty() {
            return Err(located(format!("empty script {}", self.context())));
        }
        Ok(Step {
            name: generated_name(script),
            command: StepCommand::Script(script.to_string()),
            env: Env::new(),
            workdir: None,
            shell: None,
            timeout: None,
            reports: None,
            retry: 0,
        })
    }
}

/// A readable name for an unnamed step: its first non-empty line.
fn generated_name(script: &str) -> String {
    let line = script
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("");
    if line.chars().count() > MAX_GENERATED_NAME {
        let cut: String = line.chars().take(MAX_GENERATED_NAME - 1).collect();
        format!("{}…", cut.trim_end())
    } else {
        line.to_string()
    }
}

impl<'de> DeserializeSeed<'de> for StepSeed<'_> {
    type Value = Step;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Step, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StepSeed<'_> {
    type Value = Step;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a step: a script, or a mapping with `run` or `argv`")
    }
    fn visit_str<E: de::Error>(self, script: &str) -> Result<Step, E> {
        self.script(script)
    }
    // `- true` and `- false` are scripts too; YAML just calls them booleans.
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Step, E> {
        self.script(&value.to_string())
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Step, E> {
        self.script(&value.to_string())
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Step, E> {
        self.script(&value.to_string())
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Step, E> {
        self.script(&value.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Step, E> {
        Err(located(format!("empty step {}", self.context())))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Step, A::Error> {
        const KEYS: &[&str] = &[
            "name", "run", "argv", "env", "workdir", "shell", "timeout", "reports", "retry",
        ];
        const EXCLUSIVE: &[(&str, &str)] = &[("run", "argv"), ("argv", "shell")];
        let context = self.context();
        let mut seen = Vec::new();
        let (mut name, mut command, mut env) = (None, None, Env::new());
        let (mut workdir, mut shell, mut timeout, mut reports, mut retry) =
            (None, None, None, None, 0);
        while let Some(key) = next_key(&mut map, KEYS, &context, &mut seen, EXCLUSIVE)? {
            match key {
                "name" => {
                    let what = format!("`name` {context}");
                    name = Some(parse_value(&mut map, "a name", &non_empty(what))?);
                }
                "run" => {
                    let what = format!("`run` {context}");
                    let script = parse_value(&mut map, "a script", &non_empty(what))?;
                    command = Some(StepCommand::Script(script));
                }
                "argv" => {
                    let what = format!("`argv` {context}");
                    command = Some(StepCommand::Argv(map.next_value_seed(StringList {
                        what: &what,
                        allow_empty: false,
                    })?));
                }
                "env" => env = map.next_value_seed(EnvSeed { context: &context })?,
                "workdir" => {
                    workdir = Some(parse_value(&mut map, "a guest path", &parse_guest_dir)?)
                }
                "shell" => {
                    let what = format!("`shell` {context}");
                    shell = Some(parse_value(&mut map, "a shell path", &non_empty(what))?);
                }
                "reports" => {
                    reports = Some(map.next_value_seed(ReportsSeed { context: &context })?)
                }
                "retry" => retry = parse_value(&mut map, "a number of retries", &parse_retry)?,
                _ => timeout = Some(parse_value(&mut map, "a duration", &parse_duration)?),
            }
        }
        let Some(command) = command else {
            return Err(located(format!("missing `run` or `argv` {context}")));
        };
        let name = name.unwrap_or_else(|| match &command {
            StepCommand::Script(script) => generated_name(script),
            StepCommand::Argv(argv) => generated_name(&argv.join(" ")),
        });
        Ok(Step {
            name,
            command,
            env,
            workdir,
            shell,
            timeout,
            reports,
            retry,
        })
    }
}

/// `matrix:`, a mapping of variable names to lists of scalar values.
pub(crate) struct MatrixSeed<'a> {
    pub job: &'a str,
}

impl<'de> DeserializeSeed<'de> for MatrixSeed<'_> {
    type Value = Vec<MatrixAxis>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MatrixSeed<'_> {
    type Value = Vec<MatrixAxis>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping of variable names to lists of values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let job = self.job;
        let mut axes: Vec<MatrixAxis> = Vec::new();
        loop {
            let key = map.next_key_seed(Parse {
                what: "a variable name",
                parse: &|name: &str| {
                    check_env_name(name)?;
                    if axes.iter().any(|axis| axis.name == name) {
                        return Err(format!("duplicate matrix variable `{name}` in job `{job}`"));
                    }
                    Ok(name.to_string())
                },
            })?;
            let Some(name) = key else { break };
            let values = map.next_value_seed(AxisSeed {
                job,
                variable: &name,
            })?;
            axes.push(MatrixAxis { name, values });
        }
        if axes.is_empty() {
            return Err(located(format!("`matrix` of job `{job}` has no variables")));
        }
        Ok(axes)
    }
}

struct AxisSeed<'a> {
    job: &'a str,
    variable: &'a str,
}

impl<'de> DeserializeSeed<'de> for AxisSeed<'_> {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for AxisSeed<'_> {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a list of values for matrix variable `{}`",
            self.variable
        )
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut values: Vec<String> = Vec::new();
        let (job, variable) = (self.job, self.variable);
        loop {
            let item = seq.next_element_seed(Parse {
                what: "a scalar value",
                parse: &|value: &str| {
                    if values.iter().any(|v| v == value) {
                        return Err(format!(
                            "duplicate value `{value}` for matrix variable `{variable}` in job `{job}`"
                        ));
                    }
                    Ok(value.to_string())
                },
            })?;
            let Some(value) = item else { break };
            values.push(value);
        }
        if values.is_empty() {
            return Err(located(format!(
                "matrix variable `{variable}` of job `{job}` has no values"
            )));
        }
        Ok(values)
    }
}
