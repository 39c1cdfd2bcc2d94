//! Keeps the injector's MutatingWebhookConfiguration trusting the webhook's
//! serving certificate: `isthmus install` renders no `caBundle` (a static
//! one goes stale on the first root rotation), so the control plane owns
//! that one field of every webhook, by server-side apply with field manager
//! `isthmus`, as istiod's webhook controller does.
//!
//! The task watches the configuration itself (by name), so a configuration
//! that is (re)created by `kubectl apply`, or whose bundle someone edits,
//! is corrected within one watch event; a new bundle (a root rotation) is
//! applied as soon as it is sent. A failed apply is retried with backoff
//! and never stops the control plane: the webhook's `failurePolicy:
//! Ignore` means pods start uninjected until it succeeds.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::source::kube::FIELD_MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("cannot apply the caBundle of MutatingWebhookConfiguration {name}: {source} (check that it exists and that the control plane may patch it: RBAC mutatingwebhookconfigurations get/list/watch/patch)")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The `caBundle` every webhook of `current` should carry, or `None` when
/// they all carry it already. Webhooks are keyed by name (a list-map in
/// the API), so the apply names each one and sets only its bundle.
pub fn desired_patch(current: &MutatingWebhookConfiguration, ca_pem: &str) -> Option<Value> {
    let name = current.metadata.name.as_deref()?;
    let webhooks = current.webhooks.as_deref().unwrap_or_default();
    let stale = webhooks.iter().any(|w| {
        w.client_config
            .ca_bundle
            .as_ref()
            .is_none_or(|b| b.0 != ca_pem.as_bytes())
    });
    if webhooks.is_empty() || !stale {
        return None;
    }
    let encoded = STANDARD.encode(ca_pem.as_bytes());
    Some(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": webhooks
            .iter()
            .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": encoded}}))
            .collect::<Vec<_>>(),
    }))
}

/// Applies the bundle once to the configuration `name` as it is now; true
/// when something was written.
pub async fn apply_once(client: &Client, name: &str, ca_pem: &str) -> Result<bool, CaBundleError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let err = |source| CaBundleError::Apply {
        name: name.to_string(),
        source,
    };
    let current = api.get(name).await.map_err(err)?;
    apply_to(&api, &current, ca_pem).await.map_err(err)
}

async fn apply_to(
    api: &Api<MutatingWebhookConfiguration>,
    current: &MutatingWebhookConfiguration,
    ca_pem: &str,
) -> Result<bool, kube::Error> {
    let (Some(patch), Some(name)) = (
        desired_patch(current, ca_pem),
        current.metadata.name.as_deref(),
    ) else {
        return Ok(false);
    };
    // force: the field may have been set by hand or by an older install;
    // this controller is its owner from now on.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(&patch)).await?;
    Ok(true)
}

/// Keeps `name`'s webhooks trusting `bundle` (PEM) until the task is
/// aborted. Runs forever; every failure is logged and retried.
pub async fn run(client: Client, name: String, mut bundle: watch::Receiver<String>) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), config).default_backoff().boxed();
    // The last version seen of the configuration, by name (at most one).
    let mut seen: BTreeMap<String, MutatingWebhookConfiguration> = BTreeMap::new();
    let mut bundle_open = true;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => {
                    seen.insert(o.metadata.name.clone().unwrap_or_default(), o);
                }
                Some(Ok(watcher::Event::Delete(o))) => {
                    seen.remove(o.metadata.name.as_deref().unwrap_or_default());
                    continue;
                }
                Some(Ok(watcher::Event::Init)) => {
                    // A relist: what it does not list again is gone.
                    seen.clear();
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => continue,
                Some(Err(e)) => {
                    warn!(webhook = %name, error = %e, "watching the injector's MutatingWebhookConfiguration failed; retrying with backoff");
                    continue;
                }
                None => return,
            },
            changed = bundle.changed(), if bundle_open => {
                if changed.is_err() {
                    // No new bundles will come; keep the last one applied.
                    bundle_open = false;
                    continue;
                }
            }
            () = retry => {}
        }
        retry_at = None;
        let pem = bundle.borrow().clone();
        for current in seen.values() {
            match apply_to(&api, current, &pem).await {
                Ok(true) => info!(webhook = %name, "applied the injection webhook's caBundle"),
                Ok(false) => debug!(webhook = %name, "the injection webhook's caBundle is current"),
                Err(source) => {
                    let e = CaBundleError::Apply {
                        name: name.clone(),
                        source,
                    };
                    warn!(error = %e, "retrying in 5s");
                    retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;
    use k8s_openapi::ByteString;

    fn config(bundles: &[Option<&str>]) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: kube::api::ObjectMeta {
                name: Some("isthmus-sidecar-injector".into()),
                ..Default::default()
            },
            webhooks: Some(
                bundles
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let mut w = MutatingWebhook {
                            name: format!("w{i}.isthmus.io"),
                            ..Default::default()
                        };
                        w.client_config.ca_bundle = b.map(|b| ByteString(b.as_bytes().to_vec()));
                        w
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn patches_every_webhook_by_name_when_any_is_stale() {
        let patch = desired_patch(&config(&[None, Some("PEM")]), "PEM").unwrap();
        let hooks = patch["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0]["name"], "w0.isthmus.io");
        assert_eq!(hooks[1]["clientConfig"]["caBundle"], STANDARD.encode("PEM"));
        assert_eq!(
            patch["metadata"],
            json!({"name": "isthmus-sidecar-injector"})
        );
        // Only the bundle: every other field stays with its owner.
        assert_eq!(hooks[0].as_object().unwrap().len(), 2);
    }

    #[test]
    fn nothing_to_do_when_current() {
        assert!(desired_patch(&config(&[Some("PEM"), Some("PEM")]), "PEM").is_none());
        assert!(desired_patch(&config(&[]), "PEM").is_none());
        assert!(desired_patch(&config(&[Some("OLD")]), "PEM").is_some());
    }
}
