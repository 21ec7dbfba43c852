//! `edgeward filter new`: a ready-to-build filter project from the templates in
//! `proxy/templates/`, in Rust or AssemblyScript, pinned to the SDK versions edgeward is
//! tested with.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// The Rust SDK version the filters in `filters/` and `tests/filters/` build with (a test
/// checks that it matches them).
pub const SDK_VERSION: &str = "0.2.5";

/// The Rust template's files: where each goes, and its text.
const RUST: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../templates/filter-rust/Cargo.toml.template"),
    ),
    (
        "src/lib.rs",
        include_str!("../templates/filter-rust/lib.rs.template"),
    ),
    (
        "edgeward.yaml",
        include_str!("../templates/filter-rust/edgeward.yaml.template"),
    ),
    (
        "README.md",
        include_str!("../templates/filter-rust/README.md.template"),
    ),
    (
        ".gitignore",
        include_str!("../templates/filter-rust/gitignore.template"),
    ),
];

/// The AssemblyScript template's files (its SDK, compiler and JSON versions are pinned in its
/// package.json).
const ASSEMBLYSCRIPT: &[(&str, &str)] = &[
    (
        "package.json",
        include_str!("../templates/filter-assemblyscript/package.json.template"),
    ),
    (
        "assembly/index.ts",
        include_str!("../templates/filter-assemblyscript/index.ts.template"),
    ),
    (
        "assembly/tsconfig.json",
        include_str!("../templates/filter-assemblyscript/tsconfig.json.template"),
    ),
    (
        "tests/run.js",
        include_str!("../templates/filter-assemblyscript/run.js.template"),
    ),
    (
        "tests/hello.http",
        include_str!("../templates/filter-assemblyscript/hello.http.template"),
    ),
    (
        "tests/forbidden.http",
        include_str!("../templates/filter-assemblyscript/forbidden.http.template"),
    ),
    (
        "edgeward.yaml",
        include_str!("../templates/filter-assemblyscript/edgeward.yaml.template"),
    ),
    (
        "README.md",
        include_str!("../templates/filter-assemblyscript/README.md.template"),
    ),
    (
        ".gitignore",
        include_str!("../templates/filter-assemblyscript/gitignore.template"),
    ),
];

/// The language a filter project is written in (`--lang`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    #[value(name = "assemblyscript")]
    AssemblyScript,
}

impl Lang {
    fn templates(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::Rust => RUST,
            Lang::AssemblyScript => ASSEMBLYSCRIPT,
        }
    }

    /// The commands that build the project and serve it, once created.
    pub fn next_steps(self) -> &'static [&'static str] {
        match self {
            Lang::Rust => &["cargo build --target wasm32-wasip1 --release"],
            Lang::AssemblyScript => &["npm install", "npm test"],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("`{0}` is not a usable filter name: use lower-case letters, digits, `-` and `_`, starting with a letter")]
    BadName(String),
    #[error("{} already exists; choose another name or folder", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
}

/// Creates the project of filter `name` in `parent/name`; returns the files written.
pub fn new_filter(name: &str, lang: Lang, parent: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    let usable = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !usable {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let root = parent.join(name);
    match std::fs::create_dir(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(ScaffoldError::Exists(root)),
        Err(e) => return Err(ScaffoldError::Write(root, e)),
    }
    // Cargo names the module after the crate, with `_` for `-`.
    let crate_file = name.replace('-', "_");
    let mut written = Vec::new();
    for (file, template) in lang.templates() {
        let path = root.join(file);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|e| ScaffoldError::Write(path.clone(), e))?;
        }
        let text = template
            .replace("__NAME__", name)
            .replace("__CRATE__", &crate_file)
            .replace("__SDK_VERSION__", SDK_VERSION)
            .replace("__EDGEWARD_VERSION__", env!("CARGO_PKG_VERSION"));
        std::fs::write(&path, text).map_err(|e| ScaffoldError::Write(path.clone(), e))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_sdk_is_the_one_edgewards_filters_build_with() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for lock in ["filters/Cargo.lock", "tests/filters/Cargo.lock"] {
            let text = std::fs::read_to_string(root.join(lock)).unwrap();
            let pinned = format!("name = \"proxy-wasm\"\nversion = \"{SDK_VERSION}\"");
            assert!(text.contains(&pinned), "{lock} builds another proxy-wasm");
        }
    }

    #[test]
    fn names_are_checked_and_projects_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "Upper", "1st", "a b", "../x"] {
            assert!(matches!(
                new_filter(bad, Lang::Rust, dir.path()),
                Err(ScaffoldError::BadName(_))
            ));
        }
        let files = new_filter("my-filter", Lang::Rust, dir.path()).unwrap();
        assert_eq!(files.len(), RUST.len());
        let manifest = std::fs::read_to_string(dir.path().join("my-filter/Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"my_filter\""));
        assert!(manifest.contains(&format!("proxy-wasm = \"={SDK_VERSION}\"")));
        let yaml = std::fs::read_to_string(dir.path().join("my-filter/edgeward.yaml")).unwrap();
        assert!(yaml.contains("module: target/wasm32-wasip1/release/my_filter.wasm"));
        assert!(!yaml.contains("__"), "{yaml}");
        assert!(matches!(
            new_filter("my-filter", Lang::AssemblyScript, dir.path()),
            Err(ScaffoldError::Exists(_))
        ));
    }

    #[test]
    fn an_assemblyscript_project_names_its_module_in_its_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let files = new_filter("as-filter", Lang::AssemblyScript, dir.path()).unwrap();
        assert_eq!(files.len(), ASSEMBLYSCRIPT.len());
        let project = dir.path().join("as-filter");
        let package = std::fs::read_to_string(project.join("package.json")).unwrap();
        assert!(
            package.contains("--binaryFile build/as-filter.wasm"),
            "{package}"
        );
        let yaml = std::fs::read_to_string(project.join("edgeward.yaml")).unwrap();
        assert!(yaml.contains("module: build/as-filter.wasm"), "{yaml}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(!text.contains("__"), "{}: {text}", file.display());
        }
    }
}
