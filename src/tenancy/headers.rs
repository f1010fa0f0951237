//! OpenAI's rate-limit headers, set on every authenticated response, and the retry headers of
//! a 429. Resets are Go-style durations (`1ms`, `8.64s`, `6m0s`), the format OpenAI sends.

use super::RateStatus;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

/// A duration as Go's `time.Duration.String()` writes it, at millisecond precision (rounded
/// up, so a client that waits that long finds the bucket refilled).
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut secs = s.to_string();
    if frac > 0 {
        let digits = format!("{frac:03}");
        secs = format!("{s}.{}", digits.trim_end_matches('0'));
    }
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

fn put(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// The six `x-ratelimit-*` headers.
pub fn insert_status(headers: &mut HeaderMap, s: &RateStatus) {
    put(
        headers,
        "x-ratelimit-limit-requests",
        s.limit_requests.to_string(),
    );
    put(
        headers,
        "x-ratelimit-limit-tokens",
        s.limit_tokens.to_string(),
    );
    put(
        headers,
        "x-ratelimit-remaining-requests",
        s.remaining_requests.to_string(),
    );
    put(
        headers,
        "x-ratelimit-remaining-tokens",
        s.remaining_tokens.to_string(),
    );
    put(
        headers,
        "x-ratelimit-reset-requests",
        go_duration(s.reset_requests),
    );
    put(
        headers,
        "x-ratelimit-reset-tokens",
        go_duration(s.reset_tokens),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_go_does() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_micros(1)), "1ms");
        assert_eq!(go_duration(ms(999)), "999ms");
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(8640)), "8.64s");
        assert_eq!(go_duration(ms(72_000)), "1m12s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(3_723_500)), "1h2m3.5s");
    }

    #[test]
    fn status_fills_all_six_headers() {
        let mut h = HeaderMap::new();
        let s = RateStatus {
            limit_requests: 60,
            remaining_requests: 59,
            reset_requests: Duration::from_secs(1),
            limit_tokens: 1000,
            remaining_tokens: 900,
            reset_tokens: Duration::from_millis(6000),
        };
        insert_status(&mut h, &s);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "59");
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
        assert_eq!(h["x-ratelimit-limit-tokens"], "1000");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "900");
        assert_eq!(h["x-ratelimit-reset-tokens"], "6s");
    }
}
