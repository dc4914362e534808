//! virtualserver servers, as far as security groups go: one demo server, whose security groups
//! can be attached (`POST /v1/servers/{id}/security-groups` with `{"security_group_id"}`) and
//! detached (`DELETE /v1/servers/{id}/security-groups/{sg}`). Both are accepted with 202, as
//! SCP's asynchronous server operations are; an unknown server is 404, attaching one already
//! attached 409, detaching one that is not 404. These are the operations SDKs call with
//! `virtualserver 1.0`, which the catalog has no dates for.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::response::ScpError;

/// The server every fresh emulator starts with.
pub const DEMO_SERVER_ID: &str = "9d2f6c1a-4b7e-4e3a-9c5d-1f8a2b6e0c34";

#[derive(Debug, Default)]
pub struct Servers {
    /// Security groups attached to the demo server.
    groups: Mutex<BTreeSet<String>>,
}

fn server(id: &str) -> Result<(), ScpError> {
    if id == DEMO_SERVER_ID {
        Ok(())
    } else {
        Err(ScpError::not_found(
            "Server.NotFound",
            format!("no server with id {id:?} (the emulator has one: {DEMO_SERVER_ID})"),
        ))
    }
}

impl Servers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `POST /v1/servers/{id}/security-groups`
    pub fn attach(&self, id: &str, body: &serde_json::Value) -> Result<(), ScpError> {
        server(id)?;
        let sg = match body.get("security_group_id") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(ScpError::bad_request(
                    "Request.InvalidBody",
                    "security_group_id is required (a string)",
                ))
            }
        };
        if !self.lock().insert(sg.clone()) {
            return Err(ScpError::conflict(
                "SecurityGroup.AlreadyAttached",
                format!("security group {sg:?} is already attached to server {id}"),
            ));
        }
        Ok(())
    }

    /// `DELETE /v1/servers/{id}/security-groups/{sg}`
    pub fn detach(&self, id: &str, sg: &str) -> Result<(), ScpError> {
        server(id)?;
        if !self.lock().remove(sg) {
            return Err(ScpError::not_found(
                "SecurityGroup.NotAttached",
                format!("security group {sg:?} is not attached to server {id}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use serde_json::json;

    #[test]
    fn attach_and_detach() {
        let s = Servers::default();
        let body = json!({"security_group_id": "sg-1"});
        assert_eq!(
            s.attach("nope", &body).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            s.attach(DEMO_SERVER_ID, &json!({})).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        s.attach(DEMO_SERVER_ID, &body).unwrap();
        assert_eq!(
            s.attach(DEMO_SERVER_ID, &body).unwrap_err().status,
            StatusCode::CONFLICT
        );
        s.detach(DEMO_SERVER_ID, "sg-1").unwrap();
        assert_eq!(
            s.detach(DEMO_SERVER_ID, "sg-1").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }
}
