//! `web/dist/` (committed; `devset api` embeds it) holds exactly what the page's sources build
//! to, as `crds/` holds what `devset crds` prints. The test copies `web/`'s sources to a
//! temporary folder, installs the locked packages there (`npm ci`) and builds
//! (`npm run build`), so the work tree is not touched. Refresh the bundle with
//! `npm --prefix web ci && npm --prefix web run build` and commit `web/dist`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

/// What the build reads: everything in `web/` but the installed packages and the output.
const SOURCES: [&str; 6] = [
    "package.json",
    "package-lock.json",
    "index.html",
    "tsconfig.json",
    "vite.config.ts",
    "src",
];

fn copy(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// Every file under `dir` by its path relative to `dir`, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn npm(dir: &Path, args: &[&str]) {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("CI", "true")
        .output()
        .unwrap_or_else(|e| panic!("npm {args:?} cannot start ({e}); install Node.js 20.19+"));
    assert!(
        out.status.success(),
        "npm {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs npm (Node.js 20.19+) and the npm registry or its cache; run by tests/run"]
fn web_dist_matches_a_fresh_build_of_web() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let tmp = tempfile::tempdir().unwrap();
    for s in SOURCES {
        copy(&web.join(s), &tmp.path().join(s));
    }
    npm(tmp.path(), &["ci", "--no-audit", "--no-fund"]);
    npm(tmp.path(), &["run", "build"]);

    let built = files(&tmp.path().join("dist"));
    let committed = files(&web.join("dist"));
    assert!(
        built.contains_key(Path::new("index.html")),
        "the build wrote no index.html"
    );
    assert!(
        built
            .keys()
            .all(|p| p.extension().is_none_or(|e| e != "map")),
        "the build wrote source maps: {:?}",
        built.keys().collect::<Vec<_>>()
    );
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    let stale: Vec<_> = built
        .iter()
        .filter(|(p, bytes)| committed.get(*p) != Some(*bytes))
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        names(&built) == names(&committed) && stale.is_empty(),
        "web/dist is out of date: the build gives {:?}, web/dist holds {:?} (differing: {stale:?}); \
         run `npm --prefix web ci && npm --prefix web run build` and commit web/dist",
        names(&built),
        names(&committed)
    );
}
