//! `isthmus status` and `isthmus proxy-config`: what a control plane's
//! admin port says, the way `istioctl proxy-status` and `istioctl
//! proxy-config` show it.

use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use isthmus_control::app::admin::views::{DumpedResource, StatusView};

/// `-o` for both commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The control plane's admin address.
    #[arg(long, default_value = "http://127.0.0.1:15014")]
    pub admin: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigType {
    Clusters,
    Endpoints,
    Listeners,
    Routes,
    Secrets,
}

impl ConfigType {
    fn as_str(self) -> &'static str {
        match self {
            ConfigType::Clusters => "clusters",
            ConfigType::Endpoints => "endpoints",
            ConfigType::Listeners => "listeners",
            ConfigType::Routes => "routes",
            ConfigType::Secrets => "secrets",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ProxyConfigArgs {
    /// The proxy's xDS node id, as `isthmus status` lists it.
    pub node_id: String,
    #[arg(value_enum)]
    pub kind: ConfigType,
    #[arg(long, default_value = "http://127.0.0.1:15014")]
    pub admin: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("`{url}` is not a valid admin URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the control plane's admin port at {url}: {source}; is `isthmus control` running, and is --admin its --admin-addr?")]
    Connect {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error(
        "{url} did not answer within {ADMIN_TIMEOUT:?}; is the control plane overloaded or stuck?"
    )]
    Timeout { url: String },
    #[error("reading the answer of {url}: {source}")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: http::StatusCode,
        message: String,
    },
    #[error("{url} answered something that is not the expected JSON ({source}); is the control plane the same version as this CLI?")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// GETs `path_and_query` from the admin port and decodes the JSON answer.
async fn get<T: serde::de::DeserializeOwned>(
    admin: &str,
    path_and_query: &str,
) -> Result<T, AdminError> {
    let base = admin.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let url = format!("{base}{path_and_query}");
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| AdminError::BadUrl {
            url: admin.to_string(),
            reason: e.to_string(),
        })?;
    if uri.scheme_str() != Some("http") {
        return Err(AdminError::BadUrl {
            url: admin.to_string(),
            reason: "the admin port speaks plain http://".into(),
        });
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let exchange = async {
        let resp = client
            .get(uri)
            .await
            .map_err(|source| AdminError::Connect {
                url: url.clone(),
                source,
            })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| AdminError::Body {
                url: url.clone(),
                source,
            })?
            .to_bytes();
        Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(ADMIN_TIMEOUT, exchange)
        .await
        .map_err(|_| AdminError::Timeout { url: url.clone() })??;
    if !status.is_success() {
        return Err(AdminError::Status {
            url,
            status,
            message: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| AdminError::Decode { url, source })
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let view: StatusView = get(&args.admin, "/debug/status").await?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Format::Text => print!("{}", render_status(&view)),
    }
    // Global hostnames (docs/dns.md); an older control plane has no /debug/dns.
    if let (Format::Text, Ok(dns)) = (
        args.output,
        get::<isthmus_control::app::dns::status::DnsStatusView>(&args.admin, "/debug/dns").await,
    ) {
        print!("{}", isthmus_control::app::dns::status::render(&dns));
    }
    Ok(())
}

pub async fn proxy_config(args: ProxyConfigArgs) -> anyhow::Result<()> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("proxy", &args.node_id)
        .append_pair("type", args.kind.as_str())
        .finish();
    let dump: Vec<DumpedResource> =
        get(&args.admin, &format!("/debug/config_dump?{query}")).await?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&dump)?),
        Format::Text => print!("{}", render_dump(&dump)),
    }
    Ok(())
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const TYPES: [&str; 5] = ["cds", "lds", "eds", "rds", "sds"];

pub fn render_status(v: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Cluster {}: config version {} ({} resources, {} errors, {} warnings)",
        if v.cluster.is_empty() {
            "?"
        } else {
            &v.cluster
        },
        v.config.version,
        v.config.resources,
        v.config.errors.len(),
        v.config.warnings.len()
    );
    for e in v.config.errors.iter().chain(&v.config.warnings) {
        let _ = writeln!(out, "  {e}");
    }
    match (&v.federation, &v.federation_error) {
        (Some(f), _) => {
            let _ = writeln!(
                out,
                "Federation: node {} is {}, leader {}, term {}, commit {}, applied {}",
                f.node, f.role, f.leader, f.term, f.commit, f.applied
            );
            for p in &f.peers {
                let _ = writeln!(
                    out,
                    "  peer {}: {} entries behind ({})",
                    p.id, p.lag, p.state
                );
            }
        }
        (None, e) => {
            let _ = writeln!(
                out,
                "Federation: not answering: {}",
                e.as_deref().unwrap_or("unknown")
            );
        }
    }
    let _ = writeln!(
        out,
        "Registry: revision {} (log index {})",
        v.registry.revision, v.registry.applied_index
    );
    let mut rows = vec![["CLUSTER", "NETWORK", "SERVICES", "ENDPOINTS", "LEASE"]
        .map(String::from)
        .to_vec()];
    for c in &v.registry.clusters {
        rows.push(vec![
            c.id.clone(),
            c.network.clone(),
            c.services.to_string(),
            c.endpoints.to_string(),
            c.lease.to_uppercase(),
        ]);
    }
    out.push_str(&indent(&table(&rows)));
    out.push('\n');
    if v.proxies.is_empty() {
        out.push_str("No proxies connected.\n");
        return out;
    }
    let mut rows = vec![["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "SDS"]
        .map(String::from)
        .to_vec()];
    let mut problems = Vec::new();
    for p in &v.proxies {
        let mut row = vec![
            p.node_id.clone(),
            p.cluster_id.clone().unwrap_or_else(|| "-".into()),
        ];
        for t in TYPES {
            let cell = match p.types.get(t) {
                None => "-".to_string(),
                Some(s) => {
                    if let Some(n) = &s.nack {
                        problems.push(format!("{} {}: NACK: {n}", p.node_id, t.to_uppercase()));
                    }
                    if let Some(e) = &s.generate_error {
                        problems.push(format!(
                            "{} {}: cannot generate: {e}",
                            p.node_id,
                            t.to_uppercase()
                        ));
                    }
                    s.state.to_uppercase()
                }
            };
            row.push(cell);
        }
        rows.push(row);
    }
    out.push_str(&table(&rows));
    for p in problems {
        let _ = writeln!(out, "{p}");
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

pub fn render_dump(dump: &[DumpedResource]) -> String {
    if dump.is_empty() {
        return "No resources of this type were sent to this proxy.\n".into();
    }
    let mut rows = vec![["NAME", "VERSION", "ACKED", "DETAIL"]
        .map(String::from)
        .to_vec()];
    for r in dump {
        let acked = if r.acked { "yes" } else { "no" }.to_string();
        let mut first = true;
        for line in r
            .summary
            .iter()
            .map(String::as_str)
            .chain(r.summary.is_empty().then_some(""))
        {
            if first {
                rows.push(vec![
                    r.name.clone(),
                    r.version.clone(),
                    acked.clone(),
                    line.to_string(),
                ]);
                first = false;
            } else {
                rows.push(vec![
                    String::new(),
                    String::new(),
                    String::new(),
                    line.to_string(),
                ]);
            }
        }
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["long".into(), "x".into(), "y".into()],
        ]);
        assert_eq!(t, "A     BB  C\nlong  x   y\n");
    }
}
