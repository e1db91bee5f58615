//! The two image recipes cannot drift: the `Dockerfile`'s runtime stage and `tests/env/image`
//! (the image the node tests run, built without Docker) carry the shared libraries the binary
//! loads (`ldd`), no more and no fewer.

use std::{collections::BTreeSet, path::Path, process::Command};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What distroless `cc-debian12` ships of what a binary may load: glibc, libgcc, OpenSSL 3.
const DISTROLESS_CC: &[&str] = &[
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libgcc_s.so.1",
    "libssl.so.3",
    "libcrypto.so.3",
];

/// The sonames the devset binary loads, from `tests/env/image --libs` (ldd).
fn ldd_libs() -> BTreeSet<String> {
    let out = Command::new(repo().join("tests/env/image"))
        .args(["--libs", env!("CARGO_BIN_EXE_devset")])
        .output()
        .expect("tests/env/image runs");
    assert!(
        out.status.success(),
        "tests/env/image --libs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let libs: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(libs.contains("libc.so.6"), "ldd found no libc: {libs:?}");
    libs
}

/// `RUNTIME_LIBS=(...)` of tests/env/image: what the image carries.
fn image_script_libs() -> BTreeSet<String> {
    let script = std::fs::read_to_string(repo().join("tests/env/image")).unwrap();
    let line = script
        .lines()
        .find_map(|l| l.strip_prefix("RUNTIME_LIBS=("))
        .expect("tests/env/image has a RUNTIME_LIBS=(...) line");
    line.trim_end_matches(')')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The runtime stage of the Dockerfile: its base must be distroless cc-debian12, plus the
/// libraries its `COPY` lines add. Returns (base, copied).
fn dockerfile_libs() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let runtime = text
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("the Dockerfile has a runtime stage");
    assert!(
        runtime.starts_with("gcr.io/distroless/cc-debian12"),
        "the runtime stage is no longer distroless cc-debian12: update DISTROLESS_CC here"
    );
    let copied = runtime
        .lines()
        .filter(|l| l.starts_with("COPY"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.rsplit('/').next())
        .filter(|name| name.contains(".so"))
        .map(str::to_string)
        .collect();
    let base = DISTROLESS_CC.iter().map(|s| s.to_string()).collect();
    (base, copied)
}

#[test]
fn the_image_script_carries_exactly_the_libraries_the_binary_loads() {
    let ldd = ldd_libs();
    let script = image_script_libs();
    assert_eq!(
        script, ldd,
        "tests/env/image's RUNTIME_LIBS differ from ldd of the binary"
    );
}

#[test]
fn the_dockerfile_provides_every_library_the_binary_loads_and_copies_no_stale_one() {
    let ldd = ldd_libs();
    let (base, copied) = dockerfile_libs();
    let missing: Vec<_> = ldd
        .iter()
        .filter(|l| !base.contains(*l) && !copied.contains(*l))
        .collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile's runtime stage lacks {missing:?} (add a COPY --from=build of each)"
    );
    let stale: Vec<_> = copied.difference(&ldd).collect();
    assert!(
        stale.is_empty(),
        "the Dockerfile copies {stale:?}, which the binary does not load"
    );
    assert!(copied.contains("libz.so.1"), "copied: {copied:?}");
}
