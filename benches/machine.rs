//! Machine-level benchmarks: the demo guest end to end under KVM, and device-bus dispatch.
//!
//! `cargo bench --bench machine`. The KVM benchmark is skipped (with a message) where KVM is
//! unusable. The demo's ring-3 compute kernel (~32M instructions) dominates its run time, so
//! `demo_guest/kvm` is also the native baseline the translator's tiers are compared against.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, Criterion};
use ringzero::cli::{Accel, SerialTarget};
use ringzero::machine::{self, BootSource, MachineConfig, RunOutcome};
use ringzero_devices::{Bus, BusDevice, BusKind};

fn demo_guest(c: &mut Criterion) {
    if let Err(e) = ringzero::kvm::probe() {
        eprintln!("SKIPPED demo_guest/kvm: KVM is unusable here: {e}");
        return;
    }
    let mut g = c.benchmark_group("demo_guest");
    g.sample_size(20);
    g.bench_function("kvm", |b| {
        b.iter(|| {
            let config = MachineConfig {
                accel: Accel::Kvm,
                boot: BootSource::Demo,
                mem_size: 16 << 20,
                serial: SerialTarget::None,
                timeout: None,
                trace: None,
            };
            let report = machine::run(config, |_, _| {}).expect("demo runs");
            assert_eq!(
                report.outcome,
                RunOutcome::DebugExit(ringzero::images::DEMO_EXIT_VALUE)
            );
            black_box(report.stats.total())
        })
    });
    g.finish();
}

struct Latch(u32);

impl BusDevice for Latch {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        ringzero_devices::bus::fill_le(data, u64::from(self.0));
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0 = ringzero_devices::bus::le_value(data) as u32;
    }
}

fn bus_dispatch(c: &mut Criterion) {
    let mut bus = Bus::new(BusKind::Pio);
    // A PC-like population so the lookup is not trivially the only entry.
    for base in [
        0x20u64, 0x40, 0x60, 0x64, 0x70, 0xa0, 0xe0, 0xf4, 0x3f8, 0x510, 0xcf8,
    ] {
        bus.insert(base, 4, Arc::new(Mutex::new(Latch(0))))
            .expect("distinct ranges");
    }
    c.bench_function("bus/pio_read_hit", |b| {
        let mut d = [0u8; 1];
        b.iter(|| {
            bus.read(black_box(0x3f8), &mut d);
            black_box(d[0])
        })
    });
    c.bench_function("bus/pio_read_miss", |b| {
        let mut d = [0u8; 1];
        b.iter(|| {
            bus.read(black_box(0x80), &mut d);
            black_box(d[0])
        })
    });
}

criterion_group!(benches, demo_guest, bus_dispatch);
criterion_main!(benches);
