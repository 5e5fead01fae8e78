//! Embeds the console's page: the files of `console/web/dist` when
//! `scripts/build-console.sh` has built them, else a placeholder page that says how, so
//! `cargo build` works on a machine without Node.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let web = manifest.join("../../console/web");
    let dist = web.join("dist");
    println!("cargo:rerun-if-changed={}", web.display());
    let mut files: Vec<PathBuf> = Vec::new();
    if dist.join("index.html").is_file() {
        println!("cargo:rerun-if-changed={}", dist.display());
        if let Ok(rd) = std::fs::read_dir(&dist) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() {
                    println!("cargo:rerun-if-changed={}", p.display());
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let mut code = String::new();
    let built = !files.is_empty();
    writeln!(
        code,
        "/// Whether the real page is embedded.\npub const BUILT: bool = {built};"
    )
    .ok();
    code.push_str("/// (file name, bytes)\npub static ASSETS: &[(&str, &[u8])] = &[\n");
    if built {
        for f in &files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            writeln!(
                code,
                "    ({name:?}, include_bytes!({:?})),",
                f.display().to_string()
            )
            .ok();
        }
    } else {
        let placeholder = out.join("placeholder.html");
        std::fs::write(
            &placeholder,
            "<!doctype html><meta charset=utf-8><title>topoccl console</title>\n\
             <h1>topoccl console</h1>\n<p>This binary was built without the console's page. \
             Build it, then rebuild the binary:</p>\n<pre>scripts/build-console.sh\n\
             cargo build -p topoccl-cli</pre>\n<p>The JSON API works without it: \
             <a href=\"api/topology\">/api/topology</a>, <a href=\"api/links\">/api/links</a>, \
             <a href=\"api/calls\">/api/calls</a>, <a href=\"api/alerts\">/api/alerts</a>.</p>\n",
        )
        .expect("OUT_DIR is writable");
        writeln!(
            code,
            "    (\"index.html\", include_bytes!({:?})),",
            placeholder.display().to_string()
        )
        .ok();
    }
    code.push_str("];\n");
    std::fs::write(out.join("assets.rs"), code).expect("OUT_DIR is writable");
}
