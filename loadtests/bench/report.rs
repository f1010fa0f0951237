//! The results: one table on stdout (markdown, so it pastes into a report), and the same
//! rows appended to a CSV file and a JSON-lines file, each row carrying the scenario name and
//! the labels given on the command line (e.g. the server's knob values) so that runs of
//! different servers and settings can live in one file.

use super::cpu::CpuUse;
use super::runner::Ctx;
use super::scenario::Load;
use super::stats::Summary;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

/// One load level of one run.
#[derive(Debug, Clone)]
pub struct Row {
    /// Seconds since the Unix epoch when the level ended.
    pub unix_time: u64,
    pub scenario: String,
    pub labels: Vec<(String, String)>,
    pub url: String,
    pub endpoint: &'static str,
    pub model: String,
    pub stream: bool,
    pub max_tokens: u32,
    pub load: Load,
    pub summary: Summary,
    pub cpu: CpuUse,
}

impl Row {
    pub fn new(
        ctx: &Ctx,
        load: Load,
        labels: &[(String, String)],
        summary: Summary,
        cpu: CpuUse,
    ) -> Self {
        let s = &ctx.scenario;
        Row {
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            scenario: s.name.clone(),
            labels: labels.to_vec(),
            url: ctx.target.url.clone(),
            endpoint: s.endpoint.as_str(),
            model: s.model.clone(),
            stream: s.stream,
            max_tokens: s.max_tokens,
            load,
            summary,
            cpu,
        }
    }

    /// `max_batch_size=8 threads=2`: the labels as one cell.
    pub fn labels_text(&self, sep: &str) -> String {
        let parts: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.join(sep)
    }

    fn concurrency(&self) -> Option<usize> {
        match self.load {
            Load::Closed(c) => Some(c),
            Load::Open(_) => None,
        }
    }

    fn rate(&self) -> Option<f64> {
        match self.load {
            Load::Closed(_) => None,
            Load::Open(r) => Some(r),
        }
    }
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn cells(v: &[Option<f64>], decimals: usize) -> String {
    let parts: Vec<String> = v.iter().map(|x| cell(*x, decimals)).collect();
    parts.join(" / ")
}

/// The table of a run: one row per level; a labels column only when some row has labels,
/// a CPU column only when some CPU time was measured.
pub fn table(rows: &[Row]) -> String {
    let with_labels = rows.iter().any(|r| !r.labels.is_empty());
    let with_cpu = rows.iter().any(|r| r.cpu != CpuUse::default());
    let mut head = vec![
        "load",
        "reqs",
        "errors",
        "out tok/s",
        "TTFT p50 / p95 / p99 ms",
    ];
    head.extend(["ITL p50 / p95 ms", "e2e p50 / p95 ms"]);
    let mut align = vec!["---", "---:", "---", "---:", "---:", "---:", "---:"];
    if with_labels {
        head.insert(0, "labels");
        align.insert(0, "---");
    }
    if with_cpu {
        head.push("CPU s server / loadgen");
        align.push("---:");
    }
    let mut out = format!("| {} |\n|{}|\n", head.join(" | "), align.join("|"));
    for r in rows {
        let s = &r.summary;
        let mut cols = vec![
            r.load.to_string(),
            s.requests.to_string(),
            s.errors_text("×", " "),
            format!("{:.1}", s.output_tok_s),
            cells(&s.ttft_ms, 0),
            cells(&s.itl_ms, 1),
            cells(&s.e2e_ms, 0),
        ];
        if with_labels {
            cols.insert(0, r.labels_text(" "));
        }
        if with_cpu {
            cols.push(cells(&[r.cpu.server_s, r.cpu.client_s], 1));
        }
        out += &format!("| {} |\n", cols.join(" | "));
    }
    out
}

pub const CSV_HEADER: &str = "unix_time,scenario,labels,url,endpoint,model,stream,max_tokens,\
concurrency,rate,requests,ok,errors,output_tokens,wall_s,output_tok_s,ttft_p50_ms,ttft_p95_ms,\
ttft_p99_ms,itl_p50_ms,itl_p95_ms,e2e_p50_ms,e2e_p95_ms,prompt_tokens_mean,tokens_from,\
server_cpu_s,client_cpu_s,e2e_mean_ms";

/// A CSV field, quoted when it holds a separator, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.3}"))
}

pub fn csv_line(r: &Row) -> String {
    let s = &r.summary;
    let fields = [
        r.unix_time.to_string(),
        csv_field(&r.scenario),
        csv_field(&r.labels_text(";")),
        csv_field(&r.url),
        r.endpoint.to_string(),
        csv_field(&r.model),
        r.stream.to_string(),
        r.max_tokens.to_string(),
        r.concurrency().map_or_else(String::new, |c| c.to_string()),
        num(r.rate()),
        s.requests.to_string(),
        s.ok.to_string(),
        s.errors_text(":", ";"),
        s.output_tokens.to_string(),
        format!("{:.3}", s.wall_s),
        format!("{:.3}", s.output_tok_s),
        num(s.ttft_ms[0]),
        num(s.ttft_ms[1]),
        num(s.ttft_ms[2]),
        num(s.itl_ms[0]),
        num(s.itl_ms[1]),
        num(s.e2e_ms[0]),
        num(s.e2e_ms[1]),
        num(s.prompt_tokens_mean),
        s.tokens_from.as_str().to_string(),
        num(r.cpu.server_s),
        num(r.cpu.client_s),
        num(s.e2e_mean_ms),
    ];
    fields.join(",")
}

pub fn json_row(r: &Row) -> Value {
    let s = &r.summary;
    let labels: serde_json::Map<String, Value> = r
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "unix_time": r.unix_time, "scenario": r.scenario, "labels": labels, "url": r.url,
        "endpoint": r.endpoint, "model": r.model, "stream": r.stream, "max_tokens": r.max_tokens,
        "concurrency": r.concurrency(), "rate": r.rate(),
        "requests": s.requests, "ok": s.ok, "errors": s.errors,
        "output_tokens": s.output_tokens, "wall_s": s.wall_s, "output_tok_s": s.output_tok_s,
        "ttft_p50_ms": s.ttft_ms[0], "ttft_p95_ms": s.ttft_ms[1], "ttft_p99_ms": s.ttft_ms[2],
        "itl_p50_ms": s.itl_ms[0], "itl_p95_ms": s.itl_ms[1],
        "e2e_p50_ms": s.e2e_ms[0], "e2e_p95_ms": s.e2e_ms[1],
        "prompt_tokens_mean": s.prompt_tokens_mean, "tokens_from": s.tokens_from.as_str(),
        "server_cpu_s": r.cpu.server_s, "client_cpu_s": r.cpu.client_s,
        "e2e_mean_ms": s.e2e_mean_ms,
    })
}

/// Appends the rows to `csv` (writing the header when the file is new or empty) and to `jsonl`
/// (one JSON object per line); creates missing parent directories.
pub fn append(rows: &[Row], csv: &Path, jsonl: &Path) -> Result<(), String> {
    let mut csv_text = String::new();
    let csv_is_new = std::fs::metadata(csv).map_or(true, |m| m.len() == 0);
    if csv_is_new {
        csv_text += CSV_HEADER;
        csv_text.push('\n');
    }
    let mut json_text = String::new();
    for r in rows {
        csv_text += &csv_line(r);
        csv_text.push('\n');
        json_text += &json_row(r).to_string();
        json_text.push('\n');
    }
    append_to(csv, &csv_text)?;
    append_to(jsonl, &json_text)
}

fn append_to(path: &Path, text: &str) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::client::{Outcome, Sample};
    use crate::bench::stats::summarize;
    use std::time::Duration;

    fn row(labels: &[(&str, &str)]) -> Row {
        let sample = Sample {
            outcome: Outcome::Ok,
            ttft: Some(Duration::from_millis(100)),
            itl: vec![Duration::from_millis(20)],
            e2e: Duration::from_millis(500),
            output_tokens: 10,
            tokens_from_usage: true,
            prompt_tokens: None,
            detail: None,
            retry_after: None,
        };
        let mut failed = sample.clone();
        failed.outcome = Outcome::Status(503);
        Row {
            unix_time: 1,
            scenario: "s,1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            url: "http://h".into(),
            endpoint: "chat",
            model: "m".into(),
            stream: true,
            max_tokens: 10,
            load: Load::Closed(4),
            summary: summarize(&[sample, failed], Duration::from_secs(1)),
            cpu: CpuUse::default(),
        }
    }

    #[test]
    fn csv_line_has_one_field_per_header_column_and_quotes_commas() {
        let line = csv_line(&row(&[("max_batch_size", "8"), ("threads", "2")]));
        assert!(line.contains("\"s,1\""));
        assert!(line.contains("max_batch_size=8;threads=2"));
        // The scenario name holds the only comma inside quotes.
        assert_eq!(line.split(',').count(), CSV_HEADER.split(',').count() + 1);
    }

    #[test]
    fn json_row_keeps_labels_and_nulls_for_missing_figures() {
        let v = json_row(&row(&[("max_batch_size", "8")]));
        assert_eq!(v["labels"]["max_batch_size"], "8");
        assert_eq!(v["errors"]["503"], 1);
        assert_eq!(v["concurrency"], 4);
        assert!(v["rate"].is_null());
        assert!(v["prompt_tokens_mean"].is_null());
    }

    #[test]
    fn table_shows_errors_by_status_and_a_labels_column_only_when_labelled() {
        let plain = table(&[row(&[])]);
        assert!(plain.starts_with("| load |"));
        assert!(plain.contains("| c=4 | 2 | 503×1 | 10.0 | 100 / 100 / 100 | 20.0 / 20.0 |"));
        let mut labelled = row(&[("max_batch_size", "8")]);
        labelled.cpu.server_s = Some(12.34);
        let labelled = table(&[labelled]);
        assert!(labelled.contains("| max_batch_size=8 | c=4 |"));
        assert!(labelled.contains("| 12.3 / - |"));
    }

    #[test]
    fn append_writes_the_header_once() {
        let dir = std::env::temp_dir().join(format!("loadgen-report-{}", std::process::id()));
        let (csv, jsonl) = (dir.join("r.csv"), dir.join("r.jsonl"));
        append(&[row(&[])], &csv, &jsonl).unwrap();
        append(&[row(&[])], &csv, &jsonl).unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert_eq!(text.matches("unix_time").count(), 1);
        assert_eq!(std::fs::read_to_string(&jsonl).unwrap().lines().count(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
