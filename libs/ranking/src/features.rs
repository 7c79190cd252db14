//! Feature assembly: spec + requests → one row-major tensor buffer per model input, with the
//! rows of every request in a batch one after the other.
//! Mirrors `models/tandem_pipeline/features.py::assemble`.

use std::collections::BTreeMap;

use tandem_catalog::{Catalog, ItemIdx};

use crate::RankingError;
use crate::spec::{FeatureSource, FeatureSpec, InputDtype, Transform};

/// One request to score: one user, many candidates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreRequest {
    /// Picks the version under a traffic split (stable hash).
    pub user_id: String,
    pub user_vector: Vec<f32>,
    pub items: Vec<ItemIdx>,
    /// Empty, or one per item.
    pub retrieval_scores: Vec<f32>,
    /// The user's recent items, newest first (repeats allowed; the sequence keeps the first).
    pub recent_items: Vec<ItemIdx>,
    /// Request context (`hour_of_day`, `device`, ...), read by `context_*` features.
    pub context: BTreeMap<String, String>,
    /// Score with this version (`VERSION` or `NAME/VERSION`) instead of the split's choice.
    pub version: Option<String>,
}

/// A model input's values for a whole batch.
#[derive(Debug, Clone, PartialEq)]
pub enum InputValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One assembled model input: `[rows, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AssembledInput {
    pub name: String,
    pub width: usize,
    pub values: InputValues,
}

/// One feature's values for every row of a request, as the model saw them: `values` holds
/// `rows × width` numbers (int64 ids are exact as f64 below 2^53).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureValues {
    /// The model input it is part of.
    pub input: String,
    /// The source, with its column or key where it has one (`item_numeric:price`).
    pub feature: String,
    pub width: usize,
    pub values: Vec<f64>,
}

impl FeatureValues {
    /// Row `row`'s values.
    pub fn row(&self, row: usize) -> &[f64] {
        self.values
            .get(row * self.width..(row + 1) * self.width)
            .unwrap_or(&[])
    }
}

/// Checks what the spec will read from a request, so that assembly cannot fail later.
pub(crate) fn validate(
    spec: &FeatureSpec,
    catalog: &Catalog,
    req: &ScoreRequest,
) -> Result<(), RankingError> {
    let invalid =
        |field: &'static str, reason: String| RankingError::InvalidArgument { field, reason };
    if req.user_vector.len() != spec.embedding_dim {
        return Err(invalid(
            "user.query_vector",
            format!(
                "expected {} values, got {}",
                spec.embedding_dim,
                req.user_vector.len()
            ),
        ));
    }
    if let Some(i) = req.user_vector.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            "user.query_vector",
            format!("value {i} is not finite"),
        ));
    }
    if !req.retrieval_scores.is_empty() && req.retrieval_scores.len() != req.items.len() {
        return Err(invalid(
            "candidates.retrieval_score",
            "one per candidate or none".into(),
        ));
    }
    if let Some(i) = req.retrieval_scores.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            "candidates.retrieval_score",
            format!("candidate {i}: not finite"),
        ));
    }
    let rows = catalog.len();
    if let Some(&bad) = req.items.iter().find(|&&i| i as usize >= rows) {
        return Err(invalid(
            "candidates",
            format!("item row {bad} is not in the catalog"),
        ));
    }
    if let Some(&bad) = req.recent_items.iter().find(|&&i| i as usize >= rows) {
        return Err(invalid(
            "user.recent_item_ids",
            format!("item row {bad} is not in the catalog"),
        ));
    }
    for f in spec.inputs.iter().flat_map(|i| &i.features) {
        if let FeatureSource::ContextNumeric { key, .. } = f
            && let Some(raw) = req.context.get(key)
            && !raw.trim().parse::<f32>().is_ok_and(f32::is_finite)
        {
            return Err(invalid(
                "user.context",
                format!("`{key}` must be a finite number, got `{raw}`"),
            ));
        }
    }
    Ok(())
}

/// A spec resolved against a catalog once per model version, so assembling a row is copies
/// and table lookups: no column names or category strings compared per row.
#[derive(Debug, Clone)]
pub struct Assembler {
    inputs: Vec<CompiledInput>,
}

#[derive(Debug, Clone)]
struct CompiledInput {
    name: String,
    width: usize,
    dtype: InputDtype,
    /// Each feature with its offset in the row.
    features: Vec<(usize, Compiled)>,
    /// Name and width of each feature, in the same order.
    names: Vec<(String, usize)>,
}

#[derive(Debug, Clone)]
enum Compiled {
    UserVector,
    ItemEmbedding,
    UserItemDot,
    RetrievalScore,
    /// The column with its transform applied, one value per catalog row.
    Numeric {
        values: Vec<f32>,
    },
    /// Catalog category code → one-hot slot.
    OneHot {
        slot: Vec<Option<usize>>,
    },
    /// Catalog category code → id.
    Categorical {
        id: Vec<i64>,
    },
    RecentItems {
        num_ids: i64,
        width: usize,
    },
    ContextNumeric {
        key: String,
        default: f32,
    },
    ContextCategorical {
        key: String,
        vocabulary: Vec<String>,
    },
}

impl Assembler {
    /// Resolves `spec` against `catalog` (which `FeatureSpec::check_catalog` accepted).
    pub fn new(spec: &FeatureSpec, catalog: &Catalog) -> Self {
        let by_code = |vocabulary: &[String]| -> Vec<Option<usize>> {
            catalog
                .categories()
                .iter()
                .map(|c| vocabulary.iter().position(|v| v == c))
                .collect()
        };
        let inputs = spec
            .inputs
            .iter()
            .map(|input| CompiledInput {
                name: input.name.clone(),
                width: input.width(),
                dtype: input.dtype,
                names: input
                    .features
                    .iter()
                    .map(|f| (feature_name(f), f.width()))
                    .collect(),
                features: input
                    .features
                    .iter()
                    .scan(0, |offset, f| {
                        let at = *offset;
                        *offset += f.width();
                        Some((at, f))
                    })
                    .map(|(at, f)| {
                        let compiled = match f {
                            FeatureSource::UserVector { .. } => Compiled::UserVector,
                            FeatureSource::ItemEmbedding { .. } => Compiled::ItemEmbedding,
                            FeatureSource::UserItemDot { .. } => Compiled::UserItemDot,
                            FeatureSource::RetrievalScore { .. } => Compiled::RetrievalScore,
                            FeatureSource::ItemNumeric {
                                column, transform, ..
                            } => Compiled::Numeric {
                                values: (0..catalog.len() as ItemIdx)
                                    .map(|item| {
                                        let v = catalog.numeric(column, item).unwrap_or(0.0);
                                        match transform {
                                            Transform::Identity => v,
                                            Transform::Log1p => v.max(0.0).ln_1p(),
                                        }
                                    })
                                    .collect(),
                            },
                            FeatureSource::ItemCategoryOneHot { vocabulary, .. } => {
                                Compiled::OneHot {
                                    slot: by_code(vocabulary),
                                }
                            }
                            FeatureSource::ItemCategorical { vocabulary, .. } => {
                                Compiled::Categorical {
                                    id: by_code(vocabulary)
                                        .into_iter()
                                        .map(|p| p.map_or(0, |p| p as i64 + 1))
                                        .collect(),
                                }
                            }
                            FeatureSource::RecentItems { num_ids, width } => {
                                Compiled::RecentItems {
                                    num_ids: *num_ids,
                                    width: *width,
                                }
                            }
                            FeatureSource::ContextNumeric { key, default, .. } => {
                                Compiled::ContextNumeric {
                                    key: key.clone(),
                                    default: *default,
                                }
                            }
                            FeatureSource::ContextCategorical {
                                key, vocabulary, ..
                            } => Compiled::ContextCategorical {
                                key: key.clone(),
                                vocabulary: vocabulary.clone(),
                            },
                        };
                        (at, compiled)
                    })
                    .collect(),
            })
            .collect();
        Self { inputs }
    }

    /// The model inputs for `requests`, rows in request order. Requests must have passed
    /// [`validate`] against the same spec and catalog.
    pub fn assemble(&self, catalog: &Catalog, requests: &[&ScoreRequest]) -> Vec<AssembledInput> {
        let mut values = Vec::new();
        self.assemble_into(catalog, requests, &mut values);
        self.inputs
            .iter()
            .zip(values)
            .map(|(input, values)| AssembledInput {
                name: input.name.clone(),
                width: input.width,
                values,
            })
            .collect()
    }

    /// [`Assembler::assemble`] into buffers kept from the previous call: one per input, in
    /// spec order. Reusing them saves an allocation per run and writes into memory that is
    /// likely still cached.
    pub fn assemble_into(
        &self,
        catalog: &Catalog,
        requests: &[&ScoreRequest],
        values: &mut Vec<InputValues>,
    ) {
        values.truncate(self.inputs.len());
        for (i, input) in self.inputs.iter().enumerate() {
            let fresh = || match input.dtype {
                InputDtype::Float32 => InputValues::F32(Vec::new()),
                InputDtype::Int64 => InputValues::I64(Vec::new()),
            };
            if values.len() <= i {
                values.push(fresh());
            }
            let buffer = &mut values[i];
            match (input.dtype, &*buffer) {
                (InputDtype::Float32, InputValues::F32(_))
                | (InputDtype::Int64, InputValues::I64(_)) => {}
                _ => *buffer = fresh(),
            }
            match buffer {
                InputValues::F32(out) => {
                    out.clear();
                    for req in requests {
                        float_rows(&input.features, input.width, catalog, req, out);
                    }
                }
                InputValues::I64(out) => {
                    out.clear();
                    for req in requests {
                        id_rows(&input.features, input.width, catalog, req, out);
                    }
                }
            }
        }
    }

    /// The request's features by name, split out of the assembled inputs.
    pub fn named_features(&self, catalog: &Catalog, request: &ScoreRequest) -> Vec<FeatureValues> {
        let rows = request.items.len();
        let mut values = Vec::new();
        self.assemble_into(catalog, &[request], &mut values);
        let mut out = Vec::new();
        for (input, values) in self.inputs.iter().zip(&values) {
            let as_f64: Vec<f64> = match values {
                InputValues::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
                InputValues::I64(v) => v.iter().map(|&x| x as f64).collect(),
            };
            let mut offset = 0;
            for (name, width) in &input.names {
                let mut column = Vec::with_capacity(rows * width);
                for row in as_f64.chunks_exact(input.width.max(1)).take(rows) {
                    column.extend_from_slice(&row[offset..offset + width]);
                }
                out.push(FeatureValues {
                    input: input.name.clone(),
                    feature: name.clone(),
                    width: *width,
                    values: column,
                });
                offset += width;
            }
        }
        out
    }

    /// `(name, width)` of each input, in spec order.
    pub fn input_shapes(&self) -> impl Iterator<Item = (&str, usize)> {
        self.inputs.iter().map(|i| (i.name.as_str(), i.width))
    }
}

/// `item_numeric:price`, `context_numeric:hour_of_day`, or the bare source name.
fn feature_name(f: &FeatureSource) -> String {
    match f {
        FeatureSource::ItemNumeric { column, .. }
        | FeatureSource::ItemCategorical { column, .. } => {
            format!("{}:{column}", f.name())
        }
        FeatureSource::ContextNumeric { key, .. }
        | FeatureSource::ContextCategorical { key, .. } => {
            format!("{}:{key}", f.name())
        }
        _ => f.name().to_owned(),
    }
}

/// [`Assembler::assemble`] for a one-off call (resolves the spec each time).
pub fn assemble(
    spec: &FeatureSpec,
    catalog: &Catalog,
    requests: &[&ScoreRequest],
) -> Vec<AssembledInput> {
    Assembler::new(spec, catalog).assemble(catalog, requests)
}

/// Rows of one float input: per-request values are written once into a template row that
/// every candidate's row starts from, so the per-row work is two copies and a few lookups.
fn float_rows(
    features: &[(usize, Compiled)],
    width: usize,
    catalog: &Catalog,
    req: &ScoreRequest,
    out: &mut Vec<f32>,
) {
    let user = &req.user_vector;
    let mut template = vec![0.0f32; width];
    for (at, f) in features {
        match f {
            Compiled::UserVector => template[*at..*at + user.len()].copy_from_slice(user),
            Compiled::ContextNumeric { key, default } => {
                template[*at] = req
                    .context
                    .get(key)
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(*default)
            }
            _ => {}
        }
    }
    out.reserve(req.items.len() * width);
    for (row, &item) in req.items.iter().enumerate() {
        if let Some(&ahead) = req.items.get(row + PREFETCH_AHEAD) {
            prefetch_item(features, catalog, ahead);
        }
        let start = out.len();
        out.extend_from_slice(&template);
        let dst = &mut out[start..];
        let emb = catalog.embedding(item);
        for (at, f) in features {
            match f {
                Compiled::ItemEmbedding => dst[*at..*at + emb.len()].copy_from_slice(emb),
                Compiled::UserItemDot => dst[*at] = dot(user, emb),
                Compiled::RetrievalScore => {
                    dst[*at] = req.retrieval_scores.get(row).copied().unwrap_or(0.0)
                }
                Compiled::Numeric { values } => {
                    dst[*at] = values.get(item as usize).copied().unwrap_or(0.0)
                }
                Compiled::OneHot { slot, .. } => {
                    if let Some(Some(s)) = slot.get(catalog.category_code(item) as usize) {
                        dst[*at + s] = 1.0;
                    }
                }
                Compiled::UserVector | Compiled::ContextNumeric { .. } => {}
                Compiled::Categorical { .. }
                | Compiled::RecentItems { .. }
                | Compiled::ContextCategorical { .. } => {
                    unreachable!("the spec check keeps id features out of float32 inputs")
                }
            }
        }
    }
}

/// Candidates are random catalog rows: asking for a later row's cache lines while this row
/// is written hides most of the memory latency that otherwise dominates assembly.
const PREFETCH_AHEAD: usize = 8;

#[inline]
fn prefetch_item(features: &[(usize, Compiled)], catalog: &Catalog, item: ItemIdx) {
    let emb = catalog.embedding(item);
    prefetch(emb.as_ptr());
    prefetch(emb.as_ptr().wrapping_add(emb.len().saturating_sub(1)));
    prefetch(
        catalog
            .category_codes()
            .as_ptr()
            .wrapping_add(item as usize),
    );
    for (_, f) in features {
        if let Compiled::Numeric { values } = f {
            prefetch(values.as_ptr().wrapping_add(item as usize));
        }
    }
}

#[inline]
#[allow(unsafe_code)]
fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Eight independent sums, so the compiler can keep them in one vector register.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Rows of one int64 input, from a per-request template row as in [`float_rows`].
fn id_rows(
    features: &[(usize, Compiled)],
    width: usize,
    catalog: &Catalog,
    req: &ScoreRequest,
    out: &mut Vec<i64>,
) {
    let mut template = vec![0i64; width];
    for (at, f) in features {
        match f {
            Compiled::RecentItems { num_ids, width } => template[*at..*at + width]
                .copy_from_slice(&recent_sequence(&req.recent_items, *num_ids, *width)),
            Compiled::ContextCategorical { key, vocabulary } => {
                template[*at] = req
                    .context
                    .get(key)
                    .map_or(0, |v| vocabulary_id(vocabulary, v))
            }
            _ => {}
        }
    }
    out.reserve(req.items.len() * width);
    for &item in &req.items {
        let start = out.len();
        out.extend_from_slice(&template);
        for (at, f) in features {
            if let Compiled::Categorical { id } = f {
                out[start + at] = id
                    .get(catalog.category_code(item) as usize)
                    .copied()
                    .unwrap_or(0);
            }
        }
    }
}

/// `1 + position`, 0 when unknown.
fn vocabulary_id(vocabulary: &[String], value: &str) -> i64 {
    vocabulary
        .iter()
        .position(|v| v == value)
        .map_or(0, |p| p as i64 + 1)
}

/// Distinct items newest first as `1 + row`, rows outside the model's table left out, padded with 0.
fn recent_sequence(recent: &[ItemIdx], num_ids: i64, width: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(width);
    for &item in recent {
        if out.len() == width {
            break;
        }
        let id = i64::from(item) + 1;
        if id < num_ids && !out.contains(&id) {
            out.push(id);
        }
    }
    out.resize(width, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::FeatureSpec;

    /// Every source kind, checked value by value against the catalog.
    #[test]
    fn every_source_assembles_what_the_spec_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("items.parquet");
        let batch = tandem_catalog::testing::synthetic_batch(10, 4, 3, 1);
        tandem_catalog::testing::write_parquet(&batch, &path).expect("write");
        let catalog = Catalog::open(&path).expect("catalog");
        let spec: FeatureSpec = serde_json::from_value(serde_json::json!({
            "format_version": 2,
            "model": {"name": "m", "version": "1", "file": "model.onnx"},
            "embedding_dim": 4,
            "inputs": [
                {"name": "dense", "dtype": "float32", "shape": [-1, 17], "features": [
                    {"source": "user_item_dot", "width": 1},
                    {"source": "item_embedding", "width": 4},
                    {"source": "retrieval_score", "width": 1},
                    {"source": "item_numeric", "column": "price", "transform": "log1p", "width": 1},
                    {"source": "item_numeric", "column": "in_stock", "transform": "identity", "width": 1},
                    {"source": "item_category_one_hot", "vocabulary": ["cat-01", "nope", "cat-00"], "width": 3},
                    {"source": "context_numeric", "key": "hour_of_day", "default": 12.0, "width": 1},
                    {"source": "context_numeric", "key": "absent", "default": -1.0, "width": 1},
                    {"source": "user_vector", "width": 4}]},
                {"name": "ids", "dtype": "int64", "shape": [-1, 6], "features": [
                    {"source": "item_categorical", "column": "category", "vocabulary": ["cat-02", "cat-00"], "width": 1},
                    {"source": "context_categorical", "key": "device", "vocabulary": ["web", "ios"], "width": 1},
                    {"source": "recent_items", "num_ids": 9, "width": 3},
                    {"source": "context_categorical", "key": "absent", "vocabulary": ["x"], "width": 1}]}],
            "output": {"name": "score", "dtype": "float32", "column": 0}
        }))
        .expect("spec");
        let user = vec![0.5, -0.5, 0.25, 1.0];
        let req = ScoreRequest {
            user_id: "u".into(),
            user_vector: user.clone(),
            items: vec![0, 4],
            retrieval_scores: vec![0.75, 0.25],
            // Row 8 is id 9, outside a 9-id table: left out.
            recent_items: vec![3, 8, 3, 1, 2],
            context: [
                ("hour_of_day".to_owned(), "7".to_owned()),
                ("device".to_owned(), "ios".to_owned()),
            ]
            .into(),
            version: None,
        };
        validate(&spec, &catalog, &req).expect("valid");
        let inputs = Assembler::new(&spec, &catalog).assemble(&catalog, &[&req]);
        let InputValues::F32(dense) = &inputs[0].values else {
            panic!("dense is float32")
        };
        assert_eq!(dense.len(), 2 * 17);
        for (row, &item) in req.items.iter().enumerate() {
            let r = &dense[row * 17..(row + 1) * 17];
            let emb = catalog.embedding(item);
            let dot: f32 = user.iter().zip(emb).map(|(a, b)| a * b).sum();
            assert!((r[0] - dot).abs() < 1e-6);
            assert_eq!(&r[1..5], emb);
            assert_eq!(r[5], req.retrieval_scores[row]);
            assert!((r[6] - catalog.price(item).ln_1p()).abs() < 1e-6);
            assert_eq!(r[7], f32::from(u8::from(catalog.in_stock(item))));
            let one_hot: Vec<f32> = ["cat-01", "nope", "cat-00"]
                .iter()
                .map(|c| f32::from(u8::from(*c == catalog.category(item))))
                .collect();
            assert_eq!(&r[8..11], one_hot.as_slice());
            assert_eq!((r[11], r[12]), (7.0, -1.0));
            assert_eq!(&r[13..], user.as_slice());
        }
        let InputValues::I64(ids) = &inputs[1].values else {
            panic!("ids are int64")
        };
        // Item 0 is cat-00 (id 2 in this vocabulary), item 4 is cat-01 (unknown: 0).
        assert_eq!(ids, &vec![2, 2, 4, 2, 3, 0, 0, 2, 4, 2, 3, 0]);

        // Named features are the same values, split by source, row by row.
        let named = Assembler::new(&spec, &catalog).named_features(&catalog, &req);
        let names: Vec<&str> = named.iter().map(|f| f.feature.as_str()).collect();
        assert_eq!(
            names,
            [
                "user_item_dot",
                "item_embedding",
                "retrieval_score",
                "item_numeric:price",
                "item_numeric:in_stock",
                "item_category_one_hot",
                "context_numeric:hour_of_day",
                "context_numeric:absent",
                "user_vector",
                "item_categorical:category",
                "context_categorical:device",
                "recent_items",
                "context_categorical:absent",
            ]
        );
        for row in 0..2 {
            let dense_row: Vec<f64> = named[..9]
                .iter()
                .flat_map(|f| f.row(row).to_vec())
                .collect();
            let want: Vec<f64> = dense[row * 17..(row + 1) * 17]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            assert_eq!(dense_row, want);
            let id_row: Vec<f64> = named[9..]
                .iter()
                .flat_map(|f| f.row(row).to_vec())
                .collect();
            let want: Vec<f64> = ids[row * 6..(row + 1) * 6]
                .iter()
                .map(|&v| v as f64)
                .collect();
            assert_eq!(id_row, want);
        }
    }

    #[test]
    fn recent_sequence_dedupes_clamps_and_pads() {
        assert_eq!(recent_sequence(&[4, 2, 4, 9, 1], 6, 4), vec![5, 3, 2, 0]);
        assert_eq!(recent_sequence(&[], 10, 3), vec![0, 0, 0]);
        assert_eq!(recent_sequence(&[1, 2, 3, 4], 100, 2), vec![2, 3]);
    }
}
