//! rustls-based TLS for tokio-postgres (and later the replication client):
//! sslmode prefer / require (encrypt, no verification), verify-ca (chain only),
//! verify-full (chain and host name).
//!
//! The pieces are separate so a hand-written protocol client can reuse them:
//! [`client_config`] builds the rustls configuration for a [`DbSettings`],
//! [`server_name`] turns a host into a rustls server name, and
//! [`tls_server_end_point`] computes SCRAM channel-binding data from the
//! server's certificate. [`RustlsConnector`] glues them into tokio-postgres's
//! `MakeTlsConnect` / `TlsConnect` traits.
//!
//! Every `ClientConfig` is built with an explicit provider (aws-lc-rs), since
//! more than one rustls provider is compiled into the binary.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::config::{DbSettings, SslMode};
use crate::error::{Error, Result};

/// The ALPN protocol name PostgreSQL 17+ expects; older servers ignore it.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The crypto provider every pgkeep TLS configuration uses.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// The rustls client configuration for `db.sslmode`.
///
/// `prefer` and `require` (and `disable`, for callers that ask anyway) encrypt
/// without checking the certificate, like libpq; `verify-ca` checks the chain
/// against the root store; `verify-full` checks the chain and the host name.
/// Whether to use TLS at all is the caller's decision.
pub fn client_config(db: &DbSettings) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let verifier = match db.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => PgCertVerifier { roots: None, check_name: false, algorithms },
        SslMode::VerifyCa | SslMode::VerifyFull => {
            PgCertVerifier { roots: Some(root_store(db.sslrootcert.as_deref())?), check_name: db.sslmode == SslMode::VerifyFull, algorithms }
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal("cannot build the TLS client configuration").with_source(e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// The rustls server name for `host`: an IP address or a DNS name.
///
/// Fails for strings that are neither (rustls cannot send or verify them).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|e| Error::config(format!("`{host}` is not a valid host name for TLS")).with_source(e))
}

/// `tls-server-end-point` channel-binding data (RFC 5929) for a server
/// certificate: its hash with the certificate's signature hash, where MD5 and
/// SHA-1 become SHA-256. `None` for algorithms that define no binding
/// (RSA-PSS, EdDSA, unknown), in which case SCRAM runs without binding.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm_oid(cert_der)?;
    Some(match signature_hash(oid)? {
        BindingHash::Sha256 => sha2::Sha256::digest(cert_der).to_vec(),
        BindingHash::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        BindingHash::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

/// The root store for verify-ca / verify-full: the `sslrootcert` PEM file, or
/// the system roots when it is unset or the literal `system` (as in libpq).
fn root_store(sslrootcert: Option<&Path>) -> Result<Arc<RootCertStore>> {
    match sslrootcert {
        Some(path) if path.as_os_str() != "system" => load_pem_roots(path).map(Arc::new),
        _ => Ok(system_roots()),
    }
}

/// Trust anchors from a PEM file; an error names the file when it cannot be
/// read or holds no usable certificate.
fn load_pem_roots(path: &Path) -> Result<RootCertStore> {
    let shown = path.display();
    let hint = "check sslrootcert (PGSSLROOTCERT, ?sslrootcert= in --db, or db.sslrootcert)";
    let pem = std::fs::read(path).map_err(|e| Error::config(format!("cannot read TLS root certificate file {shown}")).with_source(e).with_hint(hint))?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| Error::config(format!("TLS root certificate file {shown} is not valid PEM")).with_source(e).with_hint(hint))?;
        certs.push(cert);
    }
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::config(format!("TLS root certificate file {shown} contains no usable certificates")).with_hint(hint));
    }
    Ok(store)
}

/// The operating system's roots, or webpki-roots when there are none; loaded
/// once per process.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let native = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, ignored) = store.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::debug!(ignored, errors = native.errors.len(), "no system TLS roots found; using the bundled webpki roots");
                store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Arc::new(store)
        })
        .clone()
}

/// One certificate verifier for all modes: no roots means "accept any
/// certificate"; handshake signatures are always verified.
#[derive(Debug)]
struct PgCertVerifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PgCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algorithms.all)?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// tokio-postgres's `MakeTlsConnect` over rustls for one [`DbSettings`].
///
/// tokio-postgres itself only knows disable / prefer / require; the caller
/// maps verify-* to `require` and this connector does the verification.
#[derive(Clone)]
pub struct RustlsConnector {
    config: Arc<ClientConfig>,
    check_name: bool,
}

impl RustlsConnector {
    /// A connector for `db` (loads the root store for verify-*).
    pub fn new(db: &DbSettings) -> Result<RustlsConnector> {
        Ok(RustlsConnector { config: client_config(db)?, check_name: db.sslmode == SslMode::VerifyFull })
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = match server_name(domain) {
            Ok(name) => name,
            Err(e) if self.check_name => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, e.message().to_string()));
            }
            // Without a host-name check the name only feeds SNI, and an IP
            // address name sends none.
            Err(_) => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into()),
        };
        Ok(RustlsConnect { connector: tokio_rustls::TlsConnector::from(self.config.clone()), name })
    }
}

/// One pending TLS handshake (tokio-postgres's `TlsConnect`).
pub struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream to the server, with SCRAM channel binding.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> RustlsStream<S> {
    /// The server's certificate chain, leaf first.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.0.get_ref().1.peer_certificates()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|leaf| tls_server_end_point(leaf))
            .map(ChannelBinding::tls_server_end_point)
            .unwrap_or_else(ChannelBinding::none)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The hash a certificate's channel binding uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindingHash {
    Sha256,
    Sha384,
    Sha512,
}

/// The binding hash for a signature-algorithm OID (DER contents bytes).
fn signature_hash(oid: &[u8]) -> Option<BindingHash> {
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    if let Some(last) = oid.strip_prefix(PKCS1) {
        return match last {
            // md5WithRSA, sha1WithRSA: RFC 5929 says use SHA-256.
            [0x04] | [0x05] | [0x0b] => Some(BindingHash::Sha256),
            [0x0c] => Some(BindingHash::Sha384),
            [0x0d] => Some(BindingHash::Sha512),
            _ => None,
        };
    }
    if oid == ECDSA_SHA1 {
        return Some(BindingHash::Sha256);
    }
    match oid.strip_prefix(ECDSA_SHA2)? {
        [0x02] => Some(BindingHash::Sha256),
        [0x03] => Some(BindingHash::Sha384),
        [0x04] => Some(BindingHash::Sha512),
        _ => None,
    }
}

/// The outer `signatureAlgorithm` OID of a DER certificate:
/// `SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, .. }, .. }`.
fn signature_algorithm_oid(cert_der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, cert, _) = der_element(cert_der)? else {
        return None;
    };
    let (SEQUENCE, _tbs, rest) = der_element(cert)? else {
        return None;
    };
    let (SEQUENCE, algorithm, _) = der_element(rest)? else {
        return None;
    };
    let (OID, oid, _) = der_element(algorithm)? else {
        return None;
    };
    Some(oid)
}

/// One DER element at the start of `input`: (tag, contents, rest). `None` on
/// truncated or malformed input; never panics.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > std::mem::size_of::<u32>() || rest.len() < count {
            return None;
        }
        let (digits, tail) = rest.split_at(count);
        rest = tail;
        digits.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, tail) = rest.split_at(len);
    Some((tag, contents, tail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(sslmode: SslMode, sslrootcert: Option<&Path>) -> DbSettings {
        DbSettings {
            host: "db.example.com".into(),
            port: 5432,
            user: "app".into(),
            password: None,
            dbname: "app".into(),
            sslmode,
            sslrootcert: sslrootcert.map(Path::to_path_buf),
            connect_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn server_names_accept_dns_and_ip() {
        assert!(matches!(server_name("127.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("db.example.com").unwrap(), ServerName::DnsName(_)));
        let e = server_name("bad host!").unwrap_err();
        assert!(e.message().contains("bad host!"), "{}", e.message());
    }

    #[test]
    fn root_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let e = client_config(&settings(SslMode::VerifyFull, Some(&missing))).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(e.message().contains("missing.crt"), "{}", e.message());

        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(&settings(SslMode::VerifyCa, Some(&empty))).unwrap_err();
        assert!(e.message().contains("empty.crt"), "{}", e.message());
        assert!(e.message().contains("no usable certificates"), "{}", e.message());

        // Modes without verification never read the file.
        client_config(&settings(SslMode::Require, Some(&missing))).unwrap();
    }

    #[test]
    fn signature_hash_follows_rfc_5929() {
        let ecdsa_sha384 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let rsa_sha1 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
        let rsa_pss = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
        let ed25519 = [0x2b, 0x65, 0x70];
        assert_eq!(signature_hash(&ecdsa_sha384), Some(BindingHash::Sha384));
        assert_eq!(signature_hash(&rsa_sha1), Some(BindingHash::Sha256));
        assert_eq!(signature_hash(&rsa_pss), None);
        assert_eq!(signature_hash(&ed25519), None);
    }

    #[test]
    fn end_point_hash_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let der = cert.der().as_ref();
        // rcgen signs with ECDSA P-256 / SHA-256 by default.
        assert_eq!(tls_server_end_point(der), Some(sha2::Sha256::digest(der).to_vec()));
    }

    #[test]
    fn der_reader_rejects_malformed_input() {
        assert_eq!(tls_server_end_point(&[]), None);
        assert_eq!(tls_server_end_point(&[0x30]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x80]), None);
        assert_eq!(der_element(&[0x04, 0x02, 0xaa, 0xbb, 0xcc]), Some((0x04, &[0xaa, 0xbb][..], &[0xcc][..])));
        assert_eq!(der_element(&[0x04, 0x81, 0x01, 0xaa]), Some((0x04, &[0xaa][..], &[][..])));
    }
}
