//! The kernel matrix's guest side, shared with the host (`cargo xtask kernels`): the plan the host
//! writes into the initramfs and the lines the guest prints on the serial console.

pub mod plan;
pub mod protocol;
