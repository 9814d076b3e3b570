//! The execution engine: code cache, dispatch loop and tier-up by measured execution counts.
//!
//! [`Engine::run`] executes guest code block by block. A block is decoded once
//! ([`decode_block`]) into a cache entry keyed by [`CacheKey`] — the guest-physical address of
//! its first byte plus every translation-time fact in [`BlockKey`] (RIP, code and stack widths,
//! CPL) — and runs in the first tier ([`interp::run_block`] over the pre-decoded instructions).
//! Each entry counts its executions; when the count reaches the policy's threshold the block is
//! compiled by the Cranelift tier ([`Jit::compile_block`]) and from then on runs as host code.
//! A block whose first instruction the JIT refuses ([`JitError::Unsupported`]) stays in the
//! interpreter, which reports the instruction if it is unimplemented there too.
//!
//! # Tier-up threshold (measured)
//! Waiting until a block has run as often as compiling it would have saved, then compiling, is
//! the ski-rental rule: it never costs more than twice the better of "never compile" and
//! "compile at once". `block_reuse/*` in `benches/translate.rs` measures that break-even
//! directly: 203 distinct 7-instruction blocks each run N times. Compiling them all costs
//! ~47 ms (~230 µs per block, ~33 µs per guest instruction); a block execution costs ~197 ns
//! interpreted and ~42 ns compiled (dispatch included), so compiling pays after
//! 230 µs / 155 ns ≈ 1500 executions. Observed: at N = 1000 the interpreter wins (37.5 ms vs
//! 51 ms), at N = 3000 the JIT does (121 vs 76 ms). On the demo kernel (`adaptive_threshold/*`,
//! few blocks, all very hot) any threshold from 1 to 5000 gives the same time within noise
//! (92-96 ms), 20 000 costs +20% and 100 000 +45%. Hence [`DEFAULT_TIER_UP_THRESHOLD`] = 1500.
//!
//! # Measured (release, 2 shared cores, ±15% between runs)
//! - Demo compute kernel, 30.49 M guest instructions from a cold cache: interpreter ~49 M
//!   instructions/s (620 ms), JIT always ~290 M/s (100 ms), adaptive ~220-320 M/s, the same
//!   bytes run natively in the bench process 2.3-3.4 G/s (9-13 ms). Compiled code is ~10×
//!   slower than native, far from the "≤ 2× native" target. `perf` (JIT always): ~20% of the
//!   time is in compiled code, ~25% in the memory helpers (`jit_load` → `dyn GuestMem` →
//!   bounds check + memcpy), ~35% in dispatch (`Engine::run` + `run_compiled`) for 5.25 M block
//!   edges (5.8 instructions per block); each edge also spills and reloads guest registers.
//! - Chaining (`engine_hot_loop/*`, a 10-instruction loop block): compiled 411-466 M
//!   instructions/s with successor memos vs 229 M/s with a hash lookup per dispatch (~1.9×);
//!   interpreted 44-50 vs 36-43 M/s (~1.2×).
//!
//! # Dispatch and chaining
//! A compiled block whose exit goes to a RIP known at translation time (fall-through, `jmp`/
//! `call rel` target, either side of a `jcc`, a REP's own address) jumps straight into its
//! successor's compiled code with a tail call when the exit's *link cell* allows (see
//! [`crate::jit`], "Chaining"): the cell is of the current epoch, the successor fits the
//! remaining budget, no store of the block hit a code page, and no stop points are set.
//! Cells are filled lazily here: a run that returns through a chainable exit reports its cell,
//! and the next dispatch links it to the block it finds (if compiled). The epoch is the
//! translation epoch below, also advanced on every invalidation and flush, so a cell never
//! leads to a dropped block or across a remapping; it also advances when a run starts with
//! another CS base (non-64-bit code: the fetch address depends on it, the key does not).
//! Chained blocks count in `insns_compiled` and [`EngineStats::chained`], not in `dispatches`;
//! tier-up counts only dispatches (chained blocks are compiled already).
//!
//! Measured (release, 2 shared cores): a Linux boot to a shell command under `--accel bt`
//! (5.99 G guest instructions) went from 820 M dispatches and 20.5/21.4 s wall (main, jump
//! cache included) to 41 M dispatches + 778 M chain jumps and 14.6/15.8 s (−28%, two runs
//! each, interleaved). `engine_hot_loop/jit_memo` 411-466 → 640 M instructions/s;
//! `demo_kernel/jit_always` ~100 → 66 ms (460 M/s; native 9.2 ms).
//!
//! Otherwise blocks return to the dispatcher: after a block, the next RIP is in the
//! [`CpuState`]. To keep the hot path off the hash map,
//! every entry remembers its last two successors (key and slot): a monomorphic exit (a loop
//! back edge, the fall-through and target of a `jcc`, the return of a call site) is found by
//! one key comparison. A memo miss (returns, indirect branches) next tries the jump cache
//! (`jump_cache`: 4096 direct-mapped entries from block start to slot, per epoch); only a
//! miss there translates the fetch address and looks the key up in the map (multiply-rotate
//! hashed, `fast_hash`), and records it in both (jump cache + hasher: Linux boot user time
//! −6%, noisy host, 2 runs each). A memo is valid for one translation epoch
//! ([`Engine::new_translation_epoch`], started by the monitor whenever code mappings may have
//! changed), so a hit also skips the linear → physical translation of the fetch address; the
//! mode part of the key is computed once per [`Engine::run`] call (only the monitor changes it).
//!
//! # Invalidation
//! [`Engine::invalidate_range`] drops every entry with an instruction byte in a guest-physical
//! range (found through a page → entries index), and forgets all successor memos (they may
//! name a dropped slot). Host code of dropped compiled blocks stays mapped: `cranelift-jit`
//! cannot free a single function. The leak is bounded by [`EngineStats::compiled_code_bytes`]
//! (plus page rounding per compilation) and only grows when invalidated code is re-compiled.
//!
//! # Budget
//! [`Engine::run`] executes at most `budget` instructions and stops at exactly that many: a
//! block longer than the remaining budget runs its prefix in the interpreter, so
//! `run(n)` twice leaves the same state as `run(2n)` once, and the caller (the full-system
//! loop) can check interrupts between calls.
//!
//! # Self-modifying code
//! Every page a translation reads is announced to the memory ([`GuestMem::watch_code_page`]);
//! the memory reports stores into watched pages ([`GuestMem::take_code_writes`]), asked after
//! every block, and the engine drops the translations on those pages before the next dispatch.
//!
//! # Left
//! - A block that rewrites its own later instructions keeps running its old translation to its
//!   end (the store should end the block after the storing instruction).
//! - The physical key is the page of the first byte; a block whose last instruction straddles
//!   into the next linear page is indexed by the physical range after its start, which is the
//!   wrong page when the two linear pages are not physically contiguous.
//! - Hot *regions*: loops and traces compiled as one function with guest registers in SSA
//!   values. Chaining removed the dispatcher from block edges, but every edge still stores the
//!   written registers and the next block reloads them (DESIGN.md: the real cost of a loop).
//! - Chaining covers direct exits only: returns and indirect jumps still go through the
//!   dispatcher (an inline jump-cache probe in code could chain them too). Any invalidation
//!   unlinks every cell (one epoch for all), which is coarse when guests write code often
//!   (a Linux boot: 1.9 k code-page writes, cells relink lazily at one dispatch each).
//! - An own code allocator (fed by `Context::compile`) so invalidated host code can be freed.
//! - Background compilation (the guest waits for Cranelift today).
//! - REP string instructions run one element per dispatch (RIP stays on them while the count
//!   lasts): correct and interruptible, but a dispatch per element.
//! - The inline TLB/RAM path for loads and stores in compiled code (a quarter of the demo
//!   kernel's time is in the memory helpers), and a cheaper block entry (`run_chained`
//!   recomputes the mode key and builds a `RunCtx` per dispatch, no longer per block).

pub mod demo_kernel;
mod fast_hash;
mod jump_cache;

use crate::interp::{self, BlockExit};
use crate::jit::runtime::LinkCell;
use crate::jit::{decode_block, run_chained, BlockKey, CompiledBlock, Jit, JitError};
use crate::mem::GuestMem;
use crate::sem::Exception;
use crate::state::CpuState;
use fast_hash::FastMap;
use iced_x86::Instruction;
use jump_cache::JumpCache;

/// Executions after which [`TierPolicy::Adaptive`] compiles a block by default.
///
/// The measured compile-cost break-even (`block_reuse/*`, see the module docs): ≈ 1500
/// executions of a 7-instruction block; the demo kernel's time is flat from 1 to 5000.
pub const DEFAULT_TIER_UP_THRESHOLD: u64 = 1500;

/// Instructions per block at most (a size cap: bounds compile time and budget overshoot).
pub const DEFAULT_MAX_BLOCK_INSNS: usize = 64;

/// Bytes in a guest page (the unit of the invalidation index).
const PAGE: u64 = 4096;

/// Above this many pages an invalidation scans all entries instead of the page index.
const INDEX_SCAN_LIMIT: u64 = 256;

/// Which tier runs a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierPolicy {
    /// Interpret a block until it has run `threshold` times, then compile it.
    Adaptive {
        /// Executions before compilation (0 and 1 both compile on first execution).
        threshold: u64,
    },
    /// Never compile (the first tier only).
    InterpreterOnly,
    /// Compile every block before its first execution.
    JitAlways,
}

impl Default for TierPolicy {
    fn default() -> Self {
        TierPolicy::Adaptive {
            threshold: DEFAULT_TIER_UP_THRESHOLD,
        }
    }
}

/// Everything a cached translation depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Guest-physical address of the block's first byte.
    pub phys: u64,
    /// RIP and the mode facts the decoder and the JIT read.
    pub block: BlockKey,
}

impl CacheKey {
    /// The key of the block at CS:RIP in `cpu`'s current mode; translating the fetch address
    /// can fault (#PF on an instruction fetch).
    pub fn of(cpu: &CpuState, mem: &mut dyn GuestMem) -> Result<Self, Exception> {
        let block = BlockKey::of(cpu);
        let phys = mem.code_phys(crate::jit::fetch_linear(cpu))?;
        Ok(CacheKey { phys, block })
    }
}

/// Counters of what the engine did (cumulative over its lifetime).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Blocks decoded into the cache (first-tier translations).
    pub blocks_decoded: u64,
    /// Blocks compiled to host code (second-tier translations).
    pub blocks_compiled: u64,
    /// Compilations triggered by an execution count reaching the threshold.
    pub tier_ups: u64,
    /// Blocks the JIT refused (first instruction unsupported, or a JIT error; logged).
    pub jit_refused: u64,
    /// Of those, refusals that were JIT errors rather than unsupported instructions.
    pub jit_errors: u64,
    /// Block executions dispatched.
    pub dispatches: u64,
    /// Dispatches whose block was found through the predecessor's successor memo.
    pub chain_hits: u64,
    /// Dispatches whose block was found in the jump cache (memo missed).
    pub jump_cache_hits: u64,
    /// Jumps from a compiled block straight into its successor's compiled code (no dispatch:
    /// these blocks are in `insns_compiled` but not in `dispatches`).
    pub chained: u64,
    /// Dispatches whose block was found in the cache's hash map.
    pub cache_hits: u64,
    /// Instructions executed by the interpreter tier.
    pub insns_interpreted: u64,
    /// Instructions executed as compiled code.
    pub insns_compiled: u64,
    /// Entries dropped by invalidation.
    pub blocks_invalidated: u64,
    /// Guest stores into pages holding translations (self-modifying code), by page.
    pub code_page_writes: u64,
    /// Host code bytes ever emitted (never freed; see the module docs).
    pub compiled_code_bytes: u64,
}

/// Why [`Engine::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The instruction budget is spent; the state is between two instructions.
    Budget,
    /// An exception (guest fault or trap, unimplemented instruction, unbacked memory); the
    /// state is precise: at the faulting instruction, or after it for traps (#BP).
    Exception(Exception),
    /// The next instruction is at a stop point ([`Engine::set_stop_points`]); it has not run.
    StopPoint,
}

/// Receives every translation the engine makes ([`Engine::set_translation_log`]): the
/// teaching trace's translation log (guest block → what it became).
pub trait TranslationLog {
    /// A block was decoded into the first tier (`linear`: its fetch address; `bytes`: its
    /// guest code).
    fn decoded(&mut self, key: &CacheKey, linear: u64, insns: &[Instruction], bytes: &[u8]);
    /// A block was compiled to host code after `runs` executions (`host`: its machine code,
    /// which starts at host address `host.as_ptr()`; `compiled`: how many of `insns` it covers).
    fn compiled(
        &mut self,
        key: &CacheKey,
        insns: &[Instruction],
        compiled: usize,
        runs: u64,
        host: &[u8],
    );
    /// The JIT refused a block (it stays interpreted); `why` says why.
    fn refused(&mut self, key: &CacheKey, why: &str);
}

/// The result of [`Engine::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineExit {
    /// Instructions that completed (a faulting instruction does not count; a trap neither).
    pub executed: u64,
    /// Why execution stopped.
    pub reason: StopReason,
}

/// Why an [`Engine`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The Cranelift JIT could not be set up for the host.
    #[error("JIT setup: {0}")]
    Jit(#[from] JitError),
}

/// A remembered successor of a block: the key it ran with and its slot.
#[derive(Debug, Clone, Copy)]
struct Link {
    key: CacheKey,
    slot: u32,
    /// The translation epoch the link was recorded in.
    epoch: u64,
}

/// Whether the JIT has been asked about a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JitState {
    /// Not compiled yet.
    Cold,
    /// Compiled (the entry holds the code).
    Compiled,
    /// The JIT refused it: it stays in the first tier.
    Refused,
}

/// One cached block.
struct Entry {
    key: CacheKey,
    /// The first tier's translation: the decoded instructions.
    insns: Box<[Instruction]>,
    /// One past the last guest-physical byte of the instructions.
    phys_end: u64,
    /// Executions so far.
    count: u64,
    jit: JitState,
    /// The second tier's translation (once hot, or at once under `JitAlways`).
    compiled: Option<CompiledBlock>,
    /// Last two successors, most recent first.
    next: [Option<Link>; 2],
}

/// The code cache and dispatch loop over both tiers.
pub struct Engine {
    jit: Jit,
    policy: TierPolicy,
    max_block_insns: usize,
    /// Whether successor memos are used (off only to measure what they save).
    chaining: bool,
    /// Entries by slot; `None` for a free slot.
    slots: Vec<Option<Entry>>,
    /// Free slots to reuse.
    free: Vec<u32>,
    /// Key → slot.
    index: FastMap<CacheKey, u32>,
    /// Guest-physical page → slots with bytes on it (invalidation).
    pages: FastMap<u64, Vec<u32>>,
    /// Scratch for the code pages the memory reports written.
    written_pages: Vec<u64>,
    /// Current translation epoch (see [`Engine::new_translation_epoch`]); also the chain
    /// epoch of compiled code's link cells, so it also advances whenever a block is dropped.
    /// Starts at 1: a cell never linked has epoch 0.
    epoch: u64,
    /// CS base of the last run (non-64-bit code): linear fetch addresses depend on it, but
    /// the block key does not, so a change starts a new epoch.
    last_cs_base: u64,
    /// Linear-address ranges `[start, end)` dispatch stops at ([`Engine::set_stop_points`]).
    stops: Vec<(u64, u64)>,
    /// Where translations are reported, when someone asked.
    log: Option<Box<dyn TranslationLog>>,
    /// Block start → slot for dispatches the successor memos miss (see [`jump_cache`]).
    jumps: JumpCache,
    stats: EngineStats,
}

impl Engine {
    /// An engine with the default adaptive policy.
    pub fn new() -> Result<Self, EngineError> {
        Self::with_policy(TierPolicy::default())
    }

    /// An engine with an explicit tier policy (tests and difftest force a tier).
    pub fn with_policy(policy: TierPolicy) -> Result<Self, EngineError> {
        Ok(Engine {
            jit: Jit::new()?,
            policy,
            max_block_insns: DEFAULT_MAX_BLOCK_INSNS,
            chaining: true,
            slots: Vec::new(),
            free: Vec::new(),
            index: FastMap::default(),
            pages: FastMap::default(),
            written_pages: Vec::new(),
            epoch: 1,
            last_cs_base: 0,
            stops: Vec::new(),
            log: None,
            jumps: JumpCache::new(),
            stats: EngineStats::default(),
        })
    }

    /// The tier policy.
    pub fn policy(&self) -> TierPolicy {
        self.policy
    }

    /// Changes the tier policy (already compiled blocks stay compiled).
    pub fn set_policy(&mut self, policy: TierPolicy) {
        self.policy = policy;
    }

    /// Sets the block size cap for blocks decoded from now on (at least 1).
    pub fn set_max_block_insns(&mut self, n: usize) {
        self.max_block_insns = n.max(1);
    }

    /// Turns the successor memos on (the default) or off, so every dispatch looks the block up
    /// in the hash map (for measuring what chaining saves).
    pub fn set_chaining(&mut self, on: bool) {
        self.chaining = on;
    }

    /// Makes [`Engine::run`] stop with [`StopReason::StopPoint`] before running an instruction
    /// whose linear address is in one of the `[start, end)` ranges, except at the very start of
    /// a run (so a caller stopped at one can step past it). Blocks are decoded to end before
    /// such an instruction, so the check costs one comparison per dispatch, and only while
    /// ranges are set. Changing the set drops every translation.
    pub fn set_stop_points(&mut self, ranges: Vec<(u64, u64)>) {
        if ranges != self.stops {
            self.stops = ranges;
            self.flush();
        }
    }

    /// The stop points set by [`Engine::set_stop_points`].
    pub fn stop_points(&self) -> &[(u64, u64)] {
        &self.stops
    }

    /// Reports every translation made from now on to `log` (`None`: stop reporting).
    pub fn set_translation_log(&mut self, log: Option<Box<dyn TranslationLog>>) {
        self.log = log;
    }

    /// What the engine has done so far.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Number of blocks in the cache.
    pub fn cached_blocks(&self) -> usize {
        self.index.len()
    }

    /// Runs guest code from `cpu`'s state until an exception or until `budget` instructions
    /// have completed.
    pub fn run(&mut self, cpu: &mut CpuState, mem: &mut dyn GuestMem, budget: u64) -> EngineExit {
        let mut executed = 0u64;
        let mut prev: Option<u32> = None;
        // The mode facts of the key (code/stack width, CPL, #AC) only change in the monitor
        // (segment loads, CR writes, delivery), never inside the tiers: compute them once.
        let mut block = BlockKey::of(cpu);
        let cs_base = cpu.cs.base;
        if block.code_bits != 64 && cs_base != self.last_cs_base {
            // Memos and links skip translating the fetch address, which this base is part of.
            self.last_cs_base = cs_base;
            self.new_translation_epoch();
        }
        // Compiled code may jump block to block only without stop points (they are checked
        // at dispatch) and with memos on (off measures dispatch without any shortcut).
        let chain = self.chaining && self.stops.is_empty();
        // The link cell the last compiled run returned through, to link to the next block.
        let mut pending: *const LinkCell = std::ptr::null();
        // Stores into code made outside the tiers (the monitor's system instructions,
        // delivery frames) since the last run.
        if mem.take_code_writes(&mut self.written_pages) {
            self.invalidate_written_pages();
        }
        loop {
            let remaining = budget.saturating_sub(executed);
            if remaining == 0 {
                return EngineExit {
                    executed,
                    reason: StopReason::Budget,
                };
            }
            block.start = cpu.rip;
            if !self.stops.is_empty() && executed > 0 {
                let linear = fetch_linear_of(&block, cs_base, cpu.rip);
                if in_ranges(&self.stops, linear) {
                    return EngineExit {
                        executed,
                        reason: StopReason::StopPoint,
                    };
                }
            }
            let slot = match prev.and_then(|p| self.chained(p, &block)) {
                Some(s) => {
                    self.stats.chain_hits += 1;
                    s
                }
                None => {
                    let cached = if self.chaining {
                        self.jumps.get(&block)
                    } else {
                        None
                    };
                    // An entry from this epoch vouches for the mapping; an older one is checked
                    // against the TLB (a page-table change since then may have moved the code).
                    let fresh = cached.filter(|&(_, _, epoch)| epoch == self.epoch);
                    let (key, found) = match fresh {
                        Some((s, phys, _)) => (CacheKey { phys, block }, Some(s)),
                        None => {
                            let linear = fetch_linear_of(&block, cs_base, cpu.rip);
                            let phys = match mem.code_phys(linear) {
                                Ok(phys) => phys,
                                Err(e) => {
                                    return EngineExit {
                                        executed,
                                        reason: StopReason::Exception(e),
                                    }
                                }
                            };
                            let same = cached.filter(|&(_, p, _)| p == phys).map(|(s, _, _)| s);
                            (CacheKey { phys, block }, same)
                        }
                    };
                    let s = match found.or_else(|| {
                        self.index
                            .get(&key)
                            .copied()
                            .inspect(|_| self.stats.cache_hits += 1)
                    }) {
                        Some(s) => {
                            if found.is_some() {
                                self.stats.jump_cache_hits += 1;
                            }
                            s
                        }
                        None => match self.translate(cpu, mem, key) {
                            Ok(s) => s,
                            Err(e) => {
                                return EngineExit {
                                    executed,
                                    reason: StopReason::Exception(e),
                                }
                            }
                        },
                    };
                    if let Some(p) = prev {
                        self.link(p, key, s);
                    }
                    self.jumps.insert(block, s, key.phys, self.epoch);
                    s
                }
            };
            let chain_budget = if chain { remaining } else { 0 };
            let exit = self.execute(slot, cpu, mem, remaining, chain_budget, &mut pending);
            executed += exit.executed as u64;
            if let Some(e) = exit.exception {
                return EngineExit {
                    executed,
                    reason: StopReason::Exception(e),
                };
            }
            if exit.executed == 0 {
                // A block always starts at RIP, so this is a tier bug; stop instead of spinning.
                return EngineExit {
                    executed,
                    reason: StopReason::Exception(Exception::Internal("a block executed nothing")),
                };
            }
            // Only a block that reported a store into code pays for asking the memory.
            if exit.code_written && mem.take_code_writes(&mut self.written_pages) {
                self.invalidate_written_pages();
                // The block that just ran may be gone; its slot must not be linked from.
                prev = None;
                pending = std::ptr::null();
                continue;
            }
            if self.chaining {
                prev = Some(slot);
            }
        }
    }

    /// Drops the translations on the pages in `written_pages` (guest stores into code).
    fn invalidate_written_pages(&mut self) {
        let mut pages = std::mem::take(&mut self.written_pages);
        pages.sort_unstable();
        pages.dedup();
        for &page in &pages {
            self.stats.code_page_writes += 1;
            self.invalidate_range(page.saturating_mul(PAGE), PAGE);
        }
        pages.clear();
        self.written_pages = pages;
    }

    /// The successor of `prev` recorded for `block` in the current translation epoch, if
    /// memoized: a hit skips translating the fetch address (the memo holds the physical key).
    fn chained(&self, prev: u32, block: &BlockKey) -> Option<u32> {
        let entry = self.slots.get(prev as usize)?.as_ref()?;
        entry
            .next
            .iter()
            .flatten()
            .find(|l| l.key.block == *block && l.epoch == self.epoch)
            .map(|l| l.slot)
    }

    /// Records `slot` (running with `key`) as the most recent successor of `prev`.
    fn link(&mut self, prev: u32, key: CacheKey, slot: u32) {
        let epoch = self.epoch;
        if let Some(Some(entry)) = self.slots.get_mut(prev as usize) {
            entry.next = [Some(Link { key, slot, epoch }), entry.next[0]];
        }
    }

    /// Starts a new translation epoch: successor memos recorded before no longer vouch for the
    /// linear → physical mapping of their target. Call whenever code mappings may have changed
    /// (TLB flushes, CR0/CR3/CR4/EFER writes); between such events a memo is exactly as good
    /// as a TLB entry, which the CPU may also keep using until it is flushed.
    pub fn new_translation_epoch(&mut self) {
        // Never back to 0 (the epoch of unlinked cells); 2^64 epochs do not happen anyway.
        // Jump-cache entries of older epochs stay, to be checked against the TLB when used.
        self.epoch = self.epoch.wrapping_add(1).max(1);
    }

    /// Forgets every shortcut to a slot (memos are reset by the caller): blocks were dropped,
    /// so slots may be reused and link cells must not be followed.
    fn drop_links(&mut self) {
        self.new_translation_epoch();
        self.jumps.clear();
    }

    /// Decodes the block at CS:RIP into a new cache entry.
    fn translate(
        &mut self,
        cpu: &CpuState,
        mem: &mut dyn GuestMem,
        key: CacheKey,
    ) -> Result<u32, Exception> {
        let mut insns = decode_block(cpu, mem, self.max_block_insns)?;
        let linear = crate::jit::fetch_linear(cpu);
        if !self.stops.is_empty() {
            // End the block before an instruction at a stop point, so dispatch sees it.
            let code_base = linear.wrapping_sub(cpu.rip);
            if let Some(cut) = insns.iter().skip(1).position(|i| {
                in_ranges(
                    &self.stops,
                    code_base.wrapping_add(i.ip()) & linear_mask(cpu),
                )
            }) {
                insns.truncate(cut + 1);
            }
        }
        if let Some(log) = self.log.as_mut() {
            let len: usize = insns.iter().map(Instruction::len).sum();
            let mut bytes = vec![0u8; len];
            // The bytes were just decoded, so the fetch succeeds; show zeros if it does not.
            let _ = mem.fetch(linear, &mut bytes);
            log.decoded(&key, linear, &insns, &bytes);
        }
        let bytes: u64 = insns.iter().map(|i| i.len() as u64).sum();
        let phys_end = key.phys.saturating_add(bytes.max(1));
        let entry = Entry {
            key,
            insns: insns.into_boxed_slice(),
            phys_end,
            count: 0,
            jit: JitState::Cold,
            compiled: None,
            next: [None, None],
        };
        let slot = match self.free.pop() {
            Some(s) => {
                if let Some(place) = self.slots.get_mut(s as usize) {
                    *place = Some(entry);
                }
                s
            }
            None => {
                let s = u32::try_from(self.slots.len())
                    .map_err(|_| Exception::Internal("code cache slot count overflow"))?;
                self.slots.push(Some(entry));
                s
            }
        };
        self.index.insert(key, slot);
        for page in key.phys / PAGE..=(phys_end - 1) / PAGE {
            self.pages.entry(page).or_default().push(slot);
            mem.watch_code_page(page);
        }
        self.stats.blocks_decoded += 1;
        Ok(slot)
    }

    /// Runs the block in `slot` (at most `remaining` instructions), compiling it first when the
    /// policy says it is time. Compiled code may chain on to linked successors within
    /// `chain_budget` instructions. `pending` is the link cell the previous run returned
    /// through (null if none): it is linked to this block if compiled; on return it is the
    /// cell this run returned through.
    fn execute(
        &mut self,
        slot: u32,
        cpu: &mut CpuState,
        mem: &mut dyn GuestMem,
        remaining: u64,
        chain_budget: u64,
        pending: &mut *const LinkCell,
    ) -> BlockExit {
        let cell = std::mem::replace(pending, std::ptr::null());
        let Some(Some(entry)) = self.slots.get_mut(slot as usize) else {
            return BlockExit {
                executed: 0,
                exception: Some(Exception::Internal("dispatch to a free cache slot")),
                code_written: false,
            };
        };
        self.stats.dispatches += 1;
        entry.count += 1;
        if entry.jit == JitState::Cold {
            let due = match self.policy {
                TierPolicy::Adaptive { threshold } => entry.count >= threshold,
                TierPolicy::JitAlways => true,
                TierPolicy::InterpreterOnly => false,
            };
            if due {
                compile(
                    &mut self.jit,
                    entry,
                    cpu,
                    self.policy,
                    &mut self.stats,
                    self.log.as_deref_mut(),
                );
            }
        }
        if let Some(block) = &entry.compiled {
            if !cell.is_null() {
                // SAFETY: the cell belongs to the block the previous run returned from, and
                // nothing was dropped since (the caller clears `pending` on invalidation).
                unsafe { block.link_from(cell, self.epoch) };
            }
            if block.len as u64 <= remaining {
                // SAFETY: every link cell of the current epoch names a live block of this
                // run's mode: cells are linked only to the block dispatched right after their
                // exit (same run, so same mode), and dropping any block starts a new epoch.
                let run = unsafe { run_chained(cpu, mem, block, chain_budget, self.epoch) };
                self.stats.insns_compiled += run.exit.executed as u64;
                self.stats.chained += run.chained;
                *pending = run.exit_cell;
                return run.exit;
            }
        }
        let n = usize::try_from(remaining).unwrap_or(usize::MAX);
        let insns = entry.insns.get(..n).unwrap_or(&entry.insns);
        let exit = interp::run_block(cpu, mem, insns);
        self.stats.insns_interpreted += exit.executed as u64;
        exit
    }

    /// Drops every cached block with an instruction byte in `[phys_start, phys_start + len)`
    /// (call after guest code bytes change); returns how many were dropped.
    pub fn invalidate_range(&mut self, phys_start: u64, len: u64) -> usize {
        if len == 0 {
            return 0;
        }
        let end = phys_start.saturating_add(len);
        let overlaps = |e: &Entry| e.key.phys < end && phys_start < e.phys_end;
        let first_page = phys_start / PAGE;
        let last_page = (end - 1) / PAGE;
        let mut victims: Vec<u32> = if last_page - first_page < INDEX_SCAN_LIMIT {
            (first_page..=last_page)
                .filter_map(|p| self.pages.get(&p))
                .flatten()
                .copied()
                .filter(|&s| matches!(self.slots.get(s as usize), Some(Some(e)) if overlaps(e)))
                .collect()
        } else {
            (0u32..)
                .zip(&self.slots)
                .filter(|(_, e)| e.as_ref().is_some_and(overlaps))
                .map(|(s, _)| s)
                .collect()
        };
        victims.sort_unstable();
        victims.dedup();
        for &s in &victims {
            let Some(entry) = self.slots.get_mut(s as usize).and_then(Option::take) else {
                continue;
            };
            self.index.remove(&entry.key);
            for page in entry.key.phys / PAGE..=(entry.phys_end - 1) / PAGE {
                if let Some(list) = self.pages.get_mut(&page) {
                    list.retain(|&x| x != s);
                    if list.is_empty() {
                        self.pages.remove(&page);
                    }
                }
            }
            self.free.push(s);
        }
        if !victims.is_empty() {
            // Memos and the jump cache may name a freed (soon reused) slot, link cells a
            // dropped block (a new epoch also clears the jump cache).
            for entry in self.slots.iter_mut().flatten() {
                entry.next = [None, None];
            }
            self.drop_links();
            self.stats.blocks_invalidated += victims.len() as u64;
            log::debug!(
                "engine: invalidated {} blocks in {phys_start:#x}+{len:#x}",
                victims.len()
            );
        }
        victims.len()
    }

    /// Drops every cached block (compiled host code stays mapped, as for invalidation).
    pub fn flush(&mut self) -> usize {
        let n = self.index.len();
        self.stats.blocks_invalidated += n as u64;
        // Link cells of the dropped blocks must never be followed again.
        self.drop_links();
        self.slots.clear();
        self.free.clear();
        self.index.clear();
        self.pages.clear();
        self.jumps.clear();
        n
    }
}

/// The fetch address of RIP `rip` in a block of mode `block` with CS base `cs_base`.
fn fetch_linear_of(block: &BlockKey, cs_base: u64, rip: u64) -> u64 {
    if block.code_bits == 64 {
        rip
    } else {
        cs_base.wrapping_add(rip) & 0xffff_ffff
    }
}

/// The linear-address mask of `cpu`'s code (64-bit code has full addresses).
fn linear_mask(cpu: &CpuState) -> u64 {
    if cpu.code_bits() == 64 {
        u64::MAX
    } else {
        0xffff_ffff
    }
}

/// Whether `linear` is in one of the `[start, end)` ranges.
fn in_ranges(ranges: &[(u64, u64)], linear: u64) -> bool {
    ranges.iter().any(|&(s, e)| s <= linear && linear < e)
}

/// Compiles `entry` (the CPU is at its start); a refusal keeps it in the first tier.
fn compile(
    jit: &mut Jit,
    entry: &mut Entry,
    cpu: &CpuState,
    policy: TierPolicy,
    stats: &mut EngineStats,
    log: Option<&mut (dyn TranslationLog + 'static)>,
) {
    let result = jit.compile_block(&entry.insns, cpu);
    if let Some(log) = log {
        match &result {
            Ok(block) => log.compiled(
                &entry.key,
                &entry.insns,
                block.len,
                entry.count,
                block.host_code(),
            ),
            Err(e) => log.refused(&entry.key, &e.to_string()),
        }
    }
    match result {
        Ok(block) => {
            stats.blocks_compiled += 1;
            if matches!(policy, TierPolicy::Adaptive { .. }) {
                stats.tier_ups += 1;
            }
            stats.compiled_code_bytes += block.code_size as u64;
            log::trace!(
                "engine: compiled {:#x} after {} runs ({} of {} instructions, {} bytes)",
                entry.key.phys,
                entry.count,
                block.len,
                entry.insns.len(),
                block.code_size
            );
            entry.compiled = Some(block);
            entry.jit = JitState::Compiled;
        }
        Err(JitError::Unsupported(e)) => {
            log::trace!("engine: {:#x} stays interpreted: {e}", entry.key.phys);
            stats.jit_refused += 1;
            entry.jit = JitState::Refused;
        }
        Err(e) => {
            // A translator bug; the interpreter still runs the block correctly.
            log::warn!("engine: JIT failed on {:#x}: {e}", entry.key.phys);
            stats.jit_refused += 1;
            stats.jit_errors += 1;
            entry.jit = JitState::Refused;
        }
    }
}
