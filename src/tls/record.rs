//! The TLS record layer once the handshake is over, in place over the
//! caller's buffers.
//!
//! rustls runs the handshake; its traffic secrets are then taken out
//! (`dangerous_into_kernel_connection`, the API kTLS uses) and records are
//! sealed and opened here with `ring`'s AEADs, the same primitives rustls's
//! ring provider uses. Opening decrypts in the buffer the ciphertext was
//! read into; sealing writes header, ciphertext and tag into the buffer the
//! caller gives. Nothing is allocated per record and no state is kept
//! between records but the keys and sequence numbers.
//!
//! Only the AEAD suites exist (rustls offers no other): AES-128-GCM,
//! AES-256-GCM and ChaCha20-Poly1305, with the nonce and additional-data
//! rules of TLS 1.3 (RFC 8446 §5.2-5.3) and TLS 1.2 (RFC 5288, RFC 7905).

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use zeroize::Zeroize;

/// A record header: type, legacy version, length.
pub const HEADER: usize = 5;
/// The largest plaintext a record carries (2^14).
pub const MAX_PLAIN: usize = 1 << 14;
/// The largest ciphertext fragment accepted (RFC 8446 §5.2: 2^14 + 256).
pub const MAX_CIPHER: usize = MAX_PLAIN + 256;
/// The largest record accepted, header included: a read buffer must hold
/// one whole.
pub const MAX_RECORD: usize = HEADER + MAX_CIPHER;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's per-record explicit nonce.
const EXPLICIT: usize = 8;
/// The most a sealed record adds to its plaintext.
pub const MAX_OVERHEAD: usize = HEADER + EXPLICIT + 1 + TAG;

/// Record content types.
pub mod content {
    /// change_cipher_spec
    pub const CCS: u8 = 20;
    /// alert
    pub const ALERT: u8 = 21;
    /// handshake
    pub const HANDSHAKE: u8 = 22;
    /// application_data
    pub const APP_DATA: u8 = 23;
}

/// The protocol version a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.2
    Tls12,
    /// TLS 1.3
    Tls13,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::Tls12 => "TLSv1.2",
            Version::Tls13 => "TLSv1.3",
        })
    }
}

/// Why a record could not be opened: each ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// A length over [`MAX_CIPHER`] (record_overflow).
    Overflow,
    /// Authentication failed: tampered, truncated or under another key
    /// (bad_record_mac).
    BadMac,
    /// A record of a type not allowed here, or an empty TLS 1.3 inner
    /// plaintext (unexpected_message).
    Unexpected,
    /// A sequence number ran out (2^64 records).
    Exhausted,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordError::Overflow => "record longer than 2^14+256 bytes",
            RecordError::BadMac => "record failed authentication (bad_record_mac)",
            RecordError::Unexpected => "unexpected record type",
            RecordError::Exhausted => "record sequence number exhausted",
        })
    }
}

impl std::error::Error for RecordError {}

/// The AEAD a direction uses.
#[derive(Clone, Copy)]
enum Alg {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Alg {
    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Alg::Aes128Gcm => &aead::AES_128_GCM,
            Alg::Aes256Gcm => &aead::AES_256_GCM,
            Alg::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// One direction's key, IV and sequence number.
///
/// The key is kept as its raw bytes and expanded (AES key schedule, GHASH
/// table) for each record, on the stack: an expanded `ring` key is about
/// 540 bytes, and holding one per direction was a third of an idle TLS
/// connection's memory. Expanding costs a fraction of sealing even a
/// 64-byte record (`benches/tls_record.rs`, figures in
/// `docs/benchmarks.md`).
struct Dir {
    alg: Alg,
    key: [u8; 32],
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Drop for Dir {
    fn drop(&mut self) {
        // Leave no key bytes behind in freed memory.
        self.key.zeroize();
    }
}

impl Dir {
    fn new(secrets: ConnectionTrafficSecrets, seq: u64) -> Option<(Dir, bool)> {
        let (alg, key, iv, gcm) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Alg::Aes128Gcm, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Alg::Aes256Gcm, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Alg::Chacha20Poly1305, key, iv, false)
            }
            _ => return None,
        };
        let key = key.as_ref();
        if key.len() != alg.ring().key_len() {
            return None;
        }
        let mut raw = [0u8; 32];
        raw[..key.len()].copy_from_slice(key);
        let iv: [u8; aead::NONCE_LEN] = iv.as_ref().try_into().ok()?;
        Some((
            Dir {
                alg,
                key: raw,
                iv,
                seq,
            },
            gcm,
        ))
    }

    /// The expanded key, for one record.
    #[inline]
    fn key(&self) -> Result<LessSafeKey, RecordError> {
        let alg = self.alg.ring();
        UnboundKey::new(alg, &self.key[..alg.key_len()])
            .map(LessSafeKey::new)
            // The length was checked in `new`: this cannot fail.
            .map_err(|_| RecordError::BadMac)
    }

    /// `iv` XOR the sequence number (TLS 1.3, and TLS 1.2's ChaCha20 and,
    /// for sealing, AES-GCM's explicit nonce).
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn next(&mut self) -> Result<(), RecordError> {
        self.seq = self.seq.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(())
    }
}

/// TLS 1.2's additional data: sequence number, then the record's type and
/// version as they are on the wire (so a changed header fails to open),
/// then the plaintext length (RFC 5246 §6.2.3.3).
fn tls12_aad(seq: u64, typ: u8, version: [u8; 2], len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9] = version[0];
    a[10] = version[1];
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

/// An opened record: its plaintext is `buf[start..start + len]`; the
/// record took `used` bytes of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Content type (the inner one under TLS 1.3).
    pub typ: u8,
    /// Where its plaintext starts in the buffer.
    pub start: usize,
    /// Plaintext length.
    pub len: usize,
    /// Bytes the record took, header included.
    pub used: usize,
}

/// Both directions of a connection's record protection.
pub struct Records {
    version: Version,
    /// TLS 1.2 AES-GCM: an explicit nonce in each record.
    explicit: bool,
    tx: Dir,
    rx: Dir,
}

impl fmt::Debug for Records {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Records")
            .field("version", &self.version)
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .finish_non_exhaustive()
    }
}

impl Records {
    /// Record protection from the secrets rustls hands over after the
    /// handshake; `None` for a suite this layer does not implement (none
    /// of rustls's).
    pub fn new(
        version: Version,
        tx: (u64, ConnectionTrafficSecrets),
        rx: (u64, ConnectionTrafficSecrets),
    ) -> Option<Records> {
        let (tx, gcm) = Dir::new(tx.1, tx.0)?;
        let (rx, _) = Dir::new(rx.1, rx.0)?;
        Some(Records {
            version,
            explicit: version == Version::Tls12 && gcm,
            tx,
            rx,
        })
    }

    /// The negotiated version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Records sealed with the current sending key.
    pub fn tx_seq(&self) -> u64 {
        self.tx.seq
    }

    /// Replaces the sending key (TLS 1.3 key update).
    pub fn set_tx(&mut self, secrets: (u64, ConnectionTrafficSecrets)) -> bool {
        match Dir::new(secrets.1, secrets.0) {
            Some((d, _)) => {
                self.tx = d;
                true
            }
            None => false,
        }
    }

    /// Replaces the receiving key (TLS 1.3 key update).
    pub fn set_rx(&mut self, secrets: (u64, ConnectionTrafficSecrets)) -> bool {
        match Dir::new(secrets.1, secrets.0) {
            Some((d, _)) => {
                self.rx = d;
                true
            }
            None => false,
        }
    }

    /// What a record adds to `len` bytes of plaintext.
    pub fn overhead(&self) -> usize {
        match (self.version, self.explicit) {
            (Version::Tls13, _) => HEADER + 1 + TAG,
            (Version::Tls12, true) => HEADER + EXPLICIT + TAG,
            (Version::Tls12, false) => HEADER + TAG,
        }
    }

    /// Seals `plain` (at most [`MAX_PLAIN`] bytes) as one record of type
    /// `typ` at the start of `out`, which must hold
    /// `plain.len() + overhead()` bytes; returns the record's length.
    pub fn seal(&mut self, typ: u8, plain: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        debug_assert!(plain.len() <= MAX_PLAIN);
        let total = plain.len() + self.overhead();
        let out = &mut out[..total];
        let body = total - HEADER;
        let nonce = self.tx.nonce();
        match self.version {
            Version::Tls13 => {
                out[..HEADER].copy_from_slice(&[
                    content::APP_DATA,
                    3,
                    3,
                    (body >> 8) as u8,
                    body as u8,
                ]);
                let (head, rest) = out.split_at_mut(HEADER);
                let p = plain.len();
                rest[..p].copy_from_slice(plain);
                rest[p] = typ;
                let (inner, tag) = rest.split_at_mut(p + 1);
                let t = self
                    .tx
                    .key()?
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&*head),
                        inner,
                    )
                    .map_err(|_| RecordError::Exhausted)?;
                tag.copy_from_slice(t.as_ref());
            }
            Version::Tls12 => {
                out[..HEADER].copy_from_slice(&[typ, 3, 3, (body >> 8) as u8, body as u8]);
                let mut at = HEADER;
                if self.explicit {
                    out[at..at + EXPLICIT].copy_from_slice(&nonce[4..]);
                    at += EXPLICIT;
                }
                let p = plain.len();
                out[at..at + p].copy_from_slice(plain);
                let (inner, tag) = out[at..].split_at_mut(p);
                let aad = tls12_aad(self.tx.seq, typ, [3, 3], p);
                let t = self
                    .tx
                    .key()?
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        inner,
                    )
                    .map_err(|_| RecordError::Exhausted)?;
                tag.copy_from_slice(t.as_ref());
            }
        }
        self.tx.next()?;
        Ok(total)
    }

    /// Opens the record at the start of `buf` in place: `Ok(None)` while
    /// `buf` holds less than a whole record (nothing is changed then).
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        let Some(h) = buf.get(..HEADER) else {
            return Ok(None);
        };
        let outer = h[0];
        let wire_version = [h[1], h[2]];
        let len = u16::from_be_bytes([h[3], h[4]]) as usize;
        if len > MAX_CIPHER {
            return Err(RecordError::Overflow);
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        let used = HEADER + len;
        let (head, rest) = buf[..used].split_at_mut(HEADER);
        match self.version {
            Version::Tls13 => {
                if outer != content::APP_DATA {
                    return Err(RecordError::Unexpected);
                }
                if len < TAG + 1 {
                    return Err(RecordError::BadMac);
                }
                let plain = self
                    .rx
                    .key()?
                    .open_in_place(
                        Nonce::assume_unique_for_key(self.rx.nonce()),
                        Aad::from(&*head),
                        rest,
                    )
                    .map_err(|_| RecordError::BadMac)?;
                // The inner type is the last byte that is not padding.
                let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::Unexpected);
                };
                let typ = plain[end];
                self.rx.next()?;
                Ok(Some(Opened {
                    typ,
                    start: HEADER,
                    len: end,
                    used,
                }))
            }
            Version::Tls12 => {
                if !matches!(
                    outer,
                    content::APP_DATA | content::ALERT | content::HANDSHAKE
                ) {
                    return Err(RecordError::Unexpected);
                }
                let skip = if self.explicit { EXPLICIT } else { 0 };
                if len < skip + TAG {
                    return Err(RecordError::BadMac);
                }
                let nonce = if self.explicit {
                    let mut n = self.rx.iv;
                    n[4..].copy_from_slice(&rest[..EXPLICIT]);
                    n
                } else {
                    self.rx.nonce()
                };
                let aad = tls12_aad(self.rx.seq, outer, wire_version, len - skip - TAG);
                let plain = self
                    .rx
                    .key()?
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut rest[skip..],
                    )
                    .map_err(|_| RecordError::BadMac)?;
                let plen = plain.len();
                self.rx.next()?;
                Ok(Some(Opened {
                    typ: outer,
                    start: HEADER + skip,
                    len: plen,
                    used,
                }))
            }
        }
    }
}
