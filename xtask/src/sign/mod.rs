//! Signatures anyone can check: minisign-format keys and signatures, signing an output directory,
//! and verifying one with nothing but the directory and the public key; and the Secure Boot key set
//! the firmware checks the UKI against (made here, used by uki/secure_boot.rs).

pub mod dir;
pub mod index;
pub mod minisign;
pub mod secure_boot;
pub mod source;
pub mod verify;
