//! The MyTimetable client over TLS: a server whose certificate comes from a private CA is
//! trusted only when that CA is passed as the extra CA bundle.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use calsync_operator::mytimetable::{Client, ClientConfig, Error, Token};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use support::{logs, unique_token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

// A private CA and a server certificate for 127.0.0.1 signed by it.
struct TestPki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
}

fn generate_pki() -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params.signed_by(&server_key, &ca).unwrap();

    TestPki {
        ca_pem: ca.pem(),
        server_cert: server_cert.der().clone(),
        server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
    }
}

// Serves every TLS connection with one fixed `GET /users` response until the test ends.
async fn serve_tls(pki: &TestPki) -> std::net::SocketAddr {
    calsync_operator::install_rustls_provider();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate aborts the handshake.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    let read = tls.read(&mut chunk).await.unwrap();
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&chunk[..read]);
                }
                let body = r#"{"users":["tls-user"]}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.write_all(response.as_bytes()).await.unwrap();
                tls.shutdown().await.ok();
            });
        }
    });
    addr
}

fn tls_config(addr: std::net::SocketAddr, token: &str) -> ClientConfig {
    let mut config = ClientConfig::new(
        format!("https://{addr}/api/v0").parse().unwrap(),
        Token::new(token),
    );
    config.max_retries = 0;
    config
}

#[tokio::test]
async fn extra_ca_bundle_is_trusted() {
    let token = unique_token("tls-trusted");
    logs();
    let pki = generate_pki();
    let addr = serve_tls(&pki).await;
    let mut config = tls_config(addr, &token);
    config.ca_bundle_pem = Some(pki.ca_pem.clone().into_bytes());
    let client = Client::new(config).unwrap();

    let users = client.list_users().await.unwrap();

    assert_eq!(users, vec!["tls-user"]);
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn private_ca_without_bundle_is_rejected() {
    let token = unique_token("tls-untrusted");
    logs();
    let pki = generate_pki();
    let addr = serve_tls(&pki).await;
    let client = Client::new(tls_config(addr, &token)).unwrap();

    let error = client.list_users().await.unwrap_err();

    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    support::assert_no_token(&format!("{error} {error:?}"), &token);
    logs().assert_never_contains(&token);
}
