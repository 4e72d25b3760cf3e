//! The few DNS messages the egress filter reads and writes (RFC 1035):
//! a guest's query (one question), the resolver's response to it (its `A`
//! records and their TTLs), and the answers the filter gives itself
//! (NXDOMAIN for a name the job may not resolve, an empty answer for a
//! type it does not forward).
//!
//! Every byte comes from the guest or from a resolver the guest steers, so
//! everything is bounds-checked, names are at most 255 bytes, and a
//! compression pointer may only point backwards (no loops).

use std::net::Ipv4Addr;

const HEADER: usize = 12;
/// Longest name on the wire (RFC 1035 2.3.4), length bytes included.
const MAX_NAME: usize = 255;
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;

/// A guest's query: its id, its one question, and where the question
/// ends (what follows is an EDNS record at most).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lower case, without the final dot; bytes outside letters, digits,
    /// `-` and `_` are written `\DDD`, so a name can be shown as it is
    /// and never matches an `allow` entry by accident.
    pub name: String,
    pub qtype: u16,
    question_end: usize,
}

/// Reads a query: a standard query (opcode 0) with one question of class
/// IN, no answers, and at most one additional record (EDNS).
pub fn parse_query(msg: &[u8]) -> Result<Query, &'static str> {
    let header = msg
        .get(..HEADER)
        .ok_or("a DNS message shorter than its header")?;
    let flags = be16(&header[2..4]);
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 {
        return Err("a DNS message that is not a standard query");
    }
    let counts = [4, 6, 8, 10].map(|at| be16(&header[at..at + 2]));
    if counts[0] != 1 || counts[1] != 0 || counts[2] != 0 || counts[3] > 1 {
        return Err("a DNS query that is not one question");
    }
    // A query's name has no compression pointers: nothing comes before it.
    let (name, at) = read_name(msg, HEADER, false)?;
    let fixed = msg.get(at..at + 4).ok_or("a truncated DNS question")?;
    if be16(&fixed[2..4]) != CLASS_IN {
        return Err("a DNS question of a class other than IN");
    }
    Ok(Query {
        id: be16(&header[0..2]),
        name,
        qtype: be16(&fixed[0..2]),
        question_end: at + 4,
    })
}

/// Our own answer to `query` (the message `msg` it was read from): its
/// question, no records, and `rcode`.
pub fn reply(msg: &[u8], query: &Query, rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.question_end);
    out.extend(query.id.to_be_bytes());
    // QR, the query's RD, RA, and the code.
    let rd = msg[2] & 0x01;
    out.push(0x80 | rd);
    out.push(0x80 | (rcode & 0x0f));
    out.extend([0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&msg[HEADER..query.question_end]);
    out
}

/// The same query with another id: the one the forwarder gives it upstream.
pub fn with_id(msg: &[u8], id: u16) -> Vec<u8> {
    let mut out = msg.to_vec();
    out[0..2].copy_from_slice(&id.to_be_bytes());
    out
}

/// One `A` record of a response, and where its address is in the message
/// (so that it can be rewritten).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ARecord {
    pub address: Ipv4Addr,
    pub ttl: u32,
    pub offset: usize,
}

/// A resolver's response, as far as the filter needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub rcode: u8,
    /// Its question's name, read as [`Query::name`].
    pub name: String,
    pub qtype: u16,
    /// The `A` records of its answer section, whatever their owner name
    /// (the resolver followed the question's CNAME chain to them).
    pub a_records: Vec<ARecord>,
    /// Where its question ends: the header and the question before it
    /// make a response without records.
    pub question_end: usize,
}

/// Reads a response with one question; the records of the answer section
/// are walked, the other sections are not read.
pub fn parse_response(msg: &[u8]) -> Result<Response, &'static str> {
    let header = msg
        .get(..HEADER)
        .ok_or("a DNS message shorter than its header")?;
    if header[2] & 0x80 == 0 {
        return Err("a DNS message that is not a response");
    }
    if be16(&header[4..6]) != 1 {
        return Err("a DNS response that is not to one question");
    }
    let answers = be16(&header[6..8]);
    let (name, mut at) = read_name(msg, HEADER, true)?;
    let fixed = msg.get(at..at + 4).ok_or("a truncated DNS question")?;
    let qtype = be16(&fixed[0..2]);
    at += 4;
    let question_end = at;
    let mut a_records = Vec::new();
    for _ in 0..answers {
        let (_, after_name) = read_name(msg, at, true)?;
        let fixed = msg
            .get(after_name..after_name + 10)
            .ok_or("a truncated DNS record")?;
        let (rtype, class) = (be16(&fixed[0..2]), be16(&fixed[2..4]));
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let len = usize::from(be16(&fixed[8..10]));
        let data_at = after_name + 10;
        let data = msg
            .get(data_at..data_at + len)
            .ok_or("a truncated DNS record")?;
        if rtype == TYPE_A && class == CLASS_IN {
            let octets: [u8; 4] = data
                .try_into()
                .map_err(|_| "an A record not 4 bytes long")?;
            a_records.push(ARecord {
                address: Ipv4Addr::from(octets),
                // RFC 2181 8: a TTL with the top bit set is zero.
                ttl: if ttl > i32::MAX as u32 { 0 } else { ttl },
                offset: data_at,
            });
        }
        at = data_at + len;
    }
    Ok(Response {
        id: be16(&header[0..2]),
        rcode: header[3] & 0x0f,
        name,
        qtype,
        a_records,
        question_end,
    })
}

/// Reads the name at `at`; returns it and where the record goes on after
/// it. Pointers, where allowed, must point before the name that uses them,
/// so every jump goes backwards and the walk ends.
fn read_name(msg: &[u8], at: usize, pointers: bool) -> Result<(String, usize), &'static str> {
    let mut name = String::new();
    let (mut pos, mut end, mut wire_len) = (at, None, 0usize);
    let mut lowest = at;
    loop {
        let len = *msg.get(pos).ok_or("a truncated DNS name")?;
        match len {
            0 => {
                wire_len += 1;
                if wire_len > MAX_NAME {
                    return Err("a DNS name longer than 255 bytes");
                }
                return Ok((name, end.unwrap_or(pos + 1)));
            }
            0xc0..=0xff if pointers => {
                let low = *msg.get(pos + 1).ok_or("a truncated DNS name")?;
                let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                if target >= lowest {
                    return Err("a DNS compression pointer that does not point back");
                }
                end.get_or_insert(pos + 2);
                lowest = target;
                pos = target;
            }
            1..=63 => {
                let label = msg
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or("a truncated DNS name")?;
                wire_len += 1 + label.len();
                if wire_len > MAX_NAME {
                    return Err("a DNS name longer than 255 bytes");
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    match b.to_ascii_lowercase() {
                        c @ (b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_') => name.push(c as char),
                        other => name.push_str(&format!("\\{other:03}")),
                    }
                }
                pos += 1 + usize::from(len);
            }
            _ => return Err("a DNS name with a label type this filter does not read"),
        }
    }
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

/// Test messages, for this module's tests and the egress filter's.
#[cfg(any(test, feature = "fuzzing"))]
pub mod build {
    /// A query for `name` of `qtype`, with an EDNS record as glibc sends.
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        push_name(&mut m, name);
        m.extend(qtype.to_be_bytes());
        m.extend([0, 1]);
        // OPT: root name, type 41, payload size 1232, no options.
        m.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        m
    }

    /// The response to [`query`]: a CNAME to `cdn.example.net`, then an
    /// `A` record per address under it, with compressed names.
    pub fn response(id: u16, name: &str, addresses: &[[u8; 4]], ttl: u32) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        let count = 1 + addresses.len() as u16;
        m.extend([0x81, 0x80, 0, 1]);
        m.extend(count.to_be_bytes());
        m.extend([0, 0, 0, 0]);
        push_name(&mut m, name);
        m.extend([0, 1, 0, 1]);
        // The CNAME, owned by the question's name (a pointer to it).
        m.extend([0xc0, 12, 0, 5, 0, 1]);
        m.extend(ttl.to_be_bytes());
        let target_at = m.len() + 2;
        let mut target = Vec::new();
        push_name(&mut target, "cdn.example.net");
        m.extend((target.len() as u16).to_be_bytes());
        m.extend(target);
        for a in addresses {
            m.extend([0xc0, target_at as u8, 0, 1, 0, 1]);
            m.extend(ttl.to_be_bytes());
            m.extend([0, 4]);
            m.extend(a);
        }
        m
    }

    pub fn push_name(m: &mut Vec<u8>, name: &str) {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            m.push(label.len() as u8);
            m.extend(label.as_bytes());
        }
        m.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::build::{push_name, query, response};
    use super::*;

    #[test]
    fn a_query_is_read_and_answered_with_its_own_question() {
        let msg = query(0x1234, "Crates.IO", TYPE_A);
        let q = parse_query(&msg).unwrap();
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype),
            (0x1234, "crates.io", TYPE_A)
        );
        let nx = reply(&msg, &q, RCODE_NXDOMAIN);
        let back = parse_response(&nx).unwrap();
        assert_eq!(back.id, 0x1234);
        assert_eq!(back.rcode, RCODE_NXDOMAIN);
        assert_eq!(back.name, "crates.io");
        assert!(back.a_records.is_empty());
        assert_eq!(&with_id(&msg, 7)[..2], &[0, 7]);
    }

    #[test]
    fn odd_bytes_in_a_name_are_escaped_and_never_a_plain_name() {
        let mut msg = query(1, "x", TYPE_A);
        // The label "x" becomes "a.b" in one label.
        msg.splice(12..14, [3, b'a', b'.', b'b']);
        assert_eq!(parse_query(&msg).unwrap().name, "a\\046b");
    }

    #[test]
    fn a_records_are_found_behind_a_cname_with_compressed_names() {
        let msg = response(9, "crates.io", &[[1, 2, 3, 4], [5, 6, 7, 8]], 60);
        let r = parse_response(&msg).unwrap();
        assert_eq!((r.id, r.rcode, r.name.as_str()), (9, 0, "crates.io"));
        let found: Vec<_> = r.a_records.iter().map(|a| (a.address, a.ttl)).collect();
        assert_eq!(
            found,
            vec![
                (Ipv4Addr::new(1, 2, 3, 4), 60),
                (Ipv4Addr::new(5, 6, 7, 8), 60)
            ]
        );
        assert_eq!(&msg[r.a_records[0].offset..][..4], &[1, 2, 3, 4]);
    }

    #[test]
    fn hostile_messages_are_refused_not_followed() {
        // A pointer to itself, and one that points forwards.
        let mut looped = response(1, "a", &[[1, 1, 1, 1]], 1);
        let at = looped.len() - 16;
        looped[at..at + 2].copy_from_slice(&[0xc0, at as u8]);
        assert!(parse_response(&looped).is_err());
        // A name of 300 bytes.
        let mut long = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            long.push(60);
            long.extend([b'a'; 60]);
        }
        long.extend([0, 0, 1, 0, 1]);
        assert_eq!(parse_query(&long), Err("a DNS name longer than 255 bytes"));
        // Two questions; a response; a truncated one; a pointer in a query.
        let mut two = query(1, "a", TYPE_A);
        two[5] = 2;
        assert!(parse_query(&two).is_err());
        assert!(parse_query(&response(1, "a", &[], 1)).is_err());
        let msg = query(1, "crates.io", TYPE_A);
        for cut in 0..msg.len() - 11 {
            assert!(parse_query(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut pointer = msg[..12].to_vec();
        pointer.extend([0xc0, 12, 0, 1, 0, 1]);
        assert!(parse_query(&pointer).is_err());
        let mut name = Vec::new();
        push_name(&mut name, "a");
        assert_eq!(name, [1, b'a', 0]);
    }
}
