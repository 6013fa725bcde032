//! TLS termination (rustls, ring provider): ALPN `h2` + `http/1.1`, and certificates that rotate
//! without a restart or a dropped connection.
//!
//! The certificate and key are loaded when a snapshot compiles (so a bad pair is reported like any
//! other config problem, naming `tls.cert_file` / `tls.key_file`). The server's certificate resolver
//! reads the *current* snapshot on every handshake: a reload that re-reads rotated files (a change in
//! their directory, as cert-manager's Secret updates are, or `SIGHUP`) serves the new certificate to
//! new connections while existing ones carry on.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Reads a PEM certificate chain and private key into a key rustls can serve.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, Vec<String>> {
    let mut problems = Vec::new();
    let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(cert_file) {
        Ok(iter) => match iter.collect::<Result<Vec<_>, _>>() {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                problems.push(format!("tls.cert_file: {} holds no PEM certificate", cert_file.display()));
                Vec::new()
            }
            Err(e) => {
                problems.push(format!("tls.cert_file: {} is not a PEM certificate chain: {e}", cert_file.display()));
                Vec::new()
            }
        },
        Err(e) => {
            problems.push(format!("tls.cert_file: cannot read {}: {e}", cert_file.display()));
            Vec::new()
        }
    };
    let key = match PrivateKeyDer::from_pem_file(key_file) {
        Ok(der) => match rustls::crypto::ring::sign::any_supported_type(&der) {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(format!("tls.key_file: {} is not a usable private key: {e}", key_file.display()));
                None
            }
        },
        Err(e) => {
            problems.push(format!("tls.key_file: cannot read a PEM private key from {}: {e}", key_file.display()));
            None
        }
    };
    match key {
        Some(key) if problems.is_empty() => {
            let ck = CertifiedKey::new(certs, key);
            match ck.keys_match() {
                Ok(()) => Ok(ck),
                // Only "we cannot tell" is acceptable; a definite mismatch is a config problem.
                Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
                Err(e) => Err(vec![format!("tls.key_file: does not match tls.cert_file: {e}")]),
            }
        }
        _ => Err(problems),
    }
}

/// Where the data listener's certificate comes from at each handshake (the current snapshot's).
pub type Resolve = Arc<dyn Fn() -> Option<Arc<CertifiedKey>> + Send + Sync>;

struct Resolver(Resolve);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        (self.0)()
    }
}

/// The acceptor for the data listener: ALPN h2 then http/1.1; the certificate from `resolve`.
pub fn acceptor(resolve: Resolve) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = match rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(builder) => builder.with_no_client_auth().with_cert_resolver(Arc::new(Resolver(resolve))),
        // ring supports the default protocol versions; this arm is unreachable in practice.
        Err(_) => rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(Arc::new(Resolver(resolve))),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
