//! The CPU model the BT advertises through CPUID (being written).
