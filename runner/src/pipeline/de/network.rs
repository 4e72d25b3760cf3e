//! The seed for `network:` (in `defaults` or a job).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::super::error::located;
use super::super::network::{parse_allow_entry, Network};
use super::fields::{next_key, parse_bool, parse_value, Parse};

pub(crate) struct NetworkSeed<'a> {
    pub context: &'a str,
}

impl<'de> DeserializeSeed<'de> for NetworkSeed<'_> {
    type Value = Network;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Network, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NetworkSeed<'_> {
    type Value = Network;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`true`, `false`, or a mapping with `allow`")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Network, E> {
        match parse_bool(text) {
            Ok(true) => Ok(Network::Open),
            Ok(false) => Ok(Network::Off),
            Err(_) => Err(located(format!(
                "`network` {} must be `true`, `false` or `{{ allow: [host:port, …] }}`, not `{text}`",
                self.context
            ))),
        }
    }
    fn visit_bool<E: de::Error>(self, on: bool) -> Result<Network, E> {
        Ok(if on { Network::Open } else { Network::Off })
    }
    fn visit_unit<E: de::Error>(self) -> Result<Network, E> {
        Err(located(format!(
            "`network` {} is empty: write `network: true`, `false` or `{{ allow: [...] }}`",
            self.context
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Network, A::Error> {
        const KEYS: &[&str] = &["allow", "audit"];
        let context = format!("in `network` {}", self.context);
        let mut seen = Vec::new();
        let mut network = None;
        // An audit lets everything through, to list it: no `allow` beside.
        let exclusive = &[("allow", "audit")];
        while let Some(key) = next_key(&mut map, KEYS, &context, &mut seen, exclusive)? {
            network = Some(match key {
                "allow" => Network::Allow(map.next_value_seed(AllowSeed)?),
                _ => match parse_value(&mut map, "`true` or `false`", &parse_bool)? {
                    true => Network::Audit,
                    false => Network::Open,
                },
            });
        }
        network.ok_or_else(|| {
            located(format!(
                "missing `allow` {context}: list the host:port destinations the job may reach, or write `audit: true`"
            ))
        })
    }
}

/// `allow: [host:port, …]`, at least one entry, no duplicates.
struct AllowSeed;

impl<'de> DeserializeSeed<'de> for AllowSeed {
    type Value = Vec<super::super::network::AllowEntry>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for AllowSeed {
    type Value = Vec<super::super::network::AllowEntry>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of host:port destinations")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut entries: Vec<super::super::network::AllowEntry> = Vec::new();
        loop {
            let entry = seq.next_element_seed(Parse {
                what: "a host:port string",
                parse: &|text: &str| {
                    let entry = parse_allow_entry(text)?;
                    if entries.contains(&entry) {
                        return Err(format!("duplicate `allow` entry `{entry}`"));
                    }
                    Ok(entry)
                },
            })?;
            let Some(entry) = entry else { break };
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(located(
                "`allow` is empty: list at least one host:port, or write `network: false`",
            ));
        }
        Ok(entries)
    }
}
