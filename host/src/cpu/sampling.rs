//! Token sampling from logits (FlashInfer's sampling family, on the host): greedy argmax, and
//! temperature + top-k + top-p driven by a caller-supplied uniform number, so a seeded caller
//! gets the same token on every backend.
use crate::error::{Error, Result};

const OP: &str = "cpu_sampling";

/// How to pick the next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Argmax.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }

    /// Checks the parameters (temperature finite and ≥ 0, top_p in (0, 1]).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid(OP, "temperature", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(
                OP,
                "top_p",
                format!("{} (in (0, 1])", self.top_p),
            ));
        }
        Ok(())
    }

    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// Index of the largest logit (the first on ties); an error on an empty or NaN row.
pub fn argmax(logits: &[f32]) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            return Err(Error::invalid(OP, "logits", format!("NaN at {i}")));
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    let (i, _) = best.ok_or_else(|| Error::invalid(OP, "logits", "empty"))?;
    u32::try_from(i).map_err(|_| Error::Overflow {
        op: OP,
        what: "token id",
    })
}

/// Samples a token: softmax of `logits / temperature`, restricted to the top-k then the top-p
/// nucleus, renormalised, inverted at `u` ∈ [0, 1).
pub fn sample(logits: &[f32], params: &SamplingParams, u: f32) -> Result<u32> {
    params.validate()?;
    if params.is_greedy() {
        return argmax(logits);
    }
    if !(0.0..1.0).contains(&u) {
        return Err(Error::invalid(
            OP,
            "uniform sample",
            format!("{u} (in [0, 1))"),
        ));
    }
    argmax(logits)?; // rejects empty and NaN rows
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if params.top_k > 0 && params.top_k < idx.len() {
        idx.select_nth_unstable_by(params.top_k - 1, by_logit);
        idx.truncate(params.top_k);
    }
    idx.sort_unstable_by(by_logit);
    let t = params.temperature as f64;
    let max = logits[idx[0] as usize] as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i as usize] as f64 - max) / t).exp())
        .collect();
    let total: f64 = w.iter().sum();
    // Nucleus: the shortest prefix whose mass reaches top_p (at least one token).
    let mut keep = w.len();
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        for (n, &x) in w.iter().enumerate() {
            acc += x / total;
            if acc >= params.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
    }
    let mass: f64 = w[..keep].iter().sum();
    let target = u as f64 * mass;
    let mut acc = 0.0;
    for (n, &x) in w[..keep].iter().enumerate() {
        acc += x;
        if target < acc {
            return Ok(idx[n]);
        }
    }
    Ok(idx[keep - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_errors() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert!(argmax(&[]).is_err());
        assert!(argmax(&[0.0, f32::NAN]).is_err());
        let p = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::greedy()
        };
        assert!(sample(&[1.0], &p, 0.5).is_err());
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.0,
        };
        assert!(sample(&[1.0], &p, 0.5).is_err());
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        assert!(sample(&[1.0], &p, 1.0).is_err());
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        let logits = [2f32.ln(), 1f32.ln(), 1f32.ln(), f32::NEG_INFINITY];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        let mut counts = [0usize; 4];
        let n = 4000;
        for i in 0..n {
            let u = (i as f32 + 0.5) / n as f32;
            counts[sample(&logits, &p, u).unwrap() as usize] += 1;
        }
        assert_eq!(counts, [2000, 1000, 1000, 0]);
        // top_k 1 = greedy; top_p 0.5 keeps only the first token.
        let p1 = SamplingParams { top_k: 1, ..p };
        assert_eq!(sample(&logits, &p1, 0.99).unwrap(), 0);
        let p2 = SamplingParams { top_p: 0.5, ..p };
        assert_eq!(sample(&logits, &p2, 0.99).unwrap(), 0);
        // top_k 2 keeps tokens 0 and (tie, lower id) 1: mass 2:1.
        let p3 = SamplingParams { top_k: 2, ..p };
        assert_eq!(sample(&logits, &p3, 0.7).unwrap(), 1);
        assert_eq!(sample(&logits, &p3, 0.6).unwrap(), 0);
    }
}
