//! Framework detection: the dev server command of a repository that has no
//! `devserver.yaml`, with the port passed so the server cannot quietly move
//! to another one.
//!
//! Detection reads a few files at the root (or the configured `cwd`): the
//! dependencies of `package.json` and its lock file (which names the package
//! manager), `manage.py`, a Flask app, a Rails `Gemfile`, or a static
//! `index.html`. It never runs anything.

use std::path::Path;

/// What was detected, and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    /// The framework, for messages: "Vite", "Next.js", ...
    pub framework: &'static str,
    /// Which file told, for messages.
    pub evidence: String,
    /// The `command` for `devserver.yaml`.
    pub command: String,
    /// How this framework is given a port, for the wrong-port error.
    pub port_hint: &'static str,
    /// Paths to symlink from the main checkout into a new worktree.
    pub link: Vec<String>,
    /// Commands to run once in a new worktree.
    pub run: Vec<String>,
}

impl Detected {
    /// The config text for this app, as `init` writes it and `spawn` uses it.
    pub fn config(&self) -> String {
        let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
        let mut yaml = format!("command: {}\n", quote(&self.command));
        let lists = [("link", &self.link), ("run", &self.run)];
        if lists.iter().any(|(_, items)| !items.is_empty()) {
            yaml.push_str("setup:\n");
            for (key, items) in lists.iter().filter(|(_, items)| !items.is_empty()) {
                let items: Vec<String> = items.iter().map(|i| quote(i)).collect();
                yaml.push_str(&format!("  {key}: [{}]\n", items.join(", ")));
            }
        }
        yaml
    }
}

/// A JavaScript framework recognised by a dependency of `package.json`.
struct JsFramework {
    dependency: &'static str,
    name: &'static str,
    /// The arguments passed to the `dev` script.
    args: &'static str,
    port_hint: &'static str,
}

const VITE_ARGS: &str = "--port {port} --strictPort --host 127.0.0.1";
const VITE_HINT: &str = "Vite-based servers take `--port {port} --strictPort`";

/// Most specific first: SvelteKit, React Router and Vue apps also depend on Vite.
const JS_FRAMEWORKS: &[JsFramework] = &[
    JsFramework {
        dependency: "next",
        name: "Next.js",
        args: "-p {port} -H 127.0.0.1",
        port_hint: "Next.js takes `-p {port}`",
    },
    JsFramework {
        dependency: "nuxt",
        name: "Nuxt",
        args: "--port {port} --host 127.0.0.1",
        port_hint: "Nuxt takes `--port {port}`",
    },
    JsFramework {
        dependency: "astro",
        name: "Astro",
        args: "--port {port} --host 127.0.0.1",
        port_hint: "Astro takes `--port {port}`",
    },
    JsFramework {
        dependency: "@angular/cli",
        name: "Angular",
        args: "--port {port} --host 127.0.0.1",
        port_hint: "Angular takes `ng serve --port {port}`",
    },
    JsFramework {
        dependency: "@sveltejs/kit",
        name: "SvelteKit (Vite)",
        args: VITE_ARGS,
        port_hint: VITE_HINT,
    },
    JsFramework {
        dependency: "@react-router/dev",
        name: "React Router (Vite)",
        args: VITE_ARGS,
        port_hint: VITE_HINT,
    },
    JsFramework {
        dependency: "vue",
        name: "Vue (Vite)",
        args: VITE_ARGS,
        port_hint: VITE_HINT,
    },
    JsFramework {
        dependency: "vite",
        name: "Vite",
        args: VITE_ARGS,
        port_hint: VITE_HINT,
    },
];

/// The hint used when the framework is unknown.
pub const GENERIC_PORT_HINT: &str =
    "put `{port}` (or `$PORT`) in `command` where the server takes its port";

/// Detects the dev server of the app in `dir`.
pub fn detect(dir: &Path) -> Option<Detected> {
    detect_js(dir)
        .or_else(|| detect_django(dir))
        .or_else(|| detect_flask(dir))
        .or_else(|| detect_rails(dir))
        .or_else(|| detect_static(dir))
}

fn detect_js(dir: &Path) -> Option<Detected> {
    let text = fs_err::read_to_string(dir.join("package.json")).ok()?;
    let package: serde_json::Value = serde_json::from_str(&text).ok()?;
    let has = |name: &str| {
        ["dependencies", "devDependencies"]
            .iter()
            .any(|field| package[field].get(name).is_some())
    };
    let framework = JS_FRAMEWORKS.iter().find(|f| has(f.dependency))?;
    let script = package["scripts"].get("dev").map_or("start", |_| "dev");
    let manager = package_manager(dir);
    // A worktree has no `node_modules`: share the main checkout's, or
    // install when there is none to share.
    let (link, run) = if dir.join("node_modules").is_dir() {
        (vec!["node_modules".to_string()], Vec::new())
    } else {
        (Vec::new(), vec![format!("{} install", manager.name)])
    };
    Some(Detected {
        framework: framework.name,
        evidence: format!(
            "`{}` in package.json, {}",
            framework.dependency, manager.source
        ),
        command: format!("{} {}", manager.run(script), framework.args),
        port_hint: framework.port_hint,
        link,
        run,
    })
}

struct Manager {
    name: &'static str,
    /// Why this manager, for messages.
    source: String,
}

impl Manager {
    /// How this manager runs a script with extra arguments.
    fn run(&self, script: &str) -> String {
        match self.name {
            // npm needs `--` before arguments meant for the script.
            "npm" => format!("npm run {script} --"),
            other => format!("{other} run {script}"),
        }
    }
}

fn package_manager(dir: &Path) -> Manager {
    let locks = [
        ("pnpm-lock.yaml", "pnpm"),
        ("yarn.lock", "yarn"),
        ("bun.lockb", "bun"),
        ("bun.lock", "bun"),
    ];
    match locks.iter().find(|(file, _)| dir.join(file).exists()) {
        Some((file, name)) => Manager {
            name,
            source: format!("{name} from `{file}`"),
        },
        None if dir.join("package-lock.json").exists() => Manager {
            name: "npm",
            source: "npm from `package-lock.json`".into(),
        },
        None => Manager {
            name: "npm",
            source: "npm (no lock file)".into(),
        },
    }
}

fn detect_django(dir: &Path) -> Option<Detected> {
    dir.join("manage.py").is_file().then(|| Detected {
        framework: "Django",
        evidence: "manage.py".into(),
        command: "python3 manage.py runserver 127.0.0.1:{port}".into(),
        port_hint: "Django takes `runserver 127.0.0.1:{port}`",
        link: Vec::new(),
        run: Vec::new(),
    })
}

fn detect_flask(dir: &Path) -> Option<Detected> {
    let mentions_flask = ["requirements.txt", "pyproject.toml"]
        .iter()
        .filter_map(|f| fs_err::read_to_string(dir.join(f)).ok())
        .any(|text| text.to_ascii_lowercase().contains("flask"));
    let app = ["app.py", "wsgi.py"]
        .iter()
        .find(|f| dir.join(f).is_file())?;
    mentions_flask.then(|| Detected {
        framework: "Flask",
        evidence: format!("{app} and a Flask dependency"),
        command: format!(
            "python3 -m flask --app {} run --port {{port}} --host 127.0.0.1",
            app.trim_end_matches(".py")
        ),
        port_hint: "Flask takes `flask run --port {port}`",
        link: Vec::new(),
        run: Vec::new(),
    })
}

fn detect_rails(dir: &Path) -> Option<Detected> {
    let gemfile = fs_err::read_to_string(dir.join("Gemfile")).ok()?;
    (gemfile.contains("rails") && dir.join("bin/rails").exists()).then(|| Detected {
        framework: "Rails",
        evidence: "`rails` in Gemfile".into(),
        command: "bin/rails server -p {port} -b 127.0.0.1".into(),
        port_hint: "Rails takes `bin/rails server -p {port}`",
        link: Vec::new(),
        run: Vec::new(),
    })
}

fn detect_static(dir: &Path) -> Option<Detected> {
    dir.join("index.html").is_file().then(|| Detected {
        framework: "a static site",
        evidence: "index.html".into(),
        command: "python3 -m http.server {port} --bind 127.0.0.1".into(),
        port_hint: "`python3 -m http.server {port}`",
        link: Vec::new(),
        run: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            let path = dir.path().join(name);
            fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs_err::write(path, text).expect("write");
        }
        dir
    }

    #[rstest]
    #[case::vite_npm(&[("package.json", r#"{"scripts":{"dev":"vite"},"devDependencies":{"vite":"7"}}"#), ("package-lock.json", "{}")], "npm run dev -- --port {port} --strictPort --host 127.0.0.1")]
    #[case::vite_pnpm(&[("package.json", r#"{"scripts":{"dev":"vite"},"devDependencies":{"vite":"7"}}"#), ("pnpm-lock.yaml", "")], "pnpm run dev --port {port} --strictPort --host 127.0.0.1")]
    #[case::sveltekit_yarn(&[("package.json", r#"{"scripts":{"dev":"vite dev"},"devDependencies":{"@sveltejs/kit":"2","vite":"7"}}"#), ("yarn.lock", "")], "yarn run dev --port {port} --strictPort --host 127.0.0.1")]
    #[case::next_bun(&[("package.json", r#"{"scripts":{"dev":"next dev"},"dependencies":{"next":"15"}}"#), ("bun.lock", "")], "bun run dev -p {port} -H 127.0.0.1")]
    #[case::astro(&[("package.json", r#"{"scripts":{"dev":"astro dev"},"dependencies":{"astro":"5"}}"#)], "npm run dev -- --port {port} --host 127.0.0.1")]
    #[case::nuxt(&[("package.json", r#"{"scripts":{"dev":"nuxt dev"},"dependencies":{"nuxt":"3"}}"#)], "npm run dev -- --port {port} --host 127.0.0.1")]
    #[case::angular(&[("package.json", r#"{"scripts":{"start":"ng serve"},"devDependencies":{"@angular/cli":"19"}}"#)], "npm run start -- --port {port} --host 127.0.0.1")]
    #[case::react_router(&[("package.json", r#"{"scripts":{"dev":"react-router dev"},"devDependencies":{"@react-router/dev":"7","vite":"6"}}"#)], "npm run dev -- --port {port} --strictPort --host 127.0.0.1")]
    #[case::django(&[("manage.py", "")], "python3 manage.py runserver 127.0.0.1:{port}")]
    #[case::flask(&[("app.py", ""), ("requirements.txt", "Flask==3\n")], "python3 -m flask --app app run --port {port} --host 127.0.0.1")]
    #[case::rails(&[("Gemfile", "gem \"rails\"\n"), ("bin/rails", "")], "bin/rails server -p {port} -b 127.0.0.1")]
    #[case::static_site(&[("index.html", "<h1>hi</h1>")], "python3 -m http.server {port} --bind 127.0.0.1")]
    fn detects(#[case] files: &[(&str, &str)], #[case] command: &str) {
        let dir = dir_with(files);
        assert_eq!(detect(dir.path()).expect("detected").command, command);
    }

    #[test]
    fn js_apps_share_or_install_node_modules() {
        let pkg = r#"{"scripts":{"dev":"vite"},"devDependencies":{"vite":"7"}}"#;
        let fresh = dir_with(&[("package.json", pkg)]);
        let detected = detect(fresh.path()).expect("detected");
        assert_eq!(detected.run, ["npm install"]);
        let installed = dir_with(&[("package.json", pkg), ("node_modules/.keep", "")]);
        let detected = detect(installed.path()).expect("detected");
        assert_eq!(detected.link, ["node_modules"]);
        let config =
            crate::config::parse(&detected.config(), Path::new("x")).expect("valid config");
        assert_eq!(config.command, detected.command);
        assert_eq!(
            config.setup.link,
            [std::path::PathBuf::from("node_modules")]
        );
    }

    #[test]
    fn nothing_to_detect() {
        let dir = dir_with(&[
            ("README.md", "hi"),
            ("package.json", r#"{"dependencies":{"left-pad":"1"}}"#),
        ]);
        assert_eq!(detect(dir.path()), None);
    }
}
