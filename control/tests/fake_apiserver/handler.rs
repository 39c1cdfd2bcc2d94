//! Request handling of the fake API server: routing, list pages, watch
//! streams, writes and TokenReview.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::{gv_key, ndjson, status_json, Inner, Logged, Subscriber};

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(v).unwrap())).boxed())
        .unwrap()
}

fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap(),
        &status_json(code, reason, message),
    )
}

/// What a path names.
struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let t = |res: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        collection: gv_key(&gv, res),
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
    };
    Some(match rest {
        [res] => t(res, None, None, None),
        ["namespaces", ns, res] => t(res, Some(ns), None, None),
        ["namespaces", ns, res, name] => t(res, Some(ns), Some(name), None),
        ["namespaces", ns, res, name, sub] => t(res, Some(ns), Some(name), Some(sub)),
        [res, name] => t(res, None, Some(name), None),
        [res, name, sub] => t(res, None, Some(name), Some(sub)),
        _ => return None,
    })
}

/// The name a `fieldSelector=metadata.name=NAME` asks for (the only field
/// selector the fake understands; anything else is a test bug).
pub(super) fn field_name(query: &HashMap<String, String>) -> Option<String> {
    let selector = query.get("fieldSelector").filter(|s| !s.is_empty())?;
    let name = selector.strip_prefix("metadata.name=").unwrap_or_else(|| {
        panic!("the fake supports only fieldSelector=metadata.name=NAME, got {selector}")
    });
    Some(name.to_string())
}

fn labels_match(selector: &str, object: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        object["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// Objects merge key by key; anything else (arrays included) is replaced;
/// `null` removes (JSON merge patch).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Server-side apply of a MutatingWebhookConfiguration's `webhooks`, a
/// list-map keyed by `name`: each applied item merges into the item of the
/// same name, so an applier owning one field (the caBundle) leaves the
/// others' fields alone. (Other lists are replaced, which is what the
/// fake's other appliers need: they re-apply whole items they own.)
fn apply_webhooks(target: &mut Value, patch: &mut Value) {
    let (Some(existing), Some(applied)) = (
        target.get_mut("webhooks").and_then(Value::as_array_mut),
        patch.as_object_mut().and_then(|p| p.remove("webhooks")),
    ) else {
        return;
    };
    for item in applied.as_array().into_iter().flatten() {
        match existing.iter_mut().find(|e| e["name"] == item["name"]) {
            Some(e) => merge(e, item),
            None => existing.push(item.clone()),
        }
    }
}

pub(super) async fn handle(
    state: Arc<Mutex<Inner>>,
    mut hold: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Option<Value> = if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    state.lock().unwrap().log.push(Logged {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
    });
    let Some(target) = parse_path(&path) else {
        return error(404, "NotFound", &format!("no route for {path}"));
    };
    if target.collection == "authentication.k8s.io/v1/tokenreviews" && method == Method::POST {
        return token_review(&state, body.unwrap_or(Value::Null));
    }
    if state.lock().unwrap().forbidden.contains(&target.collection) {
        return error(
            403,
            "Forbidden",
            &format!("{} is forbidden: RBAC denies it", target.collection),
        );
    }
    if !state
        .lock()
        .unwrap()
        .collections
        .contains_key(&target.collection)
    {
        return error(
            404,
            "NotFound",
            &format!(
                "the server could not find the requested resource ({})",
                target.collection
            ),
        );
    }
    match (method, target.name.is_some()) {
        (Method::GET, false) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch_response(&state, &target, &query)
        }
        (Method::GET, false) => {
            if query.contains_key("continue") && *hold.borrow() {
                state.lock().unwrap().held_pages += 1;
                let _ = hold.wait_for(|h| !*h).await;
                state.lock().unwrap().held_pages -= 1;
            }
            list_response(&state, &target, &query)
        }
        (Method::GET, true) => {
            let inner = state.lock().unwrap();
            let coll = &inner.collections[&target.collection];
            let key = (
                target.namespace.clone().unwrap_or_default(),
                target.name.clone().unwrap_or_default(),
            );
            match coll.objects.get(&key) {
                Some(o) => full(StatusCode::OK, o),
                None => error(404, "NotFound", "not found"),
            }
        }
        (Method::POST, false) => {
            let mut object = body.unwrap_or(Value::Null);
            let mut inner = state.lock().unwrap();
            let (av, kind) = {
                let c = &inner.collections[&target.collection];
                (c.api_version.clone(), c.kind.clone())
            };
            object["apiVersion"] = json!(av);
            object["kind"] = json!(kind);
            if let Some(ns) = &target.namespace {
                object["metadata"]["namespace"] = json!(ns);
            }
            if object["metadata"]["name"].as_str().unwrap_or("").is_empty() {
                let prefix = object["metadata"]["generateName"]
                    .as_str()
                    .unwrap_or("obj-")
                    .to_string();
                object["metadata"]["name"] = json!(format!("{prefix}{}", inner.rv + 1));
            }
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if inner.collections[&target.collection]
                .objects
                .contains_key(&(ns, name))
            {
                return error(409, "AlreadyExists", "already exists");
            }
            inner.put(object.clone());
            let stored = inner.collections[&target.collection]
                .objects
                .values()
                .find(|o| o["metadata"]["name"] == object["metadata"]["name"])
                .cloned()
                .unwrap_or(object);
            full(StatusCode::CREATED, &stored)
        }
        (Method::PATCH, true) => {
            let patch = body.unwrap_or(Value::Null);
            let apply = content_type
                .as_deref()
                .is_some_and(|c| c.contains("apply-patch"));
            let mut inner = state.lock().unwrap();
            let (av, kind) = {
                let c = &inner.collections[&target.collection];
                (c.api_version.clone(), c.kind.clone())
            };
            let key = (
                target.namespace.clone().unwrap_or_default(),
                target.name.clone().unwrap_or_default(),
            );
            let existing = inner.collections[&target.collection]
                .objects
                .get(&key)
                .cloned();
            let mut object = match (existing, apply, target.subresource.as_deref()) {
                (Some(o), _, _) => o,
                (None, true, None) => json!({"apiVersion": av, "kind": kind,
                    "metadata": {"name": key.1, "namespace": key.0}}),
                (None, _, _) => return error(404, "NotFound", "not found"),
            };
            let mut patch = patch;
            if target.subresource.as_deref() == Some("status") {
                // Only status changes through the status subresource.
                patch = json!({"status": patch["status"].clone()});
            } else if let Some(obj) = patch.as_object_mut() {
                obj.remove("status");
            }
            if apply && kind == "MutatingWebhookConfiguration" {
                apply_webhooks(&mut object, &mut patch);
            }
            merge(&mut object, &patch);
            object["apiVersion"] = json!(av);
            object["kind"] = json!(kind);
            inner.put(object.clone());
            let stored = inner.collections[&target.collection].objects[&key].clone();
            full(StatusCode::OK, &stored)
        }
        (Method::DELETE, true) => {
            let mut inner = state.lock().unwrap();
            let (av, kind) = {
                let c = &inner.collections[&target.collection];
                (c.api_version.clone(), c.kind.clone())
            };
            let ns = target.namespace.clone().unwrap_or_default();
            let name = target.name.clone().unwrap_or_default();
            if inner.delete(&av, &kind, &ns, &name) {
                full(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
                )
            } else {
                error(404, "NotFound", "not found")
            }
        }
        _ => error(405, "MethodNotAllowed", "method not allowed"),
    }
}

fn list_response(
    state: &Arc<Mutex<Inner>>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let mut inner = state.lock().unwrap();
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let (rv, items) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match inner.continues.remove(token) {
            Some(v) => v,
            None => return error(410, "Expired", "the provided continue parameter is too old"),
        },
        None => {
            let coll = &inner.collections[&target.collection];
            let selector = query.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = coll
                .objects
                .iter()
                .filter(|((ns, _), _)| target.namespace.as_ref().is_none_or(|n| n == ns))
                .filter(|(_, o)| labels_match(&selector, o))
                .filter(|(_, o)| field_name(query).is_none_or(|n| o["metadata"]["name"] == n))
                .map(|(_, o)| o.clone())
                .collect();
            (inner.rv, items)
        }
    };
    let (page, rest) = if limit > 0 && items.len() > limit {
        (items[..limit].to_vec(), items[limit..].to_vec())
    } else {
        (items, Vec::new())
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if !rest.is_empty() {
        inner.next_continue += 1;
        let token = format!("c{}", inner.next_continue);
        inner.continues.insert(token.clone(), (rv, rest));
        metadata["continue"] = json!(token);
    }
    let coll = &inner.collections[&target.collection];
    full(
        StatusCode::OK,
        &json!({"apiVersion": coll.api_version, "kind": format!("{}List", coll.kind),
                "metadata": metadata, "items": page}),
    )
}

fn watch_response(
    state: &Arc<Mutex<Inner>>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let mut inner = state.lock().unwrap();
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(inner.rv);
    let (tx, rx) = mpsc::unbounded_channel();
    if from < inner.compacted {
        let _ = tx.send(ndjson(&json!({"type": "ERROR", "object": status_json(
            410, "Expired", &format!("too old resource version: {from} ({})", inner.compacted))})));
        drop(tx);
    } else {
        let coll = &inner.collections[&target.collection];
        for (rv, kind, object) in &coll.events {
            let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
            let named = field_name(query).is_none_or(|n| object["metadata"]["name"] == n);
            if *rv > from && named && target.namespace.as_deref().is_none_or(|n| n == ns) {
                let _ = tx.send(ndjson(&json!({"type": kind, "object": object})));
            }
        }
        inner.subscribers.push(Subscriber {
            collection: target.collection.clone(),
            namespace: target.namespace.clone(),
            bookmarks: query
                .get("allowWatchBookmarks")
                .is_some_and(|b| b == "true"),
            name: field_name(query),
            tx,
        });
    }
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn token_review(state: &Arc<Mutex<Inner>>, body: Value) -> Response<Body> {
    let inner = state.lock().unwrap();
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let status = match inner.tokens.get(token) {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some((user, audiences)) => {
            let common: Vec<&String> = audiences.iter().filter(|a| wanted.contains(a)).collect();
            if !wanted.is_empty() && common.is_empty() {
                json!({"authenticated": false, "error": "token audiences are invalid"})
            } else {
                json!({"authenticated": true, "user": {"username": user, "groups": ["system:serviceaccounts"]},
                       "audiences": common})
            }
        }
    };
    full(
        StatusCode::CREATED,
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "metadata": {}, "spec": body["spec"], "status": status}),
    )
}
