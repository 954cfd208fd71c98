//! A TCP proxy a test puts between a service and one of the stack's servers
//! (ClickHouse, the registry, a broker's bootstrap port) to cut that one
//! service off without stopping the server the other tests share.
//!
//! - [`Mode::Forward`]: every connection is passed through;
//! - [`Mode::Refuse`]: new connections are closed at once, and the open ones
//!   are cut (the server looks down to this service only);
//! - [`Mode::Blackhole`]: new connections are accepted and read, and never
//!   answered (a server that hangs); open ones are left as they are.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward = 0,
    Refuse = 1,
    Blackhole = 2,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 to `target`, starting in `mode`.
    pub async fn start(target: SocketAddr, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        Self::serve(listener, target, mode)
    }

    /// A proxy to `target` on `addr` (a port chosen before, so that a service
    /// can be configured with it while nothing listens yet).
    pub async fn start_on(addr: SocketAddr, target: SocketAddr, mode: Mode) -> Proxy {
        let listener = TcpListener::bind(addr).await.expect("bind the proxy");
        Self::serve(listener, target, mode)
    }

    fn serve(listener: TcpListener, target: SocketAddr, mode: Mode) -> Proxy {
        let addr = listener.local_addr().expect("proxy address");
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (mode, connections) = (mode.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let task = match mode.load(Ordering::SeqCst) {
                        0 => tokio::spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        }),
                        2 => tokio::spawn(async move {
                            let mut sink = [0u8; 8192];
                            while let Ok(n) = client.read(&mut sink).await {
                                if n == 0 {
                                    break;
                                }
                            }
                            // Held open until the client gives up.
                            std::future::pending::<()>().await;
                        }),
                        _ => {
                            drop(client);
                            continue;
                        }
                    };
                    let mut open = connections.lock().expect("proxy lock");
                    open.retain(|t| !t.is_finished());
                    open.push(task);
                }
            })
        };
        Proxy {
            addr,
            mode,
            connections,
            accept,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the mode; [`Mode::Refuse`] also cuts the open connections.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        if mode == Mode::Refuse {
            for t in self.connections.lock().expect("proxy lock").drain(..) {
                t.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.connections.lock().expect("proxy lock").drain(..) {
            t.abort();
        }
    }
}

/// A port of 127.0.0.1 nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
