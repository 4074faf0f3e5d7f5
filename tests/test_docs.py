"""The user docs stay true: config keys match the code, links resolve, examples are real."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.agent import config as agent_config
from hcm_twisted.relay import namespace as relay_config
from hcm_twisted.sender import config as sender_config
from tests.e2e import harness

DOCS = harness.ROOT / "docs"


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start : nxt if nxt >= 0 else len(text)]


def table_keys(text: str) -> set[str]:
    """The backticked names in the first column of the tables in ``text``."""
    keys: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^\| (`[^|]+`(?:, `[^|]+`)*) \|", line)
        if m:
            keys.update(re.findall(r"`([^`]+)`", m.group(1)))
    return keys


class ConfigReferenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.text = (DOCS / "configuration.md").read_text()

    def test_agent(self) -> None:
        doc = section(self.text, "## Agent")
        documented = table_keys(doc)
        code = set(agent_config._AGENT_KEYS) | set(agent_config._HC_KEYS)
        self.assertEqual(documented, code)

    def test_relay(self) -> None:
        doc = section(self.text, "## Relay")
        documented = table_keys(doc)
        code = (set(relay_config._TOP_KEYS) | relay_config._HC_KEYS | relay_config._RULE_KEYS) - {
            "authorization-rule", "hybrid-connection"}
        self.assertEqual(documented, code)

    def test_sender(self) -> None:
        doc = section(self.text, "## Sender")
        documented = table_keys(doc)
        code = (set(sender_config._TOP_KEYS) | set(sender_config._HC_KEYS)) - {"hybrid-connection"}
        self.assertEqual(documented, code)


class LinkTests(SynchronousTestCase):
    def test_relative_links_resolve(self) -> None:
        pages = sorted(DOCS.glob("*.md"))
        self.assertGreaterEqual(len(pages), 7)
        for page in pages:
            for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
                self.assertTrue((DOCS / target).exists(), f"{page.name}: broken link {target}")

    def test_anchors_exist(self) -> None:
        for page in sorted(DOCS.glob("*.md")):
            for target, anchor in re.findall(r"\]\(([^)#:]+\.md)#([^)]+)\)", page.read_text()):
                headings = re.findall(r"^#+ (.+)$", (DOCS / target).read_text(), re.M)
                slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
                self.assertIn(anchor, slugs, f"{page.name}: no #{anchor} in {target}")

    def test_screenshot(self) -> None:
        self.assertTrue((DOCS / "status-page.png").read_bytes().startswith(b"\x89PNG"))
