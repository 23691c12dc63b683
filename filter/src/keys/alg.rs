//! The JWS algorithms the filter accepts, by name and by the kind of key
//! that can serve them. A leaf: keys, signatures and tokens all name it.

/// The asymmetric algorithms we accept. `none` and every HS* are absent on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    /// Every algorithm we accept (for tests and the fuzz targets).
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    /// The algorithms a key of this JWK `kty`/`crv` could serve.
    pub fn for_jwk(kty: &str, crv: Option<&str>) -> &'static [Alg] {
        use Alg::*;
        match (kty, crv) {
            ("RSA", _) => &[RS256, RS384, RS512, PS256, PS384, PS512],
            ("EC", Some("P-256")) => &[ES256],
            ("EC", Some("P-384")) => &[ES384],
            ("OKP", Some("Ed25519")) => &[EdDSA],
            _ => &[],
        }
    }
}
