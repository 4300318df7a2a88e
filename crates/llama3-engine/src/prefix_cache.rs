//! The prefix cache: KV of processed prompts (and answers) kept beside the slots, in blocks of
//! [`BLOCK`] tokens keyed by the hash of their tokens and of their parent block, so a request
//! starts from the longest cached prefix whichever slot computed it, even after that slot moved
//! on to other work. Blocks are copied into a slot's cache on admission and out of it once a
//! prompt is in and when a sequence ends; while in use they live in the slot, so no block is
//! shared in place and none needs a reference count. Least recently used blocks go first when
//! the cache is over its byte budget (`--cache-ram`).
//!
//! Restored KV is the bytes prefill wrote, and prefill computes each position the same way
//! whatever chunk it falls in, so answers are the same with and without the cache.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use candle_core::Tensor;
use llama3::model::KvCache;

/// Tokens per block.
pub const BLOCK: usize = 32;

struct Entry {
    tokens: Vec<u32>,
    /// Per layer (K, V), each (1, Hkv, BLOCK, Dh).
    kv: Vec<(Tensor, Tensor)>,
    bytes: usize,
    last_used: u64,
    /// Blocks before it in its chain: of blocks used last at the same time, the deepest go
    /// first, so a chain is cut from its end and no kept block loses its parent.
    depth: usize,
}

pub struct PrefixCache {
    budget: usize,
    used: usize,
    blocks: HashMap<u64, Entry>,
    clock: u64,
}

/// The key of the block holding `tokens` after the block keyed `parent`.
fn key(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl PrefixCache {
    /// A cache of at most `budget` bytes of KV (0: off).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            blocks: HashMap::new(),
            clock: 0,
        }
    }

    /// Whether it keeps anything (a budget above zero).
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    pub fn bytes(&self) -> usize {
        self.used
    }

    /// Keys of the cached blocks that begin `prompt`, in order, leaving at least one token of
    /// the prompt to run (a forward needs it for the first logits).
    fn chain(&self, prompt: &[u32]) -> Vec<u64> {
        let mut keys = Vec::new();
        let mut parent = 0;
        for b in prompt[..prompt.len().saturating_sub(1)].chunks_exact(BLOCK) {
            let k = key(parent, b);
            match self.blocks.get(&k) {
                Some(e) if e.tokens == b => keys.push(k),
                _ => break,
            }
            parent = k;
        }
        keys
    }

    /// Tokens at the start of `prompt` the cache can restore.
    pub fn cached(&self, prompt: &[u32]) -> usize {
        self.chain(prompt).len() * BLOCK
    }

    /// Writes the cached blocks that begin `prompt` into `cache` (emptied first); returns how
    /// many tokens it holds then.
    pub fn restore(&mut self, prompt: &[u32], cache: &mut KvCache) -> llama3::Result<usize> {
        cache.truncate(0);
        self.clock += 1;
        for (i, k) in self.chain(prompt).into_iter().enumerate() {
            if let Some(e) = self.blocks.get_mut(&k) {
                e.last_used = self.clock;
                cache.write_span(i * BLOCK, &e.kv)?;
            }
        }
        Ok(cache.len())
    }

    /// Copies the full blocks of `tokens` (what `cache` holds, from position 0) that the cache
    /// lacks, then evicts least recently used blocks beyond the budget; returns how many.
    pub fn insert(&mut self, tokens: &[u32], cache: &KvCache) -> llama3::Result<u64> {
        if self.budget == 0 {
            return Ok(0);
        }
        let held = tokens.len().min(cache.len());
        let mut parent = 0;
        self.clock += 1;
        for (i, b) in tokens[..held].chunks_exact(BLOCK).enumerate() {
            let k = key(parent, b);
            match self.blocks.get_mut(&k) {
                Some(e) => e.last_used = self.clock,
                None => {
                    let kv = cache.read_span(i * BLOCK, BLOCK)?;
                    let bytes = kv
                        .iter()
                        .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
                        .sum();
                    self.used += bytes;
                    let e = Entry {
                        tokens: b.to_vec(),
                        kv,
                        bytes,
                        last_used: self.clock,
                        depth: i,
                    };
                    self.blocks.insert(k, e);
                }
            }
            parent = k;
        }
        let mut evicted = 0;
        while self.used > self.budget {
            let oldest = self
                .blocks
                .iter()
                .min_by_key(|(_, e)| (e.last_used, std::cmp::Reverse(e.depth)));
            let Some((&k, _)) = oldest else {
                break;
            };
            if let Some(e) = self.blocks.remove(&k) {
                self.used -= e.bytes;
                evicted += 1;
            }
        }
        Ok(evicted)
    }
}
