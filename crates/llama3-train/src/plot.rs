//! The loss curve of a run as a PNG (`plotters`, DejaVu Sans embedded, no system fonts):
//! training loss per step (faint) with its running mean, held-out loss at each eval and, with
//! replay, the replayed data's held-out loss; or several runs' held-out curves on one plot.
//! Drawing needs the `plot` feature; without it [`loss_png`] is an error naming it.

use std::path::Path;

#[cfg(feature = "plot")]
use plotters::prelude::*;

use crate::metrics::{read, Record};
use crate::{Error, Result};

#[cfg(feature = "plot")]
const FONT: &str = "sans-serif";

/// A run's points: training loss per step, held-out loss and (continual learning) the
/// replayed data's held-out loss at each evaluation.
struct Curves {
    train: Vec<(f64, f64)>,
    eval: Vec<(f64, f64)>,
    replay: Vec<(f64, f64)>,
}

fn curves(run: &Path) -> Result<Curves> {
    let metrics = run.join("metrics.jsonl");
    if !metrics.is_file() {
        return Err(Error::format(run, "not a training run: no metrics.jsonl"));
    }
    let records = read(&metrics)?;
    let pick = |f: &dyn Fn(&Record) -> Option<(usize, f64)>| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(f)
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| (x as f64, y))
            .collect()
    };
    let c = Curves {
        train: pick(&|r| match r {
            Record::Train(s) => Some((s.step, s.loss)),
            _ => None,
        }),
        eval: pick(&|r| match r {
            Record::Eval(e) => Some((e.step, e.loss)),
            _ => None,
        }),
        replay: pick(&|r| match r {
            Record::Eval(e) => e.replay_loss.map(|l| (e.step, l)),
            _ => None,
        }),
    };
    if c.train.is_empty() && c.eval.is_empty() {
        return Err(Error::format(&metrics, "no loss to plot"));
    }
    Ok(c)
}

/// One line of a plot.
#[cfg_attr(not(feature = "plot"), allow(dead_code))]
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    /// Index into the palette.
    color: usize,
    /// Also drawn faint, unsmoothed, under the running mean (training loss).
    smoothed: bool,
    dashed: bool,
}

/// Reads `<run>/metrics.jsonl` and writes the curve to `out` (atomically): training loss
/// (faint, with its running mean), held-out loss, and the replayed data's held-out loss when
/// the run has one. Returns how many train and eval points were drawn.
pub fn loss_png(run: &Path, out: &Path) -> Result<(usize, usize)> {
    check_feature(out)?;
    let c = curves(run)?;
    let counts = (c.train.len(), c.eval.len());
    let mut series = Vec::new();
    let mut add = |label: &str, points: Vec<(f64, f64)>, color, smoothed, dashed| {
        if !points.is_empty() {
            let label = label.to_string();
            series.push(Series {
                label,
                points,
                color,
                smoothed,
                dashed,
            });
        }
    };
    add("train", c.train, 0, true, false);
    add("held-out", c.eval, 1, false, false);
    add("replayed data, held-out", c.replay, 2, false, true);
    let legend = Legend::UpperRight;
    llama3::weights::atomic::write_path_with(out, |tmp| draw(&series, legend, tmp, out))?;
    Ok(counts)
}

/// The held-out curves of several runs on one plot (each run's held-out loss, and its
/// replayed data's when it has one: forgetting with and without replay), labelled by the
/// runs' directory names. Returns how many curves were drawn.
pub fn compare_png(runs: &[std::path::PathBuf], out: &Path) -> Result<usize> {
    check_feature(out)?;
    let mut series = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let c = curves(run)?;
        let name = run.file_name().map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        if !c.eval.is_empty() {
            let label = format!("{name}: held-out");
            series.push(Series {
                label,
                points: c.eval,
                color: i,
                smoothed: false,
                dashed: false,
            });
        }
        if !c.replay.is_empty() {
            let label = format!("{name}: replayed data, held-out");
            series.push(Series {
                label,
                points: c.replay,
                color: i,
                smoothed: false,
                dashed: true,
            });
        }
    }
    if series.is_empty() {
        return Err(Error::Input(
            "no held-out loss in these runs to compare".into(),
        ));
    }
    // Held-out curves fall from the top, replayed data's lie low: the legend between them,
    // left, where the new task's curves are still high.
    let legend = Legend::MiddleLeft;
    llama3::weights::atomic::write_path_with(out, |tmp| draw(&series, legend, tmp, out))?;
    Ok(series.len())
}

fn check_feature(out: &Path) -> Result<()> {
    match cfg!(feature = "plot") {
        true => Ok(()),
        false => Err(Error::Input(format!(
            "cannot draw {}: plots need llama3-train built with its `plot` cargo feature",
            out.display()
        ))),
    }
}

/// Where the legend goes.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "plot"), allow(dead_code))]
enum Legend {
    UpperRight,
    MiddleLeft,
}

#[cfg(not(feature = "plot"))]
fn draw(_: &[Series], _: Legend, _: &Path, out: &Path) -> Result<()> {
    Err(Error::format(out, "built without the `plot` feature"))
}

/// Draws to `tmp` (renamed to `out` when done).
#[cfg(feature = "plot")]
fn draw(series: &[Series], legend: Legend, tmp: &Path, out: &Path) -> Result<()> {
    draw_to(series, legend, tmp).map_err(|e| Error::format(out, format!("cannot draw: {e}")))
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
const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 90, 200),
    RGBColor(210, 40, 40),
    RGBColor(30, 150, 60),
    RGBColor(150, 60, 170),
];

#[cfg(feature = "plot")]
fn draw_to(
    series: &[Series],
    legend: Legend,
    out: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    // Registering twice is harmless; the font is compiled in.
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded font does not load")?;
    let all = series.iter().flat_map(|s| s.points.iter());
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
    for s in series {
        let color = PALETTE[s.color % PALETTE.len()];
        let style = color.stroke_width(2);
        let (points, label) = match s.smoothed {
            true => {
                chart.draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.mix(0.35).stroke_width(1),
                ))?;
                let w = (s.points.len() / 50).max(1);
                (
                    running_mean(&s.points, w),
                    format!("{} (mean of {w})", s.label),
                )
            }
            false => (s.points.clone(), s.label.clone()),
        };
        match s.dashed {
            true => chart
                .draw_series(DashedLineSeries::new(points.iter().copied(), 8, 5, style))?
                .label(label)
                .legend(move |(x, y)| {
                    plotters::element::DashedPathElement::new(
                        vec![(x, y), (x + 24, y)],
                        6,
                        3,
                        style,
                    )
                }),
            false => chart
                .draw_series(LineSeries::new(points.iter().copied(), style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style)),
        };
        if !s.smoothed {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
    }
    let position = match legend {
        Legend::UpperRight => SeriesLabelPosition::UpperRight,
        Legend::MiddleLeft => SeriesLabelPosition::Coordinate(100, 230),
    };
    chart
        .configure_series_labels()
        .position(position)
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

    /// Several runs on one plot: each run's held-out curve and its replayed data's.
    #[cfg(feature = "plot")]
    #[test]
    fn compares_runs_with_their_replay_curves() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Vec::new();
        for (name, replay) in [("plain", None), ("replay", Some(3.1))] {
            let run = dir.path().join(name);
            std::fs::create_dir_all(&run).unwrap();
            let lines: Vec<String> = (0..3)
                .map(|i| {
                    let r = replay.map_or(String::new(), |r: f64| {
                        format!(r#","replay_loss":{}"#, r + i as f64 * 0.1)
                    });
                    format!(
                        r#"{{"kind":"eval","step":{},"loss":4.0,"ppl":54.6{r}}}"#,
                        i * 10
                    )
                })
                .collect();
            std::fs::write(run.join("metrics.jsonl"), lines.join("\n")).unwrap();
            runs.push(run);
        }
        let out = dir.path().join("compare.png");
        assert_eq!(compare_png(&runs, &out).unwrap(), 3);
        assert_eq!(&std::fs::read(&out).unwrap()[..4], b"\x89PNG");
        assert!(compare_png(&[dir.path().join("missing")], &out).is_err());
    }
}
