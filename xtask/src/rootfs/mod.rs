//! The root filesystem: the locked packages unpacked (no dpkg, no maintainer scripts), merged /usr,
//! mount points, os-release and the spec's overlays; the no-shell policy over every tree; squashfs.

pub mod overlay;
pub mod policy;
pub mod squashfs;
pub mod tree;
