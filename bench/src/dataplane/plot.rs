//! SVG plots of a run (plotters, SVG backend; the text is left to the
//! viewer's fonts): per workload the 1-flow median of every path against
//! N, and the programming times against N on a log scale.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::{Key, Options, Programmer, Results, Workload, report};

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing: {e}")
}

fn file_name(workload: Workload) -> &'static str {
    match workload {
        Workload::TcpRr => "dataplane-tcp-rr.svg",
        Workload::TcpCrr => "dataplane-tcp-crr.svg",
        Workload::TcpStream => "dataplane-tcp-stream.svg",
        Workload::UdpRr => "dataplane-udp-rr.svg",
    }
}

fn unit(workload: Workload) -> &'static str {
    match workload {
        Workload::TcpRr | Workload::UdpRr => "transactions/s",
        Workload::TcpCrr => "connections/s",
        Workload::TcpStream => "Gbit/s",
    }
}

/// Writes the plots into `dir`; returns the files written.
pub fn write_plots(dir: &Path, options: &Options, results: &Results) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let scales = &options.scales;
    let flows = options.flows.first().copied().unwrap_or(1);
    let x_max = scales.len().saturating_sub(1) as f64 + 0.3;
    let scale_label = |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() > 0.01 || i < 0.0 {
            return String::new();
        }
        scales
            .get(i as usize)
            .map_or(String::new(), |n| format!("N = {n}"))
    };
    for &workload in &options.workloads {
        let lines: Vec<(String, Vec<(f64, f64)>)> = options
            .paths
            .iter()
            .map(|&path| {
                let points = scales
                    .iter()
                    .enumerate()
                    .filter_map(|(j, &scale)| {
                        let key = Key {
                            scale,
                            workload,
                            path,
                            flows,
                        };
                        report::summary(results, &key).map(|s| (j as f64, s.median))
                    })
                    .collect();
                (path.label().to_owned(), points)
            })
            .collect();
        let y_max = highest(&lines);
        if y_max <= 0.0 {
            continue;
        }
        let file = dir.join(file_name(workload));
        let chart = Chart {
            file: &file,
            caption: format!(
                "{}, {flows} flow{}, median of {} rep(s){}",
                workload.label(),
                if flows == 1 { "" } else { "s" },
                options.reps,
                if options.quick { " (quick run)" } else { "" }
            ),
            y_desc: unit(workload),
            legend: SeriesLabelPosition::LowerLeft,
            x_max,
            x_labels: scales.len().max(2),
            x_label: &scale_label,
            lines: &lines,
        };
        chart.draw(0f64..y_max * 1.15)?;
        written.push(file);
    }

    // Programming times, log scale.
    let lines: Vec<(String, Vec<(f64, f64)>)> = Programmer::ALL
        .iter()
        .map(|&p| (p, p.label()))
        .flat_map(|(p, name)| {
            [
                (format!("{name}, from scratch"), &results.program_full),
                (format!("{name}, one endpoint"), &results.program_update),
            ]
            .into_iter()
            .map(move |(label, map)| {
                let points = scales
                    .iter()
                    .enumerate()
                    .filter_map(|(j, &scale)| {
                        let d = map.get(&(scale, p))?;
                        let ms: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
                        Some((j as f64, crate::report::Summary::of(ms).median.max(0.01)))
                    })
                    .collect();
                (label, points)
            })
        })
        .collect();
    let y_max = highest(&lines);
    if y_max > 0.0 {
        let file = dir.join("dataplane-programming.svg");
        let chart = Chart {
            file: &file,
            caption: format!(
                "Programming N Services × 10 endpoints (ms, log){}",
                if options.quick { " (quick run)" } else { "" }
            ),
            y_desc: "ms",
            legend: SeriesLabelPosition::UpperLeft,
            x_max,
            x_labels: scales.len().max(2),
            x_label: &scale_label,
            lines: &lines,
        };
        chart.draw((0.01f64..y_max * 3.0).log_scale())?;
        written.push(file);
    }
    Ok(written)
}

/// The largest y of any point (0 when there are none).
fn highest(lines: &[(String, Vec<(f64, f64)>)]) -> f64 {
    lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max)
}

/// One chart: a line with dots per series against the scales on x.
struct Chart<'a> {
    file: &'a Path,
    caption: String,
    y_desc: &'a str,
    legend: SeriesLabelPosition,
    x_max: f64,
    x_labels: usize,
    x_label: &'a dyn Fn(&f64) -> String,
    lines: &'a [(String, Vec<(f64, f64)>)],
}

impl Chart<'_> {
    /// Draws the chart over the y axis `y` (linear or log).
    fn draw<Y>(self, y: Y) -> Result<()>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let root = SVGBackend::new(self.file, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.3f64..self.x_max, y)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(self.x_labels)
            .x_label_formatter(self.x_label)
            .y_desc(self.y_desc)
            .disable_x_mesh()
            .draw()
            .map_err(err)?;
        for (i, (label, points)) in self.lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(self.legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    }
}
