//! Prefix caching: the KV pages of finished requests are kept, indexed by their page-aligned
//! token blocks, so a new request whose prompt begins with the same tokens (a system prompt, a
//! few-shot preamble, the earlier turns of a chat) starts from those pages instead of
//! recomputing them.
//!
//! The index follows vLLM's and SGLang's prefix caches: a prompt is cut into blocks of one KV
//! page; block `i` is keyed by a hash chained over blocks `0..=i`, so a key names a whole prefix,
//! not one block. A kept sequence (a *holder*) owns its pages in the page table; a request that
//! matches `k` blocks of a holder gets `fork(holder)` truncated to `k` pages: the pages are
//! shared (reference-counted by the page table) and never written again, because a match covers
//! whole pages only and at least the prompt's last token is always computed (its logits are
//! needed), so every later append goes to a fresh page. Hash collisions cannot alias two
//! prefixes: a match is confirmed by comparing the tokens.
//!
//! Holders are evicted least recently used first when the scheduler needs pages; a holder's
//! pages that running requests still share stay allocated until those requests end.
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use ferrinfer::kv::SeqId;

/// A kept sequence: its page-aligned tokens and when it was last matched or inserted.
struct Holder {
    seq: SeqId,
    tokens: Vec<u32>,
    /// Chained hash of each block.
    keys: Vec<u64>,
    last_used: u64,
}

/// A match: fork `holder` and keep its first `blocks` pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    /// The holder sequence to fork.
    pub holder: SeqId,
    /// Whole pages (blocks) shared.
    pub blocks: usize,
}

/// The index of kept prefixes.
pub struct PrefixCache {
    page_size: usize,
    holders: HashMap<SeqId, Holder>,
    /// Chained block hash → the holder that last registered it (and the block's index there).
    index: HashMap<u64, (SeqId, usize)>,
    clock: u64,
}

/// Chained hashes of the whole blocks of `tokens`.
fn block_keys(tokens: &[u32], page_size: usize) -> Vec<u64> {
    let mut prev = 0u64;
    tokens
        .chunks_exact(page_size)
        .map(|block| {
            let mut h = DefaultHasher::new();
            prev.hash(&mut h);
            block.hash(&mut h);
            prev = h.finish();
            prev
        })
        .collect()
}

impl PrefixCache {
    /// An empty index for pages of `page_size` tokens.
    pub fn new(page_size: usize) -> Self {
        Self {
            page_size: page_size.max(1),
            holders: HashMap::new(),
            index: HashMap::new(),
            clock: 0,
        }
    }

    /// Kept sequences.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    /// The kept sequences.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.holders.keys().copied()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// The longest kept prefix of `prompt` that leaves at least its last token to compute.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<PrefixMatch> {
        let usable = prompt.len().saturating_sub(1) / self.page_size;
        let keys = block_keys(&prompt[..usable * self.page_size], self.page_size);
        let mut found = None;
        for (i, key) in keys.iter().enumerate() {
            let Some(&(seq, at)) = self.index.get(key) else {
                break;
            };
            let h = self.holders.get(&seq)?;
            let end = (i + 1) * self.page_size;
            // Chained keys name whole prefixes; the tokens confirm it (no hash aliasing).
            if at != i || h.tokens.get(..end) != Some(&prompt[..end]) {
                break;
            }
            found = Some(PrefixMatch {
                holder: seq,
                blocks: i + 1,
            });
        }
        if let Some(m) = found {
            self.clock += 1;
            if let Some(h) = self.holders.get_mut(&m.holder) {
                h.last_used = self.clock;
            }
        }
        found
    }

    /// Offers a finished sequence whose first `tokens.len()` tokens have their K/V in the cache
    /// (`tokens` page-aligned). Returns `true` when it is kept (the caller must then not free
    /// it, and should truncate it to `tokens.len()`); `false` when every block is already kept
    /// by others, or there is no whole block (the caller frees it).
    pub fn insert(&mut self, seq: SeqId, tokens: &[u32]) -> bool {
        let blocks = tokens.len() / self.page_size;
        let tokens = &tokens[..blocks * self.page_size];
        let keys = block_keys(tokens, self.page_size);
        // Kept already if its last block is indexed with the same tokens.
        if let Some(&(other, at)) = keys.last().and_then(|k| self.index.get(k)) {
            if at + 1 == blocks
                && self
                    .holders
                    .get(&other)
                    .is_some_and(|h| h.tokens.get(..tokens.len()) == Some(tokens))
            {
                return false;
            }
        }
        if keys.is_empty() {
            return false;
        }
        self.clock += 1;
        for (i, &k) in keys.iter().enumerate() {
            self.index.insert(k, (seq, i));
        }
        self.holders.insert(
            seq,
            Holder {
                seq,
                tokens: tokens.to_vec(),
                keys,
                last_used: self.clock,
            },
        );
        true
    }

    /// Removes the least recently used holder and returns its sequence (the caller frees it).
    pub fn evict_lru(&mut self) -> Option<SeqId> {
        let seq = self.holders.values().min_by_key(|h| h.last_used)?.seq;
        self.remove(seq);
        Some(seq)
    }

    /// Removes every holder; returns their sequences (the caller frees them).
    pub fn drain(&mut self) -> Vec<SeqId> {
        let seqs: Vec<SeqId> = self.holders.keys().copied().collect();
        for &s in &seqs {
            self.remove(s);
        }
        seqs
    }

    /// Drops a holder's index entries; a block another holder also has is re-pointed at it,
    /// so removing one holder never makes another unreachable.
    fn remove(&mut self, seq: SeqId) {
        let Some(h) = self.holders.remove(&seq) else {
            return;
        };
        for (i, k) in h.keys.into_iter().enumerate() {
            if self.index.get(&k).is_some_and(|&(s, _)| s == seq) {
                match self.holders.values().find(|o| o.keys.get(i) == Some(&k)) {
                    Some(o) => self.index.insert(k, (o.seq, i)),
                    None => self.index.remove(&k),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn matches_whole_blocks_and_leaves_the_last_token() {
        let mut c = PrefixCache::new(4);
        let kept = toks(12, 0);
        assert!(c.insert(SeqId(1), &kept));
        // The same 12 tokens: only 2 blocks usable (token 12 must be computed).
        assert_eq!(
            c.lookup(&kept),
            Some(PrefixMatch {
                holder: SeqId(1),
                blocks: 2
            })
        );
        let mut longer = kept.clone();
        longer.extend([1, 2, 3]);
        assert_eq!(c.lookup(&longer).map(|m| m.blocks), Some(3));
        // Diverging inside block 1: one block.
        let mut other = kept.clone();
        other[5] = 999;
        assert_eq!(c.lookup(&other).map(|m| m.blocks), Some(1));
        // Diverging in block 0: nothing.
        other[0] = 999;
        assert_eq!(c.lookup(&other), None);
        // Shorter than a block plus one token: nothing.
        assert_eq!(c.lookup(&kept[..4]), None);
        assert_eq!(c.lookup(&kept[..5]).map(|m| m.blocks), Some(1));
    }

    #[test]
    fn duplicates_are_not_kept_and_lru_evicts_oldest() {
        let mut c = PrefixCache::new(4);
        assert!(c.insert(SeqId(1), &toks(8, 0)));
        assert!(!c.insert(SeqId(2), &toks(8, 0)), "same blocks: not kept");
        assert!(!c.insert(SeqId(3), &toks(3, 0)), "no whole block");
        assert!(c.insert(SeqId(4), &toks(8, 1)));
        // Touch 1: then 4 is the least recently used.
        assert!(c.lookup(&toks(9, 0)).is_some());
        assert_eq!(c.evict_lru(), Some(SeqId(4)));
        assert_eq!(c.lookup(&toks(9, 1)), None);
        assert_eq!(c.evict_lru(), Some(SeqId(1)));
        assert!(c.is_empty());
        assert_eq!(c.evict_lru(), None);
    }

    #[test]
    fn a_longer_holder_extends_a_shorter_one() {
        let mut c = PrefixCache::new(2);
        assert!(c.insert(SeqId(1), &toks(4, 0)));
        assert!(c.insert(SeqId(2), &toks(8, 0)));
        let m = c.lookup(&toks(9, 0)).unwrap();
        assert_eq!((m.holder, m.blocks), (SeqId(2), 4));
        // Evicting the longer one re-points the shared blocks at the shorter one.
        c.remove(SeqId(2));
        let m = c.lookup(&toks(9, 0)).unwrap();
        assert_eq!((m.holder, m.blocks), (SeqId(1), 2));
        assert_eq!(c.drain(), vec![SeqId(1)]);
        assert_eq!(c.lookup(&toks(9, 0)), None);
    }
}
