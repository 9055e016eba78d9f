use super::*;

fn caps(kernel_vsock: bool, daemon: bool) -> HostCapabilities {
    HostCapabilities {
        kernel_vsock,
        vhost_device_vsock: daemon.then(|| PathBuf::from("/bin/vhost-device-vsock")),
    }
}

#[test]
fn auto_prefers_kernel_vsock_then_daemon_then_serial() {
    let auto = TransportChoice::Auto;
    assert_eq!(
        choose(auto, &caps(true, true)).ok(),
        Some(TransportKind::KernelVsock)
    );
    assert_eq!(
        choose(auto, &caps(false, true)).ok(),
        Some(TransportKind::VhostUserVsock)
    );
    assert_eq!(
        choose(auto, &caps(false, false)).ok(),
        Some(TransportKind::VirtioSerial)
    );
}

#[test]
fn an_explicit_choice_wins_or_says_why_not() {
    let only = TransportChoice::Only;
    assert_eq!(
        choose(only(TransportKind::VirtioSerial), &caps(true, true)).ok(),
        Some(TransportKind::VirtioSerial)
    );
    let err = choose(only(TransportKind::KernelVsock), &caps(false, true))
        .expect_err("no /dev/vhost-vsock");
    assert!(
        err.to_string().contains("/dev/vhost-vsock does not exist"),
        "{err}"
    );
    let err =
        choose(only(TransportKind::VhostUserVsock), &caps(true, false)).expect_err("no daemon");
    assert!(
        err.to_string().contains("cargo install vhost-device-vsock"),
        "{err}"
    );
}

#[test]
fn agent_settings_match_the_kernel_command_line_syntax() {
    assert_eq!(agent_setting(TransportKind::KernelVsock), "vsock:7000");
    assert_eq!(agent_setting(TransportKind::VhostUserVsock), "vsock:7000");
    assert_eq!(
        agent_setting(TransportKind::VirtioSerial),
        "serial:org.nixdisk.agent"
    );
}

#[test]
fn vhost_user_daemon_arguments_and_replies() {
    let args = vhost_user::daemon_args(
        3,
        Path::new("/run/vhost.sock"),
        Path::new("/run/vsock.sock"),
    );
    assert_eq!(
        args,
        vec![
            std::ffi::OsString::from("--vm"),
            "guest-cid=3,socket=/run/vhost.sock,uds-path=/run/vsock.sock".into()
        ]
    );
    assert!(vhost_user::parse_ok(b"OK 1073741824"));
    assert!(!vhost_user::parse_ok(b"OK"));
    assert!(!vhost_user::parse_ok(b"ERR 1"));
}
