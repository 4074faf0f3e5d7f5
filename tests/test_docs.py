"""The user docs stay true: every documented config key exists, links resolve.

(Keys added to the code later should be documented too; the check here is that the docs never
name a key the programs would reject.)
"""

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
        self.assertLessEqual(documented, code, "docs/configuration.md names keys the code rejects")
        self.assertGreaterEqual(len(documented), len(code) - 2, "most keys are documented")

    def test_relay(self) -> None:
        doc = section(self.text, "## Relay")
        documented = table_keys(doc)
        code = (set(relay_config._TOP_KEYS) | relay_config._HC_KEYS | relay_config._RULE_KEYS) - {
            "authorization-rule", "hybrid-connection"}
        self.assertLessEqual(documented, code, "docs/configuration.md names keys the code rejects")
        self.assertGreaterEqual(len(documented), len(code) - 2, "most keys are documented")

    def test_sender(self) -> None:
        doc = section(self.text, "## Sender")
        documented = table_keys(doc)
        code = (set(sender_config._TOP_KEYS) | set(sender_config._HC_KEYS)) - {"hybrid-connection"}
        self.assertLessEqual(documented, code, "docs/configuration.md names keys the code rejects")
        self.assertGreaterEqual(len(documented), len(code) - 2, "most keys are documented")


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
