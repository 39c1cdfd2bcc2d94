use super::*;
use serde_json::json;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn node(rv: &str, zone: &str, heartbeat: &str) -> Obj {
    Obj::Node(Arc::new(obj(json!({
        "metadata": {"name": "n1", "resourceVersion": rv,
            "labels": {"topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": zone}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]}
    }))))
}

fn pod(rv: &str, phase_note: &str) -> Obj {
    Obj::Pod(Arc::new(obj(json!({
        "metadata": {"name": "p1", "namespace": "a", "resourceVersion": rv, "labels": {"app": "x"}},
        "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": []},
        "status": {"phase": "Running", "message": phase_note}
    }))))
}

fn slice(rv: &str, ready: bool) -> Obj {
    Obj::Slice(Arc::new(obj(json!({
        "metadata": {"name": "x-1", "namespace": "a", "resourceVersion": rv,
            "labels": {"kubernetes.io/service-name": "x"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready},
            "targetRef": {"kind": "Pod", "name": "p1", "namespace": "a"}}]
    }))))
}

fn service(rv: &str) -> Obj {
    Obj::Service(Arc::new(obj(json!({
        "metadata": {"name": "x", "namespace": "a", "resourceVersion": rv},
        "spec": {"selector": {"app": "x"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))))
}

fn listed(state: &mut KubeState, source: Watched, objects: Vec<Obj>) {
    state.apply(Update {
        source,
        event: Ev::Init,
    });
    for o in objects {
        state.apply(Update {
            source,
            event: Ev::InitApply(o),
        });
    }
    state.apply(Update {
        source,
        event: Ev::InitDone,
    });
}

fn applied(state: &mut KubeState, source: Watched, o: Obj) {
    state.apply(Update {
        source,
        event: Ev::Apply(o),
    });
}

fn synced_state() -> KubeState {
    let mut state = KubeState::new();
    for w in Watched::all() {
        listed(&mut state, w, Vec::new());
    }
    listed(
        &mut state,
        Watched::Node,
        vec![node("1", "z1", "2026-11-29T10:00:00Z")],
    );
    listed(&mut state, Watched::Service, vec![service("2")]);
    listed(&mut state, Watched::Pod, vec![pod("3", "")]);
    listed(&mut state, Watched::EndpointSlice, vec![slice("4", true)]);
    assert!(state.synced());
    assert!(state.flush());
    state
}

fn workload(state: &KubeState) -> Option<crate::config::WorkloadEntrySpec> {
    state
        .layer()
        .0
        .values()
        .find_map(|s| match s.resource.as_ref() {
            Resource::WorkloadEntry(w) => Some(w.spec.clone()),
            _ => None,
        })
}

#[test]
fn changes_nothing_reads_do_not_count_as_changes() {
    let mut state = synced_state();
    assert_eq!(workload(&state).unwrap().locality.as_deref(), Some("r/z1"));
    // Node heartbeats and pod status churn change nothing the mesh reads.
    applied(
        &mut state,
        Watched::Node,
        node("10", "z1", "2026-11-29T10:00:10Z"),
    );
    applied(&mut state, Watched::Pod, pod("11", "still running"));
    assert!(!state.flush());
    // A topology change does.
    applied(
        &mut state,
        Watched::Node,
        node("12", "z2", "2026-11-29T10:00:20Z"),
    );
    assert!(state.flush());
    assert_eq!(workload(&state).unwrap().locality.as_deref(), Some("r/z2"));
}

#[test]
fn an_endpoint_change_recomputes_only_its_pods() {
    let mut state = synced_state();
    applied(&mut state, Watched::EndpointSlice, slice("20", false));
    assert_eq!(state.dirty_pods.len(), 1);
    assert!(
        state.dirty_services.is_empty(),
        "pod-backed endpoints are not the Service's business"
    );
    assert!(state.flush());
    assert!(workload(&state).is_none());
}

#[test]
fn a_relist_replaces_the_set_only_when_done() {
    let mut state = synced_state();
    let before = state.layer().0;
    state.apply(Update {
        source: Watched::Pod,
        event: Ev::Init,
    });
    // Nothing listed yet: the buffered relist does not touch the state.
    assert!(!state.flush());
    assert_eq!(state.layer().0, before);
    state.apply(Update {
        source: Watched::Pod,
        event: Ev::InitDone,
    });
    // The relist came back without the pod: it was deleted meanwhile.
    assert!(state.flush());
    assert!(workload(&state).is_none());
}

#[test]
fn optional_types_that_are_not_served_count_as_synced() {
    let mut state = KubeState::new();
    for w in Watched::all().into_iter().filter(|w| !w.optional()) {
        listed(&mut state, w, Vec::new());
    }
    assert!(!state.synced());
    for w in Watched::all().into_iter().filter(|w| w.optional()) {
        state.apply(Update {
            source: w,
            event: Ev::Failed {
                not_found: true,
                message: "404".into(),
            },
        });
    }
    assert!(state.synced());
    // A core type that is not served is a real problem, never "empty".
    let mut state = KubeState::new();
    state.apply(Update {
        source: Watched::Pod,
        event: Ev::Failed {
            not_found: true,
            message: "404".into(),
        },
    });
    assert!(state
        .unsynced()
        .iter()
        .any(|(w, e)| *w == Watched::Pod && e.is_some()));
}
