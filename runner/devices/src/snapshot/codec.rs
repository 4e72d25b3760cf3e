//! The one encoding of a VM snapshot's state: the VMM's (vCPUs, the VM's
//! interrupt controllers and clock, the serial port, every virtio
//! transport) and, inside each transport's, its device's own
//! ([`super::state::DeviceState`]). Every part is a serde type, and the
//! whole is encoded once, with [postcard].
//!
//! Why postcard:
//! - a documented wire format that its 1.x releases keep stable, so what
//!   decides whether a file still reads is our types alone (and the
//!   snapshot file's format version says when they changed);
//! - compact without effort: integers are varints, a byte string is its
//!   length and the bytes as they are (a block device's written chunks are
//!   not escaped, as JSON's hex or number arrays would be), no field names;
//! - bounded on hostile input: a byte string or string is checked against
//!   the bytes left before it is touched (and borrowed, not copied, where
//!   the type allows), and a sequence's claimed length never sizes an
//!   allocation (serde pre-allocates at most 1 MiB whatever it claims, and
//!   each element must then be decoded from the input). What remains is
//!   types that decode much larger than they encode (kvm-bindings pads a
//!   short byte string to the whole kernel struct, so an empty one becomes
//!   kilobytes); their counts are bounded with [`at_most`]. Decoding
//!   never panics: a malformed input is an error;
//! - well kept and widely used; bincode, the other usual choice, is no
//!   longer maintained (its last release carries only that notice).
//!
//! The snapshot file puts this encoding behind its own versioned, checked
//! header (`runner_vmm::snapshot::file`), which also bounds the encoded
//! state's length before a byte of it is read.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Why a value could not be encoded, or bytes not decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode the state: {0}")]
    Encode(#[source] postcard::Error),
    #[error("the state does not decode: {0}")]
    Decode(#[source] postcard::Error),
    /// Bytes follow a complete value: not something this build wrote.
    #[error("{0} unexpected bytes follow the state")]
    Trailing(usize),
}

/// `value` in the snapshot encoding.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(value).map_err(CodecError::Encode)
}

/// The value `bytes` encode, all of them: bytes left over are an error, so
/// that one value has one encoding.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(CodecError::Decode)?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Decodes a sequence of at most `MAX` elements into a `Vec`, refusing a
/// longer one before decoding past the limit: for element types whose
/// decoded size is far above their smallest encoding. Use it as
/// `#[serde(deserialize_with = "at_most::<MAX, _, _>")]`.
pub fn at_most<'de, const MAX: usize, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<const MAX: usize, T>(PhantomData<T>);

    impl<'de, const MAX: usize, T: Deserialize<'de>> Visitor<'de> for Bounded<MAX, T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a sequence of at most {MAX} elements")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let too_long = || serde::de::Error::custom(format!("more than {MAX} elements"));
            let claimed = seq.size_hint().unwrap_or(0);
            if claimed > MAX {
                return Err(too_long());
            }
            let mut items = Vec::with_capacity(claimed);
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX {
                    return Err(too_long());
                }
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_seq(Bounded::<MAX, T>(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        word: u64,
        flag: bool,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        #[serde(deserialize_with = "at_most::<3, _, _>")]
        few: Vec<u32>,
        maybe: Option<u16>,
    }

    fn sample() -> Sample {
        Sample {
            word: 0x0102_0304_0506_0708,
            flag: true,
            bytes: vec![0xab; 300],
            few: vec![1, 2, 3],
            maybe: Some(7),
        }
    }

    #[test]
    fn values_round_trip_and_bytes_stay_bytes() {
        let encoded = encode(&sample()).expect("encode");
        assert_eq!(decode::<Sample>(&encoded).expect("decode"), sample());
        // 300 bytes cost 300 bytes and a 2-byte length, not 600 hex digits.
        let at = encoded
            .windows(300)
            .position(|w| w.iter().all(|&b| b == 0xab))
            .expect("the bytes as they are");
        assert_eq!(&encoded[at - 2..at], &[0xac, 0x02], "varint 300");
        assert!(encoded.len() < 300 + 32, "{} bytes", encoded.len());
    }

    #[test]
    fn every_truncation_and_any_leftover_is_an_error() {
        let encoded = encode(&sample()).expect("encode");
        for len in 0..encoded.len() {
            let err = decode::<Sample>(&encoded[..len]).expect_err("truncated");
            assert!(matches!(err, CodecError::Decode(_)), "{len}: {err}");
        }
        let mut longer = encoded.clone();
        longer.extend_from_slice(&[0, 0]);
        let err = decode::<Sample>(&longer).expect_err("leftover");
        assert_eq!(err.to_string(), "2 unexpected bytes follow the state");
    }

    #[test]
    fn a_sequence_longer_than_its_bound_is_refused() {
        let mut long = sample();
        long.few.push(4);
        let encoded = encode(&long).expect("encode");
        let err = decode::<Sample>(&encoded).expect_err("too long");
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
        // Units encode as nothing: a claimed length alone would decode
        // into that many of them (what decodes far bigger than it
        // encodes), but the bound refuses it before the first.
        #[derive(Debug, Deserialize)]
        struct Units {
            #[serde(deserialize_with = "at_most::<3, _, _>")]
            _units: Vec<()>,
        }
        assert_eq!(decode::<Vec<()>>(&[0x7f]).expect("unbounded").len(), 127);
        assert_eq!(decode::<Units>(&[3]).expect("at the bound")._units.len(), 3);
        let err = decode::<Units>(&[0x7f]).expect_err("beyond the bound");
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
    }

    #[test]
    fn a_claimed_length_beyond_the_input_is_an_error() {
        // A byte string claiming u32::MAX bytes in a 7-byte input.
        let mut bytes = vec![0x01, 0x01];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let err = decode::<Sample>(&bytes).expect_err("short");
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
        // A sequence of u64 claiming as many elements.
        let err = decode::<Vec<u64>>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).expect_err("short");
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
    }
}
