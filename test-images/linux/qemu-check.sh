#!/usr/bin/env bash
# Check the Linux yardstick against QEMU, the reference peer: the images built by build.sh must
# boot to RINGZERO-READY, run an rz.run= command and end the run by resetting the machine, and
# without rz.run= give an interactive shell on the serial console. A developer tool (not run
# by CI); see docs/linux-yardstick.md.
#
# Usage: test-images/linux/qemu-check.sh [--accel tcg|kvm]   (default tcg)
# Needs qemu-system-x86_64 (installed with apt-get when missing and running as root).
# QEMU_CHECK_TIMEOUT (seconds, default 180) bounds each boot.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ACCEL=tcg
TIMEOUT=${QEMU_CHECK_TIMEOUT:-180} # seconds per boot

log() { printf 'qemu-check: %s\n' "$*" >&2; }
die() {
    printf 'qemu-check: FAIL: %s\n' "$*" >&2
    exit 1
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --accel)
        ACCEL=${2:?--accel needs a value}
        shift 2
        ;;
    -h | --help)
        sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) die "unknown option '$1'" ;;
    esac
done

if ! command -v qemu-system-x86_64 >/dev/null; then
    [[ $(id -u) == 0 ]] || die "qemu-system-x86_64 missing: sudo apt-get install -y qemu-system-x86"
    log "installing qemu-system-x86"
    apt-get install -y -q qemu-system-x86 >&2 ||
        { apt-get update -qq && apt-get install -y -q qemu-system-x86 >&2; }
fi

mapfile -t paths < <("$HERE/build.sh" --print-paths)
[[ ${#paths[@]} == 2 ]] || die "build.sh --print-paths did not print two paths"
VMLINUZ=${paths[0]}
INITRD=${paths[1]}

TMP=$(mktemp -d)
QEMU_PID=
cleanup() {
    [[ -n $QEMU_PID ]] && kill "$QEMU_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# Start QEMU in the background with the given -append line; stdin from $TMP/in, console to
# $TMP/<name>.log. Sets QEMU_PID and START.
start_qemu() {
    local name=$1 append=$2
    : >"$TMP/$name.log"
    START=$(now)
    qemu-system-x86_64 -kernel "$VMLINUZ" -initrd "$INITRD" -append "$append" \
        -serial stdio -display none -no-reboot -m 256 -accel "$ACCEL" \
        <"$TMP/in" >"$TMP/$name.log" 2>"$TMP/$name.err" &
    QEMU_PID=$!
}

# Wait until the log has a line matching the pattern; sets WAITED to the wall time since START.
# (Not run in a subshell: `wait` only works on our own children.)
wait_for() {
    local name=$1 pattern=$2
    while ! grep -qa -- "$pattern" "$TMP/$name.log"; do
        if ! kill -0 "$QEMU_PID" 2>/dev/null; then
            cat "$TMP/$name.log" "$TMP/$name.err" >&2
            die "$name: QEMU ended before printing '$pattern'"
        fi
        if [[ $(elapsed "$START" "$(now)" | cut -d. -f1) -ge $TIMEOUT ]]; then
            cat "$TMP/$name.log" >&2
            die "$name: no '$pattern' within ${TIMEOUT}s"
        fi
        sleep 0.05
    done
    WAITED=$(elapsed "$START" "$(now)")
}

# Wait for QEMU to exit by itself (the guest powers off through ACPI) and check its status;
# sets WAITED like wait_for.
wait_exit() {
    local name=$1 status=0 waited=0
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
        [[ $waited -lt $((TIMEOUT * 10)) ]] || die "$name: QEMU did not exit (the guest did not power off)"
    done
    wait "$QEMU_PID" || status=$?
    QEMU_PID=
    [[ $status == 0 ]] || {
        cat "$TMP/$name.err" >&2
        die "$name: QEMU exited with status $status"
    }
    WAITED=$(elapsed "$START" "$(now)")
}

# --- 1: batch mode, rz.run= ------------------------------------------------------------------
: >"$TMP/in"
start_qemu run 'console=ttyS0 reboot=k panic=-1 rz.run="uname -a; ls /proc | head -3"'
wait_for run '^RINGZERO-READY '
ready_wall=$WAITED
wait_exit run
total_wall=$WAITED
tr -d '\r' <"$TMP/run.log" >"$TMP/run.txt"
ready_line=$(grep -a '^RINGZERO-READY ' "$TMP/run.txt" | head -n1)
grep -aq '^Linux .* 6\.1\.0-.*x86_64' "$TMP/run.txt" || die "run: no uname -a output"
# `ls /proc | head -3` lists the lowest PIDs first: "1" is init itself.
grep -aqx '1' "$TMP/run.txt" || die "run: no ls /proc output"
grep -aqx 'RINGZERO-EXIT 0' "$TMP/run.txt" || die "run: no 'RINGZERO-EXIT 0'"
log "run mode OK: ${ready_line} (guest uptime, s); wall time to READY ${ready_wall}s, to exit ${total_wall}s"
sed -n '/^RINGZERO-READY/,/^RINGZERO-EXIT/p' "$TMP/run.txt" >&2

# --- 2: the "-- <command>" form, and the exit status is passed through ----------------------
start_qemu status 'console=ttyS0 reboot=k panic=-1 quiet -- echo dash form; exit 7'
wait_exit status
tr -d '\r' <"$TMP/status.log" >"$TMP/status.txt"
grep -aqx 'dash form' "$TMP/status.txt" || die "status: the command after -- did not run"
grep -aqx 'RINGZERO-EXIT 7' "$TMP/status.txt" || die "status: no 'RINGZERO-EXIT 7'"
log "'--' form and exit status OK"

# --- 3: interactive shell on the console ----------------------------------------------------
rm -f "$TMP/in"
mkfifo "$TMP/in"
start_qemu shell 'console=ttyS0 reboot=k panic=-1 quiet'
exec 3>"$TMP/in"
wait_for shell '^RINGZERO-READY '
# Give the shell a moment to start; input typed earlier is buffered by the tty anyway.
sleep 1
# shellcheck disable=SC2016 # the guest's shell does the arithmetic, proving it ran the line.
printf 'echo interactive-$((6 * 7))\nexit\n' >&3
wait_exit shell
exec 3>&-
tr -d '\r' <"$TMP/shell.log" | grep -aqx 'interactive-42' || {
    cat "$TMP/shell.log" >&2
    die "shell: the interactive shell did not run the typed command"
}
log "interactive mode OK"
if grep -aq 'job control turned off' "$TMP/shell.log"; then
    log "note: the shell has no controlling tty (job control off)"
fi
log "all checks passed ($ACCEL)"
