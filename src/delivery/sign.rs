//! Standard Webhooks signing: channel secrets, the `webhook-signature`
//! header we send (with the previous secret's signature too while a
//! rotation's overlap lasts, [`SigningKeys`]), and its verification (used by
//! the development `sink` and the tests).
//!
//! A secret is `whsec_` followed by the standard base64 of the HMAC key. The
//! signature of a request is `v1,` + base64(HMAC-SHA256(key,
//! "{webhook-id}.{webhook-timestamp}.{body}")). This module is pure apart
//! from [`Secret::generate`]'s randomness: it neither reads the clock (the
//! caller passes the time) nor builds requests, which is the HTTP layer's job.
//!
//! Secrets are never printed: [`Secret`]'s `Debug` is redacted and no error
//! message quotes the secret text, not even the offending base64 character.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Standard base64 that accepts input with or without `=` padding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a signing secret was refused. Messages never include the secret.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The text does not start with `whsec_`.
    #[error("signing secret must start with \"whsec_\"")]
    MissingPrefix,
    /// The part after `whsec_` is not standard base64. The decoder's own
    /// error is deliberately dropped: it would quote a character of the
    /// secret.
    #[error("signing secret is not valid base64 after \"whsec_\"")]
    BadBase64,
    /// The decoded key is empty (`"whsec_"` alone).
    #[error("signing secret has an empty key after \"whsec_\"")]
    TooShort,
}

/// A parsed signing secret: the HMAC key. `Debug` prints `Secret(redacted)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// Parses `"whsec_" + standard base64` (padding optional). Any non-empty
    /// key is accepted, so secrets made by other Standard Webhooks
    /// implementations keep working; [`Secret::generate`] makes 32-byte keys.
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        let encoded = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SecretError::BadBase64)?;
        if key.is_empty() {
            return Err(SecretError::TooShort);
        }
        Ok(Secret { key })
    }

    /// How many bytes the key has.
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    /// A new random secret: `"whsec_"` + base64 of 32 random bytes.
    pub fn generate() -> String {
        let key: [u8; 32] = rand::random();
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    /// The `webhook-signature` value for one request: `"v1,"` +
    /// base64(HMAC-SHA256(key, `"{msg_id}.{timestamp}.{body}"`)).
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// The HMAC fed with the signed content, ready to finalize or verify.
    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC is defined for keys of any length (long keys are hashed, short
        // ones padded), so `new_from_slice` cannot fail here.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(format!(".{timestamp}.").as_bytes());
        mac.update(body);
        mac
    }
}

/// A channel's keys as the sender needs them: the current secret and, while
/// a rotation's overlap lasts, the previous one. `Debug` is redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeys {
    current: Secret,
    previous: Option<(Secret, DateTime<Utc>)>,
}

impl SigningKeys {
    /// Parses the stored secrets: `current`, and `previous` with the end of
    /// its overlap (both or neither; a previous secret without an end is
    /// ignored). A bad previous secret is an error like a bad current one.
    pub fn parse(
        current: &str,
        previous: Option<&str>,
        previous_until: Option<DateTime<Utc>>,
    ) -> Result<SigningKeys, SecretError> {
        let previous = match (previous, previous_until) {
            (Some(p), Some(until)) => Some((Secret::parse(p)?, until)),
            _ => None,
        };
        Ok(SigningKeys {
            current: Secret::parse(current)?,
            previous,
        })
    }

    /// The `webhook-signature` value of one request signed at `now`: the
    /// current secret's `v1,` signature, followed, space-separated, by the
    /// previous secret's while `now` is before the overlap's end (Standard
    /// Webhooks lets a header carry several). Receivers verifying with
    /// either secret accept it.
    pub fn header(&self, msg_id: &str, now: DateTime<Utc>, body: &[u8]) -> String {
        let timestamp = now.timestamp();
        let mut header = self.current.sign(msg_id, timestamp, body);
        if let Some((previous, until)) = &self.previous {
            if now < *until {
                header.push(' ');
                header.push_str(&previous.sign(msg_id, timestamp, body));
            }
        }
        header
    }
}

impl From<Secret> for SigningKeys {
    /// One secret, no rotation in progress.
    fn from(current: Secret) -> SigningKeys {
        SigningKeys {
            current,
            previous: None,
        }
    }
}

/// Why a received webhook was refused by [`verify`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// A required header is missing or empty; names the header.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a whole number of unix seconds.
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    /// The timestamp is too far from now (positive: in the past).
    #[error("webhook-timestamp is {skew_secs}s away from now, beyond the tolerance")]
    TimestampOutOfTolerance {
        /// `now - timestamp`, in seconds.
        skew_secs: i64,
    },
    /// No `v1` signature in the header matches the content.
    #[error("no matching signature")]
    NoMatchingSignature,
}

/// Verifies a received webhook.
///
/// `signature_header` may hold several space-separated `"v1,<base64>"`
/// entries (secret rotation); the webhook is accepted if any `v1` entry
/// matches, compared in constant time. Entries of other versions or with
/// bad base64 are skipped. The timestamp must be within `tolerance` of
/// `now_unix` in both directions (inclusive; sub-second tolerance is
/// truncated to whole seconds).
pub fn verify(
    secret: &Secret,
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if msg_id.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-id"));
    }
    let timestamp_text = timestamp_header.trim();
    if timestamp_text.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-timestamp"));
    }
    if signature_header.trim().is_empty() {
        return Err(VerifyError::MissingHeader("webhook-signature"));
    }
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew_secs = now_unix.saturating_sub(timestamp);
    if skew_secs.unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::TimestampOutOfTolerance { skew_secs });
    }
    let mac = secret.mac(msg_id, timestamp, body);
    let matched = signature_header
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| LENIENT_BASE64.decode(encoded).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The known answer from the Standard Webhooks specification's test vectors.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn secret() -> Secret {
        Secret::parse(SECRET).unwrap()
    }

    fn verify_now(secret: &Secret, signature: &str, now: i64) -> Result<(), VerifyError> {
        verify(
            secret,
            MSG_ID,
            &TIMESTAMP.to_string(),
            signature,
            BODY,
            now,
            TOLERANCE,
        )
    }

    #[test]
    fn standard_webhooks_known_answer() {
        assert_eq!(secret().sign(MSG_ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn verify_round_trip() {
        assert_eq!(verify_now(&secret(), SIGNATURE, TIMESTAMP), Ok(()));
        let other = Secret::parse(&Secret::generate()).unwrap();
        let sig = other.sign("evt_1", 1_700_000_000, b"{}");
        assert_eq!(
            verify(
                &other,
                "evt_1",
                "1700000000",
                &sig,
                b"{}",
                1_700_000_010,
                TOLERANCE
            ),
            Ok(())
        );
    }

    #[test]
    fn wrong_secret_or_changed_content_is_refused() {
        let wrong = Secret::parse(&Secret::generate()).unwrap();
        assert_eq!(
            verify_now(&wrong, SIGNATURE, TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
        let s = secret();
        let tampered = verify(
            &s,
            MSG_ID,
            &TIMESTAMP.to_string(),
            SIGNATURE,
            b"{}",
            TIMESTAMP,
            TOLERANCE,
        );
        assert_eq!(tampered, Err(VerifyError::NoMatchingSignature));
        let other_id = verify(
            &s,
            "msg_other",
            &TIMESTAMP.to_string(),
            SIGNATURE,
            BODY,
            TIMESTAMP,
            TOLERANCE,
        );
        assert_eq!(other_id, Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let s = secret();
        // Exactly at the tolerance is accepted, one second beyond is not.
        assert_eq!(verify_now(&s, SIGNATURE, TIMESTAMP + 300), Ok(()));
        assert_eq!(verify_now(&s, SIGNATURE, TIMESTAMP - 300), Ok(()));
        assert_eq!(
            verify_now(&s, SIGNATURE, TIMESTAMP + 301),
            Err(VerifyError::TimestampOutOfTolerance { skew_secs: 301 })
        );
        assert_eq!(
            verify_now(&s, SIGNATURE, TIMESTAMP - 301),
            Err(VerifyError::TimestampOutOfTolerance { skew_secs: -301 })
        );
        assert!(matches!(
            verify(
                &s,
                MSG_ID,
                "-9223372036854775808",
                SIGNATURE,
                BODY,
                i64::MAX,
                TOLERANCE
            ),
            Err(VerifyError::TimestampOutOfTolerance { .. })
        ));
    }

    #[test]
    fn any_matching_signature_in_the_header_is_accepted() {
        let s = secret();
        let rotated = Secret::parse(&Secret::generate()).unwrap();
        let old = rotated.sign(MSG_ID, TIMESTAMP, BODY);
        let header = format!("v1a,bm90LWEtc2ln {old} v1,!!notbase64!! {SIGNATURE}");
        assert_eq!(verify_now(&s, &header, TIMESTAMP), Ok(()));
        assert_eq!(verify_now(&rotated, &header, TIMESTAMP), Ok(()));
        // Right signature under the wrong version tag does not count.
        let v2 = SIGNATURE.replacen("v1,", "v2,", 1);
        assert_eq!(
            verify_now(&s, &v2, TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
        // A truncated signature does not count either.
        assert_eq!(
            verify_now(&s, "v1,g0hM9SsE+OTPJTGt", TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn missing_and_malformed_headers() {
        let s = secret();
        let ts = TIMESTAMP.to_string();
        let check =
            |id: &str, ts: &str, sig: &str| verify(&s, id, ts, sig, BODY, TIMESTAMP, TOLERANCE);
        assert_eq!(
            check("", &ts, SIGNATURE),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            check(MSG_ID, " ", SIGNATURE),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            check(MSG_ID, &ts, ""),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            check(MSG_ID, "yesterday", SIGNATURE),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            check(MSG_ID, "1614265330.5", SIGNATURE),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn during_the_overlap_both_secrets_verify_afterwards_only_the_new() {
        let new = Secret::generate();
        let old = Secret::generate();
        let until = DateTime::<Utc>::from_timestamp(TIMESTAMP + 3600, 0).unwrap();
        let keys = SigningKeys::parse(&new, Some(&old), Some(until)).unwrap();
        let (new, old) = (Secret::parse(&new).unwrap(), Secret::parse(&old).unwrap());
        let check = |secret: &Secret, at: i64| {
            let now = DateTime::<Utc>::from_timestamp(at, 0).unwrap();
            let header = keys.header(MSG_ID, now, BODY);
            let verdict = verify(
                secret,
                MSG_ID,
                &at.to_string(),
                &header,
                BODY,
                at,
                TOLERANCE,
            );
            (header, verdict)
        };
        let (header, by_new) = check(&new, TIMESTAMP);
        assert_eq!(header.split(' ').count(), 2, "{header}");
        assert!(header.split(' ').all(|s| s.starts_with("v1,")), "{header}");
        assert_eq!(by_new, Ok(()));
        assert_eq!(check(&old, TIMESTAMP).1, Ok(()));
        // The last second of the overlap still carries both; its end only the new.
        assert_eq!(check(&old, TIMESTAMP + 3599).1, Ok(()));
        let (header, by_old) = check(&old, TIMESTAMP + 3600);
        assert_eq!(header.split(' ').count(), 1, "{header}");
        assert_eq!(by_old, Err(VerifyError::NoMatchingSignature));
        assert_eq!(check(&new, TIMESTAMP + 3600).1, Ok(()));
        // No rotation: one signature, the known answer.
        let single = SigningKeys::from(secret());
        let now = DateTime::<Utc>::from_timestamp(TIMESTAMP, 0).unwrap();
        assert_eq!(single.header(MSG_ID, now, BODY), SIGNATURE);
        assert_eq!(
            SigningKeys::parse(SECRET, Some("nope"), Some(until)),
            Err(SecretError::MissingPrefix)
        );
        assert!(!format!("{keys:?}").contains("whsec_"));
    }

    #[test]
    fn generated_secrets_parse_back_with_a_32_byte_key() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert!(a.starts_with("whsec_"), "{a}");
        assert_ne!(a, b);
        let parsed = Secret::parse(&a).unwrap();
        assert!(parsed.key.len() >= 24);
        assert_eq!(parsed.key.len(), 32);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            Secret::parse("WHSEC_MfKQ9r8G"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(Secret::parse(""), Err(SecretError::MissingPrefix));
        assert_eq!(
            Secret::parse("whsec_not-base64!"),
            Err(SecretError::BadBase64)
        );
        assert_eq!(Secret::parse("whsec_ MfKQ"), Err(SecretError::BadBase64));
        assert_eq!(Secret::parse("whsec_"), Err(SecretError::TooShort));
        // Padding is optional.
        assert_eq!(Secret::parse("whsec_YWJj").unwrap().key, b"abc");
        assert_eq!(Secret::parse("whsec_YWI").unwrap().key, b"ab");
        assert_eq!(Secret::parse("whsec_YWI=").unwrap().key, b"ab");
    }

    #[test]
    fn secrets_are_never_printed() {
        let s = secret();
        assert_eq!(format!("{s:?}"), "Secret(redacted)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(redacted))");
        for bad in [
            "whsec_Mf!Q9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ] {
            let err = Secret::parse(bad).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("MfKQ") && !text.contains('!'), "{text}");
        }
    }
}
