//! How records are encoded: a 3-byte header (codec, record version) and a
//! bincode 1.3 body. Storage structs use only plain fields (no `flatten`,
//! tags, `skip_serializing_if` or `serde_json::Value`, which bincode cannot
//! read back); JSON payloads and results are stored as raw bytes.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Byte 0 of every record: which codec wrote the body.
pub const CODEC_BINCODE1: u8 = 1;
/// Bytes 1–2: the version of the record layout. Versions 2 and 3 changed
/// only `JobRecord` (migrations 0002 and 0003 rewrote every job), version 4
/// `JobRecord` and `Counts` (migration 0004); the other records read the
/// same at versions 1 to 4.
pub const RECORD_VERSION: u16 = 4;

const MAX_RECORD: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("record too short for its header")]
    Truncated,
    #[error("unknown record codec {0}")]
    UnknownCodec(u8),
    #[error("record version {0} is newer than this engine understands ({RECORD_VERSION})")]
    TooNew(u16),
    #[error("record body: {0}")]
    Body(#[from] bincode::Error),
}

// The free functions of bincode allow trailing bytes and use varints for
// nothing; one explicit option set keeps reads strict and layout stable.
fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .with_limit(MAX_RECORD)
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    encode_as(RECORD_VERSION, record)
}

/// Encodes with an explicit record version: for migrations' tests, which
/// build stores as an older engine wrote them.
pub fn encode_as<T: Serialize>(version: u16, record: &T) -> Vec<u8> {
    let mut out = vec![CODEC_BINCODE1];
    out.extend_from_slice(&version.to_be_bytes());
    options()
        .serialize_into(&mut out, record)
        .expect("storage records always encode");
    out
}

/// The record version in a record's header.
pub fn version(bytes: &[u8]) -> Result<u16, CodecError> {
    match bytes {
        [CODEC_BINCODE1, a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        [codec, _, _, ..] => Err(CodecError::UnknownCodec(*codec)),
        _ => Err(CodecError::Truncated),
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < 3 {
        return Err(CodecError::Truncated);
    }
    if bytes[0] != CODEC_BINCODE1 {
        return Err(CodecError::UnknownCodec(bytes[0]));
    }
    let version = u16::from_be_bytes([bytes[1], bytes[2]]);
    if version > RECORD_VERSION {
        return Err(CodecError::TooNew(version));
    }
    Ok(options().deserialize(&bytes[3..])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct R {
        a: u32,
        b: Option<String>,
        c: Vec<u8>,
    }

    #[test]
    fn round_trip_and_strictness() {
        let r = R {
            a: 7,
            b: None,
            c: b"{\"x\":1}".to_vec(),
        };
        let mut bytes = encode(&r);
        assert_eq!(&bytes[..3], &[1, 0, 4]);
        assert_eq!(version(&bytes).unwrap(), 4);
        assert_eq!(decode::<R>(&bytes).unwrap(), r);
        bytes.push(0);
        assert!(decode::<R>(&bytes).is_err(), "trailing bytes are refused");
        assert!(matches!(
            decode::<R>(&[1, 0, 9, 0]),
            Err(CodecError::TooNew(9))
        ));
        assert!(matches!(
            decode::<R>(&[2, 0, 1]),
            Err(CodecError::UnknownCodec(2))
        ));
    }
}
