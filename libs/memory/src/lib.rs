//! Large read-mostly arrays on transparent huge pages.
//!
//! Ranking and retrieval read rows of the embedding table at random: each candidate lands on
//! another 4 KiB page, so on a 50,000-item catalog most reads miss the TLB, and in a VM a
//! miss walks two page tables. With 2 MiB pages the whole table fits in a few TLB entries;
//! measured on the ranking feature assembly, that halved its time after an ORT run.
//!
//! Linux backs a mapping with huge pages when asked with `madvise(MADV_HUGEPAGE)` (the
//! default `transparent_hugepage=madvise` mode) and pages are touched after the advice, so
//! the array is allocated, advised, then filled. Elsewhere, or when the kernel refuses, it
//! is ordinary memory and only slower (on Linux a warning, once per process, says so).
//! Small arrays get a mapping too, for its alignment.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use bytemuck::Pod;
use memmap2::{MmapMut, MmapOptions};

/// The huge page size on x86-64 and aarch64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Below this an array gets no huge page of its own: it would take a whole 2 MiB page of
/// memory for a few TLB entries' worth of data.
const MIN_HUGE_BYTES: usize = 1 << 20;

/// An immutable array of plain values, its first value on a page boundary (so on a cache
/// line), on huge pages when at least 1 MiB.
pub struct HugeArray<T: Pod> {
    storage: Storage<T>,
}

enum Storage<T: Pod> {
    /// Empty, or where the system gives no anonymous mapping.
    Heap(Vec<T>),
    Mapped {
        map: MmapMut,
        /// Byte offset of the first value: the first huge page boundary in the mapping.
        offset: usize,
        len: usize,
        _values: PhantomData<T>,
    },
}

impl<T: Pod> HugeArray<T> {
    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> Self {
        let storage = if values.is_empty() {
            None
        } else {
            Self::mapped(values)
        };
        Self {
            storage: storage.unwrap_or_else(|| Storage::Heap(values.to_vec())),
        }
    }

    fn mapped(values: &[T]) -> Option<Storage<T>> {
        let bytes = std::mem::size_of_val(values);
        let huge = bytes >= MIN_HUGE_BYTES;
        // Room to start on a huge page boundary and to end on one, so every page is huge.
        let len = if huge {
            bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE
        } else {
            bytes
        };
        let mut map = MmapOptions::new().len(len).map_anon().ok()?;
        let offset = if huge {
            // Before the first touch, so the pages are huge from the start.
            #[cfg(target_os = "linux")]
            if let Err(e) = map.advise(memmap2::Advice::HugePage) {
                warn_once(&format!("madvise(MADV_HUGEPAGE) refused: {e}"));
            } else if huge_pages_disabled() {
                warn_once("/sys/kernel/mm/transparent_hugepage/enabled is [never]");
            }
            let base = map.as_ptr() as usize;
            (HUGE_PAGE - base % HUGE_PAGE) % HUGE_PAGE
        } else {
            0
        };
        let target: &mut [T] =
            bytemuck::try_cast_slice_mut(map.get_mut(offset..offset + bytes)?).ok()?;
        target.copy_from_slice(values);
        Some(Storage::Mapped {
            map,
            offset,
            len: values.len(),
            _values: PhantomData,
        })
    }

    #[inline]
    pub fn as_slice(&self) -> &[T] {
        match &self.storage {
            Storage::Heap(v) => v,
            Storage::Mapped {
                map, offset, len, ..
            } => map
                .get(*offset..*offset + len * std::mem::size_of::<T>())
                .and_then(|bytes| bytemuck::try_cast_slice(bytes).ok())
                .unwrap_or(&[]),
        }
    }

    /// Whether the values sit in a mapping of their own (advised for huge pages when large;
    /// the kernel may still have used small ones).
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }
}

/// Whether the kernel's transparent huge page mode is `never`, where advice is ignored.
#[cfg(target_os = "linux")]
fn huge_pages_disabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[never]"))
}

/// Once per process: operators should know why random reads of the large tables run slower,
/// but not once per array.
#[cfg(target_os = "linux")]
fn warn_once(reason: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            reason,
            "large tables (embeddings, item features) stay on 4 KiB pages: random reads of \
             them (search, feature assembly) run slower; allow transparent huge pages \
             (madvise or always) for full speed"
        );
    });
}

impl<T: Pod> Deref for HugeArray<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> Clone for HugeArray<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

impl<T: Pod> Default for HugeArray<T> {
    fn default() -> Self {
        Self {
            storage: Storage::Heap(Vec::new()),
        }
    }
}

impl<T: Pod> From<Vec<T>> for HugeArray<T> {
    fn from(values: Vec<T>) -> Self {
        Self::from_slice(&values)
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for HugeArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HugeArray")
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// Returns the pages that other threads freed to the operating system, on every thread of
/// rayon's pool and on the caller's.
///
/// The servers allocate with mimalloc, which keeps a block freed by another thread on its
/// owner thread's page until that thread allocates again. After an index build, rayon's
/// workers (who allocated hnsw_rs's transient graph) sit idle and the caller freed it, so
/// without this the build's peak stayed resident for good. Harmless when mimalloc is linked
/// but not the global allocator: its heaps are then empty.
pub fn release_freed_memory() {
    fn collect() {
        // SAFETY: mi_collect has no preconditions; it only walks the calling thread's heap.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_collect(true);
        }
    }
    rayon::broadcast(|_| collect());
    collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_arrays_read_back_what_was_written() {
        let small: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        let a = HugeArray::from_slice(&small);
        assert_eq!(&a[..], &small[..]);
        assert_eq!(
            a.as_ptr() as usize % 64,
            0,
            "the first value starts a cache line"
        );

        let large: Vec<u32> = (0..1_000_003)
            .map(|i: u32| i.wrapping_mul(2_654_435_761))
            .collect();
        let b = HugeArray::from(large.clone());
        assert!(b.is_mapped());
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(b.len(), large.len());
        assert_eq!(&b[..], &large[..]);
        assert_eq!(&b.clone()[..], &large[..]);

        let empty: HugeArray<f32> = HugeArray::default();
        assert!(empty.is_empty());
    }
}

/// The process's resident set in bytes (Linux `VmRSS`; `None` elsewhere or unreadable).
///
/// ONNX Runtime allocates behind its C API, out of reach of any per-structure count, so what
/// a model costs is measured as the resident set's growth while it loads.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(all(test, target_os = "linux"))]
mod resident_tests {
    #[test]
    fn the_resident_set_grows_when_memory_is_touched() {
        let before = super::resident_bytes().expect("VmRSS on Linux");
        let touched = vec![1u8; 64 << 20];
        let after = super::resident_bytes().expect("VmRSS on Linux");
        assert!(touched.iter().all(|b| *b == 1));
        assert!(after >= before + (48 << 20), "{before} -> {after}");
    }
}
