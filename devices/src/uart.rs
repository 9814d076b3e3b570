//! 16550A UART: the serial console a stock Linux kernel (8250 driver) and simple polled guests
//! talk to.
//!
//! Transmission is instantaneous: a byte written to THR goes straight to the output sink, so
//! THR and the transmitter are empty again by the time the guest looks (LSR.THRE and TEMT stay
//! set, and the THRE interrupt is re-armed right after each write, as QEMU does). Output is
//! buffered and flushed on newline, when the buffer grows, when the guest stops transmit
//! interrupts (IER.ETBEI cleared, the end of Linux's TX path), when unflushed output is older
//! than [`FLUSH_DELAY`] at any register access, on [`Uart16550::flush`] and on drop.
//!
//! Reception goes through a 16-byte FIFO (one byte in 16450 mode) fed by
//! [`Uart16550::enqueue_input`]. The character-timeout interrupt (IIR 0x0C) is modelled simply:
//! it is pending whenever the FIFO holds data below the trigger level, without waiting four
//! character times.
//!
//! Interrupt priority follows the datasheet: line status, then received data or timeout, then
//! THR empty, then modem status. The interrupt output is driven level-style on the
//! [`InterruptLine`] and, as in QEMU, is not gated by MCR.OUT2.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::{read_bytewise, write_bytewise, BusDevice};
use crate::irq::InterruptLine;

/// I/O port base of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// ISA interrupt of COM1.
pub const COM1_IRQ: u32 = 4;
/// Size of a UART's port range.
pub const UART_PORT_LEN: u64 = 8;
/// Depth of the receive FIFO.
pub const RX_FIFO_SIZE: usize = 16;
/// Unflushed output older than this is flushed at the next register access.
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// Buffered output beyond this many bytes is flushed at once.
const FLUSH_THRESHOLD: usize = 4096;

// Register offsets.
const REG_DATA: u64 = 0; // RBR / THR, DLL with DLAB
const REG_IER: u64 = 1; // DLM with DLAB
const REG_IIR_FCR: u64 = 2;
const REG_LCR: u64 = 3;
const REG_MCR: u64 = 4;
const REG_LSR: u64 = 5;
const REG_MSR: u64 = 6;
const REG_SCR: u64 = 7;

// IER bits.
const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IER_RLSI: u8 = 0x04;
const IER_MSI: u8 = 0x08;

// IIR values.
const IIR_NO_INT: u8 = 0x01;
const IIR_MSI: u8 = 0x00;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_RLSI: u8 = 0x06;
const IIR_TIMEOUT: u8 = 0x0c;
const IIR_FIFO_ENABLED: u8 = 0xc0;

// FCR bits.
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const FCR_CLEAR_TX: u8 = 0x04;
const FCR_TRIGGER_MASK: u8 = 0xc0;

// LCR bits.
const LCR_DLAB: u8 = 0x80;

// MCR bits.
const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;

// LSR bits.
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_BREAK_ERRORS: u8 = 0x1e; // OE, PE, FE, BI
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

// MSR bits.
const MSR_DCTS: u8 = 0x01;
const MSR_DDSR: u8 = 0x02;
const MSR_TERI: u8 = 0x04;
const MSR_DDCD: u8 = 0x08;
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;
const MSR_DELTAS: u8 = 0x0f;

/// A 16550A UART with its output sink and receive FIFO.
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    /// LSR error bits (OE/PE/FE/BI) latched until LSR is read; DR/THRE/TEMT are computed.
    lsr_errors: u8,
    /// Line levels (bits 4-7) and latched deltas (bits 0-3).
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
    /// FCR bits 6-7 as last written.
    trigger_bits: u8,
    rx: VecDeque<u8>,
    /// The THR-empty interrupt is pending (cleared by an IIR read that reports it, or a THR write).
    thre_pending: bool,
    irq: Arc<dyn InterruptLine>,
    irq_level: bool,
    out: Box<dyn Write + Send>,
    out_buf: Vec<u8>,
    /// When the oldest byte of `out_buf` was transmitted.
    out_since: Option<Instant>,
    /// Set after an output error so it is logged once, not per byte.
    out_failed: bool,
}

impl Uart16550 {
    /// Creates a UART raising `irq` and transmitting to `out`.
    pub fn new(irq: Arc<dyn InterruptLine>, out: Box<dyn Write + Send>) -> Self {
        Uart16550 {
            ier: 0,
            lcr: 0,
            mcr: 0,
            lsr_errors: 0,
            // The host side of the line is always connected and ready.
            msr: MSR_DCD | MSR_DSR | MSR_CTS,
            scr: 0,
            dll: 0x0c, // 9600 baud
            dlm: 0,
            fifo_enabled: false,
            trigger_bits: 0,
            rx: VecDeque::with_capacity(RX_FIFO_SIZE),
            thre_pending: false,
            irq,
            irq_level: false,
            out,
            out_buf: Vec::new(),
            out_since: None,
            out_failed: false,
        }
    }

    /// Pushes host input into the receive FIFO; bytes that do not fit are lost with LSR.OE.
    ///
    /// In loopback mode the receiver is disconnected from the line and the bytes are dropped.
    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        if self.mcr & MCR_LOOP != 0 {
            log::debug!("uart: {} input bytes dropped in loopback mode", bytes.len());
            return;
        }
        for &b in bytes {
            self.receive(b);
        }
        self.update_irq();
    }

    /// How many bytes the receive FIFO can take now without overrun (for host-side pacing);
    /// 0 in loopback mode, so paced input waits instead of being dropped.
    pub fn rx_space(&self) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            return 0;
        }
        self.rx_capacity().saturating_sub(self.rx.len())
    }

    /// Writes buffered output to the sink and flushes it.
    pub fn flush(&mut self) {
        if !self.out_buf.is_empty() {
            if let Err(e) = self.out.write_all(&self.out_buf) {
                self.output_error(e);
            }
            self.out_buf.clear();
        }
        if let Err(e) = self.out.flush() {
            self.output_error(e);
        }
        self.out_since = None;
    }

    /// Whether the interrupt output is asserted.
    pub fn irq_pending(&self) -> bool {
        self.irq_level
    }

    fn output_error(&mut self, e: std::io::Error) {
        if !self.out_failed {
            log::warn!("uart: output sink failed, dropping serial output: {e}");
            self.out_failed = true;
        }
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled {
            RX_FIFO_SIZE
        } else {
            1
        }
    }

    fn trigger_level(&self) -> usize {
        match self.trigger_bits >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    fn receive(&mut self, b: u8) {
        if self.rx.len() < self.rx_capacity() {
            self.rx.push_back(b);
        } else {
            // The FIFO keeps its contents; the character in the shift register is lost.
            log::debug!("uart: receive overrun, dropping {b:#x}");
            self.lsr_errors |= LSR_OE;
        }
    }

    fn transmit(&mut self, b: u8) {
        self.thre_pending = false;
        self.update_irq();
        if self.mcr & MCR_LOOP != 0 {
            // Loopback: the transmitter feeds the receiver and nothing leaves the chip.
            self.receive(b);
        } else {
            self.out_buf.push(b);
            self.out_since.get_or_insert_with(Instant::now);
            if b == b'\n' || self.out_buf.len() >= FLUSH_THRESHOLD {
                self.flush();
            }
        }
        // The byte left THR at once: THR is empty again.
        self.thre_pending = true;
    }

    fn flush_if_stale(&mut self) {
        if self.out_since.is_some_and(|t| t.elapsed() >= FLUSH_DELAY) {
            self.flush();
        }
    }

    fn lsr(&self) -> u8 {
        let mut lsr = self.lsr_errors | LSR_THRE | LSR_TEMT;
        if !self.rx.is_empty() {
            lsr |= LSR_DR;
        }
        lsr
    }

    /// The interrupt identification for the highest-priority pending, enabled source.
    fn pending_iir(&self) -> u8 {
        if self.ier & IER_RLSI != 0 && self.lsr_errors & LSR_BREAK_ERRORS != 0 {
            return IIR_RLSI;
        }
        if self.ier & IER_RDI != 0 && !self.rx.is_empty() {
            if !self.fifo_enabled || self.rx.len() >= self.trigger_level() {
                return IIR_RDI;
            }
            return IIR_TIMEOUT;
        }
        if self.ier & IER_THRI != 0 && self.thre_pending {
            return IIR_THRI;
        }
        if self.ier & IER_MSI != 0 && self.msr & MSR_DELTAS != 0 {
            return IIR_MSI;
        }
        IIR_NO_INT
    }

    fn update_irq(&mut self) {
        let level = self.pending_iir() != IIR_NO_INT;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// The modem input lines (MSR bits 4-7) the current MCR implies.
    fn modem_inputs(&self) -> u8 {
        if self.mcr & MCR_LOOP == 0 {
            return MSR_DCD | MSR_DSR | MSR_CTS;
        }
        let mut lines = 0;
        if self.mcr & MCR_RTS != 0 {
            lines |= MSR_CTS;
        }
        if self.mcr & MCR_DTR != 0 {
            lines |= MSR_DSR;
        }
        if self.mcr & MCR_OUT1 != 0 {
            lines |= MSR_RI;
        }
        if self.mcr & MCR_OUT2 != 0 {
            lines |= MSR_DCD;
        }
        lines
    }

    fn write_mcr(&mut self, v: u8) {
        self.mcr = v & MCR_MASK;
        let old = self.msr;
        let new = self.modem_inputs();
        let changed = old ^ new;
        let mut deltas = old & MSR_DELTAS;
        if changed & MSR_CTS != 0 {
            deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            deltas |= MSR_DDSR;
        }
        if changed & MSR_DCD != 0 {
            deltas |= MSR_DDCD;
        }
        // Ring indicator reports only its trailing edge.
        if old & MSR_RI != 0 && new & MSR_RI == 0 {
            deltas |= MSR_TERI;
        }
        self.msr = new | deltas;
    }

    fn write_fcr(&mut self, v: u8) {
        let enable = v & FCR_ENABLE != 0;
        if enable != self.fifo_enabled {
            // Switching FIFO mode resets both FIFOs.
            self.rx.clear();
        }
        self.fifo_enabled = enable;
        if !enable {
            // With FCR0 clear the other bits are not programmed.
            return;
        }
        if v & FCR_CLEAR_RX != 0 {
            self.rx.clear();
        }
        if v & FCR_CLEAR_TX != 0 {
            // Nothing waits in the transmit FIFO: transmission is instantaneous.
            self.thre_pending = true;
        }
        self.trigger_bits = v & FCR_TRIGGER_MASK;
    }

    fn write_ier(&mut self, v: u8) {
        let old = self.ier;
        self.ier = v & 0x0f;
        let changed = old ^ self.ier;
        if changed & IER_THRI != 0 {
            // Enabling ETBEI with THR empty raises the interrupt even if an IIR read had
            // cleared it: the 8250 driver's THRE probe and TX start depend on this.
            self.thre_pending = self.ier & IER_THRI != 0;
            if self.ier & IER_THRI == 0 {
                // Linux stops transmit interrupts when its buffer is drained: a good flush point.
                self.flush();
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            REG_DATA if dlab => self.dll,
            REG_DATA => self.rx.pop_front().unwrap_or(0),
            REG_IER if dlab => self.dlm,
            REG_IER => self.ier,
            REG_IIR_FCR => {
                let id = self.pending_iir();
                if id == IIR_THRI {
                    // Reading IIR clears a THRE interrupt it reports.
                    self.thre_pending = false;
                }
                if self.fifo_enabled {
                    id | IIR_FIFO_ENABLED
                } else {
                    id
                }
            }
            REG_LCR => self.lcr,
            REG_MCR => self.mcr,
            REG_LSR => {
                let lsr = self.lsr();
                self.lsr_errors = 0;
                lsr
            }
            REG_MSR => {
                let msr = self.msr;
                self.msr &= !MSR_DELTAS;
                msr
            }
            REG_SCR => self.scr,
            _ => 0xff,
        }
    }

    fn write_register(&mut self, offset: u64, v: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            REG_DATA if dlab => self.dll = v,
            REG_DATA => self.transmit(v),
            REG_IER if dlab => self.dlm = v,
            REG_IER => self.write_ier(v),
            REG_IIR_FCR => self.write_fcr(v),
            REG_LCR => self.lcr = v,
            REG_MCR => self.write_mcr(v),
            // LSR and MSR writes are factory-test functions on the 16550; ignored.
            REG_LSR | REG_MSR => log::debug!("uart: ignored write {v:#x} to offset {offset}"),
            REG_SCR => self.scr = v,
            _ => {}
        }
    }
}

impl BusDevice for Uart16550 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // A wide access is split into byte cycles on consecutive registers, as on the ISA bus.
        read_bytewise(offset, UART_PORT_LEN, data, |r| self.read_register(r));
        self.update_irq();
        self.flush_if_stale();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, UART_PORT_LEN, data, |r, v| {
            self.write_register(r, v)
        });
        self.update_irq();
        self.flush_if_stale();
    }
}

impl Drop for Uart16550 {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::LatchedLine;
    use std::sync::Mutex;

    /// An output sink the test can inspect, counting flushes.
    #[derive(Clone, Default)]
    struct Sink {
        data: Arc<Mutex<Vec<u8>>>,
        flushed: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            crate::bus::lock(&self.data).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            let d = crate::bus::lock(&self.data).clone();
            *crate::bus::lock(&self.flushed) = d;
            Ok(())
        }
    }

    impl Sink {
        fn flushed(&self) -> Vec<u8> {
            crate::bus::lock(&self.flushed).clone()
        }
    }

    fn uart() -> (Uart16550, Arc<LatchedLine>, Sink) {
        let line = LatchedLine::new();
        let sink = Sink::default();
        (
            Uart16550::new(line.clone(), Box::new(sink.clone())),
            line,
            sink,
        )
    }

    fn rd(u: &mut Uart16550, off: u64) -> u8 {
        let mut b = [0];
        u.read(off, &mut b);
        b[0]
    }

    fn wr(u: &mut Uart16550, off: u64, v: u8) {
        u.write(off, &[v]);
    }

    #[test]
    fn reset_state() {
        let (mut u, line, _) = uart();
        assert_eq!(rd(&mut u, REG_IER), 0);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_NO_INT);
        assert_eq!(rd(&mut u, REG_LSR), LSR_THRE | LSR_TEMT);
        assert_eq!(rd(&mut u, REG_MSR), MSR_DCD | MSR_DSR | MSR_CTS);
        assert!(!line.level());
    }

    #[test]
    fn transmit_goes_to_output_and_flushes_on_newline() {
        let (mut u, _, sink) = uart();
        for b in b"hi" {
            wr(&mut u, REG_DATA, *b);
        }
        assert_eq!(sink.flushed(), b"");
        wr(&mut u, REG_DATA, b'\n');
        assert_eq!(sink.flushed(), b"hi\n");
        wr(&mut u, REG_DATA, b'$');
        u.flush();
        assert_eq!(sink.flushed(), b"hi\n$");
    }

    #[test]
    fn output_is_flushed_on_drop_and_when_tx_interrupts_stop() {
        let (mut u, _, sink) = uart();
        wr(&mut u, REG_IER, IER_THRI);
        wr(&mut u, REG_DATA, b'#');
        wr(&mut u, REG_IER, 0);
        assert_eq!(sink.flushed(), b"#");
        wr(&mut u, REG_DATA, b' ');
        drop(u);
        assert_eq!(sink.flushed(), b"# ");
    }

    #[test]
    fn stale_output_is_flushed_at_next_access() {
        let (mut u, _, sink) = uart();
        wr(&mut u, REG_DATA, b'>');
        std::thread::sleep(FLUSH_DELAY + Duration::from_millis(5));
        rd(&mut u, REG_LSR);
        assert_eq!(sink.flushed(), b">");
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let (mut u, _, sink) = uart();
        wr(&mut u, REG_LCR, 0x83);
        wr(&mut u, REG_DATA, 0x01);
        wr(&mut u, REG_IER, 0x00);
        assert_eq!(rd(&mut u, REG_DATA), 0x01);
        assert_eq!(rd(&mut u, REG_IER), 0x00);
        wr(&mut u, REG_LCR, 0x03);
        assert_eq!(rd(&mut u, REG_LCR), 0x03);
        assert_eq!(rd(&mut u, REG_IER), 0x00);
        wr(&mut u, REG_SCR, 0xa5);
        assert_eq!(rd(&mut u, REG_SCR), 0xa5);
        u.flush();
        assert_eq!(sink.flushed(), b"", "DLL write must not transmit");
    }

    #[test]
    fn ier_reads_back_low_nibble_only() {
        let (mut u, _, _) = uart();
        wr(&mut u, REG_IER, 0xff);
        assert_eq!(rd(&mut u, REG_IER), 0x0f);
        wr(&mut u, REG_IER, 0);
        assert_eq!(rd(&mut u, REG_IER), 0);
    }

    #[test]
    fn receive_sets_dr_and_raises_rx_interrupt() {
        let (mut u, line, _) = uart();
        u.enqueue_input(b"a");
        assert_eq!(rd(&mut u, REG_LSR) & LSR_DR, LSR_DR);
        assert!(!line.level(), "interrupt disabled");
        wr(&mut u, REG_IER, IER_RDI);
        assert!(line.level());
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_RDI);
        assert_eq!(rd(&mut u, REG_DATA), b'a');
        assert!(!line.level());
        assert_eq!(rd(&mut u, REG_LSR) & LSR_DR, 0);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_NO_INT);
    }

    #[test]
    fn non_fifo_mode_holds_one_byte_and_overruns() {
        let (mut u, _, _) = uart();
        assert_eq!(u.rx_space(), 1);
        u.enqueue_input(b"xy");
        assert_eq!(rd(&mut u, REG_LSR), LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT);
        assert_eq!(rd(&mut u, REG_LSR) & LSR_OE, 0, "OE clears on read");
        assert_eq!(rd(&mut u, REG_DATA), b'x');
    }

    #[test]
    fn fifo_mode_iir_bits_trigger_level_and_timeout() {
        let (mut u, line, _) = uart();
        // Enable FIFO, trigger at 4 bytes.
        wr(&mut u, REG_IIR_FCR, 0x41 | FCR_CLEAR_RX | FCR_CLEAR_TX);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_FIFO_ENABLED | IIR_NO_INT);
        assert_eq!(u.rx_space(), RX_FIFO_SIZE);
        wr(&mut u, REG_IER, IER_RDI);
        u.enqueue_input(b"ab");
        assert!(line.level());
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_FIFO_ENABLED | IIR_TIMEOUT);
        u.enqueue_input(b"cd");
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_FIFO_ENABLED | IIR_RDI);
        assert_eq!(rd(&mut u, REG_DATA), b'a');
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_FIFO_ENABLED | IIR_TIMEOUT);
        // Clearing the RX FIFO drops the data.
        wr(&mut u, REG_IIR_FCR, 0x41 | FCR_CLEAR_RX);
        assert_eq!(rd(&mut u, REG_LSR) & LSR_DR, 0);
        assert!(!line.level());
    }

    #[test]
    fn fifo_overrun_keeps_contents() {
        let (mut u, _, _) = uart();
        wr(&mut u, REG_IIR_FCR, FCR_ENABLE);
        let input: Vec<u8> = (0..20).collect();
        u.enqueue_input(&input);
        assert_eq!(u.rx_space(), 0);
        assert_eq!(rd(&mut u, REG_LSR) & LSR_OE, LSR_OE);
        let got: Vec<u8> = (0..RX_FIFO_SIZE).map(|_| rd(&mut u, REG_DATA)).collect();
        assert_eq!(got, (0..16).collect::<Vec<u8>>());
        assert_eq!(rd(&mut u, REG_LSR) & LSR_DR, 0);
    }

    #[test]
    fn disabling_fifo_resets_it() {
        let (mut u, _, _) = uart();
        wr(&mut u, REG_IIR_FCR, FCR_ENABLE);
        u.enqueue_input(b"abc");
        wr(&mut u, REG_IIR_FCR, 0);
        assert_eq!(rd(&mut u, REG_LSR) & LSR_DR, 0);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_NO_INT);
    }

    #[test]
    fn thre_interrupt_on_enable_cleared_by_iir_read_rearmed_by_toggle() {
        let (mut u, line, _) = uart();
        wr(&mut u, REG_IER, IER_THRI);
        assert!(line.level());
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_THRI);
        assert!(!line.level());
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_NO_INT);
        // Linux's THRE test: IER=0 then IER=THRI must re-assert.
        wr(&mut u, REG_IER, 0);
        wr(&mut u, REG_IER, IER_THRI);
        assert!(line.level());
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_THRI);
    }

    #[test]
    fn thre_interrupt_rearms_after_each_transmit() {
        let (mut u, line, _) = uart();
        wr(&mut u, REG_IER, IER_THRI);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_THRI);
        assert!(!line.level());
        wr(&mut u, REG_DATA, b'x');
        assert!(line.level());
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_THRI);
    }

    #[test]
    fn thre_interrupt_not_reported_when_disabled() {
        let (mut u, line, _) = uart();
        wr(&mut u, REG_DATA, b'x');
        assert!(!line.level());
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_NO_INT);
    }

    #[test]
    fn priority_line_status_over_rx_over_thre_over_modem() {
        let (mut u, line, _) = uart();
        // Leaving and re-entering normal mode toggles the modem lines: deltas pending.
        wr(&mut u, REG_MCR, MCR_LOOP);
        wr(&mut u, REG_MCR, 0);
        u.enqueue_input(b"ab"); // overrun in 16450 mode
        wr(&mut u, REG_IER, IER_RDI | IER_THRI | IER_RLSI | IER_MSI);
        assert!(line.level());
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_RLSI);
        rd(&mut u, REG_LSR);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_RDI);
        rd(&mut u, REG_DATA);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_THRI);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_MSI);
        rd(&mut u, REG_MSR);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_NO_INT);
        assert!(!line.level());
    }

    #[test]
    fn loopback_routes_tx_to_rx_and_msr_follows_mcr() {
        let (mut u, _, sink) = uart();
        // Linux's 8250 autoconfig loopback check: MCR = LOOP|OUT2|RTS gives MSR high nibble 0x90.
        wr(&mut u, REG_MCR, MCR_LOOP | 0x0a);
        assert_eq!(rd(&mut u, REG_MSR) & 0xf0, 0x90);
        wr(&mut u, REG_MCR, MCR_LOOP | MCR_DTR | MCR_OUT1);
        assert_eq!(
            rd(&mut u, REG_MSR),
            MSR_DSR | MSR_RI | MSR_DCTS | MSR_DDSR | MSR_DDCD
        );
        // RI falling edge sets TERI.
        wr(&mut u, REG_MCR, MCR_LOOP | MCR_DTR);
        assert_eq!(rd(&mut u, REG_MSR), MSR_DSR | MSR_TERI);
        assert_eq!(rd(&mut u, REG_MSR), MSR_DSR, "deltas clear on read");
        u.enqueue_input(b"host");
        assert_eq!(u.rx_space(), 0);
        assert_eq!(
            rd(&mut u, REG_LSR) & LSR_DR,
            0,
            "line input is disconnected"
        );
        wr(&mut u, REG_DATA, b'L');
        assert_eq!(rd(&mut u, REG_LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, REG_DATA), b'L');
        u.flush();
        assert_eq!(sink.flushed(), b"", "nothing leaves the chip in loopback");
        wr(&mut u, REG_MCR, 0x0b);
        assert_eq!(rd(&mut u, REG_MCR), 0x0b);
        assert_eq!(rd(&mut u, REG_MSR) & 0xf0, MSR_DCD | MSR_DSR | MSR_CTS);
    }

    #[test]
    fn fcr_ignored_without_enable_bit_and_iir_has_no_64byte_bit() {
        let (mut u, _, _) = uart();
        wr(&mut u, REG_IIR_FCR, 0xe0);
        assert_eq!(rd(&mut u, REG_IIR_FCR), IIR_NO_INT);
        wr(&mut u, REG_LCR, LCR_DLAB);
        wr(&mut u, REG_IIR_FCR, 0x21);
        wr(&mut u, REG_LCR, 0);
        assert_eq!(rd(&mut u, REG_IIR_FCR) & 0x20, 0);
    }

    #[test]
    fn wide_and_out_of_range_accesses_are_safe() {
        let (mut u, _, _) = uart();
        let mut w = [0u8; 4];
        u.read(5, &mut w);
        assert_eq!(
            w,
            [LSR_THRE | LSR_TEMT, MSR_DCD | MSR_DSR | MSR_CTS, 0, 0xff]
        );
        u.write(u64::MAX, &[1, 2]);
        u.read(100, &mut w);
        assert_eq!(w, [0xff; 4]);
    }

    /// A sink that always fails: output errors must not panic or spam.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("closed"))
        }
    }

    #[test]
    fn broken_output_is_survived() {
        let mut u = Uart16550::new(LatchedLine::new(), Box::new(Broken));
        for b in b"line\n" {
            wr(&mut u, REG_DATA, *b);
        }
        assert_eq!(rd(&mut u, REG_LSR), LSR_THRE | LSR_TEMT);
    }
}
