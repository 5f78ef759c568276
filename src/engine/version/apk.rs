//! Alpine package versions: apk-tools' token grammar and comparator.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::{Ecosystem, VersionError, invalid};

/// An Alpine package version:
/// `digits{.digits}[letter]{_suffix[digits]}[~hash][-rdigits]`.
///
/// Valid exactly when apk-tools' `apk_version_validate` accepts it; suffixes
/// are `alpha beta pre rc` (below the release) and `cvs svn git hg p` (above
/// it); `~hash` is lowercase hex. Ordering is apk-tools'
/// `apk_version_compare`, reimplemented token by token (see
/// [`apk_version_compare`]); it includes apk's quirks: a number component
/// with a leading zero (after the first) compares as a string
/// (`1.09 < 1.1`), and numbers wrap modulo 2^64 like apk's `uint64_t`.
#[derive(Debug, Clone)]
pub struct ApkVersion {
    raw: String,
}

impl ApkVersion {
    /// The string this version was parsed from.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl FromStr for ApkVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const F: Ecosystem = Ecosystem::Apk;
        if s.is_empty() {
            return Err(invalid(F, s, "version string is empty"));
        }
        let mut tokens = ApkTokens::new(s.as_bytes());
        while tokens.token.kind < TokenKind::End {
            tokens.advance();
        }
        if tokens.token.kind == TokenKind::End {
            return Ok(ApkVersion { raw: s.to_owned() });
        }
        let at = tokens.token.start;
        let near: String = s.get(at..).unwrap_or_default().chars().take(12).collect();
        Err(invalid(
            F,
            s,
            format!(
                "unexpected {near:?} at byte {at}: expected digits{{.digits}}[letter]{{_alpha|_beta|_pre|_rc|_cvs|_svn|_git|_hg|_p[N]}}[~hex][-rN]"
            ),
        ))
    }
}

impl Ord for ApkVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        apk_version_compare(&self.raw, &other.raw)
    }
}

impl PartialOrd for ApkVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ApkVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ApkVersion {}

impl fmt::Display for ApkVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// apk-tools' token kinds, in apk's numeric order: the order matters, since
/// apk decides "may this token follow that one" and "which version is longer"
/// by comparing kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TokenKind {
    InitialDigit,
    Digit,
    Letter,
    Suffix,
    SuffixNo,
    CommitHash,
    RevisionNo,
    End,
    Invalid,
}

/// apk's suffix values: pre-release suffixes sort below `NONE`, the others
/// above.
const SUFFIX_INVALID: u8 = 0;
const SUFFIX_NONE: u8 = 5;

fn apk_suffix_value(suffix: &[u8]) -> u8 {
    match suffix {
        b"alpha" => 1,
        b"beta" => 2,
        b"pre" => 3,
        b"rc" => 4,
        b"cvs" => 6,
        b"svn" => 7,
        b"git" => 8,
        b"hg" => 9,
        b"p" => 10,
        _ => SUFFIX_INVALID,
    }
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: TokenKind,
    suffix: u8,
    number: u64,
    value: &'a [u8],
    /// Byte offset where the token starts, for error messages.
    start: usize,
}

/// apk-tools' `token_first`/`token_next` over a byte string.
struct ApkTokens<'a> {
    input: &'a [u8],
    pos: usize,
    token: Token<'a>,
}

impl<'a> ApkTokens<'a> {
    fn new(input: &'a [u8]) -> Self {
        let mut tokens = ApkTokens {
            input,
            pos: 0,
            token: Token {
                kind: TokenKind::InitialDigit,
                suffix: SUFFIX_INVALID,
                number: 0,
                value: &[],
                start: 0,
            },
        };
        tokens.parse_digits();
        tokens
    }

    fn rest(&self) -> &'a [u8] {
        self.input.get(self.pos..).unwrap_or_default()
    }

    /// `apk_blob_pull_uint` (wrapping `uint64_t` arithmetic) plus the
    /// "no digits means invalid" rule of `token_parse_digits`.
    fn parse_digits(&mut self) {
        let rest = self.rest();
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let digits = &rest[..len];
        self.token.value = digits;
        self.token.number = digits.iter().fold(0u64, |n, d| {
            n.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
        });
        self.pos += len;
        if len == 0 {
            self.token.kind = TokenKind::Invalid;
        }
    }

    fn span(&mut self, accept: impl Fn(u8) -> bool) -> &'a [u8] {
        let rest = self.rest();
        let len = rest.iter().take_while(|b| accept(**b)).count();
        self.pos += len;
        &rest[..len]
    }

    /// `token_next`: classify by the first byte, check the token may follow
    /// the previous one, and consume it.
    fn advance(&mut self) {
        let prev = self.token.kind;
        self.token.start = self.pos;
        let Some(&first) = self.rest().first() else {
            self.token.kind = TokenKind::End;
            return;
        };
        match first {
            b'a'..=b'z' if prev <= TokenKind::Digit => {
                self.token.value = &self.rest()[..1];
                self.token.kind = TokenKind::Letter;
                self.pos += 1;
            }
            b'.' | b'0'..=b'9' if prev <= TokenKind::Digit || first != b'.' => {
                if first == b'.' {
                    self.pos += 1;
                }
                self.token.kind = match prev {
                    TokenKind::InitialDigit | TokenKind::Digit => TokenKind::Digit,
                    TokenKind::Suffix => TokenKind::SuffixNo,
                    _ => {
                        self.token.kind = TokenKind::Invalid;
                        return;
                    }
                };
                self.parse_digits();
            }
            b'_' if prev <= TokenKind::SuffixNo => {
                self.pos += 1;
                let suffix = self.span(|b| b.is_ascii_lowercase());
                self.token.value = suffix;
                self.token.suffix = apk_suffix_value(suffix);
                self.token.kind = if self.token.suffix == SUFFIX_INVALID {
                    TokenKind::Invalid
                } else {
                    TokenKind::Suffix
                };
            }
            b'~' if prev < TokenKind::CommitHash => {
                self.pos += 1;
                let hash = self.span(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                self.token.value = hash;
                self.token.kind = if hash.is_empty() {
                    TokenKind::Invalid
                } else {
                    TokenKind::CommitHash
                };
            }
            b'-' if prev < TokenKind::RevisionNo && self.rest().starts_with(b"-r") => {
                self.pos += 2;
                self.token.kind = TokenKind::RevisionNo;
                self.parse_digits();
            }
            _ => self.token.kind = TokenKind::Invalid,
        }
    }
}

/// apk's `token_cmp`, for two tokens of the same kind.
fn apk_token_cmp(a: &Token<'_>, b: &Token<'_>) -> Ordering {
    match a.kind {
        TokenKind::Digit if a.value.first() == Some(&b'0') || b.value.first() == Some(&b'0') => {
            // A leading zero makes both compare as strings (Gentoo's rule).
            a.value.cmp(b.value)
        }
        TokenKind::Digit
        | TokenKind::InitialDigit
        | TokenKind::SuffixNo
        | TokenKind::RevisionNo => a.number.cmp(&b.number),
        TokenKind::Letter => a.value.first().cmp(&b.value.first()),
        TokenKind::Suffix => a.suffix.cmp(&b.suffix),
        // apk_blob_sort: bytewise, then shorter first.
        TokenKind::CommitHash | TokenKind::End | TokenKind::Invalid => a.value.cmp(b.value),
    }
}

/// apk-tools' `apk_version_compare`, for any two strings, valid or not.
///
/// This is the raw algorithm, kept for fidelity (and tested against
/// apk-tools' own `test/version.data`, which includes invalid versions):
/// tokens are compared pairwise until they differ or either side ends or
/// turns invalid. If both then stop at the same kind of token the versions
/// are equal (so `1.0bc` equals `1.0bd`: both turn invalid at `c`/`d`);
/// otherwise a pre-release suffix (`_alpha`, `_beta`, `_pre`, `_rc`) sorts
/// low, and otherwise the version whose next token has the lower kind sorts
/// high (a further `.digits` beats a letter beats a suffix ... beats the
/// end). On invalid input the result is not a total order; [`ApkVersion`]
/// only admits valid versions, on which it is.
pub fn apk_version_compare(a: &str, b: &str) -> Ordering {
    let mut ta = ApkTokens::new(a.as_bytes());
    let mut tb = ApkTokens::new(b.as_bytes());
    while ta.token.kind == tb.token.kind && ta.token.kind < TokenKind::End {
        let r = apk_token_cmp(&ta.token, &tb.token);
        if r != Ordering::Equal {
            return r;
        }
        ta.advance();
        tb.advance();
    }
    let (ka, kb) = (ta.token.kind, tb.token.kind);
    if ka == kb {
        return Ordering::Equal;
    }
    if ka == TokenKind::Suffix && ta.token.suffix < SUFFIX_NONE {
        return Ordering::Less;
    }
    if kb == TokenKind::Suffix && tb.token.suffix < SUFFIX_NONE {
        return Ordering::Greater;
    }
    // A higher kind (e.g. End) means "less follows", which sorts lower.
    kb.cmp(&ka)
}

#[cfg(test)]
mod tests {
    use crate::engine::version::{Ecosystem, err, parse_version};

    #[test]
    fn apk_validity_matches_version_c() {
        for good in [
            "1",
            "1.0",
            "1.0a",
            "1.0_alpha",
            "1.0_alpha1_pre2",
            "1.0_p1-r3",
            "1.0~abc123-r0",
            "0.1",
            "1a_rc1~0f-r10",
            "18446744073709551616",
        ] {
            assert!(parse_version(Ecosystem::Apk, good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "a",
            ".1",
            "1.",
            "1..2",
            "1a.2",
            "1ab",
            "1_foo",
            "1_",
            "1-r",
            "1-r1-r2",
            "1-1",
            "1~",
            "1~ABC",
            "1~g",
            "1-r1_p1",
            "1.0_alpha.1",
            "1A",
            "1 ",
            "1\0",
        ] {
            assert!(parse_version(Ecosystem::Apk, bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            err(Ecosystem::Apk, "1.0bc"),
            "invalid apk version \"1.0bc\": unexpected \"c\" at byte 4: expected digits{.digits}[letter]{_alpha|_beta|_pre|_rc|_cvs|_svn|_git|_hg|_p[N]}[~hex][-rN]"
        );
    }
}
