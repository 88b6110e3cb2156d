//! Proving which build is served: HTTP(S) GETs on the server itself, and uWSGI's stats server
//! to see that every worker was replaced after the swap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A parsed `http://` or `https://` URL: whether it is TLS, `host:port`, and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    tls: bool,
    authority: String,
    path: String,
}

fn split_url(url: &str) -> Result<Url, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(format!("`{url}` is not an `http://` or `https://` URL"));
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    let has_port = match host.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        Some((h, p)) => !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !h.is_empty(),
        None => false,
    };
    let authority = if has_port {
        host.to_owned()
    } else {
        format!("{host}:{}", if tls { 443 } else { 80 })
    };
    Ok(Url {
        tls,
        authority,
        path: path.to_owned(),
    })
}

/// `host` of `host:port` (brackets of an IPv6 address removed).
fn host_of(authority: &str) -> &str {
    let h = authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority);
    h.trim_start_matches('[').trim_end_matches(']')
}

/// The page a health check asks for: the URL, the `Host` header it sends, and for `https://`
/// which certificates it trusts. Built once per check, so the trust store is read once.
pub struct Site {
    url: String,
    parsed: Url,
    /// `Host` header; also the name the site's certificate must carry.
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("url", &self.url)
            .field("host", &self.host)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Site {
    /// `url`, sent with `host` as the `Host` header when given (a site whose `ALLOWED_HOSTS` or
    /// virtual host does not answer to `127.0.0.1`). For `https://`, the certificate must be for
    /// that host (else the URL's) and signed by a CA in `ca_file` when given, else by one the
    /// system trusts.
    pub fn new(url: &str, host: Option<&str>, ca_file: Option<&Path>) -> anyhow::Result<Site> {
        let parsed = split_url(url).map_err(anyhow::Error::msg)?;
        let host = host
            .map(str::to_owned)
            .unwrap_or_else(|| host_of(&parsed.authority).to_owned());
        let tls = if parsed.tls {
            Some(Arc::new(client_config(ca_file)?))
        } else if let Some(ca) = ca_file {
            bail!(
                "`{}` is for an `https://` URL; `{url}` is plain HTTP",
                ca.display()
            );
        } else {
            None
        };
        Ok(Site {
            url: url.to_owned(),
            parsed,
            host,
            tls,
        })
    }

    /// The URL, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One GET.
    pub fn get(&self, timeout: Duration) -> anyhow::Result<Answer> {
        let authority = &self.parsed.authority;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(authority.as_str())
            .with_context(|| format!("cannot resolve `{authority}`"))?
            .next()
            .with_context(|| format!("`{authority}` has no address"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot connect to `{authority}`"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        // One write: `write!` on an unbuffered socket sends each piece separately, and a server
        // that answers after the first line and closes would turn the rest into a broken pipe.
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: binarycrate-installer\r\nConnection: close\r\n\r\n",
            self.parsed.path, self.host
        );
        let raw = match &self.tls {
            None => exchange(stream, &request, &self.url)?,
            Some(config) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                    anyhow::anyhow!("`{}` is not a name a certificate can carry", self.host)
                })?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .context("cannot start TLS")?;
                exchange(rustls::StreamOwned::new(conn, stream), &request, &self.url).map_err(
                    |e| {
                        if is_certificate_error(&e) {
                            e.context(format!(
                                "the site's certificate is not trusted for `{}`: set `[health] ca_file` to the CA that signed it, or `[health] host` to the name it carries",
                                self.host
                            ))
                        } else {
                            e
                        }
                    },
                )?
            }
        };
        parse_answer(&raw, &self.url)
    }
}

/// TLS settings trusting the CA certificates in `ca_file`, or the system's.
fn client_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file `{}`", path.display()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    anyhow::anyhow!("`{}` is not a PEM certificate file: {e}", path.display())
                })?;
            if certs.is_empty() {
                bail!(
                    "`{}` holds no `BEGIN CERTIFICATE` block: give the PEM file of the CA that signed the site's certificate",
                    path.display()
                );
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!("`{}`: a certificate cannot be used: {e}", path.display())
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system store may hold certificates rustls cannot use; the rest still count.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!(
                    "this server has no trusted CA certificates (install `ca-certificates`), or set `[health] ca_file`"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn is_certificate_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|t| matches!(t, rustls::Error::InvalidCertificate(_)))
    })
}

/// Sends `request` and reads the whole answer.
fn exchange(mut stream: impl Read + Write, request: &str, url: &str) -> anyhow::Result<Vec<u8>> {
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .with_context(|| format!("sending the request to `{url}`"))?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS server that closes without `close_notify`: the answer is complete for
        // `Connection: close`, and a health check has no use for a truncation proof.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e).with_context(|| format!("reading the answer of `{url}`")),
    }
    Ok(raw)
}

fn parse_answer(raw: &[u8], url: &str) -> anyhow::Result<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("`{url}` did not answer HTTP"))?;
    Ok(Answer {
        status_line,
        status,
        body: body.to_owned(),
    })
}

/// What a GET got: the status line, its code, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status_line: String,
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// For a message: the status line and the start of the page, escaped.
    pub fn describe(&self) -> String {
        let start: String = self.body.trim_start().chars().take(160).collect();
        format!(
            "`{}`, the page starts `{}`",
            common::untrusted::shown(&self.status_line),
            common::untrusted::shown(&start)
        )
    }
}

/// One plain GET (uWSGI's stats server); returns the status code and the body.
pub fn get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let a = Site::new(url, None, None)?.get(timeout)?;
    Ok((a.status, a.body))
}

/// Whether `url` is one the health check can ask (`http://` or `https://`, with a host).
pub fn check_url(url: &str) -> Result<(), String> {
    split_url(url).map(drop)
}

/// The build number a page shows (`Build number = NNNNNN`), if any.
pub fn served_build(body: &str) -> Option<String> {
    let i = body.find("Build number = ")?;
    let digits: String = body[i + 15..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (digits.len() == 6).then_some(digits)
}

/// A uWSGI worker as its stats server reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub pid: u64,
    /// Unix seconds of the worker's last (re)spawn.
    pub last_spawn: i64,
    /// Loaded its application and takes requests.
    pub accepting: bool,
}

/// Workers from uWSGI's stats server (`--stats ADDR --stats-http`).
pub fn workers(stats_url: &str, timeout: Duration) -> anyhow::Result<Vec<Worker>> {
    let (status, body) = get(stats_url, timeout)?;
    if status != 200 {
        bail!("the uWSGI stats server `{stats_url}` answered {status}");
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("`{stats_url}` did not return uWSGI stats JSON"))?;
    let list = v["workers"]
        .as_array()
        .with_context(|| format!("`{stats_url}`: no `workers` in the stats"))?;
    Ok(list
        .iter()
        .map(|w| Worker {
            pid: w["pid"].as_u64().unwrap_or(0),
            last_spawn: w["last_spawn"].as_i64().unwrap_or(0),
            accepting: w["accepting"].as_i64().unwrap_or(1) != 0,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_build_number_in_a_page() {
        assert_eq!(
            served_build("<html><!-- Build number = 000034 --></html>").as_deref(),
            Some("000034")
        );
        assert_eq!(served_build("Build number = 34"), None);
        assert_eq!(served_build("nothing"), None);
    }

    #[test]
    fn urls_are_split_for_http_and_https() {
        let u = |tls, a: &str, p: &str| Url {
            tls,
            authority: a.into(),
            path: p.into(),
        };
        assert_eq!(
            split_url("http://127.0.0.1:8080/x?y").unwrap(),
            u(false, "127.0.0.1:8080", "/x?y")
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            u(false, "localhost:80", "/")
        );
        assert_eq!(
            split_url("https://127.0.0.1/").unwrap(),
            u(true, "127.0.0.1:443", "/")
        );
        assert_eq!(
            split_url("https://[::1]/").unwrap(),
            u(true, "[::1]:443", "/")
        );
        assert_eq!(host_of("[::1]:443"), "::1");
        assert!(split_url("ftp://x/").is_err());
        assert!(split_url("https:///").is_err());
    }

    #[test]
    fn get_talks_http_to_a_loopback_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Reads the whole request head, as a real server does before answering.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended before its head did");
                head.extend_from_slice(&buf[..n]);
            }
            assert!(head.starts_with(b"GET / HTTP/1.0\r\n"));
            s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<!-- Build number = 000002 -->",
            )
            .unwrap();
        });
        let (status, body) =
            get(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(served_build(&body).as_deref(), Some("000002"));
    }
    #[test]
    fn the_host_header_is_sent_and_a_wrong_page_is_shown() {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut host = String::new();
            for line in std::io::BufReader::new(s.try_clone().unwrap()).lines() {
                let line = line.unwrap();
                if let Some(h) = line.strip_prefix("Host: ") {
                    host = h.to_owned();
                }
                if line.is_empty() {
                    break;
                }
            }
            s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n<h1>Bad Request (400)</h1>\x1b[2J")
                .unwrap();
            host
        });
        let a = Site::new(
            &format!("http://127.0.0.1:{port}/"),
            Some("shop.example.com"),
            None,
        )
        .unwrap()
        .get(Duration::from_secs(5))
        .unwrap();
        assert_eq!(server.join().unwrap(), "shop.example.com");
        assert_eq!(a.status, 400);
        assert_eq!(
            a.describe(),
            "`HTTP/1.0 400 Bad Request`, the page starts `<h1>Bad Request (400)</h1>\\u{1b}[2J`"
        );
    }

    /// A site on `127.0.0.1` with a certificate for `shop.example.com` signed by a private CA:
    /// trusted with that CA's file and the site's name, refused otherwise with what to set.
    #[test]
    fn https_is_checked_against_the_ca_file_and_the_sites_name() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let site_key = KeyPair::generate().unwrap();
        let site = CertificateParams::new(vec!["shop.example.com".to_owned()])
            .unwrap()
            .signed_by(&site_key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server_config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![site.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(site_key.serialize_der()).unwrap(),
                )
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("https://127.0.0.1:{port}/");
        let server = std::thread::spawn(move || {
            let mut hosts = Vec::new();
            for s in listener.incoming().take(3) {
                let conn = rustls::ServerConnection::new(server_config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s.unwrap());
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                // A client that refuses the certificate ends the handshake with an error here.
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                if let Some(h) = text.lines().find_map(|l| l.strip_prefix("Host: ")) {
                    hosts.push(h.to_owned());
                    tls.write_all(b"HTTP/1.1 200 OK\r\n\r\n<!-- Build number = 000007 -->")
                        .unwrap();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
            hosts
        });

        let a = Site::new(&url, Some("shop.example.com"), Some(&ca_file))
            .unwrap()
            .get(Duration::from_secs(5))
            .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(served_build(&a.body).as_deref(), Some("000007"));
        // Another name than the certificate's.
        let e = Site::new(&url, Some("other.example.com"), Some(&ca_file))
            .unwrap()
            .get(Duration::from_secs(5))
            .unwrap_err();
        let said = format!("{e:#}");
        assert!(
            said.contains("not trusted for `other.example.com`") && said.contains("[health] host"),
            "{said}"
        );
        // The system's CAs do not know the private one.
        let said = match Site::new(&url, Some("shop.example.com"), None) {
            Ok(site) => format!("{:#}", site.get(Duration::from_secs(5)).unwrap_err()),
            Err(e) => format!("{e:#}"),
        };
        assert!(said.contains("[health] ca_file"), "{said}");
        // The third connection may never reach the server when the client had no roots at all.
        drop(std::net::TcpStream::connect(("127.0.0.1", port)));
        assert_eq!(server.join().unwrap(), vec!["shop.example.com".to_owned()]);
    }
}
