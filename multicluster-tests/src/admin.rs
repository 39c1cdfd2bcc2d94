//! Reading the admin endpoints of control planes and proxies: readiness,
//! the federation's debug views and Prometheus metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("GET http://{addr}{path}: {reason}")]
    Request {
        addr: SocketAddr,
        path: String,
        reason: String,
    },
    #[error("GET http://{addr}{path}: status {status}: {body}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
        body: String,
    },
    #[error("GET http://{addr}{path}: not JSON: {reason}")]
    Json {
        addr: SocketAddr,
        path: String,
        reason: String,
    },
}

/// A GET with a short timeout; admin calls must never hang a test.
pub async fn get(addr: SocketAddr, path: &str) -> Result<String, AdminError> {
    let fail = |reason: String| AdminError::Request {
        addr,
        path: path.to_string(),
        reason,
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
    let call = async {
        let resp = client.get(uri).await.map_err(|e| fail(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        Ok::<_, AdminError>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .map_err(|_| fail("no answer within 2s".into()))??;
    if status != 200 {
        return Err(AdminError::Status {
            addr,
            path: path.to_string(),
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(body)
}

pub async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, AdminError> {
    let body = get(addr, path).await?;
    serde_json::from_str(&body).map_err(|e| AdminError::Json {
        addr,
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// `Ok` when `/readyz` answers 200.
pub async fn ready(addr: SocketAddr) -> Result<(), String> {
    get(addr, "/readyz")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text format's sample lines (comments and malformed lines are
/// skipped; label values here never contain escaped quotes).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let mut labels = BTreeMap::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (k, after) = rest.split_once("=\"")?;
                let (v, after) = after.split_once('"')?;
                labels.insert(k.trim_start_matches(',').to_string(), v.to_string());
                rest = after.trim_start_matches(',');
            }
            (name.to_string(), labels)
        }
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of every sample named `name` whose labels include all of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Fetches and parses a proxy's or control plane's `/metrics`.
pub async fn metrics(addr: SocketAddr) -> Result<Vec<Sample>, AdminError> {
    Ok(parse_metrics(&get(addr, "/metrics").await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_sums_matching_samples() {
        let text = "# HELP x y\n\
            isthmus_gateway_tcp_connections_opened_total{destination_principal=\"unknown\",listener=\"in\",source_principal=\"spiffe://t/ns/default/sa/pp\"} 6\n\
            isthmus_gateway_tcp_connections_opened_total{destination_principal=\"unknown\",listener=\"other\",source_principal=\"spiffe://t/ns/default/sa/pp\"} 2\n\
            plain_metric 3.5\n\
            broken line here\n";
        let s = parse_metrics(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].name, "plain_metric");
        assert_eq!(s[2].value, 3.5);
        let pp = [("source_principal", "spiffe://t/ns/default/sa/pp")];
        assert_eq!(
            sum(&s, "isthmus_gateway_tcp_connections_opened_total", &pp),
            8.0
        );
        let one = [("listener", "in")];
        assert_eq!(
            sum(&s, "isthmus_gateway_tcp_connections_opened_total", &one),
            6.0
        );
        assert_eq!(sum(&s, "nothing", &[]), 0.0);
    }

    #[tokio::test]
    async fn unreachable_admin_is_an_error_naming_the_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = get(addr, "/readyz").await.unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
