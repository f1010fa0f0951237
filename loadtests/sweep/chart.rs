//! The sweep's chart: aggregate output tokens/s (x) against p95 inter-token latency (y), one
//! line per knob setting through its load levels, each point labelled with its load. Up and
//! to the right is more throughput bought with worse latency; an operator picks the knee.

use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

/// One line of the chart: a knob setting and its points `(tok/s, p95 ITL ms, load label)`.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64, String)>,
}

/// Colours that stay apart on white and for the common colour-vision deficiencies
/// (Okabe–Ito), cycled when there are more series.
const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(0, 0, 0),
];

/// Axis end: the largest value plus headroom for the point labels; 1 for an empty axis.
fn axis_end(values: impl Iterator<Item = f64>, headroom: f64) -> f64 {
    let max = values.filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
    if max > 0.0 {
        max * headroom
    } else {
        1.0
    }
}

/// The throughput axis fits the data instead of starting at 0: the settings of one server
/// usually differ by tens of percent, and from 0 their points would crowd into one corner.
/// Its span is at least a fifth of the largest value so that noise does not look like a
/// difference; it never goes below 0.
fn x_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let finite: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(0.0_f64, f64::max);
    if finite.is_empty() || hi <= 0.0 {
        return 0.0..1.0;
    }
    let widen = (hi * 0.2 - (hi - lo)).max(0.0) / 2.0;
    let (lo, hi) = (lo - widen, hi + widen);
    let span = hi - lo;
    (lo - 0.1 * span).max(0.0)..hi + 0.15 * span
}

/// Tick label decimals: none on an axis that reaches 20, one below that.
fn decimals(axis_end: f64) -> usize {
    if axis_end >= 20.0 {
        0
    } else {
        1
    }
}

/// Draws the chart as SVG at `path`; `target_ms` adds a horizontal line at the ITL target.
pub fn draw(
    path: &Path,
    title: &str,
    series: &[Series],
    target_ms: Option<f64>,
) -> Result<(), String> {
    draw_inner(path, title, series, target_ms).map_err(|e| format!("chart: {e}"))
}

fn draw_inner(
    path: &Path,
    title: &str,
    series: &[Series],
    target_ms: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x = x_range(all().map(|p| p.0));
    let y_end = axis_end(all().map(|p| p.1).chain(target_ms), 1.15);
    let root = SVGBackend::new(path, (1000, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x.clone(), 0.0..y_end)?;
    let (x_decimals, y_decimals) = (decimals(x.end), decimals(y_end));
    chart
        .configure_mesh()
        .x_label_formatter(&|v| format!("{v:.x_decimals$}"))
        .y_label_formatter(&|v| format!("{v:.y_decimals$}"))
        .x_desc("output tokens/s (all requests together)")
        .y_desc("inter-token latency p95 (ms)")
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    if let Some(t) = target_ms {
        let red = RGBColor(200, 0, 0);
        chart
            .draw_series(DashedLineSeries::new(
                [(x.start, t), (x.end, t)],
                8,
                6,
                red.stroke_width(1),
            ))?
            .label(format!("ITL p95 target {t} ms"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], red.stroke_width(1)));
    }
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // Settings often share a point (e.g. every batch size at c=1): alternate labels above
        // and below their points so that two series' labels do not print over each other.
        let label_at = if i % 2 == 0 { (6, -18) } else { (6, 6) };
        let line: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(line, colour.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(2)));
        chart.draw_series(s.points.iter().map(|(x, y, load)| {
            EmptyElement::at((*x, *y))
                + Circle::new((0, 0), 4, colour.filled())
                + Text::new(
                    load.clone(),
                    label_at,
                    ("sans-serif", 13).into_font().color(&colour),
                )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_end_leaves_headroom_and_survives_empty_or_nan_data() {
        assert!((axis_end([10.0, 20.0].into_iter(), 1.1) - 22.0).abs() < 1e-9);
        assert_eq!(axis_end(std::iter::empty(), 1.1), 1.0);
        assert_eq!(axis_end([f64::NAN].into_iter(), 1.1), 1.0);
    }

    #[test]
    fn x_range_fits_the_data_but_never_goes_below_zero() {
        let r = x_range([70.0, 80.0, 100.0].into_iter());
        assert!(r.start > 60.0 && r.start < 70.0 && r.end > 100.0, "{r:?}");
        // Close values still get a span of a fifth of the largest one.
        let r = x_range([99.0, 100.0].into_iter());
        assert!(r.end - r.start >= 20.0, "{r:?}");
        assert_eq!(x_range([1.0, 50.0].into_iter()).start, 0.0);
        assert_eq!(x_range(std::iter::empty()), 0.0..1.0);
    }

    #[test]
    fn draws_an_svg_with_every_series_and_point_label() {
        let path = std::env::temp_dir().join(format!("sweep-chart-{}.svg", std::process::id()));
        let series = vec![
            Series {
                label: "max_batch_size=1".into(),
                points: vec![(40.0, 25.0, "c=1".into()), (42.0, 26.0, "c=8".into())],
            },
            Series {
                label: "max_batch_size=8".into(),
                points: vec![(40.0, 25.0, "c=1".into()), (150.0, 60.0, "c=8".into())],
            },
        ];
        draw(&path, "chat-128", &series, Some(50.0)).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for text in [
            "max_batch_size=8",
            "c=8",
            "ITL p95 target 50 ms",
            "chat-128",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }
}
