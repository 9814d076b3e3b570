//! Watching a guest's console while it runs: progress lines on stderr (a run starts, reaches
//! `RINGZERO-READY`, prints each `RZBENCH` line, ends) and the host time at which the
//! `RINGZERO-READY` line appeared.
//!
//! Two sources feed a [`Console`]: a thread tailing the console file that ringzero's UART
//! appends to ([`Tail`]; the UART flushes on every newline, so lines arrive as the guest prints
//! them), and a child process's stdout ([`watch_child`]: QEMU's serial console, native rzbench).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{parse_bench, parse_ready};

/// How often the console file is polled for new output.
const TAIL_POLL: Duration = Duration::from_millis(10);

/// One run's console as it arrives: the text, the host time of `RINGZERO-READY`, and the
/// progress lines on stderr.
pub(crate) struct Console {
    /// `compare` or `bench`: the progress lines' prefix.
    command: &'static str,
    /// The column (`bt`, `qemu-tcg`, ...).
    label: String,
    quiet: bool,
    start: Instant,
    text: String,
    partial: Vec<u8>,
    ready_host: Option<Duration>,
}

impl Console {
    /// Starts the clock of a run (call right before the machine or process starts) and says
    /// what starts.
    pub(crate) fn start(command: &'static str, label: &str, quiet: bool, what: &str) -> Console {
        let c = Console {
            command,
            label: label.to_string(),
            quiet,
            start: Instant::now(),
            text: String::new(),
            partial: Vec::new(),
            ready_host: None,
        };
        c.note(what);
        c
    }

    /// Prints one progress line (unless quiet).
    pub(crate) fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{}: {}: {msg}", self.command, self.label);
        }
    }

    /// Host time since [`Console::start`].
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Takes console bytes that arrived at `at`.
    pub(crate) fn feed(&mut self, bytes: &[u8], at: Instant) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.line(&String::from_utf8_lossy(&line), at);
        }
    }

    fn line(&mut self, line: &str, at: Instant) {
        self.text.push_str(line);
        if !line.ends_with('\n') {
            self.text.push('\n');
        }
        let t = at.saturating_duration_since(self.start);
        if self.ready_host.is_none() {
            if let Some(up) = parse_ready(line) {
                self.ready_host = Some(t);
                self.note(&format!(
                    "RINGZERO-READY after {:.2} s (guest uptime {up:.2} s)",
                    t.as_secs_f64()
                ));
            }
        }
        if let Some(b) = parse_bench(line) {
            self.note(&format!(
                "{} {:.6} s (at {:.2} s)",
                b.name,
                b.ns as f64 / 1e9,
                t.as_secs_f64()
            ));
        }
    }

    /// Ends the run: the whole text (a last unterminated line included) and the host time of
    /// `RINGZERO-READY`.
    pub(crate) fn finish(mut self, how: &str) -> Watched {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.line(&String::from_utf8_lossy(&rest), Instant::now());
        }
        let wall = self.elapsed();
        self.note(&format!("{how} after {:.2} s", wall.as_secs_f64()));
        Watched {
            text: self.text,
            ready_host: self.ready_host,
            wall,
        }
    }
}

/// What a watched run printed.
pub(crate) struct Watched {
    /// The console text, lines ending in `\n`.
    pub(crate) text: String,
    /// Host time from the start to the `RINGZERO-READY` line.
    pub(crate) ready_host: Option<Duration>,
    /// Host time from the start to [`Console::finish`].
    pub(crate) wall: Duration,
}

/// A thread feeding a [`Console`] from a file another writer appends to.
pub(crate) struct Tail {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Console>,
}

impl Tail {
    /// Starts tailing `path` (which may not exist yet).
    pub(crate) fn start(path: PathBuf, mut console: Console) -> Tail {
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            let mut file = None;
            let mut buf = vec![0u8; 16 << 10];
            loop {
                // Read the flag first: everything written before it was set is read below.
                let last = d.load(Ordering::Acquire);
                if file.is_none() {
                    file = std::fs::File::open(&path).ok();
                }
                if let Some(f) = file.as_mut() {
                    while let Ok(n @ 1..) = f.read(&mut buf) {
                        console.feed(&buf[..n], Instant::now());
                    }
                }
                if last {
                    return console;
                }
                std::thread::sleep(TAIL_POLL);
            }
        });
        Tail { done, thread }
    }

    /// Reads what is left and returns the console.
    pub(crate) fn stop(self) -> Result<Console, String> {
        self.done.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| "the console watcher thread panicked".to_string())
    }
}

/// How a watched child process ended.
pub(crate) struct ChildEnd {
    /// Its exit status; `None` when it was killed at the timeout.
    pub(crate) status: Option<ExitStatus>,
    /// Its stderr (the last 4 KiB).
    pub(crate) stderr: String,
}

/// Feeds `child`'s stdout to `console` until the child closes it, then waits for it; kills it
/// when `timeout` (counted from the console's start) passes first. The child must have been
/// spawned with piped stdout and stderr.
pub(crate) fn watch_child(
    mut child: Child,
    console: &mut Console,
    timeout: Duration,
) -> std::io::Result<ChildEnd> {
    let (tx, rx) = mpsc::channel::<(Vec<u8>, Instant)>();
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("the child's stdout is not piped"))?;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n @ 1..) = out.read(&mut buf) {
            if tx.send((buf[..n].to_vec(), Instant::now())).is_err() {
                break;
            }
        }
    });
    let err_reader = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = e.read_to_end(&mut s);
            let keep = s.len().saturating_sub(4096);
            String::from_utf8_lossy(&s[keep..]).into_owned()
        })
    });
    let mut timed_out = false;
    loop {
        let left = timeout.saturating_sub(console.elapsed());
        match rx.recv_timeout(left) {
            Ok((bytes, at)) => console.feed(&bytes, at),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    // After kill the pipe closes; take what was still in flight.
    let _ = reader.join();
    while let Ok((bytes, at)) = rx.try_recv() {
        console.feed(&bytes, at);
    }
    let stderr = err_reader.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(ChildEnd {
        status: (!timed_out).then_some(status),
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_ready_time() {
        let mut c = Console::start("compare", "bt", true, "booting");
        let t0 = c.start;
        c.feed(b"junk\r\nRINGZERO-REA", t0 + Duration::from_millis(5));
        assert_eq!(c.ready_host, None);
        c.feed(
            b"DY 1.50\r\nRZBENCH name=x ns=1 check=2\n",
            t0 + Duration::from_millis(700),
        );
        c.feed(b"RINGZERO-READY 9.0\ntail", t0 + Duration::from_secs(3));
        let w = c.finish("done");
        assert_eq!(w.ready_host, Some(Duration::from_millis(700)));
        assert_eq!(
            w.text,
            "junk\r\nRINGZERO-READY 1.50\r\nRZBENCH name=x ns=1 check=2\nRINGZERO-READY 9.0\ntail\n"
        );
    }

    #[test]
    fn tail_reads_a_growing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console");
        let tail = Tail::start(p.clone(), Console::start("compare", "t", true, "x"));
        std::fs::write(&p, "RINGZERO-READY 2.0\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"RZBENCH name=a ns=5 check=6\n").unwrap();
        let w = tail.stop().unwrap().finish("done");
        assert!(w.text.contains("RZBENCH name=a"), "{}", w.text);
        assert!(w.ready_host.is_some());
    }

    #[test]
    fn child_output_and_timeout() {
        let spawn = |script: &str| {
            std::process::Command::new("sh")
                .args(["-c", script])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut c = Console::start("bench", "sh", true, "x");
        let end = watch_child(
            spawn("echo RINGZERO-READY 1.0; echo oops >&2; exit 3"),
            &mut c,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(end.status.and_then(|s| s.code()), Some(3));
        assert_eq!(end.stderr, "oops\n");
        assert!(c.ready_host.is_some());
        let mut c = Console::start("bench", "sh", true, "x");
        let end = watch_child(
            spawn("echo early; exec sleep 5"),
            &mut c,
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(end.status.is_none());
        assert!(c.elapsed() < Duration::from_secs(4));
        assert_eq!(c.finish("t").text, "early\n");
    }
}
