//! Proving which build is served: plain HTTP GETs on the server itself, and uWSGI's stats
//! server to see that every worker was replaced after the swap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};

/// `(host:port, path)` of a plain `http://` URL.
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("`{url}` is not an `http://` URL"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_owned()))
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

/// One GET; returns the status code and the body.
pub fn get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let a = request(url, None, timeout)?;
    Ok((a.status, a.body))
}

/// One GET with `host` as the `Host` header when given (a site whose `ALLOWED_HOSTS` or virtual
/// host does not answer to `127.0.0.1`).
pub fn request(url: &str, host_header: Option<&str>, timeout: Duration) -> anyhow::Result<Answer> {
    let (host, path) = split_url(url)?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)
        .with_context(|| format!("cannot resolve `{host}`"))?
        .next()
        .with_context(|| format!("`{host}` has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to `{host}`"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let hostname = match host_header {
        Some(h) => h,
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host),
    };
    // One write: `write!` on an unbuffered socket sends each piece separately, and a server that
    // answers after the first line and closes would turn the rest into a broken pipe.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {hostname}\r\nUser-Agent: binarycrate-installer\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of `{url}`"))?;
    let text = String::from_utf8_lossy(&raw);
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
    fn urls_are_split_for_plain_http() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/x?y").unwrap(),
            ("127.0.0.1:8080".into(), "/x?y".into())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost:80".into(), "/".into())
        );
        assert!(split_url("https://x/").is_err());
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
        let a = request(
            &format!("http://127.0.0.1:{port}/"),
            Some("shop.example.com"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(server.join().unwrap(), "shop.example.com");
        assert_eq!(a.status, 400);
        assert_eq!(
            a.describe(),
            "`HTTP/1.0 400 Bad Request`, the page starts `<h1>Bad Request (400)</h1>\\u{1b}[2J`"
        );
    }
}
