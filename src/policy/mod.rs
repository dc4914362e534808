//! Request policies: decisions about what an app may send, made before anything goes upstream.

/// A request the proxy refuses on policy grounds.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("Scp-Api-Version {sent:?} does not match the pinned {pinned:?} for service {service}: send \"{pinned}\" or no Scp-Api-Version at all (the proxy adds it)")]
    ApiVersionMismatch {
        service: String,
        sent: String,
        pinned: String,
    },
}

impl PolicyError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            PolicyError::ApiVersionMismatch { .. } => http::StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::ApiVersionMismatch { .. } => "api_version_mismatch",
        }
    }
}
