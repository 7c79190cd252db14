//! Experiments measured end to end: a traffic split between two ranking models, shoppers who
//! click one version's answers more, and GetExperimentReport that finds it.

mod common;

use common::{catalog, channel, config, event, items_in, recommender, request, start, test_data};
use tandem_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_finds_the_version_whose_answers_get_more_clicks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("models");
    for (from, version) in [("ranker/1", "1"), ("seqranker/1", "2")] {
        let to = root.join(version);
        std::fs::create_dir_all(&to).expect("mkdir");
        for file in ["model.onnx", "feature_spec.json"] {
            std::fs::copy(
                test_data().join("models").join(from).join(file),
                to.join(file),
            )
            .expect("copy");
        }
    }
    let model_dir = format!("--model-dir={}", root.display());
    let gw = start(config(&[&model_dir, "--model-poll-interval-s=0"])).await;
    let mut admin =
        pb::ranking_admin_service_client::RankingAdminServiceClient::new(channel(gw.addr).await);
    admin
        // The newest version serves at start; the other one joins.
        .load_model(pb::LoadModelRequest {
            version: "1".into(),
            serve: false,
        })
        .await
        .expect("load v1");
    admin
        .set_traffic_split(pb::SetTrafficSplitRequest {
            split: vec![
                pb::TrafficShare {
                    version: "1".into(),
                    weight: 50,
                },
                pb::TrafficShare {
                    version: "2".into(),
                    weight: 50,
                },
            ],
        })
        .await
        .expect("split");

    let mut client = recommender(gw.addr).await;
    let seed_items = items_in(&catalog(), "toys", 3);
    let mut answers = 0;
    for n in 0..300 {
        let user = format!("shopper-{n}");
        client
            .record_events(pb::RecordEventsRequest {
                events: seed_items
                    .iter()
                    .map(|i| event(&user, i, pb::EventType::View, common::t0()))
                    .collect(),
            })
            .await
            .expect("history");
        let answer = client
            .recommend(request(&user, 5))
            .await
            .expect("answer")
            .into_inner();
        answers += 1;
        // Shoppers click the sequence model's answers four times as often.
        let rate = if answer.model_version == "seqranker/1" {
            4
        } else {
            1
        };
        if n % 10 < rate {
            let item = &answer.items[0].item_id;
            let mut events = vec![event(&user, item, pb::EventType::Click, 0)];
            if n % 10 == 0 {
                events.push(event(&user, item, pb::EventType::Purchase, 0));
            }
            client
                .record_events(pb::RecordEventsRequest { events })
                .await
                .expect("click");
        }
    }

    let mut experiments = pb::recommender_admin_service_client::RecommenderAdminServiceClient::new(
        channel(gw.addr).await,
    );
    let report = experiments
        .get_experiment_report(pb::GetExperimentReportRequest {
            control_version: "ranker/1".into(),
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(report.control_version, "ranker/1");
    assert_eq!(report.window_seconds, 24 * 3600);
    let find = |v: &str| {
        report
            .versions
            .iter()
            .find(|o| o.model_version == v)
            .unwrap_or_else(|| panic!("{v} in {report:?}"))
    };
    let (control, treatment) = (find("ranker/1"), find("seqranker/1"));
    assert_eq!(
        control.impressions + treatment.impressions,
        answers * 5,
        "every served item is an impression"
    );
    assert!(
        control.impressions > 250 && treatment.impressions > 250,
        "{report:?}"
    );
    let (c, t) = (control.ctr.expect("ctr"), treatment.ctr.expect("ctr"));
    assert!(t.value > 2.0 * c.value, "{c:?} {t:?}");
    assert!(t.low > c.high, "95 % intervals apart: {c:?} {t:?}");
    let p = treatment.ctr_p_value.expect("tested against the control");
    assert!(p < 1e-3, "p = {p}");
    assert_eq!(control.ctr_p_value, None);
    assert!(control.purchases + treatment.purchases >= 20);
    assert!(control.revenue + treatment.revenue > 0.0);

    let unknown = experiments
        .get_experiment_report(pb::GetExperimentReportRequest {
            control_version: "nope/9".into(),
        })
        .await
        .expect_err("unknown control");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}
