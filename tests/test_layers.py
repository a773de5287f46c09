"""The folder layout is the architecture (docs/ARCHITECTURE.md), read off the sources as a file-level call graph:
no set of files in daemon/ or in agent/ calls each other in a loop, and no file of a lower layer (common/, proto/,
probe/, client/) calls a function defined in a higher one (agent/, daemon/, cli/). A call is a name followed by '('
that a file other than the caller defines without `static` (a function of the caller's own, static, of that name
is the caller's); comments and strings are left out."""
import collections
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIRS = ["agent", "daemon", "cli", "client", "probe", "proto", "common"]
LOWER = {"common", "proto", "probe", "client"}
# libc's functions the agent interposes (agent/agent.map exports them): everywhere else a call is libc's
INTERPOSED = {"_exit"}
# a definition: at column 0, [static] [__attribute__((...))] type name(params) then its body's '{' (on the next line,
# or on the same one for a one-line function)
ATTR = r"(?:__attribute__\(\(.*?\)\)[ \t]+)?"
DEF = re.compile(r"^" + ATTR + r"(static[ \t]+)?" + ATTR + r"(?:[A-Za-z_]\w*[ \t\*]+)+?([a-z_]\w*)\([^;{}]*\)\s*\{",
                 re.M)


def sources():
    for d in DIRS:
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if f.endswith(".c"):
                yield d + "/" + f


def strip(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r'"(\\.|[^"\\\n])*"', '""', text)
    return re.sub(r"'(\\.|[^'\\\n])'", "''", text)


def graph():
    texts = {f: strip(open(os.path.join(ROOT, f)).read()) for f in sources()}
    defined, local = collections.defaultdict(set), collections.defaultdict(set)
    for f, text in texts.items():
        for m in DEF.finditer(text):
            if m.group(1):
                local[f].add(m.group(2))
            else:
                defined[m.group(2)].add(f)
    edges = collections.defaultdict(dict)
    for f, text in texts.items():
        for name in set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", text)) - local[f] - INTERPOSED - {"main"}:
            for g in defined.get(name, ()):
                if g != f:
                    edges[f].setdefault(g, name)
    return texts, defined, edges


def loops(nodes, edges):
    """The strongly connected sets of more than one file (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def test_the_reader_finds_definitions_and_calls():
    texts, defined, edges = graph()
    assert "daemon/identity.c" in defined["proc_ident"]
    assert "daemon/identity.c" in edges["daemon/procinfo.c"]  # procinfo's ps entry asks for the identity
    assert "probe/procfs.c" in edges["daemon/inject.c"]
    assert loops({"a", "b", "c"}, {"a": {"b": "f"}, "b": {"a": "g"}, "c": {"a": "h"}}) == [["a", "b"]]


def test_no_loops_among_the_files_of_daemon_and_agent():
    _, _, edges = graph()
    for d in ("daemon", "agent"):
        nodes = {f for f in sources() if f.startswith(d + "/")}
        found = loops(nodes, edges)
        described = ["; ".join("%s calls %s" % (f, ", ".join("%s (%s)" % (g, edges[f][g]) for g in c if g in edges[f]))
                               for f in c) for c in found]
        assert not found, "%s/ files call each other in a loop: %s" % (d, " | ".join(described))


def test_no_call_from_a_lower_layer_up():
    _, _, edges = graph()
    up = [(f, g, name) for f, calls in edges.items() for g, name in calls.items()
          if f.split("/")[0] in LOWER and g.split("/")[0] not in LOWER]
    assert not up, "a lower layer calls up: %s" % up
