"""The documentation: README.md and the MkDocs site in docs/. The site builds with
``--strict``; every relative link of the README and of docs/ reaches a file and a heading;
the generated reference names every option, ini key, marker keyword and command the code
has; every code block parses, and the Python ones that are tests are collected by pytest
with the plugin (the marker keywords they use are checked there). Blocks that need a guest
run in tests/e2e/test_readme.py."""
from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
import tomllib
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)
MARKDOWN = [ROOT / "README.md", ROOT / "CHANGELOG.md", *PAGES]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def load_reference():
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "hooks/reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_code(text: str) -> str:
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def headings(text: str) -> list[str]:
    return [m[1].strip() for m in re.finditer(r"^#{1,6} (.*)$", FENCE.sub("", text), re.M)]


def github_slug(heading: str) -> str:
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def mkdocs_slug(heading: str) -> str:  # Python-Markdown's toc.slugify
    text = unicodedata.normalize("NFKD", heading.replace("`", "")).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(without_code_spans(path.read_text()))
            if not re.match(r"[a-z]+:", t)]


def without_code_spans(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def code_blocks(lang: str) -> list[tuple[Path, str]]:
    return [(path, body) for path in MARKDOWN for kind, body in FENCE.findall(path.read_text())
            if kind == lang]


def test_the_readme_starts_with_the_two_commands_and_stays_short():
    text = (ROOT / "README.md").read_text()
    first_block = FENCE.search(text)[2].splitlines()
    assert [line.split()[:2] for line in first_block] == [["./dev.sh", "examples"],
                                                          ["./dev.sh", "test"]]
    assert len(text.splitlines()) <= 300


def test_the_fixtures_page_names_every_fixture():
    from pytest_kvm.plugin import fixtures
    defined = {name for name, obj in vars(fixtures).items()
               if type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(obj, "_pytestfixturefunction")}
    assert defined >= {"kvm", "guest", "guest_factory"}
    page = (DOCS / "reference/fixtures.md").read_text()
    assert {name for name in defined if f"| `{name}` |" not in page} == set()


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_a_heading(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if dest.is_dir() or not anchor:
            continue
        found = headings(dest.read_text())
        # docs/ pages are read on GitHub and in the site: the anchor must be both's slug
        slugs = [{github_slug(h) for h in found}]
        if DOCS in dest.parents:
            slugs.append({mkdocs_slug(h) for h in found})
        if not all(anchor in s for s in slugs):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert broken == []


def test_every_page_is_in_the_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def walk(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
    assert sorted(walk(config["nav"])) == sorted(str(p.relative_to(DOCS)) for p in PAGES)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                            "-f", ROOT / "mkdocs.yml", "-d", out],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    # (not -q: MkDocs then counts no warnings, and --strict passes whatever they say)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "WARNING" not in built.stderr.replace("WARNING: Location", ""), built.stderr
    return out


def page_text(site: Path, page: str) -> str:
    html = (site / page / "index.html").read_text()
    return re.sub(r"<[^>]+>", "", html).replace("&amp;", "&").replace("&quot;", '"') \
        .replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">")


def test_the_site_builds_strictly_with_the_api_reference(site):
    guest = page_text(site, "reference/guest")
    for member in ("run", "put", "get", "reboot", "freeze", "ssh_command", "destroy"):
        assert f"{member}(" in guest, member
    errors = page_text(site, "reference/exceptions")
    import pytest_kvm
    for name in pytest_kvm.__all__:
        if name.endswith(("Error", "Timeout", "Failed", "Crashed", "Mismatch")):
            assert name in errors, name


def test_the_options_page_lists_every_option_and_ini_key_pytest_shows(site, pytester):
    helped = pytester.runpytest("--help").stdout.str()
    options = set(re.findall(r"^\s+(--kvm-[a-z-]+)", helped, re.M))
    inis = set(re.findall(r"^\s+(kvm_[a-z_]+) \(", helped, re.M))
    assert options and inis
    page = page_text(site, "reference/options")
    assert {o for o in options if o not in page} == set()
    assert {i for i in inis if i not in page} == set()
    recorder = load_reference().declared()
    assert {n for names, _ in recorder.options for n in names} == options
    assert {name for name, _, _ in recorder.inis} == inis


def test_the_marker_page_lists_and_describes_every_keyword(site):
    from pytest_kvm.spec import guest_request
    keywords = list(inspect.signature(guest_request).parameters)
    page = page_text(site, "reference/marker")
    prose = (DOCS / "reference/marker.md").read_text().partition("## What each keyword does")[2]
    assert [k for k in keywords if f"\n{k}\n" not in page] == []      # the generated table
    assert [k for k in keywords if f"`{k}`" not in prose] == []       # and said what it does


def test_the_command_page_lists_every_command_and_argument(site):
    from pytest_kvm.cli import build_parser
    page = page_text(site, "reference/cli")
    commands = load_reference().cli_commands()
    assert len(commands) >= 10
    for line, _, parser in commands:
        assert line in page, line
        for action in parser._actions:
            for option in action.option_strings:
                if action.help != "==SUPPRESS==":
                    assert option in page, (line, option)
    assert "--version" in page and "--cache-dir" in page
    assert build_parser().prog == "pytest-kvm"


@pytest.mark.parametrize("lang", ["python", "yaml", "toml"])
def test_every_code_block_parses(lang):
    blocks = code_blocks(lang)
    assert blocks
    for path, body in blocks:
        where = f"{path.relative_to(ROOT)}: {body[:60]!r}"
        if lang == "python":
            compile(body, where, "exec")
        elif lang == "yaml":
            assert yaml.safe_load(body) is not None, where
        else:
            tomllib.loads(body)


def test_every_shell_block_is_valid_bash():
    blocks = code_blocks("sh")
    assert blocks
    for path, body in blocks:
        checked = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True)
        assert checked.returncode == 0, f"{path.relative_to(ROOT)}: {checked.stderr}\n{body}"


def test_catalog_entries_in_the_docs_are_valid_entries(tmp_path):
    from pytest_kvm.images.catalog import read_catalog
    entries = [(p, b) for p, b in code_blocks("toml") if "[[image]]" in b]
    assert entries
    for n, (path, body) in enumerate(entries):
        file = tmp_path / f"catalog{n}.toml"
        file.write_text(body.replace('"<64 hex digits>"', '"' + "0" * 64 + '"'))
        assert read_catalog(file), path


def test_python_test_blocks_are_collected_by_pytest_with_the_plugin(pytester):
    tests = [b for _, b in code_blocks("python") if re.search(r"^def test_", b, re.M)]
    assert len(tests) >= 5
    for n, body in enumerate(tests):
        pytester.makepyfile(**{f"test_doc_{n}": "import pytest\n" + body})
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    assert "error" not in result.stdout.str().lower()


def test_every_file_the_docs_name_exists():
    """`tests/e2e/test_crash.py`, `images/store.py`, `unit/plugin/test_plugin.py`: a path in
    backticks is one of the repository's files (or the package's, or the tests'), so the
    failure table's "tested in" column and the design notes' pointers stay true."""
    ours = {"pytest_kvm", "tests", "scripts", "examples", "guest-images", "docs", "unit", "e2e",
            *(d.name for d in (ROOT / "pytest_kvm").iterdir() if d.is_dir())}
    missing = []
    for path in MARKDOWN:
        for name in re.findall(r"`([\w.-]+(?:/[\w.-]+)*/[\w-]+\.(?:py|toml|md|sh))(?:::\w+)?`",
                               path.read_text()):
            if name.split("/")[0] not in ours:
                continue  # another project's file (the research notes cite cloud-init's)
            if not any((base / name).exists() for base in (ROOT, ROOT / "pytest_kvm", ROOT / "tests")):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert missing == []
