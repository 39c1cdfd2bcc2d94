//! A cluster's ingress gateway (`isthmus gateway --role ingress` on
//! `Block::ingress_ip`), selected by Istio `Gateway` resources with
//! `istio: ingressgateway` (deploy/examples/us-west/ingress.yaml).

use std::path::Path;

use crate::cluster::{Cluster, Launch};
use crate::error::{io, HarnessError};
use crate::process::Spec;
use crate::spec::{Block, ClusterSpec};

pub const NAMESPACE: &str = "istio-system";
pub const SERVICE_ACCOUNT: &str = "isthmus-ingressgateway";
/// The selector label of the gateway process, as in Istio's charts.
pub const SELECTOR: (&str, &str) = ("istio", "ingressgateway");

fn token_file(dir: &Path) -> std::path::PathBuf {
    dir.join("token-ingress")
}

/// Adds the ingress gateway's bootstrap token to the cluster's token file
/// (written before the control plane starts, which reads it).
pub fn write_token(dir: &Path, spec: &ClusterSpec, secret: &str) -> Result<(), HarnessError> {
    let token = format!("{}-{SERVICE_ACCOUNT}-{secret}", spec.name);
    let tokens = dir.join("tokens");
    let mut all = std::fs::read_to_string(&tokens).map_err(io("cannot read", tokens.clone()))?;
    all.push_str(&format!("{token} {NAMESPACE}/{SERVICE_ACCOUNT}\n"));
    std::fs::write(&tokens, all).map_err(io("cannot write", tokens.clone()))?;
    let own = token_file(dir);
    std::fs::write(&own, token).map_err(io("cannot write", own.clone()))
}

impl Cluster {
    pub(crate) fn ingress_spec(spec: &ClusterSpec, block: Block, dir: &Path, l: &Launch) -> Spec {
        Spec::new(
            format!("{}-ingress", spec.name),
            &l.binary,
            &Cluster::log_dir(dir),
        )
        .arg("--log")
        .arg(&l.log_filter)
        .args(["gateway", "--role", "ingress", "--xds"])
        .arg(format!("http://{}", block.plaintext_xds()))
        .arg("--ca")
        .arg(block.grpc().to_string())
        .arg("--root-cert")
        .arg(&l.root_cert)
        .arg("--token-file")
        .arg(token_file(dir))
        .arg("--trust-domain")
        .arg(&l.trust_domain)
        .arg("--ip")
        .arg(block.ingress_ip().to_string())
        .arg("--pod")
        .arg("isthmus-ingressgateway")
        .arg("--namespace")
        .arg(NAMESPACE)
        .arg("--service-account")
        .arg(SERVICE_ACCOUNT)
        .arg("--cluster-id")
        .arg(&spec.name)
        .arg("--network")
        .arg(&spec.network)
        .arg("--locality")
        .arg(format!("{}/{}", spec.region, spec.zone))
        .arg("--label")
        .arg(format!("{}={}", SELECTOR.0, SELECTOR.1))
        .arg("--admin")
        .arg(block.ingress_admin().to_string())
        .arg("--drain-time")
        .arg("1s")
    }
}
