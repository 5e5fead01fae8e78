//! `topoccl topo show`: the collapsed view of the 16,384-GPU example is small (text and
//! DOT) and its counts add up to the model's nodes and links; `--full` keeps the complete
//! output.

mod common;

use common::{example, topoccl};

/// Runs `topoccl ARGS`, checks it succeeded and wrote nothing on stderr; its stdout.
fn show(args: &[&str]) -> String {
    let out = topoccl(args);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Nodes and links of the model, from `topo validate`'s summary line
/// (`…; 42208 nodes, 176384 links`).
fn model_counts(file: &str) -> (usize, usize) {
    let text = show(&["topo", "validate", file]);
    let tail = text.trim().rsplit("; ").next().unwrap();
    let mut words = tail.split_whitespace();
    let nodes = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("nodes,"));
    let links = words.next().unwrap().parse().unwrap();
    (nodes, links)
}

/// The number right before `marker` in `line`, if `marker` is there.
fn number_before(line: &str, marker: &str) -> Option<usize> {
    let head = &line[..line.find(marker)?];
    let digits: String = head
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// Links counted by the bundles of links: `N cable(s)` count twice, `N link(s)` once.
fn bundle_links(line: &str, prefix: &str) -> usize {
    if let Some(n) = number_before(line, &format!("{prefix}cable")) {
        2 * n
    } else {
        number_before(line, &format!("{prefix}link")).unwrap_or(0)
    }
}

#[test]
fn the_16k_example_collapses_to_a_few_lines_that_add_up() {
    let file = example("fat-tree-16k.toml");
    let (nodes, links) = model_counts(&file);
    assert_eq!((nodes, links), (42208, 176384));

    let text = show(&["topo", "show", &file]);
    assert!(text.lines().count() < 500, "{} lines", text.lines().count());
    let structure = &text[text.find("structure (").expect("a structure section")..];
    let (parts, bundles) = structure.split_at(structure.find("\nlinks (").unwrap());
    // Leaf parts (classes of nodes) hold the nodes; parts with `each:` hold parts.
    let counted: usize = parts
        .lines()
        .filter(|l| !l.contains("each:"))
        .filter_map(|l| number_before(l, " in all)"))
        .sum();
    assert_eq!(counted, nodes, "{structure}");
    let counted: usize = bundles.lines().map(|l| bundle_links(l, " ")).sum();
    assert_eq!(counted, links, "{structure}");
    assert!(
        text.contains("× pod, each:") && text.contains("× rack, each:"),
        "{text}"
    );
    assert!(text.contains("8 × accelerator, 1 rank each"), "{text}");

    let dot = show(&["topo", "show", &file, "--format", "dot"]);
    assert!(dot.lines().count() < 500, "{} lines", dot.lines().count());
    assert!(dot.starts_with("digraph \"fat-tree-16k\" {") && dot.ends_with("}\n"));
    let counted: usize = dot
        .lines()
        .filter(|l| l.trim_start().starts_with('p') && !l.contains("->"))
        .filter_map(|l| number_before(l, " in all)"))
        .sum();
    assert_eq!(counted, nodes, "{dot}");
    let counted: usize = dot
        .lines()
        .filter(|l| l.contains("->"))
        .map(|l| bundle_links(l, " "))
        .sum();
    assert_eq!(counted, links, "{dot}");
}

#[test]
fn full_keeps_every_node() {
    let file = example("dgx-pair.toml");
    let full = show(&["topo", "show", &file, "--format", "dot", "--full"]);
    assert!(
        full.contains("\"h1/gpu7\" [label=\"h1/gpu7\\nrank 15\""),
        "{full}"
    );
    let collapsed = show(&["topo", "show", &file, "--format", "dot"]);
    assert!(!collapsed.contains("h1/gpu7"), "{collapsed}");
    assert!(
        collapsed.contains("accelerator ×8 (16 in all)"),
        "{collapsed}"
    );

    let full = show(&["topo", "show", &file, "--full"]);
    assert!(!full.contains("structure ("), "{full}");
    assert!(full.contains("route rank 0 -> rank 15"), "{full}");
    let collapsed = show(&["topo", "show", &file]);
    assert!(
        collapsed.starts_with(&full),
        "the summary comes first:\n{collapsed}"
    );
    assert!(collapsed.contains("2 × host, each:"), "{collapsed}");
}

/// `topo --help` lists every subcommand, each with a description on its one line, and so
/// does `topo gen --help`.
#[test]
fn topo_help_lists_every_subcommand_on_one_line() {
    for (args, names) in [
        (
            &["topo", "--help"][..],
            &["gen", "discover", "measure", "show", "validate"][..],
        ),
        (
            &["topo", "gen", "--help"][..],
            &["fat-tree", "rail", "switch", "multi-zone"][..],
        ),
    ] {
        let help = show(args);
        let commands = &help[help.find("Commands:\n").expect("a command list")..];
        for name in names {
            let line = commands
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{help}"));
            let description = line.trim_start()[name.len()..].trim();
            assert!(description.len() > 10, "{name} has no description: {line}");
            assert!(
                line.len() <= 100,
                "{name}'s description is not one line: {line}"
            );
        }
    }
}
