//! Versions: hot reload under load (no request lost, no response mixing versions), broken
//! versions rejected while the previous one serves, traffic split by user hash, pinning.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tandem_ranking::{Ranker, RankingError, ScoreRequest, Scores, SplitEntry};

/// Publishes a bundle the way a deployment should: write aside, then rename into place.
fn publish(root: &Path, version: &str, from: &Path, label_version: &str) {
    let staging = root.join(format!(".staging-{version}"));
    let label = label_version.to_owned();
    copy_bundle(from, &staging, |s| {
        s["model"]["name"] = "ranker".into();
        s["model"]["version"] = label.into();
    });
    std::fs::rename(&staging, root.join(version)).expect("publish");
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A model directory `ranker/` in a temp dir holding `versions` (name, source bundle).
fn model_root(versions: &[(&str, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("ranker");
    std::fs::create_dir_all(&root).expect("mkdir");
    for (version, source) in versions {
        publish(
            &root,
            version,
            &test_data().join("models").join(source),
            version,
        );
    }
    (tmp, root)
}

#[test]
fn hot_reload_under_load_loses_nothing_and_never_mixes_versions() {
    let catalog = catalog();
    let models = test_data().join("models");
    let (tmp, root) = model_root(&[("1", "ranker/1")]);
    let ranker =
        Arc::new(Ranker::open(&root, catalog.clone(), config(batching()), None).expect("v1"));
    ranker.watch(Duration::from_millis(50)).expect("watcher");

    let cases: Vec<ScoreRequest> = reference("rank_reference.json")
        .cases
        .iter()
        .map(|c| c.request(&catalog))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let (ranker, stop, cases) = (ranker.clone(), stop.clone(), cases.clone());
            std::thread::spawn(move || {
                let mut seen: Vec<(usize, Scores)> = Vec::new();
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let case = i % cases.len();
                    // Every request is answered: a reload never fails one.
                    let got = ranker
                        .rank_blocking(cases[case].clone())
                        .expect("rank during reload");
                    if let Some((_, last)) = seen.last() {
                        // Routing only moves forward: once v2 answered this caller, v1 never does.
                        assert!(
                            !(last.model_version == "ranker/2" && got.model_version == "ranker/1"),
                            "went back to v1"
                        );
                    }
                    seen.push((case, got));
                    i += 1;
                }
                seen
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    publish(&root, "2", &models.join("seqranker/1"), "2");
    wait_for("v2 to take traffic", || {
        ranker.info().split
            == vec![SplitEntry {
                version: "2".into(),
                weight: 1,
            }]
    });
    std::thread::sleep(Duration::from_millis(300));

    // Broken versions are refused and v2 keeps serving.
    let fixtures = test_data().join("fixtures");
    publish(&root, "3", &fixtures.join("garbage_model"), "3");
    wait_for("v3 to be rejected", || {
        ranker.info().rejected.iter().any(|r| r.version == "3")
    });
    publish(&root, "4", &fixtures.join("nan_model"), "4");
    wait_for("v4 to be rejected", || {
        ranker.info().rejected.iter().any(|r| r.version == "4")
    });
    let spec_mismatch = tmp.path().join("mismatch");
    copy_bundle(&models.join("ranker/1"), &spec_mismatch, |s| {
        s["inputs"][0]["name"] = "dense".into()
    });
    publish(&root, "5", &spec_mismatch, "5");
    wait_for("v5 to be rejected", || {
        ranker.info().rejected.iter().any(|r| r.version == "5")
    });
    let info = ranker.info();
    assert_eq!(
        info.split,
        vec![SplitEntry {
            version: "2".into(),
            weight: 1
        }]
    );
    let reasons: Vec<&str> = info.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not finite") || r.contains("non-finite")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("`dense`")), "{reasons:?}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);

    // What each version answers for each case, asked by pinning (v1 stays loaded for that).
    let expected = |version: &str| -> Vec<Vec<f32>> {
        cases
            .iter()
            .map(|c| {
                let pinned = ranker
                    .rank_blocking(ScoreRequest {
                        version: Some(version.into()),
                        ..c.clone()
                    })
                    .expect("pinned");
                assert_eq!(pinned.model_version, format!("ranker/{version}"));
                pinned.scores
            })
            .collect()
    };
    let (v1, v2) = (expected("1"), expected("2"));
    assert_ne!(
        v1[0], v2[0],
        "the versions must score differently for this test to mean anything"
    );
    let (mut n1, mut n2) = (0, 0);
    for client in clients {
        for (case, got) in client.join().expect("client") {
            let want = match got.model_version.as_str() {
                "ranker/1" => {
                    n1 += 1;
                    &v1[case]
                }
                "ranker/2" => {
                    n2 += 1;
                    &v2[case]
                }
                other => panic!("served by {other}"),
            };
            // Every score of the response comes from the version it names.
            assert_close(&got.scores, want, &got.model_version);
        }
    }
    assert!(n1 > 0 && n2 > 0, "both versions served: v1 {n1}, v2 {n2}");

    // Rollback through the admin path: v1 takes all traffic again.
    ranker.load_version("1", true).expect("rollback");
    let back = ranker.rank_blocking(cases[0].clone()).expect("rank");
    assert_eq!(back.model_version, "ranker/1");
    // A version that does not exist is rejected; v1 keeps serving.
    let err = ranker.load_version("9", true).expect_err("no such version");
    assert!(matches!(err, RankingError::Rejected { .. }), "{err}");
    assert_eq!(
        ranker
            .rank_blocking(cases[0].clone())
            .expect("rank")
            .model_version,
        "ranker/1"
    );
}

#[test]
fn traffic_split_follows_the_weights_and_pins_override_it() {
    let catalog = catalog();
    let (_tmp, root) = model_root(&[("1", "ranker/1"), ("2", "seqranker/1")]);
    let split = vec![
        SplitEntry {
            version: "1".into(),
            weight: 90,
        },
        SplitEntry {
            version: "2".into(),
            weight: 10,
        },
    ];
    let ranker =
        Ranker::open(&root, catalog.clone(), config(batching()), Some(split)).expect("open");
    let base = reference("rank_reference.json").cases[0].request(&catalog);
    let one_item = ScoreRequest {
        items: base.items[..1].to_vec(),
        retrieval_scores: base.retrieval_scores[..1].to_vec(),
        ..base
    };
    let users = 10_000;
    let mut on_v2 = 0;
    for u in 0..users {
        let req = ScoreRequest {
            user_id: format!("user-{u}"),
            ..one_item.clone()
        };
        let got = ranker.rank_blocking(req.clone()).expect("rank");
        if got.model_version == "ranker/2" {
            on_v2 += 1;
        }
        if u % 1000 == 0 {
            // Stable: the same user lands on the same version every time.
            assert_eq!(
                ranker
                    .rank_blocking(req.clone())
                    .expect("again")
                    .model_version,
                got.model_version
            );
            // A pin beats the split, by directory name or by label.
            for pin in ["1", "ranker/1"] {
                let pinned = ranker
                    .rank_blocking(ScoreRequest {
                        version: Some(pin.into()),
                        ..req.clone()
                    })
                    .expect("pinned");
                assert_eq!(pinned.model_version, "ranker/1");
            }
        }
    }
    let share = f64::from(on_v2) / f64::from(users);
    assert!(
        (0.085..=0.115).contains(&share),
        "v2 got {share:.4} of users, want 0.10"
    );

    // Shifting the split moves users at run time.
    ranker
        .set_split(vec![
            SplitEntry {
                version: "1".into(),
                weight: 50,
            },
            SplitEntry {
                version: "2".into(),
                weight: 50,
            },
        ])
        .expect("split");
    let on_v2 = (0..2000)
        .filter(|u| {
            ranker
                .rank_blocking(ScoreRequest {
                    user_id: format!("user-{u}"),
                    ..one_item.clone()
                })
                .expect("rank")
                .model_version
                == "ranker/2"
        })
        .count();
    assert!(
        (850..=1150).contains(&on_v2),
        "50/50 split gave v2 {on_v2} of 2000"
    );
    let err = ranker
        .set_split(vec![SplitEntry {
            version: "3".into(),
            weight: 1,
        }])
        .expect_err("unloaded version");
    assert!(matches!(err, RankingError::UnknownVersion(v) if v == "3"));
    let err = ranker
        .set_split(vec![SplitEntry {
            version: "1".into(),
            weight: 0,
        }])
        .expect_err("zero weights");
    assert!(matches!(err, RankingError::InvalidSplit(_)));
}
