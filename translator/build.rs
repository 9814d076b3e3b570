//! Build script: extracts the demo guest's ring-3 compute kernel (`.user` of
//! `test-images/demo/demo.S`) into `OUT_DIR/demo_user.bin` for the engine's benchmark workload
//! (`ringzero_translator::engine::demo_kernel`).
//!
//! This crate cannot depend on the root crate, whose `build.rs` builds the whole demo image, so
//! the assemble/link steps are a small duplicate of that script's (same flags, same linker
//! script, so the kernel is linked at its run address 0x200000 exactly as the demo copies it).

use std::env;
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{exit, Command};

fn main() {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let images = manifest.join("..").join("test-images");
    let source = images.join("demo").join("demo.S");
    let script = images.join("demo").join("demo.ld");
    let include = images.join("common");
    println!("cargo:rerun-if-changed=build.rs");
    for p in [&source, &script, &include.join("pc.inc")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        fail("OUT_DIR is not set (run through cargo)");
    };
    let object = out_dir.join("demo.o");
    let elf = out_dir.join("demo.elf");
    let bin = out_dir.join("demo_user.bin");
    let steps: [(&str, Vec<&OsStr>); 3] = [
        (
            "as",
            vec![
                OsStr::new("--64"),
                OsStr::new("--fatal-warnings"),
                OsStr::new("-I"),
                include.as_os_str(),
                OsStr::new("-o"),
                object.as_os_str(),
                source.as_os_str(),
            ],
        ),
        (
            "ld",
            vec![
                OsStr::new("-m"),
                OsStr::new("elf_x86_64"),
                OsStr::new("--fatal-warnings"),
                // One RWX load segment on purpose, as in the root build script.
                OsStr::new("--no-warn-rwx-segments"),
                OsStr::new("--build-id=none"),
                OsStr::new("-z"),
                OsStr::new("noexecstack"),
                OsStr::new("-T"),
                script.as_os_str(),
                OsStr::new("-o"),
                elf.as_os_str(),
                object.as_os_str(),
            ],
        ),
        (
            "objcopy",
            vec![
                OsStr::new("-O"),
                OsStr::new("binary"),
                OsStr::new("-j"),
                OsStr::new(".user"),
                elf.as_os_str(),
                bin.as_os_str(),
            ],
        ),
    ];
    for (tool, args) in &steps {
        if let Err(message) = run(tool, args) {
            fail(&message);
        }
    }
}

/// Prints one clear line and stops the build.
fn fail(message: &str) -> ! {
    eprintln!("error: extracting the demo compute kernel: {message}");
    exit(1);
}

/// Runs one binutils tool, turning "not installed" and failures into one readable message.
fn run(tool: &str, args: &[&OsStr]) -> Result<(), String> {
    let output = match Command::new(tool).args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(format!(
                "`{tool}` not found: install GNU binutils (e.g. `apt-get install binutils`)"
            ))
        }
        Err(e) => return Err(format!("cannot run `{tool}`: {e}")),
    };
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{tool}` failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim(),
        String::from_utf8_lossy(&output.stdout).trim()
    ))
}
