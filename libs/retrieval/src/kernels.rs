//! Distance kernels: AVX2+FMA on x86-64 when the CPU has it (picked once at start-up), a
//! portable loop the compiler vectorizes otherwise.
//!
//! Vectors handed to these kernels are padded with zeros to a multiple of [`LANES`], so the
//! SIMD path has no scalar tail to handle.

/// f32 lanes of one AVX register; stored vectors are padded to a multiple of this.
pub const LANES: usize = 8;

/// A distance kernel over two equally long, padded vectors.
pub type KernelFn = fn(&[f32], &[f32]) -> f32;

/// A dot product of an `f32` query with 8-bit codes (the graph walk's quantized first pass).
pub type CodeKernelFn = fn(&[f32], &[u8]) -> f32;

/// The kernels this CPU runs best.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub dot: KernelFn,
    pub squared_l2: KernelFn,
    pub dot_u8: CodeKernelFn,
    /// Which implementation was selected, for logs and benchmark reports.
    pub name: &'static str,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Kernels {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Self {
                dot: avx2::dot,
                squared_l2: avx2::squared_l2,
                dot_u8: avx2::dot_u8,
                name: "avx2+fma",
            };
        }
        Self::portable()
    }

    pub fn portable() -> Self {
        Self {
            dot: portable_dot,
            squared_l2: portable_squared_l2,
            dot_u8: portable_dot_u8,
            name: "portable",
        }
    }
}

/// Starts loading `data` into the cache without waiting for it. The graph walk reads its
/// neighbours' vectors in random order: asking for all of them before the distance loop lets
/// their cache misses overlap instead of stalling one after another (hnswlib does the same).
#[inline(always)]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        const LINE: usize = 64;
        let start = data.as_ptr().cast::<u8>();
        let bytes = std::mem::size_of_val(data);
        // Every line the slice touches, its last one included when it straddles a boundary.
        let lines = (start as usize % LINE + bytes).div_ceil(LINE);
        for line in 0..lines {
            prefetch_line(start.wrapping_add(line * LINE));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
fn prefetch_line(p: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: a prefetch is a hint: it never faults (even past the slice's end) and changes
    // nothing the program can observe. SSE is part of the x86-64 baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) }
}

/// Rounds a dimension up to whole SIMD lanes.
pub fn padded_len(dim: usize) -> usize {
    dim.div_ceil(LANES) * LANES
}

pub fn portable_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a
        .chunks_exact(LANES)
        .remainder()
        .iter()
        .zip(b.chunks_exact(LANES).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

pub fn portable_dot_u8(a: &[f32], codes: &[u8]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, c) in a.chunks_exact(LANES).zip(codes.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] * f32::from(c[i]);
        }
    }
    let tail: f32 = a
        .chunks_exact(LANES)
        .remainder()
        .iter()
        .zip(codes.chunks_exact(LANES).remainder())
        .map(|(x, c)| x * f32::from(*c))
        .sum();
    acc.iter().sum::<f32>() + tail
}

pub fn portable_squared_l2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let tail: f32 = a
        .chunks_exact(LANES)
        .remainder()
        .iter()
        .zip(b.chunks_exact(LANES).remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// Only reachable through `Kernels::detect`, which checked avx2 and fma first.
    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: selected only after `is_x86_feature_detected!("avx2")` and `("fma")`.
        unsafe { dot_avx2(a, b) }
    }

    pub(super) fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as for `dot`.
        unsafe { squared_l2_avx2(a, b) }
    }

    pub(super) fn dot_u8(a: &[f32], codes: &[u8]) -> f32 {
        // SAFETY: as for `dot`.
        unsafe { dot_u8_avx2(a, codes) }
    }

    /// Eight codes widened to `f32` lanes, multiplied with eight query values.
    #[target_feature(enable = "avx2,fma")]
    fn dot_u8_avx2(a: &[f32], codes: &[u8]) -> f32 {
        let n = a.len().min(codes.len());
        let whole = n / LANES * LANES;
        let (pa, pc) = (a.as_ptr(), codes.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (loads): i + LANES <= whole <= both lengths; an 8-byte load of codes at i
        // stays inside them, and neither load needs alignment.
        unsafe {
            while i + 2 * LANES <= whole {
                let c0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    pc.add(i).cast::<__m128i>(),
                )));
                let c1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    pc.add(i + LANES).cast::<__m128i>(),
                )));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), c0, acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + LANES)), c1, acc1);
                i += 2 * LANES;
            }
            if i < whole {
                let c0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    pc.add(i).cast::<__m128i>(),
                )));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), c0, acc0);
            }
        }
        let mut sum = hsum(_mm256_add_ps(acc0, acc1));
        for j in whole..n {
            sum += a[j] * f32::from(codes[j]);
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let whole = n / LANES * LANES;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (loads): i + LANES <= whole <= both lengths; loadu has no alignment needs.
        unsafe {
            while i + 2 * LANES <= whole {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + LANES)),
                    _mm256_loadu_ps(pb.add(i + LANES)),
                    acc1,
                );
                i += 2 * LANES;
            }
            if i < whole {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            }
        }
        let mut sum = hsum(_mm256_add_ps(acc0, acc1));
        for j in whole..n {
            sum += a[j] * b[j];
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    fn squared_l2_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let whole = n / LANES * LANES;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (loads): as in `dot_avx2`.
        unsafe {
            while i + 2 * LANES <= whole {
                let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                let d1 = _mm256_sub_ps(
                    _mm256_loadu_ps(pa.add(i + LANES)),
                    _mm256_loadu_ps(pb.add(i + LANES)),
                );
                acc0 = _mm256_fmadd_ps(d0, d0, acc0);
                acc1 = _mm256_fmadd_ps(d1, d1, acc1);
                i += 2 * LANES;
            }
            if i < whole {
                let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            }
        }
        let mut sum = hsum(_mm256_add_ps(acc0, acc1));
        for j in whole..n {
            let d = a[j] - b[j];
            sum += d * d;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_kernels_agree_with_portable_ones() {
        let k = Kernels::detect();
        for len in [0, 3, 8, 13, 16, 33, 40, 64, 72, 129] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let (d, p) = ((k.dot)(&a, &b), portable_dot(&a, &b));
            assert!(
                (d - p).abs() <= 1e-4 * (1.0 + p.abs()),
                "dot {len}: {d} vs {p}"
            );
            let codes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let (d, p) = ((k.dot_u8)(&a, &codes), portable_dot_u8(&a, &codes));
            assert!(
                (d - p).abs() <= 1e-3 * (1.0 + p.abs()),
                "dot_u8 {len}: {d} vs {p}"
            );
            let (d, p) = ((k.squared_l2)(&a, &b), portable_squared_l2(&a, &b));
            assert!(
                (d - p).abs() <= 1e-4 * (1.0 + p.abs()),
                "l2 {len}: {d} vs {p}"
            );
        }
    }
}
