//! Random tokens (MIME boundaries, Message-IDs, log ids). A failed randomness source is an
//! error the caller must handle, never a token of zeros that repeats.

/// The operating system gave no randomness.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no randomness available from the operating system: {0}")]
pub struct NoRandomness(String);

/// `bytes` random bytes as lower-case hex (twice as many characters).
pub fn random_hex(bytes: usize) -> Result<String, NoRandomness> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| NoRandomness(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hex_of_the_asked_length_and_differ() -> Result<(), NoRandomness> {
        let a = random_hex(12)?;
        let b = random_hex(12)?;
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        Ok(())
    }
}
