//! Frame headers (RFC 6455 §5.2) and masking (§5.3).

use super::{FrameError, OpCode};

/// The largest header: 2 bytes, an 8-byte length, a 4-byte masking key.
pub const MAX_HEADER: usize = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    /// Payload bytes.
    pub len: u64,
    /// Header bytes.
    pub size: usize,
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header, once the buffer holds this many bytes.
    Need(usize),
    Header(Header),
}

/// Reads the header at the start of `buf`. Rules that need no context are
/// checked here: reserved bits, known opcodes, control frames small and whole.
pub fn parse(buf: &[u8]) -> Result<Parsed, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(Parsed::Need(2));
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension was agreed)",
        ));
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let extra = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let size = 2 + extra + if masked { 4 } else { 0 };
    if buf.len() < size {
        return Ok(Parsed::Need(size));
    }
    let len = match extra {
        0 => u64::from(b1 & 0x7F),
        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        _ => u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
    };
    if len >> 63 != 0 {
        return Err(FrameError::Protocol("payload length has its top bit set"));
    }
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::Protocol(
            "control frames are whole and at most 125 bytes",
        ));
    }
    let mask = masked.then(|| buf[size - 4..size].try_into().expect("4 bytes"));
    Ok(Parsed::Header(Header {
        fin,
        opcode,
        mask,
        len,
        size,
    }))
}

/// Writes a final frame's header into `out`; returns its length.
pub fn encode(
    out: &mut [u8; MAX_HEADER],
    opcode: OpCode,
    len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = 0x80 | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut size = 2;
    if len < 126 {
        out[1] = mask_bit | len as u8;
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        size = 4;
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        size = 10;
    }
    if let Some(key) = mask {
        out[size..size + 4].copy_from_slice(&key);
        size += 4;
    }
    size
}

/// XORs `data` with a masking key (the key's first byte on `data[0]`).
/// Sixteen bytes at a time, which the compiler turns into vector XORs: this
/// pass over every byte is the one cost of masking on a relay.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let mut wide = [0u8; 16];
    for (i, b) in wide.iter_mut().enumerate() {
        *b = key[i % 4];
    }
    let wide = u128::from_ne_bytes(wide);
    let mut blocks = data.chunks_exact_mut(16);
    for block in &mut blocks {
        let v = u128::from_ne_bytes((&*block).try_into().expect("16 bytes")) ^ wide;
        block.copy_from_slice(&v.to_ne_bytes());
    }
    // The remainder starts at a multiple of 16, so at the key's first byte.
    for (i, b) in blocks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(buf: &[u8]) -> Header {
        match parse(buf).unwrap() {
            Parsed::Header(h) => h,
            Parsed::Need(n) => panic!("needs {n} bytes"),
        }
    }

    #[test]
    fn lengths_round_trip_in_all_three_encodings() {
        for (len, size) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 40, 10),
        ] {
            let mut out = [0; MAX_HEADER];
            let n = encode(&mut out, OpCode::Binary, len, None);
            assert_eq!(n, size, "len {len}");
            let h = header(&out[..n]);
            assert_eq!(
                (h.len, h.size, h.fin, h.opcode, h.mask),
                (len as u64, size, true, OpCode::Binary, None)
            );
            let n = encode(&mut out, OpCode::Text, len, Some([1, 2, 3, 4]));
            assert_eq!(header(&out[..n]).mask, Some([1, 2, 3, 4]));
            assert_eq!(n, size + 4);
        }
    }

    #[test]
    fn a_partial_header_asks_for_what_it_needs() {
        assert_eq!(parse(&[]).unwrap(), Parsed::Need(2));
        assert_eq!(parse(&[0x82]).unwrap(), Parsed::Need(2));
        assert_eq!(parse(&[0x82, 0x80 | 126]).unwrap(), Parsed::Need(8));
        assert_eq!(parse(&[0x82, 127, 0, 0]).unwrap(), Parsed::Need(10));
    }

    #[test]
    fn broken_rules_are_protocol_errors() {
        let bad: [&[u8]; 5] = [
            &[0xC2, 0],                              // RSV1 without an extension
            &[0x83, 0],                              // reserved opcode
            &[0x09, 0],                              // fragmented ping
            &[0x89, 126, 0, 126],                    // ping over 125 bytes
            &[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0], // 64-bit length with its top bit
        ];
        for b in bad {
            assert!(matches!(parse(b), Err(FrameError::Protocol(_))), "{b:?}");
        }
    }

    #[test]
    fn masking_twice_gives_the_bytes_back_at_every_length() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in [0, 1, 3, 15, 16, 17, 100, 65536 + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut masked = data.clone();
            apply_mask(&mut masked, key);
            for (i, (m, d)) in masked.iter().zip(&data).enumerate() {
                assert_eq!(*m, d ^ key[i % 4], "byte {i} of {len}");
            }
            apply_mask(&mut masked, key);
            assert_eq!(masked, data);
        }
    }
}
