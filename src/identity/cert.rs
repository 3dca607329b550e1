//! Names from a verified TLS client certificate: the subject's CN and the
//! first subject alternative name (DNS name, e-mail or URI), and the whole
//! subject for the audit trail.

use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// OID 2.5.29.17 (subjectAltName).
const SAN: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.17");
/// OID 2.5.4.3 (commonName).
const CN: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");

/// The names templates can use (`{cert.cn}`, `{cert.san}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    pub cn: Option<String>,
    pub san: Option<String>,
}

/// Read CN and first SAN from a DER certificate. Errors say what is wrong.
pub fn names(der: &[u8]) -> Result<CertNames, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("client certificate: {e}"))?;
    let tbs = &cert.tbs_certificate;
    let mut cn = None;
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == CN {
                cn = Some(directory_string(&atv.value)?);
            }
        }
    }
    let mut san = None;
    if let Some(exts) = &tbs.extensions {
        for ext in exts.iter() {
            if ext.extn_id == SAN {
                let names = SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| format!("client certificate SAN: {e}"))?;
                san = names.0.iter().find_map(|n| match n {
                    GeneralName::DnsName(s) | GeneralName::Rfc822Name(s) => {
                        Some(s.as_str().to_string())
                    }
                    GeneralName::UniformResourceIdentifier(s) => Some(s.as_str().to_string()),
                    _ => None,
                });
            }
        }
    }
    Ok(CertNames { cn, san })
}

/// The certificate's subject as an RFC 4514 string (`CN=alice,O=Example`,
/// most specific first, special characters escaped), for audit events.
pub fn subject(der: &[u8]) -> Result<String, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("client certificate: {e}"))?;
    Ok(cert.tbs_certificate.subject.to_string())
}

fn directory_string(v: &x509_cert::der::Any) -> Result<String, String> {
    let bad = |e: x509_cert::der::Error| format!("client certificate CN: {e}");
    Ok(match v.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(v)
            .map_err(bad)?
            .as_str()
            .to_string(),
        Tag::PrintableString => PrintableStringRef::try_from(v)
            .map_err(bad)?
            .as_str()
            .to_string(),
        Tag::Ia5String => Ia5StringRef::try_from(v).map_err(bad)?.as_str().to_string(),
        Tag::TeletexString => TeletexStringRef::try_from(v)
            .map_err(bad)?
            .as_str()
            .to_string(),
        t => return Err(format!("client certificate CN has unsupported type {t}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cn_and_first_san_from_an_rcgen_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["svc.example.test".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing-svc ü");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let n = names(cert.der()).unwrap();
        assert_eq!(n.cn.as_deref(), Some("billing-svc ü"));
        assert_eq!(n.san.as_deref(), Some("svc.example.test"));
    }

    #[test]
    fn subject_is_rfc4514_most_specific_first_and_escaped() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // Encoded in this order (rcgen's default DN has a CN of its own).
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing-svc");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject(cert.der()).unwrap(),
            "CN=billing-svc,O=Acme\\, Inc."
        );
        assert!(subject(b"junk").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(names(b"").is_err());
        assert!(names(&[0x30, 0x82, 0xff, 0xff, 0x00]).is_err());
    }
}
