//! The initramfs, in Talos's layout: a newc cpio holding /init (machined), /rootfs.sqsh, the boot
//! modules and their load order, then, when the image has extensions, a second zstd cpio appended
//! with /extensions.yaml, /extensions/<name>.sqsh and machined's layer list, as Talos's imager does.
//! The kernel unpacks concatenated archives one after the other, each with its own compression.

pub mod archive;
pub mod cpio;
pub mod kernel_requirements;
pub mod kmod;
pub mod machined;
