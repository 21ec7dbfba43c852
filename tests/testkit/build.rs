//! Builds the filter modules for the end-to-end tests and tells the harness where they are.
//!
//! 1. Builds the test filters, `tests/filters` (its own Cargo workspace), with
//!    `cargo build --release --target wasm32-wasip1 --locked`, into
//!    `$CARGO_TARGET_DIR/test-filters` (`<workspace>/target/test-filters` when
//!    `CARGO_TARGET_DIR` is unset).
//! 2. Builds the product filters, `filters` (another workspace), the same way into their own
//!    default target directory, `filters/target`, whatever `CARGO_TARGET_DIR` says: that is
//!    where `config/edgeward.yaml` finds them (`filters/target/wasm32-wasip1/release/*.wasm`).
//!    Both builds run with the host build's flags and wrappers kept out of them.
//! 3. Compiles every `tests/filters/wat/*.wat` to `$OUT_DIR/wat/*.wasm`.
//! 4. Writes `$OUT_DIR/filters.rs`: one `&str` constant per module holding its absolute path
//!    (crate `header_rewriter` → `HEADER_REWRITER`, crate `add-headers` → `ADD_HEADERS`, built
//!    as `add_headers.wasm`, `wat/abi_0_2_0.wat` → `ABI_0_2_0`), `ALL` listing them as
//!    `(name, path)`, and `path(name)`. Only `cdylib` crates are modules: support libraries of
//!    a workspace (such as `filter_config`) get no constant.
//!
//! A failed wasm build fails this build script, with cargo's output in the message.

// A build script reports failure by panicking.
#![allow(clippy::expect_used, clippy::panic)]

use std::env;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip1";

/// Variables through which cargo hands the host build's settings to build scripts (or to
/// nested cargo invocations); none of them may reach the wasm build.
const HOST_BUILD_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    // The jobserver of the outer cargo (or make): the nested cargo runs its own.
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
];
const HOST_BUILD_VAR_PREFIXES: &[&str] = &["CARGO_FEATURE_", "CARGO_CFG_"];

/// A Cargo workspace of filters built by this script.
struct FilterWorkspace {
    /// What the messages call it: `tests/filters` or `filters`.
    label: &'static str,
    dir: PathBuf,
    target_dir: PathBuf,
}

impl FilterWorkspace {
    /// Builds the workspace and returns its modules (one per `cdylib` crate), sorted.
    fn build(&self) -> Vec<Module> {
        emit_rerun_triggers(&self.dir);
        let crates = member_crates(&self.dir);
        let filters = filter_crates(&self.dir, crates);
        build_filters(self.label, &self.dir, &self.target_dir);
        let release_dir = self.target_dir.join(WASM_TARGET).join("release");
        filters
            .into_iter()
            .map(|name| {
                let wasm = release_dir.join(format!("{}.wasm", name.replace('-', "_")));
                assert!(
                    wasm.is_file(),
                    "building {} did not produce {} (is `{name}` listed in the workspace \
                     members, with a package name equal to its directory name?)",
                    self.label,
                    wasm.display()
                );
                Module {
                    name,
                    path: wasm,
                    source: self.label,
                }
            })
            .collect()
    }
}

/// One wasm module the harness gets a constant for.
struct Module {
    /// A crate's directory name (`header_rewriter`, `add-headers`) or a WAT file's stem.
    name: String,
    path: PathBuf,
    /// Where it comes from: `tests/filters`, `filters` or `tests/filters/wat`.
    source: &'static str,
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace_root = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("the workspace root (two levels above tests/testkit) exists");
    let test_filters_dir = workspace_root.join("tests").join("filters");
    let wat_dir = test_filters_dir.join("wat");
    let product_filters_dir = workspace_root.join("filters");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    println!("cargo:rerun-if-env-changed=CARGO_BUILD_TARGET_DIR");

    let workspaces = [
        FilterWorkspace {
            label: "tests/filters",
            dir: test_filters_dir,
            target_dir: test_filters_target_dir(&workspace_root),
        },
        FilterWorkspace {
            label: "filters",
            target_dir: product_filters_dir.join("target"),
            dir: product_filters_dir,
        },
    ];
    let mut modules: Vec<Module> = workspaces.iter().flat_map(FilterWorkspace::build).collect();
    modules.extend(compile_wat(&wat_dir, &out_dir.join("wat")));
    assert_unique_constants(&modules);

    let generated = out_dir.join("filters.rs");
    fs::write(&generated, constants(&modules))
        .unwrap_or_else(|err| panic!("writing {}: {err}", generated.display()));
}

/// Two modules with the same constant name (`add-headers` and `add_headers`, a crate and a WAT
/// file) would not compile; say which ones instead.
fn assert_unique_constants(modules: &[Module]) {
    for (i, module) in modules.iter().enumerate() {
        if let Some(other) = modules[..i]
            .iter()
            .find(|other| const_name(&other.name) == const_name(&module.name))
        {
            panic!(
                "filter modules `{}` ({}) and `{}` ({}) would both be the constant {}",
                other.name,
                other.path.display(),
                module.name,
                module.path.display(),
                const_name(&module.name)
            );
        }
    }
}

/// The crates of a filters workspace, filters and support libraries alike: every directory
/// of it with a `Cargo.toml`, except `target`; each is named after its directory. Sorted.
/// (A member directory without its `Cargo.toml` yet is skipped here; cargo then reports it.)
fn member_crates(filters_dir: &Path) -> Vec<String> {
    let entries = fs::read_dir(filters_dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", filters_dir.display()));
    let mut crates: Vec<String> = entries
        .map(|entry| {
            entry
                .expect("a directory entry of a filters workspace")
                .path()
        })
        .filter(|path| {
            path.join("Cargo.toml").is_file() && path.file_name() != Some(OsStr::new("target"))
        })
        .map(|path| utf8_file_name(&path))
        .collect();
    crates.sort();
    assert!(
        !crates.is_empty(),
        "no filter crates in {}",
        filters_dir.display()
    );
    crates
}

/// The filter crates among `crates`: those whose `Cargo.toml` declares a `cdylib` in its
/// `[lib]` section (`crate-type = ["cdylib"]`, possibly with `"rlib"` for native unit tests),
/// each of which builds to a `.wasm` module.
/// The others (plain rlibs such as `filter_config`) are libraries the filters link in.
fn filter_crates(filters_dir: &Path, crates: Vec<String>) -> Vec<String> {
    let filters: Vec<String> = crates
        .into_iter()
        .filter(|name| {
            let manifest = filters_dir.join(name).join("Cargo.toml");
            let text = fs::read_to_string(&manifest)
                .unwrap_or_else(|err| panic!("reading {}: {err}", manifest.display()));
            lib_section_declares_cdylib(&text)
        })
        .collect();
    assert!(
        !filters.is_empty(),
        "no cdylib filter crates in {}",
        filters_dir.display()
    );
    filters
}

/// Whether the `[lib]` table of a manifest mentions `cdylib` (outside comments), as in
/// `crate-type = ["cdylib"]` or `["cdylib", "rlib"]`: a plain string check, enough for the
/// hand-written manifests of tests/filters and filters.
fn lib_section_declares_cdylib(manifest: &str) -> bool {
    let mut in_lib = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.starts_with('[') {
            in_lib = line == "[lib]";
        } else if in_lib && line.contains("cdylib") {
            return true;
        }
    }
    false
}

/// The build depends on everything in a workspace's directory (manifest, lock file, every
/// crate, including support libraries and member directories still without a manifest, the
/// WAT sources) except its `target` directory, so that building the filters in place
/// (`cargo build` inside the workspace, `make run`) does not make this script run again.
fn emit_rerun_triggers(filters_dir: &Path) {
    let entries = fs::read_dir(filters_dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", filters_dir.display()));
    let mut watched: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .expect("a directory entry of a filters workspace")
                .path()
        })
        .filter(|path| path.file_name() != Some(OsStr::new("target")))
        .collect();
    // Not the workspace directory itself: cargo would scan it whole, `target` included. A
    // crate added or removed changes the workspace's Cargo.toml.
    watched.sort();
    for path in watched {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// `test-filters` inside the host build's target directory: a directory of its own, since
/// the outer cargo holds the locks on its profile directories (`target/debug`, ...).
fn test_filters_target_dir(workspace_root: &Path) -> PathBuf {
    let host_target_dir = ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .into_iter()
        .filter_map(env::var_os)
        .find(|dir| !dir.is_empty())
        // A relative directory is taken from the workspace root, where cargo is normally run.
        .map_or_else(
            || workspace_root.join("target"),
            |dir| workspace_root.join(dir),
        );
    host_target_dir.join("test-filters")
}

fn build_filters(label: &str, filters_dir: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(filters_dir)
        .args(["build", "--release", "--locked", "--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(filters_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if HOST_BUILD_VARS.contains(&name)
            || HOST_BUILD_VAR_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name);
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("could not run {command:?}: {err}"));
    if !output.status.success() {
        panic!(
            "building the filters of {label} failed ({}): {command:?}\n\
             --- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
}

/// Compiles every `*.wat` of `wat_dir` into `out/<stem>.wasm`; the module is named by the stem.
fn compile_wat(wat_dir: &Path, out: &Path) -> Vec<Module> {
    fs::create_dir_all(out).unwrap_or_else(|err| panic!("creating {}: {err}", out.display()));
    let entries =
        fs::read_dir(wat_dir).unwrap_or_else(|err| panic!("reading {}: {err}", wat_dir.display()));
    let mut sources: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .expect("a directory entry of tests/filters/wat")
                .path()
        })
        .filter(|path| path.extension() == Some(OsStr::new("wat")))
        .collect();
    sources.sort();
    sources
        .into_iter()
        .map(|source| {
            let wasm = wat::parse_file(&source).unwrap_or_else(|err| panic!("{err}"));
            let name = utf8_file_name(&source.with_extension(""));
            let path = out.join(format!("{name}.wasm"));
            fs::write(&path, wasm)
                .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
            Module {
                name,
                path,
                source: "tests/filters/wat",
            }
        })
        .collect()
}

fn constants(modules: &[Module]) -> String {
    let mut code =
        String::from("// Generated by tests/testkit/build.rs: where the filter modules are.\n\n");
    for module in modules {
        let path = module.path.to_str().expect("module paths are UTF-8");
        let _ = writeln!(
            code,
            "/// The `{}` module of {} (absolute path).",
            module.name, module.source
        );
        let _ = writeln!(
            code,
            "pub const {}: &str = {path:?};",
            const_name(&module.name)
        );
    }
    code.push_str(
        "\n/// Every filter module, as `(name, path)`.\npub const ALL: &[(&str, &str)] = &[\n",
    );
    for module in modules {
        let _ = writeln!(
            code,
            "    ({:?}, {}),",
            module.name,
            const_name(&module.name)
        );
    }
    code.push_str(
        r#"];

/// The path of the module called `name`: a crate of tests/filters (`"header_rewriter"`) or of
/// filters (`"add-headers"`, its directory name), or a file of tests/filters/wat without its
/// extension (`"abi_0_2_0"`).
///
/// # Panics
/// If there is no such module.
pub fn path(name: &str) -> &'static str {
    match ALL.iter().find(|(known, _)| *known == name) {
        Some((_, path)) => path,
        None => panic!("no filter module named {name:?}; there are: {ALL:?}"),
    }
}
"#,
    );
    code
}

fn const_name(module: &str) -> String {
    module.to_uppercase().replace(['-', '.'], "_")
}

fn utf8_file_name(path: &Path) -> String {
    path.file_name()
        .and_then(OsStr::to_str)
        .unwrap_or_else(|| panic!("{} is not a UTF-8 name", path.display()))
        .to_owned()
}
