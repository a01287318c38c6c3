//! TLS termination (https/wss) with certificates reloaded without restart: the handshake
//! callback takes the current certificate and key from [`CertStore`], which a background task
//! refreshes whenever the files' modification time changes (and on `/admin/reload`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::RwLock;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::tls::ext;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::x509::X509;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("bad PEM in {0}: {1}")]
    Pem(PathBuf, String),
}

struct Loaded {
    chain: Vec<X509>,
    key: PKey<Private>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

/// The certificate currently served.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<Loaded>>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let c = std::fs::read(cert).map_err(|e| TlsError::Read(cert.into(), e))?;
    let k = std::fs::read(key).map_err(|e| TlsError::Read(key.into(), e))?;
    let chain = X509::stack_from_pem(&c).map_err(|e| TlsError::Pem(cert.into(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(cert.into(), "no certificate".into()));
    }
    let key_parsed =
        PKey::private_key_from_pem(&k).map_err(|e| TlsError::Pem(key.into(), e.to_string()))?;
    // A key and certificate replaced one after the other can be caught half-way: keep serving
    // the old pair until the new one matches.
    let matches = chain[0]
        .public_key()
        .map(|pk| pk.public_eq(&key_parsed))
        .unwrap_or(false);
    if !matches {
        return Err(TlsError::Pem(
            key.into(),
            "private key does not match the certificate".into(),
        ));
    }
    Ok(Loaded {
        chain,
        key: key_parsed,
        stamp: (mtime(cert), mtime(key)),
    })
}

impl CertStore {
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let l = load(cert, key)?;
        Ok(Arc::new(CertStore {
            cert: cert.into(),
            key: key.into(),
            current: RwLock::new(Arc::new(l)),
        }))
    }

    /// Reload if the files changed. `Ok(true)` when a new certificate is now served.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let stamp = (mtime(&self.cert), mtime(&self.key));
        if self.current.read().stamp == stamp {
            return Ok(false);
        }
        let l = load(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(l);
        Ok(true)
    }
}

/// Handshake callback serving the store's current certificate.
pub struct ReloadingCert(pub Arc<CertStore>);

#[async_trait]
impl TlsAccept for ReloadingCert {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let cur = self.0.current.read().clone();
        if let Some(leaf) = cur.chain.first() {
            let _ = ext::ssl_use_certificate(ssl, leaf);
        }
        for c in cur.chain.iter().skip(1) {
            let _ = ext::ssl_add_chain_cert(ssl, c);
        }
        let _ = ext::ssl_use_private_key(ssl, &cur.key);
    }
}
