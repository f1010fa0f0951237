//! The grid of server knobs a sweep walks, and the gateway config of each point. Model knobs
//! live in `[[models]]` array entries, which environment variables cannot address, so each
//! point gets its own copy of the base config with that model's block edited.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Name of the `[[models]]` block the knobs apply to (default: the scenario's model).
    pub model: Option<String>,
    /// Knob name to the values to try; every combination is one point.
    pub knobs: BTreeMap<String, Vec<Value>>,
}

/// One grid point: a value for every knob, in knob-name order.
pub type Point = Vec<(String, Value)>;

impl Grid {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let grid: Grid = toml::from_str(text).map_err(|e| e.to_string())?;
        if grid.knobs.is_empty() || grid.knobs.values().any(Vec::is_empty) {
            return Err("[knobs] needs at least one knob, each with at least one value".into());
        }
        Ok(grid)
    }

    /// Every combination of knob values (the cartesian product), the last knob varying fastest.
    pub fn points(&self) -> Vec<Point> {
        let mut points: Vec<Point> = vec![Vec::new()];
        for (name, values) in &self.knobs {
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.push((name.clone(), v.clone()));
                        q
                    })
                })
                .collect();
        }
        points
    }
}

/// `8` for integers, `q8_0` for strings (no quotes), TOML text for anything else.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The point as row labels: `[("max_batch_size", "8")]`.
pub fn labels(point: &Point) -> Vec<(String, String)> {
    point
        .iter()
        .map(|(k, v)| (k.clone(), value_text(v)))
        .collect()
}

/// The base config with the point's knobs set in the `[[models]]` entry named `model`.
/// Comments are lost; every other key keeps its value.
pub fn config_for(base: &str, model: &str, point: &Point) -> Result<String, String> {
    let mut config: toml::Table = toml::from_str(base).map_err(|e| format!("base config: {e}"))?;
    let models = config
        .get_mut("models")
        .and_then(Value::as_array_mut)
        .ok_or("base config has no [[models]]")?;
    let block = models
        .iter_mut()
        .filter_map(Value::as_table_mut)
        .find(|t| t.get("name").and_then(Value::as_str) == Some(model))
        .ok_or_else(|| format!("base config has no [[models]] block named {model:?}"))?;
    for (knob, value) in point {
        block.insert(knob.clone(), value.clone());
    }
    toml::to_string(&config).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = include_str!("../../config/tiergate.toml");

    #[test]
    fn shipped_grid_sweeps_max_batch_size() {
        let grid = Grid::from_toml(include_str!("../scenarios/sweep-grid.toml")).unwrap();
        let sizes: Vec<String> = grid.points().iter().map(|p| value_text(&p[0].1)).collect();
        assert_eq!(sizes, ["1", "2", "4", "8"]);
    }

    #[test]
    fn points_are_the_cartesian_product() {
        let grid =
            Grid::from_toml("[knobs]\nmax_batch_size = [1, 8]\ndtype = [\"q8_0\", \"native\"]\n")
                .unwrap();
        let points: Vec<Vec<(String, String)>> = grid.points().iter().map(labels).collect();
        assert_eq!(points.len(), 4);
        assert_eq!(
            points[1],
            [
                ("dtype".to_string(), "q8_0".to_string()),
                ("max_batch_size".into(), "8".into())
            ]
        );
    }

    #[test]
    fn empty_grids_are_refused() {
        assert!(Grid::from_toml("[knobs]\n").is_err());
        assert!(Grid::from_toml("[knobs]\nmax_batch_size = []\n").is_err());
    }

    #[test]
    fn config_for_edits_only_the_named_model_block() {
        let point = vec![("max_batch_size".to_string(), Value::Integer(8))];
        let text = config_for(BASE, "smollm2-135m-instruct", &point).unwrap();
        let config: toml::Table = toml::from_str(&text).unwrap();
        let base: toml::Table = toml::from_str(BASE).unwrap();
        let models = config["models"].as_array().unwrap();
        let base_models = base["models"].as_array().unwrap();
        let named = models
            .iter()
            .position(|m| m["name"].as_str() == Some("smollm2-135m-instruct"))
            .expect("the model block");
        assert_eq!(models[named]["max_batch_size"].as_integer(), Some(8));
        // The other models and the rest of the config are untouched.
        for (i, (m, b)) in models.iter().zip(base_models).enumerate() {
            if i != named {
                assert_eq!(m, b);
            }
        }
        assert_eq!(config["limits"], base["limits"]);
        assert_eq!(models[named]["replicas"], base_models[named]["replicas"]);
    }

    #[test]
    fn config_for_names_a_missing_model() {
        let err = config_for(BASE, "nope", &Vec::new()).unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }
}
