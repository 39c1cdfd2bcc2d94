//! The sidecar injector on realistic AdmissionReview v1 payloads (Pod
//! CREATE as the API server sends it after defaulting): golden responses,
//! the JSON Patch applied with the `json-patch` crate, re-injection of the
//! result (no patch), opt-outs, the webhook's selectors, and the HTTPS
//! endpoint with a certificate from the cluster CA.

mod inject_support;

use std::collections::BTreeMap;

use inject_support::{again, golden, load, patched, respond, ROOT_PEM};
use isthmus_control::inject::review::AdmissionReview;
use isthmus_control::inject::selector::matching_webhooks;
use isthmus_control::inject::{self, PROXY_CONTAINER};
use isthmus_control::install::webhook;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// Checks an injected pod is coherent: the proxy is there once, mounts
/// name existing volumes, the root-cert file comes from an annotation that
/// holds the root, and the proxy's arguments pass the real CLI parser.
fn check_injected(pod_value: &Value, original_containers: usize) -> Pod {
    let pod: Pod = serde_json::from_value(pod_value.clone()).unwrap();
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.containers.len(), original_containers + 1);
    let proxy = spec.containers.last().unwrap();
    assert_eq!(proxy.name, PROXY_CONTAINER);
    assert_eq!(
        proxy.image.as_deref(),
        Some("registry.example.org/isthmus:1.0.0")
    );
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.contains(&m.name),
                "{}: mount {} has no volume",
                c.name,
                m.name
            );
        }
    }
    let ann = pod.metadata.annotations.clone().unwrap();
    assert_eq!(ann["isthmus.io/root-cert"], ROOT_PEM);
    let root_vol = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "isthmus-root-cert")
        .unwrap();
    let field = &root_vol
        .downward_api
        .as_ref()
        .unwrap()
        .items
        .as_ref()
        .unwrap()[0]
        .field_ref
        .as_ref()
        .unwrap()
        .field_path;
    assert_eq!(field, "metadata.annotations['isthmus.io/root-cert']");
    let token = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "istio-token")
        .unwrap();
    let sat = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(sat.audience.as_deref(), Some("istio-ca"));
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["security.istio.io/tlsMode"],
        "istio"
    );

    let env: BTreeMap<String, String> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| {
            (
                e.name.clone(),
                e.value.clone().unwrap_or_else(|| "10.8.3.17".into()),
            )
        })
        .collect();
    assert_eq!(env["ISTHMUS_CLUSTER_ID"], "us-east");
    let args: Vec<String> = proxy
        .args
        .iter()
        .flatten()
        .map(|a| {
            let mut a = a.clone();
            for (k, v) in &env {
                a = a.replace(
                    &format!("$({k})"),
                    if k == "POD_NAME" {
                        "reviews-v1-abc"
                    } else if k == "POD_NAMESPACE" {
                        "shop"
                    } else if k == "SERVICE_ACCOUNT" {
                        "reviews"
                    } else {
                        v
                    },
                );
            }
            a
        })
        .collect();
    assert!(args
        .windows(2)
        .any(|w| w[0] == "--role" && w[1] == "sidecar"));
    assert!(!args.iter().any(|a| a.contains("$(")), "{args:?}");
    // The container runs the proxy binary, whose flags are exactly those of
    // `isthmus gateway` (one clap definition), which this test can run.
    assert_eq!(
        proxy.command.as_deref(),
        Some(&[isthmus_control::install::proxy::PROXY_COMMAND.to_string()][..])
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .arg("gateway")
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "isthmus gateway {} rejected: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    pod
}

#[test]
fn deployment_pod_is_injected_once() {
    let review = load("reviews-deployment-pod");
    let r = respond(&review);
    assert!(r.allowed);
    golden("reviews-deployment-pod", &r);
    let pod_value = patched(&review, &r);
    let pod = check_injected(&pod_value, 1);
    let spec = pod.spec.unwrap();
    assert!(spec.init_containers.is_none(), "NONE mode adds no capture");
    // The application's own volume and mount are untouched.
    assert!(spec
        .volumes
        .unwrap()
        .iter()
        .any(|v| v.name == "kube-api-access-x7k2p"));
    let proxy = spec.containers.last().unwrap();
    let args = proxy.args.clone().unwrap();
    assert!(args
        .windows(2)
        .any(|w| w[0] == "--label" && w[1] == "app=reviews"));
    assert!(args
        .windows(2)
        .any(|w| w[0] == "--label" && w[1] == "version=v1"));
    let sc = proxy.security_context.clone().unwrap();
    assert_eq!(sc.run_as_user, Some(1337));
    assert_eq!(sc.read_only_root_filesystem, Some(true));

    // Re-invocation (reinvocationPolicy IfNeeded) on the injected pod: no patch.
    let second = again(&review, pod_value);
    assert!(second.allowed);
    assert!(second.patch.is_none() && second.patch_type.is_none());
}

#[test]
fn bare_pod_gets_its_maps_and_lists_created() {
    let review = load("bare-pod");
    let r = respond(&review);
    golden("bare-pod", &r);
    let pod_value = patched(&review, &r);
    check_injected(&pod_value, 1);
    let second = again(&review, pod_value);
    assert!(second.patch.is_none());
}

#[test]
fn redirect_mode_adds_the_capture_init_container() {
    let review = load("redirect");
    let r = respond(&review);
    golden("redirect", &r);
    // The proxy serves 15001/15006 now: REDIRECT is no longer warned about.
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let pod_value = patched(&review, &r);
    let pod = check_injected(&pod_value, 1);
    let init = pod.spec.unwrap().init_containers.unwrap();
    assert_eq!(init.len(), 1);
    let caps = init[0]
        .security_context
        .clone()
        .unwrap()
        .capabilities
        .unwrap();
    assert_eq!(
        caps.add.unwrap(),
        vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]
    );
    let rules = init[0].env.as_ref().unwrap()[0].value.clone().unwrap();
    assert!(rules.contains("-A ISTHMUS_OUTPUT -p tcp --dport 5432 -j RETURN"));
    assert!(rules.contains("-A ISTHMUS_OUTPUT -d 169.254.169.254/32 -j RETURN"));
    assert!(rules.contains("--uid-owner 1337 -j RETURN"));
    assert!(
        rules.contains("REDIRECT --to-ports 15006") && rules.contains("REDIRECT --to-ports 15001")
    );
    assert!(again(&review, pod_value).patch.is_none());
}

#[test]
fn opted_out_and_foreign_requests_get_no_patch() {
    for name in [
        "opt-out-annotation",
        "opt-out-label",
        "kube-system",
        "host-network",
        "update",
    ] {
        let r = respond(&load(name));
        assert!(r.allowed, "{name}");
        assert!(r.patch.is_none(), "{name} must not be patched");
        golden(name, &r);
    }
}

#[test]
fn malformed_capture_annotation_is_refused_with_its_name() {
    let r = respond(&load("bad-annotation"));
    assert!(!r.allowed);
    let msg = r.status.clone().unwrap().message.unwrap();
    assert!(
        msg.contains("traffic.sidecar.istio.io/excludeInboundPorts"),
        "{msg}"
    );
    assert!(msg.contains("metrics"), "{msg}");
    golden("bad-annotation", &r);
}

#[test]
fn a_review_without_request_is_an_error() {
    let empty = AdmissionReview {
        api_version: "admission.k8s.io/v1".into(),
        kind: "AdmissionReview".into(),
        request: None,
        response: None,
    };
    assert!(inject::review(&inject_support::config(), &empty).is_err());
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (what, namespace labels, pod labels, webhooks expected to match)
type Case<'a> = (
    &'a str,
    BTreeMap<String, String>,
    &'a BTreeMap<String, String>,
    Vec<&'a str>,
);

#[test]
fn webhook_selectors_pick_the_right_pods() {
    let cfg = webhook::configuration();
    let hooks = cfg.webhooks.unwrap();
    for h in &hooks {
        assert_eq!(h.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(h.timeout_seconds, Some(5));
        assert_eq!(h.side_effects, "None");
        // The control plane applies the bundle at run time (kube_process.rs).
        assert!(h.client_config.ca_bundle.is_none());
        let svc = h.client_config.service.as_ref().unwrap();
        assert_eq!(
            (
                svc.name.as_str(),
                svc.namespace.as_str(),
                svc.path.as_deref(),
                svc.port
            ),
            (
                "isthmus-control",
                "istio-system",
                Some("/inject"),
                Some(443)
            )
        );
    }
    let ns = |name: &str, extra: &[(&str, &str)]| {
        let mut l = labels(extra);
        l.insert("kubernetes.io/metadata.name".into(), name.into());
        l
    };
    let plain = labels(&[("app", "reviews")]);
    let opt_in = labels(&[("app", "reviews"), ("sidecar.istio.io/inject", "true")]);
    let opt_out = labels(&[("app", "reviews"), ("sidecar.istio.io/inject", "false")]);
    let cases: Vec<Case<'_>> = vec![
        ("unlabelled namespace", ns("shop", &[]), &plain, vec![]),
        (
            "unlabelled namespace, pod opts in",
            ns("shop", &[]),
            &opt_in,
            vec!["object.sidecar-injector.isthmus.io"],
        ),
        (
            "isthmus-injection=enabled",
            ns("shop", &[("isthmus-injection", "enabled")]),
            &plain,
            vec!["namespace.sidecar-injector.isthmus.io"],
        ),
        (
            "istio-injection=enabled",
            ns("shop", &[("istio-injection", "enabled")]),
            &plain,
            vec!["istio-namespace.sidecar-injector.isthmus.io"],
        ),
        (
            "labelled namespace, pod opts out",
            ns("shop", &[("isthmus-injection", "enabled")]),
            &opt_out,
            vec![],
        ),
        (
            "isthmus disabled wins over istio enabled",
            ns(
                "shop",
                &[
                    ("isthmus-injection", "disabled"),
                    ("istio-injection", "enabled"),
                ],
            ),
            &opt_in,
            vec![],
        ),
        (
            "kube-system even if labelled",
            ns("kube-system", &[("isthmus-injection", "enabled")]),
            &opt_in,
            vec![],
        ),
        (
            "the control plane's namespace",
            ns("istio-system", &[("istio-injection", "enabled")]),
            &plain,
            vec![],
        ),
    ];
    for (what, ns_labels, pod_labels, want) in cases {
        assert_eq!(
            matching_webhooks(&hooks, &ns_labels, pod_labels),
            want,
            "{what}"
        );
    }
}
