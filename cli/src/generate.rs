//! `ferrinfer generate`: one prompt, tokens streamed to stdout as they are produced.
use std::io::Write;
use std::time::Instant;

use ferrinfer_engine::{Event, FinishReason, Message, Request, Result, SamplingParams};

use crate::ModelArgs;

/// The command's arguments.
pub struct GenerateArgs {
    pub model: ModelArgs,
    pub prompt: String,
    pub system: Option<String>,
    pub raw: bool,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
}

pub fn run(a: GenerateArgs) -> Result<bool> {
    let mut l = crate::load::load(&a.model)?;
    let tok = &l.tokenizer;
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &a.prompt));
        tok.apply_chat_template(&msgs, true)?
    };
    let prompt = tok.encode(&text, tok.add_bos)?;
    let mut stop_ids = tok.stop_ids.clone();
    stop_ids.extend(tok.eos);
    let t0 = Instant::now();
    let id = l.engine.add(Request {
        prompt: prompt.clone(),
        max_tokens: a.max_tokens,
        sampling: a.sampling,
        seed: a.seed,
        stop_ids,
    })?;
    let mut stream = tok.stream();
    let mut first = None;
    let mut out = std::io::stdout().lock();
    let mut finish = None;
    while l.engine.has_work() {
        for e in l.engine.step()? {
            match e {
                Event::Token { id: rid, token } if rid == id => {
                    first.get_or_insert_with(|| t0.elapsed());
                    if !tok.is_stop(token) {
                        let piece = stream.push(token)?;
                        let _ = out.write_all(piece.as_bytes());
                        let _ = out.flush();
                    }
                }
                Event::Finished {
                    reason, generated, ..
                } => finish = Some((reason, generated)),
                _ => {}
            }
        }
    }
    let _ = writeln!(out);
    let total = t0.elapsed();
    if let Some((reason, generated)) = finish {
        let ttft = first.unwrap_or(total);
        let decode = total.saturating_sub(ttft).as_secs_f64();
        eprintln!(
            "[{} prompt tokens, {} generated ({}), first token {:.1} ms, {:.1} tokens/s after it, {}]",
            prompt.len(),
            generated,
            match reason {
                FinishReason::Stop => "stop token".to_string(),
                FinishReason::Length => "length".to_string(),
                FinishReason::Cancelled => "cancelled".to_string(),
                FinishReason::Error(e) => format!("error: {e}"),
            },
            ttft.as_secs_f64() * 1e3,
            if generated > 1 { (generated - 1) as f64 / decode.max(1e-9) } else { 0.0 },
            l.backend,
        );
    }
    Ok(true)
}
