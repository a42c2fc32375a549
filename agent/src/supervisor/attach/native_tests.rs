//! The native plan: finding what a worker command runs and whether the preload library
//! can go into it, on real files: this test binary (a dynamic ELF), a copy of it with its interpreter
//! segment removed (static), scripts, `env` lines and a set-user-ID copy.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader};
use proptest::prelude::*;

use super::native::{NativeSetup, search_path, unsupported};
use super::program::{self, ElfKind, inspect};
use super::*;
use crate::config::types::ProbeKind;

fn this_exe() -> PathBuf {
    std::env::current_exe().expect("test executable")
}

fn write_exec(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// This executable's bytes with its PT_INTERP segment turned into PT_NULL: what a
/// statically linked program looks like to the loader check.
fn without_interpreter() -> Vec<u8> {
    let mut bytes = std::fs::read(this_exe()).expect("read test exe");
    let header = FileHeader64::<object::Endianness>::parse(&*bytes).expect("ELF");
    let endian = header.endian().expect("endian");
    let phoff = header.e_phoff(endian) as usize;
    let entsize = usize::from(header.e_phentsize(endian));
    let interp = header
        .program_headers(endian, &*bytes)
        .expect("program headers")
        .iter()
        .position(|ph| ph.p_type(endian) == elf::PT_INTERP)
        .expect("a dynamic test executable has PT_INTERP");
    // p_type is the first u32 of the entry (little-endian on the machines we run on).
    let at = phoff + interp * entsize;
    bytes[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    bytes
}

fn library_kind() -> ElfKind {
    let mut kind = program::elf_kind_of(&this_exe()).expect("ELF");
    kind.shared_object = true;
    kind
}

#[test]
fn a_dynamic_program_on_path_is_supported_and_a_static_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::fs::read(this_exe()).unwrap();
    write_exec(&dir.path().join("dyn-worker"), &exe, 0o755);
    write_exec(
        &dir.path().join("static-worker"),
        &without_interpreter(),
        0o755,
    );
    let path_var = std::ffi::OsString::from(format!("/nonexistent:{}", dir.path().display()));
    let cwd = Path::new("/");

    let dynamic = inspect("dyn-worker".as_ref(), Some(&path_var), cwd).expect("found on PATH");
    assert_eq!(dynamic.binary(), dir.path().join("dyn-worker"));
    assert!(dynamic.elf.is_some_and(|e| e.dynamic), "{dynamic:?}");
    assert_eq!(unsupported(&dynamic, library_kind()), None);

    let fixed = inspect("static-worker".as_ref(), Some(&path_var), cwd).expect("found");
    let reason = unsupported(&fixed, library_kind()).expect("static is refused");
    assert!(reason.contains("statically linked"), "{reason}");

    assert!(inspect("no-such-worker".as_ref(), Some(&path_var), cwd).is_none());
}

#[test]
fn scripts_are_followed_through_env_to_the_interpreter_and_python_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::fs::read(this_exe()).unwrap();
    write_exec(&dir.path().join("python3"), &exe, 0o755);
    write_exec(&dir.path().join("env"), &exe, 0o755);
    let env = dir.path().join("env");
    let script = format!("#!{} -S python3 -u\nprint('hi')\n", env.display());
    write_exec(&dir.path().join("app.py"), script.as_bytes(), 0o755);
    let path_var = std::ffi::OsString::from(dir.path());

    let program = inspect("./app.py".as_ref(), Some(&path_var), dir.path()).expect("found");
    assert_eq!(
        program.chain,
        vec![
            dir.path().join("./app.py"),
            env.clone(),
            dir.path().join("python3")
        ]
    );
    assert!(program.is_python());
    assert_eq!(unsupported(&program, library_kind()), None);

    let shell = format!("#!{}\n", dir.path().join("dyn").display());
    write_exec(&dir.path().join("dyn"), &exe, 0o755);
    write_exec(&dir.path().join("run.sh"), shell.as_bytes(), 0o755);
    let program = inspect("run.sh".as_ref(), Some(&path_var), dir.path()).expect("found");
    assert!(!program.is_python());
    assert_eq!(program.binary(), dir.path().join("dyn"));
}

#[test]
fn set_user_id_programs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::fs::read(this_exe()).unwrap();
    let path = dir.path().join("suid-worker");
    write_exec(&path, &exe, 0o4755);
    let program = inspect(path.as_os_str(), None, Path::new("/")).expect("found");
    assert_eq!(program.privileged, Some("set-user-ID"));
    let reason = unsupported(&program, library_kind()).expect("refused");
    assert!(reason.contains("ignores LD_PRELOAD"), "{reason}");
}

#[test]
fn programs_with_file_capabilities_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cap-worker");
    write_exec(&path, &std::fs::read(this_exe()).unwrap(), 0o755);
    // What `setcap cap_net_bind_service+ep` writes: VFS_CAP_REVISION_2 with the effective
    // flag, permitted = bit 10. Setting it needs CAP_SETFCAP (the test suite runs as root).
    let blob = hex_bytes("0100000200040000000000000000000000000000");
    set_xattr(&path, "security.capability", &blob)
        .expect("set a file capability (needs root / CAP_SETFCAP)");
    let program = inspect(path.as_os_str(), None, Path::new("/")).expect("found");
    assert_eq!(program.privileged, Some("file capabilities"));
    assert!(unsupported(&program, library_kind()).is_some());
}

/// `setxattr(2)`: test set-up only (the agent reads capabilities in `spawn`).
#[allow(unsafe_code)]
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    let name = std::ffi::CString::new(name).expect("no NUL in name");
    // SAFETY: both strings are NUL-terminated and outlive the call; `value` is readable
    // for its length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn programs_for_another_machine_or_class_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elf32");
    // A 32-bit ELF header: magic, ELFCLASS32, little-endian, version 1.
    let mut head = vec![0x7f, b'E', b'L', b'F', 1, 1, 1];
    head.resize(64, 0);
    write_exec(&path, &head, 0o755);
    let program = inspect(path.as_os_str(), None, Path::new("/")).expect("found");
    assert_eq!(program.elf, None);
    assert!(unsupported(&program, library_kind()).is_some());
    let mut other = library_kind();
    other.machine = other.machine.wrapping_add(1);
    let native = inspect(this_exe().as_os_str(), None, Path::new("/")).unwrap();
    assert!(unsupported(&native, other).unwrap().contains("ELF machine"));
}

#[test]
fn the_library_is_looked_for_next_to_the_agent_then_in_lib_dirs() {
    let found = search_path(Path::new("/opt/hw/bin/heapwarden"));
    assert_eq!(
        found,
        [
            "/opt/hw/bin/libheapwarden_preload.so",
            "/opt/hw/bin/../lib/heapwarden/libheapwarden_preload.so",
            "/usr/local/lib/heapwarden/libheapwarden_preload.so",
            "/usr/lib/heapwarden/libheapwarden_preload.so",
        ]
        .map(PathBuf::from)
    );
}

fn native_plan(
    words: &[&str],
    pool_env: &[(&str, &str)],
    library: Option<&(PathBuf, ElfKind)>,
    cwd: &Path,
) -> AttachPlan {
    let argv: Vec<std::ffi::OsString> = words.iter().map(Into::into).collect();
    let env: std::collections::BTreeMap<String, String> = pool_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    plan(&AttachInput {
        probe: ProbeKind::Native,
        argv: &argv,
        pool_env: &env,
        inherited_node_options: None,
        node_probe: None,
        listen_port: None,
        native: Some(NativeSetup {
            agent_exe: Path::new("/opt/hw/bin/heapwarden"),
            library,
            cwd,
            agent_path_var: Some("/usr/bin:/bin".into()),
        }),
    })
}

#[test]
fn the_native_plan_preloads_the_library_and_sends_python_through_malloc() {
    let dir = tempfile::tempdir().unwrap();
    // A dynamically linked ELF of this machine that does not link the Rust probe (this
    // test binary does: see the refusal below).
    let exe = std::fs::read("/bin/true").unwrap();
    write_exec(&dir.path().join("python3.11"), &exe, 0o755);
    write_exec(&dir.path().join("server"), &exe, 0o755);
    write_exec(
        &dir.path().join("rust-worker"),
        &std::fs::read(this_exe()).unwrap(),
        0o755,
    );
    let library = (
        PathBuf::from("/opt/hw/bin/libheapwarden_preload.so"),
        library_kind(),
    );
    let path = dir.path().display().to_string();
    let rust = native_plan(
        &["rust-worker"],
        &[("PATH", &path)],
        Some(&library),
        dir.path(),
    );
    assert_eq!(rust.attached, None, "{rust:?}");
    assert!(
        rust.not_attached
            .as_deref()
            .is_some_and(|why| why.contains("links heapwarden-probes itself")),
        "{rust:?}"
    );

    let c = native_plan(&["server"], &[("PATH", &path)], Some(&library), dir.path());
    assert_eq!(c.attached, Some(Attached::Native), "{c:?}");
    assert_eq!(
        c.env,
        [(
            "HEAPWARDEN_PRELOAD".to_string(),
            library.0.display().to_string()
        )]
    );
    let py = native_plan(
        &["python3.11", "app.py"],
        &[("PATH", &path)],
        Some(&library),
        dir.path(),
    );
    assert!(
        py.env.contains(&("PYTHONMALLOC".into(), "malloc".into())),
        "{py:?}"
    );
    let own = native_plan(
        &["python3.11"],
        &[("PATH", &path), ("PYTHONMALLOC", "pymalloc")],
        Some(&library),
        dir.path(),
    );
    assert_eq!(
        own.env.len(),
        1,
        "the pool's own PYTHONMALLOC is kept: {own:?}"
    );
}

#[test]
fn the_native_plan_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let library = (PathBuf::from("/x/libheapwarden_preload.so"), library_kind());
    let missing = native_plan(&["/bin/sh"], &[], None, dir.path());
    let why = missing.not_attached.expect("no library");
    assert!(
        why.contains("was not found") && why.contains("/opt/hw/bin/../lib/heapwarden"),
        "{why}"
    );
    let demo = native_plan(
        &["/opt/hw/bin/heapwarden", "demo"],
        &[],
        Some(&library),
        dir.path(),
    );
    assert!(
        demo.not_attached
            .expect("demo")
            .contains("links heapwarden-probes")
    );
    write_exec(&dir.path().join("static"), &without_interpreter(), 0o755);
    let fixed = native_plan(&["./static"], &[], Some(&library), dir.path());
    assert!(
        fixed
            .not_attached
            .expect("static")
            .contains("statically linked")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// Whatever a file's head holds, classifying it is an answer, never a panic.
    #[test]
    fn arbitrary_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = program::elf_kind(&bytes);
        let mut elfish = b"\x7fELF\x02\x01\x01".to_vec();
        elfish.extend_from_slice(&bytes);
        let _ = program::elf_kind(&elfish);
        let mut script = b"#!".to_vec();
        script.extend_from_slice(&bytes);
        let _ = program::shebang(&script);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The same through the file system: a script whose `#!` line is garbage.
    #[test]
    fn arbitrary_scripts_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let dir = tempfile::tempdir().unwrap();
        let mut script = b"#!".to_vec();
        script.extend_from_slice(&bytes);
        let path = dir.path().join("script");
        write_exec(&path, &script, 0o755);
        let _ = inspect(path.as_os_str(), Some("".as_ref()), dir.path());
    }
}
