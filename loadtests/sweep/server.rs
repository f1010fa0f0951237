//! A tiergate server started for one grid point: its own config file, a free port on
//! 127.0.0.1, its log in a file. Dropping the handle stops the process, so a failed or
//! interrupted sweep leaves no server behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

/// A port that was free a moment ago. Another process could take it before the server binds
/// it; the server then fails to start and the sweep says so, which is rare enough here.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl Server {
    /// Starts `bin serve --config config --listen 127.0.0.1:PORT` in the current directory
    /// (the config's relative `models_dir` resolves there), stdout and stderr to `log`.
    pub fn start(bin: &Path, config: &Path, log: &Path) -> Result<Self, String> {
        let port = free_port()?;
        let out = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        // The sweep measures the engine, not the tenancy: no keys, and the anonymous tenant
        // on the commercial tier, whose concurrency (16) and request rate (600/min) the
        // shipped scenarios stay under; its ledger goes beside the log.
        let ledger = log.with_extension("ledger.db");
        let child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("TIERGATE_TENANCY__AUTH", "off")
            .env("TIERGATE_TENANCY__ANONYMOUS_TIER", "commercial")
            .env(
                "TIERGATE_LEDGER__URL",
                format!("sqlite://{}", ledger.display()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `GET /ready` until it answers 200; fails early if the process exits.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let ready = format!("{}/ready", self.url);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "server exited ({status}); see {}",
                    self.log.display()
                ));
            }
            let answer = client
                .get(&ready)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().as_u16() == 200) {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "not ready after {} s; see {}",
                    limit.as_secs(),
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM for a graceful drain (nothing is in flight by now), SIGKILL after 15 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // std has no SIGTERM; `kill` is on every Unix this runs on.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}
