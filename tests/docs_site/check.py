#!/usr/bin/env python3
"""Builds the documentation site (scripts/docs) and checks it in headless Chromium.

    check.py REPO SITE

- every page of the site loads: Chromium renders it (the site served over HTTP on
  127.0.0.1) to document.readyState "complete", and its DOM has the page's heading;
- no internal link or anchor is broken: every href and src of the rendered pages (and of the
  pages they link to in the API reference) names a file of the site and, with a #fragment, an
  id of that file;
- the search box finds exit_stack: search.html?q=exit_stack, once MkDocs' search has loaded
  its index and answered, lists the exit_stack page (its DOM read through the DevTools
  protocol, since the results arrive after the page's load event);
- the API reference has a page for every public header, with the summary that opens it.

Exits 77 (ctest's skip code here) with a message when Chromium is missing, unless CI=true,
where that is a failure.
"""

import functools
import html
import html.parser
import http.server
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

SKIP = 77


class Links(html.parser.HTMLParser):
    """The ids, the links (href, src), the first h1 and the title of an HTML document."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []
        self.h1 = None
        self.title = None
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("id", "name"):
            if attrs.get(name) and (name == "id" or tag == "a"):
                self.ids.add(attrs[name])
        for name in ("href", "src"):
            if attrs.get(name) is not None:
                self.links.append(attrs[name])
        if tag in ("h1", "title") and getattr(self, tag) is None:
            self._in = tag
            setattr(self, tag, "")

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            setattr(self, self._in, getattr(self, self._in) + data)


def parse(text):
    parser = Links()
    parser.feed(text)
    return parser


# Headless, and nothing but the site on 127.0.0.1: no name resolves to anything else, and
# Chromium's own background traffic (updates, sync, field trials) is off.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-extensions", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-default-apps",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


class DevTools:
    """Headless Chromium driven over --remote-debugging-pipe (the DevTools protocol on fds 3
    and 4): one browser for every page, and the DOM read when a condition holds, which
    --dump-dom cannot wait for (MkDocs' search answers from a web worker after the load
    event)."""

    def __init__(self, chromium, profile):
        self._to_chromium_read, self._to_chromium = os.pipe()
        self._from_chromium, self._from_chromium_write = os.pipe()

        def as_fds_3_and_4():
            os.dup2(self._to_chromium_read, 3)
            os.dup2(self._from_chromium_write, 4)

        self.process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
            preexec_fn=as_fds_3_and_4)
        os.close(self._to_chromium_read)
        os.close(self._from_chromium_write)
        self._next_id = 0
        self._buffer = b""

    def call(self, method, params=None, session=None, timeout=30):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chromium, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chromium], [], [], left)[0]:
                raise RuntimeError(f"chromium did not answer {method} in {timeout} s")
            chunk = os.read(self._from_chromium, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited during {method}")
            self._buffer += chunk

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except RuntimeError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chromium)
        os.close(self._from_chromium)


def dom_when(browser, url, condition, timeout=60):
    """The DOM of url in a new tab once the script `condition` is true there; an error if it
    is still false at the timeout."""
    target = browser.call("Target.createTarget", {"url": url})["targetId"]
    try:
        session = browser.call("Target.attachToTarget",
                               {"targetId": target, "flatten": True})["sessionId"]
        # Until the navigation commits, the tab shows about:blank, which is complete too.
        ready = f"location.href === {json.dumps(url)} && ({condition}) && " \
                "document.documentElement.outerHTML"
        deadline = time.monotonic() + timeout
        while True:
            # No value while the page is being replaced (its context destroyed): not yet.
            dom = browser.call("Runtime.evaluate", {"expression": ready, "returnByValue": True},
                               session)["result"].get("value")
            if dom:
                return dom
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: still not `{condition}` after {timeout} s")
            time.sleep(0.1)
    finally:
        browser.call("Target.closeTarget", {"targetId": target})


def serve(site):
    handler = functools.partial(Quiet, directory=site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main():
    repo, site = sys.argv[1], os.path.abspath(sys.argv[2])
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        message = "chromium is not installed (Debian: apt-get install chromium, or scripts/setup)"
        if os.environ.get("CI") == "true":
            sys.exit(f"FAIL: {message}")
        print(f"SKIP: the documentation site is not checked: {message}")
        sys.exit(SKIP)

    start = time.monotonic()
    subprocess.run([os.path.join(repo, "scripts", "docs"), site], check=True)
    built = time.monotonic() - start
    print(f"site built in {built:.1f} s: {site}")

    pages = sorted(os.path.relpath(os.path.join(folder, name), site)
                   for folder, _, names in os.walk(site) for name in names
                   if name.endswith(".html") and not os.path.relpath(folder, site).startswith(
                       ("api", "search")))
    pages.append("api/index.html")
    server = serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    errors = []

    profile = tempfile.TemporaryDirectory(prefix="ctxmgr-docs-chromium-")
    browser = DevTools(chromium, profile.name)
    try:
        doms = {page: dom_when(browser, base + page, "document.readyState === 'complete'")
                for page in pages}
        # MkDocs' search builds its index in a web worker after the page has loaded.
        try:
            search = dom_when(browser, base + "search.html?q=exit_stack",
                              "document.querySelector('#mkdocs-search-results a') !== null")
        except RuntimeError as e:
            errors.append(f"search.html?q=exit_stack: no result: {e}")
            search = ""
    finally:
        browser.close()
        profile.cleanup()

    # Ids of a file: from its rendered DOM when it was rendered, else from the file itself.
    static = {}

    def ids_of(path):
        if path in doms:
            return parse(doms[path]).ids | static_parse(path).ids
        return static_parse(path).ids

    def static_parse(path):
        if path not in static:
            with open(os.path.join(site, path), encoding="utf-8", errors="replace") as f:
                static[path] = parse(f.read())
        return static[path]

    checked = 0
    for page in pages:
        dom = parse(doms[page])
        # Doxygen's pages have a title but no h1.
        heading = dom.title if page.startswith("api/") else dom.h1
        if not heading or not heading.strip():
            errors.append(f"{page}: rendered without a heading")
        for link in set(dom.links) | set(static_parse(page).links):
            url = urllib.parse.urljoin(base + page, link)
            if not url.startswith(base):
                continue  # another site, a data: or javascript: URL
            parts = urllib.parse.urlsplit(url)
            target = urllib.parse.unquote(parts.path[len(urllib.parse.urlsplit(base).path):])
            if target == "" or target.endswith("/"):
                target += "index.html"
            if not os.path.isfile(os.path.join(site, target)):
                errors.append(f"{page}: broken link {link!r}: no file {target}")
                continue
            checked += 1
            if parts.fragment and target.endswith(".html"):
                fragment = urllib.parse.unquote(parts.fragment)
                if fragment not in ids_of(target):
                    errors.append(f"{page}: broken anchor {link!r}: no id {fragment!r} in {target}")

    # The results: links in articles inside the results' div, which holds no other div.
    start_results = search.find('id="mkdocs-search-results"')
    end_results = search.find("</div>", start_results)
    results = parse(search[start_results:end_results]) if start_results >= 0 else None
    hits = [link for link in results.links if "exit-stack.html" in link] if results else []
    if not hits:
        errors.append("search.html?q=exit_stack: the results do not list exit-stack.html")
    server.shutdown()

    # The API reference: a page per public header, opening with the header's own summary.
    headers = sorted(h for h in os.listdir(os.path.join(repo, "include", "ctxmgr"))
                     if h.endswith(".hpp"))
    for header in headers:
        page = os.path.join(site, "api", header.replace("_", "__").replace(".hpp", "_8hpp.html"))
        with open(os.path.join(repo, "include", "ctxmgr", header), encoding="utf-8") as f:
            # Doxygen shows `code` as <code>code</code>: compare the text alone.
            summary = f.readline().removeprefix("//").strip().split(": ", 1)[-1].replace("`", "")
        try:
            with open(page, encoding="utf-8") as f:
                text = html.unescape(re.sub(r"<[^>]+>", "", f.read()))
        except FileNotFoundError:
            errors.append(f"api: no page for {header} ({os.path.relpath(page, site)})")
            continue
        if summary not in text:
            errors.append(f"api: the page of {header} lacks its summary {summary!r}")

    for error in errors:
        print(f"FAIL: {error}")
    print(f"{len(pages)} pages rendered, {checked} internal links checked, "
          f"{len(headers)} headers in the API reference, "
          f"search for exit_stack: {len(hits)} result link(s) to exit-stack.html; "
          f"{time.monotonic() - start:.1f} s in all")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
