//! Account balances from a JSON list of transfers, e.g.
//! `[{"from": "alice", "to": "bob", "cents": 250}]`.
//!
//! A small real crate with real dependencies (serde with its derive
//! macros, serde_json), for `pipelines/cache-rust.yml`: what the runner's
//! caches keep from one run to the next is the registry and the compiled
//! dependencies.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub from: String,
    pub to: String,
    pub cents: u64,
}

#[derive(Debug)]
pub enum Error {
    Json(serde_json::Error),
    /// A transfer from an account to itself.
    SelfTransfer { index: usize, account: String },
    /// A balance beyond what an i64 holds.
    Overflow { index: usize },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Json(e) => write!(f, "not a list of transfers: {e}"),
            Error::SelfTransfer { index, account } => {
                write!(f, "transfer {index}: from `{account}` to itself")
            }
            Error::Overflow { index } => write!(f, "transfer {index}: a balance overflows"),
        }
    }
}

impl std::error::Error for Error {}

/// Each account's balance in cents, by name.
pub fn balances(json: &str) -> Result<BTreeMap<String, i64>, Error> {
    let transfers: Vec<Transfer> = serde_json::from_str(json).map_err(Error::Json)?;
    let mut balances = BTreeMap::new();
    for (index, t) in transfers.iter().enumerate() {
        if t.from == t.to {
            return Err(Error::SelfTransfer {
                index,
                account: t.from.clone(),
            });
        }
        let cents = i64::try_from(t.cents).map_err(|_| Error::Overflow { index })?;
        let from = balances.entry(t.from.clone()).or_insert(0i64);
        *from = from.checked_sub(cents).ok_or(Error::Overflow { index })?;
        let to = balances.entry(t.to.clone()).or_insert(0i64);
        *to = to.checked_add(cents).ok_or(Error::Overflow { index })?;
    }
    Ok(balances)
}

/// The balances as a JSON object, accounts in name order.
pub fn balances_json(json: &str) -> Result<String, Error> {
    let balances = balances(json)?;
    serde_json::to_string(&balances).map_err(Error::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_move_money_between_accounts() {
        let json = r#"[
            {"from": "alice", "to": "bob", "cents": 250},
            {"from": "bob", "to": "carol", "cents": 100}
        ]"#;
        let b = balances(json).unwrap();
        assert_eq!(b["alice"], -250);
        assert_eq!(b["bob"], 150);
        assert_eq!(b["carol"], 100);
        assert_eq!(b.values().sum::<i64>(), 0);
    }

    #[test]
    fn the_output_is_a_json_object_in_name_order() {
        let json = r#"[{"from": "zed", "to": "amy", "cents": 5}]"#;
        assert_eq!(balances_json(json).unwrap(), r#"{"amy":5,"zed":-5}"#);
    }

    #[test]
    fn an_empty_list_has_no_accounts() {
        assert!(balances("[]").unwrap().is_empty());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        for bad in [
            r#"[{"from": "a", "to": "b", "cents": 1, "memo": "x"}]"#,
            r#"[{"from": "a", "to": "b", "cents": -1}]"#,
            r#"{"from": "a", "to": "b", "cents": 1}"#,
            "[",
        ] {
            assert!(matches!(balances(bad), Err(Error::Json(_))), "{bad}");
        }
    }

    #[test]
    fn a_transfer_to_oneself_is_refused_with_its_index() {
        let json = r#"[{"from": "a", "to": "b", "cents": 1}, {"from": "c", "to": "c", "cents": 1}]"#;
        let e = balances(json).unwrap_err();
        assert_eq!(e.to_string(), "transfer 1: from `c` to itself");
    }

    #[test]
    fn overflowing_balances_are_refused() {
        let json = format!(
            r#"[{{"from": "a", "to": "b", "cents": {max}}}, {{"from": "a", "to": "b", "cents": {max}}}]"#,
            max = i64::MAX
        );
        assert!(matches!(balances(&json), Err(Error::Overflow { index: 1 })));
        let json = format!(r#"[{{"from": "a", "to": "b", "cents": {}}}]"#, u64::MAX);
        assert!(matches!(balances(&json), Err(Error::Overflow { index: 0 })));
    }

    #[test]
    fn transfers_round_trip_through_json() {
        let t = Transfer {
            from: "a".into(),
            to: "b".into(),
            cents: 7,
        };
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Transfer>(&text).unwrap(), t);
    }
}
