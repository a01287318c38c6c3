//! Player and host tokens: `v2.<role>.<quiz_id>.<player_id>.<expires>.<mac>`,
//! or, for a quiz spread over several nodes,
//! `v3.<role>.<quiz_id>.<player_id>.<expires>.<spread>.<mac>`.
//!
//! `role` is `p` (player) or `h` (host, empty player id); `expires` is the
//! end of the token's life in Unix seconds: issue time (the player's join
//! time, the quiz's creation) plus the key's lifetime, which the service
//! ties to the quiz's retention (`redis_retention_live_s +
//! redis_retention_ended_s`), so a token does not outlive its quiz by much
//! and cannot drive a later quiz that reuses the id. Derived from the issue
//! time, not the clock, so a replayed join gets the very same token. `mac`
//! is base64url(HMAC-SHA256(secret, everything before the last dot)).
//! `spread` (v3 only, 2–64) is the quiz's number of core nodes
//! ([`crate::model::Layout::spread`]): edge-lb reads it, and the player id,
//! from the token (without verifying it) to send the player's WebSocket to
//! one node of the spread, so every edge-lb process agrees with no shared
//! state. A forged spread only lands a client on another node of the same
//! quiz, which verifies the MAC and refuses it (4001). Quizzes on one node
//! keep v2 tokens, exactly as before.
//! Tokens of the earlier format `v1.<role>.<quiz_id>.<player_id>.<mac>`
//! (no expiry), issued before this version, are still accepted so sessions
//! survive the upgrade; they stop mattering once their quizzes expire. Every
//! core node holds the same secret (`token_secret`), so any node verifies a
//! token issued by any other, e.g. after a failover. Quiz ids and player ids
//! never contain a dot, so the format is unambiguous; the token only uses
//! URL-safe characters, so it travels in a query string unescaped.
//!
//! The same key also derives player ids from join idempotency keys
//! ([`TokenKey::derive_player_id`]): a retried join with the same key gets
//! the same player id, hence the same token, with nothing stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Player,
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub quiz_id: String,
    pub role: Role,
    /// Empty for hosts.
    pub player_id: String,
    /// The quiz's spread (1: one node; then the token is v2).
    pub spread: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

/// The signing key. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct TokenKey {
    mac: HmacSha256,
    /// A token's lifetime, from its issue time.
    ttl_s: u64,
}

impl TokenKey {
    /// A key whose tokens live `ttl_s` seconds from their issue time.
    pub fn new(secret: &[u8], ttl_s: u64) -> TokenKey {
        // HMAC accepts keys of any length; this cannot fail.
        let mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        TokenKey { mac, ttl_s }
    }

    /// A token for `claims`, issued at `issued_at_ms` (the join or creation
    /// time: the same claims and time give the same token).
    pub fn sign(&self, claims: &Claims, issued_at_ms: u64) -> String {
        let role = match claims.role {
            Role::Player => "p",
            Role::Host => "h",
        };
        let expires = (issued_at_ms / 1000).saturating_add(self.ttl_s);
        let body = if claims.spread > 1 {
            format!(
                "v3.{role}.{}.{}.{expires}.{}",
                claims.quiz_id, claims.player_id, claims.spread
            )
        } else {
            format!(
                "v2.{role}.{}.{}.{expires}",
                claims.quiz_id, claims.player_id
            )
        };
        let mut mac = self.mac.clone();
        mac.update(body.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// The player id of a join carrying the `Idempotency-Key` `key`:
    /// 12 lowercase alphanumerics (like a random id) taken from
    /// HMAC-SHA256(secret, `"join\0" quiz_id "\0" key`). Deterministic per
    /// (secret, quiz, key), unpredictable without the secret, and never a
    /// token body (those contain no NUL), so the MAC is not reusable as one.
    pub fn derive_player_id(&self, quiz_id: &str, key: &str) -> String {
        use crate::rules::ID_ALPHABET;
        let mut mac = self.mac.clone();
        mac.update(b"join\0");
        mac.update(quiz_id.as_bytes());
        mac.update(b"\0");
        mac.update(key.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        // 36^12 ≈ 2^62 ≪ 2^128: the digits of a 128-bit number are uniform
        // enough.
        let mut n = u128::from_be_bytes(first);
        (0..12)
            .map(|_| {
                let base = ID_ALPHABET.len() as u128;
                let d = (n % base) as usize;
                n /= base;
                ID_ALPHABET[d] as char
            })
            .collect()
    }

    /// Checks the signature (in constant time) and the expiry, and returns
    /// the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(token, now_s)
    }

    /// [`TokenKey::verify`] as of `now_s` (Unix seconds).
    pub fn verify_at(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        if token.len() > 256 {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let parts: Vec<&str> = body.split('.').collect();
        let unexpired = |expires: &str| -> Result<(), TokenError> {
            let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
            if now_s >= expires {
                return Err(TokenError::Expired);
            }
            Ok(())
        };
        let (role, quiz_id, player_id, spread) = match parts.as_slice() {
            ["v3", role, quiz_id, player_id, expires, spread] => {
                unexpired(expires)?;
                let spread: u32 = spread.parse().map_err(|_| TokenError::Malformed)?;
                (*role, *quiz_id, *player_id, spread)
            }
            ["v2", role, quiz_id, player_id, expires] => {
                unexpired(expires)?;
                (*role, *quiz_id, *player_id, 1)
            }
            // Issued before tokens expired (see the module doc).
            ["v1", role, quiz_id, player_id] => (*role, *quiz_id, *player_id, 1),
            _ => return Err(TokenError::Malformed),
        };
        let role = match role {
            "p" if !player_id.is_empty() => Role::Player,
            "h" if player_id.is_empty() => Role::Host,
            _ => return Err(TokenError::Malformed),
        };
        Ok(Claims {
            quiz_id: quiz_id.to_string(),
            role,
            player_id: player_id.to_string(),
            spread,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::now_ms;

    #[test]
    fn round_trip_and_tamper() {
        let k = TokenKey::new(b"secret-secret-secret", 3600);
        let c = Claims {
            quiz_id: "abc_-1".into(),
            role: Role::Player,
            player_id: "p123".into(),
            spread: 1,
        };
        let t = k.sign(&c, now_ms());
        assert_eq!(k.verify(&t).unwrap(), c);
        let h = Claims {
            quiz_id: "abc".into(),
            role: Role::Host,
            player_id: String::new(),
            spread: 1,
        };
        assert_eq!(k.verify(&k.sign(&h, now_ms())).unwrap(), h);
        // Another quiz id under the same signature fails.
        let forged = t.replacen("abc_-1", "abc_-2", 1);
        assert_eq!(k.verify(&forged), Err(TokenError::BadSignature));
        // Another key fails.
        assert_eq!(
            TokenKey::new(b"other", 3600).verify(&t),
            Err(TokenError::BadSignature)
        );
        for junk in ["", ".", "v1.p.a.b.", "abc", "v1.p.a.b.!!!", "v2.p.a.b.x."] {
            assert!(k.verify(junk).is_err(), "{junk}");
        }
    }

    /// A token lives `ttl_s` from its issue time, then is refused; the
    /// same claims and issue time give the same token (replayed joins).
    #[test]
    fn tokens_expire() {
        let k = TokenKey::new(b"secret-secret-secret", 100);
        let c = Claims {
            quiz_id: "q".into(),
            role: Role::Player,
            player_id: "p1".into(),
            spread: 1,
        };
        let t = k.sign(&c, 1_000_000);
        assert_eq!(t, k.sign(&c, 1_000_999));
        assert_eq!(k.verify_at(&t, 1_000).unwrap(), c);
        assert_eq!(k.verify_at(&t, 1_099).unwrap(), c);
        assert_eq!(k.verify_at(&t, 1_100), Err(TokenError::Expired));
        // The expiry is under the signature.
        let extended = t.replacen(".1100.", ".9999.", 1);
        assert_eq!(k.verify_at(&extended, 1_100), Err(TokenError::BadSignature));
        // Tokens issued before expiry existed (v1) still verify.
        let mut mac = k.mac.clone();
        mac.update(b"v1.p.q.p1");
        let v1 = format!(
            "v1.p.q.p1.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(k.verify_at(&v1, u64::MAX).unwrap(), c);
    }

    /// A spread quiz's tokens are v3 and carry the spread under the MAC;
    /// an ordinary quiz's stay v2.
    #[test]
    fn spread_tokens() {
        let k = TokenKey::new(b"secret-secret-secret", 100);
        let c = Claims {
            quiz_id: "big".into(),
            role: Role::Player,
            player_id: "p1".into(),
            spread: 3,
        };
        let t = k.sign(&c, 1_000_000);
        assert!(t.starts_with("v3.p.big.p1.1100.3."), "{t}");
        assert_eq!(k.verify_at(&t, 1_000).unwrap(), c);
        assert_eq!(k.verify_at(&t, 1_100), Err(TokenError::Expired));
        let moved = t.replacen(".1100.3.", ".1100.2.", 1);
        assert_eq!(k.verify_at(&moved, 1_000), Err(TokenError::BadSignature));
        let one = Claims { spread: 1, ..c };
        assert!(k.sign(&one, 1_000_000).starts_with("v2."));
    }

    #[test]
    fn derived_player_ids() {
        let k = TokenKey::new(b"secret-secret-secret", 3600);
        let id = k.derive_player_id("quiz1", "key-1");
        assert_eq!(id.len(), 12);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        // Deterministic per (secret, quiz, key); different otherwise.
        assert_eq!(k.derive_player_id("quiz1", "key-1"), id);
        assert_ne!(k.derive_player_id("quiz1", "key-2"), id);
        assert_ne!(k.derive_player_id("quiz2", "key-1"), id);
        assert_ne!(
            TokenKey::new(b"other", 3600).derive_player_id("quiz1", "key-1"),
            id
        );
        // The separator keeps (quiz, key) pairs apart.
        assert_ne!(k.derive_player_id("ab", "c"), k.derive_player_id("a", "bc"));
    }
}
