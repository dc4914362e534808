//! virtualserver images, in memory: create, list, show, delete and import.
//!
//! An image starts `queued`. An accepted import (202) makes it `importing` at once and
//! `active` once `import_delay` has passed; the state is computed when read, so there is no
//! background task to clean up. Import rules are SCP's: `url` required, at most 255
//! characters, matching `.*\.qcow2$` (nothing after `.qcow2`, case-sensitive) -> 400; unknown
//! id -> 404; an image already `importing` or `active` -> 409.
//!
//! Statuses are written in lower case, as the glance-based SCP API returns them.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::response::ScpError;

/// The image every fresh emulator starts with, importable: the README's examples use its id.
pub const DEMO_IMAGE_ID: &str = "3f8c2a6e-9b1d-4c7a-8e5f-2d0b6a9c4e17";
pub const DEMO_IMAGE_NAME: &str = "demo-ubuntu-22.04";

/// Longest accepted import URL, in characters.
pub const MAX_URL_CHARS: usize = 255;

/// `os_distro` values the API accepts.
pub const OS_DISTROS: &[&str] = &[
    "alma", "centos", "rhel", "rocky", "ubuntu", "windows", "oracle", "sles",
];

/// Most images one list answer holds; also the default `limit`.
pub const MAX_LIMIT: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageStatus {
    Queued,
    Importing,
    Active,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Queued => "queued",
            ImageStatus::Importing => "importing",
            ImageStatus::Active => "active",
        }
    }
}

#[derive(Clone, Debug)]
struct Image {
    id: String,
    name: String,
    os_distro: String,
    url: Option<String>,
    owner: String,
    created_at: String,
    updated_at: String,
    import_started: Option<Instant>,
}

/// The image store.
#[derive(Debug)]
pub struct Images {
    images: Mutex<Vec<Image>>,
    import_delay: Duration,
}

/// Checks an import URL against SCP's rules; the message says which one failed.
pub fn check_import_url(url: &str) -> Result<(), String> {
    let chars = url.chars().count();
    if chars > MAX_URL_CHARS {
        return Err(format!(
            "url is {chars} characters long; at most {MAX_URL_CHARS} are allowed"
        ));
    }
    // `.` in `.*\.qcow2$` matches no line terminator, so none may appear anywhere.
    let line_break = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];
    if url.contains(line_break) || !url.ends_with(".qcow2") {
        return Err(format!(
            "url {url:?} must match .*\\.qcow2$ (a qcow2 file, with nothing after \".qcow2\")"
        ));
    }
    Ok(())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn string_field<'a>(body: &'a serde_json::Value, field: &str) -> Result<Option<&'a str>, ScpError> {
    match body.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ScpError::bad_request(
            "Request.InvalidBody",
            format!("{field} must be a string"),
        )),
    }
}

fn required<'a>(body: &'a serde_json::Value, field: &str) -> Result<&'a str, ScpError> {
    string_field(body, field)?
        .ok_or_else(|| ScpError::bad_request("Request.InvalidBody", format!("{field} is required")))
}

fn not_found(id: &str) -> ScpError {
    ScpError::not_found("Image.NotFound", format!("no image with id {id:?}"))
}

impl Images {
    /// A store holding the demo image, owned by `owner`, created at `now`.
    pub fn new(import_delay: Duration, owner: &str, now: SystemTime) -> Self {
        let at = rfc3339(now);
        let demo = Image {
            id: DEMO_IMAGE_ID.into(),
            name: DEMO_IMAGE_NAME.into(),
            os_distro: "ubuntu".into(),
            url: None,
            owner: owner.into(),
            created_at: at.clone(),
            updated_at: at,
            import_started: None,
        };
        Self {
            images: Mutex::new(vec![demo]),
            import_delay,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Image>> {
        // A panic elsewhere cannot leave an image half-written: every update is one store.
        self.images.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self, img: &Image) -> ImageStatus {
        match img.import_started {
            None => ImageStatus::Queued,
            Some(t) if t.elapsed() < self.import_delay => ImageStatus::Importing,
            Some(_) => ImageStatus::Active,
        }
    }

    fn to_json(&self, img: &Image) -> serde_json::Value {
        serde_json::json!({
            "id": img.id,
            "name": img.name,
            "os_distro": img.os_distro,
            "url": img.url,
            "status": self.status(img).as_str(),
            "owner": img.owner,
            "visibility": "private",
            "container_format": "bare",
            "disk_format": "qcow2",
            "min_disk": 0,
            "min_ram": 0,
            "protected": false,
            "os_hidden": false,
            "file": format!("/v2/images/{}/file", img.id),
            "created_at": img.created_at,
            "updated_at": img.updated_at,
        })
    }

    /// `POST /v1/images` with `{"name", "os_distro", "url"}`: the new image, `queued`.
    pub fn create(
        &self,
        body: &serde_json::Value,
        id: String,
        owner: &str,
        now: SystemTime,
    ) -> Result<serde_json::Value, ScpError> {
        let name = required(body, "name")?;
        if name.is_empty() || name.chars().count() > 255 {
            return Err(ScpError::bad_request(
                "Request.InvalidBody",
                "name must be 1 to 255 characters",
            ));
        }
        let os_distro = required(body, "os_distro")?;
        if !OS_DISTROS.contains(&os_distro) {
            return Err(ScpError::bad_request(
                "Request.InvalidBody",
                format!(
                    "os_distro {os_distro:?} is not one of {}",
                    OS_DISTROS.join(", ")
                ),
            ));
        }
        let url = required(body, "url")?;
        check_import_url(url).map_err(|m| ScpError::bad_request("Image.InvalidUrl", m))?;
        let at = rfc3339(now);
        let img = Image {
            id,
            name: name.into(),
            os_distro: os_distro.into(),
            url: Some(url.into()),
            owner: owner.into(),
            created_at: at.clone(),
            updated_at: at,
            import_started: None,
        };
        let json = self.to_json(&img);
        self.lock().push(img);
        Ok(json)
    }

    /// `GET /v1/images?limit=N&marker=ID&name=NAME`: images in creation order, after `marker`,
    /// named exactly `name` (repeated: any of them). Other keys are accepted and ignored.
    pub fn list(&self, query: Option<&str>) -> Result<serde_json::Value, ScpError> {
        let mut limit = MAX_LIMIT;
        let mut marker = None;
        let mut names = Vec::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "limit" => {
                    limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ScpError::bad_request(
                                "Request.InvalidParameter",
                                format!("limit {v:?} must be a whole number from 1 to {MAX_LIMIT}"),
                            )
                        })?;
                }
                "marker" => marker = Some(v.into_owned()),
                "name" => names.push(v.into_owned()),
                _ => {}
            }
        }
        let images = self.lock();
        let start = match &marker {
            None => 0,
            Some(m) => {
                images.iter().position(|i| &i.id == m).ok_or_else(|| {
                    ScpError::bad_request(
                        "Request.InvalidParameter",
                        format!("marker {m:?} is not the id of an image"),
                    )
                })? + 1
            }
        };
        let page: Vec<_> = images
            .iter()
            .skip(start)
            .filter(|i| names.is_empty() || names.contains(&i.name))
            .take(limit)
            .map(|i| self.to_json(i))
            .collect();
        Ok(serde_json::json!({ "images": page }))
    }

    /// `GET /v1/images/{id}`
    pub fn show(&self, id: &str) -> Result<serde_json::Value, ScpError> {
        let images = self.lock();
        let img = images
            .iter()
            .find(|i| i.id == id)
            .ok_or_else(|| not_found(id))?;
        Ok(self.to_json(img))
    }

    /// `DELETE /v1/images/{id}`
    pub fn delete(&self, id: &str) -> Result<(), ScpError> {
        let mut images = self.lock();
        let pos = images
            .iter()
            .position(|i| i.id == id)
            .ok_or_else(|| not_found(id))?;
        images.remove(pos);
        Ok(())
    }

    /// `POST /v1/images/{id}/import` with `{"url"}`: accepted (202) or why not.
    pub fn import(
        &self,
        id: &str,
        body: &serde_json::Value,
        now: SystemTime,
    ) -> Result<(), ScpError> {
        let url = required(body, "url")?;
        check_import_url(url).map_err(|m| ScpError::bad_request("Image.InvalidUrl", m))?;
        let mut images = self.lock();
        let pos = images
            .iter()
            .position(|i| i.id == id)
            .ok_or_else(|| not_found(id))?;
        let status = self.status(&images[pos]);
        if status != ImageStatus::Queued {
            return Err(ScpError::conflict(
                "Image.InvalidState",
                format!(
                    "image {id} is {}; only a queued image can be imported",
                    status.as_str()
                ),
            ));
        }
        let img = &mut images[pos];
        img.url = Some(url.into());
        img.import_started = Some(Instant::now());
        img.updated_at = rfc3339(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use serde_json::json;

    const GOOD: &str =
        "https://object-store.kr-west1.e.samsungsdscloud.com/acct:bucket/images/u.qcow2";

    #[test]
    fn import_url_rules() {
        assert_eq!(check_import_url(GOOD), Ok(()));
        assert_eq!(check_import_url(".qcow2"), Ok(()));
        let long = format!("https://h/{}.qcow2", "a".repeat(MAX_URL_CHARS));
        assert!(check_import_url(&long).unwrap_err().contains("255"));
        let exact = format!("https://h/{}.qcow2", "a".repeat(MAX_URL_CHARS - 16));
        assert_eq!(exact.chars().count(), MAX_URL_CHARS);
        assert_eq!(check_import_url(&exact), Ok(()));
        // Counted in characters, not bytes.
        let wide = format!("https://h/{}.qcow2", "é".repeat(MAX_URL_CHARS - 16));
        assert_eq!(check_import_url(&wide), Ok(()));
        for bad in [
            "",
            "https://h/x.QCOW2",
            "https://h/x.qcow2?sig=1",
            "https://h/x.qcow2/",
            "https://h/x.qcow2 ",
            "https://h/x.img",
            "https://h/a\nb.qcow2",
            "https://h/xqcow2",
        ] {
            assert!(check_import_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lifecycle_and_conflicts() {
        let now = SystemTime::UNIX_EPOCH;
        let imgs = Images::new(Duration::from_millis(50), "acct", now);
        assert_eq!(imgs.show(DEMO_IMAGE_ID).unwrap()["status"], "queued");
        let bad = imgs
            .import(DEMO_IMAGE_ID, &json!({"url": "x.img"}), now)
            .unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let missing = imgs.import(DEMO_IMAGE_ID, &json!({}), now).unwrap_err();
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        let nf = imgs.import("nope", &json!({"url": GOOD}), now).unwrap_err();
        assert_eq!(nf.status, StatusCode::NOT_FOUND);
        imgs.import(DEMO_IMAGE_ID, &json!({"url": GOOD}), now)
            .unwrap();
        let shown = imgs.show(DEMO_IMAGE_ID).unwrap();
        assert_eq!(shown["status"], "importing");
        assert_eq!(shown["url"], GOOD);
        let again = imgs
            .import(DEMO_IMAGE_ID, &json!({"url": GOOD}), now)
            .unwrap_err();
        assert_eq!(again.status, StatusCode::CONFLICT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while imgs.show(DEMO_IMAGE_ID).unwrap()["status"] != "active" {
            assert!(Instant::now() < deadline, "never became active");
            std::thread::sleep(Duration::from_millis(10));
        }
        let active = imgs
            .import(DEMO_IMAGE_ID, &json!({"url": GOOD}), now)
            .unwrap_err();
        assert_eq!(active.status, StatusCode::CONFLICT);
        assert!(active.detail.contains("active"));
        imgs.delete(DEMO_IMAGE_ID).unwrap();
        assert_eq!(
            imgs.delete(DEMO_IMAGE_ID).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn create_validates_and_list_pages() {
        let now = SystemTime::UNIX_EPOCH;
        let imgs = Images::new(Duration::ZERO, "acct", now);
        for (body, field) in [
            (json!({"os_distro": "ubuntu", "url": GOOD}), "name"),
            (json!({"name": "a", "url": GOOD}), "os_distro"),
            (
                json!({"name": "a", "os_distro": "beos", "url": GOOD}),
                "os_distro",
            ),
            (json!({"name": "a", "os_distro": "ubuntu"}), "url"),
            (
                json!({"name": 1, "os_distro": "ubuntu", "url": GOOD}),
                "name",
            ),
        ] {
            let e = imgs.create(&body, "x".into(), "acct", now).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.detail.contains(field), "{}", e.detail);
        }
        for n in 0..3 {
            let v = imgs
                .create(
                    &json!({"name": format!("img{n}"), "os_distro": "rocky", "url": GOOD}),
                    format!("id-{n}"),
                    "acct",
                    now,
                )
                .unwrap();
            assert_eq!(v["status"], "queued");
            assert_eq!(v["created_at"], "1970-01-01T00:00:00Z");
        }
        let ids = |v: serde_json::Value| -> Vec<String> {
            v["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(imgs.list(None).unwrap()).len(), 4);
        assert_eq!(
            ids(imgs.list(Some("limit=2")).unwrap()),
            [DEMO_IMAGE_ID, "id-0"]
        );
        assert_eq!(
            ids(imgs.list(Some("limit=2&marker=id-0")).unwrap()),
            ["id-1", "id-2"]
        );
        assert!(ids(imgs.list(Some("marker=id-2")).unwrap()).is_empty());
        assert_eq!(ids(imgs.list(Some("name=img1&sort=x")).unwrap()), ["id-1"]);
        assert_eq!(
            ids(imgs.list(Some("name=img0&name=img2")).unwrap()),
            ["id-0", "id-2"]
        );
        let odd = "우분투 a+b/c:d";
        imgs.create(
            &json!({"name": odd, "os_distro": "ubuntu", "url": GOOD}),
            "id-odd".into(),
            "acct",
            now,
        )
        .unwrap();
        // Form decoding, as the cloud reads a query: '+' is a space, %2B a plus.
        let q = "name=%EC%9A%B0%EB%B6%84%ED%88%AC+a%2Bb%2Fc%3Ad";
        assert_eq!(ids(imgs.list(Some(q)).unwrap()), ["id-odd"]);
        assert!(ids(imgs.list(Some("name=img")).unwrap()).is_empty());
        for bad in ["limit=0", "limit=x", "limit=1001", "marker=nope"] {
            assert_eq!(
                imgs.list(Some(bad)).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }
}
