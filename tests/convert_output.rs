//! Conversion with the real qemu-img, and the output directory protocol.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use nixdisk::convert::{ConvertError, convert};
use nixdisk::output::{OutputDir, OutputError};
use nixdisk::spec::ImageFormat;

const MIB: u64 = 1024 * 1024;

/// A sparse raw image of `size` bytes with a few recognisable blocks of data.
fn raw_image(path: &Path, size: u64) {
    let mut file = fs::File::create(path).expect("create raw image");
    file.set_len(size).expect("size raw image");
    for (i, at) in [0, 3 * MIB + 17, size / 2, size - 4096]
        .into_iter()
        .enumerate()
    {
        let block: Vec<u8> = (0..4096u32)
            .map(|b| (b as u8) ^ (i as u8 * 37 + 1))
            .collect();
        file.seek(SeekFrom::Start(at)).expect("seek");
        file.write_all(&block).expect("write block");
    }
}

/// `qemu-img info`; `format` forces the format where probing cannot find it.
fn qemu_img_info(path: &Path, format: Option<&str>) -> serde_json::Value {
    let mut command = Command::new("qemu-img");
    command.args(["info", "--output=json"]);
    if let Some(format) = format {
        command.args(["-f", format]);
    }
    let output = command.arg(path).output().expect("run qemu-img info");
    assert!(
        output.status.success(),
        "qemu-img info: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("qemu-img info JSON")
}

fn qemu_img_compare(raw: &Path, image: &Path, format: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", format])
        .arg(raw)
        .arg(image)
        .status()
        .expect("run qemu-img compare")
        .success()
}

#[test]
fn every_format_converts_to_an_equal_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.raw");
    let size = 64 * MIB;
    raw_image(&raw, size);
    let formats = [
        ImageFormat::Qcow2,
        ImageFormat::Qcow2Compressed,
        ImageFormat::Qcow2Zstd,
        ImageFormat::Vdi,
        ImageFormat::Vpc,
        ImageFormat::Vmdk,
        ImageFormat::Vhdx,
    ];
    for format in formats {
        let dest = dir
            .path()
            .join(format!("out-{format:?}.{}", format.extension()));
        convert(format, &raw, &dest, true).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        // A fixed VHD has its only footer at the end: qemu-img probes it as
        // raw, so its format is named (and the footer checked below).
        let forced = (format == ImageFormat::Vpc).then_some("vpc");
        let info = qemu_img_info(&dest, forced);
        assert_eq!(
            info["format"],
            format.qemu_img_format(),
            "{format:?}: {info}"
        );
        assert_eq!(info["virtual-size"], size, "{format:?}: {info}");
        assert!(
            qemu_img_compare(&raw, &dest, format.qemu_img_format()),
            "{format:?} differs from the raw image"
        );
        if format == ImageFormat::Qcow2Zstd {
            assert_eq!(
                info["format-specific"]["data"]["compression-type"], "zstd",
                "{info}"
            );
        }
        if format == ImageFormat::Vpc {
            // A fixed VHD holds every byte plus a 512-byte footer.
            let bytes = fs::read(&dest).expect("read vhd");
            assert_eq!(bytes.len() as u64, size + 512);
            assert_eq!(
                &bytes[size as usize..size as usize + 8],
                b"conectix",
                "VHD footer cookie"
            );
        }
    }
    assert!(
        raw.exists(),
        "conversion leaves the raw image for the caller"
    );
}

#[test]
fn compressed_qcow2_is_smaller_and_deterministic_output_repeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.raw");
    let mut file = fs::File::create(&raw).expect("create");
    // Compressible data: zlib and zstd must shrink it.
    file.write_all(&vec![b'n'; 8 * MIB as usize])
        .expect("write");
    drop(file);
    let plain = dir.path().join("plain.qcow2");
    let zlib = dir.path().join("zlib.qcow2");
    let zstd_a = dir.path().join("zstd-a.qcow2");
    let zstd_b = dir.path().join("zstd-b.qcow2");
    convert(ImageFormat::Qcow2, &raw, &plain, true).expect("qcow2");
    convert(ImageFormat::Qcow2Compressed, &raw, &zlib, true).expect("qcow2-compressed");
    convert(ImageFormat::Qcow2Zstd, &raw, &zstd_a, true).expect("qcow2-zstd");
    convert(ImageFormat::Qcow2Zstd, &raw, &zstd_b, true).expect("qcow2-zstd again");
    let len = |p: &Path| fs::metadata(p).expect("stat").len();
    assert!(
        len(&zlib) * 4 < len(&plain),
        "zlib {} vs plain {}",
        len(&zlib),
        len(&plain)
    );
    assert!(
        len(&zstd_a) * 4 < len(&plain),
        "zstd {} vs plain {}",
        len(&zstd_a),
        len(&plain)
    );
    assert_eq!(
        fs::read(&zstd_a).expect("read"),
        fs::read(&zstd_b).expect("read")
    );
}

#[test]
fn raw_output_is_renamed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.raw");
    raw_image(&raw, 8 * MIB);
    let before = fs::read(&raw).expect("read");
    let dest = dir.path().join("nixos.img");
    convert(ImageFormat::Raw, &raw, &dest, true).expect("rename");
    assert!(!raw.exists());
    assert_eq!(fs::read(&dest).expect("read"), before);
}

#[test]
fn a_failing_conversion_carries_qemu_img_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such.raw");
    let error = convert(
        ImageFormat::Qcow2,
        &missing,
        &dir.path().join("x.qcow2"),
        true,
    )
    .unwrap_err();
    match &error {
        ConvertError::Failed {
            command, stderr, ..
        } => {
            assert!(command.starts_with("qemu-img convert"), "{command}");
            assert!(stderr.contains("no-such.raw"), "{stderr}");
        }
        other => panic!("expected a qemu-img failure, got {other}"),
    }
}

#[test]
fn output_appears_only_on_finish_with_build_products_and_post_vm() {
    let parent = tempfile::tempdir().expect("tempdir");
    let out = parent.path().join("result");
    let output = OutputDir::create(&out).expect("create output");
    assert!(!out.exists(), "nothing at --out before finish");
    assert_eq!(
        output.path().parent(),
        Some(parent.path()),
        "temp dir beside --out"
    );

    let image = output.image_path("nixos", ImageFormat::Qcow2Compressed);
    fs::write(&image, b"image").expect("write image");
    output
        .add_hydra_build_product("nixos", ImageFormat::Qcow2Compressed)
        .expect("build products");
    let vars = parent.path().join("vars.fd");
    fs::write(&vars, b"vars").expect("write vars");
    output.add_efi_vars(&vars).expect("efi vars");
    // postVM sees out and diskImage, runs in $out, and may add build products.
    output
        .run_post_vm(
            r#"test "$PWD" = "$out"; test -f "$diskImage"; cp "$diskImage" "$out/copy"
               echo "file extra $out/copy" >> "$out/nix-support/hydra-build-products""#,
            &image,
        )
        .expect("postVM");
    let finished = output.finish().expect("finish");
    assert_eq!(finished, out);
    assert_eq!(fs::read(out.join("nixos.qcow2")).expect("image"), b"image");
    assert_eq!(fs::read(out.join("copy")).expect("postVM file"), b"image");
    assert_eq!(fs::read(out.join("efi-vars.fd")).expect("vars"), b"vars");
    let products =
        fs::read_to_string(out.join("nix-support/hydra-build-products")).expect("products");
    assert_eq!(
        products,
        format!(
            "file qcow2-image {0}/nixos.qcow2\nfile extra {0}/copy\n",
            out.display()
        )
    );
    let leftovers: Vec<_> = fs::read_dir(parent.path())
        .expect("read parent")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "only result and vars.fd: {leftovers:?}");
}

#[test]
fn a_failing_post_vm_reports_status_and_stderr_and_leaves_nothing() {
    let parent = tempfile::tempdir().expect("tempdir");
    let out = parent.path().join("result");
    let output = OutputDir::create(&out).expect("create output");
    let temp = output.path().to_owned();
    let error = output
        .run_post_vm("echo first >&2; false; echo never", &temp.join("x.img"))
        .unwrap_err();
    match &error {
        OutputError::PostVmFailed { status, stderr } => {
            assert_eq!(status.code(), Some(1));
            assert_eq!(stderr, "first");
        }
        other => panic!("expected a postVM failure, got {other}"),
    }
    drop(output);
    assert!(!temp.exists(), "the temporary directory is removed on drop");
    assert!(!out.exists());
    assert_eq!(fs::read_dir(parent.path()).expect("read").count(), 0);
}

#[test]
fn an_existing_non_empty_out_is_refused_and_an_empty_one_is_replaced() {
    let parent = tempfile::tempdir().expect("tempdir");
    let out = parent.path().join("result");
    fs::create_dir(&out).expect("mkdir");
    fs::write(out.join("keep"), b"mine").expect("write");
    let error = OutputDir::create(&out).unwrap_err();
    assert!(matches!(error, OutputError::OutExists { .. }), "{error}");
    assert!(error.to_string().contains("hint:"), "{error}");
    assert_eq!(fs::read(out.join("keep")).expect("untouched"), b"mine");

    let empty = parent.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let output = OutputDir::create(&empty).expect("an empty --out is fine");
    fs::write(output.path().join("f"), b"x").expect("write");
    output.finish().expect("finish");
    assert_eq!(fs::read(empty.join("f")).expect("read"), b"x");
}

#[test]
fn out_filled_while_building_is_not_overwritten() {
    let parent = tempfile::tempdir().expect("tempdir");
    let out = parent.path().join("result");
    let output = OutputDir::create(&out).expect("create output");
    let temp = output.path().to_owned();
    fs::create_dir(&out).expect("mkdir");
    fs::write(out.join("late"), b"late").expect("write");
    let error = output.finish().unwrap_err();
    assert!(matches!(error, OutputError::OutExists { .. }), "{error}");
    assert_eq!(fs::read(out.join("late")).expect("untouched"), b"late");
    assert!(
        !temp.exists(),
        "the temporary directory is removed on failure"
    );
}
