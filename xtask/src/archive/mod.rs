//! The Debian archive: where it is (mirror), what it holds (signed Release, Packages indexes), how
//! versions compare, which packages a set of roots needs (resolve), the lockfile that pins them, the
//! content-addressed cache the pinned debs are fetched into, and .deb unpacking.

pub mod cache;
pub mod deb;
pub mod fetch;
pub mod http;
pub mod lock;
pub mod lockfile;
pub mod mirror;
pub mod outdated;
pub mod packages;
pub mod release;
pub mod resolve;
pub mod unpacked;
pub mod version;
