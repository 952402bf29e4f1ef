//! API keys (`[[auth]] kind = "api_key"`): `keys_file` holds one `name:key`
//! a line (blank lines and `#` comments ignored). Only the keys' SHA-256
//! digests are kept in memory, found by their first 8 bytes and compared
//! in full in constant time, so neither a memory dump nor the time an
//! answer takes gives a key away (the lookup's timing depends only on the
//! digest of what the client sent), and a handshake costs the same with
//! ten keys or a million. The key's name is the identity.
//! The file is re-read on SIGHUP ([`ApiKeys::reload`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ring::digest::{SHA256, digest};

/// A key's name and the SHA-256 of the key.
type Entry = (String, [u8; 32]);

/// The keys of one `[[auth]]` block.
#[derive(Debug)]
pub struct ApiKeys {
    file: PathBuf,
    keys: ArcSwap<KeySet>,
}

/// The loaded keys, indexed by the first 8 bytes of their digest.
#[derive(Debug, Default)]
struct KeySet {
    entries: Vec<Entry>,
    index: HashMap<u64, Vec<usize>>,
}

impl KeySet {
    fn new(entries: Vec<Entry>) -> KeySet {
        let mut index: HashMap<u64, Vec<usize>> = HashMap::with_capacity(entries.len());
        for (i, (_, d)) in entries.iter().enumerate() {
            index.entry(prefix(d)).or_default().push(i);
        }
        KeySet { entries, index }
    }
}

fn prefix(d: &[u8; 32]) -> u64 {
    let mut p = [0u8; 8];
    p.copy_from_slice(&d[..8]);
    u64::from_le_bytes(p)
}

impl ApiKeys {
    /// Reads `file`.
    pub fn load(file: &Path) -> Result<ApiKeys, String> {
        Ok(ApiKeys {
            file: file.to_path_buf(),
            keys: ArcSwap::from_pointee(KeySet::new(read(file)?)),
        })
    }

    /// Re-reads the file; on error the keys stay as they were.
    pub fn reload(&self) -> Result<usize, String> {
        let keys = read(&self.file)?;
        let n = keys.len();
        self.keys.store(Arc::new(KeySet::new(keys)));
        Ok(n)
    }

    /// The name of the key `presented`, if it is one.
    pub fn identify(&self, presented: &str) -> Option<String> {
        let d = sha256(presented.as_bytes());
        let keys = self.keys.load();
        let mut found = None;
        for &i in keys.index.get(&prefix(&d)).into_iter().flatten() {
            let (name, hash) = &keys.entries[i];
            if ct_eq(hash, &d) {
                found = Some(name);
            }
        }
        found.cloned()
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.keys.load().entries.len()
    }

    /// No keys loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, b).as_ref());
    out
}

/// Equal, in a time that does not depend on where they differ (only on
/// the lengths).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn read(file: &Path) -> Result<Vec<Entry>, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("keys_file {}: {e}", file.display()))?;
    parse(&text).map_err(|(line, m)| format!("{}:{line}: {m}", file.display()))
}

/// Parses a keys file: `name:key` lines.
fn parse(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut keys: Vec<Entry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, key)) = line.split_once(':') else {
            return Err((i + 1, "expected name:key".into()));
        };
        let (name, key) = (name.trim(), key.trim());
        if name.is_empty() || name.bytes().any(|b| b < b' ' || b == 0x7f) {
            return Err((i + 1, "the name is empty or has control characters".into()));
        }
        if key.len() < 16 {
            return Err((
                i + 1,
                format!("the key for {name:?} is shorter than 16 characters"),
            ));
        }
        let hash = sha256(key.as_bytes());
        if keys.iter().any(|(n, h)| n == name || *h == hash) {
            return Err((
                i + 1,
                format!("{name:?}: the name or the key is listed twice"),
            ));
        }
        keys.push((name.to_string(), hash));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_holder() {
        let dir = std::env::temp_dir().join(format!("wsedge-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(
            &file,
            "# service keys\nbilling: 0123456789abcdef0123\n\nsearch:fedcba9876543210fedc\n",
        )
        .unwrap();
        let keys = ApiKeys::load(&file).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys.identify("0123456789abcdef0123").as_deref(),
            Some("billing")
        );
        assert_eq!(
            keys.identify("fedcba9876543210fedc").as_deref(),
            Some("search")
        );
        assert_eq!(keys.identify("0123456789abcdef0124"), None);
        assert_eq!(keys.identify(""), None);
        // Reload: a bad file changes nothing; a good one replaces the keys.
        std::fs::write(&file, "broken line\n").unwrap();
        assert!(keys.reload().unwrap_err().contains(":1:"));
        assert_eq!(
            keys.identify("0123456789abcdef0123").as_deref(),
            Some("billing")
        );
        std::fs::write(&file, "ops:ops-key-0000000000\n").unwrap();
        assert_eq!(keys.reload(), Ok(1));
        assert_eq!(keys.identify("0123456789abcdef0123"), None);
        assert_eq!(keys.identify("ops-key-0000000000").as_deref(), Some("ops"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_name_the_line() {
        assert_eq!(parse("a:short").unwrap_err().0, 1);
        assert_eq!(parse("\n:0123456789abcdef").unwrap_err().0, 2);
        let twice = "a:0123456789abcdef\nb:0123456789abcdef";
        assert!(parse(twice).unwrap_err().1.contains("twice"));
    }
}
