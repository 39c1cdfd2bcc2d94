//! TLS contexts: Istio mutual TLS from SDS (`default` is the proxy's own
//! certificate, produced locally; `ROOTCA` is the federation trust bundle
//! served by the control plane), file-based TLS for user-configured modes,
//! and the certificate-provider form proxyless gRPC understands.

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    DownstreamTlsContext, SdsSecretConfig, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::BoolValue;

use crate::config::{ClientTlsMode, ClientTlsSettings, ServerTlsMode, ServerTlsSettings};

use super::proto::ads;
use super::ProxyFlavor;

/// SDS name of the proxy's own certificate (never served by us).
pub const SECRET_DEFAULT: &str = "default";
/// SDS name of the federation trust bundle.
pub const SECRET_ROOTCA: &str = "ROOTCA";
/// Certificate-provider instance a proxyless gRPC bootstrap must define
/// (Istio's name): it supplies both the identity and the roots.
pub const GRPC_PROVIDER_INSTANCE: &str = "default";

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(value.to_string())),
        ..Default::default()
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// Istio mutual TLS: our certificate and the trust bundle from SDS, plus the
/// SPIFFE identities the peer may present (empty: any identity the bundle
/// vouches for).
fn istio_common(flavor: ProxyFlavor, peer_ids: &[String]) -> CommonTlsContext {
    match flavor {
        ProxyFlavor::Envoy => CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(SECRET_DEFAULT)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: peer_ids
                            .iter()
                            .map(|id| SubjectAltNameMatcher {
                                san_type: SanType::Uri as i32,
                                matcher: Some(exact(id)),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(SECRET_ROOTCA)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        },
        // gRPC reads only certificate-provider instances and the untyped SAN
        // matchers (gRFC A29).
        ProxyFlavor::Grpc => CommonTlsContext {
            tls_certificate_provider_instance: Some(CertificateProviderPluginInstance {
                instance_name: GRPC_PROVIDER_INSTANCE.to_string(),
                certificate_name: SECRET_DEFAULT.to_string(),
            }),
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    ca_certificate_provider_instance: Some(CertificateProviderPluginInstance {
                        instance_name: GRPC_PROVIDER_INSTANCE.to_string(),
                        certificate_name: SECRET_ROOTCA.to_string(),
                    }),
                    #[allow(deprecated)]
                    match_subject_alt_names: peer_ids.iter().map(|id| exact(id)).collect(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        },
    }
}

/// The client side of ISTIO_MUTUAL towards `sni`.
pub fn istio_mutual_upstream(
    flavor: ProxyFlavor,
    sni: &str,
    peer_ids: &[String],
) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(istio_common(flavor, peer_ids)),
        sni: sni.to_string(),
        ..Default::default()
    }
}

/// The server side of Istio mutual TLS (sidecar inbound, ISTIO_MUTUAL
/// gateway servers): client certificate required, checked against the
/// bundle.
pub fn istio_mutual_downstream() -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(istio_common(ProxyFlavor::Envoy, &[])),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// Why a user TLS setting cannot be expressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSettingError {
    #[error(
        "tls mode {mode} needs {field}; set it (a file path on the proxy) or use credentialName"
    )]
    Missing {
        mode: &'static str,
        field: &'static str,
    },
}

/// The client side for a DestinationRule's SIMPLE or MUTUAL mode (files on
/// the proxy, or `credentialName` fetched over SDS).
pub fn user_upstream(
    settings: &ClientTlsSettings,
    default_sni: &str,
) -> Result<UpstreamTlsContext, TlsSettingError> {
    let mutual = settings.mode == Some(ClientTlsMode::Mutual);
    let mut common = CommonTlsContext::default();
    if let Some(name) = settings
        .credential_name
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        if mutual {
            common.tls_certificate_sds_secret_configs = vec![sds(name)];
        }
        common.validation_context_type = Some(
            ValidationContextType::ValidationContextSdsSecretConfig(sds(&format!("{name}-cacert"))),
        );
    } else {
        if mutual {
            let cert = settings
                .client_certificate
                .as_deref()
                .ok_or(TlsSettingError::Missing {
                    mode: "MUTUAL",
                    field: "clientCertificate",
                })?;
            let key = settings
                .private_key
                .as_deref()
                .ok_or(TlsSettingError::Missing {
                    mode: "MUTUAL",
                    field: "privateKey",
                })?;
            common.tls_certificates = vec![TlsCertificate {
                certificate_chain: Some(file(cert)),
                private_key: Some(file(key)),
                ..Default::default()
            }];
        }
        if settings.insecure_skip_verify != Some(true) {
            if let Some(ca) = settings.ca_certificates.as_deref() {
                common.validation_context_type = Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(file(ca)),
                        match_typed_subject_alt_names: settings
                            .subject_alt_names
                            .iter()
                            .map(|san| SubjectAltNameMatcher {
                                san_type: if san.starts_with("spiffe://") {
                                    SanType::Uri as i32
                                } else {
                                    SanType::Dns as i32
                                },
                                matcher: Some(exact(san)),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    },
                ));
            }
        }
    }
    Ok(UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: settings
            .sni
            .clone()
            .unwrap_or_else(|| default_sni.to_string()),
        ..Default::default()
    })
}

/// The server side of a Gateway server's SIMPLE, MUTUAL or ISTIO_MUTUAL
/// mode; `None` for modes that do not terminate TLS.
pub fn gateway_downstream(
    settings: &ServerTlsSettings,
) -> Result<Option<DownstreamTlsContext>, TlsSettingError> {
    let mode = settings.mode.unwrap_or(ServerTlsMode::Simple);
    let mutual = match mode {
        ServerTlsMode::IstioMutual => return Ok(Some(istio_mutual_downstream())),
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough => return Ok(None),
        ServerTlsMode::Simple => false,
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => true,
    };
    let mode_name = if mutual { "MUTUAL" } else { "SIMPLE" };
    let mut common = CommonTlsContext::default();
    if let Some(name) = settings
        .credential_name
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        common.tls_certificate_sds_secret_configs = vec![sds(name)];
        if mutual {
            common.validation_context_type =
                Some(ValidationContextType::ValidationContextSdsSecretConfig(
                    sds(&format!("{name}-cacert")),
                ));
        }
    } else {
        let cert = settings
            .server_certificate
            .as_deref()
            .ok_or(TlsSettingError::Missing {
                mode: mode_name,
                field: "serverCertificate",
            })?;
        let key = settings
            .private_key
            .as_deref()
            .ok_or(TlsSettingError::Missing {
                mode: mode_name,
                field: "privateKey",
            })?;
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        }];
        if mutual {
            let ca = settings
                .ca_certificates
                .as_deref()
                .ok_or(TlsSettingError::Missing {
                    mode: mode_name,
                    field: "caCertificates",
                })?;
            common.validation_context_type = Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(file(ca)),
                    ..Default::default()
                },
            ));
        }
    }
    Ok(Some(DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue {
            value: mode == ServerTlsMode::Mutual,
        }),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_mutual_uses_sds_for_envoy_and_providers_for_grpc() {
        let ids = vec!["spiffe://td/ns/a/sa/b".to_string()];
        let envoy = istio_mutual_upstream(ProxyFlavor::Envoy, "sni", &ids);
        let common = envoy.common_tls_context.expect("common context");
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name,
            SECRET_DEFAULT
        );
        assert!(common.tls_certificate_provider_instance.is_none());
        let grpc = istio_mutual_upstream(ProxyFlavor::Grpc, "sni", &ids);
        let common = grpc.common_tls_context.expect("common context");
        assert!(common.tls_certificate_sds_secret_configs.is_empty());
        assert!(common.tls_certificate_provider_instance.is_some());
    }

    #[test]
    fn gateway_modes() {
        let simple: ServerTlsSettings = serde_yaml_ng::from_str(
            "mode: SIMPLE\nserverCertificate: /c.pem\nprivateKey: /k.pem\n",
        )
        .expect("parses");
        let ctx = gateway_downstream(&simple)
            .expect("valid")
            .expect("terminates");
        assert_eq!(
            ctx.require_client_certificate,
            Some(BoolValue { value: false })
        );
        let missing: ServerTlsSettings = serde_yaml_ng::from_str(
            "mode: MUTUAL\nserverCertificate: /c.pem\nprivateKey: /k.pem\n",
        )
        .expect("parses");
        assert_eq!(
            gateway_downstream(&missing).unwrap_err(),
            TlsSettingError::Missing {
                mode: "MUTUAL",
                field: "caCertificates"
            }
        );
        let pass: ServerTlsSettings =
            serde_yaml_ng::from_str("mode: PASSTHROUGH\n").expect("parses");
        assert_eq!(gateway_downstream(&pass).expect("valid"), None);
    }
}
