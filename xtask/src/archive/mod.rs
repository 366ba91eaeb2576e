//! The Debian archive: where it is (mirror), what it holds (signed Release, Packages indexes), how
//! versions compare, which packages a set of roots needs (resolve), and the lockfile that pins them.

pub mod http;
pub mod lockfile;
pub mod mirror;
pub mod packages;
pub mod release;
pub mod resolve;
pub mod version;
