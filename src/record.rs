//! Machine-readable bench rows. With `FERRINFER_BENCH_JSON=PATH` set, every bench appends one
//! JSON object per measured row to `PATH` (JSON Lines, so several bench executables of one run
//! share the file); `roofline` (src/bin/roofline.rs) charts them beside FlashInfer's anchor
//! JSON of the same call. Unset, nothing is written: the printed tables stay the benches'
//! human-readable output.
use std::io::Write;

use serde::{Deserialize, Serialize};

/// The environment variable naming the JSON Lines file.
pub const ENV: &str = "FERRINFER_BENCH_JSON";

/// What a row measures, and so which ceiling it is drawn against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// Memory-bound attention over a KV cache (bytes moved; copy ceiling).
    Decode,
    /// Compute-bound attention (FLOPs; matmul ceiling).
    Prefill,
    /// The KV append (bytes moved; copy ceiling).
    Append,
    /// The device's own ceilings measured in the same run.
    Roofline,
}

/// One measured row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub section: Section,
    /// The shape as FlashInfer's anchor names it (`decode 64x4096`, `prefill-ragged 8x2048`,
    /// `append 256x1`), so rows of both can be paired.
    pub shape: String,
    /// The kernel or variant measured (`tc`, `Rows128Wgmma persistent`, ...).
    pub variant: String,
    /// Whether this row is what the library picks by itself for the shape (the one compared).
    pub picked: bool,
    pub median_us: f64,
    /// Bytes read plus written, for memory-bound rows.
    pub bytes: Option<f64>,
    /// Floating-point operations, for compute-bound rows.
    pub flops: Option<f64>,
    /// For roofline rows: the measured copy bandwidth (TB/s, read + write).
    pub copy_tb_s: Option<f64>,
    pub device: String,
}

impl Row {
    /// Achieved TB/s (bytes rows) or TFLOP/s (FLOP rows).
    pub fn rate(&self) -> Option<f64> {
        let per_s = |x: f64| x / (self.median_us * 1e-6) / 1e12;
        self.flops.or(self.bytes).map(per_s).or(self.copy_tb_s)
    }
}

/// Appends `row` to the file named by [`ENV`], when it is set. A write failure is reported on
/// stderr and never stops the bench (the printed table is the primary output).
pub fn emit(row: &Row) {
    let Ok(path) = std::env::var(ENV) else {
        return;
    };
    let line = match serde_json::to_string(row) {
        Ok(l) => l,
        Err(e) => return eprintln!("bench json: {e}"),
    };
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = res {
        eprintln!("bench json: cannot append to {path}: {e}");
    }
}

/// Emits the copy ceiling measured in this run (`copy_tb_s`, read + write, over `median_us`).
pub fn emit_copy(device: &str, copy_tb_s: f64, median_us: f64) {
    emit(&Row {
        section: Section::Roofline,
        shape: "copy".into(),
        variant: "device-to-device".into(),
        picked: true,
        median_us,
        bytes: None,
        flops: None,
        copy_tb_s: Some(copy_tb_s),
        device: device.into(),
    });
}

/// Reads a JSON Lines file of rows (blank lines skipped).
pub fn read(text: &str) -> Result<Vec<Row>, serde_json::Error> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_give_their_rate() {
        let r = Row {
            section: Section::Decode,
            shape: "decode 64x4096".into(),
            variant: "tc".into(),
            picked: true,
            median_us: 100.0,
            bytes: Some(3e8),
            flops: None,
            copy_tb_s: None,
            device: "test".into(),
        };
        let text = format!(
            "{}\n\n{}\n",
            serde_json::to_string(&r).unwrap(),
            serde_json::to_string(&r).unwrap()
        );
        let back = read(&text).unwrap();
        assert_eq!(back, vec![r.clone(), r.clone()]);
        assert!((r.rate().unwrap() - 3.0).abs() < 1e-12);
        assert!(read("{not json").is_err());
    }
}
