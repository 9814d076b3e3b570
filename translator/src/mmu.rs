//! The software MMU (being written).
