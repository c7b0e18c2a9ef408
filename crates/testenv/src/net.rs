//! Loopback endpoints with a fixed behaviour, for tests of what a client does
//! when its peer misbehaves.

use std::net::SocketAddr;

/// A loopback port where every connection is refused, for as long as this
/// value lives. The port is bound but never listened on, so the kernel
/// answers each connection attempt with a reset — and, unlike a port bound
/// and released, no parallel test can take it meanwhile.
pub struct RefusedPort {
    addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("a loopback port");
        let addr = socket.local_addr().expect("a bound socket has an address");
        RefusedPort {
            addr,
            _socket: socket,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as a registry host.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_refused_while_it_lives() {
        let refused = RefusedPort::new();
        for _ in 0..3 {
            let err = std::net::TcpStream::connect(refused.addr()).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        // The port stays taken: nobody else can listen there meanwhile.
        assert!(std::net::TcpListener::bind(refused.addr()).is_err());
    }
}
