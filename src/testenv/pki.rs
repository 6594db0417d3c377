//! Certificates, keys and the admin token of a test control plane, generated in process.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use super::Error;

/// The files that kube-apiserver and the kubeconfig read.
pub(super) struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_public_key: PathBuf,
    pub service_account_signing_key: PathBuf,
    pub token_file: PathBuf,
    /// The bearer token of the admin user, a member of `system:masters`.
    pub admin_token: String,
}

/// User name of the admin identity in the static token file.
pub(super) const ADMIN_USER: &str = "calsync-admin";

impl Pki {
    /// Generates a CA, a serving certificate for 127.0.0.1 and localhost, a service-account
    /// signing key pair and an admin token, and writes them into `dir`.
    pub fn generate(dir: &Path) -> Result<Pki, Error> {
        let ca = generate_ca()?;
        let (serving_cert_pem, serving_key_pem) = generate_serving_cert(&ca)?;
        let service_account_key = KeyPair::generate().map_err(|source| Error::Certificate {
            what: "service-account signing key",
            source,
        })?;
        let admin_token = random_token();

        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            service_account_public_key: dir.join("service-account.pub"),
            service_account_signing_key: dir.join("service-account.key"),
            token_file: dir.join("tokens.csv"),
            admin_token,
        };
        write(&pki.ca_cert, &ca.pem())?;
        write(&pki.serving_cert, &serving_cert_pem)?;
        write(&pki.serving_key, &serving_key_pem)?;
        write(
            &pki.service_account_public_key,
            &service_account_key.public_key_pem(),
        )?;
        write(
            &pki.service_account_signing_key,
            &service_account_key.serialize_pem(),
        )?;
        // Static token file format: token,user,uid,"group1,group2".
        write(
            &pki.token_file,
            &format!(
                "{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n",
                pki.admin_token
            ),
        )?;
        Ok(pki)
    }
}

fn generate_ca() -> Result<CertifiedIssuer<'static, KeyPair>, Error> {
    let failed = |source| Error::Certificate {
        what: "certificate authority",
        source,
    };
    let key = KeyPair::generate().map_err(failed)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name = distinguished_name("calsync-testenv-ca");
    CertifiedIssuer::self_signed(params, key).map_err(failed)
}

fn generate_serving_cert(ca: &CertifiedIssuer<'_, KeyPair>) -> Result<(String, String), Error> {
    let failed = |source| Error::Certificate {
        what: "kube-apiserver serving certificate",
        source,
    };
    let key = KeyPair::generate().map_err(failed)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(failed)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.distinguished_name = distinguished_name("kube-apiserver");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, ca).map_err(failed)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Returns 32 random hexadecimal digits (128 bits).
fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}
