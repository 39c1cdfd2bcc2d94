//! `isthmus install --apply`: server-side apply of the rendered objects with
//! field manager `isthmus`, in render order (CRDs before anything that uses
//! them). Kept thin on purpose: no API server can run in this repository's
//! tests, so everything worth testing happens in `render`.

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, Scope};

use super::{Doc, InstallError};

pub const FIELD_MANAGER: &str = "isthmus";

fn gvk(doc: &Doc) -> GroupVersionKind {
    let (group, version) = match doc.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", doc.api_version()),
    };
    GroupVersionKind::gvk(group, version, doc.kind())
}

/// Applies every document; a kind the API server does not serve yet (a CRD
/// just created) is looked up again for up to 30 s before giving up.
pub async fn apply(
    client: kube::Client,
    docs: &[Doc],
    force: bool,
    mut progress: impl FnMut(&str),
) -> Result<(), InstallError> {
    let mut params = PatchParams::apply(FIELD_MANAGER);
    if force {
        params = params.force();
    }
    for doc in docs {
        let failed = |reason: String| InstallError::Apply {
            object: doc.describe(),
            reason,
        };
        let gvk = gvk(doc);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (resource, caps) = loop {
            match pinned_kind(&client, &gvk).await {
                Ok(found) => break found,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(kind = %doc.kind(), error = %e, "kind not served yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    return Err(failed(format!(
                        "the API server does not serve {}/{} ({e}); are its CRDs installed?",
                        gvk.api_version(),
                        gvk.kind
                    )))
                }
            }
        };
        let api: Api<DynamicObject> = match (caps.scope, doc.namespace()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            (Scope::Namespaced, None) => {
                return Err(failed(
                    "a namespaced object without metadata.namespace".into(),
                ))
            }
            (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        api.patch(doc.name(), &params, &Patch::Apply(&doc.value))
            .await
            .map_err(|e| failed(e.to_string()))?;
        progress(&doc.describe());
    }
    Ok(())
}
