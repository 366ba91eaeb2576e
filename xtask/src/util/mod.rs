//! The bottom layer: helpers every stage may use and that use nothing else of the crate.

pub mod cmd;
pub mod deb822;
pub mod digest;
pub mod elf;
pub mod epoch;
pub mod fs;
pub mod host;
pub mod paths;
pub mod progress;
pub mod stage_cache;
pub mod tree;
