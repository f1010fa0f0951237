//! CPU seconds used by the server and by the load generator during a level, read from
//! `/proc/PID/stat` (Linux). On a small machine the client and a proxy take CPU from the
//! engine, so tokens/s means little without the CPU time that bought it.

use std::sync::OnceLock;

/// CPU seconds (user + system) consumed during one level; `None` where unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    pub server_s: Option<f64>,
    pub client_s: Option<f64>,
}

/// Clock ticks per second of `/proc` times: `getconf CLK_TCK`, else Linux's usual 100.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime in ticks from the text of `/proc/PID/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted from its last `)`.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name come fields 3, 4, …; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds used so far by process `pid` (`None` for this process).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    Some(stat_ticks(&stat)? as f64 / ticks_per_second())
}

/// A reading taken at the start of a level; [`Meter::stop`] gives the use since then.
pub struct Meter {
    server_pid: Option<u32>,
    server: Option<f64>,
    client: Option<f64>,
}

impl Meter {
    pub fn start(server_pid: Option<u32>) -> Self {
        Meter {
            server_pid,
            server: server_pid.and_then(|p| cpu_seconds(Some(p))),
            client: cpu_seconds(None),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let diff = |before: Option<f64>, now: Option<f64>| Some(now? - before?);
        CpuUse {
            server_s: diff(
                self.server,
                self.server_pid.and_then(|p| cpu_seconds(Some(p))),
            ),
            client_s: diff(self.client, cpu_seconds(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skips_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tier gate (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 9";
        assert_eq!(stat_ticks(stat), Some(1234 + 56));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_seconds(None).is_some_and(|s| s >= 0.0));
            let used = Meter::start(Some(std::process::id())).stop();
            assert!(used.server_s.is_some_and(|s| s >= 0.0));
        }
    }
}
