//! The Linux yardstick under `--accel bt`: the Debian kernel and busybox initramfs
//! (`test-images/linux/build.sh`, cached in ~/.cache/ringzero/linux) boot under binary
//! translation, run commands from `rz.run` and power off. Runs in CI: it needs no KVM.

mod common;
use common::*;
use std::process::Command;

#[test]
fn linux_yardstick_boots_under_bt_runs_commands_and_powers_off() {
    let (kernel, initrd) = yardstick();
    let started = std::time::Instant::now();
    let o = ringzero(&[
        "run",
        "--accel",
        "bt",
        "--mem",
        "256M",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--append",
        "console=ttyS0 panic=-1 rz.run=\"uname -a; cat /proc/cpuinfo; ls /proc; \
         echo one two three | wc -w\"",
        "--timeout",
        "900s",
        "--stats",
    ]);
    let out = stdout(&o);
    let err = stderr(&o);
    let ready = out
        .lines()
        .find_map(|l| l.strip_prefix("RINGZERO-READY "))
        .unwrap_or_else(|| panic!("no RINGZERO-READY\nstdout:\n{out}\nstderr:\n{err}"));
    eprintln!(
        "linux under bt: RINGZERO-READY at {ready} s guest uptime, whole run {:.1} s wall",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.contains("Linux ringzero 6.1.0-50-amd64"),
        "uname -a: {out}"
    );
    assert!(
        out.contains("model name\t: ringzero BT x86-64 (binary translation)"),
        "cpuinfo shows the advertised model: {out}"
    );
    let after_ready = &out[out.find("RINGZERO-READY").unwrap_or(0)..];
    assert!(
        after_ready.contains("meminfo") && after_ready.contains("self"),
        "ls /proc: {out}"
    );
    assert!(out.lines().any(|l| l.trim() == "3"), "pipeline: {out}");
    assert!(out.contains("RINGZERO-EXIT 0"), "{out}");
    assert_eq!(status(&o), 0, "power-off ends the run: {err}");
    assert!(err.contains("backend=bt"), "{err}");
}

#[test]
fn linux_under_bt_interactive_shell_reads_the_terminal() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    let (kernel, initrd) = yardstick();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringzero"))
        .args([
            "run",
            "--accel",
            "bt",
            "--mem",
            "256M",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--timeout",
            "900s",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringzero");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<String>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while std::time::Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    seen.push(l);
                    if hit {
                        return true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
        false
    };
    assert!(
        wait_for("RINGZERO-READY", &mut seen),
        "no RINGZERO-READY:\n{}",
        seen.join("\n")
    );
    let mut stdin = child.stdin.take().expect("stdin");
    // Typed at the shell prompt: the UART receives it, raises IRQ 4 through the I/O APIC, and
    // the guest's tty layer echoes and runs it.
    stdin
        .write_all(b"echo typed-$((6 * 7))\n")
        .expect("type a command");
    assert!(
        wait_for("typed-42", &mut seen),
        "the shell did not run the typed command:\n{}",
        seen.join("\n")
    );
    stdin.write_all(b"poweroff -f\n").expect("type poweroff");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{}", seen.join("\n"));
}
