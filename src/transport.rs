//! Host side of the host-guest channel: vsock (kernel or vhost-device-vsock) or virtio-serial.
