//! `tandem.v1.RecommenderAdminService`: operations on users' data, behind the admin token.

use std::time::Instant;

use tandem_proto::v1 as pb;
use tandem_recommend::Recommender;
use tandem_server::{AdminToken, Ready};
use tonic::{Request, Response, Status};

use crate::status::status;

#[derive(Debug, Clone)]
pub struct RecommenderAdminApi {
    recommender: Ready<Recommender>,
    admin: AdminToken,
}

impl RecommenderAdminApi {
    pub fn new(recommender: Ready<Recommender>) -> Self {
        Self {
            recommender,
            admin: AdminToken::default(),
        }
    }

    pub fn with_admin_token(mut self, admin: AdminToken) -> Self {
        self.admin = admin;
        self
    }

    pub fn into_service(
        self,
    ) -> pb::recommender_admin_service_server::RecommenderAdminServiceServer<Self> {
        pb::recommender_admin_service_server::RecommenderAdminServiceServer::new(self)
    }
}

fn rate(p: tandem_experiments::Proportion) -> pb::Rate {
    pb::Rate {
        value: p.value,
        low: p.low,
        high: p.high,
    }
}

#[tonic::async_trait]
impl pb::recommender_admin_service_server::RecommenderAdminService for RecommenderAdminApi {
    async fn get_experiment_report(
        &self,
        request: Request<pb::GetExperimentReportRequest>,
    ) -> Result<Response<pb::GetExperimentReportResponse>, Status> {
        let recommender = self.recommender.get()?;
        let Some(ledger) = recommender.experiments() else {
            return Err(Status::failed_precondition(
                "experiments are not measured on this gateway (--attribution-window-min 0)",
            ));
        };
        let control = request.into_inner().control_version;
        let report = ledger.report((!control.is_empty()).then_some(control.as_str()));
        if !control.is_empty() && report.versions.iter().all(|v| v.version != control) {
            return Err(Status::not_found(format!(
                "control_version: no answer of `{control}` was measured"
            )));
        }
        Ok(Response::new(pb::GetExperimentReportResponse {
            control_version: report.control.unwrap_or_default(),
            window_seconds: (report.window_ms / 1000).max(0) as u64,
            versions: report
                .versions
                .into_iter()
                .map(|v| pb::VersionOutcome {
                    model_version: v.version,
                    impressions: v.totals.impressions,
                    clicks: v.totals.clicked,
                    add_to_carts: v.totals.carted,
                    purchases: v.totals.purchased,
                    revenue: v.totals.revenue,
                    ctr: Some(rate(v.ctr)),
                    add_to_cart_rate: Some(rate(v.add_to_cart_rate)),
                    conversion_rate: Some(rate(v.conversion_rate)),
                    revenue_per_impression: Some(pb::Rate {
                        value: v.revenue_per_impression.0,
                        low: v.revenue_per_impression.1,
                        high: v.revenue_per_impression.2,
                    }),
                    ctr_p_value: v.ctr_p_value,
                    conversion_p_value: v.conversion_p_value,
                })
                .collect(),
        }))
    }

    async fn forget_user(
        &self,
        request: Request<pb::ForgetUserRequest>,
    ) -> Result<Response<pb::ForgetUserResponse>, Status> {
        self.admin.check(&request)?;
        let recommender = self.recommender.get()?.clone();
        let user_id = request.into_inner().user_id;
        let started = Instant::now();
        let forgotten = recommender.forget_user(&user_id).await.map_err(status)?;
        let seconds = started.elapsed().as_secs_f64();
        let events = &forgotten.events;
        tracing::info!(
            erasure_seq = events.seq,
            state_removed = events.state,
            log_events = events.log.log_events,
            exported_rows = events.log.exported_rows,
            served_rows = forgotten.served_rows,
            seconds,
            "forgot a user"
        );
        Ok(Response::new(pb::ForgetUserResponse {
            state_removed: events.state,
            log_events_removed: events.log.log_events,
            log_segments_rewritten: events.log.log_segments as u32,
            exported_rows_removed: events.log.exported_rows,
            exported_files_rewritten: events.log.exported_files as u32,
            served_rows_removed: forgotten.served_rows,
            served_files_rewritten: forgotten.served_files as u32,
            checkpoint_rewritten: events.checkpoint,
            erasure_seq: events.seq,
            seconds,
            other_gateways_notified: events.announced,
        }))
    }
}
