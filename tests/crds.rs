//! `crds/` holds exactly what `devset crds` prints. Regenerate with
//! `cargo run -- crds --dir crds` after changing the API types.

use devset::crdgen;

#[test]
fn crds_directory_matches_devset_crds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated = crdgen::all().expect("CRDs serialize");
    let mut stale = Vec::new();
    for (name, yaml) in &generated {
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        if on_disk != *yaml {
            stale.push(name.clone());
        }
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(files, expected, "crds/ holds exactly one file per kind");
    assert!(
        stale.is_empty(),
        "crds/ is out of date for {stale:?}; run \
         `cargo run -- crds --dir crds --dir charts/devset-operator/crds --dir config/crd/bases`"
    );
}

#[test]
fn the_chart_and_the_kustomize_base_hold_the_same_crds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["charts/devset-operator/crds", "config/crd/bases"] {
        for (name, yaml) in crdgen::all().expect("CRDs serialize") {
            let copy = std::fs::read_to_string(root.join(dir).join(&name)).unwrap_or_default();
            assert!(
                copy == yaml,
                "{dir}/{name} differs from `devset crds`; run `cargo run -- crds --dir crds \
                 --dir charts/devset-operator/crds --dir config/crd/bases`"
            );
        }
        let count = std::fs::read_dir(root.join(dir)).unwrap().count();
        let kinds = crdgen::all().expect("CRDs serialize").len();
        assert_eq!(count, kinds, "{dir} holds one file per kind");
    }
}
