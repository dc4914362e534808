//! The forward proxy's certificate authority: loaded from a team's files or generated in memory
//! at start, and the per-host leaf certificates it issues.
//!
//! Guarantees: a CA key file readable by group or others refuses the start, naming the file;
//! a generated CA's key exists only in this process's memory (never written, never logged) and
//! its certificate is name-constrained to the intercepted hosts, so even a client that trusts
//! it can be fooled about no other host; leaves are ECDSA P-256, valid [`LEAF_VALIDITY`], cached
//! per host and re-issued once half their validity has passed, so a served leaf always has
//! hours left.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long a leaf certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(12 * 60 * 60);
/// A leaf is backdated this much, for clients whose clock is a little behind.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// How long a generated CA is valid (it lives as long as the process; restarts make a new one).
const GENERATED_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Loading or generating the CA failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("forward_proxy.{key} {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("forward_proxy.ca_key_file {path} is readable by group or others (mode {mode:04o}); the CA key can impersonate every intercepted host: chmod 600 it (or 400)")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("forward_proxy.{key} {path}: {message}")]
    Parse {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("forward_proxy.ca_cert_file {cert} does not belong to the key in forward_proxy.ca_key_file {key}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("forward_proxy.ca_cert_out {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Issuing a leaf failed (a host name rcgen or rustls refuses).
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    #[error("cannot issue a certificate for {host:?}: {source}")]
    Rcgen {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot use the certificate for {host:?}: {source}")]
    Rustls {
        host: String,
        #[source]
        source: rustls::Error,
    },
}

/// The CA and its leaf cache. Shared by every tunnel.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM: what `/ca.pem` serves and `ca_cert_out` holds.
    pem: String,
    /// Where the CA came from, for the start log.
    pub source: String,
    leaves: Mutex<HashMap<String, Leaf>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

struct Leaf {
    config: Arc<rustls::ServerConfig>,
    renew_at: Instant,
}

impl Authority {
    /// Loads the CA from `cert` and `key` (PEM; the key PKCS#8 and private to its owner).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, CaError> {
        check_private(key)?;
        let read = |k: &'static str, p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CaError::Read {
                key: k,
                path: p.to_path_buf(),
                source,
            })
        };
        let cert_pem = read("ca_cert_file", cert)?;
        let key_pem = zeroize::Zeroizing::new(read("ca_key_file", key)?);
        let parse = |k: &'static str, p: &Path, message: String| CaError::Parse {
            key: k,
            path: p.to_path_buf(),
            message,
        };
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| parse("ca_key_file", key, format!("no PEM private key in it: {e}")))?;
        let key_pair = match &key_der {
            PrivateKeyDer::Pkcs8(_) => KeyPair::try_from(&key_der)
                .map_err(|e| parse("ca_key_file", key, format!("unusable key: {e}")))?,
            _ => {
                return Err(parse(
                    "ca_key_file",
                    key,
                    "not a PKCS#8 key (\"BEGIN PRIVATE KEY\"); convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`".into(),
                ))
            }
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            parse(
                "ca_cert_file",
                cert,
                format!("no PEM certificate in it: {e}"),
            )
        })?;
        if !spki_matches(&cert_der, &key_pair) {
            return Err(CaError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key_pair)
            .map_err(|e| parse("ca_cert_file", cert, e.to_string()))?;
        Ok(Self {
            issuer,
            pem: pem_of("CERTIFICATE", &cert_der),
            source: format!("{} (key {})", cert.display(), key.display()),
            leaves: Mutex::default(),
        })
    }

    /// A fresh CA whose key lives only in memory, name-constrained to `hosts`.
    pub fn generate(hosts: &[String]) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let now = SystemTime::now();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "scp-auth-proxy");
        dn.push(
            DnType::CommonName,
            format!(
                "scp-auth-proxy forward-proxy CA {}",
                humantime::format_rfc3339_seconds(now)
            ),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + GENERATED_CA_VALIDITY).into();
        let mut permitted = Vec::new();
        for h in hosts {
            permitted.push(match h.parse::<IpAddr>() {
                Ok(ip) => GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                )),
                Err(_) => GeneralSubtree::DnsName(h.clone()),
            });
        }
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: Vec::new(),
        });
        let cert = params.self_signed(&key)?;
        Ok(Self {
            pem: pem_of("CERTIFICATE", cert.der()),
            issuer: Issuer::new(params, key),
            source: "generated in memory at start (its key is never written)".into(),
            leaves: Mutex::default(),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate (never the key) to `path`, readable by all. Written beside
    /// it and renamed into place, so a tool reading the file (a restarted sidecar rewrites it
    /// under a running app) sees the old certificate or the new one, never half of one.
    pub fn write_cert(&self, path: &Path) -> Result<(), CaError> {
        use std::os::unix::fs::PermissionsExt as _;
        let err = |source| CaError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, self.pem.as_bytes()).map_err(err)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// The TLS server configuration for `host` (a leaf for it, ALPN h2 and http/1.1): the cached
    /// one while it is fresh, else a newly issued one.
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, LeafError> {
        let now = Instant::now();
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(leaf) = leaves.get(host) {
            if now < leaf.renew_at {
                return Ok(leaf.config.clone());
            }
        }
        let config = Arc::new(self.issue(host)?);
        leaves.insert(
            host.to_owned(),
            Leaf {
                config: config.clone(),
                renew_at: now + LEAF_VALIDITY / 2,
            },
        );
        Ok(config)
    }

    fn issue(&self, host: &str) -> Result<rustls::ServerConfig, LeafError> {
        let (cert, key_der) = self.issue_leaf(host)?;
        let rustls_err = |source| LeafError::Rustls {
            host: host.to_owned(),
            source,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key_der)
        .map_err(rustls_err)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    #[cfg(test)]
    fn issue_der(&self, host: &str) -> Result<CertificateDer<'static>, LeafError> {
        Ok(self.issue_leaf(host)?.0)
    }

    /// A new leaf for `host`: its certificate and key.
    fn issue_leaf(
        &self,
        host: &str,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), LeafError> {
        let rc = |source| LeafError::Rcgen {
            host: host.to_owned(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(rc)?),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        let cert = params.signed_by(&key, &self.issuer).map_err(rc)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key_der))
    }
}

/// A TLS configuration with no certificate at all: accepting with it fails the handshake with
/// an alert, for a ClientHello that names the wrong host.
pub fn refusing_config() -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    #[derive(Debug)]
    struct NoCertificate;
    impl rustls::server::ResolvesServerCert for NoCertificate {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    static CONFIG: std::sync::OnceLock<Arc<rustls::ServerConfig>> = std::sync::OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate)),
    );
    Ok(CONFIG.get_or_init(|| config).clone())
}

/// A key file must be private to its owner.
fn check_private(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| CaError::Read {
        key: "ca_key_file",
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Whether the certificate's public key is the key pair's.
fn spki_matches(cert: &CertificateDer<'_>, key: &KeyPair) -> bool {
    use rcgen::PublicKeyData as _;
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, x509)) => x509.public_key().raw == key.subject_public_key_info().as_slice(),
        Err(_) => false,
    }
}

fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    #[test]
    fn generated_ca_is_constrained_to_the_hosts_and_leaves_chain_to_it() {
        let ca = Authority::generate(&["vs.example".into(), "127.0.0.1".into()]).unwrap();
        let ca_der = CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
        let x = parse(&ca_der);
        assert!(x.is_ca());
        let nc = x.name_constraints().unwrap().unwrap().value;
        assert_eq!(nc.permitted_subtrees.as_ref().unwrap().len(), 2);
        assert!(!ca.pem().contains("PRIVATE"));

        let cfg = ca.server_config("vs.example").unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // Cached: the same configuration until half the leaf's validity has passed.
        assert!(Arc::ptr_eq(&cfg, &ca.server_config("vs.example").unwrap()));
        assert!(!Arc::ptr_eq(&cfg, &ca.server_config("127.0.0.1").unwrap()));
    }

    #[test]
    fn a_leaf_past_half_its_validity_is_reissued() {
        let ca = Authority::generate(&["vs.example".into()]).unwrap();
        let first = ca.server_config("vs.example").unwrap();
        ca.leaves
            .lock()
            .unwrap()
            .get_mut("vs.example")
            .unwrap()
            .renew_at = Instant::now();
        let second = ca.server_config("vs.example").unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn leaf_validity_is_hours_and_signed_by_the_ca() {
        let ca = Authority::generate(&["vs.example".into()]).unwrap();
        let cert = ca.issue_der("vs.example").unwrap();
        let x = parse(&cert);
        let ca_der = CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
        let ca_x = parse(&ca_der);
        assert_eq!(x.issuer(), ca_x.subject());
        x.verify_signature(Some(ca_x.public_key())).unwrap();
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert_eq!(life as u64, (LEAF_VALIDITY + BACKDATE).as_secs());
        assert!(!x.is_ca());
    }

    #[test]
    fn the_cert_is_written_whole_over_an_old_one_readable_by_all() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ca.pem");
        std::fs::write(&out, "an older CA").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ca = Authority::generate(&["vs.example".into()]).unwrap();
        ca.write_cert(&out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), ca.pem());
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ca.pem"], "nothing left beside it");
    }

    #[test]
    fn key_file_readable_by_others_is_refused_naming_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca.key");
        let cert = dir.path().join("ca.crt");
        std::fs::write(&key, "x").unwrap();
        std::fs::write(&cert, "x").unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Authority::from_files(&cert, &key).unwrap_err().to_string();
            assert!(err.contains(key.to_str().unwrap()), "{err}");
            assert!(err.contains("readable by group or others"), "{err}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Authority::from_files(&cert, &key).unwrap_err().to_string();
        assert!(err.contains("ca_key_file"), "{err}");
        assert!(!err.contains("readable by"), "{err}");
    }

    #[test]
    fn files_must_be_a_matching_pair() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let a = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let b = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&a).unwrap();
        let (cp, kp) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cp, pem_of("CERTIFICATE", cert.der())).unwrap();
        for (key, ok) in [(&b, false), (&a, true)] {
            std::fs::write(&kp, pem_of("PRIVATE KEY", &key.serialize_der())).unwrap();
            std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(0o600)).unwrap();
            let r = Authority::from_files(&cp, &kp);
            assert_eq!(r.is_ok(), ok, "{r:?}");
        }
    }
}
