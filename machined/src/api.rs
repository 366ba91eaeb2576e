//! The node's API, for diagnosis from outside: TCP port protocol::API_PORT on every address, where each
//! connection gets the node's current status as one JSON line (the same document as the console's
//! status line, kept fresh by the node loop) and is closed. It only reads: nothing on the node can
//! be changed through it. It answers even when the machine config is invalid, which is when it is
//! needed most.

use crate::console;
use crate::protocol::API_PORT;
use std::io::Write;
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The latest status document the API hands out.
pub type Latest = Arc<Mutex<String>>;

/// Listens in a background thread; returns the shared document to update.
pub fn serve(initial: String) -> Latest {
    let latest: Latest = Arc::new(Mutex::new(initial));
    let shared = Arc::clone(&latest);
    // [::]:port takes IPv4 too (bindv6only is 0 by default).
    let listener = match TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, API_PORT)))
        .or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], API_PORT))))
    {
        Ok(listener) => listener,
        Err(e) => {
            console::write(format!("machined: api: cannot listen on port {API_PORT}: {e}\n").as_bytes());
            return latest;
        }
    };
    let spawned = std::thread::Builder::new().name("api".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let document = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let _ = stream.write_all(document.as_bytes()).and_then(|()| stream.write_all(b"\n"));
        }
    });
    if let Err(e) = spawned {
        console::write(format!("machined: api: cannot start its thread: {e}\n").as_bytes());
    }
    latest
}

pub fn update(latest: &Latest, document: String) {
    *latest.lock().unwrap_or_else(|e| e.into_inner()) = document;
}
