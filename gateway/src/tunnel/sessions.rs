//! TLS session caches of the tunnel that live no longer than the trust
//! they were made under.
//!
//! A resumed handshake presents no certificate: the peer's identity is the
//! one stored with the ticket, verified when the ticket was issued. So a
//! ticket must not outlive the certificate and trust bundle of the gateway
//! that verified it (a root retired since, an identity re-issued). Both
//! caches are tied to the certificate watch: when the gateway's certificate
//! or trust bundle changes, every stored session is dropped and the next
//! handshake to each peer is a full one, verified against the current
//! trust. Certificates are renewed at half their lifetime, so this also
//! bounds a ticket's age by the renewal period.
//!
//! Server tickets are stateful and single-use (rustls takes a ticket out of
//! the cache when a client presents it, and accepts 0-RTT data only with
//! stateful tickets): replayed early data finds no ticket and is refused,
//! so a stream opened in 0-RTT reaches the peer at most once.

use std::sync::{Arc, Mutex};

use rustls::client::Tls13ClientSessionValue;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::NamedGroup;

use crate::tls::{CertReceiver, WorkloadCertificate};

/// Sessions kept per side: one or two per peer gateway is plenty, and a
/// full cache just evicts the oldest.
const CAPACITY: usize = 1024;

/// A cache that is replaced by a fresh one whenever the certificate changes.
#[derive(Debug)]
struct Generation<T> {
    cert: CertReceiver,
    current: Mutex<(Arc<WorkloadCertificate>, Arc<T>)>,
    fresh: fn() -> Arc<T>,
}

impl<T> Generation<T> {
    fn new(cert: &CertReceiver, fresh: fn() -> Arc<T>) -> Self {
        let now = cert.borrow().clone();
        Self {
            cert: cert.clone(),
            current: Mutex::new((now, fresh())),
            fresh,
        }
    }

    fn cache(&self) -> Arc<T> {
        let now = self.cert.borrow().clone();
        // The pair is replaced whole, so a poisoned lock holds a usable value.
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&current.0, &now) {
            *current = (now, (self.fresh)());
        }
        current.1.clone()
    }
}

/// The tunnel server's ticket store.
#[derive(Debug)]
pub struct ServerSessions(Generation<ServerSessionMemoryCache>);

impl ServerSessions {
    pub fn new(cert: &CertReceiver) -> Self {
        Self(Generation::new(cert, || {
            ServerSessionMemoryCache::new(CAPACITY)
        }))
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.cache().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.cache().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.cache().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The tunnel client's sessions, by peer (the server name is the peer's
/// address, see [`super::TunnelClient`]).
#[derive(Debug)]
pub struct ClientSessions(Generation<ClientSessionMemoryCache>);

impl ClientSessions {
    pub fn new(cert: &CertReceiver) -> Self {
        Self(Generation::new(cert, || {
            Arc::new(ClientSessionMemoryCache::new(CAPACITY))
        }))
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.cache().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.cache().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.cache().set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.cache().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.cache().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.0.cache().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.0.cache().take_tls13_ticket(server_name)
    }
}
