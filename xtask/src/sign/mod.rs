//! Signatures anyone can check: minisign-format keys and signatures, signing an output directory,
//! and verifying one with nothing but the directory and the public key.

pub mod dir;
pub mod index;
pub mod minisign;
pub mod source;
pub mod verify;
