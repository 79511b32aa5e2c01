#!/usr/bin/env bash
# Check what scripts/build-wheels.sh left in dist/: for every distribution (the root and each
# plugins/*/pyproject.toml) exactly one sdist and one wheel of its current version, each holding
# LICENSE and every file of its packages (all but caches: an undeclared data file fails here),
# and metadata with the license, the version, the URLs and a long description without relative
# links (they do not work on a package index).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_common.sh
VENV=${COLLAB_VENV:-.venv}
# shellcheck disable=SC2046
"$VENV/bin/python" - . $(collab_plugins) <<'PY'
import ast, email, re, sys, tarfile, zipfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

SKIP = ("__pycache__", ".egg-info")
problems = []


def package_files(folder: Path, project: dict) -> tuple[Path, dict[str, Path]]:
    """(the folder packages live in, {path inside a wheel: source file}) of one distribution."""
    packages = project.get("tool", {}).get("setuptools", {}).get("packages", {})
    if isinstance(packages, list):  # an explicit list: every file under its top-level folders
        where = folder
        include = [re.compile(re.escape(p.split(".")[0]) + "$") for p in packages]
    else:
        find = packages.get("find", {})
        where = folder / find.get("where", ["."])[0]
        include = [re.compile(re.escape(p).replace(r"\*", ".*") + "$") for p in find.get("include", ["*"])]
    files = {}
    for init in sorted(where.glob("*/__init__.py")):
        pkg = init.parent
        if not any(rx.match(pkg.name) for rx in include):
            continue
        for f in pkg.rglob("*"):
            rel = f.relative_to(where).as_posix()
            if f.is_file() and not any(s in rel for s in SKIP) and not f.name.endswith((".pyc", ".pyo")):
                files[rel] = f
    return where, files


def version_of(where: Path, project: dict) -> str:
    dyn = project["project"].get("dynamic", [])
    if "version" not in dyn:
        return project["project"]["version"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, name = attr.rsplit(".", 1)
    tree = ast.parse((where / module.replace(".", "/") / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{attr} not found")


for arg in sys.argv[1:]:
    folder = Path(arg)
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    dist_name = project["project"]["name"]
    norm = re.sub(r"[-_.]+", "_", dist_name).lower()
    where, files = package_files(folder, project)
    version = version_of(where, project)
    if not files:
        problems.append(f"{dist_name}: no package files found in {where}")
    before = len(problems)
    sdists = sorted(Path("dist").glob(f"{norm}-*.tar.gz"))
    wheels = sorted(Path("dist").glob(f"{norm}-*.whl"))
    if [s.name for s in sdists] != [f"{norm}-{version}.tar.gz"] or len(wheels) != 1 \
            or not wheels[0].name.startswith(f"{norm}-{version}-"):
        problems.append(f"{dist_name} {version}: expected one sdist and one wheel in dist/, "
                        f"found {[p.name for p in sdists + wheels]}")
        continue
    # the sdist: LICENSE, README, pyproject.toml, PKG-INFO and every package file
    with tarfile.open(sdists[0]) as tar:
        base = f"{norm}-{version}/"
        names = {m.name[len(base):] for m in tar.getmembers() if m.name.startswith(base)}
    src_prefix = where.relative_to(folder).as_posix()
    src_prefix = "" if src_prefix == "." else src_prefix + "/"
    need = {"LICENSE", "PKG-INFO", "pyproject.toml", project["project"].get("readme", "README.md")}
    need |= {src_prefix + rel for rel in files}
    for missing in sorted(need - names):
        problems.append(f"{sdists[0].name}: missing {missing}")
    # the wheel: every package file, the license, the metadata
    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        info = f"{norm}-{version}.dist-info/"
        meta = email.message_from_bytes(whl.read(info + "METADATA")) if info + "METADATA" in names else None
    for missing in sorted(set(files) - names):
        problems.append(f"{wheels[0].name}: missing {missing}")
    if info + "licenses/LICENSE" not in names:
        problems.append(f"{wheels[0].name}: missing {info}licenses/LICENSE")
    if meta is None:
        problems.append(f"{wheels[0].name}: no METADATA")
        continue
    if meta["Version"] != version:
        problems.append(f"{wheels[0].name}: Version {meta['Version']} != __version__ {version}")
    if meta["License-Expression"] != "Apache-2.0":
        problems.append(f"{wheels[0].name}: License-Expression {meta['License-Expression']!r}")
    urls = {u.split(",")[0].strip().lower() for u in meta.get_all("Project-URL") or []}
    for label in ("source", "issues", "documentation"):
        if label not in urls:
            problems.append(f"{wheels[0].name}: no Project-URL {label}")
    for field in ("Author", "Keywords", "Classifier"):
        if not meta.get_all(field):
            problems.append(f"{wheels[0].name}: no {field}")
    description = meta.get_payload()
    if len(description.strip()) < 100:
        problems.append(f"{wheels[0].name}: no long description")
    for link in re.findall(r"\]\(([^)\s]+)\)", description):
        if not re.match(r"(https?://|mailto:|#)", link):
            problems.append(f"{wheels[0].name}: relative link in the long description: {link}")
    if len(problems) == before:
        print(f"check-dists: {dist_name} {version}: sdist and wheel hold LICENSE and {len(files)} package files")

if problems:
    print("check-dists: FAILED", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
PY
