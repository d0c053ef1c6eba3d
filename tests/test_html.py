"""The HTML channel-group page: self-contained, data complete, and its click path in chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from models import build

import fxprune
from fxprune.export.html import render_html
from fxprune.graph import ChannelGraph, ChannelGroup, Member

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
EVIL = "x</script><script>alert(1)</script>"


class Page(HTMLParser):
    """What the tests look at: attributes of elements with an id, every src/href, the scripts'
    text, and the text inside #details."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.by_id: dict[str, dict[str, str]] = {}
        self.links: list[str] = []
        self.scripts: list[tuple[dict[str, str], str]] = []
        self.details: list[str] = []
        self._script: dict[str, str] | None = None
        self._details_depth = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if "id" in found:
            self.by_id[found["id"]] = found
        self.links += [v for k, v in found.items() if k in ("src", "href", "xlink:href")]
        if tag == "script":
            self._script = found
            self.scripts.append((found, ""))
        if self._details_depth and tag not in VOID:
            self._details_depth += 1
        elif found.get("id") == "details":
            self._details_depth = 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None
        if self._details_depth and tag not in VOID:
            self._details_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        if self._details_depth:
            self.details.append(data)

    def data(self) -> dict:
        (text,) = [t for a, t in self.scripts if a.get("id") == "fxprune-data"]
        return json.loads(text)

    def classes(self, element_id: str) -> set[str]:
        return set(self.by_id[element_id].get("class", "").split())


def _graph(name: str) -> ChannelGraph:
    model, x = build(name)
    return fxprune.analyze(fxprune.trace(model, x))


@pytest.mark.parametrize("name", ["residual", "concat", "frozen"])
def test_page_is_self_contained_and_holds_every_group(name: str) -> None:
    graph = _graph(name)
    html = render_html(graph, title=f"{name} <groups>")
    page = Page(html)

    assert "http://" not in html and "https://" not in html
    assert all(not re.match(r"\w+:|//", link) for link in page.links), page.links
    assert all(not a.get("src") for a, _ in page.scripts)  # scripts are inline
    assert f"<title>{name} &lt;groups&gt;</title>" in html

    data = page.data()
    assert [g["id"] for g in data["groups"]] == [g.id for g in graph.groups]
    for shown, group in zip(data["groups"], graph.groups):
        assert shown["channels"] == group.channels
        assert shown["prunable"] == group.prunable and shown["reason"] == group.reason
        assert shown["exact"] == group.exact
        assert shown["coupled_by"] == list(group.coupled_by)
        assert shown["nodes"] == list(group.nodes)
        assert set(shown["params"]) == {f"{m.param} {m.dim}" for m in group.params}
        assert f"group-{group.id}" in page.by_id
    for node in graph.node_order:
        held = [g.id for g in graph.groups if node in g.nodes]
        attrs = page.by_id[f"node-{node}"]
        assert attrs["data-groups"] == " ".join(map(str, held))
        assert not page.classes(f"node-{node}") & {"selected", "dimmed"}  # only JS selects


def test_layers_run_top_to_bottom() -> None:
    graph = _graph("residual")
    page = Page(render_html(graph, title="residual"))

    def top(node: str) -> float:
        x, y = re.fullmatch(r"translate\(([\d.]+),([\d.]+)\)",
                            page.by_id[f"node-{node}"]["transform"]).groups()
        return float(y)

    assert all(top(dst) > top(src) for src, dst in graph.edges)
    # the residual add sits below the whole branch it adds, not just below the stem
    assert top("add") > top("b_1") > top("stem_2")


def test_node_name_cannot_break_out_of_the_script_tag() -> None:
    member = Member(node=EVIL, param=f"{EVIL}.weight", dim=0, length=2, positions=(0, 1),
                    channels=(0, 1))
    group = ChannelGroup(id=0, channels=2, prunable=False, reason=EVIL, exact=False,
                         inexact_reason=EVIL, members=(member,), coupled_by=(EVIL,))
    graph = ChannelGraph(groups=(group,), node_order=("x", EVIL), edges=(("x", EVIL),),
                         node_ops={"x": "input", EVIL: EVIL})
    html = render_html(graph, title=EVIL)
    page = Page(html)

    assert [a.get("id") for a, _ in page.scripts] == ["fxprune-data", None]
    assert html.count("<script") == 2
    data = page.data()
    assert data["nodes"][1]["name"] == EVIL
    assert data["groups"][0]["params"] == [f"{EVIL}.weight 0"]
    assert data["groups"][0]["reason"] == EVIL
    assert page.by_id[f"node-{EVIL}"]["data-groups"] == "0"


@pytest.mark.browser
def test_hash_clicks_the_group_in_chromium(tmp_path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium not installed: apt-get install chromium")
    graph = _graph("residual")
    # the smallest prunable group, so some nodes lie outside it
    group = min(graph.prunable, key=lambda g: len(g.nodes))
    outside = [n for n in graph.node_order if n not in group.nodes]
    assert outside
    path = tmp_path / "groups.html"
    path.write_text(render_html(graph, title="residual"), encoding="utf-8")

    run = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", f"{path.as_uri()}#group={group.id}"],
        capture_output=True, text=True, timeout=25, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = Page(run.stdout)

    assert all(f"group-{g.id}" in dom.by_id for g in graph.groups)
    assert "active" in dom.classes(f"group-{group.id}")
    for node in group.nodes:
        assert "selected" in dom.classes(f"node-{node}"), node
        assert "dimmed" not in dom.classes(f"node-{node}"), node
    for node in outside:
        assert "dimmed" in dom.classes(f"node-{node}"), node
        assert "selected" not in dom.classes(f"node-{node}"), node
    details = " ".join("".join(dom.details).split())
    assert f"Group {group.id}" in details
    assert f"{group.channels} channels" in details
    assert all(f"{m.param} {m.dim}" in details for m in group.params)
