//! TLS termination (https/wss) with a self-signed certificate, reloaded without restart while
//! an established wss tunnel keeps working.

mod common;

use std::pin::Pin;
use std::time::Duration;

use common::*;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Name, X509};
use pingora_core::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
use pingora_core::tls::tokio_ssl::SslStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn self_signed(cn: &str) -> (Vec<u8>, Vec<u8>) {
    let rsa = Rsa::generate(2048).unwrap();
    let key = PKey::from_rsa(rsa).unwrap();
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

async fn tls_connect(port: u16) -> (SslStream<TcpStream>, String) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
    c.set_verify(SslVerifyMode::NONE);
    let ssl = c
        .build()
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap();
    let mut s = SslStream::new(ssl, tcp).unwrap();
    Pin::new(&mut s).connect().await.unwrap();
    let cert = s.ssl().peer_certificate().unwrap();
    let entry = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .unwrap();
    let cn = String::from_utf8_lossy(entry.data().as_slice()).into_owned();
    (s, cn)
}

async fn read_until(s: &mut SslStream<TcpStream>, needle: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

fn masked_text(p: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | p.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_certificate_reload() {
    let dir = std::env::temp_dir().join(format!("edge-lb-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed("edge-a");
    let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cp, cert).unwrap();
    std::fs::write(&kp, key).unwrap();
    let tls_port = free_port();
    let bs = backends(1).await;
    let extra = format!(
        "  tls: {{listen: [\"127.0.0.1:{tls_port}\"], cert: \"{}\", key: \"{}\", reload_check_interval: 200ms}}\n",
        cp.display(),
        kp.display()
    );
    let _e = edge(
        &bs,
        Opts {
            extra,
            ..Opts::default()
        },
    )
    .await;

    // https
    let (mut s, cn) = tls_connect(tls_port).await;
    assert_eq!(cn, "edge-a");
    s.write_all(b"GET /v1/quizzes/tq HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let resp = read_until(&mut s, b"core-0").await;
    assert!(resp.starts_with(b"HTTP/1.1 200"));

    // wss: upgrade, greeting, echo.
    let (mut w, _) = tls_connect(tls_port).await;
    w.write_all(b"GET /v1/quizzes/tq/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let r = read_until(&mut w, b"node=core-0").await;
    assert!(r.starts_with(b"HTTP/1.1 101"));
    w.write_all(&masked_text(b"one")).await.unwrap();
    read_until(&mut w, b"one").await;

    // Replace the certificate on disk: new handshakes get it, without a restart.
    tokio::time::sleep(Duration::from_millis(1100)).await; // distinct mtime
    let (cert, key) = self_signed("edge-b");
    std::fs::write(&kp, key).unwrap();
    std::fs::write(&cp, cert).unwrap();
    let mut cn = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cn = tls_connect(tls_port).await.1;
        if cn == "edge-b" {
            break;
        }
    }
    assert_eq!(cn, "edge-b");
    // The wss tunnel opened under the old certificate still works.
    w.write_all(&masked_text(b"two")).await.unwrap();
    read_until(&mut w, b"two").await;
}
