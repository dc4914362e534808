//! The emulator's answers: JSON bodies, and errors in SCP's shape
//! `{"errors":[{"code","title","detail","status","request_id"}]}`.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// One error the emulator answers with. `detail` says what did not match and never holds a
/// secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScpError {
    pub status: StatusCode,
    /// Stable, SCP-style code, e.g. `Authentication.SignatureMismatch`.
    pub code: &'static str,
    /// Short human title.
    pub title: &'static str,
    /// What was wrong and how to fix it.
    pub detail: String,
}

impl ScpError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad Request", detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, "Not Found", detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, "Conflict", detail)
    }

    /// The JSON body, as SCP shapes it.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        serde_json::json!({
            "errors": [{
                "code": self.code,
                "title": self.title,
                "detail": self.detail,
                "status": self.status.as_u16(),
                "request_id": request_id,
            }]
        })
    }

    pub fn to_response(&self, request_id: &str) -> Response<Body> {
        json(self.status, &self.body(request_id))
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(body::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A response with no body (202 for an accepted import, 204 for a delete).
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_scp_shape() {
        let e = ScpError::not_found("Image.NotFound", "no image x");
        let v = e.body("req-1");
        let err = &v["errors"][0];
        assert_eq!(err["code"], "Image.NotFound");
        assert_eq!(err["title"], "Not Found");
        assert_eq!(err["detail"], "no image x");
        assert_eq!(err["status"], 404);
        assert_eq!(err["request_id"], "req-1");
        assert_eq!(v["errors"].as_array().map(Vec::len), Some(1));
    }
}
