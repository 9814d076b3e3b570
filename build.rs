//! Build script: assembles the test guests under `test-images/` with GNU binutils.
//!
//! The guests are written in this project (assembly for GNU `as`), so nothing is downloaded or
//! checked in as a binary: every build turns the sources into `OUT_DIR/<name>.bin` (flat images)
//! or `OUT_DIR/<name>.elf` (Multiboot kernels), which `src/images.rs` embeds with `include_bytes!`.

use std::env;
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// Which assembler/linker flavour an image needs.
#[derive(Clone, Copy)]
enum Arch {
    /// `as --32`, `ld -m elf_i386`: 16- and 32-bit code only.
    I386,
    /// `as --64`, `ld -m elf_x86_64`: may also contain `.code16`/`.code32` sections.
    X86_64,
}

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
];

/// Directory of `.include` files shared by the guests.
const INCLUDE_DIR: &str = "test-images/common";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={INCLUDE_DIR}");
    println!("cargo:rerun-if-changed={INCLUDE_DIR}/pc.inc");
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
    let object = out_dir.join(format!("{}.o", image.name));
    let elf = out_dir.join(format!("{}.elf", image.name));
    let (as_flag, ld_emulation) = match image.arch {
        Arch::I386 => ("--32", "elf_i386"),
        Arch::X86_64 => ("--64", "elf_x86_64"),
    };
    run(
        "as",
        &[
            OsStr::new(as_flag),
            OsStr::new("--fatal-warnings"),
            OsStr::new("-I"),
            root.join(INCLUDE_DIR).as_os_str(),
            OsStr::new("-o"),
            object.as_os_str(),
            root.join(image.source).as_os_str(),
        ],
    )?;
    run(
        "ld",
        &[
            OsStr::new("-m"),
            OsStr::new(ld_emulation),
            OsStr::new("--fatal-warnings"),
            // Each guest is one RWX load segment on purpose (code, data and tables share
            // pages and are entered with paging off); ld's warning carries no news here.
            OsStr::new("--no-warn-rwx-segments"),
            OsStr::new("--build-id=none"),
            OsStr::new("-z"),
            OsStr::new("noexecstack"),
            OsStr::new("-T"),
            root.join(image.script).as_os_str(),
            OsStr::new("-o"),
            elf.as_os_str(),
            object.as_os_str(),
        ],
    )?;
    if let Kind::Flat = image.kind {
        let bin = out_dir.join(format!("{}.bin", image.name));
        run(
            "objcopy",
            &[
                OsStr::new("-O"),
                OsStr::new("binary"),
                elf.as_os_str(),
                bin.as_os_str(),
            ],
        )?;
    }
    Ok(())
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
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    Err(format!(
        "`{tool}` failed ({}): {}{}",
        output.status,
        stderr.trim(),
        stdout.trim()
    ))
}
