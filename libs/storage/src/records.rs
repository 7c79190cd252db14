use std::fs::File;
use std::path::Path;

/// Bytes of the `[len][crc]` header before each payload.
pub const RECORD_HEADER: usize = 8;

pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Appends `payload` to `out` as one record.
pub fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The record at `pos` and where the next one starts; `None` at the end, on a short (torn)
/// record, on a checksum mismatch, or when the length exceeds `max_len` (corruption, not data).
pub fn next_record(bytes: &[u8], pos: usize, max_len: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(pos..pos.checked_add(RECORD_HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > max_len {
        return None;
    }
    let start = pos + RECORD_HEADER;
    let payload = bytes.get(start..start + len)?;
    (checksum(payload) == crc).then_some((payload, start + len))
}

/// Makes a file created or renamed in `dir` survive a crash (its directory entry is data too).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_records_and_stops_at_damage() {
        let mut bytes = Vec::new();
        frame(&mut bytes, b"one");
        frame(&mut bytes, b"two");
        let (first, next) = next_record(&bytes, 0, 100).expect("first");
        assert_eq!(first, b"one");
        let (second, end) = next_record(&bytes, next, 100).expect("second");
        assert_eq!((second, end), (&b"two"[..], bytes.len()));
        assert!(next_record(&bytes, end, 100).is_none(), "end");
        assert!(next_record(&bytes[..end - 1], next, 100).is_none(), "torn");
        let mut flipped = bytes.clone();
        flipped[next + RECORD_HEADER] ^= 1;
        assert!(next_record(&flipped, next, 100).is_none(), "checksum");
        assert!(next_record(&bytes, 0, 2).is_none(), "over the length limit");
    }
}
