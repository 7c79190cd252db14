//! The one place Recommend errors become gRPC statuses.

use tandem_recommend::RecommendError;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// A bad field is also named in a `google.rpc.BadRequest`, for clients that read details.
#[deny(clippy::wildcard_enum_match_arm)]
pub fn status(err: RecommendError) -> Status {
    let message = err.to_string();
    match err {
        RecommendError::InvalidArgument { field, reason } => Status::with_error_details(
            tonic::Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request_violation(field, reason),
        ),
        RecommendError::NotFound(_) => Status::not_found(message),
        RecommendError::Unavailable(_) => Status::unavailable(message),
    }
}
