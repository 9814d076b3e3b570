//! Lossless conversion between [`CpuState`](super::CpuState) and KVM's vCPU structures.
