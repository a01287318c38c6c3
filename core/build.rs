//! Build metadata for the `*_build_info` metric (git commit, rustc version): the logic is
//! shared by core, persister and edge-lb, in `build-support/build_info.rs`.

include!("../build-support/build_info.rs");
