//! The TLS record layer: sealing one record and opening it on the other
//! side, TLS 1.3, AES-256-GCM and ChaCha20-Poly1305, at 64 B, 1 KiB and
//! 16 KiB of plaintext.
//!
//! `cargo bench --bench tls_record`. wsedge's `Records` keeps each
//! direction's key as raw bytes and expands it for every record (so an idle
//! connection holds ~100 bytes of keys instead of ~1 KiB of key schedules);
//! the peer, "held-key", is the same seal and open over a `ring` key
//! expanded once and kept, which is what `Records` did before. The `RATIO`
//! line is held-key's time over ours: below 1 is what re-expanding costs.

mod support;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use rustls::crypto::cipher::{AeadKey, Iv};
use wsedge::tls::record::{Records, Version, content};

const KEY_A: [u8; 32] = [1; 32];
const KEY_B: [u8; 32] = [2; 32];
const IV: [u8; 12] = [0x5a; 12];

fn secrets(chacha: bool, key: [u8; 32]) -> ConnectionTrafficSecrets {
    let (key, iv) = (AeadKey::from(key), Iv::from(IV));
    if chacha {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    } else {
        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
    }
}

/// The previous design: one direction's key expanded once and held.
struct Held {
    key: LessSafeKey,
    seq: u64,
}

impl Held {
    fn new(chacha: bool, key: [u8; 32]) -> Held {
        let alg = if chacha {
            &aead::CHACHA20_POLY1305
        } else {
            &aead::AES_256_GCM
        };
        Held {
            key: LessSafeKey::new(UnboundKey::new(alg, &key).unwrap()),
            seq: 0,
        }
    }

    fn nonce(&self) -> Nonce {
        let mut n = IV;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// TLS 1.3 sealing, as `Records::seal` does it.
    fn seal(&mut self, plain: &[u8], out: &mut [u8]) -> usize {
        let p = plain.len();
        let total = 5 + p + 1 + 16;
        let body = total - 5;
        out[..5].copy_from_slice(&[23, 3, 3, (body >> 8) as u8, body as u8]);
        let (head, rest) = out[..total].split_at_mut(5);
        rest[..p].copy_from_slice(plain);
        rest[p] = content::APP_DATA;
        let (inner, tag) = rest.split_at_mut(p + 1);
        let nonce = self.nonce();
        let t = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*head), inner)
            .unwrap();
        tag.copy_from_slice(t.as_ref());
        self.seq += 1;
        total
    }

    fn open(&mut self, buf: &mut [u8]) -> usize {
        let (head, rest) = buf.split_at_mut(5);
        let nonce = self.nonce();
        let n = self
            .key
            .open_in_place(nonce, Aad::from(&*head), rest)
            .unwrap()
            .len();
        self.seq += 1;
        n
    }
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("tls_record");
    for (chacha, suite) in [(false, "aes256gcm"), (true, "chacha20")] {
        for (len, label) in [(64, "64B"), (1024, "1KiB"), (16 * 1024, "16KiB")] {
            let plain = vec![0x42u8; len];
            let mut wire = vec![0u8; len + 64];
            g.throughput(Throughput::Bytes(len as u64));

            let mut tx = Records::new(
                Version::Tls13,
                (0, secrets(chacha, KEY_A)),
                (0, secrets(chacha, KEY_B)),
            )
            .unwrap();
            let mut rx = Records::new(
                Version::Tls13,
                (0, secrets(chacha, KEY_B)),
                (0, secrets(chacha, KEY_A)),
            )
            .unwrap();
            // Both designs produce the same bytes. (Both are then timed over
            // the same buffers: a copy's speed depends on where its source
            // and destination lie relative to each other.)
            let mut check = Held::new(chacha, KEY_A);
            let mut w2 = wire.clone();
            let n = tx.seal(content::APP_DATA, &plain, &mut wire).unwrap();
            assert_eq!(check.seal(&plain, &mut w2), n);
            assert_eq!(wire[..n], w2[..n]);
            assert_eq!(rx.open(&mut wire[..n]).unwrap().unwrap().len, len);

            let id = format!("{suite}/{label}");
            let ours = support::run(&mut g, BenchmarkId::new("wsedge", &id), || {
                let n = tx
                    .seal(content::APP_DATA, black_box(&plain), &mut wire)
                    .unwrap();
                rx.open(black_box(&mut wire[..n])).unwrap().unwrap().len
            });
            let (mut htx, mut hrx) = (Held::new(chacha, KEY_A), Held::new(chacha, KEY_A));
            let theirs = support::run(&mut g, BenchmarkId::new("held-key", &id), || {
                let n = htx.seal(black_box(&plain), &mut wire);
                hrx.open(black_box(&mut wire[..n]))
            });
            support::compare(
                &format!("tls_record/{id}"),
                Some(len as u64),
                &ours,
                "held-key",
                &theirs,
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = record
}
criterion_main!(benches);
