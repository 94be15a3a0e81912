//! `sluice new NAME`: a plugin project that builds into a component with
//! one command, with the settings that make it fast inside the project, a
//! unit test and a README.
//!
//! The templates (`host/templates/`) and the Python SDK are compiled into
//! the binary, so `sluice new` needs nothing but itself: a Python project
//! gets its own copy of the SDK (with the WIT), since componentize-py reads
//! both from the project. A Rust project depends on `sluice-sdk`, which is
//! not on crates.io yet, so it needs a path or git dependency: `--sdk`, or
//! by default the SDK of the checkout this binary was built from when it is
//! still there.
//!
//! The project is written into a temp directory next to its destination
//! and renamed into place, so a failure leaves nothing half-written.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

/// The kind of plugin to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Does the work for the messages of its channel.
    Handler,
    /// Turns its channel's wire messages into requests and back.
    Mapper,
}

/// The language to write it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust with sluice-sdk, built with cargo.
    Rust,
    /// Python with the Python SDK, built with componentize-py.
    Python,
}

/// `sluice new` arguments.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name, also the project's: ASCII letters, digits, `-`
    /// and `_`, starting with a letter, at most 64 characters.
    pub name: String,
    /// Handler or mapper.
    #[arg(long, value_enum, default_value_t = Kind::Handler)]
    pub kind: Kind,
    /// Rust or Python.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// The channel it handles or maps [default: the name].
    #[arg(long)]
    pub channel: Option<String>,
    /// The directory to create [default: ./NAME]. It must not exist, or be
    /// empty.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Rust: the SDK to depend on, a path (a Sluice checkout or its `sdk/`)
    /// or a git URL [default: the SDK this sluice was built from].
    #[arg(long, value_name = "PATH|GIT_URL")]
    pub sdk: Option<String>,
}

/// One file of a template: path in the project, contents.
type Files = &'static [(&'static str, &'static str)];

const RUST_COMMON: Files = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml"),
    ),
    (
        ".cargo/config.toml",
        include_str!("../../templates/rust/.cargo/config.toml"),
    ),
    (".gitignore", include_str!("../../templates/rust/gitignore")),
    ("README.md", include_str!("../../templates/rust/README.md")),
];
const RUST_HANDLER: Files = &[(
    "src/lib.rs",
    include_str!("../../templates/rust/handler/lib.rs"),
)];
const RUST_MAPPER: Files = &[(
    "src/lib.rs",
    include_str!("../../templates/rust/mapper/lib.rs"),
)];

const PYTHON_COMMON: Files = &[
    (
        "pyproject.toml",
        include_str!("../../templates/python/pyproject.toml"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/python/gitignore"),
    ),
    (
        "README.md",
        include_str!("../../templates/python/README.md"),
    ),
];
const PYTHON_HANDLER: Files = &[
    (
        "app.py",
        include_str!("../../templates/python/handler/app.py"),
    ),
    (
        "test_app.py",
        include_str!("../../templates/python/handler/test_app.py"),
    ),
];
const PYTHON_MAPPER: Files = &[
    (
        "app.py",
        include_str!("../../templates/python/mapper/app.py"),
    ),
    (
        "test_app.py",
        include_str!("../../templates/python/mapper/test_app.py"),
    ),
];

/// The Python SDK, copied into every Python project (not templated). The
/// unit test `every_python_sdk_file_is_embedded` keeps this list complete.
pub const PYTHON_SDK: Files = &[
    (
        "sluice_sdk/__init__.py",
        include_str!("../../../sdk/python/sluice_sdk/__init__.py"),
    ),
    (
        "sluice_sdk/_context.py",
        include_str!("../../../sdk/python/sluice_sdk/_context.py"),
    ),
    (
        "sluice_sdk/_describe.py",
        include_str!("../../../sdk/python/sluice_sdk/_describe.py"),
    ),
    (
        "sluice_sdk/_errors.py",
        include_str!("../../../sdk/python/sluice_sdk/_errors.py"),
    ),
    (
        "sluice_sdk/_export.py",
        include_str!("../../../sdk/python/sluice_sdk/_export.py"),
    ),
    (
        "sluice_sdk/_message.py",
        include_str!("../../../sdk/python/sluice_sdk/_message.py"),
    ),
    (
        "sluice_sdk/_outcome.py",
        include_str!("../../../sdk/python/sluice_sdk/_outcome.py"),
    ),
    (
        "sluice_sdk/_request.py",
        include_str!("../../../sdk/python/sluice_sdk/_request.py"),
    ),
    (
        "sluice_sdk/log.py",
        include_str!("../../../sdk/python/sluice_sdk/log.py"),
    ),
    (
        "sluice_sdk/testing.py",
        include_str!("../../../sdk/python/sluice_sdk/testing.py"),
    ),
    (
        "sluice_sdk/wit/sluice.wit",
        include_str!("../../../sdk/python/sluice_sdk/wit/sluice.wit"),
    ),
];

/// Names the templates define next to the plugin's type, which it must not
/// take: a plugin called `handler` gets the type `HandlerPlugin`.
const TAKEN: &[&str] = &[
    "Context",
    "Describe",
    "Error",
    "Greet",
    "Handler",
    "Mapper",
    "Message",
    "MessageKind",
    "Outcome",
    "Outgoing",
    "PostOptions",
    "Request",
    "Deserialize",
    "Serialize",
    "Wire",
];

/// What goes into the templates.
struct Vars {
    name: String,
    channel: String,
    kind: Kind,
    lang: Lang,
    sdk: String,
}

impl Vars {
    /// `order-total` -> `OrderTotal` (`Plugin` appended on a clash).
    fn type_name(&self) -> String {
        let camel: String = self
            .name
            .split(['-', '_'])
            .filter(|p| !p.is_empty())
            .map(|p| {
                let mut c = p.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        if TAKEN.contains(&camel.as_str()) {
            camel + "Plugin"
        } else {
            camel
        }
    }

    /// The crate's output file stem (`-` becomes `_` in a cdylib's name).
    fn crate_name(&self) -> String {
        self.name.replace('-', "_")
    }

    fn world(&self) -> &'static str {
        match self.kind {
            Kind::Handler => "handler-plugin",
            Kind::Mapper => "mapper-plugin",
        }
    }

    fn wasm(&self) -> String {
        match self.lang {
            Lang::Rust => format!("target/wasm32-wasip2/release/{}.wasm", self.crate_name()),
            Lang::Python => format!("{}.wasm", self.name),
        }
    }

    fn build(&self) -> String {
        match self.lang {
            Lang::Rust => "cargo build --release --target wasm32-wasip2".into(),
            Lang::Python => format!(
                "componentize-py -d sluice_sdk/wit -w {} componentize app -o {}.wasm",
                self.world(),
                self.name
            ),
        }
    }

    fn try_it(&self) -> String {
        let send = format!(
            "sluice send --plugin {} {} '{{\"name\":\"Ann\"}}'",
            self.wasm(),
            self.channel
        );
        match self.kind {
            Kind::Handler => send,
            Kind::Mapper => format!(
                "# a mapper runs in front of a handler of its channel:\n{}",
                send.replacen(
                    " --plugin ",
                    " --plugin path/to/a-handler.wasm --plugin ",
                    1
                )
            ),
        }
    }

    fn render(&self, template: &str) -> String {
        let kind = match self.kind {
            Kind::Handler => "handler",
            Kind::Mapper => "mapper",
        };
        template
            .replace("{{name}}", &self.name)
            .replace("{{crate}}", &self.crate_name())
            .replace("{{Type}}", &self.type_name())
            .replace("{{channel}}", &self.channel)
            .replace("{{kind}}", kind)
            .replace("{{world}}", self.world())
            .replace("{{sdk}}", &self.sdk)
            .replace("{{build}}", &self.build())
            .replace("{{try}}", &self.try_it())
    }

    /// Every file of the project, rendered.
    fn files(&self) -> Vec<(&'static str, String)> {
        let parts: [Files; 2] = match (self.lang, self.kind) {
            (Lang::Rust, Kind::Handler) => [RUST_COMMON, RUST_HANDLER],
            (Lang::Rust, Kind::Mapper) => [RUST_COMMON, RUST_MAPPER],
            (Lang::Python, Kind::Handler) => [PYTHON_COMMON, PYTHON_HANDLER],
            (Lang::Python, Kind::Mapper) => [PYTHON_COMMON, PYTHON_MAPPER],
        };
        let mut files: Vec<(&str, String)> = parts
            .iter()
            .flat_map(|p| p.iter())
            .map(|(path, t)| (*path, self.render(t)))
            .collect();
        if self.lang == Lang::Python {
            files.extend(PYTHON_SDK.iter().map(|(p, c)| (*p, (*c).to_owned())));
        }
        files
    }
}

pub(super) fn run(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let channel = args.channel.clone().unwrap_or_else(|| args.name.clone());
    crate::names::check_channel(&channel)?;
    if args.kind == Kind::Handler {
        // The template's handler posts to `<channel>.done`.
        crate::names::check_channel(&format!("{channel}.done"))
            .context("the channel is too long for the template's `<channel>.done` post")?;
    }
    let sdk = match args.lang {
        Lang::Rust => rust_sdk(args.sdk.as_deref())?,
        Lang::Python => {
            if args.sdk.is_some() {
                bail!("--sdk is for Rust projects; a Python project gets its own copy of the SDK");
            }
            String::new()
        }
    };
    let vars = Vars {
        name: args.name.clone(),
        channel,
        kind: args.kind,
        lang: args.lang,
        sdk,
    };
    let dest = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    write_project(&dest, &vars.files())?;
    println!(
        "created {} {} `{}` in {}",
        match args.lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
        },
        vars.render("{{kind}}"),
        vars.name,
        dest.display()
    );
    println!("  cd {}", dest.display());
    println!("  {}    # builds {}", vars.build(), vars.wasm());
    println!(
        "  {}",
        match args.lang {
            Lang::Rust => "cargo test",
            Lang::Python => "python3 -m unittest",
        }
    );
    println!("  sluice dev    # rebuild on change, run it in a local daemon");
    Ok(())
}

/// A plugin name that is also a valid crate and file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    crate::names::check_plugin_name(name)?;
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!(
            "plugin name {} must start with a letter (it is also the crate's name)",
            crate::names::quote(name)
        );
    }
    Ok(())
}

/// The `sluice-sdk = ...` dependency, as a TOML inline table.
fn rust_sdk(arg: Option<&str>) -> anyhow::Result<String> {
    let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let Some(arg) = arg else {
        let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
        return match sdk_dir(&built_from) {
            Ok(dir) => Ok(format!("{{ path = {} }}", quoted(&path_text(&dir)?))),
            Err(_) => bail!(
                "the SDK this sluice was built from ({}) is not there; pass --sdk PATH (a Sluice \
                 checkout or its sdk/ directory) or --sdk GIT_URL",
                built_from.display()
            ),
        };
    };
    if is_git_url(arg) {
        return Ok(format!("{{ git = {} }}", quoted(arg)));
    }
    let dir = sdk_dir(Path::new(arg))?;
    Ok(format!("{{ path = {} }}", quoted(&path_text(&dir)?)))
}

fn is_git_url(s: &str) -> bool {
    s.contains("://") || (s.starts_with("git@") && s.contains(':'))
}

/// `dir` (or `dir/sdk`) if it holds the `sluice-sdk` crate, made absolute.
fn sdk_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    for candidate in [dir.to_path_buf(), dir.join("sdk")] {
        let manifest = candidate.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let name = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("package")?.get("name")?.as_str().map(str::to_owned));
        if name.as_deref() == Some("sluice-sdk") {
            return candidate
                .canonicalize()
                .with_context(|| format!("resolving {}", candidate.display()));
        }
    }
    bail!(
        "{} holds no sluice-sdk crate (looked for Cargo.toml with name = \"sluice-sdk\" there and in sdk/)",
        dir.display()
    )
}

fn path_text(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("the SDK path {} is not UTF-8", p.display()))
}

/// Writes `files` under a temp dir next to `dest`, then renames it to
/// `dest` (which must not exist, or be an empty directory).
fn write_project(dest: &Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(dest) {
        if entries.next().is_some() {
            bail!("{} already exists and is not empty", dest.display());
        }
    } else if dest.exists() {
        bail!("{} already exists and is not a directory", dest.display());
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".sluice-new-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
    for (path, contents) in files {
        let file = tmp.path().join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
    }
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("moving the project to {}", dest.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(lang: Lang, kind: Kind) -> Vars {
        Vars {
            name: "order-total".into(),
            channel: "orders.total".into(),
            kind,
            lang,
            sdk: r#"{ path = "/x" }"#.into(),
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for lang in [Lang::Rust, Lang::Python] {
            for kind in [Kind::Handler, Kind::Mapper] {
                for (path, text) in vars(lang, kind).files() {
                    assert!(!text.contains("{{"), "{lang:?} {kind:?} {path}: {text}");
                }
            }
        }
    }

    #[test]
    fn type_names_are_camel_case_and_avoid_the_templates_names() {
        let mut v = vars(Lang::Rust, Kind::Handler);
        assert_eq!(v.type_name(), "OrderTotal");
        v.name = "handler".into();
        assert_eq!(v.type_name(), "HandlerPlugin");
        v.name = "a_b-c".into();
        assert_eq!(v.type_name(), "ABC");
    }

    #[test]
    fn every_python_sdk_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python/sluice_sdk");
        let mut on_disk = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "py") {
                on_disk.push(format!(
                    "sluice_sdk/{}",
                    p.file_name().unwrap().to_string_lossy()
                ));
            }
        }
        for entry in std::fs::read_dir(dir.join("wit")).unwrap() {
            let p = entry.unwrap().path();
            on_disk.push(format!(
                "sluice_sdk/wit/{}",
                p.file_name().unwrap().to_string_lossy()
            ));
        }
        on_disk.sort();
        let mut embedded: Vec<String> = PYTHON_SDK.iter().map(|(p, _)| (*p).to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "update PYTHON_SDK in cli/new.rs");
    }

    #[test]
    fn names_must_be_crate_names_too() {
        assert!(check_name("greeter").is_ok());
        assert!(check_name("my_plugin-2").is_ok());
        for bad in [
            "",
            "2fast",
            "-x",
            "a.b",
            "a b",
            "ünï",
            "a\nb",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn git_urls_and_paths_become_toml_dependencies() {
        assert!(is_git_url("https://example.com/sluice.git"));
        assert!(is_git_url("git@example.com:me/sluice.git"));
        assert!(!is_git_url("../sluice"));
        assert_eq!(
            rust_sdk(Some("https://example.com/s.git")).unwrap(),
            r#"{ git = "https://example.com/s.git" }"#
        );
        // The checkout this test runs in, by its root or its sdk/.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dep = rust_sdk(root.to_str()).unwrap();
        assert!(
            dep.starts_with("{ path = ") && dep.ends_with("sdk\" }"),
            "{dep}"
        );
        assert!(rust_sdk(Some("/nonexistent")).is_err());
    }
}
