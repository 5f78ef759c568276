//! Alpine's installed-packages database.

use super::reader::{Raw, finish, optional_token, stanzas, token};
use super::{InputFormat, InstalledPackage, InventoryError};

/// Where Alpine keeps the database [`parse_apk_installed`] reads.
pub const APK_INSTALLED_PATH: &str = "/lib/apk/db/installed";

/// Reads Alpine's `/lib/apk/db/installed`: stanzas of `X:value` lines
/// separated by blank lines; `P:` name, `V:` version, `o:` origin (the
/// source package), `A:` architecture; other keys (files, checksums,
/// dependencies...) are ignored.
pub fn parse_apk_installed(text: &str) -> Result<Vec<InstalledPackage>, InventoryError> {
    const FORMAT: InputFormat = InputFormat::ApkInstalled;
    let mut raws = Vec::new();
    for stanza in stanzas(text) {
        let err = |line: usize, message: String| stanza.error(FORMAT, line, message);
        let mut name = None;
        let mut version = None;
        let mut origin = None;
        let mut arch = None;
        for &(line_no, line) in &stanza.lines {
            let bytes = line.as_bytes();
            if bytes.len() < 2 || !bytes[0].is_ascii_alphanumeric() || bytes[1] != b':' {
                return Err(err(line_no, format!("expected \"X:value\", got {line:?}")));
            }
            let slot = match bytes[0] {
                b'P' => &mut name,
                b'V' => &mut version,
                b'o' => &mut origin,
                b'A' => &mut arch,
                _ => continue,
            };
            if slot.is_some() {
                return Err(err(line_no, format!("duplicate {}: line", &line[..1])));
            }
            *slot = Some((line_no, &line[2..]));
        }
        let first = stanza.first_line();
        let Some((name_line, name)) = name else {
            return Err(err(first, "missing P: (package name)".into()));
        };
        let name = token(name).ok_or_else(|| err(name_line, format!("bad P: {name:?}")))?;
        let in_package = |message: String| format!("package {name:?}: {message}");
        let Some((version_line, version)) = version else {
            return Err(err(first, in_package("missing V: (version)".into())));
        };
        let version = token(version)
            .ok_or_else(|| err(version_line, in_package(format!("bad V: {version:?}"))))?;
        let origin = match origin {
            None => None,
            Some((line, value)) => optional_token(value)
                .ok_or_else(|| err(line, in_package(format!("bad o: {value:?}"))))?,
        };
        let arch = match arch {
            None => None,
            Some((line, value)) => optional_token(value)
                .ok_or_else(|| err(line, in_package(format!("bad A: {value:?}"))))?,
        };
        raws.push(Raw::new(
            name_line,
            name,
            version,
            origin,
            None,
            arch.unwrap_or(""),
        ));
    }
    finish(FORMAT, raws)
}
