//! The loss curve of a run as a PNG (`plotters`, DejaVu Sans embedded, no system fonts):
//! training loss per step (faint) with its running mean, and held-out loss at each eval.
//! Drawing needs the `plot` feature; without it [`loss_png`] is an error naming it.

use std::path::Path;

#[cfg(feature = "plot")]
use plotters::prelude::*;

use crate::metrics::{read, Record};
use crate::{Error, Result};

#[cfg(feature = "plot")]
const FONT: &str = "sans-serif";

/// Reads `<run>/metrics.jsonl` and writes the curve to `out` (atomically). Returns how many
/// train and eval points were drawn.
pub fn loss_png(run: &Path, out: &Path) -> Result<(usize, usize)> {
    if !cfg!(feature = "plot") {
        return Err(Error::Input(format!(
            "cannot draw {}: plots need llama3-train built with its `plot` cargo feature",
            out.display()
        )));
    }
    let metrics = run.join("metrics.jsonl");
    if !metrics.is_file() {
        return Err(Error::format(run, "not a training run: no metrics.jsonl"));
    }
    let records = read(&metrics)?;
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Train(s) if s.loss.is_finite() => Some((s.step as f64, s.loss)),
            _ => None,
        })
        .collect();
    let eval: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Eval(e) if e.loss.is_finite() => Some((e.step as f64, e.loss)),
            _ => None,
        })
        .collect();
    if train.is_empty() && eval.is_empty() {
        return Err(Error::format(&metrics, "no loss to plot"));
    }
    llama3::weights::atomic::write_path_with(out, |tmp| draw(&train, &eval, tmp, out))?;
    Ok((train.len(), eval.len()))
}

#[cfg(not(feature = "plot"))]
fn draw(_: &[(f64, f64)], _: &[(f64, f64)], _: &Path, out: &Path) -> Result<()> {
    Err(Error::format(out, "built without the `plot` feature"))
}

/// Draws to `tmp` (renamed to `out` when done).
#[cfg(feature = "plot")]
fn draw(train: &[(f64, f64)], eval: &[(f64, f64)], tmp: &Path, out: &Path) -> Result<()> {
    draw_to(train, eval, tmp).map_err(|e| Error::format(out, format!("cannot draw: {e}")))
}

/// Mean of the last `w` points at each point.
#[cfg(feature = "plot")]
fn running_mean(points: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= w {
                sum -= points[i - w].1;
            }
            (x, sum / (i + 1).min(w) as f64)
        })
        .collect()
}

#[cfg(feature = "plot")]
fn draw_to(
    train: &[(f64, f64)],
    eval: &[(f64, f64)],
    out: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    // Registering twice is harmless; the font is compiled in.
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded font does not load")?;
    let all = train.iter().chain(eval);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let root = BitMapBackend::new(out, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", (FONT, 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .label_style((FONT, 14))
        .draw()?;
    if !train.is_empty() {
        let faint = RGBColor(120, 160, 220);
        chart.draw_series(LineSeries::new(
            train.iter().copied(),
            faint.stroke_width(1),
        ))?;
        let w = (train.len() / 50).max(1);
        chart
            .draw_series(LineSeries::new(
                running_mean(train, w),
                BLUE.stroke_width(2),
            ))?
            .label(format!("train (mean of {w})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))?
            .label("held-out")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart.draw_series(eval.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "plot"))]
    #[test]
    fn without_the_feature_a_plot_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("loss.png");
        let err = loss_png(dir.path(), &out).unwrap_err().to_string();
        assert!(err.contains("`plot` cargo feature"), "{err}");
        assert!(!out.exists());
    }

    #[cfg(feature = "plot")]
    #[test]
    fn running_mean_window() {
        let p = [(1.0, 4.0), (2.0, 2.0), (3.0, 0.0)];
        assert_eq!(
            running_mean(&p, 2),
            vec![(1.0, 4.0), (2.0, 3.0), (3.0, 1.0)]
        );
    }

    #[cfg(feature = "plot")]
    #[test]
    fn writes_a_png_and_refuses_empty_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let lines = [
            r#"{"kind":"eval","step":0,"loss":5.0,"ppl":148.4}"#,
            r#"{"kind":"train","step":1,"loss":5.1,"lr":0.001,"grad_norm":1.0,"tokens":64,"tokens_per_s":10.0}"#,
            r#"{"kind":"train","step":2,"loss":4.2,"lr":0.001,"grad_norm":1.0,"tokens":64,"tokens_per_s":10.0}"#,
            r#"{"kind":"eval","step":2,"loss":4.5,"ppl":90.0}"#,
        ];
        std::fs::write(run.join("metrics.jsonl"), lines.join("\n")).unwrap();
        let out = run.join("loss.png");
        assert_eq!(loss_png(run, &out).unwrap(), (2, 2));
        let png = std::fs::read(&out).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // 960 x 600, as drawn.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 960);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 600);
        std::fs::write(run.join("metrics.jsonl"), "").unwrap();
        assert!(loss_png(run, &out).is_err());
    }
}
