//! The served model: every loaded version of one model directory, the traffic split between
//! them, pinning, and hot reload. Routing reads one `Arc` under a short read lock, so a swap
//! never waits for an inference and a request finishes on the version it started with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use tandem_catalog::Catalog;

use crate::RankingError;
use crate::features::{FeatureValues, ScoreRequest};
use crate::model::{ModelVersion, RankerConfig};

/// Scores for one request and the version that produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// One per candidate, in request order.
    pub scores: Vec<f32>,
    /// `NAME/VERSION`.
    pub model_version: String,
}

/// Share of traffic a version gets; shares are relative to their sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitEntry {
    pub version: String,
    pub weight: u32,
}

/// `tandem_model_loaded{version}` (1 loaded, 0 unloaded since) and
/// `tandem_traffic_split_share{version}` (the share of users routed to it), for dashboards
/// that compare versions; `tandem_memory_bytes{component="ranking_models"}`, what the loaded
/// versions added to the resident set.
fn publish(routing: &Routing, replaced: Option<&Routing>) {
    let total: f64 = routing.split.iter().map(|e| f64::from(e.weight)).sum();
    for version in replaced.iter().flat_map(|r| r.versions.keys()) {
        if !routing.versions.contains_key(version) {
            metrics::gauge!("tandem_model_loaded", "version" => version.clone()).set(0.0);
            metrics::gauge!("tandem_traffic_split_share", "version" => version.clone()).set(0.0);
        }
    }
    for version in routing.versions.keys() {
        let weight: f64 = routing
            .split
            .iter()
            .filter(|e| &e.version == version)
            .map(|e| f64::from(e.weight))
            .sum();
        let share = if total > 0.0 { weight / total } else { 0.0 };
        metrics::gauge!("tandem_model_loaded", "version" => version.clone()).set(1.0);
        metrics::gauge!("tandem_traffic_split_share", "version" => version.clone()).set(share);
    }
    let resident: u64 = routing.versions.values().map(|v| v.resident_bytes()).sum();
    metrics::gauge!("tandem_memory_bytes", "component" => "ranking_models").set(resident as f64);
}

/// Parses `1=90,2=10` (or `2`, meaning all traffic).
pub fn parse_split(text: &str) -> Result<Vec<SplitEntry>, String> {
    let entries = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|part| match part.split_once('=') {
            None => Ok(SplitEntry {
                version: part.to_owned(),
                weight: 1,
            }),
            Some((v, w)) => w
                .trim()
                .parse()
                .map(|weight| SplitEntry {
                    version: v.trim().to_owned(),
                    weight,
                })
                .map_err(|_| format!("`{part}`: the weight must be a whole number")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if entries.is_empty() {
        return Err("no versions".into());
    }
    Ok(entries)
}

/// Buckets users fall into; a version's share is a whole number of buckets.
const BUCKETS: u64 = 10_000;

/// FNV-1a: stable across processes and releases, unlike std's hasher.
fn user_bucket(user_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Mix the high bits in: FNV's low bits are weak for short similar keys.
    (h ^ (h >> 32)) % BUCKETS
}

#[derive(Debug, Clone)]
struct Routing {
    versions: BTreeMap<String, Arc<ModelVersion>>,
    split: Vec<SplitEntry>,
    /// Cumulative bucket bounds, one per split entry.
    bounds: Vec<u64>,
}

impl Routing {
    fn new(
        versions: BTreeMap<String, Arc<ModelVersion>>,
        split: Vec<SplitEntry>,
    ) -> Result<Self, RankingError> {
        let total: u64 = split.iter().map(|e| u64::from(e.weight)).sum();
        if total == 0 {
            return Err(RankingError::InvalidSplit("the weights add up to 0".into()));
        }
        for e in &split {
            if !versions.contains_key(&e.version) {
                return Err(RankingError::UnknownVersion(e.version.clone()));
            }
        }
        let mut acc = 0;
        let bounds = split
            .iter()
            .map(|e| {
                acc += u64::from(e.weight);
                acc * BUCKETS / total
            })
            .collect();
        Ok(Self {
            versions,
            split,
            bounds,
        })
    }

    fn route(&self, user_id: &str) -> &Arc<ModelVersion> {
        let bucket = user_bucket(user_id);
        let i = self.bounds.iter().position(|&b| bucket < b).unwrap_or(0);
        let i = if self.split[i].weight == 0 {
            self.split.iter().position(|e| e.weight > 0).unwrap_or(0)
        } else {
            i
        };
        &self.versions[&self.split[i].version]
    }

    fn find(&self, pinned: &str) -> Option<&Arc<ModelVersion>> {
        self.versions
            .get(pinned)
            .or_else(|| self.versions.values().find(|v| v.label() == pinned))
    }
}

/// A version directory that failed to load, remembered so the watcher does not retry it
/// until its files change.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub version: String,
    pub reason: String,
    modified: Option<SystemTime>,
}

/// What `GetModelInfo` reports.
#[derive(Debug, Clone)]
pub struct RankerInfo {
    pub model_dir: PathBuf,
    pub versions: Vec<Arc<ModelVersion>>,
    pub split: Vec<SplitEntry>,
    pub follows_latest: bool,
    pub rejected: Vec<Rejection>,
    pub config: RankerConfig,
}

/// The ranking stage's model: loaded versions of `NAME/`, routed by user or pinned.
pub struct Ranker {
    root: PathBuf,
    catalog: Arc<Catalog>,
    config: RankerConfig,
    routing: RwLock<Arc<Routing>>,
    /// One load or split change at a time; requests never take it.
    admin: Mutex<AdminState>,
}

#[derive(Debug, Default)]
struct AdminState {
    /// A new version found by the watcher takes all traffic (until a split is set).
    follow_latest: bool,
    rejected: BTreeMap<String, Rejection>,
}

impl std::fmt::Debug for Ranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranker")
            .field("root", &self.root)
            .field("split", &self.routing().split)
            .finish()
    }
}

impl Ranker {
    /// Opens `dir`: a model directory `NAME/` (serves its highest numeric version, or the
    /// versions of `split`) or one version `NAME/VERSION/` (serves that one). Every version
    /// must load, check and warm up, or start-up fails.
    pub fn open(
        dir: &Path,
        catalog: Arc<Catalog>,
        config: RankerConfig,
        split: Option<Vec<SplitEntry>>,
    ) -> Result<Self, RankingError> {
        let (root, split, follow_latest) = if dir.join("feature_spec.json").is_file() {
            let version = dir
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| RankingError::NoVersion(dir.to_owned()))?
                .to_owned();
            let root = dir
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_owned);
            (root, vec![SplitEntry { version, weight: 1 }], false)
        } else if let Some(split) = split {
            (dir.to_owned(), split, false)
        } else {
            let (latest, _) = version_dirs(dir)?
                .pop()
                .ok_or_else(|| RankingError::NoVersion(dir.to_owned()))?;
            (
                dir.to_owned(),
                vec![SplitEntry {
                    version: latest,
                    weight: 1,
                }],
                true,
            )
        };
        let mut versions = BTreeMap::new();
        for e in &split {
            if !versions.contains_key(&e.version) {
                let loaded = ModelVersion::load(&root.join(&e.version), catalog.clone(), &config)?;
                versions.insert(e.version.clone(), Arc::new(loaded));
            }
        }
        let routing = Routing::new(versions, split)?;
        Ok(Self {
            root,
            catalog,
            config,
            routing: RwLock::new(Arc::new({
                publish(&routing, None);
                routing
            })),
            admin: Mutex::new(AdminState {
                follow_latest,
                ..AdminState::default()
            }),
        })
    }

    fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn admin(&self) -> std::sync::MutexGuard<'_, AdminState> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn config(&self) -> &RankerConfig {
        &self.config
    }

    pub fn model_dir(&self) -> &Path {
        &self.root
    }

    /// The version a request would be scored by (its pin, else the user's split share).
    pub fn version_for(&self, request: &ScoreRequest) -> Result<Arc<ModelVersion>, RankingError> {
        let routing = self.routing();
        match &request.version {
            Some(pin) if !pin.is_empty() => routing
                .find(pin)
                .cloned()
                .ok_or_else(|| RankingError::UnknownVersion(pin.clone())),
            _ => Ok(routing.route(&request.user_id).clone()),
        }
    }

    /// Scores every candidate with one version, batched with concurrent requests.
    pub async fn rank(&self, request: ScoreRequest) -> Result<Scores, RankingError> {
        // The handle keeps this version's workers alive until the reply, even if a reload
        // swaps it out meanwhile.
        let version = self.version_for(&request)?;
        let scores = version.score(request).await?;
        Ok(Scores {
            scores,
            model_version: version.label().to_owned(),
        })
    }

    /// [`Ranker::rank`], plus the model's input values per feature for every candidate.
    pub async fn rank_with_features(
        &self,
        request: ScoreRequest,
    ) -> Result<(Scores, Vec<FeatureValues>), RankingError> {
        let version = self.version_for(&request)?;
        let features = version.features(&request)?;
        let scores = version.score(request).await?;
        Ok((
            Scores {
                scores,
                model_version: version.label().to_owned(),
            },
            features,
        ))
    }

    /// [`Ranker::rank`] for callers outside an async runtime.
    pub fn rank_blocking(&self, request: ScoreRequest) -> Result<Scores, RankingError> {
        let version = self.version_for(&request)?;
        let scores = version.score_blocking(request)?;
        Ok(Scores {
            scores,
            model_version: version.label().to_owned(),
        })
    }

    /// Loads, checks and warms up `version` (a directory under the model directory) and adds
    /// it to the loaded set; `serve` also routes all traffic to it. Blocking. A version that
    /// fails is rejected and whatever served before keeps serving.
    pub fn load_version(
        &self,
        version: &str,
        serve: bool,
    ) -> Result<Arc<ModelVersion>, RankingError> {
        if version.is_empty()
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || version.starts_with('.')
        {
            return Err(RankingError::InvalidSplit(format!(
                "`{version}` is not a version directory name"
            )));
        }
        let mut admin = self.admin();
        let current = self.routing();
        let loaded = match current.versions.get(version) {
            Some(v) => v.clone(),
            None => {
                let dir = self.root.join(version);
                match ModelVersion::load(&dir, self.catalog.clone(), &self.config) {
                    Ok(v) => {
                        admin.rejected.remove(version);
                        Arc::new(v)
                    }
                    Err(e) => {
                        tracing::error!(version, error = %e, "rejected model version; the previous version keeps serving");
                        admin.rejected.insert(
                            version.to_owned(),
                            Rejection {
                                version: version.to_owned(),
                                reason: e.to_string(),
                                modified: newest_mtime(&dir),
                            },
                        );
                        return Err(RankingError::Rejected {
                            version: version.to_owned(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
        };
        let mut versions = current.versions.clone();
        versions.insert(version.to_owned(), loaded.clone());
        let split = if serve {
            vec![SplitEntry {
                version: version.to_owned(),
                weight: 1,
            }]
        } else {
            current.split.clone()
        };
        self.swap(Routing::new(versions, split)?);
        tracing::info!(
            version = loaded.label(),
            serving = serve,
            "model version ready"
        );
        Ok(loaded)
    }

    /// Routes traffic between loaded versions by stable user hash; turns off follow-latest.
    pub fn set_split(&self, split: Vec<SplitEntry>) -> Result<(), RankingError> {
        if split.is_empty() {
            return Err(RankingError::InvalidSplit("no versions".into()));
        }
        let mut admin = self.admin();
        let current = self.routing();
        self.swap(Routing::new(current.versions.clone(), split.clone())?);
        admin.follow_latest = false;
        tracing::info!(?split, "traffic split changed");
        Ok(())
    }

    fn swap(&self, routing: Routing) {
        publish(&routing, Some(&self.routing()));
        let replaced = {
            let mut current = self.routing.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *current, Arc::new(routing))
        };
        // Dropped after the lock: dropping a version's last reference waits for its
        // workers to exit, which requests routing meanwhile must not wait for.
        drop(replaced);
    }

    /// Looks for a version directory newer than every loaded one; loads it and, when
    /// following the latest version, routes all traffic to it and unloads versions older
    /// than the one it replaced. Returns the version it brought in.
    pub fn poll(&self) -> Option<String> {
        let dirs = match version_dirs(&self.root) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the model directory");
                return None;
            }
        };
        let routing = self.routing();
        let newest_loaded = routing
            .versions
            .keys()
            .filter_map(|v| v.parse::<u64>().ok())
            .max();
        let (candidate, dir) = dirs.into_iter().rev().find(|(v, _)| {
            v.parse::<u64>()
                .is_ok_and(|n| newest_loaded.is_none_or(|max| n > max))
        })?;
        {
            let admin = self.admin();
            if let Some(r) = admin.rejected.get(&candidate)
                && r.modified == newest_mtime(&dir)
            {
                return None;
            }
        }
        let follow = self.admin().follow_latest;
        let previous = routing.split.first().map(|e| e.version.clone());
        self.load_version(&candidate, follow).ok()?;
        if follow {
            // Keep the version it replaced for pinned requests and quick rollback.
            let _admin = self.admin();
            let current = self.routing();
            let versions: BTreeMap<_, _> = current
                .versions
                .iter()
                .filter(|(v, _)| {
                    Some(*v) == previous.as_ref() || current.split.iter().any(|e| &e.version == *v)
                })
                .map(|(v, m)| (v.clone(), m.clone()))
                .collect();
            if versions.len() < current.versions.len()
                && let Ok(r) = Routing::new(versions, current.split.clone())
            {
                self.swap(r);
            }
        }
        Some(candidate)
    }

    /// Polls the model directory every `interval` on a thread that ends with the ranker.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> Result<(), RankingError> {
        let weak: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("model-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(ranker) = weak.upgrade() else { return };
                    if let Some(v) = ranker.poll() {
                        tracing::info!(version = v, "hot-reloaded model version");
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| RankingError::inference("watcher", e))
    }

    pub fn info(&self) -> RankerInfo {
        let routing = self.routing();
        let admin = self.admin();
        RankerInfo {
            model_dir: self.root.clone(),
            versions: routing.versions.values().cloned().collect(),
            split: routing.split.clone(),
            follows_latest: admin.follow_latest,
            rejected: admin.rejected.values().cloned().collect(),
            config: self.config.clone(),
        }
    }
}

/// Numeric-named subdirectories holding a feature spec, lowest version first.
fn version_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>, RankingError> {
    let entries = std::fs::read_dir(root).map_err(|source| RankingError::Io {
        path: root.to_owned(),
        source,
    })?;
    let mut found: Vec<(u64, String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let n: u64 = name.parse().ok()?;
            e.path()
                .join("feature_spec.json")
                .is_file()
                .then(|| (n, name, e.path()))
        })
        .collect();
    found.sort();
    Ok(found
        .into_iter()
        .map(|(_, name, path)| (name, path))
        .collect())
}

/// The newest modification time among a bundle's files: a rejected bundle is retried only
/// once something in it changed.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_text_parses_and_rejects_nonsense() {
        assert_eq!(
            parse_split("1=90, 2=10").expect("split"),
            vec![
                SplitEntry {
                    version: "1".into(),
                    weight: 90
                },
                SplitEntry {
                    version: "2".into(),
                    weight: 10
                }
            ]
        );
        assert_eq!(parse_split("3").expect("one").len(), 1);
        assert!(parse_split("1=x").is_err());
        assert!(parse_split(" , ").is_err());
    }

    #[test]
    fn user_buckets_are_stable_and_spread() {
        assert_eq!(user_bucket("user-1"), user_bucket("user-1"));
        let mut counts = [0u32; 10];
        for u in 0..10_000 {
            counts[(user_bucket(&format!("user-{u}")) * 10 / BUCKETS) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..=1150).contains(&c)),
            "{counts:?}"
        );
    }
}
