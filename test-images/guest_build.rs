//! Shared by the build scripts of `ringzero` (all test guests) and `ringzero-translator` (the
//! demo's ring-3 kernel): assembling and linking the project's guests with GNU binutils.
//!
//! Included with `#[path]` because a build script cannot depend on the crate it builds, and the
//! translator cannot depend on the root crate.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which assembler/linker flavour an image needs.
#[derive(Clone, Copy)]
pub enum Arch {
    /// `as --32`, `ld -m elf_i386`: 16- and 32-bit code only.
    I386,
    /// `as --64`, `ld -m elf_x86_64`: may also contain `.code16`/`.code32` sections.
    X86_64,
}

/// Assembles `source` (with `include` as `.include` directory) and links it with `script` into
/// `out_dir/<name>.elf`, which it returns.
pub fn assemble_and_link(
    source: &Path,
    script: &Path,
    include: &Path,
    arch: Arch,
    out_dir: &Path,
    name: &str,
) -> Result<PathBuf, String> {
    let object = out_dir.join(format!("{name}.o"));
    let elf = out_dir.join(format!("{name}.elf"));
    let (as_flag, ld_emulation) = match arch {
        Arch::I386 => ("--32", "elf_i386"),
        Arch::X86_64 => ("--64", "elf_x86_64"),
    };
    run(
        "as",
        &[
            OsStr::new(as_flag),
            OsStr::new("--fatal-warnings"),
            OsStr::new("-I"),
            include.as_os_str(),
            OsStr::new("-o"),
            object.as_os_str(),
            source.as_os_str(),
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
            script.as_os_str(),
            OsStr::new("-o"),
            elf.as_os_str(),
            object.as_os_str(),
        ],
    )?;
    Ok(elf)
}

/// Writes the raw bytes of `elf` (only `section`, when given) to `bin` (`objcopy -O binary`).
pub fn raw_binary(elf: &Path, section: Option<&str>, bin: &Path) -> Result<(), String> {
    let mut args = vec![OsStr::new("-O"), OsStr::new("binary")];
    if let Some(s) = section {
        args.extend([OsStr::new("-j"), OsStr::new(s)]);
    }
    args.extend([elf.as_os_str(), bin.as_os_str()]);
    run("objcopy", &args)
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
