//! [`JitEmitter`]: the shared semantics' [`Emitter`] implemented by emitting Cranelift IR.
//!
//! Guest registers and RFLAGS are Cranelift `Variable`s. Their initial values are loaded from
//! the `CpuState` in the entry block with `readonly`/`notrap`/`can_move` flags, which makes the
//! loads pure for Cranelift's e-graph: a register the block never reads costs nothing, one it
//! reads is loaded where first needed ("load on first use" without having to place the load in a
//! dominating block by hand). The state is only written at exits, which return at once.
//!
//! Every exit stores the registers written so far (a compile-time over-approximation of the
//! registers that may differ from the `CpuState`), folds the lazy flags into RFLAGS and stores
//! RIP. Side exits for exceptions fold the flag descriptor *as at the start of the faulting
//! instruction* and store RIP of that instruction: the semantics makes every check before its
//! first architectural write, so the register Variables at a raise point still hold the values
//! from the start of the instruction (exactly what the interpreter tier leaves behind).

use super::runtime::{
    jit_div_wide, jit_load, jit_load_rmw, jit_store, jit_string_bulk, BlockMeta, LinkCell, RunCtx,
    LINK_CELLS,
};
use crate::mmu::tlb::TLB_ENTRIES;
use crate::mmu::TlbEntry;
use crate::sem::{flags, BinOp, Emitter, Exception, FlagState, Seg, UnOp};
use crate::state::{CpuState, Segment};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, Endianness, InstBuilder, InstructionData, MemFlagsData,
    Opcode, SigRef, Signature, Value, ValueDef,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, Variable};
use std::mem::offset_of;

/// How a compiled block ended, in bits 32..40 of its return value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ExitKind {
    /// Ran to a control transfer or the end of the block; RIP is stored.
    Normal = 0,
    /// Raised the exception at index `bits 40..64` of the block's exception table.
    Exception = 1,
    /// A memory helper faulted; the fault is in [`RunCtx::fault`].
    MemFault = 2,
}

/// Packs an exit into the block's return value: executed count, kind, exception index.
pub(crate) fn encode_exit(executed: usize, kind: ExitKind, exc: usize) -> i64 {
    ((executed as u64 & 0xffff_ffff) | ((kind as u64) << 32) | ((exc as u64) << 40)) as i64
}

/// How an exit leaves the block function once the state is stored.
enum Leave<'t> {
    /// Return the exit code to the caller.
    Return,
    /// An exception exit: record the block's meta (for its exception table), then return.
    Fault,
    /// A normal exit after `executed` instructions that may chain to a successor at one of
    /// the static `targets` (see [`JitEmitter::chain_try`]).
    Chain { executed: usize, targets: &'t [u64] },
}

/// The signature of every block function: `(cpu, ctx) -> exit code` in the tail calling
/// convention, so a block can jump to its successor with `return_call_indirect`.
pub(crate) fn block_signature() -> Signature {
    let mut s = Signature::new(CallConv::Tail);
    s.params.push(AbiParam::new(types::I64));
    s.params.push(AbiParam::new(types::I64));
    s.returns.push(AbiParam::new(types::I64));
    s
}

/// Number of guest registers kept in Variables (RAX..R15).
const NGPR: usize = 16;
/// Bit of `dirty` for RFLAGS.
const RFLAGS_DIRTY: u32 = 1 << NGPR;

/// A cold exit block shared by every fault point of one instruction, filled in at the end.
struct PendingExit {
    /// The block; its one parameter is the exit code.
    block: Block,
    /// Flag descriptor at the start of the instruction.
    flags: FlagState<Value>,
    /// RIP of the instruction.
    rip: u64,
}

/// Signatures of the runtime helpers, imported once per function.
struct Helpers {
    load: SigRef,
    store: SigRef,
    div: SigRef,
    string: SigRef,
}

/// Emits the shared instruction semantics as Cranelift IR for one block.
pub(crate) struct JitEmitter<'a, 'f> {
    b: &'a mut FunctionBuilder<'f>,
    cpu: Value,
    ctx: Value,
    gpr: [Variable; NGPR],
    rflags: Variable,
    dirty: u32,
    flags: FlagState<Value>,
    jump: Option<Value>,
    /// The current instruction emitted a store (it may have rewritten code).
    stored: bool,
    /// Some instruction so far emitted a store (chain exits then check `code_written`).
    any_store: bool,
    /// The block's meta (link cells, exception table) at its stable address.
    meta: *const BlockMeta,
    /// The exit RIP each link cell serves, by cell index.
    cells: Vec<u64>,
    /// The block-function signature (tail calling convention) for chain jumps.
    tail_sig: SigRef,
    code_bits: u32,
    stack_bits: u32,
    cpl: u8,
    alignment_checks: bool,
    helpers: Helpers,
    /// Conditional-region nesting depth (`if_then` bodies).
    depth: u32,
    /// Index, address and next address of the instruction being emitted.
    insn: (usize, u64, u64),
    /// Flag descriptor at the start of the current instruction (restored by side exits).
    saved_flags: FlagState<Value>,
    /// The current instruction's shared fault exit, once one of its checks needed it.
    fault_exit: Option<Block>,
    /// Fault exits to fill in by [`JitEmitter::finish_exits`].
    pending: Vec<PendingExit>,
    /// Exceptions side exits can raise, indexed by the exit code.
    pub(crate) exceptions: Vec<Exception>,
    /// A misuse of the emitter contract detected while emitting (reported as a compile error).
    pub(crate) error: Option<&'static str>,
}

fn trusted_state() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Flags for reading guest state at block entry. Not `readonly`/`can_move`: the block's exits
/// store to the same `CpuState`, and a movable read-only load may legally be sunk past those
/// stores, reading the value the block itself wrote (found by difftest: flags of `adc r15d, ..`
/// computed from the `lea r15d` that followed). Unused loads are still dropped (`notrap`).
fn initial_state() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Flags for reading a TLB half pointer out of the `RunCtx`: nothing writes those fields while
/// a block runs, so the loads are pure and every access of the block shares one.
fn tlb_table() -> MemFlagsData {
    MemFlagsData::trusted().with_readonly().with_can_move()
}

/// Flags for reading a TLB slot: aligned, mapped host memory, but changed by every helper call
/// (a miss fills, a flush empties), so neither read-only nor movable.
fn tlb_slot() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Flags for a guest access through a TLB host pointer: little-endian whatever the host,
/// possibly unaligned, may alias anything, and kept in place (guest RAM is not Rust memory:
/// nothing is proven about it, so no `notrap`/`readonly`/`can_move`).
fn guest_ram() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl<'a, 'f> JitEmitter<'a, 'f> {
    /// Sets up the entry block of a fresh function `(cpu, ctx) -> exit code` and the Variables;
    /// `call_conv` is the helpers' (the host's), `meta` the block's link cells and table.
    pub(crate) fn new(
        b: &'a mut FunctionBuilder<'f>,
        call_conv: CallConv,
        meta: *const BlockMeta,
        code_bits: u32,
        stack_bits: u32,
        cpl: u8,
        alignment_checks: bool,
    ) -> Self {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let params = b.block_params(entry);
        let (cpu, ctx) = (params[0], params[1]);
        let gpr_base = offset_of!(CpuState, gpr);
        let gpr: [Variable; NGPR] = std::array::from_fn(|i| {
            let var = b.declare_var(types::I64);
            let v = b
                .ins()
                .load(types::I64, initial_state(), cpu, (gpr_base + 8 * i) as i32);
            b.def_var(var, v);
            var
        });
        let rflags = b.declare_var(types::I64);
        let v = b.ins().load(
            types::I64,
            initial_state(),
            cpu,
            offset_of!(CpuState, rflags) as i32,
        );
        b.def_var(rflags, v);

        let mut sig = |params: usize| {
            let mut s = Signature::new(call_conv);
            for _ in 0..params {
                s.params.push(AbiParam::new(types::I64));
            }
            s.returns.push(AbiParam::new(types::I64));
            b.import_signature(s)
        };
        let helpers = Helpers {
            load: sig(3),
            store: sig(4),
            div: sig(5),
            string: sig(7),
        };
        let tail_sig = b.import_signature(block_signature());
        JitEmitter {
            b,
            cpu,
            ctx,
            gpr,
            rflags,
            dirty: 0,
            flags: FlagState::Materialized,
            jump: None,
            stored: false,
            any_store: false,
            meta,
            cells: Vec::new(),
            tail_sig,
            code_bits,
            stack_bits,
            cpl,
            alignment_checks,
            helpers,
            depth: 0,
            insn: (0, 0, 0),
            saved_flags: FlagState::Materialized,
            fault_exit: None,
            pending: Vec::new(),
            exceptions: Vec::new(),
            error: None,
        }
    }

    /// Starts instruction `index` at `ip` (falling through to `next`).
    pub(crate) fn begin_insn(&mut self, index: usize, ip: u64, next: u64) {
        self.insn = (index, ip, next);
        self.saved_flags = self.flags;
        self.jump = None;
        self.stored = false;
        self.fault_exit = None;
    }

    /// The branch target the instruction set, if it transferred control.
    pub(crate) fn take_jump(&mut self) -> Option<Value> {
        self.jump.take()
    }

    /// Whether the current instruction emitted a store.
    pub(crate) fn stored(&self) -> bool {
        self.stored
    }

    /// Leaves the block with RIP = `rip` when a store of this instruction hit a page holding
    /// translations (`RunCtx::code_written`), so the following bytes are decoded afresh.
    pub(crate) fn exit_if_code_written(&mut self, rip: Value, executed: usize) {
        let written = self.b.ins().load(
            types::I64,
            MemFlagsData::trusted(),
            self.ctx,
            offset_of!(RunCtx<'_>, code_written) as i32,
        );
        let exit = self.b.create_block();
        let cont = self.b.create_block();
        self.b.set_cold_block(exit);
        self.b.ins().brif(written, exit, &[], cont, &[]);
        self.b.switch_to_block(exit);
        self.exit_normal(rip, executed);
        self.b.switch_to_block(cont);
    }

    /// Stores every register written so far, the folded flags and `rip`, then leaves as
    /// `how` says with exit code `code`. Leaves the emitter's compile-time flag state and
    /// dirty set as they were.
    fn emit_exit(&mut self, flags_at_exit: FlagState<Value>, rip: Value, code: Value, how: Leave) {
        let (keep_flags, keep_dirty) = (self.flags, self.dirty);
        self.flags = flags_at_exit;
        flags::materialize(self);
        let gpr_base = offset_of!(CpuState, gpr);
        for i in 0..NGPR {
            if self.dirty & (1 << i) != 0 {
                let v = self.b.use_var(self.gpr[i]);
                self.b
                    .ins()
                    .store(trusted_state(), v, self.cpu, (gpr_base + 8 * i) as i32);
            }
        }
        if self.dirty & RFLAGS_DIRTY != 0 {
            let v = self.b.use_var(self.rflags);
            self.b.ins().store(
                trusted_state(),
                v,
                self.cpu,
                offset_of!(CpuState, rflags) as i32,
            );
        }
        self.b.ins().store(
            trusted_state(),
            rip,
            self.cpu,
            offset_of!(CpuState, rip) as i32,
        );
        match how {
            Leave::Return => {
                self.b.ins().return_(&[code]);
            }
            Leave::Fault => {
                let meta = self.b.ins().iconst(types::I64, self.meta as i64);
                self.store_ctx(meta, offset_of!(RunCtx<'_>, exc_meta));
                self.b.ins().return_(&[code]);
            }
            Leave::Chain { executed, targets } => {
                self.chain_or_return(rip, code, executed, targets)
            }
        }
        self.flags = keep_flags;
        self.dirty = keep_dirty;
    }

    fn load_ctx(&mut self, offset: usize) -> Value {
        self.b
            .ins()
            .load(types::I64, MemFlagsData::trusted(), self.ctx, offset as i32)
    }

    fn store_ctx(&mut self, v: Value, offset: usize) {
        self.b
            .ins()
            .store(MemFlagsData::trusted(), v, self.ctx, offset as i32);
    }

    /// The constant `v` is defined as, if it is an `iconst`.
    fn const_of(&self, v: Value) -> Option<u64> {
        let dfg = &self.b.func.dfg;
        match dfg.value_def(v) {
            ValueDef::Result(inst, 0) => match dfg.insts[inst] {
                InstructionData::UnaryImm {
                    opcode: Opcode::Iconst,
                    imm,
                } => Some(imm.bits() as u64),
                _ => None,
            },
            _ => None,
        }
    }

    /// The index of the link cell for exit RIP `rip`, allocating one while any is free.
    fn cell_for(&mut self, rip: u64) -> Option<usize> {
        if let Some(i) = self.cells.iter().position(|&r| r == rip) {
            return Some(i);
        }
        if self.cells.len() >= LINK_CELLS {
            return None;
        }
        self.cells.push(rip);
        Some(self.cells.len() - 1)
    }

    /// Host address of link cell `index` of this block.
    fn cell_addr(&self, index: usize) -> i64 {
        let cells = offset_of!(BlockMeta, cells) + index * std::mem::size_of::<LinkCell>();
        (self.meta as i64).wrapping_add(cells as i64)
    }

    /// Ends a normal exit (state stored, next RIP `rip`): for each static candidate in
    /// `targets` that `rip` may equal, tries the link cell of that RIP (see
    /// [`JitEmitter::chain_try`]); otherwise returns `code`.
    fn chain_or_return(&mut self, rip: Value, code: Value, executed: usize, targets: &[u64]) {
        let known = self.const_of(rip);
        for (n, &t) in targets.iter().enumerate() {
            if targets[..n].contains(&t) || known.is_some_and(|k| k != t) {
                continue;
            }
            let Some(cell) = self.cell_for(t) else {
                continue;
            };
            if known.is_some() {
                // The exit goes to `t`: no comparison, and nothing after the try.
                self.chain_try(cell, executed, code);
                return;
            }
            let try_block = self.b.create_block();
            let next = self.b.create_block();
            let eq = self.b.ins().icmp_imm_s(IntCC::Equal, rip, t as i64);
            self.b.ins().brif(eq, try_block, &[], next, &[]);
            self.b.switch_to_block(try_block);
            self.chain_try(cell, executed, code);
            self.b.switch_to_block(next);
        }
        self.b.ins().return_(&[code]);
    }

    /// Tail-calls the successor in link cell `cell` when the cell is of the current chain
    /// epoch, `executed` plus its length fits the chain budget and no store of this block hit
    /// a code page; then charges `executed` to the budget and counts the jump. Otherwise
    /// records the cell for the dispatcher to fill and returns `code`.
    fn chain_try(&mut self, cell: usize, executed: usize, code: Value) {
        let addr = self.cell_addr(cell);
        let cellp = self.b.ins().iconst(types::I64, addr);
        let trusted = MemFlagsData::trusted();
        let cell_epoch = self.b.ins().load(
            types::I64,
            trusted,
            cellp,
            offset_of!(LinkCell, epoch) as i32,
        );
        let cell_len =
            self.b
                .ins()
                .load(types::I64, trusted, cellp, offset_of!(LinkCell, len) as i32);
        let epoch = self.load_ctx(offset_of!(RunCtx<'_>, chain_epoch));
        let budget = self.load_ctx(offset_of!(RunCtx<'_>, chain_budget));
        let epoch_ok = self.b.ins().icmp(IntCC::Equal, cell_epoch, epoch);
        let need = self.b.ins().iadd_imm_u(cell_len, executed as i64);
        let fits = self
            .b
            .ins()
            .icmp(IntCC::UnsignedLessThanOrEqual, need, budget);
        let mut ok = self.b.ins().band(epoch_ok, fits);
        if self.any_store {
            let written = self.load_ctx(offset_of!(RunCtx<'_>, code_written));
            let clean = self.b.ins().icmp_imm_s(IntCC::Equal, written, 0);
            ok = self.b.ins().band(ok, clean);
        }
        let go = self.b.create_block();
        let back = self.b.create_block();
        self.b.ins().brif(ok, go, &[], back, &[]);
        self.b.switch_to_block(go);
        let left = self.b.ins().iadd_imm_s(budget, -(executed as i64));
        self.store_ctx(left, offset_of!(RunCtx<'_>, chain_budget));
        let chained = self.load_ctx(offset_of!(RunCtx<'_>, chained));
        let chained = self.b.ins().iadd_imm_u(chained, 1);
        self.store_ctx(chained, offset_of!(RunCtx<'_>, chained));
        let target = self.b.ins().load(
            types::I64,
            MemFlagsData::trusted(),
            cellp,
            offset_of!(LinkCell, target) as i32,
        );
        self.b
            .ins()
            .return_call_indirect(self.tail_sig, target, &[self.cpu, self.ctx]);
        self.b.switch_to_block(back);
        self.store_ctx(cellp, offset_of!(RunCtx<'_>, exit_cell));
        self.b.ins().return_(&[code]);
    }

    /// The exit RIPs link cells were made for, by cell index.
    pub(crate) fn cell_rips(&self) -> &[u64] {
        &self.cells
    }

    /// Ends the block here (normal exit): `executed` instructions completed, next RIP `rip`.
    pub(crate) fn exit_normal(&mut self, rip: Value, executed: usize) {
        self.exit_to(rip, executed, &[]);
    }

    /// [`JitEmitter::exit_normal`] that chains to the successor's compiled code when `rip` is
    /// one of the static `targets` and its link cell allows (see [`JitEmitter::chain_try`]).
    pub(crate) fn exit_to(&mut self, rip: Value, executed: usize, targets: &[u64]) {
        let code = self
            .b
            .ins()
            .iconst(types::I64, encode_exit(executed, ExitKind::Normal, 0));
        let how = if targets.is_empty() {
            Leave::Return
        } else {
            Leave::Chain { executed, targets }
        };
        self.emit_exit(self.flags, rip, code, how);
    }

    /// Leaves when `target` != `next_ip` (chaining as [`JitEmitter::exit_to`] for `targets`),
    /// else continues with the next instruction.
    pub(crate) fn exit_unless_falls_to(
        &mut self,
        target: Value,
        next_ip: u64,
        executed: usize,
        targets: &[u64],
    ) {
        let next = self.b.ins().iconst(types::I64, next_ip as i64);
        let stay = self.b.ins().icmp(IntCC::Equal, target, next);
        let cont = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().brif(stay, cont, &[], exit, &[]);
        self.b.switch_to_block(exit);
        self.exit_to(target, executed, targets);
        self.b.switch_to_block(cont);
    }

    /// The exit code for `exc` raised by the current instruction (recording the exception).
    fn exit_code(&mut self, exc: Exception) -> i64 {
        let index = self.insn.0;
        match exc {
            Exception::Memory(_) => encode_exit(index, ExitKind::MemFault, 0),
            _ => {
                self.exceptions.push(exc);
                encode_exit(index, ExitKind::Exception, self.exceptions.len() - 1)
            }
        }
    }

    /// Raises `exc` unconditionally from the current position (terminates the current block).
    pub(crate) fn exit_exception(&mut self, exc: Exception) {
        let (_, ip, next) = self.insn;
        let rip = if exc.is_trap() { next } else { ip };
        let rip = self.b.ins().iconst(types::I64, rip as i64);
        let code = self.exit_code(exc);
        let code = self.b.ins().iconst(types::I64, code);
        self.emit_exit(self.saved_flags, rip, code, Leave::Fault);
    }

    /// Branches to the instruction's cold fault exit with `exc` when `cond` != 0, then
    /// continues. All fault points of one instruction share one exit block: every check comes
    /// before the instruction's first write, so they all leave the same state behind.
    fn side_exit(&mut self, cond: Value, exc: Exception) {
        let code = self.exit_code(exc);
        let exit = match self.fault_exit {
            Some(b) => b,
            None => {
                let b = self.b.create_block();
                self.b.append_block_param(b, types::I64);
                self.b.set_cold_block(b);
                self.pending.push(PendingExit {
                    block: b,
                    flags: self.saved_flags,
                    rip: self.insn.1,
                });
                self.fault_exit = Some(b);
                b
            }
        };
        let code = self.b.ins().iconst(types::I64, code);
        let cont = self.b.create_block();
        self.b
            .ins()
            .brif(cond, exit, &[BlockArg::Value(code)], cont, &[]);
        self.b.switch_to_block(cont);
    }

    /// Fills in the shared fault exits; call once after the last instruction's exit.
    pub(crate) fn finish_exits(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.b.switch_to_block(p.block);
            let code = self.b.block_params(p.block)[0];
            let rip = self.b.ins().iconst(types::I64, p.rip as i64);
            // `dirty` is now the whole block's write set: a superset, and use_var yields each
            // register's value at the fault point, so extra stores write unchanged values.
            self.emit_exit(p.flags, rip, code, Leave::Fault);
        }
    }

    fn helper(&mut self, sig: SigRef, f: usize, args: &[Value]) -> Value {
        let callee = self.b.ins().iconst(types::I64, f as i64);
        let call = self.b.ins().call_indirect(sig, callee, args);
        self.b.inst_results(call)[0]
    }

    /// Emits the inline TLB hit test of a `size`-byte access at linear `addr` through the half
    /// whose pointer is at `RunCtx` offset `table`. Returns the host address of the access,
    /// with the builder in the hit path, and the cold miss block (entered with no arguments)
    /// for the helper call. A hit needs a slot whose tag is the page number of the access's
    /// *last* byte: a page-crossing access asks for the next page's number, which no slot at
    /// this index can hold (indices are the low page-number bits), so it misses without a
    /// separate bounds test, as does one that wraps around the address space. A slot without
    /// a RAM pointer (MMIO) misses too.
    fn tlb_hit(&mut self, table: usize, addr: Value, size: u8) -> (Value, Block) {
        let base = self
            .b
            .ins()
            .load(types::I64, tlb_table(), self.ctx, table as i32);
        let vpn = self.b.ins().ushr_imm_u(addr, 12);
        let index = self.b.ins().band_imm_u(vpn, (TLB_ENTRIES - 1) as i64);
        let offset = self.b.ins().imul_imm_u(index, TlbEntry::SIZE as i64);
        let slot = self.b.ins().iadd(base, offset);
        let tag = self
            .b
            .ins()
            .load(types::I64, tlb_slot(), slot, TlbEntry::TAG_OFFSET as i32);
        let last_page = if size > 1 {
            let last = self.b.ins().iadd_imm_u(addr, i64::from(size) - 1);
            self.b.ins().ushr_imm_u(last, 12)
        } else {
            vpn
        };
        // The host pointer on a tag hit, else null: one branch for both tests (the slot's
        // fields are always readable, whatever its tag).
        let host = self
            .b
            .ins()
            .load(types::I64, tlb_slot(), slot, TlbEntry::HOST_OFFSET as i32);
        let tag_hit = self.b.ins().icmp(IntCC::Equal, tag, last_page);
        let null = self.b.ins().iconst(types::I64, 0);
        let host = self.b.ins().select(tag_hit, host, null);
        let miss = self.b.create_block();
        self.b.set_cold_block(miss);
        let ram = self.b.create_block();
        self.b.ins().brif(host, ram, &[], miss, &[]);
        self.b.switch_to_block(ram);
        let in_page = self.b.ins().band_imm_u(addr, 0xfff);
        (self.b.ins().iadd(host, in_page), miss)
    }

    /// A load through the inline TLB (the write TLB for a read-modify-write destination), the
    /// helper on a miss.
    fn load_via(&mut self, addr: Value, size: u8, rmw: bool) -> Result<Value, Exception> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Ok(self.load_helper_via(addr, size, rmw));
        }
        let table = if rmw {
            offset_of!(RunCtx<'_>, tlb_write)
        } else {
            offset_of!(RunCtx<'_>, tlb_read)
        };
        let (p, miss) = self.tlb_hit(table, addr, size);
        let ins = self.b.ins();
        let fast = match size {
            1 => ins.uload8(types::I64, guest_ram(), p, 0),
            2 => ins.uload16(types::I64, guest_ram(), p, 0),
            4 => ins.uload32(guest_ram(), p, 0),
            _ => ins.load(types::I64, guest_ram(), p, 0),
        };
        let merge = self.b.create_block();
        let v = self.b.append_block_param(merge, types::I64);
        self.b.ins().jump(merge, &[BlockArg::Value(fast)]);
        self.b.switch_to_block(miss);
        let slow = self.load_helper_via(addr, size, rmw);
        self.mark_cold();
        self.b.ins().jump(merge, &[BlockArg::Value(slow)]);
        self.b.switch_to_block(merge);
        Ok(v)
    }

    /// The helper call of a load (the miss path, or the only path for odd sizes), translated
    /// for writing when `rmw` (a read-modify-write destination).
    fn load_helper_via(&mut self, addr: Value, size: u8, rmw: bool) -> Value {
        let sz = self.imm(u64::from(size));
        let f = if rmw {
            jit_load_rmw as unsafe extern "C" fn(*mut RunCtx<'_>, u64, u64) -> u64
        } else {
            jit_load as unsafe extern "C" fn(*mut RunCtx<'_>, u64, u64) -> u64
        };
        let v = self.helper(self.helpers.load, f as usize, &[self.ctx, addr, sz]);
        let status = self.b.ins().load(
            types::I64,
            MemFlagsData::trusted(),
            self.ctx,
            offset_of!(RunCtx<'_>, status) as i32,
        );
        self.side_exit(status, Exception::Memory(placeholder_fault(false)));
        v
    }

    /// The helper call of a store (the miss path, or the only path for odd sizes).
    fn store_helper(&mut self, addr: Value, v: Value, size: u8) {
        let sz = self.imm(u64::from(size));
        let f = jit_store as unsafe extern "C" fn(*mut RunCtx<'_>, u64, u64, u64) -> u64;
        let fault = self.helper(self.helpers.store, f as usize, &[self.ctx, addr, v, sz]);
        self.side_exit(fault, Exception::Memory(placeholder_fault(true)));
    }

    /// Marks the block the builder is in as cold (the rest of a miss path after a side exit).
    fn mark_cold(&mut self) {
        if let Some(b) = self.b.current_block() {
            self.b.set_cold_block(b);
        }
    }

    fn bool_to_lane(&mut self, c: Value) -> Value {
        self.b.ins().uextend(types::I64, c)
    }

    fn seg_offset(s: Seg) -> usize {
        Self::seg_struct_offset(s) + offset_of!(Segment, base)
    }

    /// Offset of segment register `s` in `CpuState`.
    fn seg_struct_offset(s: Seg) -> usize {
        match s {
            Seg::Es => offset_of!(CpuState, es),
            Seg::Cs => offset_of!(CpuState, cs),
            Seg::Ss => offset_of!(CpuState, ss),
            Seg::Ds => offset_of!(CpuState, ds),
            Seg::Fs => offset_of!(CpuState, fs),
            Seg::Gs => offset_of!(CpuState, gs),
        }
    }
}

impl Emitter for JitEmitter<'_, '_> {
    type V = Value;

    fn imm(&mut self, v: u64) -> Value {
        self.b.ins().iconst(types::I64, v as i64)
    }

    fn bin(&mut self, op: BinOp, a: Value, b: Value) -> Value {
        match op {
            BinOp::Add => self.b.ins().iadd(a, b),
            BinOp::Sub => self.b.ins().isub(a, b),
            BinOp::And => self.b.ins().band(a, b),
            BinOp::Or => self.b.ins().bor(a, b),
            BinOp::Xor => self.b.ins().bxor(a, b),
            BinOp::Shl => self.b.ins().ishl(a, b),
            BinOp::Shr => self.b.ins().ushr(a, b),
            BinOp::Sar => self.b.ins().sshr(a, b),
            BinOp::Mul => self.b.ins().imul(a, b),
            BinOp::UMulHi => self.b.ins().umulhi(a, b),
            BinOp::SMulHi => self.b.ins().smulhi(a, b),
            BinOp::UDiv | BinOp::URem | BinOp::SDiv | BinOp::SRem => {
                // The semantics raises #DE before any division that would trap, but the guard
                // keeps a semantics bug from becoming a host SIGFPE (the interpreter's checked
                // forms yield 0 there; so does this: x / 1 for a 0 divisor is masked below).
                let zero = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
                let mut bad = zero;
                if matches!(op, BinOp::SDiv | BinOp::SRem) {
                    let m1 = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
                    let min = self.b.ins().icmp_imm_s(IntCC::Equal, a, i64::MIN);
                    let ovf = self.b.ins().band(m1, min);
                    bad = self.b.ins().bor(bad, ovf);
                }
                let one = self.b.ins().iconst(types::I64, 1);
                let d = self.b.ins().select(bad, one, b);
                let r = match op {
                    BinOp::UDiv => self.b.ins().udiv(a, d),
                    BinOp::URem => self.b.ins().urem(a, d),
                    BinOp::SDiv => self.b.ins().sdiv(a, d),
                    _ => self.b.ins().srem(a, d),
                };
                let zero_v = self.b.ins().iconst(types::I64, 0);
                self.b.ins().select(bad, zero_v, r)
            }
            BinOp::Eq | BinOp::Ne | BinOp::Ult | BinOp::Ule | BinOp::Slt => {
                let cc = match op {
                    BinOp::Eq => IntCC::Equal,
                    BinOp::Ne => IntCC::NotEqual,
                    BinOp::Ult => IntCC::UnsignedLessThan,
                    BinOp::Ule => IntCC::UnsignedLessThanOrEqual,
                    _ => IntCC::SignedLessThan,
                };
                let c = self.b.ins().icmp(cc, a, b);
                self.bool_to_lane(c)
            }
        }
    }

    fn un(&mut self, op: UnOp, a: Value) -> Value {
        let ins = self.b.ins();
        match op {
            UnOp::Not => ins.bnot(a),
            UnOp::Neg => ins.ineg(a),
            UnOp::Popcnt => ins.popcnt(a),
            UnOp::Ctz => ins.ctz(a),
            UnOp::Clz => ins.clz(a),
            UnOp::Bswap => ins.bswap(a),
        }
    }

    fn select(&mut self, c: Value, a: Value, b: Value) -> Value {
        self.b.ins().select(c, a, b)
    }

    fn div_wide(&mut self, signed: bool, hi: Value, lo: Value, d: Value) -> (Value, Value, Value) {
        let s = self.imm(u64::from(signed));
        let f = jit_div_wide as unsafe extern "C" fn(*mut RunCtx<'_>, u64, u64, u64, u64) -> u64;
        let fault = self.helper(self.helpers.div, f as usize, &[self.ctx, s, hi, lo, d]);
        let q = self.b.ins().load(
            types::I64,
            MemFlagsData::trusted(),
            self.ctx,
            offset_of!(RunCtx<'_>, div_q) as i32,
        );
        let r = self.b.ins().load(
            types::I64,
            MemFlagsData::trusted(),
            self.ctx,
            offset_of!(RunCtx<'_>, div_r) as i32,
        );
        (q, r, fault)
    }

    fn gpr(&mut self, r: usize) -> Value {
        match self.gpr.get(r) {
            Some(&var) => self.b.use_var(var),
            None => {
                self.error = Some("register index out of range");
                self.imm(0)
            }
        }
    }

    fn set_gpr(&mut self, r: usize, v: Value) {
        match self.gpr.get(r) {
            Some(&var) => {
                self.b.def_var(var, v);
                self.dirty |= 1 << r;
            }
            None => self.error = Some("register index out of range"),
        }
    }

    fn rflags(&mut self) -> Value {
        self.b.use_var(self.rflags)
    }

    fn set_rflags(&mut self, v: Value) {
        self.b.def_var(self.rflags, v);
        self.dirty |= RFLAGS_DIRTY;
    }

    fn flag_state(&self) -> FlagState<Value> {
        self.flags
    }

    fn set_flag_state(&mut self, s: FlagState<Value>) {
        if self.depth > 0 {
            // Values defined in a conditional region would not dominate later uses.
            self.error = Some("flag state changed inside if_then");
        }
        self.flags = s;
    }

    fn seg_base(&mut self, s: Seg) -> Value {
        let off = Self::seg_offset(s) as i32;
        self.b
            .ins()
            .load(types::I64, initial_state(), self.cpu, off)
    }

    fn seg_selector(&mut self, s: Seg) -> Value {
        let off = (Self::seg_struct_offset(s) + offset_of!(Segment, selector)) as i32;
        self.b
            .ins()
            .uload16(types::I64, initial_state(), self.cpu, off)
    }

    fn set_rip(&mut self, target: Value) {
        if self.depth > 0 {
            self.error = Some("control transfer inside if_then");
        }
        self.jump = Some(target);
    }

    fn string_bulk(
        &mut self,
        op: crate::mem::StringOp,
        size: u8,
        src: Value,
        dst: Value,
        count: Value,
        value: Value,
    ) -> Value {
        let op = self.imm(op as u64);
        let size = self.imm(u64::from(size));
        let f = jit_string_bulk
            as unsafe extern "C" fn(*mut RunCtx<'_>, u64, u64, u64, u64, u64, u64) -> u64;
        self.helper(
            self.helpers.string,
            f as usize,
            &[self.ctx, op, size, src, dst, count, value],
        )
    }

    fn load(&mut self, addr: Value, size: u8) -> Result<Value, Exception> {
        self.load_via(addr, size, false)
    }

    fn load_rmw(&mut self, addr: Value, size: u8) -> Result<Value, Exception> {
        self.load_via(addr, size, true)
    }

    fn store(&mut self, addr: Value, v: Value, size: u8) -> Result<(), Exception> {
        self.stored = true;
        self.any_store = true;
        if !matches!(size, 1 | 2 | 4 | 8) {
            self.store_helper(addr, v, size);
            return Ok(());
        }
        let (p, miss) = self.tlb_hit(offset_of!(RunCtx<'_>, tlb_write), addr, size);
        let ins = self.b.ins();
        match size {
            1 => ins.istore8(guest_ram(), v, p, 0),
            2 => ins.istore16(guest_ram(), v, p, 0),
            4 => ins.istore32(guest_ram(), v, p, 0),
            _ => ins.store(guest_ram(), v, p, 0),
        };
        let merge = self.b.create_block();
        self.b.ins().jump(merge, &[]);
        self.b.switch_to_block(miss);
        self.store_helper(addr, v, size);
        self.mark_cold();
        self.b.ins().jump(merge, &[]);
        self.b.switch_to_block(merge);
        Ok(())
    }

    fn raise(&mut self, cond: Value, exc: Exception) -> Result<(), Exception> {
        self.side_exit(cond, exc);
        Ok(())
    }

    fn if_then<F>(&mut self, cond: Value, then: F) -> Result<(), Exception>
    where
        F: FnOnce(&mut Self) -> Result<(), Exception>,
    {
        let body = self.b.create_block();
        let merge = self.b.create_block();
        self.b.ins().brif(cond, body, &[], merge, &[]);
        self.b.switch_to_block(body);
        self.depth += 1;
        let r = then(self);
        self.depth -= 1;
        match r {
            Ok(()) => {
                self.b.ins().jump(merge, &[]);
            }
            // The body always raises when it runs: a side exit taken under `cond`.
            Err(exc @ Exception::Cpu { .. }) => self.exit_exception(exc),
            Err(other) => return Err(other),
        }
        self.b.switch_to_block(merge);
        Ok(())
    }

    fn code_bits(&self) -> u32 {
        self.code_bits
    }

    fn stack_bits(&self) -> u32 {
        self.stack_bits
    }

    fn cpl(&self) -> u8 {
        self.cpl
    }

    fn alignment_checks(&self) -> bool {
        self.alignment_checks
    }
}

/// The exit kind for a memory fault; the real fault details come from the helper at run time.
fn placeholder_fault(write: bool) -> crate::mem::MemFault {
    crate::mem::MemFault {
        addr: 0,
        len: 0,
        write,
    }
}
