use super::*;

const B: usize = BLOCK_TOKENS;

/// `blocks` whole blocks of tokens starting at `first` (distinct per block).
fn tokens(first: u32, blocks: usize) -> Vec<u32> {
    (first..first + (blocks * B) as u32).collect()
}

/// A cache whose payload is the block index, each block `bytes` long.
fn filled(budget: usize, scope: &str, toks: &[u32]) -> PrefixCache<usize> {
    let mut cache = PrefixCache::new(budget);
    cache.insert(scope, toks, 10, |i| i);
    cache
}

#[test]
fn a_cached_prefix_is_found_and_an_unknown_one_misses() {
    let toks = tokens(0, 3);
    let mut cache = filled(1000, "tenant:a", &toks);
    let hit = cache.lookup("tenant:a", &toks);
    assert_eq!(hit.len(), 3);
    let payloads: Vec<usize> = hit.iter().map(|k| *cache.payload(*k).unwrap()).collect();
    assert_eq!(payloads, [0, 1, 2]);
    assert!(cache.lookup("tenant:a", &tokens(1000, 3)).is_empty());
}

#[test]
fn lookup_returns_the_longest_cached_prefix_in_whole_blocks() {
    let toks = tokens(0, 4);
    let mut cache = filled(1000, "s", &toks[..2 * B]);
    // Same first two blocks, then a different third one, then a partial block.
    let mut query = toks[..2 * B].to_vec();
    query.extend(tokens(500, 1));
    query.extend([1, 2, 3]);
    assert_eq!(cache.lookup("s", &query).len(), 2);
    // A prompt that diverges inside the first block shares nothing.
    let mut early = toks.clone();
    early[3] = 9999;
    assert!(cache.lookup("s", &early).is_empty());
    // A partial last block is never a hit.
    assert_eq!(cache.lookup("s", &toks[..2 * B + B / 2]).len(), 2);
}

#[test]
fn a_block_is_keyed_by_everything_before_it() {
    let mut cache = PrefixCache::new(1000);
    let (a, b) = (tokens(0, 1), tokens(100, 1));
    let ab: Vec<u32> = a.iter().chain(&b).copied().collect();
    cache.insert("s", &ab, 10, |i| i);
    // Block `b` alone at the start of a prompt is a different prefix.
    assert!(cache.lookup("s", &b).is_empty());
}

#[test]
fn another_scope_misses_the_same_tokens() {
    let toks = tokens(0, 2);
    let mut cache = filled(1000, "tenant:a", &toks);
    assert!(cache.lookup("tenant:b", &toks).is_empty());
    assert!(cache.lookup("global", &toks).is_empty());
    assert_eq!(cache.lookup("tenant:a", &toks).len(), 2);
}

#[test]
fn eviction_takes_least_recently_used_leaves_first() {
    // Room for four blocks of 10 bytes.
    let mut cache = PrefixCache::new(40);
    let (old, new) = (tokens(0, 2), tokens(1000, 2));
    cache.insert("s", &old, 10, |i| i);
    cache.insert("s", &new, 10, |i| i);
    // `old` used again: `new` is now the least recently used chain.
    assert_eq!(cache.lookup("s", &old).len(), 2);
    let third = tokens(2000, 1);
    assert_eq!(cache.insert("s", &third, 10, |i| i), 1);
    // The leaf of `new` went; its first block stays (a leaf now, still reachable).
    assert_eq!(cache.lookup("s", &new).len(), 1);
    assert_eq!(cache.lookup("s", &old).len(), 2);
    assert_eq!(cache.lookup("s", &third).len(), 1);
    assert_eq!(cache.stats().evictions, 1);
    assert_eq!(cache.stats().bytes, 40);
}

#[test]
fn pinned_blocks_are_not_evicted() {
    let mut cache = PrefixCache::new(20);
    let pinned = tokens(0, 2);
    cache.insert("s", &pinned, 10, |i| i);
    let keys = cache.lookup("s", &pinned);
    cache.pin(&keys);
    // Nothing evictable: the new prompt is not kept, the pinned one stays.
    assert_eq!(cache.insert("s", &tokens(1000, 1), 10, |i| i), 0);
    assert_eq!(cache.lookup("s", &pinned).len(), 2);
    cache.unpin(&keys);
    assert_eq!(cache.insert("s", &tokens(1000, 1), 10, |i| i), 1);
    assert_eq!(cache.lookup("s", &pinned).len(), 1);
}

#[test]
fn a_chain_longer_than_the_budget_keeps_its_first_blocks_without_evicting_itself() {
    let mut cache = PrefixCache::new(30);
    let long = tokens(0, 5);
    assert_eq!(cache.insert("s", &long, 10, |i| i), 3);
    assert_eq!(cache.lookup("s", &long).len(), 3);
    assert!(cache.stats().bytes <= 30);
}

#[test]
fn a_block_larger_than_the_budget_is_not_kept() {
    let mut cache = PrefixCache::new(30);
    assert_eq!(cache.insert("s", &tokens(0, 2), 31, |i| i), 0);
    assert_eq!(cache.stats(), PrefixStats::default());
}

#[test]
fn a_budget_of_zero_disables_the_cache() {
    let toks = tokens(0, 2);
    let mut cache = filled(0, "s", &toks);
    assert!(!cache.enabled());
    assert!(cache.lookup("s", &toks).is_empty());
    assert_eq!(cache.stats(), PrefixStats::default());
}

#[test]
fn inserting_a_cached_prefix_again_adds_only_the_new_blocks() {
    let toks = tokens(0, 3);
    let mut cache = filled(1000, "s", &toks[..B]);
    let mut made = Vec::new();
    let added = cache.insert("s", &toks, 10, |i| {
        made.push(i);
        i
    });
    assert_eq!((added, made), (2, vec![1, 2]));
    assert_eq!(cache.stats().bytes, 30);
}
