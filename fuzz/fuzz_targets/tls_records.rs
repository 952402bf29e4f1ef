//! The TLS record layer (`wsedge::tls::record`): records sealed by one side
//! open on the other, whole or cut anywhere, in TLS 1.2 and 1.3, with
//! AES-256-GCM and ChaCha20-Poly1305; a flipped byte is an error, never a
//! panic or wrong plaintext; and arbitrary bytes fed as records are refused
//! without panicking.
//!
//! Input: `[mode] [flip] [payload...]`: `mode` picks the version and suite
//! and whether the payload is plaintext to seal or raw wire bytes; `flip`
//! (when nonzero) names a byte of the wire to corrupt.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::ConnectionTrafficSecrets;
use wsedge::tls::record::{MAX_PLAIN, Records, Version};

fn secrets(chacha: bool, seed: u8) -> ConnectionTrafficSecrets {
    let key = rustls::crypto::cipher::AeadKey::from([seed; 32]);
    let iv = rustls::crypto::cipher::Iv::from([seed ^ 0x5a; 12]);
    if chacha {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    } else {
        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
    }
}

/// Two ends of one connection: `a` seals what `b` opens.
fn ends(version: Version, chacha: bool) -> (Records, Records) {
    let a = Records::new(version, (0, secrets(chacha, 1)), (0, secrets(chacha, 2))).unwrap();
    let b = Records::new(version, (0, secrets(chacha, 2)), (0, secrets(chacha, 1))).unwrap();
    (a, b)
}

fuzz_target!(|data: &[u8]| {
    let [mode, flip, payload @ ..] = data else { return };
    let version = if mode & 1 == 0 { Version::Tls13 } else { Version::Tls12 };
    let chacha = mode & 2 != 0;
    let (mut a, mut b) = ends(version, chacha);

    if mode & 4 != 0 {
        // Raw bytes as records: refused (or "need more"), never a panic.
        let mut buf = payload.to_vec();
        let mut at = 0;
        while let Ok(Some(r)) = b.open(&mut buf[at..]) {
            assert!(r.start + r.len <= r.used);
            at += r.used;
        }
        return;
    }

    // Seal the payload as records of up to 16 KiB (the step from `mode`).
    let step = 1 + (usize::from(mode >> 3) * 997) % MAX_PLAIN;
    let mut wire = Vec::new();
    for chunk in payload.chunks(step) {
        let at = wire.len();
        wire.resize(at + chunk.len() + a.overhead(), 0);
        let n = a.seal(23, chunk, &mut wire[at..]).unwrap();
        assert_eq!(n, chunk.len() + a.overhead());
    }
    let corrupt = *flip != 0 && !wire.is_empty();
    if corrupt {
        let i = usize::from(*flip) * 7 % wire.len();
        wire[i] ^= 0x80;
    }
    // Open them all; the plaintext must come back exactly, or (corrupted)
    // an error must stop it.
    let mut got = Vec::new();
    let mut at = 0;
    let mut failed = false;
    loop {
        match b.open(&mut wire[at..]) {
            Ok(Some(r)) => {
                got.extend_from_slice(&wire[at + r.start..at + r.start + r.len]);
                at += r.used;
            }
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if corrupt {
        assert!(failed || at < wire.len(), "a corrupted record was accepted");
        assert!(payload.starts_with(&got), "wrong plaintext from a corrupted wire");
    } else {
        assert!(!failed);
        assert_eq!(at, wire.len());
        assert_eq!(got, payload);
    }
});
