//! The Cranelift tier: translation blocks compiled to host code from the shared semantics.
//!
//! [`Jit::compile_block`] runs every instruction's semantics ([`crate::sem::execute`]) through
//! `emitter::JitEmitter`, the second implementation of [`Emitter`] (the
//! interpreter is the first), so no instruction's behaviour is written twice. A compiled block
//! is a host function `(cpu: *mut CpuState, ctx: *mut RunCtx) -> exit code`; [`run_compiled`]
//! calls it and returns the same [`BlockExit`] as the interpreter's
//! [`run_block`](crate::interp::run_block) over the same instruction list, so callers (and the
//! tier-equivalence tests) treat both tiers alike.
//!
//! # Blocks and exits
//! A block is a run of decoded instructions ([`decode_block`] ends one at a control transfer,
//! a trap, a 4 KiB page boundary or a size cap). Inside it, guest registers and RFLAGS are
//! Cranelift Variables and arithmetic flags stay lazy across instructions (cmp; jcc and adc
//! chains never materialize RFLAGS in between). An instruction that transfers control ends the
//! block unless its target is the next instruction in the list (a not-taken jcc falls through
//! into the rest, as `run_block` does). Exceptions leave through cold side exits that store the
//! state as at the start of the faulting instruction (see `emitter.rs`): #DE, #GP/#SS from
//! canonical checks, memory faults from the helpers, and #UD/#BP of UD2/INT3.
//!
//! An instruction whose semantics reports [`Exception::Unimplemented`] (or any other
//! translation-time refusal) ends the block *before* it; if it is the first instruction,
//! [`Jit::compile_block`] returns [`JitError::Unsupported`] and the dispatcher runs it in the
//! interpreter, which reports it.
//!
//! # Chaining
//! Block functions use Cranelift's tail calling convention (`CallConv::Tail`); Rust enters
//! them through a trampoline compiled once in the host convention (`(cpu, ctx, entry)` →
//! `call_indirect`). Every compiled block owns a `runtime::BlockMeta` at a stable heap address
//! that its code embeds: up to [`runtime::LINK_CELLS`] link cells, one per distinct static
//! exit RIP (`static_targets`: direct branch/call target, `jcc` fall-through, fall-through of
//! an ordinary last instruction, a REP's own address), and the block's exception table. A
//! normal exit compares the run-time RIP with those targets (no comparison when it is a
//! constant) and, for a match, tail-calls (`return_call_indirect`) the cell's target when
//! `cell.epoch == ctx.chain_epoch`, `executed + cell.len <= ctx.chain_budget` and (if the
//! block stored anything) `ctx.code_written == 0`; it then subtracts `executed` from the
//! budget and counts the jump. Otherwise it stores the cell's address in `ctx.exit_cell` and
//! returns; the engine links the cell to the next block it dispatches (`run_chained`).
//! `run_chained` reports the whole chain as one [`BlockExit`]: executed = the budget spent
//! by the jumps plus the last block's count; an exception exit stores its block's meta in
//! `ctx.exc_meta`, so its index resolves against the raising block's own table; memory faults
//! come through `ctx.fault` as before. [`run_compiled`] passes a budget of 0 (never chains).
//! Cost per chainable exit: ~17 IR instructions on the fast path (cell and ctx loads, two
//! compares, budget and counter stores) instead of returning to Rust.
//!
//! # Memory
//! Loads and stores of 1, 2, 4 and 8 bytes first try the MMU's software TLB inline
//! (`JitEmitter::tlb_hit`): the slot of `(addr >> 12) & 511` in the current privilege half of
//! the read or write array ([`crate::mmu::TlbEntry`]: tag at 0, host pointer at 8, 24 bytes),
//! a hit when its tag equals the page number of the access's *last* byte (so a page-crossing
//! or wrapping access misses without a separate bounds test) and its host pointer is not null
//! (RAM, not MMIO); then one little-endian load/store at `host + (addr & 0xfff)`. Everything
//! else — misses, faults, page crossing, MMIO, clean pages and watched code pages (which never
//! have write entries) — calls the `extern "C"` helpers ([`runtime`]) through
//! `&mut dyn GuestMem` in a cold block, as before, so faults, A/D updates and code-write
//! detection are exactly the helper path's. The table pointers are not baked into code:
//! [`runtime::RunCtx`] carries them, filled per block run from
//! [`GuestMem::fast_path`](crate::mem::GuestMem::fast_path) (the CPL picks the half and entries
//! change on every fill and flush); a memory without a fast path (`FlatMem`) gets a static
//! all-invalid half, so one compiled block runs over either memory. While a code write is
//! pending at block entry `SystemMem` hands out no write half, so every store reports it as
//! `jit_store` does. Inline hits do not count in [`crate::mmu::MmuStats::hits`].
//!
//! Cost: ~23 IR instructions per access (the straight-line 31-instruction bench block with 6
//! accesses: 976 → 1120 IR instructions, host code 6024 → 6640 bytes, compile time
//! ~2.1 → ~2.6 ms min of 200 on 2 loaded cores, +15% IR and ~+20% time).
//!
//! # Left
//! - Code-page write tracking for invalidation on the store path (the cache, dispatch, successor
//!   memos and tier-up live in [`crate::engine`]).
//! - Hot regions: loops compiled as one function (a back edge to the block start could jump
//!   to the loop header instead of exiting, with an exit-request check for interrupts).
//! - Code memory: `cranelift-jit` maps pages per `finalize_definitions` and never frees a
//!   function (compiled blocks stay valid for the process lifetime); an own code cache fed by
//!   `Context::compile` is needed for invalidation at scale.
//! - Inline TLB path: accesses of other sizes (10/16 bytes: x87, SSE) and instruction
//!   fetch still always call the helpers; a page-crossing access always takes the helper (two
//!   lookups), as does any access to MMIO. Per-access IR could shrink further by a shared
//!   out-of-line miss stub per block.
//! - Exit-time stores are an over-approximation (every register written anywhere in the block).
//! - Compile cost: measured ~27 µs per guest instruction (31-instruction block, 781 IR
//!   instructions, 850 µs, release, verifier off; `benches/translate.rs`), an order above the
//!   DESIGN estimate. Almost all of it is Cranelift itself (regalloc, e-graph) on IR size: each
//!   memory access costs a canonical check, the inline TLB test (~16 IR instructions) and a
//!   cold helper call with a status branch, and each instruction that can fault has a cold
//!   exit that folds the lazy flags inline (~30 IR instructions) and stores the written
//!   registers. The same block measured 976 IR instructions before the inline TLB path and
//!   1120 after (see Memory). Next steps: fold flags in fault exits through one out-of-line
//!   helper, and fewer exits per block.
//! - Hot loop (10 instructions, one block re-entered per iteration): ~745 M guest
//!   instructions/s compiled vs ~71 M/s interpreted; block entry/exit dominates the compiled
//!   figure, which region compilation removes. Chaining (see above) removed the return to the
//!   dispatcher but not the register stores at an exit and reloads at the next entry: a back
//!   edge to the block's own start could branch to its top with the registers in Variables.
//! - Chained exits of indirect branches and returns (an inline probe of the engine's jump
//!   cache), and a cheaper link check (the budget and epoch loads could be one).

mod emitter;
pub mod runtime;

use crate::interp::BlockExit;
use crate::mem::GuestMem;
use crate::sem::{self, Emitter, Exception};
use crate::state::{CpuMode, CpuState};
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{isa::CallConv, Context};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Module};
use emitter::{block_signature, ExitKind, JitEmitter};
use iced_x86::{FlowControl, Instruction, OpKind};
use runtime::{BlockMeta, LinkCell, MetaBox, RunCtx};

/// The trampoline Rust enters compiled code through: calls the tail-convention block function
/// at `entry` with `(cpu, ctx)` and returns its exit code (host calling convention).
type TrampolineFn = unsafe extern "C" fn(*mut CpuState, *mut RunCtx<'_>, u64) -> u64;

/// Why a block could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// The first instruction cannot be compiled (unimplemented); run it in the interpreter.
    #[error("first instruction not compilable: {0}")]
    Unsupported(Exception),
    /// No instructions were given.
    #[error("empty block")]
    Empty,
    /// The host ISA could not be set up.
    #[error("host ISA: {0}")]
    Isa(String),
    /// Cranelift rejected the function (a translator bug).
    #[error("cranelift: {0}")]
    Codegen(String),
    /// The semantics broke the emitter contract (a translator bug).
    #[error("emitter contract: {0}")]
    Contract(&'static str),
}

/// The translation-time facts a compiled block depends on (part of its cache key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// RIP of the first instruction.
    pub start: u64,
    /// Code segment default size: 16, 32 or 64.
    pub code_bits: u32,
    /// Stack-pointer width: 16, 32 or 64.
    pub stack_bits: u32,
    /// Current privilege level.
    pub cpl: u8,
    /// CR0.AM with CPL 3: data accesses carry an #AC check ([`sem::alignment_checks`]).
    pub alignment_checks: bool,
}

impl BlockKey {
    /// The key for a block starting at `cpu.rip` in `cpu`'s current mode.
    pub fn of(cpu: &CpuState) -> Self {
        let code_bits = cpu.code_bits();
        // The same rule as the interpreter (Interp::new): SS.B picks 32 over 16 outside
        // 64-bit, real and virtual-8086 mode.
        let stack_bits = if code_bits == 64 {
            64
        } else if cpu.mode() != CpuMode::Real && cpu.mode() != CpuMode::Virtual8086 && cpu.ss.db {
            32
        } else {
            16
        };
        BlockKey {
            start: cpu.rip,
            code_bits,
            stack_bits,
            cpl: cpu.cpl(),
            alignment_checks: sem::alignment_checks(cpu),
        }
    }
}

/// A block compiled to host code.
#[derive(Debug)]
pub struct CompiledBlock {
    /// What the translation depends on.
    pub key: BlockKey,
    /// Number of leading instructions of the given list that were compiled.
    pub len: usize,
    /// Size of the host code in bytes.
    pub code_size: usize,
    /// Host address of the block function (tail calling convention: entered through
    /// `trampoline`, or tail-called by a chained predecessor).
    entry: u64,
    trampoline: TrampolineFn,
    /// Link cells and exception table at the address the code embeds.
    meta: MetaBox,
}

impl CompiledBlock {
    /// The block's host machine code (for the translation log).
    pub fn host_code(&self) -> &[u8] {
        // SAFETY: `entry` is the start of `code_size` bytes of finalized code that cranelift-jit
        // keeps mapped (readable and executable) for the JIT's lifetime; nothing writes them.
        unsafe { std::slice::from_raw_parts(self.entry as *const u8, self.code_size) }
    }

    /// Links `cell` (an exit cell some run reported, [`ChainedExit::exit_cell`]) to this block
    /// for chain epoch `epoch`, if the cell's exit goes to this block's start.
    ///
    /// # Safety
    /// `cell` must point to a link cell of a compiled block that is still alive.
    pub(crate) unsafe fn link_from(&self, cell: *const LinkCell, epoch: u64) {
        // SAFETY: the caller guarantees the cell is alive; cells are only accessed through
        // shared references (their fields are `Cell`s), and no code runs meanwhile.
        let cell = unsafe { &*cell };
        if cell.rip.get() == self.key.start {
            cell.target.set(self.entry);
            cell.len.set(self.len as u64);
            cell.epoch.set(epoch);
        }
    }
}

/// The Cranelift JIT: a host ISA, a code module and reusable compilation contexts.
pub struct Jit {
    module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    call_conv: CallConv,
    trampoline: TrampolineFn,
}

/// How one compilation attempt ended without a function.
enum Attempt {
    /// Instruction `i` refused translation; compile the ones before it.
    StopBefore(usize, Exception),
    /// Nothing to salvage.
    Fatal(JitError),
}

impl Jit {
    /// A JIT for the host CPU: opt level `speed`, frame pointers preserved, the IR verifier on
    /// in debug builds only (it costs ~40% compile time).
    pub fn new() -> Result<Self, JitError> {
        let mut flags = settings::builder();
        let set = |f: &mut settings::Builder, k: &str, v: &str| {
            f.set(k, v)
                .map_err(|e| JitError::Isa(format!("{k}={v}: {e}")))
        };
        set(&mut flags, "opt_level", "speed")?;
        set(&mut flags, "preserve_frame_pointers", "true")?;
        set(
            &mut flags,
            "enable_verifier",
            if cfg!(debug_assertions) {
                "true"
            } else {
                "false"
            },
        )?;
        let isa = cranelift_native::builder()
            .map_err(|e| JitError::Isa(e.to_string()))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| JitError::Isa(e.to_string()))?;
        let call_conv = isa.default_call_conv();
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let trampoline = Self::compile_trampoline(&mut module, &mut ctx, &mut fctx)?;
        Ok(Jit {
            module,
            ctx,
            fctx,
            call_conv,
            trampoline,
        })
    }

    /// Compiles the trampoline `(cpu, ctx, entry) -> call entry(cpu, ctx)` in the host
    /// calling convention: Rust cannot call a tail-convention function itself.
    fn compile_trampoline(
        module: &mut JITModule,
        ctx: &mut Context,
        fctx: &mut FunctionBuilderContext,
    ) -> Result<TrampolineFn, JitError> {
        let codegen = |e: String| JitError::Codegen(format!("trampoline: {e}"));
        module.clear_context(ctx);
        let mut sig = module.make_signature();
        for _ in 0..3 {
            sig.params.push(AbiParam::new(types::I64));
        }
        sig.returns.push(AbiParam::new(types::I64));
        ctx.func.signature = sig.clone();
        ctx.func.name = UserFuncName::user(0, 1);
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let p = b.block_params(block).to_vec();
        let tail = b.import_signature(block_signature());
        let call = b.ins().call_indirect(tail, p[2], &[p[0], p[1]]);
        let code = b.inst_results(call)[0];
        b.ins().return_(&[code]);
        b.seal_all_blocks();
        b.finalize(module.isa().frontend_config());
        let id = module
            .declare_anonymous_function(&sig)
            .map_err(|e| codegen(e.to_string()))?;
        module
            .define_function(id, ctx)
            .map_err(|e| codegen(format!("{e:?}")))?;
        module
            .finalize_definitions()
            .map_err(|e| codegen(e.to_string()))?;
        let code = module.get_finalized_function(id);
        // SAFETY: `code` is the finalized entry of a function with exactly this signature
        // (three i64/pointer arguments, one i64 result, the host's default C calling
        // convention); cranelift-jit never unmaps finalized code.
        Ok(unsafe { std::mem::transmute::<*const u8, TrampolineFn>(code) })
    }

    /// Compiles the longest compilable prefix of `insns` for a CPU in `cpu`'s current mode,
    /// starting at `cpu.rip` (which must be `insns[0].ip()`).
    pub fn compile_block(
        &mut self,
        insns: &[Instruction],
        cpu: &CpuState,
    ) -> Result<CompiledBlock, JitError> {
        let key = BlockKey::of(cpu);
        let mut n = insns.len();
        loop {
            if n == 0 {
                return Err(JitError::Empty);
            }
            let r = self.try_compile(insns.get(..n).unwrap_or(insns), key);
            if r.is_err() {
                // An abandoned FunctionBuilder leaves its context dirty.
                self.fctx = FunctionBuilderContext::new();
            }
            match r {
                Ok(b) => return Ok(b),
                Err(Attempt::StopBefore(0, exc)) => return Err(JitError::Unsupported(exc)),
                Err(Attempt::StopBefore(i, exc)) => {
                    log::debug!("jit: block at {:#x} ends before #{i}: {exc}", key.start);
                    n = i;
                }
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
    }

    fn try_compile(
        &mut self,
        insns: &[Instruction],
        key: BlockKey,
    ) -> Result<CompiledBlock, Attempt> {
        self.module.clear_context(&mut self.ctx);
        let sig = block_signature();
        self.ctx.func.signature = sig.clone();
        self.ctx.func.name = UserFuncName::user(0, 0);

        let frontend = self.module.isa().frontend_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let mut meta = MetaBox::new();
        let mut e = JitEmitter::new(
            &mut b,
            self.call_conv,
            meta.as_ptr(),
            key.code_bits,
            key.stack_bits,
            key.cpl,
            key.alignment_checks,
        );
        let mut len = 0;
        for (i, insn) in insns.iter().enumerate() {
            e.begin_insn(i, insn.ip(), insn.next_ip());
            let r = sem::execute(&mut e, insn);
            if let Some(msg) = e.error {
                return Err(Attempt::Fatal(JitError::Contract(msg)));
            }
            len = i + 1;
            match r {
                Ok(()) => {
                    let jump = e.take_jump();
                    if e.stored() && insns.get(i + 1).is_some() {
                        // A store into translated code ends the block after this
                        // instruction: the rest may have been rewritten.
                        let rip = match jump {
                            Some(t) => t,
                            None => e.imm(insn.next_ip()),
                        };
                        e.exit_if_code_written(rip, i + 1);
                    }
                    let targets = static_targets(insn);
                    match (jump, insns.get(i + 1)) {
                        (Some(t), Some(next)) => {
                            e.exit_unless_falls_to(t, next.ip(), i + 1, &targets)
                        }
                        (Some(t), None) => {
                            e.exit_to(t, i + 1, &targets);
                            break;
                        }
                        (None, Some(next)) if next.ip() == insn.next_ip() => {}
                        (None, _) => {
                            // End of the list, or the list is not contiguous (run_block stops).
                            let rip = e.imm(insn.next_ip());
                            e.exit_to(rip, i + 1, &[insn.next_ip()]);
                            break;
                        }
                    }
                }
                // Raised whenever execution reaches this point (UD2, INT3, ...).
                Err(exc @ Exception::Cpu { .. }) => {
                    e.exit_exception(exc);
                    break;
                }
                Err(exc) => return Err(Attempt::StopBefore(i, exc)),
            }
        }
        e.finish_exits();
        let exceptions = std::mem::take(&mut e.exceptions);
        for (cell, &rip) in meta.get().cells.iter().zip(e.cell_rips()) {
            cell.rip.set(rip);
        }
        drop(e);
        meta.set_exceptions(exceptions);
        b.seal_all_blocks();
        b.finalize(frontend);
        log::trace!(
            "jit: block at {:#x}: {len} guest instructions, {} IR instructions",
            key.start,
            self.ctx.func.dfg.num_insts()
        );

        let fatal = |m: String| Attempt::Fatal(JitError::Codegen(m));
        let id = self
            .module
            .declare_anonymous_function(&sig)
            .map_err(|e| fatal(e.to_string()))?;
        self.module
            .define_function(id, &mut self.ctx)
            .map_err(|e| fatal(format!("{e:?}")))?;
        let code_size = self
            .ctx
            .compiled_code()
            .map(|c| c.code_buffer().len())
            .unwrap_or(0);
        self.module
            .finalize_definitions()
            .map_err(|e| fatal(e.to_string()))?;
        let entry = self.module.get_finalized_function(id) as u64;
        Ok(CompiledBlock {
            key,
            len,
            code_size,
            entry,
            trampoline: self.trampoline,
            meta,
        })
    }
}

/// Runs a compiled block on `cpu` and `mem`; the result means what
/// [`run_block`](crate::interp::run_block) over the block's instructions would return.
///
/// A block whose first instruction is not at `cpu.rip` executes nothing (as `run_block`); one
/// compiled for another mode (key mismatch) reports [`Exception::Internal`] without running.
/// Never chains to other blocks (that is the engine's `run_chained`).
pub fn run_compiled(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    block: &CompiledBlock,
) -> BlockExit {
    // SAFETY: a chain budget of 0 never lets the code follow a link cell.
    unsafe { run_chained(cpu, mem, block, 0, 0) }.exit
}

/// What `run_chained` did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainedExit {
    /// The whole run, as `run_block` over all the blocks it executed back to back would
    /// report it (executed: every chained block's instructions plus the last one's).
    pub exit: BlockExit,
    /// Chain jumps taken in compiled code.
    pub chained: u64,
    /// The link cell of the chainable exit the run returned through without chaining (null
    /// when it left otherwise): link it to the next block once the dispatcher has it.
    pub exit_cell: *const LinkCell,
}

/// [`run_compiled`] that lets the code jump from block to block through their link cells while
/// the cells are of chain epoch `epoch` and at most `budget` instructions run in all
/// (0: no chaining).
///
/// # Safety
/// Every link cell of every compiled block whose epoch is `epoch` must name the code of a
/// block that is alive (not dropped) and was compiled for `block`'s mode: the engine starts a
/// new epoch whenever it drops a block.
pub(crate) unsafe fn run_chained(
    cpu: &mut CpuState,
    mem: &mut dyn GuestMem,
    block: &CompiledBlock,
    budget: u64,
    epoch: u64,
) -> ChainedExit {
    let nothing = |exception| ChainedExit {
        exit: BlockExit {
            executed: 0,
            exception,
            code_written: false,
        },
        chained: 0,
        exit_cell: std::ptr::null(),
    };
    if cpu.rip != block.key.start {
        return nothing(None);
    }
    if BlockKey::of(cpu) != block.key {
        return nothing(Some(Exception::Internal(
            "compiled block run in another CPU mode",
        )));
    }
    let mut ctx = RunCtx::new(mem);
    ctx.chain_budget = budget;
    ctx.chain_epoch = epoch;
    // SAFETY: the trampoline calls the block function (compiled for the tail-call signature
    // `(cpu, ctx) -> i64`) at `entry`; `cpu` and `ctx` are exclusive borrows alive for the
    // call, and the code only accesses CpuState fields at their offset_of! offsets, RunCtx
    // through its u64 fields and the helpers, and link cells of live blocks (the caller's
    // promise for `epoch`; none at all for a budget of 0).
    let code = unsafe { (block.trampoline)(cpu, &mut ctx, block.entry) };
    let last = (code & 0xffff_ffff) as usize;
    let chained_insns = budget.wrapping_sub(ctx.chain_budget);
    let executed = usize::try_from(chained_insns)
        .unwrap_or(usize::MAX)
        .saturating_add(last);
    let kind = (code >> 32) & 0xff;
    let exception = if kind == ExitKind::Normal as u64 {
        None
    } else if kind == ExitKind::Exception as u64 {
        let index = usize::try_from(code >> 40).unwrap_or(usize::MAX);
        let meta = ctx.exc_meta as *const BlockMeta;
        let table = if meta.is_null() {
            &block.meta.get().exceptions
        } else {
            // SAFETY: the block that raised stored its own meta's address, and it is alive:
            // `block` itself or a block reached through a link of the current epoch.
            unsafe { &(*meta).exceptions }
        };
        Some(
            table
                .get(index)
                .copied()
                .unwrap_or(Exception::Internal("bad exception index from a block")),
        )
    } else {
        Some(match ctx.fault {
            Some(f) => f,
            None => Exception::Internal("memory exit without a recorded fault"),
        })
    };
    let exit_cell = if exception.is_none() {
        ctx.exit_cell as *const LinkCell
    } else {
        std::ptr::null()
    };
    ChainedExit {
        exit: BlockExit {
            executed,
            exception,
            code_written: ctx.code_written != 0,
        },
        chained: ctx.chained,
        exit_cell,
    }
}

/// The RIPs a block ending in `insn` may continue at that are known at translation time:
/// the target of a direct near branch or call, the fall-through of a conditional branch or
/// of an ordinary instruction, and a REP instruction's own address (its next element). Exits
/// compare the run-time RIP with these, so a wrong guess only costs a comparison.
fn static_targets(insn: &Instruction) -> Vec<u64> {
    let mut out = Vec::with_capacity(2);
    let near = matches!(
        insn.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    );
    match insn.flow_control() {
        FlowControl::ConditionalBranch => {
            if near {
                out.push(insn.near_branch_target());
            }
            out.push(insn.next_ip());
        }
        FlowControl::UnconditionalBranch | FlowControl::Call if near => {
            out.push(insn.near_branch_target());
        }
        FlowControl::Next => {
            out.push(insn.next_ip());
            if insn.has_rep_prefix() || insn.has_repne_prefix() {
                out.push(insn.ip());
            }
        }
        _ => {}
    }
    out
}

/// Bytes in a guest page (blocks do not cross one, so a code-page write invalidates whole
/// translations).
const PAGE: u64 = 4096;

/// The linear address of CS:RIP, where instruction fetch reads.
pub fn fetch_linear(cpu: &CpuState) -> u64 {
    if cpu.code_bits() == 64 {
        cpu.rip
    } else {
        cpu.cs.base.wrapping_add(cpu.rip) & 0xffff_ffff
    }
}

/// Decodes a block at CS:RIP: up to `max_insns` instructions, ending after the first control
/// transfer, trap or exception-raising instruction, or before one that starts on another 4 KiB
/// linear page (so a block's bytes lie on at most two pages: its own and, for a last
/// instruction that straddles, the next) or does not decode. An undecodable first instruction
/// gives its exception.
pub fn decode_block(
    cpu: &CpuState,
    mem: &mut dyn GuestMem,
    max_insns: usize,
) -> Result<Vec<Instruction>, Exception> {
    let mut at = cpu.clone();
    let mut out = Vec::with_capacity(max_insns.min(64));
    let first_page = fetch_linear(cpu) / PAGE;
    while out.len() < max_insns.max(1) {
        if !out.is_empty() && fetch_linear(&at) / PAGE != first_page {
            break;
        }
        let insn = match crate::interp::decode(&at, mem) {
            Ok(i) => i,
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        };
        out.push(insn);
        if insn.flow_control() != FlowControl::Next {
            break;
        }
        at.rip = insn.next_ip();
    }
    Ok(out)
}
