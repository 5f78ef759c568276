//! Package names, architectures and versions checked against each package
//! family's own grammar, before any of them can reach a remediation Job.
//!
//! Package names end up as arguments of `apt-get` and `dnf` run as root, and
//! both read more than names: apt takes `pkg-` as "remove pkg", `pkg+` as
//! "install", `pkg=1.0` and `pkg/bookworm` as version and release
//! selectors, and a name with `.?*[^$|` as a pattern when no package has
//! exactly that name; dnf reads `@group`, `name-version` forms, globs and
//! `/paths`. So names are held to the grammar the package tools themselves
//! enforce when packages are built:
//!
//! - **dpkg**: Debian Policy §5.6.1 (and dpkg's `pkg_name_is_illegal`):
//!   lowercase letters, digits, `+ - .`, at least two characters, starting
//!   with a letter or digit. Patchloop is stricter in one place: a name may
//!   not *end* in `-` (grammatical, but no archive package does, and apt
//!   reads it as "remove"). A trailing `+` stays valid (`g++`): the
//!   reference scripts pass names to apt as `name:arch` of an installed
//!   package, a form apt cannot read as an action (examples/jobs/README.md).
//! - **rpm**: rpmbuild's `Name:` check (letters, digits, `. _ + -`, first a
//!   letter, digit or `_`) without the macro characters `% { }` no built
//!   package keeps; not ending in `-` or `.` (rpm splits name-version there).
//! - **apk**: abuild's `pkgname` rules: letters, digits, `. _ + -`, first a
//!   letter or digit, not ending in `-`.
//! - **architectures** (the `:arch` qualifier of multi-arch duplicates):
//!   dpkg's architecture names (`amd64`, `hurd-i386`), rpm's and apk's
//!   (`x86_64`, `i686`, `noarch`).
//! - **versions**: Debian Policy §5.6.12 / dpkg's `parseversion`
//!   (`[epoch:]upstream[-revision]`, upstream starting with a digit), rpm's
//!   `[epoch:]version[-release]` with `. _ + ~ ^`, apk's version grammar;
//!   each is also parsed by [`crate::engine::version`] so what passes here
//!   can be compared there.
//!
//! A [`Rejection`] says what rule the value breaks, naming at most one
//! offending character and its position: never the value itself, which came
//! from a user and may be huge, contain control characters or be an action
//! word that must not be copied into a status or an Event.

use std::fmt;

use crate::engine::version::{Ecosystem, parse_version};

/// The longest package or source name accepted (dpkg and rpm have no limit;
/// real names stay under 100 characters).
pub const MAX_NAME_LEN: usize = 200;

/// The longest version accepted.
pub const MAX_VERSION_LEN: usize = 200;

/// The longest architecture qualifier accepted.
const MAX_ARCH_LEN: usize = 32;

/// Why a name, architecture or version was refused, in words that name the
/// rule and at most one character (escaped), never the whole value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(String);

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Rejection(reason.into())
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A character as an error message may show it: printable ASCII in quotes,
/// anything else as its code point.
pub fn describe_char(c: char) -> String {
    if c.is_ascii_graphic() && c != '\'' && c != '\\' {
        format!("'{c}'")
    } else {
        format!("U+{:04X}", u32::from(c))
    }
}

/// The grammar a family's package names follow, as messages show it.
pub fn name_grammar(family: Ecosystem) -> &'static str {
    match family {
        Ecosystem::Dpkg => {
            "a dpkg name is 2 or more of a-z 0-9 + - . starting with a letter or digit, not ending in '-'"
        }
        Ecosystem::Rpm => {
            "an rpm name is A-Z a-z 0-9 . _ + - starting with a letter, digit or '_', not ending in '-' or '.'"
        }
        Ecosystem::Apk => {
            "an apk name is A-Z a-z 0-9 . _ + - starting with a letter or digit, not ending in '-'"
        }
    }
}

/// The grammar a family's versions follow, as messages show it.
pub fn version_grammar(family: Ecosystem) -> &'static str {
    match family {
        Ecosystem::Dpkg => {
            "a dpkg version is [epoch:]upstream[-revision]: epoch digits, upstream a digit then A-Z a-z 0-9 . + ~ - :, revision A-Z a-z 0-9 . + ~"
        }
        Ecosystem::Rpm => {
            "an rpm version is [epoch:]version[-release]: epoch digits, version and release A-Z a-z 0-9 . _ + ~ ^"
        }
        Ecosystem::Apk => {
            "an apk version is digits{.digits}[letter]{_alpha|_beta|_pre|_rc|_cvs|_svn|_git|_hg|_p[N]}[~hex][-rN]"
        }
    }
}

/// Which characters a position of a name may hold.
type CharRule = fn(char) -> bool;

/// Checks a package or source name (no `:arch` qualifier) against the
/// family's grammar.
pub fn check_name(family: Ecosystem, name: &str) -> Result<(), Rejection> {
    let refuse = |reason: String| {
        Err(Rejection::new(format!(
            "{reason}; {}",
            name_grammar(family)
        )))
    };
    if name.is_empty() {
        return refuse("is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return refuse(format!(
            "is {} bytes, longer than the {MAX_NAME_LEN}-byte limit",
            name.len()
        ));
    }
    let (allowed_first, allowed): (CharRule, CharRule) = match family {
        Ecosystem::Dpkg => (
            |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c),
        ),
        Ecosystem::Rpm => (
            |c| c.is_ascii_alphanumeric() || c == '_',
            |c| c.is_ascii_alphanumeric() || "._+-".contains(c),
        ),
        Ecosystem::Apk => (
            |c| c.is_ascii_alphanumeric(),
            |c| c.is_ascii_alphanumeric() || "._+-".contains(c),
        ),
    };
    for (i, c) in name.chars().enumerate() {
        if !allowed(c) {
            return refuse(format!(
                "character {} ({}) is not allowed",
                i + 1,
                describe_char(c)
            ));
        }
    }
    let first = name.chars().next().unwrap_or_default();
    if !allowed_first(first) {
        return refuse(format!("starts with {}", describe_char(first)));
    }
    if family == Ecosystem::Dpkg && name.len() < 2 {
        return refuse("has 1 character".into());
    }
    if name.ends_with('-') {
        return refuse("ends in '-' (apt reads a trailing '-' as \"remove this package\")".into());
    }
    if family == Ecosystem::Rpm && name.ends_with('.') {
        return refuse("ends in '.'".into());
    }
    Ok(())
}

/// Checks an architecture name (the part after `:` of a multi-arch
/// qualified package name).
pub fn check_arch(family: Ecosystem, arch: &str) -> Result<(), Rejection> {
    const DPKG: &str =
        "a dpkg architecture is a-z 0-9 - starting and ending with a letter or digit";
    const OTHER: &str = "an architecture is A-Z a-z 0-9 _";
    let grammar = if family == Ecosystem::Dpkg {
        DPKG
    } else {
        OTHER
    };
    let refuse = |reason: String| Err(Rejection::new(format!("{reason}; {grammar}")));
    if arch.is_empty() {
        return refuse("architecture is empty".into());
    }
    if arch.len() > MAX_ARCH_LEN {
        return refuse(format!("architecture is longer than {MAX_ARCH_LEN} bytes"));
    }
    let allowed = |c: char| match family {
        Ecosystem::Dpkg => c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        Ecosystem::Rpm | Ecosystem::Apk => c.is_ascii_alphanumeric() || c == '_',
    };
    if let Some((i, c)) = arch.chars().enumerate().find(|&(_, c)| !allowed(c)) {
        return refuse(format!(
            "architecture character {} ({}) is not allowed",
            i + 1,
            describe_char(c)
        ));
    }
    if arch.starts_with('-') || arch.ends_with('-') {
        return refuse("architecture starts or ends with '-'".into());
    }
    Ok(())
}

/// Checks a binary package name as an inventory lists it: a name, or
/// `name:arch` for a package installed for several architectures.
pub fn check_qualified_name(family: Ecosystem, name: &str) -> Result<(), Rejection> {
    match name.split_once(':') {
        None => check_name(family, name),
        Some((base, arch)) => {
            check_name(family, base)?;
            check_arch(family, arch)
        }
    }
}

/// Checks a version against the family's grammar (and that
/// [`crate::engine::version`] can order it).
pub fn check_version(family: Ecosystem, version: &str) -> Result<(), Rejection> {
    let refuse = |reason: String| {
        Err(Rejection::new(format!(
            "{reason}; {}",
            version_grammar(family)
        )))
    };
    if version.is_empty() {
        return refuse("is empty".into());
    }
    if version.len() > MAX_VERSION_LEN {
        return refuse(format!(
            "is {} bytes, longer than the {MAX_VERSION_LEN}-byte limit",
            version.len()
        ));
    }
    let allowed = |c: char| match family {
        Ecosystem::Dpkg => c.is_ascii_alphanumeric() || ".+~-:".contains(c),
        Ecosystem::Rpm => c.is_ascii_alphanumeric() || "._+~^-:".contains(c),
        Ecosystem::Apk => c.is_ascii_alphanumeric() || "._~-".contains(c),
    };
    if let Some((i, c)) = version.chars().enumerate().find(|&(_, c)| !allowed(c)) {
        return refuse(format!(
            "character {} ({}) is not allowed",
            i + 1,
            describe_char(c)
        ));
    }
    if family == Ecosystem::Dpkg {
        let upstream = version.split_once(':').map_or(version, |(_, rest)| rest);
        if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
            return refuse("the upstream version does not start with a digit".into());
        }
    }
    if parse_version(family, version).is_err() {
        return refuse("does not parse".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn real_names_pass() {
        for name in [
            "libc6",
            "g++",
            "libstdc++6",
            "openssh-server",
            "python3.11",
            "0ad",
            "libsigc++-2.0-0v5",
        ] {
            assert_eq!(check_name(Ecosystem::Dpkg, name), Ok(()), "{name}");
        }
        for name in [
            "openssl-libs",
            "perl-Errno",
            "xorg-x11-server-Xwayland",
            "python3.11",
            "_private",
            "libstdc++",
        ] {
            assert_eq!(check_name(Ecosystem::Rpm, name), Ok(()), "{name}");
        }
        for name in ["musl", "libcrypto3", "py3-pip", "so:libc.musl-x86_64.so.1"] {
            let got = check_name(Ecosystem::Apk, name);
            // `so:` provides are not package names.
            assert_eq!(got.is_ok(), !name.contains(':'), "{name}");
        }
        for name in ["libc6:amd64", "libc6:i386", "foo:hurd-i386"] {
            assert_eq!(check_qualified_name(Ecosystem::Dpkg, name), Ok(()));
        }
        for name in ["glibc:x86_64", "glibc:i686"] {
            assert_eq!(check_qualified_name(Ecosystem::Rpm, name), Ok(()));
        }
    }

    #[test]
    fn action_words_and_selectors_are_refused() {
        let dpkg = [
            ("openssh-server-", "ends in '-'"),
            ("pkg=1.0", "character 4 ('=')"),
            ("pkg/bookworm", "character 4 ('/')"),
            ("-pkg", "starts with '-'"),
            ("--purge", "starts with '-'"),
            ("pkg*", "character 4 ('*')"),
            ("?garbage", "character 1 ('?')"),
            ("~nfoo", "character 1 ('~')"),
            ("Libc6", "character 1 ('L')"),
            ("a", "has 1 character"),
            ("", "is empty"),
            ("lib c6", "character 4 (U+0020)"),
            ("libc6\nreboot", "character 6 (U+000A)"),
            ("$(reboot)", "character 1 ('$')"),
            ("`id`", "character 1 ('`')"),
            ("it's", "character 3 (U+0027)"),
        ];
        for (name, want) in dpkg {
            let err = check_name(Ecosystem::Dpkg, name).expect_err(name);
            assert!(err.to_string().contains(want), "{name:?}: {err}");
            assert!(
                name.len() < 4 || !err.to_string().contains(name),
                "{name:?} echoed in {err}"
            );
        }
        let qualified = [
            ("pkg:amd64-", "starts or ends with '-'"),
            ("pkg:amd64+", "('+')"),
            ("pkg:", "architecture is empty"),
            ("pkg-:amd64", "ends in '-'"),
        ];
        for (name, want) in qualified {
            let err = check_qualified_name(Ecosystem::Dpkg, name).expect_err(name);
            assert!(err.to_string().contains(want), "{name:?}: {err}");
        }
        for name in [
            "@core",
            "pkg@repo",
            "glibc*",
            "/usr/bin/ssh",
            "openssl(x86-64)",
            "pkg-",
            "pkg.",
            "-y",
            "pkg>=1",
        ] {
            assert!(check_name(Ecosystem::Rpm, name).is_err(), "{name}");
        }
        assert!(check_qualified_name(Ecosystem::Rpm, "glibc:x86-64").is_err());
        for name in ["musl-", "-musl", "so:libc", "musl=1.2"] {
            assert!(check_name(Ecosystem::Apk, name).is_err(), "{name}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let err = check_name(Ecosystem::Dpkg, &long).expect_err("long");
        assert!(
            err.to_string()
                .contains("201 bytes, longer than the 200-byte limit")
        );
    }

    #[test]
    fn versions() {
        for (family, ok) in [
            (Ecosystem::Dpkg, "1:2.38.1-5+deb12u3"),
            (Ecosystem::Dpkg, "2.36-9+deb12u10"),
            (Ecosystem::Dpkg, "5.2.15-2+b8"),
            (Ecosystem::Dpkg, "2024a-0+deb12u1"),
            (Ecosystem::Rpm, "1:3.0.7-27.el9"),
            (Ecosystem::Rpm, "2.34-100.el9_4.2"),
            (Ecosystem::Rpm, "1.0^20200101git-1"),
            (Ecosystem::Rpm, "2024a"),
            (Ecosystem::Apk, "1.2.4-r2"),
            (Ecosystem::Apk, "1.0_git20200101~abc1-r0"),
        ] {
            assert_eq!(check_version(family, ok), Ok(()), "{family} {ok}");
        }
        for (family, bad, want) in [
            (Ecosystem::Dpkg, "1.0;reboot", "character 4 (';')"),
            (Ecosystem::Dpkg, "1.0-", "does not parse"),
            (Ecosystem::Dpkg, "abc", "does not start with a digit"),
            (Ecosystem::Dpkg, "1:", "does not start with a digit"),
            (Ecosystem::Dpkg, "1.0 2", "character 4 (U+0020)"),
            (Ecosystem::Dpkg, "$(id)", "character 1 ('$')"),
            (Ecosystem::Rpm, "1.0-1-", "does not parse"),
            (Ecosystem::Rpm, "x:1-1", "does not parse"),
            (Ecosystem::Rpm, "1.0*", "character 4 ('*')"),
            (Ecosystem::Apk, "1.2.4-r2;id", "character 9 (';')"),
            (Ecosystem::Apk, "1.2.4-x", "does not parse"),
            (Ecosystem::Dpkg, "", "is empty"),
        ] {
            let err = check_version(family, bad).expect_err(bad);
            assert!(err.to_string().contains(want), "{family} {bad:?}: {err}");
        }
    }

    proptest! {
        /// What passes is safe as a shell word and as an apt/dnf argument:
        /// no shell metacharacter, no leading '-', no trailing '-'.
        #[test]
        fn accepted_names_are_plain_words(name in "\\PC{0,12}") {
            for family in Ecosystem::ALL {
                if check_qualified_name(family, &name).is_ok() {
                    prop_assert!(!name.starts_with('-') && !name.ends_with('-'));
                    prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "+-._:".contains(c)));
                }
            }
        }

        #[test]
        fn accepted_versions_parse(version in "[0-9a-z.:~^_+-]{0,12}") {
            for family in Ecosystem::ALL {
                if check_version(family, &version).is_ok() {
                    prop_assert!(parse_version(family, &version).is_ok());
                }
            }
        }
    }
}
