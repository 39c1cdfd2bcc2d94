//! Tells the owners of unusable custom resources, where they look: a
//! Warning Event on the object (`kubectl describe` shows it).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tokio::sync::mpsc;

use super::state::BadObject;
use super::watch::{Watched, CUSTOM_TYPES};

/// Event notes are limited to 1 KiB by the API server.
const MAX_NOTE: usize = 1000;

pub async fn report(client: Client, controller: String, mut rx: mpsc::Receiver<BadObject>) {
    let reporter = Reporter {
        controller,
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client, reporter);
    while let Some(bad) = rx.recv().await {
        let Watched::Custom(i) = bad.source else {
            continue;
        };
        let Some(t) = CUSTOM_TYPES.get(i) else {
            continue;
        };
        let reference = ObjectReference {
            api_version: Some(t.api_version()),
            kind: Some(t.kind.name().to_string()),
            name: Some(bad.name.clone()),
            namespace: Some(bad.namespace.clone()),
            uid: bad.uid.clone(),
            resource_version: bad.resource_version.clone(),
            ..ObjectReference::default()
        };
        let mut note = bad.message.clone();
        if note.len() > MAX_NOTE {
            let mut cut = MAX_NOTE;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidConfiguration".into(),
            note: Some(note),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(object = %format!("{} {}/{}", t.kind, bad.namespace, bad.name), error = %e, "cannot post a Kubernetes Event about an invalid object (RBAC: create events.events.k8s.io)");
        }
    }
}
