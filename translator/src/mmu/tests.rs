//! Known-answer tests of the MMU against the SDM Vol. 3 §4 rules.

use super::walk::pf;
use super::*;
use crate::mem::GuestMem;
use crate::sem::Exception;
use crate::system::TlbFlush;

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const A: u64 = 0x20;
const D: u64 = 0x40;
const PS: u64 = 0x80;
const G: u64 = 0x100;
const XD: u64 = 1 << 63;

/// Fixed table layout used by every mode: the root at 0x1000 (PAE: PDPT at 0x1020), then
/// 0x2000 (PDPT, 4-level), 0x3000 (directory), 0x4000 (table), data page 0x5000.
const ROOT: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
const DATA: u64 = 0x5000;

/// The linear address each mode's layout maps (indexes chosen non-zero at every level).
fn linear_of(mode: PagingMode) -> u64 {
    match mode {
        PagingMode::TwoLevel => (0x201 << 22) | (4 << 12) | 0x123,
        PagingMode::Pae => (2 << 30) | (3 << 21) | (4 << 12) | 0x123,
        _ => (1 << 39) | (2 << 30) | (3 << 21) | (4 << 12) | 0x123,
    }
}

fn ctx(mode: PagingMode, cpl: u8) -> PagingContext {
    PagingContext {
        mode,
        cr3: if mode == PagingMode::Pae {
            ROOT + 0x20
        } else {
            ROOT
        },
        wp: true,
        nxe: true,
        pse: true,
        pge: true,
        cpl,
    }
}

/// Where each level's entry for `linear_of(mode)` lives, top first (PAE PDPTE included).
fn entry_addrs(mode: PagingMode) -> Vec<u64> {
    let la = linear_of(mode);
    match mode {
        PagingMode::TwoLevel => vec![ROOT + (la >> 22) * 4, PT + ((la >> 12) & 0x3ff) * 4],
        PagingMode::Pae => vec![
            ROOT + 0x20 + (la >> 30) * 8,
            PD + ((la >> 21) & 0x1ff) * 8,
            PT + ((la >> 12) & 0x1ff) * 8,
        ],
        _ => vec![
            ROOT + ((la >> 39) & 0x1ff) * 8,
            PDPT + ((la >> 30) & 0x1ff) * 8,
            PD + ((la >> 21) & 0x1ff) * 8,
            PT + ((la >> 12) & 0x1ff) * 8,
        ],
    }
}

fn put(m: &mut dyn PhysMem, mode: PagingMode, addr: u64, v: u64) {
    if mode == PagingMode::TwoLevel {
        m.write_u32(addr, v as u32);
    } else {
        m.write_u64(addr, v);
    }
}

fn get(m: &mut dyn PhysMem, mode: PagingMode, addr: u64) -> u64 {
    if mode == PagingMode::TwoLevel {
        u64::from(m.read_u32(addr))
    } else {
        m.read_u64(addr)
    }
}

/// Writes a 4 KiB mapping of `linear_of(mode)` to DATA: `dir` flags on the directory entry,
/// `leaf` flags on the PTE, everything above fully permissive (PAE PDPTE: P only).
fn map4k(m: &mut dyn PhysMem, mode: PagingMode, dir: u64, leaf: u64) {
    let a = entry_addrs(mode);
    match mode {
        PagingMode::TwoLevel => {
            put(m, mode, a[0], PT | dir);
            put(m, mode, a[1], DATA | leaf);
        }
        PagingMode::Pae => {
            put(m, mode, a[0], PD | P);
            put(m, mode, a[1], PT | dir);
            put(m, mode, a[2], DATA | leaf);
        }
        _ => {
            put(m, mode, a[0], PDPT | P | RW | US);
            put(m, mode, a[1], PD | P | RW | US);
            put(m, mode, a[2], PT | dir);
            put(m, mode, a[3], DATA | leaf);
        }
    }
}

fn phys() -> VecPhys {
    VecPhys::new(0x40_0000)
}

fn pf_err(r: Result<Translation, Exception>) -> u32 {
    match r {
        Err(Exception::PageFault { error, .. }) => error,
        other => panic!("expected #PF, got {other:?}"),
    }
}

const MODES: [PagingMode; 3] = [PagingMode::TwoLevel, PagingMode::Pae, PagingMode::FourLevel];

#[test]
fn context_of_cpu_state() {
    use crate::state::ctl;
    let mut cpu = crate::CpuState::default();
    assert_eq!(PagingContext::of(&cpu).mode, PagingMode::None);
    cpu.cr0 = ctl::CR0_PE | ctl::CR0_PG | ctl::CR0_WP;
    cpu.cr3 = 0x1234_5000;
    assert_eq!(PagingContext::of(&cpu).mode, PagingMode::TwoLevel);
    cpu.cr4 = ctl::CR4_PAE | ctl::CR4_PGE | ctl::CR4_PSE;
    let c = PagingContext::of(&cpu);
    assert_eq!(c.mode, PagingMode::Pae);
    assert!(c.wp && c.pge && c.pse && !c.nxe);
    cpu.efer = ctl::EFER_LME | ctl::EFER_LMA | ctl::EFER_NXE;
    cpu.cs.dpl = 3;
    let c = PagingContext::of(&cpu);
    assert_eq!(c.mode, PagingMode::FourLevel);
    assert_eq!((c.cr3, c.nxe, c.cpl), (0x1234_5000, true, 3));
    assert_eq!(c.linear_mask(), u64::MAX);
    // PG without PE is not a paging mode.
    cpu.cr0 = ctl::CR0_PG;
    assert_eq!(PagingContext::of(&cpu).mode, PagingMode::None);
}

#[test]
fn four_k_pages_every_mode_set_accessed_and_dirty() {
    for mode in MODES {
        let mut m = phys();
        map4k(&mut m, mode, P | RW | US, P | RW | US);
        let c = ctx(mode, 0);
        let la = linear_of(mode);
        let t = walk(&mut m, &c, la, Access::Read, false).unwrap();
        assert_eq!(t.phys, DATA | 0x123, "{mode:?}");
        assert_eq!(t.page_size, 4096);
        assert!(!t.dirty && !t.global);
        let addrs = entry_addrs(mode);
        for (i, &a) in addrs.iter().enumerate() {
            let e = get(&mut m, mode, a);
            let pae_pdpte = mode == PagingMode::Pae && i == 0;
            // PAE PDPTEs have no accessed flag (bit 5 is reserved there).
            assert_eq!(e & A != 0, !pae_pdpte, "{mode:?} level {i}");
            assert_eq!(e & D, 0);
        }
        let t = walk(&mut m, &c, la, Access::Write, false).unwrap();
        assert!(t.dirty);
        let leaf = get(&mut m, mode, *addrs.last().unwrap());
        assert_eq!(leaf & (A | D), A | D);
        // D only on the leaf.
        let dir = get(&mut m, mode, addrs[addrs.len() - 2]);
        assert_eq!(dir & D, 0);
    }
}

/// Counts physical writes (to check that unchanged entries are not written back).
struct Counting {
    inner: VecPhys,
    writes: usize,
}

impl PhysMem for Counting {
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) {
        self.inner.read_phys(addr, buf)
    }
    fn write_phys(&mut self, addr: u64, data: &[u8]) {
        self.writes += 1;
        self.inner.write_phys(addr, data)
    }
}

#[test]
fn entries_written_back_only_when_a_bit_changes() {
    for mode in MODES {
        let mut m = Counting {
            inner: phys(),
            writes: 0,
        };
        map4k(&mut m, mode, P | RW | US, P | RW | US);
        m.writes = 0;
        let c = ctx(mode, 0);
        let la = linear_of(mode);
        walk(&mut m, &c, la, Access::Read, false).unwrap();
        let levels = if mode == PagingMode::Pae {
            2
        } else {
            entry_addrs(mode).len()
        };
        assert_eq!(m.writes, levels, "{mode:?}: A set on each level");
        m.writes = 0;
        walk(&mut m, &c, la, Access::Read, false).unwrap();
        assert_eq!(m.writes, 0, "{mode:?}: nothing to change");
        walk(&mut m, &c, la, Access::Write, false).unwrap();
        assert_eq!(m.writes, 1, "{mode:?}: only the leaf gets D");
        walk(&mut m, &c, la, Access::Write, false).unwrap();
        assert_eq!(m.writes, 1);
    }
}

#[test]
fn faulting_walk_has_no_side_effects() {
    for mode in MODES {
        let mut m = phys();
        map4k(&mut m, mode, P | RW, P | RW | US);
        let c = ctx(mode, 3);
        let before = m.bytes().to_vec();
        let e = pf_err(walk(&mut m, &c, linear_of(mode), Access::Read, false));
        assert_eq!(e, pf::P | pf::U);
        assert!(before == m.bytes(), "{mode:?}");
    }
}

#[test]
fn two_level_4m_pages_with_pse36() {
    let mode = PagingMode::TwoLevel;
    let mut m = phys();
    let la: u64 = 0x8040_4123; // PDE index 0x201
    let pde_addr = ROOT + 0x201 * 4;
    // 4 MiB page at physical 0x12_0040_0000: bits 31:22 = 0x004 << 22, bits 20:13 = 0x12.
    m.write_u32(
        pde_addr,
        (0x0040_0000 | (0x12 << 13) | P | RW | US | PS | G) as u32,
    );
    let c = ctx(mode, 3);
    let t = walk(&mut m, &c, la, Access::Write, false).unwrap();
    assert_eq!(t.phys, 0x12_0040_0000 | (la & 0x3f_ffff));
    assert_eq!(t.page_size, 4 << 20);
    assert!(t.global);
    assert_eq!(u64::from(m.read_u32(pde_addr)) & (A | D), A | D);
    // Bit 21 is reserved in a 4 MiB PDE.
    m.write_u32(
        pde_addr,
        (0x0040_0000 | (1 << 21) | P | RW | US | PS) as u32,
    );
    assert_eq!(
        pf_err(walk(&mut m, &c, la, Access::Write, false)),
        pf::P | pf::RSVD | pf::W | pf::U
    );
    // With CR4.PSE = 0 the PS bit is ignored: the PDE points to a page table.
    m.write_u32(pde_addr, (PT | P | RW | US | PS) as u32);
    m.write_u32(PT + 4 * 4, (DATA | P | RW | US) as u32);
    let c = PagingContext { pse: false, ..c };
    assert_eq!(
        walk(&mut m, &c, la, Access::Read, false).unwrap().phys,
        DATA | 0x123
    );
    // And CR4.PGE = 0 makes G meaningless.
    let c = PagingContext {
        pse: true,
        pge: false,
        ..c
    };
    m.write_u32(pde_addr, (0x0040_0000 | P | US | PS | G) as u32);
    assert!(!walk(&mut m, &c, la, Access::Read, false).unwrap().global);
}

#[test]
fn pae_2m_pages_and_reserved_bits() {
    let mode = PagingMode::Pae;
    let mut m = phys();
    map4k(&mut m, mode, P | RW | US, P | RW | US);
    let a = entry_addrs(mode);
    let la = linear_of(mode);
    let c = ctx(mode, 0);
    // A 2 MiB page in the directory.
    m.write_u64(a[1], 0x60_0000 | P | RW | PS | D);
    let t = walk(&mut m, &c, la, Access::Read, false).unwrap();
    assert_eq!(t.phys, 0x60_0000 | (la & 0x1f_ffff));
    assert_eq!(t.page_size, 2 << 20);
    let rsvd = pf::P | pf::RSVD;
    // Large-page alignment bits 20:13 (bit 12 is PAT and allowed).
    m.write_u64(a[1], 0x60_0000 | (1 << 13) | P | RW | PS);
    assert_eq!(pf_err(walk(&mut m, &c, la, Access::Read, false)), rsvd);
    m.write_u64(a[1], 0x60_0000 | (1 << 12) | P | RW | PS);
    assert!(walk(&mut m, &c, la, Access::Read, false).is_ok());
    // Bits 62:40 are reserved in PAE directory and table entries (not only 51:40).
    for b in [40, 51, 52, 62] {
        m.write_u64(a[1], 0x60_0000 | (1 << b) | P | RW | PS);
        assert_eq!(
            pf_err(walk(&mut m, &c, la, Access::Read, false)),
            rsvd,
            "bit {b}"
        );
    }
    m.write_u64(a[1], PT | P | RW);
    m.write_u64(a[2], DATA | (1 << 45) | P);
    assert_eq!(pf_err(walk(&mut m, &c, la, Access::Read, false)), rsvd);
    // XD is reserved when NXE = 0 (and I/D is not reported then).
    m.write_u64(a[2], DATA | XD | P);
    let no_nx = PagingContext { nxe: false, ..c };
    assert_eq!(
        pf_err(walk(&mut m, &no_nx, la, Access::Execute, false)),
        rsvd
    );
    assert_eq!(
        pf_err(walk(&mut m, &c, la, Access::Execute, false)),
        pf::P | pf::ID
    );
    // PDPTE: bits 2:1, 8:5 and 63 are reserved; P = 0 is not present.
    m.write_u64(a[2], DATA | P);
    for b in [1, 2, 5, 8, 63, 40] {
        m.write_u64(a[0], PD | P | (1 << b));
        assert_eq!(
            pf_err(walk(&mut m, &c, la, Access::Read, false)),
            rsvd,
            "bit {b}"
        );
    }
    m.write_u64(a[0], PD);
    assert_eq!(pf_err(walk(&mut m, &c, la, Access::Write, false)), pf::W);
    // A not-present entry wins over reserved bits further down (walk order).
    m.write_u64(a[0], PD | P);
    m.write_u64(a[1], PT | (1 << 50));
    assert_eq!(pf_err(walk(&mut m, &c, la, Access::Read, false)), 0);
}

#[test]
fn four_level_1g_2m_pages_and_reserved_bits() {
    let mode = PagingMode::FourLevel;
    let mut m = phys();
    map4k(&mut m, mode, P | RW | US, P | RW | US);
    let a = entry_addrs(mode);
    let la = linear_of(mode);
    let c = ctx(mode, 0);
    let rsvd = pf::P | pf::RSVD;
    // 1 GiB page in the PDPT.
    m.write_u64(a[1], 0xc0_4000_0000 | P | RW | PS | G);
    let t = walk(&mut m, &c, la, Access::Read, false).unwrap();
    assert_eq!(t.phys, 0xc0_4000_0000 | (la & 0x3fff_ffff));
    assert_eq!(t.page_size, 1 << 30);
    assert!(t.global);
    for b in [13, 29] {
        m.write_u64(a[1], 0x40_0000_0000 | (1 << b) | P | PS);
        assert_eq!(
            pf_err(walk(&mut m, &c, la, Access::Read, false)),
            rsvd,
            "bit {b}"
        );
    }
    // 2 MiB page in the directory.
    m.write_u64(a[1], PD | P | RW);
    m.write_u64(a[2], 0x20_0000 | P | RW | PS);
    let t = walk(&mut m, &c, la, Access::Write, false).unwrap();
    assert_eq!(t.phys, 0x20_0000 | (la & 0x1f_ffff));
    assert_eq!(m.read_u64(a[2]) & (A | D), A | D);
    m.write_u64(a[2], 0x20_0000 | (1 << 20) | P | PS);
    assert_eq!(pf_err(walk(&mut m, &c, la, Access::Read, false)), rsvd);
    // PS is reserved in a PML4E.
    m.write_u64(a[0], PDPT | P | RW | PS);
    assert_eq!(pf_err(walk(&mut m, &c, la, Access::Read, false)), rsvd);
    m.write_u64(a[0], PDPT | P | RW | US);
    m.write_u64(a[2], PT | P | RW | US);
    // Bits 51:40 are reserved at every level; 62:52 are ignored.
    for (lvl, base) in [(0, PDPT), (1, PD), (2, PT), (3, DATA)] {
        let good = m.read_u64(a[lvl]);
        m.write_u64(a[lvl], (base | P | RW | US) | (1 << 40));
        assert_eq!(
            pf_err(walk(&mut m, &c, la, Access::Read, false)),
            rsvd,
            "level {lvl}"
        );
        m.write_u64(a[lvl], (base | P | RW | US) | (1 << 51));
        assert_eq!(
            pf_err(walk(&mut m, &c, la, Access::Read, false)),
            rsvd,
            "level {lvl}"
        );
        m.write_u64(a[lvl], (base | P | RW | US) | (0x7ff << 52));
        assert!(
            walk(&mut m, &c, la, Access::Read, false).is_ok(),
            "level {lvl}"
        );
        m.write_u64(a[lvl], good);
    }
    // XD with NXE = 0 is reserved even in the PML4E; user fetch reports U and not I/D.
    m.write_u64(a[0], PDPT | P | RW | US | XD);
    let c3 = PagingContext {
        nxe: false,
        ..ctx(mode, 3)
    };
    assert_eq!(
        pf_err(walk(&mut m, &c3, la, Access::Execute, false)),
        rsvd | pf::U
    );
    // Upper address bits of a 48-bit linear address select the entries; bits 63:48 do not.
    m.write_u64(a[0], PDPT | P | RW | US);
    let t = walk(&mut m, &c, la | 0xffff_0000_0000_0000, Access::Read, false).unwrap();
    assert_eq!(t.phys, DATA | 0x123);
}

/// The SDM §4.6.1 rules, stated once more as the tests' oracle (no SMEP/SMAP/PKE).
fn sdm_allows(
    access: Access,
    user_access: bool,
    user_page: bool,
    writable: bool,
    nx: bool,
    wp: bool,
) -> bool {
    match (user_access, access) {
        // User-mode accesses: only to user-mode addresses.
        (true, Access::Read) => user_page,
        (true, Access::Write) => user_page && writable,
        (true, Access::Execute) => user_page && !nx,
        // Supervisor-mode accesses (explicit or implicit): reads always; writes to read-only
        // pages (user or supervisor) only with CR0.WP = 0; fetches from anything not XD.
        (false, Access::Read) => true,
        (false, Access::Write) => writable || !wp,
        (false, Access::Execute) => !nx,
    }
}

#[test]
fn permission_matrix_every_mode() {
    let mut checked = 0;
    for mode in MODES {
        let wide = mode != PagingMode::TwoLevel;
        let mut m = phys();
        for bits in 0..64u32 {
            let f = |i: u32| bits & (1 << i) != 0;
            let (us_d, us_l, rw_d, rw_l, xd_d, xd_l) = (f(0), f(1), f(2), f(3), f(4), f(5));
            if !wide && (xd_d || xd_l) {
                continue;
            }
            let flags = |us: bool, rw: bool, xd: bool| {
                P | if us { US } else { 0 } | if rw { RW } else { 0 } | if xd { XD } else { 0 }
            };
            for wp in [false, true] {
                for nxe in [false, true] {
                    for cpl in [0u8, 1, 2, 3] {
                        for implicit in [false, true] {
                            for access in Access::ALL {
                                map4k(
                                    &mut m,
                                    mode,
                                    flags(us_d, rw_d, xd_d),
                                    flags(us_l, rw_l, xd_l),
                                );
                                let c = PagingContext {
                                    wp,
                                    nxe,
                                    ..ctx(mode, cpl)
                                };
                                let got = walk(&mut m, &c, linear_of(mode), access, implicit);
                                let user_access = cpl == 3 && !implicit;
                                let mut err = 0;
                                if access == Access::Write {
                                    err |= pf::W;
                                }
                                if user_access {
                                    err |= pf::U;
                                }
                                if access == Access::Execute && wide && nxe {
                                    err |= pf::ID;
                                }
                                let want = if wide && !nxe && (xd_d || xd_l) {
                                    Err(err | pf::P | pf::RSVD)
                                } else if sdm_allows(
                                    access,
                                    user_access,
                                    us_d && us_l,
                                    rw_d && rw_l,
                                    nxe && (xd_d || xd_l),
                                    wp,
                                ) {
                                    Ok(DATA | 0x123)
                                } else {
                                    Err(err | pf::P)
                                };
                                let got = match got {
                                    Ok(t) => Ok(t.phys),
                                    Err(Exception::PageFault { error, linear }) => {
                                        assert_eq!(linear, linear_of(mode));
                                        Err(error)
                                    }
                                    Err(e) => panic!("{e:?}"),
                                };
                                assert_eq!(
                                    got, want,
                                    "{mode:?} us={us_d}/{us_l} rw={rw_d}/{rw_l} xd={xd_d}/{xd_l} \
                                     wp={wp} nxe={nxe} cpl={cpl} implicit={implicit} {access:?}"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, (16 + 64 + 64) * 2 * 2 * 4 * 2 * 3);
}

#[test]
fn known_error_codes() {
    let mode = PagingMode::FourLevel;
    let la = linear_of(mode);
    let cases: [(u64, u64, u8, Access, Option<u32>); 10] = [
        // User write to a read-only user page: P | W | U.
        (P | RW | US, P | US, 3, Access::Write, Some(0x7)),
        // Supervisor write to a read-only page with WP = 1: P | W.
        (P | RW | US, P | US, 0, Access::Write, Some(0x3)),
        // User read of a supervisor page: P | U.
        (P | RW, P | RW | US, 3, Access::Read, Some(0x5)),
        // User fetch from an XD page: P | U | I/D.
        (P | RW | US, P | US | XD, 3, Access::Execute, Some(0x15)),
        // Supervisor fetch from a user page without SMEP: allowed.
        (P | RW | US, P | US, 0, Access::Execute, None),
        // Supervisor fetch from XD (in the directory): P | I/D.
        (P | RW | XD, P | RW, 0, Access::Execute, Some(0x11)),
        // Not-present PTE, user write: W | U.
        (P | RW | US, 0, 3, Access::Write, Some(0x6)),
        // Not-present PTE, supervisor fetch: I/D only.
        (P | RW | US, 0, 0, Access::Execute, Some(0x10)),
        // Reserved bit in the PTE, user read: P | U | RSVD.
        (P | RW | US, P | US | (1 << 48), 3, Access::Read, Some(0xd)),
        // User write needs R/W on the directory too.
        (P | US, P | RW | US, 3, Access::Write, Some(0x7)),
    ];
    for (i, (dir, leaf, cpl, access, want)) in cases.into_iter().enumerate() {
        let mut m = phys();
        map4k(&mut m, mode, dir, leaf);
        let r = walk(&mut m, &ctx(mode, cpl), la, access, false);
        match want {
            Some(code) => assert_eq!(
                r,
                Err(Exception::PageFault {
                    linear: la,
                    error: code
                }),
                "case {i}"
            ),
            None => assert!(r.is_ok(), "case {i}"),
        }
    }
    // Two-level paging never reports I/D.
    let mut m = phys();
    map4k(&mut m, PagingMode::TwoLevel, P | RW, P | RW);
    let la = linear_of(PagingMode::TwoLevel);
    let r = walk(
        &mut m,
        &ctx(PagingMode::TwoLevel, 3),
        la,
        Access::Execute,
        false,
    );
    assert_eq!(
        r,
        Err(Exception::PageFault {
            linear: la,
            error: 0x5
        })
    );
}

// ---- SystemMem ----

/// A SystemMem over a fresh 4 MiB RAM prepared by `f`, in `mode` at `cpl`.
fn system(mode: PagingMode, cpl: u8, f: impl FnOnce(&mut VecPhys)) -> SystemMem {
    let mut m = phys();
    f(&mut m);
    let mut s = SystemMem::new(Box::new(m));
    s.set_paging_context(ctx(mode, cpl));
    s
}

/// Maps linear page `vpn` (4-level, PML4/PDPT/PD indexes 0) to physical `phys` with `flags`.
fn map_low(m: &mut dyn PhysMem, vpn: u64, phys: u64, flags: u64) {
    m.write_u64(ROOT, PDPT | P | RW | US);
    m.write_u64(PDPT, PD | P | RW | US);
    m.write_u64(PD, PT | P | RW | US);
    m.write_u64(PT + vpn * 8, phys | flags);
}

fn err_of(r: Result<(), Exception>) -> (u64, u32) {
    match r {
        Err(Exception::PageFault { linear, error }) => (linear, error),
        other => panic!("expected #PF, got {other:?}"),
    }
}

#[test]
fn paging_off_is_identity_truncated_to_32_bits() {
    let mut s = SystemMem::new(Box::new(phys()));
    s.write(0x1_0000_2000, &[1, 2, 3, 4]).unwrap();
    let mut b = [0; 4];
    s.read(0x2000, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    // Unbacked physical memory: all ones, writes dropped, no fault.
    s.write(0x8000_0000, &[0]).unwrap();
    s.read(0x8000_0000, &mut b).unwrap();
    assert_eq!(b, [0xff; 4]);
    // A read straddling the end of RAM: the RAM part, then ones.
    s.write(0x3f_fffe, &[7, 8]).unwrap();
    s.read(0x3f_fffe, &mut b).unwrap();
    assert_eq!(b, [7, 8, 0xff, 0xff]);
    assert_eq!(s.code_phys(0x1_0000_1234).unwrap(), 0x1234);
    // Wrap at 4 GiB.
    s.write(0xffff_fffe, &[9, 9, 9, 9]).unwrap();
    s.read(0, &mut b[..2]).unwrap();
    assert_eq!(b[..2], [9, 9]);
    assert_eq!(s.stats().walks, 0);
}

#[test]
fn system_mem_translates_and_hits() {
    let mut s = system(PagingMode::FourLevel, 3, |m| {
        map_low(m, 0x10, DATA, P | RW | US);
    });
    s.write(0x10_ff8, &0x1122_3344_5566_7788u64.to_le_bytes())
        .unwrap();
    let mut b = [0; 8];
    s.read(0x10_ff8, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);
    assert_eq!(s.phys_mut().read_u64(DATA + 0xff8), 0x1122_3344_5566_7788);
    let st = s.stats();
    // The write walked (and filled read and write entries); the read hit.
    assert_eq!((st.walks, st.misses, st.hits), (1, 1, 1));
    for _ in 0..10 {
        s.read(0x10_000, &mut b).unwrap();
    }
    assert_eq!(s.stats().hits, 11);
    assert_eq!(s.translate(0x10_123, Access::Read).unwrap(), DATA + 0x123);
}

#[test]
fn write_entry_only_after_dirty() {
    let mut s = system(PagingMode::FourLevel, 0, |m| map_low(m, 1, DATA, P | RW));
    let mut b = [0; 1];
    s.read(0x1000, &mut b).unwrap();
    assert!(s.tlb().lookup(Access::Read, 0, 1).is_some());
    assert!(
        s.tlb().lookup(Access::Write, 0, 1).is_none(),
        "D not set yet"
    );
    assert_eq!(s.phys_mut().read_u64(PT + 8) & D, 0);
    s.write(0x1000, &[5]).unwrap();
    assert_eq!(s.phys_mut().read_u64(PT + 8) & (A | D), A | D);
    assert!(s.tlb().lookup(Access::Write, 0, 1).is_some());
    // A page whose D is already set gets its write entry from a read walk.
    s.phys_mut()
        .write_u64(PT + 16, (DATA + 0x1000) | P | RW | A | D);
    s.read(0x2000, &mut b).unwrap();
    assert!(s.tlb().lookup(Access::Write, 0, 2).is_some());
    // ... but not a read-only one under WP.
    s.phys_mut().write_u64(PT + 24, (DATA + 0x2000) | P | A | D);
    s.read(0x3000, &mut b).unwrap();
    assert!(s.tlb().lookup(Access::Write, 0, 3).is_none());
    assert_eq!(err_of(s.write(0x3000, &[1])), (0x3000, pf::P | pf::W));
    assert_eq!(s.stats().faults, 1);
}

#[test]
fn changed_pte_not_seen_until_flushed() {
    let mut s = system(PagingMode::FourLevel, 0, |m| map_low(m, 1, DATA, P | RW));
    s.phys_mut().write_phys(DATA, &[0xaa]);
    s.phys_mut().write_phys(DATA + 0x1000, &[0xbb]);
    let mut b = [0; 1];
    s.read(0x1000, &mut b).unwrap();
    assert_eq!(b, [0xaa]);
    s.phys_mut().write_u64(PT + 8, (DATA + 0x1000) | P | RW);
    s.read(0x1000, &mut b).unwrap();
    assert_eq!(b, [0xaa], "stale until INVLPG, as on hardware");
    s.flush(TlbFlush::Page(0x1fff));
    s.read(0x1000, &mut b).unwrap();
    assert_eq!(b, [0xbb]);
    // Unmapping is likewise not seen until flushed.
    s.phys_mut().write_u64(PT + 8, 0);
    s.read(0x1000, &mut b).unwrap();
    s.flush(TlbFlush::NonGlobal);
    assert_eq!(err_of(s.read(0x1000, &mut b)), (0x1000, 0));
}

#[test]
fn global_pages_survive_cr3_loads() {
    let mut s = system(PagingMode::FourLevel, 0, |m| {
        map_low(m, 1, DATA, P | RW | G);
        map_low(m, 2, DATA + 0x1000, P | RW);
    });
    let mut b = [0; 1];
    s.read(0x1000, &mut b).unwrap();
    s.read(0x2000, &mut b).unwrap();
    s.flush(TlbFlush::NonGlobal);
    assert!(s.tlb().lookup(Access::Read, 0, 1).is_some());
    assert!(s.tlb().lookup(Access::Read, 0, 2).is_none());
    // A new CR3 through set_context flushes the same way.
    s.read(0x2000, &mut b).unwrap();
    s.set_paging_context(PagingContext {
        cr3: ROOT,
        ..ctx(PagingMode::FourLevel, 0)
    });
    assert!(
        s.tlb().lookup(Access::Read, 0, 2).is_some(),
        "same CR3: nothing flushed"
    );
    s.set_paging_context(PagingContext {
        cr3: 0x9000,
        ..ctx(PagingMode::FourLevel, 0)
    });
    assert!(s.tlb().lookup(Access::Read, 0, 1).is_some());
    assert!(s.tlb().lookup(Access::Read, 0, 2).is_none());
    // INVLPG drops a global page.
    s.flush(TlbFlush::Page(0x1000));
    assert!(s.tlb().lookup(Access::Read, 0, 1).is_none());
    // Without CR4.PGE the G bit means nothing.
    let mut s = system(PagingMode::FourLevel, 0, |m| {
        map_low(m, 1, DATA, P | RW | G)
    });
    s.set_paging_context(PagingContext {
        pge: false,
        ..ctx(PagingMode::FourLevel, 0)
    });
    s.read(0x1000, &mut b).unwrap();
    s.flush(TlbFlush::NonGlobal);
    assert!(s.tlb().lookup(Access::Read, 0, 1).is_none());
    // A full flush drops globals too.
    let mut s = system(PagingMode::FourLevel, 0, |m| {
        map_low(m, 1, DATA, P | RW | G)
    });
    s.read(0x1000, &mut b).unwrap();
    s.flush(TlbFlush::All);
    assert_eq!(s.tlb().valid_entries(), 0);
}

#[test]
fn flush_page_drops_large_page_entries() {
    // A 2 MiB page at linear 0x20_0000 → physical 0x20_0000, and a 4 KiB page elsewhere.
    let mut s = system(PagingMode::FourLevel, 0, |m| {
        map_low(m, 1, DATA, P | RW);
        m.write_u64(PD + 8, 0x20_0000 | P | RW | PS | G);
    });
    let mut b = [0; 1];
    for a in [0x20_0000u64, 0x20_5000, 0x3f_f000, 0x1000] {
        s.read(a, &mut b).unwrap();
    }
    assert_eq!(
        s.tlb().lookup(Access::Read, 0, 0x205).unwrap().page_shift(),
        21
    );
    // INVLPG of one address inside the large page drops every entry of it.
    s.flush_page(0x21_0000);
    for vpn in [0x200, 0x205, 0x3ff] {
        assert!(s.tlb().lookup(Access::Read, 0, vpn).is_none(), "{vpn:#x}");
    }
    assert!(
        s.tlb().lookup(Access::Read, 0, 1).is_some(),
        "unrelated 4K page kept"
    );
    // Moving the large page is seen after that INVLPG.
    s.phys_mut().write_u64(PD + 8, P | RW | PS); // now at physical 0
    s.phys_mut().write_phys(0x5123, &[0x42]);
    s.flush_page(0x20_0000);
    s.read(0x20_5123, &mut b).unwrap();
    assert_eq!(b, [0x42]);
}

#[test]
fn cpl_change_never_reuses_supervisor_permissions() {
    let mut s = system(PagingMode::FourLevel, 0, |m| map_low(m, 1, DATA, P | RW));
    let mut b = [0; 1];
    s.read(0x1000, &mut b).unwrap();
    s.write(0x1000, &[1]).unwrap();
    s.set_paging_context(ctx(PagingMode::FourLevel, 3));
    assert_eq!(err_of(s.read(0x1000, &mut b)), (0x1000, pf::P | pf::U));
    assert_eq!(
        err_of(s.write(0x1000, &[1])),
        (0x1000, pf::P | pf::W | pf::U)
    );
    // An implicit supervisor access at CPL 3 (GDT/IDT/TSS) is allowed and reports no U.
    s.read_system(0x1000, &mut b).unwrap();
    s.write_system(0x1000, &[2]).unwrap();
    assert_eq!(s.phys_mut().read_u64(DATA) as u8, 2);
    // Back at CPL 0 the supervisor entries are still good.
    s.set_paging_context(ctx(PagingMode::FourLevel, 0));
    s.read(0x1000, &mut b).unwrap();
    assert_eq!(b, [2]);
    // Implicit accesses to a non-present page fault without U even at CPL 3.
    s.set_paging_context(ctx(PagingMode::FourLevel, 3));
    assert_eq!(err_of(s.read_system(0x7000, &mut b)), (0x7000, 0));
    assert_eq!(err_of(s.write_system(0x7000, &[0])), (0x7000, pf::W));
}

#[test]
fn wp_change_flushes() {
    let mut s = system(PagingMode::FourLevel, 0, |m| map_low(m, 1, DATA, P | D | A));
    s.set_paging_context(PagingContext {
        wp: false,
        ..ctx(PagingMode::FourLevel, 0)
    });
    s.write(0x1000, &[1]).unwrap();
    s.set_paging_context(ctx(PagingMode::FourLevel, 0));
    assert_eq!(err_of(s.write(0x1000, &[1])), (0x1000, pf::P | pf::W));
    // Turning paging off flushes too: linear 0x1000 is physical 0x1000 again.
    s.set_paging_context(PagingContext::default());
    s.phys_mut().write_phys(0x1000, &[0x77]);
    let mut b = [0; 1];
    s.read(0x1000, &mut b).unwrap();
    assert_eq!(b, [0x77]);
}

#[test]
fn cross_page_write_second_page_faults_writes_nothing() {
    let mut s = system(PagingMode::FourLevel, 3, |m| {
        map_low(m, 1, DATA, P | RW | US);
        map_low(m, 2, DATA + 0x3000, P | US); // read-only
    });
    let r = s.write(0x1ffc, &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(err_of(r), (0x2000, pf::P | pf::W | pf::U));
    let mut b = [0; 8];
    s.phys_mut().read_phys(DATA + 0xffc, &mut b[..4]);
    s.phys_mut().read_phys(DATA + 0x3000, &mut b[4..]);
    assert_eq!(b, [0; 8]);
    // Also when the first page was already in the write TLB.
    s.write(0x1000, &[0]).unwrap();
    assert!(s.write(0x1ffe, &[9, 9, 9, 9]).is_err());
    s.phys_mut().read_phys(DATA + 0xffe, &mut b[..2]);
    assert_eq!(b[..2], [0, 0]);
    // A not-present second page.
    assert_eq!(
        err_of(s.write(0x2ffe, &[1, 2, 3])),
        (0x2ffe, pf::P | pf::W | pf::U)
    );
    assert_eq!(err_of(s.read(0x2ffe, &mut b[..4])), (0x3000, pf::U));
    // A split read across two discontiguous physical pages.
    s.phys_mut().write_phys(DATA + 0xffe, &[1, 2]);
    s.phys_mut().write_phys(DATA + 0x3000, &[3, 4]);
    s.read(0x1ffe, &mut b[..4]).unwrap();
    assert_eq!(b[..4], [1, 2, 3, 4]);
    // A split write across two writable pages.
    s.phys_mut()
        .write_u64(PT + 16, (DATA + 0x3000) | P | RW | US);
    s.flush_page(0x2000);
    s.write(0x1fff, &[0xa, 0xb]).unwrap();
    s.phys_mut().read_phys(DATA + 0xfff, &mut b[..1]);
    s.phys_mut().read_phys(DATA + 0x3000, &mut b[1..2]);
    assert_eq!(b[..2], [0xa, 0xb]);
}

#[test]
fn access_longer_than_two_pages() {
    let mut s = system(PagingMode::FourLevel, 0, |m| {
        for v in 1..5 {
            map_low(m, v, DATA + (5 - v) * 0x1000, P | RW);
        }
    });
    let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| i as u8).collect();
    s.write(0x1800, &data).unwrap();
    let mut back = vec![0; data.len()];
    s.read(0x1800, &mut back).unwrap();
    assert_eq!(back, data);
    // Page 5 is not mapped: a long write reaching it writes nothing.
    let before = s.phys_mut().read_u64(DATA + 0x3800);
    assert_eq!(err_of(s.write(0x1800, &vec![0xee; 4 * 4096])).0, 0x5000);
    assert_eq!(s.phys_mut().read_u64(DATA + 0x3800), before);
}

#[test]
fn code_page_writes_are_recorded() {
    let mut s = system(PagingMode::FourLevel, 0, |m| {
        map_low(m, 1, DATA, P | RW);
        map_low(m, 2, DATA + 0x1000, P | RW);
    });
    let code = DATA >> 12;
    // A write entry exists before the page becomes watched: watching drops it.
    s.write(0x1000, &[0x90]).unwrap();
    assert!(s.tlb().lookup(Access::Write, 0, 1).is_some());
    s.watch_code_page(code);
    assert!(s.tlb().lookup(Access::Write, 0, 1).is_none());
    let mut pages = Vec::new();
    assert!(!s.take_code_writes(&mut pages));
    // Reads and fetches do not record.
    let mut b = [0; 2];
    s.read(0x1000, &mut b).unwrap();
    s.fetch(0x1000, &mut b).unwrap();
    assert!(!s.take_code_writes(&mut pages));
    s.write(0x1010, &[0xc3]).unwrap();
    s.write(0x1011, &[0xc3]).unwrap();
    assert!(s.take_code_writes(&mut pages));
    assert_eq!(pages, [code]);
    assert_eq!(
        s.phys_mut().read_u32(DATA + 0x10) & 0xffff,
        0xc3c3,
        "the write happened"
    );
    // Taken pages are unwatched until the engine watches them again.
    s.write(0x1010, &[0]).unwrap();
    assert!(!s.take_code_writes(&mut pages));
    // A split write touching a watched second page, and write_system.
    s.watch_code_page(code + 1);
    s.write(0x1fff, &[1, 2]).unwrap();
    s.watch_code_page(code);
    s.write_system(0x1004, &[1]).unwrap();
    pages.clear();
    assert!(s.take_code_writes(&mut pages));
    assert_eq!(pages, [code + 1, code]);
    // Writes from outside the CPU (DMA) are reported through note_phys_write.
    s.watch_code_page(code + 1);
    s.note_phys_write(DATA + 0xff0, 0x20);
    pages.clear();
    assert!(s.take_code_writes(&mut pages));
    assert_eq!(pages, [code + 1]);
    assert_eq!(s.stats().code_writes, 4);
}

#[test]
fn fetch_and_code_phys() {
    let mut s = system(PagingMode::FourLevel, 3, |m| {
        map_low(m, 1, DATA, P | US);
        map_low(m, 2, DATA + 0x1000, P | US | XD);
    });
    s.phys_mut().write_phys(DATA + 0xffe, &[0x0f, 0x0b]);
    let mut b = [0; 2];
    s.fetch(0x1ffe, &mut b).unwrap();
    assert_eq!(b, [0x0f, 0x0b]);
    assert_eq!(s.code_phys(0x1ffe).unwrap(), DATA + 0xffe);
    assert_eq!(
        err_of(s.fetch(0x1fff, &mut b)),
        (0x2000, pf::P | pf::U | pf::ID)
    );
    assert_eq!(
        s.code_phys(0x2000),
        Err(Exception::PageFault {
            linear: 0x2000,
            error: pf::P | pf::U | pf::ID
        })
    );
    // Data reads of the XD page are fine.
    s.read(0x2000, &mut b).unwrap();
}

#[test]
fn two_level_and_pae_through_system_mem() {
    for mode in [PagingMode::TwoLevel, PagingMode::Pae] {
        let mut s = system(mode, 3, |m| map4k(m, mode, P | RW | US, P | RW | US));
        let la = linear_of(mode);
        s.write(la, &[1, 2, 3]).unwrap();
        let mut b = [0; 3];
        // Bits above 31 are dropped outside 4-level paging.
        s.read(la | 0xffff_ffff_0000_0000, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert_eq!(s.translate(la, Access::Write).unwrap(), DATA | 0x123);
        let leaf = *entry_addrs(mode).last().unwrap();
        assert_eq!(get(s.phys_mut(), mode, leaf) & (A | D), A | D, "{mode:?}");
    }
}

/// Physical memory without the RAM fast path (everything through read_phys/write_phys).
struct NoFastPath(VecPhys);

impl PhysMem for NoFastPath {
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) {
        self.0.read_phys(addr, buf)
    }
    fn write_phys(&mut self, addr: u64, data: &[u8]) {
        self.0.write_phys(addr, data)
    }
}

#[test]
fn mmio_style_pages_go_through_phys_mem() {
    let mut m = NoFastPath(phys());
    map_low(&mut m, 1, DATA, P | RW);
    let mut s = SystemMem::new(Box::new(m));
    s.set_paging_context(ctx(PagingMode::FourLevel, 0));
    s.write(0x1004, &[1, 2, 3, 4]).unwrap();
    s.write(0x1004, &[5]).unwrap();
    let mut b = [0; 4];
    s.read(0x1004, &mut b).unwrap();
    assert_eq!(b, [5, 2, 3, 4]);
    assert!(s.tlb().lookup(Access::Read, 0, 1).unwrap().host.is_null());
    assert_eq!(s.stats().hits, 2);
}

#[test]
fn vec_phys_bounds() {
    let mut m = VecPhys::new(0x2000);
    assert!(m.ram_page(1).is_some());
    assert!(m.ram_page(2).is_none());
    assert!(m.ram_page(u64::MAX).is_none());
    let mut b = [0; 4];
    m.read_phys(u64::MAX - 1, &mut b);
    assert_eq!(b, [0xff; 4]);
    m.write_phys(u64::MAX - 1, &[1; 4]);
    m.write_phys(0x1ffe, &[1, 2, 3, 4]);
    m.read_phys(0x1ffe, &mut b);
    assert_eq!(b, [1, 2, 0xff, 0xff]);
}

/// Hit-path cost; run with `cargo test --release -p ringzero-translator mmu::tests::hit_cost
/// -- --ignored --nocapture`.
#[test]
#[ignore]
fn hit_cost() {
    let mut s = system(PagingMode::FourLevel, 3, |m| {
        for v in 1..9 {
            map_low(m, v, DATA + v * 0x1000, P | RW | US);
        }
    });
    let n = 20_000_000u64;
    let mut b = [0u8; 8];
    let mut sum = 0u64;
    let t = std::time::Instant::now();
    for i in 0..n {
        let a = 0x1000 + ((i * 8) & 0x7ff8);
        s.read(std::hint::black_box(a), &mut b).unwrap();
        sum = sum.wrapping_add(u64::from_le_bytes(b));
    }
    let read = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    let t = std::time::Instant::now();
    for i in 0..n {
        let a = 0x1000 + ((i * 8) & 0x7ff8);
        s.write(std::hint::black_box(a), &i.to_le_bytes()).unwrap();
    }
    let write = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    let mem: &mut dyn GuestMem = &mut s;
    let t = std::time::Instant::now();
    for i in 0..n {
        let a = 0x1000 + ((i * 8) & 0x7ff8);
        mem.read(std::hint::black_box(a), &mut b).unwrap();
        sum = sum.wrapping_add(u64::from_le_bytes(b));
    }
    let dyn_read = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    println!("hit: read {read:.2} ns, write {write:.2} ns, dyn read {dyn_read:.2} ns ({sum})");
    assert!(read < 20.0 && write < 20.0);
}

#[test]
fn string_bulk_runs_whole_elements_on_the_current_pages_only() {
    use crate::mem::StringOp;
    let mut s = SystemMem::new(Box::new(phys())); // paging off: linear = physical
                                                  // STOS of dwords: stops at the end of the destination page.
    assert_eq!(
        s.string_bulk(StringOp::Stos, 4, 0, 0x1ff0, 100, 0xaabb_ccdd),
        4
    );
    let mut b = [0u8; 20];
    s.read(0x1ff0, &mut b).unwrap();
    assert_eq!(&b[..16], [0xdd, 0xcc, 0xbb, 0xaa].repeat(4));
    assert_eq!(&b[16..], [0; 4], "the next page is untouched");
    // An element straddling the page end is left to the element path.
    assert_eq!(s.string_bulk(StringOp::Stos, 8, 0, 0x2ffc, 3, 0), 0);
    // MOVS: bounded by the source page too; a disjoint copy is a memmove.
    s.write(0x3000, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    assert_eq!(s.string_bulk(StringOp::Movs, 1, 0x3000, 0x5000, 8, 0), 8);
    s.read(0x5000, &mut b[..8]).unwrap();
    assert_eq!(&b[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(s.string_bulk(StringOp::Movs, 2, 0x3ffe, 0x6000, 8, 0), 1);
    // Destination just above the source: a forward copy replicates, so nothing in bulk;
    // destination below the source: fine.
    assert_eq!(s.string_bulk(StringOp::Movs, 1, 0x3000, 0x3001, 4, 0), 0);
    assert_eq!(s.string_bulk(StringOp::Movs, 1, 0x3001, 0x3000, 4, 0), 4);
    s.read(0x3000, &mut b[..5]).unwrap();
    assert_eq!(&b[..5], [2, 3, 4, 5, 5]);
    // A page holding translations is never written in bulk (the element path reports it).
    s.watch_code_page(0x7);
    assert_eq!(s.string_bulk(StringOp::Stos, 1, 0, 0x7000, 16, 0x90), 0);
    // Outside RAM (the VecPhys is 4 MiB): nothing.
    assert_eq!(s.string_bulk(StringOp::Stos, 1, 0, 0x40_0000, 16, 0), 0);
    // Precise mode: never.
    s.set_precise_strings(true);
    assert_eq!(s.string_bulk(StringOp::Stos, 1, 0, 0x8000, 16, 0), 0);
}

#[test]
fn string_bulk_respects_page_protection() {
    use crate::mem::StringOp;
    // A 4-level mapping of one read-only user page: a bulk store must not write it.
    let mode = PagingMode::FourLevel;
    let mut m = phys();
    map4k(&mut m, mode, P | RW | US, P | US); // a user page, not writable
    let mut s = SystemMem::new(Box::new(m));
    s.set_paging_context(ctx(mode, 3));
    let lin = linear_of(mode);
    assert_eq!(s.string_bulk(StringOp::Stos, 1, 0, lin, 16, 0xff), 0);
    let mut b = [0u8; 1];
    s.read(lin, &mut b).unwrap();
    assert_eq!(b[0], 0);
}

#[test]
fn tlb_flushes_visit_filled_slots_and_keep_exactly_the_globals() {
    let mut t = Tlb::new();
    let host = std::ptr::null_mut();
    // Enough inserts (with replacements and page flushes in between) to overflow the fill
    // list once, so both the listed and the full-scan paths run.
    for round in 0..3u64 {
        for vpn in 0..1500u64 {
            let global = vpn % 3 == 0;
            let e = TlbEntry::new(vpn + round, (vpn + 7) << 12, host, global, 12);
            t.insert(Access::Read, Tlb::half(vpn % 2 == 0), e);
            t.insert(Access::Write, 0, e);
            if vpn % 5 == 0 {
                t.flush_page((vpn + round) << 12);
            }
        }
        let globals = |t: &Tlb| {
            let mut n = 0;
            for acc in [Access::Read, Access::Write] {
                for half in [false, true] {
                    for vpn in 0..1600u64 {
                        n += usize::from(
                            t.lookup(acc, Tlb::half(half), vpn)
                                .is_some_and(|e| e.global()),
                        );
                    }
                }
            }
            n
        };
        let globals_before = globals(&t);
        t.flush_non_global();
        for acc in [Access::Read, Access::Write] {
            for half in [false, true] {
                for vpn in 0..1600u64 {
                    if let Some(e) = t.lookup(acc, Tlb::half(half), vpn) {
                        assert!(e.global(), "round {round}: a non-global entry survived");
                    }
                }
            }
        }
        assert_eq!(
            t.valid_entries(),
            globals_before,
            "round {round}: exactly the globals stay"
        );
        assert!(globals_before > 0);
        if round == 1 {
            t.flush_all();
            assert_eq!(t.valid_entries(), 0);
        }
    }
    t.flush_all();
    assert_eq!(t.valid_entries(), 0);
}
