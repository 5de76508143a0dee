//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS, server side (RFC 5802, RFC 7677), sans I/O.
//!
//! Owns the stored SCRAM verifier ([`Verifier`], RFC 5803 style text) and the three server
//! steps of an exchange: [`client_first`] parses the client-first-message, [`ClientFirst::challenge`]
//! answers with the server-first-message, and [`ServerFirst::finish`] checks the channel binding,
//! the nonce and the proof of the client-final-message and yields the server-final-message. Each
//! step consumes the previous one, so a step cannot be skipped or replayed. The protocols do the
//! base64 and framing of SASL; the caller computes the channel binding data from the TLS session:
//! tls-exporter (RFC 9266) and tls-server-end-point (RFC 5929).
//!
//! Every message is bounded ([`MAX_MESSAGE_BYTES`]) and every malformed input is an error, not a
//! panic. Proofs are compared in constant time, keys are zeroized and never printed, and an
//! unknown account gets a [`Verifier::decoy`] so the challenge does not tell that it is unknown.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

pub const MECHANISM: &str = "SCRAM-SHA-256";
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// Iterations for new verifiers (RFC 7677 asks at least 4096).
pub const ITERATIONS: u32 = 10_000;
/// Fewest iterations a stored verifier may have (RFC 7677 4: at least 4096).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most iterations a stored verifier may have; bounds the work a verifier can ask of us.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Longest salt a stored verifier may have.
pub const MAX_SALT_BYTES: usize = 64;
/// Salt length of new verifiers.
pub const SALT_BYTES: usize = 16;
/// Longest client message accepted (the protocols bound their lines too).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Longest username or authzid, decoded (an address is at most 254 bytes, RFC 5321 4.5.3.1).
pub const MAX_NAME_BYTES: usize = 256;
/// Longest client nonce.
pub const MAX_NONCE_BYTES: usize = 256;
/// Random bytes the server adds to the client nonce.
const SERVER_NONCE_BYTES: usize = 24;
/// The label RFC 9266 2 gives for tls-exporter, with no context and 32 bytes of output.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";
/// Longest stored verifier text [`Verifier::parse`] reads.
const MAX_VERIFIER_TEXT: usize = 512;

type HmacSha256 = Hmac<Sha256>;

/// Why a stored verifier could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("SCRAM iterations must be within {MIN_ITERATIONS}..={MAX_ITERATIONS}, not {0}")]
    Iterations(u32),
    #[error("a SCRAM salt must hold 1 to {MAX_SALT_BYTES} bytes")]
    Salt,
    #[error("the password is too long: at most {} bytes", crate::MAX_PASSWORD_BYTES)]
    PasswordTooLong,
    /// RFC 5802 2.2 prepares passwords with SASLprep (RFC 4013), which refuses some characters
    /// (controls, unassigned code points, mixed bidirectional text).
    #[error("the password holds characters SASLprep refuses: {0}")]
    Saslprep(String),
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// Why an exchange failed. Each maps to an RFC 5802 7 server-error-value
/// ([`ScramFailure::server_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScramFailure {
    /// The message does not follow the RFC 5802 7 grammar or our limits; the text says how.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The c= attribute is not the gs2 header and binding data this server computes.
    #[error("SCRAM channel binding does not match this TLS session")]
    BindingMismatch,
    /// The client said "y" (it supports channel binding but thinks we do not) while we offer
    /// -PLUS: someone removed -PLUS from the mechanism list (RFC 5802 6).
    #[error("SCRAM channel binding downgrade: the client thinks we do not offer -PLUS")]
    BindingDowngrade,
    /// A -PLUS client asked for a binding type this session cannot give.
    #[error("SCRAM channel binding type not available")]
    UnsupportedBinding,
    /// The proof is wrong: wrong password, or no such account.
    #[error("SCRAM proof is wrong")]
    WrongProof,
}

impl ScramFailure {
    /// The RFC 5802 7 server-error-value for an "e=" server-final-message. A missing account
    /// reports `invalid-proof` like a wrong password, so that accounts cannot be enumerated.
    pub fn server_error(self) -> &'static str {
        match self {
            ScramFailure::Malformed(_) => "invalid-encoding",
            ScramFailure::BindingMismatch => "channel-bindings-dont-match",
            ScramFailure::BindingDowngrade => "server-does-support-channel-binding",
            ScramFailure::UnsupportedBinding => "unsupported-channel-binding-type",
            ScramFailure::WrongProof => "invalid-proof",
        }
    }

    /// The whole "e=..." server-final-message, for protocols that send one on failure.
    pub fn server_final(self) -> Vec<u8> {
        format!("e={}", self.server_error()).into_bytes()
    }
}

/// What is stored per account beside the Argon2id hash: RFC 5802 3 StoredKey and ServerKey, the
/// salt and the iteration count. It lets the server check a proof without the password; it does
/// not let anyone log in without a sniffed exchange, but it is still secret (it is enough to
/// impersonate the server, and to guess passwords offline), so it never prints.
#[derive(Clone)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Zeroizing<[u8; 32]>,
    server_key: Zeroizing<[u8; 32]>,
    /// A decoy for an unknown account: no proof ever passes it, whatever its keys.
    decoy: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .field("salt_bytes", &self.salt.len())
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl Verifier {
    /// A verifier for `password` with a fresh random salt.
    pub fn derive(password: &str, iterations: u32) -> Result<Verifier, ScramError> {
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|e| ScramError::Random(e.to_string()))?;
        Verifier::derive_with_salt(password, &salt, iterations)
    }

    pub fn derive_with_salt(password: &str, salt: &[u8], iterations: u32) -> Result<Verifier, ScramError> {
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        if salt.is_empty() || salt.len() > MAX_SALT_BYTES {
            return Err(ScramError::Salt);
        }
        if password.len() > crate::MAX_PASSWORD_BYTES {
            return Err(ScramError::PasswordTooLong);
        }
        // RFC 5802 2.2: Normalize(str) is SASLprep with stored-string rules; clients such as
        // Python's scramp and libpq apply it too, so the same text gives the same keys.
        // Its error names the offending character: a piece of the password, never to be shown.
        let prepared = stringprep::saslprep(password)
            .map_err(|_| ScramError::Saslprep("the password has characters SASLprep prohibits".into()))?;
        let prepared = Zeroizing::new(prepared.into_owned());
        let keys = Keys::from_password(prepared.as_bytes(), salt, iterations);
        Ok(Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: keys.stored_key,
            server_key: keys.server_key,
            decoy: false,
        })
    }

    /// A stand-in for an account that does not exist: its salt is fixed per username (so asking
    /// twice gives the same challenge, as a real account does) but unpredictable without
    /// `secret`, and it has the iterations of new verifiers. No proof passes it.
    ///
    /// Pass the username in the form accounts are looked up by (the canonical address), or
    /// spellings that reach one real account would show one salt while a decoy shows several.
    pub fn decoy(username: &str, secret: &[u8; 32]) -> Verifier {
        let part = |label: &[u8]| {
            hmac32(
                secret,
                &[b"sealmail scram decoy ", label, b"\0", username.as_bytes()],
            )
        };
        let salt = part(b"salt");
        Verifier {
            iterations: ITERATIONS,
            salt: salt[..SALT_BYTES].to_vec(),
            stored_key: Zeroizing::new(part(b"stored-key")),
            server_key: Zeroizing::new(part(b"server-key")),
            decoy: true,
        }
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// RFC 5803 style: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64.
    pub fn encode(&self) -> String {
        format!(
            "{MECHANISM}${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(*self.stored_key),
            BASE64.encode(*self.server_key)
        )
    }

    /// Reads what [`Verifier::encode`] wrote; refuses anything else, including iterations
    /// outside `MIN_ITERATIONS..=MAX_ITERATIONS` and salts longer than `MAX_SALT_BYTES`.
    pub fn parse(text: &str) -> Option<Verifier> {
        if text.len() > MAX_VERIFIER_TEXT {
            return None;
        }
        let rest = text.strip_prefix(MECHANISM)?.strip_prefix('$')?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations = parse_decimal(iterations)?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return None;
        }
        let salt = BASE64.decode(salt).ok()?;
        if salt.is_empty() || salt.len() > MAX_SALT_BYTES {
            return None;
        }
        Some(Verifier {
            iterations,
            salt,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
            decoy: false,
        })
    }
}

/// The keys RFC 5802 3 derives from a password.
struct Keys {
    stored_key: Zeroizing<[u8; 32]>,
    server_key: Zeroizing<[u8; 32]>,
}

impl Keys {
    fn from_password(prepared: &[u8], salt: &[u8], iterations: u32) -> Keys {
        // SaltedPassword := Hi(Normalize(password), salt, i), and Hi is PBKDF2 with HMAC.
        let mut salted = Zeroizing::new([0u8; 32]);
        pbkdf2::pbkdf2_hmac::<Sha256>(prepared, salt, iterations, &mut *salted);
        let client_key = Zeroizing::new(hmac32(&salted, &[b"Client Key"]));
        Keys {
            stored_key: Zeroizing::new(Sha256::digest(*client_key).into()),
            server_key: Zeroizing::new(hmac32(&salted, &[b"Server Key"])),
        }
    }
}

/// Which channel binding a -PLUS client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingType {
    /// RFC 9266: 32 bytes of `export_keying_material` with [`TLS_EXPORTER_LABEL`], no context.
    TlsExporter,
    /// RFC 5929 4: the hash of the server's certificate.
    TlsServerEndPoint,
}

impl ChannelBindingType {
    /// The cb-name (RFC 5056 7) the client writes after "p=".
    pub fn name(self) -> &'static str {
        match self {
            ChannelBindingType::TlsExporter => "tls-exporter",
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    fn from_name(name: &str) -> Option<ChannelBindingType> {
        match name {
            "tls-exporter" => Some(ChannelBindingType::TlsExporter),
            "tls-server-end-point" => Some(ChannelBindingType::TlsServerEndPoint),
            _ => None,
        }
    }
}

/// What the TLS session offers for channel binding, computed by the caller from rustls.
/// RFC 9266 3 forbids tls-exporter on TLS 1.2 without the extended master secret; leave it
/// `None` there.
#[derive(Clone, Default)]
pub struct ChannelBindings {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl fmt::Debug for ChannelBindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBindings")
            .field("tls_exporter", &self.tls_exporter.is_some())
            .field("tls_server_end_point", &self.tls_server_end_point.is_some())
            .finish()
    }
}

impl ChannelBindings {
    fn get(&self, kind: ChannelBindingType) -> Option<&[u8]> {
        match kind {
            ChannelBindingType::TlsExporter => self.tls_exporter.as_deref(),
            ChannelBindingType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
        }
    }
}

/// Step 1: the client-first-message. `plus` = the client chose SCRAM-SHA-256-PLUS.
/// `plus_offered` = we advertise -PLUS (then a client flag "y" means a downgrade attack).
pub fn client_first(
    message: &[u8],
    plus: bool,
    plus_offered: bool,
    bindings: &ChannelBindings,
) -> Result<ClientFirst, ScramFailure> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(ScramFailure::Malformed("message too long"));
    }
    let text = std::str::from_utf8(message).map_err(|_| ScramFailure::Malformed("not UTF-8"))?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (flag, rest) = text
        .split_once(',')
        .ok_or(ScramFailure::Malformed("no gs2 header"))?;
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramFailure::Malformed("no gs2 header"))?;
    let gs2_header = text
        .get(..flag.len() + authzid.len() + 2)
        .ok_or(ScramFailure::Malformed("no gs2 header"))?;
    let authzid = match authzid {
        "" => None,
        a => Some(decode_saslname(
            a.strip_prefix("a=")
                .ok_or(ScramFailure::Malformed("bad authzid"))?,
        )?),
    };

    // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
    let mut attributes = bare.split(',');
    let username = attributes.next().unwrap_or_default();
    if username.starts_with("m=") {
        // RFC 5802 5.1: "m" is reserved; its presence MUST cause authentication failure.
        return Err(ScramFailure::Malformed("mandatory extension"));
    }
    let username = decode_saslname(
        username
            .strip_prefix("n=")
            .ok_or(ScramFailure::Malformed("no username"))?,
    )?;
    let client_nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramFailure::Malformed("no nonce"))?;
    check_nonce(client_nonce)?;
    check_extensions(attributes)?;

    let binding = match flag {
        "n" | "y" if plus => return Err(ScramFailure::Malformed("-PLUS without channel binding")),
        // RFC 5802 6: "y" with -PLUS advertised means someone removed -PLUS on the way.
        "y" if plus_offered => return Err(ScramFailure::BindingDowngrade),
        "n" | "y" => None,
        _ => {
            let name = flag
                .strip_prefix("p=")
                .ok_or(ScramFailure::Malformed("bad channel binding flag"))?;
            if !plus {
                return Err(ScramFailure::Malformed("channel binding without -PLUS"));
            }
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(ScramFailure::Malformed("bad channel binding name"));
            }
            if !plus_offered {
                return Err(ScramFailure::UnsupportedBinding);
            }
            let kind = ChannelBindingType::from_name(name).ok_or(ScramFailure::UnsupportedBinding)?;
            let data = bindings.get(kind).ok_or(ScramFailure::UnsupportedBinding)?;
            Some((kind, data.to_vec()))
        }
    };

    // RFC 5802 7: c= is base64 of the gs2-header followed by the cbind-data (for "p=" only).
    let mut channel_binding = gs2_header.as_bytes().to_vec();
    if let Some((_, data)) = &binding {
        channel_binding.extend_from_slice(data);
    }
    Ok(ClientFirst {
        username,
        authzid,
        binding: binding.map(|(kind, _)| kind),
        channel_binding,
        client_nonce: client_nonce.to_string(),
        bare: bare.to_string(),
        #[cfg(test)]
        server_nonce: None,
    })
}

/// A parsed client-first-message, waiting for the account's verifier.
pub struct ClientFirst {
    username: String,
    authzid: Option<String>,
    binding: Option<ChannelBindingType>,
    /// What the c= attribute of the client-final-message must decode to.
    channel_binding: Vec<u8>,
    client_nonce: String,
    /// The client-first-message-bare, part of the AuthMessage.
    bare: String,
    /// Replaces the random server nonce, for the RFC 7677 test vector.
    #[cfg(test)]
    server_nonce: Option<String>,
}

impl fmt::Debug for ClientFirst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The binding data comes from the TLS secrets; it stays out of logs.
        f.debug_struct("ClientFirst")
            .field("username", &self.username)
            .field("authzid", &self.authzid)
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

impl ClientFirst {
    /// The decoded saslname (=2C and =3D undone); UTF-8, non-empty, at most `MAX_NAME_BYTES`.
    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    pub fn binding(&self) -> Option<ChannelBindingType> {
        self.binding
    }

    /// RFC 5802 5.1: the server appends its own nonce to the client's.
    fn server_part(&self, random: &[u8]) -> String {
        #[cfg(test)]
        if let Some(fixed) = &self.server_nonce {
            return fixed.clone();
        }
        BASE64.encode(random)
    }

    #[cfg(test)]
    fn with_server_nonce(mut self, nonce: &str) -> ClientFirst {
        self.server_nonce = Some(nonce.to_string());
        self
    }

    /// Step 2: the server-first-message, using the account's verifier; for an unknown account
    /// pass [`Verifier::decoy`] so the answer looks the same.
    pub fn challenge(self, verifier: &Verifier) -> (Vec<u8>, ServerFirst) {
        let mut random = [0u8; SERVER_NONCE_BYTES];
        // Without randomness the nonce could repeat and an exchange could be replayed: the
        // exchange goes on looking normal but cannot succeed.
        let usable = match getrandom::fill(&mut random) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "the system random number generator failed; SCRAM login refused");
                false
            }
        };
        let server_part = self.server_part(&random);
        let nonce = format!("{}{server_part}", self.client_nonce);
        let message = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&verifier.salt),
            verifier.iterations
        );
        let state = ServerFirst {
            auth_message: format!("{},{message},", self.bare),
            nonce,
            channel_binding: self.channel_binding,
            stored_key: verifier.stored_key.clone(),
            server_key: verifier.server_key.clone(),
            never_passes: verifier.decoy || !usable,
        };
        (message.into_bytes(), state)
    }
}

/// The server-first-message was sent; waiting for the client-final-message.
pub struct ServerFirst {
    /// client-first-message-bare "," server-first-message ","; the client-final-message
    /// without proof completes the AuthMessage (RFC 5802 3).
    auth_message: String,
    nonce: String,
    channel_binding: Vec<u8>,
    stored_key: Zeroizing<[u8; 32]>,
    server_key: Zeroizing<[u8; 32]>,
    never_passes: bool,
}

impl fmt::Debug for ServerFirst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerFirst")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl ServerFirst {
    /// Step 3: the client-final-message. Checks the channel binding (c= must be exactly the
    /// gs2 header and binding data), the nonce and the proof (in constant time); Ok gives the
    /// server-final-message ("v=...") to send.
    pub fn finish(self, message: &[u8]) -> Result<Vec<u8>, ScramFailure> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(ScramFailure::Malformed("message too long"));
        }
        let text = std::str::from_utf8(message).map_err(|_| ScramFailure::Malformed("not UTF-8"))?;
        // client-final-message = channel-binding "," nonce ["," extensions] "," proof; base64
        // holds no ",", so the proof is what follows the last one.
        let (without_proof, proof) = text.rsplit_once(',').ok_or(ScramFailure::Malformed("no proof"))?;
        let proof = proof
            .strip_prefix("p=")
            .ok_or(ScramFailure::Malformed("no proof"))?;
        let mut attributes = without_proof.split(',');
        let channel_binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramFailure::Malformed("no channel binding"))?;
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramFailure::Malformed("no nonce"))?;
        check_extensions(attributes)?;

        let channel_binding = BASE64
            .decode(channel_binding)
            .map_err(|_| ScramFailure::Malformed("channel binding is not base64"))?;
        if !bool::from(channel_binding.ct_eq(&self.channel_binding)) {
            return Err(ScramFailure::BindingMismatch);
        }
        if !bool::from(nonce.as_bytes().ct_eq(self.nonce.as_bytes())) {
            return Err(ScramFailure::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = BASE64
            .decode(proof)
            .map_err(|_| ScramFailure::Malformed("proof is not base64"))?
            .try_into()
            .map_err(|_| ScramFailure::Malformed("proof is not 32 bytes"))?;

        let auth = [self.auth_message.as_bytes(), without_proof.as_bytes()];
        // ClientKey := ClientProof XOR HMAC(StoredKey, AuthMessage); it must hash to StoredKey.
        let signature = Zeroizing::new(hmac32(&self.stored_key, &auth));
        let mut client_key = Zeroizing::new(proof);
        for (k, s) in client_key.iter_mut().zip(signature.iter()) {
            *k ^= s;
        }
        let hashed: [u8; 32] = Sha256::digest(*client_key).into();
        let passes = hashed.ct_eq(&*self.stored_key) & !Choice::from(u8::from(self.never_passes));
        if !bool::from(passes) {
            return Err(ScramFailure::WrongProof);
        }
        let server_signature = hmac32(&self.server_key, &auth);
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

/// HMAC-SHA-256 under a 32-byte key, over the concatenation of `parts`. RFC 2104 2 pads a key
/// shorter than the 64-byte block with zeros, so padding it here gives the same MAC and reaches
/// the infallible constructor (`new_from_slice` returns a Result that cannot be an error).
fn hmac32(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    let mut mac = <HmacSha256 as KeyInit>::new(&(*block).into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// saslname (RFC 5802 7): UTF-8 without NUL, "," written "=2C" and "=" written "=3D".
fn decode_saslname(raw: &str) -> Result<String, ScramFailure> {
    if raw.is_empty() {
        return Err(ScramFailure::Malformed("empty name"));
    }
    if raw.len() > MAX_NAME_BYTES * 3 {
        return Err(ScramFailure::Malformed("name too long"));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        match escape {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramFailure::Malformed("bad escape in name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    if out.contains('\0') {
        return Err(ScramFailure::Malformed("NUL in name"));
    }
    if out.len() > MAX_NAME_BYTES {
        return Err(ScramFailure::Malformed("name too long"));
    }
    Ok(out)
}

/// c-nonce = printable (RFC 5802 7): ASCII 0x21..=0x7E except ",".
fn check_nonce(nonce: &str) -> Result<(), ScramFailure> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES {
        return Err(ScramFailure::Malformed("bad nonce length"));
    }
    if !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
        return Err(ScramFailure::Malformed("nonce is not printable"));
    }
    Ok(())
}

/// Extensions (attr-val, RFC 5802 7) are ignored, but must be well formed; "m" is refused
/// wherever it appears (RFC 5802 5.1: it MUST cause authentication failure).
fn check_extensions<'a>(attributes: impl Iterator<Item = &'a str>) -> Result<(), ScramFailure> {
    for attribute in attributes {
        let bytes = attribute.as_bytes();
        match bytes {
            [b'm', b'=', ..] => return Err(ScramFailure::Malformed("mandatory extension")),
            [name, b'=', _, ..] if name.is_ascii_alphabetic() => {}
            _ => return Err(ScramFailure::Malformed("bad attribute")),
        }
    }
    Ok(())
}

/// A plain decimal number: no sign, no spaces, no leading "+" that `u32::from_str` would take.
fn parse_decimal(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn decode_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(BASE64.decode(text).ok()?);
    let key: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// RFC 7677 3.
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> Result<Verifier, Box<dyn std::error::Error>> {
        Ok(Verifier::derive_with_salt(
            "pencil",
            &BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==")?,
            4096,
        )?)
    }

    #[test]
    fn rfc7677_test_vector() -> TestResult {
        let first = client_first(
            RFC_CLIENT_FIRST.as_bytes(),
            false,
            false,
            &ChannelBindings::default(),
        )?
        .with_server_nonce(RFC_SERVER_NONCE);
        assert_eq!(first.username(), "user");
        assert_eq!(first.authzid(), None);
        assert_eq!(first.binding(), None);
        let (server_first, state) = first.challenge(&rfc_verifier()?);
        assert_eq!(String::from_utf8(server_first)?, RFC_SERVER_FIRST);
        let server_final = state.finish(RFC_CLIENT_FINAL.as_bytes())?;
        assert_eq!(String::from_utf8(server_final)?, RFC_SERVER_FINAL);
        Ok(())
    }

    /// A SCRAM-SHA-256 client, written from RFC 5802 independently of the server code above
    /// (its own HMAC through `new_from_slice`, its own parsing).
    struct Client {
        password: String,
        gs2_header: String,
        cbind_data: Vec<u8>,
        bare: String,
    }

    impl Client {
        fn new(username: &str, password: &str, gs2_header: &str, cbind_data: &[u8]) -> Client {
            let saslname = username.replace('=', "=3D").replace(',', "=2C");
            Client {
                password: password.to_string(),
                gs2_header: gs2_header.to_string(),
                cbind_data: cbind_data.to_vec(),
                bare: format!("n={saslname},r=fyko+d2lbbFgONRv9qkxdawL"),
            }
        }

        fn first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.bare).into_bytes()
        }

        fn hmac(key: &[u8], data: &[u8]) -> Result<[u8; 32], Box<dyn std::error::Error>> {
            let mut mac = <HmacSha256 as Mac>::new_from_slice(key)?;
            mac.update(data);
            Ok(mac.finalize().into_bytes().into())
        }

        /// The client-final-message, and the server-final-message it expects back.
        fn last(&self, server_first: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Box<dyn std::error::Error>> {
            let server_first = std::str::from_utf8(server_first)?;
            let mut parts = server_first.split(',');
            let nonce = parts.next().and_then(|p| p.strip_prefix("r=")).ok_or("r")?;
            let salt = BASE64.decode(parts.next().and_then(|p| p.strip_prefix("s=")).ok_or("s")?)?;
            let iterations: u32 = parts
                .next()
                .and_then(|p| p.strip_prefix("i="))
                .ok_or("i")?
                .parse()?;
            assert!(nonce.starts_with("fyko+d2lbbFgONRv9qkxdawL"));
            let mut salted = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iterations, &mut salted);
            let client_key = Self::hmac(&salted, b"Client Key")?;
            let stored_key: [u8; 32] = Sha256::digest(client_key).into();
            let mut cbind = self.gs2_header.as_bytes().to_vec();
            cbind.extend_from_slice(&self.cbind_data);
            let without_proof = format!("c={},r={nonce}", BASE64.encode(&cbind));
            let auth = format!("{},{server_first},{without_proof}", self.bare);
            let signature = Self::hmac(&stored_key, auth.as_bytes())?;
            let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
            let server_key = Self::hmac(&salted, b"Server Key")?;
            let server_signature = Self::hmac(&server_key, auth.as_bytes())?;
            Ok((
                format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes(),
                format!("v={}", BASE64.encode(server_signature)).into_bytes(),
            ))
        }
    }

    fn bindings() -> ChannelBindings {
        ChannelBindings {
            tls_exporter: Some(vec![7u8; 32]),
            tls_server_end_point: Some(vec![9u8; 32]),
        }
    }

    const PASSWORD: &str = "correct horse battery staple";

    /// Runs a whole exchange: the client's view of gs2 header and binding data against the
    /// server's `plus` / `plus_offered` / `bindings`.
    fn exchange(
        client: &Client,
        plus: bool,
        plus_offered: bool,
        bindings: &ChannelBindings,
        verifier: &Verifier,
    ) -> Result<Result<(), ScramFailure>, Box<dyn std::error::Error>> {
        let first = match client_first(&client.first(), plus, plus_offered, bindings) {
            Ok(first) => first,
            Err(failure) => return Ok(Err(failure)),
        };
        let (server_first, state) = first.challenge(verifier);
        let (last, expected_final) = client.last(&server_first)?;
        match state.finish(&last) {
            Ok(server_final) => {
                assert_eq!(server_final, expected_final, "server signature");
                Ok(Ok(()))
            }
            Err(failure) => Ok(Err(failure)),
        }
    }

    #[test]
    fn plus_succeeds_with_both_binding_types() -> TestResult {
        let verifier = Verifier::derive_with_salt(PASSWORD, b"0123456789abcdef", MIN_ITERATIONS)?;
        let exporter = Client::new("alice@example.test", PASSWORD, "p=tls-exporter,,", &[7u8; 32]);
        assert_eq!(exchange(&exporter, true, true, &bindings(), &verifier)?, Ok(()));
        let end_point = Client::new(
            "alice@example.test",
            PASSWORD,
            "p=tls-server-end-point,a=alice@example.test,",
            &[9u8; 32],
        );
        assert_eq!(exchange(&end_point, true, true, &bindings(), &verifier)?, Ok(()));

        let first = client_first(&end_point.first(), true, true, &bindings())?;
        assert_eq!(first.binding(), Some(ChannelBindingType::TlsServerEndPoint));
        assert_eq!(first.authzid(), Some("alice@example.test"));
        // Without -PLUS: "n", and "y" when we do not offer -PLUS.
        let plain = Client::new("alice@example.test", PASSWORD, "n,,", &[]);
        assert_eq!(exchange(&plain, false, true, &bindings(), &verifier)?, Ok(()));
        let thinks_no_plus = Client::new("alice@example.test", PASSWORD, "y,,", &[]);
        assert_eq!(
            exchange(
                &thinks_no_plus,
                false,
                false,
                &ChannelBindings::default(),
                &verifier
            )?,
            Ok(())
        );
        Ok(())
    }

    #[test]
    fn bindings_passwords_and_downgrades_are_refused() -> TestResult {
        let verifier = Verifier::derive_with_salt(PASSWORD, b"0123456789abcdef", MIN_ITERATIONS)?;
        let user = "alice@example.test";
        // Another TLS session (a man in the middle) has other binding data.
        let wrong_data = Client::new(user, PASSWORD, "p=tls-exporter,,", &[8u8; 32]);
        assert_eq!(
            exchange(&wrong_data, true, true, &bindings(), &verifier)?,
            Err(ScramFailure::BindingMismatch)
        );
        // The right data under the other type's name.
        let wrong_type = Client::new(user, PASSWORD, "p=tls-server-end-point,,", &[7u8; 32]);
        assert_eq!(
            exchange(&wrong_type, true, true, &bindings(), &verifier)?,
            Err(ScramFailure::BindingMismatch)
        );
        let wrong_password = Client::new(
            user,
            "correct horse battery stapler",
            "p=tls-exporter,,",
            &[7u8; 32],
        );
        assert_eq!(
            exchange(&wrong_password, true, true, &bindings(), &verifier)?,
            Err(ScramFailure::WrongProof)
        );
        let plain_wrong_password = Client::new(user, "nope", "n,,", &[]);
        assert_eq!(
            exchange(&plain_wrong_password, false, true, &bindings(), &verifier)?,
            Err(ScramFailure::WrongProof)
        );
        let downgraded = Client::new(user, PASSWORD, "y,,", &[]);
        assert_eq!(
            exchange(&downgraded, false, true, &bindings(), &verifier)?,
            Err(ScramFailure::BindingDowngrade)
        );
        // A binding type the session cannot give, or one we never heard of.
        let exporter_only = ChannelBindings {
            tls_exporter: Some(vec![7u8; 32]),
            tls_server_end_point: None,
        };
        let end_point = Client::new(user, PASSWORD, "p=tls-server-end-point,,", &[9u8; 32]);
        assert_eq!(
            exchange(&end_point, true, true, &exporter_only, &verifier)?,
            Err(ScramFailure::UnsupportedBinding)
        );
        let unique = Client::new(user, PASSWORD, "p=tls-unique,,", &[9u8; 32]);
        assert_eq!(
            exchange(&unique, true, true, &bindings(), &verifier)?,
            Err(ScramFailure::UnsupportedBinding)
        );
        // The right password against a decoy still fails.
        let decoy = Verifier::decoy(user, &[1u8; 32]);
        let right = Client::new(user, PASSWORD, "n,,", &[]);
        assert_eq!(
            exchange(&right, false, false, &ChannelBindings::default(), &decoy)?,
            Err(ScramFailure::WrongProof)
        );
        Ok(())
    }

    #[test]
    fn hostile_client_first_messages_are_refused() {
        let long_name = format!("n,,n={},r=abc", "a".repeat(MAX_NAME_BYTES + 1));
        let long_nonce = format!("n,,n=user,r={}", "a".repeat(MAX_NONCE_BYTES + 1));
        let huge = format!("n,,n=user,r=abc,x={}", "a".repeat(MAX_MESSAGE_BYTES));
        let table: &[(&[u8], bool, ScramFailure)] = &[
            (b"", false, ScramFailure::Malformed("no gs2 header")),
            (b"n", false, ScramFailure::Malformed("no gs2 header")),
            (b"n,", false, ScramFailure::Malformed("no gs2 header")),
            (b"n,,", false, ScramFailure::Malformed("no username")),
            (b"n,,r=abc", false, ScramFailure::Malformed("no username")),
            (b"n,,n=user", false, ScramFailure::Malformed("no nonce")),
            (b"n,,n=user,", false, ScramFailure::Malformed("no nonce")),
            (b"n,,n=user,x=abc", false, ScramFailure::Malformed("no nonce")),
            (b"n,,n=,r=abc", false, ScramFailure::Malformed("empty name")),
            (
                b"n,,n=us=er,r=abc",
                false,
                ScramFailure::Malformed("bad escape in name"),
            ),
            (
                b"n,,n=user=2,r=abc",
                false,
                ScramFailure::Malformed("bad escape in name"),
            ),
            (
                b"n,,n=us\0er,r=abc",
                false,
                ScramFailure::Malformed("NUL in name"),
            ),
            (
                b"n,,n=\xff\xfe,r=abc",
                false,
                ScramFailure::Malformed("not UTF-8"),
            ),
            (
                b"n,,n=user,r=",
                false,
                ScramFailure::Malformed("bad nonce length"),
            ),
            (
                b"n,,n=user,r=a b",
                false,
                ScramFailure::Malformed("nonce is not printable"),
            ),
            (
                b"n,,n=user,r=caf\xc3\xa9",
                false,
                ScramFailure::Malformed("nonce is not printable"),
            ),
            (
                b"n,,m=x,n=user,r=abc",
                false,
                ScramFailure::Malformed("mandatory extension"),
            ),
            (
                b"n,,n=user,r=abc,m=x",
                false,
                ScramFailure::Malformed("mandatory extension"),
            ),
            (
                b"n,,n=user,r=abc,",
                false,
                ScramFailure::Malformed("bad attribute"),
            ),
            (
                b"n,,n=user,r=abc,1=x",
                false,
                ScramFailure::Malformed("bad attribute"),
            ),
            (
                b"n,,n=user,r=abc,xy",
                false,
                ScramFailure::Malformed("bad attribute"),
            ),
            (b"n,a,n=user,r=abc", false, ScramFailure::Malformed("bad authzid")),
            (b"n,a=,n=user,r=abc", false, ScramFailure::Malformed("empty name")),
            (
                b"x,,n=user,r=abc",
                false,
                ScramFailure::Malformed("bad channel binding flag"),
            ),
            (
                b"N,,n=user,r=abc",
                false,
                ScramFailure::Malformed("bad channel binding flag"),
            ),
            (
                b"p=tls-exporter,,n=user,r=abc",
                false,
                ScramFailure::Malformed("channel binding without -PLUS"),
            ),
            (
                b"n,,n=user,r=abc",
                true,
                ScramFailure::Malformed("-PLUS without channel binding"),
            ),
            (
                b"y,,n=user,r=abc",
                true,
                ScramFailure::Malformed("-PLUS without channel binding"),
            ),
            (
                b"p=,,n=user,r=abc",
                true,
                ScramFailure::Malformed("bad channel binding name"),
            ),
            (
                b"p=tls exporter,,n=user,r=abc",
                true,
                ScramFailure::Malformed("bad channel binding name"),
            ),
            (b"y,,n=user,r=abc", false, ScramFailure::BindingDowngrade),
            (
                long_name.as_bytes(),
                false,
                ScramFailure::Malformed("name too long"),
            ),
            (
                long_nonce.as_bytes(),
                false,
                ScramFailure::Malformed("bad nonce length"),
            ),
            (
                huge.as_bytes(),
                false,
                ScramFailure::Malformed("message too long"),
            ),
        ];
        for (message, plus, expected) in table {
            let got = client_first(message, *plus, true, &bindings()).map(|f| f.username().to_string());
            assert_eq!(got, Err(*expected), "{}", String::from_utf8_lossy(message));
        }
        // Escapes decode; extensions other than m are ignored.
        let first = client_first(b"n,a=x=3Dy,n=a=2Cb=3Dc,r=abc,x=1", false, false, &bindings());
        assert_eq!(first.as_ref().map(|f| f.username()), Ok("a,b=c"));
        assert_eq!(first.as_ref().map(|f| f.authzid()), Ok(Some("x=y")));
    }

    #[test]
    fn hostile_client_final_messages_are_refused() -> TestResult {
        let verifier = rfc_verifier()?;
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let huge = format!("c=biws,r={nonce},x={},{proof}", "a".repeat(MAX_MESSAGE_BYTES));
        let table: Vec<(Vec<u8>, ScramFailure)> = vec![
            (b"".to_vec(), ScramFailure::Malformed("no proof")),
            (
                format!("c=biws,r={nonce}").into_bytes(),
                ScramFailure::Malformed("no proof"),
            ),
            (
                format!("c=biws,r={nonce},p=").into_bytes(),
                ScramFailure::Malformed("proof is not 32 bytes"),
            ),
            (
                format!("c=biws,r={nonce},p=!!!!").into_bytes(),
                ScramFailure::Malformed("proof is not base64"),
            ),
            (
                format!("c=biws,r={nonce},p=AAAA").into_bytes(),
                ScramFailure::Malformed("proof is not 32 bytes"),
            ),
            (
                format!("r={nonce},{proof}").into_bytes(),
                ScramFailure::Malformed("no channel binding"),
            ),
            (
                format!("c=biws,{proof}").into_bytes(),
                ScramFailure::Malformed("no nonce"),
            ),
            (
                format!("c=biws,r={nonce},m=x,{proof}").into_bytes(),
                ScramFailure::Malformed("mandatory extension"),
            ),
            (
                format!("c=biws,r={nonce},,{proof}").into_bytes(),
                ScramFailure::Malformed("bad attribute"),
            ),
            (
                format!("c=bi!s,r={nonce},{proof}").into_bytes(),
                ScramFailure::Malformed("channel binding is not base64"),
            ),
            (
                format!("c=eSws,r={nonce},{proof}").into_bytes(),
                ScramFailure::BindingMismatch,
            ),
            (
                format!("c=,r={nonce},{proof}").into_bytes(),
                ScramFailure::BindingMismatch,
            ),
            (
                format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,{proof}").into_bytes(),
                ScramFailure::Malformed("nonce does not match"),
            ),
            (
                format!("c=biws,r=XOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,{proof}").into_bytes(),
                ScramFailure::Malformed("nonce does not match"),
            ),
            (
                format!("c=biws,r={nonce}x,{proof}").into_bytes(),
                ScramFailure::Malformed("nonce does not match"),
            ),
            (
                format!("c=biws,r={nonce},p=AHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").into_bytes(),
                ScramFailure::WrongProof,
            ),
            (
                b"c=biws,r=\xff,p=AAAA".to_vec(),
                ScramFailure::Malformed("not UTF-8"),
            ),
            (huge.into_bytes(), ScramFailure::Malformed("message too long")),
        ];
        for (message, expected) in table {
            let (_, state) = client_first(RFC_CLIENT_FIRST.as_bytes(), false, false, &bindings())?
                .with_server_nonce(RFC_SERVER_NONCE)
                .challenge(&verifier);
            assert_eq!(
                state.finish(&message),
                Err(expected),
                "{}",
                String::from_utf8_lossy(&message)
            );
        }
        Ok(())
    }

    #[test]
    fn server_nonce_extends_the_client_nonce_with_24_random_bytes() -> TestResult {
        let verifier = rfc_verifier()?;
        let nonce = |_| -> Result<String, Box<dyn std::error::Error>> {
            let (message, _) =
                client_first(RFC_CLIENT_FIRST.as_bytes(), false, false, &bindings())?.challenge(&verifier);
            let message = String::from_utf8(message)?;
            let nonce = message
                .split(',')
                .next()
                .and_then(|r| r.strip_prefix("r="))
                .ok_or("r")?;
            let server_part = nonce.strip_prefix("rOprNGfwEbeRWgbNEkqO").ok_or("prefix")?;
            assert_eq!(BASE64.decode(server_part)?.len(), SERVER_NONCE_BYTES);
            Ok(nonce.to_string())
        };
        assert_ne!(nonce(0)?, nonce(1)?);
        Ok(())
    }

    #[test]
    fn verifiers_round_trip_and_bad_ones_are_refused() -> TestResult {
        let verifier = Verifier::derive(PASSWORD, MIN_ITERATIONS)?;
        let text = verifier.encode();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        let parsed = Verifier::parse(&text).ok_or("parse")?;
        assert_eq!(parsed.encode(), text);
        assert_ne!(
            Verifier::derive(PASSWORD, MIN_ITERATIONS)?.encode(),
            text,
            "fresh salt"
        );
        // RFC 7677's keys, as RFC 5803 would store them.
        assert_eq!(
            rfc_verifier()?.encode(),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );

        let keys =
            "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
        let long_salt = BASE64.encode([0u8; MAX_SALT_BYTES + 1]);
        for bad in [
            String::new(),
            format!("SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$4095:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$1000001:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$+4096:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$99999999999999999999:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
            format!("SCRAM-SHA-256$4096:${keys}"),
            format!("SCRAM-SHA-256$4096:{long_salt}${keys}"),
            format!("SCRAM-SHA-256$4096:not base64!${keys}"),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA".to_string(),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==".to_string(),
            format!("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${keys}$x"),
            format!("SCRAM-SHA-256$4096:{}${keys}", "A".repeat(600)),
        ] {
            assert!(Verifier::parse(&bad).is_none(), "{bad}");
        }
        assert!(matches!(
            Verifier::derive(PASSWORD, 4095),
            Err(ScramError::Iterations(4095))
        ));
        assert!(matches!(
            Verifier::derive_with_salt(PASSWORD, b"", 4096),
            Err(ScramError::Salt)
        ));
        assert!(matches!(
            Verifier::derive(&"x".repeat(crate::MAX_PASSWORD_BYTES + 1), 4096),
            Err(ScramError::PasswordTooLong)
        ));
        assert!(matches!(
            Verifier::derive("bell\u{7}", 4096),
            Err(ScramError::Saslprep(_))
        ));
        Ok(())
    }

    #[test]
    fn saslprep_maps_passwords_as_clients_do() -> TestResult {
        // RFC 4013 3: a non-ASCII space maps to a space, a soft hyphen to nothing.
        let salt = b"0123456789abcdef";
        assert_eq!(
            Verifier::derive_with_salt("pass\u{a0}word\u{ad}", salt, 4096)?.encode(),
            Verifier::derive_with_salt("pass word", salt, 4096)?.encode()
        );
        Ok(())
    }

    /// Interop with an independent client: Python's scramp (tls-server-end-point and plain;
    /// scramp 1.5 does not do tls-exporter). Skips when `$SEALMAIL_PYTHON` (default python3)
    /// cannot import scramp.
    #[test]
    fn python_scramp_client_logs_in() -> TestResult {
        use std::io::{BufRead, BufReader, Write};
        use std::process::{Command, Stdio};

        const SCRIPT: &str = r#"
import sys, scramp
mechanism, cb = sys.argv[1], sys.argv[2]
binding = ("tls-server-end-point", bytes.fromhex(cb)) if cb else None
client = scramp.ScramClient([mechanism], "alice,x=y", sys.argv[3], channel_binding=binding)
print(client.get_client_first(), flush=True)
client.set_server_first(sys.stdin.readline().strip())
print(client.get_client_final(), flush=True)
client.set_server_final(sys.stdin.readline().strip())
print("ok", flush=True)
"#;
        let python = std::env::var("SEALMAIL_PYTHON").unwrap_or_else(|_| "python3".into());
        let has_scramp = Command::new(&python)
            .args(["-c", "import scramp"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_scramp {
            eprintln!("skipped: {python} cannot import scramp");
            return Ok(());
        }
        let verifier = Verifier::derive(PASSWORD, MIN_ITERATIONS)?;
        let end_point = [0xa5u8; 32];
        let bindings = ChannelBindings {
            tls_exporter: None,
            tls_server_end_point: Some(end_point.to_vec()),
        };
        let cases = [
            (MECHANISM_PLUS, "a5".repeat(32), PASSWORD, None),
            (MECHANISM, String::new(), PASSWORD, None),
            (
                MECHANISM_PLUS,
                "5a".repeat(32),
                PASSWORD,
                Some(ScramFailure::BindingMismatch),
            ),
            (
                MECHANISM_PLUS,
                "a5".repeat(32),
                "wrong password",
                Some(ScramFailure::WrongProof),
            ),
        ];
        for (mechanism, cb, password, failure) in cases {
            let mut child = Command::new(&python)
                .args(["-c", SCRIPT, mechanism, &cb, password])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let mut input = child.stdin.take().ok_or("stdin")?;
            let mut output = BufReader::new(child.stdout.take().ok_or("stdout")?);
            let mut line = String::new();
            output.read_line(&mut line)?;
            let first = client_first(
                line.trim_end().as_bytes(),
                mechanism == MECHANISM_PLUS,
                true,
                &bindings,
            )?;
            assert_eq!(first.username(), "alice,x=y");
            let (server_first, state) = first.challenge(&verifier);
            input.write_all(&server_first)?;
            input.write_all(b"\n")?;
            line.clear();
            output.read_line(&mut line)?;
            let result = state.finish(line.trim_end().as_bytes());
            assert_eq!(result.as_ref().err(), failure.as_ref(), "{mechanism} {cb}");
            if let Ok(server_final) = result {
                input.write_all(&server_final)?;
                input.write_all(b"\n")?;
                line.clear();
                output.read_line(&mut line)?;
                assert_eq!(line.trim_end(), "ok", "scramp refused the server signature");
            }
            drop(input);
            child.wait()?;
        }
        Ok(())
    }

    #[test]
    fn decoys_are_fixed_per_username_and_differ_between_usernames() {
        let secret = [42u8; 32];
        let a = Verifier::decoy("nobody@example.test", &secret);
        assert_eq!(
            a.encode(),
            Verifier::decoy("nobody@example.test", &secret).encode()
        );
        assert_ne!(a.salt, Verifier::decoy("other@example.test", &secret).salt);
        assert_ne!(a.salt, Verifier::decoy("nobody@example.test", &[43u8; 32]).salt);
        assert_eq!(a.salt.len(), SALT_BYTES);
        assert_eq!(a.iterations(), ITERATIONS);
    }

    #[test]
    fn secrets_do_not_print() -> TestResult {
        let verifier = rfc_verifier()?;
        let shown = format!("{verifier:?}");
        assert!(!shown.contains("WG5d8oPm"), "{shown}");
        assert!(!shown.contains("wfPLwcE6"), "{shown}");
        let (_, state) =
            client_first(RFC_CLIENT_FIRST.as_bytes(), false, false, &bindings())?.challenge(&verifier);
        assert!(!format!("{state:?}").contains("WG5d8oPm"));
        assert!(!format!("{:?}", bindings()).contains('7'));
        Ok(())
    }
}
