//! The memory tier's byte bound holds for the real heap, measured with a counting
//! global allocator (so this file holds a single test: nothing else may allocate
//! while it measures).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use kestrel_symbols::store::{entry_weight, StoreConfig, SymbolFrame, SymbolStore, SymbolValue};
use kestrel_symbols::{FileId, FrameKey};
use rand::{Rng, SeedableRng};

struct CountingAllocator;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter
// only observes sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// A realistic value: 1–3 frames, C++/Rust-like names, source paths.
fn value(rng: &mut impl Rng) -> SymbolValue {
    let frames = rng.random_range(1..=3);
    SymbolValue::new(
        (0..frames)
            .map(|_| {
                let name_len = rng.random_range(12..90);
                let file_len = rng.random_range(20..70);
                SymbolFrame {
                    function: Some(Arc::from("f".repeat(name_len).as_str())),
                    file: Some(Arc::from("/s".repeat(file_len / 2).as_str())),
                    line: Some(rng.random_range(1..5000)),
                }
            })
            .collect(),
    )
}

#[test]
fn ten_times_the_capacity_keeps_the_heap_within_the_bound() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for capacity in [2u64 << 20, 32 << 20] {
        runtime.block_on(fill_and_measure(capacity));
    }
}

async fn fill_and_measure(capacity: u64) {
    let store = SymbolStore::open(&StoreConfig {
        dir: None,
        memory_bytes: capacity,
        disk_bytes: 0,
    })
    .await
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(capacity);
    let baseline = LIVE_BYTES.load(Ordering::Relaxed);

    let mut inserted_weight = 0u64;
    let mut inserted = 0u64;
    while inserted_weight < 10 * capacity {
        let key = FrameKey {
            file: FileId(u128::from(inserted / 3)),
            address_or_line: inserted * 16,
        };
        let v = value(&mut rng);
        inserted_weight += entry_weight(&key, &v) as u64;
        store.insert(key, v).await;
        inserted += 1;
    }

    let heap = (LIVE_BYTES.load(Ordering::Relaxed) - baseline) as u64;
    let c = store.counters();
    println!(
        "capacity {capacity} B: inserted {inserted} entries ({inserted_weight} B by weight); \
         resident {} entries, weight {} B, heap {heap} B ({} B/entry), evictions {}",
        c.memory_entries,
        c.memory_bytes,
        heap / c.memory_entries.max(1),
        c.evictions
    );
    let bound = capacity + capacity / 10;
    assert!(
        c.memory_bytes <= bound,
        "weight {} over {bound}",
        c.memory_bytes
    );
    assert!(
        heap <= bound,
        "heap {heap} over {bound}: the weighter undercounts"
    );
    // The tier is really used, not trivially small.
    assert!(c.memory_bytes >= capacity / 2, "{c:?}");
    assert!(c.evictions > 0);
    assert_eq!(c.evictions + c.memory_entries, inserted);
}
