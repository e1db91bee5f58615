//! The commands people run by hand: `devset run` (a workflow on this machine, no cluster),
//! `devset logs` (a run's event log from `devset api`), `devset approve` / `devset reject` (an
//! approval stage decided through `devset api`) and `devset lint` (manifests checked offline).

pub mod api_client;
pub mod approve;
pub mod ask;
pub mod export;
pub mod fire;
pub mod lint;
pub mod logs;
pub mod manifests;
pub mod render;
mod reporter;
pub mod retry;
pub mod run;
pub mod schema;

/// The name the binary was started as, for help texts: `kubectl devset` when it runs as the
/// kubectl plugin `kubectl-devset` (a symlink or copy), else `devset`.
pub fn bin_name(argv0: &str) -> &'static str {
    let file = std::path::Path::new(argv0)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    if file.starts_with("kubectl-devset") {
        "kubectl devset"
    } else {
        "devset"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_plugin_name_comes_from_argv0() {
        assert_eq!(
            super::bin_name("/usr/local/bin/kubectl-devset"),
            "kubectl devset"
        );
        assert_eq!(super::bin_name("kubectl-devset.exe"), "kubectl devset");
        assert_eq!(super::bin_name("target/release/devset"), "devset");
        assert_eq!(super::bin_name(""), "devset");
    }
}
