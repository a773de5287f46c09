"""The docs people read (README.md and docs/*.md) against the programs: every command and option --help names is
documented, the supported Pythons are common/pyversions.h's, the benchmark table is in docs/benchmarks.md, every
relative link and anchor resolves, and the README stays short."""
import os
import re

from conftest import MEMPROF, MEMPROFD, ROOT
from test_install import commands_and_options, help_text

DOCS = os.path.join(ROOT, "docs")
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(DOCS) if f.endswith(".md"))


def read(page):
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def all_docs():
    return "\n".join(read(p) for p in PAGES)


def short_forms(exe, cmd):
    """{--long: -s} from a command's option table ("  -o, --output FILE")."""
    return dict((m.group(2), m.group(1)) for m in re.finditer(r"^ +(-\w), (--[a-z][a-z-]*)", help_text(exe, cmd), re.M))


def test_docs_name_every_command_and_option():
    text = all_docs()
    missing = []
    for exe in (MEMPROF, MEMPROFD):
        name = os.path.basename(exe)
        for cmd, opts in commands_and_options(exe).items():
            if not re.search(r"\b%s %s\b" % (name, cmd), text):
                missing.append("%s %s" % (name, cmd))
            short = short_forms(exe, cmd)
            for o in sorted(opts):
                # an option the docs show by its short form (-o FILE) counts as documented
                if o not in text and not (o in short and re.search(r"`[^`]*%s [A-Za-z]" % short[o], text)):
                    missing.append("%s %s %s" % (name, cmd, o))
    assert not missing, "README.md and docs/*.md do not document: " + ", ".join(missing)


def test_supported_pythons_are_pyversions():
    h = read("common/pyversions.h")
    lo, hi = (int(re.search(r"#define MP_PY_%s_MINOR (\d+)" % k, h).group(1)) for k in ("MIN", "MAX"))
    want = ", ".join("3.%d" % m for m in range(lo, hi)) + " and 3.%d" % hi
    section = read("README.md").split("## Supported Pythons", 1)[1].split("\n## ", 1)[0]
    section = re.sub(r"\s+", " ", section)
    assert "CPython %s on Linux" % want in section, section[:200]
    assert "unsupported Python 3.%d" % (lo - 1) in section and "unsupported Python 3.%d" % (hi + 1) in section


def test_bench_table_lives_in_docs_and_readme_links_it():
    bench = read("docs/benchmarks.md")
    assert "| measurement | memprof | peer | peer measured |" in bench
    assert "| attach, end to end (median / max of 20) |" in bench
    assert "(docs/benchmarks.md)" in read("README.md")


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation but '-' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    text = re.sub(r"^```.*?^```", "", read(page), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", read(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(os.path.join(ROOT, dest)):
                broken.append("%s: %s" % (page, target))
            elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                broken.append("%s: %s (no such heading)" % (page, target))
    assert not broken, broken


def test_readme_is_short_and_keeps_the_two_commands():
    text = read("README.md")
    assert len(text.splitlines()) <= 400
    assert "make demo   # " in text and "make test   # " in text
    assert os.path.exists(os.path.join(ROOT, "LICENSE")) and "[LICENSE](LICENSE)" in text
