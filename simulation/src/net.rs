//! The `Net` seam on turmoil's simulated TCP.

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use tidewater_actors::seams::{Connection, Listener, Net};

/// Sockets of the simulated network.
#[derive(Debug, Default, Clone)]
pub struct TurmoilNet;

struct TurmoilListener(turmoil::net::TcpListener);

#[async_trait]
impl Listener for TurmoilListener {
    async fn accept(&self) -> io::Result<(Box<dyn Connection>, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((Box::new(stream), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[async_trait]
impl Net for TurmoilNet {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(TurmoilListener(turmoil::net::TcpListener::bind(addr).await?)))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Connection>> {
        Ok(Box::new(turmoil::net::TcpStream::connect(addr).await?))
    }
}
