//! The connection string and TLS to the database.
//!
//! tokio-postgres understands `sslmode` disable, prefer and require only, and
//! leaves certificate checking to the TLS connector. So `sslmode` and
//! `sslrootcert` are taken out of the string here (both libpq forms: URL and
//! key=value), tokio-postgres is told whether to require TLS, and the rustls
//! configuration decides what is checked, as libpq does:
//!
//! | sslmode | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | disable | no | | |
//! | prefer (default) | if the server offers it | no | no |
//! | require | yes | no (yes with `sslrootcert`, as libpq) | no |
//! | verify-ca | yes | yes | no |
//! | verify-full | yes | yes | yes |
//!
//! Trusted roots: `sslrootcert=FILE` (PEM), otherwise (or with
//! `sslrootcert=system`) the system's CA certificates.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::MigrateError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<Self, MigrateError> {
        Ok(match v {
            "disable" => Self::Disable,
            // libpq's "allow" tries plaintext first; rustls cannot do better
            // than prefer's unchecked TLS, which is at least as private.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(MigrateError::Usage(format!(
                    "connection string: unknown sslmode {other:?} (disable, prefer, require, verify-ca, verify-full)"
                )));
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    System,
    File(PathBuf),
}

/// A parsed connection string.
#[derive(Debug, Clone)]
pub struct DbTarget {
    pub config: tokio_postgres::Config,
    pub ssl: SslMode,
    pub roots: Option<RootCerts>,
}

impl DbTarget {
    pub fn parse(conn: &str) -> Result<Self, MigrateError> {
        let (rest, params) = if conn.starts_with("postgres://") || conn.starts_with("postgresql://")
        {
            take_url_params(conn)?
        } else {
            take_keyword_params(conn)?
        };
        let mut ssl = SslMode::Prefer;
        let mut roots = None;
        for (k, v) in params {
            match k.as_str() {
                "sslmode" => ssl = SslMode::parse(&v)?,
                // The only other key taken out is sslrootcert.
                _ if v == "system" => roots = Some(RootCerts::System),
                _ => roots = Some(RootCerts::File(PathBuf::from(v))),
            }
        }
        // tokio-postgres' own messages name the offending option, never the
        // password; the string itself is not repeated.
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| MigrateError::Usage(format!("connection string: {e}")))?;
        config.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_application_name().is_none() {
            config.application_name("des-migrate");
        }
        Ok(Self { config, ssl, roots })
    }

    /// The rustls connector for this target's sslmode.
    pub fn connector(&self) -> Result<MakeRustlsConnect, MigrateError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| MigrateError::Usage(format!("TLS: {e}")))?;
        let verify_chain = match self.ssl {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            // libpq: require with a root certificate given checks the chain.
            SslMode::Require => matches!(self.roots, Some(RootCerts::File(_))),
            SslMode::Disable | SslMode::Prefer => false,
        };
        let verifier: Arc<dyn ServerCertVerifier> = if verify_chain {
            let roots = load_roots(self.roots.as_ref().unwrap_or(&RootCerts::System))?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| MigrateError::Usage(format!("TLS: {e}")))?;
            if self.ssl == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        } else {
            Arc::new(AnyCertificate(provider))
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

fn load_roots(roots: &RootCerts) -> Result<RootCertStore, MigrateError> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| MigrateError::Usage(format!("sslrootcert {}: {e}", path.display())))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(MigrateError::Usage(format!(
                    "sslrootcert {}: no usable certificate",
                    path.display()
                )));
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(MigrateError::Usage(
                    "no system CA certificates found; give sslrootcert=FILE".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// sslmode prefer/require: encryption without authentication of the
/// server, as libpq does. Handshake signatures are still checked, so the
/// peer does hold the key of the certificate it presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// sslmode verify-ca: the chain must lead to a trusted root; the name in the
/// certificate is not compared with the host connected to. WebPKI checks
/// the chain before the name, so a name error means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

type Params = Vec<(String, String)>;

/// Removes `sslmode` and `sslrootcert` from a `postgresql://` URL's query.
fn take_url_params(url: &str) -> Result<(String, Params), MigrateError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k)?;
        if key == "sslmode" || key == "sslrootcert" {
            taken.push((key, percent_decode(v)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

fn percent_decode(s: &str) -> Result<String, MigrateError> {
    let bad = || MigrateError::Usage("connection string: bad percent-encoding".into());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Removes `sslmode` and `sslrootcert` from a libpq `key=value` string,
/// keeping every other pair's text untouched (quoting included).
fn take_keyword_params(s: &str) -> Result<(String, Params), MigrateError> {
    let bad = |why: &str| MigrateError::Usage(format!("connection string: {why}"));
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(s.len(), |&(o, _)| o);
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i).is_none() {
            break;
        }
        let start = i;
        while at(i).is_some_and(|c| c != '=' && !c.is_whitespace()) {
            i += 1;
        }
        let key = s
            .get(offset(start)..offset(i))
            .unwrap_or_default()
            .to_string();
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            return Err(bad(&format!("missing \"=\" after {key:?}")));
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i) {
                    None => return Err(bad("unterminated quoted value")),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        value.extend(at(i + 1));
                        i += 2;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = at(i).filter(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(at(i + 1));
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        if key == "sslmode" || key == "sslrootcert" {
            taken.push((key, value));
        } else {
            kept.push(s.get(offset(start)..offset(i)).unwrap_or_default());
        }
    }
    Ok((kept.join(" "), taken))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn keyword_strings_lose_only_the_tls_options() {
        let (rest, taken) = take_keyword_params(
            "host=db port = 5432 password='a b\\'c' sslmode=verify-full sslrootcert='/etc/ca x.pem' dbname=app",
        )
        .unwrap();
        assert_eq!(rest, "host=db port = 5432 password='a b\\'c' dbname=app");
        assert_eq!(
            taken,
            [
                ("sslmode".to_string(), "verify-full".to_string()),
                ("sslrootcert".to_string(), "/etc/ca x.pem".to_string())
            ]
        );
        assert!(take_keyword_params("host").is_err());
        assert!(take_keyword_params("password='x").is_err());
    }

    #[test]
    fn urls_lose_only_the_tls_options() {
        let (rest, taken) = take_url_params(
            "postgresql://u:p%40ss@db:5432/app?sslmode=verify-ca&connect_timeout=5&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u:p%40ss@db:5432/app?connect_timeout=5");
        assert_eq!(taken[0].1, "verify-ca");
        assert_eq!(taken[1].1, "/ca.pem");
        let (rest, taken) = take_url_params("postgres://db/app?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(taken.len(), 1);
    }

    #[test]
    fn modes_and_roots() {
        let t = DbTarget::parse("host=db user=u sslmode=verify-full sslrootcert=/x.pem").unwrap();
        assert_eq!(t.ssl, SslMode::VerifyFull);
        assert_eq!(t.roots, Some(RootCerts::File("/x.pem".into())));
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let t = DbTarget::parse("postgresql://u@db/app").unwrap();
        assert_eq!(t.ssl, SslMode::Prefer);
        assert_eq!(t.config.get_application_name(), Some("des-migrate"));
        let t = DbTarget::parse("host=db sslrootcert=system sslmode=verify-ca").unwrap();
        assert_eq!(t.roots, Some(RootCerts::System));
        assert!(DbTarget::parse("host=db sslmode=sometimes").is_err());
        assert!(DbTarget::parse("host=db nonsense=1").is_err());
        // A missing root file is a configuration error, found before connecting.
        let t =
            DbTarget::parse("host=db sslmode=verify-full sslrootcert=/nonexistent.pem").unwrap();
        let e = t.connector().err().unwrap();
        assert_eq!(e.exit_code(), crate::error::EXIT_CONFIG);
        assert!(
            DbTarget::parse("host=db sslmode=require")
                .unwrap()
                .connector()
                .is_ok()
        );
    }
}
