use super::*;
use crate::testkeys::{self, claims, forge, jwks, now_secs, rsa, rsa_jwk, RSA1, RSA2};
use jwt_simple::prelude::*;
use plugin_config::parse;
use serde_json::json;

const ISS: &str = "https://idp.example.com/mcp";

/// A verifier, and the scopes a route requires (checked after it, as the filter does).
fn verifier(required: &[&str]) -> (Verifier, Vec<String>) {
    let cfg = serde_json::json!({"oidc": {
        "issuer": ISS, "audience": ["mcpserver", "other"],
        "jwksUrl": "https://idp.example.com/keys", "requiredScopes": required,
        "clockSkewSeconds": 60
    }});
    let config = parse(cfg.to_string().as_bytes()).unwrap();
    (
        Verifier::new(config.oidc.as_ref().unwrap()),
        config.oidc.unwrap().required_scopes,
    )
}

/// Stands for the 403 the filter answers when `has_scopes` fails.
const INSUFFICIENT_SCOPE: Reject = Reject::Malformed;

fn keys(list: &[serde_json::Value]) -> KeySet {
    KeySet::parse(jwks(list).as_bytes()).unwrap().0
}

fn rs_keys() -> KeySet {
    keys(&[rsa_jwk("k1", Some("RS256")), testkeys::es256_jwk("ec1")])
}

fn check((v, required): &(Verifier, Vec<String>), ks: &KeySet, token: &str) -> Result<Principal, Reject> {
    let mut n = 0;
    let p = v.verify(ks, token, now_secs(), &mut n).map_err(|f| f.reject)?;
    if p.has_scopes(required) {
        Ok(p)
    } else {
        Err(INSUFFICIENT_SCOPE)
    }
}

fn signed(c: JWTClaims<testkeys::Extra>) -> String {
    rsa(RSA1, "k1").sign(c).unwrap()
}

#[test]
fn good_token_passes_with_principal() {
    let v = verifier(&["mcp:tools:call"]);
    let mut c = claims(ISS, "mcpserver", "openid mcp:tools:call");
    c.custom.client_id = Some("vscode".into());
    let p = check(&v, &rs_keys(), &signed(c)).unwrap();
    assert_eq!(p.sub.as_deref(), Some("alice"));
    assert_eq!(p.client.as_deref(), Some("vscode"));
    assert!(p.exp > now_secs());
}

#[test]
fn audience_any_of_list() {
    let v = verifier(&[]);
    assert!(check(&v, &rs_keys(), &signed(claims(ISS, "other", ""))).is_ok());
    let c = claims(ISS, "x", "").with_audiences(HashSet::from(["x".to_string(), "mcpserver".to_string()]));
    assert!(check(&v, &rs_keys(), &signed(c)).is_ok());
    assert_eq!(
        check(&v, &rs_keys(), &signed(claims(ISS, "backend", ""))),
        Err(Reject::Audience)
    );
    let mut c = claims(ISS, "x", "");
    c.audiences = None;
    assert_eq!(check(&v, &rs_keys(), &signed(c)), Err(Reject::Audience));
}

#[test]
fn issuer_exact() {
    let v = verifier(&[]);
    for iss in [
        "https://idp.example.com/mcp/",
        "https://IDP.example.com/mcp",
        "https://evil",
    ] {
        assert_eq!(
            check(&v, &rs_keys(), &signed(claims(iss, "mcpserver", ""))),
            Err(Reject::Issuer)
        );
    }
    let mut c = claims(ISS, "mcpserver", "");
    c.issuer = None;
    assert_eq!(check(&v, &rs_keys(), &signed(c)), Err(Reject::Issuer));
}

#[test]
fn expiry_with_skew() {
    let v = verifier(&[]);
    let now = now_secs();
    let mut c = claims(ISS, "mcpserver", "");
    c.issued_at = Some(UnixTimeStamp::from_secs(now - 600));
    c.invalid_before = None;
    c.expires_at = Some(UnixTimeStamp::from_secs(now - 30));
    assert!(check(&v, &rs_keys(), &signed(c.clone())).is_ok(), "within 60 s skew");
    c.expires_at = Some(UnixTimeStamp::from_secs(now - 90));
    assert_eq!(check(&v, &rs_keys(), &signed(c.clone())), Err(Reject::Expired));
    c.expires_at = None;
    assert_eq!(check(&v, &rs_keys(), &signed(c)), Err(Reject::NoExpiry));
}

#[test]
fn not_before_and_issued_at_with_skew() {
    let v = verifier(&[]);
    let now = now_secs();
    let mut c = claims(ISS, "mcpserver", "");
    c.invalid_before = Some(UnixTimeStamp::from_secs(now + 30));
    assert!(check(&v, &rs_keys(), &signed(c.clone())).is_ok());
    c.invalid_before = Some(UnixTimeStamp::from_secs(now + 120));
    assert_eq!(check(&v, &rs_keys(), &signed(c.clone())), Err(Reject::NotYetValid));
    c.invalid_before = None;
    c.issued_at = Some(UnixTimeStamp::from_secs(now + 120));
    assert_eq!(check(&v, &rs_keys(), &signed(c)), Err(Reject::NotYetValid));
}

#[test]
fn scopes_from_scope_or_scp() {
    let v = verifier(&["a", "b"]);
    assert!(check(&v, &rs_keys(), &signed(claims(ISS, "mcpserver", "b  a c"))).is_ok());
    assert_eq!(
        check(&v, &rs_keys(), &signed(claims(ISS, "mcpserver", "a"))),
        Err(INSUFFICIENT_SCOPE)
    );
    let mut c = claims(ISS, "mcpserver", "");
    c.custom.scope = None;
    c.custom.scp = Some(serde_json::json!(["a", "b"]));
    assert!(check(&v, &rs_keys(), &signed(c.clone())).is_ok());
    c.custom.scp = Some("a b".into());
    assert!(check(&v, &rs_keys(), &signed(c.clone())).is_ok());
    c.custom.scp = None;
    assert_eq!(check(&v, &rs_keys(), &signed(c)), Err(INSUFFICIENT_SCOPE));
}

#[test]
fn granted_scopes_travel_with_the_principal() {
    let (v, _) = verifier(&["a"]);
    let mut n = 0;
    let p = v
        .verify(&rs_keys(), &signed(claims(ISS, "mcpserver", "b a")), now_secs(), &mut n)
        .unwrap();
    assert_eq!(p.scopes, vec!["b", "a"]);
    assert!(p.has_scopes(&["a".into()]) && p.has_scopes(&[]));
    assert!(!p.has_scopes(&["a".into(), "c".into()]));
    assert!(!p.has_scopes(&["b a".into()]), "a scope is one word, not a substring");
}

#[test]
fn alg_none_rejected() {
    let v = verifier(&[]);
    let payload = serde_json::to_value(claims(ISS, "mcpserver", "")).unwrap();
    for alg in ["none", "None", "NONE"] {
        let t = forge(&serde_json::json!({"alg": alg, "typ": "JWT"}), &payload, b"");
        assert_eq!(check(&v, &rs_keys(), &t), Err(Reject::UnsupportedAlg));
    }
    let t = forge(&serde_json::json!({"alg": "none", "kid": "k1"}), &payload, b"");
    assert_eq!(check(&v, &rs_keys(), &t), Err(Reject::UnsupportedAlg));
}

#[test]
fn hs256_with_the_rsa_public_key_as_secret_rejected() {
    let v = verifier(&[]);
    let public = rsa(RSA1, "k1").public_key();
    for secret in [public.to_pem().unwrap(), rsa_jwk("k1", Some("RS256")).to_string()] {
        for kid in [Some("k1"), None] {
            let mut key = HS256Key::from_bytes(secret.as_bytes());
            if let Some(k) = kid {
                key = key.with_key_id(k);
            }
            let t = key.authenticate(claims(ISS, "mcpserver", "")).unwrap();
            assert_eq!(check(&v, &rs_keys(), &t), Err(Reject::UnsupportedAlg));
        }
    }
}

#[test]
fn key_must_fit_the_algorithm() {
    let v = verifier(&[]);
    // An RS256 token that names the EC key's kid.
    let t = rsa(RSA1, "ec1").sign(claims(ISS, "mcpserver", "")).unwrap();
    assert_eq!(check(&v, &rs_keys(), &t), Err(Reject::UnsupportedAlg));
    // A PS256 token against a key published for RS256 only.
    let ps = PS256KeyPair::from_pem(RSA1).unwrap().with_key_id("k1");
    let t = ps.sign(claims(ISS, "mcpserver", "")).unwrap();
    assert_eq!(check(&v, &rs_keys(), &t), Err(Reject::UnsupportedAlg));
    // ... which passes when the key does not restrict its algorithm.
    let open = keys(&[rsa_jwk("k1", None)]);
    assert!(check(&v, &open, &t).is_ok());
}

#[test]
fn bad_signature_and_tampering_rejected() {
    let v = verifier(&[]);
    let t = rsa(RSA2, "k1").sign(claims(ISS, "mcpserver", "")).unwrap();
    assert_eq!(check(&v, &rs_keys(), &t), Err(Reject::BadSignature));
    // Swap in a payload with another audience, keeping the signature.
    let good = signed(claims(ISS, "mcpserver", ""));
    let parts: Vec<&str> = good.split('.').collect();
    let evil = forge(
        &serde_json::json!({"alg": "RS256", "kid": "k1"}),
        &serde_json::to_value(claims(ISS, "mcpserver", "admin")).unwrap(),
        b"",
    );
    let evil_parts: Vec<&str> = evil.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], evil_parts[1], parts[2]);
    assert_eq!(check(&v, &rs_keys(), &spliced), Err(Reject::BadSignature));
}

#[test]
fn kid_selection() {
    let v = verifier(&[]);
    let verifier_only = &v.0;
    let mut j2 = rsa_jwk("k2", Some("RS256"));
    let k2pub: serde_json::Value = serde_json::from_str(&rsa(RSA2, "k2").public_key().to_jwk()).unwrap();
    j2["n"] = k2pub["n"].clone();
    let set = keys(&[rsa_jwk("k1", Some("RS256")), j2]);
    // Unknown kid: a refetch might find it.
    let t = rsa(RSA1, "k9").sign(claims(ISS, "mcpserver", "")).unwrap();
    assert_eq!(check(&v, &set, &t), Err(Reject::UnknownKey));
    // Not if the token is another issuer's: no key of ours could pass it.
    let mut n = 0;
    let t = rsa(RSA1, "k9")
        .sign(claims("https://other.example.com", "mcpserver", ""))
        .unwrap();
    assert_eq!(
        verifier_only.verify(&set, &t, now_secs(), &mut n).unwrap_err().reject,
        Reject::Issuer
    );
    assert_eq!(n, 0, "refused before any key is tried");
    // The named key is the only one tried.
    let t = rsa(RSA2, "k1").sign(claims(ISS, "mcpserver", "")).unwrap();
    let mut n = 0;
    assert_eq!(
        verifier_only.verify(&set, &t, now_secs(), &mut n).unwrap_err().reject,
        Reject::BadSignature
    );
    assert_eq!(n, 1);
    // Without a kid, every RS256 key is tried until one fits.
    let t = RS256KeyPair::from_pem(RSA2)
        .unwrap()
        .sign(claims(ISS, "mcpserver", ""))
        .unwrap();
    let mut n = 0;
    assert!(verifier_only.verify(&set, &t, now_secs(), &mut n).is_ok());
    assert_eq!(n, 2);
    // Without a kid and with no key of the algorithm.
    let es = ES384KeyPair::generate().sign(claims(ISS, "mcpserver", "")).unwrap();
    assert_eq!(check(&v, &set, &es), Err(Reject::UnknownKey));
}

#[test]
fn ec_and_eddsa_tokens_verify() {
    let v = verifier(&[]);
    let es = ES256KeyPair::generate().with_key_id("e");
    let ed = Ed25519KeyPair::generate().with_key_id("d");
    let set = keys(&[
        serde_json::from_str(&es.public_key().to_jwk()).unwrap(),
        serde_json::from_str(&ed.public_key().to_jwk()).unwrap(),
    ]);
    assert!(check(&v, &set, &es.sign(claims(ISS, "mcpserver", "")).unwrap()).is_ok());
    assert!(check(&v, &set, &ed.sign(claims(ISS, "mcpserver", "")).unwrap()).is_ok());
}

#[test]
fn garbage_is_malformed() {
    let v = verifier(&[]);
    for t in ["", "abc", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.%%%.x"] {
        assert_eq!(check(&v, &rs_keys(), t), Err(Reject::Malformed), "{t}");
    }
}

#[test]
fn header_rules_hold_on_the_fast_rsa_path() {
    let v = verifier(&[]);
    let good = signed(claims(ISS, "mcpserver", ""));
    let payload: serde_json::Value = decode_part(&good, 1);
    // Re-sign header variants with the real key, so only the header decides.
    use ::rsa::pkcs1v15::SigningKey;
    use ::rsa::pkcs8::DecodePrivateKey;
    use ::rsa::signature::{SignatureEncoding, Signer};
    let key = SigningKey::<sha2::Sha256>::new(::rsa::PrivateKey::from_pkcs8_pem(RSA1).unwrap());
    let sign = |header: serde_json::Value| {
        let unsigned = forge(&header, &payload, b"");
        let signing_input = unsigned.trim_end_matches('.');
        let sig = key.sign(signing_input.as_bytes()).to_vec();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    assert!(check(
        &v,
        &rs_keys(),
        &sign(json!({"alg": "RS256", "kid": "k1", "typ": "at+jwt"}))
    )
    .is_ok());
    assert!(check(&v, &rs_keys(), &sign(json!({"alg": "RS256", "kid": "k1"}))).is_ok());
    assert_eq!(
        check(
            &v,
            &rs_keys(),
            &sign(json!({"alg": "RS256", "kid": "k1", "crit": ["exp"], "exp": 1}))
        ),
        Err(Reject::Malformed)
    );
    assert_eq!(
        check(
            &v,
            &rs_keys(),
            &sign(json!({"alg": "RS256", "kid": "k1", "typ": "JOSE"}))
        ),
        Err(Reject::TokenType)
    );
}

/// `header` and `payload` as raw JSON text, signed with the k1 key.
fn sign_raw(header: &str, payload: &str) -> String {
    use ::rsa::pkcs1v15::SigningKey;
    use ::rsa::pkcs8::DecodePrivateKey;
    use ::rsa::signature::{SignatureEncoding, Signer};
    let key = SigningKey::<sha2::Sha256>::new(::rsa::PrivateKey::from_pkcs8_pem(RSA1).unwrap());
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let sig = key.sign(input.as_bytes()).to_vec();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn payload_with(extra: serde_json::Value) -> String {
    let mut p = serde_json::to_value(claims(ISS, "mcpserver", "")).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            p.as_object_mut().unwrap().remove(k);
        } else {
            p[k] = v.clone();
        }
    }
    p.to_string()
}

#[test]
fn validly_signed_but_malformed_or_foreign_tokens_are_refused() {
    let v = verifier(&[]);
    let ks = rs_keys();
    let h = r#"{"alg":"RS256","kid":"k1"}"#;
    let good = payload_with(json!({}));
    assert!(check(&v, &ks, &sign_raw(h, &good)).is_ok(), "the control");
    let cases = [
        // RFC 7515: the header is an object; crit must not be empty.
        (sign_raw(r#"["RS256",null,"k1"]"#, &good), Reject::Malformed),
        (
            sign_raw(r#"{"alg":"RS256","kid":"k1","crit":[]}"#, &good),
            Reject::Malformed,
        ),
        // Duplicate keys, in both orders.
        (
            sign_raw(r#"{"alg":"RS256","kid":"k1","kid":"k1"}"#, &good),
            Reject::Malformed,
        ),
        (
            sign_raw(h, &good.replacen('{', r#"{"iss":"https://evil.example","#, 1)),
            Reject::Malformed,
        ),
        (
            sign_raw(h, &good.replacen('}', r#","iss":"https://evil.example"}"#, 1)),
            Reject::Malformed,
        ),
        // Other kinds of JWT.
        (
            sign_raw(r#"{"alg":"RS256","kid":"k1","typ":"logout+jwt"}"#, &good),
            Reject::TokenType,
        ),
        (
            sign_raw(r#"{"alg":"RS256","kid":"k1","typ":"secevent+jwt"}"#, &good),
            Reject::TokenType,
        ),
        (
            sign_raw(r#"{"alg":"RS256","kid":"k1","typ":"dpop+jwt"}"#, &good),
            Reject::TokenType,
        ),
        // RFC 9068 requires sub; scope is a string.
        (sign_raw(h, &payload_with(json!({"sub": null}))), Reject::NoSubject),
        (sign_raw(h, &payload_with(json!({"sub": ""}))), Reject::NoSubject),
        (
            sign_raw(h, &payload_with(json!({"scope": ["a", "b"]}))),
            Reject::ScopeClaim,
        ),
        // NumericDates must be whole seconds a u64 holds.
        (
            sign_raw(h, &payload_with(json!({"exp": 4_000_000_000.5_f64}))),
            Reject::Malformed,
        ),
        (
            sign_raw(h, &good.replacen('}', r#","nbf":18446744073709551616}"#, 1)),
            Reject::Malformed,
        ),
        (sign_raw(h, &payload_with(json!({"iat": -1}))), Reject::Malformed),
    ];
    for (token, want) in cases {
        assert_eq!(check(&v, &ks, &token).map(|_| ()), Err(want), "{token}");
    }
    // typ JWT, at+jwt and application/at+jwt pass by default.
    for typ in ["JWT", "at+jwt", "application/at+JWT"] {
        let t = sign_raw(&format!(r#"{{"alg":"RS256","kid":"k1","typ":"{typ}"}}"#), &good);
        assert!(check(&v, &ks, &t).is_ok(), "{typ}");
    }
}

#[test]
fn allowed_token_types_are_strict() {
    let cfg = serde_json::json!({"oidc": {
        "issuer": ISS, "audience": "mcpserver", "jwksUrl": "https://idp.example.com/keys",
        "allowedTokenTypes": ["at+jwt"]
    }});
    let v = (
        Verifier::new(parse(cfg.to_string().as_bytes()).unwrap().oidc.as_ref().unwrap()),
        vec![],
    );
    let good = payload_with(json!({}));
    let ks = rs_keys();
    assert!(check(
        &v,
        &ks,
        &sign_raw(r#"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#, &good)
    )
    .is_ok());
    assert_eq!(
        check(&v, &ks, &sign_raw(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#, &good)).map(|_| ()),
        Err(Reject::TokenType)
    );
    assert_eq!(
        check(&v, &ks, &sign_raw(r#"{"alg":"RS256","kid":"k1"}"#, &good)).map(|_| ()),
        Err(Reject::TokenType),
        "a missing typ is not at+jwt"
    );
}

fn decode_part(token: &str, i: usize) -> serde_json::Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The claims the filter read through jwt-simple's `JWTClaims` before it
/// read them itself.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct JwtSimpleExtra {
    scope: Option<serde_json::Value>,
    scp: Option<serde_json::Value>,
    azp: Option<String>,
    client_id: Option<String>,
}

/// `Claims::read` takes exactly the payloads jwt-simple's claims type took,
/// and reads the same values from them.
#[test]
fn claims_are_read_as_jwt_simple_read_them() {
    let values = [
        json!("x"),
        json!(""),
        json!(1),
        json!(null),
        json!(true),
        json!(["a", "b"]),
        json!([]),
        json!(["a", 1]),
        json!({"a": 1}),
    ];
    let names = [
        "iss",
        "sub",
        "aud",
        "jti",
        "nonce",
        "azp",
        "client_id",
        "scope",
        "scp",
        "other",
    ];
    let mut checked = 0;
    for name in names {
        for value in &values {
            let mut payload = json!({"iss": ISS, "sub": "alice", "aud": "mcpserver", "exp": 4_000_000_000u64});
            payload[name] = value.clone();
            let theirs = serde_json::from_value::<JWTClaims<JwtSimpleExtra>>(payload.clone()).ok();
            let ours = super::Claims::read(&payload);
            assert_eq!(ours.is_some(), theirs.is_some(), "{payload}");
            if let (Some(ours), Some(theirs)) = (ours, theirs) {
                assert_eq!(ours.iss, theirs.issuer.as_deref(), "{payload}");
                assert_eq!(ours.sub, theirs.subject.as_deref(), "{payload}");
                assert_eq!(ours.exp, theirs.expires_at.map(|t| t.as_secs()), "{payload}");
                let audiences = |a: &Audiences| match a {
                    Audiences::AsString(s) => vec![s.clone()],
                    Audiences::AsSet(s) => {
                        let mut v: Vec<String> = s.iter().cloned().collect();
                        v.sort();
                        v
                    }
                };
                let mut our_aud: Option<Vec<String>> = ours.aud.map(|a| a.iter().map(|s| s.to_string()).collect());
                if let Some(a) = our_aud.as_mut() {
                    a.sort();
                    a.dedup();
                }
                assert_eq!(our_aud, theirs.audiences.as_ref().map(audiences), "{payload}");
                assert_eq!(ours.scope.cloned(), theirs.custom.scope, "{payload}");
                assert_eq!(ours.scp.cloned(), theirs.custom.scp, "{payload}");
                assert_eq!(
                    ours.client,
                    theirs.custom.azp.or(theirs.custom.client_id).as_deref(),
                    "{payload}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "{checked}");
}
