//! Firmware discovery for nixdisk's builder VM: OVMF and SeaBIOS.
