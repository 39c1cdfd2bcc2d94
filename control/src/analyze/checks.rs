//! Checks across resources: references that point nowhere, duplicates and
//! conflicts. Each check reads the parsed documents and reports at the
//! field it is about.

mod authz;

use std::collections::{BTreeMap, BTreeSet};

use super::{Code, Diagnostic};
use crate::config::host::{
    host_matches, resolve_fqdn, resolve_gateway_ref, service_fqdn, GatewayRef,
};
use crate::config::{
    labels_match, Destination, DestinationRuleSpec, Kind, Object, Resource, ResourceKey,
    VirtualServiceSpec, DEFAULT_ROOT_NAMESPACE,
};
use crate::source::ParsedDocument;

/// An accepted resource with the document it came from.
struct Entry<'a> {
    doc: &'a ParsedDocument,
    resource: &'a Resource,
}

impl Entry<'_> {
    fn label(&self) -> Option<String> {
        Some(self.resource.key().to_string())
    }

    fn report(&self, out: &mut Vec<Diagnostic>, code: Code, path: &str, message: String) {
        out.push(Diagnostic::new(
            code,
            self.doc.locate(path),
            self.label(),
            message,
        ));
    }
}

pub fn run(docs: &[ParsedDocument]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let entries: Vec<Entry<'_>> = docs
        .iter()
        .filter_map(|doc| {
            doc.resource
                .as_deref()
                .map(|resource| Entry { doc, resource })
        })
        .collect();
    duplicates(docs, &mut out);
    let root_namespace = root_namespace(&entries);
    destinations(docs, &entries, &mut out);
    destination_rule_conflicts(&entries, &mut out);
    peer_authentication_conflicts(&entries, &root_namespace, &mut out);
    virtual_service_host_conflicts(&entries, &mut out);
    gateway_references(docs, &entries, &mut out);
    gateway_selectors(&entries, &mut out);
    authz::run(&entries, &root_namespace, &mut out);
    out
}

fn virtual_services<'a>(
    entries: &'a [Entry<'a>],
) -> impl Iterator<Item = (&'a Entry<'a>, &'a Object<VirtualServiceSpec>)> {
    entries.iter().filter_map(|e| match e.resource {
        Resource::VirtualService(o) => Some((e, o)),
        _ => None,
    })
}

fn destination_rules<'a>(
    entries: &'a [Entry<'a>],
) -> impl Iterator<Item = (&'a Entry<'a>, &'a Object<DestinationRuleSpec>)> {
    entries.iter().filter_map(|e| match e.resource {
        Resource::DestinationRule(o) => Some((e, o)),
        _ => None,
    })
}

/// Two documents with one kind/namespace/name (accepted or not), and more
/// than one MeshConfig per cluster.
fn duplicates(docs: &[ParsedDocument], out: &mut Vec<Diagnostic>) {
    let mut by_key: BTreeMap<&ResourceKey, Vec<&ParsedDocument>> = BTreeMap::new();
    for doc in docs {
        if let Some(key) = &doc.key {
            by_key.entry(key).or_default().push(doc);
        }
    }
    for (key, group) in &by_key {
        let Some((first, rest)) = group.split_first() else {
            continue;
        };
        for doc in rest {
            let note = if first.has_errors() {
                " (that document has errors)"
            } else {
                ""
            };
            out.push(Diagnostic::new(
                Code::DuplicateResource,
                doc.locate("metadata.name"),
                Some(key.to_string()),
                format!(
                    "{key} is defined more than once: first at {}{note}; only one definition can be in force, rename one or merge them",
                    first.location
                ),
            ));
        }
    }
    let meshes: Vec<&ParsedDocument> = docs
        .iter()
        .filter(|d| d.key.as_ref().is_some_and(|k| k.kind == Kind::MeshConfig))
        .collect();
    if let Some((first, rest)) = meshes.split_first() {
        for doc in rest {
            out.push(Diagnostic::new(
                Code::MultipleMeshConfigs,
                doc.locate("kind"),
                doc.key.as_ref().map(ToString::to_string),
                format!(
                    "a cluster has exactly one MeshConfig; another is at {}",
                    first.location
                ),
            ));
        }
    }
}

fn root_namespace(entries: &[Entry<'_>]) -> String {
    entries
        .iter()
        .find_map(|e| match e.resource {
            Resource::MeshConfig(o) => Some(o.spec.root_namespace().to_string()),
            _ => None,
        })
        .unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.to_string())
}

/// Every destination a VirtualService sends or mirrors traffic to, with
/// its field path.
fn vs_destinations(spec: &VirtualServiceSpec) -> Vec<(String, &Destination)> {
    let mut out = Vec::new();
    for (i, http) in spec.http.iter().enumerate() {
        for (j, r) in http.route.iter().enumerate() {
            out.push((
                format!("spec.http[{i}].route[{j}].destination"),
                &r.destination,
            ));
        }
        if let Some(m) = &http.mirror {
            out.push((format!("spec.http[{i}].mirror"), m));
        }
        for (j, m) in http.mirrors.iter().enumerate() {
            out.push((
                format!("spec.http[{i}].mirrors[{j}].destination"),
                &m.destination,
            ));
        }
    }
    for (i, tls) in spec.tls.iter().enumerate() {
        for (j, r) in tls.route.iter().enumerate() {
            out.push((
                format!("spec.tls[{i}].route[{j}].destination"),
                &r.destination,
            ));
        }
    }
    for (i, tcp) in spec.tcp.iter().enumerate() {
        for (j, r) in tcp.route.iter().enumerate() {
            out.push((
                format!("spec.tcp[{i}].route[{j}].destination"),
                &r.destination,
            ));
        }
    }
    out
}

/// Hosts that name a service: ServiceEntry hosts, and the
/// `name.ns.svc.cluster.local` of every ServiceImport and ServiceExport.
fn known_hosts(entries: &[Entry<'_>]) -> Vec<String> {
    let mut hosts = Vec::new();
    for e in entries {
        match e.resource {
            Resource::ServiceEntry(o) => {
                hosts.extend(o.spec.hosts.iter().map(|h| resolve_fqdn(h, o.namespace())));
            }
            Resource::ServiceImport(o) => hosts.push(service_fqdn(o.name(), o.namespace())),
            Resource::ServiceExport(o) => hosts.push(service_fqdn(o.name(), o.namespace())),
            _ => {}
        }
    }
    hosts
}

/// Hosts of unknown subsets and unknown services.
fn destinations(docs: &[ParsedDocument], entries: &[Entry<'_>], out: &mut Vec<Diagnostic>) {
    let known = known_hosts(entries);
    let rules: Vec<(String, &Entry<'_>, &Object<DestinationRuleSpec>)> = destination_rules(entries)
        .map(|(e, o)| (resolve_fqdn(&o.spec.host, o.namespace()), e, o))
        .collect();
    // A DestinationRule that was rejected still names its host; its
    // subsets are unknown, so do not pile findings on top of its errors.
    let broken_rule_hosts: BTreeSet<String> = docs
        .iter()
        .filter(|d| d.resource.is_none())
        .filter_map(|d| {
            let key = d.key.as_ref().filter(|k| k.kind == Kind::DestinationRule)?;
            Some(resolve_fqdn(
                d.positions.scalar("spec.host")?,
                &key.namespace,
            ))
        })
        .collect();
    for (entry, vs) in virtual_services(entries) {
        let mut unknown_reported = BTreeSet::new();
        for (path, dest) in vs_destinations(&vs.spec) {
            let host = resolve_fqdn(&dest.host, vs.namespace());
            if !known.iter().any(|k| host_matches(k, &host))
                && unknown_reported.insert(host.clone())
            {
                entry.report(
                    out,
                    Code::ReferencedHostNotFound,
                    &format!("{path}.host"),
                    format!(
                        "destination host {:?} ({host}) matches no ServiceEntry, ServiceImport or ServiceExport",
                        dest.host
                    ),
                );
            }
            let Some(subset) = &dest.subset else { continue };
            if broken_rule_hosts.iter().any(|h| host_matches(h, &host)) {
                continue;
            }
            let matching: Vec<_> = rules
                .iter()
                .filter(|(h, ..)| host_matches(h, &host))
                .collect();
            if matching.is_empty() {
                entry.report(
                    out,
                    Code::ReferencedSubsetNotFound,
                    &format!("{path}.subset"),
                    format!(
                        "subset {subset:?} of host {host} is referenced, but no DestinationRule for that host defines subsets"
                    ),
                );
            } else if !matching
                .iter()
                .any(|(_, _, dr)| dr.spec.subsets.iter().any(|s| &s.name == subset))
            {
                let defined: Vec<String> = matching
                    .iter()
                    .flat_map(|(_, _, dr)| dr.spec.subsets.iter().map(|s| s.name.clone()))
                    .collect();
                let rule_names: Vec<String> = matching
                    .iter()
                    .map(|(_, e, _)| format!("{} ({})", e.resource.key(), e.doc.location))
                    .collect();
                entry.report(
                    out,
                    Code::ReferencedSubsetNotFound,
                    &format!("{path}.subset"),
                    format!(
                        "subset {subset:?} of host {host} is not defined by {}; defined subsets: [{}]",
                        rule_names.join(", "),
                        defined.join(", ")
                    ),
                );
            }
        }
    }
}

fn destination_rule_conflicts(entries: &[Entry<'_>], out: &mut Vec<Diagnostic>) {
    let mut by_host: BTreeMap<String, Vec<&Entry<'_>>> = BTreeMap::new();
    for (e, dr) in destination_rules(entries) {
        if dr.spec.workload_selector.is_some() {
            continue;
        }
        by_host
            .entry(resolve_fqdn(&dr.spec.host, dr.namespace()))
            .or_default()
            .push(e);
    }
    for (host, group) in by_host {
        let Some((first, rest)) = group.split_first() else {
            continue;
        };
        for e in rest {
            e.report(
                out,
                Code::ConflictingDestinationRules,
                "spec.host",
                format!(
                    "host {host} already has {} at {}; DestinationRules for one host are not merged, so only one applies: combine their subsets and policies into one",
                    first.resource.key(),
                    first.doc.location
                ),
            );
        }
    }
}

fn peer_authentication_conflicts(entries: &[Entry<'_>], root_ns: &str, out: &mut Vec<Diagnostic>) {
    let mut by_ns: BTreeMap<&str, Vec<&Entry<'_>>> = BTreeMap::new();
    for e in entries {
        if let Resource::PeerAuthentication(pa) = e.resource {
            let selects = pa
                .spec
                .selector
                .as_ref()
                .is_some_and(|s| !s.match_labels.is_empty());
            if !selects {
                by_ns.entry(pa.namespace()).or_default().push(e);
            }
        }
    }
    for (ns, group) in by_ns {
        let Some((first, rest)) = group.split_first() else {
            continue;
        };
        let scope = if ns == root_ns {
            "mesh-wide".to_string()
        } else {
            format!("namespace-wide (namespace {ns})")
        };
        for e in rest {
            e.report(
                out,
                Code::ConflictingMeshWidePeerAuthentication,
                "metadata.name",
                format!(
                    "more than one {scope} PeerAuthentication (no selector): {} at {} already sets the policy; which one wins is undefined",
                    first.resource.key(),
                    first.doc.location
                ),
            );
        }
    }
}

/// The gateways a VirtualService applies to, resolved (`mesh` when none).
fn vs_gateways(vs: &Object<VirtualServiceSpec>) -> Vec<String> {
    if vs.spec.gateways.is_empty() {
        return vec!["mesh".to_string()];
    }
    vs.spec
        .gateways
        .iter()
        .map(|g| match resolve_gateway_ref(g, vs.namespace()) {
            GatewayRef::Mesh => "mesh".to_string(),
            GatewayRef::Gateway { namespace, name } => format!("{namespace}/{name}"),
        })
        .collect()
}

fn virtual_service_host_conflicts(entries: &[Entry<'_>], out: &mut Vec<Diagnostic>) {
    let mut claims: BTreeMap<(String, String), Vec<(&Entry<'_>, usize)>> = BTreeMap::new();
    for (e, vs) in virtual_services(entries) {
        for gw in vs_gateways(vs) {
            for (i, h) in vs.spec.hosts.iter().enumerate() {
                claims
                    .entry((resolve_fqdn(h, vs.namespace()), gw.clone()))
                    .or_default()
                    .push((e, i));
            }
        }
    }
    for ((host, gw), group) in claims {
        let Some(((first, _), rest)) = group.split_first() else {
            continue;
        };
        for (e, i) in rest {
            if std::ptr::eq(*e, *first) {
                continue;
            }
            e.report(
                out,
                Code::ConflictingVirtualServiceHosts,
                &format!("spec.hosts[{i}]"),
                format!(
                    "host {host} on gateway {gw} is also routed by {} at {}; VirtualServices for one host are not merged, only one takes effect",
                    first.resource.key(),
                    first.doc.location
                ),
            );
        }
    }
}

fn gateway_references(docs: &[ParsedDocument], entries: &[Entry<'_>], out: &mut Vec<Diagnostic>) {
    // Rejected Gateways count as existing: their errors are reported already.
    let gateways: BTreeSet<(String, String)> = docs
        .iter()
        .filter_map(|d| d.key.as_ref())
        .filter(|k| k.kind == Kind::Gateway)
        .map(|k| (k.namespace.clone(), k.name.clone()))
        .collect();
    for (e, vs) in virtual_services(entries) {
        let mut refs: Vec<(String, &String)> = vs
            .spec
            .gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("spec.gateways[{i}]"), g))
            .collect();
        for (i, http) in vs.spec.http.iter().enumerate() {
            for (j, m) in http.matches.iter().enumerate() {
                refs.extend(
                    m.gateways
                        .iter()
                        .enumerate()
                        .map(|(k, g)| (format!("spec.http[{i}].match[{j}].gateways[{k}]"), g)),
                );
            }
        }
        for (path, reference) in refs {
            if let GatewayRef::Gateway { namespace, name } =
                resolve_gateway_ref(reference, vs.namespace())
            {
                if !gateways.contains(&(namespace.clone(), name.clone())) {
                    e.report(
                        out,
                        Code::GatewayNotFound,
                        &path,
                        format!(
                            "gateway {reference:?} refers to Gateway {namespace}/{name}, which does not exist; routes bound to it are not served"
                        ),
                    );
                }
            }
        }
    }
}

fn gateway_selectors(entries: &[Entry<'_>], out: &mut Vec<Diagnostic>) {
    let mut workloads: Vec<&BTreeMap<String, String>> = Vec::new();
    for e in entries {
        match e.resource {
            Resource::WorkloadEntry(we) => workloads.push(&we.spec.labels),
            Resource::ServiceEntry(se) => {
                workloads.extend(se.spec.endpoints.iter().map(|ep| &ep.labels))
            }
            _ => {}
        }
    }
    for e in entries {
        let Resource::Gateway(gw) = e.resource else {
            continue;
        };
        if gw.spec.selector.is_empty() {
            continue;
        }
        if !workloads
            .iter()
            .any(|labels| labels_match(&gw.spec.selector, labels))
        {
            let selector: Vec<String> = gw
                .spec
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            e.report(
                out,
                Code::GatewaySelectorMatchesNothing,
                "spec.selector",
                format!(
                    "selector {{{}}} matches no gateway workload (no WorkloadEntry or ServiceEntry endpoint has these labels), so this Gateway configures nothing",
                    selector.join(", ")
                ),
            );
        }
    }
}
