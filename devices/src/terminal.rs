//! Host terminal input for the serial console: raw mode, a stdin reader thread, QEMU's Ctrl-A
//! escapes.
//!
//! When stdin is a terminal it is put in raw mode (no echo, no line editing, no signals: Ctrl-C
//! goes to the guest, output post-processing kept as QEMU does) and the escape character Ctrl-A
//! introduces commands: `Ctrl-A x` quits (the `on_quit` callback runs), `Ctrl-A Ctrl-A` sends a
//! literal Ctrl-A, `Ctrl-A h` or `Ctrl-A ?` prints help; any other key after Ctrl-A is dropped.
//! When stdin is not a terminal (piped input) the bytes are forwarded verbatim, without raw
//! mode and without escape processing.
//!
//! Input is paced to the UART's receive FIFO ([`Uart16550::rx_space`]), as QEMU's
//! `can_receive` does, so pasted text is not lost to overruns while the guest is busy.
//!
//! Two detached threads, never joined (they must not keep the process alive): one blocks
//! reading stdin, the other parses escapes at once and queues the guest's bytes for the FIFO, so
//! `C-a x` works even when the guest has stopped reading the UART.
//! The terminal is restored when [`TerminalInput`] is dropped; paths that skip destructors
//! (`std::process::exit`, panics) should call [`restore_terminal`], which
//! [`install_restore_on_panic`] arranges for panics.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bus::lock;
use crate::uart::Uart16550;

/// The escape character, Ctrl-A, as in QEMU.
pub const ESCAPE_CHAR: u8 = 0x01;

/// What the escape keys do, printed for `Ctrl-A h`.
pub const HELP_TEXT: &str =
    "\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a C-a  sends C-a\r\n";

/// How long the reader first waits before retrying when the guest's receive FIFO is full.
const PACING_DELAY: Duration = Duration::from_millis(1);
/// The longest wait between retries, for a guest that stopped reading the UART altogether.
const PACING_DELAY_MAX: Duration = Duration::from_millis(20);
/// Input held for a guest that is not reading; beyond this it is dropped, as an overrun would.
const PENDING_LIMIT: usize = 64 * 1024;

/// Errors from setting up terminal input.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// `tcgetattr` failed.
    #[error("cannot read terminal attributes: {0}")]
    GetAttributes(#[source] io::Error),
    /// `tcsetattr` failed.
    #[error("cannot set terminal attributes: {0}")]
    SetAttributes(#[source] io::Error),
    /// The reader thread could not be started.
    #[error("cannot start the stdin reader thread: {0}")]
    Spawn(#[source] io::Error),
}

/// What a byte of terminal input amounts to after escape processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeAction {
    /// Send this byte to the guest.
    Forward(u8),
    /// The user asked to quit (`Ctrl-A x`).
    Quit,
    /// The user asked for help (`Ctrl-A h` or `Ctrl-A ?`).
    Help,
}

/// The Ctrl-A escape-sequence parser, one byte at a time.
#[derive(Debug, Default, Clone)]
pub struct EscapeParser {
    /// The previous byte was the escape character.
    escaped: bool,
}

impl EscapeParser {
    /// Creates a parser in the normal (not escaped) state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one input byte; returns what it means, or `None` if it is swallowed.
    pub fn feed(&mut self, b: u8) -> Option<EscapeAction> {
        if !self.escaped {
            if b == ESCAPE_CHAR {
                self.escaped = true;
                return None;
            }
            return Some(EscapeAction::Forward(b));
        }
        self.escaped = false;
        match b {
            ESCAPE_CHAR => Some(EscapeAction::Forward(ESCAPE_CHAR)),
            b'x' => Some(EscapeAction::Quit),
            b'h' | b'?' => Some(EscapeAction::Help),
            _ => None,
        }
    }
}

/// The attributes saved before raw mode, for [`restore_terminal`].
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

/// Restores the terminal saved by the last [`RawMode::enable`], if it is still altered.
///
/// Safe to call any number of times, from a panic hook or an exit path.
pub fn restore_terminal() {
    let saved = lock(&SAVED).take();
    if let Some((fd, attrs)) = saved {
        // SAFETY: `attrs` is a termios obtained from tcgetattr on `fd`; tcsetattr only reads it.
        let rc = unsafe { libc::tcsetattr(fd, libc::TCSANOW, &attrs) };
        if rc != 0 {
            log::warn!(
                "cannot restore terminal attributes: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Chains a panic hook that restores the terminal before the default report is printed.
pub fn install_restore_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
}

/// Whether `fd` refers to a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// A terminal in raw mode; the previous attributes come back on drop.
pub struct RawMode {
    _private: (),
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode (as QEMU's stdio backend does).
    pub fn enable(fd: RawFd) -> Result<RawMode, TerminalError> {
        // SAFETY: termios is plain old data; all-zero is a valid value to be overwritten.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `original` is a valid, writable termios.
        if unsafe { libc::tcgetattr(fd, &mut original) } != 0 {
            return Err(TerminalError::GetAttributes(io::Error::last_os_error()));
        }
        let mut raw = original;
        raw.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        // Keep output post-processing so host-side messages render; the guest sends CR LF anyway.
        raw.c_oflag |= libc::OPOST;
        raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::IEXTEN | libc::ISIG);
        raw.c_cflag &= !(libc::CSIZE | libc::PARENB);
        raw.c_cflag |= libc::CS8;
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // Save first, so a failure half-way can still be undone by restore_terminal.
        *lock(&SAVED) = Some((fd, original));
        // SAFETY: `raw` is a valid termios derived from the one tcgetattr returned.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            let err = io::Error::last_os_error();
            restore_terminal();
            return Err(TerminalError::SetAttributes(err));
        }
        Ok(RawMode { _private: () })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Reads `input` until EOF or error, passing each chunk on to the pump; stops when the pump is
/// gone (after a quit).
fn read_chunks(mut input: impl Read, chunks: &Sender<Vec<u8>>) {
    let mut buf = [0u8; 256];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => {
                log::debug!("terminal: stdin reached EOF");
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("terminal: stdin read failed, input stops: {e}");
                return;
            }
        };
        if chunks.send(buf.get(..n).unwrap_or(&[]).to_vec()).is_err() {
            return;
        }
    }
}

/// Moves as many `pending` bytes into the UART as its receive FIFO takes now; returns how many.
fn offer(uart: &Mutex<Uart16550>, pending: &mut VecDeque<u8>) -> usize {
    let mut u = lock(uart);
    let n = u.rx_space().min(pending.len());
    if n > 0 {
        let bytes: Vec<u8> = pending.drain(..n).collect();
        u.enqueue_input(&bytes);
    }
    n
}

/// Feeds the UART from `chunks` until EOF or quit; escapes are processed when `parser` is set.
///
/// Input is parsed as soon as it arrives, while the bytes for the guest wait in a queue for
/// FIFO space: a guest that stopped reading the UART must not keep `C-a x` from working.
fn pump(
    chunks: &Receiver<Vec<u8>>,
    uart: &Mutex<Uart16550>,
    mut parser: Option<EscapeParser>,
    on_quit: &dyn Fn(),
    help_out: &mut dyn Write,
) {
    let mut pending = VecDeque::new();
    let mut delay = PACING_DELAY;
    let mut eof = false;
    loop {
        if !pending.is_empty() && offer(uart, &mut pending) > 0 {
            delay = PACING_DELAY;
        }
        let chunk = if pending.is_empty() {
            if eof {
                return;
            }
            match chunks.recv() {
                Ok(chunk) => chunk,
                Err(_) => return,
            }
        } else {
            // The guest is slow or not reading: retry later, still listening for escapes.
            let waited = if eof {
                std::thread::sleep(delay);
                None
            } else {
                match chunks.recv_timeout(delay) {
                    Ok(chunk) => Some(chunk),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        eof = true;
                        None
                    }
                }
            };
            match waited {
                Some(chunk) => chunk,
                None => {
                    delay = (delay * 2).min(PACING_DELAY_MAX);
                    continue;
                }
            }
        };
        for b in chunk {
            let action = match parser.as_mut() {
                Some(p) => p.feed(b),
                None => Some(EscapeAction::Forward(b)),
            };
            match action {
                Some(EscapeAction::Forward(b)) if pending.len() < PENDING_LIMIT => {
                    pending.push_back(b)
                }
                Some(EscapeAction::Forward(b)) => {
                    log::debug!("terminal: guest is not reading, dropping input {b:#x}");
                }
                Some(EscapeAction::Help) => {
                    // Best effort: help text on a broken stderr is not worth stopping input.
                    let _ = help_out.write_all(HELP_TEXT.as_bytes());
                    let _ = help_out.flush();
                }
                Some(EscapeAction::Quit) => {
                    offer(uart, &mut pending);
                    log::info!("terminal: quit requested (C-a x)");
                    on_quit();
                    return;
                }
                None => {}
            }
        }
    }
}

/// Host stdin feeding a UART; restores the terminal when dropped.
pub struct TerminalInput {
    raw: Option<RawMode>,
}

impl TerminalInput {
    /// Starts forwarding stdin to `uart`, in raw mode with escapes if stdin is a terminal.
    pub fn start(
        uart: Arc<Mutex<Uart16550>>,
        on_quit: Box<dyn Fn() + Send>,
    ) -> Result<TerminalInput, TerminalError> {
        let fd = libc::STDIN_FILENO;
        let tty = is_tty(fd);
        let raw = if tty {
            Some(RawMode::enable(fd)?)
        } else {
            None
        };
        let parser = tty.then(EscapeParser::new);
        let (chunks_tx, chunks) = mpsc::channel();
        std::thread::Builder::new()
            .name("stdin-reader".into())
            .spawn(move || read_chunks(io::stdin(), &chunks_tx))
            .map_err(TerminalError::Spawn)?;
        std::thread::Builder::new()
            .name("stdin-to-uart".into())
            .spawn(move || pump(&chunks, &uart, parser, on_quit.as_ref(), &mut io::stderr()))
            .map_err(TerminalError::Spawn)?;
        Ok(TerminalInput { raw })
    }

    /// Whether stdin is a terminal in raw mode with escapes enabled.
    pub fn is_raw(&self) -> bool {
        self.raw.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::irq::LatchedLine;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn actions(input: &[u8]) -> Vec<EscapeAction> {
        let mut p = EscapeParser::new();
        input.iter().filter_map(|&b| p.feed(b)).collect()
    }

    #[test]
    fn plain_bytes_are_forwarded() {
        assert_eq!(
            actions(b"ls\r"),
            vec![
                EscapeAction::Forward(b'l'),
                EscapeAction::Forward(b's'),
                EscapeAction::Forward(b'\r')
            ]
        );
    }

    #[test]
    fn escape_sequences() {
        assert_eq!(actions(&[ESCAPE_CHAR, b'x']), vec![EscapeAction::Quit]);
        assert_eq!(
            actions(&[ESCAPE_CHAR, ESCAPE_CHAR]),
            vec![EscapeAction::Forward(ESCAPE_CHAR)]
        );
        assert_eq!(actions(&[ESCAPE_CHAR, b'h']), vec![EscapeAction::Help]);
        assert_eq!(actions(&[ESCAPE_CHAR, b'?']), vec![EscapeAction::Help]);
        // Unknown escapes are dropped and the parser returns to normal.
        assert_eq!(
            actions(&[ESCAPE_CHAR, b'q', b'a']),
            vec![EscapeAction::Forward(b'a')]
        );
        // A literal Ctrl-A followed by x is data, not quit.
        assert_eq!(
            actions(&[ESCAPE_CHAR, ESCAPE_CHAR, b'x']),
            vec![
                EscapeAction::Forward(ESCAPE_CHAR),
                EscapeAction::Forward(b'x')
            ]
        );
    }

    /// Runs the pump over all of `input`, read as stdin would be, then EOF.
    fn pump_input(
        input: &[u8],
        uart: &Mutex<Uart16550>,
        parser: Option<EscapeParser>,
        on_quit: &dyn Fn(),
        help_out: &mut dyn Write,
    ) {
        let (tx, rx) = mpsc::channel();
        read_chunks(input, &tx);
        drop(tx);
        pump(&rx, uart, parser, on_quit, help_out);
    }

    fn fifo_uart() -> Arc<Mutex<Uart16550>> {
        let mut u = Uart16550::new(LatchedLine::new(), Box::new(io::sink()));
        u.write(2, &[0x01]); // FIFO on
        Arc::new(Mutex::new(u))
    }

    fn drain(uart: &Mutex<Uart16550>) -> Vec<u8> {
        let mut got = Vec::new();
        let mut u = lock(uart);
        loop {
            let mut lsr = [0];
            u.read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                return got;
            }
            let mut b = [0];
            u.read(0, &mut b);
            got.push(b[0]);
        }
    }

    #[test]
    fn pump_with_escapes_forwards_and_quits() {
        let uart = fifo_uart();
        let quits = AtomicUsize::new(0);
        let mut help = Vec::new();
        let input: &[u8] = &[b'a', ESCAPE_CHAR, b'h', b'b', ESCAPE_CHAR, b'x', b'c'];
        pump_input(
            input,
            &uart,
            Some(EscapeParser::new()),
            &|| {
                quits.fetch_add(1, Ordering::SeqCst);
            },
            &mut help,
        );
        assert_eq!(quits.load(Ordering::SeqCst), 1);
        assert_eq!(help, HELP_TEXT.as_bytes());
        assert_eq!(drain(&uart), b"ab", "input after quit is not read");
    }

    #[test]
    fn pump_without_tty_forwards_verbatim_until_eof() {
        let uart = fifo_uart();
        let input: &[u8] = &[ESCAPE_CHAR, b'x', b'y'];
        pump_input(input, &uart, None, &|| panic!("no quit"), &mut io::sink());
        assert_eq!(drain(&uart), &[ESCAPE_CHAR, b'x', b'y']);
    }

    #[test]
    fn delivery_waits_for_fifo_space_instead_of_overrunning() {
        let uart = fifo_uart();
        let consumer = {
            let uart = uart.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..5000 {
                    got.extend(drain(&uart));
                    if got.len() >= 100 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                got
            })
        };
        let data: Vec<u8> = (0..100).collect();
        pump_input(&data, &uart, None, &|| panic!("no quit"), &mut io::sink());
        let got = consumer.join().unwrap();
        assert_eq!(got, data);
        let mut lsr = [0];
        lock(&uart).read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x02, 0, "no overrun");
    }

    #[test]
    fn quit_works_while_the_guest_is_not_reading() {
        // 16450 mode: the receiver holds one byte, and nobody reads it.
        let uart = Arc::new(Mutex::new(Uart16550::new(
            LatchedLine::new(),
            Box::new(io::sink()),
        )));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        {
            let uart = uart.clone();
            std::thread::spawn(move || {
                let input: &[u8] = &[b'a', b'b', b'c', ESCAPE_CHAR, b'x'];
                let quit = std::sync::atomic::AtomicBool::new(false);
                pump_input(
                    input,
                    &uart,
                    Some(EscapeParser::new()),
                    &|| quit.store(true, Ordering::SeqCst),
                    &mut io::sink(),
                );
                let _ = done_tx.send(quit.load(Ordering::SeqCst));
            });
        }
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(5)),
            Ok(true),
            "C-a x must quit even when the guest's receiver is full"
        );
        assert_eq!(
            drain(&uart),
            b"a",
            "what the receiver could take was delivered"
        );
    }

    #[test]
    fn raw_mode_on_a_pty_is_restored() {
        // SAFETY: plain libc calls on descriptors this test owns; every result is checked.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0);
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(slave >= 0);
            assert!(is_tty(slave));
            let mut before: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(slave, &mut before), 0);
            assert_ne!(before.c_lflag & libc::ICANON, 0);
            {
                let _raw = RawMode::enable(slave).unwrap();
                let mut during: libc::termios = std::mem::zeroed();
                assert_eq!(libc::tcgetattr(slave, &mut during), 0);
                assert_eq!(during.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
                assert_eq!(during.c_iflag & libc::ICRNL, 0);
            }
            let mut after: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(slave, &mut after), 0);
            assert_eq!(after.c_lflag, before.c_lflag);
            assert_eq!(after.c_iflag, before.c_iflag);
            // Restoring again is harmless.
            restore_terminal();
            libc::close(slave);
            libc::close(master);
        }
    }
}
