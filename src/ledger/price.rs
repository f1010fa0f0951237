//! List prices of a model and the split of a request's cost into subsidy and tenant charge.

use serde::{Deserialize, Serialize};

/// List price of one model, in HKD. Any mix of the three applies: token prices for
/// metered use, a device-second price for the compute a request actually took.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Price {
    /// HKD per 1000 prompt tokens.
    pub input_per_1k_hkd: f64,
    /// HKD per 1000 completion tokens.
    pub output_per_1k_hkd: f64,
    /// HKD per second of device time (the request's share of its batches).
    pub device_second_hkd: f64,
    /// HKD per 1000 prompt tokens served from the prefix cache (no prefill ran for them);
    /// unset: the same as `input_per_1k_hkd`, i.e. no discount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_per_1k_hkd: Option<f64>,
}

/// A request's cost in micro-HKD. `list == subsidy + charge` always.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CostSplit {
    pub list: i64,
    pub subsidy: i64,
    pub charge: i64,
}

const MICRO_PER_HKD: f64 = 1_000_000.0;

/// Prices a request and splits it. The list price is rounded to the nearest micro-HKD once;
/// the subsidy is rounded from it (halves away from zero, i.e. in the tenant's favour) and
/// the charge is the difference, so no rounding can make the parts disagree with the whole.
/// `subsidy_rate` is clamped to [0, 1]; a NaN counts as 0.
pub fn cost_split(
    price: &Price,
    prompt_tokens: u64,
    completion_tokens: u64,
    device_seconds: f64,
    subsidy_rate: f64,
) -> CostSplit {
    cost_split_cached(
        price,
        (prompt_tokens, 0),
        completion_tokens,
        device_seconds,
        subsidy_rate,
    )
}

/// `cost_split` where `cached` of the `prompt` tokens came from the prefix cache and are
/// priced at `cached_input_per_1k_hkd`.
pub fn cost_split_cached(
    price: &Price,
    (prompt_tokens, cached): (u64, u64),
    completion_tokens: u64,
    device_seconds: f64,
    subsidy_rate: f64,
) -> CostSplit {
    let per_token = MICRO_PER_HKD / 1000.0;
    let cached = cached.min(prompt_tokens);
    let cached_price = price
        .cached_input_per_1k_hkd
        .unwrap_or(price.input_per_1k_hkd);
    let tokens = (prompt_tokens - cached) as f64 * price.input_per_1k_hkd
        + cached as f64 * cached_price
        + completion_tokens as f64 * price.output_per_1k_hkd;
    let list = tokens * per_token + device_seconds * price.device_second_hkd * MICRO_PER_HKD;
    // `as` saturates and maps NaN to 0: a broken price cannot wrap around.
    let list = list.round() as i64;
    let rate = if subsidy_rate.is_nan() {
        0.0
    } else {
        subsidy_rate.clamp(0.0, 1.0)
    };
    let subsidy = (list as f64 * rate).round() as i64;
    CostSplit {
        list,
        subsidy,
        charge: list - subsidy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> Price {
        Price {
            input_per_1k_hkd: 0.5,
            output_per_1k_hkd: 1.5,
            device_second_hkd: 2.0,
            cached_input_per_1k_hkd: None,
        }
    }

    #[test]
    fn cached_prompt_tokens_take_the_cached_price() {
        let p = Price {
            cached_input_per_1k_hkd: Some(0.125),
            ..price()
        };
        // 600 x 0.5/1k + 400 x 0.125/1k = 0.3 + 0.05 HKD; no completion, no device time.
        let c = cost_split_cached(&p, (1000, 400), 0, 0.0, 0.0);
        assert_eq!(c.list, 350_000);
    }

    #[test]
    fn without_a_cached_price_cached_tokens_cost_the_input_price() {
        let c = cost_split_cached(&price(), (1000, 400), 0, 0.0, 0.0);
        assert_eq!(c, cost_split(&price(), 1000, 0, 0.0, 0.0));
    }

    #[test]
    fn list_price_adds_tokens_and_device_time() {
        // 1000 x 0.5/1k + 2000 x 1.5/1k + 0.25 s x 2.0/s = 0.5 + 3.0 + 0.5 = 4 HKD.
        let c = cost_split(&price(), 1000, 2000, 0.25, 0.0);
        assert_eq!(c.list, 4_000_000);
    }

    #[test]
    fn rate_zero_charges_the_tenant_everything() {
        let c = cost_split(&price(), 1000, 2000, 0.25, 0.0);
        assert_eq!((c.subsidy, c.charge), (0, 4_000_000));
    }

    #[test]
    fn rate_seventy_percent_splits_exactly() {
        let c = cost_split(&price(), 1000, 2000, 0.25, 0.7);
        assert_eq!(
            (c.list, c.subsidy, c.charge),
            (4_000_000, 2_800_000, 1_200_000)
        );
    }

    #[test]
    fn rate_ninety_percent_splits_exactly() {
        let c = cost_split(&price(), 1000, 2000, 0.25, 0.9);
        assert_eq!(
            (c.list, c.subsidy, c.charge),
            (4_000_000, 3_600_000, 400_000)
        );
    }

    #[test]
    fn list_price_rounds_to_the_nearest_micro_hkd() {
        let p = Price {
            input_per_1k_hkd: 0.0004,  // 0.4 µHKD per token
            output_per_1k_hkd: 0.0006, // 0.6 µHKD per token
            ..Price::default()
        };
        assert_eq!(cost_split(&p, 1, 0, 0.0, 0.0).list, 0);
        assert_eq!(cost_split(&p, 0, 1, 0.0, 0.0).list, 1);
        assert_eq!(cost_split(&p, 3, 0, 0.0, 0.0).list, 1); // 1.2
    }

    #[test]
    fn subsidy_half_rounds_in_the_tenants_favour() {
        let p = Price {
            input_per_1k_hkd: 0.005, // 5 µHKD per token
            ..Price::default()
        };
        let c = cost_split(&p, 1, 0, 0.0, 0.5); // subsidy 2.5 µHKD
        assert_eq!((c.list, c.subsidy, c.charge), (5, 3, 2));
    }

    #[test]
    fn parts_always_add_up_to_the_list_price() {
        for (tokens, rate) in [(7u64, 0.33), (12345, 0.7), (999_999, 0.9), (1, 0.5)] {
            let c = cost_split(&price(), tokens, tokens / 3, tokens as f64 / 7.0, rate);
            assert_eq!(c.subsidy + c.charge, c.list, "{tokens} {rate}");
        }
    }

    #[test]
    fn out_of_range_rates_are_clamped() {
        let c = cost_split(&price(), 1000, 0, 0.0, 1.5);
        assert_eq!((c.subsidy, c.charge), (500_000, 0));
        let c = cost_split(&price(), 1000, 0, 0.0, f64::NAN);
        assert_eq!((c.subsidy, c.charge), (0, 500_000));
    }

    #[test]
    fn unknown_price_key_is_rejected() {
        let err = toml::from_str::<Price>("input_per_1k = 1.0").unwrap_err();
        assert!(err.to_string().contains("input_per_1k"), "{err}");
    }
}
