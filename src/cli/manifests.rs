//! Manifest files as `devset run` and `devset lint` read them: YAML files of one or more
//! documents (`---`), each a Kubernetes object.

use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One document of a manifest file.
#[derive(Clone, Debug)]
pub struct Doc {
    /// The file as given on the command line (`-` for standard input).
    pub file: String,
    /// The document's place in its file, from 0.
    pub index: usize,
    /// How many documents the file holds.
    pub of: usize,
    /// The object, as JSON.
    pub value: Value,
}

impl Doc {
    /// `kind`, or "" when missing.
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    /// `apiVersion`, or "" when missing.
    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }

    /// `metadata.name`, or "" when missing.
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// `Kind name`, e.g. `Workflow orders`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {:?}", self.kind(), self.name())
    }

    /// Where a field of this document is, for messages: `FILE:PATH`, and the object when the
    /// file holds several.
    pub fn at(&self, path: &str) -> Located {
        Located {
            file: self.file.clone(),
            path: path.to_owned(),
            object: (self.of > 1).then(|| self.describe()),
        }
    }

    /// The document as an API type; an error names the file and the field serde stopped at.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        serde_json::from_value(self.value.clone()).map_err(|e| Problem {
            at: self.at(""),
            message: e.to_string(),
        })
    }
}

/// A place in a manifest file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub file: String,
    /// A field path such as `spec.stages[0].name` ("" for the whole document).
    pub path: String,
    /// `Kind "name"` when the file holds several documents.
    pub object: Option<String>,
}

/// Something wrong in a manifest: printed as `FILE:PATH: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub at: Located,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Located { file, path, object } = &self.at;
        match path.as_str() {
            "" => write!(f, "{file}: {}", self.message)?,
            p => write!(f, "{file}:{p}: {}", self.message)?,
        }
        if let Some(o) = object {
            write!(f, " ({o})")?;
        }
        Ok(())
    }
}

impl Problem {
    /// A problem with a whole file.
    pub fn file(file: &str, message: impl Into<String>) -> Problem {
        Problem {
            at: Located {
                file: file.to_owned(),
                path: String::new(),
                object: None,
            },
            message: message.into(),
        }
    }
}

/// Reads every document of every file (`-` reads standard input; a directory means its
/// `.yaml`/`.yml`/`.json` files, recursively, in name order). Empty documents are skipped. A
/// file that cannot be read or parsed is one problem naming it.
pub fn load(files: &[PathBuf]) -> Result<Vec<Doc>, Vec<Problem>> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    let mut expanded = Vec::new();
    for path in files {
        expand(path, &mut expanded);
    }
    for path in &expanded {
        match load_file(path) {
            Ok(d) => docs.extend(d),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(docs)
    } else {
        Err(problems)
    }
}

/// `path` itself, or the manifest files under it when it is a directory.
fn expand(path: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(path) else {
        out.push(path.to_owned());
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            expand(&e, out);
        } else if matches!(
            e.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(e);
        }
    }
}

fn load_file(path: &Path) -> Result<Vec<Doc>, Problem> {
    let file = path.display().to_string();
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| Problem::file(&file, format!("cannot read: {e}")))?;
    parse_docs(&file, &text)
}

/// The documents of one file's text.
pub fn parse_docs(file: &str, text: &str) -> Result<Vec<Doc>, Problem> {
    let mut values = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let yaml = serde_yaml::Value::deserialize(d)
            .map_err(|e| Problem::file(file, format!("not valid YAML: {e}")))?;
        if yaml.is_null() {
            continue;
        }
        let value: Value = serde_json::to_value(&yaml).map_err(|e| {
            Problem::file(
                file,
                format!("document {}: not a JSON-like object: {e}", values.len() + 1),
            )
        })?;
        if !value.is_object() {
            return Err(Problem::file(
                file,
                format!(
                    "document {} is not an object (a Kubernetes manifest has apiVersion, kind, metadata)",
                    values.len() + 1
                ),
            ));
        }
        values.push(value);
    }
    if values.is_empty() {
        return Err(Problem::file(file, "holds no document"));
    }
    let of = values.len();
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(index, value)| Doc {
            file: file.to_owned(),
            index,
            of,
            value,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_means_its_manifests_recursively_in_name_order() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        expand(&root.join("config"), &mut files);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"config/samples/workflow.yaml".to_string()));
        assert!(names.contains(&"config/crd/bases/workflows.devset.io.yaml".to_string()));
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        let docs = load(&[root.join("config/samples")]).expect("the samples load");
        assert_eq!(
            docs.iter()
                .filter(|d| d.api_version().starts_with("devset.io/"))
                .count(),
            5,
            "two connectors, a workflow, a run, a schedule"
        );
    }

    #[test]
    fn several_documents_and_empty_ones() {
        let docs = parse_docs(
            "f.yaml",
            "---\nkind: Secret\nmetadata: {name: s}\n---\n---\nkind: Workflow\nmetadata: {name: w}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].kind(), docs[1].name()), ("Secret", "w"));
        assert_eq!(
            Problem {
                at: docs[1].at("spec.stages"),
                message: "m".into()
            }
            .to_string(),
            "f.yaml:spec.stages: m (Workflow \"w\")"
        );
    }

    #[test]
    fn bad_files_are_one_problem_naming_the_file() {
        let e = parse_docs("f.yaml", "kind: [").unwrap_err();
        assert!(e.to_string().starts_with("f.yaml: not valid YAML"), "{e}");
        let e = parse_docs("f.yaml", "- a\n- b\n").unwrap_err();
        assert!(e.to_string().contains("not an object"), "{e}");
        let e = parse_docs("f.yaml", "# nothing\n").unwrap_err();
        assert_eq!(e.to_string(), "f.yaml: holds no document");
        let e = load(&[PathBuf::from("/nonexistent.yaml")]).unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("/nonexistent.yaml: cannot read"),
            "{}",
            e[0]
        );
    }
}
