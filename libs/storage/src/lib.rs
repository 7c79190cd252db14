//! What every tandem log and snapshot shares: records framed as `[len u32][crc32 u32][payload]`
//! (little-endian) so a torn or damaged tail is detected rather than misread, the fsync
//! discipline that makes a rename or a new file survive a crash, and the field codec.

pub mod codec;
mod records;

pub use records::{checksum, frame, next_record, sync_dir};
