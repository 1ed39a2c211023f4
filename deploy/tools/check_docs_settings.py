#!/usr/bin/env python3
"""Docs and code agree on every setting: environment variables, config keys, options.

  check_docs_settings.py --bin-dir DIR --binary NAME... [--k8s RENDERED.yaml]...
                         [--pending NAME=WHY]...

Run from the repository root. What the code reads is taken from the code, never
listed by hand:
  - each binary's --help (and its subcommands'): options, and the `[env: X=]`
    variables clap reads;
  - the Rust sources (not tests): DES_* string literals read through clap
    `env = "X"`, `env::var("X")` / `env::var_os("X")`, an injected `env("X")`
    lookup, or an `ENV` constant; a `const …PREFIX: &str = "DES_<BIN>_"` maps every
    option of des-<bin> to DES_<BIN>_<OPTION> (the retriever's scheme);
  - des-retriever's config file keys: each key is fed to `des-retriever --config`
    and must not be refused as an unknown setting;
  - outside the binaries: `${X}` interpolations of docker-compose.yml, `$X` in
    scripts/, bench/ and .ci/ shell scripts, os.environ in Python helpers.

Checked (each finding with file:line):
  1. every DES_* variable named in README.md, docs/*.md, Dockerfile,
     docker-compose.yml, k8s/** and deploy/** is read by a binary, or (for
     Compose/.env and script variables) by the Compose file or a script;
     `DES_X_<OPTION>` / `DES_X_*` patterns need a variable with that prefix;
  2. every DES_* variable a manifest puts into a DES container (Dockerfile ENV,
     Compose `environment`, Kubernetes env/envFrom) is read by a binary;
     one the container's own binary does not read is a warning;
  3. every des-retriever config key named in the docs (keys of any retriever.toml
     under k8s/ and deploy/, backticked `key = value` anywhere in the docs, and
     backticked snake_case names in README's des-retriever section and in
     docs/DEPLOYMENT.md that are not metric names or keys of another DES file
     format) is accepted by des-retriever --config;
  4. every `--option` in README's option tables is an option of the section's
     binary, and every `--option` in README's binary sections is an option of
     some DES binary;
  5. every des-retriever option appears in README's des-retriever section or in
     docs/*.md (as --option, snake_case key or DES_RETRIEVER_ variable).
--pending NAME=WHY accepts a variable the code is about to read (printed).
Exit 1 on any finding of 1-5.
"""

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path.cwd()
DOC_FILES = ["README.md", "Dockerfile", "docker-compose.yml"]
DOC_GLOBS = ["docs/*.md", "k8s/**/*", "deploy/**/*"]
ENV_NAME = re.compile(r"\bDES_[A-Z0-9_]*[A-Z0-9]\b")
ENV_PATTERN = re.compile(r"\b(DES_[A-Z0-9_]*_)(?:<[A-Za-z_]+>|\*)")


def rel(p):
    return Path(p).resolve().relative_to(ROOT).as_posix()


def text_files(globs, names=()):
    """Files to read as docs; the validators in deploy/tools/ are code, not docs."""
    out = [ROOT / n for n in names if (ROOT / n).is_file()]
    for g in globs:
        out += [p for p in sorted(ROOT.glob(g)) if p.is_file()]
    return [p for p in out if p.suffix not in (".png", ".jpg", ".ico")
            and not rel(p).startswith("deploy/tools/")]


# ---- what the binaries read --------------------------------------------------------

def run_help(binary, *sub):
    r = subprocess.run([binary, *sub, "--help"], capture_output=True, text=True, timeout=20)
    return r.stdout + r.stderr


def help_tree(binary):
    """{command path: help text} for the binary and its subcommands (two levels)."""
    tree = {(): run_help(binary)}
    todo = [()]
    while todo:
        path = todo.pop()
        m = re.search(r"^Commands:\n((?:  .*\n?)+)", tree[path], re.M)
        if not m or len(path) >= 2:
            continue
        for sub in re.findall(r"^  ([a-z][a-z0-9-]*)\s", m.group(1), re.M):
            if sub == "help":
                continue
            tree[path + (sub,)] = run_help(binary, *path, sub)
            todo.append(path + (sub,))
    return tree


def options(help_text):
    """Long options of one help text (its Options: section and the rest)."""
    return set(re.findall(r"^\s+(?:-\w, )?--([a-z][a-z0-9-]*)", help_text, re.M)) - {"help", "version"}


def rust_sources(dirs):
    for d in dirs:
        for f in sorted((ROOT / d).rglob("*.rs")):
            parts = f.relative_to(ROOT).parts
            if "tests" in parts or "benches" in parts or f.name == "tests.rs" or "target" in parts:
                continue
            yield f


ENV_READ = [
    re.compile(r'\benv\s*=\s*"(DES_\w+)"'),  # clap #[arg(env = "X")]
    re.compile(r'\benv(?:::var(?:_os)?)?\(\s*"(DES_\w+)"'),  # std::env::var("X"), env("X")
    re.compile(r'\bENV\w*\s*:\s*&(?:\'static\s+)?str\s*=\s*"(DES_\w+)"'),  # const ENV: &str = "X"
]
ENV_PREFIX = re.compile(r'\bconst\s+\w*PREFIX\w*\s*:\s*&(?:\'static\s+)?str\s*=\s*"(DES_\w+_)"')


def crates():
    """{crate dir: set of crate dirs it depends on by path, itself included}."""
    root = tomllib.loads((ROOT / "Cargo.toml").read_text())
    ws = root.get("workspace", {})
    ws_paths = {k: v["path"] for k, v in ws.get("dependencies", {}).items() if isinstance(v, dict) and "path" in v}
    deps = {}
    for m in ws.get("members", []):
        f = ROOT / m / "Cargo.toml"
        if not f.is_file():
            continue
        try:
            c = tomllib.loads(f.read_text())
        except tomllib.TOMLDecodeError:
            continue
        direct = set()
        for k, v in c.get("dependencies", {}).items():
            if isinstance(v, dict) and "path" in v:
                direct.add((Path(m) / v["path"]).as_posix())
            elif isinstance(v, dict) and v.get("workspace") and k in ws_paths:
                direct.add(Path(ws_paths[k]).as_posix())
        deps[m] = {Path(d).as_posix() for d in direct}
    closed = {}
    for m in deps:
        seen, todo = {m}, [m]
        while todo:
            for d in deps.get(todo.pop(), ()):
                d = str(Path(d)).replace("\\", "/")
                d = Path(d).resolve().relative_to(ROOT).as_posix()
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        closed[m] = seen
    return closed


def binary_crate(name):
    for f in ROOT.glob(f"*/src/bin/{name}.rs"):
        return f.parent.parent.parent.relative_to(ROOT).as_posix(), f
    for f in ROOT.glob("*/Cargo.toml"):
        try:
            c = tomllib.loads(f.read_text())
        except tomllib.TOMLDecodeError:
            continue
        if c.get("package", {}).get("name") == name and (f.parent / "src/main.rs").is_file():
            return f.parent.relative_to(ROOT).as_posix(), f.parent / "src/main.rs"
        for b in c.get("bin", []):
            if b.get("name") == name:
                return f.parent.relative_to(ROOT).as_posix(), f.parent / b.get("path", f"src/bin/{name}.rs")
    return None, None


def code_env(binaries, helps):
    """{variable: set of binaries reading it}, the prefixes, and where each was found."""
    read, where = {}, {}
    graph = crates()
    prefixes = {}
    for b in binaries:
        crate, main = binary_crate(b)
        dirs = sorted(graph.get(crate, {crate} if crate else set()))
        for f in rust_sources(dirs):
            if "/bin/" in f.as_posix() and f != main:
                continue  # another binary of the same crate
            text = f.read_text(errors="replace")
            for rx in ENV_READ:
                for m in rx.finditer(text):
                    read.setdefault(m.group(1), set()).add(b)
                    where.setdefault(m.group(1), f"{rel(f)}:{text.count(chr(10), 0, m.start()) + 1}")
            for m in ENV_PREFIX.finditer(text):
                prefixes[m.group(1)] = b
        for h in helps[b].values():
            for v in re.findall(r"\[env: (DES_\w+)=", h):
                read.setdefault(v, set()).add(b)
                where.setdefault(v, f"{b} --help")
    # DES_<BIN>_<OPTION> for every top-level option of des-<bin>.
    for prefix, b in prefixes.items():
        owner = "des-" + prefix[len("DES_"):-1].lower().replace("_", "-")
        if owner not in helps:
            continue
        for o in options(helps[owner][()]):
            v = prefix + o.upper().replace("-", "_")
            read.setdefault(v, set()).add(owner)
            where.setdefault(v, f"{owner} --{o} (prefix {prefix})")
    return read, where, prefixes


def script_env():
    """{variable: where} for DES_* variables read outside the binaries."""
    out = {}
    compose = ROOT / "docker-compose.yml"
    if compose.is_file():
        for m in re.finditer(r"\$\{(DES_\w+)", compose.read_text()):
            out.setdefault(m.group(1), "docker-compose.yml (interpolation)")
    shells = [p for g in ("scripts/*.sh", "bench/*.sh", ".ci/*") for p in sorted(ROOT.glob(g)) if p.is_file()]
    for p in shells:
        for m in re.finditer(r"\$\{?(DES_\w+)", p.read_text(errors="replace")):
            out.setdefault(m.group(1), rel(p))
    pys = [p for g in ("deploy/**/*.py", "scripts/*.py", "bench/*.py") for p in sorted(ROOT.glob(g))]
    for p in pys:
        t = p.read_text(errors="replace")
        for m in re.finditer(r"(?:environ(?:\.get)?\s*[\[(]|getenv\()\s*[\"'](DES_\w+)", t):
            out.setdefault(m.group(1), rel(p))
    return out


def config_key_accepted(retriever, key, cache={}):
    """Does des-retriever --config take `key`? (An unknown key is refused by name.)"""
    if key not in cache:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(f'{key} = "probe"\n')
        r = subprocess.run([retriever, "--config", f.name, "--store", "/nonexistent"], capture_output=True,
                           text=True, timeout=20, env={"PATH": "/usr/bin:/bin"})
        Path(f.name).unlink()
        cache[key] = f"unknown setting `{key}`" not in r.stderr + r.stdout
    return cache[key]


def serde_fields():
    """Field names of every (de)serialized struct in the sources: keys of DES files and reports."""
    out = set()
    for f in rust_sources(["."]):
        text = f.read_text(errors="replace")
        for m in re.finditer(r"#\[derive\([^)]*(?:Deserialize|Serialize)[^)]*\)\]\s*(?:#\[[^\]]*\]\s*|///[^\n]*\n\s*)*"
                             r"(?:pub(?:\([^)]*\))?\s+)?struct\s+\w+(?:<[^>]*>)?\s*\{", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            body = text[m.end():i]
            out |= set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?([a-z_][a-z0-9_]*)\s*:", body, re.M))
            out |= set(re.findall(r'rename\s*=\s*"([a-z0-9_]+)"', body))
    return out


# ---- what the docs name ---------------------------------------------------------------

def sections(path):
    """[(heading, first line number, lines)] of a Markdown file, by ## headings."""
    out, cur = [], ("", 1, [])
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.startswith("## "):
            out.append(cur)
            cur = (line[3:].strip(), n, [])
        cur[2].append((n, line))
    out.append(cur)
    return out


def manifest_env(rendered):
    """{variable: [(where, binary)]} the manifests put into DES containers."""
    out = {}
    df = (ROOT / "Dockerfile").read_text()
    final = df[df.rfind("\nFROM "):]
    for m in re.finditer(r"^ENV\s+((?:.*\\\n)*.*)$", final, re.M):
        for k in re.findall(r"(DES_\w+)=", m.group(1)):
            out.setdefault(k, []).append(("Dockerfile ENV", None))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, s in (compose.get("services") or {}).items():
        if not s.get("build") and "DES_IMAGE" not in str(s.get("image", "")):
            continue
        env = s.get("environment") or {}
        keys = env if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        cmd = s.get("command") or ["des-retriever"]
        cmd = cmd.split() if isinstance(cmd, str) else cmd
        for k in keys:
            if k.startswith("DES_"):
                out.setdefault(k, []).append((f"docker-compose.yml service {name}", Path(cmd[0]).name))
    for path in rendered:
        path = path.split("=", 1)[-1]  # DIR=FILE or FILE
        objs = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
        cms = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs if o["kind"] == "ConfigMap"}
        for o in objs:
            spec = o.get("spec", {})
            tmpl = (spec.get("jobTemplate", {}).get("spec", spec)).get("template", {}).get("spec")
            if not tmpl:
                continue
            for c in tmpl.get("containers", []) + tmpl.get("initContainers", []):
                binary = Path((c.get("command") or ["des-retriever"])[0]).name
                what = f"{Path(path).stem}: {o['kind']}/{o['metadata']['name']}"
                for e in c.get("env", []):
                    if e["name"].startswith("DES_"):
                        out.setdefault(e["name"], []).append((what, binary))
                for ef in c.get("envFrom", []):
                    ref = (ef.get("configMapRef") or {}).get("name")
                    cm = cms.get((o["metadata"].get("namespace"), ref)) or next(
                        (v for (ns, n), v in cms.items() if n == ref), None)
                    for k in (cm or {}).get("data", {}) or {}:
                        if k.startswith("DES_"):
                            out.setdefault(k, []).append((f"{what} (ConfigMap {ref})", binary))
    return out


def retriever_env(rendered):
    """{variable: {value}} the retriever containers get from the image and the manifests."""
    out = {}
    df = (ROOT / "Dockerfile").read_text()
    for m in re.finditer(r"^ENV\s+((?:.*\\\n)*.*)$", df[df.rfind("\nFROM "):], re.M):
        for k, v in re.findall(r"(DES_RETRIEVER_\w+)=(\S+)", m.group(1)):
            out.setdefault(k, set()).add(v.strip("\"'"))
    for path in rendered:
        objs = [o for o in yaml.safe_load_all(Path(path.split("=", 1)[-1]).read_text()) if o]
        cms = {o["metadata"]["name"]: o.get("data") or {} for o in objs if o["kind"] == "ConfigMap"}
        for o in objs:
            spec = o.get("spec", {})
            tmpl = (spec.get("jobTemplate", {}).get("spec", spec)).get("template", {}).get("spec") or {}
            for c in tmpl.get("containers", []):
                if Path((c.get("command") or ["des-retriever"])[0]).name != "des-retriever":
                    continue
                for e in c.get("env", []):
                    out.setdefault(e["name"], set()).add(str(e.get("value", "<valueFrom>")))
                for ef in c.get("envFrom", []):
                    for k, v in cms.get((ef.get("configMapRef") or {}).get("name"), {}).items():
                        out.setdefault(k, set()).add(v)
    return out


def first_line(name, files):
    for p in files:
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if re.search(rf"\b{re.escape(name)}\b", line):
                return f"{rel(p)}:{n}"
    return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--binary", action="append", required=True)
    ap.add_argument("--k8s", action="append", default=[], metavar="[DIR=]RENDERED.yaml",
                    help="rendered manifests (kubectl kustomize)")
    ap.add_argument("--pending", action="append", default=[], metavar="NAME=WHY")
    args = ap.parse_args()
    bins = {b: str(Path(args.bin_dir) / b) for b in args.binary}
    helps = {b: help_tree(p) for b, p in bins.items()}
    read, where, prefixes = code_env(args.binary, helps)
    scripts = script_env()
    pending = dict(p.split("=", 1) if "=" in p else (p, "pending") for p in args.pending)
    errors, warnings = [], []

    menv = manifest_env(args.k8s)

    # 1. Variables the docs name (one set for DES containers and unread: reported under 2).
    files = text_files(DOC_GLOBS, DOC_FILES)
    mentioned = {}
    for p in files:
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            for m in ENV_PATTERN.finditer(line):
                pre = m.group(1)
                if not any(v.startswith(pre) for v in list(read) + list(scripts)):
                    errors.append(f"{rel(p)}:{n}: {pre}… : no variable with this prefix is read")
            for m in ENV_NAME.finditer(line):
                if line[m.end():m.end() + 1] in ("<", "*"):
                    continue
                mentioned.setdefault(m.group(0), []).append(f"{rel(p)}:{n}")
    by_binaries = by_scripts = 0
    for v, locs in sorted(mentioned.items()):
        if v in read:
            by_binaries += 1
        elif v in scripts:
            by_scripts += 1
        elif v in menv:
            continue
        elif v in pending:
            print(f"docs: {v}: not read by the code yet, accepted as pending ({pending[v]}); named at {locs[0]}")
        else:
            errors.append(f"{locs[0]}: {v} is read by no binary and no script"
                          + (f" (also {', '.join(locs[1:4])}{'…' if len(locs) > 4 else ''})" if len(locs) > 1 else ""))
    for v in pending:
        if v in read:
            print(f"docs: {v} is now read by the code ({where[v]}): drop --pending {v}")

    # 2. Variables the manifests put into DES containers.
    for v, uses in sorted(menv.items()):
        if v not in read and v not in pending:
            src = first_line(v, text_files(["k8s/**/*"], ["docker-compose.yml", "Dockerfile"]))
            errors.append(f"{src}: {v} is set for DES containers ({uses[0][0]}) but no binary reads it")
            continue
        for what, binary in uses:
            if binary in bins and v in read and binary not in read[v]:
                warnings.append(f"{what}: {binary} does not read {v} (read by {', '.join(sorted(read[v]))})")
            elif binary in bins and v in pending and v not in read:
                warnings.append(f"{what}: {binary} does not read {v} yet (pending: {pending[v]})")

    # 3. Retriever config keys the docs name.
    retriever = bins.get("des-retriever")
    ropts = options(helps["des-retriever"][()]) if retriever else set()
    keys = {}
    for p in [f for f in text_files(["k8s/**/*.toml", "deploy/**/*.toml"]) if "retriever" in f.name]:
        text = p.read_text()
        for k in tomllib.loads(text):
            n = next(i for i, l in enumerate(text.splitlines(), 1) if re.match(rf"\s*{k}\s*=", l))
            keys.setdefault(k, []).append(f"{rel(p)}:{n}")
    # A key the retriever's environment also sets is overridden (environment > file).
    renv = retriever_env(args.k8s)
    for p in [f for f in text_files(["k8s/**/*.toml"]) if "retriever" in f.name]:
        for k, v in tomllib.loads(p.read_text()).items():
            var = "DES_RETRIEVER_" + k.upper()
            if var in renv and renv[var] != {str(v)}:
                errors.append(f"{keys[k][0]}: `{k} = {v!r}` is overridden by {var}="
                              f"{'/'.join(sorted(renv[var]))} in the retriever's environment "
                              f"(Dockerfile ENV or the manifests; environment > file)")
    md = text_files(["docs/*.md"], ["README.md"])
    other = serde_fields()
    metric = re.compile(r"^(des|http)_")
    for p in md:
        for n, line in enumerate(p.read_text().splitlines(), 1):
            for m in re.finditer(r"`([a-z][a-z0-9_]*) = [^`]+`", line):
                keys.setdefault(m.group(1), []).append(f"{rel(p)}:{n}")
    contexts = [(ROOT / "README.md", lambda h: h == "des-retriever"), (ROOT / "docs/DEPLOYMENT.md", lambda h: True)]
    for p, want in contexts:
        if not p.is_file():
            continue
        for heading, _, lines in sections(p):
            if not want(heading):
                continue
            for n, line in lines:
                for m in re.finditer(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)`", line):
                    k = m.group(1)
                    if metric.match(k) or (k in other and k.replace("_", "-") not in ropts):
                        continue
                    keys.setdefault(k, []).append(f"{rel(p)}:{n}")
    if retriever:
        for k, locs in sorted(keys.items()):
            if not config_key_accepted(retriever, k):
                errors.append(f"{locs[0]}: `{k}` is not a des-retriever config key (des-retriever --config "
                              f"refuses it){' (also ' + ', '.join(locs[1:4]) + ')' if len(locs) > 1 else ''}")

    # 4. Options in README's binary sections and option tables.
    all_opts = {o for b in helps for h in helps[b].values() for o in options(h)} | {"help", "version"}
    readme = ROOT / "README.md"
    for heading, _, lines in sections(readme):
        named = [b for b in bins if b in heading.split()]
        in_code = sorted({b for _, l in lines for b in bins if re.match(rf"\s*{b}\b", l)})
        owners = named or in_code
        if not owners:
            continue
        own = {o for b in owners for h in helps[b].values() for o in options(h)}
        code = False
        for n, line in lines:
            if line.startswith("```"):
                code = not code
                continue
            if code and not any(re.match(rf"\s*{b}\b", line) for b in bins):
                continue  # curl, printf, ...: not a DES command line
            row = re.match(r"\|\s*`--([a-z][a-z0-9-]*)", line)
            for m in re.finditer(r"(?<![\w-])--([a-z][a-z0-9-]*)", line):
                o = m.group(1)
                if row and m.start() < line.index("|", 1) and o not in own:
                    errors.append(f"README.md:{n}: option table of {'/'.join(owners)}: --{o} is not an "
                                  f"option of {'/'.join(owners)}")
                elif o not in all_opts:
                    errors.append(f"README.md:{n}: --{o} is not an option of any DES binary")

    # 5. Every retriever option is documented.
    if retriever:
        doc_text = "\n".join(l for h, _, ls in sections(readme) if h == "des-retriever" for _, l in ls)
        doc_text += "\n".join(p.read_text() for p in text_files(["docs/*.md"]))
        missing = []
        for o in sorted(ropts):
            snake, env = o.replace("-", "_"), "DES_RETRIEVER_" + o.upper().replace("-", "_")
            if not re.search(rf"--{o}\b|`{snake}\b|\b{env}\b", doc_text):
                missing.append(f"--{o}")
        if missing:
            errors.append(f"README.md (des-retriever) and docs/*.md never mention: {', '.join(missing)}")

    for w in warnings:
        print(f"docs: warning: {w}")
    for e in errors:
        print(f"docs: {e}")
    print(f"docs: {len(mentioned)} DES_* variables named in {len(files)} files ({by_binaries} read by the "
          f"binaries, {by_scripts} by Compose or scripts), {len(keys)} des-retriever config keys, "
          f"{len(ropts)} des-retriever options; {len(errors)} problems, {len(warnings)} warnings")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
