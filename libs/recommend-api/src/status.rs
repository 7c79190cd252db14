//! The one place gateway errors become gRPC statuses.

use tandem_recommend::RecommendError;
use tonic::Status;

pub fn status(err: RecommendError) -> Status {
    match err {
        RecommendError::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
        RecommendError::NotFound(_) => Status::not_found(err.to_string()),
        RecommendError::Unavailable(_) => Status::unavailable(err.to_string()),
    }
}
