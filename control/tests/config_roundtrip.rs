//! Every kind reads from YAML and writes back to the same document.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use isthmus_control::analyze::Code;
use isthmus_control::config::{Kind, Resource};
use isthmus_control::source::parse_text;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn docs_of(text: &str) -> Vec<String> {
    text.split("\n---\n").map(str::to_string).collect()
}

#[test]
fn every_kind_round_trips_without_losing_fields() {
    let dir = fixture("roundtrip");
    let mut kinds = BTreeSet::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = parse_text(&path, &text);
        let originals = docs_of(&text);
        assert_eq!(parsed.len(), originals.len(), "{}", path.display());
        for (doc, original) in parsed.iter().zip(originals) {
            assert!(
                doc.diagnostics.is_empty(),
                "{}: unexpected findings {:#?}",
                path.display(),
                doc.diagnostics
            );
            let resource = doc.resource.as_ref().expect("accepted");
            kinds.insert(resource.kind());

            // Typed round trip: write, read back, compare.
            let yaml = resource.to_yaml().unwrap();
            let again = Resource::from_yaml(resource.kind(), &yaml)
                .unwrap_or_else(|e| panic!("{}: re-reading failed: {e}\n{yaml}", path.display()));
            assert_eq!(**resource, again, "{}", path.display());

            // Nothing dropped or altered: the written document equals the
            // original as YAML values (field order and comments aside).
            let want: serde_yaml_ng::Value = serde_yaml_ng::from_str(&original).unwrap();
            let got: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
            assert_eq!(
                want,
                got,
                "{}: written form differs:\n{yaml}",
                path.display()
            );
        }
    }
    let missing: Vec<_> = Kind::ALL.iter().filter(|k| !kinds.contains(k)).collect();
    assert!(missing.is_empty(), "no round-trip fixture for {missing:?}");
}

#[test]
fn all_accepted_api_versions_load() {
    for kind in Kind::ALL {
        for version in kind.versions() {
            let spec = match kind {
                Kind::MeshConfig => "spec:\n  clusterId: east\n",
                Kind::VirtualService => "spec:\n  hosts: [a]\n  http:\n  - route:\n    - destination:\n        host: a\n",
                Kind::DestinationRule => "spec:\n  host: a\n",
                Kind::Gateway => "spec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n",
                Kind::ServiceEntry => "spec:\n  hosts: [a.example.com]\n",
                Kind::WorkloadEntry => "spec:\n  address: 10.0.0.1\n",
                _ => "",
            };
            let text = format!(
                "apiVersion: {}/{version}\nkind: {}\nmetadata:\n  name: x\n{spec}",
                kind.group(),
                kind.name()
            );
            let docs = parse_text(Path::new("mem.yaml"), &text);
            assert!(
                docs[0].resource.is_some(),
                "{kind} at {version}: {:#?}",
                docs[0].diagnostics
            );
            let r = docs[0].resource.as_ref().unwrap();
            // Istio's default: no namespace means `default`.
            assert_eq!(r.namespace(), "default");
            assert_eq!(r.api_version(), format!("{}/{version}", kind.group()));
        }
    }
}

/// (kind header, body with one unknown field, the unknown field's name)
const UNKNOWN_FIELD_CASES: &[(&str, &str, &str)] = &[
    (
        "networking.istio.io/v1\nkind: VirtualService",
        "spec:\n  hosts: [a]\n  http:\n  - route:\n    - destination:\n        host: a\n        subnet: v1\n",
        "subnet",
    ),
    (
        "networking.istio.io/v1\nkind: DestinationRule",
        "spec:\n  host: a\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnection: 3\n",
        "maxConnection",
    ),
    (
        "networking.istio.io/v1\nkind: Gateway",
        "spec:\n  selectors:\n    istio: ingress\n",
        "selectors",
    ),
    (
        "networking.istio.io/v1\nkind: ServiceEntry",
        "spec:\n  hosts: [a.example.com]\n  port:\n  - number: 80\n",
        "port",
    ),
    (
        "networking.istio.io/v1\nkind: WorkloadEntry",
        "spec:\n  address: 10.0.0.1\n  label:\n    app: a\n",
        "label",
    ),
    (
        "networking.istio.io/v1\nkind: Sidecar",
        "spec:\n  egress:\n  - hosts: ['./*']\n    captureMod: NONE\n",
        "captureMod",
    ),
    (
        "security.istio.io/v1\nkind: PeerAuthentication",
        "spec:\n  mtls:\n    mod: STRICT\n",
        "mod",
    ),
    (
        "security.istio.io/v1\nkind: AuthorizationPolicy",
        "spec:\n  rules:\n  - from:\n    - source:\n        principal: [a]\n",
        "principal",
    ),
    (
        "security.istio.io/v1\nkind: RequestAuthentication",
        "spec:\n  jwtRules:\n  - issuer: a\n    jwks_uri: https://a/jwks\n",
        "jwks_uri",
    ),
    (
        "multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport",
        "spec:\n  ports: []\n",
        "ports",
    ),
    (
        "multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport",
        "spec:\n  type: ClusterSetIP\n  clusterIP: 10.0.0.1\n",
        "clusterIP",
    ),
    (
        "isthmus.io/v1alpha1\nkind: MeshConfig",
        "spec:\n  clusterId: east\n  federation:\n    peer:\n    - id: west\n",
        "peer",
    ),
    (
        "networking.istio.io/v1\nkind: VirtualService",
        "spec:\n  hosts: [a]\nstatus2: {}\n",
        "status2",
    ),
    (
        "networking.istio.io/v1\nkind: VirtualService",
        "spec:\n  hosts: [a]\n",
        "labelz",
    ),
];

#[test]
fn unknown_fields_are_errors_with_their_position() {
    for (header, body, field) in UNKNOWN_FIELD_CASES {
        // A leading document checks that positions are file-relative.
        let mut text = String::from("apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: other\n---\n");
        text.push_str(&format!("apiVersion: {header}\nmetadata:\n  name: x\n"));
        if *field == "labelz" {
            text.push_str("  labelz:\n    a: b\n");
        }
        text.push_str(body);
        let docs = parse_text(Path::new("cfg/x.yaml"), &text);
        assert_eq!(docs.len(), 2);
        assert!(docs[0].resource.is_some());
        let doc = &docs[1];
        assert!(doc.resource.is_none(), "{field}: must be rejected");
        let d = doc
            .diagnostics
            .iter()
            .find(|d| d.code == Code::UnknownField)
            .unwrap_or_else(|| {
                panic!(
                    "{field}: no unknown-field finding in {:#?}",
                    doc.diagnostics
                )
            });
        assert!(d.message.contains(&format!("`{field}`")), "{}", d.message);
        let (want_line, want_col) = text
            .lines()
            .enumerate()
            .find_map(|(i, l)| {
                let t = l.trim_start().trim_start_matches("- ");
                t.starts_with(&format!("{field}:"))
                    .then(|| (i + 1, l.len() - t.len() + 1))
            })
            .unwrap();
        assert_eq!(
            (d.location.line, d.location.column),
            (want_line, want_col),
            "{field}: {d}\n{text}"
        );
        assert_eq!(d.location.file.as_path(), Path::new("cfg/x.yaml"));
    }
}
