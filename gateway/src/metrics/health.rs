//! Proxy health for operators and alerts: is the xDS stream up, how fresh
//! is each type's configuration, when does the workload certificate expire.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{GaugeVec, IntGauge, Opts, Registry};

use super::MetricsError;
use crate::tls::CertReceiver;

#[derive(Debug, Clone)]
pub struct Health {
    xds_connected: IntGauge,
    xds_last_update: GaugeVec,
    cert_expiry: IntGauge,
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    name: &'static str,
    c: Result<C, prometheus::Error>,
) -> Result<C, MetricsError> {
    let c = c.map_err(|source| MetricsError::Register { name, source })?;
    r.register(Box::new(c.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(c)
}

impl Health {
    pub fn new(r: &Registry) -> Result<Health, MetricsError> {
        Ok(Health {
            xds_connected: reg(
                r,
                "isthmus_gateway_xds_connected",
                IntGauge::new(
                    "isthmus_gateway_xds_connected",
                    "1 while an ADS stream to the control plane is open (Envoy's control_plane.connected_state)",
                ),
            )?,
            xds_last_update: reg(
                r,
                "isthmus_gateway_xds_last_update_timestamp_seconds",
                GaugeVec::new(
                    Opts::new(
                        "isthmus_gateway_xds_last_update_timestamp_seconds",
                        "Unix time of the last accepted (ACKed) xDS update, by type",
                    ),
                    &["type"],
                ),
            )?,
            cert_expiry: reg(
                r,
                "isthmus_gateway_cert_expiry_timestamp_seconds",
                IntGauge::new(
                    "isthmus_gateway_cert_expiry_timestamp_seconds",
                    "Unix time when the proxy's current workload certificate expires (0: no certificate)",
                ),
            )?,
        })
    }

    /// Marks the ADS stream open until the guard is dropped.
    pub fn xds_connection(&self) -> ConnectedGuard {
        self.xds_connected.set(1);
        ConnectedGuard(self.xds_connected.clone())
    }

    /// An update of `type_short` (cds, eds, ...) was accepted.
    pub fn xds_accepted(&self, type_short: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.xds_last_update
            .with_label_values(&[type_short])
            .set(now);
    }

    /// Follows the workload certificate and exports its expiry; ends when
    /// the certificate source goes away.
    pub fn watch_certificate(&self, mut cert: CertReceiver) {
        let gauge = self.cert_expiry.clone();
        tokio::spawn(async move {
            loop {
                let expiry = {
                    let c = cert.borrow_and_update();
                    c.certified_key()
                        .cert
                        .first()
                        .and_then(|leaf| not_after(leaf.as_ref()))
                };
                gauge.set(expiry.unwrap_or(0));
                if cert.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

fn not_after(der: &[u8]) -> Option<i64> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(c.validity().not_after.timestamp())
}

/// Sets `isthmus_gateway_xds_connected` back to 0 when the stream ends.
#[derive(Debug)]
pub struct ConnectedGuard(IntGauge);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.set(0);
    }
}
