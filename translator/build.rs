//! Build script: extracts the demo guest's ring-3 compute kernel (`.user` of
//! `test-images/demo/demo.S`) into `OUT_DIR/demo_user.bin` for the engine's benchmark workload
//! (`ringzero_translator::engine::demo_kernel`).
//!
//! The assemble/link steps are the root build script's (`test-images/guest_build.rs`, shared by
//! `#[path]`): same flags and linker script, so the kernel is linked at its run address 0x200000
//! exactly as the demo copies it.

use std::env;
use std::path::PathBuf;
use std::process::exit;

// Only the 64-bit demo is built here; the shared module also serves 32-bit guests.
#[allow(dead_code)]
#[path = "../test-images/guest_build.rs"]
mod guest_build;

fn main() {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let images = manifest.join("..").join("test-images");
    let source = images.join("demo").join("demo.S");
    let script = images.join("demo").join("demo.ld");
    let include = images.join("common");
    println!("cargo:rerun-if-changed=build.rs");
    for p in [
        &source,
        &script,
        &include.join("pc.inc"),
        &images.join("guest_build.rs"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        fail("OUT_DIR is not set (run through cargo)");
    };
    let result = guest_build::assemble_and_link(
        &source,
        &script,
        &include,
        guest_build::Arch::X86_64,
        &out_dir,
        "demo",
    )
    .and_then(|elf| guest_build::raw_binary(&elf, Some(".user"), &out_dir.join("demo_user.bin")));
    if let Err(message) = result {
        fail(&message);
    }
}

/// Prints one clear line and stops the build.
fn fail(message: &str) -> ! {
    eprintln!("error: extracting the demo compute kernel: {message}");
    exit(1);
}
