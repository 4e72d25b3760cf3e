//! The seeds for `services:` (in `defaults` or a job): a list of mappings,
//! each a VM that runs next to the job's. Names are checked against the
//! services before them while they are read, so a duplicate is located at
//! the second one.

use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::super::error::located;
use super::super::scalars::{parse_duration, parse_memory};
use super::super::service::{check_service_name, DEFAULT_READY_TIMEOUT, MAX_SERVICES};
use super::super::{Env, Service};
use super::fields::{next_key, non_empty, parse_value, EnvSeed};
use super::image::ImageSeed;

pub(crate) struct ServiceListSeed<'a> {
    pub workspace: &'a Path,
    /// `in job `a`` or `in `defaults``.
    pub context: &'a str,
}

impl<'de> DeserializeSeed<'de> for ServiceListSeed<'_> {
    type Value = Vec<Service>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Service>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ServiceListSeed<'_> {
    type Value = Vec<Service>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of services (mappings with `name` and `run`)")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Vec<Service>, E> {
        Err(located(format!(
            "`services` {} is empty: write `services: []` for no service",
            self.context
        )))
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<Service>, E> {
        Err(located(format!(
            "`services` {} must be a list of mappings with `name` and `run`, not `{text}`",
            self.context
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Vec<Service>, A::Error> {
        Err(located(format!(
            "`services` {} must be a list: write `- name: …` for each service",
            self.context
        )))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Service>, A::Error> {
        let mut services: Vec<Service> = Vec::new();
        loop {
            let seed = ServiceSeed {
                list: &self,
                earlier: &services,
            };
            let Some(service) = seq.next_element_seed(seed)? else {
                break;
            };
            services.push(service);
        }
        Ok(services)
    }
}

/// One service; `earlier` are the services before it in the same list.
struct ServiceSeed<'a> {
    list: &'a ServiceListSeed<'a>,
    earlier: &'a [Service],
}

impl<'de> DeserializeSeed<'de> for ServiceSeed<'_> {
    type Value = Service;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Service, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ServiceSeed<'_> {
    type Value = Service;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a service: a mapping with `name` and `run`")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Service, E> {
        Err(located(format!(
            "a service is a mapping with `name` and `run`, not `{text}`"
        )))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Service, E> {
        Err(located(format!(
            "empty service {}: give it a `name` and a `run`",
            self.list.context
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Service, A::Error> {
        const KEYS: &[&str] = &[
            "name",
            "image",
            "run",
            "ready",
            "ready_timeout",
            "env",
            "memory",
        ];
        // Here rather than after the element: the error points at the
        // first service too many.
        if self.earlier.len() == MAX_SERVICES {
            return Err(located(format!(
                "more than {MAX_SERVICES} services {}: each is a VM of its own",
                self.list.context
            )));
        }
        let number = self.number();
        let context = format!("in service {number} {}", self.list.context);
        let mut seen = Vec::new();
        let (mut name, mut image, mut run, mut ready) = (None, None, None, None);
        let (mut ready_timeout, mut env, mut memory_mib) =
            (DEFAULT_READY_TIMEOUT, Env::new(), None);
        while let Some(key) = next_key(&mut map, KEYS, &context, &mut seen, &[])? {
            match key {
                "name" => {
                    name = Some(parse_value(&mut map, "a host name", &|text: &str| {
                        self.parse_name(text)
                    })?)
                }
                "image" => {
                    image = Some(map.next_value_seed(ImageSeed {
                        workspace: self.list.workspace,
                        context: &context,
                    })?)
                }
                "run" => {
                    let what = format!("`run` {context}");
                    run = Some(parse_value(&mut map, "a script", &non_empty(what))?);
                }
                "ready" => {
                    let what = format!("`ready` {context}");
                    ready = Some(parse_value(&mut map, "a script", &non_empty(what))?);
                }
                "ready_timeout" => {
                    ready_timeout = parse_value(&mut map, "a duration", &parse_duration)?
                }
                "env" => env = map.next_value_seed(EnvSeed { context: &context })?,
                _ => memory_mib = Some(parse_value(&mut map, "a memory size", &parse_memory)?),
            }
        }
        let Some(name) = name else {
            return Err(located(format!(
                "service {number} {} has no `name`: it is the host name the job reaches it by",
                self.list.context
            )));
        };
        let Some(run) = run else {
            return Err(located(format!(
                "service `{name}` {} has no `run`: give the command that starts it",
                self.list.context
            )));
        };
        Ok(Service {
            name,
            image,
            run,
            ready,
            ready_timeout,
            env,
            memory_mib,
        })
    }
}

impl ServiceSeed<'_> {
    /// 1-based, as people count.
    fn number(&self) -> usize {
        self.earlier.len() + 1
    }

    /// `name`: a host name, not taken by an earlier service of the list.
    fn parse_name(&self, text: &str) -> Result<String, String> {
        check_service_name(text)?;
        if self.earlier.iter().any(|service| service.name == text) {
            return Err(format!(
                "two services of one job have the name `{text}`: each needs its own, the job reaches it by that name"
            ));
        }
        Ok(text.to_string())
    }
}

#[cfg(test)]
#[path = "services_tests.rs"]
mod tests;
