//! Cost curves: deliveries/s as subscribers grow and as message size grows, for every system, as a
//! Markdown table and PNG charts.

use std::path::Path;

use anyhow::Context;
use indicatif::ProgressBar;
use plotters::prelude::*;

use crate::system::System;
use crate::throughput::{self, Workload};
use crate::{Measured, Routing};

/// Subscriber counts of the first curve (fanout, 128-byte payloads).
pub const SUBSCRIBERS: [usize; 5] = [1, 4, 16, 64, 256];
/// Payload sizes of the second curve (1 -> 1).
pub const SIZES: [usize; 7] = [16, 128, 512, 1024, 4096, 16384, 65536];

/// One point of a curve.
pub struct Point {
    /// The x value (subscribers or bytes).
    pub x: usize,
    /// The system's label.
    pub system: String,
    /// What was measured.
    pub measured: Measured,
}

/// Runs both sweeps against every system; `scale` shrinks the message counts (1.0: full).
///
/// # Errors
/// Connection failures.
pub async fn run(
    systems: &[System],
    scale: f64,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<Point>, Vec<Point>)> {
    let label = |s: &System| format!("{} ({})", s.kind, s.transport);
    let mut by_subscribers = Vec::new();
    for subscribers in SUBSCRIBERS {
        let count =
            ((4_000_000 / subscribers as u64).clamp(20_000, 1_000_000) as f64 * scale).max(1000.0) as u64;
        for system in systems {
            let w = Workload {
                publishers: 1,
                subscribers,
                routing: Routing::Fanout,
                size: 128,
                count,
                duration_s: None,
            };
            progress.set_prefix(format!("{} subs={subscribers}", system.kind));
            let measured = throughput::run(system, &w, progress).await?;
            by_subscribers.push(Point {
                x: subscribers,
                system: label(system),
                measured,
            });
        }
    }
    let mut by_size = Vec::new();
    for size in SIZES {
        let count = ((512_000_000 / size as u64).clamp(10_000, 1_000_000) as f64 * scale).max(1000.0) as u64;
        for system in systems {
            let w = Workload {
                publishers: 1,
                subscribers: 1,
                routing: Routing::Fanout,
                size,
                count,
                duration_s: None,
            };
            progress.set_prefix(format!("{} size={size}", system.kind));
            let measured = throughput::run(system, &w, progress).await?;
            by_size.push(Point {
                x: size,
                system: label(system),
                measured,
            });
        }
    }
    Ok((by_subscribers, by_size))
}

/// The two curves as Markdown tables.
pub fn markdown(by_subscribers: &[Point], by_size: &[Point]) -> String {
    let mut out = String::new();
    let systems: Vec<String> = {
        let mut v: Vec<String> = by_subscribers.iter().map(|p| p.system.clone()).collect();
        v.dedup();
        v.sort();
        v.dedup();
        v
    };
    let table =
        |out: &mut String, title: &str, xs: &[usize], points: &[Point], value: &dyn Fn(&Measured) -> f64| {
            out.push_str(&format!("\n{title}\n\n| x |"));
            for s in &systems {
                out.push_str(&format!(" {s} |"));
            }
            out.push_str(" ratio |\n|---:|");
            for _ in &systems {
                out.push_str("---:|");
            }
            out.push_str("---:|\n");
            for x in xs {
                out.push_str(&format!("| {x} |"));
                let values: Vec<f64> = systems
                    .iter()
                    .map(|s| {
                        points
                            .iter()
                            .find(|p| p.x == *x && &p.system == s)
                            .map_or(0.0, |p| value(&p.measured))
                    })
                    .collect();
                for v in &values {
                    out.push_str(&format!(" {:.3} M |", v / 1e6));
                }
                let ratio = match (values.first(), values.last()) {
                    (Some(a), Some(b)) if values.len() > 1 && *b > 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                };
                out.push_str(&format!(" {ratio} |\n"));
            }
        };
    table(
        &mut out,
        "Deliveries/s by subscriber count (fanout, 128 B):",
        &SUBSCRIBERS,
        by_subscribers,
        &|m| m.delivered_msgs_per_s,
    );
    table(
        &mut out,
        "Deliveries/s by payload size (1 -> 1):",
        &SIZES,
        by_size,
        &|m| m.delivered_msgs_per_s,
    );
    out.push_str(&format!(
        "\n(ratio: {} / {})\n",
        systems.first().map_or("", |s| s),
        systems.last().map_or("", |s| s)
    ));
    out
}

/// Draws a curve (log-log) to a PNG file.
///
/// # Errors
/// No font found, or the file cannot be written.
pub fn chart(path: &Path, title: &str, x_label: &str, points: &[Point]) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = points.iter().map(|p| p.x).max().unwrap_or(1) as f64;
    let x_min = points.iter().map(|p| p.x).min().unwrap_or(1) as f64;
    let y_max = points
        .iter()
        .map(|p| p.measured.delivered_msgs_per_s)
        .fold(1.0, f64::max)
        * 1.5;
    let y_min = points
        .iter()
        .map(|p| p.measured.delivered_msgs_per_s)
        .fold(f64::MAX, f64::min)
        .max(1.0)
        / 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((x_min..x_max).log_scale(), (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("deliveries per second")
        .y_label_formatter(&|v| format!("{:.2} M", v / 1e6))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let mut systems: Vec<&str> = points.iter().map(|p| p.system.as_str()).collect();
    systems.sort_unstable();
    systems.dedup();
    for (i, system) in systems.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let series: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.system == *system)
            .map(|p| (p.x as f64, p.measured.delivered_msgs_per_s.max(1.0)))
            .collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(3)))?
            .label(*system)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(
            series
                .into_iter()
                .map(|(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present().context("writing the chart")?;
    Ok(())
}

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *REGISTERED.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
        ];
        candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    }) {
        Ok(())
    } else {
        anyhow::bail!("no DejaVuSans.ttf found for chart text (Debian package fonts-dejavu-core)")
    }
}
