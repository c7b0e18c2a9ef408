//! A service-account token issuer for tests, shaped like a real
//! kube-apiserver's (RS256, `kid` a base64url SHA-256 thumbprint, `aud` an
//! array, the `kubernetes.io` claim with pod and node) — see
//! `../shared/kubernetes-facts.md`.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub const KUBE_ISSUER: &str = "https://kubernetes.default.svc";

pub struct TestIssuer {
    pub issuer: String,
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    /// The public key as PEM (SubjectPublicKeyInfo), for key-confusion attacks.
    pub public_pem: String,
    jwk: Value,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

impl TestIssuer {
    /// RS256 with a fresh 2048-bit key, as Kubernetes uses by default.
    pub fn rsa(issuer: &str) -> TestIssuer {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("rsa keygen");
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).expect("pkcs8");
        let public = kp.public_key();
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(public).expect("spki");
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(spki.as_ref()));
        let jwk = json!({
            "use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        });
        TestIssuer {
            issuer: issuer.to_string(),
            kid,
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                .expect("rsa pem"),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
            jwk,
        }
    }

    /// ES256 (P-256), as some managed issuers use.
    pub fn ec(issuer: &str) -> TestIssuer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec keygen");
        let raw = rcgen::PublicKeyData::der_bytes(&kp).to_vec(); // 0x04 || x || y
        let spki = rcgen::PublicKeyData::subject_public_key_info(&kp);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(&spki));
        let jwk = json!({
            "use": "sig", "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        });
        TestIssuer {
            issuer: issuer.to_string(),
            kid,
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("ec pem"),
            public_pem: pem("PUBLIC KEY", &spki),
            jwk,
        }
    }

    /// `{"keys":[…]}`
    pub fn jwks(&self) -> String {
        json!({"keys": [self.jwk]}).to_string()
    }

    /// The JWKS of several issuers (key rotation, or an unrelated key).
    pub fn jwks_of(issuers: &[&TestIssuer]) -> String {
        json!({"keys": issuers.iter().map(|i| i.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    /// Claims of a pod-bound projected token, as kube-apiserver v1.36 issues them.
    pub fn claims(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        lifetime: i64,
    ) -> Value {
        let now = now();
        json!({
            "aud": [audience],
            "exp": now + lifetime, "iat": now, "nbf": now,
            "iss": self.issuer,
            "jti": format!("jti-{namespace}-{service_account}-{now}"),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1"},
                "pod": {"name": format!("{service_account}-0"), "uid": "aacead7a-b184-48bd-bd67-bf1c51fe450b"},
                "serviceaccount": {"name": service_account, "uid": "13c20be8-6182-4c4c-8274-b8c9d21c39ae"},
            },
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        })
    }

    /// A valid token for `namespace/service_account` with `audience`.
    pub fn token(&self, namespace: &str, service_account: &str, audience: &str) -> String {
        self.sign(&self.claims(namespace, service_account, audience, 600))
    }

    /// Signs arbitrary claims with this issuer's key and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key).expect("sign")
    }

    /// What kube-apiserver's TokenReview would say about `token` for
    /// `audiences`: the user name and the audiences it is valid for, or the
    /// error text in the API server's wording.
    pub fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<(String, Vec<String>), String> {
        let key = jsonwebtoken::DecodingKey::from_jwk(
            &serde_json::from_value(self.jwk.clone()).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let mut v = jsonwebtoken::Validation::new(self.alg);
        v.set_issuer(&[self.issuer.as_str()]);
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(token, &key, &v)
            .map_err(|_| "[invalid bearer token]".to_string())?;
        let token_auds: Vec<String> = match &data.claims["aud"] {
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        };
        let wanted: Vec<String> = if audiences.is_empty() {
            vec!["https://kubernetes.default.svc".to_string()]
        } else {
            audiences.to_vec()
        };
        let shared: Vec<String> = token_auds
            .iter()
            .filter(|a| wanted.contains(a))
            .cloned()
            .collect();
        if shared.is_empty() {
            return Err(format!("[invalid bearer token, token audiences {token_auds:?} is invalid for the target audiences {wanted:?}]"));
        }
        let sub = data.claims["sub"].as_str().unwrap_or_default().to_string();
        Ok((sub, shared))
    }
}
