//! Feature assembly: spec + requests → one row-major tensor buffer per model input, with the
//! rows of every request in a batch one after the other.
//! Mirrors `models/tandem_pipeline/features.py::assemble`.

use std::collections::BTreeMap;

use tandem_catalog::{Catalog, ItemIdx};
use tandem_memory::HugeArray;

use crate::RankingError;
use crate::history::{HistoryFeature, ItemHistory, UserSummary};
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
    /// What the user did with items, one entry per item: read by the `user_*` and
    /// `co_occurrence` features.
    pub history: Vec<ItemHistory>,
    /// When the request was made (ms since the epoch): "days since" features count from it.
    pub now_ms: i64,
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
    // Every check on the candidates is a branch-free pass (so it vectorizes) that only
    // looks for the culprit when it fails: they run on every request's hundreds of rows.
    if !req
        .retrieval_scores
        .iter()
        .fold(true, |ok, v| ok & v.is_finite())
        && let Some(i) = req.retrieval_scores.iter().position(|v| !v.is_finite())
    {
        return Err(invalid(
            "candidates.retrieval_score",
            format!("candidate {i}: not finite"),
        ));
    }
    let rows = catalog.len();
    if req.items.iter().fold(0, |max, &i| max.max(i)) as usize >= rows
        && let Some(&bad) = req.items.iter().find(|&&i| i as usize >= rows)
    {
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
    items: ItemTable,
}

/// Every per-item scalar the model reads (transformed numeric columns, one-hot slots,
/// categorical ids), interleaved so that one item's values share a cache line.
///
/// Candidates are random catalog rows, so assembly is bound by cache misses: with a column
/// per feature, a row of the MLP touched six lines (two of embedding, one per scalar);
/// with this table it touches three.
#[derive(Debug, Clone, Default)]
struct ItemTable {
    /// `stride` words per item; f32 bits for numeric values, integers for ids. Starts on a
    /// cache line, on huge pages when large.
    words: HugeArray<u32>,
    stride: usize,
}

#[derive(Clone, Copy)]
struct ItemRecords<'a> {
    words: &'a [u32],
    stride: usize,
}

impl ItemRecords<'_> {
    #[inline]
    fn record(&self, item: ItemIdx) -> &[u32] {
        let at = item as usize * self.stride;
        self.words.get(at..at + self.stride).unwrap_or(&[])
    }
}

impl ItemTable {
    const LINE_WORDS: usize = 16;

    /// `columns[i][item]` is word `i` of `item`'s record.
    fn new(columns: &[Vec<u32>], items: usize) -> Self {
        if columns.is_empty() {
            return Self::default();
        }
        // A power-of-two stride up to a cache line never straddles two lines.
        let stride = if columns.len() <= Self::LINE_WORDS {
            columns.len().next_power_of_two()
        } else {
            columns.len()
        };
        let mut words = vec![0u32; items * stride];
        for (i, column) in columns.iter().enumerate() {
            for (item, &w) in column.iter().enumerate() {
                words[item * stride + i] = w;
            }
        }
        Self {
            words: HugeArray::from(words),
            stride,
        }
    }

    /// The table as a plain slice, taken once per request rather than once per row.
    #[inline]
    fn view(&self) -> ItemRecords<'_> {
        ItemRecords {
            words: &self.words,
            stride: self.stride,
        }
    }

    #[inline]
    fn word(record: &[u32], word: usize) -> u32 {
        record.get(word).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
struct CompiledInput {
    name: String,
    width: usize,
    dtype: InputDtype,
    /// Each feature with its offset in the row.
    features: Vec<(usize, Compiled)>,
    /// What changes from one candidate's row to the next.
    per_row: RowPlan,
    /// Name and width of each feature, in the same order.
    names: Vec<(String, usize)>,
}

/// The per-candidate features of an input grouped by kind, so a row is written by a few
/// straight loops instead of a dispatch per feature (the rest comes from the request's
/// template row).
#[derive(Debug, Clone, Default)]
struct RowPlan {
    embedding: Vec<usize>,
    dot: Vec<usize>,
    retrieval_score: Vec<usize>,
    /// `(offset, word)`: f32 bits in the item table.
    numeric: Vec<(usize, usize)>,
    /// `(offset, word)`: `1 + slot` in the item table.
    one_hot: Vec<(usize, usize)>,
    /// `(offset, word)`: an id in the item table.
    ids: Vec<(usize, usize)>,
    /// Features of the user's history, computed per request.
    history: Vec<(usize, HistoryFeature)>,
}

impl RowPlan {
    fn new(features: &[(usize, Compiled)]) -> Self {
        let mut plan = Self::default();
        for &(at, ref f) in features {
            match *f {
                Compiled::ItemEmbedding => plan.embedding.push(at),
                Compiled::UserItemDot => plan.dot.push(at),
                Compiled::RetrievalScore => plan.retrieval_score.push(at),
                Compiled::Numeric { word } => plan.numeric.push((at, word)),
                Compiled::OneHot { word } => plan.one_hot.push((at, word)),
                Compiled::Categorical { word } => plan.ids.push((at, word)),
                Compiled::History(feature) => plan.history.push((at, feature)),
                Compiled::UserVector
                | Compiled::RecentItems { .. }
                | Compiled::ContextNumeric { .. }
                | Compiled::ContextCategorical { .. } => {}
            }
        }
        plan
    }
}

#[derive(Debug, Clone)]
enum Compiled {
    UserVector,
    ItemEmbedding,
    UserItemDot,
    RetrievalScore,
    /// The column with its transform applied: f32 bits in the item table.
    Numeric {
        word: usize,
    },
    /// `1 + slot` in the item table, 0 when the category is not in the vocabulary.
    OneHot {
        word: usize,
    },
    /// The category's id in the item table.
    Categorical {
        word: usize,
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
    History(HistoryFeature),
}

impl Assembler {
    /// Resolves `spec` against `catalog` (which `FeatureSpec::check_catalog` accepted).
    pub fn new(spec: &FeatureSpec, catalog: &Catalog) -> Self {
        let items = catalog.len() as ItemIdx;
        let codes = catalog.category_codes();
        // Category code → `1 + position` in the vocabulary, 0 when absent.
        let by_code = |vocabulary: &[String]| -> Vec<u32> {
            let ids: Vec<u32> = catalog
                .categories()
                .iter()
                .map(|c| {
                    vocabulary
                        .iter()
                        .position(|v| v == c)
                        .map_or(0, |p| p as u32 + 1)
                })
                .collect();
            codes
                .iter()
                .map(|&c| ids.get(c as usize).copied().unwrap_or(0))
                .collect()
        };
        let mut columns: Vec<Vec<u32>> = Vec::new();
        let mut add_column = |column: Vec<u32>| {
            columns.push(column);
            columns.len() - 1
        };
        let mut inputs: Vec<CompiledInput> = spec
            .inputs
            .iter()
            .map(|input| CompiledInput {
                name: input.name.clone(),
                width: input.width(),
                dtype: input.dtype,
                per_row: RowPlan::default(),
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
                                word: add_column(
                                    (0..items)
                                        .map(|item| {
                                            let v = catalog.numeric(column, item).unwrap_or(0.0);
                                            match transform {
                                                Transform::Identity => v,
                                                Transform::Log1p => v.max(0.0).ln_1p(),
                                            }
                                            .to_bits()
                                        })
                                        .collect(),
                                ),
                            },
                            FeatureSource::ItemCategoryOneHot { vocabulary, .. } => {
                                Compiled::OneHot {
                                    word: add_column(by_code(vocabulary)),
                                }
                            }
                            FeatureSource::ItemCategorical { vocabulary, .. } => {
                                Compiled::Categorical {
                                    word: add_column(by_code(vocabulary)),
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
                            FeatureSource::UserItemHistory { .. } => {
                                Compiled::History(HistoryFeature::Item)
                            }
                            FeatureSource::UserCategoryHistory { .. } => {
                                Compiled::History(HistoryFeature::Category)
                            }
                            FeatureSource::CoOccurrence { half_life_days, .. } => {
                                Compiled::History(HistoryFeature::CoOccurrence {
                                    half_life_days: *half_life_days,
                                })
                            }
                            FeatureSource::UserPrice { .. } => {
                                Compiled::History(HistoryFeature::Price)
                            }
                            FeatureSource::UserActivity { .. } => {
                                Compiled::History(HistoryFeature::Activity)
                            }
                        };
                        (at, compiled)
                    })
                    .collect(),
            })
            .collect();
        for input in &mut inputs {
            input.per_row = RowPlan::new(&input.features);
        }
        Self {
            inputs,
            items: ItemTable::new(&columns, items as usize),
        }
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
                        float_rows(input, catalog, &self.items, req, out);
                    }
                }
                InputValues::I64(out) => {
                    out.clear();
                    for req in requests {
                        id_rows(input, &self.items, req, out);
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
            let stride = input.width.max(1);
            let mut offset = 0;
            for (name, width) in &input.names {
                // Straight from the input's rows to the feature's column: no f64 copy of the
                // whole input on the way.
                let mut column = Vec::with_capacity(rows * width);
                match values {
                    InputValues::F32(v) => {
                        for row in v.chunks_exact(stride).take(rows) {
                            column
                                .extend(row[offset..offset + width].iter().map(|&x| f64::from(x)));
                        }
                    }
                    InputValues::I64(v) => {
                        for row in v.chunks_exact(stride).take(rows) {
                            column.extend(row[offset..offset + width].iter().map(|&x| x as f64));
                        }
                    }
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
    input: &CompiledInput,
    catalog: &Catalog,
    items: &ItemTable,
    req: &ScoreRequest,
    out: &mut Vec<f32>,
) {
    let user = &req.user_vector;
    let width = input.width;
    let mut template = vec![0.0f32; width];
    for (at, f) in &input.features {
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
    let plan = &input.per_row;
    let items = items.view();
    let (embeddings, dim) = (catalog.embeddings(), catalog.dim());
    let embedding = |item: ItemIdx| {
        let at = item as usize * dim;
        embeddings.get(at..at + dim).unwrap_or(&[])
    };
    out.reserve(req.items.len() * width);
    let history_features: Vec<HistoryFeature> = plan.history.iter().map(|h| h.1).collect();
    let summary =
        (!plan.history.is_empty()).then(|| UserSummary::new(req, catalog, &history_features));
    for (row, &item) in req.items.iter().enumerate() {
        if let Some(&ahead) = req.items.get(row + PREFETCH_AHEAD) {
            prefetch_item(embedding(ahead), items.record(ahead));
        }
        let start = out.len();
        out.extend_from_slice(&template);
        let dst = &mut out[start..];
        let emb = embedding(item);
        let record = items.record(item);
        for &at in &plan.embedding {
            dst[at..at + emb.len()].copy_from_slice(emb);
        }
        for &at in &plan.dot {
            dst[at] = dot(user, emb);
        }
        for &at in &plan.retrieval_score {
            dst[at] = req.retrieval_scores.get(row).copied().unwrap_or(0.0);
        }
        for &(at, word) in &plan.numeric {
            dst[at] = f32::from_bits(ItemTable::word(record, word));
        }
        for &(at, word) in &plan.one_hot {
            let slot = ItemTable::word(record, word) as usize;
            if slot > 0 {
                dst[at + slot - 1] = 1.0;
            }
        }
        if let Some(summary) = &summary {
            for &(at, feature) in &plan.history {
                summary.write(feature, catalog, item, &mut dst[at..at + feature.width()]);
            }
        }
    }
}

/// Candidates are random catalog rows: asking for a later row's cache lines while this row
/// is written hides most of the memory latency that otherwise dominates assembly.
const PREFETCH_AHEAD: usize = 8;

#[inline]
fn prefetch_item(embedding: &[f32], record: &[u32]) {
    prefetch(embedding.as_ptr());
    prefetch(
        embedding
            .as_ptr()
            .wrapping_add(embedding.len().saturating_sub(1)),
    );
    prefetch(record.as_ptr());
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
fn id_rows(input: &CompiledInput, items: &ItemTable, req: &ScoreRequest, out: &mut Vec<i64>) {
    let width = input.width;
    let mut template = vec![0i64; width];
    for (at, f) in &input.features {
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
    let ids = &input.per_row.ids;
    let items = items.view();
    out.reserve(req.items.len() * width);
    for &item in &req.items {
        let start = out.len();
        out.extend_from_slice(&template);
        let dst = &mut out[start..];
        let record = items.record(item);
        for &(at, word) in ids {
            dst[at] = i64::from(ItemTable::word(record, word));
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
            history: Vec::new(),
            now_ms: 0,
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
