//! SPF (RFC 7208): our own strict `check_host()`, the record parser and the evaluator.
//!
//! This module owns every SPF decision sealmail makes: which TXT record is the policy (4.5),
//! its syntax (4.6, 5, 6, 7, 12: every violation is `permerror`, as the RFC says, never a
//! lenient guess), macro expansion (7), the processing limits (4.6.4: ten DNS-querying terms,
//! two void lookups, ten MX and PTR names), the identities that are not domains (4.3: `none`),
//! IPv4-mapped IPv6 clients (5: checked as IPv4) and the `exp=` explanation (6.2).
//!
//! Why not mail-auth's SPF: its parser is lenient where RFC 7208 says permerror (bad CIDR
//! lengths, control characters, several records), and it sends names it should have refused
//! to the resolver, whose refusal became temperror; the RFC 7208 suite passed 140 of 203.
//! viaspf is GPL, which our licence cannot take.
//!
//! DNS access goes through the small [`SpfDns`] trait, so the parser and the evaluator run in
//! tests without sockets; [`ResolverDns`] implements it over the shared resolver of
//! `sealmail-dns`. Every input is bounded: the record length, the number of terms, the length
//! of each macro expansion, and recursion through `include`/`redirect` (each costs one of the
//! ten lookups, so the depth is at most ten).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

use mail_auth::{SpfOutput, SpfResult};
use sealmail_dns::hickory_resolver::TokioResolver;
use sealmail_dns::hickory_resolver::proto::rr::{Name, RData, RecordType};

/// The longest SPF record we parse (after joining its strings). Real records stay well under
/// 1 KiB (a DNS answer over UDP is 512 to 1232 octets); anything longer is refused with
/// permerror rather than parsed.
pub const MAX_RECORD_LEN: usize = 4096;
/// The most terms (mechanisms and modifiers) in one record.
pub const MAX_TERMS: usize = 256;
/// The longest result of one macro expansion. A domain name is cut to 253 octets anyway
/// (7.3); this bounds the work for records like `%{s}%{s}%{s}...` before that cut.
pub const MAX_EXPANSION: usize = 4096;
/// The longest explanation kept (6.2); longer texts are cut here.
pub const MAX_EXPLANATION: usize = 1024;
/// RFC 7208 4.6.4: at most ten terms that query DNS (include, a, mx, ptr, exists, redirect).
pub const MAX_DNS_TERMS: usize = 10;
/// RFC 7208 4.6.4: more than two "void" lookups (no records, or NXDOMAIN) is permerror.
pub const MAX_VOID_LOOKUPS: usize = 2;
/// RFC 7208 4.6.4: an MX answer of more than ten names is permerror; at most ten PTR names
/// are looked at (the rest are ignored).
pub const MAX_MX_NAMES: usize = 10;
pub const MAX_PTR_NAMES: usize = 10;

/// A DNS failure that is not an answer (timeout, SERVFAIL, network): SPF's temperror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsFailure(pub String);

/// An answer: the records, empty for NXDOMAIN or no records of the type (a "void" lookup).
pub type Answer<T> = Result<Vec<T>, DnsFailure>;

/// What SPF asks DNS. Names come without a trailing dot and may hold any octet but `.`
/// (RFC 7208 7.3 lets macros produce them); a name the implementation cannot put in a query
/// has no records.
pub trait SpfDns: Sync {
    /// Every TXT record at `name`, each one's strings joined (RFC 7208 3.3).
    fn txt(&self, name: &str) -> impl Future<Output = Answer<Vec<u8>>> + Send;
    fn a(&self, name: &str) -> impl Future<Output = Answer<Ipv4Addr>> + Send;
    fn aaaa(&self, name: &str) -> impl Future<Output = Answer<Ipv6Addr>> + Send;
    /// The exchanges of the MX records at `name` (order does not matter to SPF).
    fn mx(&self, name: &str) -> impl Future<Output = Answer<String>> + Send;
    /// The PTR names of `ip`.
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Answer<String>> + Send;
}

/// What `check_host()` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfCheck {
    pub result: SpfResult,
    /// The domain checked (the identity's domain).
    pub domain: String,
    /// The expanded `exp=` text, for `fail` results whose record gives one.
    pub explanation: Option<String>,
}

impl SpfCheck {
    /// The same result in mail-auth's type, which DMARC and Authentication-Results take.
    pub fn to_output(&self) -> SpfOutput {
        let output = SpfOutput::new(self.domain.clone()).with_result(self.result);
        match &self.explanation {
            Some(text) => output.with_explanation(text.clone()),
            None => output,
        }
    }
}

/// SPF for the HELO identity (RFC 7208 2.3): `check_host(ip, helo, postmaster@helo)`. A HELO
/// that is not a domain name (an address literal, one label) gives `none` (4.3).
pub async fn check_helo<D: SpfDns>(dns: &D, ip: IpAddr, helo: &str, receiver: &str) -> SpfCheck {
    let sender = format!("postmaster@{helo}");
    check_host(dns, ip, helo, &sender, helo, receiver).await
}

/// SPF for the MAIL FROM identity (RFC 7208 2.4); `sender` is the reverse path without angle
/// brackets, not empty (the caller checks `<>` as postmaster@HELO). A sender without a local
/// part is checked as postmaster at its domain (4.3).
pub async fn check_mail_from<D: SpfDns>(
    dns: &D,
    ip: IpAddr,
    helo: &str,
    sender: &str,
    receiver: &str,
) -> SpfCheck {
    let (local, domain) = match sender.rsplit_once('@') {
        Some((local, domain)) => (local, domain),
        None => ("", sender),
    };
    let local = if local.is_empty() { "postmaster" } else { local };
    let sender = format!("{local}@{domain}");
    check_host(dns, ip, domain, &sender, helo, receiver).await
}

/// RFC 7208 4: `check_host(ip, domain, sender)`. `receiver` is our host name (`%{r}`).
pub async fn check_host<D: SpfDns>(
    dns: &D,
    ip: IpAddr,
    domain: &str,
    sender: &str,
    helo: &str,
    receiver: &str,
) -> SpfCheck {
    let (local, sender_domain) = sender.rsplit_once('@').unwrap_or(("postmaster", sender));
    let mut eval = Evaluator {
        dns,
        // RFC 7208 5 and 5.6: a client that reaches us over IPv6 with an IPv4-mapped address
        // is an IPv4 client; only ip4 and A records can match it.
        ip: match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        },
        original_ip: ip,
        local: local.to_string(),
        sender_domain: sender_domain.to_string(),
        helo: helo.to_string(),
        receiver: receiver.to_string(),
        lookups: 0,
        voids: 0,
        ptr: None,
    };
    let (result, explanation) = match eval.check(domain.to_string()).await {
        Ok(Outcome {
            result,
            exp: Some((exp, d)),
        }) if result == SpfResult::Fail => (result, eval.explain(&exp, &d).await),
        Ok(outcome) => (outcome.result, None),
        Err(Abort::Temp) => (SpfResult::TempError, None),
        Err(Abort::Perm) => (SpfResult::PermError, None),
    };
    SpfCheck {
        result,
        domain: domain.to_string(),
        explanation,
    }
}

/// Why evaluation stopped early: the two error results (RFC 7208 2.6.6, 2.6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abort {
    Temp,
    Perm,
}

/// A finished evaluation of one record: none, neutral, pass, fail or softfail, and the
/// record's `exp=` with the domain it was found at (expanded only at the top: 6.2 says an
/// included record's explanation is not used).
struct Outcome {
    result: SpfResult,
    exp: Option<(MacroString, String)>,
}

// ---------------------------------------------------------------------------------------------
// The record: parsing (RFC 7208 4.5, 4.6, 5, 6, 7.1, 12)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(MacroString),
    A {
        domain: Option<MacroString>,
        v4: u8,
        v6: u8,
    },
    Mx {
        domain: Option<MacroString>,
        v4: u8,
        v6: u8,
    },
    Ptr(Option<MacroString>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(MacroString),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    directives: Vec<(Qualifier, Mechanism)>,
    redirect: Option<MacroString>,
    exp: Option<MacroString>,
}

/// A syntax error: the record is permerror (RFC 7208 4.6).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SyntaxError(&'static str);

/// Whether a TXT record is an SPF record: "v=spf1" then a space or the end (4.5; ABNF
/// strings are case-insensitive, RFC 5234 2.3).
fn is_spf_record(txt: &[u8]) -> bool {
    txt.len() >= 6 && txt[..6].eq_ignore_ascii_case(b"v=spf1") && (txt.len() == 6 || txt[6] == b' ')
}

fn parse_record(txt: &[u8]) -> Result<Record, SyntaxError> {
    if txt.len() > MAX_RECORD_LEN {
        return Err(SyntaxError("record too long"));
    }
    // 4.6.1 / 12: terms are separated by spaces (SP only) and made of visible ASCII; a tab,
    // a control character or a non-ASCII octet anywhere is a syntax error.
    if txt.iter().any(|&b| !(b == b' ' || b.is_ascii_graphic())) {
        return Err(SyntaxError("control character or non-ASCII octet"));
    }
    let text = std::str::from_utf8(txt).map_err(|_| SyntaxError("not ASCII"))?;
    if !is_spf_record(txt) {
        return Err(SyntaxError("not an SPF record"));
    }
    let mut record = Record {
        directives: Vec::new(),
        redirect: None,
        exp: None,
    };
    for (count, term) in text[6..].split(' ').filter(|t| !t.is_empty()).enumerate() {
        if count >= MAX_TERMS {
            return Err(SyntaxError("too many terms"));
        }
        match modifier_name(term) {
            Some((name, value)) => {
                if name.eq_ignore_ascii_case("redirect") {
                    // 6: redirect and exp each at most once.
                    if record.redirect.is_some() {
                        return Err(SyntaxError("redirect twice"));
                    }
                    record.redirect = Some(parse_domain_spec(value)?);
                } else if name.eq_ignore_ascii_case("exp") {
                    if record.exp.is_some() {
                        return Err(SyntaxError("exp twice"));
                    }
                    record.exp = Some(parse_domain_spec(value)?);
                } else {
                    // 6: unknown modifiers are ignored, but must be well-formed.
                    parse_macro_string(value, false)?;
                }
            }
            None => record.directives.push(parse_directive(term)?),
        }
    }
    Ok(record)
}

/// A term is a modifier when it is `name "=" ...` with a valid name (4.6.1: `name = ALPHA
/// *( ALPHA / DIGIT / "-" / "_" / "." )`); anything else must be a mechanism.
fn modifier_name(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    valid.then_some((name, value))
}

fn parse_directive(term: &str) -> Result<(Qualifier, Mechanism), SyntaxError> {
    let (qualifier, rest) = match term.as_bytes().first() {
        Some(b'+') => (Qualifier::Pass, &term[1..]),
        Some(b'-') => (Qualifier::Fail, &term[1..]),
        Some(b'~') => (Qualifier::SoftFail, &term[1..]),
        Some(b'?') => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(end);
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_domain(args)?),
        "exists" => Mechanism::Exists(required_domain(args)?),
        "ptr" => Mechanism::Ptr(optional_domain(args)?),
        "a" | "mx" => {
            let (args, v4, v6) = split_dual_cidr(args)?;
            let domain = optional_domain(args)?;
            if name.eq_ignore_ascii_case("a") {
                Mechanism::A { domain, v4, v6 }
            } else {
                Mechanism::Mx { domain, v4, v6 }
            }
        }
        "ip4" => {
            let network = args.strip_prefix(':').ok_or(SyntaxError("ip4 without address"))?;
            let (address, length) = match network.split_once('/') {
                Some((address, length)) => (address, cidr_length(length, 32)?),
                None => (network, 32),
            };
            let address = address.parse().map_err(|_| SyntaxError("bad ip4 address"))?;
            Mechanism::Ip4(address, length)
        }
        "ip6" => {
            let network = args.strip_prefix(':').ok_or(SyntaxError("ip6 without address"))?;
            let (address, length) = match network.split_once('/') {
                Some((address, length)) => (address, cidr_length(length, 128)?),
                None => (network, 128),
            };
            let address = address.parse().map_err(|_| SyntaxError("bad ip6 address"))?;
            Mechanism::Ip6(address, length)
        }
        _ => return Err(SyntaxError("unknown mechanism")),
    };
    Ok((qualifier, mechanism))
}

/// `":" domain-spec`, required (include, exists).
fn required_domain(args: &str) -> Result<MacroString, SyntaxError> {
    let spec = args.strip_prefix(':').ok_or(SyntaxError("missing domain-spec"))?;
    parse_domain_spec(spec)
}

/// `[ ":" domain-spec ]` (a, mx, ptr); anything else after the name is a syntax error.
fn optional_domain(args: &str) -> Result<Option<MacroString>, SyntaxError> {
    if args.is_empty() {
        return Ok(None);
    }
    required_domain(args).map(Some)
}

/// Splits `dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]` off the end of a
/// mechanism's arguments (5.6); the defaults are /32 and /128. A domain-spec may itself hold
/// `/`, so only a trailing `/digits` or `//digits` counts as a length.
fn split_dual_cidr(args: &str) -> Result<(&str, u8, u8), SyntaxError> {
    let mut rest = args;
    let mut v6 = 128;
    if let Some((before, digits)) = trailing_length(rest)
        && let Some(before) = before.strip_suffix('/')
    {
        v6 = cidr_length(digits, 128)?;
        rest = before;
    }
    let mut v4 = 32;
    if let Some((before, digits)) = trailing_length(rest) {
        v4 = cidr_length(digits, 32)?;
        rest = before;
    }
    Ok((rest, v4, v6))
}

/// `text "/" 1*DIGIT` at the end: (text, digits).
fn trailing_length(s: &str) -> Option<(&str, &str)> {
    let digits_start = s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits_start == s.len() {
        return None;
    }
    let before = s[..digits_start].strip_suffix('/')?;
    Some((before, &s[digits_start..]))
}

/// `ip4-cidr-length = "/" ( "0" / %x31-39 0*1DIGIT )` and the ip6 form with up to three
/// digits: no leading zeros, and at most the address length (5.6).
fn cidr_length(digits: &str, max: u8) -> Result<u8, SyntaxError> {
    let well_formed = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    let length: u8 = digits.parse().map_err(|_| SyntaxError("bad CIDR length"))?;
    if !well_formed || length > max {
        return Err(SyntaxError("bad CIDR length"));
    }
    Ok(length)
}

// ---------------------------------------------------------------------------------------------
// Macros (RFC 7208 7)

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Macro {
        /// Lower-case letter.
        letter: u8,
        /// Upper-case letter: URL-escape the value (7.3).
        escape: bool,
        /// Keep this many right-hand parts (nonzero).
        keep: Option<usize>,
        reverse: bool,
        /// Split on these; "." when none are given.
        delimiters: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MacroString {
    parts: Vec<Part>,
    /// The last token was a macro-expand (`%{..}`, `%%`, `%_`, `%-`): a valid domain-end.
    ends_with_macro: bool,
}

/// The most right-hand parts a transformer can ask for that make a difference: a value of at
/// most [`MAX_EXPANSION`] octets has no more parts than that.
const MAX_KEEP: usize = MAX_EXPANSION;

/// `macro-string` (7.1); with `explanation`, the `explain-string` of an exp= TXT record:
/// spaces allowed, and the letters c, r and t.
fn parse_macro_string(s: &str, explanation: bool) -> Result<MacroString, SyntaxError> {
    let bytes = s.as_bytes();
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut ends_with_macro = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // macro-literal = %x21-24 / %x26-7E (visible characters except "%").
            if !(b.is_ascii_graphic() || (explanation && b == b' ')) {
                return Err(SyntaxError("bad character in macro-string"));
            }
            literal.push(char::from(b));
            ends_with_macro = false;
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'%') => literal.push('%'),
            Some(b'_') => literal.push(' '),
            Some(b'-') => literal.push_str("%20"),
            Some(b'{') => {
                let close = s[i + 2..].find('}').ok_or(SyntaxError("unterminated macro"))?;
                let body = &s[i + 2..i + 2 + close];
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(parse_macro_body(body, explanation)?);
                ends_with_macro = true;
                i += 2 + close + 1;
                continue;
            }
            _ => return Err(SyntaxError("bad % escape")),
        }
        ends_with_macro = true;
        i += 2;
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(MacroString {
        parts,
        ends_with_macro,
    })
}

/// `macro-letter transformers *delimiter` between `%{` and `}`.
fn parse_macro_body(body: &str, explanation: bool) -> Result<Part, SyntaxError> {
    let bytes = body.as_bytes();
    let letter = *bytes.first().ok_or(SyntaxError("empty macro"))?;
    let lower = letter.to_ascii_lowercase();
    let allowed: &[u8] = if explanation { b"slodiphvcrt" } else { b"slodiphv" };
    if !allowed.contains(&lower) {
        return Err(SyntaxError("unknown macro letter"));
    }
    let mut i = 1;
    let digits_end = bytes[i..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(bytes.len(), |p| p + i);
    let keep = if digits_end > i {
        let digits = body[i..digits_end].trim_start_matches('0');
        // 7.1: "If a DIGIT is specified, the value MUST be nonzero."
        if digits.is_empty() {
            return Err(SyntaxError("zero transformer"));
        }
        // Any count beyond MAX_KEEP keeps every part; cap it instead of overflowing.
        Some(if digits.len() > 5 {
            MAX_KEEP
        } else {
            digits.parse::<usize>().map_or(MAX_KEEP, |n| n.min(MAX_KEEP))
        })
    } else {
        None
    };
    i = digits_end;
    let reverse = matches!(bytes.get(i), Some(b'r' | b'R'));
    if reverse {
        i += 1;
    }
    let delimiters = &body[i..];
    if !delimiters.bytes().all(|b| b".-+,/_=".contains(&b)) {
        return Err(SyntaxError("bad macro delimiter"));
    }
    Ok(Part::Macro {
        letter: lower,
        escape: letter.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters: delimiters.to_string(),
    })
}

/// `domain-spec = macro-string domain-end`, `domain-end = ( "." toplabel [ "." ] ) /
/// macro-expand` (7.1): a literal domain must end in a valid top label.
fn parse_domain_spec(s: &str) -> Result<MacroString, SyntaxError> {
    if s.is_empty() {
        return Err(SyntaxError("empty domain-spec"));
    }
    let spec = parse_macro_string(s, false)?;
    if spec.ends_with_macro {
        return Ok(spec);
    }
    let Some(Part::Literal(tail)) = spec.parts.last() else {
        return Err(SyntaxError("bad domain-end"));
    };
    let tail = tail.strip_suffix('.').unwrap_or(tail);
    let (_, top) = tail.rsplit_once('.').ok_or(SyntaxError("no top label"))?;
    if !is_toplabel(top) {
        return Err(SyntaxError("bad top label"));
    }
    Ok(spec)
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`
/// (7.1, after RFC 3696 2: a top label is never all-numeric).
fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && b.iter().any(|c| c.is_ascii_alphabetic() || *c == b'-')
}

/// RFC 7208 4.3: an identity's domain must be a multi-label domain name with no empty label
/// and none over 63 octets; anything else (an address literal, a single label) is `none`.
fn is_valid_identity(domain: &str) -> bool {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    if name.is_empty() || name.len() > 253 || name.starts_with('[') {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b > b' ' && b != 0x7f))
        && labels
            .last()
            .is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()))
}

/// RFC 7208 7.3: an expanded domain over 253 octets loses labels from the left until it
/// fits; then it must be a name DNS can carry (no empty label, none over 63 octets), or it
/// matches nothing. None: no name to ask for.
fn query_name(expanded: &str) -> Option<String> {
    let mut name = expanded.strip_suffix('.').unwrap_or(expanded);
    while name.len() > 253 {
        name = name.split_once('.')?.1;
    }
    let valid = !name.is_empty() && name.split('.').all(|l| !l.is_empty() && l.len() <= 63);
    valid.then(|| name.to_string())
}

/// RFC 3986 unreserved characters stay, everything else becomes `%XX` (7.3).
fn url_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The transformers of 7.3: split on the delimiters, reverse, keep the right-hand parts,
/// join with ".".
fn transform(value: &str, keep: Option<usize>, reverse: bool, delimiters: &str) -> String {
    let delimiters = if delimiters.is_empty() { "." } else { delimiters };
    let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
    if reverse {
        parts.reverse();
    }
    if let Some(keep) = keep
        && keep < parts.len()
    {
        parts.drain(..parts.len() - keep);
    }
    parts.join(".")
}

/// `%{i}`: dotted decimal for IPv4; for IPv6, 32 dot-separated nibbles (7.3, as in the RFC's
/// examples: upper-case hexadecimal).
fn dotted_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(63);
            for byte in v6.octets() {
                for nibble in [byte >> 4, byte & 0xf] {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&format!("{nibble:X}"));
                }
            }
            out
        }
    }
}

fn in_network(ip: IpAddr, v4: u8, v6: u8, candidate: IpAddr) -> bool {
    match (ip, candidate) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation (RFC 7208 4.6, 5)

struct Evaluator<'d, D> {
    dns: &'d D,
    /// The client, IPv4-mapped addresses unmapped.
    ip: IpAddr,
    /// The client as it connected (`%{c}` shows it as seen).
    original_ip: IpAddr,
    local: String,
    sender_domain: String,
    helo: String,
    receiver: String,
    /// DNS-querying terms so far (4.6.4), across include and redirect.
    lookups: usize,
    /// Void lookups so far (4.6.4).
    voids: usize,
    /// The client's PTR names that resolve back to it (5.5), looked up once: (whether the
    /// PTR lookup was void, the validated names).
    ptr: Option<(bool, Vec<String>)>,
}

type BoxedCheck<'a> = Pin<Box<dyn Future<Output = Result<Outcome, Abort>> + Send + 'a>>;

impl<'d, D: SpfDns> Evaluator<'d, D> {
    /// 4.6.4: one more DNS-querying term.
    fn count_lookup(&mut self) -> Result<(), Abort> {
        self.lookups += 1;
        if self.lookups > MAX_DNS_TERMS {
            return Err(Abort::Perm);
        }
        Ok(())
    }

    /// 4.6.4: one more lookup that found nothing.
    fn count_void(&mut self) -> Result<(), Abort> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(Abort::Perm);
        }
        Ok(())
    }

    /// check_host() for one domain; include and redirect come back here (boxed: recursion,
    /// at most [`MAX_DNS_TERMS`] deep as each step costs a lookup).
    fn check(&mut self, domain: String) -> BoxedCheck<'_> {
        Box::pin(async move {
            let none = Outcome {
                result: SpfResult::None,
                exp: None,
            };
            if !is_valid_identity(&domain) {
                return Ok(none);
            }
            let records = self.dns.txt(&domain).await.map_err(|_| Abort::Temp)?;
            let mut spf = records.iter().filter(|r| is_spf_record(r));
            let Some(record) = spf.next() else {
                return Ok(none);
            };
            // 4.5: more than one SPF record is permerror.
            if spf.next().is_some() {
                return Err(Abort::Perm);
            }
            let record = parse_record(record).map_err(|_| Abort::Perm)?;
            for (qualifier, mechanism) in &record.directives {
                if self.matches(mechanism, &domain).await? {
                    return Ok(Outcome {
                        result: qualifier.result(),
                        exp: record.exp.clone().map(|exp| (exp, domain.clone())),
                    });
                }
            }
            let Some(redirect) = &record.redirect else {
                return Ok(Outcome {
                    result: SpfResult::Neutral,
                    exp: None,
                });
            };
            // 6.1: redirect counts as a lookup; its record replaces this one, exp= included,
            // and a target without a record (or no valid name at all) is permerror.
            self.count_lookup()?;
            let target = self.expand(redirect, &domain).await?;
            let target = query_name(&target).ok_or(Abort::Perm)?;
            let outcome = self.check(target).await?;
            if outcome.result == SpfResult::None {
                return Err(Abort::Perm);
            }
            Ok(outcome)
        })
    }

    async fn matches(&mut self, mechanism: &Mechanism, domain: &str) -> Result<bool, Abort> {
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(network, length) => Ok(in_network(self.ip, *length, 0, IpAddr::V4(*network))),
            Mechanism::Ip6(network, length) => Ok(in_network(self.ip, 0, *length, IpAddr::V6(*network))),
            Mechanism::Include(spec) => {
                self.count_lookup()?;
                let target = self.expand(spec, domain).await?;
                // 5.2: a target with no record (or no valid name) is permerror; pass matches,
                // fail, softfail and neutral do not; errors carry over.
                let target = query_name(&target).ok_or(Abort::Perm)?;
                match self.check(target).await?.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::None => Err(Abort::Perm),
                    _ => Ok(false),
                }
            }
            Mechanism::A { domain: spec, v4, v6 } => {
                self.count_lookup()?;
                let Some(target) = self.target(spec.as_ref(), domain).await? else {
                    return Ok(false);
                };
                let addresses = self.addresses(&target).await?;
                if addresses.is_empty() {
                    self.count_void()?;
                }
                Ok(addresses.into_iter().any(|a| in_network(self.ip, *v4, *v6, a)))
            }
            Mechanism::Mx { domain: spec, v4, v6 } => {
                self.count_lookup()?;
                let Some(target) = self.target(spec.as_ref(), domain).await? else {
                    return Ok(false);
                };
                let exchanges = self.dns.mx(&target).await.map_err(|_| Abort::Temp)?;
                if exchanges.is_empty() {
                    self.count_void()?;
                    return Ok(false);
                }
                // 4.6.4: more than ten MX names is permerror.
                if exchanges.len() > MAX_MX_NAMES {
                    return Err(Abort::Perm);
                }
                for exchange in exchanges {
                    // A null MX (RFC 7505, ".") names no host.
                    let Some(host) = query_name(&exchange) else {
                        continue;
                    };
                    let addresses = self.addresses(&host).await?;
                    if addresses.into_iter().any(|a| in_network(self.ip, *v4, *v6, a)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                self.count_lookup()?;
                let Some(target) = self.target(spec.as_ref(), domain).await? else {
                    return Ok(false);
                };
                let (void, names) = self.validated_names().await;
                if void {
                    self.count_void()?;
                }
                Ok(names.iter().any(|name| is_within(name, &target)))
            }
            Mechanism::Exists(spec) => {
                self.count_lookup()?;
                let Some(target) = self.target(Some(spec), domain).await? else {
                    return Ok(false);
                };
                // 5.7: always an A query, whatever the client's address family.
                let found = self.dns.a(&target).await.map_err(|_| Abort::Temp)?;
                if found.is_empty() {
                    self.count_void()?;
                }
                Ok(!found.is_empty())
            }
        }
    }

    /// The name a mechanism asks about: its domain-spec expanded, or the current domain.
    /// None when the expansion is no valid name: it matches nothing.
    async fn target(&mut self, spec: Option<&MacroString>, domain: &str) -> Result<Option<String>, Abort> {
        match spec {
            Some(spec) => Ok(query_name(&self.expand(spec, domain).await?)),
            None => Ok(query_name(domain)),
        }
    }

    /// The A records (IPv4 client) or AAAA records (IPv6 client) of `name` (5.3).
    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, Abort> {
        let found = match self.ip {
            IpAddr::V4(_) => self
                .dns
                .a(name)
                .await
                .map(|v| v.into_iter().map(IpAddr::V4).collect()),
            IpAddr::V6(_) => self
                .dns
                .aaaa(name)
                .await
                .map(|v| v.into_iter().map(IpAddr::V6).collect()),
        };
        found.map_err(|_| Abort::Temp)
    }

    /// 5.5: the client's PTR names (the first ten) whose addresses include the client. DNS
    /// errors here only make a name not validated, never an error result.
    async fn validated_names(&mut self) -> (bool, Vec<String>) {
        if let Some(cached) = &self.ptr {
            return cached.clone();
        }
        let names = self.dns.ptr(self.ip).await.unwrap_or_default();
        let void = names.is_empty();
        let mut validated = Vec::new();
        for name in names.into_iter().take(MAX_PTR_NAMES) {
            let Some(name) = query_name(&name) else {
                continue;
            };
            if let Ok(addresses) = self.addresses(&name).await
                && addresses.contains(&self.ip)
            {
                validated.push(name);
            }
        }
        self.ptr = Some((void, validated.clone()));
        (void, validated)
    }

    /// `%{p}` (7.3): a validated name, the domain itself or one of its subdomains if there is
    /// one, else "unknown".
    async fn p_macro(&mut self, domain: &str) -> String {
        let (_, names) = self.validated_names().await;
        names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(domain.trim_end_matches('.')))
            .or_else(|| names.iter().find(|n| is_within(n, domain)))
            .or_else(|| names.first())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// Expands a macro-string with `domain` as `%{d}` (7.3); longer than [`MAX_EXPANSION`]
    /// is permerror.
    async fn expand(&mut self, spec: &MacroString, domain: &str) -> Result<String, Abort> {
        let mut out = String::new();
        for part in &spec.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Macro {
                    letter,
                    escape,
                    keep,
                    reverse,
                    delimiters,
                } => {
                    let value = match letter {
                        b's' => format!("{}@{}", self.local, self.sender_domain),
                        b'l' => self.local.clone(),
                        b'o' => self.sender_domain.clone(),
                        b'd' => domain.to_string(),
                        b'i' => dotted_ip(self.ip),
                        b'p' => self.p_macro(domain).await,
                        b'v' => match self.ip {
                            IpAddr::V4(_) => "in-addr".to_string(),
                            IpAddr::V6(_) => "ip6".to_string(),
                        },
                        b'h' => self.helo.clone(),
                        b'c' => self.original_ip.to_string(),
                        b'r' => self.receiver.clone(),
                        b't' => sealmail_types::clock::now_unix().to_string(),
                        _ => return Err(Abort::Perm),
                    };
                    if value.len() > MAX_EXPANSION {
                        return Err(Abort::Perm);
                    }
                    let value = transform(&value, *keep, *reverse, delimiters);
                    if *escape {
                        out.push_str(&url_escape(&value));
                    } else {
                        out.push_str(&value);
                    }
                }
            }
            if out.len() > MAX_EXPANSION {
                return Err(Abort::Perm);
            }
        }
        Ok(out)
    }

    /// 6.2: the explanation for a fail: the TXT record at the expanded exp= domain, itself
    /// expanded. Any trouble (DNS, no record or several, bad syntax, non-ASCII) gives no
    /// explanation, never a different result; the lookup counts toward no limit.
    async fn explain(&mut self, exp: &MacroString, domain: &str) -> Option<String> {
        let target = query_name(&self.expand(exp, domain).await.ok()?)?;
        let records = self.dns.txt(&target).await.ok()?;
        let [record] = records.as_slice() else {
            return None;
        };
        if record.len() > MAX_RECORD_LEN {
            return None;
        }
        let text = std::str::from_utf8(record).ok()?;
        let text = parse_macro_string(text, true).ok()?;
        let mut explanation = self.expand(&text, domain).await.ok()?;
        if explanation.len() > MAX_EXPLANATION {
            let mut end = MAX_EXPLANATION;
            while !explanation.is_char_boundary(end) {
                end -= 1;
            }
            explanation.truncate(end);
        }
        Some(explanation)
    }
}

/// `name` is `domain` or one of its subdomains (case-insensitive, trailing dots ignored).
fn is_within(name: &str, domain: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    name == domain || name.ends_with(&format!(".{domain}"))
}

// ---------------------------------------------------------------------------------------------
// DNS over the shared resolver

/// [`SpfDns`] over the shared hickory resolver of `sealmail-dns` (and its cache).
pub struct ResolverDns<'r>(pub &'r TokioResolver);

/// A query name from an SPF name: labels taken as raw octets (macros can put `%`, `:` or
/// spaces in them, 7.3), absolute. None when DNS cannot carry it.
fn dns_name(name: &str) -> Option<Name> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    let mut name = Name::from_labels(name.split('.').map(str::as_bytes)).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// A name from an answer as SPF compares it: the labels' octets joined with dots (not
/// hickory's zone-file escaping of unusual characters).
fn name_text(name: &Name) -> String {
    name.iter()
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

fn answer<T>(
    result: Result<
        sealmail_dns::hickory_resolver::lookup::Lookup,
        sealmail_dns::hickory_resolver::net::NetError,
    >,
    pick: impl Fn(&RData) -> Option<T>,
) -> Answer<T> {
    match result {
        Ok(lookup) => Ok(lookup.answers().iter().filter_map(|r| pick(&r.data)).collect()),
        // NXDOMAIN and NODATA: a void answer, not an error (4.6.4).
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(DnsFailure(e.to_string())),
    }
}

impl ResolverDns<'_> {
    /// The records of one type at an SPF name, as `pick` takes them from the answer; a name
    /// DNS cannot carry has none.
    async fn records<T>(
        &self,
        name: &str,
        record_type: RecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Answer<T> {
        let Some(name) = dns_name(name) else {
            return Ok(Vec::new());
        };
        answer(self.0.lookup(name, record_type).await, pick)
    }
}

impl SpfDns for ResolverDns<'_> {
    async fn txt(&self, name: &str) -> Answer<Vec<u8>> {
        self.records(name, RecordType::TXT, |data| match data {
            RData::TXT(txt) => Some(txt.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
            _ => None,
        })
        .await
    }

    async fn a(&self, name: &str) -> Answer<Ipv4Addr> {
        self.records(name, RecordType::A, |data| match data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    async fn aaaa(&self, name: &str) -> Answer<Ipv6Addr> {
        self.records(name, RecordType::AAAA, |data| match data {
            RData::AAAA(aaaa) => Some(aaaa.0),
            _ => None,
        })
        .await
    }

    async fn mx(&self, name: &str) -> Answer<String> {
        self.records(name, RecordType::MX, |data| match data {
            RData::MX(mx) => Some(name_text(&mx.exchange)),
            _ => None,
        })
        .await
    }

    async fn ptr(&self, ip: IpAddr) -> Answer<String> {
        answer(self.0.reverse_lookup(ip).await, |data| match data {
            RData::PTR(ptr) => Some(name_text(&ptr.0)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A zone in memory: what the evaluator sees, without sockets.
    #[derive(Default)]
    struct Zone {
        txt: HashMap<String, Vec<String>>,
        a: HashMap<String, Vec<Ipv4Addr>>,
        aaaa: HashMap<String, Vec<Ipv6Addr>>,
        mx: HashMap<String, Vec<String>>,
        ptr: HashMap<IpAddr, Vec<String>>,
        /// Names whose every query fails (a timeout).
        broken: Vec<String>,
        queries: AtomicUsize,
    }

    impl Zone {
        fn txt(mut self, name: &str, text: &str) -> Self {
            self.txt.entry(name.into()).or_default().push(text.into());
            self
        }
        fn a(mut self, name: &str, ip: [u8; 4]) -> Self {
            self.a.entry(name.into()).or_default().push(ip.into());
            self
        }
        fn aaaa(mut self, name: &str, ip: &str) -> Self {
            if let Ok(ip) = ip.parse() {
                self.aaaa.entry(name.into()).or_default().push(ip);
            }
            self
        }
        fn mx(mut self, name: &str, host: &str) -> Self {
            self.mx.entry(name.into()).or_default().push(host.into());
            self
        }
        fn ptr(mut self, ip: &str, name: &str) -> Self {
            if let Ok(ip) = ip.parse() {
                self.ptr.entry(ip).or_default().push(name.into());
            }
            self
        }
        fn look<T: Clone>(&self, map: &HashMap<String, Vec<T>>, name: &str) -> Answer<T> {
            self.queries.fetch_add(1, Ordering::Relaxed);
            let name = name.to_ascii_lowercase();
            if self.broken.contains(&name) {
                return Err(DnsFailure("timeout".into()));
            }
            Ok(map.get(&name).cloned().unwrap_or_default())
        }
    }

    impl SpfDns for Zone {
        async fn txt(&self, name: &str) -> Answer<Vec<u8>> {
            self.look(&self.txt, name)
                .map(|v| v.into_iter().map(String::into_bytes).collect())
        }
        async fn a(&self, name: &str) -> Answer<Ipv4Addr> {
            self.look(&self.a, name)
        }
        async fn aaaa(&self, name: &str) -> Answer<Ipv6Addr> {
            self.look(&self.aaaa, name)
        }
        async fn mx(&self, name: &str) -> Answer<String> {
            self.look(&self.mx, name)
        }
        async fn ptr(&self, ip: IpAddr) -> Answer<String> {
            self.queries.fetch_add(1, Ordering::Relaxed);
            Ok(self.ptr.get(&ip).cloned().unwrap_or_default())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    async fn mail_from(zone: &Zone, client: &str, sender: &str) -> SpfCheck {
        check_mail_from(zone, ip(client), "mail.helo.test", sender, "mx.ours.test").await
    }

    #[test]
    fn record_syntax_follows_rfc_7208_exactly() {
        let ok = [
            "v=spf1",
            "V=SPF1 -ALL",
            "v=spf1  a  mx  -all ",
            "v=spf1 a/24//64 mx//0 a:%{d}.x.test/0",
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ip6:::1.1.1.1/0",
            "v=spf1 include:_spf.a.test exists:%{ir}.%{v}._spf.%{d2} ?all",
            "v=spf1 ptr ptr:a.test. redirect=_spf.a.test exp=why.%{d}",
            "v=spf1 moo.cow-far_out=man:dog/cat a:foo.xn--zckzah a:foo:bar/baz.a.test",
            "v=spf1 a:macro%%x%_y%-z.a.test exists:%{l2r+-}.u.%{D2}",
        ];
        for record in ok {
            assert!(parse_record(record.as_bytes()).is_ok(), "{record}");
        }
        let permerror = [
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a/24/64",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 ip4:1.2.3.4//32",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip6::CAFE::BABE",
            "v=spf1 -all.",
            "v=spf1 -all:x.test",
            "v=spf1 ptr/0",
            "v=spf1 include",
            "v=spf1 include:",
            "v=spf1 include:a.test/24",
            "v=spf1 exists:a.test/24",
            "v=spf1 a:foo-bar",
            "v=spf1 a:museum.",
            "v=spf1 a:111.222.33.44",
            "v=spf1 a:example.-com",
            "v=spf1 a:example.com:8080",
            "v=spf1 a:x.test\tmx",
            "v=spf1 a:x.test\rptr",
            "v=spf1 ip4:192.0.2.5\n include:x.test",
            "v=spf1 a:caf\u{e9}.test",
            "v=spf1 redirect=a.test redirect=b.test",
            "v=spf1 exp=a.test exp=b.test",
            "v=spf1 exp=",
            "v=spf1 redirect=-all",
            "v=spf1 redirect:a.test",
            "v=spf1 =all",
            "v=spf1 1up=foo",
            "v=spf1 foo=%abc",
            "v=spf1 moo.cow/far_out=man:dog/cat",
            "v=spf1 exists:%(ir).sbl.test",
            "v=spf1 exists:foo%.sbl.test",
            "v=spf1 exists:%{d0}.test",
            "v=spf1 exists:%{x}.test",
            "v=spf1 exp=%{r}.test",
            "v=spf1 a:%{c}.test",
            "v=spf1 a:%{d}.test%{l",
        ];
        for record in permerror {
            assert!(parse_record(record.as_bytes()).is_err(), "{record:?}");
        }
    }

    #[test]
    fn only_v_spf1_then_space_or_end_is_a_record() {
        assert!(is_spf_record(b"v=spf1"));
        assert!(is_spf_record(b"V=Spf1 -all"));
        assert!(!is_spf_record(b"v=spf10"));
        assert!(!is_spf_record(b"v=spf1mx"));
        assert!(!is_spf_record(b" v=spf1"));
        assert!(!is_spf_record(b"spf2.0/pra"));
    }

    #[test]
    fn parsing_is_bounded() {
        let long = format!("v=spf1 {}", "ip4:192.0.2.1 ".repeat(MAX_RECORD_LEN / 14 + 1));
        assert!(parse_record(long.as_bytes()).is_err(), "record length");
        let many = format!("v=spf1{}", " ?all".repeat(MAX_TERMS + 1));
        assert!(many.len() <= MAX_RECORD_LEN);
        assert!(parse_record(many.as_bytes()).is_err(), "term count");
        // A huge transformer count is capped, not an overflow.
        assert!(parse_record(b"v=spf1 exists:%{d99999999999999999999999}.a.test").is_ok());
    }

    /// RFC 7208 7.4's examples, sender strong-bad@email.example.com, client 192.0.2.3 and
    /// 2001:db8::cb01.
    #[tokio::test]
    async fn macros_expand_as_in_the_rfc_examples() {
        let zone = Zone::default();
        let cases = [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            (
                "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
                "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
            ),
            (
                "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
                "3.2.0.192.in-addr.strong.lp._spf.example.com",
            ),
            (
                "%{d2}.trusted-domains.example.net",
                "example.com.trusted-domains.example.net",
            ),
            ("%{L}%%%_%-", "strong-bad% %20"),
        ];
        for (spec, expected) in cases {
            let mut eval = evaluator(&zone, "192.0.2.3", "strong-bad", "email.example.com");
            let parsed = parse_macro_string(spec, false);
            let got = match parsed {
                Ok(parsed) => eval.expand(&parsed, "email.example.com").await.ok(),
                Err(_) => None,
            };
            assert_eq!(got.as_deref(), Some(expected), "{spec}");
        }
        let mut eval = evaluator(&zone, "2001:db8::cb01", "strong-bad", "email.example.com");
        let spec = parse_macro_string("%{ir}.%{v}._spf.%{d2}", false);
        let got = match spec {
            Ok(spec) => eval.expand(&spec, "email.example.com").await.ok(),
            Err(_) => None,
        };
        assert_eq!(
            got.as_deref(),
            Some("1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com")
        );
        // Upper-case letters URL-escape (7.3).
        let mut eval = evaluator(&zone, "192.0.2.3", "~jack&jill=up", "a.test");
        let spec = parse_macro_string("%{L}", false);
        let got = match spec {
            Ok(spec) => eval.expand(&spec, "a.test").await.ok(),
            Err(_) => None,
        };
        assert_eq!(got.as_deref(), Some("~jack%26jill%3Dup"));
    }

    fn evaluator<'z>(zone: &'z Zone, client: &str, local: &str, domain: &str) -> Evaluator<'z, Zone> {
        Evaluator {
            dns: zone,
            ip: ip(client),
            original_ip: ip(client),
            local: local.into(),
            sender_domain: domain.into(),
            helo: "mail.helo.test".into(),
            receiver: "mx.ours.test".into(),
            lookups: 0,
            voids: 0,
            ptr: None,
        }
    }

    #[tokio::test]
    async fn an_expansion_too_long_is_permerror_not_unbounded_work() {
        // Each %{s} is four octets of record and up to 300 of expansion.
        let record = format!("v=spf1 exists:{}.a.test -all", "%{s}".repeat(900));
        let zone = Zone::default().txt("a.test", &record);
        let sender = format!("{}@a.test", "x".repeat(290));
        assert_eq!(
            mail_from(&zone, "192.0.2.1", &sender).await.result,
            SpfResult::PermError
        );
    }

    #[test]
    fn over_long_names_lose_labels_from_the_left() {
        let long = format!("{}a.test", "abcdefghi.".repeat(30));
        let name = query_name(&long).unwrap_or_default();
        assert!(
            name.len() <= 253 && name.ends_with(".a.test") && name.starts_with("abcdefghi."),
            "{name}"
        );
        assert_eq!(query_name("a..b.test"), None);
        assert_eq!(query_name(&format!("{}.test", "x".repeat(64))), None);
        assert_eq!(query_name("a.test."), Some("a.test".into()));
    }

    #[tokio::test]
    async fn identities_that_are_not_domains_are_none() {
        let zone = Zone::default();
        for sender in ["x@[192.0.2.1]", "x@a...test", "x@single", "x@192.0.2.1"] {
            let check = mail_from(&zone, "192.0.2.1", sender).await;
            assert_eq!(check.result, SpfResult::None, "{sender}");
        }
        let helo = check_helo(&zone, ip("192.0.2.1"), "[192.0.2.1]", "mx.ours.test").await;
        assert_eq!(helo.result, SpfResult::None);
        assert_eq!(zone.queries.load(Ordering::Relaxed), 0, "nothing asked DNS");
    }

    #[tokio::test]
    async fn results_and_records() {
        let zone = Zone::default()
            .txt("pass.test", "v=spf1 ip4:192.0.2.0/24 -all")
            .txt("two.test", "v=spf1 -all")
            .txt("two.test", "V=SPF1 +all")
            .txt("other.test", "something else")
            .txt("other.test", "v=spf1 ~all")
            .txt("empty.test", "v=spf1");
        let cases = [
            ("x@pass.test", "192.0.2.9", SpfResult::Pass),
            ("x@pass.test", "198.51.100.1", SpfResult::Fail),
            ("x@two.test", "192.0.2.9", SpfResult::PermError),
            ("x@other.test", "192.0.2.9", SpfResult::SoftFail),
            ("x@empty.test", "192.0.2.9", SpfResult::Neutral),
            ("x@nothing.test", "192.0.2.9", SpfResult::None),
        ];
        for (sender, client, expected) in cases {
            assert_eq!(
                mail_from(&zone, client, sender).await.result,
                expected,
                "{sender}"
            );
        }
        let mut broken = Zone::default();
        broken.broken.push("down.test".into());
        assert_eq!(
            mail_from(&broken, "192.0.2.9", "x@down.test").await.result,
            SpfResult::TempError
        );
    }

    #[tokio::test]
    async fn an_ipv4_mapped_client_is_an_ipv4_client() {
        let zone = Zone::default()
            .txt("a.test", "v=spf1 ip6:::ffff:0:0/96 ip4:192.0.2.1 -all")
            .txt("b.test", "v=spf1 a -all")
            .a("b.test", [192, 0, 2, 1])
            .aaaa("b.test", "::ffff:192.0.2.1");
        for domain in ["a.test", "b.test"] {
            let check = mail_from(&zone, "::ffff:192.0.2.1", &format!("x@{domain}")).await;
            assert_eq!(check.result, SpfResult::Pass, "{domain}");
        }
        let zone = Zone::default().txt("c.test", "v=spf1 ip6:::/0 -all");
        assert_eq!(
            mail_from(&zone, "::ffff:192.0.2.1", "x@c.test").await.result,
            SpfResult::Fail
        );
    }

    #[tokio::test]
    async fn the_ten_lookup_and_two_void_limits() {
        let ten = format!("v=spf1 {}ip4:192.0.2.1 -all", "a ".repeat(10));
        let eleven = format!("v=spf1 {}ip4:192.0.2.1 -all", "a ".repeat(11));
        let zone = Zone::default()
            .txt("ten.test", &ten)
            .a("ten.test", [198, 51, 100, 1])
            .txt("eleven.test", &eleven)
            .a("eleven.test", [198, 51, 100, 1])
            .txt("void2.test", "v=spf1 a:n1.test a:n2.test ?all")
            .txt("void3.test", "v=spf1 a:n1.test a:n2.test a:n3.test ?all");
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@ten.test").await.result,
            SpfResult::Pass
        );
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@eleven.test").await.result,
            SpfResult::PermError
        );
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@void2.test").await.result,
            SpfResult::Neutral
        );
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@void3.test").await.result,
            SpfResult::PermError
        );
    }

    #[tokio::test]
    async fn include_and_redirect_loops_end_at_the_limit() {
        let zone = Zone::default()
            .txt("loop.test", "v=spf1 include:loop.test -all")
            .txt("redir.test", "v=spf1 redirect=%{d}");
        for sender in ["x@loop.test", "x@redir.test"] {
            let check = mail_from(&zone, "192.0.2.1", sender).await;
            assert_eq!(check.result, SpfResult::PermError, "{sender}");
        }
        // Two evaluations of at most eleven TXT queries each.
        assert!(zone.queries.load(Ordering::Relaxed) <= 22);
    }

    #[tokio::test]
    async fn include_and_redirect_semantics() {
        let zone = Zone::default()
            .txt("inc.test", "v=spf1 include:fail.test include:none.test ?all")
            .txt("fail.test", "v=spf1 -all")
            .txt("temp.test", "v=spf1 include:down.test -all")
            .txt("redir.test", "v=spf1 redirect=none.test")
            .txt("redir2.test", "v=spf1 ip4:192.0.2.1 redirect=fail.test");
        let mut zone = zone;
        zone.broken.push("down.test".into());
        // An included fail does not match; an include of a domain without SPF is permerror.
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@inc.test").await.result,
            SpfResult::PermError
        );
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@temp.test").await.result,
            SpfResult::TempError
        );
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@redir.test").await.result,
            SpfResult::PermError
        );
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@redir2.test").await.result,
            SpfResult::Pass
        );
        assert_eq!(
            mail_from(&zone, "192.0.2.2", "x@redir2.test").await.result,
            SpfResult::Fail
        );
    }

    #[tokio::test]
    async fn mx_and_ptr_limits() {
        let mut zone = Zone::default()
            .txt("mx.test", "v=spf1 mx -all")
            .txt("ptr.test", "v=spf1 ptr -all");
        for i in 0..11 {
            zone = zone.mx("mx.test", &format!("h{i}.mx.test"));
        }
        zone = zone.a("h10.mx.test", [192, 0, 2, 1]);
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@mx.test").await.result,
            SpfResult::PermError
        );
        // Only the first ten PTR names are validated: the eleventh does not count.
        for i in 0..10 {
            zone = zone.ptr("192.0.2.1", &format!("h{i}.other.test"));
        }
        zone = zone
            .ptr("192.0.2.1", "host.ptr.test")
            .a("host.ptr.test", [192, 0, 2, 1]);
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@ptr.test").await.result,
            SpfResult::Fail
        );
    }

    #[tokio::test]
    async fn ptr_needs_a_name_that_resolves_back() {
        let zone = Zone::default()
            .txt("a.test", "v=spf1 ptr -all exp=why.a.test")
            .txt("why.a.test", "%{c} is not %{p}; ask %{l}")
            .ptr("192.0.2.1", "mail.A.test")
            .a("mail.a.test", [192, 0, 2, 1])
            .ptr("192.0.2.2", "liar.a.test")
            .a("liar.a.test", [198, 51, 100, 1]);
        assert_eq!(
            mail_from(&zone, "192.0.2.1", "x@a.test").await.result,
            SpfResult::Pass
        );
        let check = mail_from(&zone, "192.0.2.2", "x@a.test").await;
        assert_eq!(check.result, SpfResult::Fail);
        assert_eq!(
            check.explanation.as_deref(),
            Some("192.0.2.2 is not unknown; ask x")
        );
    }

    #[tokio::test]
    async fn explanations_only_for_a_clean_single_record() {
        let zone = Zone::default()
            .txt("one.test", "v=spf1 -all exp=e.one.test")
            .txt("e.one.test", "Not from %{i}, %{l}")
            .txt("two.test", "v=spf1 -all exp=e.two.test")
            .txt("e.two.test", "a")
            .txt("e.two.test", "b")
            .txt("bad.test", "v=spf1 -all exp=e.bad.test")
            .txt("e.bad.test", "the %{x}-files")
            .txt("soft.test", "v=spf1 ~all exp=e.one.test");
        let check = mail_from(&zone, "192.0.2.1", "@one.test").await;
        assert_eq!(
            check.explanation.as_deref(),
            Some("Not from 192.0.2.1, postmaster")
        );
        for sender in ["x@two.test", "x@bad.test", "x@soft.test"] {
            let check = mail_from(&zone, "192.0.2.1", sender).await;
            assert_eq!(check.explanation, None, "{sender}");
        }
    }
}
