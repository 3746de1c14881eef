//! Draws the roofline picture of one GPU run: every decode, append and prefill shape as achieved
//! TB/s or TFLOP/s, ferrinfer's own choice beside FlashInfer's better kernel, against the copy
//! and matmul ceilings measured in the same run.
//!
//! Usage: `roofline --ours bench.jsonl [--flashinfer fi_anchor.json] --out chart.svg`
//! (`bench.jsonl`: the rows the benches append under `FERRINFER_BENCH_JSON`; `fi_anchor.json`:
//! `flashinfer_bench.py --out` of the same call). Prints the paired figures as a table too.
use std::collections::BTreeMap;
use std::error::Error;

use ferrinfer_harness::record::{self, Row, Section};
use plotters::prelude::*;
use serde_json::Value;

type Res<T> = Result<T, Box<dyn Error>>;

/// One shape of a panel: ours and FlashInfer's rate (TB/s or TFLOP/s).
#[derive(Default, Clone, Copy)]
struct Pair {
    ours: Option<f64>,
    theirs: Option<f64>,
}

struct Panel {
    title: &'static str,
    unit: &'static str,
    ceiling: Option<(f64, &'static str)>,
    shapes: BTreeMap<String, Pair>,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("roofline: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(ours), Some(out)) = (arg(&args, "--ours"), arg(&args, "--out")) else {
        return Err(
            "usage: roofline --ours bench.jsonl [--flashinfer fi_anchor.json] --out chart.svg"
                .into(),
        );
    };
    let rows = record::read(&std::fs::read_to_string(&ours)?)?;
    let fi: Option<Value> = match arg(&args, "--flashinfer") {
        Some(p) => Some(serde_json::from_str(&std::fs::read_to_string(p)?)?),
        None => None,
    };
    let panels = panels(&rows, fi.as_ref());
    print_table(&panels);
    draw(
        &panels,
        &out,
        rows.first().map_or("", |r| r.device.as_str()),
    )?;
    println!("roofline: wrote {out}");
    Ok(())
}

/// Our picked rows and FlashInfer's best kernel per shape, by section.
fn panels(rows: &[Row], fi: Option<&Value>) -> Vec<Panel> {
    let copy = rows
        .iter()
        .find(|r| r.section == Section::Roofline)
        .and_then(|r| r.copy_tb_s)
        .or_else(|| fi.and_then(|f| f["roofline"]["copy"]["tb_s_read_plus_write"].as_f64()));
    let matmul = fi.and_then(|f| f["roofline"]["matmul_bf16_8192"]["tflop_s"].as_f64());
    let mut out = vec![
        Panel {
            title: "decode (KV read)",
            unit: "TB/s",
            ceiling: copy.map(|c| (c, "copy")),
            shapes: BTreeMap::new(),
        },
        Panel {
            title: "KV append",
            unit: "TB/s",
            ceiling: copy.map(|c| (c, "copy")),
            shapes: BTreeMap::new(),
        },
        Panel {
            title: "prefill (causal)",
            unit: "TFLOP/s",
            ceiling: matmul.map(|m| (m, "bf16 matmul")),
            shapes: BTreeMap::new(),
        },
    ];
    let index = |s: Section| match s {
        Section::Decode => Some(0),
        Section::Append => Some(1),
        Section::Prefill => Some(2),
        Section::Roofline => None,
    };
    for r in rows.iter().filter(|r| r.picked) {
        if let (Some(i), Some(rate)) = (index(r.section), r.rate()) {
            out[i].shapes.entry(r.shape.clone()).or_default().ours = Some(rate);
        }
    }
    for (i, shape, rate) in fi.map(flashinfer_rates).unwrap_or_default() {
        let p = out[i].shapes.entry(shape).or_default();
        p.theirs = Some(p.theirs.map_or(rate, |t: f64| t.max(rate)));
    }
    out
}

/// `(panel, shape, rate)` of every FlashInfer row of the anchor JSON, named as our rows are.
fn flashinfer_rates(fi: &Value) -> Vec<(usize, String, f64)> {
    let list = |k: &str| fi[k].as_array().cloned().unwrap_or_default();
    let f = |v: &Value, k: &str| v[k].as_f64();
    let mut out = Vec::new();
    for d in list("decode") {
        if let (Some(b), Some(l), Some(us), Some(by)) = (
            f(&d, "batch"),
            f(&d, "kv_len"),
            f(&d, "median_us"),
            f(&d, "bytes_total"),
        ) {
            out.push((0, format!("decode {b}x{l}"), by / us / 1e6));
        }
    }
    for a in list("append") {
        if let (Some(s), Some(t), Some(us), Some(by)) = (
            f(&a, "seqs"),
            f(&a, "tokens_per_seq"),
            f(&a, "median_us"),
            f(&a, "bytes_read_plus_write"),
        ) {
            out.push((1, format!("append {s}x{t}"), by / us / 1e6));
        }
    }
    for p in list("prefill") {
        let kernel = p["kernel"].as_str().unwrap_or("prefill");
        if let (Some(b), Some(q), Some(k), Some(us), Some(fl)) = (
            f(&p, "batch"),
            f(&p, "qo_len"),
            f(&p, "kv_len"),
            f(&p, "median_us"),
            f(&p, "flops"),
        ) {
            out.push((2, format!("{kernel} {b}x{q}/{k}"), fl / us / 1e6));
        }
    }
    out
}

fn print_table(panels: &[Panel]) {
    let cell = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
    for p in panels {
        println!(
            "\n{} ({}), ceiling {}",
            p.title,
            p.unit,
            cell(p.ceiling.map(|c| c.0))
        );
        println!("| shape | ferrinfer | FlashInfer (better kernel) | ratio |");
        println!("| --- | ---: | ---: | ---: |");
        for (shape, pair) in &p.shapes {
            let ratio = pair.ours.zip(pair.theirs).map(|(a, b)| a / b);
            println!(
                "| {shape} | {} | {} | {} |",
                cell(pair.ours),
                cell(pair.theirs),
                cell(ratio)
            );
        }
    }
}

/// An axis label: without the `prefill-` prefix, and `8x2048` for `8x2048/2048` (kv = qo).
fn short_label(shape: &str) -> String {
    let s = shape.strip_prefix("prefill-").unwrap_or(shape);
    match s.rsplit_once('/') {
        Some((head, kv)) if head.ends_with(&format!("x{kv}")) => head.to_string(),
        _ => s.to_string(),
    }
}

fn draw(panels: &[Panel], out: &str, device: &str) -> Res<()> {
    let root = SVGBackend::new(out, (1400, 1300)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("ferrinfer vs FlashInfer, one run: {device}"),
        ("sans-serif", 22),
    )?;
    for (area, p) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        draw_panel(area, p)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: &Panel,
) -> Res<()>
where
    DB::ErrorType: 'static,
{
    let shapes: Vec<(&String, &Pair)> = p.shapes.iter().collect();
    let top = shapes
        .iter()
        .flat_map(|(_, q)| [q.ours, q.theirs])
        .flatten()
        .chain(p.ceiling.map(|c| c.0))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.4; // headroom above the tallest bar for the legend
    let n = shapes.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{} — {}", p.title, p.unit), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    let labels: Vec<String> = shapes.iter().map(|(s, _)| short_label(s)).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (*x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(p.unit)
        .draw()?;
    let ours = RGBColor(0xc0, 0x39, 0x2b);
    let theirs = RGBColor(0x2c, 0x3e, 0x50);
    for (i, (_, q)) in shapes.iter().enumerate() {
        let x = i as f64;
        if let Some(v) = q.ours {
            chart.draw_series([Rectangle::new(
                [(x + 0.12, 0.0), (x + 0.48, v)],
                ours.filled(),
            )])?;
        }
        if let Some(v) = q.theirs {
            chart.draw_series([Rectangle::new(
                [(x + 0.52, 0.0), (x + 0.88, v)],
                theirs.filled(),
            )])?;
        }
    }
    chart
        .draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], ours.filled())])?
        .label("ferrinfer (its own pick)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], ours.filled()));
    chart
        .draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], theirs.filled())])?
        .label("FlashInfer 0.7.2 (better kernel)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], theirs.filled()));
    if let Some((c, what)) = p.ceiling {
        chart
            .draw_series(LineSeries::new(
                [(0.0, c), (n as f64, c)],
                BLACK.stroke_width(2),
            ))?
            .label(format!("{what} ceiling {c:.2} {}", p.unit))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        section: Section,
        shape: &str,
        picked: bool,
        us: f64,
        bytes: Option<f64>,
        flops: Option<f64>,
    ) -> Row {
        Row {
            section,
            shape: shape.into(),
            variant: "v".into(),
            picked,
            median_us: us,
            bytes,
            flops,
            copy_tb_s: None,
            device: "test".into(),
        }
    }

    #[test]
    fn pairs_our_pick_with_flashinfers_better_kernel_and_draws() {
        let rows = vec![
            row(
                Section::Decode,
                "decode 64x4096",
                true,
                100.0,
                Some(3e8),
                None,
            ),
            row(
                Section::Decode,
                "decode 64x4096",
                false,
                50.0,
                Some(3e8),
                None,
            ),
            row(
                Section::Prefill,
                "prefill-ragged 8x2048/2048",
                true,
                1000.0,
                None,
                Some(5e11),
            ),
        ];
        let fi = serde_json::json!({
            "roofline": {"copy": {"tb_s_read_plus_write": 3.0}, "matmul_bf16_8192": {"tflop_s": 700.0}},
            "decode": [
                {"kernel": "decode", "batch": 64, "kv_len": 4096, "median_us": 150.0, "bytes_total": 3e8},
                {"kernel": "decode-tc", "batch": 64, "kv_len": 4096, "median_us": 120.0, "bytes_total": 3e8}
            ],
            "prefill": [{"kernel": "prefill-ragged", "batch": 8, "qo_len": 2048, "kv_len": 2048,
                         "median_us": 1250.0, "flops": 5e11}],
            "append": []
        });
        let p = panels(&rows, Some(&fi));
        let d = p[0].shapes["decode 64x4096"];
        // Ours: the picked row (3 TB/s), not the faster unpicked one; FlashInfer: its better kernel.
        assert!((d.ours.unwrap() - 3.0).abs() < 1e-9);
        assert!((d.theirs.unwrap() - 2.5).abs() < 1e-9);
        assert_eq!(p[0].ceiling.map(|c| c.0), Some(3.0));
        let q = p[2].shapes["prefill-ragged 8x2048/2048"];
        assert!((q.ours.unwrap() - 500.0).abs() < 1e-6 && (q.theirs.unwrap() - 400.0).abs() < 1e-6);
        let out = std::env::temp_dir().join(format!("roofline-test-{}.svg", std::process::id()));
        draw(&p, out.to_str().unwrap(), "test").unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).ok();
        assert!(svg.starts_with("<svg") && svg.contains("ragged 8x2048"));
        assert_eq!(short_label("prefill-paged 8x512/4096"), "paged 8x512/4096");
        assert_eq!(short_label("decode 64x4096"), "decode 64x4096");
    }
}
