//! `isthmus install`: every rendered document is a valid object of its
//! kind (k8s-openapi round trip and `kubernetes-validate --strict`), the
//! containers' arguments are accepted by the real `isthmus` parser, the
//! MeshConfig loads in the control plane's parser, and `deploy/kubernetes/`
//! is exactly what the code renders.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use isthmus_control::install::{self, kustomize, Doc, InstallOptions, Part};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn example() -> InstallOptions {
    kustomize::example_options().unwrap()
}

/// Deserializes as `T` and back: a field k8s-openapi does not know would be
/// dropped, so the round trip must be the identity.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Doc) -> T {
    let typed: T = serde_json::from_value(doc.value.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", doc.describe()));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(back, doc.value, "{} lost or changed fields", doc.describe());
    typed
}

#[test]
fn every_document_parses_as_its_kind() {
    let docs = install::render_docs(&example()).unwrap();
    let mut kinds = BTreeSet::new();
    for doc in &docs {
        kinds.insert(doc.kind().to_string());
        match (doc.api_version(), doc.kind()) {
            ("v1", "Namespace") => drop(round_trip::<Namespace>(doc)),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                drop(round_trip::<CustomResourceDefinition>(doc))
            }
            ("v1", "ServiceAccount") => drop(round_trip::<ServiceAccount>(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(round_trip::<ClusterRole>(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                drop(round_trip::<ClusterRoleBinding>(doc))
            }
            ("v1", "ConfigMap") => drop(round_trip::<ConfigMap>(doc)),
            ("v1", "Secret") => drop(round_trip::<Secret>(doc)),
            ("v1", "PersistentVolumeClaim") => drop(round_trip::<PersistentVolumeClaim>(doc)),
            ("apps/v1", "Deployment") => drop(round_trip::<Deployment>(doc)),
            ("v1", "Service") => drop(round_trip::<Service>(doc)),
            ("policy/v1", "PodDisruptionBudget") => drop(round_trip::<PodDisruptionBudget>(doc)),
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                drop(round_trip::<MutatingWebhookConfiguration>(doc))
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor" | "PodMonitor") => {
                assert!(doc.value["spec"].is_object())
            }
            (v, k) => panic!("unexpected {v} {k}"),
        }
        if doc.kind() != "Namespace"
            && !doc.kind().starts_with("Cluster")
            && doc.kind() != "CustomResourceDefinition"
            && doc.kind() != "MutatingWebhookConfiguration"
        {
            assert_eq!(doc.namespace(), Some("istio-system"), "{}", doc.describe());
        }
    }
    for k in [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(k), "no {k} rendered");
    }
    // Apply order: the namespace and CRDs before anything that needs them.
    assert_eq!(docs[0].kind(), "Namespace");
    assert_eq!(docs[1].kind(), "CustomResourceDefinition");
}

fn kubernetes_validate() -> Option<PathBuf> {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(PathBuf::from("kubernetes-validate"));
    }
    if std::env::var("ISTHMUS_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!(
            "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate)"
        );
        return None;
    }
    panic!("kubernetes-validate is not installed: `pip install kubernetes-validate` (.ci/run does), or set ISTHMUS_ALLOW_SKIP=1");
}

#[test]
fn kubernetes_validate_accepts_every_document() {
    let Some(tool) = kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // prometheus-operator kinds have no schema in the tool; they are checked above.
    let docs: Vec<Doc> = install::render_docs(&example())
        .unwrap()
        .into_iter()
        .filter(|d| d.api_version() != "monitoring.coreos.com/v1")
        .collect();
    let path = dir.path().join("install.yaml");
    std::fs::write(&path, install::to_yaml(&docs).unwrap()).unwrap();
    let out = Command::new(tool)
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{stdout}\n{stderr}"
    );
    let passed = format!("{stdout}{stderr}").matches(" passed ").count();
    assert_eq!(
        passed,
        docs.len(),
        "every document must be validated:\n{stdout}{stderr}"
    );
}

fn containers(doc: &Doc) -> Vec<Container> {
    let d: Deployment = serde_json::from_value(doc.value.clone()).unwrap();
    d.spec.template.spec.unwrap().containers
}

/// Kubernetes' `$(VAR)` expansion with plausible pod values.
fn expand(arg: &str) -> String {
    [
        ("$(POD_IP)", "10.8.3.17"),
        ("$(POD_NAME)", "isthmus-eastwestgateway-5d8f7-x2x9q"),
        ("$(POD_NAMESPACE)", "istio-system"),
        ("$(SERVICE_ACCOUNT)", "isthmus-eastwestgateway"),
        ("$(ISTHMUS_CLUSTER_ID)", "us-east"),
        ("$(ISTHMUS_NETWORK)", "net-east"),
        ("$(ISTHMUS_LOCALITY)", "us-east/us-east-1a"),
        ("$(ISTHMUS_TRUST_DOMAIN)", "example.org"),
    ]
    .iter()
    .fold(arg.to_string(), |a, (k, v)| a.replace(k, v))
}

#[test]
fn container_arguments_are_accepted_by_the_real_cli() {
    let docs = install::render_docs(&example()).unwrap();
    let mut checked = 0;
    for doc in docs.iter().filter(|d| d.kind() == "Deployment") {
        for c in containers(doc) {
            // The proxy binary takes exactly the flags of `isthmus gateway`
            // (one clap definition, gateway/src/cli), so both are checked
            // with the `isthmus` binary this test can run.
            let mut args: Vec<String> = match c.command.as_deref() {
                None => vec![],
                Some([cmd]) if cmd == install::proxy::PROXY_COMMAND => vec!["gateway".into()],
                Some(other) => panic!("{}: unexpected command {other:?}", doc.describe()),
            };
            args.extend(c.args.iter().flatten().map(|a| expand(a)));
            assert!(
                !args.iter().any(|a| a.contains("$(")),
                "unexpanded variable in {args:?}"
            );
            // Every variable an argument names is defined in the container.
            let env: BTreeSet<String> = c.env.iter().flatten().map(|e| e.name.clone()).collect();
            for a in c.args.iter().flatten() {
                if let Some(start) = a.find("$(") {
                    let name = &a[start + 2..a[start..].find(')').unwrap() + start];
                    assert!(
                        env.contains(name),
                        "{}: $({name}) is not in env",
                        doc.describe()
                    );
                }
            }
            // `--help` last: clap has validated every flag and value before it.
            let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: `isthmus {}` rejected: {}",
                doc.describe(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "control plane and three gateways");
}

#[test]
fn gateways_are_spread_and_protected_and_the_control_plane_is_a_singleton() {
    let docs = install::render_docs(&example()).unwrap();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d.kind() == kind && d.name() == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    for gw in [
        "isthmus-eastwestgateway",
        "isthmus-ingressgateway",
        "isthmus-egressgateway",
    ] {
        let d: Deployment = serde_json::from_value(find("Deployment", gw).value.clone()).unwrap();
        let pod = d.spec.template.spec.unwrap();
        assert!(pod.affinity.unwrap().pod_anti_affinity.is_some(), "{gw}");
        let c = &pod.containers[0];
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        let pdb: PodDisruptionBudget =
            serde_json::from_value(find("PodDisruptionBudget", gw).value.clone()).unwrap();
        assert!(pdb.spec.unwrap().min_available.is_some());
    }
    let ew: Service =
        serde_json::from_value(find("Service", "isthmus-eastwestgateway").value.clone()).unwrap();
    let spec = ew.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let ports: BTreeSet<(i32, String)> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.port, p.protocol.unwrap()))
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([(15443, "TCP".into()), (15443, "UDP".into())])
    );

    let control: Deployment =
        serde_json::from_value(find("Deployment", "isthmus-control").value.clone()).unwrap();
    let spec = control.spec;
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
    let c = &spec.template.spec.unwrap().containers[0];
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p.as_ref().unwrap().http_get.clone().unwrap();
        (g.path.unwrap(), g.port)
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        probe(&c.readiness_probe),
        ("/readyz".into(), IntOrString::Int(15014))
    );
    assert_eq!(
        probe(&c.liveness_probe),
        ("/healthz".into(), IntOrString::Int(15014))
    );
    assert!(c.resources.as_ref().unwrap().requests.is_some());
}

#[test]
fn rbac_is_least_privilege() {
    let docs = install::render_docs(&example()).unwrap();
    let role: ClusterRole = serde_json::from_value(
        docs.iter()
            .find(|d| d.kind() == "ClusterRole")
            .unwrap()
            .value
            .clone(),
    )
    .unwrap();
    let mut grants = BTreeSet::new();
    let role_rules = role.rules.unwrap();
    for rule in role_rules.clone() {
        for group in rule.api_groups.unwrap() {
            for res in rule.resources.clone().unwrap() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*");
                    assert_ne!(res, "*");
                    grants.insert(format!("{group}/{res}:{verb}"));
                }
            }
        }
    }
    let has = |g: &str| grants.contains(g);
    for r in [
        "/services",
        "/pods",
        "/nodes",
        "/namespaces",
        "discovery.k8s.io/endpointslices",
        "networking.istio.io/virtualservices",
        "security.istio.io/authorizationpolicies",
        "multicluster.x-k8s.io/serviceexports",
    ] {
        for v in ["get", "list", "watch"] {
            assert!(has(&format!("{r}:{v}")), "missing {r}:{v}");
        }
    }
    assert!(has("authentication.k8s.io/tokenreviews:create"));
    assert!(has("multicluster.x-k8s.io/serviceexports/status:patch"));
    assert!(has("multicluster.x-k8s.io/serviceimports:patch"));
    assert!(has("events.k8s.io/events:create"));
    // Secrets (Gateway credentials) are read, never written; nothing
    // writes workloads.
    for v in ["get", "list", "watch"] {
        assert!(has(&format!("/secrets:{v}")), "missing /secrets:{v}");
    }
    assert!(!grants.iter().any(|g| g.starts_with("/secrets:")
        && !g.ends_with(":get")
        && !g.ends_with(":list")
        && !g.ends_with(":watch")));
    // The webhook's caBundle: only the injector's own configuration.
    let webhook_rules: Vec<_> = role_rules
        .iter()
        .filter(|r| {
            r.resources
                .iter()
                .flatten()
                .any(|res| res == "mutatingwebhookconfigurations")
        })
        .collect();
    assert_eq!(webhook_rules.len(), 1);
    assert_eq!(
        webhook_rules[0].resource_names.as_deref(),
        Some(&["isthmus-sidecar-injector".to_string()][..])
    );
    assert!(!grants.iter().any(|g| g.starts_with("/pods:")
        && !g.ends_with(":get")
        && !g.ends_with(":list")
        && !g.ends_with(":watch")));
    assert!(!grants.iter().any(|g| g.contains("serviceexports:")
        && !g.ends_with(":get")
        && !g.ends_with(":list")
        && !g.ends_with(":watch")));
}

#[test]
fn mesh_config_loads_in_the_control_planes_parser() {
    let opts = example();
    let docs = install::render_docs(&opts).unwrap();
    let cm: ConfigMap = serde_json::from_value(
        docs.iter()
            .find(|d| d.name() == "isthmus-mesh")
            .unwrap()
            .value
            .clone(),
    )
    .unwrap();
    let text = &cm.data.unwrap()["mesh.yaml"];
    let parsed = isthmus_control::source::parse_text(Path::new("mesh.yaml"), text);
    assert_eq!(parsed.len(), 1);
    assert!(!parsed[0].has_errors(), "{:?}", parsed[0]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), text).unwrap();
    let report = isthmus_control::analyze::analyze_paths(&[dir.path().to_path_buf()]);
    assert!(!report.has_errors(), "{}", report.render_text());
    let peers = opts.mesh_config().federation.unwrap().peers;
    assert_eq!(peers.len(), 2);
    assert!(text.contains("federation.us-west.example.org:15031"));
}

/// Every key of a fully populated MeshConfig is in the CRD schema (the
/// schema is generated from the type; this catches a serde rename the
/// generator would not see).
#[test]
fn mesh_config_crd_schema_covers_the_type() {
    fn walk(value: &Value, schema: &Value, path: &str) {
        match value {
            Value::Object(map) => {
                let props = &schema["properties"];
                if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) {
                    return;
                }
                for (k, v) in map {
                    let sub = &props[k];
                    assert!(sub.is_object(), "{path}.{k} is not in the schema");
                    walk(v, sub, &format!("{path}.{k}"));
                }
            }
            Value::Array(items) => {
                for v in items {
                    walk(v, &schema["items"], &format!("{path}[]"));
                }
            }
            _ => {}
        }
    }
    let spec = serde_json::to_value(example().mesh_config()).unwrap();
    let schema = install::crds::mesh_config_spec_schema().unwrap();
    walk(&spec, &schema, "spec");
    assert!(schema.get("$schema").is_none() && schema.get("definitions").is_none());
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn yaml_files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.insert(p);
        }
    }
    out
}

/// `deploy/kubernetes/` is generated; regenerate with
/// `ISTHMUS_UPDATE_GOLDEN=1 cargo test -p isthmus-control --test install_render`.
#[test]
fn deploy_kubernetes_matches_what_install_renders() {
    let dir = deploy_dir();
    let opts = kustomize::example_options().unwrap();
    if std::env::var("ISTHMUS_UPDATE_GOLDEN").as_deref() == Ok("1") {
        for stale in yaml_files(&dir) {
            std::fs::remove_file(stale).unwrap();
        }
        kustomize::write(&dir, &opts).unwrap();
    }
    let rendered = kustomize::files(&opts).unwrap();
    let expected: BTreeSet<PathBuf> = rendered.iter().map(|(p, _)| dir.join(p)).collect();
    let on_disk = yaml_files(&dir);
    assert_eq!(
        on_disk, expected,
        "deploy/kubernetes has other files than `isthmus install --kustomize` writes; run ISTHMUS_UPDATE_GOLDEN=1 cargo test -p isthmus-control --test install_render"
    );
    for (rel, body) in rendered {
        let committed = std::fs::read_to_string(dir.join(&rel)).unwrap();
        assert!(
            committed == body,
            "deploy/kubernetes/{} drifted from what `isthmus install` renders; run ISTHMUS_UPDATE_GOLDEN=1 cargo test -p isthmus-control --test install_render",
            rel.display()
        );
    }
    // The base is what every cluster shares; the overlay only this cluster's parts.
    for (part, _) in install::render(&opts).unwrap() {
        let base = dir.join("base").join(part.file()).exists();
        assert_eq!(base, part.in_base(), "{part:?}");
    }
    assert!(!Part::Cluster.in_base() && Part::Webhook.in_base());
}

/// Docker is not available here; this checks the Dockerfile agrees with
/// the binary and with what the manifests expect of the image.
#[test]
fn dockerfile_builds_the_binary_the_manifests_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let cargo = std::fs::read_to_string(root.join("control/Cargo.toml")).unwrap();
    assert!(
        cargo.contains("[[bin]]\nname = \"isthmus\""),
        "the binary is named isthmus"
    );
    assert!(dockerfile.contains("--bin isthmus"));
    assert!(dockerfile.contains("target/release/isthmus /usr/local/bin/isthmus"));
    assert!(dockerfile.contains("COPY --from=build /usr/local/bin/isthmus /usr/local/bin/isthmus"));
    // The proxy containers' command.
    let gateway_cargo = std::fs::read_to_string(root.join("gateway/Cargo.toml")).unwrap();
    assert!(gateway_cargo.contains("[[bin]]\nname = \"isthmus-gateway\""));
    assert!(dockerfile.contains("gateway/build-proxy.sh --pgo /usr/local/bin/isthmus-gateway"));
    let build_proxy = std::fs::read_to_string(root.join("gateway/build-proxy.sh")).unwrap();
    assert!(build_proxy.contains("--bin isthmus-gateway"));
    // The profile-guided build trains the proxy with this script.
    assert!(build_proxy.contains("gateway/pgo/train.sh"));
    assert!(root.join("gateway/pgo/train.sh").is_file());
    assert!(dockerfile.contains(&format!(
        "COPY --from=build {0} {0}",
        install::proxy::PROXY_COMMAND
    )));
    let entry = dockerfile
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("an ENTRYPOINT");
    assert_eq!(entry, r#"ENTRYPOINT ["/usr/local/bin/isthmus"]"#);
    // The capture init container runs `sh -c ... iptables-restore`.
    assert!(
        dockerfile.contains(" iptables"),
        "the runtime image needs iptables"
    );
    assert!(
        dockerfile.contains("FROM debian:bookworm-slim"),
        "sh comes with debian-slim"
    );
    // The image's user is the control plane's runAsUser.
    let user = dockerfile.lines().find(|l| l.starts_with("USER ")).unwrap();
    let uid: i64 = user[5..].split(':').next().unwrap().parse().unwrap();
    let docs = install::render_docs(&example()).unwrap();
    let control = docs
        .iter()
        .find(|d| d.kind() == "Deployment" && d.name() == "isthmus-control")
        .unwrap();
    let c = &containers(control)[0];
    assert_eq!(c.security_context.as_ref().unwrap().run_as_user, Some(uid));
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target") && ignore.lines().any(|l| l == "target-*"));
}
