//! How a request ended: the one table that says, for each ending, the ledger's value (also
//! the metrics' `outcome` label), the HTTP status class it is counted under, and the words of
//! the access line. Errors of the infer layer and statuses of requests no meter saw map onto
//! it here and nowhere else.

use crate::infer::InferError;

/// How a request ended. The ledger stores it as its string, so the set can grow without a
/// migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    RateLimited,
    OverBudget,
    Overloaded,
    Timeout,
    /// The client went away; billed for what it got.
    Cancelled,
    /// Cut at the end of shutdown's grace period; billed for what it got.
    Interrupted,
    Error,
    Invalid,
    /// No or a wrong key: never reaches a meter, counted by the gate.
    Unauthorized,
}

/// Each outcome's ledger value and metric label, status class and access-line words.
const TABLE: [(Outcome, &str, &str, &str); 10] = [
    (Outcome::Ok, "ok", "2xx", "answered"),
    (
        Outcome::RateLimited,
        "rate_limited",
        "4xx",
        "refused: over a rate limit",
    ),
    (
        Outcome::OverBudget,
        "over_budget",
        "4xx",
        "refused: monthly budget spent",
    ),
    (
        Outcome::Overloaded,
        "overloaded",
        "5xx",
        "refused: no capacity now",
    ),
    (
        Outcome::Timeout,
        "timeout",
        "5xx",
        "ran past its time limit",
    ),
    // The client closed the connection; the response it was getting had begun as a 200.
    (
        Outcome::Cancelled,
        "cancelled",
        "2xx",
        "cancelled by the client",
    ),
    (
        Outcome::Interrupted,
        "interrupted",
        "5xx",
        "cut short by shutdown",
    ),
    (Outcome::Error, "error", "5xx", "failed in the model"),
    (
        Outcome::Invalid,
        "invalid",
        "4xx",
        "refused: invalid request",
    ),
    (
        Outcome::Unauthorized,
        "unauthorized",
        "4xx",
        "refused: no valid key",
    ),
];

impl Outcome {
    pub const ALL: [Outcome; 10] = {
        let mut all = [Outcome::Ok; 10];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static (Outcome, &'static str, &'static str, &'static str) {
        // TABLE lists every variant in declaration order.
        &TABLE[self as usize]
    }

    /// The ledger's value and the metrics' `outcome` label.
    pub fn as_str(self) -> &'static str {
        self.row().1
    }

    /// The HTTP status class the request is counted under.
    pub fn status_class(self) -> &'static str {
        self.row().2
    }

    /// What the access line says happened.
    pub fn log_text(self) -> &'static str {
        self.row().3
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// A request that ended with `error` from the infer layer.
    pub fn of_error(error: &InferError) -> Outcome {
        match error {
            InferError::Overloaded { .. }
            | InferError::QueueTimeout { .. }
            | InferError::NotReady(_)
            | InferError::ShuttingDown => Outcome::Overloaded,
            InferError::Interrupted => Outcome::Interrupted,
            InferError::RequestTimeout(_) => Outcome::Timeout,
            InferError::Backend(_) => Outcome::Error,
            InferError::UnknownModel(_)
            | InferError::NoReplicas { .. }
            | InferError::WrongKind { .. }
            | InferError::ContextLength { .. }
            | InferError::Invalid { .. } => Outcome::Invalid,
        }
    }

    /// A request answered `status` before any meter saw it (key, flood guard, bad JSON).
    pub fn of_status(status: u16) -> Outcome {
        match status {
            401 => Outcome::Unauthorized,
            429 => Outcome::RateLimited,
            503 => Outcome::Overloaded,
            504 => Outcome::Timeout,
            s if s >= 500 => Outcome::Error,
            s if s >= 400 => Outcome::Invalid,
            _ => Outcome::Ok,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_outcome_in_declaration_order() {
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(o as usize, i, "{o:?}");
        }
    }

    #[test]
    fn outcome_strings_parse_back_and_are_distinct() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::parse("OK"), None);
    }

    #[test]
    fn a_request_cut_by_shutdown_is_interrupted_and_a_refused_one_overloaded() {
        assert_eq!(
            Outcome::of_error(&InferError::Interrupted),
            Outcome::Interrupted
        );
        assert_eq!(
            Outcome::of_error(&InferError::ShuttingDown),
            Outcome::Overloaded
        );
        assert_eq!(Outcome::Interrupted.status_class(), "5xx");
    }

    #[test]
    fn statuses_no_meter_saw_map_to_their_outcome() {
        assert_eq!(Outcome::of_status(401), Outcome::Unauthorized);
        assert_eq!(Outcome::of_status(413), Outcome::Invalid);
        assert_eq!(Outcome::of_status(503), Outcome::Overloaded);
        assert_eq!(Outcome::of_status(200), Outcome::Ok);
    }
}
