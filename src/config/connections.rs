//! `[connections]`: how long a client may take to send a request and how many connections may
//! be open at once, so that slow or idle clients cannot hold the process's file descriptors
//! (a slowloris client costs one descriptor for as long as the server lets it dawdle).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bounds on every client connection, applied to the API and the metrics listener alike.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Most connections open at once on one listener. One more is answered a short 503 and
    /// closed at once (its descriptor is released before the next accept). Keep it below the
    /// process's descriptor limit (`ulimit -n`) with room for model files, the ledger and logs.
    pub max_open: usize,
    /// Longest from a connection's opening, or from the first byte of a later request on it,
    /// to the end of that request's headers; then the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Longest from the end of a request's headers to the end of its body; then 408.
    pub body_read_timeout_secs: u64,
    /// Longest a keep-alive connection may wait for its next request; then it is closed.
    pub idle_timeout_secs: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_open: 512,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            idle_timeout_secs: 60,
        }
    }
}

impl ConnectionLimits {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The first key that is zero: a zero timeout would close every connection, a zero cap
    /// would refuse them all.
    pub fn zero_key(&self) -> Option<&'static str> {
        [
            ("connections.max_open", self.max_open as u64),
            (
                "connections.header_read_timeout_secs",
                self.header_read_timeout_secs,
            ),
            (
                "connections.body_read_timeout_secs",
                self.body_read_timeout_secs,
            ),
            ("connections.idle_timeout_secs", self.idle_timeout_secs),
        ]
        .into_iter()
        .find(|&(_, v)| v == 0)
        .map(|(key, _)| key)
    }
}
