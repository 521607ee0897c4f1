"""Reading an audit's ``report.html`` back, as a browser would (shared by the audit and browser tests).

The report's file list is the ``<table id="files">``: each link there must be relative, shown by its
name verbatim, and lead to something inside the audit's folder; together they must cover every file
the audit wrote.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse


class _FileLinks(HTMLParser):
    """Collects ``(href, shown text)`` of the links inside ``<table id="files">``."""

    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.sections = 0
        self._inside = False
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "files":
            self._inside, self.sections = True, self.sections + 1
        elif tag == "a" and self._inside:
            self._href, self._text = a.get("href"), []

    def handle_endtag(self, tag):
        if tag == "table":
            self._inside = False
        elif tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text)))
            self._href = None

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)


def file_links(page: str) -> list[tuple[str, str]]:
    """``(href, shown text)`` of every link in the report's list of files (exactly one list)."""
    parser = _FileLinks()
    parser.feed(page)
    assert parser.sections == 1, f"expected one <table id='files'>, found {parser.sections}"
    return parser.links


def where_it_leads(report: Path, href: str) -> Path:
    """The path a browser that opened ``report`` from disk reaches through ``href``."""
    url = urlparse(urljoin(report.resolve().as_uri(), href))
    assert url.scheme == "file", href
    return Path(unquote(url.path))


def check_file_list(page: str, report: Path, n_shards: int) -> set[str]:
    """Assert that the file list of ``page`` (the report at ``report``) is complete, relative,
    verbatim and leads only to what is in the folder; returns the linked paths (relative, posix)."""
    folder = report.parent.resolve()
    linked = set()
    for href, text in file_links(page):
        assert not urlparse(href).scheme and not href.startswith("/") and ".." not in href, href
        name = unquote(href)
        assert text in (name, Path(name).name + ("/" if name.endswith("/") else "")), (href, text)
        target = where_it_leads(report, href)
        assert target.resolve().is_relative_to(folder), href
        assert (target.is_dir() if name.endswith("/") else target.is_file()), f"{href} leads to nothing"
        linked.add(name)
    top = {p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()}
    assert top <= linked, f"not in the report's file list: {sorted(top - linked)}"
    shards = sorted(p.name for p in (folder / "shards").iterdir())
    assert all(re.fullmatch(r"shard-\d{5}\.(csv|npz)", s) and int(s[6:11]) < n_shards for s in shards), shards
    ends = {f"shards/shard-{i:05d}.{ext}" for i in (0, n_shards - 1) for ext in ("csv", "npz")}
    assert ends <= linked, sorted(ends - linked)
    return linked
