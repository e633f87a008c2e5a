//! `pmbench sim plot`: PNGs from the JSON that `sim gossip --json` and
//! `sim balance --json` printed. Pure Rust (plotters' bitmap backend); the
//! text is drawn with a TrueType font read at run time (`--font`).

use anyhow::{Context, anyhow};
use clap::Args as ClapArgs;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(ClapArgs)]
pub struct Args {
    /// JSON of `pmbench sim gossip --json`.
    #[arg(long)]
    gossip: Option<PathBuf>,
    /// JSON of `pmbench sim balance --json`.
    #[arg(long)]
    balance: Option<PathBuf>,
    /// Where the PNGs go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// A TrueType font for the labels.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

const COLORS: [RGBColor; 4] = [
    RGBColor(200, 60, 40),
    RGBColor(30, 100, 200),
    RGBColor(120, 120, 120),
    RGBColor(40, 150, 60),
];

pub fn run(args: &Args) -> anyhow::Result<()> {
    let font = std::fs::read(&args.font)
        .with_context(|| format!("reading font {}", args.font.display()))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{} is not a usable TrueType font", args.font.display()))?;
    std::fs::create_dir_all(&args.out_dir)?;
    if let Some(g) = &args.gossip {
        let out = args.out_dir.join("sim_gossip_rounds.png");
        gossip(&read_json(g)?, &out)?;
        eprintln!("wrote {}", out.display());
    }
    if let Some(b) = &args.balance {
        let out = args.out_dir.join("sim_balance_step.png");
        balance(&read_json(b)?, &out)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// Rounds to 99% (and 50%) against cluster size, per policy, with 2·log2 N.
fn gossip(json: &Value, out: &Path) -> anyhow::Result<()> {
    let runs = json["runs"].as_array().context("no runs in gossip JSON")?;
    let sizes: Vec<f64> = runs.iter().filter_map(|r| r["nodes"].as_f64()).collect();
    let (lo, hi) = sizes
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), &n| (l.min(n), h.max(n)));
    anyhow::ensure!(hi > 0.0, "no cluster sizes in gossip JSON");
    let top = runs
        .iter()
        .filter_map(|r| r["target_rounds"].as_f64())
        .fold(10.0, f64::max)
        * 1.2;

    let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Gossip: rounds until a load change is known ({} other changes per round)",
                json["churn"]
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("nodes (N)")
        .y_desc("rounds")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(plot_err)?;
    let target: Vec<(f64, f64)> = sizes.iter().map(|&n| (n, 2.0 * n.log2())).collect();
    chart
        .draw_series(LineSeries::new(target, BLACK.stroke_width(1)))
        .map_err(plot_err)?
        .label("target 2·log2 N")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    for (i, policy) in ["mosix", "adaptive"].into_iter().enumerate() {
        let color = COLORS[i];
        for (field, label, filled) in [
            ("rounds_to_99pct", "99%", true),
            ("rounds_to_50pct", "50%", false),
        ] {
            let pts: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r["policy"] == policy)
                .filter_map(|r| Some((r["nodes"].as_f64()?, r[field].as_f64()?)))
                .collect();
            let style = if filled {
                color.stroke_width(3)
            } else {
                color.stroke_width(1)
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(plot_err)?
                .label(format!("{policy} {label}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(pts.iter().map(|&p| {
                    Circle::new(p, 4, if filled { color.filled() } else { color.into() })
                }))
                .map_err(plot_err)?;
        }
        // Sizes where 99% was not reached within the simulated rounds: a cross at the top.
        let missed: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r["policy"] == policy && r["rounds_to_99pct"].is_null())
            .filter_map(|r| Some((r["nodes"].as_f64()?, top * 0.97)))
            .collect();
        chart
            .draw_series(
                missed
                    .iter()
                    .map(|&p| Cross::new(p, 7, color.stroke_width(2))),
            )
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.draw(&Text::new(
        "x at the top: 99% not reached in the simulated rounds",
        (560, 540),
        ("sans-serif", 14),
    ))
    .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Step time over the lower bound and ranks moved, per phase and policy.
fn balance(json: &Value, out: &Path) -> anyhow::Result<()> {
    let phases = json["phases"]
        .as_array()
        .context("no phases in balance JSON")?;
    let names: Vec<String> = phases
        .iter()
        .map(|p| p["event"].as_str().unwrap_or("?").to_string())
        .collect();
    let n = phases.len() as f64;
    let series = |field: &str, policy: &str| -> Vec<(f64, f64)> {
        phases
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let o = p["policies"]
                    .as_array()?
                    .iter()
                    .find(|o| o["policy"] == policy)?;
                Some((i as f64, o[field].as_f64()?.max(1.0)))
            })
            .collect()
    };
    let policies = ["none", "count", "greedy", "pmrun"];
    let max_of = |field: &str| {
        policies
            .iter()
            .flat_map(|p| series(field, p))
            .map(|(_, y)| y)
            .fold(2.0, f64::max)
            * 1.5
    };

    let root = BitMapBackend::new(out, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let title = format!(
        "Balancing {} ranks on {} nodes (Zipf s={})",
        json["ranks"], json["nodes"], json["zipf_s"]
    );
    let root = root.titled(&title, ("sans-serif", 22)).map_err(plot_err)?;
    let panels = root.split_evenly((1, 2));
    for (panel, (field, ylabel)) in panels.iter().zip([
        ("step_over_lower_bound", "step time / lower bound (log)"),
        ("moves", "ranks moved (log; 0 drawn at 1)"),
    ]) {
        let mut chart = ChartBuilder::on(panel)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(65)
            .build_cartesian_2d(-0.3..n - 0.7, (1.0..max_of(field)).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_labels(phases.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(ylabel)
            .draw()
            .map_err(plot_err)?;
        for policy in policies {
            let color = match policy {
                "none" => RGBColor(120, 120, 120),
                "count" => COLORS[0],
                "greedy" => COLORS[1],
                _ => COLORS[3],
            };
            let pts = series(field, policy);
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(policy)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}
