//! The TLS layer against rustls's own buffered client (an independent
//! record layer), without sockets: every suite and version, records split
//! anywhere, key updates, close_notify, tampering.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::crypto::ring::cipher_suite as cs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

use super::conn::TlsConn;
use super::handshake::{Side, Step, advance};
use super::record::{MAX_PLAIN, RecordError};
use super::{TlsError, setup};

struct Pki {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    let cert = params.self_signed(&kp).unwrap();
    Pki {
        cert: CertificateDer::from(cert.der().to_vec()),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der())),
    }
}

fn server_config(p: &Pki) -> Arc<ServerConfig> {
    let mut c = ServerConfig::builder_with_provider(setup::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![p.cert.clone()], p.key.clone_key())
        .unwrap();
    c.enable_secret_extraction = true;
    Arc::new(c)
}

fn client_config(
    p: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
    suite: rustls::SupportedCipherSuite,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let mut roots = RootCertStore::empty();
    roots.add(p.cert.clone()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A finished handshake: rustls's client and our server's record layer,
/// plus any early plaintext and leftover ciphertext on our side.
fn pair(cc: Arc<ClientConfig>, sc: Arc<ServerConfig>) -> (ClientConnection, TlsConn, Vec<u8>) {
    let mut client = ClientConnection::new(cc, ServerName::try_from("localhost").unwrap()).unwrap();
    client.set_buffer_limit(None);
    let mut server = UnbufferedServerConnection::new(sc).unwrap();
    let mut incoming = Vec::new();
    let mut outgoing = Vec::new();
    let mut early = Vec::new();
    for _ in 0..20 {
        while client.wants_write() {
            client.write_tls(&mut incoming).unwrap();
        }
        let step = advance(&mut server, &mut incoming, &mut outgoing, &mut early).unwrap();
        let mut rd = &outgoing[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();
        outgoing.clear();
        if step == Step::Done && !client.is_handshaking() {
            while client.wants_write() {
                client.write_tls(&mut incoming).unwrap();
            }
            let _ = advance(&mut server, &mut incoming, &mut outgoing, &mut early);
            assert!(outgoing.is_empty());
            let conn = server.finish().unwrap();
            incoming.splice(0..0, early);
            return (client, conn, incoming);
        }
    }
    panic!("handshake did not finish");
}

/// What the client sends, as ciphertext.
fn client_sends(c: &mut ClientConnection, data: &[u8]) -> Vec<u8> {
    c.writer().write_all(data).unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

/// Feeds `wire` to `conn` in pieces of `step` bytes as a driver would:
/// keeping a cut record for the next read. Returns the plaintext.
fn server_reads(conn: &mut TlsConn, wire: &[u8], step: usize) -> Result<Vec<u8>, TlsError> {
    let mut plain = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut kept = 0;
    for piece in wire.chunks(step) {
        buf[kept..kept + piece.len()].copy_from_slice(piece);
        let total = kept + piece.len();
        let r = conn.read(&mut buf[..total])?;
        plain.extend_from_slice(&buf[..r.plain]);
        buf.copy_within(r.used..total, 0);
        kept = total - r.used;
    }
    assert_eq!(kept, 0, "a record was left cut");
    Ok(plain)
}

fn client_reads(c: &mut ClientConnection, wire: &[u8]) -> Vec<u8> {
    let mut rd = wire;
    let mut out = Vec::new();
    while !rd.is_empty() {
        c.read_tls(&mut rd).unwrap();
        c.process_new_packets().unwrap();
        match c.reader().read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    out
}

fn server_sends(conn: &mut TlsConn, data: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut out = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < data.len() || conn.has_control() {
        let (taken, written) = conn.seal(&data[at..], &mut out).unwrap();
        wire.extend_from_slice(&out[..written]);
        at += taken;
    }
    wire
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

const SUITES: [(&str, rustls::SupportedCipherSuite, bool); 6] = [
    ("1.3 AES-128", cs::TLS13_AES_128_GCM_SHA256, true),
    ("1.3 AES-256", cs::TLS13_AES_256_GCM_SHA384, true),
    ("1.3 ChaCha", cs::TLS13_CHACHA20_POLY1305_SHA256, true),
    (
        "1.2 AES-128",
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        false,
    ),
    (
        "1.2 AES-256",
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        false,
    ),
    (
        "1.2 ChaCha",
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        false,
    ),
];

fn version(v13: bool) -> &'static rustls::SupportedProtocolVersion {
    if v13 {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    }
}

#[test]
fn every_suite_both_ways_split_anywhere() {
    let p = pki();
    let sc = server_config(&p);
    for (name, suite, v13) in SUITES {
        let (mut client, mut conn, leftover) =
            pair(client_config(&p, version(v13), suite), sc.clone());
        assert!(leftover.is_empty(), "{name}");
        let sizes = [1usize, 125, MAX_PLAIN - 1, MAX_PLAIN, MAX_PLAIN + 1, 70_000];
        for (i, size) in sizes.into_iter().enumerate() {
            let data = payload(size);
            let wire = client_sends(&mut client, &data);
            let step = [wire.len(), 1, 5, 6, 4096, 16_401][i];
            let got = server_reads(&mut conn, &wire, step).unwrap();
            assert_eq!(got, data, "{name} {size} step {step}");
            let back = server_sends(&mut conn, &data);
            assert_eq!(client_reads(&mut client, &back), data, "{name} {size}");
        }
    }
}

#[test]
fn records_cut_at_every_point_reassemble() {
    let p = pki();
    let sc = server_config(&p);
    for (name, suite, v13) in SUITES {
        let (mut client, mut conn, _) = pair(client_config(&p, version(v13), suite), sc.clone());
        for step in [1usize, 2, 3, 5, 7, 13, 100, 1000, 16_000] {
            let data = payload(20_000 + step);
            let wire = client_sends(&mut client, &data);
            assert_eq!(
                server_reads(&mut conn, &wire, step).unwrap(),
                data,
                "{name} {step}"
            );
        }
    }
}

#[test]
fn key_updates_both_ways() {
    let p = pki();
    let sc = server_config(&p);
    for (name, suite, v13) in SUITES.into_iter().filter(|s| s.2) {
        let (mut client, mut conn, _) = pair(client_config(&p, version(v13), suite), sc.clone());
        // The client updates its key and asks for ours to be updated.
        client.refresh_traffic_keys().unwrap();
        let data = payload(3000);
        let wire = client_sends(&mut client, &data);
        assert_eq!(
            server_reads(&mut conn, &wire, wire.len()).unwrap(),
            data,
            "{name}"
        );
        assert!(conn.has_control(), "{name}: our KeyUpdate is owed");
        let back = server_sends(&mut conn, &data);
        assert_eq!(client_reads(&mut client, &back), data, "{name}");
        // And again, to be sure both sides moved on.
        let wire = client_sends(&mut client, b"after");
        assert_eq!(server_reads(&mut conn, &wire, 3).unwrap(), b"after");
        let back = server_sends(&mut conn, b"reply");
        assert_eq!(client_reads(&mut client, &back), b"reply");
    }
}

#[test]
fn close_notify_both_ways() {
    let p = pki();
    let sc = server_config(&p);
    for (name, suite, v13) in SUITES {
        let (mut client, mut conn, _) = pair(client_config(&p, version(v13), suite), sc.clone());
        let mut wire = client_sends(&mut client, b"last words");
        client.send_close_notify();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        wire.extend_from_slice(b"ignored garbage after close_notify");
        let mut buf = wire.clone();
        let r = conn.read(&mut buf).unwrap();
        assert!(r.closed, "{name}");
        assert_eq!(&buf[..r.plain], b"last words");
        assert_eq!(r.used, wire.len());
        let mut out = [0u8; super::conn::CLOSE_NOTIFY_MAX];
        let n = conn.close_notify(&mut out).unwrap();
        assert!(n > 0);
        assert_eq!(conn.close_notify(&mut out).unwrap(), 0, "sent once");
        let mut rd = &out[..n];
        client.read_tls(&mut rd).unwrap();
        let st = client.process_new_packets().unwrap();
        assert!(st.peer_has_closed(), "{name}");
    }
}

#[test]
fn tampering_and_garbage_are_errors() {
    let p = pki();
    let sc = server_config(&p);
    for (name, suite, v13) in SUITES {
        let (mut client, mut conn, _) = pair(client_config(&p, version(v13), suite), sc.clone());
        // The tag, and the header's version (authenticated in both
        // versions: TLS 1.2 as additional data, which the fuzzer found
        // unchecked once).
        for at in [usize::MAX, 2] {
            let mut wire = client_sends(&mut client, b"hello");
            let i = at.min(wire.len() - 1);
            wire[i] ^= 0x80;
            assert_eq!(
                conn.read(&mut wire).unwrap_err(),
                TlsError::Record(RecordError::BadMac),
                "{name} byte {i}"
            );
            let (c, s, _) = pair(client_config(&p, version(v13), suite), sc.clone());
            (client, conn) = (c, s);
        }
    }
    let (_, mut conn, _) = pair(client_config(&p, version(true), SUITES[0].1), sc.clone());
    let mut over = vec![23u8, 3, 3, 0xff, 0xff];
    assert_eq!(
        conn.read(&mut over).unwrap_err(),
        TlsError::Record(RecordError::Overflow)
    );
    let mut plain_alert = vec![21u8, 3, 3, 0, 2, 2, 40];
    assert_eq!(
        conn.read(&mut plain_alert).unwrap_err(),
        TlsError::Record(RecordError::Unexpected)
    );
}

#[test]
fn fatal_alert_is_an_error() {
    let p = pki();
    let sc = server_config(&p);
    let (mut client, mut conn, _) = pair(client_config(&p, version(true), SUITES[0].1), sc);
    // A rustls client that fails sends its alert encrypted; provoke one by
    // feeding it a corrupted record from us.
    let mut back = server_sends(&mut conn, b"x");
    let last = back.len() - 1;
    back[last] ^= 1;
    let mut rd = &back[..];
    client.read_tls(&mut rd).unwrap();
    assert!(client.process_new_packets().is_err());
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    assert_eq!(conn.read(&mut wire).unwrap_err(), TlsError::Alert(20));
}

#[test]
fn early_data_with_the_finished_flight_is_kept() {
    let p = pki();
    let sc = server_config(&p);
    let cc = client_config(&p, version(true), SUITES[0].1);
    let mut client = ClientConnection::new(cc, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut server = UnbufferedServerConnection::new(sc).unwrap();
    let (mut incoming, mut outgoing, mut early) = (Vec::new(), Vec::new(), Vec::new());
    // The request is written before the handshake ends: rustls sends it
    // right after its Finished, in the same flight.
    client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    loop {
        while client.wants_write() {
            client.write_tls(&mut incoming).unwrap();
        }
        let step = advance(&mut server, &mut incoming, &mut outgoing, &mut early).unwrap();
        let mut rd = &outgoing[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();
        outgoing.clear();
        if step == Step::Done && !client.wants_write() {
            break;
        }
    }
    assert_eq!(early, b"GET / HTTP/1.1\r\n\r\n");
}
