//! The builder kernel and initramfs against this machine's real kernel
//! (`linux-image-amd64`), its modules, and GNU cpio as an independent reader.

use std::path::{Path, PathBuf};
use std::process::Command;

use nixdisk::initramfs::{BuilderInitramfs, MODULES_LIST_PATH, build_cached, builder_initramfs};
use nixdisk::kernel::vmlinux::pvh_entry;
use nixdisk::kernel::{
    BUILDER_MODULES, BuilderKernel, Cache, KernelSearch, ModuleIndex, builder_module_names,
    discover, pvh_vmlinux,
};
use nixdisk::spec::FsType;

fn kernel() -> BuilderKernel {
    discover(&KernelSearch::default())
        .expect("a kernel with modules is installed (scripts/setup installs linux-image-amd64)")
}

/// A stand-in agent: any executable's bytes do for the archive.
fn agent(dir: &Path) -> PathBuf {
    let path = dir.join("nixdisk-agent");
    std::fs::write(&path, b"\x7fELF stand-in agent binary\n").expect("write agent");
    path
}

fn plan(dir: &Path) -> BuilderInitramfs {
    let k = kernel();
    let resolution = k.builder_modules().expect("modules resolve");
    BuilderInitramfs {
        agent: agent(dir),
        release: k.release,
        modules_dir: k.modules_dir,
        modules: resolution.load_order,
        strip_signatures: false,
    }
}

fn cpio(args: &[&str], archive: &Path, cwd: &Path) -> String {
    let out = Command::new("cpio")
        .args(args)
        .stdin(std::fs::File::open(archive).expect("open archive"))
        .current_dir(cwd)
        .output()
        .expect("run cpio (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "cpio {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 listing")
}

#[test]
fn discovers_this_machines_kernel() {
    let k = kernel();
    assert!(k.image.starts_with("/boot") && k.image.is_file(), "{k:?}");
    assert_eq!(k.modules_dir, Path::new("/lib/modules").join(&k.release));
    let explicit = discover(&KernelSearch {
        kernel: Some(k.image.clone()),
        ..KernelSearch::default()
    })
    .expect("explicit");
    assert_eq!(
        explicit, k,
        "the setup header's release matches the file name's"
    );
}

#[test]
fn ext4_and_the_builder_set_resolve_against_real_modules() {
    let k = kernel();
    let index = ModuleIndex::load(&k.modules_dir).expect("index");
    let ext4 = index.resolve(&["ext4"]);
    let names: Vec<&str> = ext4.load_order.iter().map(|m| m.name.as_str()).collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} missing from {names:?}"))
    };
    for dep in ["crc32c_generic", "jbd2", "mbcache", "crc16"] {
        assert!(pos(dep) < pos("ext4"), "{dep} after ext4 in {names:?}");
    }
    assert!(
        pos("crc32c_generic") < pos("jbd2"),
        "softdep of jbd2 first: {names:?}"
    );
    assert_eq!(names.last(), Some(&"ext4"));

    let all = k.builder_modules().expect("builder modules");
    assert!(
        all.missing.is_empty(),
        "Debian's kernel has every builder module: missing {:?}",
        all.missing
    );
    let mut seen = std::collections::BTreeSet::new();
    for m in &all.load_order {
        assert!(seen.insert(&m.name), "{} twice", m.name);
        assert!(
            k.modules_dir.join(&m.path).is_file(),
            "{} has no file",
            m.path
        );
    }
    for wanted in BUILDER_MODULES {
        assert!(
            seen.contains(&wanted.replace('-', "_")) || all.builtin.iter().any(|b| b == wanted),
            "{wanted} not resolved"
        );
    }
    // Every module comes after its own dependencies and pre-softdeps.
    let order: Vec<&str> = all.load_order.iter().map(|m| m.name.as_str()).collect();
    for (i, m) in all.load_order.iter().enumerate() {
        let own = index.resolve(&[&m.name]);
        let me = own
            .load_order
            .iter()
            .position(|d| d.name == m.name)
            .expect("itself");
        for d in &own.load_order[..me] {
            let at = order
                .iter()
                .position(|n| *n == d.name)
                .expect("dependency in the order");
            assert!(at < i, "{} loads after {}", d.name, m.name);
        }
    }
}

#[test]
fn every_file_system_resolves_on_this_kernel() {
    let k = kernel();
    for fs in [
        FsType::Ext4,
        FsType::Ext3,
        FsType::Ext2,
        FsType::Btrfs,
        FsType::Xfs,
        FsType::Vfat,
        FsType::Erofs,
        FsType::Squashfs,
    ] {
        for uefi in [false, true] {
            let r = k
                .resolve_modules(&builder_module_names(fs, uefi))
                .expect("resolve");
            assert!(r.missing.is_empty(), "{fs:?}: missing {:?}", r.missing);
        }
    }
    let ext4 = k
        .resolve_modules(&builder_module_names(FsType::Ext4, false))
        .expect("resolve");
    let names: Vec<&str> = ext4.load_order.iter().map(|m| m.name.as_str()).collect();
    assert!(
        !names
            .iter()
            .any(|n| ["xfs", "btrfs", "efivarfs", "raid6_pq"].contains(n)),
        "{names:?}"
    );
}

#[test]
fn pvh_vmlinux_is_extracted_once_and_shared() {
    let k = kernel();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::at(dir.path().join("cache"));
    let started = std::time::Instant::now();
    // Two parallel extractions into one cache: both succeed with the same file.
    let paths: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| pvh_vmlinux(&k.image, &k.release, &cache)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("thread")
                    .expect("extract")
                    .expect("Debian's kernel has CONFIG_PVH")
            })
            .collect()
    });
    let cold = started.elapsed();
    assert_eq!(paths[0], paths[1]);
    let elf = std::fs::read(&paths[0]).expect("read vmlinux");
    assert!(
        pvh_entry(&elf).is_some(),
        "extracted vmlinux has the PVH note"
    );
    let started = std::time::Instant::now();
    assert_eq!(
        pvh_vmlinux(&k.image, &k.release, &cache)
            .expect("cached")
            .as_ref(),
        Some(&paths[0])
    );
    eprintln!(
        "vmlinux: {} bytes; extract {cold:?}, cached {:?}",
        elf.len(),
        started.elapsed()
    );
    let leftovers: Vec<_> = std::fs::read_dir(cache.dir())
        .expect("cache dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
}

#[test]
fn builder_initramfs_reads_back_with_gnu_cpio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan(dir.path());
    let archive = builder_initramfs(&plan).expect("plan");
    let bytes = archive.to_bytes().expect("write");
    let file = dir.path().join("initramfs.cpio");
    std::fs::write(&file, &bytes).expect("write archive");

    let listing = cpio(&["-t", "--quiet"], &file, dir.path());
    let ours: Vec<String> = archive
        .entries()
        .map(|(p, _)| p.trim_start_matches('/').to_owned())
        .collect();
    assert_eq!(listing.lines().collect::<Vec<_>>(), ours);
    let verbose = cpio(&["-tv", "--quiet"], &file, dir.path());
    let console = verbose
        .lines()
        .find(|l| l.ends_with(" dev/console"))
        .expect("dev/console listed");
    assert!(
        console.starts_with("crw-------") && console.contains("5,") && console.contains(" 1 "),
        "{console}"
    );
    let init = verbose
        .lines()
        .find(|l| l.ends_with(" init"))
        .expect("init listed");
    assert!(
        init.starts_with("-rwxr-xr-x") && init.contains("root"),
        "{init}"
    );

    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    cpio(
        &["-i", "-d", "--quiet", "init", "etc/*", "lib/*"],
        &file,
        &out,
    );
    assert_eq!(
        std::fs::read(out.join("init")).expect("init"),
        std::fs::read(&plan.agent).expect("agent")
    );
    let list = std::fs::read_to_string(out.join(MODULES_LIST_PATH.trim_start_matches('/')))
        .expect("module list");
    let expected: Vec<String> = plan
        .modules
        .iter()
        .map(|m| format!("/lib/modules/{}/{}", plan.release, m.path))
        .collect();
    assert_eq!(list.lines().collect::<Vec<_>>(), expected);
    for (module, inside) in plan.modules.iter().zip(list.lines()) {
        let extracted =
            std::fs::read(out.join(inside.trim_start_matches('/'))).expect("module extracted");
        assert_eq!(
            extracted,
            std::fs::read(plan.modules_dir.join(&module.path)).expect("host module"),
            "{inside}"
        );
    }
    eprintln!(
        "initramfs: {} entries, {} modules, {} bytes",
        ours.len(),
        plan.modules.len(),
        bytes.len()
    );
}

#[test]
fn builds_are_deterministic_and_cached_by_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan(dir.path());
    let one = builder_initramfs(&plan)
        .expect("plan")
        .to_bytes()
        .expect("write");
    let two = builder_initramfs(&plan)
        .expect("plan")
        .to_bytes()
        .expect("write");
    assert!(one == two, "two builds differ");

    let cache = Cache::at(dir.path().join("cache"));
    let first = build_cached(&plan, &cache).expect("build");
    assert_eq!(std::fs::read(&first).expect("read"), one);
    assert_eq!(build_cached(&plan, &cache).expect("cached"), first);
    // A different agent is a different archive under a different key.
    std::fs::write(&plan.agent, b"another agent").expect("write");
    let other = build_cached(&plan, &cache).expect("rebuild");
    assert_ne!(other, first);
    assert_ne!(std::fs::read(&other).expect("read"), one);
}

/// A minimal ELF64 whose one PT_NOTE is a `Xen` PHYS32_ENTRY note, padded
/// with text so the compressors have something to chew on.
fn pvh_elf() -> Vec<u8> {
    let mut note = Vec::new();
    note.extend(4u32.to_le_bytes());
    note.extend(4u32.to_le_bytes());
    note.extend(18u32.to_le_bytes());
    note.extend(b"Xen\0");
    note.extend(0x0100_0000u32.to_le_bytes());
    let mut elf = vec![0u8; 120];
    elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
    elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    elf[64..68].copy_from_slice(&4u32.to_le_bytes());
    elf[72..80].copy_from_slice(&120u64.to_le_bytes());
    elf[96..104].copy_from_slice(&(note.len() as u64).to_le_bytes());
    elf.extend(note);
    elf.extend("kernel text ".repeat(4096).as_bytes());
    elf
}

/// A bzImage whose payload is `elf` compressed by `tool` (the real CLI),
/// followed by the 4-byte size the kernel build appends.
fn fake_bzimage(elf: &[u8], tool: &[&str], dir: &Path) -> Vec<u8> {
    let raw = dir.join("vmlinux.bin");
    std::fs::write(&raw, elf).expect("write");
    let out = Command::new(tool[0])
        .args(&tool[1..])
        .arg(&raw)
        .output()
        .expect("compressor runs");
    assert!(
        out.status.success(),
        "{tool:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut payload = out.stdout;
    payload.extend((elf.len() as u32).to_le_bytes());
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1;
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    image[0x300..0x30c].copy_from_slice(b"9.9.9-test \0");
    image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    image.extend(payload);
    image
}

#[test]
fn xz_gzip_and_zstd_payloads_are_extracted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = pvh_elf();
    let tools: [&[&str]; 3] = [
        &["xz", "--check=crc32", "--x86", "--lzma2=", "-c"],
        &["gzip", "-9", "-n", "-c"],
        &["zstd", "-19", "-q", "-c"],
    ];
    for tool in tools {
        let image_path = dir.path().join(format!("vmlinuz-{}", tool[0]));
        std::fs::write(&image_path, fake_bzimage(&elf, tool, dir.path())).expect("write image");
        let cache = Cache::at(dir.path().join(format!("cache-{}", tool[0])));
        let path = pvh_vmlinux(&image_path, "9.9.9-test", &cache)
            .expect("extract")
            .expect("has the PVH note");
        assert!(
            std::fs::read(&path).expect("read") == elf,
            "{}: extracted ELF differs",
            tool[0]
        );
    }
}
