//! Connection limits over raw TCP against the real server: slow headers and idle keep-alive
//! connections are closed, a slow body gets 408, a connection over the cap is refused at once
//! while the others keep working. Each check waits for the server to act with a generous
//! bound (`LIVENESS`): it asserts that the server closes, not how fast.

mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Far above every timeout of these servers: a read still waiting after it means the server
/// kept the connection.
const LIVENESS: Duration = Duration::from_secs(30);

/// One model, one replica: these tests are about connections, not models.
fn small_config() -> tiergate::config::Config {
    let mut config = test_config();
    config.models.retain(|m| m.name == CHAT_MODEL);
    config.models[0].replicas.truncate(1);
    config.limits.max_output_tokens = 4000;
    config
}

/// Timeouts of one second, so that every closing is reached quickly.
fn impatient_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut config = small_config();
        let c = &mut config.connections;
        c.header_read_timeout_secs = 1;
        c.body_read_timeout_secs = 1;
        c.idle_timeout_secs = 1;
        spawn_server(config)
    })
}

/// Two connections at most, with timeouts long enough that held connections stay open.
fn capped_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut config = small_config();
        config.connections.max_open = 2;
        config.connections.idle_timeout_secs = 600;
        config.connections.header_read_timeout_secs = 600;
        spawn_server(config)
    })
}

/// The per-address flood guard at one request per second, burst one.
fn guarded_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut config = small_config();
        config.tenancy.ip_requests_per_second = 1;
        config.tenancy.ip_burst = 1;
        spawn_server(config)
    })
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(LIVENESS)).expect("timeout");
    stream
}

/// Reads until the server closes the connection (end of stream or reset) and returns what
/// it sent before; panics if it is still open after `LIVENESS`.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the connection is still open after {LIVENESS:?}")
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `GET path` on a kept-alive connection and returns the status line's code.
fn get(stream: &mut TcpStream, path: &str) -> u16 {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    read_response(stream)
}

/// Reads one response with a `content-length` body; returns its status.
fn read_response(stream: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("response head");
        assert_eq!(n, 1, "closed mid-head: {}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("length"))
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("body");
    head[9..12].parse().expect("status")
}

#[test]
fn a_client_that_trickles_its_headers_is_disconnected() {
    let server = impatient_server();
    let mut stream = connect(server);
    let mut writer = stream.try_clone().expect("clone");
    // Slowloris: a valid start, then one more header line every 100 ms, never the blank line
    // that ends the head. Every byte is new activity; only a deadline from the first counts.
    std::thread::spawn(move || {
        let mut line: &[u8] = b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n";
        while writer.write_all(line).is_ok() {
            line = b"X-Padding: a\r\n";
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let answer = read_until_closed(&mut stream);
    assert_eq!(answer, "", "closed without an answer");
}

#[test]
fn a_body_that_stalls_is_answered_408_and_the_connection_closed() {
    let server = impatient_server();
    let mut stream = connect(server);
    let head = "POST /v1/completions HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n\
                content-length: 100\r\n\r\n";
    write!(stream, "{head}{{\"model\": ").expect("send");
    let answer = read_until_closed(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(
        answer.contains(r#""type":"invalid_request_error""#),
        "{answer}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let server = impatient_server();
    let mut stream = connect(server);
    assert_eq!(get(&mut stream, "/health"), 200);
    assert_eq!(read_until_closed(&mut stream), "");
}

#[test]
fn a_connection_that_opens_and_sends_nothing_is_closed() {
    let server = impatient_server();
    let mut stream = connect(server);
    assert_eq!(read_until_closed(&mut stream), "");
}

#[test]
fn a_stream_longer_than_the_connection_timeouts_is_not_cut() {
    let server = impatient_server();
    let mut stream = connect(server);
    let body = serde_json::json!({"model": CHAT_MODEL, "prompt": "Count:", "max_tokens": 4000,
        "temperature": 0, "ignore_eos": true, "stream": true})
    .to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    assert_eq!(read_status(&mut stream), Some(200));
    // For three times the header and idle timeouts, the stream must keep flowing.
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut received = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let n = stream.read(&mut buf).expect("the stream goes on");
        assert!(n > 0, "closed after {received} bytes");
        received += n;
    }
}

#[test]
fn the_per_address_guard_still_sees_the_client_address() {
    let server = guarded_server();
    let mut stream = connect(server);
    assert_eq!(get(&mut stream, "/v1/models"), 200);
    // A burst of one per second from 127.0.0.1: the next request at once is over it.
    assert_eq!(get(&mut stream, "/v1/models"), 429);
}

#[test]
fn a_connection_over_the_cap_is_refused_at_once_and_the_others_keep_working() {
    let server = capped_server();
    let mut first = connect(server);
    let mut second = connect(server);
    assert_eq!(get(&mut first, "/health"), 200);
    assert_eq!(get(&mut second, "/health"), 200);
    let mut third = connect(server);
    let answer = read_until_closed(&mut third);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert_eq!(get(&mut first, "/health"), 200);
    assert_eq!(get(&mut second, "/health"), 200);
    // Once one closes, its place goes to a newcomer (as soon as the server has noticed).
    drop(first);
    let start = Instant::now();
    loop {
        let mut next = connect(server);
        let answered = write!(next, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n").is_ok()
            && matches!(read_status(&mut next), Some(200));
        if answered {
            break;
        }
        assert!(start.elapsed() < LIVENESS, "no connection accepted again");
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = metrics_text(server);
    assert!(
        metrics.contains(r#"tiergate_connections_dropped_total{listener="api",reason="refused"}"#),
        "{metrics}"
    );
}

/// The status of the response on `stream`, or None if the server closed it first.
fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// `GET /metrics` of the server's metrics listener, over the same raw connection code.
fn metrics_text(server: &Server) -> String {
    let mut stream = TcpStream::connect(server.metrics_addr).expect("connect");
    stream.set_read_timeout(Some(LIVENESS)).expect("timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    read_until_closed(&mut stream)
}
