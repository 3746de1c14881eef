//! Prefix caching: KV pages already computed for one request are reused by any request whose
//! prompt begins with the same tokens (a system prompt, a few-shot preamble, the earlier turns
//! of a chat), instead of being recomputed.
//!
//! The index follows vLLM's and SGLang's prefix caches: token sequences are cut into blocks of
//! one KV page; block `i` is keyed by a hash chained over blocks `0..=i`, so a key names a whole
//! prefix, not one block. Every sequence with whole computed pages is a *holder*: running
//! requests register their blocks as they are computed (so requests of one burst share a system
//! prompt as soon as the first of them has computed it), and a finished request's sequence is
//! kept, truncated to its whole pages, until evicted. A request that matches `k` blocks of a
//! holder gets `fork(holder)` truncated to `k` pages: the pages are shared (reference-counted by
//! the page table) and never written again, because a match covers whole pages only and at
//! least the prompt's last token is always computed (its logits are needed), so every later
//! append goes to a fresh page. Hash collisions cannot alias two prefixes: a match is confirmed
//! by comparing the tokens.
//!
//! Kept (finished) holders are evicted least recently used first when the scheduler needs pages;
//! pages that running requests still share stay allocated until those requests end.
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use ferrinfer::kv::SeqId;

/// A sequence whose whole pages are indexed.
struct Holder {
    seq: SeqId,
    /// Its tokens with K/V in the cache, whole pages only.
    tokens: Vec<u32>,
    /// Chained hash of each block.
    keys: Vec<u64>,
    /// Finished and kept (evictable); `false` while its request runs.
    kept: bool,
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

/// The index of computed prefixes.
pub struct PrefixCache {
    page_size: usize,
    holders: HashMap<SeqId, Holder>,
    /// Chained block hash → a holder that has the block (and the block's index there).
    index: HashMap<u64, (SeqId, usize)>,
    clock: u64,
}

/// Chained hash of `block` after the block keyed `prev` (0 for the first block).
fn chain(prev: u64, block: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    prev.hash(&mut h);
    block.hash(&mut h);
    h.finish()
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

    /// Kept (finished) sequences.
    pub fn len(&self) -> usize {
        self.holders.values().filter(|h| h.kept).count()
    }

    /// Whether no finished sequence is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kept (finished) sequences.
    pub fn kept(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.holders.values().filter(|h| h.kept).map(|h| h.seq)
    }

    /// The longest computed prefix of `prompt` that leaves at least its last token to compute.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<PrefixMatch> {
        let ps = self.page_size;
        let usable = prompt.len().saturating_sub(1) / ps;
        let mut found = None;
        let mut key = 0;
        for i in 0..usable {
            let end = (i + 1) * ps;
            key = chain(key, &prompt[i * ps..end]);
            let Some(&(seq, at)) = self.index.get(&key) else {
                break;
            };
            // Chained keys name whole prefixes; the tokens confirm it (no hash aliasing).
            let Some(h) = self.holders.get(&seq) else {
                break;
            };
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

    /// Registers the whole pages of a running sequence whose first `computed.len()` tokens
    /// have their K/V in the cache. Cheap when no new page was completed.
    pub fn extend(&mut self, seq: SeqId, computed: &[u32]) {
        let ps = self.page_size;
        let blocks = computed.len() / ps;
        let h = self.holders.entry(seq).or_insert_with(|| Holder {
            seq,
            tokens: Vec::new(),
            keys: Vec::new(),
            kept: false,
            last_used: 0,
        });
        while h.keys.len() < blocks {
            let i = h.keys.len();
            let block = &computed[i * ps..(i + 1) * ps];
            let key = chain(h.keys.last().copied().unwrap_or(0), block);
            h.keys.push(key);
            h.tokens.extend_from_slice(block);
            // First come keeps the entry: a block already indexed stays with its holder.
            self.index.entry(key).or_insert((seq, i));
        }
    }

    /// A sequence's request ended with `computed` tokens in the cache. Returns `true` when it
    /// is kept for reuse (the caller truncates it to its whole pages and must not free it);
    /// `false` when it holds no whole page, or every one of its blocks is also held by
    /// another sequence (the caller frees it).
    pub fn retire(&mut self, seq: SeqId, computed: &[u32]) -> bool {
        self.extend(seq, computed);
        let redundant = self.holders.get(&seq).is_none_or(|h| {
            h.keys.iter().enumerate().all(|(i, k)| {
                self.index
                    .get(k)
                    .is_some_and(|&(other, at)| other != seq && at == i)
            })
        });
        if redundant {
            self.forget(seq);
            return false;
        }
        self.clock += 1;
        if let Some(h) = self.holders.get_mut(&seq) {
            h.kept = true;
            h.last_used = self.clock;
        }
        true
    }

    /// Removes the least recently used kept sequence and returns it (the caller frees it).
    pub fn evict_lru(&mut self) -> Option<SeqId> {
        let seq = self
            .holders
            .values()
            .filter(|h| h.kept)
            .min_by_key(|h| h.last_used)?
            .seq;
        self.forget(seq);
        Some(seq)
    }

    /// Removes every kept sequence and returns them (the caller frees them); running ones stay.
    pub fn drain(&mut self) -> Vec<SeqId> {
        let seqs: Vec<SeqId> = self.kept().collect();
        for &s in &seqs {
            self.forget(s);
        }
        seqs
    }

    /// Drops a sequence (freed, preempted): its index entries are re-pointed at another holder
    /// of the same block when there is one, so no other holder becomes unreachable.
    pub fn forget(&mut self, seq: SeqId) {
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
        assert!(c.retire(SeqId(1), &kept));
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
    fn running_sequences_are_matched_but_never_evicted() {
        let mut c = PrefixCache::new(4);
        c.extend(SeqId(1), &toks(6, 0));
        assert_eq!(c.lookup(&toks(9, 0)).map(|m| m.blocks), Some(1));
        c.extend(SeqId(1), &toks(8, 0));
        assert_eq!(c.lookup(&toks(9, 0)).map(|m| m.blocks), Some(2));
        assert!(c.is_empty());
        assert_eq!(c.evict_lru(), None);
        assert!(c.drain().is_empty());
        // Preempted: forgotten.
        c.forget(SeqId(1));
        assert_eq!(c.lookup(&toks(9, 0)), None);
    }

    #[test]
    fn duplicates_are_not_kept_and_lru_evicts_oldest() {
        let mut c = PrefixCache::new(4);
        assert!(c.retire(SeqId(1), &toks(8, 0)));
        assert!(!c.retire(SeqId(2), &toks(8, 0)), "same blocks: not kept");
        assert!(!c.retire(SeqId(3), &toks(3, 0)), "no whole block");
        assert!(c.retire(SeqId(4), &toks(8, 1)));
        // Touch 1: then 4 is the least recently used.
        assert!(c.lookup(&toks(9, 0)).is_some());
        assert_eq!(c.evict_lru(), Some(SeqId(4)));
        assert_eq!(c.lookup(&toks(9, 1)), None);
        assert_eq!(c.evict_lru(), Some(SeqId(1)));
        assert!(c.is_empty());
        assert_eq!(c.evict_lru(), None);
    }

    #[test]
    fn forgetting_a_holder_re_points_shared_blocks() {
        let mut c = PrefixCache::new(2);
        // 2 runs first: it owns the shared blocks; 1 shares them and adds none of its own.
        c.extend(SeqId(2), &toks(8, 0));
        c.extend(SeqId(1), &toks(4, 0));
        assert!(!c.retire(SeqId(1), &toks(4, 0)), "every block held by 2");
        assert!(c.retire(
            SeqId(3),
            &toks(6, 0).into_iter().chain([5, 5]).collect::<Vec<_>>()
        ));
        let m = c.lookup(&toks(9, 0)).unwrap();
        assert_eq!((m.holder, m.blocks), (SeqId(2), 4));
        // 2 leaves: its first three blocks are re-pointed at 3.
        c.forget(SeqId(2));
        let m = c.lookup(&toks(9, 0)).unwrap();
        assert_eq!((m.holder, m.blocks), (SeqId(3), 3));
        assert_eq!(c.drain(), vec![SeqId(3)]);
        assert_eq!(c.lookup(&toks(9, 0)), None);
    }
}
