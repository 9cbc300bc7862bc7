//! The reference agent's bad case for hot-frame caches (opentelemetry-ebpf-profiler
//! issue #525): many FileIds with very few frames each, as the Java interpreter
//! produces (one FileId per method).
//!
//! Workload: 100,000 FileIds with 1–3 frames each; 2,000,000 lookups drawn from a
//! Zipf distribution (s = 1) over the FileIds, a uniform frame within the file;
//! a miss inserts the value (as symbolization would).
//!
//! Compared:
//! - baseline: one LRU of 1024 slots per FileId, its capacity allocated up front,
//!   inside an LRU of 65,536 FileIds (the reference agent's layout, with
//!   freelru-style preallocated element and bucket arrays);
//! - the store's memory tier (`SymbolStore::get_memory`, the sync fast path),
//!   bounded in bytes.
//!
//! Resident bytes are counted by a global allocator wrapper (live heap bytes).
//! The table is printed first, then criterion measures hit lookups.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use kestrel_symbols::store::{StoreConfig, SymbolFrame, SymbolStore, SymbolValue};
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

fn live_bytes() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed) as i64
}

const FILES: usize = 100_000;
const LOOKUPS: usize = 2_000_000;
const ZIPF_S: f64 = 1.0;
const OUTER_FILES: usize = 65_536;
const INNER_SLOTS: usize = 1024;

/// splitmix64: deterministic per-rank facts without storing them.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn file_id(rank: usize) -> FileId {
    FileId((u128::from(mix(rank as u64)) << 64) | u128::from(mix(!(rank as u64))))
}

fn frames_of(rank: usize) -> u64 {
    1 + mix(rank as u64 ^ 0x5555) % 3
}

/// What symbolization would produce for a key: 1–2 frames (sometimes an inlined
/// call) with Java/C++-like names and a source path.
fn symbolize(rank: usize, frame: u64) -> SymbolValue {
    let h = mix((rank as u64) << 2 | frame);
    let inlined = h.is_multiple_of(4);
    let mut frames = Vec::with_capacity(2);
    if inlined {
        frames.push(SymbolFrame {
            function: Some(Arc::from(format!(
                "org.example.util.Helper{:x}::inlined{}",
                h % 997,
                frame
            ))),
            file: Some(Arc::from(format!(
                "org/example/util/Helper{:x}.java",
                h % 997
            ))),
            line: Some((h % 2000) as u32),
        });
    }
    frames.push(SymbolFrame {
        function: Some(Arc::from(format!(
            "org.example.service.Module{rank}::method{frame}"
        ))),
        file: Some(Arc::from(format!("org/example/service/Module{rank}.java"))),
        line: Some((h % 3000) as u32),
    });
    SymbolValue::new(frames)
}

/// The lookup trace: (rank, frame) pairs, Zipf over ranks.
fn trace() -> Vec<(usize, u64)> {
    let mut cdf = Vec::with_capacity(FILES);
    let mut total = 0.0;
    for rank in 1..=FILES {
        total += 1.0 / (rank as f64).powf(ZIPF_S);
        cdf.push(total);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(525);
    (0..LOOKUPS)
        .map(|_| {
            let u = rng.random::<f64>() * total;
            let rank = cdf.partition_point(|&c| c < u).min(FILES - 1);
            let frame = rng.random_range(0..frames_of(rank));
            (rank, frame)
        })
        .collect()
}

/// A fixed-capacity LRU laid out like the reference agent's freelru: element and
/// bucket arrays allocated (and initialized) for the full capacity up front.
struct FixedLru<K, V> {
    elements: Vec<Element<K, V>>,
    buckets: Vec<u32>,
    len: usize,
    head: u32,
    tail: u32,
}

struct Element<K, V> {
    key: K,
    value: Option<V>,
    prev: u32,
    next: u32,
    bucket_next: u32,
}

const NIL: u32 = u32::MAX;

trait LruKey: Copy + Eq {
    /// The key of a never-used slot.
    fn empty() -> Self;
    fn hash32(&self) -> u32;
}

impl LruKey for u64 {
    fn empty() -> Self {
        0
    }
    fn hash32(&self) -> u32 {
        (mix(*self) >> 32) as u32
    }
}

impl LruKey for FileId {
    fn empty() -> Self {
        FileId(0)
    }
    fn hash32(&self) -> u32 {
        (mix(self.0 as u64 ^ (self.0 >> 64) as u64) >> 32) as u32
    }
}

impl<K: LruKey, V> FixedLru<K, V> {
    fn new(capacity: usize) -> Self {
        let elements = (0..capacity)
            .map(|_| Element {
                key: K::empty(),
                value: None,
                prev: NIL,
                next: NIL,
                bucket_next: NIL,
            })
            .collect();
        FixedLru {
            elements,
            buckets: vec![NIL; capacity.next_power_of_two()],
            len: 0,
            head: NIL,
            tail: NIL,
        }
    }

    fn bucket(&self, key: &K) -> usize {
        key.hash32() as usize & (self.buckets.len() - 1)
    }

    fn find(&self, key: &K) -> Option<u32> {
        let mut i = self.buckets[self.bucket(key)];
        while i != NIL {
            let e = &self.elements[i as usize];
            if e.key == *key {
                return Some(i);
            }
            i = e.bucket_next;
        }
        None
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let e = &self.elements[i as usize];
            (e.prev, e.next)
        };
        if prev != NIL {
            self.elements[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.elements[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        self.elements[i as usize].prev = NIL;
        self.elements[i as usize].next = self.head;
        if self.head != NIL {
            self.elements[self.head as usize].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn get(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        self.elements[i as usize].value.as_mut()
    }

    fn remove_from_bucket(&mut self, i: u32) {
        let b = self.bucket(&self.elements[i as usize].key);
        let mut cursor = self.buckets[b];
        let mut prev = NIL;
        while cursor != NIL {
            let next = self.elements[cursor as usize].bucket_next;
            if cursor == i {
                if prev == NIL {
                    self.buckets[b] = next;
                } else {
                    self.elements[prev as usize].bucket_next = next;
                }
                return;
            }
            prev = cursor;
            cursor = next;
        }
    }

    /// Inserts a key known to be absent; returns the slot's value.
    fn insert(&mut self, key: K, value: V) -> &mut V {
        let i = if self.len < self.elements.len() {
            self.len += 1;
            (self.len - 1) as u32
        } else {
            let victim = self.tail;
            self.unlink(victim);
            self.remove_from_bucket(victim);
            victim
        };
        let b = self.bucket(&key);
        let e = &mut self.elements[i as usize];
        e.key = key;
        e.value = Some(value);
        e.bucket_next = self.buckets[b];
        self.buckets[b] = i;
        self.push_front(i);
        // The slot's value was set two statements above.
        self.elements[i as usize]
            .value
            .as_mut()
            .expect("value just stored")
    }
}

type Baseline = FixedLru<FileId, Box<FixedLru<u64, SymbolValue>>>;

fn baseline_lookup(cache: &mut Baseline, file: FileId, address: u64) -> Option<SymbolValue> {
    cache.get(&file)?.get(&address).cloned()
}

fn baseline_insert(cache: &mut Baseline, file: FileId, address: u64, value: SymbolValue) {
    let inner = match cache.find(&file) {
        // `find` just saw the key, so `get` finds it too.
        Some(_) => cache.get(&file).expect("key present"),
        None => cache.insert(file, Box::new(FixedLru::new(INNER_SLOTS))),
    };
    inner.insert(address, value);
}

fn key(rank: usize, frame: u64) -> FrameKey {
    FrameKey {
        file: file_id(rank),
        address_or_line: 0x1000 + frame * 0x40,
    }
}

struct Row {
    name: String,
    resident: i64,
    hit_rate: f64,
    lookups_per_s: f64,
}

fn run_baseline(trace: &[(usize, u64)]) -> (Row, Baseline) {
    let before = live_bytes();
    let mut cache: Baseline = FixedLru::new(OUTER_FILES);
    let mut hits = 0usize;
    for &(rank, frame) in trace {
        let k = key(rank, frame);
        if baseline_lookup(&mut cache, k.file, k.address_or_line).is_some() {
            hits += 1;
        } else {
            baseline_insert(
                &mut cache,
                k.file,
                k.address_or_line,
                symbolize(rank, frame),
            );
        }
    }
    let resident = live_bytes() - before;
    // Warm replay, lookups only.
    let start = Instant::now();
    for &(rank, frame) in trace {
        let k = key(rank, frame);
        black_box(baseline_lookup(&mut cache, k.file, k.address_or_line));
    }
    let elapsed = start.elapsed().as_secs_f64();
    (
        Row {
            name: format!("baseline: LRU({OUTER_FILES} files) x LRU({INNER_SLOTS} slots)"),
            resident,
            hit_rate: hits as f64 / trace.len() as f64,
            lookups_per_s: trace.len() as f64 / elapsed,
        },
        cache,
    )
}

fn run_store(
    runtime: &tokio::runtime::Runtime,
    trace: &[(usize, u64)],
    memory_bytes: u64,
) -> (Row, SymbolStore) {
    let before = live_bytes();
    let store = runtime
        .block_on(SymbolStore::open(&StoreConfig {
            dir: None,
            memory_bytes,
            disk_bytes: 0,
        }))
        .expect("memory-only store opens");
    let mut hits = 0usize;
    for &(rank, frame) in trace {
        let k = key(rank, frame);
        if store.get_memory(&k).is_some() {
            hits += 1;
        } else {
            runtime.block_on(store.insert(k, symbolize(rank, frame)));
        }
    }
    let resident = live_bytes() - before;
    let start = Instant::now();
    for &(rank, frame) in trace {
        black_box(store.get_memory(&key(rank, frame)));
    }
    let elapsed = start.elapsed().as_secs_f64();
    (
        Row {
            name: format!("store memory tier, {} MiB bound", memory_bytes >> 20),
            resident,
            hit_rate: hits as f64 / trace.len() as f64,
            lookups_per_s: trace.len() as f64 / elapsed,
        },
        store,
    )
}

fn print_table(rows: &[Row]) {
    let baseline = rows[0].resident as f64;
    println!();
    println!(
        "{FILES} FileIds x 1-3 frames, {LOOKUPS} Zipf(s={ZIPF_S}) lookups, one core; \
         resident = live heap bytes (counting allocator); lookups/s = warm replay of the trace"
    );
    println!(
        "{:<48} {:>14} {:>10} {:>9} {:>14}",
        "cache", "resident B", "% of base", "hit rate", "lookups/s"
    );
    for r in rows {
        println!(
            "{:<48} {:>14} {:>9.2}% {:>8.2}% {:>14.0}",
            r.name,
            r.resident,
            100.0 * r.resident as f64 / baseline,
            100.0 * r.hit_rate,
            r.lookups_per_s
        );
    }
    println!();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let trace = trace();
    let distinct_files = {
        let mut seen = vec![false; FILES];
        trace.iter().for_each(|&(r, _)| seen[r] = true);
        seen.iter().filter(|s| **s).count()
    };
    println!("trace touches {distinct_files} distinct FileIds");

    // The baseline allocates ~3 GB; KESTREL_BENCH_NO_TABLE=1 skips the table
    // when only the criterion part is wanted (profiling).
    if std::env::var_os("KESTREL_BENCH_NO_TABLE").is_none() {
        let mut rows = Vec::new();
        let (row, baseline) = run_baseline(&trace);
        rows.push(row);
        drop(baseline);
        for mib in [16u64, 32, 64] {
            let (row, store) = run_store(&runtime, &trace, mib << 20);
            rows.push(row);
            drop(store);
        }
        print_table(&rows);
    }

    // Criterion: hit lookups on a warm store (keys known to be resident).
    let (_, store) = run_store(&runtime, &trace, 64 << 20);
    let hot: Vec<FrameKey> = trace
        .iter()
        .map(|&(r, f)| key(r, f))
        .filter(|k| store.get_memory(k).is_some())
        .take(100_000)
        .collect();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("hit_lookups");
    group.throughput(Throughput::Elements(hot.len() as u64));
    group.bench_function("store_get_memory", |b| {
        b.iter(|| {
            for k in &hot {
                black_box(store.get_memory(black_box(k)));
            }
        })
    });
    group.finish();
    drop(store);
    c.final_summary();
}
