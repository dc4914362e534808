//! Request policies: decisions about what an app may send, made before anything goes upstream.
//!
//! Every module here is pure (no I/O, no clock); the tower layers in `crate::layers` are thin
//! wrappers that hand them the request's method, path and body.

pub(crate) mod allowlist;
pub(crate) mod image_import;
pub(crate) mod image_url;
pub(crate) mod json;
pub mod lifecycle;
pub(crate) mod operations;

pub use image_url::UrlError;

/// A request the proxy refuses on policy grounds. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("Scp-Api-Version {sent:?} does not match the pinned {pinned:?} for {operation} on service {service} (the pin of {rule}): send \"{pinned}\" or no Scp-Api-Version at all (the proxy adds it)")]
    ApiVersionMismatch {
        service: String,
        sent: String,
        pinned: String,
        /// `METHOD /path` of the request, as the service sees it.
        operation: String,
        /// The config key the applicable pin comes from.
        rule: String,
    },
    #[error("{method} {path} is not allowed on service {service}: its allowlist (services.{service}.allow) is {rules}; ask the operator to add a rule if the app needs it")]
    OperationNotAllowed {
        service: String,
        method: String,
        path: String,
        rules: String,
    },
    #[error("path {path:?} {reason}; service {service} has an allowlist, so only plain paths are accepted: send the path without dot segments or encoded separators")]
    PathNotCanonical {
        service: String,
        path: String,
        reason: &'static str,
    },
    #[error("the request body is larger than {limit} bytes (server.max_inspected_body_bytes), the most the proxy reads to check {operation}; an image import body is a small JSON object")]
    BodyTooLarge {
        limit: usize,
        operation: &'static str,
    },
    #[error("the request body was not received within {timeout:?} (services.{service}.timeout); send the whole body promptly")]
    BodyTimeout {
        service: String,
        timeout: std::time::Duration,
    },
    #[error("the request body has Content-Encoding {encoding:?}; send {operation} as plain (unencoded) JSON so the proxy can check it")]
    BodyEncoded {
        encoding: String,
        operation: &'static str,
    },
    #[error("the request body is not valid JSON ({detail}); send a JSON object such as {{\"url\": \"https://...qcow2\"}}")]
    InvalidJson { detail: String },
    #[error("the request body must be a JSON object such as {{\"url\": \"https://...qcow2\"}}")]
    JsonNotObject,
    #[error("the request body has key {key:?} more than once; send each key once (duplicates are read differently by different parsers)")]
    DuplicateKey { key: String },
    #[error("the request body has no \"url\"; {operation} needs {{\"url\": \"https://object-store.<region>.<env>.samsungsdscloud.com/<account_id>:<bucket>/<key>.qcow2\"}}")]
    UrlMissing { operation: &'static str },
    #[error("\"url\" must be a JSON string, not {kind}")]
    UrlNotString { kind: &'static str },
    #[error(transparent)]
    ImageUrl(#[from] UrlError),
}

impl PolicyError {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            PolicyError::OperationNotAllowed { .. } => S::FORBIDDEN,
            PolicyError::BodyTooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            PolicyError::BodyTimeout { .. } => S::REQUEST_TIMEOUT,
            PolicyError::BodyEncoded { .. } => S::UNSUPPORTED_MEDIA_TYPE,
            PolicyError::ApiVersionMismatch { .. }
            | PolicyError::PathNotCanonical { .. }
            | PolicyError::InvalidJson { .. }
            | PolicyError::JsonNotObject
            | PolicyError::DuplicateKey { .. }
            | PolicyError::UrlMissing { .. }
            | PolicyError::UrlNotString { .. }
            | PolicyError::ImageUrl(_) => S::BAD_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::ApiVersionMismatch { .. } => "api_version_mismatch",
            PolicyError::OperationNotAllowed { .. } => "operation_not_allowed",
            PolicyError::PathNotCanonical { .. } => "path_not_canonical",
            PolicyError::BodyTooLarge { .. } => "body_too_large",
            PolicyError::BodyTimeout { .. } => "body_timeout",
            PolicyError::BodyEncoded { .. } => "body_encoded",
            PolicyError::InvalidJson { .. } => "invalid_json",
            PolicyError::JsonNotObject => "json_not_object",
            PolicyError::DuplicateKey { .. } => "duplicate_key",
            PolicyError::UrlMissing { .. } => "url_missing",
            PolicyError::UrlNotString { .. } => "url_not_string",
            PolicyError::ImageUrl(e) => e.code(),
        }
    }
}
