//! Scheduling classes of tiers. Every model's fair queue knows a tier only as a class index
//! and only ever adds classes, so the index must mean the same tier for the life of the
//! process: were it the tier's position among the sorted names, a reload that adds or removes
//! a tier would hand requests already waiting in one class another tier's weight.

use super::directory::Tier;
use std::collections::BTreeMap;

/// Tier name and weight of each class, indexed by class id. A tier keeps the id it was given
/// when first seen; a tier that is removed keeps its id reserved with its last weight (its
/// requests may still be waiting in that class), and gets the same id back if it returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierClasses {
    names: Vec<String>,
    weights: Vec<f64>,
}

impl TierClasses {
    /// Records the weight of every tier of `tiers`; tiers seen for the first time get the
    /// next free ids, in name order (so a first load numbers the tiers as they sort).
    pub fn assign(&mut self, tiers: &BTreeMap<String, Tier>) {
        for (name, tier) in tiers {
            match self.class_of(name) {
                Some(class) => self.weights[class] = tier.weight,
                None => {
                    self.names.push(name.clone());
                    self.weights.push(tier.weight);
                }
            }
        }
    }

    /// The class id of `tier`, if it was ever assigned one.
    pub fn class_of(&self, tier: &str) -> Option<usize> {
        // A handful of tiers: a scan is cheaper than keeping a second map in step.
        self.names.iter().position(|n| n == tier)
    }

    /// Tier names by class id, removed tiers included.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Weights by class id, the fair queue's `set_weights` argument.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(weight: f64) -> Tier {
        Tier {
            requests_per_minute: 1,
            tokens_per_minute: 1,
            burst_requests: 0,
            burst_tokens: 0,
            max_concurrent: 1,
            weight,
            subsidy_rate: 0.0,
            monthly_budget_hkd: None,
            models: Vec::new(),
            dedicated: false,
            prefix_cache: Default::default(),
        }
    }

    fn tiers(list: &[(&str, f64)]) -> BTreeMap<String, Tier> {
        list.iter()
            .map(|&(n, w)| (n.to_string(), tier(w)))
            .collect()
    }

    #[test]
    fn a_first_assignment_numbers_tiers_in_name_order() {
        let mut c = TierClasses::default();
        c.assign(&tiers(&[("silver", 1.0), ("gold", 3.0)]));
        assert_eq!(c.names(), ["gold", "silver"]);
        assert_eq!(c.weights(), [3.0, 1.0]);
    }

    #[test]
    fn a_new_tier_gets_the_next_id_even_when_it_sorts_first() {
        let mut c = TierClasses::default();
        c.assign(&tiers(&[("gold", 3.0), ("silver", 1.0)]));
        c.assign(&tiers(&[("bronze", 0.5), ("gold", 3.0), ("silver", 1.0)]));
        assert_eq!(c.class_of("gold"), Some(0));
        assert_eq!(c.class_of("silver"), Some(1));
        assert_eq!(c.class_of("bronze"), Some(2));
        assert_eq!(c.weights(), [3.0, 1.0, 0.5]);
    }

    #[test]
    fn a_removed_tier_keeps_its_id_and_last_weight_and_gets_it_back() {
        let mut c = TierClasses::default();
        c.assign(&tiers(&[("gold", 3.0), ("silver", 1.0)]));
        c.assign(&tiers(&[("silver", 1.0), ("tin", 0.5)]));
        assert_eq!(c.names(), ["gold", "silver", "tin"]);
        assert_eq!(
            c.weights(),
            [3.0, 1.0, 0.5],
            "gold's waiting requests keep weight 3"
        );
        c.assign(&tiers(&[("gold", 4.0), ("silver", 1.0), ("tin", 0.5)]));
        assert_eq!(c.class_of("gold"), Some(0));
        assert_eq!(c.weights(), [4.0, 1.0, 0.5]);
    }

    #[test]
    fn a_changed_weight_follows_its_tier_not_its_position() {
        let mut c = TierClasses::default();
        c.assign(&tiers(&[("gold", 3.0), ("silver", 1.0)]));
        c.assign(&tiers(&[
            ("aluminium", 7.0),
            ("gold", 3.0),
            ("silver", 2.0),
        ]));
        assert_eq!(c.weights(), [3.0, 2.0, 7.0]);
    }
}
