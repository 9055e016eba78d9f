//! Exact bytes of small archives, path rules, determinism.

use super::*;

/// A newc header with the given fields (others 0), as the spec lays it out.
fn header(ino: u32, mode: u32, nlink: u32, size: u32, rdev: (u32, u32), namesize: u32) -> String {
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    let mut out = String::from("070701");
    for f in fields {
        out.push_str(&format!("{f:08X}"));
    }
    out
}

#[test]
fn golden_tiny_archive() {
    let mut a = Initramfs::new();
    a.add_file("/init", b"hi\n".to_vec(), 0o755).expect("add");
    a.add_char_device("/dev/console", 5, 1, 0o600).expect("add");
    a.add_symlink("/bin/sh", "busybox").expect("add");
    let bytes = a.to_bytes().expect("write");
    // Written out by hand: header (110 bytes), name + NUL padded to 4, data padded to 4.
    let expected = [
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
        "070701",
        "00000001",
        "000041ED",
        "00000000",
        "00000000",
        "00000002",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000004",
        "00000000",
        "bin\0",
        "\0\0",
        "070701",
        "00000002",
        "0000A1FF",
        "00000000",
        "00000000",
        "00000001",
        "00000000",
        "00000007",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000007",
        "00000000",
        "bin/sh\0",
        "\0\0\0",
        "busybox",
        "\0",
        "070701",
        "00000003",
        "000041ED",
        "00000000",
        "00000000",
        "00000002",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000004",
        "00000000",
        "dev\0",
        "\0\0",
        "070701",
        "00000004",
        "00002180",
        "00000000",
        "00000000",
        "00000001",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000005",
        "00000001",
        "0000000C",
        "00000000",
        "dev/console\0",
        "\0\0",
        "070701",
        "00000005",
        "000081ED",
        "00000000",
        "00000000",
        "00000001",
        "00000000",
        "00000003",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000005",
        "00000000",
        "init\0",
        "\0",
        "hi\n",
        "\0",
        "070701",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000001",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "00000000",
        "0000000B",
        "00000000",
        "TRAILER!!!\0",
        "\0\0\0",
    ]
    .concat();
    assert_eq!(String::from_utf8_lossy(&bytes), expected);
    assert_eq!(bytes.len() % 4, 0);
    // The same through the field helper, as a cross-check of the hand-written hex.
    assert!(expected.starts_with(&header(1, 0o40755, 2, 0, (0, 0), 4)));
    assert!(expected.contains(&header(4, 0o20600, 1, 0, (5, 1), 12)));
}

#[test]
fn entries_are_sorted_with_parents_first_and_deterministic() {
    let build = |order: &[&str]| {
        let mut a = Initramfs::new();
        for p in order {
            a.add_file(p, p.as_bytes().to_vec(), 0o644).expect("add");
        }
        a
    };
    let one = build(&["/z/b", "/a-b", "/a/c", "/a/b"]);
    let two = build(&["/a/b", "/a/c", "/a-b", "/z/b"]);
    let paths: Vec<&str> = one.entries().map(|(p, _)| p).collect();
    assert_eq!(paths, ["/a", "/a-b", "/a/b", "/a/c", "/z", "/z/b"]);
    assert_eq!(
        one.to_bytes().expect("write"),
        two.to_bytes().expect("write")
    );
}

#[test]
fn invalid_paths_and_conflicts_are_errors() {
    let mut a = Initramfs::new();
    for bad in ["init", "/", "/a//b", "/a/../b", "/./a", ""] {
        assert!(
            matches!(
                a.add_dir(bad, 0o755),
                Err(InitramfsError::InvalidPath { .. })
            ),
            "{bad:?}"
        );
    }
    a.add_file("/x", b"1".to_vec(), 0o644).expect("add");
    a.add_file("/x", b"1".to_vec(), 0o644)
        .expect("identical twice is fine");
    assert!(matches!(
        a.add_file("/x", b"2".to_vec(), 0o644),
        Err(InitramfsError::Conflict { .. })
    ));
    assert!(matches!(
        a.add_file("/x/y", b"2".to_vec(), 0o644),
        Err(InitramfsError::Conflict { .. })
    ));
    // An explicit directory mode survives a later implicit parent.
    a.add_dir("/d", 0o700).expect("add");
    a.add_file("/d/f", Vec::new(), 0o644).expect("add");
    assert_eq!(
        a.entries().find(|(p, _)| *p == "/d").map(|(_, e)| e.mode),
        Some(0o700)
    );
}

#[test]
fn host_file_that_changes_size_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = dir.path().join("f");
    std::fs::write(&host, b"abc").expect("write");
    let mut a = Initramfs::new();
    a.add_host_file("/f", &host, 0o644).expect("add");
    let good = a.to_bytes().expect("write");
    assert!(good.windows(3).any(|w| w == b"abc"));
    std::fs::write(&host, b"abcd").expect("write");
    assert!(matches!(
        a.to_bytes(),
        Err(InitramfsError::HostFileChanged { expected: 3, .. })
    ));
    std::fs::write(&host, b"ab").expect("write");
    assert!(matches!(
        a.to_bytes(),
        Err(InitramfsError::HostFileChanged { .. })
    ));
}
