//! `des-retriever healthcheck`: one GET, exit 0 on a 2xx answer. For
//! container HEALTHCHECKs in images without a shell or curl; plain
//! `http://host:port/path` only (the service has no TLS of its own).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("only http://host:port/path URLs are supported, not {0:?}")]
    Url(String),
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: answered {status_line:?}")]
    Status { url: String, status_line: String },
}

/// (host:port, path) of an `http://` URL.
fn split(url: &str) -> Result<(&str, &str), HealthError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HealthError::Url(url.into()))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() || !authority.contains(':') {
        return Err(HealthError::Url(url.into()));
    }
    Ok((authority, if path.is_empty() { "/" } else { path }))
}

/// GETs `url`; Ok if the status is 2xx.
pub fn check(url: &str, timeout: Duration) -> Result<(), HealthError> {
    let (authority, path) = split(url)?;
    let io = |source| HealthError::Io {
        url: url.into(),
        source,
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| HealthError::Url(url.into()))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    // The status line is all we need; a small bounded read gets it.
    let mut head = [0u8; 256];
    let n = s.read(&mut head).map_err(io)?;
    let text = String::from_utf8_lossy(head.get(..n).unwrap_or_default()).into_owned();
    let status_line = text.lines().next().unwrap_or_default().to_string();
    let ok = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.len() == 3 && code.starts_with('2'));
    if ok {
        Ok(())
    } else {
        Err(HealthError::Status {
            url: url.into(),
            status_line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split("http://127.0.0.1:8080/health").unwrap(),
            ("127.0.0.1:8080", "/health")
        );
        assert_eq!(split("http://h:1").unwrap(), ("h:1", "/"));
        for bad in ["https://h:1/x", "h:1/x", "http://host/x", "http:///x"] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refused_connection_is_an_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/health");
        assert!(matches!(
            check(&url, Duration::from_secs(1)),
            Err(HealthError::Io { .. })
        ));
    }
}
