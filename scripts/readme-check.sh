#!/usr/bin/env bash
# Runs every ```sh and ```bash block of README.md, top to bottom, and stops at the first
# that fails, naming its line. Each block runs as one `bash -euo pipefail` script, in a
# scratch copy of the repository (its tracked and untracked-but-not-ignored files, no
# target/), so that files the examples write (ft.toml, out.json, …) land there; blocks
# share that directory, so a later block can use what an earlier one wrote.
#
# A block that takes too long to check routinely (a release build, the whole test suite,
# an install) is marked in README.md with this comment on the last non-blank line before
# its fence, optionally with a reason:
#
#     <!-- readme-check: skip (builds the workspace in release) -->
#
# and is listed as skipped, never run.
#
# The blocks call `topoccl` by name: the one on PATH, else target/release/topoccl, else
# target/debug/topoccl of this repository (build one first, e.g. cargo build -p
# topoccl-cli), or the one --bin names.
#
# Usage: scripts/readme-check.sh [--bin PATH/TO/topoccl] [--timeout SECONDS] [--keep]
#                                [--list] [README]
#   --timeout  per block (default 600); a block running longer fails
#   --keep     leave the scratch copy in place (its path is printed)
#   --list     print the blocks and whether they would run, run nothing
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
readme=
bin=
timeout=600
keep=0
list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=${2:?--bin needs the path of a topoccl binary}; shift 2 ;;
    --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
    --keep) keep=1; shift ;;
    --list) list=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "readme-check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) readme=$1; shift ;;
  esac
done
readme=${readme:-$repo/README.md}
[ -f "$readme" ] || { echo "readme-check: no such file: $readme" >&2; exit 2; }
case "$timeout" in ''|*[!0-9]*) echo "readme-check: --timeout: '$timeout' is not a number of seconds" >&2; exit 2 ;; esac
name=$(basename "$readme")

work=$(mktemp -d "${TMPDIR:-/tmp}/readme-check.XXXXXX")
cleanup() { if [ "$keep" = 1 ]; then echo "readme-check: scratch copy kept in $work/repo"; else rm -rf "$work"; fi; }
trap cleanup EXIT

# Split the README into blocks: work/block-N.sh, and work/index with "N LINE SKIP" per
# block (LINE: the opening fence's line; SKIP: 1 when marked). Other fenced blocks
# (```python, output, …) are passed over whole.
awk -v dir="$work" '
  function fence_kind(line) { sub(/^```/, "", line); sub(/[ \t]+$/, "", line); return line }
  state == "run" && /^```[ \t]*$/ { state = ""; close(file); prev = $0; next }
  state == "run" { print > file; next }
  state == "other" && /^```/ { state = ""; prev = $0; next }
  state == "other" { next }
  /^```/ {
    kind = fence_kind($0)
    if (kind == "sh" || kind == "bash") {
      n++; state = "run"; file = dir "/block-" n ".sh"; printf "" > file
      skip = (prev ~ /<!--[ \t]*readme-check:[ \t]*skip/) ? 1 : 0
      print n, NR, skip > (dir "/index")
    } else {
      state = "other"
    }
    next
  }
  NF { prev = $0 }
  END { if (state != "") { print "readme-check: unclosed code fence" > "/dev/stderr"; exit 3 } }
' "$readme"
touch "$work/index"

first_line() { grep -m1 -v '^[[:space:]]*$' "$1" || true; }

if [ "$list" = 1 ]; then
  while read -r n line skip; do
    printf '%s:%s: %s  %s\n' "$name" "$line" "$([ "$skip" = 1 ] && echo skip || echo run)" \
      "$(first_line "$work/block-$n.sh")"
  done < "$work/index"
  exit 0
fi

# The topoccl the blocks call.
if [ -z "$bin" ]; then
  if command -v topoccl >/dev/null 2>&1; then bin=$(command -v topoccl)
  elif [ -x "$repo/target/release/topoccl" ]; then bin=$repo/target/release/topoccl
  elif [ -x "$repo/target/debug/topoccl" ]; then bin=$repo/target/debug/topoccl
  else
    echo "readme-check: no topoccl on PATH nor in target/; build one (cargo build -p topoccl-cli) or pass --bin" >&2
    exit 2
  fi
fi
[ -x "$bin" ] || { echo "readme-check: --bin $bin is not an executable" >&2; exit 2; }
bindir=$(cd "$(dirname "$bin")" && pwd)
[ "$(basename "$bin")" = topoccl ] || {
  mkdir -p "$work/bin" && ln -s "$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")" "$work/bin/topoccl"
  bindir=$work/bin
}

# The scratch copy: what git tracks or would track, nothing it ignores.
mkdir "$work/repo"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf -) | tar -xf - -C "$work/repo"

echo "readme-check: $name, topoccl from $bindir, in a scratch copy of $repo"
ran=0
skipped=()
while read -r n line skip; do
  block=$work/block-$n.sh
  what=$(first_line "$block")
  if [ "$skip" = 1 ]; then
    skipped+=("$name:$line: $what")
    continue
  fi
  echo "== $name:$line: $what"
  start=$(date +%s)
  status=0
  (cd "$work/repo" && PATH="$bindir:$PATH" timeout "$timeout" \
    bash -euo pipefail "$block" </dev/null) || status=$?
  if [ "$status" != 0 ]; then
    if [ "$status" = 124 ]; then why="ran past --timeout ${timeout}s"; else why="exit status $status"; fi
    echo "readme-check: FAILED: the block at $name:$line ($why): $what" >&2
    exit 1
  fi
  ran=$((ran + 1))
  echo "   ok in $(( $(date +%s) - start )) s"
done < "$work/index"

echo "readme-check: $ran blocks ran and passed; ${#skipped[@]} skipped (marked readme-check: skip):"
for s in "${skipped[@]+"${skipped[@]}"}"; do echo "  skipped $s"; done
