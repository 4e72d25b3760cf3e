//! The seed for `reports:` (in `defaults`, a job or a step).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::super::error::located;
use super::super::ReportFiles;
use super::fields::{next_key, non_empty, parse_bool, parse_value, StringList};

pub(crate) struct ReportsSeed<'a> {
    pub context: &'a str,
}

impl<'de> DeserializeSeed<'de> for ReportsSeed<'_> {
    type Value = ReportFiles;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ReportFiles, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReportsSeed<'_> {
    type Value = ReportFiles;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping with `junit`, `libtest` and `required`")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReportFiles, A::Error> {
        const KEYS: &[&str] = &["junit", "libtest", "required"];
        let context = format!("in `reports` {}", self.context);
        let mut seen = Vec::new();
        let mut reports = ReportFiles::default();
        while let Some(key) = next_key(&mut map, KEYS, &context, &mut seen, &[])? {
            match key {
                "junit" => reports.junit = map.next_value_seed(PathsSeed { what: "`junit`" })?,
                "libtest" => {
                    reports.libtest = map.next_value_seed(PathsSeed { what: "`libtest`" })?
                }
                _ => reports.required = parse_value(&mut map, "true or false", &parse_bool)?,
            }
        }
        if reports.is_empty() {
            return Err(located(format!(
                "`reports` {} lists no files: give `junit` or `libtest` paths",
                self.context
            )));
        }
        Ok(reports)
    }
}

/// One guest path or glob, or a list of them.
struct PathsSeed {
    what: &'static str,
}

impl<'de> DeserializeSeed<'de> for PathsSeed {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathsSeed {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a guest path or glob, or a list of them ({})", self.what)
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
        let path = non_empty(self.what.to_string())(text).map_err(located)?;
        Ok(vec![path.trim().to_string()])
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<String>, A::Error> {
        let list = StringList {
            what: self.what,
            allow_empty: false,
        };
        let paths = list.visit_seq(seq)?;
        Ok(paths.into_iter().map(|p| p.trim().to_string()).collect())
    }
}
