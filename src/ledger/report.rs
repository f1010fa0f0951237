//! The monthly usage report: per tenant and tier, requests by outcome, tokens, device time
//! and the cost split. `build_report` is a pure function of the records, so its totals are
//! provably the sums of the records; the formatters only print it.

use super::{Outcome, UsageRecord};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One line of the report. Money in micro-HKD.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReportRow {
    pub tenant: String,
    pub tier: String,
    pub requests: u64,
    /// Requests per outcome (`ok`, `rate_limited`, ...); only outcomes that occurred.
    pub outcomes: BTreeMap<String, u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub device_seconds: f64,
    pub list_micro_hkd: i64,
    pub subsidy_micro_hkd: i64,
    pub charge_micro_hkd: i64,
    /// The tenant's monthly budget minus its charges this month over all its tiers; `None`
    /// when its budget is unknown or unlimited.
    pub budget_left_micro_hkd: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Sorted by tenant, then tier.
    pub rows: Vec<ReportRow>,
    /// Sums over every row (tenant `TOTAL`; no budget).
    pub totals: ReportRow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
}

impl ReportRow {
    fn add(&mut self, r: &UsageRecord) {
        self.requests += 1;
        *self.outcomes.entry(r.outcome.clone()).or_default() += 1;
        self.prompt_tokens += r.prompt_tokens;
        self.completion_tokens += r.completion_tokens;
        self.device_seconds += r.device_seconds;
        self.list_micro_hkd += r.list_micro_hkd;
        self.subsidy_micro_hkd += r.subsidy_micro_hkd;
        self.charge_micro_hkd += r.charge_micro_hkd;
    }

    fn count(&self, outcome: &str) -> u64 {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }
}

/// Groups `records` by (tenant, tier) and sums them. `budgets`: tenant -> monthly budget in
/// micro-HKD (`None`: unlimited); tenants missing from it show no budget left.
pub fn build_report(records: &[UsageRecord], budgets: &BTreeMap<String, Option<i64>>) -> Report {
    let mut groups: BTreeMap<(&str, &str), ReportRow> = BTreeMap::new();
    let mut totals = ReportRow {
        tenant: "TOTAL".into(),
        ..ReportRow::default()
    };
    let mut charged: BTreeMap<&str, i64> = BTreeMap::new();
    for r in records {
        let row = groups
            .entry((r.tenant.as_str(), r.tier.as_str()))
            .or_insert_with(|| ReportRow {
                tenant: r.tenant.clone(),
                tier: r.tier.clone(),
                ..ReportRow::default()
            });
        row.add(r);
        totals.add(r);
        *charged.entry(r.tenant.as_str()).or_default() += r.charge_micro_hkd;
    }
    let rows = groups
        .into_values()
        .map(|mut row| {
            let budget = budgets.get(&row.tenant).copied().flatten();
            row.budget_left_micro_hkd = budget.map(|b| b - charged[row.tenant.as_str()]);
            row
        })
        .collect();
    Report { rows, totals }
}

/// `1234500` -> `"1.2345"`: exact, with at least two decimals.
pub fn hkd(micro: i64) -> String {
    let sign = if micro < 0 { "-" } else { "" };
    let abs = micro.unsigned_abs();
    let frac = format!("{:06}", abs % 1_000_000);
    let frac = frac.trim_end_matches('0');
    let frac = format!("{frac:0<2}");
    format!("{sign}{}.{frac}", abs / 1_000_000)
}

fn budget_left(row: &ReportRow) -> String {
    row.budget_left_micro_hkd.map_or("-".into(), hkd)
}

fn not_ok(row: &ReportRow) -> String {
    let parts: Vec<String> = row
        .outcomes
        .iter()
        .filter(|(o, _)| o.as_str() != Outcome::Ok.as_str())
        .map(|(o, n)| format!("{o}:{n}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

impl Report {
    pub fn render(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Table => self.table(),
            ReportFormat::Csv => self.csv(),
            ReportFormat::Json => {
                serde_json::to_string_pretty(self).expect("a report always serialises") + "\n"
            }
        }
    }

    fn table(&self) -> String {
        let header = [
            "tenant",
            "tier",
            "requests",
            "ok",
            "not ok",
            "prompt tok",
            "completion tok",
            "device s",
            "list HKD",
            "subsidy HKD",
            "charge HKD",
            "budget left HKD",
        ];
        let line = |r: &ReportRow| {
            vec![
                r.tenant.clone(),
                r.tier.clone(),
                r.requests.to_string(),
                r.count(Outcome::Ok.as_str()).to_string(),
                not_ok(r),
                r.prompt_tokens.to_string(),
                r.completion_tokens.to_string(),
                format!("{:.3}", r.device_seconds),
                hkd(r.list_micro_hkd),
                hkd(r.subsidy_micro_hkd),
                hkd(r.charge_micro_hkd),
                budget_left(r),
            ]
        };
        let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        cells.extend(self.rows.iter().map(line));
        cells.push(line(&self.totals));
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                cells
                    .iter()
                    .map(|row| row[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, row) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "{}", rule.join("  "));
            }
            let padded: Vec<String> = row
                .iter()
                .zip(&widths)
                // Names left-aligned, numbers right-aligned.
                .enumerate()
                .map(|(c, (v, &w))| {
                    if c < 2 || c == 4 {
                        format!("{v:<w$}")
                    } else {
                        format!("{v:>w$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", padded.join("  ").trim_end());
        }
        out
    }

    fn csv(&self) -> String {
        let mut header = vec!["tenant", "tier", "requests"];
        header.extend(Outcome::ALL.iter().map(|o| o.as_str()));
        header.extend([
            "other_outcomes",
            "prompt_tokens",
            "completion_tokens",
            "device_seconds",
            "list_hkd",
            "subsidy_hkd",
            "charge_hkd",
            "budget_left_hkd",
        ]);
        let mut out = header.join(",") + "\n";
        for r in self.rows.iter().chain(std::iter::once(&self.totals)) {
            let mut fields = vec![
                csv_field(&r.tenant),
                csv_field(&r.tier),
                r.requests.to_string(),
            ];
            fields.extend(Outcome::ALL.iter().map(|o| r.count(o.as_str()).to_string()));
            let known: u64 = Outcome::ALL.iter().map(|o| r.count(o.as_str())).sum();
            fields.extend([
                (r.requests - known).to_string(),
                r.prompt_tokens.to_string(),
                r.completion_tokens.to_string(),
                r.device_seconds.to_string(),
                hkd(r.list_micro_hkd),
                hkd(r.subsidy_micro_hkd),
                hkd(r.charge_micro_hkd),
                r.budget_left_micro_hkd.map_or(String::new(), hkd),
            ]);
            out += &(fields.join(",") + "\n");
        }
        out
    }
}

/// Quotes a CSV field when it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::record::sample;

    /// Varied records: three tenants, two tiers, several outcomes, uneven amounts.
    fn records() -> Vec<UsageRecord> {
        let outcomes = [
            "ok",
            "ok",
            "rate_limited",
            "ok",
            "over_budget",
            "cancelled",
            "ok",
        ];
        (0..200u64)
            .map(|i| {
                let mut r = sample(&format!("r{i}"), ["a", "b", "c"][(i % 3) as usize], 0);
                r.tier = ["aiss", "commercial"][(i % 2) as usize].into();
                r.outcome = outcomes[(i % 7) as usize].into();
                r.prompt_tokens = i * 7 % 101;
                r.completion_tokens = i * 13 % 257;
                r.device_seconds = i as f64 / 64.0; // exact in binary: sums are exact
                r.list_micro_hkd = (i * 9_973 % 100_003) as i64;
                r.subsidy_micro_hkd = r.list_micro_hkd * 7 / 10;
                r.charge_micro_hkd = r.list_micro_hkd - r.subsidy_micro_hkd;
                r
            })
            .collect()
    }

    #[test]
    fn totals_are_the_sums_of_the_records() {
        let recs = records();
        let t = build_report(&recs, &BTreeMap::new()).totals;
        assert_eq!(t.requests, recs.len() as u64);
        assert_eq!(
            t.prompt_tokens,
            recs.iter().map(|r| r.prompt_tokens).sum::<u64>()
        );
        assert_eq!(
            t.completion_tokens,
            recs.iter().map(|r| r.completion_tokens).sum::<u64>()
        );
        assert_eq!(
            t.device_seconds,
            recs.iter().map(|r| r.device_seconds).sum::<f64>()
        );
        assert_eq!(
            t.list_micro_hkd,
            recs.iter().map(|r| r.list_micro_hkd).sum::<i64>()
        );
        assert_eq!(
            t.subsidy_micro_hkd,
            recs.iter().map(|r| r.subsidy_micro_hkd).sum::<i64>()
        );
        assert_eq!(
            t.charge_micro_hkd,
            recs.iter().map(|r| r.charge_micro_hkd).sum::<i64>()
        );
        let ok = recs.iter().filter(|r| r.outcome == "ok").count() as u64;
        assert_eq!(t.count("ok"), ok);
    }

    #[test]
    fn rows_add_up_to_the_totals() {
        let report = build_report(&records(), &BTreeMap::new());
        let sum = |f: fn(&ReportRow) -> i64| report.rows.iter().map(f).sum::<i64>();
        assert_eq!(sum(|r| r.requests as i64), report.totals.requests as i64);
        assert_eq!(sum(|r| r.charge_micro_hkd), report.totals.charge_micro_hkd);
        assert_eq!(sum(|r| r.list_micro_hkd), report.totals.list_micro_hkd);
    }

    #[test]
    fn one_row_per_tenant_and_tier_in_order() {
        let report = build_report(&records(), &BTreeMap::new());
        let keys: Vec<(&str, &str)> = report
            .rows
            .iter()
            .map(|r| (r.tenant.as_str(), r.tier.as_str()))
            .collect();
        let want = [
            ("a", "aiss"),
            ("a", "commercial"),
            ("b", "aiss"),
            ("b", "commercial"),
            ("c", "aiss"),
            ("c", "commercial"),
        ];
        assert_eq!(keys, want);
    }

    #[test]
    fn budget_left_counts_all_tiers_of_the_tenant() {
        let mut recs = vec![
            sample("1", "a", 100),
            sample("2", "a", 50),
            sample("3", "b", 7),
        ];
        recs[1].tier = "commercial".into();
        let budgets = BTreeMap::from([("a".to_string(), Some(1000)), ("b".to_string(), None)]);
        let report = build_report(&recs, &budgets);
        let left: Vec<Option<i64>> = report
            .rows
            .iter()
            .map(|r| r.budget_left_micro_hkd)
            .collect();
        assert_eq!(left, [Some(850), Some(850), None]);
    }

    #[test]
    fn unknown_budget_shows_a_dash_in_the_table() {
        let report = build_report(&[sample("1", "a", 100)], &BTreeMap::new());
        let table = report.render(ReportFormat::Table);
        let row = table.lines().nth(1).unwrap();
        assert!(row.ends_with(" -"), "{table}");
    }

    #[test]
    fn hkd_is_exact_with_at_least_two_decimals() {
        assert_eq!(hkd(0), "0.00");
        assert_eq!(hkd(1_500_000), "1.50");
        assert_eq!(hkd(1_234_567), "1.234567");
        assert_eq!(hkd(10), "0.00001");
        assert_eq!(hkd(-2_500_000), "-2.50");
    }

    #[test]
    fn csv_has_one_column_per_header_and_quotes_commas() {
        let mut rec = sample("1", "acme, ltd", 100);
        rec.outcome = "something_new".into();
        let csv = build_report(&[rec], &BTreeMap::new()).render(ReportFormat::Csv);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert!(lines[1].starts_with("\"acme, ltd\",aiss,1,0,"), "{csv}");
        let columns = lines[0].split(',').count();
        assert_eq!(lines[2].split(',').count(), columns);
        assert!(
            lines[2].contains(",1,12,30,"),
            "other_outcomes counted: {csv}"
        );
    }

    #[test]
    fn json_keeps_exact_micro_amounts() {
        let report = build_report(&[sample("1", "a", 123_457)], &BTreeMap::new());
        let v: serde_json::Value =
            serde_json::from_str(&report.render(ReportFormat::Json)).unwrap();
        assert_eq!(v["totals"]["charge_micro_hkd"], 123_457);
        assert_eq!(v["rows"][0]["outcomes"]["ok"], 1);
    }
}
