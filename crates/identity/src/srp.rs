//! Secure Remote Password (SRP-6a) as Cognito's USER_SRP_AUTH uses it, bit for bit what
//! amazon-cognito-identity-js, Amplify and pycognito compute:
//!
//! - group: the 3072-bit prime of RFC 5054 (RFC 3526 group 15), `g = 2`;
//! - `H` is SHA-256 over bytes, and numbers are hashed as their *sign-padded* big-endian
//!   bytes ([`pad`]: one zero byte in front when the top bit is set — not padded to `|N|`);
//! - `k = H(pad(N) | pad(g))`, `u = H(pad(A) | pad(B))`;
//! - `x = H(pad(salt) | H(poolName | userId | ":" | password))`, `v = g^x mod N`, where
//!   `poolName` is the part of the pool id after `_` and `userId` is `USER_ID_FOR_SRP`;
//! - server: `B = k·v + g^b mod N`, `S = (A · v^u)^b mod N`;
//! - key = HKDF-SHA256(ikm = pad(S), salt = pad(u), info = "Caldera Derived Key"), 16 bytes;
//! - signature = HMAC-SHA256(key, poolName | userId | secretBlock | timestamp), base64.
//!
//! Invariant: a salt stored by [`make_verifier`] has no leading zero nibble and its top bit
//! clear, so its hex form is the same whether a client pads the string (pycognito) or the
//! number (JavaScript): both hash the same bytes.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use num_bigint::BigUint;
use rand::RngCore;
use sha2::{Digest, Sha256};

const N_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64",
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7",
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6B",
    "F12FFA06D98A0864D87602733EC86A64521F2B18177B200C",
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB31",
    "43DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
);

struct Group {
    n: BigUint,
    g: BigUint,
    k: BigUint,
}

fn group() -> &'static Group {
    static G: OnceLock<Group> = OnceLock::new();
    G.get_or_init(|| {
        let n = BigUint::parse_bytes(N_HEX.as_bytes(), 16).unwrap_or_default();
        let g = BigUint::from(2u32);
        let k = hash_numbers(&[&n, &g]);
        Group { n, g, k }
    })
}

/// Big-endian bytes with one zero byte in front when the top bit is set (a positive
/// two's-complement number), as Cognito's clients hash numbers.
pub fn pad(n: &BigUint) -> Vec<u8> {
    let mut b = n.to_bytes_be();
    if b.first().is_some_and(|x| x & 0x80 != 0) {
        b.insert(0, 0);
    }
    b
}

fn hash_numbers(ns: &[&BigUint]) -> BigUint {
    let mut h = Sha256::new();
    for n in ns {
        h.update(pad(n));
    }
    BigUint::from_bytes_be(&h.finalize())
}

/// `x = H(pad(salt) | hex(H(poolName | userId | ":" | password)))`.
fn private_x(pool_name: &str, user_id: &str, password: &str, salt: &BigUint) -> BigUint {
    let inner = Sha256::digest(format!("{pool_name}{user_id}:{password}").as_bytes());
    let mut h = Sha256::new();
    h.update(pad(salt));
    h.update(inner);
    BigUint::from_bytes_be(&h.finalize())
}

/// The part of a pool id after `_`, which Cognito's clients put in every SRP hash.
pub fn pool_name(pool_id: &str) -> &str {
    pool_id.split_once('_').map_or(pool_id, |(_, n)| n)
}

/// A fresh `(salt, verifier)` pair for a password, both lower-case hex.
pub fn make_verifier(pool_id: &str, user_id: &str, password: &str) -> (String, String) {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    // Top nibble 1..=7: no leading zero, top bit clear (see the module invariant).
    salt[0] = 0x10 | (salt[0] & 0x6f);
    let salt = BigUint::from_bytes_be(&salt);
    let v = verifier_for(pool_id, user_id, password, &salt);
    (salt.to_str_radix(16), v.to_str_radix(16))
}

fn verifier_for(pool_id: &str, user_id: &str, password: &str, salt: &BigUint) -> BigUint {
    let g = group();
    let x = private_x(pool_name(pool_id), user_id, password, salt);
    g.g.modpow(&x, &g.n)
}

/// The server's half of one exchange: its secret `b` and public `B`, hex.
pub struct ServerEphemeral {
    pub b: String,
    pub big_b: String,
}

/// Picks `b` and computes `B = k·v + g^b mod N` (never 0 mod N).
pub fn server_ephemeral(verifier_hex: &str) -> Option<ServerEphemeral> {
    let g = group();
    let v = BigUint::parse_bytes(verifier_hex.as_bytes(), 16)?;
    loop {
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        let b = BigUint::from_bytes_be(&b);
        let big_b = (&g.k * &v + g.g.modpow(&b, &g.n)) % &g.n;
        if big_b != BigUint::ZERO {
            return Some(ServerEphemeral {
                b: b.to_str_radix(16),
                big_b: big_b.to_str_radix(16),
            });
        }
    }
}

/// Whether a client's `A` is acceptable: a hex number that is not 0 mod N.
pub fn valid_client_public(a_hex: &str) -> bool {
    BigUint::parse_bytes(a_hex.as_bytes(), 16).is_some_and(|a| a % &group().n != BigUint::ZERO)
}

/// What the server keeps between the challenge and the client's answer.
pub struct Exchange<'a> {
    pub pool_id: &'a str,
    pub user_id: &'a str,
    pub verifier: &'a str,
    pub a: &'a str,
    pub b: &'a str,
    pub big_b: &'a str,
}

/// The 16-byte key both sides derive; `None` when the numbers are malformed or `u = 0`.
pub fn session_key(x: &Exchange<'_>) -> Option<[u8; 16]> {
    let g = group();
    let parse = |s: &str| BigUint::parse_bytes(s.as_bytes(), 16);
    let (v, a, b, big_b) = (
        parse(x.verifier)?,
        parse(x.a)?,
        parse(x.b)?,
        parse(x.big_b)?,
    );
    if &a % &g.n == BigUint::ZERO {
        return None;
    }
    let u = hash_numbers(&[&a, &big_b]);
    if u == BigUint::ZERO {
        return None;
    }
    let s = (a * v.modpow(&u, &g.n)).modpow(&b, &g.n);
    derive_key(&s, &u)
}

fn derive_key(s: &BigUint, u: &BigUint) -> Option<[u8; 16]> {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&pad(u)), &pad(s));
    let mut okm = [0u8; 16];
    hk.expand(b"Caldera Derived Key", &mut okm).ok()?;
    Some(okm)
}

/// `HMAC-SHA256(key, poolName | userId | secretBlock | timestamp)`.
pub fn signature(
    key: &[u8; 16],
    pool_id: &str,
    user_id: &str,
    secret_block: &[u8],
    timestamp: &str,
) -> Vec<u8> {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is unreachable.
        Err(_) => return Vec::new(),
    };
    mac.update(pool_name(pool_id).as_bytes());
    mac.update(user_id.as_bytes());
    mac.update(secret_block);
    mac.update(timestamp.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Checks a client's signature in constant time.
pub fn verify_signature(
    key: &[u8; 16],
    pool_id: &str,
    user_id: &str,
    secret_block: &[u8],
    timestamp: &str,
    claimed: &[u8],
) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(pool_name(pool_id).as_bytes());
    mac.update(user_id.as_bytes());
    mac.update(secret_block);
    mac.update(timestamp.as_bytes());
    mac.verify_slice(claimed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's side, as pycognito computes it, for round trips.
    fn client_key(
        pool_id: &str,
        user_id: &str,
        password: &str,
        salt_hex: &str,
        a: &BigUint,
        big_b_hex: &str,
    ) -> [u8; 16] {
        let g = group();
        let big_a = g.g.modpow(a, &g.n);
        let big_b = BigUint::parse_bytes(big_b_hex.as_bytes(), 16).expect("B");
        let salt = BigUint::parse_bytes(salt_hex.as_bytes(), 16).expect("salt");
        let u = hash_numbers(&[&big_a, &big_b]);
        let x = private_x(pool_name(pool_id), user_id, password, &salt);
        let gx = g.g.modpow(&x, &g.n);
        let kgx = (&g.k * gx) % &g.n;
        let base = ((&big_b + &g.n) - kgx) % &g.n;
        let s = base.modpow(&(a + &u * &x), &g.n);
        derive_key(&s, &u).expect("key")
    }

    const VECTOR_V: &str = concat!(
        "25a95c00514f51be4299fa309242b862d8d564933bd0822c437de8f4c54f5307",
        "dc728e643f3d1a9e76065798bcce8852da47c9537e003dadca8438e34371536a",
        "3ed2ff523960a6ea2d1c073067ed95dff972b8836d8a5e49a8b53ddefe8e4def",
        "c71b17a30d22b907223015ae13bfef18d1a38deb3450cd0f274de7c300382fde",
        "6525465950efe627136494296fa1eb4e5f392a268b1525fd151b063bf9234453",
        "c843915af8d6dc61caf5c7e7b9d3b55bcb84188d6f0d42f4d5ddc0346fb29ae8",
        "8f582eedb567899db7c8d5e21e60e58a5c9fda20a70ef541d589c0e73b024361",
        "d7ee20e2613d02af8a6381e9960bf30a0f5cb08d4b6998eb5ba89d66ac92df1d",
        "0bc817c067975818c88908625f8b8b983081b46e7a8d8d093e3c223cc6bc2d71",
        "591f1ac5cbba635093c74bfc6346037b9e99cb48730dc3e95efddb34fb68f4eb",
        "6dec3f180cab9c434d0d775982cb061ba01e64dc731c1d6934b844b124c3feb7",
        "c122ceb7be8d05ce680fced0055447ad13c57ecb2737ed0a625d37e7ac8d216e",
    );
    const VECTOR_SMALL_A: &str = "1234123412341234123412341234123412341234123412341234123412341234";
    const VECTOR_SMALL_B: &str = "5678567856785678567856785678567856785678567856785678567856785678";
    const VECTOR_KEY: &str = "42610b82919317fed57802721d98a3fb";
    const VECTOR_SIG: &str = "b5df0f64c3c289a67b11c6b1ece6c8fd1460846b07e33b99dbebdd73202d50ae";

    #[test]
    fn k_is_cognitos() {
        // k = H(00 | N | 02), as amazon-cognito-identity-js and pycognito compute it.
        assert_eq!(
            group().k.to_str_radix(16),
            "538282c4354742d7cbbde2359fcf67f9f5b3a6b08791e5011b43b8a5b66d9ee6"
        );
    }

    #[test]
    fn fixed_vectors_match_pycognito() {
        // Produced with pycognito's AWSSRP helpers (see tests/cognito.rs for the
        // live interop test): pool us-east-2_AbCdEfGhI, user "user-1", password
        // "Passw0rd!", salt 1a2b3c4d5e6f708192a3b4c5d6e7f801, a = 0x1234…, b = 0x5678….
        let pool = "us-east-2_AbCdEfGhI";
        let salt = BigUint::parse_bytes(b"1a2b3c4d5e6f708192a3b4c5d6e7f801", 16).expect("salt");
        let v = verifier_for(pool, "user-1", "Passw0rd!", &salt);
        assert_eq!(v.to_str_radix(16), VECTOR_V);
        let a = BigUint::parse_bytes(VECTOR_SMALL_A.as_bytes(), 16).expect("a");
        let g = group();
        let big_a = g.g.modpow(&a, &g.n).to_str_radix(16);
        let b = VECTOR_SMALL_B;
        let big_b = ((&g.k * &v)
            + g.g
                .modpow(&BigUint::parse_bytes(b.as_bytes(), 16).expect("b"), &g.n))
            % &g.n;
        let big_b = big_b.to_str_radix(16);
        let key = session_key(&Exchange {
            pool_id: pool,
            user_id: "user-1",
            verifier: &v.to_str_radix(16),
            a: &big_a,
            b,
            big_b: &big_b,
        })
        .expect("key");
        assert_eq!(hex::encode(key), VECTOR_KEY);
        let sig = signature(
            &key,
            pool,
            "user-1",
            b"secret-block",
            "Tue Jan 2 03:04:05 UTC 2024",
        );
        assert_eq!(hex::encode(sig), VECTOR_SIG);
    }

    #[test]
    fn round_trip_with_random_values() {
        let pool = "eu-west-1_Zz9Yy8Xx7";
        let (salt, v) = make_verifier(pool, "alice", "S3cret!pw");
        assert!(!salt.starts_with('0') && u8::from_str_radix(&salt[..1], 16).expect("hex") < 8);
        let g = group();
        let mut a = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut a);
        let a = BigUint::from_bytes_be(&a);
        let big_a = g.g.modpow(&a, &g.n).to_str_radix(16);
        assert!(valid_client_public(&big_a));
        assert!(!valid_client_public(&g.n.to_str_radix(16)));
        assert!(!valid_client_public("zz"));
        let eph = server_ephemeral(&v).expect("B");
        let server = session_key(&Exchange {
            pool_id: pool,
            user_id: "alice",
            verifier: &v,
            a: &big_a,
            b: &eph.b,
            big_b: &eph.big_b,
        })
        .expect("key");
        let client = client_key(pool, "alice", "S3cret!pw", &salt, &a, &eph.big_b);
        assert_eq!(server, client);
        let wrong = client_key(pool, "alice", "S3cret!pX", &salt, &a, &eph.big_b);
        assert_ne!(server, wrong);
        let sig = signature(&client, pool, "alice", b"blk", "ts");
        assert!(verify_signature(&server, pool, "alice", b"blk", "ts", &sig));
        assert!(!verify_signature(
            &server, pool, "alice", b"blk", "ts2", &sig
        ));
    }
}
