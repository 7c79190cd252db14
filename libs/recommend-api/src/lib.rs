//! The public `tandem.v1.RecommenderService` handlers (and `RecommenderAdminService`): wire types in, one call into the
//! request path (`tandem-recommend`), wire types out; and the one mapping of its errors to
//! gRPC statuses.

mod admin;
mod grpc;
mod status;

pub use admin::RecommenderAdminApi;
pub use grpc::RecommenderApi;
pub use status::status;
