//! The deploy files agree with each other and with the configuration they ship: ports, paths,
//! names, and the hardening the issue asks for. A drift in any of them fails here, before a pod
//! crash-loops on it.
//!
//! Configuration is read with the proxy's own loader (`config::load`), so "the config says
//! port 9901" means what the binary will do. Manifests are read with the small YAML reader at
//! the bottom of this file: it knows the block style the manifests are written in and stops
//! with a message on anything else (flow collections, anchors, tags, folded scalars), so a
//! construct it does not understand is a failure, never a silent pass. No network, no tools.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use scp_auth_proxy::config::{self, Config, Overrides, Source};

// ------------------------------------------------------------------ files and config

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `SCP_PROXY_*` variables would change what `config::load` returns: refuse to guess.
fn no_config_env() {
    let set: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("SCP_PROXY_") && k.contains("__"))
        .collect();
    assert!(
        set.is_empty(),
        "unset {set:?} to run these tests: they check the shipped files alone"
    );
}

fn load(source: Source) -> Config {
    no_config_env();
    let what = format!("{source:?}");
    config::load(&source, &Overrides::default())
        .unwrap_or_else(|e| panic!("{what} does not load: {e}"))
}

/// An address as written in config/default.toml (which is a layer, not a loadable profile).
fn default_toml_addr(key: &str) -> SocketAddr {
    use figment::providers::{Format, Toml};
    figment::Figment::from(Toml::file_exact(root().join("config/default.toml")))
        .extract_inner(key)
        .unwrap_or_else(|e| panic!("config/default.toml: {key}: {e}"))
}

/// Every `config/NAME.toml` but `default.toml` (the base layer of all of them).
fn profiles() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("config"))
        .expect("config/")
        .map(|e| e.expect("config/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "default")
        .collect();
    names.sort();
    names
}

fn profile(name: &str) -> Config {
    load(Source::Profile {
        name: name.into(),
        dir: root().join("config"),
    })
}

/// One environment under deploy/kubernetes: a directory with a kustomization.yaml.
struct KubeEnv {
    name: String,
    dir: PathBuf,
    /// (file, document) for every manifest but the kustomization.
    docs: Vec<(PathBuf, Yaml)>,
}

impl KubeEnv {
    fn all() -> Vec<KubeEnv> {
        let base = root().join("deploy/kubernetes");
        let mut envs = Vec::new();
        for entry in std::fs::read_dir(&base).expect("deploy/kubernetes/") {
            let dir = entry.expect("entry").path();
            if !dir.join("kustomization.yaml").is_file() {
                continue;
            }
            let mut docs = Vec::new();
            for file in manifest_files(&dir) {
                for doc in parse_yaml(&file.display().to_string(), &read(&file)) {
                    docs.push((file.clone(), doc));
                }
            }
            envs.push(KubeEnv {
                name: dir.file_name().unwrap().to_string_lossy().into_owned(),
                dir,
                docs,
            });
        }
        envs.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = envs.iter().map(|e| e.name.as_str()).collect();
        for required in ["staging", "prod"] {
            assert!(
                names.contains(&required),
                "deploy/kubernetes/{required}/ is missing (found {names:?})"
            );
        }
        envs
    }

    fn one(&self, kind: &str) -> &Yaml {
        let found: Vec<&Yaml> = self
            .docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d.opt("kind").map(Yaml::str) == Some(kind))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected exactly one {kind}",
            self.dir.display()
        );
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Yaml {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .find(|d| {
                d.opt("kind").map(Yaml::str) == Some(kind)
                    && d.opt("metadata.name").map(Yaml::str) == Some(name)
            })
            .unwrap_or_else(|| panic!("{}: no {kind} named {name:?}", self.dir.display()))
    }

    fn pod_spec(&self) -> &Yaml {
        self.one("Deployment").at("spec.template.spec")
    }

    fn proxy(&self) -> &Yaml {
        let spec = self.pod_spec();
        let in_containers = spec
            .opt("containers")
            .map(|c| c.seq().iter().any(|c| c.at("name").str() == PROXY))
            .unwrap_or(false);
        assert!(
            !in_containers,
            "{}: {PROXY} must be a native sidecar (an init container with restartPolicy: Always), not a regular container",
            self.name
        );
        spec.at("initContainers")
            .seq()
            .iter()
            .find(|c| c.at("name").str() == PROXY)
            .unwrap_or_else(|| panic!("{}: no init container named {PROXY}", self.name))
    }

    /// The ConfigMap file the proxy runs with, found through `--config PATH`, the volume
    /// mounted at PATH's directory and that volume's ConfigMap; loaded by the real loader.
    fn proxy_config(&self) -> (Config, String) {
        let proxy = self.proxy();
        let path = PathBuf::from(
            flag_value(&str_list(proxy.at("args")), "--config").unwrap_or_else(|| {
                panic!(
                    "{}: the {PROXY} container must run with --config FILE (from the ConfigMap)",
                    self.name
                )
            }),
        );
        let dir = path.parent().unwrap().to_str().unwrap();
        let file = path.file_name().unwrap().to_str().unwrap();
        let volume = self.volume_at(proxy, dir);
        let cm = volume.opt("configMap").unwrap_or_else(|| {
            panic!(
                "{}: {dir} (the directory of --config) must be a ConfigMap volume",
                self.name
            )
        });
        let key = volume_key_for(cm, file);
        let cm_name = cm.at("name").str();
        let toml = self
            .named("ConfigMap", cm_name)
            .at("data")
            .opt_key(&key)
            .unwrap_or_else(|| {
                panic!(
                    "{}: ConfigMap {cm_name} has no key {key:?} for {}",
                    self.name,
                    path.display()
                )
            })
            .str()
            .to_owned();
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join(file);
        std::fs::write(&copy, &toml).unwrap();
        (load(Source::File(copy)), toml)
    }

    /// The volume mounted at exactly `mount_path` in `container`.
    fn volume_at(&self, container: &Yaml, mount_path: &str) -> &Yaml {
        let mounts = container.at("volumeMounts").seq();
        let mount = mounts
            .iter()
            .find(|m| m.at("mountPath").str().trim_end_matches('/') == mount_path)
            .unwrap_or_else(|| {
                let have: Vec<&str> = mounts.iter().map(|m| m.at("mountPath").str()).collect();
                panic!(
                    "{}: nothing is mounted at {mount_path} (mounts: {have:?})",
                    self.name
                )
            });
        assert!(
            mount.opt("subPath").is_none(),
            "{}: {mount_path} uses subPath, which never sees updates",
            self.name
        );
        assert_eq!(
            mount.opt("readOnly").map(Yaml::str),
            Some("true"),
            "{}: {mount_path} must be mounted readOnly",
            self.name
        );
        let name = mount.at("name").str();
        self.pod_spec()
            .at("volumes")
            .seq()
            .iter()
            .find(|v| v.at("name").str() == name)
            .unwrap_or_else(|| panic!("{}: volume {name} is mounted but not defined", self.name))
    }
}

const PROXY: &str = "scp-auth-proxy";

fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                && p.file_name().unwrap() != "kustomization.yaml"
        })
        .collect();
    files.sort();
    files
}

fn str_list(y: &Yaml) -> Vec<String> {
    y.seq().iter().map(|v| v.str().to_owned()).collect()
}

/// The value after `flag` (`--flag VALUE` or `--flag=VALUE`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_owned)
        }
    })
}

/// The key of a ConfigMap or Secret volume source that appears as `file` in the mount.
fn volume_key_for(source: &Yaml, file: &str) -> String {
    match source.opt("items") {
        Some(items) => items
            .seq()
            .iter()
            .find(|i| i.at("path").str() == file)
            .map(|i| i.at("key").str().to_owned())
            .unwrap_or_else(|| panic!("no item of the volume is mounted as {file:?}")),
        None => file.to_owned(),
    }
}

/// A probe's or policy's port: a number, or the name of one of the container's ports.
fn resolve_port(port: &Yaml, container: &Yaml) -> u16 {
    let p = port.str();
    if let Ok(n) = p.parse() {
        return n;
    }
    container
        .at("ports")
        .seq()
        .iter()
        .find(|cp| cp.opt("name").map(Yaml::str) == Some(p))
        .unwrap_or_else(|| panic!("port name {p:?} is not a port of the container"))
        .at("containerPort")
        .str()
        .parse()
        .unwrap()
}

fn secs(y: &Yaml) -> u64 {
    y.str()
        .parse()
        .unwrap_or_else(|_| panic!("{y:?} is not a number of seconds"))
}

// ------------------------------------------------------------------ tests

#[test]
fn every_shipped_config_keeps_the_data_plane_on_loopback() {
    let loopback = Ipv4Addr::LOCALHOST;
    // The base layer, as written.
    let default = default_toml_addr("server.listen");
    assert_eq!(default.ip(), loopback, "config/default.toml: server.listen");

    let names = profiles();
    assert!(
        names.iter().any(|n| n == "staging") && names.iter().any(|n| n == "prod"),
        "config/ needs staging.toml and prod.toml (found {names:?})"
    );
    for name in names {
        let c = profile(&name);
        assert_eq!(
            c.server.listen.tcp().expect("a TCP address").ip(),
            loopback,
            "config/{name}.toml: server.listen"
        );
        // Outside Kubernetes the admin port stays local too; only the ConfigMaps (probed on
        // the pod IP) and the image's default command open it.
        assert_eq!(
            c.server.admin_listen.ip(),
            loopback,
            "config/{name}.toml: server.admin_listen"
        );
        // The forward listener, where a profile opens one, is data plane too.
        if let Some(forward) = c.forward_proxy.listen {
            assert_eq!(
                forward.ip(),
                loopback,
                "config/{name}.toml: forward_proxy.listen"
            );
        }
    }
    for env in KubeEnv::all() {
        let (c, _) = env.proxy_config();
        assert_eq!(
            c.server.listen.tcp().expect("a TCP address").ip(),
            loopback,
            "{}: the ConfigMap's server.listen",
            env.name
        );
    }
}

#[test]
fn real_profiles_read_the_key_pair_from_files_and_hold_no_secret() {
    for name in profiles() {
        let text = read(&root().join(format!("config/{name}.toml")));
        for line in text.lines().map(str::trim) {
            let key = line.split('=').next().unwrap_or("").trim();
            assert!(
                !matches!(key, "secret_key" | "secret" | "access_key"),
                "config/{name}.toml must not hold a key: {line:?}"
            );
        }
        let c = profile(&name);
        if c.emulator.in_process {
            continue;
        }
        let cred = &c.credentials;
        for (what, file) in [
            ("access_key_file", &cred.access_key_file),
            ("secret_key_file", &cred.secret_key_file),
        ] {
            let file = file
                .as_ref()
                .unwrap_or_else(|| panic!("config/{name}.toml: credentials.{what} is not set"));
            assert!(
                file.starts_with("/run/secrets/scp-auth-proxy"),
                "config/{name}.toml: credentials.{what} = {} (expected under /run/secrets/scp-auth-proxy, where the image and the manifests mount the keys)",
                file.display()
            );
        }
        for s in &c.services {
            assert_eq!(
                s.upstream.scheme,
                http::uri::Scheme::HTTPS,
                "config/{name}.toml: services.{}.upstream must be https",
                s.name
            );
            assert!(
                s.upstream.base.ends_with(".samsungsdscloud.com"),
                "config/{name}.toml: services.{}.upstream {} is not an SCP endpoint",
                s.name,
                s.upstream.base
            );
        }
    }
}

#[test]
fn kubernetes_config_opens_the_admin_port_and_the_manifests_use_it() {
    for env in KubeEnv::all() {
        let n = &env.name;
        let (c, _) = env.proxy_config();
        let admin = c.server.admin_listen;
        assert_eq!(
            admin.ip(),
            Ipv4Addr::UNSPECIFIED,
            "{n}: the ConfigMap must bind server.admin_listen to 0.0.0.0 (the kubelet probes the pod IP)"
        );
        let port = admin.port();
        let proxy = env.proxy();
        assert_eq!(
            proxy.opt("restartPolicy").map(Yaml::str),
            Some("Always"),
            "{n}: {PROXY} must be a native sidecar (restartPolicy: Always)"
        );

        // The container's ports: the admin port, and never the data plane.
        let ports: Vec<u16> = proxy
            .at("ports")
            .seq()
            .iter()
            .map(|p| p.at("containerPort").str().parse().unwrap())
            .collect();
        assert_eq!(
            ports,
            vec![port],
            "{n}: {PROXY}'s containerPorts must be the admin port alone"
        );

        // Probes on that port.
        for (probe, paths) in [
            ("startupProbe", &["/readyz", "/healthz"][..]),
            ("readinessProbe", &["/readyz"][..]),
            ("livenessProbe", &["/healthz"][..]),
        ] {
            let get = proxy
                .opt(probe)
                .unwrap_or_else(|| panic!("{n}: {PROXY} has no {probe}"))
                .at("httpGet");
            assert_eq!(
                resolve_port(get.at("port"), proxy),
                port,
                "{n}: {probe} must use the admin port {port}"
            );
            let path = get.at("path").str();
            assert!(
                paths.contains(&path),
                "{n}: {probe} path {path} (want one of {paths:?})"
            );
        }

        // The NetworkPolicy covers this pod, lets traffic in on the admin port only, and
        // lets the proxy out to DNS and to every upstream's port.
        let pod_labels = env.one("Deployment").at("spec.template.metadata.labels");
        let policy = env.one("NetworkPolicy");
        for (k, v) in policy.at("spec.podSelector.matchLabels").map() {
            assert_eq!(
                pod_labels.opt_key(k).map(Yaml::str),
                Some(v.str()),
                "{n}: the NetworkPolicy selects {k}={} but the pod is not labelled so",
                v.str()
            );
        }
        let types = str_list(policy.at("spec.policyTypes"));
        assert!(
            types.contains(&"Ingress".into()) && types.contains(&"Egress".into()),
            "{n}: policyTypes {types:?}"
        );
        let ingress_ports: BTreeSet<u16> = policy
            .at("spec.ingress")
            .seq()
            .iter()
            .flat_map(|rule| rule.at("ports").seq().iter())
            .map(|p| resolve_port(p.at("port"), proxy))
            .collect();
        assert_eq!(
            ingress_ports,
            BTreeSet::from([port]),
            "{n}: the NetworkPolicy must let in the admin port {port} alone"
        );
        let egress = policy.at("spec.egress").seq();
        let dns = egress.iter().any(|rule| {
            rule.at("ports").seq().iter().any(|p| {
                p.at("port").str() == "53" && p.opt("protocol").map(Yaml::str) == Some("UDP")
            })
        });
        assert!(dns, "{n}: the NetworkPolicy must let DNS (UDP 53) out");
        let cidr_ports: BTreeSet<u16> = egress
            .iter()
            .filter(|rule| {
                rule.opt("to")
                    .is_some_and(|to| to.seq().iter().any(|t| t.opt("ipBlock").is_some()))
            })
            .flat_map(|rule| rule.at("ports").seq().iter())
            .map(|p| p.at("port").str().parse().unwrap())
            .collect();
        for s in &c.services {
            let up = s.upstream.authority.port_u16().unwrap_or(
                if s.upstream.scheme == http::uri::Scheme::HTTPS {
                    443
                } else {
                    80
                },
            );
            assert!(
                cidr_ports.contains(&up),
                "{n}: service {} goes to port {up}, which no ipBlock egress rule allows",
                s.name
            );
        }
        for rule in egress {
            assert!(
                rule.opt("to").is_some() && rule.opt("ports").is_some(),
                "{n}: every egress rule names its peers and ports (an open rule allows everything)"
            );
        }
    }
}

#[test]
fn kubernetes_mounts_match_the_paths_in_the_config() {
    for env in KubeEnv::all() {
        let n = &env.name;
        let (c, _) = env.proxy_config(); // also checks --config against the ConfigMap mount
        let proxy = env.proxy();
        let mut dirs = BTreeMap::new();
        for (what, file) in [
            ("access_key_file", &c.credentials.access_key_file),
            ("secret_key_file", &c.credentials.secret_key_file),
        ] {
            let file = file
                .as_ref()
                .unwrap_or_else(|| panic!("{n}: the ConfigMap sets no credentials.{what}"));
            let dir = file.parent().unwrap().to_str().unwrap().to_owned();
            let name = file.file_name().unwrap().to_str().unwrap().to_owned();
            let volume = env.volume_at(proxy, &dir);
            let secret = volume.opt("secret").unwrap_or_else(|| {
                panic!("{n}: {dir} (credentials.{what}) must be a Secret volume")
            });
            // The file must exist in the mount: one of the items, or a key of the Secret.
            let key = volume_key_for(secret, &name);
            dirs.insert(dir, (secret.at("secretName").str().to_owned(), key));
        }
        assert_eq!(
            dirs.len(),
            1,
            "{n}: the key pair should come from one Secret mount ({dirs:?})"
        );
        // The Secret is created by hand (README); its keys must be the ones documented there.
        let deployment_text = read(&env.dir.join("deployment.yaml"));
        for (secret, _) in dirs.values() {
            assert!(
                deployment_text.contains(&format!("kubectl create secret generic {secret}")),
                "{n}: deployment.yaml should say how to create Secret {secret}"
            );
        }
        for key in ["access-key", "secret-key"] {
            assert!(
                deployment_text.contains(&format!("--from-file={key}=")),
                "{n}: deployment.yaml's kubectl create secret must create key {key}"
            );
        }
        // The app reaches the proxy on the data plane's loopback port (HTTPS_PROXY: the
        // forward listener's).
        let listen = c.server.listen.tcp().expect("a TCP address");
        let mut app_urls = 0;
        for container in env.pod_spec().at("containers").seq() {
            for var in container.opt("env").map(Yaml::seq).unwrap_or(&[]) {
                let Some(value) = var.opt("value") else {
                    continue;
                };
                if let Some(rest) = value.str().strip_prefix("http://127.0.0.1:") {
                    let name = var.at("name").str();
                    let port: u16 = rest.trim_end_matches('/').parse().unwrap();
                    if name == "HTTPS_PROXY" {
                        let forward = c.forward_proxy.listen.unwrap_or_else(|| {
                            panic!(
                                "{n}: the app sets HTTPS_PROXY but [forward_proxy] listen is unset"
                            )
                        });
                        assert_eq!(
                            port,
                            forward.port(),
                            "{n}: the app's HTTPS_PROXY points at port {port}, the forward proxy listens on {forward}"
                        );
                        continue;
                    }
                    app_urls += 1;
                    assert_eq!(
                        port,
                        listen.port(),
                        "{n}: the app's {name} points at port {port}, the proxy listens on {listen}"
                    );
                }
            }
        }
        assert!(
            app_urls > 0,
            "{n}: the app container should be told the proxy's URL"
        );
    }
}

#[test]
fn kubernetes_forward_proxy_stays_on_loopback_and_the_app_trusts_the_ca_it_writes() {
    for env in KubeEnv::all() {
        let n = &env.name;
        let (c, _) = env.proxy_config();
        let fp = &c.forward_proxy;
        let listen = fp
            .listen
            .unwrap_or_else(|| panic!("{n}: the ConfigMap sets no [forward_proxy] listen"));
        assert_eq!(
            listen.ip(),
            Ipv4Addr::LOCALHOST,
            "{n}: forward_proxy.listen must stay on loopback"
        );
        assert!(
            fp.ca_key_file.is_none(),
            "{n}: a CA key in the ConfigMap's config needs a Secret mount this test does not check"
        );
        let out = fp
            .ca_cert_out
            .as_ref()
            .unwrap_or_else(|| panic!("{n}: set forward_proxy.ca_cert_out so the app gets the CA"));
        let dir = out.parent().unwrap().to_str().unwrap();
        // The proxy writes the file: its mount of that directory is writable, an emptyDir.
        let proxy_mount = env
            .proxy()
            .at("volumeMounts")
            .seq()
            .iter()
            .find(|m| m.at("mountPath").str().trim_end_matches('/') == dir)
            .unwrap_or_else(|| {
                panic!("{n}: nothing is mounted at {dir} (ca_cert_out) in the proxy")
            });
        assert_ne!(
            proxy_mount.opt("readOnly").map(Yaml::str),
            Some("true"),
            "{n}: the proxy must be able to write {}",
            out.display()
        );
        let volume_name = proxy_mount.at("name").str();
        let app = env
            .pod_spec()
            .at("containers")
            .seq()
            .iter()
            .find(|c| c.at("name").str() == "app")
            .unwrap_or_else(|| panic!("{n}: no container named app"));
        // The app reads it from the same volume, read-only.
        let volume = env.volume_at(app, dir);
        assert_eq!(
            volume.at("name").str(),
            volume_name,
            "{n}: {dir} volumes differ"
        );
        assert!(
            volume.opt("emptyDir").is_some(),
            "{n}: {dir} should be an emptyDir shared by the two containers"
        );
        let env_of = |name: &str| {
            app.at("env")
                .seq()
                .iter()
                .find(|v| v.at("name").str() == name)
                .map(|v| v.at("value").str().to_owned())
        };
        for var in ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"] {
            assert_eq!(
                env_of(var).as_deref(),
                out.to_str(),
                "{n}: the app's {var} should be forward_proxy.ca_cert_out"
            );
        }
        assert_eq!(
            env_of("HTTPS_PROXY"),
            Some(format!("http://{listen}")),
            "{n}: the app's HTTPS_PROXY"
        );
    }
}

#[test]
fn kubernetes_pods_are_hardened() {
    for env in KubeEnv::all() {
        let n = &env.name;
        let (c, _) = env.proxy_config();
        let spec = env.pod_spec();
        let flag = |y: &Yaml, path: &str| y.opt(path).map(Yaml::str).unwrap_or("unset").to_owned();
        assert_eq!(
            flag(spec, "enableServiceLinks"),
            "false",
            "{n}: enableServiceLinks"
        );
        assert_eq!(
            flag(spec, "automountServiceAccountToken"),
            "false",
            "{n}: automountServiceAccountToken"
        );
        assert_eq!(
            flag(spec, "securityContext.runAsNonRoot"),
            "true",
            "{n}: runAsNonRoot"
        );
        assert_eq!(
            flag(spec, "securityContext.seccompProfile.type"),
            "RuntimeDefault",
            "{n}: seccompProfile"
        );
        let sa = spec.at("serviceAccountName").str();
        env.named("ServiceAccount", sa);

        let mut containers: Vec<&Yaml> = spec.at("containers").seq().iter().collect();
        containers.extend(spec.at("initContainers").seq());
        for ctr in containers {
            let name = ctr.at("name").str();
            assert_eq!(
                flag(ctr, "securityContext.readOnlyRootFilesystem"),
                "true",
                "{n}/{name}: readOnlyRootFilesystem"
            );
            assert_eq!(
                flag(ctr, "securityContext.allowPrivilegeEscalation"),
                "false",
                "{n}/{name}: allowPrivilegeEscalation"
            );
            let drop = ctr
                .opt("securityContext.capabilities.drop")
                .map(str_list)
                .unwrap_or_default();
            assert!(
                drop.contains(&"ALL".into()),
                "{n}/{name}: capabilities.drop ALL"
            );
            assert!(
                ctr.opt("securityContext.capabilities.add").is_none(),
                "{n}/{name}: no capability is added"
            );
            for r in ["requests.cpu", "requests.memory", "limits.memory"] {
                assert!(
                    ctr.opt(&format!("resources.{r}")).is_some(),
                    "{n}/{name}: resources.{r}"
                );
            }
        }

        // Termination: the proxy's shutdown_delay + shutdown_grace fit in the pod's grace.
        let grace = secs(spec.at("terminationGracePeriodSeconds"));
        let needed = (c.server.shutdown_delay + c.server.shutdown_grace).as_secs();
        assert!(
            c.server.shutdown_delay.as_secs() > 0,
            "{n}: set server.shutdown_delay so endpoints drop the pod before the proxy stops accepting"
        );
        assert!(
            grace > needed,
            "{n}: terminationGracePeriodSeconds {grace} must exceed shutdown_delay + shutdown_grace ({needed}s)"
        );
    }
}

#[test]
fn kubernetes_config_carries_the_same_services_as_its_profile() {
    for env in KubeEnv::all() {
        let n = &env.name;
        assert!(
            root().join(format!("config/{n}.toml")).is_file(),
            "deploy/kubernetes/{n}/ has no config/{n}.toml to follow"
        );
        let (k8s, _) = env.proxy_config();
        let prof = profile(n);
        assert_eq!(
            format!("{:#?}", k8s.services),
            format!("{:#?}", prof.services),
            "{n}: the ConfigMap's [services] differ from config/{n}.toml"
        );
        assert_eq!(
            format!("{:?}", k8s.routing),
            format!("{:?}", prof.routing),
            "{n}: the ConfigMap's [routing] differs from config/{n}.toml"
        );
        assert_eq!(
            format!("{:?}", k8s.credentials),
            format!("{:?}", prof.credentials),
            "{n}: the ConfigMap's [credentials] differ from config/{n}.toml (default.toml included)"
        );
    }
}

#[test]
fn kustomizations_list_every_manifest_and_environments_differ_only_in_config_and_policy() {
    let envs = KubeEnv::all();
    for env in &envs {
        let k = parse_yaml(
            "kustomization.yaml",
            &read(&env.dir.join("kustomization.yaml")),
        );
        let listed: BTreeSet<String> = str_list(k[0].at("resources")).into_iter().collect();
        let present: BTreeSet<String> = manifest_files(&env.dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            listed, present,
            "{}: kustomization.yaml resources vs the files beside it",
            env.name
        );
    }
    // The Deployment and ServiceAccount are copies: the environments differ in configmap.yaml
    // and networkpolicy.yaml (endpoints, CIDRs) and in their own name, nowhere else.
    let first = &envs[0];
    for other in &envs[1..] {
        for file in ["deployment.yaml", "serviceaccount.yaml"] {
            let a = read(&first.dir.join(file)).replace(&first.name, &other.name);
            let b = read(&other.dir.join(file));
            assert!(
                a == b,
                "deploy/kubernetes/{}/{file} and deploy/kubernetes/{}/{file} differ beyond the environment's name; keep them in step",
                first.name,
                other.name
            );
        }
    }
}

/// Dockerfile instructions of the final stage: (INSTRUCTION, arguments), continuations joined.
fn dockerfile_final_stage() -> Vec<(String, String)> {
    let text = read(&root().join("deploy/docker/Dockerfile"));
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            joined.push(std::mem::take(&mut cur));
        }
    }
    let mut stage = Vec::new();
    for ins in joined {
        let (op, args) = ins.split_once(' ').unwrap_or((&ins, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stage.clear();
        }
        stage.push((op, args.trim().to_owned()));
    }
    stage
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("Dockerfile: {args} is not the exec (JSON) form: {e}"))
}

#[test]
fn dockerfile_exposes_the_admin_port_only_and_bakes_the_config_it_names() {
    let stage = dockerfile_final_stage();
    let get = |op: &str| -> Vec<&str> {
        stage
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let from = get("FROM");
    assert!(
        from[0].starts_with("gcr.io/distroless/cc"),
        "final image: {from:?}"
    );

    let exposed: Vec<u16> = get("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    for env in KubeEnv::all() {
        let (c, _) = env.proxy_config();
        assert_eq!(
            exposed,
            vec![c.server.admin_listen.port()],
            "Dockerfile EXPOSE vs the admin port of {}",
            env.name
        );
        assert!(!exposed.contains(&c.server.listen.tcp().expect("a TCP address").port()));
    }
    let default_admin = default_toml_addr("server.admin_listen");
    assert_eq!(
        exposed,
        vec![default_admin.port()],
        "EXPOSE vs config/default.toml"
    );

    let user = get("USER");
    let uid = user.last().expect("USER").split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER must be a numeric non-root uid (runAsNonRoot checks it), got {uid}"
    );

    // ENTRYPOINT runs the binary that was copied in, with the baked config directory.
    let entry = exec_form(get("ENTRYPOINT").last().expect("ENTRYPOINT"));
    let copies = get("COPY");
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("--from=") && c.ends_with(&format!(" {}", entry[0]))),
        "ENTRYPOINT {} is not a file the final stage copies in",
        entry[0]
    );
    let config_dir = flag_value(&entry, "--config-dir").expect("ENTRYPOINT --config-dir");
    assert!(
        copies.iter().any(|c| {
            let parts: Vec<&str> = c
                .split_whitespace()
                .filter(|p| !p.starts_with("--"))
                .collect();
            parts.len() == 2
                && parts[0].trim_end_matches('/') == "config"
                && parts[1].trim_end_matches('/') == config_dir
        }),
        "the final stage must COPY config/ to {config_dir} (ENTRYPOINT's --config-dir)"
    );
    let cmd = exec_form(get("CMD").last().expect("CMD"));
    let prof = flag_value(&cmd, "--profile").expect("CMD --profile");
    assert!(
        root().join(format!("config/{prof}.toml")).is_file(),
        "CMD's profile {prof} has no config/{prof}.toml"
    );
    if let Some(addr) = flag_value(&cmd, "--admin-listen") {
        let addr: SocketAddr = addr.parse().unwrap();
        assert_eq!(vec![addr.port()], exposed, "CMD --admin-listen vs EXPOSE");
    }
    assert!(
        flag_value(&cmd, "--listen").is_none(),
        "the image must not move the data plane off loopback"
    );
}

#[test]
fn systemd_unit_loads_the_credentials_it_points_the_proxy_at() {
    let text = read(&root().join("deploy/systemd/scp-auth-proxy.service"));
    let mut settings: Vec<(String, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';', '[']) {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("unit line {line:?}"));
        settings.push((k.to_owned(), v.to_owned()));
    }
    let all = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let v = all(key);
        assert_eq!(v.len(), 1, "the unit should set {key} once");
        v[0]
    };
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(one(k), v, "unit: {k}");
    }
    assert_eq!(one("CapabilityBoundingSet"), "", "unit: no capabilities");
    assert_eq!(
        one("ExecReload"),
        "/bin/kill -HUP $MAINPID",
        "unit: reload is SIGHUP"
    );

    let creds: BTreeMap<&str, &str> = all("LoadCredential")
        .into_iter()
        .map(|v| v.split_once(':').expect("LoadCredential=NAME:PATH"))
        .collect();
    let env: BTreeMap<&str, &str> = all("Environment")
        .into_iter()
        .map(|v| v.split_once('=').expect("Environment=NAME=VALUE"))
        .collect();
    for var in [
        "SCP_PROXY_CREDENTIALS__SECRET_KEY_FILE",
        "SCP_PROXY_CREDENTIALS__ACCESS_KEY_FILE",
    ] {
        let value = env
            .get(var)
            .unwrap_or_else(|| panic!("the unit must set {var} to a credential"));
        let name = value.strip_prefix("%d/").unwrap_or_else(|| {
            panic!("{var}={value} should be %d/NAME (the credentials directory)")
        });
        assert!(
            creds.contains_key(name),
            "{var} points at credential {name:?}, but LoadCredential loads {:?}",
            creds.keys()
        );
    }
    assert!(
        !env.contains_key("SCP_SECRET_KEY"),
        "never put the secret in the unit"
    );

    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let prof = flag_value(&exec, "--profile").expect("ExecStart --profile");
    assert!(
        flag_value(&exec, "--config-dir").is_some(),
        "ExecStart --config-dir"
    );
    let c = profile(&prof);
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(
        stop > (c.server.shutdown_delay + c.server.shutdown_grace).as_secs(),
        "TimeoutStopSec={stop} must exceed the {prof} profile's shutdown_delay + shutdown_grace"
    );
}

#[test]
fn manifests_read_as_strings_and_duplicate_keys_are_refused() {
    let docs = parse_yaml(
        "sample",
        "# c\na: 1\nb:\n  - x\n  - name: y  # trailing\n    port: \"80\"\n  -\n    z: 'it''s'\nc: |\n  line # kept\n\n  two\nd: []\nf: [1, true]\n---\ne:\n- f\n",
    );
    assert_eq!(docs.len(), 2);
    let d = &docs[0];
    assert_eq!(d.at("a").str(), "1");
    assert_eq!(d.at("b").seq()[0].str(), "x");
    assert_eq!(d.at("b").seq()[1].at("name").str(), "y");
    assert_eq!(d.at("b").seq()[1].at("port").str(), "80");
    assert_eq!(d.at("b").seq()[2].at("z").str(), "it's");
    assert_eq!(d.at("c").str(), "line # kept\n\ntwo\n");
    assert!(d.at("d").seq().is_empty());
    assert_eq!(str_list(d.at("f")), ["1", "true"]);
    assert_eq!(docs[1].at("e").seq()[0].str(), "f");
    // A key written twice (the second silently winning in kubectl) fails the test.
    let r = std::panic::catch_unwind(|| parse_yaml("bad", "a: 1\na: 2\n"));
    assert!(r.is_err(), "a duplicate key must be refused");
}

// ------------------------------------------------------------------ YAML

/// A manifest node as the checks see it: every scalar as text (`port: 80` and `port: "80"`
/// both read "80"), so they compare strings.
#[derive(Clone, Debug, PartialEq)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    Str(String),
    Null,
}

impl Yaml {
    fn opt_key(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A dotted path of keys.
    fn opt(&self, path: &str) -> Option<&Yaml> {
        path.split('.').try_fold(self, |y, k| y.opt_key(k))
    }

    fn at(&self, path: &str) -> &Yaml {
        self.opt(path)
            .unwrap_or_else(|| panic!("missing {path:?} in {self:?}"))
    }

    fn str(&self) -> &str {
        match self {
            Yaml::Str(s) => s,
            other => panic!("expected a scalar, found {other:?}"),
        }
    }

    fn seq(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(s) => s,
            Yaml::Null => &[],
            other => panic!("expected a list, found {other:?}"),
        }
    }

    fn map(&self) -> Vec<(&str, &Yaml)> {
        match self {
            Yaml::Map(m) => m.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            other => panic!("expected a mapping, found {other:?}"),
        }
    }
}

/// Every non-empty document of `text`, read by yaml-rust2 (YAML 1.2; a duplicate key is an
/// error); anything it refuses panics naming the file and the position.
fn parse_yaml(file: &str, text: &str) -> Vec<Yaml> {
    yaml_rust2::YamlLoader::load_from_str(text)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .iter()
        .map(|doc| node(file, doc))
        .filter(|doc| *doc != Yaml::Null)
        .collect()
}

fn node(file: &str, y: &yaml_rust2::Yaml) -> Yaml {
    use yaml_rust2::Yaml as Y;
    match y {
        Y::Hash(h) => Yaml::Map(
            h.iter()
                .map(|(k, v)| (scalar(file, k), node(file, v)))
                .collect(),
        ),
        Y::Array(a) => Yaml::Seq(a.iter().map(|v| node(file, v)).collect()),
        Y::Null => Yaml::Null,
        other => Yaml::Str(scalar(file, other)),
    }
}

fn scalar(file: &str, y: &yaml_rust2::Yaml) -> String {
    use yaml_rust2::Yaml as Y;
    match y {
        Y::String(s) | Y::Real(s) => s.clone(),
        Y::Integer(i) => i.to_string(),
        Y::Boolean(b) => b.to_string(),
        other => panic!("{file}: expected a scalar, found {other:?}"),
    }
}
