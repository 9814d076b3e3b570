//! Build script: assembles the test guests under `test-images/` with GNU binutils.
//!
//! The guests are written in this project (assembly for GNU `as`), so nothing is downloaded or
//! checked in as a binary: every build turns the sources into `OUT_DIR/<name>.bin` (flat images)
//! or `OUT_DIR/<name>.elf` (Multiboot kernels), which `src/images.rs` embeds with `include_bytes!`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::exit;

#[path = "test-images/guest_build.rs"]
mod guest_build;

use guest_build::Arch;

/// What the build produces from the linked ELF.
#[derive(Clone, Copy)]
enum Kind {
    /// A raw image (`objcopy -O binary`), loaded at its link address.
    Flat,
    /// The ELF itself (a Multiboot kernel).
    Elf,
}

/// One guest image: its source, linker script and output.
struct Image {
    name: &'static str,
    source: &'static str,
    script: &'static str,
    arch: Arch,
    kind: Kind,
}

const IMAGES: &[Image] = &[
    Image {
        name: "demo",
        source: "test-images/demo/demo.S",
        script: "test-images/demo/demo.ld",
        arch: Arch::X86_64,
        kind: Kind::Flat,
    },
    Image {
        name: "multiboot",
        source: "test-images/multiboot/multiboot.S",
        script: "test-images/multiboot/multiboot.ld",
        arch: Arch::I386,
        kind: Kind::Elf,
    },
    Image {
        name: "flat",
        source: "test-images/flat/flat.S",
        script: "test-images/flat/flat.ld",
        arch: Arch::I386,
        kind: Kind::Flat,
    },
    Image {
        name: "acpi",
        source: "test-images/acpi/acpi.S",
        script: "test-images/acpi/acpi.ld",
        arch: Arch::I386,
        kind: Kind::Elf,
    },
    // System test images (test-images/systests/README.md): x86-64 objects linked as ELF32.
    Image {
        name: "systest_modes",
        source: "test-images/systests/modes.S",
        script: "test-images/systests/systest.ld",
        arch: Arch::X86_64,
        kind: Kind::Elf,
    },
    Image {
        name: "systest_exceptions",
        source: "test-images/systests/exceptions.S",
        script: "test-images/systests/systest.ld",
        arch: Arch::X86_64,
        kind: Kind::Elf,
    },
    Image {
        name: "systest_paging",
        source: "test-images/systests/paging.S",
        script: "test-images/systests/systest.ld",
        arch: Arch::X86_64,
        kind: Kind::Elf,
    },
    Image {
        name: "systest_smc",
        source: "test-images/systests/smc.S",
        script: "test-images/systests/systest.ld",
        arch: Arch::X86_64,
        kind: Kind::Elf,
    },
    Image {
        name: "systest_syscall",
        source: "test-images/systests/syscall.S",
        script: "test-images/systests/systest.ld",
        arch: Arch::X86_64,
        kind: Kind::Elf,
    },
    Image {
        name: "systest_interrupts",
        source: "test-images/systests/interrupts.S",
        script: "test-images/systests/systest.ld",
        arch: Arch::X86_64,
        kind: Kind::Elf,
    },
    Image {
        name: "systest_fpu",
        source: "test-images/systests/fpu.S",
        script: "test-images/systests/systest.ld",
        arch: Arch::X86_64,
        kind: Kind::Elf,
    },
    // The random-bytes kernel (README.md, "fuzz"): not a pass/fail system test image.
    Image {
        name: "systest_fuzz",
        source: "test-images/systests/fuzz.S",
        script: "test-images/systests/systest.ld",
        arch: Arch::X86_64,
        kind: Kind::Elf,
    },
];

/// Directory of `.include` files shared by the guests.
const INCLUDE_DIR: &str = "test-images/common";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=test-images/guest_build.rs");
    println!("cargo:rerun-if-changed={INCLUDE_DIR}");
    println!("cargo:rerun-if-changed={INCLUDE_DIR}/pc.inc");
    println!("cargo:rerun-if-changed=test-images/systests");
    for image in IMAGES {
        println!("cargo:rerun-if-changed={}", image.source);
        println!("cargo:rerun-if-changed={}", image.script);
    }
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        fail("OUT_DIR is not set (run through cargo)");
    };
    let root = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    for image in IMAGES {
        if let Err(message) = build(image, &root, &out_dir) {
            fail(&message);
        }
    }
}

/// Prints one clear line and stops the build.
fn fail(message: &str) -> ! {
    eprintln!("error: building test images: {message}");
    exit(1);
}

/// Assembles, links and (for flat images) converts one image into `out_dir`.
fn build(image: &Image, root: &Path, out_dir: &Path) -> Result<(), String> {
    let elf = guest_build::assemble_and_link(
        &root.join(image.source),
        &root.join(image.script),
        &root.join(INCLUDE_DIR),
        image.arch,
        out_dir,
        image.name,
    )?;
    if let Kind::Flat = image.kind {
        let bin = out_dir.join(format!("{}.bin", image.name));
        guest_build::raw_binary(&elf, None, &bin)?;
    }
    Ok(())
}
