//! 8-bit scalar codes of the graph's vectors, for the walk's first pass.
//!
//! A search scores a few hundred to a few thousand nodes it reaches at random; on a large
//! catalog each score waits for the node's vector to come from memory. A code is a quarter
//! of the vector (one cache line per node at D ≤ 64 instead of two), so the walk ranks
//! nodes on codes and only its final `ef` beam is rescored on the exact vectors (faiss's
//! SQ8 and Qdrant's scalar quantization with rescoring do the same). Results and their
//! distances stay exact; only which nodes the walk passes through can change, a little.
//!
//! Each dimension gets its own range (the values' minimum and maximum over the graph), so
//! dimensions with small spread keep their resolution. Only the inner-product metrics use
//! codes: their distance is linear in the item, so a query folds the ranges in once and a
//! node costs one `f32 × u8` dot product.

use tandem_memory::HugeArray;

use crate::kernels::CodeKernelFn;

pub(crate) struct Codes {
    stored_len: usize,
    /// Per dimension, the value of code 0 and the value of one code step.
    low: Vec<f32>,
    step: Vec<f32>,
    codes: HugeArray<u8>,
    kernel: CodeKernelFn,
}

impl Codes {
    /// Codes for `vectors` (`stored_len` values per node).
    pub(crate) fn encode(vectors: &[f32], stored_len: usize, kernel: CodeKernelFn) -> Self {
        let mut low = vec![f32::INFINITY; stored_len];
        let mut high = vec![f32::NEG_INFINITY; stored_len];
        for v in vectors.chunks_exact(stored_len) {
            for ((x, lo), hi) in v.iter().zip(&mut low).zip(&mut high) {
                *lo = lo.min(*x);
                *hi = hi.max(*x);
            }
        }
        let step: Vec<f32> = low
            .iter()
            .zip(&high)
            .map(|(lo, hi)| if hi > lo { (hi - lo) / 255.0 } else { 0.0 })
            .collect();
        for lo in &mut low {
            if !lo.is_finite() {
                *lo = 0.0;
            }
        }
        let codes: Vec<u8> = vectors
            .chunks_exact(stored_len)
            .flat_map(|v| {
                v.iter().zip(&low).zip(&step).map(|((x, lo), s)| {
                    if *s > 0.0 {
                        ((x - lo) / s).round().clamp(0.0, 255.0) as u8
                    } else {
                        0
                    }
                })
            })
            .collect();
        Self {
            stored_len,
            low,
            step,
            codes: HugeArray::from(codes),
            kernel,
        }
    }

    #[inline]
    pub(crate) fn code(&self, local: u32) -> &[u8] {
        let start = local as usize * self.stored_len;
        &self.codes[start..start + self.stored_len]
    }

    /// Prepares `query` for [`Codes::dot`]: q·x̂ = Σ qⱼ·lowⱼ + Σ (qⱼ·stepⱼ)·codeⱼ.
    pub(crate) fn fold<'a>(&self, query: &[f32], folded: &'a mut Vec<f32>) -> FoldedQuery<'a> {
        folded.clear();
        folded.extend(query.iter().zip(&self.step).map(|(q, s)| q * s));
        let base = query.iter().zip(&self.low).map(|(q, lo)| q * lo).sum();
        FoldedQuery {
            folded,
            base,
            kernel: self.kernel,
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.codes.len() + 8 * self.stored_len
    }
}

/// A query with the code ranges folded in.
pub(crate) struct FoldedQuery<'a> {
    folded: &'a [f32],
    base: f32,
    kernel: CodeKernelFn,
}

impl FoldedQuery<'_> {
    /// The query's dot product with the node's decoded vector.
    #[inline]
    pub(crate) fn dot(&self, code: &[u8]) -> f32 {
        self.base + (self.kernel)(self.folded, code)
    }

    /// The distance to the node's decoded vector, as `Space::distance` gives it for the
    /// inner-product metrics (the only ones with codes).
    #[inline]
    pub(crate) fn distance(&self, code: &[u8]) -> f32 {
        1.0 - self.dot(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Kernels;

    #[test]
    fn decoded_dot_products_are_close_to_the_exact_ones() {
        let (n, dim) = (500, 16);
        let vectors: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0 + (i % dim) as f32)
            .collect();
        let codes = Codes::encode(&vectors, dim, Kernels::detect().dot_u8);
        let query: Vec<f32> = (0..dim).map(|j| (j as f32 * 0.3).sin()).collect();
        let mut scratch = Vec::new();
        let folded = codes.fold(&query, &mut scratch);
        for (node, v) in vectors.chunks_exact(dim).enumerate() {
            let exact: f32 = v.iter().zip(&query).map(|(x, q)| x * q).sum();
            let approx = folded.dot(codes.code(node as u32));
            // Each value is off by at most half a step (4/255/2 here).
            let bound: f32 = query.iter().map(|q| q.abs() * 4.0 / 255.0 / 2.0).sum();
            assert!(
                (exact - approx).abs() <= bound * 1.01,
                "{exact} vs {approx}"
            );
        }
    }

    #[test]
    fn constant_dimensions_decode_exactly() {
        let vectors = vec![1.5, 0.0, 1.5, 2.0, 1.5, 1.0];
        let codes = Codes::encode(&vectors, 2, Kernels::detect().dot_u8);
        let mut scratch = Vec::new();
        let folded = codes.fold(&[2.0, 1.0], &mut scratch);
        assert!((folded.dot(codes.code(1)) - 5.0).abs() < 1e-5);
    }
}
