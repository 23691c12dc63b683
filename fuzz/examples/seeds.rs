//! Writes the seed corpus, `fuzz/corpus/<target>/`, from the fixtures in
//! `src/lib.rs`: a few valid and invalid inputs per target. Run from fuzz/:
//! `cargo run --example seeds`. Files are named by a hash of their content,
//! so rerunning replaces rather than duplicates (except the ES256 token,
//! whose signature is randomized).

use jwt_simple::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use token_exchange_filter::fuzzing::CalloutResponse;
use token_exchange_filter::fuzzing::{Stamp, Step};
use token_exchange_fuzz::*;

fn write(target: &str, inputs: &[Vec<u8>]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("{}: {e}", dir.display());
    }
    for input in inputs {
        let name: String = Sha256::digest(input)[..10].iter().map(|b| format!("{b:02x}")).collect();
        if let Err(e) = std::fs::write(dir.join(name), input) {
            panic!("{target}: {e}");
        }
    }
    println!("{target}: {} seeds", inputs.len());
}

fn b(s: impl AsRef<[u8]>) -> Vec<u8> {
    s.as_ref().to_vec()
}

/// `prefix` followed by `a \n b`.
fn joined(prefix: &str, a: &str, c: &str) -> Vec<u8> {
    format!("{prefix}{a}\n{c}").into_bytes()
}

/// `joined` with a first byte that is not ASCII.
fn high(flags: u8, a: &str, c: &str) -> Vec<u8> {
    [vec![flags], format!("{a}\n{c}").into_bytes()].concat()
}

fn claims_with(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&good_claims()).unwrap_or_default();
    f(&mut v);
    v.to_string()
}

fn main() {
    let good = good_claims();
    let rs = forge_rs256(good_header("RS256", RSA_KID).as_bytes(), good.as_bytes());
    let ed = forge_ed25519(good_header("EdDSA", ED_KID).as_bytes(), good.as_bytes());
    let es = serde_json::from_str::<JWTClaims<serde_json::Value>>(&good)
        .ok()
        .and_then(|c| es256().sign(c).ok())
        .unwrap_or_default();

    // The valid seeds must be valid, or the fuzzer starts far from the paths
    // behind the signature.
    for (name, token) in [("RS256", &rs), ("EdDSA", &ed), ("ES256", &es)] {
        let mut signatures = 0;
        if let Err(f) = verifier().verify(keyset(), token, NOW, &mut signatures) {
            panic!("the {name} seed token does not verify: {:?}", f.reject);
        }
    }

    write(
        "bearer",
        &[
            b(format!("Bearer {rs}")),
            b("bearer abc.def"),
            b("  BEARER   abc.def  "),
            b("Bearer ab+/c=="),
            b("Basic dTpw"),
            b("Bearer a,Bearer b"),
            b("Bearer"),
            b("Bearer a b"),
            b("Bearer ==="),
            b("Bearer a\"b"),
        ],
    );

    let expired = claims_with(|c| c["exp"] = json!(NOW - 3600));
    let wrong_aud = claims_with(|c| c["aud"] = json!(["someone-else"]));
    let wrong_iss = claims_with(|c| c["iss"] = json!("https://evil.example.com"));
    let no_exp = claims_with(|c| {
        if let Some(o) = c.as_object_mut() {
            o.remove("exp");
        }
    });
    let future = claims_with(|c| c["nbf"] = json!(NOW + 3600));
    let scp = claims_with(|c| {
        c["scp"] = json!(["mcp:tools", "x"]);
        c["client_id"] = json!("cli");
    });
    let float_exp = claims_with(|c| c["exp"] = json!(4.1e9));
    let tampered = format!("{}A", &rs[..rs.len() - 1]);
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(good.as_bytes())
    );
    let hs = format!(
        "{}.{}.c2ln",
        base64_url(br#"{"alg":"HS256","kid":"rsa-1"}"#),
        base64_url(good.as_bytes())
    );
    let unknown_kid = forge_rs256(good_header("RS256", "rotated").as_bytes(), good.as_bytes());
    let no_kid = forge_rs256(br#"{"alg":"RS256"}"#, good.as_bytes());
    let ps_on_rs = forge_rs256(good_header("PS256", RSA_KID).as_bytes(), good.as_bytes());
    let mut jwt = vec![
        b(format!("0{rs}")),
        b(format!("0{ed}")),
        b(format!("0{es}")),
        b(format!("0{tampered}")),
        b(format!("0{none}")),
        b(format!("0{hs}")),
        b(format!("0{unknown_kid}")),
        b(format!("0{no_kid}")),
        b(format!("0{ps_on_rs}")),
        b("0a.b.c"),
        b("0eyJhbGciOiJSUzI1NiJ9.e30"),
    ];
    let mut rs256 = Vec::new();
    for claims in [
        &good, &expired, &wrong_aud, &wrong_iss, &no_exp, &future, &scp, &float_exp,
    ] {
        jwt.push(joined("1", &good_header("EdDSA", ED_KID), claims));
        rs256.push(joined("", &good_header("RS256", RSA_KID), claims));
    }
    jwt.push(joined("1", r#"{"alg":"EdDSA","crit":["exp"]}"#, &good));
    jwt.push(joined("1", r#"{"alg":"EdDSA","typ":"JOSE"}"#, &good));
    jwt.push(joined("1", r#"{"alg":"ES256","kid":"ec-1"}"#, &good));
    jwt.push(joined("3", &good_header("EdDSA", ED_KID), &good));
    write("jwt_verify", &jwt);
    rs256.push(joined("", r#"{"alg":"RS256"}"#, &good));
    rs256.push(joined("", r#"{"alg":"RS256","typ":"at+jwt"}"#, &good));
    rs256.push(joined("", r#"{"alg":"RS256","typ":"JOSE"}"#, &good));
    rs256.push(joined("", r#"{"alg":"RS256","crit":["b64"],"b64":false}"#, &good));
    rs256.push(joined("", r#"{"alg":"RS384","kid":"rsa-1"}"#, &good));
    write("jwt_rs256", &rs256);

    let fixed: serde_json::Value = serde_json::from_str(&jwks_json()).unwrap_or_default();
    let key = |i: usize| fixed["keys"][i].clone();
    let mut enc = key(0);
    enc["use"] = json!("enc");
    let mut no_alg = key(0);
    if let Some(o) = no_alg.as_object_mut() {
        o.remove("alg");
    }
    write(
        "jwks_parse",
        &[
            b(jwks_json()),
            b(json!({"keys": [key(0)]}).to_string()),
            b(json!({"keys": [no_alg]}).to_string()),
            b(json!({"keys": [key(1), key(2)]}).to_string()),
            b(json!({"keys": [enc, {"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}).to_string()),
            b(
                json!({"keys": [{"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB"}, {"kid": "nokty"}]})
                    .to_string(),
            ),
            b(r#"{"keys":[]}"#),
            b("{}"),
            b("nope"),
            b("public, max-age=300"),
            b("no-store"),
        ],
    );

    let base: serde_json::Value = serde_json::from_str(&config_json()).unwrap_or_default();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = base.clone();
        f(&mut c);
        b(c.to_string())
    };
    let sections = exchange_sections();
    let mut configs = vec![
        b(config_json()),
        b(
            json!({"oidc": {"issuer": ISSUER, "audience": AUDIENCE, "jwksUrl": "https://idp.example.com/k"}})
                .to_string(),
        ),
        b(json!({"oidc": {"issuer": ISSUER, "audience": AUDIENCE}}).to_string()),
        with(&|c| {
            c["rules"] = json!([
                {"match": {"hosts": ["*.example.com:8443"], "pathPrefix": "/public"}, "skip": true},
                {"match": {"pathPrefix": "/v"}, "requiredScopes": ["a"], "tokenExchange": null},
                {"match": {"hosts": ["api.example.com"]}, "tokenExchange": sections[1].clone()}
            ])
        }),
        with(&|c| {
            c["oidc"]["resourceUrl"] = json!("https://mcp.example.com/mcp");
            c["oidc"]["scopesSupported"] = json!(["mcp:tools"]);
            c["mcp"] = json!({"toolScopes": {"delete": ["admin"]}, "maxBodyBytes": 65536.0});
            c["cors"] = json!({"allowedOrigins": ["https://app.example.com"]});
            c["claimToHeaders"] = json!([{"claim": "sub", "header": "x-user"}]);
            c["cache"] = json!({"maxEntries": 1000, "expirySkewSeconds": 30});
            c["audit"] = json!(false);
        }),
        with(&|c| {
            c["tokenExchange"] = json!({
                "tokenUrl": "https://idp.example.com/token", "clientId": "gw",
                "clientAssertionKeyEnv": "EC_KEY", "clientAssertionAlg": "ES256",
                "clientAssertionCertEnv": "CERT", "audience": "backend"
            })
        }),
        with(&|c| {
            c["tokenExchange"] = json!({
                "tokenUrl": "https://idp.example.com/token", "clientId": "gw",
                "clientAssertionKeyEnv": "RSA_KEY", "clientAssertionKid": "k1", "audience": "backend"
            })
        }),
        with(&|c| {
            c["tokenExchange"] = json!({
                "provider": "id-jag", "tokenUrl": "https://idp.example.com/token", "clientId": "gw",
                "clientSecretEnv": "CLIENT_SECRET", "audience": "https://as.example.com", "scopes": ["todos.read"],
                "actor": {"source": "clientCredentials", "scopes": ["agent"]},
                "assertionGrant": {"tokenUrl": "https://as.example.com/token", "clientId": "gw-at-as",
                    "clientSecretEnv": "CLIENT_SECRET", "resource": "https://api.example.com/"}
            })
        }),
        with(&|c| c["tokenExchange"]["actor"] = json!({"source": "env", "env": "CLIENT_SECRET", "tokenType": "jwt"})),
        with(&|c| c["tokenExchange"]["clientSecretEnv"] = json!("UNSET")),
        with(&|c| c["oidc"]["jwksUrl"] = json!("http://idp.example.com/k")),
        with(&|c| c["oidc"]["clockSkewSeconds"] = json!(1e6)),
        with(&|c| c["oidc"]["audiance"] = json!("typo")),
        b("{}"),
        b("[]"),
        b("not json"),
    ];
    for te in &sections[2..] {
        configs.push(with(&|c| c["tokenExchange"] = te.clone()));
    }
    write("config_parse", &configs);

    let access = forge_ed25519(br#"{"alg":"EdDSA"}"#, br#"{"exp":1700003600,"sub":"alice"}"#);
    let ok = |extra: serde_json::Value| {
        let mut v = json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v.to_string()
    };
    let answer = CalloutResponse {
        headers: vec![(":status".into(), "200".into())],
        body: ok(json!({})).into_bytes(),
        truncated: false,
    };
    if let Err(f) = exchangers()[0].answer(
        Step::Token,
        &answer,
        10,
        SUBJECT,
        &Stamp {
            now_ms: 0,
            jti: "jti-1".into(),
        },
    ) {
        panic!("the token endpoint seed is refused: {f:?}");
    }
    write(
        "token_answer",
        &[
            joined("@", "200", &ok(json!({}))),
            joined(
                "@",
                "200",
                &ok(json!({"issued_token_type": "urn:ietf:params:oauth:token-type:jwt"})),
            ),
            joined("A", "200", &ok(json!({"token_type": "N_A", "expires_in": "600"}))),
            joined("A", "200", &ok(json!({"token_type": "mac"}))),
            joined("A", "200", &ok(json!({"access_token": "has space"}))),
            joined(
                "B",
                "200",
                r#"{"access_token":"opaque-token","token_type":"Bearer","expires_in":3599}"#,
            ),
            joined(
                "B",
                "400",
                r#"{"error":"interaction_required","claims":"{\"access_token\":{\"acrs\":{\"essential\":true}}}"}"#,
            ),
            joined("B", "400", r#"{"error":"invalid_grant","claims":"{}"}"#),
            joined(
                "@",
                "400",
                r#"{"error":"invalid_grant","error_description":"token expired"}"#,
            ),
            joined(
                "@",
                "400",
                &json!({"error": "invalid_request", "error_description": format!("bad {SUBJECT}")}).to_string(),
            ),
            joined("A", "403", r#"{"error":"invalid_scope"}"#),
            joined("@", "401", "<html>no</html>"),
            joined("@", "503", ""),
            joined("H", "504", ""),
            joined("P", "200", &ok(json!({}))),
            joined("`", "", ""),
            joined(
                "C",
                "200",
                &ok(json!({"issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})),
            ),
            joined(
                "G",
                "200",
                r#"{"accessToken":"ya29.token","expireTime":"2014-10-02T15:01:23.045123456Z"}"#,
            ),
            joined(
                "G",
                "200",
                r#"{"accessToken":"ya29.token","expireTime":"2014-10-02T15:01:23+01:00"}"#,
            ),
            joined(
                "G",
                "403",
                r#"{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED"}}"#,
            ),
            joined("G", "429", "{}"),
            // Bit 7: the resource AS's answer to id-jag's assertion grant
            // (0xC0), and the actor token's client credentials grant (0xC4).
            high(0xC0, "200", &ok(json!({"scope": "todos.read"}))),
            high(
                0xC0,
                "400",
                r#"{"error":"invalid_grant","error_description":"ID-JAG was used before"}"#,
            ),
            high(
                0xC4,
                "200",
                r#"{"access_token":"own-actor","token_type":"Bearer","expires_in":300}"#,
            ),
            high(0xC4, "400", r#"{"error":"invalid_scope"}"#),
        ],
    );

    // Rule bytes: prefix index | action << 4 (0 skip, n policy n) | hosts << 6.
    let admin = 4 | 1 << 4;
    let other_skip = 3 << 6;
    let mut paths = Vec::new();
    for p in [
        "/mcp",
        "/MCP",
        "/mcp/",
        "/%6Dcp",
        "/mcp;v",
        "//mcp",
        "/a/../mcp",
        "/mcp/.",
        "/mcp%2F",
        "/mcp\\",
    ] {
        paths.push(paths::input(8, &[], p));
    }
    for p in [
        "/admin/v",
        "/Admin/v",
        "/%61dmin/v",
        "/admin;v/",
        "//admin/v",
        "/v/../admin",
        "/admin%2fv",
        "/a/..;/admin/",
    ] {
        paths.push(paths::input(1, &[admin], p));
    }
    paths.push(paths::input(1, &[admin], "/a%2"));
    paths.push(paths::input(2 | 1 << 4, &[other_skip, admin], "/a%2F../%2"));
    paths.push(paths::input(2 | 8 | 2 << 4, &[other_skip, admin], "/MCP"));
    write("path_readings", &paths);

    let active = |extra: serde_json::Value| {
        let mut v = json!({"active": true, "sub": "alice", "client_id": "vscode", "iss": ISSUER,
            "aud": AUDIENCE, "exp": EXP, "iat": NOW, "scope": "mcp:tools:call"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v.to_string()
    };
    write(
        "introspection_answer",
        &[
            high(0, "200", &active(json!({}))),
            high(1, "200", &active(json!({"aud": [AUDIENCE, "other"]}))),
            high(1, "200", &active(json!({"aud": null}))),
            high(0, "200", r#"{"active":true,"client_id":"svc","exp":4102444800}"#),
            high(0, "200", &active(json!({"exp": NOW - 61}))),
            high(0, "200", &active(json!({"iss": "https://evil.example"}))),
            high(0, "200", r#"{"active":false}"#),
            high(0, "200", r#"{"active":true,"active":true}"#),
            high(0, "401", r#"{"error":"invalid_client"}"#),
            high(2, "", ""),
            high(4, "200", &active(json!({}))),
        ],
    );
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
