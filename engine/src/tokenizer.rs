//! The model's tokenizer and chat template, both from GGUF metadata.
//!
//! GPT-2-style byte-level BPE (`tokenizer.ggml.model = "gpt2"`): Hugging Face's `tokenizers`
//! crate (pure Rust, `fancy-regex`) built from the stored vocabulary and merges, with the
//! pre-tokenizer that `tokenizer.ggml.pre` names, and every control / user-defined token
//! matched as a special token. The chat template (`tokenizer.chat_template`, Jinja) is
//! rendered with `minijinja`.
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{EngineError, Result};
use crate::gguf::{ModelFile, Value};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Llama 3's pre-tokenizer split (also used by several later BPE models).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Tokenizer + special ids + chat template of a model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Extra ids that end generation (`<|im_end|>` / `<|eot_id|>` when present).
    pub stop_ids: Vec<u32>,
    /// Whether encoding a prompt prepends BOS (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    template: Option<String>,
    vocab: usize,
}

fn tk(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

fn strings<'a>(f: &'a ModelFile, key: &str) -> Result<Vec<&'a str>> {
    f.meta(key)?
        .as_array()
        .ok_or_else(|| tk(format!("{key} is not an array")))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| tk(format!("{key} holds a non-string")))
        })
        .collect()
}

fn id(f: &ModelFile, key: &str, vocab: usize) -> Result<Option<u32>> {
    match f.gguf.get(key).map(Value::as_u64) {
        None => Ok(None),
        Some(Some(v)) if (v as usize) < vocab => Ok(Some(v as u32)),
        Some(_) => Err(tk(format!("{key} is not a token id below {vocab}"))),
    }
}

impl Tokenizer {
    /// Builds the tokenizer stored in `file`.
    pub fn from_gguf(file: &ModelFile) -> Result<Self> {
        let model = file
            .meta("tokenizer.ggml.model")?
            .as_str()
            .ok_or_else(|| tk("tokenizer.ggml.model is not a string"))?;
        if model != "gpt2" {
            return Err(tk(format!(
                "tokenizer model {model} is not supported (supported: gpt2 byte-level BPE)"
            )));
        }
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let merges = strings(file, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match file.gguf.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) if a.len() == tokens.len() => a
                .iter()
                .map(|v| match v {
                    Value::I64(x) => *x,
                    Value::U64(x) => *x as i64,
                    _ => 1,
                })
                .collect(),
            Some(_) => return Err(tk("tokenizer.ggml.token_type does not match the tokens")),
            None => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            return Err(tk("tokenizer.ggml.tokens has duplicate entries"));
        }
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tk(format!("merge {m:?} is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tk)?;
        let pre = file
            .gguf
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let byte_level = |regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
        let pre_tokenizer = match pre {
            "default" | "gpt2" => byte_level(true),
            // SmolLM: every digit alone, then GPT-2's split.
            "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ])),
            "llama3" | "llama-bpe" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(
                    Split::new(
                        SplitPattern::Regex(LLAMA3_SPLIT.into()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .map_err(tk)?,
                ),
                byte_level(false),
            ])),
            other => {
                return Err(tk(format!(
                    "pre-tokenizer {other} is not supported (supported: gpt2, smollm, llama-bpe)"
                )))
            }
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == CONTROL || t == USER_DEFINED)
            .map(|(s, _)| AddedToken::from(s.to_string(), true))
            .collect();
        inner.add_special_tokens(specials).map_err(tk)?;
        let n = tokens.len();
        let bos = id(file, "tokenizer.ggml.bos_token_id", n)?;
        let eos = id(file, "tokenizer.ggml.eos_token_id", n)?;
        let add_bos = file
            .gguf
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let stop_ids = ["<|im_end|>", "<|eot_id|>", "<|end|>"]
            .iter()
            .filter_map(|s| tokens.iter().position(|t| t == s).map(|i| i as u32))
            .filter(|&i| Some(i) != eos)
            .collect();
        let template = file
            .gguf
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        Ok(Self {
            inner,
            bos,
            eos,
            stop_ids,
            add_bos,
            template,
            vocab: n,
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Token ids of `text` (special tokens such as `<|im_start|>` recognised), with BOS first
    /// when `add_bos` is set.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(tk)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids` (special tokens kept when `skip_special` is false).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(tk(format!(
                "token id {bad} outside the vocabulary of {}",
                self.vocab
            )));
        }
        self.inner.decode(ids, skip_special).map_err(tk)
    }

    /// An incremental decoder for streaming: feed ids one at a time, get text when it forms
    /// whole UTF-8 characters.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tok: self,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Whether `id` ends generation.
    pub fn is_stop(&self, id: u32) -> bool {
        Some(id) == self.eos || self.stop_ids.contains(&id)
    }

    /// Renders `messages` with the model's chat template (with the assistant turn opened when
    /// `add_generation_prompt`), as the text to encode (special tokens as text).
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let src = self
            .template
            .as_deref()
            .ok_or_else(|| tk("the model has no chat template"))?;
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", src).map_err(tk)?;
        let msgs: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() })
            .collect();
        let token = |i: Option<u32>| -> String {
            i.and_then(|i| self.inner.id_to_token(i))
                .unwrap_or_default()
        };
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => msgs,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => token(self.bos),
                    eos_token => token(self.eos),
                })
            })
            .map_err(tk)
    }
}

/// Incremental detokenizer (see [`Tokenizer::stream`]).
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream<'_> {
    /// Adds a token; returns the new text it completes (empty while a character is partial).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids, false)?;
        // A partial UTF-8 sequence decodes to U+FFFD at the end: wait for the rest.
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = text.len();
        Ok(new)
    }
}
