#!/usr/bin/env python3
"""Write a deterministic newc cpio archive (optionally gzip-compressed) from a file list.

Why this exists: the Linux yardstick initramfs must be buildable without root (no mknod for
/dev/console), without the external `cpio` tool, and byte-for-byte reproducible, so that the
manifest's sha256 means something. Every entry gets uid/gid 0 and a fixed mtime, inodes are
numbered in order, and entries are written sorted by path (a parent always sorts before its
children because it is a prefix of their paths).

The input list uses the format of the kernel's usr/gen_init_cpio (one entry per line, '#'
comments, blank lines ignored):

    dir   <name> <mode> <uid> <gid>
    file  <name> <source-path> <mode> <uid> <gid>
    slink <name> <target> <mode> <uid> <gid>
    nod   <name> <mode> <uid> <gid> <c|b> <major> <minor>

Modes are octal permission bits; uid/gid are accepted for compatibility but the archive always
records 0 (root), which is what an initramfs wants. Names are absolute paths inside the archive.

Usage: mkcpio.py [--gzip] [--mtime SECONDS] LIST OUTPUT
"""

import argparse
import gzip
import os
import stat
import sys

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class ListError(Exception):
    """A malformed line in the file list."""


def pad4(length):
    """Bytes of zero padding that bring `length` up to a multiple of four (newc alignment)."""
    return b"\0" * ((4 - length % 4) % 4)


def header(ino, mode, nlink, mtime, filesize, rdevmajor, rdevminor, name):
    """One newc header plus the NUL-terminated, padded name."""
    name_bytes = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, mtime, filesize, 0, 0, rdevmajor, rdevminor,
              len(name_bytes), 0]
    for value in fields:
        if value < 0 or value > 0xFFFFFFFF:
            raise ListError(f"{name}: field value {value} does not fit a newc header")
    head = NEWC_MAGIC + b"".join(b"%08X" % value for value in fields) + name_bytes
    return head + pad4(len(head))


def parse_mode(text, where):
    """Octal permission bits (with optional setuid/setgid/sticky)."""
    try:
        mode = int(text, 8)
    except ValueError as err:
        raise ListError(f"{where}: bad mode {text!r}") from err
    if mode & ~0o7777:
        raise ListError(f"{where}: mode {text!r} has bits beyond 07777")
    return mode


def parse_list(lines, list_dir):
    """Turn list lines into entry dicts keyed by archive name (without the leading '/')."""
    entries = {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {lineno}"
        words = line.split()
        kind = words[0]
        expected = {"dir": 5, "file": 6, "slink": 6, "nod": 8}.get(kind)
        if expected is None:
            raise ListError(f"{where}: unknown entry type {kind!r}")
        if len(words) != expected:
            raise ListError(f"{where}: {kind} takes {expected - 1} fields, got {len(words) - 1}")
        name = words[1]
        if not name.startswith("/") or name == "/":
            raise ListError(f"{where}: name {name!r} must be an absolute path below /")
        key = os.path.normpath(name).lstrip("/")
        if key in entries:
            raise ListError(f"{where}: {name} listed twice")
        if kind == "dir":
            entry = {"type": stat.S_IFDIR, "perm": parse_mode(words[2], where)}
        elif kind == "file":
            source = words[2]
            if not os.path.isabs(source):
                source = os.path.join(list_dir, source)
            entry = {"type": stat.S_IFREG, "perm": parse_mode(words[3], where), "source": source}
        elif kind == "slink":
            entry = {"type": stat.S_IFLNK, "perm": parse_mode(words[3], where), "target": words[2]}
        else:
            dev_type = words[5]
            if dev_type not in ("c", "b"):
                raise ListError(f"{where}: device type must be c or b, got {dev_type!r}")
            try:
                major, minor = int(words[6]), int(words[7])
            except ValueError as err:
                raise ListError(f"{where}: bad device numbers") from err
            entry = {
                "type": stat.S_IFCHR if dev_type == "c" else stat.S_IFBLK,
                "perm": parse_mode(words[2], where),
                "major": major,
                "minor": minor,
            }
        entries[key] = entry
    # Every parent directory must be listed, or the kernel's unpacker would fail to create
    # the child and silently drop it.
    for key in entries:
        parent = os.path.dirname(key)
        if parent and entries.get(parent, {}).get("type") != stat.S_IFDIR:
            raise ListError(f"/{key}: parent directory /{parent} is not listed as a dir")
    return entries


def build_archive(entries, mtime):
    """The complete cpio archive as bytes."""
    out = bytearray()
    for ino, key in enumerate(sorted(entries), 1):
        entry = entries[key]
        kind = entry["type"]
        mode = kind | entry["perm"]
        data = b""
        major = minor = 0
        nlink = 1
        if kind == stat.S_IFDIR:
            nlink = 2
        elif kind == stat.S_IFREG:
            with open(entry["source"], "rb") as source:
                data = source.read()
        elif kind == stat.S_IFLNK:
            data = entry["target"].encode()
        else:
            major, minor = entry["major"], entry["minor"]
        out += header(ino, mode, nlink, mtime, len(data), major, minor, key)
        out += data + pad4(len(data))
    out += header(0, 0, 1, 0, 0, 0, 0, TRAILER)
    # Pad the whole archive to 512 bytes like GNU cpio does; harmless for the kernel.
    out += b"\0" * ((512 - len(out) % 512) % 512)
    return bytes(out)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gzip", action="store_true", help="gzip-compress the archive")
    parser.add_argument("--mtime", type=int, default=0, help="mtime recorded for every entry")
    parser.add_argument("list", help="gen_init_cpio-style file list")
    parser.add_argument("output", help="archive to write")
    args = parser.parse_args(argv)

    with open(args.list, encoding="utf-8") as list_file:
        lines = list_file.readlines()
    try:
        entries = parse_list(lines, os.path.dirname(os.path.abspath(args.list)))
        archive = build_archive(entries, args.mtime)
    except (ListError, OSError) as err:
        print(f"mkcpio.py: {args.list}: {err}", file=sys.stderr)
        return 1

    if args.gzip:
        # mtime=0 and no file name in the gzip header keep the output reproducible.
        with open(args.output, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw,
                               mtime=0) as compressed:
                compressed.write(archive)
    else:
        with open(args.output, "wb") as raw:
            raw.write(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
