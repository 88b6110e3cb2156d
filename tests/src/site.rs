//! A loopback stand-in for the application's page, for health checks that need no uWSGI: it
//! says whichever build `<root>/current` points at, over HTTP or HTTPS.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The page as the app would render it for the release `current` names.
fn page(root: &Path) -> String {
    let current = std::fs::read_link(root.join("current"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let digits = current.trim_start_matches("releases/Build");
    format!("HTTP/1.0 200 OK\r\n\r\n<!-- Build number = {digits} -->")
}

/// Reads a request head; `None` when the client went away first (a refused handshake).
fn read_head(s: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Accepts connections until `stop` is set, each handled by `serve` on this thread.
fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    mut serve: impl FnMut(std::net::TcpStream) + Send + 'static,
) {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    serve(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
}

/// A plain-HTTP page for `root`: its port, and the flag that stops it.
pub fn fake_site(root: &Path) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let root = root.to_owned();
    accept_loop(listener, stop.clone(), move |mut s| {
        let _ = read_head(&mut s);
        let _ = s.write_all(page(&root).as_bytes());
    });
    (port, stop)
}

/// An HTTPS page for `root` that answers only to the site name `name`, as a Django site with
/// `ALLOWED_HOSTS = [name]` behind nginx with a certificate from a private CA would: another
/// `Host` gets `400 Bad Request`. Stops when dropped.
#[derive(Debug)]
pub struct HttpsSite {
    pub port: u16,
    /// The private CA's certificate, the `[health] ca_file` that trusts the site.
    pub ca_file: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for HttpsSite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl HttpsSite {
    /// Starts it, writing the CA's certificate to `dir/ca.pem`.
    pub fn start(root: &Path, name: &str, dir: &Path) -> anyhow::Result<HttpsSite> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let site_key = KeyPair::generate()?;
        let site = CertificateParams::new(vec![name.to_owned()])?.signed_by(&site_key, &issuer)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(
                    vec![site.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(site_key.serialize_der())
                        .map_err(anyhow::Error::msg)?,
                )?,
        );
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let (root, name) = (root.to_owned(), name.to_owned());
        accept_loop(listener, stop.clone(), move |s| {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(conn, s);
            let Some(head) = read_head(&mut tls) else {
                return;
            };
            let host = head
                .lines()
                .find_map(|l| l.strip_prefix("Host: "))
                .unwrap_or_default();
            let answer = if host == name {
                page(&root)
            } else {
                "HTTP/1.0 400 Bad Request\r\n\r\n<h1>Bad Request (400)</h1>".to_owned()
            };
            let _ = tls.write_all(answer.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        Ok(HttpsSite {
            port,
            ca_file,
            stop,
        })
    }
}
